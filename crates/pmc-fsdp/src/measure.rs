//! What a sharded step costs: state bytes per rank against the ZeRO formulas, elements
//! communicated per step, tokens per second — what `cargo xtask bench-fsdp` reports.

use std::time::Instant;

use pmc_train::{TrainError, TrainStep, TrainingData};
use serde::Serialize;

use crate::collective::Traffic;
use crate::trainer::{FsdpTrainer, ShardLevel, StateBytes};

/// Bytes per parameter a rank holds at `level` with `world` ranks, by the ZeRO paper's
/// formulas for f32 weights, gradients and AdamW's two moments (level 3 without its one
/// gathered unit).
pub fn expected_bytes_per_param(level: ShardLevel, world: usize) -> f64 {
    let n = world as f64;
    match level {
        ShardLevel::DataParallel => 16.0,
        ShardLevel::OptimizerState => 8.0 + 8.0 / n,
        ShardLevel::Gradients => 4.0 + 12.0 / n,
        ShardLevel::Parameters => 16.0 / n,
    }
}

/// Elements communicated per micro-batch each rank computes, in units of the parameter
/// count Ψ: 2Ψ at levels 0–2 (all-reduce, or reduce-scatter + all-gather), 3Ψ at level 3
/// (two gathers and a reduce-scatter of every unit).
pub fn expected_traffic_per_param(level: ShardLevel) -> f64 {
    match level {
        ShardLevel::Parameters => 3.0,
        _ => 2.0,
    }
}

/// One rank's measurements over some steps.
#[derive(Debug, Clone, Serialize)]
pub struct StepMeasure {
    /// Parameters of the model (Ψ).
    pub params: usize,
    /// State held during a step.
    pub state: StateBytes,
    /// Elements this rank moved per step (collectives of the steps only, no evaluation).
    pub traffic_per_step: Traffic,
    /// Global-batch tokens per second.
    pub tokens_per_s: f64,
    /// Steps measured.
    pub steps: usize,
}

/// Takes one warm-up step, then `steps` timed ones, on every rank.
pub fn measure(
    trainer: &mut FsdpTrainer<'_>,
    data: &dyn TrainingData,
    steps: usize,
) -> Result<StepMeasure, TrainError> {
    trainer.step(data)?;
    trainer.barrier()?;
    let before = trainer.comm().traffic();
    let tokens_before = trainer.state.tokens;
    let started = Instant::now();
    for _ in 0..steps {
        trainer.step(data)?;
    }
    trainer.barrier()?;
    let seconds = started.elapsed().as_secs_f64();
    let after = trainer.comm().traffic();
    let per = |a: u64, b: u64| (a - b) / steps.max(1) as u64;
    Ok(StepMeasure {
        params: trainer.layout().num_parameters(),
        state: trainer.state_bytes(),
        traffic_per_step: Traffic {
            all_reduce: per(after.all_reduce, before.all_reduce),
            reduce_scatter: per(after.reduce_scatter, before.reduce_scatter),
            all_gather: per(after.all_gather, before.all_gather),
        },
        tokens_per_s: (trainer.state.tokens - tokens_before) as f64 / seconds,
        steps,
    })
}
