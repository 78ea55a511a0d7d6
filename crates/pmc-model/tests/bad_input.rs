//! Broken checkpoints give errors that name the file and the key or tensor, never a panic.

use std::path::{Path, PathBuf};

use pmc_model::{LoadOptions, load_model};

fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn load_err(dir: &Path) -> String {
    let device = pmc_model::burn::prelude::Device::flex();
    load_model(dir, &LoadOptions::default(), &device)
        .unwrap_err()
        .to_string()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_keep, dir) = copy_fixture("linear_bias");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn garbage_header_names_the_file() {
    let (_keep, dir) = copy_fixture("linear_bias");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn wrong_shape_names_the_tensor() {
    let (_keep, dir) = copy_fixture("linear_bias");
    edit_config(&dir, |v| v["intermediate_size"] = 128.into());
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn missing_tensor_names_the_tensor() {
    let (_keep, dir) = copy_fixture("linear_bias");
    edit_config(&dir, |v| v["num_hidden_layers"] = 3.into());
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.2.") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn missing_shard_names_the_file() {
    let (_keep, dir) = copy_fixture("bf16_sharded_llama3");
    std::fs::remove_file(dir.join("model-00002-of-00005.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model-00002-of-00005.safetensors"), "{err}");
}

#[test]
fn unknown_rope_type_names_the_key() {
    let (_keep, dir) = copy_fixture("bf16_sharded_llama3");
    edit_config(&dir, |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("rope_type") && err.contains("yarn"),
        "{err}"
    );
}

#[test]
fn unreadable_config_names_the_file() {
    let (_keep, dir) = copy_fixture("linear_bias");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn out_of_vocabulary_ids_are_refused() {
    let device = pmc_model::burn::prelude::Device::flex();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linear_bias");
    let loaded = load_model(&dir, &LoadOptions::default(), &device).unwrap();
    let err = pmc_model::score_continuations(&loaded.model, &[1, 2], &[vec![100_000]], &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("100000"), "{err}");
    assert!(pmc_model::score_continuations(&loaded.model, &[], &[vec![3]], &device).is_err());
}

/// JSON nested a million levels deep (a stack bomb for a recursive parser) is refused with
/// the file named, without overflowing the stack.
#[test]
fn deeply_nested_config_json_is_refused() {
    let (_keep, dir) = copy_fixture("linear_bias");
    let depth = 1_000_000;
    let bomb = "[".repeat(depth) + &"]".repeat(depth);
    std::fs::write(dir.join("config.json"), bomb).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("recursion limit"),
        "{err}"
    );
}
