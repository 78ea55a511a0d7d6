//! Running a benchmark: scoring or generating per question, then metrics and output files.

use std::io::Write;
use std::path::{Path, PathBuf};

use pmc_model::burn::prelude::Device;
use pmc_model::{ContextCache, GenerationConfig, Llama, Tokenizer};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::BenchError;
use crate::data::{Question, Split, Task};
use crate::metrics;
use crate::prompt::{self, Template};

/// How answers are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Multiple choice by the log-likelihood of each choice.
    Loglik,
    /// Generate a reply, then extract the option it names.
    Generate,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "loglik" => Ok(Self::Loglik),
            "generate" => Ok(Self::Generate),
            other => Err(format!("unknown mode `{other}` (loglik, generate)")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The benchmark.
    pub task: Task,
    /// Scoring mode.
    pub mode: Mode,
    /// Prompt template.
    pub template: Template,
    /// Few-shot examples from the train pool (0 = zero-shot).
    pub shots: usize,
    /// Seed of the few-shot sampler and the bootstrap.
    pub seed: u64,
    /// Generation settings (generate mode).
    pub generation: GenerationConfig,
}

/// The outcome for one question.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// The question's id.
    pub id: String,
    /// 0-based gold option.
    pub gold: usize,
    /// 0-based predicted option (`acc`); `None` when a generated reply names no option.
    pub pred: Option<usize>,
    /// Per-option summed log-likelihood (loglik mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loglik: Vec<f64>,
    /// Prediction by length-normalised log-likelihood (`acc_norm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    /// The generated reply (generate mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    /// MedMCQA's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

fn argmax(xs: impl Iterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in xs.enumerate() {
        // First maximum wins, as numpy's argmax.
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// Few-shot examples for each question: `shots` distinct train questions drawn with a seeded
/// generator (the same draw for every question, as lm-eval's default sampler with a fixed seed).
pub fn fewshot_examples(pool: &[Question], shots: usize, seed: u64) -> Vec<Question> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut examples: Vec<Question> = pool.to_vec();
    examples.shuffle(&mut rng);
    examples.truncate(shots);
    examples
}

/// Scores one question in loglik mode: the context runs once and its KV cache is shared by
/// all choices.
pub fn score_question(
    model: &Llama,
    tokenizer: &Tokenizer,
    task: Task,
    q: &Question,
    shots: &[Question],
    device: &Device,
) -> Result<Prediction, BenchError> {
    let choices = prompt::lm_eval_choices(task, q);
    let mut contexts = ContextCache::default();
    let mut loglik = Vec::with_capacity(choices.len());
    for request in prompt::loglik_requests(task, q, shots, tokenizer)? {
        // A choice whose context tokens differ (a merge across the boundary) gets its own
        // context pass.
        let ctx = contexts.prepare(model, &request.context, device)?;
        loglik.push(ctx.score(model, &request.continuation)?.loglik);
    }
    let pred = argmax(loglik.iter().copied());
    let pred_norm = argmax(
        loglik
            .iter()
            .zip(&choices)
            .map(|(l, c)| l / c.chars().count() as f64),
    );
    Ok(Prediction {
        id: q.id.clone(),
        gold: q.gold,
        pred,
        loglik,
        pred_norm,
        generated: None,
        subject: q.subject.clone(),
    })
}

/// Answers one question in generate mode with the PMC-LLaMA template.
pub fn generate_question(
    model: &Llama,
    tokenizer: &Tokenizer,
    task: Task,
    q: &Question,
    generation: &GenerationConfig,
    chat: Option<&ChatPrompt>,
    device: &Device,
) -> Result<Prediction, BenchError> {
    let (ids, stop_ids) = match chat {
        None => (
            tokenizer.encode(&prompt::pmc_llama_prompt(task, q))?,
            &tokenizer.eos_ids,
        ),
        Some(chat) => {
            let message = pmc_model::Message::new("user", &prompt::chat_message(task, q));
            let text = chat.template.render(&[message], true)?;
            (tokenizer.encode_plain(&text)?, &chat.stop_ids)
        }
    };
    let tokens = pmc_model::generate(model, &ids, generation, stop_ids, device, |_| Ok(true))?;
    let text = tokenizer.decode(&tokens)?;
    Ok(Prediction {
        id: q.id.clone(),
        gold: q.gold,
        pred: prompt::extract_answer(&text, &q.options),
        loglik: Vec::new(),
        pred_norm: None,
        generated: Some(text),
        subject: q.subject.clone(),
    })
}

/// A model's chat template with the tokens that end its turns (`--template chat`).
pub struct ChatPrompt {
    pub template: pmc_model::ChatTemplate,
    pub stop_ids: Vec<u32>,
}

impl ChatPrompt {
    /// The chat template of `tokenizer`'s model (`model` names it in the error when there is
    /// none).
    pub fn of(tokenizer: &Tokenizer, model: &std::path::Path) -> Result<Self, BenchError> {
        let template = pmc_model::ChatTemplate::of(tokenizer, model)?;
        let stop_ids = template.end_of_turn_ids(tokenizer)?;
        Ok(ChatPrompt { template, stop_ids })
    }
}

/// A model set up for one evaluation config: with `--template chat`, its chat template.
pub struct Evaluator<'a> {
    pub model: &'a Llama,
    pub tokenizer: &'a Tokenizer,
    pub config: &'a EvalConfig,
    pub device: &'a Device,
    chat: Option<ChatPrompt>,
}

