//! GGUF out: a model written by `write_gguf` reads back — through our reader, and through
//! llama.cpp's own `gguf` Python package tensor by tensor — with the same config, tokenizer
//! and logits: exactly at f32 and f16, within the block format's error at q8_0/q4_0/q4_1.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixture;
use pmc_model::burn::prelude::*;
use pmc_model::{
    ExportType, LoadOptions, LoadedModel, QuantKind, WeightDType, load_model, write_gguf,
};

fn logits(loaded: &LoadedModel, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    loaded
        .model
        .forward(tokens, None)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Whether `python3` imports `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The `gqa_tied` fixture, loaded in f32 and written as `ty` to `dir/name`.
fn export_fixture(ty: ExportType, dir: &Path, name: &str) -> (LoadedModel, std::path::PathBuf) {
    let source = load_model(
        &fixture("gqa_tied"),
        &LoadOptions::default(),
        &Device::flex(),
    )
    .unwrap();
    let path = dir.join(name);
    write_gguf(
        &source.model,
        &source.config,
        source.require_tokenizer().unwrap(),
        "fixture",
        ty,
        &path,
    )
    .unwrap();
    (source, path)
}

const IDS: [u32; 12] = [0, 5, 17, 42, 99, 120, 7, 250, 31, 64, 128, 3];

/// Exports `source` as `ty`, reads it back with `options`, and returns the largest logit
/// difference.
fn round_trip(
    source: &LoadedModel,
    tokenizer: &pmc_model::Tokenizer,
    ty: ExportType,
    options: &LoadOptions,
    dir: &Path,
) -> (f32, LoadedModel) {
    let device = Device::flex();
    let path = dir.join("model.gguf");
    let summary = write_gguf(
        &source.model,
        &source.config,
        tokenizer,
        "fixture",
        ty,
        &path,
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
    let back = load_model(&path, options, &device).unwrap();
    let c = (&source.config, &back.config);
    assert_eq!(
        (c.0.vocab_size, c.0.hidden_size, c.0.intermediate_size),
        (c.1.vocab_size, c.1.hidden_size, c.1.intermediate_size)
    );
    assert_eq!(
        (
            c.0.num_hidden_layers,
            c.0.num_attention_heads,
            c.0.num_key_value_heads
        ),
        (
            c.1.num_hidden_layers,
            c.1.num_attention_heads,
            c.1.num_key_value_heads
        )
    );
    assert_eq!(c.0.tie_word_embeddings, c.1.tie_word_embeddings);
    assert_eq!(c.0.rope_scaling, c.1.rope_scaling);
    assert_eq!(c.0.attention_bias, c.1.attention_bias);
    let diff = max_difference(
        &logits(source, &IDS, &device),
        &logits(&back, &IDS, &device),
    );
    (diff, back)
}

#[test]
fn f32_and_f16_exports_read_back_with_identical_logits_and_tokenizer() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let source = load_model(&fixture("gqa_tied"), &LoadOptions::default(), &device).unwrap();
    let tokenizer = source.require_tokenizer().unwrap();
    let (diff, back) = round_trip(
        &source,
        tokenizer,
        ExportType::F32,
        &LoadOptions::default(),
        dir.path(),
    );
    assert_eq!(diff, 0.0, "f32 export changed the logits");
    let text = "the quick brown fox";
    assert_eq!(
        tokenizer.encode(text).unwrap(),
        back.require_tokenizer().unwrap().encode(text).unwrap(),
        "the tokenizer read back from GGUF encodes differently"
    );
    let f16 = LoadOptions {
        dtype: WeightDType::F16,
        quantize: None,
    };
    let source = load_model(&fixture("gqa_tied"), &f16, &device).unwrap();
    let (diff, _) = round_trip(&source, tokenizer, ExportType::F16, &f16, dir.path());
    assert_eq!(diff, 0.0, "f16 export of an f16 model changed the logits");
}

#[test]
fn biases_and_linear_rope_scaling_survive_the_round_trip() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    // linear_bias has no tokenizer of its own; gqa_tied's has the same vocabulary size.
    let tokenizer_source =
        load_model(&fixture("gqa_tied"), &LoadOptions::default(), &device).unwrap();
    let tokenizer = tokenizer_source.require_tokenizer().unwrap();
    let source = load_model(&fixture("linear_bias"), &LoadOptions::default(), &device).unwrap();
    assert!(source.config.attention_bias);
    let (diff, _) = round_trip(
        &source,
        tokenizer,
        ExportType::F32,
        &LoadOptions::default(),
        dir.path(),
    );
    assert_eq!(
        diff, 0.0,
        "Q/K biases or rope scaling changed in the export"
    );
}

/// The bound is the error of holding the same model in that block format in memory (our
/// quantizer, f32 scales): the export stores ggml's f16 scales, so it may differ by a little
/// more, never by an order of magnitude.
#[test]
fn block_formats_stay_within_their_quantization_error() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let source = load_model(&fixture("gqa_tied"), &LoadOptions::default(), &device).unwrap();
    let tokenizer = source.require_tokenizer().unwrap();
    let reference = logits(&source, &IDS, &device);
    for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
        let in_memory = LoadOptions {
            quantize: Some(kind),
            ..Default::default()
        };
        let held = load_model(&fixture("gqa_tied"), &in_memory, &device).unwrap();
        let quantization_error = max_difference(&reference, &logits(&held, &IDS, &device));
        let ty = ExportType::Quantized(kind);
        let (diff, _) = round_trip(&source, tokenizer, ty, &LoadOptions::default(), dir.path());
        assert!(
            diff > 0.0 && diff <= 2.0 * quantization_error,
            "{}: the export moved the logits by {diff}; holding the model quantized moves them by {quantization_error}",
            kind.name()
        );
    }
}

#[test]
fn llama_cpps_gguf_package_reads_the_export_tensor_by_tensor() {
    if !python_has("gguf") {
        if std::env::var_os("CI").is_some() {
            panic!("under CI the gguf Python package must be installed (.ci/run does)");
        }
        eprintln!("skipped: the `gguf` Python package is not installed (pip install gguf)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (source, path) = export_fixture("q8_0".parse().unwrap(), dir.path(), "q8.gguf");
    // gguf's reader dequantizes with its own (numpy) code; our reader must agree with it on
    // every tensor, and the metadata must be what llama.cpp's loader asks for.
    let script = r#"
import sys, json, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
f = lambda k: r.fields[k]
def value(k):
    field = f(k)
    return field.contents()
out = {"arch": value("general.architecture"), "ftype": value("general.file_type"),
       "n_tokens": len(value("tokenizer.ggml.tokens")), "model": value("tokenizer.ggml.model"),
       "tensors": {}}
for t in r.tensors:
    values = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    out["tensors"][t.name] = {"type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                              "sum": float(values.sum()), "abs": float(np.abs(values).sum())}
print(json.dumps(out))
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gguf could not read the export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(theirs["arch"], "llama");
    assert_eq!(theirs["model"], "gpt2");
    assert_eq!(theirs["ftype"], 7);
    assert_eq!(theirs["n_tokens"], source.config.vocab_size);
    let ours = pmc_model::gguf::GgufFile::open(&path).unwrap();
    let tensors = theirs["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), ours.tensors.len());
    for info in &ours.tensors {
        let entry = &tensors[&info.name];
        let values = ours.dequantize(info).unwrap();
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let abs: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
        let expected_type = if info.dims.len() == 2 { "Q8_0" } else { "F32" };
        assert_eq!(entry["type"], expected_type, "{}", info.name);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs()) + 1e-6;
        assert!(
            close(sum, entry["sum"].as_f64().unwrap())
                && close(abs, entry["abs"].as_f64().unwrap()),
            "{}: ours sum {sum} abs {abs}, gguf's {entry}",
            info.name
        );
    }
}

/// llama.cpp itself (the `llama-cpp-python` package) loads the f32 export, tokenizes text as we
/// do and computes our logits. Skipped where the package is not installed: pip compiles
/// llama.cpp from source (15–40 min on 2 cores), more than CI's budget allows.
#[test]
fn llama_cpp_loads_the_export_and_computes_our_logits() {
    if !python_has("llama_cpp") {
        eprintln!(
            "skipped: the `llama-cpp-python` package is not installed (pip install \
             llama-cpp-python builds llama.cpp from source)"
        );
        return;
    }
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (source, path) = export_fixture(ExportType::F32, dir.path(), "f32.gguf");
    let tokenizer = source.require_tokenizer().unwrap();
    let text = "the quick brown fox jumps over 12 lazy dogs.";
    let script = r#"
import sys, json
import llama_cpp
from llama_cpp import Llama
# An f32 KV cache (llama.cpp's default is f16) so that only the order of sums differs.
llm = Llama(model_path=sys.argv[1], n_ctx=64, logits_all=True, verbose=False,
            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
ids = json.loads(sys.argv[2])
llm.eval(ids)
print(json.dumps({
    # add_bos=True adds BOS only where the file's tokenizer.ggml.add_bos_token asks for it.
    "tokens": llm.tokenize(sys.argv[3].encode(), add_bos=True, special=False),
    "logits": llm.scores[: len(ids)].reshape(-1).tolist(),
}))
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg(serde_json::to_string(&IDS).unwrap())
        .arg(text)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "llama.cpp could not run the export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let their_tokens: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
    assert_eq!(
        their_tokens,
        tokenizer.encode(text).unwrap(),
        "llama.cpp tokenizes the exported vocabulary differently"
    );
    let their_logits: Vec<f32> = serde_json::from_value(theirs["logits"].clone()).unwrap();
    let ours = logits(&source, &IDS, &device);
    let scale = ours.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = max_difference(&ours, &their_logits);
    eprintln!("llama.cpp's logits are within {diff} of ours (largest logit {scale})");
    // Both run f32; only the order of the sums differs (a few ulps of each product's
    // magnitude per layer), so the difference stays far below the logits' own scale.
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "llama.cpp's logits differ from ours by {diff} (largest logit {scale})"
    );
}
