//! What the fuzz targets share: a scratch directory per process, where a target writes the
//! fuzzed bytes under the file name its reader expects (the readers take paths, as users
//! give them).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch directory (emptied of nothing: each target overwrites its files).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pmc-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Writes `bytes` as `scratch()/name` and returns the directory.
pub fn file(name: &str, bytes: &[u8]) -> &'static Path {
    let dir = scratch();
    std::fs::write(dir.join(name), bytes).expect("writing the scratch file");
    dir
}

/// Splits the input at its first NUL byte: two files from one input.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
