//! Continued pretraining through the crates' public API, as a downstream crate would write
//! it: text → tokens → a LLaMA (fresh `tiny`, or `--base` an HF directory / .gguf) → the
//! trainer → checkpoints → held-out perplexity before and after. With `--world-size N` the
//! same run is sharded over N worker threads at FSDP level 3 (pmc-fsdp) — the run loop and
//! the checkpointer do not change.
//!
//!     cargo run --example continued_pretraining -- [--base MODEL] [--corpus FILE.txt] \
//!         [--steps 40] [--world-size 2] [--out runs/example]

use std::path::PathBuf;

use pmc_llama::pmc_fsdp::{self, FsdpTrainer, ShardLevel};
use pmc_llama::pmc_model::{self, LlamaConfig, WeightDType};
use pmc_llama::pmc_train::{self, Checkpointer, TokenWindows, Trainer, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut base = None;
    let mut corpus = PathBuf::from("datasets/pmc-sample/train.txt");
    let mut valid = PathBuf::from("datasets/pmc-sample/valid.txt");
    let (mut steps, mut world, mut out) = (40usize, 1usize, PathBuf::from("runs/example"));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => base = Some(PathBuf::from(value)),
            "--corpus" => corpus = PathBuf::from(value),
            "--valid" => valid = PathBuf::from(value),
            "--steps" => steps = value.parse()?,
            "--world-size" => world = value.parse()?,
            "--out" => out = PathBuf::from(value),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    // The model and its tokenizer: a base model's own, or a BPE learnt on the corpus.
    let device = pmc_model::default_device().autodiff();
    let docs = run::read_documents(std::slice::from_ref(&corpus))?;
    let (model, config, tokenizer) = match &base {
        Some(path) => {
            let loaded = pmc_model::load_model(path, &Default::default(), &device)?;
            let tokenizer = loaded.tokenizer.ok_or("the base model has no tokenizer")?;
            (loaded.model, loaded.config, tokenizer)
        }
        None => {
            let tokenizer = run::train_bpe(&docs, 2048)?;
            let config = LlamaConfig::preset("tiny", tokenizer.inner().get_vocab_size(true))?;
            let model = pmc_model::init_random(&config, WeightDType::F32, 0, &device);
            (model, config, tokenizer)
        }
    };
    let seq_len = 128;
    let train = TokenWindows::new(&run::tokenize(&tokenizer, &docs)?, seq_len, 0);
    let held_out = TokenWindows::new(
        &run::tokenize(&tokenizer, &run::read_documents(&[valid])?)?,
        seq_len,
        0,
    );
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
        keep_checkpoints: 1,
        max_eval_windows: 32,
    };
    // Every checkpoint is a complete HF model directory: weights, config, tokenizer.
    let checkpointer = Checkpointer::new(&out, 1).with_tokenizer(tokenizer);

    let summary = if world == 1 {
        let mut trainer = Trainer::new(model, config, train_config, &device)?;
        run::run(
            &mut trainer,
            &train,
            held_out.windows(),
            &options,
            &checkpointer,
        )?
    } else {
        let launched = pmc_fsdp::launch(
            pmc_fsdp::Engine::Threads,
            Some(world),
            pmc_fsdp::DEFAULT_TIMEOUT,
            |comm| {
                let mut trainer = FsdpTrainer::new(
                    model.clone(),
                    config.clone(),
                    train_config.clone(),
                    ShardLevel::Parameters,
                    comm,
                    &device,
                )?;
                run::run(
                    &mut trainer,
                    &train,
                    held_out.windows(),
                    &options,
                    &checkpointer,
                )
            },
        )?;
        match launched {
            pmc_fsdp::Launched::Ran { result, .. } => result,
            pmc_fsdp::Launched::Relaunched(code) => std::process::exit(code),
        }
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
