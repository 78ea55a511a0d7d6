//! The structured paper every reader produces and the cleaner renders to text.
//!
//! Readers keep structure (sections, citations, formulas, captions) rather than flattening
//! early, so that each cleaning choice of [`crate::clean::CleanOptions`] stays a choice.

use serde::{Deserialize, Serialize};

/// Bibliographic facts kept with every document (and written beside its text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// PubMed Central id with its `PMC` prefix, e.g. `PMC2386533`.
    pub pmcid: Option<String>,
    /// PubMed id.
    pub pmid: Option<String>,
    pub doi: Option<String>,
    pub title: Option<String>,
    pub journal: Option<String>,
    pub year: Option<u16>,
    /// Normalised licence, see [`License`].
    pub license: License,
}

/// The licence of a paper, normalised from JATS `<license>` links, types and text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum License {
    #[serde(rename = "cc0")]
    Cc0,
    #[serde(rename = "cc-by")]
    CcBy,
    #[serde(rename = "cc-by-sa")]
    CcBySa,
    #[serde(rename = "cc-by-nd")]
    CcByNd,
    #[serde(rename = "cc-by-nc")]
    CcByNc,
    #[serde(rename = "cc-by-nc-sa")]
    CcByNcSa,
    #[serde(rename = "cc-by-nc-nd")]
    CcByNcNd,
    #[serde(rename = "public-domain")]
    PublicDomain,
    /// A licence statement that is none of the above (publisher-specific terms).
    #[serde(rename = "other")]
    Other,
    /// No licence information in the source.
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
}

impl License {
    /// Every licence name accepted by [`License::parse`], for error messages.
    pub const NAMES: &'static [&'static str] = &[
        "cc0",
        "cc-by",
        "cc-by-sa",
        "cc-by-nd",
        "cc-by-nc",
        "cc-by-nc-sa",
        "cc-by-nc-nd",
        "public-domain",
        "other",
        "unknown",
    ];

    /// The short name used in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            License::Cc0 => "cc0",
            License::CcBy => "cc-by",
            License::CcBySa => "cc-by-sa",
            License::CcByNd => "cc-by-nd",
            License::CcByNc => "cc-by-nc",
            License::CcByNcSa => "cc-by-nc-sa",
            License::CcByNcNd => "cc-by-nc-nd",
            License::PublicDomain => "public-domain",
            License::Other => "other",
            License::Unknown => "unknown",
        }
    }

    /// Parse a short name as printed by [`License::name`].
    pub fn parse(name: &str) -> Option<License> {
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name.trim()))
            .map(|i| Self::ALL[i])
    }

    const ALL: [License; 10] = [
        License::Cc0,
        License::CcBy,
        License::CcBySa,
        License::CcByNd,
        License::CcByNc,
        License::CcByNcSa,
        License::CcByNcNd,
        License::PublicDomain,
        License::Other,
        License::Unknown,
    ];

    /// Recognise a licence from a URL (`creativecommons.org/licenses/by-nc/3.0`), a JATS
    /// `license-type` (`cc-by`) or the licence paragraph's words. Returns `None` when the
    /// evidence names no licence.
    pub fn recognise(evidence: &str) -> Option<License> {
        let s = evidence.to_ascii_lowercase();
        if s.contains("publicdomain/zero") || s.contains("cc0") || s.contains("cc-zero") {
            return Some(License::Cc0);
        }
        if s.contains("publicdomain") || s.contains("public domain") || s == "public-domain" {
            return Some(License::PublicDomain);
        }
        // URLs and license-type codes: by, by-nc, by-nc-sa, ...
        for (code, license) in [
            ("by-nc-nd", License::CcByNcNd),
            ("by-nc-sa", License::CcByNcSa),
            ("by-nc", License::CcByNc),
            ("by-nd", License::CcByNd),
            ("by-sa", License::CcBySa),
        ] {
            if s.contains(&format!("licenses/{code}")) || s.contains(&format!("cc-{code}")) {
                return Some(license);
            }
        }
        if s.contains("licenses/by/") || s.contains("licenses/by") || s.contains("cc-by") {
            return Some(License::CcBy);
        }
        // Licence paragraphs: "Creative Commons Attribution-NonCommercial License".
        if s.contains("creative commons") {
            let nc = s.contains("noncommercial") || s.contains("non-commercial");
            let nd = s.contains("noderivs") || s.contains("no derivative");
            let sa = s.contains("sharealike") || s.contains("share alike");
            return Some(match (nc, nd, sa) {
                (true, true, _) => License::CcByNcNd,
                (true, false, true) => License::CcByNcSa,
                (true, false, false) => License::CcByNc,
                (false, true, _) => License::CcByNd,
                (false, false, true) => License::CcBySa,
                (false, false, false) => License::CcBy,
            });
        }
        None
    }
}

/// A piece of running text inside a paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    Text(String),
    /// An in-text citation of the reference list (JATS `<xref ref-type="bibr">`, S2ORC
    /// `cite_spans`), with the text it showed (`[12]`, `Smith et al., 2003`).
    Citation(String),
    /// A formula (MathML, TeX); its markup is not kept.
    Formula,
}

/// A paragraph: text, citations and formulas in reading order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph(pub Vec<Span>);

impl Paragraph {
    /// Append text, merging with a preceding text span.
    pub fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(Span::Text(t)) => t.push_str(text),
            _ => self.0.push(Span::Text(text.to_string())),
        }
    }

    /// The paragraph's text with citations as shown in the paper and formulas dropped;
    /// used for titles and headings.
    pub fn plain_text(&self) -> String {
        let mut out = String::new();
        for span in &self.0 {
            match span {
                Span::Text(t) | Span::Citation(t) => out.push_str(t),
                Span::Formula => {}
            }
        }
        out
    }

    /// True when the paragraph holds no visible text.
    pub fn is_blank(&self) -> bool {
        self.0.iter().all(|s| match s {
            Span::Text(t) => t.trim().is_empty(),
            Span::Citation(_) | Span::Formula => false,
        })
    }
}

/// One block of a paper's body in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A section heading; `level` 1 is a top-level section.
    Heading {
        level: u8,
        text: String,
    },
    Paragraph(Paragraph),
    /// A figure or table caption (dropped unless captions are kept).
    Caption(Paragraph),
}

/// A paper as a reader produced it, before cleaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paper {
    /// A stable id: the PMCID when known, else the source's own id, else the file name.
    pub id: String,
    /// Where the paper came from: a file path, `archive.tar.gz:member`, or `file.jsonl:line`.
    pub source: String,
    pub meta: Metadata,
    pub abstract_paragraphs: Vec<Paragraph>,
    pub body: Vec<Block>,
}

impl Paper {
    /// Number of body paragraphs (captions and headings not counted).
    pub fn body_paragraphs(&self) -> usize {
        self.body
            .iter()
            .filter(|b| matches!(b, Block::Paragraph(_)))
            .count()
    }
}
