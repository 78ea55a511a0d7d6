//! `bench-finetune`: LoRA against full fine-tuning of the same model on the same data, each
//! run as this program's own `finetune` in a child process (so each peak RSS is its own).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_bench::Task;

#[derive(Args, Debug)]
pub struct BenchFinetuneArgs {
    /// The model (default: SmolLM2-135M GGUF fetched by ../shared/tools/fetch-smollm2.sh).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The task whose training pool is the data.
    #[arg(long, default_value = "pubmedqa")]
    pub task: Task,
    #[arg(long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Optimizer steps per method.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 4)]
    pub global_batch: usize,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// LoRA rank (all seven projections).
    #[arg(long, default_value_t = 8)]
    pub r: usize,
}

/// What a `finetune` child printed: trainable parameters, tokens/s, peak RSS (MiB).
fn finetune_child(
    args: &BenchFinetuneArgs,
    model: &Path,
    method: &str,
    out: &Path,
) -> Result<(u64, f64, f64)> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["finetune", "--method", method, "--model"])
        .arg(model)
        .args(["--task", args.task.name(), "--data-dir"])
        .arg(&args.data_dir)
        .args([
            "--steps",
            &args.steps.to_string(),
            "--global-batch",
            &args.global_batch.to_string(),
        ])
        .args([
            "--max-len",
            &args.max_len.to_string(),
            "--r",
            &args.r.to_string(),
            "--checkpoint-every",
            "1000000",
        ])
        .arg("--out")
        .arg(out)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "finetune --method {method} failed: {}",
            stderr.lines().last().unwrap_or("")
        );
    }
    let trainable = stderr
        .lines()
        .find_map(|l| {
            l.split(" fine-tuning: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .context("no trainable-parameter line")?;
    let tokens_per_s = stdout
        .lines()
        .find_map(|l| {
            l.split(" tokens/s)")
                .next()?
                .rsplit('(')
                .next()?
                .parse()
                .ok()
        })
        .context("no tokens/s line")?;
    let rss = crate::rss::parse_peak_rss(&stdout).context("no peak RSS line")?;
    Ok((trainable, tokens_per_s, rss))
}

/// `bench-finetune`: LoRA against full fine-tuning of the same model on the same data —
/// trainable parameters, peak RSS and training tokens/s, each in its own process.
pub fn bench_finetune(args: BenchFinetuneArgs) -> Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let out = std::process::Command::new("sh")
                .arg("../shared/tools/fetch-smollm2.sh")
                .output()?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if !model.exists() {
        bail!("model {} not found", model.display());
    }
    let scratch = tempfile::tempdir()?;
    println!(
        "model {}, {} training pool, {} steps × {} sequences (≤ {} tokens), {} threads",
        model.display(),
        args.task.name(),
        args.steps,
        args.global_batch,
        args.max_len,
        rayon::current_num_threads()
    );
    let full = finetune_child(&args, &model, "full", &scratch.path().join("full"))?;
    let lora = finetune_child(&args, &model, "lora", &scratch.path().join("lora"))?;
    println!();
    println!("| method | trainable parameters | tokens/s | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!("| full | {} | {:.0} | {:.0} MiB |", full.0, full.1, full.2);
    println!(
        "| LoRA r = {} (7 projections) | {} | {:.0} | {:.0} MiB |",
        args.r, lora.0, lora.1, lora.2
    );
    println!(
        "LoRA / full: trainable {:.4}, tokens/s {:.2} × (target ≥ 1.3 ×), peak RSS {:.2} × (target ≤ 0.5 ×)",
        lora.0 as f64 / full.0 as f64,
        lora.1 / full.1,
        lora.2 / full.2
    );
    Ok(())
}
