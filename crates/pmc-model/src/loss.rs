//! The causal language-modelling loss, as `LlamaForCausalLM(labels=input_ids)` computes it:
//! the mean cross-entropy of every token after the first, predicted from the ones before.

use burn::module::Param;
use burn::prelude::*;

use crate::model::{Llama, Precision, cast_to};

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

/// Rows of logits [`fused_linear_cross_entropy`] holds at once: 256 rows of SmolLM2's 49,152
/// logits are 50 MB, where a whole micro-batch of 2 × 512 tokens would be 200 MB, with as
/// much again for each intermediate an autodiff graph would keep.
pub const LOGIT_ROWS_PER_CHUNK: usize = 256;

/// What [`fused_linear_cross_entropy`] computes.
pub struct LinearCrossEntropy {
    /// `Σ −log p(target)` over the rows that have a target.
    pub nll_sum: f64,
    /// The gradient of `scale · nll_sum` with respect to the hidden states, `[rows, hidden]`.
    pub hidden_grad: Tensor<2>,
    /// The same with respect to the head `[vocab, hidden]`, when asked for.
    pub head_grad: Option<Tensor<2>>,
}

/// The cross-entropy of `targets` under the logits `hidden @ head.T` and its gradients,
/// without the logits of all rows ever existing at once (Liger-Kernel's fused linear
/// cross-entropy): [`LOGIT_ROWS_PER_CHUNK`] rows at a time, the logits are computed, turned
/// in place into their own gradient `scale · (softmax − onehot)` by one parallel pass per
/// row, and multiplied back into the hidden states' and the head's gradients.
///
/// `hidden` `[rows, hidden]` and `head` `[vocab, hidden]` carry no graph; `targets[i]` is
/// row `i`'s target token, `None` where the row is not a target (its gradient is zero). The
/// products run in `precision` with the casts autodiff would make around them (bf16
/// operands, bf16-rounded outputs, gradients rounded to bf16 before their products), so the
/// result is what back-propagating [`next_token_loss`] through the head computes.
pub fn fused_linear_cross_entropy(
    hidden: Tensor<2>,
    head: Tensor<2>,
    targets: &[Option<u32>],
    scale: f32,
    precision: Precision,
    head_gradient: bool,
) -> LinearCrossEntropy {
    let [rows, _] = hidden.dims();
    let vocab = head.dims()[0];
    assert_eq!(targets.len(), rows, "one target (or none) per row");
    let device = hidden.device();
    let product = precision.dtype();
    let head = cast_to(head, product);
    let mut nll_sum = 0.0;
    let mut hidden_grads = Vec::with_capacity(rows.div_ceil(LOGIT_ROWS_PER_CHUNK));
    let mut head_grad: Option<Tensor<2>> = None;
    for first in (0..rows).step_by(LOGIT_ROWS_PER_CHUNK) {
        let chunk = first..(first + LOGIT_ROWS_PER_CHUNK).min(rows);
        let n = chunk.len();
        let x = cast_to(hidden.clone().slice_dim(0, chunk.clone()), product);
        let logits = cast_to(
            x.clone().matmul(head.clone().transpose()),
            burn::tensor::DType::F32,
        );
        let mut values = logits
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 logits");
        nll_sum += crate::softmax::cross_entropy_rows(&mut values, vocab, &targets[chunk], scale);
        let grad = cast_to(
            Tensor::<2>::from_data(TensorData::new(values, [n, vocab]), &device),
            product,
        );
        hidden_grads.push(cast_to(
            grad.clone().matmul(head.clone()),
            burn::tensor::DType::F32,
        ));
        if head_gradient {
            let part = cast_to(grad.transpose().matmul(x), burn::tensor::DType::F32);
            head_grad = Some(match head_grad {
                Some(sum) => sum + part,
                None => part,
            });
        }
    }
    LinearCrossEntropy {
        nll_sum,
        hidden_grad: Tensor::cat(hidden_grads, 0),
        head_grad,
    }
}

