//! Parquet shards: token sequences for the trainer, cleaned text for people, and the manifest.
//!
//! Token shards (`tokens-NNNNN.parquet`) hold one row per packed sequence: `input_ids`
//! (list of uint32, exactly `seq_len` long) and `doc_ids` (the documents the sequence draws
//! from). Text shards (`text-NNNNN.parquet`) hold one row per kept document with its
//! metadata. Both are zstd-compressed and written to a temporary name, then renamed, so a
//! shard that exists is complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, UInt16Builder, UInt32Builder};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::CorpusError;
use crate::paper::Metadata;

/// Rows per parquet row group in token shards: the unit the reader decodes and shuffles.
pub const TOKEN_ROW_GROUP: usize = 1024;

fn writer_properties(row_group: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(row_group))
        .set_created_by(format!("pmc-corpus {}", env!("CARGO_PKG_VERSION")))
        .build()
}

fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> CorpusError + '_ {
    move |e| CorpusError::Shard {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn arrow_error(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> CorpusError + '_ {
    move |e| CorpusError::Shard {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A parquet file being written under a temporary name.
struct PendingFile {
    path: PathBuf,
    temp: PathBuf,
    writer: ArrowWriter<File>,
    rows: usize,
}

impl PendingFile {
    fn create(path: PathBuf, schema: Arc<Schema>, row_group: usize) -> Result<Self, CorpusError> {
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(|e| CorpusError::Io(temp.clone(), e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties(row_group)))
            .map_err(parquet_error(&path))?;
        Ok(PendingFile {
            path,
            temp,
            writer,
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), CorpusError> {
        self.writer
            .write(batch)
            .map_err(parquet_error(&self.path))?;
        self.rows += batch.num_rows();
        Ok(())
    }

    fn finish(self) -> Result<(PathBuf, usize), CorpusError> {
        let file = self
            .writer
            .into_inner()
            .map_err(parquet_error(&self.path))?;
        file.sync_all()
            .map_err(|e| CorpusError::Io(self.temp.clone(), e))?;
        std::fs::rename(&self.temp, &self.path)
            .map_err(|e| CorpusError::Io(self.path.clone(), e))?;
        Ok((self.path, self.rows))
    }
}

/// One shard as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the corpus directory.
    pub file: String,
    /// Rows: sequences for token shards, documents for text shards.
    pub rows: usize,
}

fn token_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "input_ids",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
        Field::new(
            "doc_ids",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
            false,
        ),
    ]))
}

/// A packed sequence and the documents it draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub input_ids: Vec<u32>,
    pub doc_ids: Vec<String>,
}

/// Parquet files `{prefix}-NNNNN.parquet` of at most `shard_rows` rows each, the next one
/// opened when one fills: what token and text shards have in common.
struct RotatingShards {
    dir: PathBuf,
    prefix: &'static str,
    schema: Arc<Schema>,
    row_group: usize,
    shard_rows: usize,
    current: Option<PendingFile>,
    done: Vec<ShardEntry>,
}

impl RotatingShards {
    fn new(
        dir: &Path,
        prefix: &'static str,
        schema: Arc<Schema>,
        row_group: usize,
        shard_rows: usize,
    ) -> Self {
        RotatingShards {
            dir: dir.to_path_buf(),
            prefix,
            schema,
            row_group,
            shard_rows: shard_rows.max(1),
            current: None,
            done: Vec::new(),
        }
    }

