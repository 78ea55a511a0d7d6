//! What the regime tests share: the fixture model and MedQA-shaped questions.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The GQA fixture model (tied embeddings, a byte-level BPE tokenizer).
pub fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmc-model/tests/fixtures/gqa_tied")
}

/// `n` four-option questions, JSONL in MedQA's original fields.
pub fn medqa_lines(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let i = i + offset;
            let answer = ["A", "B", "C", "D"][i % 4];
            serde_json::json!({
                "question": format!("Which enzyme does drug {i} inhibit in patient {}?", i % 7),
                "options": {"A": "kinase", "B": "protease", "C": "lipase", "D": "amylase"},
                "answer_idx": answer,
            })
            .to_string()
                + "\n"
        })
        .collect()
}
