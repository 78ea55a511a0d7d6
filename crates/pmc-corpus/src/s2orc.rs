//! S2ORC and plain JSON records → [`Paper`].
//!
//! Three layouts are read:
//! - doc2json per-paper JSON (the 2019/2020 S2ORC releases and `doc2json` output):
//!   `body_text` paragraphs with `section` names and `cite_spans`, either at the top level or
//!   under `grobid_parse` / `latex_parse`, metadata under `metadata`;
//! - the 2023 S2ORC JSONL that PMC-LLaMA used: `content.text` with `content.annotations`,
//!   JSON-encoded span lists (`title`, `abstract`, `paragraph`, `sectionheader`, `bibref`);
//! - plain `{"id", "text"}` records (paragraphs separated by blank lines).
//!
//! Metadata-only records (an S2ORC `metadata` line without text) become papers without a body,
//! which the cleaner drops as `no-body` — counted, not lost.

use serde_json::Value;

use crate::paper::{Block, License, Metadata, Paper, Paragraph, Span};

/// Why a JSON record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonRecordError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unrecognised record: expected `text`, `content.text`, `body_text` or S2ORC metadata")]
    Unrecognised,
    #[error("bad annotation `{name}`: {message}")]
    Annotation { name: String, message: String },
}

/// Parse one JSON record (a whole `.json` file, or one JSONL line).
pub fn parse_json_record(bytes: &[u8], source: &str) -> Result<Paper, JsonRecordError> {
    let record: Value = serde_json::from_slice(bytes)?;
    let paper = if record
        .pointer("/content/text")
        .is_some_and(Value::is_string)
    {
        parse_s2orc_2023(&record, source)?
    } else if record.get("body_text").is_some()
        || record.get("grobid_parse").is_some()
        || record.get("latex_parse").is_some()
    {
        parse_doc2json(&record, source)
    } else if let Some(text) = record.get("text").and_then(Value::as_str) {
        parse_plain(&record, text, source)
    } else if record.get("title").is_some() || record.get("abstract").is_some() {
        parse_metadata_only(&record, source)
    } else {
        return Err(JsonRecordError::Unrecognised);
    };
    Ok(paper)
}

