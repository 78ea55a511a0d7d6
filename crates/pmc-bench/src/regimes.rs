//! The paper's fine-tuning regimes: which examples a task's fine-tuning sees (the whole
//! training pool, or PMC-LLaMA's data-efficient fractions of it), one cell of the paper's
//! table run in-process (model × regime × task → accuracy, [`run_cell`]), and the accuracy
//! an evaluation run reports, read back as a typed value.

use std::path::{Path, PathBuf};

use pmc_fsdp::FineTuning;
use pmc_train::Method;
use pmc_train::run_dir::UsedDir;

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
        data::seeded_sample(&mut examples, keep, seed);
    }
    Ok(examples)
}

/// Accuracy and its Wilson 95 % interval, as an evaluation run's `results.json` reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl Accuracy {
    /// The accuracy of `predictions`.
    pub fn of(predictions: &[crate::Prediction]) -> Self {
        let correct = predictions
            .iter()
            .filter(|p| p.pred == Some(p.gold))
            .count();
        Accuracy {
            acc: correct as f64 / predictions.len().max(1) as f64,
            wilson_95: crate::metrics::wilson(correct, predictions.len()),
        }
    }
}

/// What every cell of a grid shares: the data, the fine-tuning budget, the questions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CellSettings {
    /// Where the benchmarks are (laid out like ../shared/data).
    pub data: PathBuf,
    /// Share of the training pool fine-tuned on.
    pub fraction: f64,
    /// Fine-tuning steps (`None`: one epoch).
    pub steps: Option<usize>,
    /// Sequences per fine-tuning step.
    pub global_batch: usize,
    /// Evaluate on N questions of each task, drawn with `subset_seed` (the same for every
    /// cell, so cells are paired). Not the first N in file order, as lm-eval's `--limit`
    /// takes: PubMedQA's ground-truth file is sorted by label, so its first 100 are all "yes".
    pub limit: Option<usize>,
    /// Seeds the draw of the `limit` questions.
    pub subset_seed: u64,
}

/// The questions a cell is evaluated on: `settings.limit` of `task`'s evaluation split,
/// drawn with `settings.subset_seed`, or all of it.
pub fn cell_questions(
    task: Task,
    settings: &CellSettings,
) -> Result<crate::run::TaskQuestions, BenchError> {
    let mut questions = crate::run::TaskQuestions::load(task, &settings.data, None, 0, 0)?;
    if let Some(n) = settings.limit {
        data::seeded_sample(&mut questions.questions, n, settings.subset_seed);
    }
    Ok(questions)
}

