//! Any bytes given to the S2ORC / JSONL reader either parse or return an error (annotation
//! offsets out of range, inside multi-byte characters, overlapping citation spans...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmc_corpus::{Preset, clean_paper, s2orc::parse_json_record};

fuzz_target!(|data: &[u8]| {
    if let Ok(paper) = parse_json_record(data, "fuzz.jsonl:1") {
        let _ = clean_paper(&paper, &Preset::Meditron.options());
    }
});
