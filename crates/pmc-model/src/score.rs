//! Log-likelihood scoring of continuations, the primitive of multiple-choice evaluation.
//!
//! A context is run once; its KV cache is then shared by every continuation scored against
//! it, so a four-option question costs one context pass plus four short passes.

use burn::prelude::*;

use crate::error::{ModelError, Result};
use crate::model::{KvCache, Llama};

/// The score of one continuation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Score {
    /// Sum of the continuation tokens' log-probabilities given everything before them.
    pub loglik: f64,
    /// Whether every continuation token is the model's most likely next token.
    pub greedy: bool,
}

/// Per-position log-probabilities of `targets` and whether each is the argmax, from logits
/// `[1, n, vocab]` where position `i` predicts `targets[i]`: one vectorised pass per row on
/// the pool (`softmax::target_log_probs`), where `log_softmax`, `argmax` and `gather` would
/// each pass over every logit on one thread.
fn target_logprobs(logits: Tensor<3>, targets: &[u32]) -> Result<Vec<(f64, bool)>> {
    let [_, n, vocab] = logits.dims();
    debug_assert_eq!(n, targets.len());
    let mut logits: Vec<f32> = read_back(logits.into_data())?;
    Ok(crate::softmax::target_log_probs(
        &mut logits,
        vocab,
        targets,
    ))
}

/// Each request's continuation log-likelihood, consecutive requests with the same context
/// (the choices of one question) sharing its pass.
pub fn request_logliks(
    model: &Llama,
    requests: &[ScoreRequest],
    device: &Device,
) -> Result<Vec<f64>> {
    let mut contexts = ContextCache::default();
    requests
        .iter()
        .map(|r| {
            let context = contexts.prepare(model, &r.context, device)?;
            Ok(context.score(model, &r.continuation)?.loglik)
        })
        .collect()
}

/// The log-likelihood of `continuation` from the logits `[1, continuation.len(), vocab]` of
/// the positions that predict it (a driver that ran the model its own way, unit by unit).
pub fn continuation_loglik(logits: Tensor<3>, continuation: &[u32]) -> Result<f64> {
    Ok(target_logprobs(logits, continuation)?
        .iter()
        .map(|(lp, _)| lp)
        .sum())
}

/// Copies tensor data to the host as `E`, converting the dtype if needed.
pub(crate) fn read_back<E: burn::tensor::Element>(data: TensorData) -> Result<Vec<E>> {
    data.try_into_vec_as::<E>()
        .map_err(|e| ModelError::Request(format!("reading a tensor back: {e:?}")))
}

pub(crate) fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

fn check_ids(model: &Llama, ids: &[u32], what: &str) -> Result<()> {
    let vocab = model.vocab_size();
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(ModelError::Request(format!(
            "{what} token id {bad} is outside the vocabulary (size {vocab})"
        ))),
        None => Ok(()),
    }
}

/// A context run through the model, ready to score continuations against.
pub struct PreparedContext {
    context: Vec<u32>,
    cache: KvCache,
    /// Logits `[1, 1, vocab]` of the context's last position: the first continuation token's
    /// distribution.
    last_logits: Tensor<3>,
}

impl PreparedContext {
    /// Runs `context` (at least one token) through `model`.
    pub fn new(model: &Llama, context: &[u32], device: &Device) -> Result<Self> {
        if context.is_empty() {
            return Err(ModelError::Request(
                "empty context: lm-evaluation-harness puts the BOS/EOS token there; pass it explicitly".into(),
            ));
        }
        check_ids(model, context, "context")?;
        let mut cache = model.new_cache();
        let hidden = model.forward_hidden(token_tensor(context, device), Some(&mut cache));
        let [b, t, h] = hidden.dims();
        let last = hidden.slice([0..b, t - 1..t, 0..h]);
        Ok(Self {
            context: context.to_vec(),
            cache,
            last_logits: model.logits(last),
        })
    }

