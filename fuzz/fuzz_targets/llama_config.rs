#![no_main]
//! config.json of an HF checkpoint.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(config) = pmc_model::LlamaConfig::from_json(&value, std::path::Path::new("config.json")) {
            let _ = config.num_parameters();
            let _ = config.to_json();
        }
    }
});
