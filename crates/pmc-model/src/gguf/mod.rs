//! llama.cpp's GGUF files (v2 and v3): metadata, tensor infos, dequantisation, the LLaMA
//! config and the tokenizer they carry.
//!
//! Layout: `"GGUF"`, version, tensor count, metadata count, the metadata key/values, the
//! tensor infos (name, dims with the fastest-varying first, ggml type, offset), then the
//! tensor data, which starts at the next multiple of `general.alignment` (default 32).

pub mod dequant;
pub mod tokenizer;
pub mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
pub use dequant::GgmlType;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// `float32` or `float64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// A homogeneous array.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::UInt(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::UInt(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first (ggml's `ne`): a `[rows, cols]` matrix is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// The storage type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// The shape in row-major order (as torch and safetensors write it).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: HashMap<String, MetaValue>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(ModelError::checkpoint(
                self.path,
                format!(
                    "truncated GGUF file: {what} runs past the end at byte {}",
                    self.pos
                ),
            )),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        // A length beyond the file is corruption, not a reason to allocate.
        if n > self.bytes.len() as u64 {
            return Err(ModelError::checkpoint(
                self.path,
                format!("corrupt GGUF file: {what} claims length {n}, larger than the file"),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ModelError::checkpoint(self.path, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str) -> Result<MetaValue> {
        let what = format!("metadata `{key}`");
        Ok(match type_id {
            0 => MetaValue::UInt(self.u8(&what)? as u64),
            1 => MetaValue::Int(self.u8(&what)? as i8 as i64),
            2 => MetaValue::UInt(self.u16(&what)? as u64),
            3 => MetaValue::Int(self.u16(&what)? as i16 as i64),
            4 => MetaValue::UInt(self.u32(&what)? as u64),
            5 => MetaValue::Int(self.u32(&what)? as i32 as i64),
            6 => MetaValue::Float(f32::from_bits(self.u32(&what)?) as f64),
            7 => MetaValue::Bool(self.u8(&what)? != 0),
            8 => MetaValue::Str(self.string(&what)?),
            9 => {
                let elem = self.u32(&what)?;
                if elem == 9 {
                    return Err(ModelError::config(
                        self.path,
                        key,
                        "nested arrays are not supported",
                    ));
                }
                let n = self.len(&what)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, key)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64(&what)?),
            11 => MetaValue::Int(self.u64(&what)? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64(&what)?)),
            other => {
                return Err(ModelError::config(
                    self.path,
                    key,
                    format!("unknown metadata value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file's header, metadata and tensor infos; tensor data stays
    /// memory-mapped until read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != b"GGUF" {
            return Err(ModelError::checkpoint(path, "not a GGUF file (bad magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::checkpoint(
                path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.len("tensor count")?;
        let n_meta = c.len("metadata count")?;
        let mut metadata = HashMap::new();
        for i in 0..n_meta {
            let key = c.string(&format!("metadata key #{i}"))?;
            let type_id = c.u32(&format!("type of metadata `{key}`"))?;
            let value = c.value(type_id, &key)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor #{i}"))?;
            let n_dims = c.u32(&format!("tensor `{name}` rank"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("invalid rank {n_dims}"),
                ));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&format!("tensor `{name}` dims")))
                .collect::<Result<Vec<_>>>()?;
            let type_id = c.u32(&format!("tensor `{name}` type"))?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                ModelError::tensor(
                    path,
                    &name,
                    format!("unknown or unsupported ggml type {type_id}"),
                )
            })?;
            let offset = c.u64(&format!("tensor `{name}` offset"))?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(ModelError::config(
                path,
                "general.alignment",
                "must be a power of two",
            ));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            // Dimensions and offsets are untrusted: products and sums that overflow are
            // corruption, as is data past the end of the file.
            let past_end = |what: String| ModelError::tensor(path, &name, what);
            let n = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= mmap.len() as u64 * 8)
                .ok_or_else(|| {
                    past_end(format!(
                        "dimensions {dims:?} claim more elements than the file holds"
                    ))
                })?;
            let size = ggml_type.byte_size(n as usize).ok_or_else(|| {
                past_end(format!(
                    "{n} elements is not a whole number of {ggml_type:?} blocks"
                ))
            })?;
            let end = (data_start as u64)
                .checked_add(offset)
                .and_then(|start| start.checked_add(size as u64))
                .filter(|&end| end <= mmap.len() as u64)
                .ok_or_else(|| {
                    past_end(format!(
                        "data at offset {offset} ({size} bytes) runs past the end of the file ({} bytes; truncated?)",
                        mmap.len()
                    ))
                })?;
            let start = end - size as u64;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset: start as usize,
                size,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.size]
    }

    /// A tensor dequantised to f32, row-major. Its mapped pages are dropped from the resident
    /// set afterwards, so a loaded model is not also held as file pages.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let values = dequant::dequantize(info.ggml_type, self.raw(info), info.num_elements())
            .map_err(|m| ModelError::tensor(&self.path, &info.name, m))?;
        crate::checkpoint::release_pages(&self.mmap, info.offset, info.size);
        Ok(values)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| ModelError::config(&self.path, key, "missing from the GGUF metadata"))
    }

    fn usize_key(&self, key: &str) -> Result<usize> {
        self.required(key)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::config(&self.path, key, "expected a non-negative integer"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| ModelError::config(&self.path, key, "expected a number"))
            })
            .transpose()
    }

    fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| ModelError::config(&self.path, key, "expected a token id"))
            })
            .transpose()
    }

    /// The LLaMA config the metadata describes.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self
            .required("general.architecture")?
            .as_str()
            .unwrap_or_default()
            .to_string();
        if arch != "llama" {
            return Err(ModelError::config(
                &self.path,
                "general.architecture",
                format!("`{arch}` is not supported; only `llama` is"),
            ));
        }
        let key = |k: &str| format!("llama.{k}");
        let hidden_size = self.usize_key(&key("embedding_length"))?;
        let num_attention_heads = self.usize_key(&key("attention.head_count"))?;
        let num_key_value_heads = match self.get(&key("attention.head_count_kv")) {
            Some(_) => self.usize_key(&key("attention.head_count_kv"))?,
            None => num_attention_heads,
        };
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(ModelError::config(
                &self.path,
                key("attention.head_count_kv"),
                format!("{num_key_value_heads} KV heads do not divide {num_attention_heads} heads"),
            ));
        }
        let head_dim = match self.get(&key("attention.key_length")) {
            Some(_) => self.usize_key(&key("attention.key_length"))?,
            None => hidden_size / num_attention_heads,
        };
        if let Some(rot) = self
            .get(&key("rope.dimension_count"))
            .and_then(MetaValue::as_u64)
            && rot as usize != head_dim
        {
            return Err(ModelError::config(
                &self.path,
                key("rope.dimension_count"),
                format!("partial rotary embeddings ({rot} of {head_dim}) are not supported"),
            ));
        }
        let tokens = self
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array);
        let vocab_size = match self.get(&key("vocab_size")) {
            Some(_) => self.usize_key(&key("vocab_size"))?,
            None => match (tokens, self.tensor("token_embd.weight")) {
                (Some(t), _) => t.len(),
                (None, Some(t)) => t.dims[1] as usize,
                (None, None) => {
                    return Err(ModelError::config(&self.path, key("vocab_size"), "missing"));
                }
            },
        };
        let rope_scaling = match self
            .get(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
        {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear {
                factor: self.opt_f64(&key("rope.scaling.factor"))?.ok_or_else(|| {
                    ModelError::config(
                        &self.path,
                        key("rope.scaling.factor"),
                        "required for linear scaling",
                    )
                })?,
            },
            Some(other) => {
                return Err(ModelError::config(
                    &self.path,
                    key("rope.scaling.type"),
                    format!("rope scaling `{other}` is not supported (none and linear are)"),
                ));
            }
        };
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(ModelError::tensor(
                &self.path,
                "rope_freqs.weight",
                "per-frequency RoPE factors (LLaMA 3.1 scaling in GGUF) are not supported yet",
            ));
        }
        let eos = self.opt_token("tokenizer.ggml.eos_token_id")?;
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: self.usize_key(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize_key(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: match self.get(&key("context_length")) {
                Some(_) => self.usize_key(&key("context_length"))?,
                None => 2048,
            },
            rms_norm_eps: self
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: self.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            attention_bias: self.tensor("blk.0.attn_q.bias").is_some(),
            mlp_bias: self.tensor("blk.0.ffn_up.bias").is_some(),
            bos_token_id: self.opt_token("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: self.opt_token("tokenizer.ggml.padding_token_id")?,
            dtype: None,
        })
    }
}

