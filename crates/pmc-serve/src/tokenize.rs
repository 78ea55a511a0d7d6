//! vLLM's tokenizer endpoints — `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` —
//! so that a client tokenizes exactly as the server does without a copy of the tokenizer.
//! lm-evaluation-harness's `local-completions` looks for them (its `remote` tokenizer
//! backend) and then sends token ids; without them it needs a Hugging Face tokenizer
//! directory, which a GGUF model does not have. Open like `/health` (vLLM guards only `/v1`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::routes::{AppState, parse};

/// `POST /tokenize`: a text, or chat messages rendered with the model's template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<crate::api::ChatMessage>>,
    /// With the model's BOS (and EOS) policy, as vLLM's default; `false`: the text's tokens alone.
    pub add_special_tokens: Option<bool>,
    /// For `messages`: end with the assistant's turn opening (vLLM's default).
    pub add_generation_prompt: Option<bool>,
    #[serde(default)]
    pub return_token_strs: bool,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: TokenizeRequest = parse(body)?;
    let tokenizer = &state.tokenizer;
    let internal = |e: pmc_model::ModelError| ApiError::internal(e.to_string());
    let (text, add_special) = match (request.prompt, request.messages) {
        (Some(prompt), None) => (prompt, request.add_special_tokens.unwrap_or(true)),
        (None, Some(messages)) => {
            let template = state.template.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    "messages",
                    format!(
                        "`{}` has no chat template: tokenize a `prompt` instead",
                        state.model_id
                    ),
                )
            })?;
            let messages = crate::routes::messages(messages)?;
            let rendered = template
                .render(&messages, request.add_generation_prompt.unwrap_or(true))
                .map_err(internal)?;
            // The template writes the special tokens itself.
            (rendered, request.add_special_tokens.unwrap_or(false))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` and `messages`",
            ));
        }
    };
    let tokens = if add_special {
        tokenizer.encode(&text)
    } else {
        tokenizer.encode_plain(&text)
    }
    .map_err(internal)?;
    let token_strs = request.return_token_strs.then(|| {
        tokens
            .iter()
            .map(|&id| tokenizer.inner().id_to_token(id))
            .collect::<Vec<_>>()
    });
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": state.engine.limits().max_context,
        "tokens": tokens,
        "token_strs": token_strs,
    })))
}

pub async fn detokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: DetokenizeRequest = parse(body)?;
    crate::routes::within_vocabulary(&state, "tokens", &request.tokens)?;
    let prompt = state
        .tokenizer
        .decode(&request.tokens)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "prompt": prompt })))
}

/// The special tokens as text, the chat template and the context length, as vLLM's
/// `/tokenizer_info` reports them.
pub async fn tokenizer_info(State(state): State<AppState>) -> Json<Value> {
    let tokenizer = &state.tokenizer;
    let text = |id: Option<u32>| id.and_then(|id| tokenizer.inner().id_to_token(id));
    Json(json!({
        "tokenizer_class": "pmc_model::Tokenizer",
        "bos_token": text(tokenizer.bos_id),
        "eos_token": text(tokenizer.eos_ids.first().copied()),
        "pad_token": Value::Null,
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": tokenizer.add_eos,
        "chat_template": tokenizer.chat_template,
        "model_max_length": state.engine.limits().max_context,
        "vocab_size": tokenizer.inner().get_vocab_size(true),
    }))
}