impl<'a> Evaluator<'a> {
    /// `model_path` names the model in errors (a chat template asked for but absent).
    pub fn new(
        model: &'a Llama,
        tokenizer: &'a Tokenizer,
        config: &'a EvalConfig,
        device: &'a Device,
        model_path: &std::path::Path,
    ) -> Result<Self, BenchError> {
        let chat = match config.template {
            Template::Chat => Some(ChatPrompt::of(tokenizer, model_path)?),
            Template::LmEval | Template::PmcLlama => None,
        };
        Ok(Evaluator {
            model,
            tokenizer,
            config,
            device,
            chat,
        })
    }

    /// One question's prediction.
    pub fn question(&self, q: &Question, shots: &[Question]) -> Result<Prediction, BenchError> {
        let (model, tokenizer, task) = (self.model, self.tokenizer, self.config.task);
        match self.config.mode {
            Mode::Loglik => score_question(model, tokenizer, task, q, shots, self.device),
            Mode::Generate => generate_question(
                model,
                tokenizer,
                task,
                q,
                &self.config.generation,
                self.chat.as_ref(),
                self.device,
            ),
        }
    }

    /// Every question, calling `on_done(predictions so far)` after each (for progress).
    pub fn evaluate(
        &self,
        questions: &[Question],
        shots: &[Question],
        mut on_done: impl FnMut(&[Prediction]),
    ) -> Result<Vec<Prediction>, BenchError> {
        let mut out = Vec::with_capacity(questions.len());
        for q in questions {
            out.push(self.question(q, shots)?);
            on_done(&out);
        }
        Ok(out)
    }
}

/// Accuracy with its standard error and 95 % intervals.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccuracyReport {
    /// Fraction correct.
    pub value: f64,
    /// lm-eval's standard error.
    pub stderr: f64,
    /// Wilson 95 % interval.
    pub wilson_95: (f64, f64),
    /// Percentile bootstrap 95 % interval (10,000 resamples).
    pub bootstrap_95: (f64, f64),
}

fn report(correct: &[bool], seed: u64) -> AccuracyReport {
    AccuracyReport {
        value: metrics::accuracy(correct),
        stderr: metrics::stderr(correct),
        wilson_95: metrics::wilson(correct.iter().filter(|&&c| c).count(), correct.len()),
        bootstrap_95: metrics::bootstrap(correct, 10_000, seed),
    }
}

/// The key of accuracy in `results.json` (lm-eval's `metric,filter`).
pub const ACC_KEY: &str = "acc,none";
/// The key of accuracy's Wilson 95 % interval in `results.json`.
pub const ACC_WILSON_KEY: &str = "acc_wilson_95,none";

