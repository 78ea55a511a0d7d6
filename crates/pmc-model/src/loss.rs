//! The causal language-modelling loss, as `LlamaForCausalLM(labels=input_ids)` computes it:
//! the mean cross-entropy of every token after the first, predicted from the ones before.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::model::Llama;

/// Mean next-token cross-entropy over a batch `[batch, seq]` of token ids (every sequence
/// contributes its `seq - 1` predictions). Differentiable on an autodiff device.
pub fn causal_lm_loss(model: &Llama, tokens: Tensor<2, Int>) -> Tensor<1> {
    let [b, t] = tokens.dims();
    assert!(t >= 2, "the loss needs sequences of at least two tokens");
    let inputs = tokens.clone().slice([0..b, 0..t - 1]);
    let targets = tokens.slice([0..b, 1..t]);
    let logits = model.forward(inputs, None);
    let vocab = logits.dims()[2];
    let logp = log_softmax(logits.reshape([b * (t - 1), vocab]), 1);
    let picked = logp.gather(1, targets.reshape([b * (t - 1), 1]));
    picked.mean().neg()
}

/// Mean next-token cross-entropy over the positions where `target_mask` `[batch, seq]` is 1
/// (as transformers with `labels = -100` elsewhere): `target_mask[i, j]` says whether token
/// `j` of row `i` is a target, i.e. is predicted from the tokens before it. Used for
/// instruction tuning (loss on the response only) and padded batches.
pub fn masked_causal_lm_loss(
    model: &Llama,
    tokens: Tensor<2, Int>,
    target_mask: Tensor<2>,
) -> Tensor<1> {
    let [b, t] = tokens.dims();
    assert!(t >= 2, "the loss needs sequences of at least two tokens");
    let inputs = tokens.clone().slice([0..b, 0..t - 1]);
    let targets = tokens.slice([0..b, 1..t]);
    let mask = target_mask.slice([0..b, 1..t]).reshape([b * (t - 1)]);
    let logits = model.forward(inputs, None);
    let vocab = logits.dims()[2];
    let logp = log_softmax(logits.reshape([b * (t - 1), vocab]), 1);
    let picked = logp
        .gather(1, targets.reshape([b * (t - 1), 1]))
        .reshape([b * (t - 1)]);
    let count = mask.clone().sum().clamp_min(1.0);
    (picked * mask).sum().neg() / count
}
