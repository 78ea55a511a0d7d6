//! The `llama` (sentencepiece) GGUF tokenizer: LLaMA-2's `tokenizer.model` read into the
//! fields llama.cpp's converter writes to GGUF (pieces, scores, types), rebuilt by
//! `GgufVocab`, must encode like HF's converted `tokenizer.json` on all benchmark text.
//! Skipped, with the reason printed, when ../shared is absent.

mod common;

use common::{question_texts, shared};
use pmc_model::Tokenizer;
use pmc_model::gguf::tokenizer::GgufVocab;

/// Reads a protobuf varint at `*pos`.
fn varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// Calls `f(field, wire_type, payload)` for each field of a protobuf message (varint fields
/// pass their value as 8 little-endian bytes).
fn fields(bytes: &[u8], mut f: impl FnMut(u64, u64, &[u8])) {
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(bytes, &mut pos);
                f(field, wire, &v.to_le_bytes());
            }
            1 => {
                f(field, wire, &bytes[pos..pos + 8]);
                pos += 8;
            }
            2 => {
                let len = varint(bytes, &mut pos) as usize;
                f(field, wire, &bytes[pos..pos + len]);
                pos += len;
            }
            5 => {
                f(field, wire, &bytes[pos..pos + 4]);
                pos += 4;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
}

/// `ModelProto.pieces` (field 1): `SentencePiece { piece = 1, score = 2, type = 3 }`.
fn sentencepiece_model(bytes: &[u8]) -> GgufVocab {
    let mut vocab = GgufVocab {
        model: "llama".into(),
        scores: Some(Vec::new()),
        types: Some(Vec::new()),
        ..Default::default()
    };
    fields(bytes, |field, _, payload| {
        if field != 1 {
            return;
        }
        let (mut piece, mut score, mut ty) = (String::new(), 0.0f32, 1u64);
        fields(payload, |f, _, p| match f {
            1 => piece = String::from_utf8(p.to_vec()).unwrap(),
            2 => score = f32::from_le_bytes(p.try_into().unwrap()),
            3 => ty = u64::from_le_bytes(p.try_into().unwrap()),
            _ => {}
        });
        vocab.tokens.push(piece);
        vocab.scores.as_mut().unwrap().push(score as f64);
        vocab.types.as_mut().unwrap().push(ty);
    });
    vocab.unk = Some(0);
    vocab.bos = Some(1);
    vocab.eos = Some(2);
    vocab
}

#[test]
fn llama_sentencepiece_vocab_encodes_like_hf() {
    let Some(shared) = shared() else {
        println!("SKIP: ../shared is absent (set PMC_SHARED)");
        return;
    };
    let dir = shared.join("data/tokenizers/llama2");
    let vocab = sentencepiece_model(&std::fs::read(dir.join("tokenizer.model")).unwrap());
    assert_eq!(vocab.tokens.len(), 32000);
    let ours = vocab.build(&dir.join("tokenizer.model")).unwrap();
    assert!(ours.add_bos, "LLaMA adds BOS by default");
    let reference = Tokenizer::new(
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap(),
        Some(1),
        vec![2],
        true,
        false,
    );
    // HF's converted tokenizer.json departs from sentencepiece on runs of two spaces (it
    // merges "▁▁" first); everywhere else the two must agree.
    let texts = question_texts(&shared);
    let mut differ = 0;
    for text in &texts {
        if ours.encode(text).unwrap() != reference.encode(text).unwrap() {
            assert!(
                text.contains("  "),
                "differs without a double space: {text:?}"
            );
            differ += 1;
        }
    }
    println!(
        "{differ} of {} texts (all with double spaces) differ from tokenizer.json",
        texts.len()
    );
    // What sentencepiece itself (the `sentencepiece` Python package on tokenizer.model) gives.
    let sentencepiece: &[(&str, &[u32])] = &[
        ("a  b", &[263, 29871, 289]),
        (
            "kg/m(2)  (22.5 kg",
            &[
                12118, 29914, 29885, 29898, 29906, 29897, 29871, 313, 29906, 29906, 29889, 29945,
                12118,
            ],
        ),
        ("x   y", &[921, 259, 343]),
        (
            "Dose:  5 mg  daily",
            &[360, 852, 29901, 259, 29945, 286, 29887, 29871, 14218],
        ),
        ("Radial nerve", &[4957, 616, 302, 7143]),
    ];
    for (text, ids) in sentencepiece {
        assert_eq!(ours.encode_plain(text).unwrap(), *ids, "{text:?}");
    }
    assert_eq!(
        ours.decode(&ours.encode("Wrist drop: radial nerve").unwrap())
            .unwrap(),
        "Wrist drop: radial nerve"
    );
}
