//! Benchmark probes of a training run score what loglik evaluation scores: the same
//! log-likelihood for every choice of the same questions, so the same accuracy.

use std::path::{Path, PathBuf};

use pmc_bench::probe::{ProbeSpec, probes};
use pmc_bench::regimes::Accuracy;
use pmc_bench::{EvalConfig, Mode, Task, Template};
use pmc_model::burn::prelude::*;
use pmc_train::TrainStep;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmc-model/tests/fixtures/gqa_tied")
}

fn medqa_data(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("medqa")).unwrap();
    let lines: String = (0..n)
        .map(|i| {
            let answer = ["A", "B", "C", "D"][i % 4];
            serde_json::json!({
                "question": format!("A patient with marker {i} presents with fever. Which drug?"),
                "options": {"A": "aspirin", "B": "ibuprofen therapy", "C": "rest", "D": "surgery"},
                "answer_idx": answer,
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(data.join("medqa/test_4options.jsonl"), lines).unwrap();
    data
}

#[test]
fn a_probe_scores_like_loglik_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let data = medqa_data(dir.path(), 12);
    let device = Device::flex().autodiff();
    let loaded = pmc_model::load_model(&fixture_model(), &Default::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.clone().unwrap();
    let spec: ProbeSpec = "medqa:8".parse().unwrap();
    let probe = probes(&[spec], &data, &tokenizer, 1234).unwrap().remove(0);
    assert_eq!(probe.questions.len(), 8);
    // The draw is seeded: the same questions again, others with another seed.
    let ids = |p: &pmc_train::probe::Probe| -> Vec<String> {
        p.questions.iter().map(|q| q.id.clone()).collect()
    };
    let again = probes(&[spec], &data, &tokenizer, 1234).unwrap().remove(0);
    assert_eq!(ids(&again), ids(&probe));
    let other = probes(&[spec], &data, &tokenizer, 7).unwrap().remove(0);
    assert_ne!(ids(&other), ids(&probe));

    let trainer = pmc_train::Trainer::new(
        loaded.model.clone(),
        loaded.config.clone(),
        pmc_train::run::default_train_config(64),
        &device,
    )
    .unwrap();
    let score = probe.score(&trainer).unwrap();

    // Evaluation of the same questions with the harness.
    let inner = Device::flex();
    let model = loaded.model.valid();
    let config = EvalConfig {
        task: Task::MedQa,
        mode: Mode::Loglik,
        template: Template::LmEval,
        shots: 0,
        seed: 0,
        generation: Default::default(),
    };
    let evaluator =
        pmc_bench::run::Evaluator::new(&model, &tokenizer, &config, &inner, &fixture_model())
            .unwrap();
    let questions: Vec<_> = pmc_bench::data::load(Task::MedQa, pmc_bench::Split::Eval, &data)
        .unwrap()
        .into_iter()
        .filter(|q| ids(&probe).contains(&q.id))
        .collect();
    let predictions = evaluator.evaluate(&questions, &[], |_| {}).unwrap();
    let requests: Vec<_> = probe
        .questions
        .iter()
        .flat_map(|q| q.choices.iter().cloned())
        .collect();
    let logliks = trainer.continuation_logliks(&requests).unwrap();
    let mut at = 0;
    for q in &probe.questions {
        let p = predictions.iter().find(|p| p.id == q.id).unwrap();
        assert_eq!(p.gold, q.gold);
        for (ours, theirs) in logliks[at..at + q.choices.len()].iter().zip(&p.loglik) {
            assert!((ours - theirs).abs() < 1e-4, "{}: {ours} vs {theirs}", q.id);
        }
        at += q.choices.len();
    }
    let evaluated = Accuracy::of(&predictions);
    assert_eq!(score.acc, evaluated.acc);
    assert_eq!(score.n, 8);
    assert!((score.wilson_95.0 - evaluated.wilson_95.0).abs() < 1e-12);
}

#[test]
fn probe_specs_are_read_and_checked() {
    let spec: ProbeSpec = "pubmedqa:200".parse().unwrap();
    assert_eq!((spec.task, spec.questions), (Task::PubMedQa, 200));
    assert_eq!("medmcqa".parse::<ProbeSpec>().unwrap().questions, 200);
    assert!("medqa:0".parse::<ProbeSpec>().is_err());
    assert!("medqa:x".parse::<ProbeSpec>().is_err());
    assert!("nosuchtask:5".parse::<ProbeSpec>().is_err());
    let dir = tempfile::tempdir().unwrap();
    let data = medqa_data(dir.path(), 3);
    let loaded =
        pmc_model::load_model(&fixture_model(), &Default::default(), &Device::flex()).unwrap();
    let err = probes(
        &["medqa:5".parse().unwrap()],
        &data,
        loaded.tokenizer.as_ref().unwrap(),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("has 3 evaluation questions") && err.contains("5 were asked"),
        "{err}"
    );
}
