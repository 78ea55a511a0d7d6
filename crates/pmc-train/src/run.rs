//! A whole pretraining run: text in, tokens, held-out perplexity before and after, logged
//! steps (`metrics.jsonl`), periodic atomic checkpoints (the last K kept), resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use burn::prelude::*;
use pmc_model::{LlamaConfig, Precision, Tokenizer, WeightDType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::TrainError;
use crate::checkpoint::Checkpointer;
use crate::config::TrainConfig;
use crate::data::TrainingData;
use crate::step::TrainStep;

/// Trains a byte-level BPE of `vocab_size` tokens on `texts`, with `<|endoftext|>` (id 0) as
/// the document separator.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer, TrainError> {
    let inner = pmc_corpus::tokens::train_byte_level_bpe(texts.iter().cloned(), vocab_size)?;
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
                let bad = |message: String| TrainError::Data {
                    path: path.clone(),
                    line: Some(i + 1),
                    message,
                };
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                let t = v["text"]
                    .as_str()
                    .ok_or_else(|| bad("no string `text`".into()))?;
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
    /// Held-out windows evaluated at most.
    pub max_eval_windows: usize,
    /// Benchmark questions scored at every evaluation (before, every `eval_every` steps,
    /// after), logged as `"bench"` in `metrics.jsonl`.
    #[serde(skip)]
    pub probes: Vec<crate::probe::Probe>,
    /// With a mixture: each source's held-out sequences, whose perplexity is logged at every
    /// evaluation (`val_ppl_by_source`), so forgetting shows.
    #[serde(skip)]
    pub held_out_by_source: Vec<(String, Vec<Vec<u32>>)>,
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

/// Trains until `options.steps` optimizer steps are done, logging into the checkpointer's
/// run directory. SPMD: every rank calls this with its own `trainer`; rank 0 alone prints,
/// writes `metrics.jsonl` and the curves, and renames checkpoints.
pub fn run(
    trainer: &mut dyn TrainStep,
    train: &dyn TrainingData,
    held_out: &[Vec<u32>],
    options: &RunOptions,
    checkpointer: &Checkpointer,
) -> Result<RunSummary, TrainError> {
    trainer.check_data(train)?;
    let run_dir = checkpointer.run_dir();
    let leader = trainer.rank() == 0;
    let mut metrics = if leader {
        Some(MetricsLog::open(run_dir)?)
    } else {
        None
    };
    let mut log = |line: serde_json::Value| match metrics.as_mut() {
        Some(m) => m.write(&line),
        None => Ok(()),
    };
    // A progress bar on a terminal (hidden elsewhere, where the log lines alone are printed).
    let bar = if leader {
        ProgressBar::new(options.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(trainer.state().step as u64);
    bar.reset_eta();
    let say = |text: String| match (leader, bar.is_hidden()) {
        (false, _) => {}
        (true, true) => eprintln!("{text}"),
        (true, false) => bar.println(text),
    };
    let held_out = &held_out[..held_out.len().min(options.max_eval_windows)];
    let mut line = json!({"step": trainer.state().step, "tokens": trainer.state().tokens});
    let (ppl_before, accuracies) = evaluate(&*trainer, held_out, options, &mut line)?;
    say(format!(
        "held-out perplexity at step {}: {ppl_before:.2}{}",
        trainer.state().step,
        if accuracies.is_empty() {
            String::new()
        } else {
            format!("; accuracy{accuracies}")
        }
    ));
    log(line)?;

    let first_step = trainer.state().step;
    let started = Instant::now();
    let first_tokens = trainer.state().tokens;
    // The last evaluation (its step, perplexity, probes' text and logged line): when the run
    // ends on an evaluation step, the closing evaluation reuses it instead of scoring
    // everything again.
    let mut last_evaluation: Option<(usize, f64, String, serde_json::Value)> = None;
    while trainer.state().step < options.steps {
        let stats = trainer.step(train)?;
        let tokens = trainer.state().tokens;
        let done = stats.step - first_step;
        let elapsed = started.elapsed().as_secs_f64();
        let tokens_per_s = (tokens - first_tokens) as f64 / elapsed;
        let mut line = json!({"step": stats.step, "loss": stats.loss, "lr": stats.lr,
                              "grad_norm": stats.grad_norm, "tokens_per_s": tokens_per_s,
                              "tokens": tokens});
        let evaluating = options.eval_every > 0 && stats.step.is_multiple_of(options.eval_every);
        if let Some(composition) = train.composition(&trainer.state().cursor) {
            let seq_len = train.seq_len() as u64;
            line["tokens_by_source"] = composition
                .into_iter()
                .map(|(name, sequences)| (name, json!(sequences * seq_len)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let mut accuracies = String::new();
        if evaluating {
            let ppl;
            (ppl, accuracies) = evaluate(&*trainer, held_out, options, &mut line)?;
            last_evaluation = Some((stats.step, ppl, accuracies.clone(), line.clone()));
        }
        log(line.clone())?;
        bar.set_position(stats.step as u64);
        bar.set_message(format!("loss {:.3} · {tokens_per_s:.0} tok/s", stats.loss));
        if stats.step.is_multiple_of(options.log_every.max(1))
            || evaluating
            || stats.step == options.steps
        {
            let eta = elapsed / done as f64 * (options.steps - stats.step) as f64;
            say(format!(
                "step {:>6}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s ETA {:.0}s{}{accuracies}",
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
            ));
        }
        // Every rank must stop at the same step, whichever saw the signal.
        let stopping = trainer.any(STOP.load(std::sync::atomic::Ordering::SeqCst))?;
        if stats.step.is_multiple_of(options.checkpoint_every.max(1))
            || stats.step == options.steps
            || stopping
        {
            let dir = checkpointer.save(&*trainer)?;
            if stopping {
                say(format!(
                    "interrupted: checkpoint {} written; continue with --resume {}",
                    dir.display(),
                    run_dir.display()
                ));
                break;
            }
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut line = json!({"step": trainer.state().step, "tokens": trainer.state().tokens});
    let (ppl_after, accuracies) = match last_evaluation {
        Some((step, ppl, accuracies, evaluated)) if step == trainer.state().step => {
            // The same values again, so the closing line stands for the run's end as before.
            for key in ["val_loss", "val_ppl", "val_ppl_by_source", "bench"] {
                if let Some(value) = evaluated.get(key) {
                    line[key] = value.clone();
                }
            }
            (ppl, accuracies)
        }
        _ => evaluate(&*trainer, held_out, options, &mut line)?,
    };
    if !accuracies.is_empty() {
        say(format!(
            "accuracy after step {}:{accuracies}",
            trainer.state().step
        ));
    }
    log(line)?;
    if leader {
        drop(metrics);
        let (svg, png) = crate::plot::write_curves(run_dir)?;
        eprintln!("curves: {} and {}", svg.display(), png.display());
    }
    Ok(RunSummary {
        ppl_before,
        ppl_after,
        steps: trainer.state().step - first_step,
        tokens: trainer.state().tokens - first_tokens,
        seconds,
    })
}

/// One evaluation into `line`: held-out loss and perplexity (`val_loss`, `val_ppl`), each
/// mixture source's held-out perplexity (`val_ppl_by_source`), and the benchmark probes
/// (`bench`). Returns the perplexity and the probes' ` task acc …` for the progress line.
fn evaluate(
    trainer: &dyn TrainStep,
    held_out: &[Vec<u32>],
    options: &RunOptions,
    line: &mut serde_json::Value,
) -> Result<(f64, String), TrainError> {
    let val_loss = trainer.eval_loss(held_out)?;
    line["val_loss"] = json!(val_loss);
    line["val_ppl"] = json!(val_loss.exp());
    if !options.held_out_by_source.is_empty() {
        let mut by_source = serde_json::Map::new();
        for (name, windows) in &options.held_out_by_source {
            let windows = &windows[..windows.len().min(options.max_eval_windows)];
            by_source.insert(name.clone(), json!(trainer.eval_loss(windows)?.exp()));
        }
        line["val_ppl_by_source"] = by_source.into();
    }
    let accuracies = score_probes(&options.probes, trainer, line)?;
    Ok((val_loss.exp(), accuracies))
}

/// Scores `probes` through `trainer` into `line["bench"]` (`{task: {acc, wilson_95, n,
/// seconds}}`) and returns ` task acc …` for the progress line (empty without probes).
fn score_probes(
    probes: &[crate::probe::Probe],
    trainer: &dyn TrainStep,
    line: &mut serde_json::Value,
) -> Result<String, TrainError> {
    if probes.is_empty() {
        return Ok(String::new());
    }
    let scores = crate::probe::score_all(probes, trainer)?;
    let text = scores
        .iter()
        .map(|(name, s)| format!(" {name} {:.3}", s["acc"].as_f64().unwrap_or(f64::NAN)))
        .collect::<String>();
    line["bench"] = serde_json::Value::Object(scores);
    Ok(text)
}

/// `metrics.jsonl`: one JSON object per logged step or evaluation, appended across resumes.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(run_dir: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::Io(run_dir.to_path_buf(), e))?;
        let path = run_dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Io(path.clone(), e))?;
        Ok(MetricsLog { path, file })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{line}").map_err(|e| TrainError::Io(self.path.clone(), e))
    }
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
