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
use crate::shards::{Sequence, ShardEntry, read_token_row_groups, row_group_sizes};

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

/// Where a rank's stream stands: the epoch and how many of this epoch's sequences the rank
/// has consumed. Serialise it with a checkpoint; [`TokenCorpus::stream`] resumes from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
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
        let index = CorpusIndex {
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
        let n = self.inner.sequences;
        let (world, rank) = (world as u64, rank as u64);
        n / world + u64::from(rank < n % world)
    }

    /// A stream of sequences for one rank, starting at `cursor`.
    pub fn stream(
        &self,
        options: StreamOptions,
        cursor: Cursor,
    ) -> Result<SequenceStream, CorpusError> {
        if options.world == 0 || options.rank >= options.world {
            return Err(CorpusError::Config(format!(
                "rank {} is not below world size {}",
                options.rank, options.world
            )));
        }
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
        let total = self.corpus.sequences;
        let world = self.options.world as u64;
        let mut position = self.options.rank as u64 + self.cursor.consumed * world;
        if position >= total {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                consumed: 0,
            };
            position = self.options.rank as u64;
        }
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
