//! # pmc-train
//!
//! Continued pretraining of LLaMA models on burn's autodiff: AdamW, linear warmup then cosine
//! decay, gradient accumulation to a global batch counted in sequences, global-norm clipping
//! as `torch.nn.utils.clip_grad_norm_`, and atomic checkpoints (HF model, optimizer state,
//! data cursor, counters) from which a run resumes bit for bit.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod lanes;
pub mod mixture;
pub mod plot;
pub mod probe;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod sft;
pub mod source;
pub mod step;
pub mod trainer;

use std::path::PathBuf;

pub use checkpoint::{Checkpointer, DataGuard, checkpoint_dir, run_dir_of};
pub use config::{Method, autodiff_device};
pub use data::{Batch, CorpusShards, Cursor, Sampling, TokenWindows, TrainingData};
pub use mixture::{MixSource, MixSpec, Mixture};
pub use schedule::CosineSchedule;
pub use sft::{Example, SftData, Template};
pub use step::{StepStats, Strategy, TrainStep, dropout_seed, take_step};
pub use trainer::{LoraRun, TrainConfig, TrainState, Trainer, clip_global_norm};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is invalid.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite; the last checkpoint is intact.
    #[error("loss is {loss} at step {step}: stopping (the last checkpoint is intact)")]
    NonFinite {
        /// The step that failed.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A training-data file (text, JSONL documents, instruction examples) is malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line, where there is one.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint's trainer state is corrupt or does not match.
    #[error("checkpoint {0}: {1}")]
    Checkpoint(PathBuf, String),
    /// An optimizer-state file is damaged or of another model.
    #[error("optimizer state {0}: {1}")]
    OptimizerState(PathBuf, String),
    /// A fresh run was pointed at a directory that holds another run.
    #[error(
        "{}: already holds a run ({found}); continue it with `--resume {}`, or start a new one with another `--out` directory (nothing was changed)",
        dir.display(), dir.display()
    )]
    RunDirInUse {
        /// The run directory.
        dir: PathBuf,
        /// The run's files found there.
        found: String,
    },
    /// `--resume` was given a path without a checkpoint.
    #[error("{0}: no checkpoint to resume: {1}")]
    NoCheckpoint(PathBuf, &'static str),
    /// The run was resumed on other data than its checkpoint's cursor indexes into.
    #[error(
        "{checkpoint}: this checkpoint was trained on other data (fingerprint {saved}, now {now}); resume with the same data"
    )]
    OtherData {
        /// The checkpoint resumed from.
        checkpoint: PathBuf,
        /// The fingerprint it saved.
        saved: String,
        /// The fingerprint of the data given now.
        now: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] pmc_model::ModelError),
    /// The corpus (a manifest, a token shard) failed.
    #[error(transparent)]
    Corpus(#[from] pmc_corpus::CorpusError),
    /// A LoRA adapter failed.
    #[error(transparent)]
    Peft(#[from] pmc_peft::PeftError),
    /// The training curves could not be drawn.
    #[error(transparent)]
    Plot(#[from] pmc_plot::PlotError),
    /// A collective operation of a distributed trainer failed (a timeout, a dead worker).
    #[error("distributed training: {0}")]
    Distributed(#[source] Box<dyn std::error::Error + Send + Sync>),
}
