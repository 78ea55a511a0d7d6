//! Sharded checkpoints: each rank writes its shard of every unit's parameters and AdamW
//! moments (`fsdp-rank-R-of-N.safetensors`); rank 0 writes the index mapping flat ranges to
//! HF tensor names (`fsdp_index.json`), the trainer state, and a consolidated HF model
//! (`config.json` + `model.safetensors`, gathered unit by unit) that `cargo xtask score` and
//! transformers load. pmc-train's [`pmc_train::Checkpointer`] makes the directory atomic.
//!
//! A run resumes with the same or another number of ranks: the flat shards are concatenated
//! and re-sliced.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use pmc_model::LlamaConfig;
use pmc_train::checkpoint::{DataGuard, DataRecord, SavedState};
use pmc_train::{TrainError, TrainStep};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::flat::Layout;
use crate::trainer::{FsdpTrainer, ShardLevel};
use pmc_train::adamw::Moments;

/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "fsdp_index.json";

/// What `fsdp_index.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Ranks that wrote shards.
    pub world_size: usize,
    /// The sharding level of the run (informational: any level resumes from any).
    pub shard_level: u8,
    /// Units, their parameters and flat offsets; shard `r` of unit `u` is elements
    /// `r · ⌈len/N⌉ .. (r+1) · ⌈len/N⌉` of its zero-padded buffer.
    pub layout: Layout,
    /// The shard files, by rank.
    pub files: Vec<String>,
}

fn shard_file(rank: usize, world: usize) -> String {
    format!("fsdp-rank-{rank:05}-of-{world:05}.safetensors")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io(path.to_path_buf(), e)
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(path.to_path_buf(), message.to_string())
}

/// Writes `trainer`'s part of a checkpoint into `dir` (every rank calls this).
pub(crate) fn save(
    trainer: &FsdpTrainer<'_>,
    record: &DataRecord,
    dir: &Path,
) -> Result<(), TrainError> {
    let comm = trainer.comm();
    let (rank, world) = (comm.rank(), comm.world_size());
    let layout = trainer.layout();

    // This rank's shard of parameters and moments.
    let params = trainer.param_shards();
    let moments: Vec<Moments> = trainer
        .moments()
        .iter()
        .zip(&layout.units)
        .map(|(m, u)| {
            // Level 0 holds every unit's whole moments; each rank writes its slice of them.
            if trainer.level() == ShardLevel::DataParallel {
                let r = u.shard_range(rank, world);
                Moments {
                    m: m.m[r.clone()].to_vec(),
                    v: m.v[r].to_vec(),
                }
            } else {
                m.clone()
            }
        })
        .collect();
    let mut tensors: Vec<(String, &[f32])> = Vec::new();
    for ((unit, p), m) in layout.units.iter().zip(&params).zip(&moments) {
        tensors.push((format!("{}.param", unit.name), p));
        tensors.push((format!("{}.exp_avg", unit.name), &m.m));
        tensors.push((format!("{}.exp_avg_sq", unit.name), &m.v));
    }
    let path = dir.join(shard_file(rank, world));
    let views = tensors
        .iter()
        .map(|(name, values)| {
            TensorView::new(Dtype::F32, vec![values.len()], bytemuck::cast_slice(values))
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(&path, e))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| corrupt(&path, e))?;
    std::fs::write(&path, bytes).map_err(io(&path))?;

    // The consolidated HF model, one safetensors file per unit as it is gathered, so rank 0
    // never holds more than one whole unit.
    let mut writer = if rank == 0 {
        Some(pmc_model::checkpoint::ShardedHfWriter::new(
            dir,
            layout.units.len(),
        )?)
    } else {
        None
    };
    trainer.for_each_full_unit(|u, full| {
        if let Some(w) = writer.as_mut() {
            let tensors: Vec<(&str, &[usize], &[f32])> = layout.units[u]
                .params
                .iter()
                .map(|p| {
                    (
                        p.name.as_str(),
                        p.shape.as_slice(),
                        &full[p.offset..p.offset + p.numel()],
                    )
                })
                .collect();
            w.write_shard(u, &tensors)?;
        }
        Ok(())
    })?;
    let Some(writer) = writer else {
        return Ok(());
    };
    writer.finish(&trainer.model_config)?;
    let index = ShardIndex {
        world_size: world,
        shard_level: trainer.level().number(),
        layout: layout.clone(),
        files: (0..world).map(|r| shard_file(r, world)).collect(),
    };
    let path = dir.join(INDEX_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&index).expect("JSON")).map_err(io(&path))?;
    let mut extra = serde_json::Map::new();
    extra.insert(
        "fsdp".into(),
        serde_json::json!({"world_size": world, "shard_level": trainer.level().number()}),
    );
    SavedState {
        state: trainer.state().clone(),
        config: trainer.config().clone(),
        extra,
    }
    .write(dir)?;
    record.write(dir)
}

