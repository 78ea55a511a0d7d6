//! What a grid of the paper's table will cost before it runs: the tokens each cell scores
//! and trains on, counted with the model's own tokenizer from the same questions and
//! training examples the cell will use, divided by this machine's scoring and training
//! speed, measured on the model itself.

use std::path::Path;
use std::time::Instant;

use pmc_train::{Example, SftData, Template, TrainStep};

use crate::BenchError;
use crate::data::Split;
use crate::regimes::{CellSettings, GridCell, Regime, training_pool};

/// Tokens this machine scores and trains on per second with one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// One sequence at a time, as an evaluation scores questions.
    pub scoring_tps: f64,
    /// A full fine-tuning step of `CALIBRATION_LEN`-token examples with the lanes the
    /// fine-tuning runs choose, AdamW included (LoRA steps cost a little less).
    pub training_tps: f64,
    /// Seconds to load the model: a cell loads it once to evaluate and a fine-tuning cell
    /// again to train, and writes about as much (its checkpoint and result).
    pub load_s: f64,
}

/// Tokens of the sequences the speeds are measured on: a typical fine-tuning example and
/// question context of these tasks.
const CALIBRATION_LEN: usize = 256;

impl Throughput {
    /// Measures both speeds on `model` (an HF directory or GGUF file): each after a warm-up
    /// of the same work, so loading and first-touch costs are not counted. Training is
    /// measured on steps of `global_batch` examples, so that AdamW's cost per step is spread
    /// over as many tokens as in the cells. Takes about half a minute for a 135 M model.
    pub fn measure(model: &Path, global_batch: usize) -> Result<Self, BenchError> {
        let inner = pmc_model::default_device();
        let started = Instant::now();
        let loaded = pmc_model::load_model(model, &Default::default(), &inner)?;
        let load_s = started.elapsed().as_secs_f64();
        let vocab = loaded.config.vocab_size;
        let tokens: Vec<u32> = (0..(2 * global_batch + 1) * CALIBRATION_LEN)
            .map(|i| ((i * 2_654_435_761) % vocab) as u32)
            .collect();
        let window = &tokens[..CALIBRATION_LEN];
        pmc_model::mean_nll(&loaded.model, window, CALIBRATION_LEN, &inner)?;
        let started = Instant::now();
        pmc_model::mean_nll(&loaded.model, window, CALIBRATION_LEN, &inner)?;
        let scoring_tps = CALIBRATION_LEN as f64 / started.elapsed().as_secs_f64();
        drop(loaded);

        let device = pmc_train::autodiff_device(false);
        let loaded = pmc_model::load_model(model, &Default::default(), &device)?;
        // Micro-batches of one example, as many side by side as a fine-tuning run would put
        // there.
        let mut config = pmc_train::TrainConfig {
            micro_batch: 1,
            global_batch,
            ..pmc_train::run::default_train_config(CALIBRATION_LEN)
        };
        config.parallel_micro_batches = pmc_train::lanes::choose(&loaded.config, &config).count;
        let mut trainer = pmc_train::Trainer::new(loaded.model, loaded.config, config, &device)?;
        let data = pmc_train::TokenWindows::new(&tokens, CALIBRATION_LEN, 0);
        trainer.step(&data)?;
        let started = Instant::now();
        trainer.step(&data)?;
        let training_tps =
            (global_batch * CALIBRATION_LEN) as f64 / started.elapsed().as_secs_f64();
        Ok(Throughput {
            scoring_tps,
            training_tps,
            load_s,
        })
    }
}

/// The work of one cell, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellWork {
    /// Scored by the evaluation: each question's context once, every choice's continuation.
    pub eval_tokens: usize,
    /// Trained on: the fine-tuning steps' examples.
    pub train_tokens: usize,
    /// Scored by the fine-tuning run's held-out loss, before and after.
    pub held_out_tokens: usize,
}

impl CellWork {
    /// Seconds at `speed`.
    pub fn seconds(&self, speed: &Throughput) -> f64 {
        let loads = if self.train_tokens > 0 { 4.0 } else { 1.0 };
        (self.eval_tokens + self.held_out_tokens) as f64 / speed.scoring_tps
            + self.train_tokens as f64 / speed.training_tps
            + loads * speed.load_s
    }
}

/// Counts what `cell` will score and train on with `tokenizer` (the model's), from the
/// questions and training examples it will use. A fine-tuning regime on a task without a
/// training split costs nothing (the cell is skipped).
pub fn cell_work(
    cell: &GridCell,
    settings: &CellSettings,
    tokenizer: &pmc_model::Tokenizer,
) -> Result<CellWork, BenchError> {
    let questions = crate::regimes::cell_questions(cell.task, settings)?;
    let mut eval_tokens = 0;
    for q in &questions.questions {
        // The context runs once; every choice's continuation after it.
        let requests = crate::prompt::loglik_requests(cell.task, q, &[], tokenizer)?;
        eval_tokens += requests.first().map_or(0, |r| r.context.len());
        eval_tokens += requests.iter().map(|r| r.continuation.len()).sum::<usize>();
    }
    let mut work = CellWork {
        eval_tokens,
        ..CellWork::default()
    };
    if cell.regime == Regime::ZeroShot
        || crate::data::resolve(cell.task, Split::Train, &settings.data).is_err()
    {
        return Ok(work);
    }
    let mut examples = training_pool(cell.task, &settings.data, cell.fraction, 0)?;
    let held_out = pmc_train::sft::hold_out(&mut examples)?;
    let lengths = |examples: &[Example]| -> Result<Vec<usize>, BenchError> {
        let data = SftData::new(tokenizer, examples, Template::PmcLlama, 512, 0)?;
        Ok((0..examples.len())
            .map(|i| data.example_ids(i).len())
            .collect())
    };
    let train = lengths(&examples)?;
    let steps = settings
        .steps
        .unwrap_or_else(|| examples.len().div_ceil(settings.global_batch));
    let mean = train.iter().sum::<usize>() as f64 / train.len().max(1) as f64;
    work.train_tokens = ((steps * settings.global_batch) as f64 * mean).round() as usize;
    work.held_out_tokens = 2 * lengths(&held_out)?.iter().sum::<usize>();
    Ok(work)
}

/// Formats seconds as `42 s`, `17 min` or `2 h 05 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..3600 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600 + 30) / 60),
    }
}
