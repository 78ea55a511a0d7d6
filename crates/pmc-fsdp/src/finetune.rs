//! A fine-tuning run assembled from its settings: instruction examples → prompt/response
//! token sequences → LoRA adapters or every weight → a [`Job`] (one process, or sharded for
//! full training) → the result saved beside the checkpoints: the adapter in HF PEFT's format
//! (`adapter/`) or the whole model as an HF checkpoint (`model/`; a sharded run's last
//! checkpoint holds the consolidated model). `finetune` and the paper's fine-tuning regimes
//! (`pmc_bench::regimes`) both run through here.

use std::path::{Path, PathBuf};

use pmc_model::burn::prelude::*;
use pmc_model::{LlamaConfig, Precision};
use pmc_peft::TargetModules;
use pmc_train::run::{self, RunOptions, RunSummary};
use pmc_train::{
    Checkpointer, CosineSchedule, Example, LoraRun, Method, SftData, Template, TrainConfig,
    TrainError,
};

use crate::job::{Job, Sharding, Start, choose_lanes, resume_point, with_extra};
use crate::pretrain::say;

/// The adapters of a LoRA run (PEFT's `LoraConfig` fields).
#[derive(Debug, Clone)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Scale numerator (scale = alpha / r, or alpha / √r with rsLoRA).
    pub alpha: f64,
    /// The projections adapted.
    pub targets: TargetModules,
    /// rsLoRA scaling.
    pub rslora: bool,
    /// Dropout on the adapters' input during training.
    pub dropout: f64,
}

impl Default for LoraSettings {
    /// r 8, alpha 16 on LLaMA's seven projections, dropout 0.05.
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            targets: pmc_peft::TargetModules::llama_projections(),
            rslora: false,
            dropout: 0.05,
        }
    }
}

/// Everything a fine-tuning run is configured with.
#[derive(Debug, Clone)]
pub struct FineTuning {
    /// LoRA or full.
    pub method: Method,
    /// The base model: an HF directory or a GGUF file.
    pub base: PathBuf,
    /// The adapters (LoRA only).
    pub lora: LoraSettings,
    /// How an example becomes prompt and response.
    pub template: Template,
    /// Longest example in tokens (longer prompts lose their beginning).
    pub max_len: usize,
    /// Peak learning rate (`None`: 2e-4 for LoRA, 2e-5 for full).
    pub lr: Option<f64>,
    /// Optimizer steps (`None`: one epoch over the examples).
    pub steps: Option<usize>,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Sequences per optimizer step.
    pub global_batch: usize,
    /// Share of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Seeds the adapters, the order of the examples and dropout.
    pub seed: u64,
    /// What the projections multiply in.
    pub precision: Precision,
    /// Micro-batches computed at once (`None`: chosen for the model and this machine).
    pub parallel_micro_batches: Option<usize>,
    /// Recompute activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
    /// The run directory: metrics, checkpoints and the result.
    pub out: PathBuf,
    /// Continue from this checkpoint (or run directory) instead of starting fresh.
    pub resume: Option<PathBuf>,
    /// Steps between loss lines.
    pub log_every: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep: usize,
    /// `None`: one process; otherwise full training sharded.
    pub sharding: Option<Sharding>,
}

impl FineTuning {
    /// The `finetune` command's defaults: PMC-LLaMA's template, 512 tokens, batch 8, warmup
    /// 3 %, no decay, clip 1.0, LoRA r 8 on the seven projections.
    pub fn new(method: Method, base: &Path, out: &Path) -> Self {
        Self {
            method,
            base: base.to_path_buf(),
            lora: LoraSettings::default(),
            template: Template::PmcLlama,
            max_len: 512,
            lr: None,
            steps: None,
            micro_batch: 1,
            global_batch: 8,
            warmup_ratio: 0.03,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
            precision: Precision::F32,
            parallel_micro_batches: None,
            gradient_checkpointing: false,
            out: out.to_path_buf(),
            resume: None,
            log_every: 10,
            checkpoint_every: 50,
            keep: 2,
            sharding: None,
        }
    }
}

/// A finished fine-tuning run (on the process that reports it).
#[derive(Debug)]
pub struct FineTuned {
    /// Held-out losses before and after, steps, tokens, time.
    pub summary: RunSummary,
    /// `adapter/`, `model/`, or (sharded) the last checkpoint.
    pub result: PathBuf,
}

