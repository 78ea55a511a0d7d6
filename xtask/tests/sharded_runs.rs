//! Sharded `pretrain` end to end (threads engine): a run checkpointed by 2 ranks at level 3
//! and resumed by 4 ranks at level 2 continues the unsharded run's loss curve and ends with
//! its weights; its checkpoints are HF models that load and score like the unsharded ones.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn pretrain(out: &Path, extra: &[&str]) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(&root).args([
        "pretrain",
        "--steps",
        "8",
        "--seq-len",
        "32",
        "--micro-batch",
        "1",
        "--global-batch",
        "4",
        "--vocab-size",
        "400",
        "--warmup",
        "2",
        "--checkpoint-every",
        "4",
        "--keep",
        "10",
        "--eval-every",
        "0",
        "--log-every",
        "100",
    ]);
    cmd.arg("--out").arg(out).args(extra);
    cmd
}

fn ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The step losses of a run's metrics.jsonl, the last line of each step winning (a resumed
/// run appends its own).
fn losses(run: &Path) -> Vec<f64> {
    let mut by_step = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(step), Some(loss)) = (v["step"].as_u64(), v["loss"].as_f64()) {
            by_step.insert(step, loss);
        }
    }
    by_step.into_values().collect()
}

fn step_dir(run: &Path, step: usize) -> PathBuf {
    pmc_train::checkpoint_dir(run, step)
}

#[test]
fn a_sharded_run_resumed_at_another_world_size_follows_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let (single, sharded) = (dir.path().join("single"), dir.path().join("sharded"));
    ok(pretrain(&single, &[]));
    let log = ok(pretrain(
        &sharded,
        &["--world-size", "2", "--shard-level", "3"],
    ));
    assert!(log.contains("held-out perplexity"), "{log}");
    // Resume the step-4 checkpoint of the 2-rank run with 4 ranks at level 2.
    let resume = step_dir(&sharded, 4);
    std::fs::remove_dir_all(step_dir(&sharded, 8)).unwrap();
    let log = ok(pretrain(
        &sharded,
        &[
            "--resume",
            resume.to_str().unwrap(),
            "--world-size",
            "4",
            "--shard-level",
            "2",
        ],
    ));
    assert!(log.contains("resuming"), "{log}");

    let (want, got) = (losses(&single), losses(&sharded));
    assert_eq!(want.len(), 8);
    assert_eq!(got.len(), 8);
    for (step, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b,
            "step {}: loss {a} vs {b}",
            step + 1
        );
    }
    let worst = common::assert_same_weights(
        "resumed at another world size",
        &step_dir(&sharded, 8),
        &step_dir(&single, 8),
    );
    println!("max |Δw| after resuming at another world size: {worst:.2e}");

    // The consolidated checkpoint is an HF model directory: it scores like the unsharded run's.
    let device = pmc_model::burn::prelude::Device::flex();
    let tokens: Vec<u32> = (0..64).map(|i| (i * 7 % 400) as u32).collect();
    let nll = |ckpt: &Path| {
        let loaded = pmc_model::load_model(ckpt, &Default::default(), &device).unwrap();
        assert!(
            loaded.tokenizer.is_some(),
            "{} carries its tokenizer",
            ckpt.display()
        );
        pmc_model::mean_nll(&loaded.model, &tokens, 64, &device).unwrap()
    };
    let (a, b) = (nll(&step_dir(&sharded, 8)), nll(&step_dir(&single, 8)));
    assert!((a - b).abs() < 1e-5 * b, "{a} vs {b}");
}

#[test]
fn sharding_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = pretrain(
        &dir.path().join("r"),
        &["--world-size", "3", "--global-batch", "4"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("do not split evenly over 3 ranks"),
        "{stderr}"
    );
    let out = pretrain(
        &dir.path().join("r"),
        &["--world-size", "2", "--shard-level", "7"],
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shard-level must be 0, 1, 2 or 3"));
    if !cfg!(feature = "mpi") {
        let out = pretrain(
            &dir.path().join("r"),
            &["--engine", "mpi", "--world-size", "2"],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--features mpi"), "{stderr}");
    }
}

/// `finetune --method full` shards the same way: 2 ranks at level 3 end with the weights of the
/// single-process run on instruction data (masked loss, padded micro-batches); its result is
/// the last checkpoint's consolidated model. LoRA is refused with a message.
#[test]
fn sharded_full_fine_tuning_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qa.jsonl");
    let lines: String = (0..24)
        .map(|i| {
            serde_json::json!({"instruction": format!("Is drug {i} an inhibitor of enzyme {}?", i % 5),
                "output": if i % 3 == 0 { "yes" } else { "no" }})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("crates/pmc-model/tests/fixtures/gqa_tied");
    let finetune = |out: &Path, method: &str, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.current_dir(&root)
            .args(["finetune", "--method", method, "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args([
                "--steps",
                "3",
                "--micro-batch",
                "1",
                "--global-batch",
                "4",
                "--max-len",
                "64",
            ])
            .args(["--lr", "1e-3", "--checkpoint-every", "100", "--out"])
            .arg(out)
            .args(extra);
        cmd
    };
    let (single, sharded) = (dir.path().join("single"), dir.path().join("sharded"));
    ok(finetune(&single, "full", &[]));
    let log = ok(finetune(
        &sharded,
        "full",
        &["--world-size", "2", "--shard-level", "3"],
    ));
    assert!(log.contains("held-out"), "{log}");
    common::assert_same_weights(
        "sharded full fine-tuning",
        &step_dir(&sharded, 3),
        &single.join("model"),
    );
    let out = finetune(&dir.path().join("lora"), "lora", &["--world-size", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is for full training"));
}
