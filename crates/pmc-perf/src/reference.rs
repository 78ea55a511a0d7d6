//! The Python reference runs (PyTorch, transformers, PEFT, the Python corpus pipeline),
//! compiled into the binary and run from a scratch directory.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

/// The reference scripts of `crates/pmc-perf/python`, compiled in: a binary built from another clone
/// (a shared target dir) or from one deleted since runs the scripts it was built with, not
/// whatever lies at the path it was built in.
const REFERENCE_SCRIPTS: [(&str, &str); 7] = [
    ("bench_model.py", include_str!("../python/bench_model.py")),
    (
        "bench_llama_cpp.py",
        include_str!("../python/bench_llama_cpp.py"),
    ),
    ("bench_train.py", include_str!("../python/bench_train.py")),
    (
        "corpus_reference.py",
        include_str!("../python/corpus_reference.py"),
    ),
    (
        "eval_reference.py",
        include_str!("../python/eval_reference.py"),
    ),
    (
        "score_reference.py",
        include_str!("../python/score_reference.py"),
    ),
    ("rss.py", include_str!("../python/rss.py")),
];

/// Runs the reference script `script` (one of [`REFERENCE_SCRIPTS`], written with the others
/// into a scratch directory, since one imports another) with `args` and returns the JSON
/// objects it printed, one per stdout line. A failure carries the last line of its stderr
/// (usually the missing package).
pub fn run_python_reference(script: &str, args: &[&std::ffi::OsStr]) -> Result<Vec<Value>> {
    anyhow::ensure!(
        REFERENCE_SCRIPTS.iter().any(|(name, _)| *name == script),
        "no reference script {script} is built in"
    );
    let dir = tempfile::tempdir().context("a scratch directory for the reference scripts")?;
    for (name, source) in REFERENCE_SCRIPTS {
        let path = dir.path().join(name);
        std::fs::write(&path, source).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = Command::new("python3")
        .arg(dir.path().join(script))
        .args(args)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("{script}: {}", stderr.lines().last().unwrap_or("failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{script} printed {l:?}")))
        .collect()
}

/// The number `key` of a run's JSON report `v`; the error names `source` and the key.
pub fn reported(v: &Value, key: &str, source: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("{source} did not report {key}"))
}

/// What a failed reference run is told: a benchmark never reports ours alone unless asked.
pub const REFERENCE_MISSING: &str = "the PyTorch reference failed (pip install torch transformers accelerate peft gguf, or pass --no-reference to measure ours alone)";
