//! Writing a model as a llama.cpp GGUF file (v3): the LLaMA hyper-parameters, the tokenizer
//! (byte-level BPE: tokens, token types, merges, special ids) and the chat template in the
//! metadata, the tensors under llama.cpp's names with its Q/K row order, in f32, f16 or one of
//! ggml's block formats (`q8_0`, `q4_0`, `q4_1`; norms and biases stay f32, as llama.cpp's
//! `quantize` leaves them). What llama.cpp, Ollama and LM Studio load.
//!
//! The file is written beside its destination and renamed into place, so a reader never sees
//! half a file.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::GgmlType;
use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::model::Llama;
use crate::quant::{QuantKind, QuantMatrix};
use crate::tokenizer::Tokenizer;

/// The element type of the exported matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    Quantized(QuantKind),
}

impl std::str::FromStr for ExportType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "f32" => ExportType::F32,
            "f16" => ExportType::F16,
            "q8_0" => ExportType::Quantized(QuantKind::Q8_0),
            "q4_0" => ExportType::Quantized(QuantKind::Q4_0),
            "q4_1" => ExportType::Quantized(QuantKind::Q4_1),
            other => return Err(format!("`{other}`: expected f32, f16, q8_0, q4_0 or q4_1")),
        })
    }
}

impl ExportType {
    /// The ggml type of a 2-D weight with rows of `cols` values: block formats need whole
    /// blocks, otherwise the row is kept in f16 (as llama.cpp's `quantize` falls back).
    fn for_matrix(self, cols: usize) -> GgmlType {
        match self {
            ExportType::F32 => GgmlType::F32,
            ExportType::F16 => GgmlType::F16,
            ExportType::Quantized(_) if !cols.is_multiple_of(32) => GgmlType::F16,
            ExportType::Quantized(QuantKind::Q8_0) => GgmlType::Q8_0,
            ExportType::Quantized(QuantKind::Q4_0) => GgmlType::Q4_0,
            ExportType::Quantized(QuantKind::Q4_1) => GgmlType::Q4_1,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Quantized(QuantKind::Q4_0) => 2,
            ExportType::Quantized(QuantKind::Q4_1) => 3,
            ExportType::Quantized(QuantKind::Q8_0) => 7,
        }
    }
}

/// A metadata value with the width GGUF stores it in.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A tensor to write: its GGUF name, dims (fastest-varying first) and type, and the weight
/// it is encoded from when its turn comes (so one tensor's bytes exist at a time).
struct Entry {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: usize,
    weight: crate::model::NamedWeight,
}

const ALIGNMENT: usize = 32;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub tensors: usize,
    pub bytes: u64,
}

/// Writes `model` (dense weights) with its `config` and `tokenizer` to `path` as GGUF.
pub fn write_gguf(
    model: &Llama,
    config: &LlamaConfig,
    tokenizer: &Tokenizer,
    name: &str,
    ty: ExportType,
    path: &Path,
) -> Result<ExportSummary> {
    if model.is_quantized() {
        return Err(ModelError::checkpoint(
            path,
            "the model is held quantized; load it with dense weights (--dtype f32) to export it",
        ));
    }
    let mut metadata = model_metadata(config, name, ty, path)?;
    metadata.extend(tokenizer_metadata(tokenizer, config.vocab_size, path)?);
    let entries = model
        .named_weights()
        .into_iter()
        .map(|weight| plan(ty, weight, path))
        .collect::<Result<Vec<_>>>()?;
    write_file(path, &metadata, &entries, |entry| {
        encode(config, entry, path)
    })
}

