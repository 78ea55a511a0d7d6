//! The PMC corpus pipeline: papers in, clean text, tokens, packed parquet shards, a
//! deterministic resumable stream.
//!
//! - [`jats`] and [`s2orc`] read papers (JATS XML as PMC ships it; S2ORC doc2json, 2023 JSONL
//!   and plain `{"id", "text"}` records) into a structured [`Paper`];
//! - [`clean`] renders a paper to the text a model sees, with each cleaning step an option and
//!   the choices of PMC-LLaMA and Meditron as [`Preset`]s; [`dedup`] removes exact and near
//!   duplicates;
//! - [`pipeline::prepare`] runs it all in parallel over files, directories and `.tar.gz`
//!   bundles and writes zstd parquet shards with a [`Manifest`] that accounts for every record;
//! - [`reader::TokenCorpus`] streams the token shards to a trainer with a seeded shuffle per
//!   epoch, rank/world partitioning and a [`reader::Cursor`] that resumes exactly.
//!
//! ```no_run
//! use pmc_corpus::{PrepareConfig, Preset, TokenizerSource, prepare};
//! let config = PrepareConfig::new(
//!     vec!["../shared/data/pmc-jats".into()],
//!     "corpus".into(),
//!     TokenizerSource::File("tokenizer.json".into()),
//!     Preset::PmcLlama.options(),
//! );
//! let manifest = prepare(&config, |_| {})?;
//! println!("{} sequences of {} tokens", manifest.sequences, manifest.seq_len);
//! # Ok::<(), pmc_corpus::CorpusError>(())
//! ```

use std::path::PathBuf;

pub mod clean;
pub mod dedup;
pub mod input;
pub mod jats;
pub mod paper;
pub mod pipeline;
pub mod reader;
pub mod s2orc;
pub mod shards;
pub mod tokens;

pub use clean::{Citations, CleanOptions, DropReason, Preset, clean_paper};
pub use paper::{Block, License, Metadata, Paper, Paragraph, Span};
pub use pipeline::{
    Manifest, PrepareConfig, Progress, Stage, TokenizerSource, are_papers, prepare, prepare_cached,
    read_manifest,
};
pub use reader::{Cursor, SequenceStream, Split, StreamOptions, TokenCorpus};
pub use shards::Sequence;

/// Errors of the corpus pipeline. Per-document problems are not errors: those documents are
/// skipped and counted by reason in the manifest.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("broken shard {path}: {message}")]
    Shard { path: PathBuf, message: String },
    #[error("bad manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Config(String),
}
