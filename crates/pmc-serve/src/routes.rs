//! The HTTP endpoints: requests checked and tokenized, handed to the [`Engine`], and its
//! events turned into OpenAI's responses or server-sent-event chunks.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{Method, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{
    ChatMessage, ChatRequest, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs,
    CompletionRequest, Content, PromptItem, Sampling, Usage,
};
use crate::engine::{Engine, Event, Finish, Request, TokenLogprob};
use crate::error::ApiError;

/// What every handler reads.
pub struct Shared {
    pub engine: Engine,
    pub tokenizer: pmc_model::Tokenizer,
    pub template: Option<pmc_model::ChatTemplate>,
    /// The name `/v1/models` lists and responses carry.
    pub model_id: String,
    /// Unix time the model was loaded.
    pub created: u64,
    pub api_key: Option<String>,
}

pub(crate) type AppState = Arc<Shared>;

/// The router: `/health` and vLLM's tokenizer endpoints open, `/v1/*` behind the API key
/// when one is set, OpenAI-shaped 404 and 405 for anything else.
pub fn router(shared: Shared, body_limit: usize) -> Router {
    let state = Arc::new(shared);
    let v1 = Router::new()
        .route("/v1/models", routing::get(models))
        .route("/v1/models/{id}", routing::get(model))
        .route("/v1/chat/completions", routing::post(chat))
        .route("/v1/completions", routing::post(completions))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/health", routing::get(health))
        .route("/tokenize", routing::post(crate::tokenize::tokenize))
        .route("/detokenize", routing::post(crate::tokenize::detokenize))
        .route(
            "/tokenizer_info",
            routing::get(crate::tokenize::tokenizer_info),
        )
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn require_key(
    State(state): State<AppState>,
    request: HttpRequest,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return Err(ApiError::unauthorized(
                    "no API key: send the header `Authorization: Bearer KEY`",
                ));
            }
            Some(given) if given.trim() != key => {
                return Err(ApiError::unauthorized("incorrect API key"));
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("unknown request URL: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
        param: None,
        code: None,
    }
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let limits = state.engine.limits();
    Json(json!({
        "status": "ok",
        "model": state.model_id,
        "requests": state.engine.load(),
        "max_concurrent": limits.max_batch,
    }))
}

fn model_object(state: &Shared) -> Value {
    json!({
        "id": state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "pmc-llama",
        "max_model_len": state.engine.limits().max_context,
    })
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id != state.model_id {
        return Err(ApiError::not_found(format!(
            "the model `{id}` does not exist; this server serves `{}`",
            state.model_id
        ))
        .with_code("model_not_found"));
    }
    Ok(Json(model_object(&state)))
}

/// The body as JSON of type `T`: 413 when too large, 400 naming the position of a syntax
/// error or the field of a type error.
pub(crate) fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        message: rejection.body_text(),
        param: None,
        code: None,
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

/// The sampling fields, checked.
struct Settings {
    max_tokens: Option<usize>,
    temperature: f64,
    top_p: f64,
    seed: u64,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

/// OpenAI's limit on stop strings.
const MAX_STOPS: usize = 4;
/// Alternatives per token at most in `top_logprobs`.
const MAX_TOP_LOGPROBS: u64 = 20;

impl Settings {
    fn check(sampling: Sampling) -> Result<Self, ApiError> {
        if let Some(n) = sampling.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("n = {n}: only one choice per prompt is supported"),
            ));
        }
        let temperature = sampling.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature {temperature} is not in [0, 2]"),
            ));
        }
        let top_p = sampling.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p {top_p} is not in (0, 1]"),
            ));
        }
        let stop = sampling.stop.map(|s| s.into_vec()).unwrap_or_default();
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("{} stop strings; at most {MAX_STOPS}", stop.len()),
            ));
        }
        let max_tokens = sampling.max_completion_tokens.or(sampling.max_tokens);
        Ok(Settings {
            max_tokens: max_tokens.map(|m| m as usize),
            temperature,
            top_p,
            // Without a seed each request samples differently, as OpenAI's do.
            seed: sampling.seed.unwrap_or_else(rand::random),
            stop,
            stream: sampling.stream,
            include_usage: sampling.stream_options.is_some_and(|o| o.include_usage),
        })
    }

    /// A request for `prompt` (the request field `param`); `default_max_tokens` applies when
    /// the client gave none. The prompt and the reply must fit in the context.
    fn request(
        &self,
        state: &Shared,
        param: &'static str,
        prompt: Vec<u32>,
        stop_ids: Vec<u32>,
        default_max_tokens: Option<usize>,
    ) -> Result<Request, ApiError> {
        let context = state.engine.limits().max_context;
        if prompt.is_empty() {
            return Err(ApiError::invalid(param, "the prompt is empty"));
        }
        within_vocabulary(state, param, &prompt)?;
        let room = context.saturating_sub(prompt.len());
        let max_tokens = match self.max_tokens {
            Some(m) => m,
            None => default_max_tokens.unwrap_or(room).min(room),
        };
        if prompt.len() + max_tokens > context || prompt.len() >= context {
            return Err(ApiError::invalid(
                param,
                format!(
                    "this model's maximum context length is {context} tokens; the request needs {} ({} in the prompt, {max_tokens} for the completion)",
                    prompt.len() + max_tokens,
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Ok(Request {
            prompt,
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids,
            stop_texts: self.stop.clone(),
            prompt_logprobs: None,
            logprobs: None,
        })
    }
}

fn top_count(param: &'static str, value: Option<u64>) -> Result<Option<usize>, ApiError> {
    match value {
        Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            param,
            format!("{param} = {k}; at most {MAX_TOP_LOGPROBS}"),
        )),
        other => Ok(other.map(|k| k as usize)),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The text of one token as a client reads it.
fn token_text(state: &Shared, id: u32) -> String {
    state.tokenizer.decode(&[id]).unwrap_or_default()
}

/// A 400 naming `param` when an id of `ids` is outside the model's vocabulary.
pub(crate) fn within_vocabulary(
    state: &Shared,
    param: &'static str,
    ids: &[u32],
) -> Result<(), ApiError> {
    let vocab = state.tokenizer.inner().get_vocab_size(true);
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(ApiError::invalid(
            param,
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        )),
        None => Ok(()),
    }
}

/// The conversation as the template's messages: string contents, or text parts joined.
pub(crate) fn messages(messages: Vec<ChatMessage>) -> Result<Vec<pmc_model::Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    messages
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!("role `{other}` is not supported (system, developer, user, assistant)"),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("content part of type `{kind}` is not supported; this model reads text"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(pmc_model::Message::new(role, &content))
        })
        .collect()
}

