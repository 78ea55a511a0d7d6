//! Text generation with the KV cache: greedy (the same tokens as transformers'
//! `generate(do_sample=False)`) or sampled with temperature and nucleus (top-p) filtering.

use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::error::{ModelError, Result};
use crate::model::Llama;
use crate::score::{read_back, token_tensor};

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Generates up to `config.max_new_tokens` tokens after `prompt`, stopping early at any id of
/// `stop_ids` (which is included in the output) or when `on_token` returns `false`.
/// Returns the new tokens.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    config: &GenerationConfig,
    stop_ids: &[u32],
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ModelError::Request("empty prompt".into()));
    }
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= model.vocab_size()) {
        return Err(ModelError::Request(format!(
            "prompt token id {bad} is outside the vocabulary"
        )));
    }
    if !(config.temperature >= 0.0 && config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(ModelError::Request(
            "temperature must be ≥ 0 and top_p in (0, 1]".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cache = model.new_cache();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < config.max_new_tokens {
        let logits: Vec<f32> = crate::pool::on_awake_pool(|| {
            let hidden = model.forward_hidden(token_tensor(&input, device), Some(&mut cache));
            let [b, t, h] = hidden.dims();
            let logits = model.logits(hidden.slice([0..b, t - 1..t, 0..h]));
            read_back(logits.into_data())
        })?;
        let next = if config.temperature == 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, config.temperature, config.top_p, &mut rng)
        };
        out.push(next);
        if !on_token(next)? || stop_ids.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Index of the largest logit; the first one on ties, as `torch.argmax` does.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples from `softmax(logits / temperature)` restricted to the top-p nucleus.
pub fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut);
    let mut r = rng.random::<f64>() * kept.min(1.0);
    for (id, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *id;
        }
    }
    probs.last().map_or(0, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(sample(&[0.1, 2.0, 1.9, -1.0], 1.0, 1e-6, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut rng = StdRng::seed_from_u64(7);
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let ones = (0..4000)
            .filter(|_| sample(&logits, 1.0, 1.0, &mut rng) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }
}
