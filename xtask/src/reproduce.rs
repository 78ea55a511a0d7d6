//! `reproduce`: the paper's table — base vs. continued-pretrained model × zero-shot / LoRA /
//! full fine-tuning × PubMedQA, MedQA, MedMCQA — run end to end and written to a markdown
//! section of `docs/results.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use pmc_bench::data::{self, Split, Task};
use pmc_bench::regimes::{Accuracy, Regime};
use pmc_bench::run::Mode;
use pmc_train::run_dir::UsedDir;

use crate::commands::ModelArgs;
use crate::eval::{EvalArgs, eval};
use crate::finetune::{FinetuneArgs, finetune};
use pmc_train::Method;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// The base model (HF directory or .gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// The continued-pretrained model (e.g. a `pretrain` checkpoint), compared with the base.
    #[arg(long)]
    pub continued: Option<PathBuf>,
    /// Tasks (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "pubmedqa,medqa,medmcqa")]
    pub tasks: Vec<Task>,
    /// Regimes (comma-separated): zero-shot, lora, full.
    #[arg(long, value_delimiter = ',', default_value = "zero-shot,lora,full")]
    pub regimes: Vec<Regime>,
    /// Where the benchmarks are (laid out like ../shared/data).
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Fine-tuning steps (default: one epoch).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Share of the training pool used for fine-tuning.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    #[arg(long, default_value_t = 8)]
    pub global_batch: usize,
    /// Evaluate on the first N questions only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run directory for checkpoints and evaluation outputs.
    #[arg(long, default_value = "runs/reproduce")]
    pub out: PathBuf,
    /// The markdown file whose `reproduce` section receives the table.
    #[arg(long, default_value = "docs/results.md")]
    pub results: PathBuf,
}

fn eval_args(
    task: Task,
    model: &Path,
    adapter: Option<PathBuf>,
    args: &ReproduceArgs,
    out: PathBuf,
) -> EvalArgs {
    EvalArgs {
        task: vec![task],
        model: ModelArgs {
            model: model.to_path_buf(),
            adapter,
            dtype: Default::default(),
        },
        data: args.data.clone(),
        mode: Mode::Loglik,
        template: None,
        shots: 0,
        limit: args.limit,
        seed: 1234,
        max_new_tokens: 32,
        temperature: 0.0,
        top_p: 1.0,
        out,
    }
}

fn finetune_args(
    task: Task,
    model: &Path,
    method: Method,
    args: &ReproduceArgs,
    out: PathBuf,
) -> FinetuneArgs {
    FinetuneArgs {
        method,
        model: model.to_path_buf(),
        data: None,
        task: Some(task),
        data_dir: args.data.clone(),
        fraction: args.fraction,
        template: "pmc-llama".into(),
        r: 8,
        alpha: 16.0,
        targets: pmc_peft::TargetModules::LLAMA_PROJECTIONS
            .map(String::from)
            .to_vec(),
        rslora: false,
        lora_dropout: 0.05,
        lr: None,
        steps: args.steps,
        micro_batch: 1,
        global_batch: args.global_batch,
        max_len: 512,
        warmup_ratio: 0.03,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 0,
        out,
        resume: None,
        distributed: Default::default(),
        log_every: 10,
        checkpoint_every: 1_000_000,
        keep: 1,
        compute: crate::ComputeArgs::default(),
    }
}

fn accuracy(dir: &Path, task: Task) -> Result<Accuracy> {
    Ok(pmc_bench::regimes::read_accuracy(dir, task)?)
}

pub fn reproduce(args: ReproduceArgs) -> Result<()> {
    let mut models = vec![("base", args.model.clone())];
    if let Some(c) = &args.continued {
        models.push(("continued", c.clone()));
    }
    let (mut rows, mut bars) = (Vec::new(), Vec::new());
    for (label, model) in &models {
        for &task in &args.tasks {
            let has_train = data::resolve(task, Split::Train, &args.data).is_ok();
            for regime in &args.regimes {
                let dir = args
                    .out
                    .join(format!("{label}-{}-{}", task.name(), regime.name()));
                let cell = match regime {
                    Regime::ZeroShot => {
                        eval(eval_args(task, model, None, &args, dir.join("eval")))?;
                        Some(accuracy(&dir.join("eval"), task)?)
                    }
                    Regime::Lora | Regime::Full if !has_train => None,
                    Regime::Lora => {
                        // The cell is recomputed: its earlier run goes first.
                        pmc_train::run_dir::claim_fresh(&dir, UsedDir::Replace)?;
                        finetune(finetune_args(task, model, Method::Lora, &args, dir.clone()))?;
                        eval(eval_args(
                            task,
                            model,
                            Some(dir.join("adapter")),
                            &args,
                            dir.join("eval"),
                        ))?;
                        Some(accuracy(&dir.join("eval"), task)?)
                    }
                    Regime::Full => {
                        pmc_train::run_dir::claim_fresh(&dir, UsedDir::Replace)?;
                        finetune(finetune_args(task, model, Method::Full, &args, dir.clone()))?;
                        eval(eval_args(
                            task,
                            &dir.join("model"),
                            None,
                            &args,
                            dir.join("eval"),
                        ))?;
                        Some(accuracy(&dir.join("eval"), task)?)
                    }
                };
                let group = format!("{} / {}", task.name(), regime.name());
                let text = match &cell {
                    Some(acc) => {
                        bars.push(pmc_plot::AccuracyBar {
                            group,
                            series: label.to_string(),
                            acc: acc.acc,
                            low: acc.wilson_95.0,
                            high: acc.wilson_95.1,
                        });
                        acc.to_string()
                    }
                    None => "— (no training split in --data)".to_string(),
                };
                rows.push(format!(
                    "| {label} | {} | {} | {text} |",
                    task.name(),
                    regime.name()
                ));
            }
        }
    }
    let table = format!(
        "<!-- reproduce:begin -->\n`cargo xtask reproduce --model {}{} --tasks {} --regimes {} --fraction {}{}{}` \
         (loglik mode, lm-eval templates; acc with Wilson 95 % interval)\n\n| model | task | regime | acc |\n|---|---|---|---|\n{}\n<!-- reproduce:end -->",
        args.model.display(),
        args.continued
            .as_ref()
            .map_or(String::new(), |c| format!(" --continued {}", c.display())),
        args.tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(","),
        args.regimes
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(","),
        args.fraction,
        args.steps
            .map_or(String::new(), |s| format!(" --steps {s}")),
        args.limit
            .map_or(String::new(), |l| format!(" --limit {l}")),
        rows.join("\n")
    );
    println!("{table}");
    if !bars.is_empty() {
        let (svg, png) = pmc_plot::accuracy_chart(
            &bars,
            "Accuracy by task and regime, 95 % Wilson intervals",
            &args.out.join("accuracy"),
        )?;
        eprintln!("chart: {} and {}", svg.display(), png.display());
    }
    let text = std::fs::read_to_string(&args.results).unwrap_or_default();
    let updated = match (
        text.find("<!-- reproduce:begin -->"),
        text.find("<!-- reproduce:end -->"),
    ) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{table}{}",
            &text[..a],
            &text[b + "<!-- reproduce:end -->".len()..]
        ),
        _ => format!("{text}\n## The paper's table (`cargo xtask reproduce`)\n\n{table}\n"),
    };
    std::fs::write(&args.results, updated)
        .with_context(|| format!("writing {}", args.results.display()))?;
    eprintln!("wrote the table into {}", args.results.display());
    Ok(())
}