async fn chat(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: ChatRequest = parse(body)?;
    let settings = Settings::check(body.sampling)?;
    let template = state.template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            format!(
                "the model `{}` has no chat template (it is a base model): use /v1/completions with a plain-text prompt",
                state.model_id
            ),
        )
    })?;
    let conversation = messages(body.messages)?;
    let (prompt, stop_ids) = template.prompt_ids(&state.tokenizer, &conversation)?;
    let mut request = settings.request(&state, "messages", prompt, stop_ids, None)?;
    let top = top_count("top_logprobs", body.top_logprobs)?;
    if body.logprobs {
        request.logprobs = Some(top.unwrap_or(0));
    }
    let events = state.engine.submit(request)?;
    let head = Head {
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: state.model_id.clone(),
    };
    if settings.stream {
        return Ok(stream(state, head, events, Kind::Chat, settings.include_usage).into_response());
    }
    let reply = collect(events).await?;
    let logprobs = body.logprobs.then(|| {
        json!({ "content": reply.tokens.iter().map(|t| chat_logprob(&state, t)).collect::<Vec<_>>() })
    });
    Ok(Json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": reply.text },
            "logprobs": logprobs,
            "finish_reason": reply.finish.as_str(),
        }],
        "usage": reply.usage,
    }))
    .into_response())
}

