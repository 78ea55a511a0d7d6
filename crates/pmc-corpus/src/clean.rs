//! Cleaning: a [`Paper`] rendered to the text a model will see, and the per-document filters.
//!
//! Every step is an option; [`Preset`] bundles the choices of PMC-LLaMA and Meditron.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::paper::{Block, License, Paper, Paragraph, Span};

/// What happens to in-text citations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Citations {
    /// Each citation group (`[1, 2]`, `(Smith 2003; Lee 2004)`) becomes this marker.
    Marker(String),
    /// Citation groups are removed together with their brackets.
    Remove,
    /// Citations stay as printed in the paper.
    Keep,
}

/// The cleaning choices. Build one from a [`Preset`] and adjust fields as needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanOptions {
    /// Keep the title as the first line.
    pub title: bool,
    /// Keep the abstract.
    pub abstract_text: bool,
    /// Write the title and section headings as markdown `#`/`##`/`###` lines (else the
    /// headings are dropped and the title is a plain first line).
    pub headings: bool,
    /// Keep figure and table captions.
    pub captions: bool,
    pub citations: Citations,
    /// Replacement for formulas; `None` removes them.
    pub formula_marker: Option<String>,
    /// Unicode NFKC normalisation (ligatures, full-width forms, compatibility characters).
    pub nfkc: bool,
    /// Documents with fewer characters of cleaned text are dropped (`too-short`).
    pub min_chars: usize,
    /// Documents with more characters are dropped (`too-long`); 0 = no limit.
    pub max_chars: usize,
    /// Papers without body paragraphs (abstract-only records) are dropped (`no-body`).
    pub require_body: bool,
    /// Keep only these licences (`license`); empty = any licence.
    pub licenses: Vec<License>,
    /// Drop exact duplicates: same PMCID, or same text after case and whitespace folding.
    pub exact_dedup: bool,
    /// Drop near duplicates whose MinHash Jaccard estimate on word 5-grams reaches this
    /// threshold (0.8 in the issue); `None` disables near-duplicate removal.
    pub near_dup_threshold: Option<f64>,
}

/// Named bundles of cleaning choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// PMC-LLaMA: title, abstract and body of each paper, reference lists, tables and figures
    /// dropped, citations removed, section headings as plain markdown lines.
    PmcLlama,
    /// Meditron's PubMed guidelines: markdown headings, citations as `[BIB_REF]`, formulas
    /// as `[FORMULA]`, no captions, short papers filtered.
    Meditron,
    /// Minimal: whitespace and NFKC only, citations and captions kept, no filters but empty.
    Plain,
}

impl Preset {
    pub const NAMES: &'static [&'static str] = &["pmc-llama", "meditron", "plain"];

    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "pmc-llama" => Some(Preset::PmcLlama),
            "meditron" => Some(Preset::Meditron),
            "plain" => Some(Preset::Plain),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::PmcLlama => "pmc-llama",
            Preset::Meditron => "meditron",
            Preset::Plain => "plain",
        }
    }

    pub fn options(self) -> CleanOptions {
        let base = CleanOptions {
            title: true,
            abstract_text: true,
            headings: true,
            captions: false,
            citations: Citations::Remove,
            formula_marker: Some("[FORMULA]".into()),
            nfkc: true,
            min_chars: 500,
            max_chars: 0,
            require_body: true,
            licenses: Vec::new(),
            exact_dedup: true,
            near_dup_threshold: Some(0.8),
        };
        match self {
            Preset::PmcLlama => base,
            Preset::Meditron => CleanOptions {
                citations: Citations::Marker("[BIB_REF]".into()),
                min_chars: 1000,
                ..base
            },
            Preset::Plain => CleanOptions {
                captions: true,
                citations: Citations::Keep,
                formula_marker: None,
                min_chars: 1,
                require_body: false,
                exact_dedup: false,
                near_dup_threshold: None,
                ..base
            },
        }
    }
}

/// Why a document did not reach the output. Counted by [`DropReason::name`] in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The file could not be read or parsed (detail: the error).
    Unreadable(String),
    NotUtf8,
    MalformedXml,
    Truncated,
    /// No text at all after cleaning.
    Empty,
    NoBody,
    TooShort,
    TooLong,
    License(License),
    DuplicateId,
    ExactDuplicate,
    NearDuplicate,
    /// The input file is of a kind no reader accepts.
    UnsupportedFile,
}

impl DropReason {
    pub fn name(&self) -> &'static str {
        match self {
            DropReason::Unreadable(_) => "unreadable",
            DropReason::NotUtf8 => "not-utf8",
            DropReason::MalformedXml => "malformed-xml",
            DropReason::Truncated => "truncated",
            DropReason::Empty => "empty",
            DropReason::NoBody => "no-body",
            DropReason::TooShort => "too-short",
            DropReason::TooLong => "too-long",
            DropReason::License(_) => "license",
            DropReason::DuplicateId => "duplicate-id",
            DropReason::ExactDuplicate => "exact-duplicate",
            DropReason::NearDuplicate => "near-duplicate",
            DropReason::UnsupportedFile => "unsupported-file",
        }
    }
}

