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

/// Weights held in ggml's block formats and multiplied by the quantized kernels score real
/// prompts close to the dense (dequantised f32) model: per-answer log-likelihoods of MedQA
/// questions, and the mean token NLL of a long passage. `q4_1` is the file's own format, so
/// re-quantising its dequantised values restores nearly the same grid; `q8_0` adds only the
/// 8-bit rounding of the activations; `q4_0` re-rounds onto a coarser grid.
#[test]
fn quantized_weights_score_real_prompts_close_to_the_dense_model() {
    use pmc_model::{QuantKind, WeightDType};
    let path = require!(smollm2());
    let shared = shared().unwrap();
    let device = pmc_model::burn::prelude::Device::flex();
    let dense = load_model(&path, &LoadOptions::default(), &device).unwrap();
    let tokenizer = dense.tokenizer.as_ref().unwrap();
    let questions: Vec<String> =
        std::fs::read_to_string(shared.join("data/medqa/test_4options.jsonl"))
            .unwrap()
            .lines()
            .take(4)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let options = v["options"].as_object().unwrap();
                let listed: String = options
                    .iter()
                    .map(|(k, o)| format!("\n{k}. {}", o.as_str().unwrap()))
                    .collect();
                format!(
                    "Question: {}{listed}\nAnswer:",
                    v["question"].as_str().unwrap()
                )
            })
            .collect();
    let passage = tokenizer.encode(&questions.join("\n\n")).unwrap();
    let score_all = |model: &pmc_model::Llama| -> (Vec<f64>, f64) {
        let mut logliks = Vec::new();
        for q in &questions {
            for option in [" A", " B", " C", " D"] {
                let (ctx, cont) = tokenizer.encode_pair(q, option).unwrap();
                logliks.push(score_continuations(model, &ctx, &[cont], &device).unwrap()[0].loglik);
            }
        }
        let nll = pmc_model::mean_nll(model, &passage, 256, &device).unwrap();
        (logliks, nll)
    };
    let (want, want_nll) = score_all(&dense.model);
    for (kind, loglik_tolerance, nll_tolerance) in [
        // Measured (4 questions, tiled kernels, activations rounded half to even as ggml's
        // SIMD code does), AVX-512 VNNI on a Zen 4 / AVX2 on a Zen 3: q8_0 0.71 / +0.011
        // and 0.81 / +0.014, q4_1 0.22 / +0.004 and 0.35 / +0.0125, q4_0 2.9 / +0.32. The
        // max over 16 one-token answers is one draw of the rounding noise — rounding halves
        // away from zero instead gives q8_0 0.36 and q4_1 0.42 — so its bounds leave room.
        // Both 8-bit and 4-bit weights multiply the same 8-bit activations, and q4_1's
        // weights are the file's own grid (re-quantising adds almost nothing), so the
        // activations' rounding is what moves both mean NLLs (+0.011 to +0.014 for q8_0):
        // q4_1 gets q8_0's bound; +0.004 on the Zen 4 was a lucky draw, not a tighter law.
        // The same reasoning holds for the per-answer maximum, so q4_1 gets q8_0's 0.9 too:
        // under `.ci/run` on the Zen 3 it drew 0.514 / +0.0066 (twice), where the same build
        // run by hand draws 0.35 / +0.0125 — which input of the environment moves the 4-bit
        // path is not yet known (the 8-bit figures are identical in both).
        (QuantKind::Q8_0, 0.9, 0.03),
        (QuantKind::Q4_1, 0.9, 0.03),
        (QuantKind::Q4_0, 4.0, 0.5),
    ] {
        let options = LoadOptions {
            dtype: WeightDType::F32,
            quantize: Some(kind),
        };
        let quantized = load_model(&path, &options, &device).unwrap();
        assert!(quantized.model.is_quantized());
        let (got, got_nll) = score_all(&quantized.model);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        let picks = |l: &[f64]| -> Vec<usize> {
            l.chunks(4)
                .map(|c| (0..4).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap())
                .collect()
        };
        let same = picks(&got)
            .iter()
            .zip(picks(&want))
            .filter(|(a, b)| **a == *b)
            .count();
        println!(
            "{}: max |Δloglik| {worst:.4} over {} answers, mean NLL {got_nll:.4} vs {want_nll:.4}, {same}/{} same answer",
            kind.name(),
            got.len(),
            questions.len()
        );
        assert!(
            worst < loglik_tolerance,
            "{}: max |Δloglik| = {worst}",
            kind.name()
        );
        assert!(
            (got_nll - want_nll).abs() < nll_tolerance,
            "{}: mean NLL {got_nll} vs {want_nll}",
            kind.name()
        );
        let dir = tempfile::tempdir().unwrap();
        let refused = pmc_model::save_hf(
            &quantized.model,
            &quantized.config,
            dir.path(),
            Default::default(),
        )
        .unwrap_err();
        assert!(refused.to_string().contains("quantized"), "{refused}");
    }
}
