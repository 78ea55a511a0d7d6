//! `bench-fsdp`: what sharding costs and saves — per-rank state bytes at levels 0–3 against
//! the ZeRO formulas, elements communicated per step, per-process peak RSS, and tokens/s of
//! two MPI workers (one core each) against the single-process trainer on both cores.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use pmc_fsdp::measure::{StepMeasure, expected_bytes_per_param, expected_traffic_per_param};
use pmc_fsdp::{Engine, FsdpTrainer, Launched, ShardLevel};
use pmc_model::{LlamaConfig, WeightDType};
use pmc_train::TrainStep;
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchFsdpArgs {
    /// Model preset (`small`: the 33.7 M-parameter config of bench-train).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Sequences per step (one per micro-batch; a multiple of every world size).
    #[arg(long, default_value_t = 4)]
    pub global_batch: usize,
    /// Timed steps per measurement (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Alternating rounds of the speed comparison.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Internal: run one measurement and print it as JSON (`single`, or `sharded` under MPI).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    /// Internal: the level of a `--worker sharded` run.
    #[arg(long, hide = true, default_value_t = 3)]
    pub shard_level: u8,
}

fn setup(
    args: &BenchFsdpArgs,
) -> Result<(LlamaConfig, pmc_train::TrainConfig, pmc_train::TokenWindows)> {
    let config = LlamaConfig::preset(&args.preset, 8192)?;
    let train = pmc_train::TrainConfig {
        micro_batch: 1,
        global_batch: args.global_batch,
        ..pmc_train::run::default_train_config(args.seq_len)
    };
    let tokens: Vec<u32> = (0..args.global_batch * args.seq_len * (args.steps + 2))
        .map(|i| ((i * 2_654_435_761) % config.vocab_size) as u32)
        .collect();
    Ok((
        config,
        train,
        pmc_train::TokenWindows::new(&tokens, args.seq_len, 0),
    ))
}

/// Every rank's measurement of one sharded configuration, on `engine`.
fn sharded(
    args: &BenchFsdpArgs,
    engine: Engine,
    world: Option<usize>,
    level: ShardLevel,
) -> Result<Launched<StepMeasure>> {
    let (config, train, data) = setup(args)?;
    let device = pmc_train::autodiff_device(false);
    Ok(pmc_fsdp::launch(
        engine,
        world,
        pmc_fsdp::DEFAULT_TIMEOUT,
        |comm| {
            // Each rank makes only what it holds, as a sharded pretraining run does.
            let mut t =
                FsdpTrainer::from_seed(config.clone(), 0, train.clone(), level, comm, &device)?;
            pmc_fsdp::measure::measure(&mut t, &data, args.steps)
        },
    )?)
}

fn worker(args: &BenchFsdpArgs, kind: &str) -> Result<()> {
    let rss = |m: &StepMeasure, rank: usize| {
        json!({"rank": rank, "tokens_per_s": m.tokens_per_s,
               "peak_rss_mib": crate::rss::peak_rss().unwrap_or(0) as f64 / (1 << 20) as f64,
               "state_bytes": m.state.total()})
    };
    match kind {
        "single" => {
            let (config, mut train, data) = setup(args)?;
            train.parallel_micro_batches = 2;
            let device = pmc_train::autodiff_device(false);
            let model = pmc_model::init_random(&config, WeightDType::F32, 0, &device);
            let mut t = pmc_train::Trainer::new(model, config, train, &device)?;
            t.step(&data)?;
            let started = std::time::Instant::now();
            for _ in 0..args.steps {
                t.step(&data)?;
            }
            let tps = (args.steps * args.global_batch * args.seq_len) as f64
                / started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"rank": 0, "tokens_per_s": tps,
                       "peak_rss_mib": crate::rss::peak_rss().unwrap_or(0) as f64 / (1 << 20) as f64})
            );
        }
        "sharded" => {
            let level = ShardLevel::from_number(args.shard_level).context("--shard-level 0-3")?;
            if let Launched::Ran { rank, result } = sharded(args, Engine::Mpi, None, level)? {
                println!("{}", rss(&result, rank));
            }
        }
        other => bail!("unknown worker kind {other:?}"),
    }
    Ok(())
}

