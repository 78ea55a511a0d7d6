//! Input discovery: files, directories and `.tar.gz` bundles → a stream of records to parse.
//!
//! A background thread walks the inputs in a fixed order (paths as given, directory entries
//! sorted by name, archive members in archive order) and sends one [`InputEvent`] per record
//! over a bounded channel, so reading and decompression overlap with parsing while memory
//! stays bounded by the channel's capacity.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use flate2::read::MultiGzDecoder;

use crate::clean::DropReason;

/// How a record is to be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JATS XML (`.xml`, `.nxml`).
    Jats,
    /// One JSON document (`.json`): S2ORC doc2json.
    Json,
    /// One line of a `.jsonl` file: S2ORC 2023, doc2json, metadata, or `{"id", "text"}`.
    JsonLine,
}

/// One record to parse, with the place it came from.
#[derive(Debug)]
pub struct Record {
    /// `path`, `archive.tar.gz:member` or `file.jsonl:LINE` (1-based).
    pub source: String,
    pub format: Format,
    pub bytes: Vec<u8>,
}

/// What the input walker produces.
#[derive(Debug)]
pub enum InputEvent {
    Record(Record),
    /// A file or record that could not be read; counted and reported, never dropped silently.
    Failed {
        source: String,
        reason: DropReason,
    },
    /// Bytes of input consumed so far (compressed size for archives), for progress output.
    Progress {
        bytes: u64,
    },
}

/// Files and their kinds, as discovered under the input paths.
fn classify(path: &Path) -> Option<(Format, bool)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(stem) => (stem.to_string(), true),
        None => (name.clone(), false),
    };
    let format = if stem.ends_with(".xml") || stem.ends_with(".nxml") {
        Format::Jats
    } else if stem.ends_with(".jsonl") {
        Format::JsonLine
    } else if stem.ends_with(".json") {
        Format::Json
    } else {
        return None;
    };
    Some((format, gz))
}

fn is_tar_gz(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// The bytes of `files` on disk (files that vanished count as empty).
pub fn total_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Every file under the given paths, in a deterministic order.
pub fn list_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            collect(&entry, files)?;
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// Start walking `files`; records arrive on the returned channel in input order.
pub fn spawn_reader(files: Vec<PathBuf>, capacity: usize) -> Receiver<InputEvent> {
    let (tx, rx) = sync_channel(capacity);
    std::thread::Builder::new()
        .name("pmc-corpus-input".into())
        .spawn(move || {
            let mut consumed = 0u64;
            for file in files {
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                if read_file(&file, &tx).is_err() {
                    return; // the receiver hung up
                }
                consumed += size;
                if tx.send(InputEvent::Progress { bytes: consumed }).is_err() {
                    return;
                }
            }
        })
        .expect("spawning the input thread");
    rx
}

type Sent = Result<(), std::sync::mpsc::SendError<InputEvent>>;

fn failed(source: String, reason: DropReason) -> InputEvent {
    InputEvent::Failed { source, reason }
}

fn read_file(path: &Path, tx: &SyncSender<InputEvent>) -> Sent {
    let source = path.display().to_string();
    if is_tar_gz(path) {
        return read_tar_gz(path, &source, tx);
    }
    let Some((format, gz)) = classify(path) else {
        return tx.send(failed(source, DropReason::UnsupportedFile));
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return tx.send(failed(source, DropReason::Unreadable(e.to_string()))),
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    read_stream(reader, format, &source, tx)
}

/// Read one file's content (plain or decompressed) as records of `format`.
fn read_stream(
    mut reader: impl Read,
    format: Format,
    source: &str,
    tx: &SyncSender<InputEvent>,
) -> Sent {
    if format == Format::JsonLine {
        return read_lines(reader, source, tx);
    }
    let mut bytes = Vec::new();
    match reader.read_to_end(&mut bytes) {
        Ok(_) => tx.send(InputEvent::Record(Record {
            source: source.to_string(),
            format,
            bytes,
        })),
        Err(e) => tx.send(failed(
            source.to_string(),
            DropReason::Unreadable(e.to_string()),
        )),
    }
}

fn read_lines(reader: impl Read, source: &str, tx: &SyncSender<InputEvent>) -> Sent {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                let at = format!("{source}:{}", number + 1);
                return tx.send(failed(at, DropReason::Unreadable(e.to_string())));
            }
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bytes = std::mem::take(&mut line);
        tx.send(InputEvent::Record(Record {
            source: format!("{source}:{number}"),
            format: Format::JsonLine,
            bytes,
        }))?;
    }
}

fn read_tar_gz(path: &Path, source: &str, tx: &SyncSender<InputEvent>) -> Sent {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return tx.send(failed(
                source.to_string(),
                DropReason::Unreadable(e.to_string()),
            ));
        }
    };
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            return tx.send(failed(
                source.to_string(),
                DropReason::Unreadable(e.to_string()),
            ));
        }
    };
    let mut last_member = String::from("(start)");
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // A truncated or corrupt archive: everything after this point is unreadable.
                let reason =
                    DropReason::Unreadable(format!("archive broken after {last_member}: {e}"));
                return tx.send(failed(source.to_string(), reason));
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = match entry.path() {
            Ok(p) => p.display().to_string(),
            Err(e) => {
                return tx.send(failed(
                    source.to_string(),
                    DropReason::Unreadable(e.to_string()),
                ));
            }
        };
        last_member.clone_from(&member);
        let member_source = format!("{source}:{member}");
        let member_path = PathBuf::from(&member);
        if member_path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("._"))
        {
            continue; // macOS resource forks inside archives carry no paper
        }
        let Some((format, gz)) = classify(&member_path) else {
            tx.send(failed(member_source, DropReason::UnsupportedFile))?;
            continue;
        };
        let reader: Box<dyn Read> = if gz {
            Box::new(MultiGzDecoder::new(entry))
        } else {
            Box::new(entry)
        };
        read_stream(reader, format, &member_source, tx)?;
    }
    Ok(())
}