fn string_field(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn metadata_from(value: &Value) -> Metadata {
    let pmcid = string_field(value, "pmc_id").map(|id| {
        if id.starts_with("PMC") {
            id
        } else {
            format!("PMC{id}")
        }
    });
    Metadata {
        pmcid,
        pmid: string_field(value, "pubmed_id"),
        doi: string_field(value, "doi"),
        title: string_field(value, "title"),
        journal: string_field(value, "journal").or_else(|| string_field(value, "venue")),
        year: value
            .get("year")
            .and_then(Value::as_u64)
            .and_then(|y| u16::try_from(y).ok()),
        license: string_field(value, "license")
            .and_then(|l| License::recognise(&l))
            .unwrap_or_default(),
    }
}

fn finish(mut paper: Paper, fallback_id: Option<String>) -> Paper {
    paper.id = paper
        .meta
        .pmcid
        .clone()
        .or(fallback_id)
        .or_else(|| paper.meta.pmid.as_ref().map(|p| format!("PMID{p}")))
        .unwrap_or_else(|| crate::jats::file_stem(&paper.source));
    paper
}

/// Split `text` at the character offsets of `cites` (start, end) into text and citations.
fn paragraph_with_citations(text: &str, mut cites: Vec<(usize, usize)>) -> Paragraph {
    cites.sort_unstable();
    // S2ORC offsets count Unicode code points (Python string indices).
    let byte_at: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain([text.len()])
        .collect();
    let to_byte = |c: usize| byte_at.get(c).copied().unwrap_or(text.len());
    let mut paragraph = Paragraph::default();
    let mut cursor = 0;
    for (start, end) in cites {
        let (start, end) = (to_byte(start), to_byte(end));
        if start < cursor || end <= start {
            continue; // overlapping or empty span: keep the text as is
        }
        paragraph.push_text(&text[cursor..start]);
        paragraph
            .0
            .push(Span::Citation(text[start..end].to_string()));
        cursor = end;
    }
    paragraph.push_text(&text[cursor..]);
    paragraph
}

fn doc2json_paragraph(entry: &Value) -> Option<(String, Paragraph)> {
    let text = entry.get("text")?.as_str()?;
    let cites = entry
        .get("cite_spans")
        .and_then(Value::as_array)
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| {
                    Some((
                        s.get("start")?.as_u64()? as usize,
                        s.get("end")?.as_u64()? as usize,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let section = entry
        .get("section")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    Some((section, paragraph_with_citations(text, cites)))
}

fn parse_doc2json(record: &Value, source: &str) -> Paper {
    // The parse with a body wins; LaTeX parses are preferred when both have one.
    let parse = ["latex_parse", "grobid_parse"]
        .iter()
        .filter_map(|k| record.get(*k))
        .find(|p| {
            p.get("body_text")
                .and_then(Value::as_array)
                .is_some_and(|b| !b.is_empty())
        })
        .unwrap_or(record);
    let mut meta = record
        .get("metadata")
        .map(metadata_from)
        .unwrap_or_default();
    if meta.title.is_none() {
        meta.title = string_field(record, "title");
    }
    let mut paper = Paper {
        source: source.to_string(),
        meta,
        ..Paper::default()
    };
    for entry in parse
        .get("abstract")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some((_, p)) = doc2json_paragraph(entry) {
            paper.abstract_paragraphs.push(p);
        }
    }
    if paper.abstract_paragraphs.is_empty()
        && let Some(text) = record.pointer("/metadata/abstract").and_then(Value::as_str)
    {
        paper
            .abstract_paragraphs
            .push(Paragraph(vec![Span::Text(text.to_string())]));
    }
    let mut current_section = String::new();
    for entry in parse
        .get("body_text")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some((section, p)) = doc2json_paragraph(entry) {
            if !section.is_empty() && section != current_section {
                paper.body.push(Block::Heading {
                    level: 1,
                    text: section.clone(),
                });
                current_section = section;
            }
            paper.body.push(Block::Paragraph(p));
        }
    }
    if let Some(entries) = parse.get("ref_entries").and_then(Value::as_object) {
        for entry in entries.values() {
            if let Some(text) = entry.get("text").and_then(Value::as_str) {
                paper.body.push(Block::Caption(Paragraph(vec![Span::Text(
                    text.to_string(),
                )])));
            }
        }
    }
    finish(paper, string_field(record, "paper_id"))
}

fn parse_plain(record: &Value, text: &str, source: &str) -> Paper {
    let meta = Metadata {
        title: string_field(record, "title"),
        license: string_field(record, "license")
            .and_then(|l| License::recognise(&l))
            .unwrap_or_default(),
        ..Metadata::default()
    };
    let mut paper = Paper {
        source: source.to_string(),
        meta,
        ..Paper::default()
    };
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        paper.body.push(Block::Paragraph(Paragraph(vec![Span::Text(
            block.to_string(),
        )])));
    }
    finish(paper, string_field(record, "id"))
}

fn parse_metadata_only(record: &Value, source: &str) -> Paper {
    let mut paper = Paper {
        source: source.to_string(),
        meta: metadata_from(record),
        ..Paper::default()
    };
    if let Some(text) = record.get("abstract").and_then(Value::as_str) {
        paper
            .abstract_paragraphs
            .push(Paragraph(vec![Span::Text(text.to_string())]));
    }
    finish(paper, string_field(record, "paper_id"))
}

/// Read an annotation list: a JSON string (or array) of `{"start", "end"}` objects.
fn annotation(record: &Value, name: &str) -> Result<Vec<(usize, usize)>, JsonRecordError> {
    let Some(raw) = record.pointer(&format!("/content/annotations/{name}")) else {
        return Ok(Vec::new());
    };
    let parsed;
    let list = match raw {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| JsonRecordError::Annotation {
                name: name.to_string(),
                message: e.to_string(),
            })?;
            &parsed
        }
        other => other,
    };
    let spans = list.as_array().ok_or_else(|| JsonRecordError::Annotation {
        name: name.to_string(),
        message: "not a list of spans".into(),
    })?;
    let mut out = Vec::with_capacity(spans.len());
    for span in spans {
        let get = |k: &str| {
            span.get(k)
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        };
        match (get("start"), get("end")) {
            (Some(s), Some(e)) => out.push((s as usize, e as usize)),
            _ => {
                return Err(JsonRecordError::Annotation {
                    name: name.to_string(),
                    message: format!("span without numeric start/end: {span}"),
                });
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn parse_s2orc_2023(record: &Value, source: &str) -> Result<Paper, JsonRecordError> {
    let text = record
        .pointer("/content/text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let chars: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain([text.len()])
        .collect();
    let slice = |(s, e): (usize, usize)| -> &str {
        let s = chars.get(s).copied().unwrap_or(text.len());
        let e = chars.get(e).copied().unwrap_or(text.len());
        if s <= e { &text[s..e] } else { "" }
    };
    let ids = record.get("externalids").cloned().unwrap_or(Value::Null);
    let license_evidence = record
        .pointer("/content/source/oainfo/license")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace("CCBY", "cc-by")
        .replace("CC BY", "cc-by");
    let meta = Metadata {
        pmcid: string_field(&ids, "pubmedcentral").map(|id| {
            if id.starts_with("PMC") {
                id
            } else {
                format!("PMC{id}")
            }
        }),
        pmid: string_field(&ids, "pubmed"),
        doi: string_field(&ids, "doi"),
        title: annotation(record, "title")?
            .first()
            .map(|&s| slice(s).trim().to_string()),
        journal: None,
        year: None,
        license: License::recognise(&license_evidence.to_ascii_lowercase()).unwrap_or_default(),
    };
    let mut paper = Paper {
        source: source.to_string(),
        meta,
        ..Paper::default()
    };
    let bibrefs = annotation(record, "bibref")?;
    let cites_within = |(s, e): (usize, usize)| -> Vec<(usize, usize)> {
        bibrefs
            .iter()
            // A reversed span (end before start) is malformed: ignored, never subtracted.
            .filter(|&&(bs, be)| bs >= s && be <= e && bs <= be)
            .map(|&(bs, be)| (bs - s, be - s))
            .collect()
    };
    for span in annotation(record, "abstract")? {
        paper
            .abstract_paragraphs
            .push(paragraph_with_citations(slice(span), cites_within(span)));
    }
    // Section headers and paragraphs interleaved by position.
    let mut blocks: Vec<(usize, Block)> = Vec::new();
    for span in annotation(record, "sectionheader")? {
        blocks.push((
            span.0,
            Block::Heading {
                level: 1,
                text: slice(span).trim().to_string(),
            },
        ));
    }
    for span in annotation(record, "paragraph")? {
        blocks.push((
            span.0,
            Block::Paragraph(paragraph_with_citations(slice(span), cites_within(span))),
        ));
    }
    blocks.sort_by_key(|(start, _)| *start);
    paper.body = blocks.into_iter().map(|(_, b)| b).collect();
    Ok(finish(paper, string_field(record, "corpusid")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s2orc_2023_annotations_become_structure() {
        let text = "Title here. Abstract text. Intro Body with cite [1] end.";
        let record = serde_json::json!({
            "corpusid": 42,
            "externalids": {"pubmedcentral": "123", "pubmed": "9"},
            "content": {
                "text": text,
                "source": {"oainfo": {"license": "CCBY"}},
                "annotations": {
                    "title": "[{\"start\":0,\"end\":11}]",
                    "abstract": "[{\"start\":12,\"end\":26}]",
                    "sectionheader": "[{\"start\":27,\"end\":32}]",
                    "paragraph": "[{\"start\":33,\"end\":56}]",
                    "bibref": "[{\"start\":48,\"end\":51}]"
                }
            }
        });
        let paper = parse_json_record(record.to_string().as_bytes(), "x.jsonl:1").unwrap();
        assert_eq!(paper.id, "PMC123");
        assert_eq!(paper.meta.title.as_deref(), Some("Title here."));
        assert_eq!(paper.meta.license, License::CcBy);
        assert_eq!(
            paper.body[0],
            Block::Heading {
                level: 1,
                text: "Intro".into()
            }
        );
        let Block::Paragraph(p) = &paper.body[1] else {
            panic!("{:?}", paper.body)
        };
        assert_eq!(p.0[1], Span::Citation("[1]".into()));
    }

    #[test]
    fn reversed_annotation_spans_are_ignored() {
        // Found by the fuzzer: a bibref ending before it starts.
        let record = serde_json::json!({"content": {"text": "abcdefghij",
            "annotations": {"paragraph": "[{\"start\":2,\"end\":9}]", "bibref": "[{\"start\":5,\"end\":1}]"}}});
        let paper = parse_json_record(record.to_string().as_bytes(), "f").unwrap();
        assert_eq!(paper.body.len(), 1);
    }

    #[test]
    fn unrecognised_records_are_errors() {
        assert!(matches!(
            parse_json_record(b"{\"x\": 1}", "f"),
            Err(JsonRecordError::Unrecognised)
        ));
        assert!(matches!(
            parse_json_record(b"{\"x\": ", "f"),
            Err(JsonRecordError::Json(_))
        ));
    }
}