/// Row `i`'s target of the next-token loss over `tokens` `[batch, seq]` (the token after
/// each of the first `seq − 1` positions), `None` where `target_mask` says it is not one.
fn next_token_targets(tokens: Tensor<2, Int>, target_mask: Option<Tensor<2>>) -> Vec<Option<u32>> {
    let [b, t] = tokens.dims();
    let ids = tokens
        .inner()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("token ids");
    let mask = target_mask.map(|m| {
        m.inner()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("a float mask")
    });
    (0..b)
        .flat_map(|row| (1..t).map(move |j| row * t + j))
        .map(|at| {
            let wanted = mask.as_ref().is_none_or(|m| m[at] != 0.0);
            wanted.then_some(ids[at] as u32)
        })
        .collect()
}

/// The loss of a backward pass through [`head_loss_backward`].
pub struct HeadBackward {
    /// The mean next-token loss (as [`next_token_loss`] gives it).
    pub loss: f64,
    /// The gradients of the graph behind `normed` (everything below the head).
    pub grads: burn::tensor::Gradients,
    /// The head's gradient, when the head is trainable.
    pub head_grad: Option<Tensor<2>>,
}

/// [`next_token_loss`] of `tokens` from the final normed hidden states `normed`
/// `[batch, seq − 1, hidden]` (an autodiff tensor) and `head`, back-propagated: the LM head
/// and the cross-entropy by [`fused_linear_cross_entropy`], then the gradient of the hidden
/// states through the graph below them. Equal to `next_token_loss(logits, ..).backward()`
/// but for rounding, with a fraction of its memory.
pub fn head_loss_backward(
    normed: Tensor<3>,
    head: &Param<Tensor<2>>,
    precision: Precision,
    tokens: Tensor<2, Int>,
    target_mask: Option<Tensor<2>>,
) -> HeadBackward {
    let [b, t, h] = normed.dims();
    let targets = next_token_targets(tokens, target_mask);
    let count = targets.iter().filter(|t| t.is_some()).count();
    // As next_token_loss: the mean over targets, a batch without any counting as one.
    let scale = 1.0 / count.max(1) as f32;
    let weight = head.val();
    let fused = fused_linear_cross_entropy(
        normed.clone().inner().reshape([b * t, h]),
        weight.clone().inner(),
        &targets,
        scale,
        precision,
        weight.is_require_grad(),
    );
    // d(loss)/d(normed) is known: Σ normed ⊙ grad has exactly that gradient.
    // On `normed`'s own device: a gradient-checkpointing device must see the same strategy
    // on both operands (the copy is small: one row per token).
    let upstream = Tensor::<3>::from_data(
        fused.hidden_grad.reshape([b, t, h]).into_data(),
        &normed.device(),
    );
    let grads = (normed * upstream).sum().backward();
    HeadBackward {
        loss: fused.nll_sum * scale as f64,
        grads,
        head_grad: fused.head_grad,
    }
}

/// The loss of a micro-batch (masked as [`masked_causal_lm_loss`] when `target_mask` is
/// given) and the gradient of every trainable parameter of `model`, the LM head and the
/// cross-entropy fused ([`head_loss_backward`]); the tied embedding's two contributions (the
/// lookup and the head) summed.
pub fn causal_lm_gradients(
    model: &Llama,
    tokens: Tensor<2, Int>,
    target_mask: Option<Tensor<2>>,
) -> (f64, burn::optim::GradientsParams) {
    let hidden = model.forward_layers(loss_inputs(tokens.clone()), None);
    let head = model.head_unit();
    let out = head.loss_backward(hidden, tokens, target_mask);
    let mut grads = burn::optim::GradientsParams::from_grads(out.grads, model);
    if let Some(head_grad) = out.head_grad {
        let id = head.weight.id;
        let total = match grads.remove::<2>(id) {
            Some(lookup) => lookup + head_grad,
            None => head_grad,
        };
        grads.register(id, total);
    }
    (out.loss, grads)
}
