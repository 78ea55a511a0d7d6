//! `finetune`: full or LoRA fine-tuning on instruction data (a JSONL file, or a benchmark
//! task's training pool in PMC-LLaMA's format), with the trainer's loop, checkpoints and resume.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_bench::data::Task;
use pmc_model::burn::prelude::*;
use pmc_train::run::{self, RunOptions};
use pmc_train::{Checkpointer, CosineSchedule, Example, LoraRun, SftData, Template, TrainConfig};

use pmc_fsdp::Start;
use pmc_train::Method;

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// lora or full.
    #[arg(long, default_value = "lora")]
    pub method: Method,
    /// The base model: an HF directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Instruction data: JSONL of {"instruction", "input", "output"} or {"prompt", "response"}.
    #[arg(long, conflicts_with = "task")]
    pub data: Option<PathBuf>,
    /// Build the instruction data from a task's training pool instead (PubMedQA: the 500
    /// labelled questions outside the official test set; MedQA/MedMCQA: their train files).
    #[arg(long)]
    pub task: Option<Task>,
    /// Where the task's files are (laid out like ../shared/data).
    #[arg(long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Train on a seeded fraction of the examples (the paper's data-efficient setting).
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// Prompt template: pmc-llama (Alpaca-style) or plain.
    #[arg(long, default_value = "pmc-llama")]
    pub template: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Projections to adapt (comma-separated), or all-linear.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
    /// rsLoRA scaling (alpha / √r).
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the adapters' input during training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Peak learning rate (default: 2e-4 for LoRA, 2e-5 for full).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimizer steps (default: one epoch over the examples).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 8)]
    pub global_batch: usize,
    /// Longest example in tokens (longer prompts lose their beginning).
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run directory: metrics.jsonl, checkpoints/, and the result (adapter/ or model/).
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Continue from a checkpoint directory of this run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    #[command(flatten)]
    pub compute: crate::ComputeArgs,
    /// Sharded training (with --method full).
    #[command(flatten)]
    pub distributed: crate::DistributedArgs,
}