    /// Write `rows`, as record batches made by `batch`, across as many shards as they fill.
    fn write<T>(
        &mut self,
        mut rows: &[T],
        batch: impl Fn(&[T], &Path) -> Result<RecordBatch, CorpusError>,
    ) -> Result<(), CorpusError> {
        while !rows.is_empty() {
            if self.current.is_none() {
                let name = format!("{}-{:05}.parquet", self.prefix, self.done.len());
                self.current = Some(PendingFile::create(
                    self.dir.join(name),
                    self.schema.clone(),
                    self.row_group,
                )?);
            }
            let current = self.current.as_mut().expect("created above");
            let take = (self.shard_rows - current.rows).min(rows.len());
            current.write(&batch(&rows[..take], &current.path)?)?;
            rows = &rows[take..];
            if current.rows >= self.shard_rows {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), CorpusError> {
        if let Some(file) = self.current.take() {
            let (path, rows) = file.finish()?;
            let file = path
                .file_name()
                .expect("shard path has a name")
                .to_string_lossy()
                .into_owned();
            self.done.push(ShardEntry { file, rows });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ShardEntry>, CorpusError> {
        self.close_current()?;
        Ok(self.done)
    }
}

/// Writes token sequences into shards of at most `shard_rows` sequences, a row group of
/// [`TOKEN_ROW_GROUP`] sequences at a time.
pub struct TokenShardWriter {
    shards: RotatingShards,
    pending: Vec<Sequence>,
}

impl TokenShardWriter {
    /// Shards are named `{prefix}-NNNNN.parquet`.
    pub fn new(dir: &Path, prefix: &'static str, shard_rows: usize) -> Self {
        TokenShardWriter {
            shards: RotatingShards::new(dir, prefix, token_schema(), TOKEN_ROW_GROUP, shard_rows),
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, sequence: Sequence) -> Result<(), CorpusError> {
        self.pending.push(sequence);
        if self.pending.len() >= TOKEN_ROW_GROUP {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), CorpusError> {
        self.shards.write(&self.pending, token_batch)?;
        self.pending.clear();
        Ok(())
    }

    /// Write what is pending and close the last shard.
    pub fn finish(mut self) -> Result<Vec<ShardEntry>, CorpusError> {
        self.flush_pending()?;
        self.shards.finish()
    }
}

fn token_batch(rows: &[Sequence], path: &Path) -> Result<RecordBatch, CorpusError> {
    let mut ids = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::UInt32,
        false,
    )));
    let mut docs = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        false,
    )));
    for row in rows {
        ids.values().append_slice(&row.input_ids);
        ids.append(true);
        for d in &row.doc_ids {
            docs.values().append_value(d);
        }
        docs.append(true);
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(docs.finish())];
    RecordBatch::try_new(token_schema(), columns).map_err(arrow_error(path))
}

fn text_schema() -> Arc<Schema> {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8("id", false),
        utf8("source", false),
        utf8("pmcid", true),
        utf8("pmid", true),
        utf8("doi", true),
        utf8("title", true),
        utf8("journal", true),
        Field::new("year", DataType::UInt16, true),
        utf8("license", false),
        utf8("text", false),
    ]))
}

/// A kept document as written to the text shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRow {
    pub id: String,
    pub source: String,
    pub meta: Metadata,
    pub text: String,
}

/// Writes cleaned documents into text shards of at most `shard_rows` documents.
pub struct TextShardWriter {
    shards: RotatingShards,
}

impl TextShardWriter {
    pub fn new(dir: &Path, shard_rows: usize) -> Self {
        TextShardWriter {
            shards: RotatingShards::new(dir, "text", text_schema(), 256, shard_rows),
        }
    }

    /// Write a batch of documents (rotating shards as they fill).
    pub fn write(&mut self, rows: &[TextRow]) -> Result<(), CorpusError> {
        self.shards.write(rows, text_batch)
    }

    pub fn finish(self) -> Result<Vec<ShardEntry>, CorpusError> {
        self.shards.finish()
    }
}

fn text_batch(rows: &[TextRow], path: &Path) -> Result<RecordBatch, CorpusError> {
    let strings = |f: &dyn Fn(&TextRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let mut years = UInt16Builder::new();
    for row in rows {
        years.append_option(row.meta.year);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(&r.id)),
        strings(&|r| Some(&r.source)),
        strings(&|r| r.meta.pmcid.as_deref()),
        strings(&|r| r.meta.pmid.as_deref()),
        strings(&|r| r.meta.doi.as_deref()),
        strings(&|r| r.meta.title.as_deref()),
        strings(&|r| r.meta.journal.as_deref()),
        Arc::new(years.finish()),
        strings(&|r| Some(r.meta.license.name())),
        strings(&|r| Some(&r.text)),
    ];
    RecordBatch::try_new(text_schema(), columns).map_err(arrow_error(path))
}

/// Read `(id, text)` of every document of a text shard, in order.
pub fn read_text_shard(path: &Path) -> Result<Vec<(String, String)>, CorpusError> {
    let file = File::open(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error(path))?
        .build()
        .map_err(parquet_error(path))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_error(path))?;
        let column = |name: &str| -> Result<StringArray, CorpusError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| CorpusError::Shard {
                    path: path.to_path_buf(),
                    message: format!("no utf8 column `{name}`"),
                })
        };
        let (ids, texts) = (column("id")?, column("text")?);
        for i in 0..batch.num_rows() {
            out.push((ids.value(i).to_string(), texts.value(i).to_string()));
        }
    }
    Ok(out)
}

