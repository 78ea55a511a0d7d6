//! Scores the options of one multiple-choice question with an HF model directory.
//!
//!     cargo run --example score_text -- MODEL_DIR
//!
//! Prints each option's log-likelihood and the model's choice.

use pmc_llama::pmc_model::{self, LoadOptions, load_model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: score_text MODEL_DIR (an HF directory with tokenizer.json)")?;
    let device = pmc_model::default_device();
    let loaded = load_model(dir.as_ref(), &LoadOptions::default(), &device)?;
    let tokenizer = loaded.require_tokenizer()?;

    let question = "Question: Which nerve is injured in wrist drop?\nA. Radial\nB. Ulnar\nC. Median\nD. Axillary\nAnswer:";
    let mut best = (f64::NEG_INFINITY, "");
    for option in ["A", "B", "C", "D"] {
        let (context, continuation) = tokenizer.encode_pair(question, &format!(" {option}"))?;
        let score =
            pmc_model::score_continuations(&loaded.model, &context, &[continuation], &device)?[0];
        println!("{option}: loglik {:.4}", score.loglik);
        if score.loglik > best.0 {
            best = (score.loglik, option);
        }
    }
    println!("model's answer: {}", best.1);
    Ok(())
}
