//! One cell of the paper's table, run in-process on the GQA fixture model and a small
//! MedQA-shaped task: zero-shot, LoRA (fine-tuned, then evaluated with its adapter applied)
//! and a regime without a training split.

mod common;

use std::path::Path;

use common::{fixture_model, medqa_data};

use pmc_bench::Task;
use pmc_bench::regimes::{Accuracy, Cell, CellSettings, Regime, read_accuracy, run_cell};

/// The log-likelihoods of every prediction in an evaluation directory, in order.
fn logliks(eval_dir: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(eval_dir.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(v["loglik"].clone()).unwrap()
        })
        .collect()
}

/// Equal up to the last digit that serde_json's float parsing may change.
fn assert_same(ours: Accuracy, written: Accuracy) {
    let pairs = [
        (ours.acc, written.acc),
        (ours.wilson_95.0, written.wilson_95.0),
        (ours.wilson_95.1, written.wilson_95.1),
    ];
    assert!(
        pairs.iter().all(|(a, b)| (a - b).abs() < 1e-12),
        "{ours:?} vs {written:?}"
    );
}

#[test]
fn a_cell_fine_tunes_then_evaluates_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = medqa_data(dir.path());
    let settings = CellSettings {
        data: data.clone(),
        fraction: 1.0,
        steps: Some(2),
        global_batch: 4,
        limit: None,
        subset_seed: 1234,
    };
    let model = fixture_model();

    let zero_dir = dir.path().join("zero-shot");
    let zero = run_cell(&model, Task::MedQa, Regime::ZeroShot, &settings, &zero_dir)
        .unwrap()
        .accuracy()
        .expect("zero-shot needs no training split");
    // The value returned is the one the written results report.
    assert_same(
        zero,
        read_accuracy(&zero_dir.join("eval"), Task::MedQa).unwrap(),
    );
    let zero_ll = logliks(&zero_dir.join("eval"));
    assert_eq!(zero_ll.len(), 6);

    let lora_dir = dir.path().join("lora");
    let lora = run_cell(&model, Task::MedQa, Regime::Lora, &settings, &lora_dir)
        .unwrap()
        .accuracy()
        .expect("the task has a training split");
    assert!(lora_dir.join("adapter/adapter_model.safetensors").exists());
    assert_same(
        lora,
        read_accuracy(&lora_dir.join("eval"), Task::MedQa).unwrap(),
    );
    // The evaluation ran with the trained adapter applied: the scores moved.
    let lora_ll = logliks(&lora_dir.join("eval"));
    let moved = zero_ll
        .iter()
        .flatten()
        .zip(lora_ll.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-6, "LoRA cell scores equal zero-shot's");

    // Run again with the same settings, the finished cell is not recomputed.
    let again = run_cell(&model, Task::MedQa, Regime::Lora, &settings, &lora_dir).unwrap();
    let Cell::Cached(Some(cached)) = again else {
        panic!("the finished cell ran again: {again:?}");
    };
    assert_same(cached, lora);
    // With other settings, it starts afresh in its directory instead of refusing it.
    let other = CellSettings {
        steps: Some(1),
        ..settings.clone()
    };
    let rerun = run_cell(&model, Task::MedQa, Regime::Lora, &other, &lora_dir).unwrap();
    assert!(matches!(rerun, Cell::Run(Some(_))), "{rerun:?}");

    // Without a training split, a fine-tuning regime has no cell.
    let test_only = dir.path().join("test-only");
    std::fs::create_dir_all(test_only.join("medqa")).unwrap();
    std::fs::copy(
        data.join("medqa/test_4options.jsonl"),
        test_only.join("medqa/test_4options.jsonl"),
    )
    .unwrap();
    let settings = CellSettings {
        data: test_only,
        ..settings
    };
    let none = run_cell(
        &model,
        Task::MedQa,
        Regime::Full,
        &settings,
        &dir.path().join("full"),
    )
    .unwrap();
    assert_eq!(none, Cell::Run(None));
}

#[test]
fn the_table_replaces_its_own_section_and_keeps_the_rest() {
    use pmc_bench::regimes::{TableRow, table_section, write_table_section};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.md");
    std::fs::write(&path, "# Results\n\nbefore\n").unwrap();
    let row = |acc| TableRow {
        model: "base".into(),
        task: Task::MedQa,
        regime: Regime::ZeroShot,
        fraction: 1.0,
        accuracy: Some(Accuracy {
            acc,
            wilson_95: (0.1, 0.9),
        }),
        mcnemar_p: Some(0.0312),
    };
    write_table_section(&path, &table_section("first", &[row(0.25)], &[])).unwrap();
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "\nafter\n").unwrap();
    let mut missing = row(0.5);
    missing.accuracy = None;
    write_table_section(
        &path,
        &table_section("second", &[row(0.5), missing], &["a note".into()]),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Results\n\nbefore\n"), "{text}");
    assert!(text.ends_with("\nafter\n"), "{text}");
    assert!(!text.contains("first") && !text.contains("0.250"), "{text}");
    assert!(
        text.contains("| base | medqa_4options | zero-shot | 0.500 [0.100, 0.900] | 0.031 |"),
        "{text}"
    );
    assert!(text.contains("no training split"), "{text}");
    assert!(text.contains("\nNote: a note.\n"), "{text}");
    assert_eq!(text.matches("reproduce:begin").count(), 1);
}