impl FineTuning {
    /// Trains on `examples` (about 5 % are held out for the before/after loss) and saves the
    /// result. `run_config` is recorded in `run_config.json` beside the trainer's config.
    /// `Ok(None)` on MPI ranks other than 0; a job relaunched under `mpiexec` exits with its
    /// code.
    pub fn run(
        &self,
        mut examples: Vec<Example>,
        run_config: serde_json::Value,
    ) -> Result<Option<FineTuned>, TrainError> {
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return Err(TrainError::Config(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.lora.dropout
            )));
        }
        if self.resume.is_none() {
            // Before the base model is loaded: a used run directory is refused at once.
            pmc_train::run_dir::check_unused(&self.out)?;
        }
        let held_out_examples = pmc_train::sft::hold_out(&mut examples)?;
        let device = pmc_train::autodiff_device(self.gradient_checkpointing);
        let (start, lora, tokenizer, train_config) = match &self.resume {
            // The checkpoint carries the tokenizer: the base model is not loaded again.
            Some(path) => {
                let (ckpt, tokenizer) = resume_point(path)?;
                say(format!("resuming {}", ckpt.display()));
                let config = pmc_train::checkpoint::SavedState::read(&ckpt)?.config;
                (Start::Resume(ckpt), None, tokenizer, config)
            }
            None => {
                let (start, lora, tokenizer, config) = self.fresh_start(examples.len(), &device)?;
                (start, lora, tokenizer, config)
            }
        };
        let data = SftData::new(
            &tokenizer,
            &examples,
            self.template,
            self.max_len,
            train_config.seed,
        )?;
        if data.truncated > 0 {
            say(format!(
                "note: {} of {} prompts were cut to fit {} tokens",
                data.truncated,
                examples.len(),
                self.max_len
            ));
        }
        let held = SftData::new(
            &tokenizer,
            &held_out_examples,
            self.template,
            self.max_len,
            0,
        )?;
        let held_out: Vec<Vec<u32>> = (0..held_out_examples.len())
            .map(|i| held.example_ids(i).to_vec())
            .collect();
        say(format!(
            "data: {} examples (longest {} tokens), {} held out; global batch {}",
            examples.len(),
            data.longest(),
            held_out.len(),
            train_config.global_batch
        ));
        let run_dir = start.run_dir(&self.out)?;
        let options = RunOptions {
            steps: train_config.schedule.total_steps,
            log_every: self.log_every,
            eval_every: 0,
            checkpoint_every: self.checkpoint_every,
            max_eval_windows: 16,
            probes: Vec::new(),
            held_out_by_source: Vec::new(),
        };
        let checkpointer = Checkpointer::new(&run_dir, self.keep).with_tokenizer(tokenizer.clone());
        let lora_json = lora.as_ref().map(|l| l.config.to_json());
        let save_config = |config: &TrainConfig, _: &LlamaConfig| {
            let record = serde_json::json!({"train": config, "method": self.method.to_string(),
                "base": self.base, "template": self.template.name(), "lora": lora_json});
            run::save_run_config(&run_dir, &with_extra(record, &run_config))
        };
        let job = Job {
            start,
            lora,
            train_config,
            sharding: self.sharding,
            device,
            data: &data,
            held_out: &held_out,
            options: &options,
            checkpointer: &checkpointer,
        };
        let Some((summary, trainer)) = job.run(save_config)?.finished() else {
            return Ok(None);
        };
        let result = match &trainer {
            None => pmc_train::checkpoint::latest(&run_dir)?.ok_or_else(|| {
                TrainError::NoCheckpoint(run_dir.clone(), "the sharded run wrote none")
            })?,
            Some(trainer) => match &trainer.lora {
                Some(lora) => {
                    let dir = run_dir.join("adapter");
                    pmc_peft::Adapter::from_model(&trainer.model, lora.config.clone())
                        .save(&dir)?;
                    dir
                }
                None => {
                    let dir = run_dir.join("model");
                    pmc_model::save_hf(
                        &trainer.model.valid(),
                        &trainer.model_config,
                        &dir,
                        Default::default(),
                    )?;
                    tokenizer.save(&dir)?;
                    dir
                }
            },
        };
        Ok(Some(FineTuned { summary, result }))
    }

    /// The base model loaded (with adapters attached for LoRA) and the trainer's config for
    /// `examples` training examples.
    fn fresh_start(
        &self,
        examples: usize,
        device: &Device,
    ) -> Result<(Start, Option<LoraRun>, pmc_model::Tokenizer, TrainConfig), TrainError> {
        let loaded = pmc_model::load_model(&self.base, &Default::default(), device)?;
        let tokenizer = loaded.tokenizer.ok_or_else(|| {
            TrainError::Config(format!("{} has no tokenizer", self.base.display()))
        })?;
        let steps = self
            .steps
            .unwrap_or_else(|| examples.div_ceil(self.global_batch));
        let lr = self.lr.unwrap_or(match self.method {
            Method::Lora => 2e-4,
            Method::Full => 2e-5,
        });
        let mut config = TrainConfig {
            schedule: CosineSchedule {
                peak_lr: lr,
                warmup_steps: (steps as f64 * self.warmup_ratio).round() as usize,
                total_steps: steps,
                min_lr_ratio: 0.0,
            },
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            micro_batch: self.micro_batch,
            global_batch: self.global_batch,
            seed: self.seed,
            precision: self.precision,
            ..run::default_train_config(self.max_len)
        };
        let mut model = loaded.model;
        let lora = match self.method {
            Method::Full => None,
            Method::Lora => {
                let settings = &self.lora;
                let mut adapter = pmc_peft::AdapterConfig::new(
                    settings.r,
                    settings.alpha,
                    settings.targets.clone(),
                );
                adapter.use_rslora = settings.rslora;
                adapter.lora_dropout = settings.dropout;
                adapter.base_model_name_or_path = Some(self.base.display().to_string());
                let (with_adapter, run) =
                    LoraRun::attach(model, adapter, &self.base, self.seed, device)?;
                model = with_adapter;
                Some(run)
            }
        };
        let total = loaded.config.num_parameters();
        let trainable = pmc_peft::trainable_parameters(&model);
        // bench-finetune reads this line.
        say(format!(
            "{:?} fine-tuning: {trainable} trainable parameters of {total} ({:.3} %)",
            self.method,
            100.0 * trainable as f64 / total as f64
        ));
        choose_lanes(
            self.sharding,
            self.parallel_micro_batches,
            &loaded.config,
            &mut config,
        );
        let start = Start::Fresh {
            model,
            model_config: loaded.config,
        };
        Ok((start, lora, tokenizer, config))
    }
}