/// The GGUF name of an HF LLaMA tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// Undoes llama.cpp's interleaving of the Q/K projection rows (`permute` in
/// `convert_hf_to_gguf.py`): within each head, GGUF row `2b + a` is HF row `a·(d/2) + b`.
pub fn unpermute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    reorder_rows(data, n_heads, row_len, false)
}

/// llama.cpp's interleaving of the Q/K projection rows, what [`unpermute_rows`] undoes.
pub fn permute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    reorder_rows(data, n_heads, row_len, true)
}

/// Moves rows of `row_len` values between HF's order and llama.cpp's, head by head.
fn reorder_rows(data: &[f32], n_heads: usize, row_len: usize, to_gguf: bool) -> Vec<f32> {
    let rows = data.len() / row_len;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for b in 0..half {
            for a in 0..2 {
                let gguf = h * head_dim + 2 * b + a;
                let hf = h * head_dim + a * half + b;
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.weight").unwrap(),
            "blk.3.attn_k.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.7.input_layernorm.weight").unwrap(),
            "blk.7.attn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.q_proj.bias").unwrap(),
            "blk.1.attn_q.bias"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.1.unknown.weight").is_none());
    }

    #[test]
    fn permute_and_unpermute_are_inverse() {
        let (heads, rows, cols) = (3, 12, 5);
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let there = permute_rows(&data, heads, cols);
        assert_ne!(there, data);
        assert_eq!(unpermute_rows(&there, heads, cols), data);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2).reshape(w.shape)
        let (n_heads, head_dim, cols) = (2, 6, 3);
        let rows = n_heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for a in 0..2 {
                for b in 0..head_dim / 2 {
                    let src = h * head_dim + a * head_dim / 2 + b;
                    let dst = h * head_dim + b * 2 + a;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, n_heads, cols), hf);
    }
}
