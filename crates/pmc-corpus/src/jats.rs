//! JATS XML (the format PubMed Central ships its open-access papers in) → [`Paper`].
//!
//! A single streaming pass over the XML events with a small state machine: the front matter
//! yields metadata and the abstract, the body yields headings, paragraphs, citations,
//! formulas and captions; the back matter (reference list, acknowledgements, footnotes),
//! sub-articles (PLOS decision letters), tables and figure graphics are skipped unread.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::paper::{Block, License, Metadata, Paper, Paragraph, Span};

/// Why a JATS file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JatsError {
    #[error("not UTF-8 text (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("malformed XML at byte {position}: {message}")]
    Malformed { position: u64, message: String },
    #[error("truncated: <{0}> is never closed")]
    Truncated(String),
    #[error("no <article> element: not a JATS paper")]
    NotJats,
}

/// Elements skipped with everything inside them, wherever they occur.
const ALWAYS_SKIPPED: &[&str] = &[
    "back",
    "sub-article",
    "response",
    "ref-list",
    "fn-group",
    "fn",
    "supplementary-material",
    "graphic",
    "inline-graphic",
    "media",
    "label",
    "object-id",
    "table",
    "table-wrap-foot",
    "permissions",
    "attrib",
    "glossary",
    "ack",
    "sec-meta",
    "processing-meta",
];

/// Front-matter elements whose content is never wanted (authors, affiliations, history...).
const FRONT_SKIPPED: &[&str] = &[
    "contrib-group",
    "author-notes",
    "aff",
    "history",
    "funding-group",
    "kwd-group",
    "custom-meta-group",
    "custom-meta-wrap",
    "self-uri",
    "article-categories",
    "counts",
    "related-article",
    "trans-abstract",
    "trans-title-group",
    "notes",
];

/// Elements that end one block of text and start another.
const BLOCK_LEVEL: &[&str] = &[
    "p",
    "sec",
    "title",
    "list",
    "list-item",
    "caption",
    "fig",
    "fig-group",
    "table-wrap",
    "table-wrap-group",
    "disp-quote",
    "boxed-text",
    "def-list",
    "def-item",
    "term",
    "def",
    "abstract",
    "body",
    "floats-group",
    "statement",
    "speech",
    "verse-group",
    "verse-line",
];

/// Formula markup; its content is replaced by one [`Span::Formula`].
const FORMULAS: &[&str] = &[
    "inline-formula",
    "disp-formula",
    "math",
    "tex-math",
    "chem-struct",
];

/// Section types that hold no prose (links to supplementary files, figure dumps).
const SKIPPED_SECTION_TYPES: &[&str] = &["supplementary-material", "display-objects"];

/// Abstract types that are not the paper's abstract (graphical abstracts, tables of contents).
const SKIPPED_ABSTRACT_TYPES: &[&str] = &["graphical", "teaser", "toc", "short", "web-summary"];

/// Cross-reference types whose text is a footnote or affiliation mark, not prose.
const MARK_XREF_TYPES: &[&str] = &["fn", "aff", "corresp", "author-notes", "table-fn"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Outside,
    Front,
    Abstract,
    Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Capture {
    ArticleId(String),
    Title,
    Journal,
    Year,
    LicenseText,
    Heading(u8),
    AbstractHeading,
}

struct Frame {
    name: String,
    region: Region,
}

/// The state machine's working state.
struct Parser {
    paper: Paper,
    stack: Vec<Frame>,
    /// Depth inside a skipped subtree (0 = not skipping).
    skip: usize,
    open_paragraph: Option<Paragraph>,
    caption: Option<Paragraph>,
    capture: Option<(Capture, String)>,
    citation: Option<String>,
    license_evidence: Vec<String>,
    section_depth: u8,
    saw_article: bool,
}

/// Parse one JATS document held in memory. `source` names it in the returned paper.
pub fn parse_jats(bytes: &[u8], source: &str) -> Result<Paper, JatsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JatsError::NotUtf8(e.valid_up_to()))?;
    let mut reader = Reader::from_str(text);
    let mut parser = Parser::new(source);
    loop {
        let event = reader.read_event().map_err(|e| JatsError::Malformed {
            position: reader.error_position(),
            message: e.to_string(),
        })?;
        match event {
            Event::Start(start) => parser.start(&start, false),
            Event::Empty(start) => parser.start(&start, true),
            Event::End(end) => {
                let name = local(end.local_name().as_ref());
                parser.end(&name);
            }
            Event::Text(t) => parser.text(&t.xml10_content()),
            Event::CData(c) => parser.text(&c.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => predefined_entity(&r.xml10_content()).map(str::to_string),
                    Err(_) => None,
                };
                if let Some(s) = resolved {
                    parser.text(&s);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if let Some(frame) = parser.stack.last() {
        return Err(JatsError::Truncated(frame.name.clone()));
    }
    if !parser.saw_article {
        return Err(JatsError::NotJats);
    }
    Ok(parser.finish())
}

fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        "nbsp" => "\u{a0}",
        _ => return None,
    })
}

