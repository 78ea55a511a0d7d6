//! # pmc-model
//!
//! A LLaMA causal language model on [burn](https://burn.dev) that computes what HF
//! transformers computes: HF checkpoints (`config.json`, single or sharded safetensors,
//! `tokenizer.json`) in and out, log-likelihood scoring and KV-cache generation.
//!
//! ```no_run
//! use pmc_model::{LoadOptions, load_model};
//!
//! let device = pmc_model::default_device();
//! let loaded = load_model("path/to/hf-model".as_ref(), &LoadOptions::default(), &device)?;
//! let tokenizer = loaded.tokenizer.as_ref().expect("the directory has tokenizer.json");
//! let (context, continuation) = tokenizer.encode_pair("The capital of France is", " Paris")?;
//! let scores = pmc_model::score_continuations(&loaded.model, &context, &[continuation], &device)?;
//! println!("loglik = {}", scores[0].loglik);
//! # Ok::<(), pmc_model::ModelError>(())
//! ```

pub mod allocator;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod loss;
pub mod model;
pub mod pool;
pub mod quant;
pub mod rope;
pub mod score;
pub mod softmax;
pub mod tokenizer;
pub mod units;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorCreationOptions;

pub use burn;
pub use chat::{ChatTemplate, Message};
pub use checkpoint::{SaveOptions, WeightDType, save_hf};
pub use config::{LlamaConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use generate::{GenerationConfig, generate};
pub use gguf::writer::{ExportType, write_gguf};
pub use loss::{
    causal_lm_gradients, causal_lm_loss, loss_inputs, masked_causal_lm_loss, next_token_loss,
};
pub use model::{
    DecoderLayer, KvCache, Linear, Llama, LowRank, Precision, RmsNorm, RopeTables, WeightRef,
};
pub use quant::{QuantKind, WeightFormat};
pub use score::{
    ContextCache, PreparedContext, Score, ScoreRequest, continuation_loglik, mean_nll,
    request_logliks, score_continuations,
};
pub use tokenizer::Tokenizer;

/// 64-bit FNV-1a of `bytes`: stable across runs and platforms, for parameter ids derived from
/// HF names and for fingerprints of training data.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The device computations run on: `flex` (CPU) by default. With the `wgpu` feature,
/// `PMC_DEVICE=wgpu` selects the first wgpu adapter; with `cuda`, `PMC_DEVICE=cuda` the first
/// CUDA GPU. An unknown or unavailable choice panics with a message rather than silently
/// falling back to the CPU.
pub fn default_device() -> Device {
    match std::env::var("PMC_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("flex") | Ok("cpu") => Device::flex(),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        Ok("cuda") => Device::cuda(0),
        Ok(other) => panic!(
            "PMC_DEVICE={other} is not available in this build (built with: flex{}{})",
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" },
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
        ),
    }
}

/// Options of [`load_model`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// How dense weights are held in memory.
    pub dtype: WeightDType,
    /// Hold the matrices in this block format instead (inference only; norms and biases
    /// stay f32).
    pub quantize: Option<QuantKind>,
}

impl From<WeightFormat> for LoadOptions {
    fn from(format: WeightFormat) -> Self {
        match format {
            WeightFormat::Dense(dtype) => Self {
                dtype,
                quantize: None,
            },
            WeightFormat::Quantized(kind) => Self {
                dtype: WeightDType::F32,
                quantize: Some(kind),
            },
        }
    }
}

