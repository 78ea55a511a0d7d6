//! `bench-model`: scoring and greedy-decoding throughput of a ~100 M-parameter LLaMA on this
//! machine, beside PyTorch + transformers on the same config in the same invocation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pmc_model::{GenerationConfig, LlamaConfig, WeightDType};
use pmc_train::TrainStep;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct BenchModelArgs {
    /// Tokens per scored row.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Rows scored.
    #[arg(long, default_value_t = 4)]
    pub rows: usize,
    /// Prompt length before decoding.
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// Tokens decoded greedily.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Benchmark this GGUF model instead of the random ~95 M config (the reference then
    /// loads it with transformers' GGUF loader); load time and peak RSS are reported too.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
}

/// What one side of the benchmark measured.
struct Figures {
    score_tps: f64,
    decode_tps: f64,
    peak_rss: f64,
    load_s: Option<f64>,
    load_rss: Option<f64>,
}

/// The benchmark config: LLaMA-shaped, 32k vocabulary, about 95 M parameters.
fn bench_config() -> Value {
    json!({
        "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
        "num_hidden_layers": 10, "num_attention_heads": 12, "num_key_value_heads": 12,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    })
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Prints this process's peak RSS as a `peak RSS: N MiB` line (the line
/// [`parse_peak_rss`] reads back from a child process's output).
pub fn print_peak_rss() {
    if let Some(rss) = peak_rss() {
        println!("peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
}

/// The MiB of a `peak RSS: N MiB` line in `output`.
pub fn parse_peak_rss(output: &str) -> Option<f64> {
    output.lines().find_map(|l| {
        l.strip_prefix("peak RSS: ")?
            .strip_suffix(" MiB")?
            .parse()
            .ok()
    })
}

/// Resets the kernel's peak-RSS counter of this process (Linux: `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `xtask/python/SCRIPT` with `args` and returns the JSON objects it printed, one per
/// stdout line. A failure carries the last line of its stderr (usually the missing package).
pub fn run_python_reference(script: &str, args: &[&std::ffi::OsStr]) -> Result<Vec<Value>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("{script}: {}", stderr.lines().last().unwrap_or("failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{script} printed {l:?}")))
        .collect()
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

pub fn bench_model(args: BenchModelArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = pmc_model::default_device();
    let config_json = bench_config();
    reset_peak_rss();
    let started = Instant::now();
    let (config, model, load_s) = match &args.gguf {
        Some(path) => {
            let loaded = pmc_model::load_gguf(path, &Default::default(), &device)?;
            (
                loaded.config,
                loaded.model,
                Some(started.elapsed().as_secs_f64()),
            )
        }
        None => {
            let config = LlamaConfig::from_json(&config_json, Path::new("<bench config>"))?;
            let model = pmc_model::init_random(&config, WeightDType::F32, 0, &device);
            (config, model, None)
        }
    };
    let load_rss = load_s.and(peak_rss().map(|b| b as f64));
    let weights_bytes = config.num_parameters() as f64 * 4.0;
    println!(
        "bench-model: {} — {} layers, hidden {}, vocab {}, {:.1} M parameters ({} as f32), {threads} threads",
        args.gguf
            .as_ref()
            .map_or("random LLaMA".to_string(), |p| p.display().to_string()),
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        config.num_parameters() as f64 / 1e6,
        gib(weights_bytes)
    );

    let rows: Vec<Vec<u32>> = (0..args.rows)
        .map(|r| {
            (0..args.seq_len)
                .map(|i| ((r * 7919 + i * 104729) % config.vocab_size) as u32)
                .collect()
        })
        .collect();
    // Warm-up, then scoring.
    pmc_model::mean_nll(&model, &rows[0][..32], 32, &device)?;
    reset_peak_rss();
    let started = Instant::now();
    for row in &rows {
        pmc_model::mean_nll(&model, row, args.seq_len, &device)?;
    }
    let score_tps = (args.rows * args.seq_len) as f64 / started.elapsed().as_secs_f64();
    let peak = peak_rss().unwrap_or(0) as f64;

    let generation = GenerationConfig {
        max_new_tokens: args.new_tokens,
        ..Default::default()
    };
    let prompt = &rows[0][..args.prompt_len];
    let started = Instant::now();
    let out = pmc_model::generate(&model, prompt, &generation, &[], &device, |_| Ok(true))?;
    let decode_tps = out.len() as f64 / started.elapsed().as_secs_f64();
    let ours = Figures {
        score_tps,
        decode_tps,
        peak_rss: peak,
        load_s,
        load_rss,
    };

    let reference = if args.no_reference {
        None
    } else {
        run_reference(&config_json, &args, threads)
    };

    println!();
    println!("| metric | pmc-llama (burn flex) | PyTorch + transformers | ratio |");
    println!("|---|---|---|---|");
    let row = |name: &str, ours: Option<f64>, theirs: Option<f64>, fmt: &dyn Fn(f64) -> String| {
        let Some(ours) = ours else { return };
        match theirs {
            Some(t) => println!(
                "| {name} | {} | {} | {:.2} × |",
                fmt(ours),
                fmt(t),
                ours / t
            ),
            None => println!("| {name} | {} | n/a | n/a |", fmt(ours)),
        }
    };
    let theirs = |f: fn(&Figures) -> Option<f64>| reference.as_ref().and_then(f);
    let tps = |x: f64| format!("{x:.1} tok/s");
    let secs = |x: f64| format!("{x:.2} s");
    row("load", ours.load_s, theirs(|r| r.load_s), &secs);
    row(
        "peak RSS after load",
        ours.load_rss,
        theirs(|r| r.load_rss),
        &|x| gib(x),
    );
    row(
        &format!("scoring, {}-token rows", args.seq_len),
        Some(ours.score_tps),
        theirs(|r| Some(r.score_tps)),
        &tps,
    );
    row(
        "greedy decode (KV cache)",
        Some(ours.decode_tps),
        theirs(|r| Some(r.decode_tps)),
        &tps,
    );
    row(
        "peak RSS while scoring",
        Some(ours.peak_rss),
        theirs(|r| Some(r.peak_rss)),
        &|x| gib(x),
    );
    println!(
        "\npeak RSS while scoring / f32 weights: {:.2} (target ≤ 1.3)",
        peak / weights_bytes
    );
    Ok(())
}

/// Runs `xtask/python/bench_model.py`; `None` (with the reason printed) when PyTorch or
/// transformers is not installed.
fn run_reference(config: &Value, args: &BenchModelArgs, threads: usize) -> Option<Figures> {
    let payload = json!({
        "config": config, "threads": threads, "seq_len": args.seq_len, "rows": args.rows,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "gguf": args.gguf,
    });
    let result = (|| -> Result<Figures> {
        let lines = run_python_reference("bench_model.py", &[payload.to_string().as_ref()])?;
        let v = lines.last().context("bench_model.py printed nothing")?;
        let num = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("reference did not report {k}"))
        };
        Ok(Figures {
            score_tps: num("score_tokens_per_s")?,
            decode_tps: num("decode_tokens_per_s")?,
            peak_rss: num("peak_rss_bytes")?,
            load_s: v["load_s"].as_f64(),
            load_rss: v["load_s"]
                .as_f64()
                .and(v["peak_rss_after_load_bytes"].as_f64()),
        })
    })();
    match result {
        Ok(r) => Some(r),
        Err(e) => {
            println!("reference skipped (pip install torch transformers to enable it): {e:#}");
            None
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// What the projections multiply in: f32, or bf16 with f32 master weights (mixed
    /// precision; pays off only where the backend has bf16 matrix units — on the CPU backend
    /// it is slower).
    #[arg(long, default_value = "f32")]
    pub precision: pmc_model::Precision,
    /// Split ours into this many micro-batches computed at once, one thread each (the same
    /// batch and the same result; see `TrainConfig::parallel_micro_batches`).
    #[arg(long, default_value_t = 2)]
    pub parallel_micro_batches: usize,
    /// Train ours with gradient checkpointing (memory-bound activations recomputed).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

/// Training tokens/s of the 33.7 M-parameter reference config (vocab 8192, hidden 512,
/// intermediate 1376, 8 layers, 8 heads) against PyTorch eager in the same invocation.
pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = LlamaConfig::preset("small", 8192)?;
    let config_json = config.to_json();

    let params = config.num_parameters() as f64;
    println!(
        "bench-train: {:.1} M parameters, batch {} × {} tokens (ours: {} micro-batches side by side), AdamW, {} products, {threads} threads",
        params / 1e6,
        args.batch,
        args.seq_len,
        args.parallel_micro_batches,
        args.precision
    );

    let device = crate::training_device(args.gradient_checkpointing);
    let model = pmc_model::init_random(&config, WeightDType::F32, 0, &device);
    let train_config = pmc_train::TrainConfig {
        micro_batch: args.batch / args.parallel_micro_batches.clamp(1, args.batch),
        global_batch: args.batch,
        parallel_micro_batches: args.parallel_micro_batches,
        precision: args.precision,
        ..pmc_train::run::default_train_config(args.seq_len)
    };
    let mut trainer = pmc_train::Trainer::new(model, config.clone(), train_config, &device)?;
    let tokens: Vec<u32> = (0..args.batch * args.seq_len * (args.steps + 1))
        .map(|i| ((i * 2_654_435_761) % config.vocab_size) as u32)
        .collect();
    let data = pmc_train::TokenWindows::new(&tokens, args.seq_len, 0);
    trainer.step(&data)?; // warm-up
    reset_peak_rss();
    let started = Instant::now();
    for _ in 0..args.steps {
        trainer.step(&data)?;
    }
    let ours = (args.steps * args.batch * args.seq_len) as f64 / started.elapsed().as_secs_f64();
    let ours_rss = peak_rss().unwrap_or(0) as f64;

    let reference = if args.no_reference {
        None
    } else {
        let payload = json!({"config": config_json, "threads": threads, "batch": args.batch,
                             "seq_len": args.seq_len, "steps": args.steps});
        match run_python_reference("bench_train.py", &[payload.to_string().as_ref()]) {
            Ok(lines) => lines.last().map(|v| {
                (
                    v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                    v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN),
                )
            }),
            Err(e) => {
                println!("reference skipped (pip install torch transformers to enable it): {e:#}");
                None
            }
        }
    };
    // 6 FLOPs per parameter per token (forward 2, backward 4), the usual estimate.
    let gflops = |tps: f64| 6.0 * params * tps / 1e9;
    println!("\n| metric | pmc-llama (burn flex) | PyTorch eager | ratio |\n|---|---|---|---|");
    match reference {
        Some((tps, rss)) => {
            println!(
                "| training tokens/s | {ours:.1} | {tps:.1} | {:.2} × |",
                ours / tps
            );
            println!(
                "| achieved GFLOP/s (6·N·tokens) | {:.1} | {:.1} | |",
                gflops(ours),
                gflops(tps)
            );
            println!(
                "| peak RSS | {} | {} | {:.2} × |",
                gib(ours_rss),
                gib(rss),
                ours_rss / rss
            );
        }
        None => {
            println!("| training tokens/s | {ours:.1} | n/a | |");
            println!(
                "| achieved GFLOP/s (6·N·tokens) | {:.1} | n/a | |",
                gflops(ours)
            );
            println!("| peak RSS | {} | n/a | |", gib(ours_rss));
        }
    }
    Ok(())
}
