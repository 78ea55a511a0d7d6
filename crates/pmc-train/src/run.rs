//! A whole pretraining run: text in, tokens, held-out perplexity before and after, logged
//! steps (`metrics.jsonl`), periodic atomic checkpoints (the last K kept), resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use pmc_model::{LlamaConfig, Precision, Tokenizer, WeightDType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::TrainError;
use crate::data::TrainingData;
use crate::trainer::{TrainConfig, Trainer, checkpoint_dir};

/// Model sizes for training from scratch. `vocab_size` comes from the tokenizer.
pub fn preset(name: &str, vocab_size: usize) -> Result<LlamaConfig, TrainError> {
    // (hidden, intermediate, layers, heads, kv heads, context)
    let (h, i, l, nh, nkv, ctx) = match name {
        "tiny" => (128, 344, 4, 4, 2, 512),
        // The 33.7 M-parameter reference config of the trainer benchmark (with vocab 8192).
        "small" => (512, 1376, 8, 8, 8, 2048),
        "7b" => (4096, 11008, 32, 32, 32, 4096),
        other => {
            return Err(TrainError::Config(format!(
                "unknown preset `{other}` (tiny, small, 7b)"
            )));
        }
    };
    LlamaConfig::from_json(
        &json!({"vocab_size": vocab_size, "hidden_size": h, "intermediate_size": i,
                "num_hidden_layers": l, "num_attention_heads": nh, "num_key_value_heads": nkv,
                "max_position_embeddings": ctx, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "tie_word_embeddings": name == "tiny", "bos_token_id": 0, "eos_token_id": 0}),
        Path::new(name),
    )
    .map_err(TrainError::Model)
}

/// Trains a byte-level BPE of `vocab_size` tokens on `texts`, with `<|endoftext|>` (id 0) as
/// the document separator.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer, TrainError> {
    let inner = pmc_corpus::tokens::train_byte_level_bpe(texts.iter().cloned(), vocab_size)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let eos = inner.token_to_id("<|endoftext|>");
    Ok(Tokenizer::new(
        inner,
        eos,
        eos.into_iter().collect(),
        false,
        false,
    ))
}

/// Documents of a text corpus: `.jsonl` files hold `{"text": ...}` per line; other files
/// hold one document per non-empty line.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<String>, TrainError> {
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.clone(), e))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            if jsonl {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    TrainError::Config(format!("{}: line {}: {e}", path.display(), i + 1))
                })?;
                let t = v["text"].as_str().ok_or_else(|| {
                    TrainError::Config(format!(
                        "{}: line {}: no string `text`",
                        path.display(),
                        i + 1
                    ))
                })?;
                docs.push(t.to_string());
            } else {
                docs.push(line.to_string());
            }
        }
    }
    Ok(docs)
}

/// Documents joined into one token stream, each followed by the end-of-sequence token.
pub fn tokenize(tokenizer: &Tokenizer, docs: &[String]) -> Result<Vec<u32>, TrainError> {
    let eos = tokenizer
        .eos_ids
        .first()
        .copied()
        .ok_or_else(|| TrainError::Config("the tokenizer has no EOS token".into()))?;
    let mut tokens = Vec::new();
    for d in docs {
        tokens.extend(tokenizer.encode(d)?);
        tokens.push(eos);
    }
    Ok(tokens)
}

/// Settings of a run beyond the optimisation hyper-parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    /// Optimizer steps in total.
    pub steps: usize,
    /// Log a line every this many steps.
    pub log_every: usize,
    /// Held-out perplexity every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Held-out windows evaluated at most.
    pub max_eval_windows: usize,
}

/// Set (for example by a Ctrl-C handler) to stop a run after the current step with a
/// checkpoint.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Perplexity summary of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Held-out perplexity before training (or at resume).
    pub ppl_before: f64,
    /// Held-out perplexity after training.
    pub ppl_after: f64,
    /// Optimizer steps taken in this invocation.
    pub steps: usize,
    /// Tokens trained on in this invocation.
    pub tokens: u64,
    /// Wall time of the training steps.
    pub seconds: f64,
}

/// Trains until `options.steps` optimizer steps are done, logging into `run_dir`.
pub fn run(
    trainer: &mut Trainer,
    train: &dyn TrainingData,
    held_out: &[Vec<u32>],
    options: &RunOptions,
    run_dir: &Path,
) -> Result<RunSummary, TrainError> {
    run_with(trainer, train, held_out, options, run_dir, |_| Ok(()))
}

