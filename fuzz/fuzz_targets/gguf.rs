#![no_main]
//! The GGUF reader: header, metadata, tensor infos, then the tokenizer and config built from
//! the metadata (what `load_gguf` does before reading any weights).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = pmc_llama_fuzz::file("model.gguf", data);
    if let Ok(file) = pmc_model::gguf::GgufFile::open(&dir.join("model.gguf")) {
        let _ = file.llama_config();
        let _ = pmc_model::gguf::tokenizer::tokenizer_from_gguf(&file);
    }
});
