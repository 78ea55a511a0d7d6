//! The training loop: micro-batches accumulated to a global batch, global-norm clipping,
//! AdamW with the cosine schedule, and checkpoints that resume bit for bit.

use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use pmc_model::{Llama, LlamaConfig, Precision, WeightRef, causal_lm_gradients};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{DataGuard, SavedState};
use crate::data::{Batch, Cursor, TrainingData};
use crate::schedule::CosineSchedule;
use crate::step::{StepStats, Strategy, TrainStep, clip_coefficient, dropout_seed, take_step};

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

    fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
            .init()
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

/// A model, its optimizer and where training stands.
pub struct Trainer {
    /// The model being trained (on an autodiff device).
    pub model: Llama,
    /// The model's architecture.
    pub model_config: LlamaConfig,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// Progress.
    pub state: TrainState,
    /// Set for LoRA fine-tuning: checkpoints then hold the adapter only.
    pub lora: Option<LoraRun>,
    optimizer: ModuleOptimizer,
    device: Device,
    data: DataGuard,
}

/// The id and rank of every parameter, adapters included (frozen ones simply have no
/// gradient).
fn parameters(model: &Llama) -> Vec<(ParamId, usize)> {
    let mut out = Vec::new();
    model.visit_weights(|_, w| {
        out.push(match w {
            WeightRef::Matrix(p) => (p.id, 2),
            WeightRef::Vector(p) => (p.id, 1),
        })
    });
    model.visit_linears(|_, lin| {
        if let Some(lora) = &lin.lora {
            out.extend([(lora.a.id, 2), (lora.b.id, 2)]);
        }
    });
    out
}

/// What a LoRA run's checkpoints hold instead of the whole model: the adapter, and the base
/// model it applies to (recorded so that a resume can load it again).
#[derive(Debug, Clone)]
pub struct LoraRun {
    pub config: pmc_peft::AdapterConfig,
    /// The base model's path (HF directory or GGUF file).
    pub base: PathBuf,
}

impl LoraRun {
    /// Attaches a fresh adapter of `config` (initialised from `seed`) to `model`, the base
    /// model loaded from `base`, and makes the adapter alone trainable.
    pub fn attach(
        mut model: Llama,
        config: pmc_peft::AdapterConfig,
        base: &Path,
        seed: u64,
        device: &Device,
    ) -> Result<(Llama, LoraRun), TrainError> {
        let adapter = pmc_peft::Adapter::init(&mut model, config.clone(), seed, device)?;
        let model = pmc_peft::prepare_for_training(model, &adapter)?;
        let base =
            std::fs::canonicalize(base).map_err(|e| TrainError::Io(base.to_path_buf(), e))?;
        Ok((model, LoraRun { config, base }))
    }
}

/// Removes the gradient of `id`, viewing a rank-1 gradient as one row so one code path
/// serves both ranks; [`put_grad`] puts it back in its own shape.
fn take_grad(grads: &mut GradientsParams, id: ParamId, rank: usize) -> Option<Tensor<2>> {
    match rank {
        2 => grads.remove::<2>(id),
        _ => grads.remove::<1>(id).map(|g| {
            let n = g.dims()[0];
            g.reshape([1, n])
        }),
    }
}

fn put_grad(grads: &mut GradientsParams, id: ParamId, rank: usize, g: Tensor<2>) {
    match rank {
        2 => grads.register(id, g),
        _ => {
            let n = g.dims()[1];
            grads.register(id, g.reshape([n]));
        }
    }
}

/// Replaces every gradient `g` of `params` by `f(g, other)`, where `other` is the same
/// parameter's gradient in `others` (removed from it) when given; the gradients are
/// transformed side by side (see [`side_by_side`]).
fn map_grads(
    grads: &mut GradientsParams,
    mut others: Option<&mut GradientsParams>,
    params: &[(ParamId, usize)],
    f: impl Fn(Tensor<2>, Option<Tensor<2>>) -> Tensor<2> + Sync,
) {
    let taken: Vec<(ParamId, usize, Tensor<2>, Option<Tensor<2>>)> = params
        .iter()
        .filter_map(|&(id, rank)| {
            let other = others.as_mut().and_then(|o| take_grad(o, id, rank));
            take_grad(grads, id, rank).map(|g| (id, rank, g, other))
        })
        .collect();
    let mapped = side_by_side(taken, |(id, rank, g, other)| (id, rank, f(g, other)));
    for (id, rank, g) in mapped {
        put_grad(grads, id, rank, g);
    }
}

