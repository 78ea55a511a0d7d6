//! Training data: anything that yields `[n, seq_len]` batches after a resumable cursor.
//!
//! Two sources: [`CorpusShards`], the packed parquet shards of `pmc-corpus` (the real
//! pipeline), and [`TokenWindows`], an in-memory token stream cut into windows (for text
//! files and tests). Both read in a seeded order per epoch and resume exactly from a
//! [`Cursor`].

use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use crate::TrainError;

/// A position in the stream: which epoch and how many of its items were consumed — the
/// corpus reader's own cursor, so prepared shards resume from it without conversion.
pub use pmc_corpus::Cursor;

/// A micro-batch: token ids and, for instruction data and padded rows, which tokens are
/// targets of the loss (`None`: every token after the first).
pub struct Batch {
    /// `[n, len]`.
    pub tokens: Tensor<2, Int>,
    /// `[n, len]`, 1.0 where the token is predicted and counted in the loss.
    pub target_mask: Option<Tensor<2>>,
}

impl Batch {
    /// A batch of packed sequences: every token is a target.
    pub fn packed(tokens: Tensor<2, Int>) -> Self {
        Batch {
            tokens,
            target_mask: None,
        }
    }
}

/// Which item each position of an epoch reads — a permutation of `len` items seeded by
/// (seed, epoch) — and a cursor's walk through it. The permutation is computed once per epoch:
/// shuffling every item again for each micro-batch is too much work.
#[derive(Debug)]
pub(crate) struct EpochOrder {
    len: usize,
    seed: u64,
    cache: std::sync::Mutex<Option<(u64, std::sync::Arc<Vec<usize>>)>>,
}

impl EpochOrder {
    pub(crate) fn new(len: usize, seed: u64) -> Self {
        EpochOrder {
            len,
            seed,
            cache: std::sync::Mutex::new(None),
        }
    }

    fn order(&self, epoch: u64) -> std::sync::Arc<Vec<usize>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, order)) = cache.as_ref()
            && *cached == epoch
        {
            return order.clone();
        }
        let mut order: Vec<usize> = (0..self.len).collect();
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        let order = std::sync::Arc::new(order);
        *cache = Some((epoch, order.clone()));
        order
    }

    /// The indices of the `n` items after `cursor`, and the cursor after them (an epoch
    /// used up continues with the next one's order).
    pub(crate) fn take(&self, cursor: &Cursor, n: usize) -> (Vec<usize>, Cursor) {
        let mut cursor = *cursor;
        let mut order = self.order(cursor.epoch);
        let mut picked = Vec::with_capacity(n);
        for _ in 0..n {
            if cursor.consumed as usize >= order.len() {
                cursor = Cursor {
                    epoch: cursor.epoch + 1,
                    consumed: 0,
                };
                order = self.order(cursor.epoch);
            }
            picked.push(order[cursor.consumed as usize]);
            cursor.consumed += 1;
        }
        (picked, cursor)
    }
}

/// A source of training sequences.
pub trait TrainingData: Send + Sync {
    /// The `n` sequences after `cursor` as a `[n, len]` batch, and the cursor after them.
    fn batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> Result<(Batch, Cursor), TrainError>;
    /// Sequences per epoch.
    fn sequences(&self) -> usize;
    /// Tokens per sequence.
    fn seq_len(&self) -> usize;
    /// What a cursor indexes into, as a string that changes when the stream would: saved
    /// with every checkpoint, and a resumed run on data with another fingerprint is refused.
    /// Asked for at every step, so a source that hashes its contents does it once.
    fn fingerprint(&self) -> String;
    /// For a mixture: the sequences drawn of each source, by name, once the run stands at
    /// `cursor` (logged per step). `None` for a single stream.
    fn composition(&self, _cursor: &Cursor) -> Option<Vec<(String, u64)>> {
        None
    }
}

/// Non-overlapping windows of `seq_len` tokens over a token stream.
#[derive(Debug)]
pub struct TokenWindows {
    windows: Vec<Vec<u32>>,
    order: EpochOrder,
    /// Of the windows, their shape and the seed (see [`TrainingData::fingerprint`]).
    fingerprint: String,
}

impl TokenWindows {
    /// Cuts `tokens` into windows of `seq_len` (a shorter tail is dropped).
    pub fn new(tokens: &[u32], seq_len: usize, seed: u64) -> Self {
        let windows: Vec<Vec<u32>> = tokens.chunks_exact(seq_len).map(<[u32]>::to_vec).collect();
        let order = EpochOrder::new(windows.len(), seed);
        let hash = pmc_model::fnv1a64(windows.iter().flatten().flat_map(|t| t.to_le_bytes()));
        let fingerprint = format!(
            "windows-{hash:016x}-{}x{}-seed{seed}",
            windows.len(),
            windows.first().map_or(0, Vec::len),
        );
        Self {
            windows,
            order,
            fingerprint,
        }
    }

