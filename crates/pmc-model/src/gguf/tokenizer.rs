//! The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`), rebuilt as a
//! `tokenizers::Tokenizer` the way transformers' GGUF loader rebuilds it.
//!
//! - `gpt2`: byte-level BPE from `tokens` and `merges`.
//! - `llama`: sentencepiece BPE from `tokens` and `scores` (merges derived from the scores as
//!   transformers' `SentencePieceExtractor` does), byte fallback, `▁` for spaces.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// ggml token types that become added tokens: unknown and control (special), user-defined.
const TOKEN_TYPE_UNKNOWN: u64 = 2;
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let array = file
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| ModelError::config(file.path(), key, "missing or not an array"))?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                ModelError::config(file.path(), format!("{key}[{i}]"), "expected a string")
            })
        })
        .collect()
}

fn numbers(file: &GgufFile, key: &str, len: usize) -> Result<Option<Vec<f64>>> {
    let Some(value) = file.get(key) else {
        return Ok(None);
    };
    let array = value
        .as_array()
        .ok_or_else(|| ModelError::config(file.path(), key, "expected an array"))?;
    if array.len() != len {
        return Err(ModelError::config(
            file.path(),
            key,
            format!(
                "{} entries but tokenizer.ggml.tokens has {len}",
                array.len()
            ),
        ));
    }
    array
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| ModelError::config(file.path(), key, "expected numbers"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The tokenizer fields of GGUF metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// Token strings, by id.
    pub tokens: Vec<String>,
    /// Sentencepiece scores (`llama`).
    pub scores: Option<Vec<f64>>,
    /// ggml token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub types: Option<Vec<u64>>,
    /// BPE merges, `"a b"` (`gpt2`).
    pub merges: Option<Vec<String>>,
    /// Special token ids.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` = the model type's default.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (sentencepiece's leading `▁`), default true.
    pub add_space_prefix: Option<bool>,
}

impl GgufVocab {
    /// Reads the tokenizer fields of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| ModelError::config(path, "tokenizer.ggml.model", "missing"))?
            .to_string();
        let tokens: Vec<String> = strings(file, "tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        let token_id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v.as_u64().filter(|&id| (id as usize) < n).ok_or_else(|| {
                        ModelError::config(path, key, "not a token id of this vocabulary")
                    })?;
                    Ok(Some(id as u32))
                }
            }
        };
        let flag = |key: &str| file.get(key).and_then(MetaValue::as_bool);
        Ok(Self {
            scores: numbers(file, "tokenizer.ggml.scores", n)?,
            types: numbers(file, "tokenizer.ggml.token_type", n)?
                .map(|t| t.into_iter().map(|x| x as u64).collect()),
            merges: match file.get("tokenizer.ggml.merges") {
                Some(_) => Some(
                    strings(file, "tokenizer.ggml.merges")?
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                ),
                None => None,
            },
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
            unk: token_id("tokenizer.ggml.unknown_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
            model,
            tokens,
        })
    }

    /// Builds the tokenizer; `source` names the file in errors.
    pub fn build(&self, source: &std::path::Path) -> Result<Tokenizer> {
        let path = source;
        let tokens = &self.tokens;
        let mut vocab = serde_json::Map::new();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), json!(i)).is_some() {
                return Err(ModelError::config(
                    path,
                    "tokenizer.ggml.tokens",
                    format!("duplicate token {t:?} at id {i}"),
                ));
            }
        }
        let added_tokens: Vec<Value> = match &self.types {
            None => Vec::new(),
            Some(types) => types
                .iter()
                .enumerate()
                .filter(|(_, ty)| {
                    matches!(
                        **ty,
                        TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
                    )
                })
                .map(|(i, ty)| {
                    json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false,
                           "special": *ty != TOKEN_TYPE_USER_DEFINED})
                })
                .collect(),
        };
        let (default_add_bos, document) = match self.model.as_str() {
            "gpt2" => {
                let merges = self.merges.as_ref().ok_or_else(|| {
                    ModelError::config(
                        path,
                        "tokenizer.ggml.merges",
                        "required for gpt2 tokenizers",
                    )
                })?;
                let doc = json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": added_tokens,
                    "normalizer": null,
                    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                                      "trim_offsets": true, "use_regex": true},
                    "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                                "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null,
                              "continuing_subword_prefix": "", "end_of_word_suffix": "",
                              "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                              "vocab": vocab, "merges": merges},
                });
                (false, doc)
            }
            "llama" => {
                let scores = self.scores.as_ref().ok_or_else(|| {
                    ModelError::config(
                        path,
                        "tokenizer.ggml.scores",
                        "required for sentencepiece tokenizers",
                    )
                })?;
                let prepend = if self.add_space_prefix.unwrap_or(true) {
                    "first"
                } else {
                    "never"
                };
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if prepend == "first" {
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
                let doc = json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": added_tokens,
                    "normalizer": null,
                    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
                                      "prepend_scheme": prepend, "split": false},
                    "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {"type": "BPE", "dropout": null,
                              "unk_token": self.unk.map(|id| tokens[id as usize].clone()),
                              "continuing_subword_prefix": null, "end_of_word_suffix": null,
                              "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                              "vocab": vocab, "merges": sentencepiece_merges(&token_refs, scores)},
                });
                (true, doc)
            }
            other => {
                return Err(ModelError::config(
                    path,
                    "tokenizer.ggml.model",
                    format!("tokenizer model `{other}` is not supported (gpt2 and llama are)"),
                ));
            }
        };
        let inner: tokenizers::Tokenizer = document.to_string().parse().map_err(|e| {
            ModelError::Tokenizer(format!(
                "{}: building the tokenizer from GGUF metadata: {e}",
                path.display()
            ))
        })?;
        let add_bos = self.add_bos.unwrap_or(default_add_bos);
        let add_eos = self.add_eos.unwrap_or(false);
        Ok(Tokenizer::new(
            inner,
            self.bos,
            self.eos.into_iter().collect(),
            add_bos,
            add_eos,
        ))
    }
}

/// Builds the tokenizer of a GGUF file.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let chat_template = file
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(String::from);
    Ok(GgufVocab::from_gguf(file)?
        .build(file.path())?
        .with_chat_template(chat_template))
}

/// Merges of a sentencepiece BPE vocabulary: every split of a piece into two pieces of the
/// vocabulary, ordered by the merged piece's score (best first), then by the parts' ids.
fn sentencepiece_merges(tokens: &[&str], scores: &[f64]) -> Vec<[String; 2]> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| Some((*ids.get(&piece[..i])?, *ids.get(&piece[i..])?)))
            .collect();
        local.sort();
        let position = merges.len();
        merges.extend(
            local
                .into_iter()
                .enumerate()
                .map(|(k, (l, r))| (score, position + k, l, r)),
        );
    }
    // Stable: equal scores keep the order in which they were found.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| [tokens[l].to_string(), tokens[r].to_string()])
        .collect()
}
