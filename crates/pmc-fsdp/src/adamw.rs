//! AdamW on flat f32 buffers — the arithmetic of burn's `AdamW` (pmc-train's unsharded
//! optimizer) element by element, so that a rank can update just its shard.

use serde::{Deserialize, Serialize};

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

/// The two moments of a buffer of parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// First moment (`exp_avg`).
    pub m: Vec<f32>,
    /// Second moment (`exp_avg_sq`).
    pub v: Vec<f32>,
}

impl Moments {
    /// Zero moments of `n` elements.
    pub fn zeros(n: usize) -> Self {
        Moments {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

impl AdamW {
    /// Step `time` (1-based) at learning rate `lr`: updates `param` and `moments` from `grad`.
    ///
    /// As burn computes it: `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`,
    /// `θ = θ(1 - lr·λ) - lr · (m / (1-β₁ᵗ)) / (√(v / (1-β₂ᵗ)) + ε)`, with the scalars rounded to
    /// f32 where burn rounds them.
    pub fn step(&self, lr: f64, time: i32, param: &mut [f32], grad: &[f32], moments: &mut Moments) {
        let (f1, f2) = (1.0 - self.beta1, 1.0 - self.beta2);
        let c1 = 1f32 - self.beta1.powi(time);
        let c2 = 1f32 - self.beta2.powi(time);
        let decay_rate = lr * self.weight_decay as f64;
        let keep = (1.0 - decay_rate) as f32;
        let lr32 = lr as f32;
        for (((p, &g), m), v) in param
            .iter_mut()
            .zip(grad)
            .zip(moments.m.iter_mut())
            .zip(moments.v.iter_mut())
        {
            *m = *m * self.beta1 + g * f1;
            *v = *v * self.beta2 + (g * g) * f2;
            let delta = (*m / c1) / ((*v / c2).sqrt() + self.eps);
            let decayed = if decay_rate == 0.0 { *p } else { *p * keep };
            *p = decayed - delta * lr32;
        }
    }
}
