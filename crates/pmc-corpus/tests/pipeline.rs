//! The pipeline end to end on inputs written by the test: bad input is skipped and counted,
//! every record is accounted for, and the shard reader partitions and resumes exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pmc_corpus::reader::Split;
use pmc_corpus::{
    Cursor, PrepareConfig, Preset, StreamOptions, TokenCorpus, TokenizerSource, prepare,
};

/// Deterministic pseudo-random prose: `words` words from a 400-word vocabulary.
fn prose(seed: u64, words: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("w{}", x % 400)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn jats(pmcid: u32, title: &str, body: &[String]) -> String {
    let paragraphs: String = body.iter().map(|p| format!("<p>{p}</p>")).collect();
    format!(
        r#"<?xml version="1.0"?><article><front><article-meta><article-id pub-id-type="pmc">{pmcid}</article-id><title-group><article-title>{title}</article-title></title-group></article-meta></front><body><sec><title>Intro</title>{paragraphs}</sec></body><back><ref-list><ref><article-title>A cited work</article-title></ref></ref-list></back></article>"#
    )
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn config(inputs: Vec<PathBuf>, out: PathBuf) -> PrepareConfig {
    let mut options = Preset::Meditron.options();
    options.min_chars = 100;
    let mut config = PrepareConfig::new(
        inputs,
        out,
        TokenizerSource::Train { vocab_size: 600 },
        options,
    );
    config.batch_records = 4; // several batches even on small inputs
    config
}

fn read_dropped(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("dropped.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bad_input_is_skipped_counted_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for i in 0..3 {
        write(
            &input.join(format!("good{i}.xml")),
            jats(100 + i, "Good paper", &[prose(u64::from(i), 300)]).as_bytes(),
        );
    }
    // The same paper again under another name: an exact duplicate by PMCID.
    write(
        &input.join("good0-copy.nxml"),
        jats(100, "Good paper", &[prose(0, 300)]).as_bytes(),
    );
    // Near duplicate: another PMCID, one word in 100 changed.
    let mut near: Vec<String> = prose(1, 300).split(' ').map(str::to_string).collect();
    for w in near.iter_mut().step_by(100) {
        *w = "edited".into();
    }
    write(
        &input.join("near.xml"),
        jats(200, "Good paper", &[near.join(" ")]).as_bytes(),
    );
    write(&input.join("malformed.xml"), b"<article><front></article>");
    let mut not_utf8 = jats(300, "Latin-1", &[prose(9, 300)]).into_bytes();
    not_utf8.extend_from_slice(b"\xff\xfe");
    write(&input.join("latin1.xml"), &not_utf8);
    write(
        &input.join("empty.xml"),
        jats(400, "No body", &[]).as_bytes(),
    );
    write(&input.join("notes.txt"), b"not a paper");
    write(
        &input.join("records.jsonl"),
        format!(
            "{}\n{{\"id\": \"broken\", \n{}\n",
            serde_json::json!({"id": "j1", "text": prose(5, 200)}),
            serde_json::json!({"id": "j2", "text": prose(6, 200)})
        )
        .as_bytes(),
    );
    // A .tar.gz cut in the middle: the first members are read, the rest reported.
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for i in 0..6 {
        let xml = jats(500 + i, "Archived", &[prose(50 + u64::from(i), 400)]);
        let mut header = tar::Header::new_gnu();
        header.set_size(xml.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(
                &mut header,
                format!("pkg/PMC{}.nxml", 500 + i),
                xml.as_bytes(),
            )
            .unwrap();
    }
    let gz = archive.into_inner().unwrap().finish().unwrap();
    write(&input.join("bundle.tar.gz"), &gz[..gz.len() * 6 / 10]);

    let out = tmp.path().join("out");
    let manifest = prepare(&config(vec![input.clone()], out.clone()), |_| {}).unwrap();
    let d = &manifest.documents;
    let dropped_total: u64 = d.dropped.values().sum();
    assert_eq!(
        d.kept + dropped_total,
        d.input,
        "every record is kept or dropped with a reason"
    );
    let expect = |reason: &str, n: u64| {
        assert_eq!(
            d.dropped.get(reason).copied(),
            Some(n),
            "{reason}: {:?}",
            d.dropped
        )
    };
    expect("duplicate-id", 1);
    expect("near-duplicate", 1);
    expect("malformed-xml", 1);
    expect("not-utf8", 1);
    expect("no-body", 1);
    assert_eq!(d.unsupported_files, 1);
    // The broken JSON line and the broken archive are named, with line and member.
    let dropped = read_dropped(&out);
    let sources: Vec<&str> = dropped
        .iter()
        .map(|v| v["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.iter().any(|s| s.ends_with("records.jsonl:2")),
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.contains("bundle.tar.gz")),
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.ends_with("notes.txt")),
        "{sources:?}"
    );
    assert_eq!(dropped.len() as u64, dropped_total + d.unsupported_files);
    // Kept: 3 good + 2 JSONL + the archive members before the cut.
    let archived = d.kept - 5;
    assert!(
        (1..6).contains(&archived),
        "{archived} archive members kept of 6"
    );
    // The text shards hold exactly the kept documents, none of the reference list.
    let mut rows = Vec::new();
    for shard in &manifest.text_shards {
        rows.extend(pmc_corpus::shards::read_text_shard(&out.join(&shard.file)).unwrap());
    }
    assert_eq!(rows.len() as u64, d.kept);
    assert!(rows.iter().all(|(_, text)| !text.contains("A cited work")));
    // A second run into the same directory is refused rather than mixing outputs.
    let again = prepare(&config(vec![input], out), |_| {});
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("already holds a prepared corpus")
    );
}

/// A corpus with several shards and row groups (seq_len 8).
fn small_corpus(dir: &Path) -> PathBuf {
    let records: String = (0..400)
        .map(|i| {
            serde_json::json!({"id": format!("d{i}"), "text": prose(1000 + i, 120)}).to_string()
                + "\n"
        })
        .collect();
    let input = dir.join("docs.jsonl");
    write(&input, records.as_bytes());
    let out = dir.join("corpus");
    let mut cfg = config(vec![input], out.clone());
    cfg.clean = Preset::Plain.options();
    cfg.seq_len = 8;
    cfg.shard_sequences = 1500;
    cfg.valid_fraction = 0.1;
    let manifest = prepare(&cfg, |_| {}).unwrap();
    assert!(
        manifest.token_shards.len() >= 3,
        "{:?}",
        manifest.token_shards
    );
    assert!(manifest.valid_sequences > 0);
    out
}

#[test]
fn every_sequence_once_per_epoch_across_ranks_and_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = small_corpus(tmp.path());
    let corpus = TokenCorpus::open(&dir, Split::Train).unwrap();
    let n = corpus.sequences();
    // File order, unshuffled: the reference multiset.
    let plain = StreamOptions {
        shuffle: false,
        ..StreamOptions::default()
    };
    let mut reference: Vec<Vec<u32>> = {
        let mut s = corpus.stream(plain, Cursor::default()).unwrap();
        (0..n)
            .map(|_| s.next_sequence().unwrap().input_ids)
            .collect()
    };
    let world = 3;
    let options = |rank| StreamOptions {
        seed: 7,
        rank,
        world,
        window_row_groups: 2,
        shuffle: true,
    };
    let mut seen = Vec::new();
    let mut first_epoch_rank0 = Vec::new();
    for rank in 0..world {
        let count = corpus.sequences_for_rank(rank, world);
        let mut s = corpus.stream(options(rank), Cursor::default()).unwrap();
        for _ in 0..count {
            let seq = s.next_sequence().unwrap();
            assert_eq!(seq.input_ids.len(), 8);
            if rank == 0 {
                first_epoch_rank0.push(seq.input_ids.clone());
            }
            seen.push(seq.input_ids);
        }
        assert_eq!(s.cursor().epoch, 0, "rank {rank} left the epoch early");
    }
    assert_ne!(seen, reference, "the stream is shuffled");
    seen.sort();
    reference.sort();
    assert_eq!(
        seen, reference,
        "each sequence exactly once per epoch across ranks"
    );

    // Resume: a stream restarted from a saved cursor continues identically, across the
    // epoch boundary too.
    let count = corpus.sequences_for_rank(0, world);
    let mut s = corpus.stream(options(0), Cursor::default()).unwrap();
    for _ in 0..count - 10 {
        s.next_sequence().unwrap();
    }
    let cursor = s.cursor();
    let saved = serde_json::to_string(&cursor).unwrap();
    let continued: Vec<Vec<u32>> = (0..40)
        .map(|_| s.next_sequence().unwrap().input_ids)
        .collect();
    let mut resumed = corpus
        .stream(options(0), serde_json::from_str(&saved).unwrap())
        .unwrap();
    let again: Vec<Vec<u32>> = (0..40)
        .map(|_| resumed.next_sequence().unwrap().input_ids)
        .collect();
    assert_eq!(continued, again);
    assert_eq!(resumed.cursor().epoch, 1);
    // Epoch 1 is a different order of the same sequences.
    let mut s = corpus
        .stream(
            options(0),
            Cursor {
                epoch: 1,
                consumed: 0,
            },
        )
        .unwrap();
    let epoch1: Vec<Vec<u32>> = (0..count)
        .map(|_| s.next_sequence().unwrap().input_ids)
        .collect();
    assert_ne!(epoch1, first_epoch_rank0);

    // The validation split is separate and disjoint by document.
    let valid = TokenCorpus::open(&dir, Split::Valid).unwrap();
    assert!(valid.sequences() > 0);
    let doc_split = |split| -> BTreeMap<String, ()> {
        let c = TokenCorpus::open(&dir, split).unwrap();
        let mut s = c.stream(plain, Cursor::default()).unwrap();
        (0..c.sequences())
            .flat_map(|_| s.next_sequence().unwrap().doc_ids)
            .map(|d| (d, ()))
            .collect()
    };
    let (train_docs, valid_docs) = (doc_split(Split::Train), doc_split(Split::Valid));
    assert!(train_docs.keys().all(|d| !valid_docs.contains_key(d)));
}

