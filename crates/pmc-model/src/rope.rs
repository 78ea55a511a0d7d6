//! Rotary position embeddings, computed as transformers computes them (`modeling_rope_utils`):
//! inverse frequencies in f32, angles `position * inv_freq` in f32, and the rotate-half layout
//! where dimension `i` pairs with `i + head_dim / 2`.

use burn::prelude::*;

use crate::config::{LlamaConfig, RopeScaling};

/// RoPE frequencies of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    base: f64,
    scaling: RopeScaling,
    max_position_embeddings: usize,
    /// The frequencies for sequences within the pretraining length.
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Frequencies for `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        let mut rope = Self {
            head_dim: config.head_dim,
            base: config.rope_theta,
            scaling: config.rope_scaling.clone(),
            max_position_embeddings: config.max_position_embeddings,
            inv_freq: Vec::new(),
        };
        rope.inv_freq = rope.compute_inv_freq(config.max_position_embeddings);
        rope
    }

    /// The inverse frequencies used when the longest position in play is `seq_len - 1`.
    ///
    /// Only dynamic NTK scaling depends on the length: like transformers, the base grows once
    /// the sequence outgrows `max_position_embeddings`.
    pub fn inv_freq(&self, seq_len: usize) -> std::borrow::Cow<'_, [f32]> {
        match self.scaling {
            RopeScaling::Dynamic { .. } if seq_len > self.max_position_embeddings => {
                self.compute_inv_freq(seq_len).into()
            }
            _ => self.inv_freq.as_slice().into(),
        }
    }

    /// Whether a forward pass over `seq_len` positions uses other frequencies than one over
    /// fewer positions: true only for dynamic NTK beyond the trained length. A KV cache built
    /// by a shorter pass then differs from what one long pass computes.
    pub fn depends_on_length(&self, seq_len: usize) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { .. })
            && seq_len > self.max_position_embeddings
    }

    fn compute_inv_freq(&self, seq_len: usize) -> Vec<f32> {
        let dim = self.head_dim;
        let base = match self.scaling {
            RopeScaling::Dynamic { factor } => {
                let max_pos = self.max_position_embeddings as f64;
                let seq_len = (seq_len as f64).max(max_pos);
                self.base
                    * ((factor * seq_len / max_pos) - (factor - 1.0))
                        .powf(dim as f64 / (dim as f64 - 2.0))
            }
            _ => self.base,
        };
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in f32.
        let base = base as f32;
        let inv_freq = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / base.powf(i as f32 / dim as f32));
        match self.scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => inv_freq.collect(),
            RopeScaling::Linear { factor } => inv_freq.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let factor = factor as f32;
                let (low, high) = (low_freq_factor as f32, high_freq_factor as f32);
                let old_len = original_max_position_embeddings as f32;
                let low_freq_wavelen = old_len / low;
                let high_freq_wavelen = old_len / high;
                inv_freq
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_len / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// `(cos, sin)` tables of shape `[positions, head_dim]` for positions
    /// `start..start + len`, in the rotate-half layout (`cat(freqs, freqs)`).
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let inv_freq = self.inv_freq(start + len);
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for pos in start..start + len {
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        debug_assert_eq!(cos.len(), len * 2 * half);
        let shape = [len, self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Applies RoPE to `x` of shape `[batch, heads, seq, head_dim]` with tables that broadcast
/// over it (`[1, 1, seq, head_dim]`, or `[batch, 1, 1, head_dim]` for one position per row):
/// `x * cos + rotate_half(x) * sin`, where `rotate_half([a, b]) = [-b, a]`.
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let first = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let second = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone() + rotated * sin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(scaling: serde_json::Value) -> LlamaConfig {
        LlamaConfig::from_json(
            &json!({"vocab_size": 8, "hidden_size": 64, "intermediate_size": 8,
                    "num_hidden_layers": 1, "num_attention_heads": 1,
                    "max_position_embeddings": 16, "rope_theta": 10000.0,
                    "rope_scaling": scaling}),
            std::path::Path::new("c.json"),
        )
        .unwrap()
    }

    #[test]
    fn linear_divides_every_frequency() {
        let plain = Rope::new(&config(serde_json::Value::Null));
        let linear = Rope::new(&config(json!({"rope_type": "linear", "factor": 4.0})));
        for (p, l) in plain.inv_freq(1).iter().zip(linear.inv_freq(1).iter()) {
            assert_eq!(*l, p / 4.0);
        }
        assert_eq!(plain.inv_freq(1)[0], 1.0);
    }

    #[test]
    fn dynamic_only_changes_beyond_the_trained_length() {
        let plain = Rope::new(&config(serde_json::Value::Null));
        let dynamic = Rope::new(&config(json!({"rope_type": "dynamic", "factor": 2.0})));
        assert_eq!(plain.inv_freq(16), dynamic.inv_freq(16));
        let long = dynamic.inv_freq(32);
        assert!(long[5] < plain.inv_freq(32)[5]);
        assert_eq!(long[0], 1.0);
    }
}