/// Everything `results.json` holds.
pub fn results_json(
    config: &EvalConfig,
    predictions: &[Prediction],
    model: &str,
    data_file: &Path,
    data_sha256: &str,
    seconds: f64,
) -> Value {
    let acc: Vec<bool> = predictions.iter().map(|p| p.pred == Some(p.gold)).collect();
    let mut metrics = serde_json::Map::new();
    let a = report(&acc, config.seed);
    metrics.insert(ACC_KEY.into(), json!(a.value));
    metrics.insert("acc_stderr,none".into(), json!(a.stderr));
    metrics.insert(ACC_WILSON_KEY.into(), json!(a.wilson_95));
    metrics.insert("acc_bootstrap_95,none".into(), json!(a.bootstrap_95));
    if config.mode == Mode::Loglik {
        let norm: Vec<bool> = predictions
            .iter()
            .map(|p| p.pred_norm == Some(p.gold))
            .collect();
        let n = report(&norm, config.seed);
        metrics.insert("acc_norm,none".into(), json!(n.value));
        metrics.insert("acc_norm_stderr,none".into(), json!(n.stderr));
        metrics.insert("acc_norm_wilson_95,none".into(), json!(n.wilson_95));
        metrics.insert("acc_norm_bootstrap_95,none".into(), json!(n.bootstrap_95));
    } else {
        let unparsed = predictions.iter().filter(|p| p.pred.is_none()).count();
        metrics.insert("unparsed,none".into(), json!(unparsed));
    }
    if config.task == Task::PubMedQa {
        let gold: Vec<usize> = predictions.iter().map(|p| p.gold).collect();
        let pred: Vec<Option<usize>> = predictions.iter().map(|p| p.pred).collect();
        metrics.insert(
            "macro_f1,none".into(),
            json!(metrics::macro_f1(&gold, &pred, 3)),
        );
    }
    let mut subjects: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for p in predictions {
        if let Some(s) = &p.subject {
            let e = subjects.entry(s).or_default();
            e.0 += usize::from(p.pred == Some(p.gold));
            e.1 += 1;
        }
    }
    let per_subject: serde_json::Map<String, Value> = subjects
        .iter()
        .map(|(s, (k, n))| (s.to_string(), json!({"acc": *k as f64 / *n as f64, "n": n})))
        .collect();
    metrics.insert("alias".into(), json!(config.task.name()));
    json!({
        "results": {config.task.name(): metrics},
        "per_subject": per_subject,
        "n_samples": {config.task.name(): predictions.len()},
        "config": {
            "model": model,
            "task": config.task,
            "mode": config.mode,
            "template": config.template,
            "num_fewshot": config.shots,
            "seed": config.seed,
            "generation": matches!(config.mode, Mode::Generate).then(|| json!({
                "max_new_tokens": config.generation.max_new_tokens,
                "temperature": config.generation.temperature,
                "top_p": config.generation.top_p,
            })),
            "data_file": data_file,
            "data_sha256": data_sha256,
            "seconds": seconds,
        },
    })
}

/// One `results.json` of several tasks' (lm-evaluation-harness's layout for a multi-task
/// run): their `results`, `n_samples` and `per_subject` side by side, each task's `config`
/// under `configs`.
pub fn merge_results(per_task: &[Value]) -> Value {
    let mut merged = json!({"results": {}, "n_samples": {}, "per_subject": {}, "configs": {}});
    for results in per_task {
        for key in ["results", "n_samples"] {
            if let Some(tasks) = results[key].as_object() {
                for (task, value) in tasks {
                    merged[key][task] = value.clone();
                }
            }
        }
        if let Some(task) = results["results"].as_object().and_then(|t| t.keys().next()) {
            merged["per_subject"][task] = results["per_subject"].clone();
            merged["configs"][task] = results["config"].clone();
        }
    }
    merged
}

