//! # pmc-fsdp
//!
//! FSDP-style sharded data-parallel training of LLaMA models (ZeRO levels 0–3), as a
//! [`pmc_train::TrainStep`] the ordinary run loop drives, over an existing engine of
//! collectives: in-process threads ([`threads`]) or MPI ([`mpi`], feature `mpi`).
//!
//! PMC-LLaMA trained LLaMA-7B with PyTorch FSDP (`full_shard`, wrapped per decoder layer,
//! activation checkpointing) on 32 A100s. Here a model is cut into the same units (the
//! embedding, each decoder layer, the final norm with the head); at level 3 each rank keeps a
//! flat 1/N shard of every unit and gathers a unit only while it computes. The model code is
//! pmc-model's, unchanged: this crate only decides where parameters, gradients and optimizer
//! state live.

pub mod checkpoint;
pub mod collective;
pub mod finetune;
pub mod flags;
pub mod flat;
pub mod job;
pub mod launch;
pub mod measure;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod pretrain;
pub mod step;
pub mod threads;
pub mod trainer;

pub use collective::{Collective, CollectiveError, DEFAULT_TIMEOUT, Traffic};
pub use finetune::{FineTuned, FineTuning, LoraSettings};
pub use flags::DistributedArgs;
pub use flat::Layout;
pub use job::{Job, Outcome, Sharding, Start};
pub use launch::{Engine, Launched, launch};
pub use pretrain::{Beginning, Pretrained, Pretraining, TrainingText};
pub use trainer::{FsdpTrainer, ShardLevel, StateBytes};

/// Errors of sharded training outside a step.
#[derive(Debug, thiserror::Error)]
pub enum FsdpError {
    /// A collective failed.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] pmc_train::TrainError),
}
