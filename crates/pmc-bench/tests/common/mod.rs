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

/// A data directory under `root` laid out like ../shared/data with MedQA only: 24 training
/// questions and 6 test ones.
pub fn medqa_data(root: &Path) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(data.join("medqa")).unwrap();
    std::fs::write(data.join("medqa/train_4options.jsonl"), medqa_lines(24, 0)).unwrap();
    std::fs::write(data.join("medqa/test_4options.jsonl"), medqa_lines(6, 100)).unwrap();
    data
}
