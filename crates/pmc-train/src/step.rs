//! The seam between the run loop and whatever takes optimizer steps: the single-process
//! [`crate::Trainer`] is one implementation, a sharded data-parallel trainer (`pmc-fsdp`)
//! another. Runs are SPMD: every rank runs the same loop over its own `TrainStep`, and the loop
//! lets rank 0 alone write output.

use std::path::Path;

use serde::Serialize;

use crate::TrainError;
use crate::data::TrainingData;
use crate::trainer::{TrainConfig, TrainState};

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepStats {
    /// The step just taken (1-based).
    pub step: usize,
    /// Mean loss over the global batch.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Something that takes optimizer steps, saves and evaluates: what the run loop drives.
///
/// Every method is called on every rank in the same order, so an implementation may
/// communicate inside any of them.
pub trait TrainStep {
    /// One optimizer step over the next global batch of `data` (the same global batch
    /// whatever the world size: each rank computes its share of its micro-batches).
    fn step(&mut self, data: &dyn TrainingData) -> Result<StepStats, TrainError>;
    /// Accepts `data` as the stream to train on, or refuses it when it is not the stream of
    /// the checkpoint this trainer resumed from ([`crate::DataGuard`]). [`TrainStep::step`]
    /// checks too; the run loop calls this first, so that even a run with no step left
    /// refuses other data.
    fn check_data(&mut self, data: &dyn TrainingData) -> Result<(), TrainError>;
    /// Where training stands (the same on every rank).
    fn state(&self) -> &TrainState;
    /// The hyper-parameters.
    fn config(&self) -> &TrainConfig;
    /// Writes this rank's part of a checkpoint (model or adapter, optimizer state, trainer
    /// state, data record) into `dir`, which exists. The [`crate::Checkpointer`] makes it
    /// atomic.
    fn save(&self, dir: &Path) -> Result<(), TrainError>;
    /// Mean next-token loss on `windows`, without gradients (the same value on every rank).
    fn eval_loss(&self, windows: &[Vec<u32>]) -> Result<f64, TrainError>;
    /// This worker's rank.
    fn rank(&self) -> usize {
        0
    }
    /// The number of workers.
    fn world_size(&self) -> usize {
        1
    }
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), TrainError> {
        Ok(())
    }
    /// Whether any rank says `flag` (so that all ranks stop at the same step).
    fn any(&self, flag: bool) -> Result<bool, TrainError> {
        Ok(flag)
    }
}

/// The seed of the dropout masks of micro-batch `micro` (counted over the whole global
/// batch, whichever rank computes it) of step `step`: masks follow from (run seed, step,
/// micro-batch) alone, so a resumed run draws the same ones, and so do micro-batches computed
/// side by side or on other ranks.
pub fn dropout_seed(run_seed: u64, step: usize, micro: usize) -> u64 {
    run_seed ^ ((step as u64) << 16 | micro as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
