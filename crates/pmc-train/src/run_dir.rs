//! What a run directory may hold: one run. A fresh run's curves would otherwise append to an
//! earlier run's `metrics.jsonl`, and pruning to the last K checkpoints by step number would
//! delete the new run's checkpoints in favour of the old run's higher-numbered ones.

use std::path::{Path, PathBuf};

use crate::TrainError;

/// The files by which a directory holds a run.
pub const RUN_FILES: [&str; 3] = ["metrics.jsonl", "run_config.json", "checkpoints"];

/// The entries of [`RUN_FILES`] that `dir` holds (none for a missing or empty directory).
pub fn run_files(dir: &Path) -> Vec<&'static str> {
    RUN_FILES
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect()
}

/// How a fresh run treats a directory that already holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedDir {
    /// Refuse it, naming `--resume` and `--out`: nothing of the earlier run is touched.
    Refuse,
    /// Delete the earlier run's files first: for directories a tool owns and recomputes
    /// (a `reproduce` cell), never for a user's `--out`.
    Replace,
}

/// Refuses `dir` for a fresh run when it holds one; writes nothing. (Every rank of a sharded
/// run checks before any of them writes, then meets the others: see [`claim_fresh`].)
pub fn check_unused(dir: &Path) -> Result<(), TrainError> {
    let found = run_files(dir);
    if found.is_empty() {
        Ok(())
    } else {
        Err(TrainError::RunDirInUse {
            dir: dir.to_path_buf(),
            found: found.join(", "),
        })
    }
}

/// Claims `dir` for a fresh run (creating it), as `used` says when it already holds one.
pub fn claim_fresh(dir: &Path, used: UsedDir) -> Result<PathBuf, TrainError> {
    let found = run_files(dir);
    if !found.is_empty() {
        match used {
            UsedDir::Refuse => check_unused(dir)?,
            UsedDir::Replace => {
                for f in found {
                    let path = dir.join(f);
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(|e| TrainError::Io(path, e))?;
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(dir.to_path_buf(), e))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_directory_is_refused_and_left_alone_or_replaced_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        claim_fresh(&dir, UsedDir::Refuse).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{\"step\": 30}\n").unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/step-00000030")).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();

        let err = claim_fresh(&dir, UsedDir::Refuse).unwrap_err().to_string();
        assert!(
            err.contains("--resume") && err.contains("--out") && err.contains("metrics.jsonl"),
            "{err}"
        );
        assert!(dir.join("metrics.jsonl").exists() && dir.join("checkpoints").exists());

        claim_fresh(&dir, UsedDir::Replace).unwrap();
        assert!(run_files(&dir).is_empty());
        assert!(
            dir.join("notes.txt").exists(),
            "only the run's own files go"
        );
    }
}
