//! lm-evaluation-harness against the server, unchanged: its own command line with the
//! `local-completions` model on a multiple-choice task of local data. It finds the server's
//! tokenizer endpoints by itself (its `remote` tokenizer backend, so no tokenizer files are
//! needed), sends token ids with `echo` and `logprobs`, and must get, choice by choice, the
//! log-likelihood and greediness that `cargo xtask eval` computes in-process.
//!
//! Skipped, with the reason printed, where the model cannot be fetched or lm-eval is missing —
//! except under CI, where `.ci/run` installs `lm-eval[api]`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{API_KEY, TestServer};
use pmc_model::{ContextCache, LoadOptions, load_model};
use serde_json::{Value, json};

/// (context, choices, answer): lm-eval joins each choice to the context with a space.
const DOCS: [(&str, [&str; 3], usize); 4] = [
    (
        "Question: Is aspirin an anticoagulant?\nAnswer:",
        ["yes", "no", "maybe"],
        1,
    ),
    (
        "Question: Does insulin lower blood glucose?\nAnswer:",
        ["yes", "no", "maybe"],
        0,
    ),
    (
        "The patient was given metformin for",
        ["type 2 diabetes", "a broken leg", "hair loss"],
        0,
    ),
    (
        "Abstract: Statins reduce LDL cholesterol.\nQuestion: Do statins lower LDL?\nAnswer:",
        ["yes", "no", "maybe"],
        0,
    ),
];

const TASK: &str = "pmc_serve_check";

/// The task's data and its lm-eval YAML in `dir`.
fn write_task(dir: &Path) {
    let docs: Vec<String> = DOCS
        .iter()
        .map(|(text, choices, answer)| {
            json!({"text": text, "choices": choices, "answer": answer}).to_string()
        })
        .collect();
    let data = dir.join("docs.jsonl");
    std::fs::write(&data, docs.join("\n") + "\n").unwrap();
    let yaml = format!(
        "task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\n\
         output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{{{text}}}}\"\n\
         doc_to_choice: \"{{{{choices}}}}\"\ndoc_to_target: \"{{{{answer}}}}\"\n\
         metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        data.display()
    );
    std::fs::write(dir.join(format!("{TASK}.yaml")), yaml).unwrap();
}

/// (log-likelihood, greedy) of every choice of every document, scored in-process as `eval`'s
/// loglik mode scores it.
fn expected(model: &Path) -> Vec<Vec<(f64, bool)>> {
    let device = pmc_model::default_device();
    let loaded = load_model(model, &LoadOptions::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let mut contexts = ContextCache::default();
    DOCS.iter()
        .map(|(text, choices, _)| {
            choices
                .iter()
                .map(|choice| {
                    let (context_ids, continuation_ids) =
                        tokenizer.encode_pair(text, &format!(" {choice}")).unwrap();
                    let score = contexts
                        .prepare(&loaded.model, &context_ids, &device)
                        .unwrap()
                        .score(&loaded.model, &continuation_ids)
                        .unwrap();
                    (score.loglik, score.greedy)
                })
                .collect()
        })
        .collect()
}

/// lm-eval's per-document records (`samples_<task>_<time>.jsonl` under `out`), by doc id.
fn samples(out: &Path) -> Vec<Value> {
    let mut found = Vec::new();
    for entry in walk(out) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("samples_{TASK}")) && name.ends_with(".jsonl") {
            found.extend(
                std::fs::read_to_string(&entry)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    found.sort_by_key(|s| s["doc_id"].as_u64());
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn lm_evaluation_harness_scores_through_the_server_as_we_do() {
    let Some(model) = common::smollm2_and_python(
        "lm_eval, tenacity",
        "lm-evaluation-harness is not installed (pip install 'lm-eval[api]')",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_task(dir.path());
    let expected = expected(&model);
    let server = TestServer::start(model);
    let out = dir.path().join("out");
    let output = Command::new("python3")
        .args([
            "-m",
            "lm_eval",
            "--model",
            "local-completions",
            "--model_args",
        ])
        .arg(format!(
            "model=smollm2-135m,base_url=http://{}/v1/completions,num_concurrent=1,max_retries=1",
            server.address
        ))
        .args(["--tasks", TASK, "--include_path"])
        .arg(dir.path())
        .arg("--output_path")
        .arg(&out)
        .arg("--log_samples")
        .env("OPENAI_API_KEY", API_KEY)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    server.stop();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lm_eval failed:\n{}",
        stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(
        stderr.contains("remote tokenizer"),
        "lm-eval did not pick the server's tokenizer endpoints"
    );
    let samples = samples(&out);
    assert_eq!(samples.len(), DOCS.len(), "lm-eval's samples under {out:?}");
    for (sample, choices) in samples.iter().zip(&expected) {
        let responses = sample["resps"].as_array().unwrap();
        assert_eq!(responses.len(), choices.len());
        for (response, &(loglik, greedy)) in responses.iter().zip(choices) {
            // lm-eval logs each response as [["loglik", "is_greedy"]], as strings.
            let pair = &response[0];
            let theirs: f64 = pair[0].as_str().unwrap().parse().unwrap();
            let their_greedy = pair[1].as_str().unwrap() == "True";
            assert!(
                (theirs - loglik).abs() <= 1e-4,
                "doc {}: lm-eval got {theirs} through the server, eval computes {loglik}",
                sample["doc_id"]
            );
            assert_eq!(their_greedy, greedy, "doc {}", sample["doc_id"]);
        }
    }
}