/// Claims `out` for a grid of cells over `models` (label → path) with `settings`, recorded
/// in `out/grid.json`: a directory that holds a grid of other models or settings is refused
/// (its cells would be mixed into this one's table); the same grid, with more or fewer tasks
/// and regimes, continues there. With `record` false (a dry run) it only checks.
pub fn claim_grid(
    out: &Path,
    models: &[(&str, &Path)],
    settings: &CellSettings,
    record: bool,
) -> Result<(), BenchError> {
    let models: serde_json::Map<String, serde_json::Value> = models
        .iter()
        .map(|(label, path)| (label.to_string(), serde_json::json!(path)))
        .collect();
    let grid = serde_json::json!({"models": models, "settings": settings});
    let path = out.join("grid.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let saved = parse_json(&path, &text)?;
            if saved != grid {
                return Err(BenchError::Config(format!(
                    "{} holds a grid of other models or settings ({} there, {} now): give another --out, or remove it to start over",
                    out.display(),
                    saved,
                    grid
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if record {
                std::fs::create_dir_all(out).map_err(|e| BenchError::Io(out.to_path_buf(), e))?;
                std::fs::write(&path, grid.to_string())
                    .map_err(|e| BenchError::Io(path.clone(), e))?;
            }
            Ok(())
        }
        Err(e) => Err(BenchError::Io(path, e)),
    }
}

/// One cell of the paper's table: `model` (an HF directory or GGUF file) under `regime` on
/// `task`, working in `dir` (the fine-tuning run, then `eval/` with the predictions and
/// results). Zero-shot evaluates the model as it is; LoRA and full fine-tune it on the
/// task's training pool first (PMC-LLaMA's template, r 8 on the seven projections), then
/// evaluate the adapter or the fine-tuned model, loglik mode with lm-eval's prompts. A
/// fine-tuning cell checkpoints every [`CELL_CHECKPOINT_EVERY`] steps; interrupted (Ctrl-C:
/// [`BenchError::Interrupted`], or killed) and run again with the same settings, it continues
/// from its last checkpoint; otherwise it starts afresh, replacing what `dir` held. `None`
/// when the regime needs a training split that `settings.data` lacks.
///
/// A finished cell records itself in `dir/cell.json` (what it was run with and its
/// accuracy); run again with the same model, task, regime and settings it returns that
/// accuracy at once ([`Cell::Cached`]), so an interrupted grid continues where it stopped.
pub fn run_cell(
    model: &Path,
    task: Task,
    regime: Regime,
    settings: &CellSettings,
    dir: &Path,
) -> Result<Cell, BenchError> {
    let key = cell_key(model, task, regime, settings);
    let record = dir.join("cell.json");
    if let Some(saved) = saved_record(&record, &key) {
        let accuracy =
            serde_json::from_value(saved["accuracy"].clone()).map_err(|e| BenchError::Data {
                path: record.clone(),
                line: None,
                message: format!("`accuracy`: {e}"),
            })?;
        return Ok(Cell::Cached(accuracy));
    }
    let accuracy = compute_cell(model, task, regime, settings, dir, &key)?;
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(dir.to_path_buf(), e))?;
    let tmp = dir.join("cell.json.tmp");
    let text = serde_json::json!({"key": key, "accuracy": accuracy}).to_string();
    std::fs::write(&tmp, text).map_err(|e| BenchError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, &record).map_err(|e| BenchError::Io(record.clone(), e))?;
    Ok(Cell::Run(accuracy))
}

/// What identifies a cell's result: a `cell.json` with another key is not this cell's.
fn cell_key(
    model: &Path,
    task: Task,
    regime: Regime,
    settings: &CellSettings,
) -> serde_json::Value {
    // The split note is part of the key: a cell evaluated on all of MedMCQA's dev split is
    // not the cell evaluated on what a carved pool leaves of it.
    serde_json::json!({"model": model, "task": task.name(), "regime": regime.name(),
        "settings": settings, "split": data::split_note(task, &settings.data)})
}

/// The finished cell's record at `path` (`cell.json`) if it was written under `key`.
fn saved_record(path: &Path, key: &serde_json::Value) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let saved: serde_json::Value = serde_json::from_str(&text).ok()?;
    (saved["key"] == *key).then_some(saved)
}

/// Whether `cell`, run with `settings`, has finished in `dir` (what [`run_cell`] would take
/// from its record).
fn finished(dir: &Path, cell: &GridCell, settings: &CellSettings) -> bool {
    let key = cell_key(&cell.model, cell.task, cell.regime, settings);
    saved_record(&dir.join("cell.json"), &key).is_some()
}

/// Optimizer steps between a fine-tuning cell's checkpoints: what a killed grid loses at
/// most of the cell in progress.
pub const CELL_CHECKPOINT_EVERY: usize = 25;

/// Where a fine-tuning cell continues from: its directory, when it holds a checkpoint of a
/// run started with the same `key` (`started.json`); otherwise `None`, and the directory is
/// claimed afresh (an earlier run's files replaced) with `key` recorded.
fn resume_point(dir: &Path, key: &serde_json::Value) -> Result<Option<PathBuf>, BenchError> {
    let started = dir.join("started.json");
    let same_run = std::fs::read_to_string(&started)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|saved| saved == *key);
    if same_run && pmc_train::checkpoint::latest(dir)?.is_some() {
        return Ok(Some(dir.to_path_buf()));
    }
    pmc_train::run_dir::claim_fresh(dir, UsedDir::Replace)?;
    let tmp = dir.join("started.json.tmp");
    std::fs::write(&tmp, key.to_string()).map_err(|e| BenchError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, &started).map_err(|e| BenchError::Io(started.clone(), e))?;
    Ok(None)
}

