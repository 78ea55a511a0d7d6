//! The paper's fine-tuning regimes as data: which examples a task's fine-tuning sees (the
//! whole training pool, or PMC-LLaMA's data-efficient fractions of it), and the accuracy an
//! evaluation run reports, read back as a typed value.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::BenchError;
use crate::data::{self, Split, Task};

/// How a model meets a task in the paper's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    /// Evaluated as it is.
    ZeroShot,
    /// LoRA fine-tuning on the task's training pool.
    Lora,
    /// Full fine-tuning on the task's training pool.
    Full,
}

impl std::str::FromStr for Regime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero-shot" => Ok(Regime::ZeroShot),
            "lora" => Ok(Regime::Lora),
            "full" => Ok(Regime::Full),
            other => Err(format!("unknown regime {other:?} (zero-shot, lora, full)")),
        }
    }
}

impl Regime {
    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Regime::ZeroShot => "zero-shot",
            Regime::Lora => "lora",
            Regime::Full => "full",
        }
    }
}

/// The instruction examples of `task`'s training pool under `data_dir`, keeping a seeded
/// random `fraction` of them (PMC-LLaMA's data-efficient regimes; 1.0 keeps all, in order).
pub fn training_pool(
    task: Task,
    data_dir: &Path,
    fraction: f64,
    seed: u64,
) -> Result<Vec<pmc_train::Example>, BenchError> {
    let questions = data::load(task, Split::Train, data_dir)?;
    let examples = questions
        .iter()
        .map(|q| crate::prompt::instruction_example(task, q))
        .collect();
    keep_fraction(examples, fraction, seed)
}

/// A seeded random `fraction` (in (0, 1]) of `examples`, at least one.
pub fn keep_fraction<T>(
    mut examples: Vec<T>,
    fraction: f64,
    seed: u64,
) -> Result<Vec<T>, BenchError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(BenchError::Config(format!(
            "the training fraction must be in (0, 1], got {fraction}"
        )));
    }
    if fraction < 1.0 {
        let keep = ((examples.len() as f64 * fraction).round() as usize).max(1);
        examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        examples.truncate(keep);
    }
    Ok(examples)
}

/// Accuracy and its Wilson 95 % interval, as an evaluation run's `results.json` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Fraction correct.
    pub acc: f64,
    /// Wilson 95 % interval.
    pub wilson_95: (f64, f64),
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} [{:.3}, {:.3}]",
            self.acc, self.wilson_95.0, self.wilson_95.1
        )
    }
}

/// The accuracy of `task` in the evaluation run written to `dir`.
pub fn read_accuracy(dir: &Path, task: Task) -> Result<Accuracy, BenchError> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Io(path.clone(), e))?;
    let bad = |message: String| BenchError::Data {
        path: path.clone(),
        line: None,
        message,
    };
    let results: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let metrics = &results["results"][task.name()];
    let acc = metrics[crate::run::ACC_KEY]
        .as_f64()
        .ok_or_else(|| bad(format!("no `{}` for {}", crate::run::ACC_KEY, task.name())))?;
    let wilson: (f64, f64) = serde_json::from_value(metrics[crate::run::ACC_WILSON_KEY].clone())
        .map_err(|e| bad(format!("`{}`: {e}", crate::run::ACC_WILSON_KEY)))?;
    Ok(Accuracy {
        acc,
        wilson_95: wilson,
    })
}