/// Render a paper to clean text and apply the per-document filters (duplicates are decided
/// later, in input order, by [`crate::dedup::Deduplicator`]).
pub fn clean_paper(paper: &Paper, options: &CleanOptions) -> Result<String, DropReason> {
    if !options.licenses.is_empty() && !options.licenses.contains(&paper.meta.license) {
        return Err(DropReason::License(paper.meta.license));
    }
    if options.require_body && paper.body_paragraphs() == 0 {
        return Err(DropReason::NoBody);
    }
    let text = render(paper, options);
    let text = if options.nfkc {
        text.nfkc().collect::<String>()
    } else {
        text
    };
    let text = normalise_whitespace(&text);
    let chars = text.chars().count();
    if chars == 0 {
        return Err(DropReason::Empty);
    }
    if chars < options.min_chars {
        return Err(DropReason::TooShort);
    }
    if options.max_chars > 0 && chars > options.max_chars {
        return Err(DropReason::TooLong);
    }
    Ok(text)
}

/// The document text before normalisation: blocks separated by blank lines.
fn render(paper: &Paper, options: &CleanOptions) -> String {
    let mut blocks: Vec<String> = Vec::new();
    if options.title
        && let Some(title) = &paper.meta.title
    {
        blocks.push(if options.headings {
            format!("# {title}")
        } else {
            title.clone()
        });
    }
    if options.abstract_text && !paper.abstract_paragraphs.is_empty() {
        if options.headings {
            blocks.push("## Abstract".into());
        }
        blocks.extend(
            paper
                .abstract_paragraphs
                .iter()
                .map(|p| render_paragraph(p, options)),
        );
    }
    for block in &paper.body {
        match block {
            Block::Heading { level, text } => {
                if options.headings {
                    let hashes = "#".repeat(usize::from(*level).min(5) + 1);
                    blocks.push(format!("{hashes} {text}"));
                }
            }
            Block::Paragraph(p) => blocks.push(render_paragraph(p, options)),
            Block::Caption(p) => {
                if options.captions {
                    blocks.push(render_paragraph(p, options));
                }
            }
        }
    }
    blocks.retain(|b| !b.trim().is_empty());
    blocks.join("\n\n")
}

/// Render one paragraph, treating runs of citations joined only by separators as one group.
pub fn render_paragraph(paragraph: &Paragraph, options: &CleanOptions) -> String {
    let spans = &paragraph.0;
    let mut out = String::new();
    let mut i = 0;
    while i < spans.len() {
        match &spans[i] {
            Span::Text(t) => out.push_str(t),
            Span::Formula => {
                if let Some(marker) = &options.formula_marker {
                    out.push(' ');
                    out.push_str(marker);
                    out.push(' ');
                }
            }
            Span::Citation(shown) => {
                if let Citations::Keep = options.citations {
                    out.push_str(shown);
                    i += 1;
                    continue;
                }
                // Extend the group over separators and further citations.
                let mut end = i + 1;
                let mut j = i + 1;
                while j < spans.len() {
                    match &spans[j] {
                        Span::Citation(_) => {
                            end = j + 1;
                            j += 1;
                        }
                        Span::Text(t) if is_citation_separator(t) => j += 1,
                        _ => break,
                    }
                }
                // Brackets around the whole group go with it: "(Smith 2003; Lee 2004)".
                let after = match spans.get(end) {
                    Some(Span::Text(t)) => t.as_str(),
                    _ => "",
                };
                let before_trimmed = out.trim_end();
                let opens = before_trimmed.ends_with(['(', '[']);
                let closes = after.trim_start().starts_with([')', ']']);
                let mut skip_after = 0;
                // A narrative citation ("as Blackburn and Rowley (2004) argue") is part of
                // the sentence: its words stay, only bracketed or numeric ones go.
                if end == i + 1 && !(opens && closes) && is_narrative(shown) {
                    out.push_str(shown);
                    i += 1;
                    continue;
                }
                if opens && closes {
                    let keep = before_trimmed.len() - 1;
                    out.truncate(keep);
                    let trimmed = after.trim_start();
                    skip_after = after.len() - trimmed.len() + 1;
                }
                match &options.citations {
                    Citations::Marker(marker) => {
                        if !out.is_empty() && !out.ends_with(char::is_whitespace) {
                            out.push(' ');
                        }
                        out.push_str(marker);
                    }
                    Citations::Remove => {
                        // "ciliate [1]—an" → "ciliate—an", not "ciliate —an".
                        if after[skip_after..].starts_with(|c: char| ".,;:!?)]—–".contains(c)) {
                            out.truncate(out.trim_end().len());
                        }
                    }
                    Citations::Keep => unreachable!("handled above"),
                }
                if let Some(Span::Text(t)) = spans.get(end) {
                    out.push_str(&t[skip_after..]);
                    i = end + 1;
                } else {
                    i = end;
                }
                continue;
            }
        }
        i += 1;
    }
    out
}

