//! The paper's experiment in miniature, as a user runs it: a tiny LLaMA pretrained on the
//! bundled papers (`pretrain`), its early and its later checkpoint as the base and the
//! continued model, and `reproduce --quick` over the three real benchmarks — every regime,
//! the data-efficient cells, the outputs; `--dry-run` plans it with an estimate, and a rerun
//! takes every cell from its record. Needs the benchmarks in ../shared/data (skipped, with
//! the reason, without them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn xtask(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtask {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn quick_grid_runs_plans_and_resumes() {
    let data = root().join("../shared/data");
    if !data.join("medqa").is_dir() {
        eprintln!(
            "skipped: the benchmarks are not at {} (see ../shared/README.md)",
            data.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let run = dir.path().join("pretrain");
    xtask(&[
        "pretrain",
        "--steps",
        "4",
        "--seq-len",
        "64",
        "--warmup",
        "1",
        "--checkpoint-every",
        "2",
        "--keep",
        "10",
        "--eval-every",
        "0",
        "--out",
        &path(&run),
    ]);
    let base = pmc_train::checkpoint::checkpoint_dir(&run, 2);
    let continued = pmc_train::checkpoint::checkpoint_dir(&run, 4);
    let grid = dir.path().join("grid");
    let results = dir.path().join("results.md");
    let args = [
        "reproduce",
        "--quick",
        "--model",
        &path(&base),
        "--continued",
        &path(&continued),
        "--data",
        &path(&data),
        "--out",
        &path(&grid),
        "--results",
        &path(&results),
    ];
    let dry_run: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();

    // The plan: 2 models × (3 tasks × 3 regimes + the 50 % cells' 2 regimes) = 22 cells,
    // none finished, with an estimate.
    let plan = String::from_utf8(xtask(&dry_run).stdout).unwrap();
    assert_eq!(plan.matches(" — ≈ ").count(), 22, "{plan}");
    assert!(plan.contains("22 of 22 cells to run: ≈ "), "{plan}");

    let first = xtask(&args);
    let log = String::from_utf8_lossy(&first.stderr);
    assert_eq!(log.matches("cell ").count(), 22, "{log}");
    let table = std::fs::read_to_string(&results).unwrap();
    for row in [
        "| continued | pubmedqa | lora | ",
        "| continued | medmcqa | full | ",
        "| continued | medqa_4options | lora (50 % of the pool) | ",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grid.join("results.json")).unwrap()).unwrap();
    assert_eq!(summary["results"].as_object().unwrap().len(), 22);
    let configs = summary["configs"].as_object().unwrap();
    assert!(
        configs
            .iter()
            .filter(|(name, _)| name.starts_with("continued"))
            .all(|(_, c)| c["mcnemar_p_vs_base"].is_f64()),
        "every continued cell is paired with its base cell: {configs:?}"
    );
    for chart in [
        "accuracy.png",
        "loss-pubmedqa.png",
        "loss-medqa_4options.png",
    ] {
        assert!(grid.join(chart).exists(), "{chart}");
    }

    // Everything finished: the plan says so, and a rerun takes every cell from its record.
    let plan = String::from_utf8(xtask(&dry_run).stdout).unwrap();
    assert_eq!(plan.matches("finished (cell.json)").count(), 22, "{plan}");
    assert!(plan.contains("0 of 22 cells to run"), "{plan}");
    let again = xtask(&args);
    let log = String::from_utf8_lossy(&again.stderr);
    assert_eq!(log.matches("(cached)").count(), 22, "{log}");
}