/// The markdown table of a results JSON.
pub fn results_markdown(results: &Value) -> String {
    let mut s = String::from(
        "| task | metric | value | stderr | Wilson 95 % | bootstrap 95 % |\n|---|---|---|---|---|---|\n",
    );
    if let Some(tasks) = results["results"].as_object() {
        for (task, m) in tasks {
            for metric in ["acc", "acc_norm"] {
                if let Some(v) = m[format!("{metric},none")].as_f64() {
                    let ci = |k: &str| {
                        let c = &m[format!("{metric}_{k},none")];
                        format!(
                            "[{:.4}, {:.4}]",
                            c[0].as_f64().unwrap_or(f64::NAN),
                            c[1].as_f64().unwrap_or(f64::NAN)
                        )
                    };
                    s.push_str(&format!(
                        "| {task} | {metric} | {v:.4} | {:.4} | {} | {} |\n",
                        m[format!("{metric}_stderr,none")]
                            .as_f64()
                            .unwrap_or(f64::NAN),
                        ci("wilson_95"),
                        ci("bootstrap_95")
                    ));
                }
            }
            if let Some(f1) = m["macro_f1,none"].as_f64() {
                s.push_str(&format!("| {task} | macro_f1 | {f1:.4} | | | |\n"));
            }
            if let Some(u) = m["unparsed,none"].as_u64() {
                s.push_str(&format!("| {task} | unparsed replies | {u} | | | |\n"));
            }
        }
    }
    s
}

/// Writes `predictions.jsonl`, `results.json` and `results.md` into `dir`.
pub fn write_outputs(
    dir: &Path,
    predictions: &[Prediction],
    results: &Value,
) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(dir.to_path_buf(), e))?;
    let io = |p: PathBuf| move |e| BenchError::Io(p.clone(), e);
    let path = dir.join("predictions.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(path.clone()))?);
    for p in predictions {
        serde_json::to_writer(&mut file, p).expect("predictions serialise");
        file.write_all(b"\n").map_err(io(path.clone()))?;
    }
    file.flush().map_err(io(path.clone()))?;
    write_results(dir, results)
}

/// Writes `results.json` and its table `results.md` into `dir`.
pub fn write_results(dir: &Path, results: &Value) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(dir.to_path_buf(), e))?;
    let io = |p: PathBuf| move |e| BenchError::Io(p.clone(), e);
    let path = dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(results).expect("JSON") + "\n",
    )
    .map_err(io(path.clone()))?;
    let path = dir.join("results.md");
    std::fs::write(&path, results_markdown(results)).map_err(io(path.clone()))?;
    Ok(())
}

/// Reads a run's `predictions.jsonl` back as (id, correct) pairs.
pub fn read_predictions(dir: &Path) -> Result<Vec<(String, bool)>, BenchError> {
    let path = dir.join("predictions.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Io(path.clone(), e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| BenchError::Data {
                path: path.clone(),
                line: Some(i + 1),
                message: e.to_string(),
            })?;
            let id = match &v["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok((id, v["pred"].as_u64().is_some() && v["pred"] == v["gold"]))
        })
        .collect()
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn several_tasks_merge_into_one_lm_eval_shaped_result() {
        let one = |task: &str, acc: f64| {
            json!({"results": {task: {ACC_KEY: acc}}, "n_samples": {task: 10},
                   "per_subject": {}, "config": {"task": task}})
        };
        let merged = merge_results(&[one("pubmedqa", 0.5), one("medmcqa", 0.25)]);
        assert_eq!(merged["results"]["pubmedqa"][ACC_KEY], 0.5);
        assert_eq!(merged["results"]["medmcqa"][ACC_KEY], 0.25);
        assert_eq!(merged["n_samples"]["medmcqa"], 10);
        assert_eq!(merged["configs"]["pubmedqa"]["task"], "pubmedqa");
        let table = results_markdown(&merged);
        assert!(table.contains("| pubmedqa | acc | 0.5000"), "{table}");
        assert!(table.contains("| medmcqa | acc | 0.2500"), "{table}");
        assert_eq!(
            Task::parse_list("all").unwrap(),
            [Task::PubMedQa, Task::MedQa, Task::MedMcqa]
        );
        assert_eq!(
            Task::parse_list("medqa,pubmedqa,medqa").unwrap(),
            [Task::MedQa, Task::PubMedQa]
        );
        assert!(Task::parse_list("medqa,nope").is_err());
    }
}

