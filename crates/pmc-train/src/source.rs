//! Where a pretraining run's text comes from: text files (tokenized by the run, with a
//! held-out split) or a corpus prepared by `pmc-corpus` (token shards with their tokenizer),
//! and the check that a base model's tokenizer is the one a prepared corpus was made with.

use std::path::{Path, PathBuf};

use pmc_model::Tokenizer;

use crate::TrainError;
use crate::run::read_documents;

/// The training text of a run.
pub enum Source {
    /// Text files, tokenized by the run.
    Text {
        /// Training documents.
        docs: Vec<String>,
        /// Held-out documents.
        valid_docs: Vec<String>,
        /// Where the held-out documents came from (empty: split off the corpus).
        valid_paths: Vec<PathBuf>,
    },
    /// A directory prepared by `prepare-corpus` (token shards and their tokenizer).
    Shards {
        /// The corpus directory.
        dir: PathBuf,
        /// Its manifest.
        manifest: Box<pmc_corpus::Manifest>,
    },
}

impl Source {
    /// Reads `corpus`: one prepared corpus directory, or text files (`.txt`, a document per
    /// line, or `.jsonl` with `text`). Held-out text comes from `valid`, else the last 5 %
    /// of the corpus's documents are held out.
    pub fn read(corpus: &[PathBuf], valid: &[PathBuf]) -> Result<Self, TrainError> {
        if let Some(dir) = corpus.iter().find(|p| p.join("manifest.json").is_file()) {
            if corpus.len() > 1 {
                return Err(TrainError::Config(format!(
                    "--corpus takes one prepared corpus directory ({}) or text files, not both",
                    dir.display()
                )));
            }
            let manifest = pmc_corpus::read_manifest(dir)?;
            return Ok(Source::Shards {
                dir: dir.to_path_buf(),
                manifest: Box::new(manifest),
            });
        }
        if let Some(dir) = corpus.iter().find(|p| p.is_dir()) {
            return Err(TrainError::Config(format!(
                "{}: a directory without manifest.json; prepare it with `cargo xtask prepare-corpus`",
                dir.display()
            )));
        }
        let mut docs = read_documents(corpus)?;
        let valid_paths = valid.to_vec();
        let valid_docs = if valid_paths.is_empty() {
            if docs.len() < 2 {
                return Err(TrainError::Config(format!(
                    "the corpus has {} document(s); at least 2 are needed to hold one out",
                    docs.len()
                )));
            }
            let n = (docs.len() / 20).max(1);
            docs.split_off(docs.len() - n)
        } else {
            read_documents(&valid_paths)?
        };
        Ok(Source::Text {
            docs,
            valid_docs,
            valid_paths,
        })
    }
}

/// How [`Source::prepare_papers`] turns papers into a corpus.
pub struct PaperPreparation<'a> {
    /// Tokens per packed sequence.
    pub seq_len: usize,
    /// The base model's tokenizer; `None` trains a byte-level BPE of `vocab_size` tokens on
    /// the cleaned papers (for a fresh model).
    pub tokenizer: Option<&'a Tokenizer>,
    pub vocab_size: usize,
    /// Share of the papers held out (by a hash of their ids) for held-out perplexity.
    pub valid_fraction: f64,
    /// Where prepared corpora are kept for reuse.
    pub cache: &'a Path,
}

impl Source {
    /// Papers (JATS, S2ORC, `.tar.gz` bundles) through `pmc-corpus` with the PMC-LLaMA
    /// cleaning preset — clean text, tokens, packed shards with a held-out split of whole
    /// papers — prepared once into `how.cache` and reused by later runs.
    pub fn prepare_papers(
        inputs: &[PathBuf],
        how: &PaperPreparation,
        progress: impl FnMut(pmc_corpus::Progress),
    ) -> Result<Self, TrainError> {
        let tokenizer = match how.tokenizer {
            None => pmc_corpus::TokenizerSource::Train {
                vocab_size: how.vocab_size,
            },
            Some(tokenizer) => {
                pmc_corpus::TokenizerSource::File(saved_tokenizer(tokenizer, how.cache)?)
            }
        };
        let preset = pmc_corpus::Preset::PmcLlama;
        let mut config = pmc_corpus::PrepareConfig::new(
            inputs.to_vec(),
            PathBuf::new(),
            tokenizer,
            preset.options(),
        );
        config.preset = preset.name().into();
        config.seq_len = how.seq_len;
        config.valid_fraction = how.valid_fraction;
        let (dir, manifest) = pmc_corpus::prepare_cached(&config, how.cache, progress)?;
        Ok(Source::Shards {
            dir,
            manifest: Box::new(manifest),
        })
    }
}

/// `tokenizer` as a `tokenizer.json` under `cache`, named by its content's hash so the
/// same tokenizer is the same file (and a prepared corpus's cache key stays the same).
fn saved_tokenizer(tokenizer: &Tokenizer, cache: &Path) -> Result<PathBuf, TrainError> {
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| TrainError::Model(pmc_model::ModelError::Tokenizer(e.to_string())))?;
    let dir = cache.join(format!(
        "tokenizer-{:016x}",
        pmc_model::fnv1a64(json.bytes())
    ));
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io(dir.clone(), e))?;
        pmc_model::checkpoint::write_atomic(&path, json.as_bytes())?;
    }
    Ok(path)
}

/// The tokenizer a prepared corpus was tokenized with, with its EOS.
pub fn corpus_tokenizer(
    dir: &Path,
    manifest: &pmc_corpus::Manifest,
) -> Result<Tokenizer, TrainError> {
    let path = dir.join(&manifest.tokenizer_file);
    let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TrainError::Data {
        path: path.clone(),
        line: None,
        message: e.to_string(),
    })?;
    Ok(Tokenizer::new(
        inner,
        None,
        vec![manifest.eos_id],
        false,
        false,
    ))
}

/// Refuses a base model whose tokenizer is not the one the corpus in `dir` was tokenized
/// with: the ids would mean other tokens.
pub fn check_same_tokenizer(
    base: &Tokenizer,
    corpus: &Tokenizer,
    dir: &Path,
) -> Result<(), TrainError> {
    let probe =
        "Metformin lowers hepatic glucose output; HbA1c fell by 1.2 % (p < 0.001) in 12 weeks.";
    let ids = |t: &Tokenizer| -> Result<Vec<u32>, TrainError> {
        Ok(t.inner()
            .encode(probe, false)
            .map_err(|e| TrainError::Model(pmc_model::ModelError::Tokenizer(e.to_string())))?
            .get_ids()
            .to_vec())
    };
    if base.inner().get_vocab_size(true) != corpus.inner().get_vocab_size(true)
        || ids(base)? != ids(corpus)?
    {
        return Err(TrainError::Config(format!(
            "{} was tokenized with another tokenizer than the base model's; prepare it with the model's tokenizer.json",
            dir.display()
        )));
    }
    Ok(())
}
