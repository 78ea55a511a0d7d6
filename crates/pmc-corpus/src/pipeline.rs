//! `prepare`: input papers → cleaned text shards → token shards, with a manifest that
//! accounts for every input record.
//!
//! Records are read by a background thread, parsed, cleaned, fingerprinted and (with a given
//! tokenizer) tokenized in parallel batches, then decided and written one by one in input
//! order, so the output is the same for any number of threads.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::CorpusError;
use crate::clean::{CleanOptions, DropReason, clean_paper};
use crate::dedup::{Deduplicator, Fingerprint};
use crate::input::{Format, InputEvent, Record, list_files, spawn_reader};
use crate::jats::{JatsError, parse_jats};
use crate::paper::Paper;
use crate::s2orc::parse_json_record;
use crate::shards::{
    DocumentIndexWriter, DocumentSpan, ShardEntry, TextRow, TextShardWriter, TokenShardWriter,
    read_text_shard,
};
use crate::tokens::{Packer, encode, eos_id, load_tokenizer, train_byte_level_bpe};

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerSource {
    /// A `tokenizer.json` file.
    File(PathBuf),
    /// Train a byte-level BPE of this vocabulary size on the cleaned corpus.
    Train { vocab_size: usize },
}

/// Everything `prepare` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareConfig {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub tokenizer: TokenizerSource,
    /// The end-of-text token; `None` picks the tokenizer's own.
    pub eos_token: Option<String>,
    pub seq_len: usize,
    /// The preset the options came from (recorded in the manifest).
    pub preset: String,
    pub clean: CleanOptions,
    /// Sequences per token shard.
    pub shard_sequences: usize,
    /// Documents per text shard.
    pub shard_documents: usize,
    /// Records handed to the thread pool at once.
    pub batch_records: usize,
    /// Share of documents held out as the validation split (`valid-tokens-*.parquet`).
    pub valid_fraction: f64,
}

impl PrepareConfig {
    /// Defaults for everything but inputs, output and tokenizer.
    pub fn new(
        inputs: Vec<PathBuf>,
        out: PathBuf,
        tokenizer: TokenizerSource,
        clean: CleanOptions,
    ) -> Self {
        PrepareConfig {
            inputs,
            out,
            tokenizer,
            eos_token: None,
            seq_len: 512,
            preset: "custom".into(),
            clean,
            shard_sequences: 16_384,
            shard_documents: 10_000,
            batch_records: 64,
            valid_fraction: 0.0,
        }
    }
}

/// Documents in and out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentCounts {
    /// Records read (papers, JSON lines, archive members), unsupported files not included.
    pub input: u64,
    pub kept: u64,
    /// Dropped records by reason (`malformed-xml`, `too-short`, `near-duplicate`, ...).
    pub dropped: BTreeMap<String, u64>,
    /// Files no reader accepts (images and PDFs inside PMC packages, stray files).
    pub unsupported_files: u64,
}

/// `manifest.json`: what was made from what, written last (its presence marks a finished run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub config: PrepareConfig,
    pub tokenizer_file: String,
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    pub eos_token: String,
    pub eos_id: u32,
    pub input_files: u64,
    pub input_bytes: u64,
    pub documents: DocumentCounts,
    /// Tokens of kept documents, one EOS per document included.
    pub tokens: u64,
    /// Tokens left over at the end that did not fill a sequence (not written).
    pub tail_tokens: u64,
    pub seq_len: usize,
    /// Training sequences (in `token_shards`).
    pub sequences: u64,
    /// Held-out sequences (in `valid_shards`).
    pub valid_sequences: u64,
    pub token_shards: Vec<ShardEntry>,
    pub valid_shards: Vec<ShardEntry>,
    pub text_shards: Vec<ShardEntry>,
    /// Each training document's span in the packed stream (`tokens-documents.parquet`).
    #[serde(default)]
    pub token_documents: Option<String>,
    /// The same for the validation split.
    #[serde(default)]
    pub valid_documents: Option<String>,
    pub elapsed_s: f64,
}