/// Read the given row groups of a token shard as sequences (the reader's unit of I/O).
pub fn read_token_row_groups(
    path: &Path,
    row_groups: &[usize],
) -> Result<Vec<Sequence>, CorpusError> {
    let file = File::open(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error(path))?
        .with_row_groups(row_groups.to_vec())
        .with_batch_size(TOKEN_ROW_GROUP)
        .build()
        .map_err(parquet_error(path))?;
    let mut out = Vec::new();
    let bad = |message: String| CorpusError::Shard {
        path: path.to_path_buf(),
        message,
    };
    for batch in reader {
        let batch = batch.map_err(arrow_error(path))?;
        let lists = |name: &str| -> Result<ListArray, CorpusError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<ListArray>().cloned())
                .ok_or_else(|| bad(format!("no list column `{name}`")))
        };
        let (ids, docs) = (lists("input_ids")?, lists("doc_ids")?);
        for i in 0..batch.num_rows() {
            let row_ids = ids.value(i);
            let row_ids = row_ids
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| bad("`input_ids` is not a list of uint32".into()))?;
            let row_docs = docs.value(i);
            let row_docs = row_docs
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("`doc_ids` is not a list of strings".into()))?;
            out.push(Sequence {
                input_ids: row_ids.values().to_vec(),
                doc_ids: (0..row_docs.len())
                    .map(|j| row_docs.value(j).to_string())
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Row counts of each row group of a parquet file (from its footer only).
pub fn row_group_sizes(path: &Path) -> Result<Vec<usize>, CorpusError> {
    let file = File::open(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error(path))?;
    Ok(builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows() as usize)
        .collect())
}

fn document_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("start", DataType::UInt64, false),
        Field::new("tokens", DataType::UInt32, false),
    ]))
}

/// One document's place in a split's packed token stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentSpan {
    /// Offset of its first token in the split's token stream (shards in order, rows in order).
    pub start: u64,
    /// Its tokens, EOS included.
    pub tokens: u32,
}

/// Writes `{prefix}-documents.parquet`: every document of a split with its span in the
/// packed stream, for the per-paper sampling of [`crate::reader::PaperWindows`].
pub struct DocumentIndexWriter {
    file: Option<PendingFile>,
    path: PathBuf,
    pending: Vec<(String, DocumentSpan)>,
}

impl DocumentIndexWriter {
    pub fn new(dir: &Path, prefix: &str) -> Self {
        DocumentIndexWriter {
            file: None,
            path: dir.join(format!("{prefix}-documents.parquet")),
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, id: &str, span: DocumentSpan) -> Result<(), CorpusError> {
        self.pending.push((id.to_string(), span));
        if self.pending.len() >= 8192 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CorpusError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(PendingFile::create(
                self.path.clone(),
                document_schema(),
                8192,
            )?);
        }
        let rows = std::mem::take(&mut self.pending);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                rows.iter()
                    .map(|(id, _)| Some(id.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(arrow_array::UInt64Array::from_iter_values(
                rows.iter().map(|(_, s)| s.start),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, s)| s.tokens),
            )),
        ];
        let batch =
            RecordBatch::try_new(document_schema(), columns).map_err(arrow_error(&self.path))?;
        self.file.as_mut().expect("created above").write(&batch)
    }

    /// Close the file; returns its name (`None` when the split has no documents).
    pub fn finish(mut self) -> Result<Option<String>, CorpusError> {
        self.flush()?;
        match self.file.take() {
            Some(file) => {
                let (path, _) = file.finish()?;
                Ok(path.file_name().map(|n| n.to_string_lossy().into_owned()))
            }
            None => Ok(None),
        }
    }
}

/// Read a document index written by [`DocumentIndexWriter`] (spans only, in stream order).
pub fn read_document_index(path: &Path) -> Result<Vec<DocumentSpan>, CorpusError> {
    let file = File::open(path).map_err(|e| CorpusError::Io(path.to_path_buf(), e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error(path))?
        .build()
        .map_err(parquet_error(path))?;
    let bad = |message: &str| CorpusError::Shard {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_error(path))?;
        let starts = batch
            .column_by_name("start")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::UInt64Array>()
                    .cloned()
            })
            .ok_or_else(|| bad("no uint64 column `start`"))?;
        let tokens = batch
            .column_by_name("tokens")
            .and_then(|c| c.as_any().downcast_ref::<UInt32Array>().cloned())
            .ok_or_else(|| bad("no uint32 column `tokens`"))?;
        out.extend(
            starts
                .values()
                .iter()
                .zip(tokens.values().iter())
                .map(|(&start, &tokens)| DocumentSpan { start, tokens }),
        );
    }
    Ok(out)
}
