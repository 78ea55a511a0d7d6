//! Streaming the token shards to a trainer: a seeded shuffle per epoch, partitioning by
//! (rank, world size), and a cursor that resumes the identical stream.
//!
//! The shuffle has two levels so that memory stays bounded by a few row groups: each epoch
//! permutes the row groups of all shards, cuts that order into windows of
//! [`StreamOptions::window_row_groups`] row groups, and permutes the sequences inside each
//! window. Position `p` of an epoch's order goes to rank `p % world`, so every sequence is
//! seen exactly once per epoch across all ranks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::CorpusError;
use crate::pipeline::{Manifest, read_manifest};
use crate::shards::{
    DocumentSpan, Sequence, ShardEntry, read_document_index, read_token_row_groups, row_group_sizes,
};

/// Which split of a prepared corpus to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    Train,
    Valid,
}

/// A row group of a shard: the unit of I/O.
#[derive(Debug, Clone)]
struct RowGroup {
    shard: usize,
    index: usize,
    rows: usize,
}

/// The token shards of a prepared corpus directory, checked against the manifest. Cheap to
/// clone (the index is shared).
#[derive(Clone)]
pub struct TokenCorpus {
    inner: Arc<CorpusIndex>,
}

struct CorpusIndex {
    /// The split's document index file, when the corpus has one.
    documents: Option<PathBuf>,
    manifest: Manifest,
    shards: Vec<PathBuf>,
    groups: Vec<RowGroup>,
    sequences: u64,
}

/// How to stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Row groups shuffled together (1024 sequences each); more = a better shuffle and more
    /// memory (4 MiB per row group at 1024 tokens per sequence).
    pub window_row_groups: usize,
    /// Shuffle at all (`false` streams in file order, for evaluation).
    pub shuffle: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            seed: 0,
            rank: 0,
            world: 1,
            window_row_groups: 8,
            shuffle: true,
        }
    }
}

impl StreamOptions {
    fn check(&self) -> Result<(), CorpusError> {
        if self.world == 0 || self.rank >= self.world {
            return Err(CorpusError::Config(format!(
                "rank {} is not below world size {}",
                self.rank, self.world
            )));
        }
        Ok(())
    }

    /// How many of an epoch's `n` items this rank takes (positions `rank`, `rank + world`, …).
    pub fn share(&self, n: u64) -> u64 {
        let (world, rank) = (self.world as u64, self.rank as u64);
        n / world + u64::from(rank < n % world)
    }

    /// The epoch position of this rank's next item, moving `cursor` into the next epoch when
    /// this one is used up (`n` items per epoch).
    fn next_position(&self, cursor: &mut Cursor, n: u64) -> u64 {
        let mut position = self.rank as u64 + cursor.consumed * self.world as u64;
        if position >= n {
            *cursor = Cursor {
                epoch: cursor.epoch + 1,
                consumed: 0,
            };
            position = self.rank as u64;
        }
        position
    }
}

/// Where a rank's stream stands: the epoch and how many of this epoch's sequences the rank
/// has consumed. Serialise it with a checkpoint; [`TokenCorpus::stream`] resumes from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// 0-based epoch.
    pub epoch: u64,
    /// Items of this epoch already consumed (`position` in trainer checkpoints written before
    /// the trainer used this cursor).
    #[serde(alias = "position")]
    pub consumed: u64,
}

