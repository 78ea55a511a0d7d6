//! `bench-model`: scoring, prompt-processing and greedy-decoding throughput of a ~100 M-parameter
//! LLaMA (or a GGUF file) on this machine, beside PyTorch + transformers on the same config in
//! the same invocation, and optionally beside candle and llama.cpp on the same GGUF.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pmc_model::{GenerationConfig, LlamaConfig};

use crate::reference::{REFERENCE_MISSING, run_python_reference};
use crate::report::{Metric, gib, tok_per_s};
use crate::rss::{peak_rss, reset_peak_rss};
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
    /// Rounds; each runs ours, then the reference (then candle), so drift of the machine's
    /// speed reaches every side alike. Medians and ranges are printed.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Also decode the same GGUF with candle's quantized LLaMA twice a round: weights in the
    /// file's formats, and dequantised to f32. Built once from the registry by
    /// tools/candle-decode with `-C target-cpu=native`; needs --gguf.
    #[arg(long)]
    pub candle: bool,
    /// Also run llama.cpp on the same GGUF once a round (the `llama-cpp-python` package:
    /// `pip install llama-cpp-python` compiles llama.cpp from source), with llama-bench's
    /// measures: prompt processing of --seq-len tokens (pp) and generation (tg); needs --gguf.
    #[arg(long)]
    pub llama_cpp: bool,
    /// How ours holds the weights: f32, bf16, f16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f32")]
    pub dtype: pmc_model::WeightFormat,
    /// Benchmark this GGUF model instead of the random ~95 M config (the reference then
    /// loads it with transformers' GGUF loader); load time and peak RSS are reported too.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
}

/// What one side of the benchmark measured in one round.
#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub score_tps: Option<f64>,
    /// A prompt of `seq_len` tokens in one pass, only the last position's logits (llama-bench's pp).
    pub prefill_tps: Option<f64>,
    pub decode_tps: f64,
    pub peak_rss: f64,
    pub load_s: Option<f64>,
    pub load_rss: Option<f64>,
}

/// A side measured beside ours.
#[derive(Clone, Copy)]
enum Reference {
    PyTorch,
    Candle(crate::candle::Weights),
    LlamaCpp,
}

impl Reference {
    fn name(self) -> &'static str {
        match self {
            Reference::PyTorch => "PyTorch + transformers",
            Reference::Candle(crate::candle::Weights::Quantized) => {
                "candle (quantized GGUF, native)"
            }
            Reference::Candle(crate::candle::Weights::F32) => "candle (dequantised to f32, native)",
            Reference::LlamaCpp => "llama.cpp (llama-cpp-python, same GGUF)",
        }
    }
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

