//! # pmc-train
//!
//! Continued pretraining of LLaMA models on burn's autodiff: AdamW, linear warmup then cosine
//! decay, gradient accumulation to a global batch counted in sequences, global-norm clipping
//! as `torch.nn.utils.clip_grad_norm_`, and atomic checkpoints (HF model, optimizer state,
//! data cursor, counters) from which a run resumes bit for bit.

pub mod data;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod sft;
pub mod trainer;

use std::path::PathBuf;

pub use data::{Batch, CorpusShards, Cursor, Sampling, TokenWindows, TrainingData};
pub use schedule::CosineSchedule;
pub use sft::{Example, SftData, Template};
pub use trainer::{
    LoraRun, StepStats, TrainConfig, TrainState, Trainer, checkpoint_dir, clip_global_norm,
    run_dir_of,
};

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
    Io(PathBuf, std::io::Error),
    /// A checkpoint is corrupt or does not match.
    #[error("checkpoint {0}: {1}")]
    Checkpoint(PathBuf, String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] pmc_model::ModelError),
}
