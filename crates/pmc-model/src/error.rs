//! The one error type of `pmc-model`: every variant names the file and, where there is one,
//! the key or tensor at fault.

use std::path::PathBuf;

/// Errors raised while reading configs, checkpoints and tokenizers, or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: serde_json::Error,
    },
    /// A config value is missing, of the wrong type or not supported.
    #[error("{path}: `{key}`: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint file is corrupt, truncated or lacks or misshapes a tensor.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint file as a whole cannot be read (not a safetensors file, bad header, ...).
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model has no chat template, or its template does not compile or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A request to the model is invalid (empty input, token id out of range, ...).
    #[error("invalid request: {0}")]
    Request(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
