//! candle as the Rust peer of `bench-model --candle`: `tools/candle-decode` (its own
//! workspace, so candle is never a dependency of ours) is built once with
//! `-C target-cpu=native` into its own target dir and run as a child process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::model::Figures;

fn tool_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/candle-decode")
}

/// Builds the tool (a no-op when it is up to date) and returns the binary.
pub fn build() -> Result<PathBuf> {
    let target = dirs_target();
    eprintln!("building tools/candle-decode (candle from the registry, -C target-cpu=native)…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(tool_dir().join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-C target-cpu=native")
        .status()
        .context("running cargo build for tools/candle-decode")?;
    anyhow::ensure!(status.success(), "building tools/candle-decode failed");
    Ok(target.join("release/candle-decode"))
}

/// candle's own target dir, beside ours (a native build must not share our artefacts).
fn dirs_target() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/pmc-llama/candle-target")
}

/// How candle holds the GGUF's weight matrices.
#[derive(Clone, Copy, Debug)]
pub enum Weights {
    /// In the file's block formats, multiplied by candle's quantized kernels.
    Quantized,
    /// Dequantised to f32 while loading (candle's `CANDLE_DEQUANTIZE_ALL`), multiplied by
    /// its dense products: candle's f32 decoding of the same model.
    F32,
}

/// One decoding run of `binary` on `gguf`.
pub fn decode(
    binary: &Path,
    gguf: &Path,
    weights: Weights,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<Figures> {
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let dequantize_all = match weights {
        Weights::Quantized => "0",
        Weights::F32 => "1",
    };
    let out = Command::new(binary)
        .env("CANDLE_DEQUANTIZE_ALL", dequantize_all)
        .arg(gguf)
        .arg(ids.join(","))
        .arg(new_tokens.to_string())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "candle-decode failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .context("candle-decode printed nothing")?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("candle-decode printed {line:?}"))?;
    let num = |k: &str| crate::reference::reported(&v, k, "candle-decode");
    Ok(Figures {
        score_tps: None,
        prefill_tps: None,
        decode_tps: num("decode_tokens_per_s")?,
        peak_rss: num("peak_rss_bytes")?,
        load_s: None,
        load_rss: None,
    })
}
