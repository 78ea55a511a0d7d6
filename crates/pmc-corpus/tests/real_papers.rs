//! The JATS reader and cleaner on the real papers in `../shared/data/pmc-jats` (153 papers
//! from PLOS and PMC, varied publishers' tagging). Skips with a message when absent.

use std::path::PathBuf;

use pmc_corpus::input::list_files;
use pmc_corpus::jats::parse_jats;
use pmc_corpus::{Preset, clean_paper};

fn shared_jats() -> Option<PathBuf> {
    let root = std::env::var_os("PMC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = root.join("data/pmc-jats");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent (set PMC_SHARED)", dir.display());
        None
    }
}

/// Titles of the cited works, read from the raw XML of the reference list with plain string
/// search (independent of the parser under test).
fn reference_titles(xml: &str) -> Vec<String> {
    let Some(start) = xml.find("<ref-list") else {
        return Vec::new();
    };
    let end = xml[start..]
        .find("</ref-list>")
        .map_or(xml.len(), |e| start + e);
    let refs = &xml[start..end];
    let mut titles = Vec::new();
    for piece in refs.split("<article-title").skip(1) {
        let Some(open_end) = piece.find('>') else {
            continue;
        };
        let Some(close) = piece.find("</article-title>") else {
            continue;
        };
        if open_end >= close {
            continue;
        }
        // Strip inline tags from the title.
        let mut title = String::new();
        let mut in_tag = false;
        for c in piece[open_end + 1..close].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => title.push(c),
                _ => {}
            }
        }
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        if title.len() >= 50 && !title.contains('&') {
            titles.push(title);
        }
    }
    titles
}

#[test]
fn every_real_paper_parses_with_title_body_and_no_reference_list() {
    let Some(dir) = shared_jats() else { return };
    // The papers only: `craft/MANIFEST.json` (the licence record of that folder) lies
    // beside them.
    let mut files = list_files(&[dir]).unwrap();
    files.retain(|f| f.extension().is_some_and(|e| e == "xml" || e == "nxml"));
    assert!(
        files.len() >= 150,
        "expected the 153 shared papers (and CRAFT's 71), found {}",
        files.len()
    );
    // Meditron's markers, without its length filter (a few real papers are short notes).
    let mut options = Preset::Meditron.options();
    options.min_chars = 1;
    let mut checked_titles = 0;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let source = file.display().to_string();
        let paper = parse_jats(&bytes, &source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let title = paper
            .meta
            .title
            .as_deref()
            .unwrap_or_else(|| panic!("{source}: no title"));
        assert!(title.len() > 5, "{source}: title {title:?}");
        assert!(paper.body_paragraphs() > 0, "{source}: no body paragraphs");
        let text =
            clean_paper(&paper, &options).unwrap_or_else(|r| panic!("{source}: dropped ({r:?})"));
        assert!(
            text.starts_with("# "),
            "{source}: text does not open with the title"
        );
        assert!(
            !text.contains('<') || !text.contains("</"),
            "{source}: markup leaked"
        );
        let xml = String::from_utf8_lossy(&bytes);
        for reference in reference_titles(&xml) {
            // A reference title in the output is a leak unless the paper's own prose (outside
            // the reference list) contains it too.
            if xml.matches(&reference).count() == 1 {
                assert!(
                    !text.contains(&reference),
                    "{source}: reference-list text leaked: {reference:?}"
                );
            }
            checked_titles += 1;
        }
        assert!(
            !text.contains("[BIB_REF][BIB_REF]"),
            "{source}: citation group not merged"
        );
    }
    assert!(
        checked_titles > 1000,
        "only {checked_titles} reference titles checked"
    );
}

#[test]
fn metadata_of_a_pmc_paper() {
    let Some(dir) = shared_jats() else { return };
    let path = dir.join("pmc/PMC2386533.xml");
    let paper = parse_jats(&std::fs::read(&path).unwrap(), "PMC2386533.xml").unwrap();
    assert_eq!(paper.id, "PMC2386533");
    assert_eq!(paper.meta.pmid.as_deref(), Some("17619923"));
    assert_eq!(paper.meta.doi.as_deref(), Some("10.1007/s00261-007-9276-3"));
    assert_eq!(paper.meta.journal.as_deref(), Some("Abdominal Imaging"));
    assert_eq!(paper.meta.year, Some(2007));
    assert_eq!(
        paper.meta.title.as_deref(),
        Some(
            "Detection of inflammatory bowel disease: diagnostic performance of cross-sectional imaging modalities"
        )
    );
}
