//! The command-line flags of sharded training, shared by every front end that trains
//! (`pretrain`, `finetune`): which engine, how many workers, what they split.

use pmc_train::TrainError;

use crate::{Engine, FsdpError, Sharding};

/// Sharded data-parallel training (pretrain and finetune share these options).
#[derive(clap::Args, Debug, Clone)]
pub struct DistributedArgs {
    /// Workers of a sharded data-parallel run (FSDP). Without it and without --shard-level,
    /// the single-process trainer runs. Under MPI it defaults to the job's size.
    #[arg(long)]
    pub world_size: Option<usize>,
    /// What the workers split (ZeRO levels): 0 nothing (data parallel, gradients
    /// all-reduced), 1 the optimizer state, 2 also the gradients, 3 also the parameters
    /// (FSDP full_shard: one unit per decoder layer, gathered when used). Default 3.
    #[arg(long)]
    pub shard_level: Option<u8>,
    /// threads (workers in this process) or mpi (one process per worker; relaunches under
    /// `mpiexec -n N` when started outside an MPI job; needs `--features mpi`).
    #[arg(long, default_value = "threads")]
    pub engine: String,
    /// Seconds any collective may wait before the job is aborted with a message.
    #[arg(long, default_value_t = 600.0)]
    pub collective_timeout: f64,
}

impl Default for DistributedArgs {
    /// The options' defaults: the single-process trainer.
    fn default() -> Self {
        Self {
            world_size: None,
            shard_level: None,
            engine: "threads".into(),
            collective_timeout: 600.0,
        }
    }
}

impl DistributedArgs {
    /// `None`: train in one process with pmc-train's trainer.
    pub fn sharding(&self) -> Result<Option<Sharding>, FsdpError> {
        let engine: Engine = self
            .engine
            .parse()
            .map_err(|e: String| TrainError::Config(format!("--engine: {e}")))?;
        Ok(Sharding::of(
            self.world_size,
            self.shard_level,
            engine,
            self.collective_timeout,
        )?)
    }

    /// Under `--engine mpi` outside an MPI job: reruns this command under `mpiexec` and exits
    /// with its code. Call before any preparation.
    pub fn relaunch_if_needed(&self) -> Result<(), FsdpError> {
        if let Some(s) = self.sharding()?
            && let Some(code) = crate::launch::relaunch_outside_job(s.engine, s.world_size)?
        {
            std::process::exit(code);
        }
        Ok(())
    }

    /// For run_config.json.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"world_size": self.world_size, "shard_level": self.shard_level,
            "engine": self.engine})
    }
}