fn examples(args: &FinetuneArgs) -> Result<Vec<Example>> {
    Ok(match (&args.data, args.task) {
        (Some(path), None) => pmc_bench::regimes::keep_fraction(
            pmc_train::sft::read_examples(path)?,
            args.fraction,
            args.seed,
        )?,
        (None, Some(task)) => {
            pmc_bench::regimes::training_pool(task, &args.data_dir, args.fraction, args.seed)
                .with_context(|| {
                    format!(
                        "{}'s training pool under {}",
                        task.name(),
                        args.data_dir.display()
                    )
                })?
        }
        _ => bail!("give --data FILE.jsonl or --task pubmedqa|medqa|medmcqa"),
    })
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    args.distributed.relaunch_if_needed()?;
    let device = args.compute.device();
    let Some(template) = Template::parse(&args.template) else {
        bail!(
            "unknown --template {:?} (pmc-llama or plain)",
            args.template
        );
    };
    if args.resume.is_none() {
        // Before the base model is loaded: a used --out is refused at once.
        pmc_train::run_dir::check_unused(&args.out)?;
    }
    let mut examples = examples(&args)?;
    let held_out_examples = pmc_train::sft::hold_out(&mut examples)?;

    let (start, lora, tokenizer, train_config) = match &args.resume {
        // The checkpoint carries the tokenizer: the base model is not loaded a second time.
        Some(path) => {
            let (ckpt, tokenizer) = crate::pretrain::resume_point(path)?;
            let config = pmc_train::checkpoint::SavedState::read(&ckpt)?.config;
            (Start::Resume(ckpt), None, tokenizer, config)
        }
        None => {
            let loaded = pmc_model::load_model(&args.model, &Default::default(), &device)?;
            let tokenizer = loaded
                .tokenizer
                .with_context(|| format!("{} has no tokenizer", args.model.display()))?;
            let steps = args
                .steps
                .unwrap_or_else(|| examples.len().div_ceil(args.global_batch));
            let lr = args.lr.unwrap_or(match args.method {
                Method::Lora => 2e-4,
                Method::Full => 2e-5,
            });
            let mut config = TrainConfig {
                schedule: CosineSchedule {
                    peak_lr: lr,
                    warmup_steps: (steps as f64 * args.warmup_ratio).round() as usize,
                    total_steps: steps,
                    min_lr_ratio: 0.0,
                },
                weight_decay: args.weight_decay,
                max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
                micro_batch: args.micro_batch,
                global_batch: args.global_batch,
                seed: args.seed,
                precision: args.compute.precision,
                ..run::default_train_config(args.max_len)
            };
            let mut model = loaded.model;
            let lora = match args.method {
                Method::Full => None,
                Method::Lora => {
                    let targets = if args.targets == ["all-linear"] {
                        pmc_peft::TargetModules::AllLinear
                    } else {
                        pmc_peft::TargetModules::Names(args.targets.clone())
                    };
                    let mut adapter_config =
                        pmc_peft::AdapterConfig::new(args.r, args.alpha, targets);
                    adapter_config.use_rslora = args.rslora;
                    if !(0.0..1.0).contains(&args.lora_dropout) {
                        bail!(
                            "--lora-dropout must be in [0, 1), got {}",
                            args.lora_dropout
                        );
                    }
                    adapter_config.lora_dropout = args.lora_dropout;
                    adapter_config.base_model_name_or_path = Some(args.model.display().to_string());
                    let (with_adapter, run) =
                        LoraRun::attach(model, adapter_config, &args.model, args.seed, &device)?;
                    model = with_adapter;
                    Some(run)
                }
            };
            let total = loaded.config.num_parameters();
            let trainable = pmc_peft::trainable_parameters(&model);
            say!(
                "{:?} fine-tuning: {trainable} trainable parameters of {total} ({:.3} %)",
                args.method,
                100.0 * trainable as f64 / total as f64
            );
            // The sharded trainer computes its micro-batches one by one.
            if args.distributed.sharding()?.is_none() {
                args.compute.set_lanes(&loaded.config, &mut config);
            }
            let start = Start::Fresh {
                model,
                model_config: loaded.config,
            };
            (start, lora, tokenizer, config)
        }
    };
    let data = SftData::new(
        &tokenizer,
        &examples,
        template,
        args.max_len,
        train_config.seed,
    )?;
    if data.truncated > 0 {
        say!(
            "note: {} of {} prompts were cut to fit --max-len {}",
            data.truncated,
            examples.len(),
            args.max_len
        );
    }
    let held = SftData::new(&tokenizer, &held_out_examples, template, args.max_len, 0)?;
    let held_out: Vec<Vec<u32>> = (0..held_out_examples.len())
        .map(|i| held.example_ids(i).to_vec())
        .collect();
    say!(
        "data: {} examples (longest {} tokens), {} held out; global batch {}",
        examples.len(),
        data.longest(),
        held_out.len(),
        train_config.global_batch
    );
    let run_dir = start.run_dir(&args.out)?;
    let options = RunOptions {
        steps: train_config.schedule.total_steps,
        log_every: args.log_every,
        eval_every: 0,
        checkpoint_every: args.checkpoint_every,
        max_eval_windows: 16,
    };
    crate::install_stop_handler()?;
    let checkpointer = Checkpointer::new(&run_dir, args.keep).with_tokenizer(tokenizer.clone());
    let lora_json = lora.as_ref().map(|l| l.config.to_json());
    let save_config = |config: &TrainConfig, _: &pmc_model::LlamaConfig| {
        run::save_run_config(
            &run_dir,
            &serde_json::json!({"train": config, "method": format!("{:?}", args.method),
                "base": args.model, "data": args.data, "task": args.task.map(|t| t.name()),
                "fraction": args.fraction, "template": args.template, "lora": lora_json,
                "distributed": args.distributed.describe()}),
        )
    };
    let job = pmc_fsdp::Job {
        start,
        lora,
        train_config,
        sharding: args.distributed.sharding()?,
        device: args.compute.device(),
        data: &data,
        held_out: &held_out,
        options: &options,
        checkpointer: &checkpointer,
    };
    let Some((summary, trainer)) = crate::finished(job.run(save_config)?) else {
        return Ok(());
    };
    // The result beside the checkpoints: the adapter (PEFT format) or the whole model. A
    // sharded run's last checkpoint holds the consolidated model.
    let result = match &trainer {
        None => pmc_train::checkpoint::latest(&run_dir)?.context("no checkpoint written")?,
        Some(trainer) => match &trainer.lora {
            Some(lora) => {
                let dir = run_dir.join("adapter");
                pmc_peft::Adapter::from_model(&trainer.model, lora.config.clone()).save(&dir)?;
                dir
            }
            None => {
                let dir = run_dir.join("model");
                pmc_model::save_hf(
                    &trainer.model.valid(),
                    &trainer.model_config,
                    &dir,
                    Default::default(),
                )?;
                tokenizer.save(&dir)?;
                dir
            }
        },
    };
    println!("\n| | held-out loss (prompt + response) |\n|---|---|");
    println!(
        "| before | {:.4} |\n| after | {:.4} |",
        summary.ppl_before.ln(),
        summary.ppl_after.ln()
    );
    println!(
        "\n{} steps, {} tokens in {:.0} s ({:.0} tokens/s); {} written",
        summary.steps,
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds,
        result.display()
    );
    pmc_perf::rss::print_peak_rss();
    Ok(())
}