/// A cell's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    /// Computed now (`None`: the regime needs a training split the data lacks).
    Run(Option<Accuracy>),
    /// Finished by an earlier run with the same settings.
    Cached(Option<Accuracy>),
}

impl Cell {
    /// The accuracy, however it was obtained.
    pub fn accuracy(self) -> Option<Accuracy> {
        match self {
            Cell::Run(a) | Cell::Cached(a) => a,
        }
    }
}

/// [`run_cell`]'s work when nothing is cached.
fn compute_cell(
    model: &Path,
    task: Task,
    regime: Regime,
    settings: &CellSettings,
    dir: &Path,
    key: &serde_json::Value,
) -> Result<Option<Accuracy>, BenchError> {
    let method = match regime {
        Regime::ZeroShot => None,
        Regime::Lora => Some(Method::Lora),
        Regime::Full => Some(Method::Full),
    };
    let evaluated = match method {
        None => (model.to_path_buf(), None),
        Some(_) if data::resolve(task, Split::Train, &settings.data).is_err() => return Ok(None),
        Some(method) => {
            let examples = training_pool(task, &settings.data, settings.fraction, 0)?;
            let fine_tuning = FineTuning {
                steps: settings.steps,
                global_batch: settings.global_batch,
                checkpoint_every: CELL_CHECKPOINT_EVERY,
                keep: 1,
                resume: resume_point(dir, key)?,
                ..FineTuning::new(method, model, dir)
            };
            let record = serde_json::json!({"task": task.name(), "fraction": settings.fraction});
            let Some(done) = fine_tuning.run(examples, record)? else {
                return Err(BenchError::Config(
                    "a cell is fine-tuned in one process".into(),
                ));
            };
            // Stopped by Ctrl-C: the checkpoint is written, the cell is not finished.
            if pmc_train::run::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(BenchError::Interrupted(dir.to_path_buf()));
            }
            match method {
                Method::Lora => (model.to_path_buf(), Some(done.result)),
                Method::Full => (done.result, None),
            }
        }
    };
    let (model_path, adapter) = evaluated;
    let device = pmc_model::default_device();
    let loaded = pmc_peft::load_model_with_adapter(
        &model_path,
        adapter.as_deref(),
        &Default::default(),
        &device,
    )?;
    let mut model_name = model_path.display().to_string();
    if let Some(adapter) = &adapter {
        model_name += &format!(" + adapter {}", adapter.display());
    }
    let tokenizer = loaded.require_tokenizer()?;
    let config = crate::EvalConfig {
        task,
        mode: crate::Mode::Loglik,
        template: crate::Template::LmEval,
        shots: 0,
        seed: 1234,
        generation: Default::default(),
    };
    let questions = cell_questions(task, settings)?;
    let evaluator =
        crate::run::Evaluator::new(&loaded.model, tokenizer, &config, &device, &model_path)?;
    let (predictions, _) = crate::run::evaluate_into(
        &evaluator,
        &questions,
        &model_name,
        &dir.join("eval"),
        |_| {},
    )?;
    Ok(Some(Accuracy::of(&predictions)))
}

/// The JSON document in `text`, read from `path` (named in the error).
fn parse_json(path: &Path, text: &str) -> Result<serde_json::Value, BenchError> {
    serde_json::from_str(text).map_err(|e| BenchError::Data {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    })
}

/// The JSON document in the file at `path`.
fn read_json(path: &Path) -> Result<serde_json::Value, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::Io(path.to_path_buf(), e))?;
    parse_json(path, &text)
}