/// The gradient of `id` (left in place), a rank-1 one viewed as one row.
fn grad_matrix(grads: &GradientsParams, id: ParamId, rank: usize) -> Option<Tensor<2>> {
    match rank {
        2 => grads.get::<2>(id),
        _ => grads.get::<1>(id).map(|g| g.unsqueeze::<2>()),
    }
}

/// The squared global L2 norm of the gradients of `params` (each matrix's sum of squares in
/// f32, the sum of those in f64).
fn squared_norm(grads: &GradientsParams, params: &[(ParamId, usize)]) -> f64 {
    let matrices: Vec<Tensor<2>> = params
        .iter()
        .filter_map(|&(id, rank)| grad_matrix(grads, id, rank))
        .collect();
    side_by_side(matrices, |g| g.square().sum().into_scalar::<f32>() as f64)
        .into_iter()
        .sum::<f64>()
}

/// Scales all gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does ([`crate::step::clip_coefficient`]). Returns the norm
/// before clipping.
pub fn clip_global_norm(
    grads: &mut GradientsParams,
    params: &[(ParamId, usize)],
    max_norm: Option<f64>,
) -> f64 {
    let norm = squared_norm(grads, params).sqrt();
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        map_grads(grads, None, params, |g, _| g * coef);
    }
    norm
}

/// `f` over `items` in one parallel run per core, results in order. burn's CPU backend runs
/// element-wise work on the calling thread, so independent tensors go faster side by side;
/// each result is the same as computed alone. Items are moved, not shared, so a tensor the
/// closure owns alone can be updated in place.
fn side_by_side<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    in_parallel_runs(items, cores, f)
}

/// `f` over `items` split into at most `runs` consecutive runs, one rayon task each;
/// results in order. Tasks of rayon's pool, not threads of their own: the products inside
/// `f` then split among the pool's workers from where they are, instead of being handed to
/// the pool and waited for (see [`pmc_model::pool`]).
fn in_parallel_runs<T: Send, R: Send>(
    items: Vec<T>,
    runs: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let chunk = items.len().div_ceil(runs.max(1)).max(1);
    let mut parts = Vec::new();
    let mut items = items.into_iter();
    loop {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let f = &f;
    pmc_model::pool::on_pool(|| {
        parts
            .into_par_iter()
            .with_max_len(1)
            .flat_map_iter(|part| part.into_iter().map(f).collect::<Vec<R>>())
            .collect()
    })
}

/// The loss of one micro-batch and its gradients by parameter id (the forward and backward
/// pass every trainer shares; the LM head and the loss fused, so the logits of the whole
/// micro-batch never exist at once).
pub fn micro_batch_gradients(model: &Llama, batch: Batch) -> (f64, GradientsParams) {
    causal_lm_gradients(model, batch.tokens, batch.target_mask)
}

/// [`micro_batch_gradients`] of several micro-batches at once, one thread each, in order.
///
/// Matrix products already use every core, but burn's CPU backend runs the element-wise
/// operations around them on the calling thread; two micro-batches side by side keep both
/// cores busy through those. Each thread gets the model with its parameters as fresh autodiff
/// leaves (same values, same ids), so the threads build separate graphs instead of queueing
/// on one. Every micro-batch computes exactly what it computes alone (its dropout masks come
/// from its own seed), so the result is bit-identical to taking them one by one.
fn concurrent_gradients(
    model: &Llama,
    batches: Vec<Batch>,
    dropout_seeds: &[u64],
) -> Vec<(f64, GradientsParams)> {
    let work: Vec<(Llama, Batch)> = dropout_seeds
        .iter()
        .zip(batches)
        .map(|(&seed, batch)| {
            let mut copy = model.clone().map(&mut FreshLeaves);
            copy.set_dropout_seed(seed);
            (copy, batch)
        })
        .collect();
    let lanes = work.len();
    in_parallel_runs(work, lanes, |(copy, batch)| {
        micro_batch_gradients(&copy, batch)
    })
}

/// Re-creates every trainable parameter as a new autodiff leaf sharing the same storage.
struct FreshLeaves;

impl burn::module::ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let trainable = value.is_require_grad();
        let leaf = value.detach();
        let leaf = if trainable { leaf.require_grad() } else { leaf };
        burn::module::Param::from_mapped_value(id, leaf, mapper)
    }
}

