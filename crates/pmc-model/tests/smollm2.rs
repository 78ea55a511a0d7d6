//! The real model: SmolLM2-135M-Instruct (GGUF Q4_1), fetched by
//! `../shared/tools/fetch-smollm2.sh`. Skipped, with the reason printed, where the shared
//! data or the fetch is unavailable.

use std::path::PathBuf;
use std::process::Command;

mod common;

use common::{question_texts, shared};
use pmc_model::{GenerationConfig, LoadOptions, Tokenizer, load_model, score_continuations};

/// The GGUF file's path, or the reason it is unavailable. Fetched once per test binary: the
/// script is not safe to run twice at the same time.
fn smollm2() -> Result<PathBuf, String> {
    static FETCHED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FETCHED.get_or_init(fetch).clone()
}

fn fetch() -> Result<PathBuf, String> {
    let shared = shared().ok_or("../shared is absent (set PMC_SHARED)")?;
    let out = Command::new("sh")
        .arg(shared.join("tools/fetch-smollm2.sh"))
        .output()
        .map_err(|e| format!("cannot run fetch-smollm2.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fetch-smollm2.sh failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.exists()
        .then_some(path)
        .ok_or("fetch-smollm2.sh printed no file".into())
}

macro_rules! require {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => {
                println!("SKIP: {reason}");
                return;
            }
        }
    };
}

#[test]
fn gguf_tokenizer_equals_the_reference_tokenizer_json() {
    let path = require!(smollm2());
    let shared = shared().unwrap();
    let file = pmc_model::gguf::GgufFile::open(&path).unwrap();
    let ours = pmc_model::gguf::tokenizer::tokenizer_from_gguf(&file).unwrap();
    let reference = Tokenizer::new(
        tokenizers::Tokenizer::from_file(shared.join("data/tokenizers/smollm2/tokenizer.json"))
            .unwrap(),
        None,
        Vec::new(),
        false,
        false,
    );
    let texts = question_texts(&shared);
    assert!(texts.len() > 40_000, "{} texts", texts.len());
    for text in &texts {
        assert_eq!(
            ours.encode_plain(text).unwrap(),
            reference.encode_plain(text).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(
        ours.encode("Paris").unwrap(),
        ours.encode_plain("Paris").unwrap(),
        "SmolLM2 adds no BOS"
    );
    println!("{} texts encode identically", texts.len());
}

#[test]
fn smollm2_says_paris_and_its_hf_conversion_scores_the_same() {
    let path = require!(smollm2());
    let device = pmc_model::burn::prelude::Device::flex();
    let gguf = load_model(&path, &LoadOptions::default(), &device).unwrap();
    let tokenizer = gguf.tokenizer.as_ref().unwrap();

    let prompt = tokenizer.encode("The capital of France is").unwrap();
    let config = GenerationConfig {
        max_new_tokens: 3,
        ..Default::default()
    };
    let tokens =
        pmc_model::generate(&gguf.model, &prompt, &config, &[], &device, |_| Ok(true)).unwrap();
    let text = tokenizer.decode(&tokens).unwrap();
    assert!(text.starts_with(" Paris"), "greedy continuation {text:?}");

    // Convert to an HF directory and load it back: same scores.
    let dir = tempfile::tempdir().unwrap();
    pmc_model::save_hf(&gguf.model, &gguf.config, dir.path(), Default::default()).unwrap();
    tokenizer.save(dir.path()).unwrap();
    let hf = load_model(dir.path(), &LoadOptions::default(), &device).unwrap();
    let question = "Question: A 23-year-old woman presents with fever and dysuria. Which organism is most likely?\nA. Escherichia coli\nB. Staphylococcus aureus\nC. Candida albicans\nD. Proteus mirabilis\nAnswer:";
    let hf_tokenizer = hf.tokenizer.as_ref().unwrap();
    for option in [" A", " B", " C", " D"] {
        let (ctx, cont) = tokenizer.encode_pair(question, option).unwrap();
        assert_eq!(
            (ctx.clone(), cont.clone()),
            hf_tokenizer.encode_pair(question, option).unwrap()
        );
        let a = score_continuations(&gguf.model, &ctx, std::slice::from_ref(&cont), &device)
            .unwrap()[0];
        let b = score_continuations(&hf.model, &ctx, &[cont], &device).unwrap()[0];
        assert_eq!(a, b, "option {option}");
    }
}

#[test]
fn chat_template_from_the_gguf_gets_an_answer_that_ends_at_its_turn() {
    let path = require!(smollm2());
    let device = pmc_model::default_device();
    let loaded = load_model(&path, &LoadOptions::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let template = pmc_model::ChatTemplate::of(tokenizer, &path).unwrap();
    let question = pmc_model::Message::new("user", "What is the capital of France?");
    let text = template.render(&[question], true).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    let stops = template.end_of_turn_ids(tokenizer).unwrap();
    let im_end = tokenizer.inner().token_to_id("<|im_end|>").unwrap();
    assert!(stops.contains(&im_end), "{stops:?}");
    let config = GenerationConfig {
        max_new_tokens: 24,
        ..Default::default()
    };
    let prompt = tokenizer.encode_plain(&text).unwrap();
    let reply = pmc_model::generate(&loaded.model, &prompt, &config, &stops, &device, |_| {
        Ok(true)
    })
    .unwrap();
    let answer = tokenizer.decode(&reply).unwrap();
    println!("reply: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_eq!(
        reply.last(),
        Some(&im_end),
        "the reply ends at the end of its turn"
    );
}
