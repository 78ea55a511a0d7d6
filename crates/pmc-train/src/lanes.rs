//! How many micro-batches to compute side by side when the user does not say
//! (`TrainConfig::parallel_micro_batches`). The result is bit-identical for any number, so
//! the only questions are speed and memory: one lane per core keeps every core busy through
//! the element-wise work burn's CPU backend runs on the calling thread, and each lane holds
//! one micro-batch's activations.

use pmc_model::LlamaConfig;

use crate::config::TrainConfig;

/// The choice and why, for the run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Lanes {
    /// Micro-batches computed at once.
    pub count: usize,
    /// One line saying what bounded it.
    pub reason: String,
}

/// Bytes of activations the autodiff graph keeps for one micro-batch of `micro_batch`
/// sequences of `seq_len` tokens: per token and layer, about ten hidden-sized tensors (the
/// residual stream, both norms' inputs and outputs, queries, attention output, projections'
/// outputs), the keys and values, five intermediate-sized ones (gate, up, SiLU and its
/// product, and the product's input to `down`) and two rows of attention scores per head
/// (scores and probabilities), all f32. On SmolLM2-135M at 2 × 512 tokens this gives 2.8 GB;
/// measured: 7.75 GB peak RSS for two lanes beside 2.2 GB of weights, gradients and AdamW
/// moments.
pub fn activation_bytes(model: &LlamaConfig, micro_batch: usize, seq_len: usize) -> u64 {
    let kv = model.num_key_value_heads * model.head_dim;
    let per_token_layer = 10 * model.hidden_size
        + 2 * kv
        + 5 * model.intermediate_size
        + 2 * model.num_attention_heads * seq_len;
    (micro_batch * seq_len * model.num_hidden_layers * per_token_layer * 4) as u64
}

/// Memory the kernel says can still be given to this process (`MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One lane per core, no more than the micro-batches of a step, and no more than the
/// activations of which fit in half the memory available now.
pub fn choose(model: &LlamaConfig, train: &TrainConfig) -> Lanes {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    choose_with(model, train, cores, available_memory())
}

fn choose_with(
    model: &LlamaConfig,
    train: &TrainConfig,
    cores: usize,
    memory: Option<u64>,
) -> Lanes {
    let accumulation = (train.global_batch / train.micro_batch.max(1)).max(1);
    let per_lane = activation_bytes(model, train.micro_batch, train.seq_len);
    let fit = memory.map_or(usize::MAX, |m| ((m / 2) / per_lane.max(1)).max(1) as usize);
    let count = cores.min(accumulation).min(fit).max(1);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let reason = if count == fit && fit < cores.min(accumulation) {
        format!(
            "{count} micro-batch(es) side by side: each keeps ~{:.1} GiB of activations and half the available {:.1} GiB holds {fit} (a smaller --micro-batch allows more)",
            gib(per_lane),
            gib(memory.unwrap_or(0))
        )
    } else if count == accumulation && accumulation < cores {
        format!(
            "{count} micro-batch(es) side by side: all of a step's ({} of {} sequences; {cores} cores)",
            train.global_batch / accumulation,
            train.global_batch
        )
    } else {
        format!(
            "{count} micro-batches side by side, one per core (~{:.1} GiB of activations each)",
            gib(per_lane)
        )
    };
    Lanes { count, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig::from_json(
            &serde_json::json!({"vocab_size": 49152, "hidden_size": 576,
                "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5, "tie_word_embeddings": true}),
            std::path::Path::new("smollm2"),
        )
        .unwrap()
    }

    fn train(micro_batch: usize, global_batch: usize) -> TrainConfig {
        TrainConfig {
            micro_batch,
            global_batch,
            ..crate::run::default_train_config(512)
        }
    }

    #[test]
    fn the_estimate_matches_the_measured_smollm2_activations() {
        let gb = activation_bytes(&smollm2(), 2, 512) as f64 / 1e9;
        assert!((2.5..3.1).contains(&gb), "{gb} GB");
    }

    #[test]
    fn one_lane_per_core_within_the_step_and_the_memory() {
        const GIB: u64 = 1 << 30;
        let m = smollm2();
        assert_eq!(choose_with(&m, &train(2, 4), 2, Some(20 * GIB)).count, 2);
        assert_eq!(choose_with(&m, &train(2, 4), 8, Some(20 * GIB)).count, 2);
        assert_eq!(choose_with(&m, &train(4, 4), 2, Some(20 * GIB)).count, 1);
        let tight = choose_with(&m, &train(2, 8), 2, Some(4 * GIB));
        assert_eq!(tight.count, 1);
        assert!(tight.reason.contains("--micro-batch"), "{}", tight.reason);
        assert_eq!(choose_with(&m, &train(2, 8), 4, None).count, 4);
    }
}
