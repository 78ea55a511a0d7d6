//! Zero-shot MedQA (USMLE) accuracy of a model, the way lm-evaluation-harness scores it.
//! A starting point to copy: load a model, load the questions, score, report with a CI.
//!
//!     cargo run --example usmle_eval -- --model MODEL --data ../shared/data/medqa/test_4options.jsonl [--limit N]
//!
//! MODEL is an HF directory or a llama.cpp .gguf file.

use std::path::PathBuf;

use pmc_llama::pmc_bench::{Split, Task, data, metrics, run};
use pmc_llama::pmc_model::{self, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut model, mut data_file, mut limit) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--data" => data_file = Some(PathBuf::from(value)),
            "--limit" => limit = Some(value.parse::<usize>()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let usage = "usage: usmle_eval --model PATH --data FILE.jsonl [--limit N]";
    let (model, data_file) = (model.ok_or(usage)?, data_file.ok_or(usage)?);

    let device = pmc_model::default_device();
    let loaded = pmc_model::load_model(&model, &LoadOptions::default(), &device)?;
    let tokenizer = loaded.require_tokenizer()?;
    let mut questions = data::load(Task::MedQa, Split::Eval, &data_file)?;
    questions.truncate(limit.unwrap_or(usize::MAX));

    let mut correct = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let p = run::score_question(&loaded.model, tokenizer, Task::MedQa, q, &[], &device)?;
        correct.push(p.pred == Some(p.gold));
        if (i + 1) % 50 == 0 {
            eprintln!("{}/{} scored", i + 1, questions.len());
        }
    }
    let k = correct.iter().filter(|&&c| c).count();
    let (lo, hi) = metrics::wilson(k, correct.len());
    println!(
        "MedQA (USMLE, 4 options), {} questions: accuracy {:.4} (95 % CI {lo:.4}–{hi:.4}, Wilson); chance is 0.25",
        correct.len(),
        metrics::accuracy(&correct)
    );
    Ok(())
}
