//! `reproduce`: the paper's table — base vs. continued-pretrained model × zero-shot / LoRA /
//! full fine-tuning × PubMedQA, MedQA, MedMCQA — run end to end and written to a markdown
//! section of `docs/results.md`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pmc_bench::data::Task;
use pmc_bench::regimes::{
    Cell, CellSettings, Regime, TableRow, claim_grid, run_cell, table_section, write_table_section,
};
use pmc_bench::run::PairedRuns;

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
    /// Print the cells (and which are finished) without running any.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn reproduce(args: ReproduceArgs) -> Result<()> {
    let mut models = vec![("base", args.model.clone())];
    if let Some(c) = &args.continued {
        models.push(("continued", c.clone()));
    }
    let settings = CellSettings {
        data: args.data.clone(),
        fraction: args.fraction,
        steps: args.steps,
        global_batch: args.global_batch,
        limit: args.limit,
    };
    let labelled: Vec<(&str, &std::path::Path)> =
        models.iter().map(|(l, p)| (*l, p.as_path())).collect();
    claim_grid(&args.out, &labelled, &settings, !args.dry_run)?;
    let mut cells: Vec<(&str, &PathBuf, Task, Regime)> = Vec::new();
    for (label, model) in &models {
        for &task in &args.tasks {
            for &regime in &args.regimes {
                cells.push((label, model, task, regime));
            }
        }
    }
    let dir_of = |label: &str, task: Task, regime: Regime| {
        args.out
            .join(format!("{label}-{}-{}", task.name(), regime.name()))
    };
    if args.dry_run {
        for (i, &(label, model, task, regime)) in cells.iter().enumerate() {
            let done = dir_of(label, task, regime).join("cell.json").exists();
            println!(
                "{:>2}. {label} ({}) / {} / {}{}",
                i + 1,
                model.display(),
                task.name(),
                regime.name(),
                if done {
                    " — finished (cell.json)"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    crate::install_stop_handler()?;
    let (mut rows, mut bars) = (Vec::new(), Vec::<pmc_plot::AccuracyBar>::new());
    for (i, &(label, model, task, regime)) in cells.iter().enumerate() {
        let dir = dir_of(label, task, regime);
        let cell = run_cell(model, task, regime, &settings, &dir)?;
        let accuracy = cell.accuracy();
        eprintln!(
            "cell {}/{}: {label} / {} / {}: {}{}",
            i + 1,
            cells.len(),
            task.name(),
            regime.name(),
            accuracy.map_or("no training split".into(), |a| a.to_string()),
            if matches!(cell, Cell::Cached(_)) {
                " (cached)"
            } else {
                ""
            }
        );
        // The continued model against the base on the same questions.
        let base_dir = dir_of("base", task, regime);
        let mcnemar_p = match (label, accuracy) {
            ("continued", Some(_)) if base_dir.join("eval/predictions.jsonl").exists() => {
                Some(PairedRuns::read(&base_dir.join("eval"), &dir.join("eval"))?.mcnemar_p())
            }
            _ => None,
        };
        if let Some(acc) = &accuracy {
            bars.push(pmc_plot::AccuracyBar {
                group: format!("{} / {}", task.name(), regime.name()),
                series: label.to_string(),
                acc: acc.acc,
                low: acc.wilson_95.0,
                high: acc.wilson_95.1,
            });
        }
        rows.push(TableRow {
            model: label.to_string(),
            task,
            regime,
            accuracy,
            mcnemar_p,
        });
    }
    let names = |names: Vec<&str>| names.join(",");
    let command = format!(
        "cargo xtask reproduce --model {}{} --tasks {} --regimes {} --fraction {}{}{}",
        args.model.display(),
        args.continued
            .as_ref()
            .map_or(String::new(), |c| format!(" --continued {}", c.display())),
        names(args.tasks.iter().map(|t| t.name()).collect()),
        names(args.regimes.iter().map(|r| r.name()).collect()),
        args.fraction,
        args.steps
            .map_or(String::new(), |s| format!(" --steps {s}")),
        args.limit
            .map_or(String::new(), |l| format!(" --limit {l}")),
    );
    let table = table_section(&command, &rows);
    println!("{table}");
    if !bars.is_empty() {
        let (svg, png) = pmc_plot::accuracy_chart(
            &bars,
            "Accuracy by task and regime, 95 % Wilson intervals",
            &args.out.join("accuracy"),
        )?;
        eprintln!("chart: {} and {}", svg.display(), png.display());
    }
    write_table_section(&args.results, &table)?;
    eprintln!("wrote the table into {}", args.results.display());
    Ok(())
}