/// A task's questions for one evaluation: the eval split (its first `limit` questions, in
/// file order) and the few-shot examples drawn from its training pool.
#[derive(Debug, Clone)]
pub struct TaskQuestions {
    /// The task.
    pub task: Task,
    /// The file the questions came from.
    pub data_file: PathBuf,
    /// The questions evaluated.
    pub questions: Vec<Question>,
    /// The few-shot examples put before each (loglik mode).
    pub shots: Vec<Question>,
}

impl TaskQuestions {
    /// Loads `task`'s eval split under `data` (a directory laid out like ../shared/data, or
    /// the task's file) and, with `shots` > 0, that many examples of its training pool.
    pub fn load(
        task: Task,
        data: &Path,
        limit: Option<usize>,
        shots: usize,
        seed: u64,
    ) -> Result<Self, BenchError> {
        let data_file = crate::data::resolve(task, Split::Eval, data)?;
        let mut questions = crate::data::load(task, Split::Eval, data)?;
        if let Some(n) = limit {
            questions.truncate(n);
        }
        let shots = if shots > 0 {
            let pool = crate::data::load(task, Split::Train, data).map_err(|e| {
                BenchError::Config(format!(
                    "few-shot examples need {}'s train split: {e}",
                    task.name()
                ))
            })?;
            fewshot_examples(&pool, shots, seed)
        } else {
            Vec::new()
        };
        Ok(Self {
            task,
            data_file,
            questions,
            shots,
        })
    }
}

/// SHA-256 of the data a run used; PubMedQA's test split also depends on its ground-truth
/// file beside it.
pub fn data_hash(task: Task, data_file: &Path) -> Result<String, BenchError> {
    let main = crate::sha256_file(data_file)?;
    if task == Task::PubMedQa {
        let truth = data_file.with_file_name("test_ground_truth.json");
        return Ok(format!(
            "{main} + test_ground_truth.json {}",
            crate::sha256_file(&truth)?
        ));
    }
    Ok(main)
}

/// Evaluates `questions` with `evaluator` (calling `on_done` after each question) and writes
/// `predictions.jsonl`, `results.json` (naming the model `model_name`) and `results.md` into
/// `dir`; returns the predictions and the results.
pub fn evaluate_into(
    evaluator: &Evaluator,
    questions: &TaskQuestions,
    model_name: &str,
    dir: &Path,
    on_done: impl FnMut(&[Prediction]),
) -> Result<(Vec<Prediction>, Value), BenchError> {
    let started = std::time::Instant::now();
    let predictions = evaluator.evaluate(&questions.questions, &questions.shots, on_done)?;
    let results = results_json(
        evaluator.config,
        &predictions,
        model_name,
        &questions.data_file,
        &data_hash(questions.task, &questions.data_file)?,
        started.elapsed().as_secs_f64(),
    );
    write_outputs(dir, &predictions, &results)?;
    Ok((predictions, results))
}

/// Two evaluation runs' correctness on the same questions, paired by question id.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedRuns {
    /// Run A's correctness, in A's question order.
    pub a: Vec<bool>,
    /// Run B's on the same questions.
    pub b: Vec<bool>,
}

impl PairedRuns {
    /// Reads the predictions in `run_a` and `run_b` and pairs them; runs over different
    /// questions are refused, naming a question one lacks.
    pub fn read(run_a: &Path, run_b: &Path) -> Result<Self, BenchError> {
        let a = read_predictions(run_a)?;
        let b = read_predictions(run_b)?;
        let b_by_id: std::collections::HashMap<&str, bool> =
            b.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        let different = |message: String| Err(BenchError::Config(message));
        let mut paired = PairedRuns {
            a: Vec::with_capacity(a.len()),
            b: Vec::with_capacity(a.len()),
        };
        for (id, correct) in &a {
            let Some(&other) = b_by_id.get(id.as_str()) else {
                return different(format!(
                    "question {id} is in {} but not in {}",
                    run_a.display(),
                    run_b.display()
                ));
            };
            paired.a.push(*correct);
            paired.b.push(other);
        }
        if a.len() != b.len() {
            return different(format!(
                "the runs cover different questions ({} vs {})",
                a.len(),
                b.len()
            ));
        }
        Ok(paired)
    }

