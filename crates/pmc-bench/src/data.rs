//! Loaders for the benchmarks in their original release formats.
//!
//! - PubMedQA PQA-L: `ori_pqal.json` (1,000 questions keyed by PMID) and
//!   `test_ground_truth.json` (the official 500-question test split, `{PMID: label}`).
//! - MedQA (USMLE, US): JSONL with `question`, `options` {A..D or A..E}, `answer_idx`.
//! - MedMCQA: JSONL in the original layout (`opa`..`opd`, `cop`, `subject_name`) or the
//!   `choices`/`answer` layout.

use std::path::{Path, PathBuf};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Map, Value};

use crate::BenchError;

/// Keeps `n` of `items` drawn in a shuffle seeded by `seed` (all of them, shuffled, when
/// there are no more than `n`): the same draw for the same seed, wherever it is made.
pub fn seeded_sample<T>(items: &mut Vec<T>, n: usize, seed: u64) {
    items.shuffle(&mut StdRng::seed_from_u64(seed));
    items.truncate(n);
}

/// The three benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// PubMedQA, reasoning-required setting (question + abstract).
    PubMedQa,
    /// MedQA (USMLE), 4 or 5 options.
    MedQa,
    /// MedMCQA, 4 options.
    MedMcqa,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "pubmedqa" => Ok(Self::PubMedQa),
            "medqa" | "medqa_4options" | "usmle" => Ok(Self::MedQa),
            "medmcqa" => Ok(Self::MedMcqa),
            other => Err(format!("unknown task `{other}` (pubmedqa, medqa, medmcqa)")),
        }
    }
}

impl Task {
    /// The three tasks, in the order PMC-LLaMA's table lists them.
    pub const ALL: [Task; 3] = [Task::PubMedQa, Task::MedQa, Task::MedMcqa];

    /// `all` (the MultiMedQA multiple-choice subset this harness runs: PubMedQA, MedQA,
    /// MedMCQA) or a comma-separated list of task names.
    pub fn parse_list(s: &str) -> Result<Vec<Task>, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::ALL.to_vec());
        }
        let mut tasks: Vec<Task> = Vec::new();
        for name in s.split(',').map(str::trim) {
            let task: Task = name.parse()?;
            if !tasks.contains(&task) {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// The task's name in results (lm-evaluation-harness's task names).
    pub fn name(self) -> &'static str {
        match self {
            Self::PubMedQa => "pubmedqa",
            Self::MedQa => "medqa_4options",
            Self::MedMcqa => "medmcqa",
        }
    }
}

/// Which part of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The evaluation split: PubMedQA's official 500, MedQA test, MedMCQA dev (its test set
    /// has no public labels).
    Eval,
    /// The pool few-shot examples and fine-tuning data come from: PubMedQA's other 500,
    /// MedQA and MedMCQA `train` files when present.
    Train,
}

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// PMID for PubMedQA; the record's `id`, else its 0-based line number.
    pub id: String,
    /// The question text.
    pub question: String,
    /// PubMedQA's abstract sections (`CONTEXTS`), empty elsewhere.
    pub contexts: Vec<String>,
    /// Option texts, in order (A, B, ...; yes/no/maybe for PubMedQA).
    pub options: Vec<String>,
    /// 0-based index of the correct option.
    pub gold: usize,
    /// MedMCQA's `subject_name`, when present.
    pub subject: Option<String>,
    /// PubMedQA's long answer (the reasoning-free setting's extra context).
    pub long_answer: Option<String>,
}

fn read_text(path: &Path) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|e| BenchError::Io(path.to_path_buf(), e))
}

