//! `eval` and `compare`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_bench::{EvalConfig, Mode, Split, Task, Template, data, metrics, run};
use pmc_model::GenerationConfig;

use crate::commands::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// pubmedqa, medqa or medmcqa.
    #[arg(long)]
    pub task: Task,
    #[command(flatten)]
    pub model: ModelArgs,
    /// A directory laid out like ../shared/data, or the task's file itself.
    #[arg(long)]
    pub data: PathBuf,
    /// loglik (multiple choice by log-likelihood) or generate (PMC-LLaMA's setting).
    #[arg(long, default_value = "loglik")]
    pub mode: Mode,
    /// Prompt template: lm-eval (loglik mode) or pmc-llama (generate mode).
    #[arg(long)]
    pub template: Option<Template>,
    /// Few-shot examples from the train pool.
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Only the first N questions of the split, in file order.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the few-shot draw, sampling and bootstrap.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Maximum new tokens per reply (generate mode).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature (generate mode; 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus threshold (generate mode).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Output directory: predictions.jsonl, results.json, results.md.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let template = args.template.unwrap_or(match args.mode {
        Mode::Loglik => Template::LmEval,
        Mode::Generate => Template::PmcLlama,
    });
    match (args.mode, template) {
        (Mode::Loglik, Template::LmEval) | (Mode::Generate, Template::PmcLlama) => {}
        (mode, template) => bail!(
            "--template {template:?} does not go with --mode {mode:?} (loglik uses lm-eval, generate uses pmc-llama)"
        ),
    }
    let data_file = data::resolve(args.task, Split::Eval, &args.data)?;
    let mut questions = data::load(args.task, Split::Eval, &args.data)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let shots = if args.shots > 0 {
        if args.mode == Mode::Generate {
            bail!("--shots is supported in loglik mode only");
        }
        let pool = data::load(args.task, Split::Train, &args.data)
            .context("--shots needs the task's train split")?;
        run::fewshot_examples(&pool, args.shots, args.seed)
    } else {
        Vec::new()
    };
    let device = pmc_model::default_device();
    let loaded = args.model.load(&device)?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer", loaded.source.display()))?;
    let config = EvalConfig {
        task: args.task,
        mode: args.mode,
        template,
        shots: args.shots,
        seed: args.seed,
        generation: GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    eprintln!(
        "{}: {} questions from {}, {:?} mode, {} shots",
        args.task.name(),
        questions.len(),
        data_file.display(),
        args.mode,
        args.shots
    );
    let started = Instant::now();
    let predictions = run::evaluate(
        &loaded.model,
        tokenizer,
        &config,
        &questions,
        &shots,
        &device,
    )?;
    let results = run::results_json(
        &config,
        &predictions,
        &args.model.model.display().to_string(),
        &data_file,
        &pmc_bench::sha256_file(&data_file)?,
        started.elapsed().as_secs_f64(),
    );
    run::write_outputs(&args.out, &predictions, &results)?;
    print!("{}", run::results_markdown(&results));
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The first run's output directory.
    pub run_a: PathBuf,
    /// The second run's output directory.
    pub run_b: PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub samples: usize,
}

pub fn compare(args: CompareArgs) -> Result<()> {
    let a = run::read_predictions(&args.run_a)?;
    let b = run::read_predictions(&args.run_b)?;
    let b_by_id: std::collections::HashMap<&str, bool> =
        b.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    let mut paired = Vec::new();
    for (id, ca) in &a {
        let cb = b_by_id.get(id.as_str()).with_context(|| {
            format!(
                "question {id} is in {} but not in {}",
                args.run_a.display(),
                args.run_b.display()
            )
        })?;
        paired.push((*ca, *cb));
    }
    if paired.len() != b.len() {
        bail!(
            "the runs cover different questions ({} vs {})",
            a.len(),
            b.len()
        );
    }
    let ca: Vec<bool> = paired.iter().map(|p| p.0).collect();
    let cb: Vec<bool> = paired.iter().map(|p| p.1).collect();
    let only_a = paired.iter().filter(|(x, y)| *x && !*y).count();
    let only_b = paired.iter().filter(|(x, y)| !*x && *y).count();
    let (lo, hi, p_boot) = metrics::paired_bootstrap(&ca, &cb, args.samples, 0);
    println!("| | A | B |\n|---|---|---|");
    println!(
        "| accuracy | {:.4} | {:.4} |",
        metrics::accuracy(&ca),
        metrics::accuracy(&cb)
    );
    println!(
        "\n{} paired questions; A right and B wrong: {only_a}; B right and A wrong: {only_b}",
        paired.len()
    );
    println!(
        "accuracy A − B: {:+.4}, paired bootstrap 95 % CI [{lo:+.4}, {hi:+.4}], P(A ≤ B) = {p_boot:.4}",
        metrics::accuracy(&ca) - metrics::accuracy(&cb)
    );
    println!(
        "McNemar exact test: p = {:.4}",
        metrics::mcnemar_exact(only_a, only_b)
    );
    Ok(())
}
