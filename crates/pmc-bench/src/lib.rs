//! # pmc-bench
//!
//! The medical QA harness: PubMedQA, MedQA (USMLE) and MedMCQA in their original formats,
//! scored by log-likelihood with lm-evaluation-harness's templates or by generation with
//! PMC-LLaMA's prompt, reported with confidence intervals and paired tests.

pub mod contamination;
pub mod data;
pub mod estimate;
pub mod metrics;
pub mod probe;
pub mod prompt;
pub mod regimes;
pub mod run;

use std::path::PathBuf;

pub use data::{Question, Split, Task};
pub use prompt::Template;
pub use run::{EvalConfig, Mode, Prediction};

/// Errors of the harness; data errors name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A record is malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line, for JSONL files.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] pmc_model::ModelError),
    /// A prepared corpus could not be read.
    #[error(transparent)]
    Corpus(#[from] pmc_corpus::CorpusError),
    /// A LoRA adapter failed to load.
    #[error(transparent)]
    Peft(#[from] pmc_peft::PeftError),
    /// Fine-tuning (a regime's training run) failed.
    #[error(transparent)]
    Train(#[from] pmc_train::TrainError),
    /// Ctrl-C stopped a cell's fine-tuning after writing its checkpoint.
    #[error(
        "interrupted: {0} holds the cell's checkpoint; run the same command again to continue it"
    )]
    Interrupted(PathBuf),
    /// A chart could not be drawn.
    #[error(transparent)]
    Plot(#[from] pmc_plot::PlotError),
}

/// SHA-256 of a file, hex: results record which data they were computed on.
pub fn sha256_file(path: &std::path::Path) -> Result<String, BenchError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| BenchError::Io(path.to_path_buf(), e))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}