/// The accuracy of `task` in the evaluation run written to `dir`.
pub fn read_accuracy(dir: &Path, task: Task) -> Result<Accuracy, BenchError> {
    let path = dir.join("results.json");
    let results = read_json(&path)?;
    let bad = |message: String| BenchError::Data {
        path: path.clone(),
        line: None,
        message,
    };
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

/// Where the paper's table sits in a markdown file.
const SECTION_BEGIN: &str = "<!-- reproduce:begin -->";
const SECTION_END: &str = "<!-- reproduce:end -->";

/// One row of the paper's table: a model's cell, or `None` where the regime needed a
/// training split the data lacks.
#[derive(Debug, Clone)]
pub struct TableRow {
    /// The model's label (`base`, `continued`).
    pub model: String,
    /// The task.
    pub task: Task,
    /// The regime.
    pub regime: Regime,
    /// The share of the training pool fine-tuned on (shown when below 1).
    pub fraction: f64,
    /// Its accuracy.
    pub accuracy: Option<Accuracy>,
    /// McNemar's exact p-value against the base model's cell on the same questions (rows
    /// of the continued model only).
    pub mcnemar_p: Option<f64>,
}

/// The table as a markdown section between `reproduce` markers, under the `command` that
/// made it, with `notes` (how the data was split, see [`Grid::notes`]) below it.
pub fn table_section(command: &str, rows: &[TableRow], notes: &[String]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|row| {
            let acc = row.accuracy.map_or_else(
                || "— (no training split in the data)".to_string(),
                |acc| acc.to_string(),
            );
            let p = row.mcnemar_p.map_or(String::new(), |p| format!("{p:.3}"));
            let share = match row.fraction < 1.0 && row.regime != Regime::ZeroShot {
                true => format!(" ({:.0} % of the pool)", row.fraction * 100.0),
                false => String::new(),
            };
            format!(
                "| {} | {} | {}{share} | {acc} | {p} |",
                row.model,
                row.task.name(),
                row.regime.name()
            )
        })
        .collect();
    format!(
        "{SECTION_BEGIN}\n`{command}` (loglik mode, lm-eval templates; acc with Wilson 95 % interval; McNemar's exact \
         p against the base model on the same questions)\n\n\
         | model | task | regime | acc | McNemar p vs base |\n|---|---|---|---|---|\n{}\n{}{SECTION_END}",
        rows.join("\n"),
        notes
            .iter()
            .map(|n| format!("\nNote: {n}.\n"))
            .collect::<String>()
    )
}

/// Puts `section` (from [`table_section`]) into the markdown file at `path`: in place of the
/// one there, or appended under a heading (the file is created if missing).
pub fn write_table_section(path: &Path, section: &str) -> Result<(), BenchError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(BenchError::Io(path.to_path_buf(), e)),
    };
    let updated = match (text.find(SECTION_BEGIN), text.find(SECTION_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &text[..a], &text[b + SECTION_END.len()..])
        }
        _ => format!("{text}\n## The paper's table (`cargo xtask reproduce`)\n\n{section}\n"),
    };
    std::fs::write(path, updated).map_err(|e| BenchError::Io(path.to_path_buf(), e))
}

/// One cell of a grid: a model under a regime on a task, fine-tuned on a share of the
/// training pool.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    /// The model's label (`base`, `continued`).
    pub label: String,
    /// The model.
    pub model: PathBuf,
    /// The task.
    pub task: Task,
    /// The regime.
    pub regime: Regime,
    /// The share of the training pool fine-tuned on.
    pub fraction: f64,
}

impl GridCell {
    /// The share as ` (10 %)` where it matters (a fine-tuning regime on part of the pool).
    fn share(&self, format: impl Fn(f64) -> String) -> String {
        match self.fraction < 1.0 && self.regime != Regime::ZeroShot {
            true => format(self.fraction),
            false => String::new(),
        }
    }

