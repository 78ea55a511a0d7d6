//! Adapters made by HF PEFT (fixtures from `tests/fixtures/make_adapters.py`) score the same
//! here; merge, unmerge and save round-trip; training reaches only A and B.

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::prelude::*;
use pmc_model::{Llama, load_model, masked_causal_lm_loss, score_continuations};
use pmc_peft::{
    Adapter, AdapterConfig, TargetModules, attach, load_adapter, merge, prepare_for_training,
    trainable_parameters, unmerge,
};
use serde_json::Value;

/// PEFT computes in float32 like us; the issue's bound is 1e-3.
const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base(device: &Device) -> Llama {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmc-model/tests/fixtures/gqa_tied");
    load_model(&dir, &Default::default(), device).unwrap().model
}

fn expected(adapter: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(adapter).join("expected.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn logliks(model: &Llama, expected: &Value, device: &Device) -> Vec<f64> {
    expected["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (ctx, cont) = (ids(&r["context_ids"]), ids(&r["continuation_ids"]));
            score_continuations(model, &ctx, &[cont], device).unwrap()[0].loglik
        })
        .collect()
}

fn worst(got: &[f64], want: &Value) -> f64 {
    got.iter()
        .zip(want.as_array().unwrap())
        .map(|(g, w)| (g - w.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn peft_adapters_score_identically_and_merge_unmerge_roundtrip() {
    let device = Device::flex();
    for name in ["qv_r4", "all_rslora"] {
        let want = expected(name);
        let mut model = base(&device);
        let adapter = load_adapter(&mut model, &fixtures().join(name), &device).unwrap();
        let with_adapter = logliks(&model, &want, &device);
        let d = worst(&with_adapter, &want["adapter"]);
        println!("{name}: max |Δloglik| vs PEFT = {d:.2e}");
        assert!(d <= TOLERANCE, "{name}: {d}");

        // Merged: same numbers as with the adapter, and as PEFT's merge_and_unload.
        merge(&mut model);
        let merged = logliks(&model, &want, &device);
        assert!(
            worst(&merged, &want["merged"]) <= TOLERANCE,
            "{name} merged"
        );
        // Unmerged: back to the base model's numbers.
        unmerge(&mut model, &adapter);
        assert!(
            worst(&logliks(&model, &want, &device), &want["base"]) <= TOLERANCE,
            "{name} unmerged"
        );
    }
}

#[test]
fn saved_adapters_read_back_identical_with_peft_keys() {
    let device = Device::flex();
    let adapter = Adapter::read(&fixtures().join("all_rslora"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy");
    adapter.save(&out).unwrap();
    let back = Adapter::read(&out, &device).unwrap();
    assert_eq!(back.config.to_json(), adapter.config.to_json());
    assert_eq!(back.modules.len(), adapter.modules.len());
    for (name, w) in &adapter.modules {
        let b = &back.modules[name];
        assert_eq!(b.a.to_data(), w.a.to_data(), "{name}");
        assert_eq!(b.b.to_data(), w.b.to_data(), "{name}");
        assert_eq!(b.scale, w.scale);
    }
    // The file's keys are PEFT's.
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.names()
            .contains(&"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
    );
    assert_eq!(
        st.tensor("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
            .unwrap()
            .shape(),
        &[2, 96]
    );
}

#[test]
fn gradients_reach_only_a_and_b() {
    let device = Device::flex().autodiff();
    let mut model = base(&device);
    let config = AdapterConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "down_proj".into()]),
    );
    let mut adapter = Adapter::init(&mut model, config, 1, &device).unwrap();
    // B starts at zero as in PEFT; give it values so that A's gradient is not zero too.
    for w in adapter.modules.values_mut() {
        w.b = Tensor::random(
            w.b.dims(),
            burn::tensor::Distribution::Normal(0.0, 0.1),
            &device,
        );
    }
    let model = prepare_for_training(model, &adapter).unwrap();
    assert_eq!(trainable_parameters(&model), adapter.parameters());
    // Two layers: q_proj 64 → 64 and down_proj 96 → 64, rank 4.
    assert_eq!(
        adapter.parameters(),
        2 * (4 * 64 + 64 * 4) + 2 * (4 * 96 + 64 * 4)
    );
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new((0..16i64).map(|i| i * 7 % 300).collect::<Vec<_>>(), [2, 8]),
        &device,
    );
    let mask = Tensor::<2>::ones([2, 8], &device);
    let loss = masked_causal_lm_loss(&model, tokens, mask);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let layer = &model.layers[0];
    let lora = layer.self_attn.q_proj.lora.as_ref().unwrap();
    assert!(grads.get::<2>(lora.a.id).is_some() && grads.get::<2>(lora.b.id).is_some());
    let mlp_lora = layer.mlp.down_proj.lora.as_ref().unwrap();
    assert!(grads.get::<2>(mlp_lora.a.id).is_some());
    for base_param in [
        &layer.self_attn.q_proj.weight,
        &layer.self_attn.k_proj.weight,
        &layer.mlp.down_proj.weight,
        &model.embed_tokens,
    ] {
        assert!(
            grads.get::<2>(base_param.id).is_none(),
            "a frozen base weight received a gradient"
        );
    }
    assert!(grads.get::<1>(layer.input_layernorm.weight.id).is_none());
}

#[test]
fn bad_adapters_are_refused_naming_what_is_wrong() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixtures().join("qv_r4").join(f), out.join(f)).unwrap();
        }
        out
    };
    // DoRA is not LoRA's numbers: refused, naming the option and file.
    let dora = copy("dora");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dora.join("adapter_config.json")).unwrap())
            .unwrap();
    config["use_dora"] = Value::Bool(true);
    std::fs::write(dora.join("adapter_config.json"), config.to_string()).unwrap();
    let err = Adapter::read(&dora, &device).unwrap_err().to_string();
    assert!(
        err.contains("use_dora") && err.contains("dora/adapter_config.json"),
        "{err}"
    );
    // A rank that disagrees with the tensors: refused naming the module.
    let rank = copy("rank");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(rank.join("adapter_config.json")).unwrap())
            .unwrap();
    config["r"] = Value::from(8);
    std::fs::write(rank.join("adapter_config.json"), config.to_string()).unwrap();
    let err = Adapter::read(&rank, &device).unwrap_err().to_string();
    assert!(
        err.contains("self_attn.q_proj") && err.contains("r = 8"),
        "{err}"
    );
    // An adapter for another architecture: refused naming the module.
    let adapter = Adapter::read(&fixtures().join("all_rslora"), &device).unwrap();
    let other =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmc-model/tests/fixtures/linear_bias");
    let mut model = load_model(&other, &Default::default(), &device)
        .unwrap()
        .model;
    let err = attach(&mut model, &adapter).unwrap_err().to_string();
    assert!(err.contains("model.layers.") && err.contains("→"), "{err}");
}