fn bad(path: &Path, line: Option<usize>, message: impl Into<String>) -> BenchError {
    BenchError::Data {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Questions of MedMCQA's dev split that become its fine-tuning pool when the data has no
/// MedMCQA training file (the shared data has none; the test split's labels are withheld):
/// a seeded draw of this many (at most a quarter of dev) is the pool, and MedMCQA is
/// evaluated on the rest of dev, so no question is both trained and evaluated on.
pub const MEDMCQA_CARVED_POOL: usize = 1_000;

/// The seed of that draw (the paper's arXiv number, 2304.14454).
pub const MEDMCQA_CARVE_SEED: u64 = 2304;

/// The files a split may be in, relative to a data directory, in order of preference.
fn candidates(task: Task, split: Split) -> &'static [&'static str] {
    match (task, split) {
        (Task::PubMedQa, _) => &["pubmedqa/ori_pqal.json"],
        (Task::MedQa, Split::Eval) => &["medqa/test_4options.jsonl", "medqa/test.jsonl"],
        // The shared data ships a 1,030-question subset of the official training split.
        (Task::MedQa, Split::Train) => &[
            "medqa/train_4options.jsonl",
            "medqa/train.jsonl",
            "medqa/train_4options_subset.jsonl",
        ],
        (Task::MedMcqa, Split::Eval) => &["medmcqa/dev.jsonl", "medmcqa/dev.json"],
        (Task::MedMcqa, Split::Train) => &["medmcqa/train.jsonl", "medmcqa/train.json"],
    }
}

/// The first of a split's [`candidates`] that exists under `data`.
fn find_file(task: Task, split: Split, data: &Path) -> Option<PathBuf> {
    candidates(task, split)
        .iter()
        .map(|c| data.join(c))
        .find(|p| p.exists())
}

/// Whether `task`'s fine-tuning pool under the data directory `data` is carved out of its
/// evaluation split (MedMCQA with a dev file and no training file; see
/// [`MEDMCQA_CARVED_POOL`]).
pub fn carves_pool(task: Task, data: &Path) -> bool {
    task == Task::MedMcqa
        && data.is_dir()
        && find_file(task, Split::Train, data).is_none()
        && find_file(task, Split::Eval, data).is_some()
}

/// The sentence every report showing `task`'s results carries when its pool is carved.
pub fn split_note(task: Task, data: &Path) -> Option<String> {
    carves_pool(task, data).then(|| {
        format!(
            "{}: no training split in {}; the fine-tuning pool is {} dev questions drawn with \
             seed {MEDMCQA_CARVE_SEED}, and every MedMCQA accuracy is on the other dev questions",
            task.name(),
            data.display(),
            MEDMCQA_CARVED_POOL
        )
    })
}

/// The file of `task`'s `split` under a directory laid out like `../shared/data`, or `data`
/// itself when it is a file. A carved pool ([`carves_pool`]) comes from the dev file.
pub fn resolve(task: Task, split: Split, data: &Path) -> Result<PathBuf, BenchError> {
    if data.is_file() {
        return Ok(data.to_path_buf());
    }
    let split = match carves_pool(task, data) {
        true => Split::Eval,
        false => split,
    };
    find_file(task, split, data).ok_or_else(|| {
        bad(
            data,
            None,
            format!(
                "no {} {:?} file here (looked for {})",
                task.name(),
                split,
                candidates(task, split).join(", ")
            ),
        )
    })
}

/// Loads `task`'s `split` from `data` (a directory like `../shared/data` or the file itself).
pub fn load(task: Task, split: Split, data: &Path) -> Result<Vec<Question>, BenchError> {
    let path = resolve(task, split, data)?;
    let questions = match task {
        Task::PubMedQa => load_pubmedqa(&path, split)?,
        Task::MedQa => load_jsonl(&path, medqa_record)?,
        Task::MedMcqa => load_medmcqa(&path)?,
    };
    Ok(match carves_pool(task, data) {
        true => carve(questions, split),
        false => questions,
    })
}

/// `split`'s part of a dev file whose pool is carved: the seeded draw of
/// [`MEDMCQA_CARVED_POOL`] questions (at most a quarter) for `Train`, the others for `Eval`,
/// each in file order.
fn carve(questions: Vec<Question>, split: Split) -> Vec<Question> {
    let pool_size = MEDMCQA_CARVED_POOL.min(questions.len() / 4);
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(MEDMCQA_CARVE_SEED));
    let mut in_pool = vec![false; questions.len()];
    for &i in &order[..pool_size] {
        in_pool[i] = true;
    }
    let want_pool = split == Split::Train;
    questions
        .into_iter()
        .zip(in_pool)
        .filter(|(_, pooled)| *pooled == want_pool)
        .map(|(q, _)| q)
        .collect()
}