#[test]
fn paired_runs_match_questions_by_id_and_refuse_different_sets() {
    use pmc_bench::run::PairedRuns;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, rows: &[(&str, u64)]| {
        let run = dir.path().join(name);
        std::fs::create_dir_all(&run).unwrap();
        let lines: String = rows
            .iter()
            .map(|(id, pred)| format!("{{\"id\": \"{id}\", \"pred\": {pred}, \"gold\": 1}}\n"))
            .collect();
        std::fs::write(run.join("predictions.jsonl"), lines).unwrap();
        run
    };
    // B lists the questions in another order: pairing is by id.
    let a = write("a", &[("q1", 1), ("q2", 0), ("q3", 1), ("q4", 0)]);
    let b = write("b", &[("q4", 1), ("q3", 1), ("q2", 1), ("q1", 0)]);
    let paired = PairedRuns::read(&a, &b).unwrap();
    assert_eq!(paired.a, [true, false, true, false]);
    assert_eq!(paired.b, [false, true, true, true]);
    assert_eq!(paired.discordant(), (1, 2));
    assert_eq!(paired.mcnemar_p(), 1.0);
    let c = write("c", &[("q1", 1), ("q2", 0), ("q3", 1), ("q9", 0)]);
    let err = PairedRuns::read(&a, &c).unwrap_err().to_string();
    assert!(
        err.contains("question q4 is in") && err.contains("but not in"),
        "{err}"
    );
    let d = write(
        "d",
        &[("q1", 1), ("q2", 0), ("q3", 1), ("q4", 0), ("q5", 1)],
    );
    let err = PairedRuns::read(&a, &d).unwrap_err().to_string();
    assert!(err.contains("different questions (4 vs 5)"), "{err}");
}

#[test]
fn a_grid_directory_of_other_settings_is_refused() {
    use pmc_bench::regimes::claim_grid;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid");
    let settings = CellSettings {
        data: "data".into(),
        fraction: 1.0,
        steps: Some(10),
        global_batch: 8,
        limit: None,
        subset_seed: 1234,
    };
    let models = [("base", Path::new("m1")), ("continued", Path::new("m2"))];
    // A dry run only looks.
    claim_grid(&out, &models, &settings, false).unwrap();
    assert!(!out.join("grid.json").exists());
    claim_grid(&out, &models, &settings, true).unwrap();
    claim_grid(&out, &models, &settings, true).unwrap();
    let other = CellSettings {
        fraction: 0.3,
        ..settings.clone()
    };
    let err = claim_grid(&out, &models, &other, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds a grid of other models or settings") && err.contains("--out"),
        "{err}"
    );
    let err = claim_grid(&out, &[("base", Path::new("m3"))], &settings, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other models"), "{err}");
}

/// A whole grid (two models × zero-shot and LoRA on one task) leaves one lm-eval-shaped
/// `results.json` with every cell, the accuracy chart, and the fine-tuning loss of both
/// models on one chart.
#[test]
fn a_grid_writes_one_results_file_and_a_loss_chart_per_task() {
    use pmc_bench::regimes::Grid;
    let dir = tempfile::tempdir().unwrap();
    let data = medqa_data(dir.path());
    let grid = Grid {
        models: vec![
            ("base".into(), fixture_model()),
            ("continued".into(), fixture_model()),
        ],
        tasks: vec![Task::MedQa],
        regimes: vec![Regime::ZeroShot, Regime::Lora],
        fractions: vec![],
        fractions_task: Task::MedQa,
        settings: CellSettings {
            data,
            fraction: 1.0,
            steps: Some(3),
            global_batch: 4,
            limit: None,
            subset_seed: 1234,
        },
        out: dir.path().join("grid"),
    };
    let done = grid.run(|_, _, _| {}).unwrap();
    assert_eq!(done.len(), 4);
    let outputs = grid.write_outputs(&done).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outputs.results).unwrap()).unwrap();
    let cells = results["results"].as_object().unwrap();
    let names: Vec<&str> = cells.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "base / medqa_4options / zero-shot",
            "base / medqa_4options / lora",
            "continued / medqa_4options / zero-shot",
            "continued / medqa_4options / lora",
        ]
    );
    for ((cell, row), (name, metrics)) in done.iter().zip(cells) {
        assert_eq!(&cell.name(), name);
        let acc = metrics[pmc_bench::run::ACC_KEY].as_f64().unwrap();
        assert!((acc - row.accuracy.unwrap().acc).abs() < 1e-12, "{name}");
        assert_eq!(results["n_samples"][name], 6, "{name}");
    }
    // The continued model's cells are paired with the base's (here the same model: p = 1).
    let p = &results["configs"]["continued / medqa_4options / lora"]["mcnemar_p_vs_base"];
    assert_eq!(p.as_f64(), Some(1.0));
    assert!(outputs.accuracy_chart.as_ref().is_some_and(|c| c.exists()));
    assert_eq!(outputs.loss_charts.len(), 1);
    let chart = &outputs.loss_charts[0];
    assert!(
        chart.ends_with("loss-medqa_4options.png"),
        "{}",
        chart.display()
    );
    assert!(std::fs::metadata(chart).unwrap().len() > 10_000);
}
