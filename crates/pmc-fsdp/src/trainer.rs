//! The sharded trainer: pmc-train's [`TrainStep`] over a world of ranks, with parameters,
//! gradients and optimizer state split as the ZeRO levels say.
//!
//! The model code is unchanged: levels 0–2 run pmc-model's forward and backward on a whole
//! model, level 3 drives its parts (embedding, each decoder layer, final norm and head) one
//! unit at a time, gathering each unit's parameters just before it is used and freeing them
//! after — FSDP `full_shard` with per-layer activation checkpointing, as PMC-LLaMA trained.

use burn::prelude::*;
use pmc_model::rope::Rope;
use pmc_model::units::{self, Embedding, Head};
use pmc_model::{DecoderLayer, Llama, LlamaConfig, RopeTables, ScoreRequest, WeightRef};
use pmc_train::checkpoint::DataGuard;
use pmc_train::data::Batch;
use pmc_train::{TrainConfig, TrainError, TrainState};

use crate::collective::{Collective, CollectiveError};
use crate::flat::{self, Layout, ParamSlot, Unit, add_into, values};
use pmc_train::adamw::{AdamW, Moments};

/// What is sharded across ranks (ZeRO's stages; PyTorch FSDP's `NO_SHARD`, —,
/// `SHARD_GRAD_OP`, `FULL_SHARD`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ShardLevel {
    /// 0: plain data parallelism; gradients all-reduced, every rank holds everything.
    DataParallel,
    /// 1: optimizer state sharded.
    OptimizerState,
    /// 2: optimizer state and gradients sharded (reduce-scatter instead of all-reduce).
    Gradients,
    /// 3: optimizer state, gradients and parameters sharded; units gathered when used.
    Parameters,
}

impl ShardLevel {
    /// The level of `--shard-level N`.
    pub fn from_number(n: u8) -> Option<Self> {
        [
            ShardLevel::DataParallel,
            ShardLevel::OptimizerState,
            ShardLevel::Gradients,
            ShardLevel::Parameters,
        ]
        .get(n as usize)
        .copied()
    }

    /// Its number.
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// A collective failure as the trainer's error type.
pub(crate) fn comm_err(e: CollectiveError) -> TrainError {
    TrainError::Distributed(Box::new(e))
}

/// Bytes of training state one rank holds (f32 everywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateBytes {
    /// Parameters kept between steps.
    pub params: u64,
    /// Gradients accumulated over a step.
    pub grads: u64,
    /// AdamW's two moments.
    pub optimizer: u64,
    /// The largest unit while gathered (level 3 only): its parameters and gradients.
    pub gathered: u64,
}

impl StateBytes {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.params + self.grads + self.optimizer + self.gathered
    }
}

/// One rank of a sharded data-parallel run.
pub struct FsdpTrainer<'c> {
    pub(crate) comm: &'c dyn Collective,
    pub(crate) level: ShardLevel,
    pub(crate) layout: Layout,
    /// The model's architecture.
    pub model_config: LlamaConfig,
    /// Hyper-parameters (the same on every rank).
    pub config: TrainConfig,
    /// Progress (the same on every rank).
    pub state: TrainState,
    pub(crate) data: DataGuard,
    pub(crate) device: Device,
    /// Levels 0–2: the whole model, whose parameters are the unit buffers.
    pub(crate) model: Option<Llama>,
    /// Level 3: this rank's shard of each unit.
    pub(crate) shards: Vec<Vec<f32>>,
    /// AdamW's moments per unit: whole at level 0, this rank's shard above.
    pub(crate) moments: Vec<Moments>,
    pub(crate) adam: AdamW,
    pub(crate) rope: Rope,
}

