//! `pretrain`: continued pretraining (or training from a size preset) on text.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_fsdp::{Pretrained, Pretraining};

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
    /// Train on a mixture instead of --corpus: NAME=PATH:WEIGHT,… (e.g.
    /// pmc=../shared/data/pmc-jats:0.95,general=../shared/data/general/gutenberg-6-books.txt:0.05),
    /// each sequence's source drawn with seeded weights that sum to 1; every source's tokens
    /// and held-out perplexity are logged. Needs --base.
    #[arg(long, value_delimiter = ',')]
    pub mix: Vec<pmc_train::MixSpec>,
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
    pub sampling: pmc_train::Sampling,
    #[command(flatten)]
    pub compute: crate::ComputeArgs,
    #[command(flatten)]
    pub distributed: pmc_fsdp::DistributedArgs,
    /// Benchmark accuracy at every evaluation: TASK:N,… (e.g. pubmedqa:200,medqa:200,medmcqa:200),
    /// N questions of each task's evaluation split drawn with a fixed seed, scored the
    /// loglik way (lm-eval's prompts) and logged with Wilson intervals.
    #[arg(long, value_delimiter = ',')]
    pub eval_tasks: Vec<pmc_bench::probe::ProbeSpec>,
    /// Where --eval-tasks' benchmarks are (laid out like ../shared/data).
    #[arg(long, default_value = "../shared/data")]
    pub eval_data: PathBuf,
    /// Held-out sequences in each perplexity evaluation.
    #[arg(long, default_value_t = 64)]
    pub eval_sequences: usize,
}

impl PretrainArgs {
    /// The run these flags describe.
    pub fn pretraining(&self) -> Result<Pretraining> {
        Ok(Pretraining {
            base: self.base.clone(),
            preset: self.preset.clone(),
            vocab_size: self.vocab_size,
            corpus: self.corpus.clone(),
            mix: self.mix.clone(),
            valid: self.valid.clone(),
            valid_fraction: self.valid_fraction,
            corpus_cache: self.corpus_cache.clone(),
            steps: self.steps,
            seq_len: self.seq_len,
            micro_batch: self.micro_batch,
            global_batch: self.global_batch,
            lr: self.lr,
            warmup: self.warmup,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            sampling: self.sampling,
            out: self.out.clone(),
            resume: self.resume.clone(),
            log_every: self.log_every,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            keep: self.keep,
            eval_sequences: self.eval_sequences,
            precision: self.compute.precision,
            parallel_micro_batches: self.compute.parallel_micro_batches,
            gradient_checkpointing: self.compute.gradient_checkpointing,
            sharding: self.distributed.sharding()?,
        })
    }
}

pub fn pretrain(args: PretrainArgs) -> Result<()> {
    args.distributed.relaunch_if_needed()?;
    let pretraining = args.pretraining()?;
    let beginning = pretraining.begin()?;
    let inputs = match args.mix.is_empty() {
        true => args.corpus.clone(),
        false => args.mix.iter().map(|m| m.path.clone()).collect(),
    };
    let source = if inputs
        .iter()
        .any(|p| pmc_corpus::are_papers(std::slice::from_ref(p)))
    {
        crate::corpus::with_progress_bar(&inputs, |progress| {
            pretraining.source(&beginning, progress)
        })?
    } else {
        pretraining.source(&beginning, |_| {})?
    };
    // Ctrl-C finishes the current step, writes a checkpoint and stops; a second one kills.
    crate::install_stop_handler()?;
    let record = serde_json::json!({"distributed": args.distributed.describe()});
    let prepared = pretraining.prepare(beginning, source)?;
    // The same questions in every run and on every rank, whatever the training seed.
    let probes = pmc_bench::probe::probes(
        &args.eval_tasks,
        &args.eval_data,
        prepared.tokenizer(),
        1234,
    )?;
    let Some(Pretrained { summary, run_dir }) = prepared.run(probes, record)? else {
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
