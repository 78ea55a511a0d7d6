//! `cargo xtask`: the project's commands. Each parses its arguments and calls the crates.

mod commands;
mod corpus;
mod eval;
mod finetune;
mod pretrain;
mod reproduce;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "pmc-llama: continued pretraining, LoRA and medical QA evaluation of LLaMA models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continued pretraining (the main job): with no arguments, a tiny model on the bundled
    /// biomedical sample, showing held-out perplexity before and after.
    #[command(args_override_self = true)]
    Pretrain(pretrain::PretrainArgs),
    /// Papers (JATS, S2ORC, JSONL; files, directories, .tar.gz) → clean text and packed
    /// token shards in parquet, with a manifest accounting for every record.
    PrepareCorpus(corpus::PrepareCorpusArgs),
    /// prepare-corpus MB/s against a Python reference pipeline, tokenization against raw
    /// encode_batch, and peak RSS with the input replicated.
    BenchCorpus(pmc_perf::corpus::BenchCorpusArgs),
    /// Full or LoRA fine-tuning on instruction data (a JSONL file or a task's training pool).
    Finetune(finetune::FinetuneArgs),
    /// LoRA against full fine-tuning: trainable parameters, tokens/s and peak RSS.
    BenchFinetune(pmc_perf::finetune::BenchFinetuneArgs),
    /// Share of a benchmark's items sharing a word 13-gram with a prepared corpus.
    Contamination(eval::ContaminationArgs),
    /// The paper's table: base vs. continued model × zero-shot / LoRA / full × the three tasks.
    Reproduce(reproduce::ReproduceArgs),
    /// Fold a LoRA adapter (HF PEFT format) into its base model and save an HF checkpoint.
    Merge(commands::MergeArgs),
    /// Log-likelihood of continuations: one JSON object per input line, in order.
    Score(commands::ScoreArgs),
    /// Generate text after a prompt (greedy by default), streamed to stdout.
    Generate(commands::GenerateArgs),
    /// An OpenAI-compatible HTTP server (chat, completions with logprobs, streaming).
    Serve(commands::ServeArgs),
    /// Evaluate a model on PubMedQA, MedQA or MedMCQA.
    Eval(eval::EvalArgs),
    /// Paired comparison of two eval runs on the same questions (bootstrap and McNemar).
    Compare(eval::CompareArgs),
    /// Loglik-mode questions/s and agreement against transformers scoring the lm-eval way.
    BenchEval(pmc_perf::eval::BenchEvalArgs),
    /// Training tokens/s, GFLOP/s and peak RSS against PyTorch eager (+ PEFT): the 33.7 M toy
    /// config, or a real model's shapes with --model.
    BenchTrain(pmc_perf::train::BenchTrainArgs),
    /// Sharded training: state bytes per rank at levels 0-3 against the ZeRO formulas,
    /// communication per step, and two MPI workers against one process.
    BenchFsdp(pmc_perf::fsdp::BenchFsdpArgs),
    /// Write a model (a LoRA adapter merged in) as GGUF: f32, f16, q8_0, q4_0 or q4_1.
    Export(commands::ExportArgs),
    /// Convert a GGUF file to an HF model directory (config, safetensors, tokenizer).
    Convert(commands::ConvertArgs),
    /// The server under 1, 4, 16 concurrent streaming clients: tokens/s and time to first token.
    BenchServe(pmc_perf::serve::BenchServeArgs),
    /// Scoring and decoding throughput against PyTorch + transformers on the same config.
    BenchModel(pmc_perf::model::BenchModelArgs),
    /// The CPU, the instruction-set cap (PMC_CPU_MAX) and the kernel each dispatcher picks.
    Cpu,
}

/// Ctrl-C finishes the current training step, writes a checkpoint and stops; a second one
/// quits at once. Installed once per process (`reproduce` trains several times).
pub fn install_stop_handler() -> anyhow::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if pmc_train::run::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!(
                    "\nCtrl-C: saving a checkpoint after this step (press again to quit now)"
                );
            })
            .map_err(|e| format!("installing the Ctrl-C handler: {e}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// How a training command computes (pretrain and finetune share these options).
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (burn's balanced gradient checkpointing): less memory, more compute.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Micro-batches computed at once, one lane of rayon's pool each: faster on a
    /// multi-core CPU, with that many micro-batches' activations in memory; the result is
    /// bit-identical. Default: one per core, within the step's micro-batches and half the
    /// available memory (the run says what it chose).
    #[arg(long)]
    pub parallel_micro_batches: Option<usize>,
    /// What the projections multiply in: f32, or bf16 with f32 master weights (mixed
    /// precision; on the CPU faster than f32 only where it has AVX-512 BF16, as Zen 4 does).
    #[arg(long, default_value = "f32")]
    pub precision: pmc_model::Precision,
}

impl Default for ComputeArgs {
    /// The options' defaults.
    fn default() -> Self {
        Self {
            gradient_checkpointing: false,
            parallel_micro_batches: None,
            precision: pmc_model::Precision::F32,
        }
    }
}

fn main() {
    pmc_model::allocator::reuse_large_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match pretrain::expand_config(std::env::args().collect()) {
        Ok(args) => Cli::parse_from(args),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Pretrain(args) => pretrain::pretrain(args),
        Command::PrepareCorpus(args) => corpus::prepare_corpus(args),
        Command::BenchCorpus(args) => pmc_perf::corpus::bench_corpus(args),
        Command::Finetune(args) => finetune::finetune(args),
        Command::BenchFinetune(args) => pmc_perf::finetune::bench_finetune(args),
        Command::Contamination(args) => eval::contamination(args),
        Command::Reproduce(args) => reproduce::reproduce(args),
        Command::Merge(args) => commands::merge(args),
        Command::Score(args) => commands::score(args),
        Command::Generate(args) => commands::generate(args),
        Command::Serve(args) => commands::serve(args),
        Command::Convert(args) => commands::convert(args),
        Command::Export(args) => commands::export(args),
        Command::Eval(args) => eval::eval(args),
        Command::Compare(args) => eval::compare(args),
        Command::BenchEval(args) => pmc_perf::eval::bench_eval(args),
        Command::BenchModel(args) => pmc_perf::model::bench_model(args),
        Command::BenchServe(args) => pmc_perf::serve::bench_serve(args),
        Command::BenchTrain(args) => pmc_perf::train::bench_train(args),
        Command::Cpu => {
            print!("{}", pmc_model::cpu::describe());
            Ok(())
        }
        Command::BenchFsdp(args) => pmc_perf::fsdp::bench_fsdp(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
