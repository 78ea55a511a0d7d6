//! `LlamaConfig`: the architecture hyper-parameters, read from and written to HF `config.json`.
//!
//! Two layouts exist in the wild and both are read:
//! - legacy (transformers < 5): `rope_theta` and `rope_scaling` at the top level, `torch_dtype`;
//! - transformers ≥ 5: `rope_parameters` (holding `rope_theta`, `rope_type` and the scaling
//!   fields), `dtype`, and an explicit `head_dim`.
//!
//! The legacy layout is written, because every transformers release loads it.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};

/// How RoPE frequencies are scaled for contexts longer than the pretraining length.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"`).
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows with the sequence length once it exceeds
    /// `max_position_embeddings`.
    Dynamic {
        /// The NTK factor.
        factor: f64,
    },
    /// LLaMA 3.1's piecewise scaling of low, medium and high frequencies.
    Llama3 {
        /// The scaling factor of low frequencies.
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are
        /// fully scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are
        /// left alone.
        high_freq_factor: f64,
        /// The pretraining context length.
        original_max_position_embeddings: usize,
    },
}

/// The LLaMA architecture, as transformers' `LlamaConfig` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding and the LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when below `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// The context length the model was trained for.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections carry a bias.
    pub attention_bias: bool,
    /// Whether the MLP projections carry a bias.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (transformers allows a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
    /// The floating-point type the checkpoint declares (`torch_dtype` / `dtype`), when it
    /// declares one.
    pub dtype: Option<WeightDType>,
}

