//! GGUF: dequantisation against llama.cpp's own Python package, a whole model round trip
//! through a GGUF file written here (llama.cpp's Q/K permutation included), and bad input.

use std::path::{Path, PathBuf};

use pmc_model::gguf::{GgmlType, GgufFile, dequant::dequantize};
mod common;

use common::{ids, score_request};
use pmc_model::{LoadOptions, load_model};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn quant_blocks_match_gguf_py_bit_for_bit() {
    let text = std::fs::read_to_string(fixtures().join("gguf/quant_blocks.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = match name {
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q5_0" => GgmlType::Q5_0,
            "Q5_1" => GgmlType::Q5_1,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_K" => GgmlType::Q4_K,
            "Q5_K" => GgmlType::Q5_K,
            "Q6_K" => GgmlType::Q6_K,
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::BF16,
            other => panic!("unexpected type {other}"),
        };
        let hex = case["raw"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want: Vec<u32> = case["f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = dequantize(ty, &raw, want.len()).unwrap();
        let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "{name}");
    }
}

/// A minimal GGUF v3 writer for tests.
#[derive(Default)]
struct GgufWriter {
    meta: Vec<u8>,
    n_meta: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    n_tensors: u64,
}

impl GgufWriter {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn key(&mut self, key: &str, type_id: u32) {
        Self::string(&mut self.meta, key);
        self.meta.extend(type_id.to_le_bytes());
        self.n_meta += 1;
    }
    fn u32(&mut self, key: &str, v: u32) {
        self.key(key, 4);
        self.meta.extend(v.to_le_bytes());
    }
    fn f32(&mut self, key: &str, v: f32) {
        self.key(key, 6);
        self.meta.extend(v.to_le_bytes());
    }
    fn bool(&mut self, key: &str, v: bool) {
        self.key(key, 7);
        self.meta.push(v as u8);
    }
    fn str(&mut self, key: &str, v: &str) {
        self.key(key, 8);
        Self::string(&mut self.meta, v);
    }
    fn strings(&mut self, key: &str, v: &[String]) {
        self.key(key, 9);
        self.meta.extend(8u32.to_le_bytes());
        self.meta.extend((v.len() as u64).to_le_bytes());
        for s in v {
            Self::string(&mut self.meta, s);
        }
    }
    /// A tensor with row-major `shape` and raw data of ggml type `type_id`.
    fn tensor(&mut self, name: &str, shape: &[usize], type_id: u32, raw: &[u8]) {
        Self::string(&mut self.infos, name);
        self.infos.extend((shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            self.infos.extend((d as u64).to_le_bytes());
        }
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(raw);
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_tensors += 1;
    }
    fn finish(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_meta.to_le_bytes());
        out.extend(self.meta);
        out.extend(self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(self.data);
        out
    }
}

/// llama.cpp's `permute` of Q/K rows (the inverse of what the loader undoes).
fn permute(data: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = data.len() / cols / n_heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for a in 0..2 {
            for b in 0..head_dim / 2 {
                let src = h * head_dim + a * head_dim / 2 + b;
                let dst = h * head_dim + 2 * b + a;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the `gqa_tied` fixture (an HF checkpoint with a byte-level BPE tokenizer) as the
/// GGUF file llama.cpp's converter would produce.
fn gguf_of_fixture() -> Vec<u8> {
    let device = pmc_model::burn::prelude::Device::flex();
    let loaded = load_model(
        &fixtures().join("gqa_tied"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    let c = &loaded.config;
    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama");
    w.u32("llama.block_count", c.num_hidden_layers as u32);
    w.u32("llama.context_length", c.max_position_embeddings as u32);
    w.u32("llama.embedding_length", c.hidden_size as u32);
    w.u32("llama.feed_forward_length", c.intermediate_size as u32);
    w.u32("llama.attention.head_count", c.num_attention_heads as u32);
    w.u32(
        "llama.attention.head_count_kv",
        c.num_key_value_heads as u32,
    );
    w.f32("llama.rope.freq_base", c.rope_theta as f32);
    w.f32(
        "llama.attention.layer_norm_rms_epsilon",
        c.rms_norm_eps as f32,
    );
    w.u32("llama.vocab_size", c.vocab_size as u32);

    let tokenizer: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gqa_tied/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let merges: Vec<String> = tokenizer["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            _ => panic!("merge {m}"),
        })
        .collect();
    w.str("tokenizer.ggml.model", "gpt2");
    w.strings("tokenizer.ggml.tokens", &tokens);
    w.strings("tokenizer.ggml.merges", &merges);
    w.u32("tokenizer.ggml.bos_token_id", 0);
    w.u32("tokenizer.ggml.eos_token_id", 1);
    w.bool("tokenizer.ggml.add_bos_token", true);

    for weight in loaded.model.named_weights() {
        let Some(name) = pmc_model::gguf::gguf_name(&weight.name) else {
            panic!("no GGUF name for {}", weight.name)
        };
        let mut values: Vec<f32> = weight.value.to_data().try_to_vec().unwrap();
        if weight.name.contains("q_proj") {
            values = permute(&values, c.num_attention_heads, c.hidden_size);
        } else if weight.name.contains("k_proj") {
            values = permute(&values, c.num_key_value_heads, c.hidden_size);
        }
        let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.tensor(&name, &weight.shape, 0, &raw);
    }
    w.finish()
}

#[test]
fn a_gguf_model_scores_like_the_hf_checkpoint_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, gguf_of_fixture()).unwrap();
    let device = pmc_model::burn::prelude::Device::flex();
    let loaded = load_model(&path, &LoadOptions::default(), &device).unwrap();
    assert!(
        loaded.config.tie_word_embeddings,
        "no output.weight means tied embeddings"
    );
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gqa_tied/expected.json")).unwrap(),
    )
    .unwrap();
    for r in expected["requests"].as_array().unwrap() {
        let got = score_request(&loaded.model, r, &device);
        assert!(
            (got.loglik - r["loglik"].as_f64().unwrap()).abs() <= 1e-3,
            "{} vs {r}",
            got.loglik
        );
    }
    // The tokenizer rebuilt from metadata encodes as the original tokenizer.json.
    let tokenizer = loaded.tokenizer.unwrap();
    for r in expected["text_requests"].as_array().unwrap() {
        let (ctx, cont) = tokenizer
            .encode_pair(
                r["context"].as_str().unwrap(),
                r["continuation"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(ctx, ids(&r["context_ids"]));
        assert_eq!(cont, ids(&r["continuation_ids"]));
    }
}

fn write_and_load(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let device = pmc_model::burn::prelude::Device::flex();
    let err = load_model(&path, &LoadOptions::default(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.gguf"), "error must name the file: {err}");
    err
}

#[test]
fn truncated_gguf_is_refused_with_the_tensor_named() {
    let bytes = gguf_of_fixture();
    let err = write_and_load(&bytes[..bytes.len() - 100]);
    assert!(
        err.contains("truncated") && err.contains(".weight"),
        "{err}"
    );
    let err = write_and_load(&bytes[..200]);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn bad_gguf_headers_and_metadata_are_refused() {
    let err = write_and_load(b"GGML\x03\0\0\0");
    assert!(err.contains("not a GGUF file"), "{err}");

    let mut w = GgufWriter::default();
    w.str("general.architecture", "falcon");
    let err = write_and_load(&w.finish());
    assert!(
        err.contains("general.architecture") && err.contains("falcon"),
        "{err}"
    );

    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama");
    w.u32("llama.embedding_length", 64);
    w.u32("llama.attention.head_count", 4);
    w.u32("llama.attention.head_count_kv", 3);
    let err = write_and_load(&w.finish());
    assert!(err.contains("llama.attention.head_count_kv"), "{err}");

    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama");
    w.tensor("token_embd.weight", &[4, 256], 10, &[0u8; 4 * 84]); // Q2_K
    let err = write_and_load(&w.finish());
    assert!(
        err.contains("token_embd.weight") && err.contains("ggml type 10"),
        "{err}"
    );
}

#[test]
fn gguf_file_reports_its_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, gguf_of_fixture()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version, 3);
    let embed = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embed.shape(), vec![300, 64]);
    assert!(file.tensor("output.weight").is_none());
}

/// A GGUF v3 file with no metadata and one F32 tensor `t` of `dims` at `offset`.
fn one_tensor_gguf(dims: &[u64], offset: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(0u64.to_le_bytes()); // metadata
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + 64, 0);
    b
}

/// Found by `cargo fuzz run gguf`: element counts and offsets that overflow 64 bits
/// panicked (debug) or wrapped around the bounds check (release).
#[test]
fn overflowing_tensor_dimensions_and_offsets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.gguf");
    let open = |bytes: Vec<u8>| {
        std::fs::write(&path, bytes).unwrap();
        pmc_model::gguf::GgufFile::open(&path)
            .err()
            .unwrap()
            .to_string()
    };
    let err = open(one_tensor_gguf(&[u64::MAX / 2, 4], 0));
    assert!(
        err.contains("bomb.gguf") && err.contains("`t`") && err.contains("more elements"),
        "{err}"
    );
    let err = open(one_tensor_gguf(&[1 << 40, 1 << 30], 0));
    assert!(err.contains("more elements"), "{err}");
    let err = open(one_tensor_gguf(&[4], u64::MAX - 3));
    assert!(err.contains("runs past the end"), "{err}");
    assert!(
        pmc_model::gguf::GgufFile::open(&{
            std::fs::write(&path, one_tensor_gguf(&[4], 0)).unwrap();
            path.clone()
        })
        .is_ok()
    );
}
