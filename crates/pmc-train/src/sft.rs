//! Instruction data for fine-tuning: prompt/response pairs, formatted with a template,
//! tokenized, and served in padded micro-batches whose loss counts the response only.

use std::path::Path;

use burn::prelude::*;
use pmc_model::Tokenizer;
use serde_json::Value;

use crate::TrainError;
use crate::data::{Batch, Cursor, EpochOrder, TrainingData};

/// PMC-LLaMA's Alpaca-style prompt (its instruction-tuning and evaluation format).
pub const PMC_LLAMA_TEMPLATE: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

/// Alpaca's prompt for examples without an input.
pub const ALPACA_NO_INPUT_TEMPLATE: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

/// How an example becomes a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// [`PMC_LLAMA_TEMPLATE`] (or [`ALPACA_NO_INPUT_TEMPLATE`] when the input is empty).
    PmcLlama,
    /// The instruction and input as they are, joined by a newline.
    Plain,
}

impl Template {
    /// `pmc-llama` or `plain`, as [`Template::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Template::PmcLlama => "pmc-llama",
            Template::Plain => "plain",
        }
    }

    pub fn parse(name: &str) -> Option<Template> {
        match name {
            "pmc-llama" | "alpaca" => Some(Template::PmcLlama),
            "plain" => Some(Template::Plain),
            _ => None,
        }
    }

    /// The prompt of an example; the response follows it after one space.
    pub fn prompt(self, example: &Example) -> String {
        match self {
            Template::PmcLlama if example.input.is_empty() => {
                ALPACA_NO_INPUT_TEMPLATE.replace("{instruction}", &example.instruction)
            }
            Template::PmcLlama => PMC_LLAMA_TEMPLATE
                .replace("{instruction}", &example.instruction)
                .replace("{input}", &example.input),
            Template::Plain if example.input.is_empty() => example.instruction.clone(),
            Template::Plain => format!("{}\n{}", example.instruction, example.input),
        }
    }
}

/// One instruction/response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// Read a JSONL file of `{"instruction", "input"?, "output"}` (Alpaca) or
/// `{"prompt", "response"}` records; a bad line is an error naming file and line.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |m: &str| TrainError::Data {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message: m.to_string(),
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let example = match (
            field("instruction"),
            field("output"),
            field("prompt"),
            field("response"),
        ) {
            (Some(instruction), Some(output), _, _) => Example {
                instruction,
                input: field("input").unwrap_or_default(),
                output,
            },
            (_, _, Some(instruction), Some(output)) => Example {
                instruction,
                input: String::new(),
                output,
            },
            _ => {
                return Err(bad(
                    "expected string fields `instruction` + `output` (and `input`), or `prompt` + `response`",
                ));
            }
        };
        out.push(example);
    }
    if out.is_empty() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            line: None,
            message: "no examples".into(),
        });
    }
    Ok(out)
}

/// Splits off the examples held out for the loss before and after training (never trained
/// on): the last 5 %, between 1 and 16. At least two examples are needed.
pub fn hold_out(examples: &mut Vec<Example>) -> Result<Vec<Example>, TrainError> {
    if examples.len() < 2 {
        return Err(TrainError::Config(
            "need at least two examples (one is held out)".into(),
        ));
    }
    let n = (examples.len() / 20).clamp(1, 16);
    Ok(examples.split_off(examples.len() - n))
}

/// Tokenized examples served in seeded order per epoch, padded per micro-batch.
pub struct SftData {
    /// Token ids of prompt + response + EOS, and how many of them are the prompt.
    examples: Vec<(Vec<u32>, usize)>,
    pad: u32,
    max_len: usize,
    order: EpochOrder,
    /// Examples whose prompt was cut (from the left) to fit `max_len`.
    pub truncated: usize,
    /// Of the tokenized examples, `max_len` and the seed (see [`TrainingData::fingerprint`]).
    fingerprint: String,
}

impl SftData {
    /// Tokenize `examples`: the prompt with the tokenizer's BOS policy, then `" " + output`
    /// and EOS (split as lm-eval splits context and continuation). Longer than `max_len` → the
    /// prompt loses its first tokens (after BOS), so the response is always whole; a response
    /// alone longer than that is an error.
    pub fn new(
        tokenizer: &Tokenizer,
        examples: &[Example],
        template: Template,
        max_len: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let eos = *tokenizer.eos_ids.first().ok_or_else(|| {
            TrainError::Config("the tokenizer has no EOS token to end responses".into())
        })?;
        let mut out = Vec::with_capacity(examples.len());
        let mut truncated = 0;
        for (i, example) in examples.iter().enumerate() {
            // Split the whole text as lm-eval splits context and continuation, so training sees
            // the tokens that scoring the response after this prompt sees.
            let (mut prompt, mut response) = tokenizer
                .encode_pair(&template.prompt(example), &format!(" {}", example.output))?;
            response.push(eos);
            if prompt.len() + response.len() > max_len {
                let keep_head =
                    usize::from(tokenizer.bos_id.is_some_and(|b| prompt.first() == Some(&b)));
                let budget = max_len.checked_sub(response.len() + keep_head).filter(|&b| b > 0).ok_or_else(|| {
                    TrainError::Config(format!("example {i}: the response alone is {} tokens, over --max-len {max_len}", response.len()))
                })?;
                let cut = prompt.len() - keep_head - budget;
                prompt.drain(keep_head..keep_head + cut);
                truncated += 1;
            }
            let prompt_len = prompt.len();
            prompt.extend(response);
            out.push((prompt, prompt_len));
        }
        let bytes = out.iter().flat_map(|(ids, prompt_len)| {
            let prompt = (*prompt_len as u32).to_le_bytes();
            ids.iter().flat_map(|t| t.to_le_bytes()).chain(prompt)
        });
        let fingerprint = format!(
            "instructions-{:016x}-{}-max{max_len}-seed{seed}",
            pmc_model::fnv1a64(bytes),
            out.len(),
        );
        Ok(SftData {
            order: EpochOrder::new(out.len(), seed),
            examples: out,
            pad: eos,
            max_len,
            truncated,
            fingerprint,
        })
    }

    /// Token ids of example `i` (prompt, response, EOS).
    pub fn example_ids(&self, i: usize) -> &[u32] {
        &self.examples[i].0
    }

    /// Tokens of the longest example.
    pub fn longest(&self) -> usize {
        self.examples
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0)
    }
}

impl TrainingData for SftData {
    fn batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> Result<(Batch, Cursor), TrainError> {
        let (indices, cursor) = self.order.take(cursor, n);
        let picked: Vec<&(Vec<u32>, usize)> = indices.iter().map(|&i| &self.examples[i]).collect();
        // Padded to the longest row of this micro-batch, not to max_len.
        let len = picked
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(2)
            .max(2);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for (row, prompt_len) in picked {
            for j in 0..len {
                ids.push(i64::from(row.get(j).copied().unwrap_or(self.pad)));
                mask.push(if j >= *prompt_len && j < row.len() {
                    1.0f32
                } else {
                    0.0
                });
            }
        }
        let tokens = Tensor::from_data(TensorData::new(ids, [n, len]), device);
        let target_mask = Tensor::from_data(TensorData::new(mask, [n, len]), device);
        Ok((
            Batch {
                tokens,
                target_mask: Some(target_mask),
            },
            cursor,
        ))
    }

    fn sequences(&self) -> usize {
        self.examples.len()
    }

    fn seq_len(&self) -> usize {
        self.max_len
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
