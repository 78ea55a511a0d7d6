//! Benchmark accuracy measured during training: a fixed set of multiple-choice questions,
//! already tokenized (each choice a context and a continuation, lm-evaluation-harness's
//! loglik way), scored through the trainer at every evaluation — so the curve of accuracy by
//! tokens trained sits beside held-out perplexity. Which questions and how they become
//! tokens is the benchmark harness's business (`pmc_bench` builds probes); this module only
//! scores them, on every rank alike.

use std::time::Instant;

use pmc_model::ScoreRequest;
use serde::Serialize;

use crate::TrainError;
use crate::step::TrainStep;

/// One question: a request per choice and the index of the right one.
#[derive(Debug, Clone)]
pub struct ChoiceQuestion {
    /// The question's id in its benchmark.
    pub id: String,
    /// The context and continuation of each choice.
    pub choices: Vec<ScoreRequest>,
    /// The right choice.
    pub gold: usize,
}

/// A named set of questions scored at every evaluation.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The task's name in `metrics.jsonl` and on the chart.
    pub name: String,
    /// The questions, the same at every evaluation.
    pub questions: Vec<ChoiceQuestion>,
}

/// A probe's accuracy at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeScore {
    /// Fraction of questions whose right choice has the highest log-likelihood.
    pub acc: f64,
    /// Wilson 95 % interval of `acc`.
    pub wilson_95: (f64, f64),
    /// Questions scored.
    pub n: usize,
    /// Wall seconds the evaluation took.
    pub seconds: f64,
}

impl Probe {
    /// Scores every choice through `trainer` (each rank a share, gathered on all) and counts
    /// the questions whose right choice scores highest (the first of equal maxima wins, as
    /// in lm-evaluation-harness).
    pub fn score(&self, trainer: &dyn TrainStep) -> Result<ProbeScore, TrainError> {
        let started = Instant::now();
        let requests: Vec<ScoreRequest> = self
            .questions
            .iter()
            .flat_map(|q| q.choices.iter().cloned())
            .collect();
        let logliks = trainer.continuation_logliks(&requests)?;
        let mut at = 0;
        let mut correct = 0;
        for q in &self.questions {
            let scores = &logliks[at..at + q.choices.len()];
            at += q.choices.len();
            let best = scores
                .iter()
                .enumerate()
                .fold(None::<(usize, f64)>, |best, (i, &s)| match best {
                    Some((_, b)) if b >= s => best,
                    _ => Some((i, s)),
                });
            correct += usize::from(best.map(|b| b.0) == Some(q.gold));
        }
        let n = self.questions.len();
        Ok(ProbeScore {
            acc: correct as f64 / n.max(1) as f64,
            wilson_95: wilson(correct, n),
            n,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The Wilson score 95 % interval of `k` successes in `n` trials (NaN for none).
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Every probe's score at this evaluation, as `metrics.jsonl` records it: `{name: score}`.
pub fn score_all(
    probes: &[Probe],
    trainer: &dyn TrainStep,
) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
    let mut out = serde_json::Map::new();
    for probe in probes {
        let score = probe.score(trainer)?;
        out.insert(
            probe.name.clone(),
            serde_json::to_value(score).expect("a score serialises"),
        );
    }
    Ok(out)
}
