//! Continued pretraining through the crates' public API, as a downstream crate would write
//! it: papers → packed token shards (prepared once, cached) → a LLaMA (fresh `tiny`, or
//! `--base` an HF directory / .gguf / `smollm2-135m`) → the trainer → checkpoints →
//! held-out perplexity on held-out papers before and after. With `--world-size N` the
//! same job is sharded over N worker threads at FSDP level 3 (pmc-fsdp's `Job` picks the
//! trainer) — the run loop and the checkpointer do not change.
//!
//!     cargo run --example continued_pretraining -- [--base MODEL] [--papers FILE_OR_DIR] \
//!         [--steps 40] [--world-size 2] [--out runs/example]

use std::path::{Path, PathBuf};

use pmc_llama::pmc_fsdp::{self, ShardLevel, Start};
use pmc_llama::pmc_model::{self, LlamaConfig, WeightDType};
use pmc_llama::pmc_train::source::{self, PaperPreparation, Source};
use pmc_llama::pmc_train::{self, Checkpointer, CorpusShards, Sampling, run, run_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut base = None;
    let mut papers = PathBuf::from("datasets/pmc-oa/papers.tar.gz");
    let (mut steps, mut world, mut out) = (40usize, 1usize, PathBuf::from("runs/example"));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => base = Some(PathBuf::from(value)),
            "--papers" => papers = PathBuf::from(value),
            "--steps" => steps = value.parse()?,
            "--world-size" => world = value.parse()?,
            "--out" => out = PathBuf::from(value),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    // One run per directory: a used `--out` is refused (the job checks again before it
    // writes), before any work is done.
    run_dir::check_unused(&out)?;

    // The model and its tokenizer (a base model's own; a fresh model's is learnt on the
    // papers), then the papers as token shards in that tokenizer, a tenth held out.
    let device = pmc_model::default_device().autodiff();
    let loaded = match &base {
        Some(path) => Some(pmc_model::load_model(path, &Default::default(), &device)?),
        None => None,
    };
    let base_tokenizer = loaded.as_ref().and_then(|l| l.tokenizer.clone());
    if loaded.is_some() && base_tokenizer.is_none() {
        return Err("the base model has no tokenizer".into());
    }
    let seq_len = 128;
    let how = PaperPreparation {
        seq_len,
        tokenizer: base_tokenizer.as_ref(),
        vocab_size: 2048,
        valid_fraction: 0.1,
        cache: Path::new("runs/corpora"),
    };
    let Source::Shards { dir, manifest } = Source::prepare_papers(&[papers], &how, |_| {})? else {
        unreachable!("prepare_papers makes shards")
    };
    let (model, config, tokenizer) = match (loaded, base_tokenizer) {
        (Some(loaded), Some(tokenizer)) => (loaded.model, loaded.config, tokenizer),
        _ => {
            let config = LlamaConfig::preset("tiny", manifest.vocab_size)?;
            let model = pmc_model::init_random(&config, WeightDType::F32, 0, &device);
            (model, config, source::corpus_tokenizer(&dir, &manifest)?)
        }
    };
    let train = CorpusShards::open_with(&dir, 0, Sampling::Packed)?;
    let held_out = CorpusShards::held_out(&dir, 32)?;
    let train_config = pmc_train::TrainConfig {
        schedule: pmc_train::CosineSchedule {
            total_steps: steps,
            ..run::default_train_config(seq_len).schedule
        },
        micro_batch: 4,
        global_batch: 16,
        ..run::default_train_config(seq_len)
    };
    let options = run::RunOptions {
        steps,
        log_every: 10,
        eval_every: 0,
        checkpoint_every: steps,
        max_eval_windows: 32,
        probes: Vec::new(),
        held_out_by_source: Vec::new(),
    };
    // Every checkpoint is a complete HF model directory: weights, config, tokenizer.
    let checkpointer = Checkpointer::new(&out, 1).with_tokenizer(tokenizer);

    // One process, or `world` worker threads at FSDP level 3: the same job either way.
    let sharding = (world > 1).then_some(pmc_fsdp::Sharding {
        level: ShardLevel::Parameters,
        engine: pmc_fsdp::Engine::Threads,
        world_size: Some(world),
        timeout: pmc_fsdp::DEFAULT_TIMEOUT,
    });
    let job = pmc_fsdp::Job {
        start: Start::Fresh {
            model,
            model_config: config,
        },
        lora: None,
        train_config,
        sharding,
        device,
        data: &train,
        held_out: &held_out,
        options: &options,
        checkpointer: &checkpointer,
    };
    // Only the process that reports prints (under MPI, rank 0).
    let Some((summary, _)) = job.run(|_, _| Ok(()))?.finished() else {
        return Ok(());
    };
    println!(
        "held-out perplexity {:.2} → {:.2} after {} steps ({:.0} tokens/s); checkpoint in {}",
        summary.ppl_before,
        summary.ppl_after,
        summary.steps,
        summary.tokens as f64 / summary.seconds,
        pmc_train::checkpoint::latest(&out)?.map_or("?".into(), |p| p.display().to_string())
    );
    Ok(())
}