#[test]
fn a_broken_shard_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = small_corpus(tmp.path());
    let shard = dir.join("tokens-00001.parquet");
    let bytes = std::fs::read(&shard).unwrap();
    write(&shard, &bytes[..bytes.len() / 2]);
    let err = TokenCorpus::open(&dir, Split::Train)
        .err()
        .expect("a truncated shard must not open");
    assert!(err.to_string().contains("tokens-00001.parquet"), "{err}");
}

#[test]
fn paper_windows_take_one_window_per_paper_per_epoch_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = small_corpus(tmp.path());
    let corpus = TokenCorpus::open(&dir, Split::Train).unwrap();
    let manifest = corpus.manifest().clone();
    // The training token stream in file order, and each paper's span in it.
    let plain = StreamOptions {
        shuffle: false,
        ..StreamOptions::default()
    };
    let mut s = corpus.stream(plain, Cursor::default()).unwrap();
    let stream: Vec<u32> = (0..corpus.sequences())
        .flat_map(|_| s.next_sequence().unwrap().input_ids)
        .collect();
    let spans = pmc_corpus::shards::read_document_index(
        &dir.join(manifest.token_documents.as_ref().unwrap()),
    )
    .unwrap();
    assert_eq!(spans[0].start, 0);
    assert!(
        spans
            .windows(2)
            .all(|w| w[1].start == w[0].start + u64::from(w[0].tokens)),
        "spans tile the stream"
    );

    // Unshuffled, one rank: window i lies inside paper i.
    let mut w = corpus.paper_windows(plain, Cursor::default()).unwrap();
    let papers = w.papers();
    assert!(papers > 100 && papers <= spans.len());
    for span in spans.iter().take(papers) {
        let window = w.next_window().unwrap();
        assert_eq!(window.len(), 8);
        let last_start = span.start + u64::from(span.tokens).saturating_sub(8);
        let found =
            (span.start..=last_start).any(|p| stream[p as usize..p as usize + 8] == window[..]);
        assert!(found, "a window outside its paper {span:?}");
    }
    assert_eq!(
        w.cursor(),
        Cursor {
            epoch: 0,
            consumed: papers as u64
        }
    );

    // Shuffled over two ranks: the same windows as one rank, split between them.
    let options = |rank, world| StreamOptions {
        seed: 3,
        rank,
        world,
        window_row_groups: 2,
        shuffle: true,
    };
    let epoch = |rank, world| -> Vec<Vec<u32>> {
        let mut w = corpus
            .paper_windows(options(rank, world), Cursor::default())
            .unwrap();
        let n = TokenCorpus::papers_for_rank(&w, rank, world);
        (0..n).map(|_| w.next_window().unwrap()).collect()
    };
    let mut one = epoch(0, 1);
    let mut two: Vec<Vec<u32>> = epoch(0, 2).into_iter().chain(epoch(1, 2)).collect();
    assert_eq!(two.len(), papers);
    one.sort();
    two.sort();
    assert_eq!(one, two, "ranks partition the epoch's windows");

    // Resume from a saved cursor, across the epoch boundary.
    let mut w = corpus
        .paper_windows(options(1, 2), Cursor::default())
        .unwrap();
    for _ in 0..TokenCorpus::papers_for_rank(&w, 1, 2) - 5 {
        w.next_window().unwrap();
    }
    let cursor = w.cursor();
    let next: Vec<Vec<u32>> = (0..12).map(|_| w.next_window().unwrap()).collect();
    let mut resumed = corpus.paper_windows(options(1, 2), cursor).unwrap();
    let again: Vec<Vec<u32>> = (0..12).map(|_| resumed.next_window().unwrap()).collect();
    assert_eq!(next, again);
    assert_eq!(resumed.cursor().epoch, 1);
}

