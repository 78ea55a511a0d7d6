//! Continuous batching: one decoding step for several sequences of different lengths
//! (`Llama::decode_rows`) gives each the logits it gets alone, and leaves each cache as a
//! single-sequence step would — on every fixture layout (GQA with tied embeddings, LLaMA 3
//! rope scaling, biases, dynamic NTK) and with quantized weights.

mod common;

use common::{FIXTURES, fixture};
use pmc_model::burn::prelude::*;
use pmc_model::{KvCache, Llama, LoadOptions, QuantKind, load_model};

fn tokens(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let n = ids.len();
    Tensor::from_data(TensorData::new(ids, [1, n]), device)
}

fn last_logits(model: &Llama, ids: &[u32], cache: &mut KvCache, device: &Device) -> Vec<f32> {
    let logits = model.forward(tokens(ids, device), Some(cache));
    let [_, t, v] = logits.dims();
    logits
        .slice([0..1, t - 1..t, 0..v])
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Prompts of 1, 5 and 11 tokens are prefilled one by one, then three decoding steps run
/// batched; every row must match the same sequence decoded alone.
fn check(model: &Llama, vocab: usize, device: &Device, what: &str) {
    let prompts: Vec<Vec<u32>> = [1usize, 5, 11]
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            (0..n)
                .map(|i| ((7 * i + 3 * s + 1) % vocab) as u32)
                .collect()
        })
        .collect();
    let mut alone: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    for (prompt, cache) in prompts.iter().zip(&mut alone) {
        last_logits(model, prompt, cache, device);
    }
    let mut batched = alone.clone();
    for step in 0..3u32 {
        let next: Vec<u32> = (0..prompts.len() as u32)
            .map(|s| (5 * s + 2 * step + 1) % vocab as u32)
            .collect();
        let rows: Vec<f32> = model
            .decode_rows(&next, &mut batched, device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (s, (&token, cache)) in next.iter().zip(&mut alone).enumerate() {
            let expected = last_logits(model, &[token], cache, device);
            let got = &rows[s * vocab..(s + 1) * vocab];
            let worst = expected
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{what}: step {step}, sequence {s}: logits differ by {worst}"
            );
            assert_eq!(batched[s].len(), cache.len(), "{what}: cache length");
        }
    }
}

#[test]
fn a_batched_step_equals_each_sequence_alone() {
    let device = Device::flex();
    for name in FIXTURES {
        let loaded = load_model(&fixture(name), &LoadOptions::default(), &device).unwrap();
        check(&loaded.model, loaded.config.vocab_size, &device, name);
    }
}

#[test]
fn a_batched_step_equals_each_sequence_alone_with_quantized_weights() {
    let device = Device::flex();
    let options = LoadOptions {
        quantize: Some(QuantKind::Q8_0),
        ..Default::default()
    };
    let loaded = load_model(&fixture("gqa_tied"), &options, &device).unwrap();
    check(
        &loaded.model,
        loaded.config.vocab_size,
        &device,
        "gqa_tied q8_0",
    );
}