    /// `medqa_4options / lora`, or `… / lora (10 %)` on a share of the pool.
    pub fn group(&self) -> String {
        let share = self.share(|f| format!(" ({:.0} %)", f * 100.0));
        format!("{} / {}{share}", self.task.name(), self.regime.name())
    }

    /// `base / medqa_4options / lora`.
    pub fn name(&self) -> String {
        format!("{} / {}", self.label, self.group())
    }

    /// `OUT/base-medqa_4options-lora` (`-f0.1` on a share).
    pub fn dir(&self, out: &Path) -> PathBuf {
        let share = self.share(|f| format!("-f{f}"));
        out.join(format!(
            "{}-{}-{}{share}",
            self.label,
            self.task.name(),
            self.regime.name()
        ))
    }
}

/// The paper's grid: every model × task × regime on `settings.fraction` of the training
/// pools, plus the data-efficient cells (the fine-tuning regimes of `fractions_task` on each
/// of `fractions`), run one by one into `out`.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Labelled models; a `continued` one is compared with `base`.
    pub models: Vec<(String, PathBuf)>,
    pub tasks: Vec<Task>,
    pub regimes: Vec<Regime>,
    /// Shares of the data-efficient cells.
    pub fractions: Vec<f64>,
    /// The task of the data-efficient cells.
    pub fractions_task: Task,
    /// What every cell shares.
    pub settings: CellSettings,
    /// The grid's directory.
    pub out: PathBuf,
}

/// How far a grid is: reported after each cell.
#[derive(Debug, Clone, Copy)]
pub struct GridProgress {
    /// Cells done, this one included.
    pub done: usize,
    /// Cells in the grid.
    pub total: usize,
    /// Seconds the rest should take, from the cells computed so far (cached ones cost
    /// nothing); `None` before any was computed.
    pub eta_s: Option<f64>,
}

impl Grid {
    /// The `cargo xtask reproduce` command that runs this grid, every setting spelled out
    /// (presets expanded): what the results table says it came from.
    pub fn command(&self) -> String {
        let mut command = format!(
            "cargo xtask reproduce --model {}",
            self.models[0].1.display()
        );
        for (label, model) in &self.models[1..] {
            command += &format!(" --{label} {}", model.display());
        }
        let join = |names: Vec<String>| names.join(",");
        command += &format!(
            " --data {} --tasks {} --regimes {} --fraction {} --global-batch {}",
            self.settings.data.display(),
            join(self.tasks.iter().map(|t| t.name().to_string()).collect()),
            join(self.regimes.iter().map(|r| r.name().to_string()).collect()),
            self.settings.fraction,
            self.settings.global_batch
        );
        if let Some(steps) = self.settings.steps {
            command += &format!(" --steps {steps}");
        }
        if let Some(limit) = self.settings.limit {
            command += &format!(" --limit {limit}");
        }
        if !self.fractions.is_empty() {
            command += &format!(
                " --fractions {} --fractions-task {}",
                join(self.fractions.iter().map(f64::to_string).collect()),
                self.fractions_task.name()
            );
        }
        command
    }

    /// The cells in the order they run.
    pub fn cells(&self) -> Vec<GridCell> {
        let mut cells = Vec::new();
        for (label, model) in &self.models {
            let cell = |task, regime, fraction| GridCell {
                label: label.clone(),
                model: model.clone(),
                task,
                regime,
                fraction,
            };
            for &task in &self.tasks {
                for &regime in &self.regimes {
                    cells.push(cell(task, regime, self.settings.fraction));
                }
            }
            for &fraction in &self.fractions {
                for &regime in self.regimes.iter().filter(|&&r| r != Regime::ZeroShot) {
                    cells.push(cell(self.fractions_task, regime, fraction));
                }
            }
        }
        cells
    }

    /// Claims `out` ([`claim_grid`]); `record` false only checks.
    pub fn claim(&self, record: bool) -> Result<(), BenchError> {
        let models: Vec<(&str, &Path)> = self
            .models
            .iter()
            .map(|(l, p)| (l.as_str(), p.as_path()))
            .collect();
        claim_grid(&self.out, &models, &self.settings, record)
    }