fn chat_logprob(state: &Shared, token: &TokenLogprob) -> ChatTokenLogprob {
    let text = token_text(state, token.id);
    ChatTokenLogprob {
        bytes: text.as_bytes().to_vec(),
        token: text,
        logprob: token.logprob,
        top_logprobs: token
            .top
            .iter()
            .map(|&(id, logprob)| {
                let token = token_text(state, id);
                ChatTopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                }
            })
            .collect(),
    }
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: CompletionRequest = parse(body)?;
    if body.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "best_of",
            "only best_of = 1 is supported",
        ));
    }
    if body.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    let settings = Settings::check(body.sampling)?;
    let top = top_count("logprobs", body.logprobs)?;
    let items = body.prompt.into_items();
    if items.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is an empty list"));
    }
    if settings.stream && items.len() > 1 {
        return Err(ApiError::invalid(
            "stream",
            "streaming takes one prompt per request",
        ));
    }
    // OpenAI's default for this endpoint.
    const DEFAULT_MAX_TOKENS: usize = 16;
    let mut prompts = Vec::with_capacity(items.len());
    for item in items {
        let (text, ids) = match item {
            PromptItem::Text(text) => {
                let ids = state.tokenizer.encode(&text)?;
                (text, ids)
            }
            PromptItem::Tokens(ids) => (String::new(), ids),
        };
        let mut request = settings.request(
            &state,
            "prompt",
            ids,
            state.tokenizer.eos_ids.clone(),
            Some(DEFAULT_MAX_TOKENS),
        )?;
        request.logprobs = top;
        if body.echo {
            request.prompt_logprobs = top;
        }
        prompts.push((text, request));
    }
    let head = Head {
        id: new_id("cmpl"),
        created: unix_now(),
        model: state.model_id.clone(),
    };
    // Every prompt is queued before any is awaited, so the engine decodes them together.
    let mut pending = Vec::with_capacity(prompts.len());
    for (text, request) in prompts {
        let prompt = request.prompt.clone();
        pending.push((text, prompt, state.engine.submit(request)?));
    }
    if settings.stream {
        let (_, _, events) = pending.pop().expect("one prompt");
        let kind = Kind::Completion;
        return Ok(stream(state, head, events, kind, settings.include_usage).into_response());
    }
    let mut choices = Vec::with_capacity(pending.len());
    let mut usage = Usage::new(0, 0);
    for (index, (text, prompt, events)) in pending.into_iter().enumerate() {
        let reply = collect(events).await?;
        usage = usage + reply.usage;
        let prompt_text = if body.echo && text.is_empty() {
            state.tokenizer.decode(&prompt)?
        } else {
            text
        };
        let logprobs = top.map(|_| completion_logprobs(&state, &prompt, &reply, body.echo));
        let text = if body.echo {
            prompt_text + &reply.text
        } else {
            reply.text
        };
        choices.push(json!({
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": reply.finish.as_str(),
        }));
    }
    Ok(Json(json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}

/// The `logprobs` object: the prompt's tokens first when echoed (the first with `null`),
/// then the generated ones.
fn completion_logprobs(
    state: &Shared,
    prompt: &[u32],
    reply: &Reply,
    echo: bool,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    let mut push = |id: u32, scored: Option<&TokenLogprob>| {
        let text = token_text(state, id);
        out.text_offset.push(offset);
        offset += text.chars().count();
        out.tokens.push(text);
        out.token_logprobs.push(scored.map(|s| s.logprob));
        out.top_logprobs.push(scored.map(|s| {
            let mut map = serde_json::Map::new();
            for &(id, logprob) in &s.top {
                map.entry(token_text(state, id)).or_insert(json!(logprob));
            }
            map
        }));
    };
    if echo {
        push(prompt[0], None);
        for (id, scored) in prompt[1..].iter().zip(&reply.prompt) {
            push(*id, Some(scored));
        }
    }
    for token in &reply.tokens {
        push(token.id, Some(token));
    }
    out
}

/// Everything the engine sent for one request.
struct Reply {
    text: String,
    prompt: Vec<TokenLogprob>,
    tokens: Vec<TokenLogprob>,
    finish: Finish,
    usage: Usage,
}

async fn collect(mut events: UnboundedReceiver<Event>) -> Result<Reply, ApiError> {
    let mut text = String::new();
    let mut prompt = Vec::new();
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Prompt(entries) => prompt = entries,
            Event::Text {
                text: piece,
                tokens: scored,
            } => {
                text.push_str(&piece);
                tokens.extend(scored);
            }
            Event::Done { finish, usage } => {
                return Ok(Reply {
                    text,
                    prompt,
                    tokens,
                    finish,
                    usage,
                });
            }
            Event::Failed(error) => return Err(error),
        }
    }
    Err(ApiError::internal(
        "the engine stopped before the reply was complete",
    ))
}

