//! `eval` and `compare`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pmc_bench::{Mode, Task, Template, metrics, run};
use pmc_model::GenerationConfig;

use crate::commands::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// pubmedqa, medqa, medmcqa, a comma-separated list, or all (the three: one results
    /// table and one lm-eval-shaped results.json, each task's outputs in its subdirectory).
    #[arg(long, value_parser = Task::parse_list)]
    pub task: std::vec::Vec<Task>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// A directory laid out like ../shared/data, or the task's file itself.
    #[arg(long)]
    pub data: PathBuf,
    /// loglik (multiple choice by log-likelihood) or generate (PMC-LLaMA's setting).
    #[arg(long, default_value = "loglik")]
    pub mode: Mode,
    /// Prompt template: lm-eval (loglik mode), pmc-llama or chat (generate mode; chat puts
    /// PMC-LLaMA's instruction and the question into the model's own chat template).
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
    let settings = run::EvalSettings {
        mode: args.mode,
        template: args.template,
        shots: args.shots,
        seed: args.seed,
        generation: GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    let template = settings.template()?;
    // Every task's questions first: the progress bar and its ETA span all of them.
    let mut runs = Vec::new();
    for &task in &args.task {
        let run = run::TaskQuestions::load(task, &args.data, args.limit, args.shots, args.seed)?;
        eprintln!(
            "{}: {} questions from {}, {:?} mode, {template:?} template, {} shots",
            task.name(),
            run.questions.len(),
            run.data_file.display(),
            args.mode,
            args.shots
        );
        if let Some(note) = pmc_bench::data::split_note(task, &args.data) {
            eprintln!("note: {note}");
        }
        runs.push(run);
    }
    let device = pmc_model::default_device();
    let loaded = args.model.load(&device)?;
    // The model as results.json names it: the base and, when one is applied, the adapter.
    let model_name = match &args.model.adapter {
        Some(adapter) => format!(
            "{} + adapter {}",
            args.model.model.display(),
            adapter.display()
        ),
        None => args.model.model.display().to_string(),
    };
    let total: usize = runs.iter().map(|r| r.questions.len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} questions {msg} {per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let results = run::evaluate_tasks(
        &loaded,
        &model_name,
        &settings,
        &runs,
        &args.out,
        |task, done| {
            let correct = done.iter().filter(|p| p.pred == Some(p.gold)).count();
            bar.inc(1);
            let acc = correct as f64 / done.len() as f64;
            bar.set_message(format!("[{}] acc {acc:.3}", task.name()));
        },
    )?;
    bar.finish_and_clear();
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
    let paired = run::PairedRuns::read(&args.run_a, &args.run_b)?;
    let (ca, cb) = (&paired.a, &paired.b);
    let (only_a, only_b) = paired.discordant();
    let (lo, hi, p_boot) = metrics::paired_bootstrap(ca, cb, args.samples, 0);
    println!("| | A | B |\n|---|---|---|");
    println!(
        "| accuracy | {:.4} | {:.4} |",
        metrics::accuracy(ca),
        metrics::accuracy(cb)
    );
    println!(
        "\n{} paired questions; A right and B wrong: {only_a}; B right and A wrong: {only_b}",
        ca.len()
    );
    println!(
        "accuracy A − B: {:+.4}, paired bootstrap 95 % CI [{lo:+.4}, {hi:+.4}], P(A ≤ B) = {p_boot:.4}",
        metrics::accuracy(ca) - metrics::accuracy(cb)
    );
    println!("McNemar exact test: p = {:.4}", paired.mcnemar_p());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ContaminationArgs {
    /// A corpus prepared by `prepare-corpus` (its text shards are read).
    #[arg(long)]
    pub corpus: PathBuf,
    /// pubmedqa, medqa or medmcqa.
    #[arg(long)]
    pub task: Task,
    /// A directory laid out like ../shared/data, or the task's file itself.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Write the contaminated items (id, split, corpus documents) as JSONL here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `contamination`: the share of a benchmark's items whose text shares a word 13-gram with
/// the pretraining corpus, for the evaluation split and the training pool.
pub fn contamination(args: ContaminationArgs) -> Result<()> {
    use pmc_bench::contamination::{NGRAM, scan};
    let (splits, documents) = scan(&args.corpus, args.task, &args.data)?;
    if splits.len() == 1 {
        eprintln!("note: {} has no training pool here", args.task.name());
    }
    println!(
        "{} against {} ({documents} documents), word {NGRAM}-grams\n",
        args.task.name(),
        args.corpus.display()
    );
    println!("| split | items | contaminated | share |");
    println!("|---|---:|---:|---:|");
    let mut lines = Vec::new();
    for pmc_bench::contamination::SplitContamination { split, index, hits } in &splits {
        println!(
            "| {split:?} | {} | {} | {:.2} % |",
            index.len(),
            hits.len(),
            100.0 * hits.len() as f64 / index.len().max(1) as f64
        );
        for (item, docs) in hits {
            lines.push(serde_json::json!({"id": index.id(*item), "split": format!("{split:?}"), "documents": docs}).to_string());
        }
    }
    if let Some(out) = &args.out {
        std::fs::write(out, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
