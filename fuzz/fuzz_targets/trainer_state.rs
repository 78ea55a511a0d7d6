#![no_main]
//! A checkpoint's trainer_state.json and data.json.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (state, record) = pmc_llama_fuzz::split(data);
    pmc_llama_fuzz::file(pmc_train::checkpoint::STATE_FILE, state);
    let dir = pmc_llama_fuzz::file(pmc_train::checkpoint::DATA_FILE, record);
    let _ = pmc_train::checkpoint::SavedState::read(dir);
    let _ = pmc_train::checkpoint::DataRecord::read(dir);
});
