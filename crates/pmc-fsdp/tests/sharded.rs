//! Sharded training equals unsharded: for 1, 2 and 4 in-process ranks at every level, the
//! same losses, gradient norms and final weights as pmc-train's single-process trainer on the
//! same global batches; a sharded checkpoint resumes at another world size on the same
//! curve; its consolidated HF model scores like the sharded run; a dead rank stops the others.

use std::time::Duration;

use burn::prelude::*;
use pmc_fsdp::{FsdpTrainer, ShardLevel, threads};
use pmc_model::{LlamaConfig, Precision, WeightDType, init_random};
use pmc_train::{Checkpointer, CosineSchedule, TokenWindows, TrainConfig, TrainStep, Trainer};

fn model_config(tied: bool) -> LlamaConfig {
    LlamaConfig::from_json(
        &serde_json::json!({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": tied}),
        std::path::Path::new("tiny"),
    )
    .unwrap()
}

fn train_config_in(precision: Precision) -> TrainConfig {
    TrainConfig {
        schedule: CosineSchedule {
            peak_lr: 3e-3,
            warmup_steps: 1,
            total_steps: 40,
            min_lr_ratio: 0.1,
        },
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        micro_batch: 2,
        global_batch: 8,
        seq_len: 16,
        seed: 3,
        precision,
        parallel_micro_batches: 1,
    }
}

fn data() -> TokenWindows {
    let tokens: Vec<u32> = (0..64 * 16)
        .map(|i| ((i / 16 * 7 + i) % 64) as u32)
        .collect();
    TokenWindows::new(&tokens, 16, 11)
}

const STEPS: usize = 4;

/// Losses, grad norms and final weights (by HF name) of a run.
struct Run {
    losses: Vec<f64>,
    norms: Vec<f64>,
    weights: Vec<(String, Vec<f32>)>,
}

fn weights_of(model: &pmc_model::Llama) -> Vec<(String, Vec<f32>)> {
    model
        .named_weights()
        .into_iter()
        .map(|w| {
            let v = w
                .value
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            (w.name, v)
        })
        .collect()
}

fn unsharded(tied: bool, precision: Precision) -> Run {
    let device = Device::flex().autodiff();
    let config = model_config(tied);
    let model = init_random(&config, WeightDType::F32, 42, &device);
    let mut t = Trainer::new(model, config, train_config_in(precision), &device).unwrap();
    let d = data();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let s = t.step(&d).unwrap();
        losses.push(s.loss);
        norms.push(s.grad_norm);
    }
    Run {
        losses,
        norms,
        weights: weights_of(&t.model.valid()),
    }
}

/// The consolidated weights of a sharded trainer, read back from its checkpoint.
fn consolidated(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let loaded = pmc_model::load_model(dir, &Default::default(), &Device::flex()).unwrap();
    weights_of(&loaded.model)
}

fn sharded(world: usize, level: ShardLevel, tied: bool, precision: Precision) -> Run {
    sharded_from(world, level, tied, precision, false)
}

/// A sharded run; with `from_seed` each rank makes its units from the seed instead of
/// receiving a whole model.
fn sharded_from(
    world: usize,
    level: ShardLevel,
    tied: bool,
    precision: Precision,
    from_seed: bool,
) -> Run {
    let d = data();
    let scratch = tempfile::tempdir().unwrap();
    let comms = threads::group(world, Duration::from_secs(60));
    let results = threads::run(comms, |comm| {
        let device = Device::flex().autodiff();
        let config = model_config(tied);
        let train = train_config_in(precision);
        let mut t = if from_seed {
            FsdpTrainer::from_seed(config, 42, train, level, comm, &device)?
        } else {
            let model = init_random(&config, WeightDType::F32, 42, &device);
            FsdpTrainer::new(model, config, train, level, comm, &device)?
        };
        let (mut losses, mut norms) = (Vec::new(), Vec::new());
        for _ in 0..STEPS {
            let s = t.step(&d)?;
            losses.push(s.loss);
            norms.push(s.grad_norm);
        }
        let dir = Checkpointer::new(scratch.path(), 1).save(&t)?;
        Ok::<_, pmc_train::TrainError>((losses, norms, dir))
    });
    let mut runs: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("no panic").expect("no error"))
        .collect();
    let (losses, norms, dir) = runs.remove(0);
    for (l, n, _) in &runs {
        assert_eq!(l, &losses, "every rank reports the same losses");
        assert_eq!(n, &norms);
    }
    Run {
        losses,
        norms,
        weights: consolidated(&dir),
    }
}

