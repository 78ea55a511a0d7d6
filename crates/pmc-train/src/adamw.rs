//! AdamW on flat f32 buffers, the one optimizer of every trainer: the single process updates
//! each parameter's values, a sharded rank just its shard of each unit. The arithmetic is
//! burn's and torch's `AdamW` element by element (burn's f32 roundings of the scalars).

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
    /// The hyper-parameters of `config`.
    pub fn of(config: &crate::TrainConfig) -> Self {
        AdamW {
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        }
    }

    /// Step `time` (1-based) at learning rate `lr`: updates `param` and `moments` from `grad`.
    ///
    /// As burn computes it: `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`,
    /// `θ = θ(1 - lr·λ) - lr · (m / (1-β₁ᵗ)) / (√(v / (1-β₂ᵗ)) + ε)`, with the scalars rounded to
    /// f32 where burn rounds them. Large buffers are split over the cores (each element's
    /// arithmetic is the same whichever task does it).
    pub fn step(&self, lr: f64, time: i32, param: &mut [f32], grad: &[f32], moments: &mut Moments) {
        use rayon::prelude::*;
        /// Elements one task updates.
        const CHUNK: usize = 1 << 15;
        let scalars = Scalars::new(self, lr, time);
        let Moments { m, v } = moments;
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| scalars.update(p, g, m, v));
    }
}

/// A step's scalars, rounded as burn rounds them.
#[derive(Clone, Copy)]
struct Scalars {
    beta1: f32,
    beta2: f32,
    f1: f32,
    f2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    decay: bool,
    keep: f32,
    lr: f32,
}

impl Scalars {
    fn new(adam: &AdamW, lr: f64, time: i32) -> Self {
        let decay_rate = lr * adam.weight_decay as f64;
        Scalars {
            beta1: adam.beta1,
            beta2: adam.beta2,
            f1: 1.0 - adam.beta1,
            f2: 1.0 - adam.beta2,
            c1: 1f32 - adam.beta1.powi(time),
            c2: 1f32 - adam.beta2.powi(time),
            eps: adam.eps,
            decay: decay_rate != 0.0,
            keep: (1.0 - decay_rate) as f32,
            lr: lr as f32,
        }
    }

    fn update(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
            *m = *m * self.beta1 + g * self.f1;
            *v = *v * self.beta2 + (g * g) * self.f2;
            let delta = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
            let decayed = if self.decay { *p * self.keep } else { *p };
            *p = decayed - delta * self.lr;
        }
    }
}

/// The moments of a whole model's parameters by name: the single-process trainer's optimizer
/// state, saved as `optimizer.safetensors` (`NAME.exp_avg`, `NAME.exp_avg_sq`, flat f32, as
/// torch names them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedMoments(pub std::collections::BTreeMap<String, Moments>);

/// The file of [`NamedMoments`] in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl NamedMoments {
    /// Writes [`OPTIMIZER_FILE`] into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Result<(), crate::TrainError> {
        use safetensors::{Dtype, tensor::TensorView};
        let path = dir.join(OPTIMIZER_FILE);
        let bad = |e: safetensors::SafeTensorError| {
            crate::TrainError::OptimizerState(path.clone(), e.to_string())
        };
        let mut views = Vec::with_capacity(2 * self.0.len());
        for (name, m) in &self.0 {
            for (suffix, values) in [("exp_avg", &m.m), ("exp_avg_sq", &m.v)] {
                let view =
                    TensorView::new(Dtype::F32, vec![values.len()], bytemuck::cast_slice(values))
                        .map_err(bad)?;
                views.push((format!("{name}.{suffix}"), view));
            }
        }
        let bytes = safetensors::serialize(views, None).map_err(bad)?;
        std::fs::write(&path, bytes).map_err(|e| crate::TrainError::Io(path.clone(), e))
    }

    /// Reads [`OPTIMIZER_FILE`] of checkpoint `dir`; `numel` gives each parameter's element
    /// count by name, and a file naming others, or of other sizes, is refused.
    pub fn read(
        dir: &std::path::Path,
        numel: &std::collections::HashMap<String, usize>,
    ) -> Result<Self, crate::TrainError> {
        let path = dir.join(OPTIMIZER_FILE);
        let bad = |message: String| crate::TrainError::OptimizerState(path.clone(), message);
        let bytes = std::fs::read(&path).map_err(|e| {
            if dir.join("optimizer.bpk").is_file() {
                bad("missing: this checkpoint holds burn's optimizer.bpk, written before the trainers shared one AdamW; it cannot be resumed by this version".into())
            } else {
                crate::TrainError::Io(path.clone(), e)
            }
        })?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut out = std::collections::BTreeMap::<String, Moments>::new();
        for (key, view) in file.tensors() {
            let (name, which) = key
                .rsplit_once('.')
                .filter(|(_, w)| *w == "exp_avg" || *w == "exp_avg_sq")
                .ok_or_else(|| bad(format!("`{key}` is not NAME.exp_avg or NAME.exp_avg_sq")))?;
            let expected = *numel
                .get(name)
                .ok_or_else(|| bad(format!("`{key}`: the model has no parameter `{name}`")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.data().len() != 4 * expected {
                return Err(bad(format!(
                    "`{key}`: {:?} of {} bytes, expected F32 of {expected} elements",
                    view.dtype(),
                    view.data().len()
                )));
            }
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            let moments = out.entry(name.to_string()).or_default();
            if which == "exp_avg" {
                moments.m = values;
            } else {
                moments.v = values;
            }
        }
        if let Some((name, _)) = out.iter().find(|(_, m)| m.m.len() != m.v.len()) {
            return Err(bad(format!("`{name}` lacks one of its two moments")));
        }
        Ok(NamedMoments(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_state_round_trips_and_a_mismatch_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut moments = NamedMoments::default();
        moments.0.insert(
            "model.norm.weight".into(),
            Moments {
                m: vec![0.5, -1.0],
                v: vec![0.25, 1.0],
            },
        );
        moments.write(dir.path()).unwrap();
        let sizes = |n| std::collections::HashMap::from([("model.norm.weight".to_string(), n)]);
        assert_eq!(NamedMoments::read(dir.path(), &sizes(2)).unwrap(), moments);

        let err = NamedMoments::read(dir.path(), &sizes(3))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.norm.weight.exp_avg") && err.contains("optimizer.safetensors"),
            "{err}"
        );
        let err = NamedMoments::read(dir.path(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no parameter `model.norm.weight`"), "{err}");

        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("optimizer.bpk"), b"burn").unwrap();
        let err = NamedMoments::read(old.path(), &sizes(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("optimizer.bpk"), "{err}");
    }
}