/// Refuses a device training cannot run on: one without autodiff, or without arithmetic in
/// the `precision` asked for (a backend without bf16 computes garbage in it).
pub fn check_device(device: &Device, precision: Precision) -> Result<(), TrainError> {
    if !device.is_autodiff() {
        return Err(TrainError::Config(
            "training needs an autodiff device (Device::autodiff())".into(),
        ));
    }
    if !device.supports_dtype(precision.dtype()) {
        return Err(TrainError::Config(format!(
            "{precision} compute is not supported on {device:?} (no {:?} arithmetic); use f32",
            precision.dtype()
        )));
    }
    Ok(())
}

impl Trainer {
    /// A trainer for `model` (which must live on an autodiff device) starting at step 0,
    /// computing in `config.precision`.
    pub fn new(
        mut model: Llama,
        model_config: LlamaConfig,
        config: TrainConfig,
        device: &Device,
    ) -> Result<Self, TrainError> {
        config.accumulation()?;
        check_device(device, config.precision)?;
        model.set_precision(config.precision);
        Ok(Self {
            optimizer: config.optimizer(),
            model,
            model_config,
            config,
            state: TrainState::default(),
            lora: None,
            device: device.clone(),
            data: DataGuard::default(),
        })
    }

    /// Continues from a checkpoint written by [`crate::Checkpointer::save`] of this trainer.
    /// The first step after it refuses data other than the checkpoint's.
    pub fn resume(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let SavedState {
            state,
            config,
            extra,
        } = SavedState::read(dir)?;
        if extra.contains_key("fsdp") {
            return Err(TrainError::Checkpoint(
                dir.to_path_buf(),
                "a sharded checkpoint (pmc-fsdp): resume it with --shard-level and --world-size"
                    .into(),
            ));
        }
        let data = DataGuard::resumed_from(dir)?;
        // A LoRA checkpoint holds the adapter; the base model comes from where it was.
        let lora_base = extra
            .get("lora_base")
            .and_then(|v| v.as_str())
            .map(PathBuf::from);
        let (model, model_config, lora) = match lora_base {
            Some(base) => {
                let loaded = pmc_model::load_model(&base, &Default::default(), device)?;
                let adapter = pmc_peft::Adapter::read(dir, device)?;
                let model = pmc_peft::prepare_for_training(loaded.model, &adapter)?;
                (
                    model,
                    loaded.config,
                    Some(LoraRun {
                        config: adapter.config,
                        base,
                    }),
                )
            }
            None => {
                let loaded = pmc_model::load_model(dir, &Default::default(), device)?;
                (loaded.model, loaded.config, None)
            }
        };
        let optimizer_path = dir.join("optimizer.bpk");
        let bytes = std::fs::read(&optimizer_path)
            .map_err(|e| TrainError::Io(optimizer_path.clone(), e))?;
        let optimizer = config
            .optimizer()
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::OptimizerState(optimizer_path.clone(), format!("{e:?}")))?;
        let mut trainer = Self::new(model, model_config, config, device)?;
        trainer.optimizer = optimizer;
        trainer.state = state;
        trainer.lora = lora;
        trainer.data = data;
        Ok(trainer)
    }
}

/// A step's gradients in one process: burn's, by parameter, and the parameters they cover.
pub struct ModelGrads {
    grads: GradientsParams,
    params: Vec<(ParamId, usize)>,
}

/// The single process: every micro-batch here, a few side by side ([`TrainConfig::
/// parallel_micro_batches`]), their gradients summed by parameter, and burn's AdamW on the
/// whole model.
impl Strategy for Trainer {
    type Grads = ModelGrads;