#[test]
fn a_cached_corpus_is_prepared_once_and_remade_when_its_input_changes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("papers");
    std::fs::create_dir(&input).unwrap();
    for i in 0..6 {
        let body: Vec<String> = (0..4).map(|k| prose(i * 10 + k, 60)).collect();
        write(
            &input.join(format!("p{i}.xml")),
            jats(100 + i as u32, "A paper", &body).as_bytes(),
        );
    }
    let cache = dir.path().join("cache");
    let cfg = config(vec![input.clone()], PathBuf::from("ignored"));
    let mut calls = 0;
    let (first, manifest) = pmc_corpus::prepare_cached(&cfg, &cache, |_| calls += 1).unwrap();
    assert!(calls > 0 && manifest.documents.kept == 6);
    assert_eq!(manifest.config.out, first);
    let mut again = 0;
    let (second, _) = pmc_corpus::prepare_cached(&cfg, &cache, |_| again += 1).unwrap();
    assert_eq!((second.as_path(), again), (first.as_path(), 0), "reused");
    // Only complete corpora are in the cache: no scratch directory is left.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    let body: Vec<String> = (0..4).map(|k| prose(999 + k, 60)).collect();
    write(
        &input.join("p6.xml"),
        jats(106, "Another", &body).as_bytes(),
    );
    let (third, manifest) = pmc_corpus::prepare_cached(&cfg, &cache, |_| {}).unwrap();
    assert_ne!(third, first);
    assert_eq!(manifest.documents.kept, 7);
}

#[test]
fn papers_are_told_from_text_files_and_prepared_corpora() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let papers = |names: &[&str]| {
        pmc_corpus::are_papers(&names.iter().map(PathBuf::from).collect::<Vec<_>>())
    };
    assert!(papers(&["a.xml", "b.nxml", "bundle.tar.gz", "s2orc.json"]));
    assert!(!papers(&["train.txt"]));
    assert!(!papers(&["docs.jsonl"]));
    assert!(!pmc_corpus::are_papers(&[corpus]));
    assert!(pmc_corpus::are_papers(&[dir.path().to_path_buf()]));
}
