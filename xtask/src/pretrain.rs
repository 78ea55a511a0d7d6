//! `pretrain`: continued pretraining (or training from a size preset) on text.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_fsdp::Start;
use pmc_train::run::{self, RunOptions};
use pmc_train::source::Source;
use pmc_train::{Checkpointer, CorpusShards, CosineSchedule, TokenWindows, TrainingData};

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
    /// The model to continue from: an HF directory, a .gguf file or a model name the project
    /// fetches (smollm2-135m). Without it, a fresh model of `--preset` is trained with a BPE
    /// tokenizer learnt on the corpus.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Size of a fresh model: tiny, small or 7b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Vocabulary of the tokenizer trained for a fresh model.
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Training data: papers (JATS .xml/.nxml, S2ORC .json, .tar.gz bundles, directories of
    /// them: prepared into token shards once, under --corpus-cache), a corpus directory made
    /// by prepare-corpus, or text files (.txt, a document per line; .jsonl with "text").
    /// By default the bundled open-access papers.
    #[arg(long, num_args = 1.., default_values = ["datasets/pmc-oa/papers.tar.gz"])]
    pub corpus: Vec<PathBuf>,
    /// Held-out text files; by default, with papers, the held-out papers (--valid-fraction),
    /// with text files the last 5 % of their documents.
    #[arg(long, num_args = 1..)]
    pub valid: Vec<PathBuf>,
    /// With papers: the share held out (whole papers, chosen by a hash of their ids).
    #[arg(long, default_value_t = 0.1)]
    pub valid_fraction: f64,
    /// With papers: where the prepared corpora are kept and reused.
    #[arg(long, default_value = "runs/corpora")]
    pub corpus_cache: PathBuf,
    /// Optimizer steps in total.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Tokens per sequence (default 128; a prepared corpus brings its own packing length).
    #[arg(long)]
    pub seq_len: Option<usize>,
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
    /// Continue a run: its directory (the newest complete checkpoint is taken) or one
    /// checkpoint directory (runs/.../checkpoints/step-N).
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
    /// With a prepared corpus: packed (every sequence once per epoch) or paper-windows
    /// (PMC-LLaMA's one random window per paper per epoch).
    #[arg(long, default_value = "packed")]
    pub sampling: String,
    #[command(flatten)]
    pub compute: crate::ComputeArgs,
    #[command(flatten)]
    pub distributed: crate::DistributedArgs,
    /// Held-out sequences in each perplexity evaluation.
    #[arg(long, default_value_t = 64)]
    pub eval_sequences: usize,
}

/// The checkpoint `--resume` names and its tokenizer ([`pmc_fsdp::job::resume_point`]), said.
pub fn resume_point(path: &Path) -> Result<(PathBuf, pmc_model::Tokenizer)> {
    let (ckpt, tokenizer) = pmc_fsdp::job::resume_point(path)?;
    say!("resuming {}", ckpt.display());
    Ok((ckpt, tokenizer))
}

