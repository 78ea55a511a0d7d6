#![no_main]
//! adapter_config.json of a PEFT LoRA adapter, then its target and rank lookups.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = pmc_peft::config::AdapterConfig::from_json(text, "adapter_config.json") {
        for module in ["model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj", "lm_head"] {
            if config.targets(module).unwrap_or(false) {
                let _ = config.rank_and_scale(module);
            }
        }
        let _ = config.to_json();
    }
});
