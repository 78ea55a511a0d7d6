//! The seam between the run loop and whatever takes optimizer steps: the single-process
//! [`crate::Trainer`] is one implementation, a sharded data-parallel trainer (`pmc-fsdp`)
//! another. Runs are SPMD: every rank runs the same loop over its own `TrainStep`, and the loop
//! lets rank 0 alone write output.
//!
//! Both take their optimizer steps through the one step loop here, [`take_step`]; what differs
//! between them — how gradients are computed and reduced, where the optimizer state lives and
//! how the parameters are updated — is their [`Strategy`].

use std::path::Path;

use burn::prelude::*;
use pmc_model::ScoreRequest;
use serde::Serialize;

use crate::TrainError;
use crate::config::{TrainConfig, TrainState};
use crate::data::{Batch, TrainingData};

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
    /// The log-likelihood of each request's continuation after its context, without
    /// gradients (the same values on every rank): what a [`crate::probe::Probe`] scores.
    fn continuation_logliks(&self, requests: &[ScoreRequest]) -> Result<Vec<f64>, TrainError>;
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

/// What varies between trainers inside one optimizer step; [`take_step`] is the rest.
pub trait Strategy {
    /// A step's gradients as this strategy holds them (burn's by parameter, flat unit buffers,
    /// one rank's shards of them).
    type Grads;

    /// This worker's rank and the number of workers.
    fn rank_and_world(&self) -> (usize, usize) {
        (0, 1)
    }

    /// The gradients of this rank's micro-batches of step `step` (0-based; `first` is the
    /// index of the first of them among the step's micro-batches, for their dropout seeds),
    /// summed over every micro-batch of every rank; and the sum of this rank's losses.
    fn gradients(
        &mut self,
        batches: Vec<Batch>,
        first: usize,
        step: usize,
    ) -> Result<(f64, Self::Grads), TrainError>;

    /// Sums `values` over the ranks (nothing to do for one).
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
        let _ = values;
        Ok(())
    }

    /// This rank's part of the squared L2 norm of the reduced gradients (the ranks' parts add
    /// up to the whole).
    fn squared_norm(&self, grads: &Self::Grads) -> f64;

    /// Multiplies the gradients by `factor`.
    fn scale(&self, grads: &mut Self::Grads, factor: f64);

    /// The optimizer's update at learning rate `lr` for step `time` (1-based), leaving the
    /// parameters where the next step needs them.
    fn update(&mut self, grads: Self::Grads, lr: f64, time: usize) -> Result<(), TrainError>;
}

/// Micro-batches each of `world` ranks computes per step, or an error when they do not split
/// evenly.
pub fn micro_batches_per_rank(config: &TrainConfig, world: usize) -> Result<usize, TrainError> {
    let accumulation = config.accumulation()?;
    if !accumulation.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "{accumulation} micro-batches per step (global batch {} / micro-batch {}) do not split evenly over {world} ranks; make the global batch a multiple of {world} micro-batches",
            config.global_batch, config.micro_batch
        )));
    }
    Ok(accumulation / world)
}

/// The factor `torch.nn.utils.clip_grad_norm_` scales gradients of global norm `norm` by so
/// that it becomes at most `max_norm` (`max_norm / (norm + 1e-6)`); `None` when no scaling is
/// due.
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> Option<f64> {
    let coef = max_norm? / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// One optimizer step over the next global batch of `data`, for every trainer: every rank
/// reads the step's micro-batches in the same order and computes its own consecutive share of
/// them (so the global batch is the same sequences for any world size); the losses are
/// checked, the summed gradients become their mean (the gradient of one batch `accumulation`
/// times larger), the global norm is taken and clipped, and the update made at the schedule's
/// learning rate. `state` advances only when the step succeeds.
pub fn take_step<S: Strategy>(
    strategy: &mut S,
    config: &TrainConfig,
    state: &mut TrainState,
    data: &dyn TrainingData,
    device: &Device,
) -> Result<StepStats, TrainError> {
    let (rank, world) = strategy.rank_and_world();
    let local = micro_batches_per_rank(config, world)?;
    let accumulation = local * world;
    let mut next = state.clone();
    let mut mine = Vec::with_capacity(local);
    for micro in 0..accumulation {
        let (batch, cursor) = data.batch(&next.cursor, config.micro_batch, device)?;
        next.cursor = cursor;
        next.tokens += batch.tokens.dims().iter().product::<usize>() as u64;
        if micro / local == rank {
            mine.push(batch);
        }
    }
    let (local_loss, mut grads) = strategy.gradients(mine, rank * local, state.step)?;
    let mut loss = [local_loss];
    strategy.all_reduce_f64(&mut loss)?;
    let loss = loss[0] / accumulation as f64;
    if !loss.is_finite() {
        return Err(TrainError::NonFinite {
            step: state.step + 1,
            loss,
        });
    }
    if accumulation > 1 {
        strategy.scale(&mut grads, 1.0 / accumulation as f64);
    }
    let mut squares = [strategy.squared_norm(&grads)];
    strategy.all_reduce_f64(&mut squares)?;
    let grad_norm = squares[0].sqrt();
    if let Some(coef) = clip_coefficient(grad_norm, config.max_grad_norm) {
        strategy.scale(&mut grads, coef);
    }
    let lr = config.schedule.lr(state.step);
    strategy.update(grads, lr, state.step + 1)?;
    next.step += 1;
    *state = next;
    Ok(StepStats {
        step: state.step,
        loss,
        grad_norm,
        lr,
    })
}