/// The f32 values of tensor `name` of a shard file.
fn read_tensor(file: &SafeTensors<'_>, name: &str, path: &Path) -> Result<Vec<f32>, TrainError> {
    let view = file
        .tensor(name)
        .map_err(|e| corrupt(path, format!("tensor `{name}`: {e}")))?;
    if view.dtype() != Dtype::F32 {
        return Err(corrupt(path, format!("tensor `{name}` is not f32")));
    }
    Ok(bytemuck::pod_collect_to_vec(view.data()))
}

/// Resumes a sharded checkpoint on this rank of `comm`'s world (of any size) at `level`.
pub fn resume<'c>(
    dir: &Path,
    level: ShardLevel,
    comm: &'c dyn Collective,
    device: &Device,
) -> Result<FsdpTrainer<'c>, TrainError> {
    let SavedState { state, config, .. } = SavedState::read(dir)?;
    let index_path = dir.join(INDEX_FILE);
    let index: ShardIndex =
        serde_json::from_str(&std::fs::read_to_string(&index_path).map_err(io(&index_path))?)
            .map_err(|e| corrupt(&index_path, format!("not a sharded checkpoint: {e}")))?;
    let model_config = LlamaConfig::from_file(dir.join("config.json"))?;

    // Every unit's whole buffer (and moments), from the saved shards in rank order.
    // Mapped, not read: each unit's slices are copied out one unit at a time, so a rank holds
    // its own shard plus one whole unit, whatever the size of the checkpoint.
    let files: Vec<(PathBuf, memmap2::Mmap)> = index
        .files
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: checkpoint files are written once into a directory that is renamed
            // into place complete, and are not modified while a run reads them.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
            Ok::<_, TrainError>((path, map))
        })
        .collect::<Result<_, _>>()?;
    let parsed: Vec<(&Path, SafeTensors<'_>)> = files
        .iter()
        .map(|(p, b)| {
            SafeTensors::deserialize(b)
                .map(|s| (p.as_path(), s))
                .map_err(|e| corrupt(p, e))
        })
        .collect::<Result<_, _>>()?;
    let world = comm.world_size();
    let rank = comm.rank();
    let whole = |name: &str, len: usize| -> Result<Vec<f32>, TrainError> {
        let mut all = Vec::new();
        for (path, file) in &parsed {
            all.extend(read_tensor(file, name, path)?);
        }
        if all.len() < len {
            return Err(corrupt(
                dir,
                format!("`{name}`: {} elements, expected {len}", all.len()),
            ));
        }
        all.truncate(len);
        Ok(all)
    };
    let padded = |mut v: Vec<f32>, n: usize| {
        v.resize(n, 0.0);
        v
    };
    let mut held = Vec::new();
    let mut moments = Vec::new();
    for (u, unit) in index.layout.units.iter().enumerate() {
        let n = unit.padded(world);
        let full = padded(whole(&format!("{}.param", unit.name), unit.len)?, n);
        held.push(FsdpTrainer::keep(level, &index.layout, u, full, comm));
        let m = padded(whole(&format!("{}.exp_avg", unit.name), unit.len)?, n);
        let v = padded(whole(&format!("{}.exp_avg_sq", unit.name), unit.len)?, n);
        moments.push(if level == ShardLevel::DataParallel {
            Moments { m, v }
        } else {
            let r = unit.shard_range(rank, world);
            Moments {
                m: m[r.clone()].to_vec(),
                v: v[r].to_vec(),
            }
        });
    }
    drop(parsed);
    drop(files);
    let data = DataGuard::resumed_from(dir)?;
    let mut trainer = FsdpTrainer::assemble(
        index.layout,
        held,
        moments,
        model_config,
        config,
        level,
        comm,
        device,
    )?;
    trainer.set_progress(state, data);
    Ok(trainer)
}
