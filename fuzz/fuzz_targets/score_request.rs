#![no_main]
//! A line of a `score` request file (token ids, or text tokenized with a real tokenizer).
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static TOKENIZER: OnceLock<pmc_model::Tokenizer> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let inner = tokenizers::Tokenizer::from_bytes(include_bytes!("../../crates/pmc-model/tests/fixtures/gqa_tied/tokenizer.json")).unwrap();
        pmc_model::Tokenizer::new(inner, Some(1), vec![2], true, false)
    });
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = pmc_model::ScoreRequest::parse(line, Some(tokenizer));
    }
});