pub fn bench_model(args: BenchModelArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = pmc_model::default_device();
    let config_json = bench_config();
    if (args.candle || args.llama_cpp) && args.gguf.is_none() {
        anyhow::bail!("--candle and --llama-cpp run a GGUF file: pass --gguf");
    }
    if args.seq_len < 2 || !(1..=args.seq_len).contains(&args.prompt_len) {
        anyhow::bail!(
            "--seq-len must be at least 2 and --prompt-len between 1 and it (got {} and {}): \
             the prompt is cut from a scored row",
            args.seq_len,
            args.prompt_len
        );
    }
    let options = pmc_model::LoadOptions::from(args.dtype);
    reset_peak_rss();
    let started = Instant::now();
    let (config, model, load_s) = match &args.gguf {
        Some(path) => {
            let loaded = pmc_model::load_gguf(path, &options, &device)?;
            (
                loaded.config,
                loaded.model,
                Some(started.elapsed().as_secs_f64()),
            )
        }
        None => {
            let config = LlamaConfig::from_json(&config_json, Path::new("<bench config>"))?;
            let model = pmc_model::init_random(&config, options.dtype, 0, &device);
            let model = match options.quantize {
                Some(kind) => pmc_model::quantize_model(model, &config, kind)?,
                None => model,
            };
            (config, model, None)
        }
    };
    let load_rss = load_s.and(peak_rss().map(|b| b as f64));
    let weights_bytes = config.num_parameters() as f64 * 4.0;
    println!(
        "bench-model: {} — {} layers, hidden {}, vocab {}, {:.1} M parameters ({} as f32), ours held as {}, {threads} threads, {} rounds",
        args.gguf
            .as_ref()
            .map_or("random LLaMA".to_string(), |p| p.display().to_string()),
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        config.num_parameters() as f64 / 1e6,
        gib(weights_bytes),
        args.dtype,
        args.rounds,
    );

    let rows: Vec<Vec<u32>> = (0..args.rows)
        .map(|r| {
            (0..args.seq_len)
                .map(|i| ((r * 7919 + i * 104729) % config.vocab_size) as u32)
                .collect()
        })
        .collect();
    let prompt = &rows[0][..args.prompt_len];
    let candle = if args.candle {
        Some(crate::candle::build()?)
    } else {
        None
    };
    let warm_up = &rows[0][..args.seq_len.min(32)];
    pmc_model::mean_nll(&model, warm_up, warm_up.len(), &device)?;

    let mut references: Vec<(Reference, Vec<Figures>)> = Vec::new();
    if !args.no_reference {
        references.push((Reference::PyTorch, Vec::new()));
    }
    if candle.is_some() {
        references.push((
            Reference::Candle(crate::candle::Weights::Quantized),
            Vec::new(),
        ));
        references.push((Reference::Candle(crate::candle::Weights::F32), Vec::new()));
    }
    if args.llama_cpp {
        references.push((Reference::LlamaCpp, Vec::new()));
    }
    let mut ours_by_round = Vec::new();
    for round in 0..args.rounds.max(1) {
        eprintln!("round {}/{}: pmc-llama", round + 1, args.rounds);
        let mut ours = measure_ours(&model, &rows, prompt, &args, &device)?;
        (ours.load_s, ours.load_rss) = (load_s, load_rss);
        ours_by_round.push(ours);
        for (reference, figures) in &mut references {
            eprintln!("round {}/{}: {}", round + 1, args.rounds, reference.name());
            figures.push(match (*reference, &candle, &args.gguf) {
                (Reference::PyTorch, ..) => {
                    run_reference(&config_json, &args, threads).context(REFERENCE_MISSING)?
                }
                (Reference::Candle(weights), Some(binary), Some(gguf)) => {
                    crate::candle::decode(binary, gguf, weights, prompt, args.new_tokens)?
                }
                (Reference::LlamaCpp, _, Some(gguf)) => {
                    run_llama_cpp(gguf, &rows[0], prompt, &args, threads)?
                }
                _ => unreachable!("candle and llama.cpp columns exist only with --gguf"),
            });
        }
    }

    let mut header = format!(
        "| metric (median of {} rounds) | pmc-llama (burn flex, {}) |",
        args.rounds, args.dtype
    );
    for (reference, _) in &references {
        header += &format!(" {} | ratio (median, range) |", reference.name());
    }
    println!(
        "\n{header}\n|---|---|{}",
        "---|---|".repeat(references.len())
    );
    let reference_figures: Vec<Vec<Figures>> =
        references.into_iter().map(|(_, figures)| figures).collect();
    let metrics: [Metric<Figures>; 6] = [
        Metric::new("load", |f| f.load_s, |x| format!("{x:.2} s")),
        Metric::new("peak RSS after load", |f| f.load_rss, gib),
        Metric::new(
            "scoring tokens/s (every position's logits)",
            |f| f.score_tps,
            tok_per_s,
        ),
        Metric::new(
            "prompt processing (one pass, last logits: pp)",
            |f| f.prefill_tps,
            tok_per_s,
        ),
        Metric::new(
            "greedy decode (KV cache)",
            |f| Some(f.decode_tps),
            tok_per_s,
        ),
        Metric::new("peak RSS while scoring/decoding", |f| Some(f.peak_rss), gib),
    ];
    for metric in metrics {
        if let Some(row) = metric.row(&ours_by_round, &reference_figures) {
            println!("{row}");
        }
    }
    println!(
        "\nratio = ours / theirs per round (for load time and memory, below 1 is better); peak RSS while scoring / f32 weights: {:.2}",
        ours_by_round[0].peak_rss / weights_bytes
    );
    Ok(())
}