    /// Runs (or takes from their records) every cell, calling `report` after each; returns
    /// the cells with their table rows (McNemar against `base` for the other models).
    pub fn run(
        &self,
        mut report: impl FnMut(&GridCell, &Cell, GridProgress),
    ) -> Result<Vec<(GridCell, TableRow)>, BenchError> {
        self.claim(true)?;
        let cells = self.cells();
        let total = cells.len();
        let started = std::time::Instant::now();
        let mut computed = 0;
        let mut rows = Vec::with_capacity(cells.len());
        for (i, cell) in cells.into_iter().enumerate() {
            let dir = cell.dir(&self.out);
            let settings = CellSettings {
                fraction: cell.fraction,
                ..self.settings.clone()
            };
            let outcome = run_cell(&cell.model, cell.task, cell.regime, &settings, &dir)?;
            computed += usize::from(matches!(outcome, Cell::Run(_)));
            let left = total - i - 1;
            let eta_s = (computed > 0)
                .then(|| started.elapsed().as_secs_f64() / computed as f64 * left as f64);
            report(
                &cell,
                &outcome,
                GridProgress {
                    done: i + 1,
                    total,
                    eta_s,
                },
            );
            let base = GridCell {
                label: "base".into(),
                ..cell.clone()
            }
            .dir(&self.out)
            .join("eval");
            let accuracy = outcome.accuracy();
            let mcnemar_p = match accuracy {
                Some(_) if cell.label != "base" && base.join("predictions.jsonl").exists() => {
                    Some(crate::run::PairedRuns::read(&base, &dir.join("eval"))?.mcnemar_p())
                }
                _ => None,
            };
            let row = TableRow {
                model: cell.label.clone(),
                task: cell.task,
                regime: cell.regime,
                fraction: cell.fraction,
                accuracy,
                mcnemar_p,
            };
            rows.push((cell, row));
        }
        Ok(rows)
    }
}

/// A grid's plan ([`Grid::plan`]): every cell with its work and whether it is finished, and
/// this machine's speed.
#[derive(Debug, Clone)]
pub struct GridPlan {
    /// The cells in the order they run.
    pub cells: Vec<PlannedCell>,
    /// Measured on the first model.
    pub speed: crate::estimate::Throughput,
}

/// One cell of a [`GridPlan`].
#[derive(Debug, Clone)]
pub struct PlannedCell {
    /// The cell.
    pub cell: GridCell,
    /// Its `cell.json` records a finished run with this grid's settings.
    pub finished: bool,
    /// Tokens it scores and trains on.
    pub work: crate::estimate::CellWork,
}

/// One line per cell (its tokens, finished or its time), then the total.
impl std::fmt::Display for GridPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let duration = crate::estimate::duration;
        for (i, planned) in self.cells.iter().enumerate() {
            let work = &planned.work;
            let status = match planned.finished {
                true => "finished (cell.json)".to_string(),
                false => format!("≈ {}", duration(work.seconds(&self.speed))),
            };
            writeln!(
                f,
                "{:>2}. {} ({}): scores {} tokens, trains on {} — {status}",
                i + 1,
                planned.cell.name(),
                planned.cell.model.display(),
                work.eval_tokens + work.held_out_tokens,
                work.train_tokens,
            )?;
        }
        writeln!(
            f,
            "{} of {} cells to run: ≈ {} on this machine ({} at {:.0} tokens/s scored, {:.0} trained, measured on the first model)",
            self.cells.iter().filter(|c| !c.finished).count(),
            self.cells.len(),
            duration(self.seconds_left()),
            pmc_model::cpu::model_name(),
            self.speed.scoring_tps,
            self.speed.training_tps,
        )
    }
}