/// As [`run`], calling `after_checkpoint(dir)` on each checkpoint written (to add files
/// such as the tokenizer).
pub fn run_with(
    trainer: &mut Trainer,
    train: &dyn TrainingData,
    held_out: &[Vec<u32>],
    options: &RunOptions,
    run_dir: &Path,
    after_checkpoint: impl Fn(&Path) -> Result<(), TrainError>,
) -> Result<RunSummary, TrainError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| TrainError::Io(p.clone(), e)
    };
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;
    let held_out = &held_out[..held_out.len().min(options.max_eval_windows)];
    let ppl_before = trainer.eval_loss(held_out)?.exp();
    eprintln!(
        "held-out perplexity at step {}: {ppl_before:.2}",
        trainer.state.step
    );
    writeln!(
        metrics,
        "{}",
        json!({"step": trainer.state.step, "val_loss": ppl_before.ln(), "val_ppl": ppl_before})
    )
    .map_err(io(&metrics_path))?;

    let first_step = trainer.state.step;
    let started = Instant::now();
    let first_tokens = trainer.state.tokens;
    while trainer.state.step < options.steps {
        let stats = trainer.step(train)?;
        let done = stats.step - first_step;
        let elapsed = started.elapsed().as_secs_f64();
        let tokens_per_s = (trainer.state.tokens - first_tokens) as f64 / elapsed;
        let mut line = json!({"step": stats.step, "loss": stats.loss, "lr": stats.lr,
                              "grad_norm": stats.grad_norm, "tokens_per_s": tokens_per_s,
                              "tokens": trainer.state.tokens});
        let evaluate = options.eval_every > 0 && stats.step.is_multiple_of(options.eval_every);
        if evaluate {
            let val_loss = trainer.eval_loss(held_out)?;
            line["val_loss"] = json!(val_loss);
            line["val_ppl"] = json!(val_loss.exp());
        }
        writeln!(metrics, "{line}").map_err(io(&metrics_path))?;
        if stats.step.is_multiple_of(options.log_every.max(1))
            || evaluate
            || stats.step == options.steps
        {
            let eta = elapsed / done as f64 * (options.steps - stats.step) as f64;
            eprintln!(
                "step {:>6}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s ETA {:.0}s{}",
                stats.step,
                options.steps,
                stats.loss,
                stats.lr,
                stats.grad_norm,
                tokens_per_s,
                eta,
                line.get("val_ppl").map_or(String::new(), |p| format!(
                    " val ppl {:.2}",
                    p.as_f64().unwrap_or(f64::NAN)
                ))
            );
        }
        let stopping = STOP.load(std::sync::atomic::Ordering::SeqCst);
        if stats.step.is_multiple_of(options.checkpoint_every.max(1))
            || stats.step == options.steps
            || stopping
        {
            let dir = save_and_prune(trainer, run_dir, options.keep_checkpoints)?;
            after_checkpoint(&dir)?;
            if stopping {
                eprintln!(
                    "interrupted: checkpoint {} written; continue with --resume {}",
                    dir.display(),
                    dir.display()
                );
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ppl_after = trainer.eval_loss(held_out)?.exp();
    writeln!(
        metrics,
        "{}",
        json!({"step": trainer.state.step, "val_loss": ppl_after.ln(), "val_ppl": ppl_after})
    )
    .map_err(io(&metrics_path))?;
    drop(metrics);
    let chart = crate::plot::write_curves(run_dir)?;
    eprintln!("curves: {} (and .png)", chart.display());
    Ok(RunSummary {
        ppl_before,
        ppl_after,
        steps: trainer.state.step - first_step,
        tokens: trainer.state.tokens - first_tokens,
        seconds,
    })
}

fn save_and_prune(trainer: &Trainer, run_dir: &Path, keep: usize) -> Result<PathBuf, TrainError> {
    let dir = checkpoint_dir(run_dir, trainer.state.step);
    std::fs::create_dir_all(dir.parent().expect("checkpoints/"))
        .map_err(|e| TrainError::Io(dir.clone(), e))?;
    trainer.save_checkpoint(&dir)?;
    let mut all = list_checkpoints(run_dir)?;
    while all.len() > keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::Io(old.clone(), e))?;
    }
    Ok(dir)
}

/// The complete checkpoints of a run, oldest first (`step-N.tmp`/`.old` directories of an
/// interrupted save are not checkpoints).
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let parent = run_dir.join("checkpoints");
    if !parent.exists() {
        return Ok(Vec::new());
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map_err(|e| TrainError::Io(parent.clone(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
        })
        .collect();
    all.sort();
    Ok(all)
}

/// A fresh model of `config` for training from scratch (f32, seeded).
pub fn fresh_model(config: &LlamaConfig, seed: u64, device: &Device) -> pmc_model::Llama {
    pmc_model::init_random(config, WeightDType::F32, seed, device)
}

/// The run's own copy of its config, for `--resume` and for people.
pub fn save_run_config(run_dir: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let path = run_dir.join("run_config.json");
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::Io(run_dir.to_path_buf(), e))?;
    std::fs::write(&path, serde_json::to_vec_pretty(value).expect("JSON"))
        .map_err(|e| TrainError::Io(path, e))
}

/// Default hyper-parameters of the bundled main job.
pub fn default_train_config(seq_len: usize) -> TrainConfig {
    TrainConfig {
        schedule: crate::CosineSchedule {
            peak_lr: 3e-3,
            warmup_steps: 20,
            total_steps: 200,
            min_lr_ratio: 0.1,
        },
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_grad_norm: Some(1.0),
        micro_batch: 8,
        global_batch: 16,
        seq_len,
        seed: 0,
        precision: Precision::F32,
        parallel_micro_batches: 1,
    }
}
