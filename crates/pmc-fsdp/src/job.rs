//! A training run assembled from its parts, the same way for every front end (`cargo xtask
//! pretrain`/`finetune`, `reproduce` through them, the examples): where it starts (a model, a
//! seeded fresh one, a checkpoint), the LoRA adapter it trains, one process or sharded, the
//! run directory it may use, then the run loop. It lives here because it is the one place that
//! knows both trainers: pmc-train's single-process [`Trainer`] and this crate's
//! [`FsdpTrainer`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::prelude::*;
use pmc_model::{Llama, LlamaConfig, Tokenizer};
use pmc_train::checkpoint::{self, SavedState};
use pmc_train::run::{self, RunOptions, RunSummary};
use pmc_train::run_dir::{self, UsedDir};
use pmc_train::{Checkpointer, LoraRun, TrainConfig, TrainError, Trainer, TrainingData};

use crate::collective::Collective;
use crate::launch::{Engine, Launched, launch};
use crate::trainer::{FsdpTrainer, ShardLevel};

/// Where a run starts. (One value per run: its size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// A model and its config, at step 0.
    Fresh {
        /// The model (on the training device).
        model: Llama,
        /// Its architecture.
        model_config: LlamaConfig,
    },
    /// A fresh model of `model_config` from `seed` (a sharded run makes only its shards).
    Seeded {
        /// The architecture.
        model_config: LlamaConfig,
        /// The initialisation seed.
        seed: u64,
    },
    /// A checkpoint.
    Resume(PathBuf),
}

impl Start {
    /// Where the run writes: a resumed run's own directory, else `out`.
    pub fn run_dir(&self, out: &Path) -> Result<PathBuf, TrainError> {
        match self {
            Start::Resume(ckpt) => pmc_train::run_dir_of(ckpt).ok_or_else(|| {
                TrainError::NoCheckpoint(ckpt.clone(), "not inside a run directory")
            }),
            _ => Ok(out.to_path_buf()),
        }
    }

    fn is_fresh(&self) -> bool {
        !matches!(self, Start::Resume(_))
    }
}

/// The checkpoint `--resume PATH` names (a run directory: its newest complete checkpoint) and
/// the tokenizer saved with it (every checkpoint of `pretrain` and `finetune` carries one,
/// adapter checkpoints included).
pub fn resume_point(path: &Path) -> Result<(PathBuf, Tokenizer), TrainError> {
    let ckpt = checkpoint::resolve(path)?;
    // A model checkpoint has its config.json; an adapter checkpoint records its base model's
    // (or, written before it did, names the base model to read it from).
    let saved = SavedState::read(&ckpt)?.extra;
    let config = match (saved.get("base_config"), saved.get("lora_base")) {
        (Some(config), _) => LlamaConfig::from_json(config, &ckpt)?,
        (None, Some(base)) => {
            let base = PathBuf::from(base.as_str().unwrap_or_default());
            pmc_model::load_model(&base, &Default::default(), &pmc_model::default_device())?.config
        }
        (None, None) => LlamaConfig::from_file(ckpt.join("config.json"))?,
    };
    let tokenizer = Tokenizer::from_dir(&ckpt, config.bos_token_id, &config.eos_token_ids)?;
    Ok((ckpt, tokenizer))
}

/// A sharded run's settings.
#[derive(Debug, Clone, Copy)]
pub struct Sharding {
    /// What the ranks split.
    pub level: ShardLevel,
    /// What moves the bytes.
    pub engine: Engine,
    /// Ranks (under MPI: the job's size when `None`).
    pub world_size: Option<usize>,
    /// How long any collective may wait.
    pub timeout: Duration,
}

impl Sharding {
    /// The sharding that a run's options ask for: `None` (one process, pmc-train's trainer)
    /// without a world size above 1, a level or another engine than threads; the level
    /// defaults to 3. Errors name the option that is wrong.
    pub fn of(
        world_size: Option<usize>,
        level: Option<u8>,
        engine: Engine,
        timeout_s: f64,
    ) -> Result<Option<Sharding>, TrainError> {
        if world_size.is_none_or(|n| n <= 1) && level.is_none() && engine == Engine::Threads {
            return Ok(None);
        }
        let invalid = |message: &str| Err(TrainError::Config(message.into()));
        if world_size == Some(0) {
            return invalid("--world-size must be at least 1");
        }
        let Some(level) = ShardLevel::from_number(level.unwrap_or(3)) else {
            return invalid("--shard-level must be 0, 1, 2 or 3");
        };
        if timeout_s.is_nan() || timeout_s <= 0.0 {
            return invalid("--collective-timeout must be positive");
        }
        Ok(Some(Sharding {
            level,
            engine,
            world_size,
            timeout: Duration::from_secs_f64(timeout_s),
        }))
    }
}

/// Everything a run is made of.
pub struct Job<'a> {
    /// Where it starts.
    pub start: Start,
    /// The adapter a LoRA run trains (its model is `start`'s, with the adapter attached).
    pub lora: Option<LoraRun>,
    /// Hyper-parameters (of a fresh run; a resumed run has its checkpoint's).
    pub train_config: TrainConfig,
    /// `None`: one process, pmc-train's trainer.
    pub sharding: Option<Sharding>,
    /// The autodiff device every rank trains on.
    pub device: Device,
    /// The training stream.
    pub data: &'a dyn TrainingData,
    /// Held-out sequences for perplexity.
    pub held_out: &'a [Vec<u32>],
    /// Steps, logging, evaluation and checkpoint cadence.
    pub options: &'a RunOptions,
    /// Where checkpoints go (its run directory is the run's).
    pub checkpointer: &'a Checkpointer,
}

