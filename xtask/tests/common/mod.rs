//! Helpers shared by the end-to-end tests of sharded runs.

use std::path::Path;

/// Every weight of the HF model in `checkpoint`, by HF name.
pub fn weights(checkpoint: &Path) -> Vec<(String, Vec<f32>)> {
    let device = pmc_model::burn::prelude::Device::flex();
    let loaded = pmc_model::load_model(checkpoint, &Default::default(), &device).unwrap();
    loaded
        .model
        .named_weights()
        .into_iter()
        .map(|w| {
            let v = w
                .value
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            (w.name, v)
        })
        .collect()
}

/// Asserts that the models in checkpoints `got` and `want` have the same weights to 1e-5
/// (relative, with 1 added to the scale); returns the largest difference.
pub fn assert_same_weights(what: &str, got: &Path, want: &Path) -> f32 {
    let (got, want) = (weights(got), weights(want));
    assert_eq!(got.len(), want.len(), "{what}: tensors");
    let mut worst = 0f32;
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}: {name}: {x} vs {y}"
            );
        }
    }
    worst
}