    /// Scores `continuation` (at least one token) after this context.
    pub fn score(&self, model: &Llama, continuation: &[u32]) -> Result<Score> {
        if continuation.is_empty() {
            return Err(ModelError::Request("empty continuation".into()));
        }
        check_ids(model, continuation, "continuation")?;
        let device = self.last_logits.device();
        let input_len = self.context.len() + continuation.len() - 1;
        let logits = if model.rope().depends_on_length(input_len) {
            // Dynamic NTK beyond the trained length: the frequencies depend on the whole
            // input, so the context's cache cannot be reused. Score the way
            // lm-evaluation-harness feeds the model: (context + continuation)[:-1] in one pass.
            let mut input = self.context.clone();
            input.extend_from_slice(&continuation[..continuation.len() - 1]);
            let hidden = model.forward_hidden(token_tensor(&input, &device), None);
            let [b, _, h] = hidden.dims();
            model.logits(hidden.slice([0..b, self.context.len() - 1..input_len, 0..h]))
        } else if continuation.len() == 1 {
            self.last_logits.clone()
        } else {
            let mut cache = self.cache.clone();
            let rest = model.forward(
                token_tensor(&continuation[..continuation.len() - 1], &device),
                Some(&mut cache),
            );
            Tensor::cat(vec![self.last_logits.clone(), rest], 1)
        };
        let per_token = target_logprobs(logits, continuation)?;
        Ok(Score {
            loglik: per_token.iter().map(|(lp, _)| lp).sum(),
            greedy: per_token.iter().all(|(_, g)| *g),
        })
    }
}

/// The most recently prepared context: consecutive requests with the same context (the
/// options of one question) share one context pass.
#[derive(Default)]
pub struct ContextCache {
    last: Option<PreparedContext>,
}

impl ContextCache {
    /// The prepared `context`, reusing the previous one when the tokens are the same.
    pub fn prepare(
        &mut self,
        model: &Llama,
        context: &[u32],
        device: &Device,
    ) -> Result<&PreparedContext> {
        if !matches!(&self.last, Some(p) if p.context == context) {
            self.last = Some(PreparedContext::new(model, context, device)?);
        }
        Ok(self.last.as_ref().expect("prepared above"))
    }
}

/// Scores each continuation after `context`, running the context once.
///
/// ```no_run
/// # fn demo(model: &pmc_model::Llama, device: &burn::prelude::Device) -> pmc_model::Result<()> {
/// let scores = pmc_model::score_continuations(model, &[1, 450, 7483], &[vec![338], vec![471, 29889]], device)?;
/// println!("{:?}", scores[0].loglik);
/// # Ok(()) }
/// ```
pub fn score_continuations(
    model: &Llama,
    context: &[u32],
    continuations: &[Vec<u32>],
    device: &Device,
) -> Result<Vec<Score>> {
    crate::pool::on_pool(|| {
        let prepared = PreparedContext::new(model, context, device)?;
        continuations
            .iter()
            .map(|c| prepared.score(model, c))
            .collect()
    })
}

/// Log-probabilities of `targets` from final hidden states `[1, n, hidden]` (position `i`
/// predicts `targets[i]`), running the LM head over at most [`HEAD_CHUNK`] positions at a
/// time: a 512 × 32k logits matrix and its log-softmax would otherwise dominate peak memory.
fn hidden_logprobs(model: &Llama, hidden: Tensor<3>, targets: &[u32]) -> Result<Vec<(f64, bool)>> {
    let [b, n, h] = hidden.dims();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(HEAD_CHUNK) {
        let end = (start + HEAD_CHUNK).min(n);
        let logits = model.logits(hidden.clone().slice([0..b, start..end, 0..h]));
        out.extend(target_logprobs(logits, &targets[start..end])?);
    }
    Ok(out)
}

/// Positions per LM-head call in [`hidden_logprobs`].
const HEAD_CHUNK: usize = 128;

/// Mean negative log-likelihood per predicted token of `tokens` (perplexity = its exp),
/// scored in windows of at most `window` tokens that do not overlap.
pub fn mean_nll(model: &Llama, tokens: &[u32], window: usize, device: &Device) -> Result<f64> {
    if tokens.len() < 2 {
        return Err(ModelError::Request(
            "need at least two tokens to measure perplexity".into(),
        ));
    }
    check_ids(model, tokens, "input")?;
    let mut total = 0.0;
    let mut count = 0usize;
    for chunk in tokens.chunks(window.max(2)) {
        if chunk.len() < 2 {
            continue;
        }
        let per_token = crate::pool::on_pool(|| {
            let hidden =
                model.forward_hidden(token_tensor(&chunk[..chunk.len() - 1], device), None);
            hidden_logprobs(model, hidden, &chunk[1..])
        })?;
        total -= per_token.iter().map(|(lp, _)| lp).sum::<f64>();
        count += per_token.len();
    }
    Ok(total / count as f64)
}