fn model_metadata(
    config: &LlamaConfig,
    name: &str,
    ty: ExportType,
    path: &Path,
) -> Result<Vec<(String, Meta)>> {
    let u32_of = |key: &str, v: usize| {
        u32::try_from(v)
            .map(Meta::U32)
            .map_err(|_| ModelError::config(path, key, format!("{v} does not fit GGUF's u32")))
    };
    let mut out = vec![
        ("general.architecture".into(), Meta::Str("llama".into())),
        ("general.name".into(), Meta::Str(name.into())),
        ("general.file_type".into(), Meta::U32(ty.file_type())),
        ("general.alignment".into(), Meta::U32(ALIGNMENT as u32)),
        (
            "llama.vocab_size".into(),
            u32_of("vocab_size", config.vocab_size)?,
        ),
        (
            "llama.context_length".into(),
            u32_of("max_position_embeddings", config.max_position_embeddings)?,
        ),
        (
            "llama.embedding_length".into(),
            u32_of("hidden_size", config.hidden_size)?,
        ),
        (
            "llama.block_count".into(),
            u32_of("num_hidden_layers", config.num_hidden_layers)?,
        ),
        (
            "llama.feed_forward_length".into(),
            u32_of("intermediate_size", config.intermediate_size)?,
        ),
        (
            "llama.attention.head_count".into(),
            u32_of("num_attention_heads", config.num_attention_heads)?,
        ),
        (
            "llama.attention.head_count_kv".into(),
            u32_of("num_key_value_heads", config.num_key_value_heads)?,
        ),
        (
            "llama.rope.dimension_count".into(),
            u32_of("head_dim", config.head_dim)?,
        ),
        (
            "llama.attention.key_length".into(),
            u32_of("head_dim", config.head_dim)?,
        ),
        (
            "llama.attention.value_length".into(),
            u32_of("head_dim", config.head_dim)?,
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Meta::F32(config.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Meta::F32(config.rope_theta as f32),
        ),
    ];
    if matches!(ty, ExportType::Quantized(_)) {
        out.push(("general.quantization_version".into(), Meta::U32(2)));
    }
    match config.rope_scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            out.push(("llama.rope.scaling.type".into(), Meta::Str("linear".into())));
            out.push(("llama.rope.scaling.factor".into(), Meta::F32(factor as f32)));
        }
        ref other => {
            return Err(ModelError::config(
                path,
                "rope_scaling",
                format!("{other:?} cannot be exported to GGUF yet (none and linear can)"),
            ));
        }
    }
    Ok(out)
}