/// An adapter written here, loaded by HF PEFT on the same base, gives the same numbers. Runs
/// the fixture script when python3 has torch, transformers and peft; skips with a message
/// otherwise.
#[test]
fn adapters_written_here_load_in_peft() {
    let has_peft = std::process::Command::new("python3")
        .args(["-c", "import torch, transformers, peft"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_peft {
        eprintln!("skipping: python3 with torch, transformers and peft is not installed");
        return;
    }
    let device = Device::flex();
    let mut model = base(&device);
    let config = AdapterConfig {
        use_rslora: true,
        ..AdapterConfig::new(
            4,
            8.0,
            TargetModules::Names(vec!["k_proj".into(), "o_proj".into(), "up_proj".into()]),
        )
    };
    let mut adapter = Adapter::init(&mut model, config, 3, &device).unwrap();
    for w in adapter.modules.values_mut() {
        w.b = Tensor::random(
            w.b.dims(),
            burn::tensor::Distribution::Normal(0.0, 0.2),
            &device,
        );
    }
    attach(&mut model, &adapter).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ours");
    adapter.save(&out).unwrap();
    let want = expected("qv_r4"); // only its requests are used
    let ours = logliks(&model, &want, &device);
    let script = fixtures().join("make_adapters.py");
    let run = std::process::Command::new("python3")
        .arg(&script)
        .arg("--check")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout.lines().last().unwrap();
    let peft: Value = serde_json::from_str(line).unwrap();
    let d = worst(&ours, &peft["loglik"]);
    println!("adapter written here, PEFT vs ours: max |Δloglik| = {d:.2e}");
    assert!(d <= TOLERANCE, "{d}");
}
