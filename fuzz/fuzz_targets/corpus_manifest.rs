#![no_main]
//! A prepared corpus's manifest.json.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = pmc_llama_fuzz::file("manifest.json", data);
    let _ = pmc_corpus::read_manifest(dir);
});