impl LlamaConfig {
    /// Reads an HF `config.json`.
    ///
    /// ```no_run
    /// let config = pmc_model::LlamaConfig::from_file("model/config.json")?;
    /// println!("{} layers", config.num_hidden_layers);
    /// # Ok::<(), pmc_model::ModelError>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value, path)
    }

    /// The names of [`LlamaConfig::preset`].
    pub const PRESETS: [&str; 3] = ["tiny", "small", "7b"];

    /// A model size for training from scratch, with `vocab_size` from its tokenizer:
    /// `tiny` (128 hidden, 4 layers, GQA, tied embeddings: the bundled main job), `small`
    /// (the 33.7 M-parameter reference config of the trainer benchmark with vocab 8192) and
    /// `7b` (LLaMA-7B's shape).
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self> {
        // (hidden, intermediate, layers, heads, kv heads, context)
        let (h, i, l, nh, nkv, ctx) = match name {
            "tiny" => (128, 344, 4, 4, 2, 512),
            "small" => (512, 1376, 8, 8, 8, 2048),
            "7b" => (4096, 11008, 32, 32, 32, 4096),
            other => {
                return Err(ModelError::Config {
                    path: PathBuf::from("<preset>"),
                    key: "preset".into(),
                    message: format!("unknown preset `{other}` ({})", Self::PRESETS.join(", ")),
                });
            }
        };
        Self::from_json(
            &json!({"vocab_size": vocab_size, "hidden_size": h,
                "intermediate_size": i, "num_hidden_layers": l, "num_attention_heads": nh,
                "num_key_value_heads": nkv, "max_position_embeddings": ctx, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "tie_word_embeddings": name == "tiny", "bos_token_id": 0,
                "eos_token_id": 0}),
            Path::new(name),
        )
    }

    /// Reads a config from parsed JSON; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ModelError::config(path, "<root>", "expected a JSON object"))?;
        let fields = Fields { obj, path };

        if let Some(model_type) = obj.get("model_type").and_then(Value::as_str) {
            // Mistral, Qwen2, ... share most keys but differ in details we do not implement.
            if !matches!(model_type, "llama") {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!("`{model_type}` is not supported; only `llama` is"),
                ));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(ModelError::config(
                path,
                "hidden_act",
                format!("`{act}` is not supported; LLaMA uses `silu`"),
            ));
        }

        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        let num_key_value_heads = fields
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 {
            return Err(ModelError::config(
                path,
                "num_attention_heads",
                "must be > 0",
            ));
        }
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match fields.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(ModelError::config(
                        path,
                        "hidden_size",
                        "not divisible by num_attention_heads and no head_dim given",
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(ModelError::config(
                path,
                "head_dim",
                "must be even for RoPE",
            ));
        }
        let max_position_embeddings = fields.opt_usize("max_position_embeddings")?.unwrap_or(2048);

        // transformers ≥ 5 nests everything RoPE in `rope_parameters`; older configs keep
        // `rope_theta` at the top and the scaling in `rope_scaling`.
        let (rope_theta, rope_scaling) = match obj.get("rope_parameters") {
            Some(Value::Object(params)) => {
                let nested = Fields { obj: params, path };
                let theta = nested
                    .opt_f64("rope_theta")?
                    .or(fields.opt_f64("rope_theta")?)
                    .unwrap_or(10000.0);
                (theta, parse_rope_scaling(params, path, "rope_parameters")?)
            }
            Some(Value::Null) | None => {
                let theta = fields.opt_f64("rope_theta")?.unwrap_or(10000.0);
                let scaling = match obj.get("rope_scaling") {
                    Some(Value::Object(s)) => parse_rope_scaling(s, path, "rope_scaling")?,
                    Some(Value::Null) | None => RopeScaling::Default,
                    Some(_) => {
                        return Err(ModelError::config(
                            path,
                            "rope_scaling",
                            "expected an object",
                        ));
                    }
                };
                (theta, scaling)
            }
            Some(_) => {
                return Err(ModelError::config(
                    path,
                    "rope_parameters",
                    "expected an object",
                ));
            }
        };
        if let Some(factor) = obj
            .get("rope_parameters")
            .or(obj.get("rope_scaling"))
            .and_then(|v| v.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            && factor != 1.0
        {
            return Err(ModelError::config(
                path,
                "partial_rotary_factor",
                "partial rotary embeddings are not supported by LLaMA",
            ));
        }

        let dtype = match obj.get("dtype").or(obj.get("torch_dtype")) {
            Some(Value::String(name)) => Some(WeightDType::parse(name).ok_or_else(|| {
                ModelError::config(path, "torch_dtype", format!("unknown dtype `{name}`"))
            })?),
            _ => None,
        };

        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|id| as_token_id(id, path, "eos_token_id"))
                .collect::<Result<_>>()?,
            Some(id) => vec![as_token_id(id, path, "eos_token_id")?],
        };

        Ok(Self {
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: fields.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: fields.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: opt_token_id(obj, path, "bos_token_id")?,
            eos_token_ids,
            pad_token_id: opt_token_id(obj, path, "pad_token_id")?,
            dtype,
        })
    }

    /// The config as HF `config.json` (legacy layout, which every transformers release reads).
    pub fn to_json(&self) -> Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Dynamic { factor } => json!({"rope_type": "dynamic", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.dtype.map(WeightDType::hf_name),
            "use_cache": true,
        })
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters of the model this config describes.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.attention_bias {
                q + 2 * kv + h
            } else {
                0
            };
        let mlp = 3 * h * self.intermediate_size
            + if self.mlp_bias {
                2 * self.intermediate_size + h
            } else {
                0
            };
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + self.num_hidden_layers * layer
    }
}