    /// Number of windows per epoch.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there is no full window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// All windows, in stream order.
    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }

    /// The `n` windows after `cursor` as a `[n, seq_len]` batch, and the cursor after them.
    pub fn windows_batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> (Tensor<2, Int>, Cursor) {
        assert!(!self.windows.is_empty(), "no training windows");
        let (picked, cursor) = self.order.take(cursor, n);
        let ids: Vec<i64> = picked
            .iter()
            .flat_map(|&i| self.windows[i].iter().map(|&t| i64::from(t)))
            .collect();
        let seq_len = self.windows[0].len();
        (
            Tensor::from_data(TensorData::new(ids, [n, seq_len]), device),
            cursor,
        )
    }
}

impl TrainingData for TokenWindows {
    fn batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> Result<(Batch, Cursor), TrainError> {
        if self.windows.is_empty() {
            return Err(TrainError::Config("no training windows".into()));
        }
        let (tokens, next) = self.windows_batch(cursor, n, device);
        Ok((Batch::packed(tokens), next))
    }

    fn sequences(&self) -> usize {
        self.windows.len()
    }

    fn seq_len(&self) -> usize {
        self.windows.first().map_or(0, Vec::len)
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// The training split of a corpus prepared by `pmc-corpus` (`manifest.json` + token shards),
/// streamed with its seeded two-level shuffle; the cursor maps one to one onto the corpus
/// reader's, so a resumed run reads the identical sequence stream.
pub struct CorpusShards {
    corpus: pmc_corpus::TokenCorpus,
    options: pmc_corpus::StreamOptions,
    sampling: Sampling,
    /// Items per epoch: sequences, or papers with a window.
    per_epoch: u64,
    /// The open stream (it stands at its own cursor); reopened when asked for another cursor.
    stream: std::sync::Mutex<Option<OpenStream>>,
}

/// How an epoch reads a prepared corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every packed sequence once, in a seeded shuffle.
    Packed,
    /// PMC-LLaMA's: one random `seq_len` window of every paper.
    PaperWindows,
}

impl std::str::FromStr for Sampling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "packed" => Ok(Sampling::Packed),
            "paper-windows" => Ok(Sampling::PaperWindows),
            other => Err(format!(
                "unknown sampling {other:?}: packed or paper-windows"
            )),
        }
    }
}

enum OpenStream {
    Packed(pmc_corpus::SequenceStream),
    Papers(pmc_corpus::reader::PaperWindows),
}

impl OpenStream {
    fn cursor(&self) -> pmc_corpus::Cursor {
        match self {
            OpenStream::Packed(s) => s.cursor(),
            OpenStream::Papers(s) => s.cursor(),
        }
    }

    fn next(&mut self) -> Result<Vec<u32>, pmc_corpus::CorpusError> {
        match self {
            OpenStream::Packed(s) => s.next_sequence().map(|s| s.input_ids),
            OpenStream::Papers(s) => s.next_window(),
        }
    }
}

impl CorpusShards {
    /// Open the training split of the corpus in `dir`, packed sequences shuffled with `seed`.
    pub fn open(dir: &std::path::Path, seed: u64) -> Result<Self, TrainError> {
        Self::open_with(dir, seed, Sampling::Packed)
    }

    /// Open the training split, read as `sampling` says.
    pub fn open_with(
        dir: &std::path::Path,
        seed: u64,
        sampling: Sampling,
    ) -> Result<Self, TrainError> {
        let err = TrainError::Corpus;
        let corpus = pmc_corpus::TokenCorpus::open(dir, pmc_corpus::Split::Train).map_err(err)?;
        let options = pmc_corpus::StreamOptions {
            seed,
            ..Default::default()
        };
        // The paper-window stream is opened here (its paper count is the epoch's length) and
        // kept for the first batch rather than its index read twice.
        let (per_epoch, first) = match sampling {
            Sampling::Packed => (corpus.sequences(), None),
            Sampling::PaperWindows => {
                let windows = corpus
                    .paper_windows(options, Default::default())
                    .map_err(err)?;
                (windows.papers() as u64, Some(OpenStream::Papers(windows)))
            }
        };
        Ok(CorpusShards {
            corpus,
            options,
            sampling,
            per_epoch,
            stream: std::sync::Mutex::new(first),
        })
    }

