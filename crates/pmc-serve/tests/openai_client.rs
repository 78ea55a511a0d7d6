//! The server against real clients: `tests/openai_client.py` drives it with the official
//! `openai` Python package (and httpx for malformed requests) on SmolLM2-135M-Instruct.
//! What the server returns is compared with what the library computes the way `cargo xtask
//! score` and `cargo xtask generate --chat` do, written to a file for the script.
//!
//! Skipped, with the reason printed, where the model cannot be fetched or the `openai`
//! package is missing — except under CI (`CI` set), where `.ci/run` installs the package and
//! a skip would hide a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::{API_KEY, MAX_CONCURRENT, MAX_CONTEXT, MAX_WAITING, TestServer};

use pmc_model::{ChatTemplate, ContextCache, GenerationConfig, LoadOptions, Message, load_model};
use serde_json::json;

/// Greedy chat the way `generate --chat` runs it: (text, prompt tokens, new tokens, finish).
fn greedy_chat(
    loaded: &pmc_model::LoadedModel,
    template: &ChatTemplate,
    prompt: &str,
    max_tokens: usize,
) -> serde_json::Value {
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let device = pmc_model::default_device();
    let (ids, stop_ids) = template
        .prompt_ids(tokenizer, &[Message::new("user", prompt)])
        .unwrap();
    let config = GenerationConfig {
        max_new_tokens: max_tokens,
        ..Default::default()
    };
    let mut stream = tokenizer.stream();
    let mut text = String::new();
    let tokens = pmc_model::generate(&loaded.model, &ids, &config, &stop_ids, &device, |id| {
        if !stop_ids.contains(&id) {
            text.push_str(&stream.push(id)?);
        }
        Ok(true)
    })
    .unwrap();
    let stopped = tokens.last().is_some_and(|t| stop_ids.contains(t));
    json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "text": text,
        "prompt_tokens": ids.len(),
        "completion_tokens": tokens.len(),
        "finish_reason": if stopped { "stop" } else { "length" },
    })
}

/// What the script compares the server's answers with.
fn expected(model: &Path) -> serde_json::Value {
    let device = pmc_model::default_device();
    let loaded = load_model(model, &LoadOptions::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let pairs = [
        ("Question: Is aspirin an anticoagulant?\nAnswer:", " no"),
        ("The patient was given metformin for", " type 2 diabetes"),
        ("The capital of France is", " Paris"),
    ];
    let mut contexts = ContextCache::default();
    let scores: Vec<_> = pairs
        .iter()
        .map(|(context, continuation)| {
            let (context_ids, continuation_ids) =
                tokenizer.encode_pair(context, continuation).unwrap();
            let score = contexts
                .prepare(&loaded.model, &context_ids, &device)
                .unwrap()
                .score(&loaded.model, &continuation_ids)
                .unwrap();
            json!({
                "context_ids": context_ids,
                "continuation_ids": continuation_ids,
                "loglik": score.loglik,
                "is_greedy": score.greedy,
            })
        })
        .collect();
    // A whole text scored from its second token, as echo does.
    let text = "Metformin lowers blood glucose in type 2 diabetes.";
    let ids = tokenizer.encode(text).unwrap();
    let text_loglik = contexts
        .prepare(&loaded.model, &ids[..1], &device)
        .unwrap()
        .score(&loaded.model, &ids[1..])
        .unwrap()
        .loglik;
    let template = ChatTemplate::of(tokenizer, &loaded.source).unwrap();
    let concurrent: Vec<_> = [
        "What is insulin?",
        "Name a symptom of anemia.",
        "What does the liver do?",
        "Define hypertension in one sentence.",
    ]
    .iter()
    .map(|p| greedy_chat(&loaded, &template, p, 12))
    .collect();
    json!({
        "model": "smollm2-135m",
        "max_context": MAX_CONTEXT,
        "capacity": MAX_CONCURRENT + MAX_WAITING,
        "chat": greedy_chat(&loaded, &template, "What is metformin used for?", 24),
        "scores": scores,
        "text_score": { "text": text, "ids": ids, "loglik": text_loglik },
        "concurrent": concurrent,
    })
}

#[test]
fn the_openai_client_gets_what_score_and_generate_compute() {
    let Some(model) = common::smollm2_and_python(
        "openai, httpx",
        "the `openai` Python package is not installed (pip install openai)",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected(&model).to_string()).unwrap();

    let server = TestServer::start(model);
    let address = server.address;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let status = Command::new("python3")
        .arg(&script)
        .args(["--base-url", &format!("http://{address}/v1")])
        .args(["--api-key", API_KEY])
        .arg("--expected")
        .arg(&expected_path)
        .args(["--server-pid", &std::process::id().to_string()])
        .status()
        .unwrap();
    server.stop();
    assert!(
        status.success(),
        "{} reported failures (above)",
        script.display()
    );
}
