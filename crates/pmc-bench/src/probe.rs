//! Benchmark questions as probes of a training run (`pretrain --eval-tasks`): a fixed,
//! seeded subset of each task's evaluation split, tokenized exactly as loglik-mode
//! evaluation tokenizes it (lm-eval's context and choices), so a probe's accuracy at a step
//! is what `eval` would report for those questions on that checkpoint.

use std::path::Path;

use pmc_model::Tokenizer;
use pmc_train::probe::{ChoiceQuestion, Probe};

use crate::BenchError;
use crate::data::{self, Split, Task};
use crate::prompt;

/// One task and how many of its questions to probe with (`pubmedqa:200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The task.
    pub task: Task,
    /// Questions drawn from its evaluation split.
    pub questions: usize,
}

impl std::str::FromStr for ProbeSpec {
    type Err = String;

    /// `TASK:N`, or `TASK` alone for 200 questions.
    fn from_str(s: &str) -> Result<Self, String> {
        let (task, n) = s.split_once(':').unwrap_or((s, "200"));
        let task: Task = task.parse()?;
        let questions =
            n.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                format!("{s:?}: the number of questions must be a positive integer")
            })?;
        Ok(ProbeSpec { task, questions })
    }
}

/// The probes of `specs`: for each task, `questions` drawn from its evaluation split under
/// `data` in a shuffle seeded by `seed` (the same questions on every rank and every resume),
/// each choice tokenized by [`prompt::loglik_requests`], as [`crate::run::score_question`] scores it.
pub fn probes(
    specs: &[ProbeSpec],
    data: &Path,
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<Vec<Probe>, BenchError> {
    specs
        .iter()
        .map(|spec| {
            let mut questions = data::load(spec.task, Split::Eval, data)?;
            if spec.questions > questions.len() {
                return Err(BenchError::Config(format!(
                    "{} has {} evaluation questions under {}; {} were asked for",
                    spec.task.name(),
                    questions.len(),
                    data.display(),
                    spec.questions
                )));
            }
            data::seeded_sample(&mut questions, spec.questions, seed);
            let questions = questions
                .iter()
                .map(|q| {
                    Ok(ChoiceQuestion {
                        id: q.id.clone(),
                        choices: prompt::loglik_requests(spec.task, q, &[], tokenizer)?,
                        gold: q.gold,
                    })
                })
                .collect::<Result<_, BenchError>>()?;
            Ok(Probe {
                name: spec.task.name().to_string(),
                questions,
            })
        })
        .collect()
}
