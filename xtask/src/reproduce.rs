//! `reproduce`: the paper's table — base vs. continued-pretrained model × zero-shot / LoRA /
//! full fine-tuning × PubMedQA, MedQA, MedMCQA — run end to end and written to a markdown
//! section of `docs/results.md`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pmc_bench::data::Task;
use pmc_bench::regimes::{Cell, CellSettings, Grid, Regime, table_section, write_table_section};

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
    /// Data-efficient cells as well: the fine-tuning regimes of --fractions-task on these
    /// shares of its training pool (e.g. 0.1,0.3), beside the --fraction cells.
    #[arg(long, value_delimiter = ',')]
    pub fractions: Vec<f64>,
    /// The task of the data-efficient cells.
    #[arg(long, default_value = "medqa")]
    pub fractions_task: Task,
    /// Print the cells (and which are finished) without running any.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn reproduce(args: ReproduceArgs) -> Result<()> {
    let mut models = vec![("base".to_string(), args.model.clone())];
    if let Some(c) = &args.continued {
        models.push(("continued".to_string(), c.clone()));
    }
    let grid = Grid {
        models,
        tasks: args.tasks.clone(),
        regimes: args.regimes.clone(),
        fractions: args.fractions.clone(),
        fractions_task: args.fractions_task,
        settings: CellSettings {
            data: args.data.clone(),
            fraction: args.fraction,
            steps: args.steps,
            global_batch: args.global_batch,
            limit: args.limit,
        },
        out: args.out.clone(),
    };
    let notes = grid.notes();
    for note in &notes {
        eprintln!("note: {note}");
    }
    if args.dry_run {
        grid.claim(false)?;
        for (i, cell) in grid.cells().iter().enumerate() {
            let done = cell.dir(&args.out).join("cell.json").exists();
            let done = if done {
                " — finished (cell.json)"
            } else {
                ""
            };
            println!(
                "{:>2}. {} ({}){done}",
                i + 1,
                cell.name(),
                cell.model.display()
            );
        }
        return Ok(());
    }
    crate::install_stop_handler()?;
    let done = grid.run(|cell, outcome, progress| {
        let eta = progress.eta_s.map_or(String::new(), |s| match s < 120.0 {
            true => format!(", grid ETA {s:.0} s"),
            false => format!(", grid ETA {:.0} min", s / 60.0),
        });
        let cached = if matches!(outcome, Cell::Cached(_)) {
            " (cached)"
        } else {
            ""
        };
        let accuracy = outcome.accuracy();
        eprintln!(
            "cell {}/{}: {}: {}{cached}{eta}",
            progress.done,
            progress.total,
            cell.name(),
            accuracy.map_or("no training split".into(), |a| a.to_string()),
        );
    })?;
    let outputs = grid.write_outputs(&done)?;
    eprintln!("results (lm-eval shape): {}", outputs.results.display());
    for chart in outputs.accuracy_chart.iter().chain(&outputs.loss_charts) {
        eprintln!("chart: {}", chart.display());
    }
    let rows: Vec<_> = done.into_iter().map(|(_, row)| row).collect();
    let names = |names: Vec<&str>| names.join(",");
    let command = format!(
        "cargo xtask reproduce --model {}{} --tasks {} --regimes {} --fraction {}{}{}{}",
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
        match args.fractions.is_empty() {
            true => String::new(),
            false => format!(
                " --fractions {} --fractions-task {}",
                args.fractions
                    .iter()
                    .map(f64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                args.fractions_task.name()
            ),
        },
    );
    let table = table_section(&command, &rows, &notes);
    println!("{table}");
    write_table_section(&args.results, &table)?;
    eprintln!("wrote the table into {}", args.results.display());
    Ok(())
}