    /// Questions A got right and B wrong, and the other way round.
    pub fn discordant(&self) -> (usize, usize) {
        let only = |x: &[bool], y: &[bool]| x.iter().zip(y).filter(|(x, y)| **x && !**y).count();
        (only(&self.a, &self.b), only(&self.b, &self.a))
    }

    /// McNemar's exact test of A and B being equally accurate.
    pub fn mcnemar_p(&self) -> f64 {
        let (only_a, only_b) = self.discordant();
        metrics::mcnemar_exact(only_a, only_b)
    }
}

/// How every task of an evaluation is run.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// loglik or generate.
    pub mode: Mode,
    /// The prompt template (`None`: lm-eval for loglik, PMC-LLaMA's for generate).
    pub template: Option<Template>,
    /// Few-shot examples (loglik only).
    pub shots: usize,
    /// Seed of the few-shot draw, sampling and bootstrap.
    pub seed: u64,
    /// Decoding (generate mode).
    pub generation: GenerationConfig,
}

impl EvalSettings {
    /// The template, refused where it does not go with the mode (loglik uses lm-eval,
    /// generate PMC-LLaMA's or the model's chat template), as are shots in generate mode.
    pub fn template(&self) -> Result<Template, BenchError> {
        let template = self.template.unwrap_or(match self.mode {
            Mode::Loglik => Template::LmEval,
            Mode::Generate => Template::PmcLlama,
        });
        match (self.mode, template) {
            (Mode::Loglik, Template::LmEval)
            | (Mode::Generate, Template::PmcLlama | Template::Chat) => {}
            (mode, template) => {
                return Err(BenchError::Config(format!(
                    "--template {template:?} does not go with --mode {mode:?} (loglik uses lm-eval, generate uses pmc-llama or chat)"
                )));
            }
        }
        if self.shots > 0 && self.mode == Mode::Generate {
            return Err(BenchError::Config(
                "--shots is supported in loglik mode only".into(),
            ));
        }
        Ok(template)
    }
}

/// Evaluates the `loaded` model (named `model_name` in the results) on every task of `runs`, calling `on_done(task, predictions so far)` after each question. One
/// task writes its outputs into `out`; several write each into `out/TASK` and the merged
/// results into `out`. Returns the results.
pub fn evaluate_tasks(
    loaded: &pmc_model::LoadedModel,
    model_name: &str,
    settings: &EvalSettings,
    runs: &[TaskQuestions],
    out: &Path,
    mut on_done: impl FnMut(Task, &[Prediction]),
) -> Result<Value, BenchError> {
    let template = settings.template()?;
    let tokenizer = loaded.require_tokenizer()?;
    let device = pmc_model::default_device();
    let several = runs.len() > 1;
    let mut all_results = Vec::new();
    for r in runs {
        let config = EvalConfig {
            task: r.task,
            mode: settings.mode,
            template,
            shots: settings.shots,
            seed: settings.seed,
            generation: settings.generation,
        };
        let evaluator = Evaluator::new(&loaded.model, tokenizer, &config, &device, &loaded.source)?;
        let dir = if several {
            out.join(r.task.name())
        } else {
            out.to_path_buf()
        };
        let (_, results) = evaluate_into(&evaluator, r, model_name, &dir, |done| {
            on_done(r.task, done)
        })?;
        all_results.push(results);
    }
    if !several {
        return all_results
            .pop()
            .ok_or_else(|| BenchError::Config("no task to evaluate".into()));
    }
    let merged = merge_results(&all_results);
    write_results(out, &merged)?;
    Ok(merged)
}