/// Builds a model from `init(name, shape)` as [`Llama::build`] does, quantizing each matrix
/// as it is read when `options` ask for it (so the dense model never exists whole).
/// `source` names the file in errors.
pub(crate) fn build_model(
    config: &LlamaConfig,
    options: &LoadOptions,
    device: &Device,
    source: &Path,
    mut init: impl FnMut(&str, &[usize]) -> Result<Tensor<2>>,
) -> Result<Llama> {
    let Some(kind) = options.quantize else {
        return Llama::build(config, init);
    };
    if device.is_autodiff() {
        return Err(ModelError::checkpoint(
            source,
            format!(
                "{} weights are for inference; training needs dense weights",
                kind.name()
            ),
        ));
    }
    let mut quantizer = quant::Quantizer::new(kind);
    let mut model = Llama::build(config, |name, shape| {
        let tensor = init(name, shape)?;
        quantizer.intercept(name, tensor).map_err(|e| {
            ModelError::tensor(source, name, format!("cannot be {}: {e}", kind.name()))
        })
    })?;
    let weights = quantizer.finish();
    tracing::info!(
        format = kind.name(),
        mib = weights.size_bytes() as f64 / (1 << 20) as f64,
        "weights quantized"
    );
    model.attach_quantized(weights);
    Ok(model)
}

/// A model with its config and, when the checkpoint has one, its tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    /// The architecture.
    pub config: LlamaConfig,
    /// The weights.
    pub model: Llama,
    /// The tokenizer; `None` when the directory has no `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// Where the model came from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// The tokenizer, or an error naming the model for commands that need one.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{} has no tokenizer (no tokenizer.json beside config.json, no tokenizer in the GGUF metadata)",
                self.source.display()
            ))
        })
    }
}

