//! One-row f32 products `x @ w.T` — every projection of a decoding step — against f64 dot
//! products of the same numbers. The patched burn-flex (vendor/burn-flex) splits them by
//! weight rows across the pool and, with AVX-512, multiplies them with its own kernel:
//! these shapes cover its 64-value steps, 16-value steps and masked tails, a single part and
//! several, sliced weights (rows further apart than `k`), and products it leaves to gemm
//! (a row-major `[k, n]` right-hand side, two rows).

use burn::prelude::*;
use burn::tensor::Distribution;

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

/// `out[r][j] = Σᵢ x[r][i] · w[j][i]` in f64.
fn reference(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            out[r * n + j] = (0..k)
                .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                .sum();
        }
    }
    out
}

fn assert_close(got: &[f32], expected: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    // Each output sums k products of unit normals, so its rounding error grows like √k.
    let tolerance = 1e-5 * (k as f64).sqrt().max(1.0) * 4.0;
    for (j, (&g, &e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g as f64 - e).abs() <= tolerance * e.abs().max(1.0),
            "{what}: output {j} is {g}, expected {e}"
        );
    }
}

#[test]
fn one_row_products_equal_f64_dot_products() {
    let device = Device::flex();
    println!("AVX-512F: {}", std::is_x86_feature_detected!("avx512f"));
    // (n, k): a tail of 1, of 15, one 16-value step plus a tail, 64-value steps only, steps
    // plus a tail, a decoding layer's shapes (several parts), a one-column product, and
    // sizes below one 16-lane vector.
    for (n, k) in [
        (3, 1),
        (40, 15),
        (33, 17),
        (130, 64),
        (70, 100),
        (1536, 576),
        (576, 1536),
        (1, 300),
        (5, 7),
    ] {
        let x = Tensor::<2>::random([1, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        let (xs, ws) = (values(x.clone()), values(w.clone()));
        let expected = reference(&xs, &ws, 1, n, k);
        let got = values(x.clone().matmul(w.clone().transpose()));
        assert_close(&got, &expected, k, &format!("[1, {k}] @ [{n}, {k}]ᵀ"));

        // The same weight as a row-major [k, n] right-hand side (gemm's path).
        let row_major = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
        let got = values(x.clone().matmul(row_major));
        assert_close(&got, &expected, k, &format!("[1, {k}] @ [{k}, {n}]"));

        // Two rows: gemm's path, each row as the one-row product.
        let x2 = Tensor::cat(vec![x.clone(), x.clone() * 2.0], 0);
        let two = reference(&values(x2.clone()), &ws, 2, n, k);
        let got = values(x2.matmul(w.clone().transpose()));
        assert_close(&got, &two, k, &format!("[2, {k}] @ [{n}, {k}]ᵀ"));
    }
    // A weight sliced out of a wider one: rows 2k apart, starting off the storage's start.
    let (n, k) = (700, 96);
    let wide = Tensor::<2>::random([n, 3 * k], Distribution::Normal(0.0, 1.0), &device);
    let w = wide.slice([0..n, k..2 * k]);
    let x = Tensor::<2>::random([1, k], Distribution::Normal(0.0, 1.0), &device);
    let expected = reference(&values(x.clone()), &values(w.clone()), 1, n, k);
    let got = values(x.matmul(w.transpose()));
    assert_close(&got, &expected, k, "a sliced weight");
}

/// A batched decoding step multiplies a few rows (one per sequence) by each weight: products
/// small enough that gemm would run them on one thread are split by weight rows across the
/// pool, each part one gemm call on all the rows. Checked on decoding shapes, rows taken
/// out of a wider activation (rows further apart than `k`), a sliced weight, and a product
/// just large enough to stay with gemm's own parallel path.
#[test]
fn few_row_products_equal_f64_dot_products() {
    let device = Device::flex();
    for (m, n, k) in [
        (2, 1536, 576),
        (4, 576, 1536),
        (5, 130, 64),
        (16, 1536, 576),
        (3, 40, 15),
        (8, 2048, 2048),
    ] {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        let expected = reference(&values(x.clone()), &values(w.clone()), m, n, k);
        let got = values(x.matmul(w.transpose()));
        assert_close(&got, &expected, k, &format!("[{m}, {k}] @ [{n}, {k}]ᵀ"));
    }
    let (m, n, k) = (4, 700, 96);
    let wide_x = Tensor::<2>::random([m, 2 * k], Distribution::Normal(0.0, 1.0), &device);
    let x = wide_x.slice([0..m, k..2 * k]);
    let wide_w = Tensor::<2>::random([n, 3 * k], Distribution::Normal(0.0, 1.0), &device);
    let w = wide_w.slice([0..n, k..2 * k]);
    let expected = reference(&values(x.clone()), &values(w.clone()), m, n, k);
    let got = values(x.matmul(w.transpose()));
    assert_close(&got, &expected, k, "sliced rows and a sliced weight");
}
