//! `bench-train`: training tokens/s, achieved GFLOP/s and peak RSS of ours beside PyTorch
//! eager (+ PEFT for LoRA) on the same model shapes, alternating rounds in one invocation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pmc_model::burn::prelude::*;
use pmc_model::{Llama, LlamaConfig, WeightDType};
use pmc_train::TrainStep;
use serde_json::{Value, json};

use pmc_train::Method;

use crate::reference::{REFERENCE_MISSING, run_python_reference};
use crate::report::{Metric, gib};
use crate::rss::{peak_rss, reset_peak_rss};

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Train this model's shapes with its weights: `smollm2-135m`, an HF directory or a GGUF
    /// file (the reference builds the same config with random weights: speed does not depend
    /// on them). Without it, the 33.7 M-parameter toy config (vocabulary 8,192).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// full (every weight) or lora (adapters on the seven projections, against PEFT).
    #[arg(long, value_enum, default_value = "full")]
    pub method: Method,
    /// LoRA rank (alpha = 2 r).
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Timed steps per round (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Rounds; each times ours, then the reference, so drift of the machine's speed reaches
    /// both alike. The median ratio and its range are printed.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measure ours alone (otherwise a reference that cannot run is an error).
    #[arg(long)]
    pub no_reference: bool,
    /// What the projections multiply in: f32, or bf16 with f32 master weights (mixed
    /// precision; on the CPU faster than f32 only where it has AVX-512 BF16, as Zen 4 does).
    #[arg(long, default_value = "f32")]
    pub precision: pmc_model::Precision,
    /// Sequences per micro-batch of ours (the step accumulates batch / micro-batch of them).
    #[arg(long, default_value_t = 2)]
    pub micro_batch: usize,
    /// Micro-batches of ours computed at once (the same result for any number). Default:
    /// what `pretrain` and `finetune` pick on this machine (`pmc_train::lanes`).
    #[arg(long)]
    pub parallel_micro_batches: Option<usize>,
    /// Train ours with gradient checkpointing (memory-bound activations recomputed).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

/// What one side measured in one round.
struct TrainFigures {
    tokens_per_s: f64,
    gflop_per_s: f64,
    peak_rss: f64,
}

/// Floating-point operations of one training step per token: the forward's products (every
/// projection and the LM head, 2 per weight; attention's two products, 2 · 2 · seq · q width
/// per layer, causal scores counted whole as Megatron's formula does) times 3 for full
/// training (the backward takes both input and weight gradients) or 2 for LoRA (no weight
/// gradient of the frozen matrices; the adapters' products are under 1 %).
fn flop_per_token(config: &LlamaConfig, seq_len: usize, method: Method) -> f64 {
    let (h, i) = (config.hidden_size as f64, config.intermediate_size as f64);
    let q = (config.num_attention_heads * config.head_dim) as f64;
    let kv = (config.num_key_value_heads * config.head_dim) as f64;
    let layer = h * (2.0 * q + 2.0 * kv) + 3.0 * h * i;
    let products = config.num_hidden_layers as f64 * layer + config.vocab_size as f64 * h;
    let attention = config.num_hidden_layers as f64 * 4.0 * seq_len as f64 * q;
    let forward = 2.0 * products + attention;
    forward
        * match method {
            Method::Full => 3.0,
            Method::Lora => 2.0,
        }
}

/// The machine's f32 matrix-product peak as our backend reaches it: the best of 24
/// 1024 × 1024 × 1024 products (GFLOP/s; the best, since a shared VM's drift only slows
/// some of them).
fn matmul_peak(device: &Device) -> f64 {
    let n = 1024;
    let a = Tensor::<2>::random(
        [n, n],
        pmc_model::burn::tensor::Distribution::Default,
        device,
    );
    let b = Tensor::<2>::random(
        [n, n],
        pmc_model::burn::tensor::Distribution::Default,
        device,
    );
    let mut best = f64::INFINITY;
    for _ in 0..24 {
        let started = Instant::now();
        let c = a.clone().matmul(b.clone());
        let _ = c.into_data();
        best = best.min(started.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// The model to train, its config and a line saying what it is.
fn subject(args: &BenchTrainArgs, device: &Device) -> Result<(Llama, LlamaConfig, String)> {
    match &args.model {
        None => {
            let config = LlamaConfig::preset("small", 8192)?;
            let model = pmc_model::init_random(&config, WeightDType::F32, 0, device);
            Ok((model, config, "the toy config".into()))
        }
        Some(spec) => {
            let path = pmc_model::hub::resolve(spec)?;
            let loaded = pmc_model::load_model(&path, &Default::default(), device)?;
            Ok((loaded.model, loaded.config, path.display().to_string()))
        }
    }
}

pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = pmc_train::autodiff_device(args.gradient_checkpointing);
    let (model, config, what) = subject(&args, &device)?;
    let (model, lora) = match args.method {
        Method::Full => (model, Value::Null),
        Method::Lora => {
            let targets = pmc_peft::TargetModules::llama_projections();
            let adapter_config = pmc_peft::AdapterConfig::new(args.r, 2.0 * args.r as f64, targets);
            let mut model = model;
            let adapter = pmc_peft::Adapter::init(&mut model, adapter_config, 0, &device)
                .context("attaching the adapter")?;
            let model = pmc_peft::prepare_for_training(model, &adapter)?;
            (
                model,
                json!({"r": args.r, "alpha": 2 * args.r, "targets": pmc_peft::TargetModules::LLAMA_PROJECTIONS}),
            )
        }
    };
    let mut train_config = pmc_train::TrainConfig {
        micro_batch: args.micro_batch,
        global_batch: args.batch,
        precision: args.precision,
        ..pmc_train::run::default_train_config(args.seq_len)
    };
    train_config.accumulation()?;
    train_config.parallel_micro_batches = args
        .parallel_micro_batches
        .unwrap_or_else(|| pmc_train::lanes::choose(&config, &train_config).count);
    let parallel = train_config.parallel_micro_batches;
    let peak = matmul_peak(&device.clone().inner());
    let flop = flop_per_token(&config, args.seq_len, args.method);
    println!(
        "bench-train: {what}, {:.1} M parameters ({} layers, hidden {}, vocabulary {}), {:?}, batch {} × {} tokens (micro-batches of {}, {parallel} side by side), AdamW, {} products, {threads} threads",
        config.num_parameters() as f64 / 1e6,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        args.method,
        args.batch,
        args.seq_len,
        args.micro_batch,
        args.precision
    );
    println!(
        "{}f32 matrix-product peak (flex, 1024³): {peak:.1} GFLOP/s; {:.2} GFLOP a token",
        pmc_model::cpu::describe(),
        flop / 1e9
    );

    let mut trainer = pmc_train::Trainer::new(model, config.clone(), train_config, &device)?;
    let tokens: Vec<u32> = (0..args.batch * args.seq_len * (args.steps + 1))
        .map(|i| ((i * 2_654_435_761) % config.vocab_size) as u32)
        .collect();
    let data = pmc_train::TokenWindows::new(&tokens, args.seq_len, 0);
    trainer.step(&data)?; // warm-up

    let payload = json!({"config": config.to_json(), "threads": threads, "batch": args.batch,
                         "seq_len": args.seq_len, "steps": args.steps, "lora": lora});
    let figures = |tokens_per_s: f64, peak_rss: f64| TrainFigures {
        tokens_per_s,
        gflop_per_s: flop * tokens_per_s / 1e9,
        peak_rss,
    };
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        eprintln!("round {}/{}: pmc-llama", round + 1, args.rounds);
        reset_peak_rss();
        let started = Instant::now();
        for _ in 0..args.steps {
            trainer.step(&data)?;
        }
        let tps = (args.steps * args.batch * args.seq_len) as f64 / started.elapsed().as_secs_f64();
        ours.push(figures(tps, peak_rss().unwrap_or(0) as f64));
        if args.no_reference {
            continue;
        }
        eprintln!("round {}/{}: PyTorch", round + 1, args.rounds);
        let lines = run_python_reference("bench_train.py", &[payload.to_string().as_ref()])
            .context(REFERENCE_MISSING)?;
        let v = lines.last().context("bench_train.py printed nothing")?;
        let num = |k: &str| crate::reference::reported(v, k, "reference");
        reference.push(figures(num("tokens_per_s")?, num("peak_rss_bytes")?));
    }
    let metrics: [Metric<TrainFigures>; 3] = [
        Metric::new(
            "training tokens/s",
            |f| Some(f.tokens_per_s),
            |x| format!("{x:.1}"),
        ),
        Metric::new(
            "achieved GFLOP/s",
            |f| Some(f.gflop_per_s),
            |x| format!("{x:.1}"),
        ),
        Metric::new("peak RSS", |f| Some(f.peak_rss), gib),
    ];
    let reference_name = match args.method {
        Method::Full => "PyTorch eager",
        Method::Lora => "PyTorch eager + PEFT",
    };
    println!(
        "\n| metric (median of {} rounds) | pmc-llama (burn flex) | {reference_name} | ratio (median, range) |\n|---|---|---|---|",
        ours.len()
    );
    let references = if reference.is_empty() {
        vec![]
    } else {
        vec![reference]
    };
    for metric in &metrics[..2] {
        if let Some(row) = metric.row(&ours, &references) {
            println!("{row}");
        }
    }
    let share = |f: &[TrainFigures]| {
        crate::report::median(&f.iter().map(|f| f.gflop_per_s / peak).collect::<Vec<_>>())
    };
    if let Some(s) = share(&ours) {
        let theirs = references
            .first()
            .and_then(|r| share(r))
            .map_or("n/a".into(), |t| format!("{:.0} %", 100.0 * t));
        println!(
            "| share of flex's matrix-product peak | {:.0} % | {theirs} | |",
            100.0 * s
        );
    }
    if let Some(row) = metrics[2].row(&ours, &references) {
        println!("{row}");
    }
    Ok(())
}