fn assert_close(what: &str, got: &Run, want: &Run) {
    for (step, (a, b)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "{what}: loss at step {step}: {a} vs {b}"
        );
    }
    for (step, (a, b)) in got.norms.iter().zip(&want.norms).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "{what}: |g| at step {step}: {a} vs {b}"
        );
    }
    assert_eq!(got.weights.len(), want.weights.len(), "{what}: tensors");
    let mut worst = 0f32;
    for ((name, a), (name_b, b)) in got.weights.iter().zip(&want.weights) {
        assert_eq!(name, name_b);
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}: {name}: {x} vs {y}"
            );
        }
    }
    println!("{what}: max |Δw| = {worst:.2e}");
}

#[test]
fn every_level_and_world_size_trains_like_the_unsharded_trainer() {
    for tied in [true, false] {
        let reference = unsharded(tied, Precision::F32);
        assert!(
            reference.losses[STEPS - 1] < reference.losses[0],
            "the reference learns"
        );
        for level in 0..4 {
            let level = ShardLevel::from_number(level).unwrap();
            for world in [1, 2, 4] {
                let run = sharded(world, level, tied, Precision::F32);
                assert_close(
                    &format!("tied {tied}, {level:?}, N = {world}"),
                    &run,
                    &reference,
                );
            }
        }
    }
}

/// Mixed precision (bf16 products, f32 master weights) shards the same way: level 3, where
/// each layer is rebuilt from its gathered buffer, keeps the layer's bf16 products.
#[test]
fn bf16_products_shard_like_the_unsharded_trainer() {
    let reference = unsharded(false, Precision::Bf16);
    let f32_reference = unsharded(false, Precision::F32);
    assert_ne!(
        reference.losses, f32_reference.losses,
        "bf16 products change the losses"
    );
    for level in [ShardLevel::DataParallel, ShardLevel::Parameters] {
        let run = sharded(2, level, false, Precision::Bf16);
        assert_close(&format!("bf16, {level:?}, N = 2"), &run, &reference);
    }
}

/// A run whose ranks make their shards from the seed, unit by unit, trains exactly like one
/// started from the whole model.
#[test]
fn starting_from_the_seed_equals_starting_from_the_model() {
    for tied in [true, false] {
        let reference = unsharded(tied, Precision::F32);
        for level in [ShardLevel::Gradients, ShardLevel::Parameters] {
            let run = sharded_from(2, level, tied, Precision::F32, true);
            assert_close(
                &format!("from the seed, tied {tied}, {level:?}"),
                &run,
                &reference,
            );
        }
    }
}

/// Requests of every shape a probe sends: several choices sharing a context, contexts of
/// one token, continuations of several.
fn score_requests() -> Vec<pmc_model::ScoreRequest> {
    (0..7)
        .map(|i| pmc_model::ScoreRequest {
            context: (0..1 + (i * 5) % 9)
                .map(|t| ((t * 3 + i) % 64) as u32)
                .collect(),
            continuation: (0..1 + i % 3)
                .map(|t| ((t * 11 + i * 7) % 64) as u32)
                .collect(),
        })
        .collect()
}

/// A benchmark probe scored during a sharded run: every rank gets every request's
/// log-likelihood, equal to the single-process trainer's, at levels 0 (whole model on each
/// rank) and 3 (units gathered one by one).
#[test]
fn sharded_trainers_score_requests_like_the_unsharded_one() {
    let requests = score_requests();
    let device = Device::flex().autodiff();
    let config = model_config(true);
    let model = init_random(&config, WeightDType::F32, 42, &device);
    let single = Trainer::new(model, config, train_config_in(Precision::F32), &device).unwrap();
    let want = single.continuation_logliks(&requests).unwrap();
    assert!(want.iter().all(|l| l.is_finite() && *l < 0.0), "{want:?}");
    for (world, level) in [(2, ShardLevel::Parameters), (4, ShardLevel::DataParallel)] {
        let comms = threads::group(world, Duration::from_secs(60));
        let results = threads::run(comms, |comm| {
            let device = Device::flex().autodiff();
            let config = model_config(true);
            let model = init_random(&config, WeightDType::F32, 42, &device);
            let t = FsdpTrainer::new(
                model,
                config,
                train_config_in(Precision::F32),
                level,
                comm,
                &device,
            )?;
            t.continuation_logliks(&requests)
        });
        for (rank, got) in results.into_iter().enumerate() {
            let got = got.expect("no panic").expect("no error");
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-4,
                    "world {world}, {level:?}, rank {rank}, request {i}: {g} vs {w}"
                );
            }
        }
    }
}