    fn gradients(
        &mut self,
        batches: Vec<Batch>,
        first: usize,
        step: usize,
    ) -> Result<(f64, ModelGrads), TrainError> {
        let params = parameters(&self.model);
        let lanes = self
            .config
            .parallel_micro_batches
            .clamp(1, batches.len().max(1));
        let mut total: Option<GradientsParams> = None;
        let mut loss_sum = 0.0;
        let mut micro = first;
        let mut batches = batches.into_iter();
        loop {
            let mut group: Vec<Batch> = batches.by_ref().take(lanes).collect();
            if group.is_empty() {
                break;
            }
            let seeds: Vec<u64> = (micro..micro + group.len())
                .map(|m| dropout_seed(self.config.seed, step, m))
                .collect();
            micro += group.len();
            let results = if group.len() == 1 {
                self.model.set_dropout_seed(seeds[0]);
                let batch = group.pop().expect("one batch");
                vec![micro_batch_gradients(&self.model, batch)]
            } else {
                concurrent_gradients(&self.model, group, &seeds)
            };
            for (value, mut grads) in results {
                loss_sum += value;
                total = Some(match total.take() {
                    None => grads,
                    Some(mut acc) => {
                        map_grads(&mut acc, Some(&mut grads), &params, |a, b| match b {
                            Some(b) => a + b,
                            None => a,
                        });
                        acc
                    }
                });
            }
        }
        let grads = total.expect("at least one micro-batch");
        Ok((loss_sum, ModelGrads { grads, params }))
    }

    fn squared_norm(&self, grads: &ModelGrads) -> f64 {
        squared_norm(&grads.grads, &grads.params)
    }

    fn scale(&self, grads: &mut ModelGrads, factor: f64) {
        map_grads(&mut grads.grads, None, &grads.params, |g, _| g * factor);
    }

    fn update(&mut self, grads: ModelGrads, lr: f64, _time: usize) -> Result<(), TrainError> {
        // burn's optimizer counts its own steps. Modules are reference-counted handles: the
        // clone is cheap.
        self.model = self.optimizer.step(lr, self.model.clone(), grads.grads);
        Ok(())
    }
}

impl TrainStep for Trainer {
    /// One optimizer step over the next global batch of `data` ([`take_step`]).
    fn step(&mut self, data: &dyn TrainingData) -> Result<StepStats, TrainError> {
        self.data.check(data)?;
        let (config, device) = (self.config.clone(), self.device.clone());
        let mut state = self.state.clone();
        let stats = take_step(self, &config, &mut state, data, &device)?;
        self.state = state;
        Ok(stats)
    }

    fn check_data(&mut self, data: &dyn TrainingData) -> Result<(), TrainError> {
        self.data.check(data)
    }

    fn state(&self) -> &TrainState {
        &self.state
    }

    fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model in HF layout (what `cargo xtask score` and transformers load) or, for LoRA,
    /// the PEFT adapter; `optimizer.bpk`; `trainer_state.json`; the data record.
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let io = |e| TrainError::Io(dir.to_path_buf(), e);
        match &self.lora {
            Some(lora) => {
                pmc_peft::Adapter::from_model(&self.model, lora.config.clone()).write_files(dir)?
            }
            None => pmc_model::save_hf(&self.model, &self.model_config, dir, Default::default())?,
        }
        let bytes = self
            .optimizer
            .into_bytes()
            .map_err(|e| TrainError::OptimizerState(dir.to_path_buf(), format!("{e:?}")))?;
        std::fs::write(dir.join("optimizer.bpk"), &bytes[..]).map_err(io)?;
        let mut extra = serde_json::Map::new();
        if let Some(lora) = &self.lora {
            // The base model to load again on resume, and its config for the tokenizer's ids.
            extra.insert("lora_base".into(), serde_json::json!(lora.base));
            extra.insert("base_config".into(), self.model_config.to_json());
        }
        SavedState {
            state: self.state.clone(),
            config: self.config.clone(),
            extra,
        }
        .write(dir)?;
        self.data.record().write(dir)
    }

    fn eval_loss(&self, windows: &[Vec<u32>]) -> Result<f64, TrainError> {
        // Off the autodiff device: evaluation records no graph.
        let model = self.model.valid();
        let device = self.device.clone().inner();
        let mut sum = 0.0;
        for w in windows {
            sum += pmc_model::mean_nll(&model, w, w.len(), &device)?;
        }
        Ok(sum / windows.len().max(1) as f64)
    }
}
