//! Parity with HF transformers on the fixtures of `tests/fixtures/make_fixtures.py`: tiny
//! random checkpoints in every layout we read, with log-likelihoods and greedy tokens that
//! transformers computed. Also the save → load round trip.

mod common;

use common::{FIXTURES, expected, fixture, ids, score_request};
use pmc_model::{GenerationConfig, LoadOptions, WeightDType, load_model, score_continuations};

const TOLERANCE: f64 = 1e-3;

/// The parity checks of one fixture on one device; returns the worst |Δloglik|.
fn check_fixture(name: &str, device: &pmc_model::burn::prelude::Device) -> f64 {
    let loaded = load_model(&fixture(name), &LoadOptions::default(), device).unwrap();
    let exp = expected(name);
    let mut worst: f64 = 0.0;
    for r in exp["requests"].as_array().unwrap() {
        let context = ids(&r["context_ids"]);
        let continuation = ids(&r["continuation_ids"]);
        let got = score_continuations(&loaded.model, &context, &[continuation], device).unwrap()[0];
        let want = r["loglik"].as_f64().unwrap();
        assert!(
            (got.loglik - want).abs() <= TOLERANCE,
            "{name}: loglik {} vs transformers {want} for {r}",
            got.loglik
        );
        assert_eq!(
            got.greedy,
            r["greedy"].as_bool().unwrap(),
            "{name}: greedy flag for {r}"
        );
        worst = worst.max((got.loglik - want).abs());
    }
    for g in exp["generations"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        let want = ids(&g["tokens"]);
        let config = GenerationConfig {
            max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let got = pmc_model::generate(&loaded.model, &prompt, &config, &[], device, |_| Ok(true))
            .unwrap();
        assert_eq!(got, want, "{name}: greedy tokens differ from transformers");
        // The greedy continuation must score as greedy, except where dynamic NTK makes a
        // single pass over the whole text differ from incremental decoding (as in HF).
        if loaded
            .model
            .rope()
            .depends_on_length(prompt.len() + got.len())
        {
            continue;
        }
        let score = score_continuations(&loaded.model, &prompt, &[got], device).unwrap()[0];
        assert!(score.greedy, "{name}: generated tokens not flagged greedy");
    }
    worst
}

#[test]
fn scores_and_greedy_tokens_match_transformers() {
    let device = pmc_model::burn::prelude::Device::flex();
    for name in FIXTURES {
        let worst = check_fixture(name, &device);
        println!("{name}: max |Δloglik| = {worst:.2e}");
    }
}

#[test]
fn text_pairs_are_tokenized_like_lm_eval() {
    let device = pmc_model::burn::prelude::Device::flex();
    let loaded = load_model(&fixture("gqa_tied"), &LoadOptions::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().expect("gqa_tied has a tokenizer");
    assert!(tokenizer.add_bos, "the fixture's post-processor adds BOS");
    for r in expected("gqa_tied")["text_requests"].as_array().unwrap() {
        let (ctx, cont) = tokenizer
            .encode_pair(
                r["context"].as_str().unwrap(),
                r["continuation"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(ctx, ids(&r["context_ids"]), "context of {r}");
        assert_eq!(cont, ids(&r["continuation_ids"]), "continuation of {r}");
        let got = score_continuations(&loaded.model, &ctx, &[cont], &device).unwrap()[0];
        assert!((got.loglik - r["loglik"].as_f64().unwrap()).abs() <= TOLERANCE);
    }
}

#[test]
fn bf16_weights_in_memory_stay_close() {
    // Holding f32 weights as bf16 rounds them; scores move, but only a little.
    let device = pmc_model::burn::prelude::Device::flex();
    let options = LoadOptions {
        dtype: WeightDType::BF16,
        quantize: None,
    };
    let loaded = load_model(&fixture("linear_bias"), &options, &device).unwrap();
    for r in expected("linear_bias")["requests"].as_array().unwrap() {
        let got = score_request(&loaded.model, r, &device);
        let want = r["loglik"].as_f64().unwrap();
        assert!(
            (got.loglik - want).abs() < 0.05 * want.abs().max(1.0),
            "{} vs {want}",
            got.loglik
        );
    }
    // A bf16 checkpoint held in bf16 is exact.
    let loaded = load_model(&fixture("bf16_sharded_llama3"), &options, &device).unwrap();
    let r = &expected("bf16_sharded_llama3")["requests"][2];
    let got = score_request(&loaded.model, r, &device);
    assert!((got.loglik - r["loglik"].as_f64().unwrap()).abs() <= TOLERANCE);
}

#[test]
fn save_then_load_gives_identical_tensors() {
    let device = pmc_model::burn::prelude::Device::flex();
    for (name, dtype, shard) in [
        ("gqa_tied", WeightDType::F32, usize::MAX),
        ("bf16_sharded_llama3", WeightDType::BF16, 50_000),
        ("linear_bias", WeightDType::F32, 100_000),
    ] {
        let original = load_model(
            &fixture(name),
            &LoadOptions {
                dtype,
                quantize: None,
            },
            &device,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = pmc_model::SaveOptions {
            dtype,
            max_shard_bytes: shard,
        };
        pmc_model::save_hf(&original.model, &original.config, dir.path(), options).unwrap();
        let sharded = dir.path().join("model.safetensors.index.json").exists();
        assert_eq!(sharded, shard != usize::MAX, "{name}: sharding");
        let reloaded = load_model(
            dir.path(),
            &LoadOptions {
                dtype,
                quantize: None,
            },
            &device,
        )
        .unwrap();
        assert_eq!(reloaded.config.rope_scaling, original.config.rope_scaling);
        let a = original.model.named_weights();
        let b = reloaded.model.named_weights();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.name, y.name);
            assert_eq!(x.shape, y.shape);
            assert_eq!(x.value.to_data(), y.value.to_data(), "{name}: {}", x.name);
        }
        if std::env::var_os("PMC_KEEP_SAVED").is_some() {
            let keep = std::env::temp_dir().join(format!("pmc-saved-{name}"));
            let _ = std::fs::remove_dir_all(&keep);
            std::fs::rename(dir.keep(), &keep).unwrap();
            println!("kept {}", keep.display());
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn parity_on_wgpu() {
    // Software Vulkan (lavapipe) in CI; skip with a reason when no adapter exists.
    let device = match std::panic::catch_unwind(|| {
        let d = pmc_model::burn::prelude::Device::wgpu(
            pmc_model::burn::tensor::DeviceKind::DefaultDevice,
        );
        let _ = pmc_model::burn::prelude::Tensor::<1>::zeros([1], &d).into_data();
        d
    }) {
        Ok(d) => d,
        Err(_) => {
            println!("SKIP parity_on_wgpu: no wgpu adapter on this machine");
            return;
        }
    };
    for name in FIXTURES {
        let worst = check_fixture(name, &device);
        println!("wgpu {name}: max |Δloglik| = {worst:.2e}");
    }
}
