//! Training parity with transformers: on each fixture, the causal-LM loss of a batch and the
//! gradient norm of every parameter match `LlamaForCausalLM(labels=input_ids).loss.backward()`
//! (fixtures from `tests/fixtures/make_fixtures.py`).

mod common;

use common::{FIXTURES, expected, fixture};

use pmc_model::burn::prelude::*;
use pmc_model::{LoadOptions, Precision, WeightRef, causal_lm_loss, load_model};

const TOLERANCE: f64 = 1e-4;

fn norm<const D: usize>(t: Tensor<D>) -> f64 {
    t.square().sum().sqrt().into_scalar::<f32>() as f64
}

#[test]
fn loss_and_gradient_norms_match_transformers() {
    for name in FIXTURES {
        check(name, Precision::F32, TOLERANCE, TOLERANCE);
    }
}

/// With bf16 products the reference is transformers with every `nn.Linear` multiplying in
/// bf16 (`bf16_products` in make_fixtures.py). Each product's output is rounded to bf16
/// (relative step 2⁻⁸), so a different summation order may round a value to the neighbouring
/// bf16 number: the tolerances are bf16's, not f32's. The loss tolerance is still several
/// times smaller than the change bf16 makes to the loss (checked in `check`), so the test
/// tells bf16 products from f32 ones.
#[test]
fn bf16_products_match_transformers_with_bf16_linear_layers() {
    for name in FIXTURES {
        check(
            name,
            Precision::Bf16,
            BF16_LOSS_TOLERANCE,
            BF16_GRAD_TOLERANCE,
        );
    }
}

/// Measured: |Δloss| ≤ 2.1e-4 against bf16 transformers, while bf16 moves the loss by
/// 2.2e-3 to 9.1e-3 from f32.
const BF16_LOSS_TOLERANCE: f64 = 5e-4;
/// Measured: relative |Δ| of gradient norms ≤ 2e-4, total norm ≤ 1.8e-3.
const BF16_GRAD_TOLERANCE: f64 = 3e-3;

fn check(name: &str, precision: Precision, loss_tolerance: f64, grad_tolerance: f64) {
    let device = Device::flex().autodiff();
    let expected = expected(name);
    let f32_reference = &expected["training"];
    let reference = match precision {
        Precision::F32 => f32_reference,
        Precision::Bf16 => &f32_reference["bf16"],
    };
    let mut loaded = load_model(&fixture(name), &LoadOptions::default(), &device).unwrap();
    loaded.model.set_precision(precision);
    let rows: Vec<Vec<u32>> = f32_reference["input_ids"]
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
    let want = reference["loss"].as_f64().unwrap();
    assert!(
        (value - want).abs() <= loss_tolerance,
        "{name} ({precision}): loss {value} vs transformers {want}"
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
        let want = reference["grad_norms"][&param]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {param} not in fixture"));
        assert!(
            (got - want).abs() <= grad_tolerance * want.max(1.0),
            "{name} ({precision}): grad norm of {param}: {got} vs transformers {want}"
        );
        total_sq += got * got;
        checked += 1;
    });
    assert_eq!(
        checked,
        reference["grad_norms"].as_object().unwrap().len(),
        "{name}: every parameter checked"
    );
    let total = total_sq.sqrt();
    let want = reference["total_grad_norm"].as_f64().unwrap();
    assert!(
        (total - want).abs() <= grad_tolerance * want.max(1.0),
        "{name} ({precision}): total grad norm {total} vs {want}"
    );
    if precision == Precision::Bf16 {
        // The comparison must be able to tell bf16 products from f32 ones.
        let effect =
            (f32_reference["loss"].as_f64().unwrap() - reference["loss"].as_f64().unwrap()).abs();
        assert!(
            effect > 4.0 * loss_tolerance,
            "{name}: bf16 moves the loss by only {effect:.1e}, too little for a {loss_tolerance:.0e} tolerance to test"
        );
        println!("{name}: bf16 products move transformers' loss by {effect:.1e}");
    }
    println!(
        "{name} ({precision}): loss {value:.6} (Δ {:.1e}), total grad norm {total:.6} (Δ {:.1e})",
        (value - reference["loss"].as_f64().unwrap()).abs(),
        (total - want).abs()
    );
}
