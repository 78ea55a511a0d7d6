//! `reproduce`: the paper's table — base vs. continued-pretrained model × zero-shot / LoRA /
//! full fine-tuning × PubMedQA, MedQA, MedMCQA — run end to end and written to a markdown
//! section of `docs/results.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pmc_bench::data::Task;
use pmc_bench::regimes::{CellSettings, Regime, run_cell};

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
    crate::install_stop_handler()?;
    let (mut rows, mut bars) = (Vec::new(), Vec::new());
    for (label, model) in &models {
        for &task in &args.tasks {
            for &regime in &args.regimes {
                let dir = args
                    .out
                    .join(format!("{label}-{}-{}", task.name(), regime.name()));
                eprintln!("cell {label} / {} / {}", task.name(), regime.name());
                let cell = run_cell(model, task, regime, &settings, &dir)?;
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
