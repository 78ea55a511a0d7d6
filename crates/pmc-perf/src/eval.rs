//! `bench-eval`: loglik-mode questions/s against transformers scoring the same items the
//! lm-eval way, and their question-by-question agreement.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pmc_bench::{EvalConfig, Mode, Split, Task, Template, data, run};
use pmc_model::GenerationConfig;

#[derive(Args, Debug)]
pub struct BenchEvalArgs {
    /// pubmedqa, medqa or medmcqa.
    #[arg(long)]
    pub task: Task,
    /// An HF directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A directory laid out like ../shared/data, or the task's file.
    #[arg(long)]
    pub data: PathBuf,
    /// Questions scored (the first N of the split).
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Rounds; each scores the questions with ours, then with the reference, so drift of
    /// the machine's speed lands on both sides of every ratio.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Loglik-mode questions/s against transformers scoring the same items the lm-eval way, and
/// their question-by-question agreement.
pub fn bench_eval(args: BenchEvalArgs) -> Result<()> {
    let mut questions = data::load(args.task, Split::Eval, &args.data)?;
    questions.truncate(args.limit);
    let device = pmc_model::default_device();
    let loaded = pmc_model::load_model(&args.model, &Default::default(), &device)?;
    let tokenizer = loaded.require_tokenizer()?;
    let config = EvalConfig {
        task: args.task,
        mode: Mode::Loglik,
        template: Template::LmEval,
        shots: 0,
        seed: 0,
        generation: GenerationConfig::default(),
    };
    let evaluator = run::Evaluator::new(&loaded.model, tokenizer, &config, &device, &args.model)?;

    let requests =
        std::env::temp_dir().join(format!("pmc-bench-eval-{}.jsonl", std::process::id()));
    let lines: Vec<String> = questions
        .iter()
        .map(|q| {
            serde_json::json!({
                "id": q.id,
                "context": pmc_bench::prompt::lm_eval_context(args.task, q),
                "choices": pmc_bench::prompt::lm_eval_choices(args.task, q),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&requests, lines.join("\n") + "\n")?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();

    let rounds = args.rounds.max(1);
    let (mut ours_qps, mut theirs_qps) = (Vec::new(), Vec::new());
    let mut agreement = None;
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: pmc-llama");
        let started = Instant::now();
        let ours = evaluator.evaluate(&questions, &[], |_| {})?;
        ours_qps.push(questions.len() as f64 / started.elapsed().as_secs_f64());

        eprintln!("round {round}/{rounds}: transformers");
        let reference = crate::reference::run_python_reference(
            "eval_reference.py",
            &[
                args.model.as_os_str(),
                requests.as_os_str(),
                threads.as_ref(),
            ],
        );
        let mut rows =
            reference.context("reference failed (pip install torch transformers gguf)")?;
        let timing = rows.pop().context("reference printed nothing")?;
        let theirs_s = timing["seconds"].as_f64().context("reference timing")?;
        theirs_qps.push(questions.len() as f64 / theirs_s);
        agreement.get_or_insert(agreement_with(&ours, &rows)?);
    }
    let _ = std::fs::remove_file(&requests);

    println!(
        "| {} loglik, {} questions (median of {rounds} rounds) | pmc-llama | transformers (lm-eval style) | ratio (median, range) |",
        args.task.name(),
        questions.len()
    );
    println!("|---|---|---|---|");
    let questions_per_s =
        crate::report::Metric::new("questions/s", |&qps: &f64| Some(qps), |x| format!("{x:.3}"));
    if let Some(row) = questions_per_s.row(&ours_qps, &[theirs_qps]) {
        println!("{row}");
    }
    let (same_pred, compared, worst) = agreement.unwrap_or_default();
    println!(
        "\nsame prediction on {same_pred}/{compared} questions; max |Δloglik| over all choices = {worst:.2e}"
    );
    Ok(())
}

/// How our answers agree with the reference's rows: (questions with the same prediction,
/// questions compared, largest |Δloglik| over all choices).
fn agreement_with(
    ours: &[pmc_bench::run::Prediction],
    reference: &[serde_json::Value],
) -> Result<(usize, usize, f64)> {
    let mut same_pred = 0;
    let mut worst: f64 = 0.0;
    for (p, r) in ours.iter().zip(reference) {
        let lls: Vec<f64> = r["loglik"]
            .as_array()
            .context("loglik")?
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        worst = lls
            .iter()
            .zip(&p.loglik)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f64::max);
        let their_pred = lls
            .iter()
            .enumerate()
            .fold(None::<(usize, f64)>, |best, (i, &x)| match best {
                Some((_, b)) if b >= x => best,
                _ => Some((i, x)),
            });
        same_pred += usize::from(their_pred.map(|b| b.0) == p.pred);
    }
    Ok((same_pred, reference.len(), worst))
}