    /// A position at the epoch's end is the next epoch's start (as the reader treats it).
    fn normalised(&self, cursor: pmc_corpus::Cursor) -> pmc_corpus::Cursor {
        if cursor.consumed >= self.per_epoch {
            pmc_corpus::Cursor {
                epoch: cursor.epoch + 1,
                consumed: 0,
            }
        } else {
            cursor
        }
    }

    pub fn manifest(&self) -> &pmc_corpus::Manifest {
        self.corpus.manifest()
    }

    /// Up to `max` sequences of the corpus's validation split, in file order (empty when the
    /// corpus was prepared without one).
    pub fn held_out(dir: &std::path::Path, max: usize) -> Result<Vec<Vec<u32>>, TrainError> {
        let err = TrainError::Corpus;
        let valid = pmc_corpus::TokenCorpus::open(dir, pmc_corpus::Split::Valid).map_err(err)?;
        if valid.sequences() == 0 {
            return Ok(Vec::new());
        }
        let options = pmc_corpus::StreamOptions {
            shuffle: false,
            ..Default::default()
        };
        let mut stream = valid
            .stream(options, pmc_corpus::Cursor::default())
            .map_err(err)?;
        let n = (valid.sequences() as usize).min(max);
        (0..n)
            .map(|_| stream.next_sequence().map(|s| s.input_ids).map_err(err))
            .collect()
    }
}

impl TrainingData for CorpusShards {
    fn batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> Result<(Batch, Cursor), TrainError> {
        let err = TrainError::Corpus;
        let wanted = *cursor;
        let mut guard = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_none_or(|s| self.normalised(s.cursor()) != wanted)
        {
            *guard = Some(match self.sampling {
                Sampling::Packed => {
                    OpenStream::Packed(self.corpus.stream(self.options, wanted).map_err(err)?)
                }
                Sampling::PaperWindows => OpenStream::Papers(
                    self.corpus
                        .paper_windows(self.options, wanted)
                        .map_err(err)?,
                ),
            });
        }
        let stream = guard.as_mut().expect("opened above");
        let mut ids = Vec::with_capacity(n * self.seq_len());
        for _ in 0..n {
            ids.extend(stream.next().map_err(err)?.iter().map(|&t| i64::from(t)));
        }
        let next = self.normalised(stream.cursor());
        let tokens = Tensor::from_data(TensorData::new(ids, [n, self.seq_len()]), device);
        Ok((Batch::packed(tokens), next))
    }

    fn sequences(&self) -> usize {
        self.per_epoch as usize
    }

    fn seq_len(&self) -> usize {
        self.corpus.manifest().seq_len
    }

    fn fingerprint(&self) -> String {
        let manifest = self.corpus.manifest();
        let shards: Vec<String> = manifest
            .token_shards
            .iter()
            .map(|s| format!("{}:{}", s.file, s.rows))
            .collect();
        let sampling = match self.sampling {
            Sampling::Packed => "packed",
            Sampling::PaperWindows => "paper-windows",
        };
        format!(
            "shards-{sampling}-{}-{}-{}-seed{}",
            manifest.tokenizer_sha256,
            manifest.sequences,
            shards.join(","),
            self.options.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_window_once_per_epoch_and_cursors_resume() {
        let tokens: Vec<u32> = (0..100).collect();
        let data = TokenWindows::new(&tokens, 10, 7);
        let device = Device::flex();
        let (first, mid) = data.windows_batch(&Cursor::default(), 4, &device);
        let (rest, end) = data.windows_batch(&mid, 6, &device);
        assert_eq!(
            end,
            Cursor {
                epoch: 0,
                consumed: 10
            }
        );
        let mut starts: Vec<i64> = first
            .into_data()
            .iter::<i64>()
            .chain(rest.into_data().iter::<i64>())
            .step_by(10)
            .collect();
        starts.sort();
        assert_eq!(starts, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        // Resuming from `mid` gives what came after it the first time.
        let (again, _) = data.windows_batch(&mid, 6, &device);
        let (rest2, _) = data.windows_batch(&mid, 6, &device);
        assert_eq!(again.into_data(), rest2.into_data());
        // The next epoch is another order.
        let (next, c) = data.windows_batch(&end, 10, &device);
        assert_eq!(
            c,
            Cursor {
                epoch: 1,
                consumed: 10
            }
        );
        assert_ne!(
            next.into_data()
                .iter::<i64>()
                .step_by(10)
                .collect::<Vec<_>>(),
            starts
        );
    }
}
