//! Prompt templates, written out so each choice is explicit.
//!
//! - `lm-eval`: lm-evaluation-harness's task templates, verbatim; the model scores each
//!   choice as a continuation after the target delimiter `" "`.
//! - `pmc-llama`: PMC-LLaMA's Alpaca-style instruction prompt for generation, answered by a
//!   line the answer extractor reads.
//! - `chat`: the same instruction and question as one user turn in the model's own chat
//!   template (instruct models), for generation.

use crate::data::{Question, Task};

/// The template family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// lm-evaluation-harness's task templates.
    LmEval,
    /// PMC-LLaMA's instruction template.
    PmcLlama,
    /// The model's chat template around PMC-LLaMA's instruction and input.
    Chat,
}

impl std::str::FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lm-eval" => Ok(Self::LmEval),
            "pmc-llama" => Ok(Self::PmcLlama),
            "chat" => Ok(Self::Chat),
            other => Err(format!(
                "unknown template `{other}` (lm-eval, pmc-llama, chat)"
            )),
        }
    }
}

/// lm-eval's separator between the context and a choice.
pub const TARGET_DELIMITER: &str = " ";
/// lm-eval's separator between few-shot examples.
pub const FEWSHOT_DELIMITER: &str = "\n\n";

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// lm-eval's `doc_to_text` for `task`.
pub fn lm_eval_context(task: Task, q: &Question) -> String {
    match task {
        Task::PubMedQa => format!(
            "Abstract: {}\nQuestion: {}\nAnswer:",
            q.contexts.join("\n"),
            q.question
        ),
        Task::MedQa => {
            let mut s = format!("Question: {}", q.question);
            for (i, o) in q.options.iter().enumerate() {
                s.push_str(&format!("\n{}. {o}", letter(i)));
            }
            s + "\nAnswer:"
        }
        Task::MedMcqa => {
            let mut s = format!("Question: {}\nChoices:", q.question);
            for (i, o) in q.options.iter().enumerate() {
                s.push_str(&format!("\n{}. {o}", letter(i)));
            }
            s + "\nAnswer:"
        }
    }
}

/// lm-eval's `doc_to_choice`: the strings scored after the context (without the delimiter).
pub fn lm_eval_choices(task: Task, q: &Question) -> Vec<String> {
    match task {
        Task::PubMedQa => q.options.clone(),
        Task::MedQa | Task::MedMcqa => (0..q.options.len())
            .map(|i| letter(i).to_string())
            .collect(),
    }
}

/// How loglik mode scores `q`: one request per choice, the context (with `shots` before
/// it) and `" " + choice` tokenized as lm-eval splits them. The contexts are the same tokens
/// for every choice unless a merge crosses the boundary.
pub fn loglik_requests(
    task: Task,
    q: &Question,
    shots: &[Question],
    tokenizer: &pmc_model::Tokenizer,
) -> Result<Vec<pmc_model::ScoreRequest>, crate::BenchError> {
    let context = with_shots(task, q, shots);
    lm_eval_choices(task, q)
        .iter()
        .map(|choice| {
            let (context, continuation) =
                tokenizer.encode_pair(&context, &format!("{TARGET_DELIMITER}{choice}"))?;
            Ok(pmc_model::ScoreRequest {
                context,
                continuation,
            })
        })
        .collect()
}

