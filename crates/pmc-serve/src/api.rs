//! The shapes of OpenAI's requests and responses that the server reads and writes.
//!
//! Fields a client may send that the server does not act on (`user`, `presence_penalty`,
//! `frequency_penalty`, `logit_bias`, …) are accepted and ignored, as llama.cpp's and vLLM's
//! servers do, so that clients written for OpenAI work unchanged; a value the server cannot
//! honour (`n` > 1, `best_of` > 1) is refused with a 400 naming the field.

use serde::{Deserialize, Serialize};

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send one more chunk with `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
}

/// The content of a chat message: a string, or OpenAI's list of parts (text parts only).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// Absent or null for an assistant turn that only called tools.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Log-probabilities of the generated tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// How many alternatives per generated token (0–20), with `logprobs`.
    pub top_logprobs: Option<u64>,
}

/// `prompt`: a string, several strings, one token-id list, or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt of a completions request.
#[derive(Debug, Clone)]
pub enum PromptItem {
    Text(String),
    Tokens(Vec<u32>),
}

impl Prompt {
    pub fn into_items(self) -> Vec<PromptItem> {
        match self {
            Prompt::Text(s) => vec![PromptItem::Text(s)],
            Prompt::Texts(v) => v.into_iter().map(PromptItem::Text).collect(),
            Prompt::Tokens(t) => vec![PromptItem::Tokens(t)],
            Prompt::TokenLists(v) => v.into_iter().map(PromptItem::Tokens).collect(),
        }
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Return the prompt before the completion (with its tokens' log-probabilities when
    /// `logprobs` is set): how lm-evaluation-harness scores continuations.
    #[serde(default)]
    pub echo: bool,
    /// How many alternatives per token (0–20) in `top_logprobs`; present means
    /// log-probabilities are returned.
    pub logprobs: Option<u64>,
    pub best_of: Option<u64>,
    pub suffix: Option<String>,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage::new(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )
    }
}

/// The completions endpoint's `logprobs` object (one entry per token, in order).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for the first prompt token, which has no context.
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// Character offset of each token in `text`.
    pub text_offset: Vec<usize>,
}

/// One entry of the chat endpoint's `logprobs.content`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}