impl GridPlan {
    /// Seconds the unfinished cells should take at the measured speed.
    pub fn seconds_left(&self) -> f64 {
        self.cells
            .iter()
            .filter(|c| !c.finished)
            .map(|c| c.work.seconds(&self.speed))
            .sum()
    }
}

impl Grid {
    /// What the grid will do and cost on this machine, without running a cell: each cell's
    /// tokens counted with its model's tokenizer, and the speeds measured on the first model
    /// ([`crate::estimate::Throughput::measure`], a few seconds).
    pub fn plan(&self) -> Result<GridPlan, BenchError> {
        let (_, first) = self
            .models
            .first()
            .ok_or_else(|| BenchError::Config("a grid needs a model".into()))?;
        let speed = crate::estimate::Throughput::measure(first, self.settings.global_batch)?;
        let mut tokenizers: std::collections::HashMap<PathBuf, pmc_model::Tokenizer> =
            Default::default();
        // Cells of one model, task and share do the same work under LoRA and full
        // fine-tuning, and zero-shot cells evaluate the same questions: counted once.
        let mut counted: std::collections::HashMap<_, crate::estimate::CellWork> =
            Default::default();
        let mut cells = Vec::new();
        for cell in self.cells() {
            if !tokenizers.contains_key(&cell.model) {
                let loaded = pmc_model::load_model(
                    &cell.model,
                    &Default::default(),
                    &pmc_model::default_device(),
                )?;
                let tokenizer = loaded.require_tokenizer()?.clone();
                tokenizers.insert(cell.model.clone(), tokenizer);
            }
            let settings = CellSettings {
                fraction: cell.fraction,
                ..self.settings.clone()
            };
            let same_work = (
                cell.model.clone(),
                cell.task,
                cell.regime == Regime::ZeroShot,
                cell.fraction.to_bits(),
            );
            let work = match counted.get(&same_work) {
                Some(work) => *work,
                None => {
                    let work =
                        crate::estimate::cell_work(&cell, &settings, &tokenizers[&cell.model])?;
                    *counted.entry(same_work).or_insert(work)
                }
            };
            let finished = finished(&cell.dir(&self.out), &cell, &settings);
            cells.push(PlannedCell {
                cell,
                finished,
                work,
            });
        }
        Ok(GridPlan { cells, speed })
    }
}

/// What a finished grid leaves beside its cells (see [`Grid::write_outputs`]).
#[derive(Debug, Clone)]
pub struct GridOutputs {
    /// `results.json`.
    pub results: PathBuf,
    /// The accuracy chart (`accuracy.svg`, `.png`), when a cell has an accuracy.
    pub accuracy_chart: Option<PathBuf>,
    /// Per task with fine-tuned cells, their training loss on one chart (`loss-TASK.svg`).
    pub loss_charts: Vec<PathBuf>,
}

impl Grid {
    /// What every report of this grid must say about its data: MedMCQA's pool carved out of
    /// its dev split ([`data::split_note`]).
    pub fn notes(&self) -> Vec<String> {
        let mut tasks = self.tasks.clone();
        tasks.push(self.fractions_task);
        tasks.dedup();
        Task::ALL
            .into_iter()
            .filter(|t| tasks.contains(t))
            .filter_map(|t| data::split_note(t, &self.settings.data))
            .collect()
    }

