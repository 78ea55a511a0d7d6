//! LoRA adapters in the HF PEFT format.
//!
//! An [`Adapter`] is an `adapter_config.json` and the `lora_A` / `lora_B` matrices of each
//! targeted projection, keyed as PEFT keys them
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `lora_A` `[r, in]`,
//! `lora_B` `[out, r]`). It can be read from and written to a PEFT adapter directory,
//! initialised as PEFT does (A Kaiming-uniform, B zero), attached to a [`Llama`] (its
//! projections then add `scale · x Aᵀ Bᵀ`), merged into the weights and unmerged again.
//!
//! ```no_run
//! use pmc_peft::{load_adapter, merge};
//! # let device = burn::prelude::Device::flex();
//! let mut loaded = pmc_model::load_model("smollm2-hf".as_ref(), &Default::default(), &device)?;
//! load_adapter(&mut loaded.model, "my-adapter".as_ref(), &device)?; // scored with the adapter
//! merge(&mut loaded.model); // folded into the weights, ready for `save_hf`
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use pmc_model::{Linear, Llama, LowRank, WeightDType};
use rand::{Rng, SeedableRng};

pub use config::{AdapterConfig, TargetModules};

/// Errors reading, writing or applying adapters.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("adapter config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Model(#[from] pmc_model::ModelError),
}

/// The matrices of one adapted projection.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in_features]`.
    pub a: Tensor<2>,
    /// `[out_features, r]`.
    pub b: Tensor<2>,
    pub scale: f64,
}

/// A LoRA adapter: its config and the weights of each adapted module (HF module names).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub modules: BTreeMap<String, LoraWeights>,
}

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn peft_key(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.{which}.weight")
}

/// The projections of `model` the config targets, with their `[out, in]` shapes.
fn targeted(
    model: &mut Llama,
    config: &AdapterConfig,
) -> Result<Vec<(String, [usize; 2])>, PeftError> {
    let mut out = Vec::new();
    let mut error = None;
    model.visit_linears_mut(|name, lin| match config.targets(name) {
        Ok(true) => {
            let [o, i] = lin.weight.val().dims();
            out.push((name.to_string(), [o, i]));
        }
        Ok(false) => {}
        Err(e) => error = Some(e),
    });
    if let Some(e) = error {
        return Err(e);
    }
    if out.is_empty() {
        return Err(PeftError::Config(format!(
            "target_modules {:?} match no projection of the model",
            config.target_modules
        )));
    }
    Ok(out)
}