impl<'c> FsdpTrainer<'c> {
    /// Rank `comm.rank()` of a run starting at step 0 from `model` (rank 0's weights are
    /// broadcast, so every rank starts from the same ones). `device` must be an autodiff
    /// device. LoRA models are refused: sharding is for full training.
    pub fn new(
        model: Llama,
        model_config: LlamaConfig,
        config: TrainConfig,
        level: ShardLevel,
        comm: &'c dyn Collective,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mut adapters = 0;
        model.visit_linears(|_, l| adapters += usize::from(l.lora.is_some()));
        if adapters > 0 {
            return Err(TrainError::Config(format!(
                "the model carries {adapters} LoRA adapters: sharded training is for full training (LoRA trains in one process)"
            )));
        }
        let layout = Layout::of(&model_config);
        let world = comm.world_size();
        let mut flats = flat::model_flats(&model, &layout, world);
        drop(model);
        for f in &mut flats {
            comm.broadcast(f, 0).map_err(comm_err)?;
        }
        let held = flats
            .into_iter()
            .enumerate()
            .map(|(u, f)| Self::keep(level, &layout, u, f, comm))
            .collect();
        let moments = Self::zero_moments(level, &layout, world);
        Self::assemble(
            layout,
            held,
            moments,
            model_config,
            config,
            level,
            comm,
            device,
        )
    }

    /// Rank `comm.rank()` of a run starting at step 0 from [`pmc_model::init_random`]'s
    /// weights for `seed`, made unit by unit without building the model: at level 3 a rank
    /// never holds more than one whole unit, so a model larger than one worker's memory can
    /// start.
    pub fn from_seed(
        model_config: LlamaConfig,
        seed: u64,
        config: TrainConfig,
        level: ShardLevel,
        comm: &'c dyn Collective,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let layout = Layout::of(&model_config);
        let world = comm.world_size();
        let held = (0..layout.units.len())
            .map(|u| Self::keep(level, &layout, u, layout.init_unit(u, seed, world), comm))
            .collect();
        let moments = Self::zero_moments(level, &layout, world);
        Self::assemble(
            layout,
            held,
            moments,
            model_config,
            config,
            level,
            comm,
            device,
        )
    }

    /// What a rank keeps of unit `u`'s whole buffer `full`: all of it, or at level 3 its
    /// shard.
    pub(crate) fn keep(
        level: ShardLevel,
        layout: &Layout,
        u: usize,
        full: Vec<f32>,
        comm: &dyn Collective,
    ) -> Vec<f32> {
        if level == ShardLevel::Parameters {
            full[layout.units[u].shard_range(comm.rank(), comm.world_size())].to_vec()
        } else {
            full
        }
    }

    fn zero_moments(level: ShardLevel, layout: &Layout, world: usize) -> Vec<Moments> {
        layout
            .units
            .iter()
            .map(|u| Moments::zeros(Self::moment_len(level, u, world)))
            .collect()
    }

    fn moment_len(level: ShardLevel, unit: &Unit, world: usize) -> usize {
        if level == ShardLevel::DataParallel {
            unit.padded(world)
        } else {
            unit.shard_len(world)
        }
    }

