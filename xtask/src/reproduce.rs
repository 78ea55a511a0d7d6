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
    /// Fine-tuning steps (default: one epoch; --quick: 2).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Share of the training pool used for fine-tuning.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// Sequences per fine-tuning step (default 8; --quick: 4).
    #[arg(long)]
    pub global_batch: Option<usize>,
    /// Evaluate on N questions of each task, drawn with a fixed seed (the same for every
    /// cell, so cells are paired; --quick: 20).
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
    /// Print the plan — every cell, the tokens it scores and trains on, which are finished —
    /// and the time the rest should take on this machine (speed measured on the model, a few
    /// seconds), without running a cell.
    #[arg(long)]
    pub dry_run: bool,
    /// A preset that runs in minutes on a tiny model (what CI runs): --limit 20, --steps 2,
    /// --global-batch 4, --fractions 0.5; flags given explicitly win.
    #[arg(long)]
    pub quick: bool,
}

impl ReproduceArgs {
    /// The settings with --quick's values where no flag was given.
    fn with_preset(mut self) -> Self {
        if self.quick {
            self.limit.get_or_insert(20);
            self.steps.get_or_insert(2);
            self.global_batch.get_or_insert(4);
            if self.fractions.is_empty() {
                self.fractions = vec![0.5];
            }
        }
        self
    }
}

pub fn reproduce(args: ReproduceArgs) -> Result<()> {
    let args = args.with_preset();
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
            global_batch: args.global_batch.unwrap_or(8),
            limit: args.limit,
            subset_seed: 1234,
        },
        out: args.out.clone(),
    };
    let notes = grid.notes();
    for note in &notes {
        eprintln!("note: {note}");
    }
    if args.dry_run {
        grid.claim(false)?;
        eprintln!(
            "measuring this machine's speed with {}…",
            args.model.display()
        );
        print!("{}", grid.plan()?);
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
    let table = table_section(&grid.command(), &rows, &notes);
    println!("{table}");
    write_table_section(&args.results, &table)?;
    eprintln!("wrote the table into {}", args.results.display());
    Ok(())
}
