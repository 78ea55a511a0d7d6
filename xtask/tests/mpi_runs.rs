//! Sharded `pretrain` under MPI (build with `--features mpi`; needs `mpiexec`): two processes
//! at every level train like the single-process trainer, whether started by `mpiexec`
//! directly or relaunching themselves under it; a stuck worker makes the job end with the
//! collective's name within the timeout, and a killed one ends it too.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pretrain_args(out: &Path, steps: &str) -> Vec<String> {
    [
        "pretrain",
        "--steps",
        steps,
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
        "--eval-every",
        "0",
        "--log-every",
        "100",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.current_dir(root()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_mpi_processes_train_like_one_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    run_ok(Command::new(XTASK).args(pretrain_args(&single, "8")));
    let single_ckpt = pmc_train::checkpoint_dir(&single, 8);
    for level in 0..4 {
        let out = dir.path().join(format!("mpi-{level}"));
        let mut cmd = if level == 3 {
            // Started outside MPI: relaunches itself under `mpiexec -n 2`.
            let mut c = Command::new(XTASK);
            c.args(pretrain_args(&out, "8")).args(["--world-size", "2"]);
            c
        } else {
            let mut c = Command::new("mpiexec");
            c.args(["-n", "2", XTASK]).args(pretrain_args(&out, "8"));
            c
        };
        run_ok(cmd.args(["--engine", "mpi", "--shard-level", &level.to_string()]));
        let ckpt = pmc_train::checkpoint_dir(&out, 8);
        assert!(
            ckpt.join("fsdp-rank-00001-of-00002.safetensors").is_file(),
            "two ranks wrote shards"
        );
        common::assert_same_weights(&format!("level {level}"), &ckpt, &single_ckpt);
    }
}

/// The xtask processes of the job writing to `out` whose MPI rank is `rank`.
fn rank_pids(out: &Path, rank: usize) -> Vec<u32> {
    let needle = out.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&needle)
                && cmdline.starts_with(XTASK)
                && environ
                    .split(|&b| b == 0)
                    .any(|kv| kv == format!("PMI_RANK={rank}").as_bytes())
        })
        .collect()
}

/// Starts a long 2-process job, waits for its first checkpoint, sends `signal` to rank 1 and
/// returns how long the job took to end, its exit status and its output.
fn disturb_rank_one(signal: &str, out: &Path) -> (Duration, std::process::ExitStatus, String) {
    let mut job = Command::new("mpiexec")
        .args(["-n", "2", XTASK])
        .args(pretrain_args(out, "100000"))
        .args(["--engine", "mpi", "--collective-timeout", "5"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pmc_train::checkpoint::latest(out).ok().flatten().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = rank_pids(out, 1);
    assert_eq!(pids.len(), 1, "one rank-1 process: {pids:?}");
    let disturbed = Instant::now();
    assert!(
        Command::new("kill")
            .args([signal, &pids[0].to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Duration::from_secs(60);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if disturbed.elapsed() > deadline {
            let _ = Command::new("kill")
                .args(["-9", &pids[0].to_string()])
                .status();
            job.kill().unwrap();
            panic!("the job did not end within {deadline:?} after rank 1 got {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = disturbed.elapsed();
    let output = job.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    (took, status, text)
}

#[test]
fn a_stuck_worker_ends_the_job_at_the_collective_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (took, status, text) = disturb_rank_one("-STOP", &dir.path().join("stuck"));
    // The stopped rank cannot be aborted politely; mpiexec ends it with the job.
    assert!(!status.success(), "{text}");
    assert!(
        took >= Duration::from_secs(4),
        "ended after {took:?}, before the 5 s timeout"
    );
    assert!(
        text.contains("timed out after") && text.contains("aborting the MPI job"),
        "{text}"
    );
}

#[test]
fn a_killed_worker_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (took, status, text) = disturb_rank_one("-KILL", &dir.path().join("killed"));
    assert!(!status.success(), "{text}");
    println!("job ended {took:?} after rank 1 was killed");
    assert!(
        text.contains("BAD TERMINATION") || text.contains("timed out"),
        "{text}"
    );
}