impl Adapter {
    /// A new adapter for `model`, initialised as PEFT does (`init_lora_weights=True`): A from
    /// Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), B zero — so the adapted model
    /// starts equal to the base. `seed` makes A reproducible.
    pub fn init(
        model: &mut Llama,
        config: AdapterConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self, PeftError> {
        let mut modules = BTreeMap::new();
        for (index, (name, [out, inp])) in targeted(model, &config)?.into_iter().enumerate() {
            let (r, scale) = config.rank_and_scale(&name)?;
            let bound = 1.0 / (inp as f32).sqrt();
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let a: Vec<f32> = (0..r * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_data(TensorData::new(a, [r, inp]), device);
            let b = Tensor::zeros([out, r], device);
            modules.insert(name, LoraWeights { a, b, scale });
        }
        Ok(Adapter { config, modules })
    }

    /// Read a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn read(dir: &Path, device: &Device) -> Result<Self, PeftError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| PeftError::Io(config_path.clone(), e))?;
        let config = AdapterConfig::from_json(&text, &config_path.display().to_string())?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() && dir.join("adapter_model.bin").exists() {
            return Err(PeftError::File {
                path: dir.join("adapter_model.bin").display().to_string(),
                message: "pickled adapters are not read; save it with safe_serialization=True"
                    .into(),
            });
        }
        let bytes =
            std::fs::read(&weights_path).map_err(|e| PeftError::Io(weights_path.clone(), e))?;
        let file = |message: String| PeftError::File {
            path: weights_path.display().to_string(),
            message,
        };
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file(e.to_string()))?;
        let mut modules = BTreeMap::new();
        let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
        names.sort();
        for key in &names {
            let Some(rest) = key.strip_prefix("base_model.model.") else {
                return Err(file(format!(
                    "unexpected tensor `{key}` (not under base_model.model.)"
                )));
            };
            let Some(module) = rest.strip_suffix(".lora_A.weight") else {
                if rest.ends_with(".lora_B.weight") {
                    continue; // read with its lora_A
                }
                return Err(file(format!(
                    "tensor `{key}` is not a LoRA A/B matrix (DoRA, embeddings and biases are not supported)"
                )));
            };
            let read = |key: &str| -> Result<Tensor<2>, PeftError> {
                let view = tensors
                    .tensor(key)
                    .map_err(|_| file(format!("`{key}` missing")))?;
                let shape = view.shape();
                if shape.len() != 2 {
                    return Err(file(format!("`{key}` has shape {shape:?}, expected 2-D")));
                }
                let raw = pmc_model::checkpoint::convert_bytes(
                    view.data(),
                    view.dtype(),
                    WeightDType::F32,
                )
                .map_err(|e| file(format!("`{key}`: {e}")))?;
                let values: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok(Tensor::from_data(
                    TensorData::new(values, [shape[0], shape[1]]),
                    device,
                ))
            };
            let a = read(key)?;
            let b = read(&peft_key(module, "lora_B"))?;
            let (r, scale) = config.rank_and_scale(module)?;
            let ([ra, _], [_, rb]) = (a.dims(), b.dims());
            if ra != r || rb != r {
                return Err(file(format!(
                    "`{module}`: lora_A has rank {ra} and lora_B {rb}, the config says r = {r}"
                )));
            }
            modules.insert(module.to_string(), LoraWeights { a, b, scale });
        }
        if let Some(orphan) = names.iter().find(|k| {
            k.strip_suffix(".lora_B.weight")
                .and_then(|m| m.strip_prefix("base_model.model."))
                .is_some_and(|m| !modules.contains_key(m))
        }) {
            return Err(file(format!("`{orphan}` has no lora_A")));
        }
        if modules.is_empty() {
            return Err(file("no LoRA tensors".into()));
        }
        Ok(Adapter { config, modules })
    }

    /// Write the adapter as PEFT does; the directory is replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PeftError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| PeftError::Io(p.clone(), e)
        };
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        self.write_files(&tmp)?;
        Ok(pmc_model::checkpoint::replace_dir(&tmp, dir)?)
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into the existing `dir`
    /// (for a caller that makes the whole directory atomic itself, like a checkpoint).
    pub fn write_files(&self, tmp: &Path) -> Result<(), PeftError> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (module, w) in &self.modules {
            for (which, t) in [("lora_A", &w.a), ("lora_B", &w.b)] {
                let values: Vec<f32> = t.to_data().convert::<f32>().try_to_vec().expect("f32 data");
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                owned.push((peft_key(module, which), t.dims().to_vec(), bytes));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
            .iter()
            .map(|(k, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .expect("consistent shape");
                (k.clone(), view)
            })
            .collect();
        let metadata = Some(std::collections::HashMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )]));
        let weights = tmp.join(WEIGHTS_FILE);
        safetensors::serialize_to_file(views, metadata, &weights).map_err(|e| PeftError::File {
            path: weights.display().to_string(),
            message: e.to_string(),
        })?;
        let config = serde_json::to_string_pretty(&self.config.to_json()).expect("JSON");
        let config_path = tmp.join(CONFIG_FILE);
        std::fs::write(&config_path, config).map_err(|e| PeftError::Io(config_path, e))
    }

    /// The adapter as trained: its config with the current A and B of every module
    /// attached to `model`.
    pub fn from_model(model: &Llama, config: AdapterConfig) -> Self {
        let mut modules = BTreeMap::new();
        model.visit_linears(|name, lin| {
            if let Some(l) = &lin.lora {
                modules.insert(
                    name.to_string(),
                    LoraWeights {
                        a: l.a.val(),
                        b: l.b.val(),
                        scale: l.scale,
                    },
                );
            }
        });
        Adapter { config, modules }
    }

    /// Number of adapter parameters.
    pub fn parameters(&self) -> usize {
        self.modules
            .values()
            .map(|w| w.a.dims().iter().product::<usize>() + w.b.dims().iter().product::<usize>())
            .sum()
    }
}

