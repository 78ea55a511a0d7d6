//! `pretrain`: continued pretraining (or training from a size preset) on text.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_train::run::{self, RunOptions};
use pmc_train::{CosineSchedule, TokenWindows, Trainer};

/// `pretrain --config FILE.toml ...`: the file's keys (the option names, `-` or `_`) become
/// options placed before the command line's own, so anything given on the command line
/// overrides the file.
pub fn expand_config(args: Vec<String>) -> Result<Vec<String>> {
    let Some(sub) = args.iter().position(|a| a == "pretrain") else {
        return Ok(args);
    };
    let Some(flag) = args.iter().position(|a| a == "--config") else {
        return Ok(args);
    };
    let path = args.get(flag + 1).context("--config needs a file")?;
    let text = std::fs::read_to_string(path).with_context(|| path.clone())?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{path}: invalid TOML"))?;
    let mut from_file = Vec::new();
    for (key, value) in table {
        let option = format!("--{}", key.replace('_', "-"));
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_>>()?,
            toml::Value::Boolean(true) => Vec::new(),
            toml::Value::Boolean(false) => continue,
            other => vec![scalar(&other)?],
        };
        from_file.push(option);
        from_file.extend(values);
    }
    let mut out: Vec<String> = args[..=sub].to_vec();
    out.extend(from_file);
    out.extend(
        args[sub + 1..]
            .iter()
            .enumerate()
            .filter(|(i, _)| sub + 1 + i != flag && sub + 1 + i != flag + 1)
            .map(|(_, a)| a.clone()),
    );
    Ok(out)
}

fn scalar(value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("unsupported value in the config file: {other}"),
    })
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// A TOML file of options (keys as the option names); command-line options override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model to continue from: an HF directory or a .gguf file. Without it, a fresh
    /// model of `--preset` is trained with a BPE tokenizer learnt on the corpus.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Size of a fresh model: tiny, small or 7b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Vocabulary of the tokenizer trained for a fresh model.
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Training text: .txt (a document per line) or .jsonl ({"text": ...}) files.
    #[arg(long, num_args = 1.., default_values = ["datasets/pmc-sample/train.txt"])]
    pub corpus: Vec<PathBuf>,
    /// Held-out text; by default the bundled sample's valid.txt with the bundled corpus, else
    /// the last 5 % of the corpus's documents.
    #[arg(long, num_args = 1..)]
    pub valid: Vec<PathBuf>,
    /// Optimizer steps in total.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    /// Sequences per optimizer step (gradient accumulation fills the rest).
    #[arg(long, default_value_t = 16)]
    pub global_batch: usize,
    /// Peak learning rate (PMC-LLaMA used 2e-5 for continued pretraining of 7B/13B).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Global gradient-norm clipping (0 disables it).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run directory: metrics.jsonl, run_config.json, tokenizer, checkpoints/.
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Continue from this checkpoint directory (runs/.../checkpoints/step-N).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Log every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Held-out perplexity every N steps (0: before and after only).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Checkpoint every N steps and at the end.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
}

fn bundled(path: &Path) -> bool {
    path == Path::new("datasets/pmc-sample/train.txt")
}