/// Progress reported while preparing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub stage: Stage,
    pub input_bytes: u64,
    pub documents: u64,
    pub kept: u64,
    pub sequences: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    #[default]
    Cleaning,
    TrainingTokenizer,
    Tokenizing,
}

/// What the parallel stage produces for one record.
enum Processed {
    Kept {
        paper: Box<Paper>,
        text: String,
        fingerprint: Fingerprint,
        ids: Option<Result<Vec<u32>, CorpusError>>,
    },
    Dropped {
        source: String,
        id: Option<String>,
        reason: DropReason,
        detail: Option<String>,
    },
}

/// Parse a record, or say why not (the reason and a message for the warning).
fn parse_record(record: &Record) -> Result<Paper, (DropReason, String)> {
    match record.format {
        Format::Jats => parse_jats(&record.bytes, &record.source).map_err(|e| {
            let reason = match e {
                JatsError::NotUtf8(_) => DropReason::NotUtf8,
                JatsError::Malformed { .. } => DropReason::MalformedXml,
                JatsError::Truncated(_) => DropReason::Truncated,
                JatsError::NotJats => DropReason::Unreadable(e.to_string()),
            };
            (reason, e.to_string())
        }),
        Format::Json | Format::JsonLine => parse_json_record(&record.bytes, &record.source)
            .map_err(|e| (DropReason::Unreadable(e.to_string()), e.to_string())),
    }
}

fn process(record: Record, options: &CleanOptions, tokenizer: Option<&Tokenizer>) -> Processed {
    let paper = match parse_record(&record) {
        Ok(paper) => paper,
        Err((reason, message)) => {
            tracing::warn!("{}: skipped ({}): {message}", record.source, reason.name());
            return Processed::Dropped {
                source: record.source,
                id: None,
                reason,
                detail: Some(message),
            };
        }
    };
    match clean_paper(&paper, options) {
        Ok(text) => {
            let fingerprint = Fingerprint::of(&text, options.near_dup_threshold.is_some());
            let ids = tokenizer.map(|t| encode(t, &text));
            Processed::Kept {
                paper: Box::new(paper),
                text,
                fingerprint,
                ids,
            }
        }
        Err(reason) => {
            if reason == DropReason::Empty {
                tracing::warn!("{}: skipped (empty): no text after cleaning", paper.source);
            }
            Processed::Dropped {
                source: paper.source,
                id: Some(paper.id),
                reason,
                detail: None,
            }
        }
    }
}