/// One line of a scoring request file, as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

impl ScoreRequest {
    /// Every request of a JSONL file (blank lines skipped) with its 1-based line number;
    /// an error names the file and the line.
    pub fn read_jsonl(
        path: &std::path::Path,
        tokenizer: Option<&crate::Tokenizer>,
    ) -> Result<Vec<(usize, ScoreRequest)>> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let at = |m: String| {
                    ModelError::Request(format!("{}: line {}: {m}", path.display(), i + 1))
                };
                match ScoreRequest::parse(line, tokenizer) {
                    Ok(request) => Ok((i + 1, request)),
                    Err(ModelError::Request(message)) => Err(at(message)),
                    Err(other) => Err(at(other.to_string())),
                }
            })
            .collect()
    }

    /// Parses one JSONL line: `{"context_ids": [...], "continuation_ids": [...]}`, or
    /// `{"context": "...", "continuation": "..."}` tokenized lm-evaluation-harness's way
    /// (which needs `tokenizer`; an empty context is conditioned on BOS, else EOS).
    pub fn parse(line: &str, tokenizer: Option<&crate::Tokenizer>) -> Result<Self> {
        use serde_json::Value;
        let bad = |message: String| ModelError::Request(message);
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let ids = |key: &str| -> Result<Vec<u32>> {
            let list = value
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("`{key}` must be a list of token ids")))?;
            list.iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(|| bad(format!("`{key}`: {v} is not a token id")))
                })
                .collect()
        };
        if value.get("context_ids").is_some() || value.get("continuation_ids").is_some() {
            return Ok(ScoreRequest {
                context: ids("context_ids")?,
                continuation: ids("continuation_ids")?,
            });
        }
        let text = |key: &str| -> Result<&str> {
            value.get(key).and_then(Value::as_str).ok_or_else(|| {
                bad(format!("needs `context_ids` + `continuation_ids` or `context` + `continuation` (missing string `{key}`)"))
            })
        };
        let (context, continuation) = (text("context")?, text("continuation")?);
        let tokenizer = tokenizer
            .ok_or_else(|| bad("text requests need a tokenizer, and the model has none".into()))?;
        if context.is_empty() {
            // lm-evaluation-harness conditions an empty context on the prefix (BOS/EOS) token.
            let prefix = tokenizer
                .bos_id
                .or(tokenizer.eos_ids.first().copied())
                .ok_or_else(|| {
                    bad("empty context and the model has neither a BOS nor an EOS token".into())
                })?;
            return Ok(ScoreRequest {
                context: vec![prefix],
                continuation: tokenizer.encode_plain(continuation)?,
            });
        }
        let (context, continuation) = tokenizer.encode_pair(context, continuation)?;
        Ok(ScoreRequest {
            context,
            continuation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_file_of_requests_is_read_with_its_line_numbers_and_bad_lines_named() {
        let dir = std::env::temp_dir().join(format!("pmc-score-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.jsonl");
        std::fs::write(
            &path,
            "{\"context_ids\": [1, 2], \"continuation_ids\": [3]}\n\n{\"context_ids\": [4], \"continuation_ids\": [5, 6]}\n",
        )
        .unwrap();
        let requests = ScoreRequest::read_jsonl(&path, None).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].0, 3, "blank lines keep the numbering");
        assert_eq!(requests[1].1.continuation, [5, 6]);
        std::fs::write(
            &path,
            "{\"context_ids\": [1], \"continuation_ids\": [2]}\nnot json\n",
        )
        .unwrap();
        let err = ScoreRequest::read_jsonl(&path, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("requests.jsonl: line 2: invalid JSON"),
            "{err}"
        );
        let missing = ScoreRequest::read_jsonl(&dir.join("absent.jsonl"), None);
        assert!(missing.unwrap_err().to_string().contains("absent.jsonl"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