/// A context with `shots` solved examples before it, lm-eval style: each example is its
/// context, the delimiter and its gold choice; examples are separated by a blank line.
pub fn with_shots(task: Task, q: &Question, shots: &[Question]) -> String {
    let mut s = String::new();
    for example in shots {
        let choices = lm_eval_choices(task, example);
        s.push_str(&lm_eval_context(task, example));
        s.push_str(TARGET_DELIMITER);
        s.push_str(&choices[example.gold]);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(&lm_eval_context(task, q));
    s
}

/// PMC-LLaMA's Alpaca-style prompt (shared with instruction tuning in `pmc-train`).
pub use pmc_train::sft::PMC_LLAMA_TEMPLATE;
/// PMC-LLaMA's instruction for multiple-choice questions.
pub const PMC_LLAMA_INSTRUCTION: &str = "You're a doctor, kindly address the medical queries according to the patient's account. Answer with the best option directly.";

/// The PMC-LLaMA input of a question: `###Question: … ###Options: A. … B. …`. PubMedQA's
/// abstract goes before the question, its options are yes/no/maybe as A/B/C.
pub fn pmc_llama_input(task: Task, q: &Question) -> String {
    let mut input = String::new();
    if task == Task::PubMedQa {
        input.push_str(&format!("###Context: {} ", q.contexts.join(" ")));
    }
    input.push_str(&format!("###Question: {} ###Options:", q.question));
    for (i, o) in q.options.iter().enumerate() {
        input.push_str(&format!(" {}. {o}", letter(i)));
    }
    input
}

/// The PMC-LLaMA prompt of a question (its template, instruction and input).
pub fn pmc_llama_prompt(task: Task, q: &Question) -> String {
    pmc_train::Template::PmcLlama.prompt(&instruction_example(task, q))
}

/// The user's turn of a question for a chat model: PMC-LLaMA's instruction, a blank line,
/// and its input.
pub fn chat_message(task: Task, q: &Question) -> String {
    format!("{PMC_LLAMA_INSTRUCTION}\n\n{}", pmc_llama_input(task, q))
}

/// A question as an instruction-tuning example in PMC-LLaMA's format: the prompt of
/// [`pmc_llama_prompt`] and the answer `OPTION X IS CORRECT.`, the form its regex reads.
pub fn instruction_example(task: Task, q: &Question) -> pmc_train::Example {
    pmc_train::Example {
        instruction: PMC_LLAMA_INSTRUCTION.to_string(),
        input: pmc_llama_input(task, q),
        output: format!("OPTION {} IS CORRECT.", letter(q.gold)),
    }
}

/// The option a generated answer names, or `None` when it names none unambiguously.
///
/// First PMC-LLaMA's own pattern, `OPTION X IS CORRECT` (case-insensitive, first match);
/// then "answer is X" / "answer: X"; then a reply that starts with the letter alone (`B`,
/// `B.`, `(B)`, `B)`); then a reply that starts with exactly one option's text. Nothing else
/// is guessed.
pub fn extract_answer(text: &str, options: &[String]) -> Option<usize> {
    let n = options.len();
    let letter_index = |c: char| {
        let i = (c.to_ascii_uppercase() as u8).wrapping_sub(b'A') as usize;
        (i < n).then_some(i)
    };
    let upper = text.to_uppercase();
    for (pos, _) in upper.match_indices("OPTION ") {
        let bytes = &upper.as_bytes()[pos + "OPTION ".len()..];
        if bytes.len() > 2
            && bytes[1] == b' '
            && bytes[2..].starts_with(b"IS CORRECT")
            && let Some(i) = letter_index(bytes[0] as char)
        {
            return Some(i);
        }
    }
    for marker in ["ANSWER IS ", "ANSWER: ", "ANSWER IS: ", "ANSWER IS OPTION "] {
        if let Some(pos) = upper.find(marker) {
            let rest = upper[pos + marker.len()..].trim_start_matches(['(', ' ']);
            let mut chars = rest.chars();
            if let Some(c) = chars.next()
                && !chars.next().is_some_and(|d| d.is_ascii_alphanumeric())
                && let Some(i) = letter_index(c)
            {
                return Some(i);
            }
        }
    }
    let trimmed = text.trim_start();
    let bare = trimmed.trim_start_matches('(');
    let mut chars = bare.chars();
    if let Some(c) = chars.next()
        && c.is_ascii_uppercase()
        // "A." or "(A)" but not "A patient ..." or "A or B".
        && chars.next().is_none_or(|d| matches!(d, '.' | ')' | ':' | '\n'))
        && let Some(i) = letter_index(c)
    {
        return Some(i);
    }
    let lower = trimmed.to_lowercase();
    let starts: Vec<usize> = (0..n)
        .filter(|&i| !options[i].is_empty() && lower.starts_with(&options[i].to_lowercase()))
        .collect();
    match starts.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}
