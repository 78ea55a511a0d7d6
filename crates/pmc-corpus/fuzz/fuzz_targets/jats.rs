//! Any bytes given to the JATS reader either parse or return an error; with a paper, the
//! cleaner renders it without panicking under every preset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmc_corpus::{Preset, clean_paper, jats::parse_jats};

fuzz_target!(|data: &[u8]| {
    if let Ok(paper) = parse_jats(data, "fuzz.xml") {
        for preset in [Preset::PmcLlama, Preset::Meditron, Preset::Plain] {
            let _ = clean_paper(&paper, &preset.options());
        }
    }
});
