//! What a training run is configured with (hyper-parameters) and where it stands; saved with
//! every checkpoint.

use pmc_model::Precision;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::Cursor;
use crate::schedule::CosineSchedule;

/// Optimisation hyper-parameters (PMC-LLaMA: AdamW, lr 2e-5, global batch 128, context 512).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Learning-rate schedule.
    pub schedule: CosineSchedule,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Sequences per optimizer step (a multiple of `micro_batch`).
    pub global_batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// What the projections multiply in: f32, or bf16 with f32 master weights (mixed
    /// precision). Checkpoints from before the option train in f32.
    #[serde(default)]
    pub precision: Precision,
    /// Micro-batches computed at once, each on its own thread (a speed and memory knob: the
    /// result is bit-identical for any value). 1 keeps one micro-batch's activations in memory.
    #[serde(default = "one")]
    pub parallel_micro_batches: usize,
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// Micro-batches per optimizer step.
    pub fn accumulation(&self) -> Result<usize, TrainError> {
        if self.micro_batch == 0 || !self.global_batch.is_multiple_of(self.micro_batch) {
            return Err(TrainError::Config(format!(
                "global batch {} is not a multiple of the micro-batch {}",
                self.global_batch, self.micro_batch
            )));
        }
        Ok(self.global_batch / self.micro_batch)
    }
}

/// Where training stands; saved with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Tokens consumed.
    pub tokens: u64,
    /// Position in the data stream.
    pub cursor: Cursor,
}

/// How a model is fine-tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Low-rank adapters on the chosen projections; the base stays frozen.
    Lora,
    /// Every weight trained.
    Full,
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lora" => Ok(Method::Lora),
            "full" => Ok(Method::Full),
            other => Err(format!("unknown method {other:?}: lora or full")),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Lora => "lora",
            Method::Full => "full",
        })
    }
}

/// The autodiff device training runs on (the default device), with gradient checkpointing
/// when asked: activations are then recomputed in the backward pass instead of kept.
pub fn autodiff_device(gradient_checkpointing: bool) -> pmc_model::burn::prelude::Device {
    let device = pmc_model::default_device().autodiff();
    if gradient_checkpointing {
        device.gradient_checkpointing()
    } else {
        device
    }
}
