//! A fine-tuning cell stopped by Ctrl-C keeps its checkpoint, records no result, and run
//! again continues from that checkpoint to the same adapter as a cell that was never
//! stopped. (Its own test binary: the stop flag is process-wide.)

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::{fixture_model, medqa_data};
use pmc_bench::BenchError;
use pmc_bench::Task;
use pmc_bench::regimes::{Cell, CellSettings, Regime, run_cell};

fn adapter_bytes(cell: &Path) -> Vec<u8> {
    std::fs::read(cell.join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn a_stopped_cell_continues_from_its_checkpoint_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = medqa_data(dir.path());
    let settings = CellSettings {
        data,
        fraction: 1.0,
        steps: Some(4),
        global_batch: 4,
        limit: None,
        subset_seed: 1234,
    };
    let model = fixture_model();
    let run = |cell: &Path| run_cell(&model, Task::MedQa, Regime::Lora, &settings, cell);

    let whole = dir.path().join("whole");
    assert!(matches!(run(&whole).unwrap(), Cell::Run(Some(_))));

    // Ctrl-C before the first step: the run stops after it, with its checkpoint.
    let stopped = dir.path().join("stopped");
    pmc_train::run::STOP.store(true, Ordering::SeqCst);
    let interrupted = run(&stopped);
    pmc_train::run::STOP.store(false, Ordering::SeqCst);
    let Err(BenchError::Interrupted(at)) = interrupted else {
        panic!("a stopped cell must say it was interrupted: {interrupted:?}");
    };
    assert_eq!(at, stopped);
    assert!(
        !stopped.join("cell.json").exists(),
        "a stopped cell recorded a result"
    );
    assert!(pmc_train::checkpoint::checkpoint_dir(&stopped, 1).is_dir());

    let resumed = run(&stopped).unwrap();
    assert!(matches!(resumed, Cell::Run(Some(_))), "{resumed:?}");
    let steps: Vec<u64> = std::fs::read_to_string(stopped.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(
        steps,
        [1, 2, 3, 4],
        "the cell restarted instead of continuing"
    );
    assert_eq!(
        adapter_bytes(&stopped),
        adapter_bytes(&whole),
        "the continued cell's adapter differs from the uninterrupted one"
    );
}
