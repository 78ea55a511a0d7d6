//! The fused LM head + cross-entropy (`loss::head_loss_backward`, what the trainers use)
//! against back-propagating `next_token_loss` through the head's logits (what the parity
//! tests check against transformers): the same loss and the same gradients of the hidden
//! states, the head and the final norm, with and without a target mask, across several
//! chunks of rows, in f32 and with bf16 products.

use pmc_model::burn::module::Param;
use pmc_model::burn::prelude::*;
use pmc_model::loss::{LOGIT_ROWS_PER_CHUNK, head_loss_backward};
use pmc_model::model::head_logits;
use pmc_model::{Precision, RmsNorm, next_token_loss};

fn random(shape: [usize; 2], seed: u64, device: &Device) -> Tensor<2> {
    let mut state = seed;
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.inner()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// max |a − b| over max |b|.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    worst / scale
}

fn check(precision: Precision, masked: bool, tolerance: f32) {
    let device = Device::flex().autodiff();
    let (batch, seq, hidden, vocab) = (3, 120, 24, 301);
    let rows = batch * (seq - 1);
    assert!(rows > LOGIT_ROWS_PER_CHUNK, "several chunks");
    let x = random([rows, hidden], 1, &device)
        .reshape([batch, seq - 1, hidden])
        .require_grad();
    let head = Param::from_tensor(random([vocab, hidden], 2, &device));
    let norm = RmsNorm {
        weight: Param::from_tensor(random([1, hidden], 3, &device).reshape([hidden]) + 1.0),
        eps: 1e-5,
    };
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7919) % vocab) as i64)
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let mask = masked.then(|| {
        let m: Vec<f32> = (0..batch * seq)
            .map(|i| (i % 3 != 0) as u8 as f32)
            .collect();
        Tensor::<2>::from_data(TensorData::new(m, [batch, seq]), &device)
    });

    let logits = head_logits(&norm, &head, precision, x.clone());
    let loss = next_token_loss(logits, tokens.clone(), mask.clone());
    let want_loss = loss.clone().into_scalar::<f32>() as f64;
    let want = loss.backward();

    let fused = head_loss_backward(norm.forward(x.clone()), &head, precision, tokens, mask);
    let what = format!("{precision}, masked {masked}");
    assert!(
        (fused.loss - want_loss).abs() <= 1e-6 * want_loss.abs(),
        "{what}: loss {} vs {want_loss}",
        fused.loss
    );
    let pairs = [
        (
            "hidden",
            values(x.grad(&fused.grads).unwrap()),
            values(x.grad(&want).unwrap()),
        ),
        (
            "head",
            values(fused.head_grad.clone().unwrap()),
            values(head.val().grad(&want).unwrap()),
        ),
        (
            "norm",
            values(norm.weight.val().grad(&fused.grads).unwrap()),
            values(norm.weight.val().grad(&want).unwrap()),
        ),
    ];
    for (name, got, expected) in pairs {
        let d = relative_difference(&got, &expected);
        println!("{what}: {name} gradient, max relative difference {d:.2e}");
        assert!(d <= tolerance, "{what}: {name} gradient differs by {d:e}");
    }
}

#[test]
fn fused_head_loss_equals_backpropagating_the_logits() {
    for masked in [false, true] {
        check(Precision::F32, masked, 1e-5);
    }
}

/// bf16 products round each product's output to bf16 (at most half a step, 2⁻⁹ relative).
/// The head's gradient is one such product per chunk of rows, summed in f32, where the
/// unfused backward rounds one product over all rows: with `c` chunks the two differ by at
/// most `(c + 1) · 2⁻⁹` of the largest entry (here c = 2: 5.9e-3); the other gradients see
/// one rounding on each side, flipped at most by a last-bit difference before it (2⁻⁸).
#[test]
fn fused_head_loss_keeps_bf16_products() {
    let chunks = (3 * 119usize).div_ceil(LOGIT_ROWS_PER_CHUNK) as f32;
    for masked in [false, true] {
        check(Precision::Bf16, masked, (chunks + 1.0) / 512.0);
    }
}

/// A frozen head (LoRA) gets no gradient and costs no product.
#[test]
fn a_frozen_head_gets_no_gradient() {
    let device = Device::flex().autodiff();
    let x = random([2 * 7, 8], 4, &device)
        .reshape([2, 7, 8])
        .require_grad();
    let head = Param::from_tensor(random([11, 8], 5, &device)).set_require_grad(false);
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new((0..16).map(|i| i % 11).collect::<Vec<i64>>(), [2, 8]),
        &device,
    );
    let fused = head_loss_backward(x.clone(), &head, Precision::F32, tokens, None);
    assert!(fused.head_grad.is_none());
    assert!(x.grad(&fused.grads).is_some());
}