/// The PubMedQA labels, in option order.
pub const PUBMEDQA_LABELS: [&str; 3] = ["yes", "no", "maybe"];

fn load_pubmedqa(path: &Path, split: Split) -> Result<Vec<Question>, BenchError> {
    let all: Map<String, Value> = serde_json::from_str(&read_text(path)?)
        .map_err(|e| bad(path, Some(e.line()), e.to_string()))?;
    let truth_path = path.with_file_name("test_ground_truth.json");
    let truth: Vec<(String, Value)> = {
        // Keep the file's order: `--limit N` takes the first N of it.
        let text = read_text(&truth_path)?;
        let map: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| bad(&truth_path, Some(e.line()), e.to_string()))?;
        map.into_iter().collect()
    };
    let label_index = |label: &str, p: &Path, pmid: &str| {
        PUBMEDQA_LABELS
            .iter()
            .position(|l| *l == label)
            .ok_or_else(|| {
                bad(
                    p,
                    None,
                    format!("PMID {pmid}: label `{label}` is not yes/no/maybe"),
                )
            })
    };
    let question = |pmid: &str, gold: usize| -> Result<Question, BenchError> {
        let r = all.get(pmid).ok_or_else(|| {
            bad(
                &truth_path,
                None,
                format!("PMID {pmid} is not in {}", path.display()),
            )
        })?;
        let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let contexts = r
            .get("CONTEXTS")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(path, None, format!("PMID {pmid}: no CONTEXTS list")))?
            .iter()
            .map(|c| {
                c.as_str().map(str::to_string).ok_or_else(|| {
                    bad(
                        path,
                        None,
                        format!("PMID {pmid}: CONTEXTS holds a non-string"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Question {
            id: pmid.to_string(),
            question: field("QUESTION")
                .ok_or_else(|| bad(path, None, format!("PMID {pmid}: no QUESTION")))?,
            contexts,
            options: PUBMEDQA_LABELS.iter().map(|s| s.to_string()).collect(),
            gold,
            subject: None,
            long_answer: field("LONG_ANSWER"),
        })
    };
    match split {
        Split::Eval => truth
            .iter()
            .map(|(pmid, label)| {
                let label = label.as_str().unwrap_or_default();
                question(pmid, label_index(label, &truth_path, pmid)?)
            })
            .collect(),
        Split::Train => {
            let test: std::collections::HashSet<&str> =
                truth.iter().map(|(p, _)| p.as_str()).collect();
            all.iter()
                .filter(|(pmid, _)| !test.contains(pmid.as_str()))
                .map(|(pmid, r)| {
                    let label = r
                        .get("final_decision")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    question(pmid, label_index(label, path, pmid)?)
                })
                .collect()
        }
    }
}

fn load_jsonl(
    path: &Path,
    parse: fn(&Map<String, Value>, usize) -> Result<Question, String>,
) -> Result<Vec<Question>, BenchError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(path, Some(i + 1), e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad(path, Some(i + 1), "expected a JSON object"))?;
        out.push(parse(obj, i).map_err(|m| bad(path, Some(i + 1), m))?);
    }
    Ok(out)
}

fn record_id(r: &Map<String, Value>, line: usize) -> String {
    match r.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => line.to_string(),
    }
}

fn string(r: &Map<String, Value>, key: &str) -> Result<String, String> {
    r.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("missing string `{key}`"))
}