/// One round of ours: every row scored, then greedy decoding after `prompt`.
fn measure_ours(
    model: &pmc_model::Llama,
    rows: &[Vec<u32>],
    prompt: &[u32],
    args: &BenchModelArgs,
    device: &pmc_model::burn::prelude::Device,
) -> Result<Figures> {
    reset_peak_rss();
    let started = Instant::now();
    for row in rows {
        pmc_model::mean_nll(model, row, args.seq_len, device)?;
    }
    let score_tps = (rows.len() * args.seq_len) as f64 / started.elapsed().as_secs_f64();
    // One generation step after the whole row: the prompt's pass, last position's logits.
    let one_token = GenerationConfig {
        max_new_tokens: 1,
        ..Default::default()
    };
    let started = Instant::now();
    pmc_model::generate(model, &rows[0], &one_token, &[], device, |_| Ok(true))?;
    let prefill_tps = args.seq_len as f64 / started.elapsed().as_secs_f64();
    let generation = GenerationConfig {
        max_new_tokens: args.new_tokens,
        ..Default::default()
    };
    let started = Instant::now();
    let out = pmc_model::generate(model, prompt, &generation, &[], device, |_| Ok(true))?;
    let decode_tps = out.len() as f64 / started.elapsed().as_secs_f64();
    Ok(Figures {
        score_tps: Some(score_tps),
        prefill_tps: Some(prefill_tps),
        decode_tps,
        peak_rss: peak_rss().unwrap_or(0) as f64,
        load_s: None,
        load_rss: None,
    })
}

/// Runs `python/bench_model.py` once (it loads the model, scores, decodes).
fn run_reference(config: &Value, args: &BenchModelArgs, threads: usize) -> Result<Figures> {
    let payload = json!({
        "config": config, "threads": threads, "seq_len": args.seq_len, "rows": args.rows,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "gguf": args.gguf,
    });
    let lines = run_python_reference("bench_model.py", &[payload.to_string().as_ref()])?;
    let v = lines.last().context("bench_model.py printed nothing")?;
    let num = |k: &str| crate::reference::reported(v, k, "reference");
    Ok(Figures {
        score_tps: Some(num("score_tokens_per_s")?),
        prefill_tps: Some(num("prefill_tokens_per_s")?),
        decode_tps: num("decode_tokens_per_s")?,
        peak_rss: num("peak_rss_bytes")?,
        load_s: v["load_s"].as_f64(),
        load_rss: v["load_s"]
            .as_f64()
            .and(v["peak_rss_after_load_bytes"].as_f64()),
    })
}

/// Runs `python/bench_llama_cpp.py` once on `gguf`: llama.cpp's prompt processing of `row` and
/// greedy decoding after `prompt`, with our token ids.
fn run_llama_cpp(
    gguf: &Path,
    row: &[u32],
    prompt: &[u32],
    args: &BenchModelArgs,
    threads: usize,
) -> Result<Figures> {
    let payload = json!({
        "gguf": gguf, "threads": threads, "row": row, "prompt": prompt,
        "new_tokens": args.new_tokens,
    });
    let lines = run_python_reference("bench_llama_cpp.py", &[payload.to_string().as_ref()])
        .context(
            "llama.cpp failed (pip install llama-cpp-python compiles it from source, 15–40 min \
             on 2 cores; or leave out --llama-cpp)",
        )?;
    let v = lines.last().context("bench_llama_cpp.py printed nothing")?;
    let num = |k: &str| crate::reference::reported(v, k, "llama.cpp's run");
    Ok(Figures {
        score_tps: None,
        prefill_tps: Some(num("prefill_tokens_per_s")?),
        decode_tps: num("decode_tokens_per_s")?,
        peak_rss: num("peak_rss_bytes")?,
        load_s: Some(num("load_s")?),
        load_rss: Some(num("peak_rss_after_load_bytes")?),
    })
}