/// The JSON lines a worker child printed.
fn child(mut cmd: Command) -> Result<Vec<serde_json::Value>> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("worker failed")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench_fsdp(args: BenchFsdpArgs) -> Result<()> {
    if let Some(kind) = &args.worker {
        return worker(&args, kind);
    }
    let levels = [0u8, 1, 2, 3].map(|l| ShardLevel::from_number(l).expect("0-3"));
    let (config, _, _) = setup(&args)?;
    let psi = config.num_parameters() as f64;
    println!(
        "bench-fsdp: `{}` preset, {:.1} M parameters, {} sequences × {} tokens per step, f32 + AdamW",
        args.preset,
        psi / 1e6,
        args.global_batch,
        args.seq_len
    );
    println!("\n## State per rank (threads engine) and communication per step\n");
    println!(
        "| level | N | params | grads | AdamW | gathered unit | total | B/param | formula | ratio | elements/step | /Ψ | micro-batches/rank | expected /Ψ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for level in levels {
        for world in [1usize, 2, 4] {
            let Launched::Ran { result: m, .. } =
                sharded(&args, Engine::Threads, Some(world), level)?
            else {
                unreachable!("threads run here")
            };
            let persistent = m.state.total() - m.state.gathered;
            let per_param = persistent as f64 / psi;
            let expected = expected_bytes_per_param(level, world);
            let local = args.global_batch / world;
            let traffic = m.traffic_per_step.total() as f64;
            // Level 3 communicates per micro-batch; levels 1–2 per step (plus level 2's
            // per-micro-batch reduce-scatters), level 0 per step.
            let expected_traffic = match level {
                ShardLevel::Parameters => 3.0 * local as f64,
                ShardLevel::Gradients => local as f64 + 1.0,
                _ => expected_traffic_per_param(level),
            };
            println!(
                "| {} | {world} | {} | {} | {} | {} | {} | {per_param:.2} | {expected:.2} | {:.3} | {:.3e} | {:.2} | {local} | {expected_traffic:.2} |",
                level.number(),
                mib(m.state.params),
                mib(m.state.grads),
                mib(m.state.optimizer),
                mib(m.state.gathered),
                mib(m.state.total()),
                per_param / expected,
                traffic,
                traffic / psi,
            );
            if level == ShardLevel::Parameters {
                // The gathered unit's weights, and with them its unsharded gradient, which
                // exists from its backward until its reduce-scatter.
                let bound = 16.0 / world as f64;
                let weights = (persistent + m.state.gathered / 2) as f64 / psi;
                let both = m.state.total() as f64 / psi;
                println!(
                    "|   |   | with the largest unit gathered: {weights:.2} B/param = {:.2} × 16/N (goal ≤ 1.2 ×); with its unsharded gradient too: {both:.2} = {:.2} × | | | | | | | | | | | |",
                    weights / bound,
                    both / bound
                );
            }
        }
    }

    println!(
        "\n## Two MPI workers (one core each) against the single-process trainer (both cores)\n"
    );
    if !cfg!(feature = "mpi") || Command::new("mpiexec").arg("--version").output().is_err() {
        println!(
            "skipped: build with `--features mpi` and install MPI (Debian's mpich) to measure processes"
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let common = |cmd: &mut Command| {
        cmd.args(["bench-fsdp", "--preset", &args.preset])
            .args(["--seq-len", &args.seq_len.to_string()])
            .args(["--global-batch", &args.global_batch.to_string()])
            .args(["--steps", &args.steps.to_string()]);
    };
    let mut single = Vec::new();
    let mut single_rss = Vec::new();
    let mut per_level: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); 4];
    for round in 0..args.rounds {
        let mut cmd = Command::new(&exe);
        common(&mut cmd);
        let lines = child({
            cmd.args(["--worker", "single"]);
            cmd
        })?;
        single.push(lines[0]["tokens_per_s"].as_f64().unwrap_or(f64::NAN));
        single_rss.push(lines[0]["peak_rss_mib"].as_f64().unwrap_or(f64::NAN));
        for level in levels {
            let mut cmd = Command::new("mpiexec");
            cmd.args(["-n", "2", "-env", "RAYON_NUM_THREADS", "1"])
                .arg(&exe);
            common(&mut cmd);
            cmd.args([
                "--worker",
                "sharded",
                "--shard-level",
                &level.number().to_string(),
            ]);
            let lines = child(cmd)?;
            let (tps, rss) = &mut per_level[level.number() as usize];
            tps.push(
                lines
                    .iter()
                    .filter_map(|l| l["tokens_per_s"].as_f64())
                    .fold(f64::NAN, f64::min),
            );
            rss.push(
                lines
                    .iter()
                    .filter_map(|l| l["peak_rss_mib"].as_f64())
                    .fold(0.0, f64::max),
            );
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    let base = median(single.clone());
    println!(
        "| run | tokens/s (median of {}) | vs single process | goal | peak RSS per process |",
        args.rounds
    );
    println!("|---|---|---|---|---|");
    println!(
        "| single process, 2 cores, 2 micro-batches side by side | {base:.1} | 1.00 × | | {:.0} MiB |",
        median(single_rss)
    );
    for level in levels {
        let (tps, rss) = &per_level[level.number() as usize];
        let t = median(tps.clone());
        let goal = if level == ShardLevel::Parameters {
            "≥ 0.7 ×"
        } else {
            "≥ 0.9 ×"
        };
        println!(
            "| 2 MPI workers, level {} | {t:.1} | {:.2} × | {goal} | {:.0} MiB |",
            level.number(),
            t / base,
            median(rss.clone())
        );
    }
    Ok(())
}