impl TokenCorpus {
    /// Open a prepared corpus (`manifest.json` and its shards); each shard's footer is read
    /// and its row count checked against the manifest.
    pub fn open(dir: &Path, split: Split) -> Result<Self, CorpusError> {
        let manifest = read_manifest(dir)?;
        let entries: &[ShardEntry] = match split {
            Split::Train => &manifest.token_shards,
            Split::Valid => &manifest.valid_shards,
        };
        let mut shards = Vec::new();
        let mut groups = Vec::new();
        for (shard, entry) in entries.iter().enumerate() {
            let path = dir.join(&entry.file);
            let sizes = row_group_sizes(&path)?;
            let rows: usize = sizes.iter().sum();
            if rows != entry.rows {
                return Err(CorpusError::Shard {
                    path,
                    message: format!("{rows} rows, but the manifest lists {}", entry.rows),
                });
            }
            groups.extend(sizes.into_iter().enumerate().map(|(index, rows)| RowGroup {
                shard,
                index,
                rows,
            }));
            shards.push(path);
        }
        let sequences = groups.iter().map(|g| g.rows as u64).sum();
        let documents = match split {
            Split::Train => manifest.token_documents.as_ref(),
            Split::Valid => manifest.valid_documents.as_ref(),
        }
        .map(|f| dir.join(f));
        let index = CorpusIndex {
            documents,
            manifest,
            shards,
            groups,
            sequences,
        };
        Ok(TokenCorpus {
            inner: Arc::new(index),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Sequences in this split.
    pub fn sequences(&self) -> u64 {
        self.inner.sequences
    }

    /// Sequences a rank receives per epoch.
    pub fn sequences_for_rank(&self, rank: usize, world: usize) -> u64 {
        StreamOptions {
            rank,
            world,
            ..Default::default()
        }
        .share(self.inner.sequences)
    }

    /// A stream of sequences for one rank, starting at `cursor`.
    pub fn stream(
        &self,
        options: StreamOptions,
        cursor: Cursor,
    ) -> Result<SequenceStream, CorpusError> {
        options.check()?;
        if self.inner.sequences == 0 {
            return Err(CorpusError::Config(
                "the corpus split has no sequences".into(),
            ));
        }
        Ok(SequenceStream {
            corpus: self.inner.clone(),
            options,
            cursor,
            epoch_plan: None,
            window: None,
        })
    }
}

/// One epoch's order of row groups cut into windows.
struct EpochPlan {
    epoch: u64,
    /// Row-group indices per window.
    windows: Vec<Vec<usize>>,
    /// First global position of each window (and the total at the end).
    starts: Vec<u64>,
}

struct LoadedWindow {
    epoch: u64,
    index: usize,
    sequences: Vec<Sequence>,
    order: Vec<u32>,
}

/// An endless, resumable stream of one rank's sequences (epoch after epoch).
pub struct SequenceStream {
    corpus: Arc<CorpusIndex>,
    options: StreamOptions,
    cursor: Cursor,
    epoch_plan: Option<EpochPlan>,
    window: Option<LoadedWindow>,
}

fn rng_for(seed: u64, epoch: u64, window: u64) -> StdRng {
    // Distinct, reproducible streams per (seed, epoch, window).
    let mix = seed
        ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ window.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    StdRng::seed_from_u64(mix)
}

impl SequenceStream {
    /// Where the stream stands now (save this; the next sequence is the one after it).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn plan(&mut self) -> &EpochPlan {
        let epoch = self.cursor.epoch;
        if self.epoch_plan.as_ref().is_none_or(|p| p.epoch != epoch) {
            let mut order: Vec<usize> = (0..self.corpus.groups.len()).collect();
            if self.options.shuffle {
                order.shuffle(&mut rng_for(self.options.seed, epoch, u64::MAX));
            }
            let windows: Vec<Vec<usize>> = order
                .chunks(self.options.window_row_groups.max(1))
                .map(<[usize]>::to_vec)
                .collect();
            let mut starts = Vec::with_capacity(windows.len() + 1);
            let mut total = 0u64;
            for w in &windows {
                starts.push(total);
                total += w
                    .iter()
                    .map(|&g| self.corpus.groups[g].rows as u64)
                    .sum::<u64>();
            }
            starts.push(total);
            self.epoch_plan = Some(EpochPlan {
                epoch,
                windows,
                starts,
            });
        }
        self.epoch_plan.as_ref().expect("planned above")
    }

    /// The next sequence of this rank.
    pub fn next_sequence(&mut self) -> Result<Sequence, CorpusError> {
        let position = self
            .options
            .next_position(&mut self.cursor, self.corpus.sequences);
        let epoch = self.cursor.epoch;
        let plan = self.plan();
        let window = plan.starts.partition_point(|&s| s <= position) - 1;
        let local = (position - plan.starts[window]) as usize;
        let groups = plan.windows[window].clone();
        if self
            .window
            .as_ref()
            .is_none_or(|w| w.epoch != epoch || w.index != window)
        {
            self.window = Some(self.load_window(epoch, window, &groups)?);
        }
        let loaded = self.window.as_ref().expect("loaded above");
        let sequence = loaded.sequences[loaded.order[local] as usize].clone();
        self.cursor.consumed += 1;
        Ok(sequence)
    }

    fn load_window(
        &self,
        epoch: u64,
        index: usize,
        groups: &[usize],
    ) -> Result<LoadedWindow, CorpusError> {
        let mut sequences = Vec::new();
        for &g in groups {
            let group = &self.corpus.groups[g];
            let rows = read_token_row_groups(&self.corpus.shards[group.shard], &[group.index])?;
            if rows.len() != group.rows {
                return Err(CorpusError::Shard {
                    path: self.corpus.shards[group.shard].clone(),
                    message: format!(
                        "row group {} holds {} rows, its footer says {}",
                        group.index,
                        rows.len(),
                        group.rows
                    ),
                });
            }
            sequences.extend(rows);
        }
        let mut order: Vec<u32> = (0..sequences.len() as u32).collect();
        if self.options.shuffle {
            order.shuffle(&mut rng_for(self.options.seed, epoch, index as u64));
        }
        Ok(LoadedWindow {
            epoch,
            index,
            sequences,
            order,
        })
    }
}

impl TokenCorpus {
    /// PMC-LLaMA's sampling: every epoch, one random window of `seq_len` tokens from each
    /// paper (documents in a seeded order, the window's start drawn per paper and epoch),
    /// partitioned over ranks and resumable like [`TokenCorpus::stream`]. A paper shorter than
    /// the window starts it and the following papers fill it, as in packing.
    pub fn paper_windows(
        &self,
        options: StreamOptions,
        cursor: Cursor,
    ) -> Result<PaperWindows, CorpusError> {
        options.check()?;
        let path = self.inner.documents.clone().ok_or_else(|| {
            CorpusError::Config("this corpus has no document index (prepared by an older version); prepare it again".into())
        })?;
        let documents = read_document_index(&path)?;
        let seq_len = self.inner.manifest.seq_len as u64;
        let packed = self.inner.sequences * seq_len;
        // Documents wholly in the unpacked tail have no window.
        let documents: Vec<DocumentSpan> = documents
            .into_iter()
            .filter(|d| d.start < packed.saturating_sub(seq_len - 1))
            .collect();
        if documents.is_empty() {
            return Err(CorpusError::Config("no document has a full window".into()));
        }
        let mut group_starts = Vec::with_capacity(self.inner.groups.len() + 1);
        let mut total = 0u64;
        for g in &self.inner.groups {
            group_starts.push(total);
            total += g.rows as u64;
        }
        group_starts.push(total);
        Ok(PaperWindows {
            corpus: self.inner.clone(),
            documents,
            options,
            cursor,
            order: None,
            cache: Vec::new(),
            group_starts,
        })
    }

    /// Documents with a window per epoch for one rank (see [`TokenCorpus::paper_windows`]).
    pub fn papers_for_rank(windows: &PaperWindows, rank: usize, world: usize) -> u64 {
        StreamOptions {
            rank,
            world,
            ..Default::default()
        }
        .share(windows.documents.len() as u64)
    }
}

/// The stream of [`TokenCorpus::paper_windows`].
pub struct PaperWindows {
    corpus: Arc<CorpusIndex>,
    documents: Vec<DocumentSpan>,
    options: StreamOptions,
    cursor: Cursor,
    order: Option<(u64, Vec<u32>)>,
    /// The last row groups read: (group index in file order, its sequences).
    cache: Vec<(usize, Vec<Sequence>)>,
    /// First sequence of each row group in file order (and the total at the end).
    group_starts: Vec<u64>,
}

impl PaperWindows {
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Papers with a window per epoch (all ranks).
    pub fn papers(&self) -> usize {
        self.documents.len()
    }

    fn sequence(&mut self, index: u64) -> Result<&[u32], CorpusError> {
        let group = self.group_starts.partition_point(|&s| s <= index) - 1;
        if !self.cache.iter().any(|(g, _)| *g == group) {
            let g = &self.corpus.groups[group];
            let rows = read_token_row_groups(&self.corpus.shards[g.shard], &[g.index])?;
            if self.cache.len() == 2 {
                self.cache.remove(0);
            }
            self.cache.push((group, rows));
        }
        let (_, rows) = self
            .cache
            .iter()
            .find(|(g, _)| *g == group)
            .expect("cached above");
        Ok(&rows[(index - self.group_starts[group]) as usize].input_ids)
    }

    /// The next window of this rank.
    pub fn next_window(&mut self) -> Result<Vec<u32>, CorpusError> {
        let n = self.documents.len() as u64;
        let position = self.options.next_position(&mut self.cursor, n);
        let epoch = self.cursor.epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<u32> = (0..n as u32).collect();
            if self.options.shuffle {
                order.shuffle(&mut rng_for(self.options.seed, epoch, u64::MAX - 1));
            }
            self.order = Some((epoch, order));
        }
        let doc_index = self.order.as_ref().expect("set above").1[position as usize];
        let doc = self.documents[doc_index as usize];
        let seq_len = self.corpus.manifest.seq_len as u64;
        let packed = self.corpus.sequences * seq_len;
        let room = u64::from(doc.tokens).saturating_sub(seq_len);
        let offset = if room == 0 {
            0
        } else {
            use rand::Rng;
            rng_for(self.options.seed ^ 0x5a5a, epoch, u64::from(doc_index)).random_range(0..=room)
        };
        let start = (doc.start + offset).min(packed - seq_len);
        let first = start / seq_len;
        let skip = (start % seq_len) as usize;
        let mut window = self.sequence(first)?[skip..].to_vec();
        if skip > 0 {
            let rest = self.sequence(first + 1)?;
            window.extend_from_slice(&rest[..skip]);
        }
        self.cursor.consumed += 1;
        Ok(window)
    }
}