/// How a run ended on this process.
pub enum Outcome {
    /// The run finished here (the single process, rank 0 of threads, or MPI rank 0): its
    /// summary and, trained in one process, the trainer.
    Finished {
        /// Perplexities, steps, tokens, time.
        summary: RunSummary,
        /// The single-process trainer (its model and adapter), when not sharded.
        trainer: Option<Box<Trainer>>,
    },
    /// An MPI rank other than 0 finished its part (it prints nothing).
    OtherRank,
    /// The command was run again under `mpiexec`, which exited with this code.
    Relaunched(i32),
}

impl Outcome {
    /// The summary (and the single-process trainer) where the run finished here; `None` on
    /// the other MPI ranks; a relaunched job's exit code is passed on by exiting with it.
    pub fn finished(self) -> Option<(RunSummary, Option<Box<Trainer>>)> {
        match self {
            Outcome::Finished { summary, trainer } => Some((summary, trainer)),
            Outcome::OtherRank => None,
            Outcome::Relaunched(code) => std::process::exit(code),
        }
    }
}

/// `record` (a JSON object) with the fields of `extra` (another, from the front end) added:
/// what a run's `run_config.json` holds.
pub(crate) fn with_extra(
    mut record: serde_json::Value,
    extra: &serde_json::Value,
) -> serde_json::Value {
    if let (Some(record), Some(extra)) = (record.as_object_mut(), extra.as_object()) {
        record.extend(extra.clone());
    }
    record
}

/// Micro-batches side by side for the single-process trainer: `requested`, or what
/// `pmc_train::lanes` picks for `model` on this machine (and says why). A sharded run leaves
/// the config as it is: its trainer computes micro-batches one by one.
pub(crate) fn choose_lanes(
    sharding: Option<Sharding>,
    requested: Option<usize>,
    model: &LlamaConfig,
    config: &mut TrainConfig,
) {
    if sharding.is_some() {
        return;
    }
    config.parallel_micro_batches = requested.unwrap_or_else(|| {
        let lanes = pmc_train::lanes::choose(model, config);
        crate::pretrain::say(lanes.reason);
        lanes.count
    });
}

impl Job<'_> {
    /// Runs the loop from `start` with the single-process trainer, or sharded (full training
    /// only). A fresh run refuses a run directory that holds another run (every rank looks
    /// before any writes). `save_config` writes the run's `run_config.json` (on rank 0) once
    /// the trainer's configs are known.
    pub fn run(
        self,
        save_config: impl Fn(&TrainConfig, &LlamaConfig) -> Result<(), TrainError> + Sync,
    ) -> Result<Outcome, TrainError> {
        let Job {
            start,
            lora,
            train_config,
            sharding,
            device,
            data,
            held_out,
            options,
            checkpointer,
        } = self;
        let fresh = start.is_fresh();
        let run_dir = checkpointer.run_dir();
        let Some(sharding) = sharding else {
            if fresh {
                run_dir::claim_fresh(run_dir, UsedDir::Refuse)?;
            }
            let mut trainer = match start {
                Start::Fresh {
                    model,
                    model_config,
                } => {
                    let mut t = Trainer::new(model, model_config, train_config, &device)?;
                    t.lora = lora;
                    t
                }
                Start::Seeded { model_config, seed } => {
                    let model = run::fresh_model(&model_config, seed, &device);
                    Trainer::new(model, model_config, train_config, &device)?
                }
                Start::Resume(ckpt) => Trainer::resume(&ckpt, &device)?,
            };
            save_config(&trainer.config, &trainer.model_config)?;
            let summary = run::run(&mut trainer, data, held_out, options, checkpointer)?;
            return Ok(Outcome::Finished {
                summary,
                trainer: Some(Box::new(trainer)),
            });
        };
        if lora.is_some() {
            return Err(TrainError::Config(
                "sharded training (--world-size/--shard-level/--engine) is for full training; LoRA trains in one process".into(),
            ));
        }
        let rank_run = |comm: &dyn Collective| {
            if fresh {
                let unused = run_dir::check_unused(run_dir);
                comm.barrier().map_err(crate::trainer::comm_err)?;
                unused?;
            }
            let mut trainer = match &start {
                Start::Fresh {
                    model,
                    model_config,
                } => FsdpTrainer::new(
                    model.clone(),
                    model_config.clone(),
                    train_config.clone(),
                    sharding.level,
                    comm,
                    &device,
                )?,
                Start::Seeded { model_config, seed } => FsdpTrainer::from_seed(
                    model_config.clone(),
                    *seed,
                    train_config.clone(),
                    sharding.level,
                    comm,
                    &device,
                )?,
                Start::Resume(ckpt) => {
                    crate::checkpoint::resume(ckpt, sharding.level, comm, &device)?
                }
            };
            if comm.rank() == 0 {
                save_config(&trainer.config, &trainer.model_config)?;
            }
            run::run(&mut trainer, data, held_out, options, checkpointer)
        };
        let launched = launch(
            sharding.engine,
            sharding.world_size,
            sharding.timeout,
            rank_run,
        )
        .map_err(|e| match e {
            crate::FsdpError::Train(e) => e,
            crate::FsdpError::Collective(e) => crate::trainer::comm_err(e),
        })?;
        Ok(match launched {
            Launched::Ran { rank: 0, result } => Outcome::Finished {
                summary: result,
                trainer: None,
            },
            Launched::Ran { .. } => Outcome::OtherRank,
            Launched::Relaunched(code) => Outcome::Relaunched(code),
        })
    }
}
