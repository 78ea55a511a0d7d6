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

/// `--mix`: a run on two text sources resumed from a middle checkpoint ends with the
/// uninterrupted run's weights (the mixture's cursor gives every source's position), and
/// `metrics.jsonl` has each source's tokens and held-out perplexity.
#[test]
fn a_mixture_resumes_exactly_and_logs_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, words: &[&str]| {
        let path = dir.path().join(name);
        let lines: String = (0..300)
            .map(|i| {
                (0..12)
                    .map(|j| words[(i * 7 + j * 3) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
                    + "\n"
            })
            .collect();
        std::fs::write(&path, lines).unwrap();
        path
    };
    let pmc = write(
        "pmc.txt",
        &["kinase", "inhibitor", "tumour", "cell", "protein", "dose"],
    );
    let general = write(
        "general.txt",
        &["the", "ship", "sailed", "into", "a", "storm", "at"],
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = root.join("crates/pmc-model/tests/fixtures/gqa_tied");
    let mix = format!(
        "pmc={}:0.7,general={}:0.3",
        pmc.display(),
        general.display()
    );
    let run = |out: &Path, extra: &[&str]| {
        let output = pretrain(out, extra)
            .arg("--base")
            .arg(&base)
            .args(["--mix", &mix])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let straight = dir.path().join("straight");
    run(&straight, &[]);
    // A fresh process resumes from the straight run's step 6, copied into a directory of its
    // own: every source's position is recounted from the mixture's cursor.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(copy.join("checkpoints")).unwrap();
    let step6 = straight.join("checkpoints/step-00000006");
    let target = copy.join("checkpoints/step-00000006");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&step6).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    run(&copy, &["--resume", target.to_str().unwrap()]);
    let last = "checkpoints/step-00000012/model.safetensors";
    assert!(
        std::fs::read(straight.join(last)).unwrap() == std::fs::read(copy.join(last)).unwrap(),
        "weights after resuming a mixture differ from the uninterrupted run"
    );

    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step = lines.iter().find(|l| l["loss"].is_number()).unwrap();
    let by_source = step["tokens_by_source"].as_object().unwrap();
    let sum: u64 = by_source.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, step["tokens"].as_u64().unwrap());
    let last = lines.last().unwrap();
    let ppl = last["val_ppl_by_source"].as_object().unwrap();
    assert!(
        ppl["pmc"].as_f64().unwrap().is_finite() && ppl["general"].as_f64().unwrap().is_finite()
    );
    let general_share = lines
        .iter()
        .rev()
        .find_map(|l| l["tokens_by_source"]["general"].as_f64())
        .unwrap()
        / lines
            .iter()
            .rev()
            .find_map(|l| l["tokens"].as_f64().filter(|_| l["loss"].is_number()))
            .unwrap();
    assert!((0.1..0.5).contains(&general_share), "{general_share}");

    // Weights that do not sum to 1 and a missing source are refused, naming them.
    let out = pretrain(&dir.path().join("bad"), &[])
        .arg("--base")
        .arg(&base)
        .args([
            "--mix",
            &format!(
                "pmc={}:0.7,general={}:0.2",
                pmc.display(),
                general.display()
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("sum to 0.9"),
        "{stderr}"
    );
    let out = pretrain(&dir.path().join("bad2"), &[])
        .arg("--base")
        .arg(&base)
        .args(["--mix", "pmc=/nonexistent/papers:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mixture source \"pmc\"") && stderr.contains("/nonexistent/papers"),
        "{stderr}"
    );
}

/// `pretrain --config FILE.toml`: the file's options apply, the command line's win over them,
/// and what ran is what `run_config.json` records; a missing file is named.
#[test]
fn a_config_file_sets_options_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    std::fs::write(&file, "steps = 200\nlr = 2e-5\n").unwrap();
    let out = dir.path().join("run");
    let output = pretrain(&out, &["--config", file.to_str().unwrap(), "--steps", "2"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run_config.json")).unwrap()).unwrap();
    assert_eq!(config["steps"], 2, "the command line's --steps wins");
    assert_eq!(
        config["train"]["schedule"]["peak_lr"], 2e-5,
        "the file's lr applies"
    );
    let output = pretrain(
        &dir.path().join("other"),
        &["--config", "/nonexistent.toml"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("/nonexistent.toml"),
        "{stderr}"
    );
}