pub fn pretrain(args: PretrainArgs) -> Result<()> {
    args.distributed.relaunch_if_needed()?;
    let device = args.compute.device();
    let resumed = args.resume.as_deref().map(resume_point).transpose()?;
    if resumed.is_none() {
        // Before the corpus is prepared: a used --out is refused at once.
        pmc_train::run_dir::check_unused(&args.out)?;
    }
    // A fresh run from a base model: loaded before the data, whose tokens are its tokenizer's.
    let base = match (&resumed, &args.base) {
        (None, Some(base)) => {
            let loaded = pmc_model::load_model(base, &Default::default(), &device)?;
            let tokenizer = loaded
                .tokenizer
                .clone()
                .with_context(|| format!("{} has no tokenizer", loaded.source.display()))?;
            Some((loaded, tokenizer))
        }
        _ => None,
    };
    let source = if pmc_corpus::are_papers(&args.corpus) {
        // Continuing a base model (also on resume, when --base is given again) tokenizes with
        // its tokenizer; a fresh model trains one on the papers.
        let tokenizer = match (&base, &resumed) {
            (Some((_, tokenizer)), _) => Some(tokenizer),
            (None, Some((_, tokenizer))) if args.base.is_some() => Some(tokenizer),
            _ => None,
        };
        let how = pmc_train::source::PaperPreparation {
            seq_len: args.seq_len.unwrap_or(128),
            tokenizer,
            vocab_size: args.vocab_size,
            valid_fraction: args.valid_fraction,
            cache: &args.corpus_cache,
        };
        let source = crate::corpus::with_progress_bar(&args.corpus, |progress| {
            Source::prepare_papers(&args.corpus, &how, progress)
        })?;
        if let Source::Shards { dir, manifest } = &source {
            say!(
                "papers: {} read, {} kept → {} training and {} held-out sequences (held-out papers), in {}",
                manifest.documents.input,
                manifest.documents.kept,
                manifest.sequences,
                manifest.valid_sequences,
                dir.display()
            );
        }
        source
    } else {
        Source::read(&args.corpus, &args.valid)?
    };
    let seq_len = match &source {
        Source::Shards { manifest, dir } => match args.seq_len {
            Some(n) if n != manifest.seq_len => bail!(
                "{} is packed in {}-token sequences, --seq-len says {n}; prepare it with --seq-len {n} or drop the option",
                dir.display(),
                manifest.seq_len
            ),
            _ => manifest.seq_len,
        },
        Source::Text { .. } => args.seq_len.unwrap_or(128),
    };
    let (start, tokenizer, train_config) = match resumed {
        Some((ckpt, tokenizer)) => {
            let config = pmc_train::checkpoint::SavedState::read(&ckpt)?.config;
            (Start::Resume(ckpt), tokenizer, config)
        }
        None => {
            let mut config = pmc_train::TrainConfig {
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
                precision: args.compute.precision,
                ..run::default_train_config(seq_len)
            };
            // (start, its config, tokenizer)
            let (start, model_config, tokenizer) = match base {
                Some((loaded, tokenizer)) => {
                    if let Source::Shards { dir, manifest } = &source {
                        pmc_train::source::check_same_tokenizer(
                            &tokenizer,
                            &pmc_train::source::corpus_tokenizer(dir, manifest)?,
                            dir,
                        )?;
                    }
                    let model_config = loaded.config.clone();
                    let start = Start::Fresh {
                        model: loaded.model,
                        model_config: loaded.config,
                    };
                    (start, model_config, tokenizer)
                }
                None if matches!(source, Source::Shards { .. }) => {
                    let Source::Shards { dir, manifest } = &source else {
                        unreachable!()
                    };
                    let tokenizer = pmc_train::source::corpus_tokenizer(dir, manifest)?;
                    let config = pmc_model::LlamaConfig::preset(&args.preset, manifest.vocab_size)?;
                    let start = Start::Seeded {
                        model_config: config.clone(),
                        seed: args.seed,
                    };
                    (start, config, tokenizer)
                }
                None => {
                    let Source::Text { docs, .. } = &source else {
                        unreachable!()
                    };
                    say!(
                        "training a {}-token BPE tokenizer on {} documents",
                        args.vocab_size,
                        docs.len()
                    );
                    let tokenizer = run::train_bpe(docs, args.vocab_size)?;
                    let vocab = tokenizer.inner().get_vocab_size(true);
                    let config = pmc_model::LlamaConfig::preset(&args.preset, vocab)?;
                    let start = Start::Seeded {
                        model_config: config.clone(),
                        seed: args.seed,
                    };
                    (start, config, tokenizer)
                }
            };
            say!(
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
            // The sharded trainer computes its micro-batches one by one.
            if args.distributed.sharding()?.is_none() {
                args.compute.set_lanes(&model_config, &mut config);
            }
            (start, tokenizer, config)
        }
    };
    // The training stream and the held-out sequences. (The trainer refuses a stream other
    // than its checkpoint's on resume.)
    let (train, held_out): (Box<dyn TrainingData>, Vec<Vec<u32>>) = match &source {
        Source::Text {
            docs, valid_docs, ..
        } => {
            let train_tokens = run::tokenize(&tokenizer, docs)?;
            let train = TokenWindows::new(&train_tokens, seq_len, train_config.seed);
            let valid = TokenWindows::new(&run::tokenize(&tokenizer, valid_docs)?, seq_len, 0);
            (Box::new(train), valid.windows().to_vec())
        }
        Source::Shards { dir, .. } => {
            let sampling = match args.sampling.as_str() {
                "packed" => pmc_train::Sampling::Packed,
                "paper-windows" => pmc_train::Sampling::PaperWindows,
                other => bail!("--sampling must be packed or paper-windows, got {other:?}"),
            };
            let train = CorpusShards::open_with(dir, train_config.seed, sampling)?;
            let mut held_out = CorpusShards::held_out(dir, args.eval_sequences)?;
            if held_out.is_empty() && !args.valid.is_empty() {
                let valid_docs = run::read_documents(&args.valid)?;
                held_out = TokenWindows::new(&run::tokenize(&tokenizer, &valid_docs)?, seq_len, 0)
                    .windows()
                    .to_vec();
            }
            if held_out.is_empty() {
                bail!(
                    "{} has no validation split: prepare it with --valid-fraction, or pass --valid FILES",
                    dir.display()
                );
            }
            (Box::new(train), held_out)
        }
    };
    if train.sequences() == 0 || held_out.is_empty() {
        bail!("not enough text for one {seq_len}-token window in the training or held-out split");
    }
    say!(
        "data: {} training sequences, {} held-out sequences of {seq_len} tokens; global batch {} sequences",
        train.sequences(),
        held_out.len(),
        train_config.global_batch
    );
    let valid_paths = match &source {
        Source::Text { valid_paths, .. } => valid_paths.clone(),
        Source::Shards { .. } => args.valid.clone(),
    };
    let run_dir = start.run_dir(&args.out)?;
    let options = RunOptions {
        steps: args.steps,
        log_every: args.log_every,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        max_eval_windows: args.eval_sequences,
    };
    // Ctrl-C finishes the current step, writes a checkpoint and stops; a second one kills.
    crate::install_stop_handler()?;
    let checkpointer = Checkpointer::new(&run_dir, args.keep).with_tokenizer(tokenizer);
    let save_config = |config: &pmc_train::TrainConfig, model: &pmc_model::LlamaConfig| {
        run::save_run_config(
            &run_dir,
            &serde_json::json!({"train": config, "model": model.to_json(), "corpus": args.corpus,
                "valid": valid_paths, "base": args.base, "steps": args.steps,
                "distributed": args.distributed.describe()}),
        )
    };
    let job = pmc_fsdp::Job {
        start,
        lora: None,
        train_config,
        sharding: args.distributed.sharding()?,
        device: args.compute.device(),
        data: train.as_ref(),
        held_out: &held_out,
        options: &options,
        checkpointer: &checkpointer,
    };
    let Some((summary, _)) = crate::finished(job.run(save_config)?) else {
        return Ok(());
    };
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