    /// A trainer from the unit buffers this rank holds at `level` (see [`Self::keep`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        layout: Layout,
        held: Vec<Vec<f32>>,
        moments: Vec<Moments>,
        model_config: LlamaConfig,
        config: TrainConfig,
        level: ShardLevel,
        comm: &'c dyn Collective,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let world = comm.world_size();
        pmc_train::step::micro_batches_per_rank(&config, world)?;
        pmc_train::trainer::check_device(device, config.precision)?;
        let (model, shards) = if level == ShardLevel::Parameters {
            (None, held)
        } else {
            let mut model = flat::build_model(&model_config, &layout, &held, device);
            model.set_precision(config.precision);
            (Some(model), Vec::new())
        };
        let adam = AdamW::of(&config);
        Ok(FsdpTrainer {
            comm,
            level,
            adam,
            rope: Rope::new(&model_config),
            layout,
            model_config,
            config,
            state: TrainState::default(),
            data: DataGuard::default(),
            device: device.clone(),
            model,
            shards,
            moments,
        })
    }

    pub(crate) fn set_progress(&mut self, state: TrainState, data: DataGuard) {
        self.state = state;
        self.data = data;
    }

    /// The sharding level.
    pub fn level(&self) -> ShardLevel {
        self.level
    }

    /// The units and their flat layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Levels 0–2: the whole model.
    pub fn model(&self) -> Option<&Llama> {
        self.model.as_ref()
    }

    /// The collectives of this rank.
    pub fn comm(&self) -> &dyn Collective {
        self.comm
    }

    /// The optimizer moments this rank holds.
    pub(crate) fn moments(&self) -> &[Moments] {
        &self.moments
    }

    /// The bytes of parameters, gradients and optimizer state this rank holds during a step.
    pub fn state_bytes(&self) -> StateBytes {
        let world = self.comm.world_size();
        let full: u64 = self
            .layout
            .units
            .iter()
            .map(|u| u.padded(world) as u64)
            .sum();
        let shard: u64 = self
            .layout
            .units
            .iter()
            .map(|u| u.shard_len(world) as u64)
            .sum();
        let largest = self
            .layout
            .units
            .iter()
            .map(|u| u.padded(world) as u64)
            .max()
            .unwrap_or(0);
        let optimizer: u64 = self.moments.iter().map(|m| 2 * m.m.len() as u64).sum();
        let (params, grads, gathered) = match self.level {
            ShardLevel::DataParallel | ShardLevel::OptimizerState => (full, full, 0),
            ShardLevel::Gradients => (full, shard, 0),
            ShardLevel::Parameters => (shard, shard, 2 * largest),
        };
        StateBytes {
            params: 4 * params,
            grads: 4 * grads,
            optimizer: 4 * optimizer,
            gathered: 4 * gathered,
        }
    }

    /// Whole unit buffers of the current parameters, unit by unit through `each` (level 3
    /// gathers them, one at a time; every rank must call this together).
    pub fn for_each_full_unit(
        &self,
        mut each: impl FnMut(usize, &[f32]) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let world = self.comm.world_size();
        match &self.model {
            Some(model) => {
                // The whole model is here already: its buffers cost no more than it does.
                let flats = flat::model_flats(model, &self.layout, world);
                for (u, f) in flats.iter().enumerate() {
                    each(u, f)?;
                }
            }
            None => {
                for u in 0..self.layout.units.len() {
                    let full = self.gather(u)?;
                    each(u, &full)?;
                }
            }
        }
        Ok(())
    }

    /// This rank's shard of each unit's parameters.
    pub(crate) fn param_shards(&self) -> Vec<Vec<f32>> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        match &self.model {
            Some(model) => flat::model_flats(model, &self.layout, world)
                .into_iter()
                .zip(&self.layout.units)
                .map(|(f, u)| f[u.shard_range(rank, world)].to_vec())
                .collect(),
            None => self.shards.clone(),
        }
    }

    /// Unit `u`'s whole buffer, gathered from every rank's shard.
    fn gather(&self, u: usize) -> Result<Vec<f32>, TrainError> {
        let mut full = vec![0.0; self.layout.units[u].padded(self.comm.world_size())];
        self.comm
            .all_gather(&self.shards[u], &mut full)
            .map_err(comm_err)?;
        Ok(full)
    }

    /// Reduce-scatters a unit's whole gradient `grad` and adds this rank's part to `into`.
    fn reduce_into(&self, grad: &[f32], into: &mut [f32]) -> Result<(), TrainError> {
        let mut part = vec![0.0; into.len()];
        self.comm
            .reduce_scatter_sum(grad, &mut part)
            .map_err(comm_err)?;
        add_into(into, &part);
        Ok(())
    }

    /// Unit `u`'s parameters as the `init` callback of pmc-model's builders.
    fn init_from<'a>(
        &'a self,
        u: usize,
        full: &'a [f32],
        device: &'a Device,
    ) -> impl FnMut(&str, &[usize]) -> Result<Tensor<2>, TrainError> + 'a {
        let unit = &self.layout.units[u];
        move |name, shape| {
            let slot = unit.params.iter().find(|p| p.name == name).ok_or_else(|| {
                TrainError::Config(format!("unit `{}` has no parameter `{name}`", unit.name))
            })?;
            Ok(flat::slot_tensor(full, slot, shape, device))
        }
    }

    fn layer(&self, i: usize, full: &[f32], device: &Device) -> Result<DecoderLayer, TrainError> {
        let mut layer = DecoderLayer::build(
            &self.model_config,
            i,
            &mut self.init_from(1 + i, full, device),
        )?;
        layer.set_precision(self.config.precision);
        Ok(layer)
    }

    /// The embedding unit from its whole buffer `full`.
    fn embedding(&self, full: &[f32], device: &Device) -> Result<Embedding, TrainError> {
        Embedding::build(&self.model_config, &mut self.init_from(0, full, device))
    }

    /// The head unit, gathered (a tied head gathers the embedding unit for its matrix).
    fn head(&self, device: &Device) -> Result<Head, TrainError> {
        let head_u = self.layout.index(units::Unit::Head);
        let full = self.gather(head_u)?;
        let mut head = Head::build(
            &self.model_config,
            &mut self.init_from(head_u, &full, device),
            || self.embedding(&self.gather(0)?, device),
        )?;
        head.set_precision(self.config.precision);
        Ok(head)
    }

    /// A `visit_weights` callback of unit `u` that adds each parameter's gradient in
    /// `grads` (if it has one) into its slot of the unit buffer `into`.
    fn grad_adder<'a>(
        &'a self,
        u: usize,
        grads: &'a burn::tensor::Gradients,
        into: &'a mut [f32],
    ) -> impl FnMut(String, WeightRef<'_>) + 'a {
        let unit = &self.layout.units[u];
        move |name, weight| {
            let slot = unit
                .params
                .iter()
                .find(|s| s.name == name)
                .expect("the layout names every parameter of the unit");
            match weight {
                WeightRef::Matrix(p) => add_param_grad(into, slot, p.val().grad(grads)),
                WeightRef::Vector(p) => add_param_grad(into, slot, p.val().grad(grads)),
            }
        }
    }

    /// Level 3: the loss of one micro-batch, forward unit by unit without a graph (keeping
    /// each unit's input), then backward in reverse, re-gathering each unit, recomputing its
    /// forward under autodiff and back-propagating the incoming gradient; each unit's
    /// gradient is reduce-scattered into `grad_shards` as soon as it is known.
    fn unit_wise_micro_batch(
        &self,
        batch: Batch,
        grad_shards: &mut [Vec<f32>],
    ) -> Result<f64, TrainError> {
        let ad = &self.device;
        let layers = self.model_config.num_hidden_layers;
        let head_u = layers + 1;
        let world = self.comm.world_size();
        let inputs = pmc_model::loss_inputs(batch.tokens.clone());
        let t = inputs.dims()[1];

        // Forward: no graph, each layer's input kept (the activation checkpoints).
        let mut kept = self
            .forward_layers(std::slice::from_ref(&inputs), true)?
            .pop()
            .expect("one batch");

        // Backward, head first.
        let tables = RopeTables::new(&self.rope, 0, t, ad);
        let head = self.head(ad)?;
        let h = kept
            .pop()
            .expect("the head's input")
            .autodiff()
            .require_grad();
        // The head and the loss as the single-process trainer computes them (fused).
        let backward = head.loss_backward(h.clone(), batch.tokens, batch.target_mask);
        let (value, grads) = (backward.loss, backward.grads);
        let mut upstream = h.grad(&grads).expect("the head input's gradient");
        let mut grad = vec![0.0; self.layout.units[head_u].padded(world)];
        head.visit_weights(&mut self.grad_adder(head_u, &grads, &mut grad));
        // The head's matrix: the head unit's own, or the embedding's when tied.
        let mut embed_grad = vec![0.0; self.layout.units[0].padded(world)];
        let (name, owner) = head.weight_owner();
        let owner = self.layout.index(owner);
        let slot = self.layout.slot(owner, name);
        let into = if owner == 0 {
            &mut embed_grad
        } else {
            &mut grad
        };
        add_param_grad(into, slot, backward.head_grad);
        drop((grads, head));
        self.reduce_into(&grad, &mut grad_shards[head_u])?;

        for i in (0..layers).rev() {
            let w = self.gather(1 + i)?;
            let layer = self.layer(i, &w, ad)?;
            let x_in = kept
                .pop()
                .expect("the layer's input")
                .autodiff()
                .require_grad();
            let y = layer.forward(x_in.clone(), &tables, None);
            let grads = (y * upstream.autodiff()).sum().backward();
            upstream = x_in.grad(&grads).expect("the layer input's gradient");
            let mut grad = vec![0.0; self.layout.units[1 + i].padded(world)];
            layer.visit_weights(
                &format!("model.layers.{i}"),
                &mut self.grad_adder(1 + i, &grads, &mut grad),
            );
            drop((grads, layer, w));
            self.reduce_into(&grad, &mut grad_shards[1 + i])?;
        }

        let w = self.gather(0)?;
        let embedding = self.embedding(&w, ad)?;
        let x0 = embedding.forward(inputs);
        let grads = (x0 * upstream.autodiff()).sum().backward();
        embedding.visit_weights(&mut self.grad_adder(0, &grads, &mut embed_grad));
        self.reduce_into(&embed_grad, &mut grad_shards[0])?;
        Ok(value)
    }

    /// Levels 0–2: the loss of one micro-batch on the whole model and its gradient as unit
    /// buffers.
    fn whole_model_micro_batch(&self, batch: Batch) -> (f64, Vec<Vec<f32>>) {
        let model = self
            .model
            .as_ref()
            .expect("levels 0-2 hold the whole model");
        let world = self.comm.world_size();
        let (value, grads) = pmc_train::trainer::micro_batch_gradients(model, batch);
        let mut flats: Vec<Vec<f32>> = self
            .layout
            .units
            .iter()
            .map(|u| vec![0.0; u.padded(world)])
            .collect();
        flat::add_model_grads(model, &grads, &self.layout, &mut flats);
        (value, flats)
    }

    /// Stages 1 and 2: this rank's micro-batches and the reduction of their gradients (the
    /// sum over every micro-batch of the step), as the level says — whole unit buffers at
    /// level 0, this rank's shard of each unit above; and the local sum of losses.
    pub(crate) fn reduced_gradients(
        &self,
        mine: Vec<Batch>,
    ) -> Result<(f64, Vec<Vec<f32>>), TrainError> {
        let world = self.comm.world_size();
        let units = &self.layout.units;
        let shard_zeros = || -> Vec<Vec<f32>> {
            units
                .iter()
                .map(|u| vec![0.0; u.shard_len(world)])
                .collect()
        };
        let mut loss_sum = 0.0;
        match self.level {
            ShardLevel::DataParallel | ShardLevel::OptimizerState => {
                let mut total: Option<Vec<Vec<f32>>> = None;
                for batch in mine {
                    let (value, grads) = self.whole_model_micro_batch(batch);
                    loss_sum += value;
                    match total.as_mut() {
                        None => total = Some(grads),
                        Some(acc) => acc.iter_mut().zip(&grads).for_each(|(a, g)| add_into(a, g)),
                    }
                }
                let mut total = total.expect("at least one micro-batch per rank");
                if self.level == ShardLevel::DataParallel {
                    for g in &mut total {
                        self.comm.all_reduce_sum(g).map_err(comm_err)?;
                    }
                    Ok((loss_sum, total))
                } else {
                    let mut shards = shard_zeros();
                    for (u, g) in total.iter().enumerate() {
                        self.reduce_into(g, &mut shards[u])?;
                    }
                    Ok((loss_sum, shards))
                }
            }
            ShardLevel::Gradients => {
                let mut shards = shard_zeros();
                for batch in mine {
                    let (value, grads) = self.whole_model_micro_batch(batch);
                    loss_sum += value;
                    for (u, g) in grads.iter().enumerate() {
                        self.reduce_into(g, &mut shards[u])?;
                    }
                }
                Ok((loss_sum, shards))
            }
            ShardLevel::Parameters => {
                let mut shards = shard_zeros();
                for batch in mine {
                    loss_sum += self.unit_wise_micro_batch(batch, &mut shards)?;
                }
                Ok((loss_sum, shards))
            }
        }
    }

    /// Level 3: the embedding and every decoder layer applied to each of `inputs` (token ids
    /// `[batch, seq]`) without a graph, gathering each unit once for all of them. Returns,
    /// per input, the last layer's output — preceded, with `keep_inputs`, by every layer's
    /// input (the activation checkpoints a backward pass recomputes from), all on the inner
    /// device.
    fn forward_layers(
        &self,
        inputs: &[Tensor<2, Int>],
        keep_inputs: bool,
    ) -> Result<Vec<Vec<Tensor<3>>>, TrainError> {
        // The checkpoints must be what the backward pass's recompute (and the unsharded
        // trainer) computes: on the autodiff device, with nothing requiring a gradient, so
        // no graph is kept. On the inner device the layers would take the inference
        // arithmetic (flex's fused attention), whose last-bit differences flip bf16
        // roundings of the next products and move the run off the unsharded one.
        let device = if keep_inputs {
            self.device.clone()
        } else {
            self.device.clone().inner()
        };
        let tables: Vec<RopeTables> = inputs
            .iter()
            .map(|t| RopeTables::new(&self.rope, 0, t.dims()[1], &device))
            .collect();
        let w = self.gather(0)?;
        let embedding = self.embedding(&w, &device)?;
        let mut xs: Vec<Tensor<3>> = inputs
            .iter()
            .map(|t| {
                let ids = if keep_inputs {
                    t.clone().autodiff()
                } else {
                    t.clone().inner()
                };
                embedding.forward(ids)
            })
            .collect();
        drop((embedding, w));
        let mut kept: Vec<Vec<Tensor<3>>> = vec![Vec::new(); inputs.len()];
        for i in 0..self.model_config.num_hidden_layers {
            let w = self.gather(1 + i)?;
            let layer = self.layer(i, &w, &device)?;
            xs = xs
                .into_iter()
                .zip(&tables)
                .zip(&mut kept)
                .map(|((x, tables), kept)| {
                    if keep_inputs {
                        kept.push(x.clone().inner());
                    }
                    layer.forward(x, tables, None)
                })
                .collect();
        }
        for (kept, x) in kept.iter_mut().zip(xs) {
            kept.push(x.inner());
        }
        Ok(kept)
    }

    /// Level 3 evaluation: this rank's `windows`, unit by unit (one gather per unit).
    pub(crate) fn unit_wise_nll_sum(&self, windows: &[&Vec<u32>]) -> Result<f64, TrainError> {
        let inner = self.device.clone().inner();
        // Windows of one length go through together.
        let mut groups: std::collections::BTreeMap<usize, Vec<&Vec<u32>>> = Default::default();
        for w in windows {
            groups.entry(w.len()).or_default().push(w);
        }
        let tokens: Vec<Tensor<2, Int>> = groups
            .iter()
            .map(|(&len, ws)| {
                let ids: Vec<i64> = ws
                    .iter()
                    .flat_map(|w| w.iter().map(|&t| t as i64))
                    .collect();
                Tensor::from_data(TensorData::new(ids, [ws.len(), len]), &inner)
            })
            .collect();
        let inputs: Vec<Tensor<2, Int>> = tokens
            .iter()
            .map(|t| pmc_model::loss_inputs(t.clone()))
            .collect();
        let xs = self.forward_layers(&inputs, false)?.into_iter().flatten();
        let head = self.head(&inner)?;
        let mut sum = 0.0;
        for (x, t) in xs.into_iter().zip(tokens) {
            let n = t.dims()[0] as f64;
            let logits = head.logits(x);
            let mean = pmc_model::next_token_loss(logits, t, None).into_scalar::<f32>() as f64;
            sum += mean * n;
        }
        Ok(sum)
    }

    /// Level 3: each of `requests`' continuation log-likelihoods, the context and
    /// continuation run as one sequence through the units (gathered once for all of them;
    /// every rank gathers even with no request of its own, since gathers are collective).
    pub(crate) fn unit_wise_logliks(
        &self,
        requests: &[&ScoreRequest],
    ) -> Result<Vec<f64>, TrainError> {
        let inner = self.device.clone().inner();
        let inputs = requests
            .iter()
            .map(|r| {
                if r.context.is_empty() || r.continuation.is_empty() {
                    return Err(TrainError::Config(
                        "a scored request needs a context and a continuation".into(),
                    ));
                }
                let ids: Vec<i64> = r
                    .context
                    .iter()
                    .chain(&r.continuation[..r.continuation.len() - 1])
                    .map(|&t| t as i64)
                    .collect();
                let n = ids.len();
                Ok(Tensor::from_data(TensorData::new(ids, [1, n]), &inner))
            })
            .collect::<Result<Vec<Tensor<2, Int>>, TrainError>>()?;
        let xs = self.forward_layers(&inputs, false)?.into_iter().flatten();
        let head = self.head(&inner)?;
        xs.zip(requests)
            .map(|(x, r)| {
                let [b, n, h] = x.dims();
                // The positions that predict the continuation: the context's last onwards.
                let x = x.slice([0..b, r.context.len() - 1..n, 0..h]);
                Ok(pmc_model::continuation_loglik(
                    head.logits(x),
                    &r.continuation,
                )?)
            })
            .collect()
    }
}

/// Adds a parameter's gradient (if it has one) into its slot of a unit buffer.
fn add_param_grad<const D: usize>(unit: &mut [f32], slot: &ParamSlot, grad: Option<Tensor<D>>) {
    if let Some(g) = grad {
        add_into(
            &mut unit[slot.offset..slot.offset + slot.numel()],
            &values(g),
        );
    }
}
