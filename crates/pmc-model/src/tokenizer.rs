//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, with the special
//! tokens and `add_bos_token`/`add_eos_token` from `tokenizer_config.json` and `config.json`.
//!
//! Special tokens are added here rather than by the tokenizer's post-processor, so the
//! behaviour is the same whether the model came with a post-processor (LLaMA), without one
//! (GPT-2 style BPE such as SmolLM), or from a GGUF file.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A tokenizer and the special-token policy of its model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence ids: generation stops at any of them.
    pub eos_ids: Vec<u32>,
    /// Whether [`Tokenizer::encode`] starts every text with BOS.
    pub add_bos: bool,
    /// Whether [`Tokenizer::encode`] ends every text with EOS.
    pub add_eos: bool,
    /// The model's chat template (Jinja source), if it has one: see [`crate::ChatTemplate`].
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers::Tokenizer` with an explicit special-token policy.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: bool,
        add_eos: bool,
    ) -> Self {
        Self {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            add_eos,
            chat_template: None,
        }
    }

    /// The same tokenizer with `template` as its chat template.
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self
    }

    /// Loads `dir/tokenizer.json`; the special-token policy comes from
    /// `dir/tokenizer_config.json` when present, else from what the tokenizer's own
    /// post-processor does, and `config_eos`/`config_bos` (from `config.json`) fill gaps.
    pub fn from_dir(dir: &Path, config_bos: Option<u32>, config_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_config: Option<Value> = if tok_config_path.exists() {
            let text = std::fs::read_to_string(&tok_config_path)
                .map_err(|e| ModelError::io(&tok_config_path, e))?;
            Some(
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: tok_config_path.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let token_id = |key: &str| -> Option<u32> {
            let token = tok_config.as_ref()?.get(key)?;
            // Either "<s>" or {"content": "<s>", ...}.
            let text = token.as_str().or_else(|| token.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let flag = |key: &str| tok_config.as_ref()?.get(key)?.as_bool();

        let bos_id = token_id("bos_token").or(config_bos);
        let mut eos_ids: Vec<u32> = token_id("eos_token").into_iter().collect();
        for &id in config_eos {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        // Without an explicit flag, do what the post-processor does with an empty text.
        let probe = inner
            .encode("", true)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let add_bos = flag("add_bos_token")
            .unwrap_or_else(|| bos_id.is_some() && probe.get_ids().first() == bos_id.as_ref());
        let add_eos = flag("add_eos_token").unwrap_or_else(|| {
            probe.get_ids().len() > usize::from(add_bos)
                && probe
                    .get_ids()
                    .last()
                    .is_some_and(|id| eos_ids.contains(id))
        });
        // transformers ≥ 4.43 saves the template beside the config as chat_template.jinja;
        // older files carry it as a string, or as a list of named templates.
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.is_file() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?)
        } else {
            match tok_config.as_ref().and_then(|c| c.get("chat_template")) {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .or(named.first())
                    .and_then(|t| t["template"].as_str())
                    .map(String::from),
                _ => None,
            }
        };
        Ok(Self::new(inner, bos_id, eos_ids, add_bos, add_eos).with_chat_template(chat_template))
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with BOS/EOS as the model's config asks.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(bos) = self.bos_id
        {
            ids.push(bos);
        }
        ids.extend(self.encode_plain(text)?);
        if self.add_eos
            && let Some(&eos) = self.eos_ids.first()
        {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Token ids of `text` without any special tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Splits a (context, continuation) pair into token ids the way lm-evaluation-harness
    /// does: trailing spaces of the context move to the continuation, the whole text is
    /// encoded, and the continuation is what follows the context's own tokens.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let trimmed = context.trim_end_matches(' ');
        let moved = &context[trimmed.len()..];
        let continuation = format!("{moved}{continuation}");
        let whole = self.encode(&format!("{trimmed}{continuation}"))?;
        let context_ids = self.encode(trimmed)?;
        // With add_eos the context's own EOS is not part of the whole text.
        let context_len = context_ids.len() - usize::from(self.add_eos && !context_ids.is_empty());
        if whole.len() < context_len || whole[..context_len] != context_ids[..context_len] {
            tracing::debug!("context tokens are not a prefix of the whole text's tokens");
        }
        let continuation_ids = whole[context_len.min(whole.len())..].to_vec();
        Ok((context_ids[..context_len].to_vec(), continuation_ids))
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` holding this special-token
    /// policy into `dir`, so transformers and [`Tokenizer::from_dir`] load the same behaviour.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", json_path.display())))?;
        crate::checkpoint::write_atomic(&json_path, text.as_bytes())?;
        let token = |id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id));
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_ids.first().copied()),
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
        });
        if let Some(template) = &self.chat_template {
            config["chat_template"] = Value::String(template.clone());
        }
        let mut text = serde_json::to_vec_pretty(&config).expect("JSON values serialise");
        text.push(b'\n');
        crate::checkpoint::write_atomic(&dir.join("tokenizer_config.json"), &text)
    }

    /// An incremental decoder for streaming generated tokens as text.
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream {
            tokenizer: self,
            ids: Vec::new(),
            printed: 0,
        }
    }
}

/// Turns generated token ids into text pieces as soon as they form complete characters.
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl TokenStream<'_> {
    /// Adds `id` and returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        // A partial UTF-8 sequence decodes to U+FFFD: wait for the rest of the character.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match text.get(self.printed..) {
            Some(piece) => {
                let piece = piece.to_string();
                self.printed = text.len();
                Ok(piece)
            }
            // Earlier text changed under the new token (rare normaliser effects): print
            // nothing rather than garbage, and keep the position.
            None => Ok(String::new()),
        }
    }
}