/// The tokenizer as llama.cpp's `gpt2` (byte-level BPE) vocabulary: tokens by id (padded to
/// the embedding's rows with `[PADn]`, as convert_hf_to_gguf.py pads), their types, the merges
/// in rank order, the special ids and the chat template.
fn tokenizer_metadata(
    tokenizer: &Tokenizer,
    vocab_size: usize,
    path: &Path,
) -> Result<Vec<(String, Meta)>> {
    let inner = tokenizer.inner();
    let json: serde_json::Value = serde_json::from_str(
        &inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(format!("serializing the tokenizer: {e}")))?,
    )
    .map_err(|e| ModelError::Tokenizer(format!("serializing the tokenizer: {e}")))?;
    let model = &json["model"];
    let byte_level = json["pre_tokenizer"].to_string().contains("ByteLevel")
        || json["decoder"].to_string().contains("ByteLevel");
    if model["type"] != "BPE" || !byte_level {
        return Err(ModelError::checkpoint(
            path,
            format!(
                "only byte-level BPE tokenizers (GPT-2, LLaMA 3, SmolLM) can be exported to GGUF yet; this one is {} {}",
                model["type"],
                if byte_level {
                    "(byte-level)"
                } else {
                    "(not byte-level: SentencePiece-style)"
                }
            ),
        ));
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(|merges| {
            merges
                .iter()
                .filter_map(|m| match m {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Array(pair) => Some(format!(
                        "{} {}",
                        pair.first()?.as_str()?,
                        pair.get(1)?.as_str()?
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let vocab = inner.get_vocab(true);
    let size = vocab_size.max(vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0));
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (token, id) in vocab {
        tokens[id as usize] = Some(token);
    }
    let added = inner.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(size);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| {
            let ty = match (&token, added.get(&(id as u32))) {
                (None, _) => UNUSED,
                (Some(_), Some(a)) if a.special => CONTROL,
                (Some(_), Some(_)) => USER_DEFINED,
                (Some(_), None) => NORMAL,
            };
            types.push(ty);
            token.unwrap_or_else(|| format!("[PAD{id}]"))
        })
        .collect();
    let mut out = vec![
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        // Without a recognised pre-tokenizer name llama.cpp splits text with GPT-2's
        // pattern, which is what a byte-level BPE tokenizer without a named one does.
        ("tokenizer.ggml.pre".into(), Meta::Str("default".into())),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::I32s(types)),
        ("tokenizer.ggml.merges".into(), Meta::Strs(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Meta::Bool(tokenizer.add_bos),
        ),
    ];
    if let Some(bos) = tokenizer.bos_id {
        out.push(("tokenizer.ggml.bos_token_id".into(), Meta::U32(bos)));
    }
    if let Some(&eos) = tokenizer.eos_ids.first() {
        out.push(("tokenizer.ggml.eos_token_id".into(), Meta::U32(eos)));
    }
    if let Some(template) = &tokenizer.chat_template {
        out.push((
            "tokenizer.chat_template".into(),
            Meta::Str(template.clone()),
        ));
    }
    Ok(out)
}

/// Where one weight goes: its GGUF name, dims, type and size.
fn plan(ty: ExportType, weight: crate::model::NamedWeight, path: &Path) -> Result<Entry> {
    let name = super::gguf_name(&weight.name)
        .ok_or_else(|| ModelError::tensor(path, &weight.name, "has no GGUF name"))?;
    let ggml = match weight.shape[..] {
        [_, cols] => ty.for_matrix(cols),
        [_] => GgmlType::F32,
        _ => {
            return Err(ModelError::tensor(
                path,
                &weight.name,
                "is neither 1-D nor 2-D",
            ));
        }
    };
    let numel = weight.shape.iter().product();
    let bytes = ggml
        .byte_size(numel)
        .expect("a type chosen for whole blocks");
    Ok(Entry {
        name,
        dims: weight.shape.iter().rev().map(|&d| d as u64).collect(),
        ty: ggml,
        bytes,
        weight,
    })
}

/// The bytes of one weight: rows in llama.cpp's order, in the entry's type.
fn encode(config: &LlamaConfig, entry: &Entry, path: &Path) -> Result<Vec<u8>> {
    let weight = &entry.weight;
    let mut values: Vec<f32> = weight
        .value
        .clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::tensor(path, &weight.name, format!("reading values: {e:?}")))?;
    let (rows, cols) = match weight.shape[..] {
        [rows, cols] => (rows, cols),
        _ => (values.len(), 1),
    };
    let heads = if weight.name.contains("self_attn.q_proj") {
        Some(config.num_attention_heads)
    } else if weight.name.contains("self_attn.k_proj") {
        Some(config.num_key_value_heads)
    } else {
        None
    };
    if let Some(heads) = heads {
        values = super::permute_rows(&values, heads, cols);
    }
    let kind = match entry.ty {
        GgmlType::F32 => return Ok(bytemuck::cast_slice(&values).to_vec()),
        GgmlType::F16 => {
            return Ok(values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect());
        }
        GgmlType::Q8_0 => QuantKind::Q8_0,
        GgmlType::Q4_0 => QuantKind::Q4_0,
        GgmlType::Q4_1 => QuantKind::Q4_1,
        other => unreachable!("the export never picks {other:?}"),
    };
    Ok(QuantMatrix::quantize(&values, rows, cols, kind)
        .map_err(|e| ModelError::tensor(path, &weight.name, e.to_string()))?
        .ggml_blocks())
}

fn write_file(
    path: &Path,
    metadata: &[(String, Meta)],
    entries: &[Entry],
    encode: impl Fn(&Entry) -> Result<Vec<u8>>,
) -> Result<ExportSummary> {
    let temporary = crate::checkpoint::temp_path(path);
    let written = write_to(&temporary, metadata, entries, encode);
    if written.is_err() {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&temporary);
    }
    let bytes = written?;
    crate::checkpoint::rename(&temporary, path)?;
    Ok(ExportSummary {
        tensors: entries.len(),
        bytes,
    })
}

/// The file's bytes into `path`; returns how many.
fn write_to(
    path: &Path,
    metadata: &[(String, Meta)],
    entries: &[Entry],
    encode: impl Fn(&Entry) -> Result<Vec<u8>>,
) -> Result<u64> {
    let io = |e: std::io::Error| ModelError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::new(&file);
    let mut written = 0u64;
    let mut put = |out: &mut BufWriter<&std::fs::File>, bytes: &[u8]| -> std::io::Result<()> {
        written += bytes.len() as u64;
        out.write_all(bytes)
    };
    let string = |s: &str| -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    };
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend((entries.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        header.extend(string(key));
        match value {
            Meta::U32(v) => {
                header.extend(4u32.to_le_bytes());
                header.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                header.extend(6u32.to_le_bytes());
                header.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                header.extend(7u32.to_le_bytes());
                header.push(u8::from(*v));
            }
            Meta::Str(s) => {
                header.extend(8u32.to_le_bytes());
                header.extend(string(s));
            }
            Meta::Strs(items) => {
                header.extend(9u32.to_le_bytes());
                header.extend(8u32.to_le_bytes());
                header.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    header.extend(string(s));
                }
            }
            Meta::I32s(items) => {
                header.extend(9u32.to_le_bytes());
                header.extend(5u32.to_le_bytes());
                header.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    header.extend(v.to_le_bytes());
                }
            }
        }
    }
    let padded = |n: usize| n.div_ceil(ALIGNMENT) * ALIGNMENT;
    let mut offset = 0usize;
    for entry in entries {
        header.extend(string(&entry.name));
        header.extend((entry.dims.len() as u32).to_le_bytes());
        for d in &entry.dims {
            header.extend(d.to_le_bytes());
        }
        header.extend(entry.ty.id().to_le_bytes());
        header.extend((offset as u64).to_le_bytes());
        offset += padded(entry.bytes);
    }
    header.resize(padded(header.len()), 0);
    put(&mut out, &header).map_err(io)?;
    for entry in entries {
        let data = encode(entry)?;
        debug_assert_eq!(data.len(), entry.bytes, "{}", entry.name);
        put(&mut out, &data).map_err(io)?;
        put(&mut out, &vec![0u8; padded(data.len()) - data.len()]).map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    file.sync_all().map_err(io)?;
    Ok(written)
}
