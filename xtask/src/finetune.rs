//! `finetune`: full or LoRA fine-tuning on instruction data (a JSONL file, or a benchmark
//! task's training pool in PMC-LLaMA's format), with the trainer's loop, checkpoints and resume.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_bench::data::Task;
use pmc_fsdp::{FineTuned, FineTuning, LoraSettings};
use pmc_train::{Example, Method, Template};

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
    pub distributed: pmc_fsdp::DistributedArgs,
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

impl FinetuneArgs {
    /// The run these flags describe.
    pub fn fine_tuning(&self) -> Result<FineTuning> {
        let Some(template) = Template::parse(&self.template) else {
            bail!(
                "unknown --template {:?} (pmc-llama or plain)",
                self.template
            );
        };
        let targets = if self.targets == ["all-linear"] {
            pmc_peft::TargetModules::AllLinear
        } else {
            pmc_peft::TargetModules::Names(self.targets.clone())
        };
        Ok(FineTuning {
            method: self.method,
            base: self.model.clone(),
            lora: LoraSettings {
                r: self.r,
                alpha: self.alpha,
                targets,
                rslora: self.rslora,
                dropout: self.lora_dropout,
            },
            template,
            max_len: self.max_len,
            lr: self.lr,
            steps: self.steps,
            micro_batch: self.micro_batch,
            global_batch: self.global_batch,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            precision: self.compute.precision,
            parallel_micro_batches: self.compute.parallel_micro_batches,
            gradient_checkpointing: self.compute.gradient_checkpointing,
            out: self.out.clone(),
            resume: self.resume.clone(),
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            keep: self.keep,
            sharding: self.distributed.sharding()?,
        })
    }
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    args.distributed.relaunch_if_needed()?;
    let fine_tuning = args.fine_tuning()?;
    let examples = examples(&args)?;
    crate::install_stop_handler()?;
    let record = serde_json::json!({"data": args.data, "task": args.task.map(|t| t.name()),
        "fraction": args.fraction, "distributed": args.distributed.describe()});
    let Some(FineTuned { summary, result }) = fine_tuning.run(examples, record)? else {
        return Ok(());
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