fn sha256_file(path: &Path) -> Result<String, CorpusError> {
    let bytes = std::fs::read(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CorpusError> {
    let temp = path.with_extension("tmp");
    let io = |e| CorpusError::Io(path.to_path_buf(), e);
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

/// Token packers and shard writers for the training split and, when asked, a held-out
/// validation split (documents chosen by a hash of their id, so the choice is stable).
struct Splits {
    train: Split,
    valid: Option<(Split, f64)>,
}

/// One split's packer, token shards and document index.
struct Split {
    packer: Packer,
    writer: TokenShardWriter,
    documents: DocumentIndexWriter,
}

impl Split {
    fn new(config: &PrepareConfig, prefix: &'static str, eos: u32) -> Self {
        Split {
            packer: Packer::new(config.seq_len, eos),
            writer: TokenShardWriter::new(&config.out, prefix, config.shard_sequences),
            documents: DocumentIndexWriter::new(&config.out, prefix),
        }
    }
}

impl Splits {
    fn new(config: &PrepareConfig, eos: u32) -> Self {
        let valid = (config.valid_fraction > 0.0).then(|| {
            (
                Split::new(config, "valid-tokens", eos),
                config.valid_fraction,
            )
        });
        Splits {
            train: Split::new(config, "tokens", eos),
            valid,
        }
    }

    fn push(&mut self, doc_id: &str, ids: &[u32], sequences: &mut u64) -> Result<(), CorpusError> {
        let split = match &mut self.valid {
            Some((split, fraction)) if is_validation(doc_id, *fraction) => split,
            _ => &mut self.train,
        };
        let span = DocumentSpan {
            start: split.packer.tokens,
            tokens: ids.len() as u32 + 1,
        };
        split.documents.push(doc_id, span)?;
        let writer = &mut split.writer;
        split.packer.push(doc_id, ids, |s| {
            *sequences += 1;
            writer.push(s)
        })
    }
}

/// Whether a document belongs to the validation split: the first 8 bytes of SHA-256 of its
/// id, as a fraction of 2^64, below `fraction`.
pub fn is_validation(doc_id: &str, fraction: f64) -> bool {
    let digest = Sha256::digest(doc_id.as_bytes());
    let x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (x as f64) < fraction * (u64::MAX as f64)
}

/// Run the whole pipeline. `progress` is called after every batch.
pub fn prepare(
    config: &PrepareConfig,
    mut progress: impl FnMut(Progress),
) -> Result<Manifest, CorpusError> {
    let started = Instant::now();
    let out = &config.out;
    if out.join("manifest.json").exists() {
        return Err(CorpusError::Config(format!(
            "{} already holds a prepared corpus (manifest.json); choose another --out or remove it",
            out.display()
        )));
    }
    if config.seq_len < 2 {
        return Err(CorpusError::Config("--seq-len must be at least 2".into()));
    }
    if !(0.0..1.0).contains(&config.valid_fraction) {
        return Err(CorpusError::Config(
            "--valid-fraction must be in [0, 1)".into(),
        ));
    }
    let given = match &config.tokenizer {
        TokenizerSource::File(path) => Some(load_tokenizer(path)?),
        TokenizerSource::Train { .. } => None,
    };
    // A tokenizer without EOS fails here, before the long part of the run.
    let given_eos = given
        .as_ref()
        .map(|t| eos_id(t, config.eos_token.as_deref()))
        .transpose()?;
    let files = list_files(&config.inputs).map_err(|e| CorpusError::Config(e.to_string()))?;
    if files.is_empty() {
        return Err(CorpusError::Config(format!(
            "no input files under {:?}",
            config.inputs
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| CorpusError::Io(out.clone(), e))?;
    let input_files = files.len() as u64;
    let input_bytes = crate::input::total_bytes(&files);
    let events = spawn_reader(files, config.batch_records);

    let mut dropped = DropLog::create(&out.join("dropped.jsonl"))?;
    let mut counts = DocumentCounts::default();
    let mut dedup = Deduplicator::new(config.clean.exact_dedup, config.clean.near_dup_threshold);
    let mut texts = TextShardWriter::new(out, config.shard_documents);
    let mut splits = given_eos.as_ref().map(|(_, eos)| Splits::new(config, *eos));
    let mut state = Progress::default();

    let mut finished = false;
    while !finished {
        // A batch of records; failures reported by the reader are handled with it.
        let mut batch = Vec::with_capacity(config.batch_records);
        let mut failures = Vec::new();
        while batch.len() < config.batch_records {
            match events.recv() {
                Ok(InputEvent::Record(r)) => batch.push(r),
                Ok(InputEvent::Failed { source, reason }) => failures.push((source, reason)),
                Ok(InputEvent::Progress { bytes }) => state.input_bytes = bytes,
                Err(_) => {
                    finished = true;
                    break;
                }
            }
        }
        let processed: Vec<Processed> = batch
            .into_par_iter()
            .map(|record| process(record, &config.clean, given.as_ref()))
            .collect();
        for (source, reason) in failures {
            if reason == DropReason::UnsupportedFile {
                counts.unsupported_files += 1;
            } else {
                counts.input += 1;
                counts.drop(&reason);
                tracing::warn!("{source}: skipped ({})", reason.name());
            }
            dropped.write(&source, None, &reason, None)?;
        }
        let mut rows = Vec::new();
        for item in processed {
            counts.input += 1;
            match item {
                Processed::Dropped {
                    source,
                    id,
                    reason,
                    detail,
                } => {
                    counts.drop(&reason);
                    dropped.write(&source, id.as_deref(), &reason, detail.as_deref())?;
                }
                Processed::Kept {
                    paper,
                    text,
                    fingerprint,
                    ids,
                } => {
                    if let Err(reason) = dedup.check(paper.meta.pmcid.as_deref(), &fingerprint) {
                        counts.drop(&reason);
                        dropped.write(&paper.source, Some(&paper.id), &reason, None)?;
                        continue;
                    }
                    counts.kept += 1;
                    if let (Some(splits), Some(ids)) = (&mut splits, ids) {
                        splits.push(&paper.id, &ids?, &mut state.sequences)?;
                    }
                    rows.push(TextRow {
                        id: paper.id,
                        source: paper.source,
                        meta: paper.meta,
                        text,
                    });
                }
            }
        }
        texts.write(&rows)?;
        state.documents = counts.input;
        state.kept = counts.kept;
        progress(state);
    }
    dropped.finish()?;
    let text_shards = texts.finish()?;
    if counts.kept == 0 {
        return Err(CorpusError::Config(format!(
            "no document survived cleaning ({} read; dropped: {:?}); see {}",
            counts.input,
            counts.dropped,
            out.join("dropped.jsonl").display()
        )));
    }

    // The tokenizer: given (copied beside the shards), or trained on the cleaned text.
    let tokenizer = match given {
        Some(t) => t,
        None => {
            let TokenizerSource::Train { vocab_size } = config.tokenizer else {
                unreachable!("a given tokenizer was loaded above")
            };
            progress(Progress {
                stage: Stage::TrainingTokenizer,
                ..state
            });
            let mut docs = Vec::with_capacity(counts.kept as usize);
            for shard in &text_shards {
                docs.extend(
                    read_text_shard(&out.join(&shard.file))?
                        .into_iter()
                        .map(|(_, text)| text),
                );
            }
            train_byte_level_bpe(docs.into_iter(), vocab_size)?
        }
    };
    let tokenizer_path = out.join("tokenizer.json");
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| CorpusError::Tokenizer(format!("serialising the tokenizer: {e}")))?;
    write_atomic(&tokenizer_path, tokenizer_json.as_bytes())?;
    let (eos_token, eos) = eos_id(&tokenizer, config.eos_token.as_deref())?;

    // With a trained tokenizer, tokenize now from the text shards.
    let splits = match splits {
        Some(s) => s,
        None => {
            let mut splits = Splits::new(config, eos);
            for shard in &text_shards {
                let rows = read_text_shard(&out.join(&shard.file))?;
                for chunk in rows.chunks(config.batch_records) {
                    let encoded: Vec<Vec<u32>> = chunk
                        .par_iter()
                        .map(|(_, text)| encode(&tokenizer, text))
                        .collect::<Result<_, _>>()?;
                    for ((id, _), ids) in chunk.iter().zip(&encoded) {
                        splits.push(id, ids, &mut state.sequences)?;
                    }
                    progress(Progress {
                        stage: Stage::Tokenizing,
                        ..state
                    });
                }
            }
            splits
        }
    };
    let train = splits.train;
    let mut tokens = train.packer.tokens;
    let mut tail_tokens = train.packer.tail_tokens() as u64;
    let token_shards = train.writer.finish()?;
    let token_documents = train.documents.finish()?;
    let (valid_shards, valid_documents) = match splits.valid {
        Some((valid, _)) => {
            tokens += valid.packer.tokens;
            tail_tokens += valid.packer.tail_tokens() as u64;
            (valid.writer.finish()?, valid.documents.finish()?)
        }
        None => (Vec::new(), None),
    };
    let manifest = Manifest {
        format_version: 1,
        config: config.clone(),
        tokenizer_file: "tokenizer.json".into(),
        tokenizer_sha256: sha256_file(&tokenizer_path)?,
        vocab_size: tokenizer.get_vocab_size(true),
        eos_token,
        eos_id: eos,
        input_files,
        input_bytes,
        documents: counts,
        tokens,
        tail_tokens,
        seq_len: config.seq_len,
        sequences: token_shards.iter().map(|s| s.rows as u64).sum(),
        valid_sequences: valid_shards.iter().map(|s| s.rows as u64).sum(),
        token_shards,
        valid_shards,
        text_shards,
        token_documents,
        valid_documents,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join("manifest.json"), json.as_bytes())?;
    Ok(manifest)
}

impl DocumentCounts {
    fn drop(&mut self, reason: &DropReason) {
        *self.dropped.entry(reason.name().to_string()).or_default() += 1;
    }
}

/// `dropped.jsonl`: one line per record or file that did not reach the output, with why.
struct DropLog {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl DropLog {
    fn create(path: &Path) -> Result<Self, CorpusError> {
        let file =
            std::fs::File::create(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
        Ok(DropLog {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(
        &mut self,
        source: &str,
        id: Option<&str>,
        reason: &DropReason,
        detail: Option<&str>,
    ) -> Result<(), CorpusError> {
        let line = serde_json::json!({"source": source, "id": id, "reason": reason.name(), "detail": detail});
        writeln!(self.file, "{line}").map_err(|e| CorpusError::Io(self.path.clone(), e))
    }

    fn finish(mut self) -> Result<(), CorpusError> {
        self.file
            .flush()
            .map_err(|e| CorpusError::Io(self.path.clone(), e))
    }
}

/// Read a corpus directory's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CorpusError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| CorpusError::Io(path.clone(), e))?;
    serde_json::from_str(&text).map_err(|e| CorpusError::Manifest {
        path,
        message: e.to_string(),
    })
}

/// Whether `paths` are papers for [`prepare`] (JATS `.xml`/`.nxml`, S2ORC `.json`, `.gz`
/// and `.tar.gz`/`.tgz` bundles, directories that are not prepared corpora) rather than plain
/// text files (`.txt`, `.jsonl`) or one prepared corpus.
pub fn are_papers(paths: &[PathBuf]) -> bool {
    !paths.is_empty()
        && paths.iter().all(|p| {
            if p.is_dir() {
                return !p.join("manifest.json").is_file();
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            [".xml", ".nxml", ".json", ".gz", ".tgz"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
}

/// Prepares `config.inputs` once under `cache` and returns the corpus directory and its
/// manifest: a later call with the same inputs (paths, sizes and modification times, as
/// make decides) and the same settings reuses it. `config.out` is replaced by
/// `cache/<hash of both>`, which only ever holds a complete corpus.
pub fn prepare_cached(
    config: &PrepareConfig,
    cache: &Path,
    progress: impl FnMut(Progress),
) -> Result<(PathBuf, Manifest), CorpusError> {
    let mut key = Sha256::new();
    let mut settings = config.clone();
    settings.out = PathBuf::new();
    key.update(serde_json::to_vec(&settings).expect("the config serialises"));
    let mut files = list_files(&config.inputs)
        .map_err(|e| CorpusError::Io(config.inputs.first().cloned().unwrap_or_default(), e))?;
    if let TokenizerSource::File(path) = &config.tokenizer {
        files.push(path.clone());
    }
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|e| CorpusError::Io(file.clone(), e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        key.update(format!("{}\0{}\0{modified}\0", file.display(), meta.len()).as_bytes());
    }
    let digest = key.finalize();
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache.join(&name);
    if dir.join("manifest.json").is_file() {
        return Ok((dir.clone(), read_manifest(&dir)?));
    }
    // Prepared beside the final place and renamed into it when complete, so concurrent runs
    // (two tests, two ranks) never read or remove each other's half-written corpus; the
    // first to finish wins, the others use its result.
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let scratch = cache.join(format!("{name}.tmp-{}-{unique}", std::process::id()));
    settings.out = scratch.clone();
    let mut manifest = prepare(&settings, progress)?;
    manifest.config.out = dir.clone();
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    write_atomic(&scratch.join("manifest.json"), &text)?;
    if dir.exists() && !dir.join("manifest.json").is_file() {
        // Not made here (this function only ever renames complete corpora into place).
        std::fs::remove_dir_all(&dir).map_err(|e| CorpusError::Io(dir.clone(), e))?;
    }
    if std::fs::rename(&scratch, &dir).is_err() {
        std::fs::remove_dir_all(&scratch).map_err(|e| CorpusError::Io(scratch.clone(), e))?;
        return Ok((dir.clone(), read_manifest(&dir)?));
    }
    Ok((dir, manifest))
}