fn parse_rope_scaling(obj: &Map<String, Value>, path: &Path, section: &str) -> Result<RopeScaling> {
    let fields = Fields { obj, path };
    let key = |k: &str| format!("{section}.{k}");
    let rope_type = obj
        .get("rope_type")
        .or(obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || -> Result<f64> {
        fields
            .opt_f64("factor")?
            .ok_or_else(|| ModelError::config(path, key("factor"), "required for this rope_type"))
    };
    Ok(match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: fields.opt_f64("low_freq_factor")?.ok_or_else(|| {
                ModelError::config(path, key("low_freq_factor"), "required for llama3 rope")
            })?,
            high_freq_factor: fields.opt_f64("high_freq_factor")?.ok_or_else(|| {
                ModelError::config(path, key("high_freq_factor"), "required for llama3 rope")
            })?,
            original_max_position_embeddings: fields
                .opt_usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    ModelError::config(
                        path,
                        key("original_max_position_embeddings"),
                        "required for llama3 rope",
                    )
                })?,
        },
        other => {
            return Err(ModelError::config(
                path,
                key("rope_type"),
                format!(
                    "unknown rope type `{other}` (supported: default, linear, dynamic, llama3)"
                ),
            ));
        }
    })
}

fn as_token_id(value: &Value, path: &Path, key: &str) -> Result<u32> {
    value
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ModelError::config(path, key, format!("expected a token id, got {value}")))
}

fn opt_token_id(obj: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        // Some configs write a list here; the first entry is what transformers uses.
        Some(Value::Array(ids)) => ids.first().map(|v| as_token_id(v, path, key)).transpose(),
        Some(v) => as_token_id(v, path, key).map(Some),
    }
}

/// Typed access to a JSON object's fields with errors naming the key.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| ModelError::config(self.path, key, "missing"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                ModelError::config(
                    self.path,
                    key,
                    format!("expected a non-negative integer, got {v}"),
                )
            }),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                ModelError::config(self.path, key, format!("expected a number, got {v}"))
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                ModelError::config(self.path, key, format!("expected true or false, got {v}"))
            }),
        }
    }
}

/// The floating-point type of weights: how they are held in memory, written, and declared
/// in a checkpoint's `config.json`. Activations are f32 whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDType {
    /// 4 bytes per weight; the default.
    #[default]
    F32,
    /// 2 bytes per weight (bfloat16).
    BF16,
    /// 2 bytes per weight (IEEE half).
    F16,
}

impl WeightDType {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::BF16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::BF16 | Self::F16 => 2,
        }
    }

    /// The name transformers uses (`"float32"`, `"float16"`, `"bfloat16"`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    /// Parses transformers' names, with or without the `torch.` prefix, and the short forms.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim_start_matches("torch.") {
            "float32" | "f32" | "fp32" | "float" => Some(Self::F32),
            "float16" | "f16" | "fp16" | "half" => Some(Self::F16),
            "bfloat16" | "bf16" => Some(Self::BF16),
            _ => None,
        }
    }
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("unknown dtype `{s}` (expected f32, bf16 or f16)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<LlamaConfig> {
        LlamaConfig::from_json(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({"vocab_size": 32, "hidden_size": 16, "intermediate_size": 40,
               "num_hidden_layers": 2, "num_attention_heads": 4, "model_type": "llama"})
    }

    #[test]
    fn legacy_and_v5_layouts_agree() {
        let mut legacy = base();
        legacy["rope_theta"] = json!(500000.0);
        legacy["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        legacy["torch_dtype"] = json!("bfloat16");
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        v5["dtype"] = json!("bfloat16");
        v5["head_dim"] = json!(4);
        let a = parse(legacy).unwrap();
        let b = parse(v5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.num_key_value_heads, 4);
        assert_eq!(a.dtype, Some(WeightDType::BF16));
    }

    #[test]
    fn round_trips_through_json() {
        let mut v = base();
        v["num_key_value_heads"] = json!(2);
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        v["eos_token_id"] = json!([2, 7]);
        v["tie_word_embeddings"] = json!(true);
        let c = parse(v).unwrap();
        assert_eq!(parse(c.to_json()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling.rope_type") && err.contains("yarn"),
            "{err}"
        );

        let mut v = base();
        v.as_object_mut().unwrap().remove("vocab_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("vocab_size"),
            "{err}"
        );

        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("num_key_value_heads")
        );
    }
}