/// What every chunk of one response repeats.
#[derive(Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Head {
    fn chunk(&self, kind: Kind, choice: Value, usage: Option<Usage>) -> SseEvent {
        let object = match kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let choices = if choice.is_null() {
            json!([])
        } else {
            json!([choice])
        };
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(usage);
        }
        SseEvent::default().data(chunk.to_string())
    }
}

/// Server-sent events: a chunk per piece of text, one with the finish reason, one with the
/// usage when asked, then `data: [DONE]`. A failure mid-stream is sent as an error object.
/// Dropping the stream (the client went away) drops the receiver, which stops generation.
fn stream(
    state: AppState,
    head: Head,
    events: UnboundedReceiver<Event>,
    kind: Kind,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    enum Phase {
        Start,
        Running,
        Over,
    }
    let choice = move |text: Option<String>,
                       tokens: &[TokenLogprob],
                       finish: Option<Finish>|
          -> Value {
        let finish = finish.map(Finish::as_str);
        match kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                let logprobs = (!tokens.is_empty()).then(|| {
                    json!({ "content": tokens.iter().map(|t| chat_logprob(&state, t)).collect::<Vec<_>>() })
                });
                json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or_default(),
                "logprobs": Value::Null,
                "finish_reason": finish,
            }),
        }
    };
    let chunks = futures_util::stream::unfold(
        (
            events,
            Phase::Start,
            std::collections::VecDeque::<SseEvent>::new(),
        ),
        move |(mut events, mut phase, mut queue)| {
            let head = head.clone();
            let choice = choice.clone();
            async move {
                loop {
                    if let Some(event) = queue.pop_front() {
                        return Some((Ok(event), (events, phase, queue)));
                    }
                    match phase {
                        Phase::Over => return None,
                        Phase::Start => {
                            phase = Phase::Running;
                            if kind == Kind::Chat {
                                let first = json!({
                                    "index": 0,
                                    "delta": { "role": "assistant", "content": "" },
                                    "logprobs": Value::Null,
                                    "finish_reason": Value::Null,
                                });
                                queue.push_back(head.chunk(kind, first, None));
                            }
                        }
                        Phase::Running => match events.recv().await {
                            Some(Event::Prompt(_)) => {}
                            Some(Event::Text { text, tokens }) => {
                                queue.push_back(head.chunk(
                                    kind,
                                    choice(Some(text), &tokens, None),
                                    None,
                                ));
                            }
                            Some(Event::Done { finish, usage }) => {
                                queue.push_back(head.chunk(
                                    kind,
                                    choice(None, &[], Some(finish)),
                                    None,
                                ));
                                if include_usage {
                                    queue.push_back(head.chunk(kind, Value::Null, Some(usage)));
                                }
                                queue.push_back(SseEvent::default().data("[DONE]"));
                                phase = Phase::Over;
                            }
                            Some(Event::Failed(error)) => {
                                queue.push_back(SseEvent::default().data(error.body().to_string()));
                                phase = Phase::Over;
                            }
                            None => {
                                let error = ApiError::internal(
                                    "the engine stopped before the reply was complete",
                                );
                                queue.push_back(SseEvent::default().data(error.body().to_string()));
                                phase = Phase::Over;
                            }
                        },
                    }
                }
            }
        },
    );
    Sse::new(chunks).keep_alive(KeepAlive::default())
}
