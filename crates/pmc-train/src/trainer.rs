//! The training loop: micro-batches accumulated to a global batch, global-norm clipping,
//! AdamW with the cosine schedule, and checkpoints that resume bit for bit.

use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use pmc_model::{Llama, LlamaConfig, Precision, ScoreRequest, WeightRef, causal_lm_gradients};

use crate::TrainError;
use crate::adamw::{AdamW, Moments, NamedMoments};
use crate::checkpoint::{DataGuard, SavedState};
pub use crate::config::{TrainConfig, TrainState};
use crate::data::{Batch, TrainingData};
use crate::step::{StepStats, Strategy, TrainStep, clip_coefficient, dropout_seed, take_step};

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
    adam: AdamW,
    /// AdamW's moments of each trainable parameter, made at its first update.
    moments: NamedMoments,
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

/// Every trainable parameter's name (its HF name; an adapter's `MODULE.lora_A.weight` /
/// `.lora_B.weight`), by id: the keys of the optimizer state.
fn parameter_names(model: &Llama) -> std::collections::HashMap<ParamId, String> {
    let mut out = std::collections::HashMap::new();
    model.visit_weights(|name, w| {
        let id = match w {
            WeightRef::Matrix(p) => p.id,
            WeightRef::Vector(p) => p.id,
        };
        out.insert(id, name);
    });
    model.visit_linears(|module, lin| {
        if let Some(lora) = &lin.lora {
            out.insert(lora.a.id, format!("{module}.lora_A.weight"));
            out.insert(lora.b.id, format!("{module}.lora_B.weight"));
        }
    });
    out
}

/// The values of every parameter of `model`, by id, as f32 (a rank-1 one flat as well).
fn parameter_values(model: &Llama) -> std::collections::HashMap<ParamId, Tensor<2>> {
    let mut out = std::collections::HashMap::new();
    model.visit_weights(|_, w| {
        let (id, value) = match w {
            WeightRef::Matrix(p) => (p.id, p.val()),
            WeightRef::Vector(p) => (p.id, p.val().unsqueeze::<2>()),
        };
        out.insert(id, value);
    });
    model.visit_linears(|_, lin| {
        if let Some(lora) = &lin.lora {
            out.insert(lora.a.id, lora.a.val());
            out.insert(lora.b.id, lora.b.val());
        }
    });
    out
}

/// A tensor's values as f32, flat.
pub fn flat_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// `model` with new values in the parameters they are given for (same ids, same shapes,
/// still trainable); the others stay as they are. The model is not rebuilt: its structure,
/// parameter ids and precision carry over, so the optimizer and the gradients keep finding
/// their parameters.
pub fn with_values(model: Llama, values: std::collections::HashMap<ParamId, Vec<f32>>) -> Llama {
    model.map(&mut SetValues(values))
}

/// [`with_values`]' mapper.
struct SetValues(std::collections::HashMap<ParamId, Vec<f32>>);

impl burn::module::ModuleMapper for SetValues {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let Some(values) = self.0.remove(&param.id) else {
            return param;
        };
        let (id, value, mapper) = param.consume();
        let trainable = value.is_require_grad();
        let updated =
            Tensor::<D>::from_data(TensorData::new(values, value.shape()), &value.device());
        let updated = if trainable {
            updated.require_grad()
        } else {
            updated
        };
        burn::module::Param::from_mapped_value(id, updated, mapper)
    }
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
    /// model loaded from `base` (a path or a model name of `pmc_model::hub`, recorded as the
    /// file it names so that a resume loads the same one), and makes the adapter alone
    /// trainable.
    pub fn attach(
        mut model: Llama,
        config: pmc_peft::AdapterConfig,
        base: &Path,
        seed: u64,
        device: &Device,
    ) -> Result<(Llama, LoraRun), TrainError> {
        let adapter = pmc_peft::Adapter::init(&mut model, config.clone(), seed, device)?;
        let model = pmc_peft::prepare_for_training(model, &adapter)?;
        let file = pmc_model::hub::resolve(base)?;
        let base =
            std::fs::canonicalize(&file).map_err(|e| TrainError::Io(file.to_path_buf(), e))?;
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
            adam: AdamW::of(&config),
            moments: NamedMoments::default(),
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
        let names = parameter_names(&model);
        let numel = parameter_values(&model)
            .into_iter()
            .map(|(id, v)| (names[&id].clone(), v.shape().num_elements()))
            .collect();
        let moments = NamedMoments::read(dir, &numel)?;
        let mut trainer = Self::new(model, model_config, config, device)?;
        trainer.moments = moments;
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

    /// AdamW on each parameter with a gradient, its values taken out of the model and put
    /// back.
    fn update(&mut self, grads: ModelGrads, lr: f64, time: usize) -> Result<(), TrainError> {
        let ModelGrads { mut grads, params } = grads;
        let names = parameter_names(&self.model);
        let mut values = parameter_values(&self.model);
        let work: Vec<(ParamId, Tensor<2>, Tensor<2>, Moments)> = params
            .iter()
            .filter_map(|&(id, rank)| {
                let grad = take_grad(&mut grads, id, rank)?;
                let value = values.remove(&id).expect("every parameter has a value");
                let moments = self.moments.0.remove(&names[&id]);
                let numel = value.shape().num_elements();
                Some((
                    id,
                    value,
                    grad,
                    moments.unwrap_or_else(|| Moments::zeros(numel)),
                ))
            })
            .collect();
        let flat = side_by_side(work, |(id, value, grad, moments)| {
            (id, flat_values(value), flat_values(grad), moments)
        });
        let mut new_values = std::collections::HashMap::with_capacity(flat.len());
        for (id, mut value, grad, mut moments) in flat {
            self.adam
                .step(lr, time as i32, &mut value, &grad, &mut moments);
            self.moments.0.insert(names[&id].clone(), moments);
            new_values.insert(id, value);
        }
        self.model = with_values(self.model.clone(), new_values);
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
    /// the PEFT adapter; `optimizer.safetensors`; `trainer_state.json`; the data record.
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        match &self.lora {
            Some(lora) => {
                pmc_peft::Adapter::from_model(&self.model, lora.config.clone()).write_files(dir)?
            }
            None => pmc_model::save_hf(&self.model, &self.model_config, dir, Default::default())?,
        }
        self.moments.write(dir)?;
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

    fn continuation_logliks(&self, requests: &[ScoreRequest]) -> Result<Vec<f64>, TrainError> {
        let model = self.model.valid();
        let device = self.device.clone().inner();
        Ok(pmc_model::request_logliks(&model, requests, &device)?)
    }
}
