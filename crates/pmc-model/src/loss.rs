//! The causal language-modelling loss, as `LlamaForCausalLM(labels=input_ids)` computes it:
//! the mean cross-entropy of every token after the first, predicted from the ones before.

use burn::prelude::*;

use crate::model::Llama;

/// Mean next-token cross-entropy over a batch `[batch, seq]` of token ids (every sequence
/// contributes its `seq - 1` predictions). Differentiable on an autodiff device.
pub fn causal_lm_loss(model: &Llama, tokens: Tensor<2, Int>) -> Tensor<1> {
    next_token_loss(
        model.forward(loss_inputs(tokens.clone()), None),
        tokens,
        None,
    )
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
    let logits = model.forward(loss_inputs(tokens.clone()), None);
    next_token_loss(logits, tokens, Some(target_mask))
}

/// What the model reads to predict `tokens` `[batch, seq]`: every token but the last.
pub fn loss_inputs(tokens: Tensor<2, Int>) -> Tensor<2, Int> {
    let [b, t] = tokens.dims();
    assert!(t >= 2, "the loss needs sequences of at least two tokens");
    tokens.slice([0..b, 0..t - 1])
}

/// The loss of [`causal_lm_loss`] (no mask) or [`masked_causal_lm_loss`] from the logits of
/// [`loss_inputs`]`(tokens)`, for trainers that run the model in parts.
pub fn next_token_loss(
    logits: Tensor<3>,
    tokens: Tensor<2, Int>,
    target_mask: Option<Tensor<2>>,
) -> Tensor<1> {
    let [b, t] = tokens.dims();
    let targets = tokens.slice([0..b, 1..t]);
    let picked = target_log_probs(logits, targets);
    match target_mask {
        None => picked.mean().neg(),
        Some(mask) => {
            let mask = mask.slice([0..b, 1..t]).reshape([b * (t - 1)]);
            let count = mask.clone().sum().clamp_min(1.0);
            (picked * mask).sum().neg() / count
        }
    }
}

/// `log p(target)` `[batch · seq]` under `logits` `[batch, seq, vocab]`, for `targets`
/// `[batch, seq]`: the target's logit minus the row's log-sum-exp.
///
/// The same value as gathering from `log_softmax`, with fewer passes over the logits (the
/// largest tensor of a training step): log-softmax would subtract the log-sum-exp from every
/// logit and its backward pass would sum the gradient back over every logit.
fn target_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, vocab] = logits.dims();
    let logits = logits.reshape([b * t, vocab]);
    // The max only keeps exp() in range; detached, it adds nothing to the gradient (its
    // contributions through both terms cancel exactly).
    let max = logits.clone().detach().max_dim(1);
    let log_sum_exp = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let picked = logits.gather(1, targets.reshape([b * t, 1]));
    (picked - log_sum_exp).reshape([b * t])
}