fn is_narrative(shown: &str) -> bool {
    shown
        .split_whitespace()
        .filter(|w| w.chars().filter(|c| c.is_alphabetic()).count() >= 3)
        .count()
        >= 2
}

fn is_citation_separator(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_whitespace() || ",;–—-".contains(c))
}

/// Collapse spaces inside lines, fix spacing before punctuation left by removed spans,
/// trim lines and keep at most one blank line between blocks.
pub fn normalise_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for block in text.split("\n\n") {
        let mut line = String::with_capacity(block.len());
        for word in block.split_whitespace() {
            let glue = word.starts_with(['.', ',', ';', ':', ')', ']', '?', '!']);
            if !line.is_empty() && !glue {
                line.push(' ');
            }
            line.push_str(word);
        }
        // Empty brackets left where a removed citation stood.
        let line = line
            .replace(" ()", "")
            .replace(" []", "")
            .replace("()", "")
            .replace("[]", "");
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn para(spans: Vec<Span>) -> Paragraph {
        Paragraph(spans)
    }

    fn text(s: &str) -> Span {
        Span::Text(s.into())
    }

    fn cite(s: &str) -> Span {
        Span::Citation(s.into())
    }

    #[test]
    fn citation_groups_become_one_marker_with_their_brackets() {
        let p = para(vec![
            text("Known before ["),
            cite("1"),
            text(", "),
            cite("2"),
            text("]. Next"),
        ]);
        let mut options = Preset::Meditron.options();
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "Known before [BIB_REF]. Next"
        );
        options.citations = Citations::Remove;
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "Known before. Next"
        );
        options.citations = Citations::Keep;
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "Known before [1, 2]. Next"
        );
    }

    #[test]
    fn author_year_citations_in_parentheses() {
        let p = para(vec![
            text("as shown ("),
            cite("Smith 2003"),
            text("; "),
            cite("Lee 2004"),
            text(")"),
        ]);
        let options = Preset::Meditron.options();
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "as shown [BIB_REF]"
        );
    }

    #[test]
    fn narrative_citations_keep_their_words() {
        let p = para(vec![
            text("Elizabeth "),
            cite("Blackburn and Janet Rowley (2004)"),
            text(", two"),
        ]);
        let options = Preset::Meditron.options();
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "Elizabeth Blackburn and Janet Rowley (2004), two"
        );
        let p = para(vec![text("(see "), cite("Smith et al. 2003"), text(")")]);
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "(see [BIB_REF])"
        );
    }

    #[test]
    fn superscript_citation_without_brackets() {
        let p = para(vec![text("is common"), cite("3"), text(". It")]);
        let options = Preset::PmcLlama.options();
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "is common. It"
        );
    }

    #[test]
    fn formulas_are_marked() {
        let p = para(vec![text("where"), Span::Formula, text("holds")]);
        let options = Preset::PmcLlama.options();
        assert_eq!(
            normalise_whitespace(&render_paragraph(&p, &options)),
            "where [FORMULA] holds"
        );
    }

    #[test]
    fn license_filter_and_length_filter_name_their_reason() {
        let mut paper = Paper::default();
        paper.meta.license = License::CcByNc;
        paper.body.push(Block::Paragraph(para(vec![text("short")])));
        let mut options = Preset::PmcLlama.options();
        options.licenses = vec![License::CcBy, License::Cc0];
        assert_eq!(
            clean_paper(&paper, &options),
            Err(DropReason::License(License::CcByNc))
        );
        options.licenses.clear();
        assert_eq!(clean_paper(&paper, &options), Err(DropReason::TooShort));
        options.min_chars = 1;
        assert_eq!(clean_paper(&paper, &options).unwrap(), "short");
    }

    #[test]
    fn nfkc_folds_ligatures() {
        let mut paper = Paper::default();
        paper.body.push(Block::Paragraph(para(vec![text(
            "e\u{fb03}cacy  of\u{a0}drug",
        )])));
        let mut options = Preset::Plain.options();
        assert_eq!(clean_paper(&paper, &options).unwrap(), "efficacy of drug");
        options.nfkc = false;
        assert_eq!(
            clean_paper(&paper, &options).unwrap(),
            "e\u{fb03}cacy of drug"
        );
    }
}