/// Loads a model: an HF directory (`config.json`, safetensors weights, optional
/// `tokenizer.json`) or a llama.cpp `.gguf` file (weights dequantised, tokenizer rebuilt from
/// its metadata), or a model name of [`hub::known_names`] (fetched into the cache once).
pub fn load_model(path: &Path, options: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    // A model name (`smollm2-135m`) is fetched into the cache once.
    let resolved = hub::resolve(path)?;
    let path = resolved.as_path();
    if path.is_file() {
        return load_gguf(path, options, device);
    }
    let config_path = path.join("config.json");
    if !config_path.exists() {
        return Err(ModelError::checkpoint(
            path,
            "no config.json in this directory",
        ));
    }
    let config = LlamaConfig::from_file(&config_path)?;
    let started = std::time::Instant::now();
    let model = checkpoint::load_safetensors(path, &config, options, device)?;
    tracing::info!(
        path = %path.display(),
        params = config.num_parameters(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    let tokenizer = if path.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(
            path,
            config.bos_token_id,
            &config.eos_token_ids,
        )?)
    } else {
        None
    };
    Ok(LoadedModel {
        config,
        model,
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// Loads a llama.cpp GGUF file: config and tokenizer from its metadata, weights dequantised
/// to f32 one tensor at a time, Q/K rows put back in HF order, then held as `options.dtype`.
pub fn load_gguf(path: &Path, options: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    let started = std::time::Instant::now();
    let file = gguf::GgufFile::open(path)?;
    let config = file.llama_config()?;
    let tokenizer = gguf::tokenizer::tokenizer_from_gguf(&file)?;
    let target = options.dtype;
    let model = build_model(&config, options, device, path, |name, shape| {
        let gguf_name = gguf::gguf_name(name)
            .ok_or_else(|| ModelError::tensor(path, name, "no GGUF equivalent"))?;
        let info = file
            .tensor(&gguf_name)
            .ok_or_else(|| ModelError::tensor(path, &gguf_name, "missing from the GGUF file"))?;
        let numel: usize = shape.iter().product();
        let file_shape = info.shape();
        if info.num_elements() != numel || (file_shape.len() == 2 && file_shape != shape) {
            return Err(ModelError::tensor(
                path,
                &gguf_name,
                format!("shape {file_shape:?}, but the metadata implies {shape:?}"),
            ));
        }
        let mut values = file.dequantize(info)?;
        let heads = if name.contains("self_attn.q_proj") {
            Some(config.num_attention_heads)
        } else if name.contains("self_attn.k_proj") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            // Biases of Q and K (built as one row) are permuted as rows of one value.
            let row_len = if name.ends_with(".bias") { 1 } else { shape[1] };
            values = gguf::unpermute_rows(&values, heads, row_len);
        }
        // f32 values become the tensor as they are; other dtypes are narrowed from them.
        let data = if target == WeightDType::F32 {
            TensorData::new(values, shape.to_vec())
        } else {
            let bytes = checkpoint::convert_bytes(
                bytemuck::cast_slice(&values),
                safetensors::Dtype::F32,
                target,
            )
            .map_err(|m| ModelError::tensor(path, &gguf_name, m))?;
            TensorData::from_bytes_vec(bytes, shape.to_vec(), target.dtype())
        };
        Ok(Tensor::from_data(
            data,
            TensorCreationOptions::new(device.clone()).with_dtype(target.dtype()),
        ))
    })?;
    tracing::info!(
        path = %path.display(),
        params = config.num_parameters(),
        seconds = started.elapsed().as_secs_f64(),
        "GGUF model loaded"
    );
    Ok(LoadedModel {
        config,
        model,
        tokenizer: Some(tokenizer),
        source: path.to_path_buf(),
    })
}

/// Quantizes a model built in memory (random or trained weights) into `kind`, matrix by
/// matrix; the dense matrices are dropped. For checkpoints, ask [`load_model`] instead
/// ([`LoadOptions::quantize`]): it never holds the dense model.
pub fn quantize_model(model: Llama, config: &LlamaConfig, kind: QuantKind) -> Result<Llama> {
    let mut weights = std::collections::HashMap::new();
    model.visit_weights(|name, weight| {
        let value = match weight {
            WeightRef::Matrix(p) => p.val(),
            WeightRef::Vector(p) => {
                let n = p.dims()[0];
                p.val().reshape([1, n])
            }
        };
        weights.insert(name, value);
    });
    let device = model.embed_tokens.val().device();
    drop(model);
    let options = LoadOptions {
        dtype: WeightDType::F32,
        quantize: Some(kind),
    };
    build_model(
        config,
        &options,
        &device,
        Path::new("<in memory>"),
        |name, _| {
            let name = if name == "lm_head.weight" && config.tie_word_embeddings {
                "model.embed_tokens.weight"
            } else {
                name
            };
            weights
                .remove(name)
                .ok_or_else(|| ModelError::tensor("<in memory>", name, "missing"))
        },
    )
}

/// A model with random weights: N(0, 0.02²) matrices and unit norms, as transformers
/// initialises LLaMA. Each tensor draws from its own generator seeded by `seed` and its name
/// ([`init_values`]), so the weights depend on nothing else (not on the backend, not on other
/// threads, not on which part of the model is built first).
pub fn init_random(config: &LlamaConfig, dtype: WeightDType, seed: u64, device: &Device) -> Llama {
    let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype.dtype());
    let built: std::result::Result<Llama, std::convert::Infallible> =
        Llama::build(config, |name, shape| {
            Ok(Tensor::from_data(
                TensorData::new(init_values(name, shape, seed), [shape[0], shape[1]]),
                options.clone(),
            ))
        });
    match built {
        Ok(model) => model,
    }
}

/// The initial values of tensor `name` (`shape` elements) of [`init_random`]: ones for norms,
/// zeros for biases, N(0, 0.02²) from a generator seeded by `seed` and the name otherwise —
/// for trainers that build a model one part at a time (a sharded trainer keeps only its
/// slice).
pub fn init_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let n: usize = shape.iter().product();
    if name.ends_with("norm.weight") {
        return vec![1.0; n];
    }
    if name.ends_with(".bias") {
        return vec![0.0; n];
    }
    let name_hash = name.bytes().fold(seed, |h, b| h.rotate_left(5) ^ b as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(name_hash);
    // Box–Muller: two uniforms give two independent normals.
    (0..n.div_ceil(2))
        .flat_map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt() * 0.02;
            let t = 2.0 * std::f64::consts::PI * u2;
            [(r * t.cos()) as f32, (r * t.sin()) as f32]
        })
        .take(n)
        .collect()
}
