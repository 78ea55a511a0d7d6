#![no_main]
//! tokenizer_config.json beside a real tokenizer.json (special tokens, add_bos/add_eos, the
//! chat template as a string or a list), then the chat template it names, compiled and
//! rendered.
use libfuzzer_sys::fuzz_target;

const TOKENIZER: &str = include_str!("../../crates/pmc-model/tests/fixtures/gqa_tied/tokenizer.json");

fuzz_target!(|data: &[u8]| {
    let (config, template) = pmc_llama_fuzz::split(data);
    pmc_llama_fuzz::file("tokenizer.json", TOKENIZER.as_bytes());
    let dir = pmc_llama_fuzz::file("tokenizer_config.json", config);
    let jinja = dir.join("chat_template.jinja");
    if template.is_empty() {
        let _ = std::fs::remove_file(&jinja);
    } else {
        std::fs::write(&jinja, template).unwrap();
    }
    if let Ok(tokenizer) = pmc_model::Tokenizer::from_dir(dir, None, &[]) {
        if let Ok(chat) = pmc_model::ChatTemplate::of(&tokenizer, dir) {
            let _ = chat.render(&[pmc_model::Message::new("user", "Hi")], true);
            let _ = chat.end_of_turn_ids(&tokenizer);
        }
    }
});