fn local(name: &str) -> String {
    name.to_string()
}

fn attribute(start: &BytesStart, key: &str) -> Option<String> {
    start.attributes().flatten().find_map(|a| {
        let k: &str = a.key.as_ref();
        let local_key = k.rsplit(':').next().unwrap_or(k);
        (k == key || local_key == key)
            .then(|| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map(|v| v.into_owned())
                    .ok()
            })
            .flatten()
    })
}

impl Parser {
    fn new(source: &str) -> Self {
        Parser {
            paper: Paper {
                source: source.to_string(),
                ..Paper::default()
            },
            stack: Vec::new(),
            skip: 0,
            open_paragraph: None,
            caption: None,
            capture: None,
            citation: None,
            license_evidence: Vec::new(),
            section_depth: 0,
            saw_article: false,
        }
    }

    fn region(&self) -> Region {
        self.stack.last().map_or(Region::Outside, |f| f.region)
    }

    fn parent(&self) -> &str {
        self.stack.last().map_or("", |f| f.name.as_str())
    }

    fn start(&mut self, start: &BytesStart, empty: bool) {
        let name = local(start.local_name().as_ref());
        if self.skip > 0 {
            if !empty {
                self.skip += 1;
            }
            return;
        }
        if name == "break" {
            self.text(" ");
            return;
        }
        if name == "license" {
            for key in ["href", "license-type", "resource"] {
                if let Some(v) = attribute(start, key) {
                    self.license_evidence.push(v);
                }
            }
        }
        let region = self.enter_region(&name, start);
        let Some(region) = region else {
            // Skipped subtree (or a formula, recorded as a span).
            if FORMULAS.contains(&name.as_str()) {
                self.push_span(Span::Formula);
            }
            if !empty {
                self.skip = 1;
            }
            return;
        };
        if BLOCK_LEVEL.contains(&name.as_str()) && self.caption.is_none() {
            self.flush_paragraph();
        }
        self.begin_element(&name, start, region);
        if empty {
            self.end_element(&name);
        } else {
            self.stack.push(Frame { name, region });
        }
    }

    /// Decide the region an element opens, or `None` to skip it with its content.
    fn enter_region(&mut self, name: &str, start: &BytesStart) -> Option<Region> {
        let current = self.region();
        if ALWAYS_SKIPPED.contains(&name) && !(name == "permissions" && current == Region::Front) {
            return None;
        }
        if FORMULAS.contains(&name) {
            return None;
        }
        match name {
            "article" => {
                if self.saw_article {
                    return None; // a nested article is not this paper
                }
                self.saw_article = true;
                return Some(Region::Outside);
            }
            "front" => return Some(Region::Front),
            "body" => return Some(Region::Body),
            "floats-group" => return Some(Region::Body),
            _ => {}
        }
        match current {
            Region::Front => {
                if FRONT_SKIPPED.contains(&name) {
                    return None;
                }
                if name == "abstract" {
                    let kind = attribute(start, "abstract-type").unwrap_or_default();
                    if SKIPPED_ABSTRACT_TYPES.contains(&kind.to_ascii_lowercase().as_str()) {
                        return None;
                    }
                    return Some(Region::Abstract);
                }
                Some(Region::Front)
            }
            Region::Abstract | Region::Body => {
                let parent = self.parent();
                let in_float = matches!(parent, "fig" | "table-wrap");
                if in_float && name != "caption" {
                    return None;
                }
                // "Abstract" itself is a label, not content; structured-abstract section
                // titles ("Background", "Methods") are kept as short paragraphs.
                if current == Region::Abstract && name == "title" && parent != "sec" {
                    return None;
                }
                if name == "sec"
                    && attribute(start, "sec-type")
                        .is_some_and(|t| SKIPPED_SECTION_TYPES.contains(&t.as_str()))
                {
                    return None;
                }
                if name == "xref" {
                    let kind = attribute(start, "ref-type").unwrap_or_default();
                    if MARK_XREF_TYPES.contains(&kind.as_str()) {
                        return None;
                    }
                }
                Some(current)
            }
            Region::Outside => Some(Region::Outside),
        }
    }

