//! `bench-corpus`: `prepare-corpus` end to end against the Python reference pipeline,
//! tokenization against raw `encode_batch`, and peak RSS as the input grows. Ours runs as
//! this program's own `prepare-corpus` in a child process, so its peak RSS is its own.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchCorpusArgs {
    /// JATS papers to prepare (default: ../shared/data/pmc-jats).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tokenizer for both pipelines (default: the shared LLaMA-2 tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// How many times the input is replicated for the memory figure.
    #[arg(long, default_value_t = 10)]
    pub replicate: usize,
    /// Timed repetitions of each pipeline (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Run this program's own `prepare-corpus` as a child process; wall seconds and the summary.
fn run_prepare_child(
    input: &std::path::Path,
    out: &std::path::Path,
    tokenizer: &std::path::Path,
    extra: &[&str],
) -> Result<(f64, String)> {
    let _ = std::fs::remove_dir_all(out);
    let started = std::time::Instant::now();
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["prepare-corpus", "--quiet", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(extra)
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "prepare-corpus failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((seconds, stdout))
}

/// `bench-corpus`: end-to-end MB/s against the Python reference pipeline, tokenization
/// against raw `encode_batch`, and peak RSS with the input replicated.
pub fn bench_corpus(args: BenchCorpusArgs) -> Result<()> {
    use rayon::prelude::*;
    // Relative to the working directory, as every command's ../shared/data default is.
    let shared = Path::new("../shared/data");
    let input = args.input.unwrap_or_else(|| shared.join("pmc-jats"));
    let tokenizer = args
        .tokenizer
        .unwrap_or_else(|| shared.join("tokenizers/llama2/tokenizer.json"));
    if !input.exists() || !tokenizer.exists() {
        bail!(
            "need {} and {} (see ../shared/README.md)",
            input.display(),
            tokenizer.display()
        );
    }
    let threads = rayon::current_num_threads();
    let scratch = tempfile::tempdir()?;
    let files = pmc_corpus::input::list_files(std::slice::from_ref(&input))?;
    let mb = pmc_corpus::input::total_bytes(&files) as f64 / 1e6;
    println!("input: {} ({mb:.1} MB), {threads} threads", input.display());

    // 1. End to end, ours and the Python reference, alternating, best of `repeat`.
    let ours_out = scratch.path().join("ours");
    let python_out = scratch.path().join("python");
    let (mut ours, mut python) = (f64::INFINITY, f64::INFINITY);
    let (mut ours_rss, mut python_rss) = (0.0, 0.0);
    let mut python_json = serde_json::Value::Null;
    for _ in 0..args.repeat.max(1) {
        let (s, summary) = run_prepare_child(&input, &ours_out, &tokenizer, &[])?;
        ours = ours.min(s);
        ours_rss = crate::rss::parse_peak_rss(&summary).unwrap_or(0.0);
        let _ = std::fs::remove_dir_all(&python_out);
        let started = std::time::Instant::now();
        let lines = crate::reference::run_python_reference(
            "corpus_reference.py",
            &[
                "--input".as_ref(),
                input.as_os_str(),
                "--tokenizer".as_ref(),
                tokenizer.as_os_str(),
                "--out".as_ref(),
                python_out.as_os_str(),
            ],
        )?;
        python = python.min(started.elapsed().as_secs_f64());
        python_json = lines.into_iter().next().unwrap_or_default();
        python_rss = python_json["peak_rss"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
    }
    let manifest = pmc_corpus::read_manifest(&ours_out)?;
    println!();
    println!("| pipeline | wall s | MB/s | documents | sequences | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| pmc-corpus (Rust) | {ours:.2} | {:.1} | {} | {} | {ours_rss:.0} MiB |",
        mb / ours,
        manifest.documents.kept,
        manifest.sequences
    );
    println!(
        "| Python (ElementTree + tokenizers + pyarrow) | {python:.2} | {:.1} | {} | {} | {python_rss:.0} MiB |",
        mb / python,
        python_json["documents"],
        python_json["sequences"]
    );
    println!("speed-up: {:.2} × (target ≥ 3 ×)", python / ours);

    // 2. Tokenization: our per-document path with packing against raw encode_batch.
    let tok = pmc_corpus::tokens::load_tokenizer(&tokenizer)?;
    let mut texts = Vec::new();
    for shard in &manifest.text_shards {
        texts.extend(pmc_corpus::shards::read_text_shard(
            &ours_out.join(&shard.file),
        )?);
    }
    let plain: Vec<String> = texts.iter().map(|(_, t)| t.clone()).collect();
    let (mut raw, mut ours_tok) = (f64::INFINITY, f64::INFINITY);
    let mut tokens = 0usize;
    for _ in 0..args.repeat.max(1) {
        let started = std::time::Instant::now();
        let encodings = tok
            .encode_batch(plain.clone(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        raw = raw.min(started.elapsed().as_secs_f64());
        tokens = encodings.iter().map(|e| e.len()).sum();
        let started = std::time::Instant::now();
        let ids: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|(_, t)| pmc_corpus::tokens::encode(&tok, t))
            .collect::<Result<_, _>>()?;
        let mut packer = pmc_corpus::tokens::Packer::new(manifest.seq_len, manifest.eos_id);
        let mut sequences = 0usize;
        for ((id, _), ids) in texts.iter().zip(&ids) {
            packer.push(id, ids, |_| {
                sequences += 1;
                Ok(())
            })?;
        }
        ours_tok = ours_tok.min(started.elapsed().as_secs_f64());
    }
    println!();
    println!("| tokenization ({tokens} tokens) | s | tokens/s |");
    println!("|---|---:|---:|");
    println!(
        "| tokenizers `encode_batch` (raw) | {raw:.3} | {:.0} |",
        tokens as f64 / raw
    );
    println!(
        "| pmc-corpus encode + pack | {ours_tok:.3} | {:.0} |",
        tokens as f64 / ours_tok
    );
    println!(
        "tokenization speed: {:.0} % of raw encode_batch (target ≥ 90 %)",
        100.0 * raw / ours_tok
    );

    // 3. Memory against corpus size: the input replicated, deduplication off so that every
    // copy goes all the way through to the shards.
    let replicated = scratch.path().join("replicated");
    std::fs::create_dir(&replicated)?;
    for i in 0..args.replicate {
        std::os::unix::fs::symlink(
            std::fs::canonicalize(&input)?,
            replicated.join(format!("copy{i:02}")),
        )?;
    }
    let no_dedup = ["--exact-dedup", "false", "--near-dup", "0"];
    let (s1, one) = run_prepare_child(&input, &scratch.path().join("x1"), &tokenizer, &no_dedup)?;
    let (sn, many) = run_prepare_child(
        &replicated,
        &scratch.path().join("xn"),
        &tokenizer,
        &no_dedup,
    )?;
    let (r1, rn) = (
        crate::rss::parse_peak_rss(&one).unwrap_or(0.0),
        crate::rss::parse_peak_rss(&many).unwrap_or(0.0),
    );
    println!();
    println!("| input (dedup off) | MB | wall s | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!("| 1 × | {mb:.0} | {s1:.2} | {r1:.0} MiB |");
    println!(
        "| {} × | {:.0} | {sn:.2} | {rn:.0} MiB |",
        args.replicate,
        mb * args.replicate as f64
    );
    println!(
        "peak RSS ratio {} × / 1 ×: {:.2}",
        args.replicate,
        rn / r1.max(1e-9)
    );
    Ok(())
}
