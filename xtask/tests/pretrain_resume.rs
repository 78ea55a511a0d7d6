//! Kill-and-resume: a `pretrain` run killed by SIGKILL at a random point after its first
//! checkpoint, then resumed from its latest checkpoint, ends with weights bit-identical to an
//! uninterrupted run.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::{Duration, Instant};

const STEPS: &str = "12";

fn pretrain(out: &Path, extra: &[&str]) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(&root).args([
        "pretrain",
        "--steps",
        STEPS,
        "--seq-len",
        "32",
        "--micro-batch",
        "2",
        "--global-batch",
        "4",
        "--vocab-size",
        "400",
        "--warmup",
        "2",
        "--checkpoint-every",
        "2",
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

fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    pmc_train::checkpoint::latest(run).ok()?
}

#[test]
fn killed_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    let status = pretrain(&straight, &[]).output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Kill the second run at a random moment after its first checkpoint.
    let mut child = pretrain(&killed, &[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while latest_checkpoint(&killed).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis((nanos % 400) as u64));
    child.kill().unwrap();
    child.wait().unwrap();
    let resume_from = latest_checkpoint(&killed).unwrap();
    println!("killed; resuming from {}", resume_from.display());

    let status = pretrain(&killed, &["--resume", resume_from.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let last = format!(
        "checkpoints/step-{:08}/model.safetensors",
        STEPS.parse::<usize>().unwrap()
    );
    let a = std::fs::read(straight.join(&last)).unwrap();
    let b = std::fs::read(killed.join(&last)).unwrap();
    assert!(
        a == b,
        "weights after resume differ from the uninterrupted run"
    );
}

#[test]
fn resuming_on_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let status = pretrain(&run, &[]).output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let ckpt = latest_checkpoint(&run).unwrap();
    let other = dir.path().join("other.txt");
    std::fs::write(
        &other,
        "Aspirin irreversibly inhibits cyclooxygenase.\n".repeat(400),
    )
    .unwrap();
    let out = pretrain(
        &run,
        &[
            "--resume",
            ckpt.to_str().unwrap(),
            "--corpus",
            other.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("other data"),
        "{stderr}"
    );
}

/// A fresh run pointed at a directory holding another run is refused before it writes
/// anything: the earlier run's metrics and checkpoints stay as they were.
#[test]
fn a_fresh_run_into_a_used_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let first = pretrain(&run, &[]).output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let snapshot = |run: &Path| {
        let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
        let checkpoints = pmc_train::checkpoint::list(run).unwrap();
        (metrics, checkpoints)
    };
    let before = snapshot(&run);

    let again = pretrain(&run, &["--steps", "4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second fresh run was accepted");
    assert!(
        stderr.contains("already holds a run")
            && stderr.contains("--resume")
            && stderr.contains("--out"),
        "{stderr}"
    );
    assert!(
        snapshot(&run) == before,
        "the refused run changed the earlier one"
    );
}
