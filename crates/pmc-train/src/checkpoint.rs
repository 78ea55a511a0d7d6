//! The one checkpointer of every trainer (single-process or sharded).
//!
//! It owns the layout `RUN/checkpoints/step-N/`, the atomic protocol (everything is written
//! into `step-N.tmp`, which is renamed into place only when complete, so a `*.tmp` directory is
//! never a checkpoint), keep-last-K pruning, the tokenizer copy that makes each checkpoint a
//! complete HF model directory, the data fingerprint a resumed run must match, and the
//! discovery of a run's newest complete checkpoint. What a checkpoint *holds* (a whole model,
//! a LoRA adapter, optimizer shards) is the [`TrainStep`]'s business: it writes its part into
//! the directory it is given.

use std::path::{Path, PathBuf};

use pmc_model::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::TrainingData;
use crate::step::TrainStep;

/// The file in each checkpoint naming the data its cursor indexes into.
pub const DATA_FILE: &str = "data.json";
/// The file that marks a directory as a trainer checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";

/// The checkpoint directory of `step` under `run_dir`.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// The run directory a checkpoint of [`checkpoint_dir`] belongs to (`RUN/checkpoints/step-N`
/// → `RUN`).
pub fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    checkpoint.parent()?.parent().map(Path::to_path_buf)
}

/// The complete checkpoints of a run, oldest first (`step-N.tmp`/`.old` directories of an
/// interrupted save are not checkpoints).
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let parent = run_dir.join("checkpoints");
    if !parent.exists() {
        return Ok(Vec::new());
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map_err(|e| TrainError::Io(parent.clone(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
                && p.join(STATE_FILE).is_file()
        })
        .collect();
    all.sort();
    Ok(all)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(run_dir)?.pop())
}

/// What `--resume PATH` means: a checkpoint directory itself, or a run directory, whose
/// newest complete checkpoint is taken.
pub fn resolve(path: &Path) -> Result<PathBuf, TrainError> {
    if path.extension().is_some_and(|e| e == "tmp" || e == "old") {
        return Err(TrainError::NoCheckpoint(
            path.to_path_buf(),
            "an interrupted save (*.tmp, *.old) is not a checkpoint",
        ));
    }
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    latest(path)?.ok_or_else(|| {
        TrainError::NoCheckpoint(
            path.to_path_buf(),
            "neither a checkpoint (trainer_state.json) nor a run directory with complete checkpoints",
        )
    })
}

/// What [`STATE_FILE`] holds, for every trainer: where training stands, its
/// hyper-parameters, and what the trainer adds (`lora_base` and `base_config` for LoRA runs,
/// `fsdp` for sharded ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedState {
    /// Progress.
    pub state: crate::TrainState,
    /// Hyper-parameters.
    pub config: crate::TrainConfig,
    /// The trainer's own entries.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SavedState {
    /// Writes [`STATE_FILE`] into checkpoint directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self).expect("JSON"))
            .map_err(|e| TrainError::Io(path, e))
    }

    /// Reads [`STATE_FILE`] of checkpoint `dir`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io(path.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(path, e.to_string()))
    }
}

/// The fingerprint of the data a checkpoint's cursor indexes into, as saved in
/// [`DATA_FILE`]. `None` before the first step: any data may follow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// [`TrainingData::fingerprint`] of the training stream.
    pub fingerprint: Option<String>,
}

impl DataRecord {
    /// Writes the record into checkpoint directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(DATA_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self).expect("JSON"))
            .map_err(|e| TrainError::Io(path, e))
    }

    /// Reads the record of checkpoint `dir`; a checkpoint without one cannot be checked and
    /// is refused.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(DATA_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io(path.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(path, e.to_string()))
    }
}

/// The data a trainer steps on: refuses other data than its checkpoint's after a resume, and
/// remembers the fingerprint for the next checkpoint. Used by every [`TrainStep`].
#[derive(Debug, Clone, Default)]
pub struct DataGuard {
    /// The checkpoint resumed from and what it was trained on.
    resumed: Option<(PathBuf, DataRecord)>,
    /// What the trainer has stepped on since.
    seen: DataRecord,
}

impl DataGuard {
    /// A guard for a run resumed from `checkpoint` (reads its [`DATA_FILE`]).
    pub fn resumed_from(checkpoint: &Path) -> Result<Self, TrainError> {
        let record = DataRecord::read(checkpoint)?;
        Ok(DataGuard {
            seen: record.clone(),
            resumed: Some((checkpoint.to_path_buf(), record)),
        })
    }

    /// Accepts `data` for the next step, or refuses it when the run was resumed from a
    /// checkpoint trained on something else (the cursor would index into other sequences).
    pub fn check(&mut self, data: &dyn TrainingData) -> Result<(), TrainError> {
        let now = data.fingerprint();
        if let Some((
            checkpoint,
            DataRecord {
                fingerprint: Some(saved),
            },
        )) = &self.resumed
            && *saved != now
        {
            return Err(TrainError::OtherData {
                checkpoint: checkpoint.clone(),
                saved: saved.clone(),
                now,
            });
        }
        self.seen.fingerprint = Some(now);
        Ok(())
    }

    /// The record for the next checkpoint.
    pub fn record(&self) -> &DataRecord {
        &self.seen
    }
}

/// Writes a run's checkpoints: [`TrainStep::save`] on every rank into `step-N.tmp`, then, on
/// rank 0, the tokenizer, the rename into place and the pruning to the last `keep`.
#[derive(Clone)]
pub struct Checkpointer {
    run_dir: PathBuf,
    keep: usize,
    tokenizer: Option<Tokenizer>,
}

impl Checkpointer {
    /// Checkpoints under `run_dir/checkpoints/`, the last `keep` (at least 1) kept.
    pub fn new(run_dir: impl Into<PathBuf>, keep: usize) -> Self {
        Checkpointer {
            run_dir: run_dir.into(),
            keep: keep.max(1),
            tokenizer: None,
        }
    }

    /// Every checkpoint also carries `tokenizer`, so it is a complete HF model directory.
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Saves the trainer's current step atomically and prunes old checkpoints; returns the
    /// checkpoint directory. Every rank calls this; the ranks meet at barriers so that all
    /// parts are in `step-N.tmp` before rank 0 renames it.
    pub fn save(&self, trainer: &dyn TrainStep) -> Result<PathBuf, TrainError> {
        let dir = checkpoint_dir(&self.run_dir, trainer.state().step);
        let tmp = dir.with_extension("tmp");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| TrainError::Io(p.clone(), e)
        };
        let leader = trainer.rank() == 0;
        if leader {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            }
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        }
        trainer.barrier()?;
        trainer.save(&tmp)?;
        trainer.barrier()?;
        if leader {
            if let Some(tokenizer) = &self.tokenizer {
                tokenizer.save(&tmp)?;
            }
            pmc_model::checkpoint::replace_dir(&tmp, &dir)?;
            let mut all = list(&self.run_dir)?;
            while all.len() > self.keep {
                let old = all.remove(0);
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
        }
        trainer.barrier()?;
        Ok(dir)
    }
}
