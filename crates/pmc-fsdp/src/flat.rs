//! FSDP's flat parameters: the model split into units (the embedding, each decoder layer, the
//! final norm with the LM head — PyTorch FSDP's `auto_wrap` on `LlamaDecoderLayer`), each
//! unit's parameters laid end to end in one f32 buffer padded to a multiple of the world
//! size, so that rank `r` owns the `r`-th equal slice.

use std::collections::HashMap;

use burn::optim::GradientsParams;
use burn::prelude::*;
use pmc_model::units;
use pmc_model::{Llama, LlamaConfig, WeightRef};
use serde::{Deserialize, Serialize};

/// One parameter's place in its unit's flat buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSlot {
    /// HF tensor name.
    pub name: String,
    /// Shape in the checkpoint (1-D for norms and biases).
    pub shape: Vec<usize>,
    /// First element in the unit's buffer.
    pub offset: usize,
}

impl ParamSlot {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A unit of sharding: parameters gathered together, just before they are used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// `embed`, `layer.N` or `head`.
    pub name: String,
    /// Its parameters, in checkpoint order.
    pub params: Vec<ParamSlot>,
    /// Elements without padding.
    pub len: usize,
}

impl Unit {
    /// Elements with padding to a multiple of `world`.
    pub fn padded(&self, world: usize) -> usize {
        self.len.div_ceil(world) * world
    }

    /// Elements of one rank's shard.
    pub fn shard_len(&self, world: usize) -> usize {
        self.padded(world) / world
    }

    /// The elements rank `rank` owns.
    pub fn shard_range(&self, rank: usize, world: usize) -> std::ops::Range<usize> {
        let n = self.shard_len(world);
        rank * n..(rank + 1) * n
    }
}

/// The units of a model, in forward order: `embed`, `layer.0` … `layer.{L-1}`, `head`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// The units.
    pub units: Vec<Unit>,
}

impl Layout {
    /// The layout of a model of `config` (adapters are not sharded), computed without
    /// building the model.
    pub fn of(config: &LlamaConfig) -> Self {
        let units = units::Unit::all(config)
            .iter()
            .map(|unit| {
                let mut len = 0;
                let params = unit
                    .parameter_shapes(config)
                    .into_iter()
                    .map(|(name, shape)| {
                        let slot = ParamSlot {
                            name,
                            shape,
                            offset: len,
                        };
                        len += slot.numel();
                        slot
                    })
                    .collect();
                Unit {
                    name: unit.name(),
                    params,
                    len,
                }
            })
            .collect();
        Layout { units }
    }

    /// The index of a model unit among [`Layout::units`] (they are in forward order).
    pub fn index(&self, unit: units::Unit) -> usize {
        match unit {
            units::Unit::Embedding => 0,
            units::Unit::Layer(i) => 1 + i,
            units::Unit::Head => self.units.len() - 1,
        }
    }

    /// The slot of parameter `name` in unit `u` (a name pmc-model gave it).
    pub fn slot(&self, u: usize, name: &str) -> &ParamSlot {
        self.units[u]
            .params
            .iter()
            .find(|p| p.name == name)
            .expect("pmc-model names each parameter of a unit as its layout does")
    }

    /// Unit `u`'s buffer (padded to a multiple of `world`) of [`pmc_model::init_random`]'s
    /// values for `seed`, made without building the model.
    pub fn init_unit(&self, u: usize, seed: u64, world: usize) -> Vec<f32> {
        let unit = &self.units[u];
        let mut flat = vec![0.0; unit.padded(world)];
        for p in &unit.params {
            let values = pmc_model::init_values(&p.name, &p.shape, seed);
            flat[p.offset..p.offset + values.len()].copy_from_slice(&values);
        }
        flat
    }

    /// Parameters in all units.
    pub fn num_parameters(&self) -> usize {
        self.units.iter().map(|u| u.len).sum()
    }

    /// Where each parameter lives: name → (unit, slot).
    pub fn slots(&self) -> HashMap<&str, (usize, &ParamSlot)> {
        self.units
            .iter()
            .enumerate()
            .flat_map(|(u, unit)| unit.params.iter().map(move |p| (p.name.as_str(), (u, p))))
            .collect()
    }
}

pub(crate) use pmc_train::trainer::flat_values as values;

/// The unit buffers (each padded to a multiple of `world`) of `model`'s parameter values.
pub fn model_flats(model: &Llama, layout: &Layout, world: usize) -> Vec<Vec<f32>> {
    let mut flats: Vec<Vec<f32>> = layout
        .units
        .iter()
        .map(|u| vec![0.0; u.padded(world)])
        .collect();
    let slots = layout.slots();
    model.visit_weights(|name, weight| {
        let (u, slot) = slots[name.as_str()];
        let v = match weight {
            WeightRef::Matrix(p) => values(p.val()),
            WeightRef::Vector(p) => values(p.val()),
        };
        flats[u][slot.offset..slot.offset + v.len()].copy_from_slice(&v);
    });
    flats
}

/// The values of `model`'s parameters in the unit buffers `flats` (laid out as
/// [`model_flats`] writes them), by parameter id: what
/// [`with_values`](pmc_train::trainer::with_values) puts back into the model.
pub fn param_values(
    model: &Llama,
    layout: &Layout,
    flats: &[Vec<f32>],
) -> HashMap<burn::module::ParamId, Vec<f32>> {
    let slots = layout.slots();
    let mut out = HashMap::new();
    model.visit_weights(|name, weight| {
        let (u, slot) = slots[name.as_str()];
        let id = match weight {
            WeightRef::Matrix(p) => p.id,
            WeightRef::Vector(p) => p.id,
        };
        out.insert(
            id,
            flats[u][slot.offset..slot.offset + slot.numel()].to_vec(),
        );
    });
    out
}

/// Adds the gradients `grads` of `model`'s parameters into the unit buffers `flats`
/// (a parameter without a gradient contributes nothing).
pub fn add_model_grads(
    model: &Llama,
    grads: &GradientsParams,
    layout: &Layout,
    flats: &mut [Vec<f32>],
) {
    let slots = layout.slots();
    model.visit_weights(|name, weight| {
        let (u, slot) = slots[name.as_str()];
        let g = match weight {
            WeightRef::Matrix(p) => grads.get::<2>(p.id).map(values),
            WeightRef::Vector(p) => grads.get::<1>(p.id).map(values),
        };
        if let Some(g) = g {
            add_into(&mut flats[u][slot.offset..slot.offset + g.len()], &g);
        }
    });
}

/// `acc += x`, element-wise.
pub(crate) fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// The `[rows, cols]` tensor (a 1-D weight as one row) of `slot` in unit buffer `flat`, on
/// `device`: what [`Llama::build`] and the unit builders ask for.
pub(crate) fn slot_tensor(
    flat: &[f32],
    slot: &ParamSlot,
    shape: &[usize],
    device: &Device,
) -> Tensor<2> {
    let data = flat[slot.offset..slot.offset + slot.numel()].to_vec();
    Tensor::from_data(TensorData::new(data, [shape[0], shape[1]]), device)
}

/// A whole model of `config` built from full unit buffers, on `device`.
pub fn build_model(
    config: &LlamaConfig,
    layout: &Layout,
    flats: &[Vec<f32>],
    device: &Device,
) -> Llama {
    let slots = layout.slots();
    Llama::build(config, |name, shape| {
        let (u, slot) = slots[name];
        Ok::<_, std::convert::Infallible>(slot_tensor(&flats[u], slot, shape, device))
    })
    .unwrap_or_else(|never| match never {})
}