/// Attach `adapter` to `model` (replacing adapters already there). Every adapter module must
/// exist in the model with matching shapes.
pub fn attach(model: &mut Llama, adapter: &Adapter) -> Result<(), PeftError> {
    let mut found = 0;
    let mut error = None;
    model.visit_linears_mut(|name, lin| {
        let Some(w) = adapter.modules.get(name) else {
            return;
        };
        found += 1;
        let [out, inp] = lin.weight.val().dims();
        let ([_, a_in], [b_out, _]) = (w.a.dims(), w.b.dims());
        if a_in != inp || b_out != out {
            error = Some(PeftError::Config(format!(
                "`{name}`: adapter maps {a_in} → {b_out}, the model's projection {inp} → {out}"
            )));
            return;
        }
        lin.lora = Some(
            LowRank::new(name, w.a.clone(), w.b.clone(), w.scale)
                .with_dropout(adapter.config.lora_dropout),
        );
    });
    if let Some(e) = error {
        return Err(e);
    }
    if found != adapter.modules.len() {
        let mut names = Vec::new();
        model.visit_linears_mut(|name, _| names.push(name.to_string()));
        let missing: Vec<&String> = adapter
            .modules
            .keys()
            .filter(|m| !names.contains(m))
            .take(3)
            .collect();
        return Err(PeftError::Config(format!(
            "adapter modules not in the model: {missing:?}"
        )));
    }
    Ok(())
}

/// Read the adapter in `dir` and attach it to `model` (applied at every forward, unmerged).
pub fn load_adapter(model: &mut Llama, dir: &Path, device: &Device) -> Result<Adapter, PeftError> {
    let adapter = Adapter::read(dir, device)?;
    attach(model, &adapter)?;
    Ok(adapter)
}

/// Loads a model as [`pmc_model::load_model`] does and, when `adapter` is given, attaches the
/// adapter in that directory (applied at every forward, unmerged: the base weights stay as
/// loaded). What `score`, `generate`, `serve` and evaluation load.
pub fn load_model_with_adapter(
    model: &Path,
    adapter: Option<&Path>,
    options: &pmc_model::LoadOptions,
    device: &Device,
) -> Result<pmc_model::LoadedModel, PeftError> {
    let mut loaded = pmc_model::load_model(model, options, device)?;
    if let Some(dir) = adapter {
        let adapter = load_adapter(&mut loaded.model, dir, device)?;
        tracing::info!(
            adapter = %dir.display(),
            modules = adapter.modules.len(),
            "LoRA adapter attached"
        );
    }
    Ok(loaded)
}

/// Freeze the base weights (no gradients, no optimizer state) and attach a trainable adapter.
pub fn prepare_for_training(model: Llama, adapter: &Adapter) -> Result<Llama, PeftError> {
    let mut model = model.no_grad();
    attach(&mut model, adapter)?;
    Ok(model)
}

fn update_weight(lin: &mut Linear, delta: Tensor<2>) {
    lin.weight = lin.weight.clone().map(|w| {
        let dtype = w.dtype();
        (w.cast(delta.dtype()) + delta).cast(dtype)
    });
}

/// Fold every attached adapter into its projection's weight (`W += scale · B A`) and remove
/// it: the model then computes the same as with the adapter, at no extra cost, and
/// `save_hf` writes a plain HF checkpoint.
pub fn merge(model: &mut Llama) {
    model.visit_linears_mut(|_, lin| {
        if let Some(lora) = lin.lora.take() {
            update_weight(lin, lora.delta());
        }
    });
}

/// Undo [`merge`]: subtract the adapter's update from the weights it was merged into.
pub fn unmerge(model: &mut Llama, adapter: &Adapter) {
    model.visit_linears_mut(|name, lin| {
        if let Some(w) = adapter.modules.get(name) {
            let delta = w.b.clone().matmul(w.a.clone()) * w.scale;
            update_weight(lin, delta.neg());
        }
    });
}

/// Parameters that receive gradients (all of them for full fine-tuning; A and B with LoRA).
pub fn trainable_parameters(model: &Llama) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.val().dims().iter().product::<usize>();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}