fn medqa_record(r: &Map<String, Value>, line: usize) -> Result<Question, String> {
    let options = r
        .get("options")
        .and_then(Value::as_object)
        .ok_or("missing object `options`")?;
    let mut letters: Vec<&String> = options.keys().collect();
    letters.sort();
    let expected: Vec<String> = (0..letters.len())
        .map(|i| ((b'A' + i as u8) as char).to_string())
        .collect();
    if letters
        .iter()
        .map(|s| s.as_str())
        .ne(expected.iter().map(String::as_str))
    {
        return Err(format!(
            "options must be lettered A, B, ... (got {letters:?})"
        ));
    }
    let answer = string(r, "answer_idx")?;
    let gold = expected
        .iter()
        .position(|l| *l == answer)
        .ok_or_else(|| format!("answer_idx `{answer}` is not one of the options"))?;
    Ok(Question {
        id: record_id(r, line),
        question: string(r, "question")?,
        contexts: Vec::new(),
        options: letters
            .iter()
            .map(|l| {
                options[*l]
                    .as_str()
                    .map(str::to_string)
                    .ok_or(format!("option {l} is not a string"))
            })
            .collect::<Result<_, _>>()?,
        gold,
        subject: None,
        long_answer: None,
    })
}

fn load_medmcqa(path: &Path) -> Result<Vec<Question>, BenchError> {
    // The original release numbers `cop` from 1; the HF dataset from 0. Tell them apart by
    // the values the file uses.
    let text = read_text(path)?;
    let cops: Vec<i64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("cop").and_then(Value::as_i64))
        .collect();
    let one_based = if cops.is_empty() || cops.contains(&0) {
        false
    } else if cops.contains(&4) {
        true
    } else {
        return Err(bad(
            path,
            None,
            "cannot tell whether `cop` counts from 0 or 1 (no 0 and no 4 in the file)",
        ));
    };
    let parse = if one_based {
        medmcqa_record_1
    } else {
        medmcqa_record_0
    };
    load_jsonl(path, parse)
}

fn medmcqa_record_0(r: &Map<String, Value>, line: usize) -> Result<Question, String> {
    medmcqa_record(r, line, 0)
}

fn medmcqa_record_1(r: &Map<String, Value>, line: usize) -> Result<Question, String> {
    medmcqa_record(r, line, 1)
}

fn medmcqa_record(r: &Map<String, Value>, line: usize, cop_base: i64) -> Result<Question, String> {
    let (options, answer) = if r.contains_key("opa") {
        let options = ["opa", "opb", "opc", "opd"]
            .iter()
            .map(|k| string(r, k))
            .collect::<Result<Vec<_>, _>>()?;
        let cop = r
            .get("cop")
            .and_then(Value::as_i64)
            .ok_or("missing integer `cop`")?;
        (options, cop - cop_base)
    } else {
        let choices = r
            .get("choices")
            .and_then(Value::as_array)
            .ok_or("needs `opa`..`opd` or `choices`")?;
        let options = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = c.as_str().ok_or("choices must be strings")?;
                // "A. text" -> "text": the template adds the letters itself.
                let prefix = format!("{}. ", (b'A' + i as u8) as char);
                Ok(c.strip_prefix(&prefix).unwrap_or(c).to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let answer = r
            .get("answer")
            .and_then(Value::as_i64)
            .ok_or("missing integer `answer`")?;
        (options, answer)
    };
    if options.len() != 4 {
        return Err(format!("{} options, MedMCQA has 4", options.len()));
    }
    if !(0..4).contains(&answer) {
        return Err(format!(
            "answer {answer} is not an option index (unlabelled test data cannot be evaluated)"
        ));
    }
    Ok(Question {
        id: record_id(r, line),
        question: string(r, "question")?,
        contexts: Vec::new(),
        options,
        gold: answer as usize,
        subject: r
            .get("subject_name")
            .and_then(Value::as_str)
            .map(str::to_string),
        long_answer: None,
    })
}
