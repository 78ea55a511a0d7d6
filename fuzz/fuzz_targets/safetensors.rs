#![no_main]
//! A checkpoint's model.safetensors.index.json and the safetensors header of its shard.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (index, shard) = pmc_llama_fuzz::split(data);
    pmc_llama_fuzz::file("model.safetensors.index.json", index);
    let dir = pmc_llama_fuzz::file("model-00001-of-00001.safetensors", shard);
    if let Ok(checkpoint) = pmc_model::checkpoint::SafetensorsCheckpoint::open(dir) {
        let _ = checkpoint.names().count();
    }
});
