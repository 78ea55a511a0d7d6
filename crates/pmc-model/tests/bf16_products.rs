//! bf16 matrix products (what `--precision bf16` multiplies in) against f32 products of the
//! same values. On a CPU with AVX-512 BF16 they run the `VDPBF16PS` kernel of the patched
//! burn-flex (vendor/burn-flex), elsewhere flex's widening path: both must give the f32
//! product rounded to bf16, for every operand layout the forward and backward passes use
//! (a transposed weight, a transposed gradient) and for sizes off the kernel's tiles.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

fn normal(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// `[rows, cols]`, stored row-major or as the transposed view of a `[cols, rows]` tensor.
fn operand(rows: usize, cols: usize, transposed: bool, device: &Device) -> Tensor<2> {
    if transposed {
        normal([cols, rows], device).transpose()
    } else {
        normal([rows, cols], device)
    }
}

#[test]
fn bf16_products_equal_f32_products_rounded_to_bf16() {
    let device = Device::flex();
    println!(
        "AVX-512 BF16 on this CPU: {}",
        std::is_x86_feature_detected!("avx512bf16")
    );
    // (m, k, n): tiles of 6 × 32 with remainders, an odd k, k past one 512-element pass,
    // a single row, a single column.
    for (m, k, n) in [
        (37, 65, 70),
        (12, 2, 64),
        (50, 1100, 33),
        (1, 7, 5),
        (9, 300, 1),
    ] {
        for (lhs_t, rhs_t) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = operand(m, k, lhs_t, &device).cast(DType::BF16);
            let b = operand(k, n, rhs_t, &device).cast(DType::BF16);
            let want = a
                .clone()
                .cast(DType::F32)
                .matmul(b.clone().cast(DType::F32));
            let got = a.matmul(b).cast(DType::F32);
            assert_eq!(got.dims(), [m, n]);
            // bf16 keeps 8 significant bits: the result may be off by half a unit in the
            // last place (|x| / 256), and the sums' order differs from the f32 product's.
            let excess = ((got - want.clone()).abs() - want.abs() / 256.0 - 1e-3)
                .max()
                .into_scalar::<f32>();
            assert!(
                excess <= 0.0,
                "{m}×{k}×{n} (lhs transposed {lhs_t}, rhs transposed {rhs_t}): off by {excess} beyond bf16 rounding"
            );
        }
    }
}
