//! Training parity with transformers: on each fixture, the causal-LM loss of a batch and the
//! gradient norm of every parameter match `LlamaForCausalLM(labels=input_ids).loss.backward()`
//! (fixtures from `tests/fixtures/make_fixtures.py`).

mod common;

use pmc_model::burn::prelude::*;
use pmc_model::{LoadOptions, WeightRef, causal_lm_loss, load_model};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn norm<const D: usize>(t: Tensor<D>) -> f64 {
    t.square().sum().sqrt().into_scalar::<f32>() as f64
}

#[test]
fn loss_and_gradient_norms_match_transformers() {
    let device = Device::flex().autodiff();
    for name in [
        "gqa_tied",
        "bf16_sharded_llama3",
        "linear_bias",
        "dynamic_f16",
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let training = &expected["training"];
        let loaded = load_model(&dir, &LoadOptions::default(), &device).unwrap();
        let rows: Vec<Vec<u32>> = training["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::ids)
            .collect();
        let (b, t) = (rows.len(), rows[0].len());
        let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);

        let loss = causal_lm_loss(&loaded.model, tokens);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let want = training["loss"].as_f64().unwrap();
        assert!(
            (value - want).abs() <= TOLERANCE,
            "{name}: loss {value} vs transformers {want}"
        );

        let grads = loss.backward();
        let mut total_sq = 0.0;
        let mut checked = 0;
        loaded.model.visit_weights(|param, weight| {
            let got = match weight {
                WeightRef::Matrix(p) => p.val().grad(&grads).map(norm),
                WeightRef::Vector(p) => p.val().grad(&grads).map(norm),
            }
            .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
            let want = training["grad_norms"][&param]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {param} not in fixture"));
            assert!(
                (got - want).abs() <= TOLERANCE * want.max(1.0),
                "{name}: grad norm of {param}: {got} vs transformers {want}"
            );
            total_sq += got * got;
            checked += 1;
        });
        assert_eq!(
            checked,
            training["grad_norms"].as_object().unwrap().len(),
            "{name}: every parameter checked"
        );
        let total = total_sq.sqrt();
        let want = training["total_grad_norm"].as_f64().unwrap();
        assert!(
            (total - want).abs() <= TOLERANCE * want.max(1.0),
            "{name}: total grad norm {total} vs {want}"
        );
        println!(
            "{name}: loss {value:.6} (Δ {:.1e}), total grad norm {total:.6} (Δ {:.1e})",
            (value - training["loss"].as_f64().unwrap()).abs(),
            (total - want).abs()
        );
    }
}