    fn begin_element(&mut self, name: &str, start: &BytesStart, region: Region) {
        match (region, name) {
            (Region::Front, "article-id") => {
                let kind = attribute(start, "pub-id-type").unwrap_or_default();
                self.capture = Some((Capture::ArticleId(kind), String::new()));
            }
            (Region::Front, "article-title") if self.parent() == "title-group" => {
                self.capture = Some((Capture::Title, String::new()));
            }
            (Region::Front, "journal-title") if self.paper.meta.journal.is_none() => {
                self.capture = Some((Capture::Journal, String::new()));
            }
            (Region::Front, "year") if self.parent() == "pub-date" => {
                self.capture = Some((Capture::Year, String::new()));
            }
            (Region::Front, "license-p") | (Region::Front, "license_ref") => {
                self.capture = Some((Capture::LicenseText, String::new()));
            }
            (Region::Body, "sec") => self.section_depth = self.section_depth.saturating_add(1),
            (Region::Body, "title") if self.parent() == "sec" && self.caption.is_none() => {
                self.capture = Some((Capture::Heading(self.section_depth.max(1)), String::new()));
            }
            (Region::Abstract, "title") if self.caption.is_none() => {
                self.capture = Some((Capture::AbstractHeading, String::new()));
            }
            (Region::Abstract | Region::Body, "caption") => {
                self.caption = Some(Paragraph::default());
            }
            (Region::Abstract | Region::Body, "xref")
                if attribute(start, "ref-type").as_deref() == Some("bibr") =>
            {
                self.citation = Some(String::new());
            }
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        // Tolerate an end tag for an element we never pushed (only possible for skipped
        // elements, handled above); otherwise the XML reader has checked the nesting.
        if self.stack.last().is_some_and(|f| f.name == name) {
            self.end_element(name);
            self.stack.pop();
        }
    }

    fn end_element(&mut self, name: &str) {
        let region = self.region();
        match name {
            "xref" => {
                if let Some(text) = self.citation.take() {
                    self.push_span(Span::Citation(text.trim().to_string()));
                }
            }
            "caption" => {
                if let Some(caption) = self.caption.take()
                    && !caption.is_blank()
                {
                    self.paper.body.push(Block::Caption(caption));
                }
            }
            "sec" if region == Region::Body => {
                self.section_depth = self.section_depth.saturating_sub(1);
            }
            "license" => {}
            _ => {}
        }
        if let Some((kind, _)) = &self.capture
            && capture_ends_with(kind, name)
        {
            let (kind, text) = self.capture.take().expect("checked above");
            self.finish_capture(kind, collapse_whitespace(&text));
        }
        if BLOCK_LEVEL.contains(&name) {
            if self.caption.is_some() {
                self.push_caption_text(" ");
            } else {
                self.flush_paragraph();
            }
        }
    }

    fn finish_capture(&mut self, kind: Capture, text: String) {
        let meta = &mut self.paper.meta;
        match kind {
            Capture::ArticleId(kind) => match kind.as_str() {
                "pmc" | "pmcid" | "pmcid-ver" if meta.pmcid.is_none() => {
                    let id = text.trim_start_matches("PMC");
                    if !id.is_empty() {
                        meta.pmcid = Some(format!("PMC{}", id.split('.').next().unwrap_or(id)));
                    }
                }
                "pmid" if meta.pmid.is_none() => meta.pmid = Some(text),
                "doi" if meta.doi.is_none() => meta.doi = Some(text),
                _ => {}
            },
            Capture::Title if meta.title.is_none() && !text.is_empty() => meta.title = Some(text),
            Capture::Journal if !text.is_empty() => meta.journal = Some(text),
            Capture::Year => {
                if let Ok(year) = text.trim().parse::<u16>() {
                    meta.year = Some(meta.year.map_or(year, |y| y.min(year)));
                }
            }
            Capture::LicenseText => self.license_evidence.push(text),
            Capture::Heading(level) if !text.is_empty() => {
                self.paper.body.push(Block::Heading { level, text });
            }
            Capture::AbstractHeading if !text.is_empty() => {
                self.paper
                    .abstract_paragraphs
                    .push(Paragraph(vec![Span::Text(text)]));
            }
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        if self.skip > 0 || text.is_empty() {
            return;
        }
        if let Some(citation) = &mut self.citation {
            citation.push_str(text);
            return;
        }
        if let Some((_, buffer)) = &mut self.capture {
            buffer.push_str(text);
            return;
        }
        if self.caption.is_some() {
            self.push_caption_text(text);
            return;
        }
        match self.region() {
            Region::Abstract | Region::Body => {
                if let Some(paragraph) = &mut self.open_paragraph {
                    paragraph.push_text(text);
                } else if !text.trim().is_empty() {
                    // Text outside any <p> (older abstracts, list items without <p>).
                    let mut paragraph = Paragraph::default();
                    paragraph.push_text(text);
                    self.open_paragraph = Some(paragraph);
                }
            }
            Region::Front | Region::Outside => {}
        }
    }

    fn push_caption_text(&mut self, text: &str) {
        if let Some(caption) = &mut self.caption {
            caption.push_text(text);
        }
    }

    fn push_span(&mut self, span: Span) {
        if let Some(caption) = &mut self.caption {
            caption.0.push(span);
            return;
        }
        if !matches!(self.region(), Region::Abstract | Region::Body) {
            return;
        }
        self.open_paragraph
            .get_or_insert_with(Paragraph::default)
            .0
            .push(span);
    }

    fn flush_paragraph(&mut self) {
        if let Some(paragraph) = self.open_paragraph.take() {
            if paragraph.is_blank() {
                return;
            }
            match self.region() {
                Region::Abstract => self.paper.abstract_paragraphs.push(paragraph),
                _ => self.paper.body.push(Block::Paragraph(paragraph)),
            }
        }
    }

    fn finish(mut self) -> Paper {
        self.flush_paragraph();
        let meta: &mut Metadata = &mut self.paper.meta;
        meta.license = self
            .license_evidence
            .iter()
            .find_map(|e| License::recognise(e))
            .unwrap_or(
                if self.license_evidence.iter().any(|e| !e.trim().is_empty()) {
                    License::Other
                } else {
                    License::Unknown
                },
            );
        self.paper.id = meta
            .pmcid
            .clone()
            .or_else(|| meta.pmid.as_ref().map(|p| format!("PMID{p}")))
            .or_else(|| meta.doi.clone())
            .unwrap_or_else(|| file_stem(&self.paper.source));
        self.paper
    }
}

fn capture_ends_with(kind: &Capture, name: &str) -> bool {
    match kind {
        Capture::ArticleId(_) => name == "article-id",
        Capture::Title => name == "article-title",
        Capture::Journal => name == "journal-title",
        Capture::Year => name == "year",
        Capture::LicenseText => name == "license-p" || name == "license_ref",
        Capture::Heading(_) | Capture::AbstractHeading => name == "title",
    }
}

/// The last path component without its extensions (`a/b/PMC123.nxml` → `PMC123`).
pub(crate) fn file_stem(source: &str) -> String {
    let name = source.rsplit(['/', '\\', ':']).next().unwrap_or(source);
    name.split('.').next().unwrap_or(name).to_string()
}

/// Collapse runs of whitespace to one space and trim (XML indentation is not content).
pub(crate) fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}