    /// Writes what the finished cells add up to into the grid's directory:
    /// - `results.json` in lm-evaluation-harness's shape — `results`, `n_samples` and
    ///   `configs` keyed by cell name (`continued / medqa_4options / lora`), each cell's
    ///   metrics as its evaluation wrote them, its configuration with the McNemar p-value
    ///   against the base model;
    /// - the accuracy chart with 95 % Wilson intervals;
    /// - per task, the fine-tuning loss of every fine-tuned cell by step on one chart: the
    ///   base against the continued model, the paper's "faster convergence" figure.
    pub fn write_outputs(&self, done: &[(GridCell, TableRow)]) -> Result<GridOutputs, BenchError> {
        let mut results = serde_json::Map::new();
        let mut n_samples = serde_json::Map::new();
        let mut configs = serde_json::Map::new();
        let mut bars = Vec::new();
        for (cell, row) in done {
            let eval = cell.dir(&self.out).join("eval/results.json");
            let Some(accuracy) = row.accuracy else {
                continue; // no training split: no cell
            };
            let written = read_json(&eval)?;
            let task = cell.task.name();
            results.insert(cell.name(), written["results"][task].clone());
            n_samples.insert(cell.name(), written["n_samples"][task].clone());
            configs.insert(
                cell.name(),
                serde_json::json!({"model": cell.model, "task": task, "regime": cell.regime.name(),
                    "fraction": cell.fraction, "mcnemar_p_vs_base": row.mcnemar_p,
                    "cell_dir": cell.dir(&self.out)}),
            );
            bars.push(pmc_plot::AccuracyBar {
                group: cell.group(),
                series: cell.label.clone(),
                acc: accuracy.acc,
                low: accuracy.wilson_95.0,
                high: accuracy.wilson_95.1,
            });
        }
        let summary = serde_json::json!({
            "results": results,
            "n_samples": n_samples,
            "configs": configs,
            "config": {"settings": self.settings, "models": self.models, "notes": self.notes()},
        });
        let path = self.out.join("results.json");
        let tmp = self.out.join("results.json.tmp");
        let text = serde_json::to_string_pretty(&summary).expect("JSON values serialize");
        std::fs::write(&tmp, text).map_err(|e| BenchError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| BenchError::Io(path.clone(), e))?;
        let accuracy_chart = match bars.is_empty() {
            true => None,
            false => Some(
                pmc_plot::accuracy_chart(
                    &bars,
                    "Accuracy by task and regime, 95 % Wilson intervals",
                    &self.out.join("accuracy"),
                )?
                .1,
            ),
        };
        Ok(GridOutputs {
            results: path,
            accuracy_chart,
            loss_charts: self.loss_charts(done)?,
        })
    }

    /// Per task, the training loss of its fine-tuned cells on one chart.
    fn loss_charts(&self, done: &[(GridCell, TableRow)]) -> Result<Vec<PathBuf>, BenchError> {
        let mut charts = Vec::new();
        let mut tasks: Vec<Task> = Vec::new();
        for (cell, _) in done {
            if cell.regime != Regime::ZeroShot && !tasks.contains(&cell.task) {
                tasks.push(cell.task);
            }
        }
        for task in tasks {
            let mut series = Vec::new();
            // One colour per regime and share; the base model solid, the others dashed.
            let mut regimes: Vec<String> = Vec::new();
            for (cell, _) in done.iter().filter(|(c, _)| c.task == task) {
                let dir = cell.dir(&self.out);
                if cell.regime == Regime::ZeroShot || !dir.join("metrics.jsonl").exists() {
                    continue;
                }
                let points: Vec<(f64, f64)> = pmc_train::plot::read_metrics(&dir)?
                    .iter()
                    .filter_map(|p| Some((p.step, p.loss?)))
                    .collect();
                let share = cell.share(|f| format!(" ({:.0} %)", f * 100.0));
                let regime = format!("{}{share}", cell.regime.name());
                let colour = regimes
                    .iter()
                    .position(|r| *r == regime)
                    .unwrap_or_else(|| {
                        regimes.push(regime.clone());
                        regimes.len() - 1
                    });
                series.push(pmc_plot::LossSeries {
                    name: format!("{}, {regime}", cell.label),
                    points,
                    colour,
                    dashed: cell.label != "base",
                });
            }
            if series.iter().all(|s| s.points.is_empty()) {
                continue;
            }
            let title = format!("Fine-tuning on {}: training loss by step", task.name());
            let stem = self.out.join(format!("loss-{}", task.name()));
            charts.push(pmc_plot::loss_comparison(&series, &title, &stem)?.1);
        }
        Ok(charts)
    }
}