pub fn pretrain(args: PretrainArgs) -> Result<()> {
    let device = pmc_model::default_device().autodiff();
    let mut docs = run::read_documents(&args.corpus)?;
    let valid_paths = if args.valid.is_empty() && args.corpus.len() == 1 && bundled(&args.corpus[0])
    {
        vec![PathBuf::from("datasets/pmc-sample/valid.txt")]
    } else {
        args.valid.clone()
    };
    let valid_docs = if valid_paths.is_empty() {
        let n = (docs.len() / 20).max(1);
        if docs.len() < 2 {
            bail!(
                "the corpus has {} document(s); at least 2 are needed to hold one out",
                docs.len()
            );
        }
        docs.split_off(docs.len() - n)
    } else {
        run::read_documents(&valid_paths)?
    };

    let (mut trainer, tokenizer) = match &args.resume {
        Some(ckpt) => {
            let trainer = Trainer::resume(ckpt, &device)?;
            let tokenizer = pmc_model::Tokenizer::from_dir(
                ckpt,
                trainer.model_config.bos_token_id,
                &trainer.model_config.eos_token_ids,
            )
            .with_context(|| format!("{}: the checkpoint's tokenizer", ckpt.display()))?;
            eprintln!("resuming {} at step {}", ckpt.display(), trainer.state.step);
            (trainer, tokenizer)
        }
        None => {
            let config = pmc_train::TrainConfig {
                schedule: CosineSchedule {
                    peak_lr: args.lr,
                    warmup_steps: args.warmup,
                    total_steps: args.steps,
                    min_lr_ratio: args.min_lr_ratio,
                },
                weight_decay: args.weight_decay,
                max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
                micro_batch: args.micro_batch,
                global_batch: args.global_batch,
                seed: args.seed,
                ..run::default_train_config(args.seq_len)
            };
            let (model, model_config, tokenizer) = match &args.base {
                Some(base) => {
                    let loaded = pmc_model::load_model(base, &Default::default(), &device)?;
                    let tokenizer = loaded
                        .tokenizer
                        .with_context(|| format!("{} has no tokenizer", base.display()))?;
                    (loaded.model, loaded.config, tokenizer)
                }
                None => {
                    eprintln!(
                        "training a {}-token BPE tokenizer on {} documents",
                        args.vocab_size,
                        docs.len()
                    );
                    let tokenizer = run::train_bpe(&docs, args.vocab_size)?;
                    let vocab = tokenizer.inner().get_vocab_size(true);
                    let config = run::preset(&args.preset, vocab)?;
                    (
                        run::fresh_model(&config, args.seed, &device),
                        config,
                        tokenizer,
                    )
                }
            };
            eprintln!(
                "model: {} — {:.2} M parameters, {} layers, hidden {}",
                args.base
                    .as_ref()
                    .map_or(format!("fresh `{}`", args.preset), |b| b
                        .display()
                        .to_string()),
                model_config.num_parameters() as f64 / 1e6,
                model_config.num_hidden_layers,
                model_config.hidden_size
            );
            (
                Trainer::new(model, model_config, config, &device)?,
                tokenizer,
            )
        }
    };
    let seq_len = trainer.config.seq_len;
    let train_tokens = run::tokenize(&tokenizer, &docs)?;
    // What the data cursor indexes into: a resumed run must see the same token stream.
    let fingerprint = format!(
        "{:016x}-{}-{seq_len}",
        train_tokens
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h ^ t as u64)
                .wrapping_mul(0x0100_0000_01b3)),
        train_tokens.len()
    );
    if let Some(ckpt) = &args.resume {
        let path = ckpt.join("data.json");
        let saved: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .with_context(|| {
                format!(
                    "{}: missing or unreadable; cannot check the data matches",
                    path.display()
                )
            })?;
        if saved["fingerprint"].as_str() != Some(fingerprint.as_str()) {
            bail!(
                "{}: this checkpoint was trained on other data (fingerprint {}, now {fingerprint}); resume with the same --corpus",
                ckpt.display(),
                saved["fingerprint"]
            );
        }
    }
    let train = TokenWindows::new(&train_tokens, seq_len, trainer.config.seed);
    let valid = TokenWindows::new(&run::tokenize(&tokenizer, &valid_docs)?, seq_len, 0);
    if train.is_empty() || valid.is_empty() {
        bail!("not enough text for one {seq_len}-token window in the training or held-out split");
    }
    eprintln!(
        "data: {} training windows, {} held-out windows of {seq_len} tokens; global batch {} sequences",
        train.len(),
        valid.len(),
        trainer.config.global_batch
    );
    let run_dir = match &args.resume {
        Some(ckpt) => ckpt
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or(args.out.clone()),
        None => args.out.clone(),
    };
    run::save_run_config(
        &run_dir,
        &serde_json::json!({"train": trainer.config, "model": trainer.model_config.to_json(),
            "corpus": args.corpus, "valid": valid_paths, "base": args.base, "steps": args.steps}),
    )?;
    let options = RunOptions {
        steps: args.steps,
        log_every: args.log_every,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep,
        max_eval_windows: 64,
    };
    // Ctrl-C finishes the current step, writes a checkpoint and stops; a second one kills.
    ctrlc::set_handler(|| {
        if run::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    // Every checkpoint carries the tokenizer, so it is a complete HF model directory.
    let summary = run::run_with(&mut trainer, &train, &valid, &options, &run_dir, |dir| {
        tokenizer.save(dir).map_err(pmc_train::TrainError::Model)?;
        let path = dir.join("data.json");
        let data = serde_json::json!({"fingerprint": fingerprint, "corpus": args.corpus});
        std::fs::write(&path, data.to_string()).map_err(|e| pmc_train::TrainError::Io(path, e))
    })?;
    println!("\n| | held-out perplexity |\n|---|---|");
    println!(
        "| before | {:.2} |\n| after | {:.2} |",
        summary.ppl_before, summary.ppl_after
    );
    println!(
        "\n{} steps, {} tokens in {:.0} s ({:.0} tokens/s); run directory {}",
        summary.steps,
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds,
        run_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_options_come_first_so_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(
            &file,
            "steps = 200\nlr = 2e-5\ncorpus = [\"a.txt\", \"b.txt\"]\n",
        )
        .unwrap();
        let args: Vec<String> = [
            "xtask",
            "pretrain",
            "--config",
            file.to_str().unwrap(),
            "--steps",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = expand_config(args).unwrap();
        assert_eq!(
            out,
            [
                "xtask", "pretrain", "--corpus", "a.txt", "b.txt", "--lr", "0.00002", "--steps",
                "200", "--steps", "5"
            ]
        );
        let err = expand_config(vec![
            "xtask".into(),
            "pretrain".into(),
            "--config".into(),
            "/nonexistent.toml".into(),
        ]);
        assert!(format!("{:#}", err.unwrap_err()).contains("/nonexistent.toml"));
    }
}
