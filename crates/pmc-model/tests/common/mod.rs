//! Helpers shared by the integration tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The fixtures of `tests/fixtures/make_fixtures.py`: tiny random checkpoints in every layout
/// we read, with what transformers computed on them in `expected.json`.
pub const FIXTURES: [&str; 4] = [
    "gqa_tied",
    "bf16_sharded_llama3",
    "linear_bias",
    "dynamic_f16",
];

/// The directory of fixture `name`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Fixture `name`'s `expected.json`.
pub fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `../shared` (or `$PMC_SHARED`), when present.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("PMC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    dir.join("README.md").exists().then_some(dir)
}

/// Every question text of the shared benchmarks: PubMedQA questions and abstracts, MedQA
/// questions and options, MedMCQA questions and options.
pub fn question_texts(shared: &std::path::Path) -> Vec<String> {
    let mut texts = Vec::new();
    let pubmedqa: Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("data/pubmedqa/ori_pqal.json")).unwrap(),
    )
    .unwrap();
    for record in pubmedqa.as_object().unwrap().values() {
        texts.push(record["QUESTION"].as_str().unwrap().to_string());
        for context in record["CONTEXTS"].as_array().unwrap() {
            texts.push(context.as_str().unwrap().to_string());
        }
    }
    for file in [
        "medqa/test_5options.jsonl",
        "medmcqa/dev.jsonl",
        "medmcqa/test_nolabels.jsonl",
    ] {
        for line in std::fs::read_to_string(shared.join("data").join(file))
            .unwrap()
            .lines()
        {
            let r: Value = serde_json::from_str(line).unwrap();
            texts.push(r["question"].as_str().unwrap().to_string());
            let options: Vec<&Value> = match (&r["options"], &r["choices"]) {
                (Value::Object(o), _) => o.values().collect(),
                (_, Value::Array(c)) => c.iter().collect(),
                _ => Vec::new(),
            };
            texts.extend(
                options
                    .iter()
                    .filter_map(|o| o.as_str())
                    .map(str::to_string),
            );
        }
    }
    texts
}

/// Token ids of a JSON list.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Scores the `context_ids`/`continuation_ids` request `r` of an `expected.json`.
pub fn score_request(
    model: &pmc_model::Llama,
    r: &Value,
    device: &pmc_model::burn::prelude::Device,
) -> pmc_model::Score {
    let continuation = ids(&r["continuation_ids"]);
    pmc_model::score_continuations(model, &ids(&r["context_ids"]), &[continuation], device).unwrap()
        [0]
}
