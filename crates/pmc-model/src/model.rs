//! The LLaMA decoder, top to bottom: token embedding → N × (RMSNorm → attention with RoPE and
//! grouped-query heads → residual → RMSNorm → SwiGLU MLP → residual) → RMSNorm → LM head.
//!
//! Weights keep HF's layout (a projection's weight is `[out, in]`), so checkpoints and LoRA
//! adapters map one to one onto the fields. Weights may be held in bf16/f16 to save memory;
//! activations are always f32, and a low-precision weight is widened one matrix at a time when
//! it is used.

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{silu, softmax};

use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::quant::{QuantMatrix, QuantizedWeights};
use crate::rope::{Rope, apply_rope};

/// The dtype all activations are computed in.
const COMPUTE_DTYPE: DType = DType::F32;

/// Widens a low-precision weight to the compute dtype; a no-op for f32 weights.
fn widen<const D: usize>(weight: &Param<Tensor<D>>) -> Tensor<D> {
    cast_to(weight.val(), COMPUTE_DTYPE)
}

pub(crate) fn cast_to<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// The dtype the projections (and the LM head) multiply in. Everything else — norms, RoPE,
/// attention, softmax, the loss, the residual stream, LoRA's low-rank products — stays f32,
/// and so do the parameters.
///
/// `Bf16` is mixed precision as `torch.autocast(dtype=torch.bfloat16)` does it for linear
/// layers: each product reads its input and weight rounded to bf16 and its output is rounded
/// to bf16; the f32 weights remain the master copy that the optimizer updates (the gradient
/// flows back through the casts). It pays off on backends with bf16 matrix units; on the
/// CPU, 2-D bf16 products run on AVX-512 BF16 where the CPU has it (vendor/burn-flex) and
/// are widened to f32 elsewhere, which is slower than `F32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products (the default).
    #[default]
    F32,
    /// bf16 products with f32 master weights.
    Bf16,
}

impl Precision {
    /// The dtype of the products.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision {other:?} (f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Rows of input up to which [`side_by_side`] runs its two pieces together.
const MAX_ROWS_SIDE_BY_SIDE: usize = 16;

/// `(a(), b())` for two independent pieces of a layer applied to `x` (the q/k/v
/// projections, gate and up): side by side on rayon's pool for a few rows outside
/// autodiff, one after the other otherwise.
///
/// Decoding multiplies single rows, so each product is a short read of its weights with a
/// synchronisation of the pool at its end; running the independent ones together halves
/// those waits and keeps both cores reading weights while the other branch does its
/// element-wise work (f32 decoding of SmolLM2: 1.05 × in the median of 6 alternating pairs,
/// 0.90–1.11 ×). Products of many rows fill the pool on their own. Under autodiff the pieces
/// stay in order, so the graph and its gradients' summation order do not depend on
/// scheduling (exact resume compares them bit for bit).
fn side_by_side<A: Send, B: Send>(
    x: &Tensor<3>,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    let [batch, tokens, _] = x.dims();
    if batch * tokens <= MAX_ROWS_SIDE_BY_SIDE && !x.device().is_autodiff() {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

/// A linear projection with HF's weight layout `[out_features, in_features]`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Param<Tensor<2>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// A low-rank adapter added to the output (LoRA), when one is attached.
    pub lora: Option<LowRank>,
    /// What the product is computed in (see [`Llama::set_precision`]).
    #[module(skip)]
    pub precision: Precision,
    /// The weight in a block format, multiplied by quantized kernels; `weight` is then an
    /// empty `[out, 0]` stand-in (see [`Llama::attach_quantized`]).
    #[module(skip)]
    pub quantized: Option<Arc<QuantMatrix>>,
}

impl Linear {
    /// `x @ weight.T + bias (+ scale · x @ A.T @ B.T)` over the last dimension of `x`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d_in] = x.dims();
        if let Some(quantized) = &self.quantized {
            let x = x.reshape([b * t, d_in]);
            let y = self.add_bias_and_adapter(quantized.forward(x.clone()), x);
            return y.reshape([b, t, quantized.dims()[0]]);
        }
        let product = self.precision.dtype();
        let w = cast_to(self.weight.val(), product);
        let d_out = w.dims()[0];
        let x = x.reshape([b * t, d_in]);
        // A 2-D product lets the backend read the transposed weight in place (and multiply
        // a decoding step's single row on every core: vendor/burn-flex).
        let y = cast_to(
            cast_to(x.clone(), product).matmul(w.transpose()),
            COMPUTE_DTYPE,
        );
        self.add_bias_and_adapter(y, x).reshape([b, t, d_out])
    }

    /// `y + bias + adapter(x)` for the product `y` of `x` `[rows, in]`.
    fn add_bias_and_adapter(&self, y: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        let y = match &self.bias {
            Some(bias) => y + widen(bias).unsqueeze::<2>(),
            None => y,
        };
        match &self.lora {
            Some(lora) => y + lora.forward(x),
            None => y,
        }
    }
}

/// A LoRA adapter of a [`Linear`]: `scale · (x Aᵀ) Bᵀ`, with HF PEFT's shapes (`lora_A`
/// `[r, in]`, `lora_B` `[out, r]`). The format, targeting and training live in `pmc-peft`.
#[derive(Module, Debug)]
pub struct LowRank {
    /// `lora_A.weight`, `[r, in_features]`.
    pub a: Param<Tensor<2>>,
    /// `lora_B.weight`, `[out_features, r]`.
    pub b: Param<Tensor<2>>,
    /// `lora_alpha / r` (or `/ √r` with rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input while training (on an autodiff device), as PEFT's
    /// `lora_dropout`; never applied in evaluation.
    pub dropout: f64,
    /// Seed of the next dropout mask (see [`Llama::set_dropout_seed`]).
    #[module(skip)]
    pub dropout_seed: u64,
}

impl LowRank {
    /// Builds an adapter whose parameter ids derive from `module` (the HF module name), so
    /// optimizer state saved with a checkpoint finds its parameters again.
    pub fn new(module: &str, a: Tensor<2>, b: Tensor<2>, scale: f64) -> Self {
        LowRank {
            a: named_param(&format!("{module}.lora_A.weight"), a),
            b: named_param(&format!("{module}.lora_B.weight"), b),
            scale,
            dropout: 0.0,
            dropout_seed: 0,
        }
    }

    /// The same adapter with input dropout `p` during training.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// `scale · x Aᵀ Bᵀ` for `x` of `[rows, in_features]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // Training is when the adapter itself is on an autodiff device (the input need not
        // be: it may come from frozen layers and carry no graph).
        let device = self.a.val().device();
        let x = if self.dropout > 0.0 && device.is_autodiff() {
            let dims = x.dims();
            let mask = dropout_mask(self.dropout_seed, dims[0] * dims[1], self.dropout);
            x * Tensor::<2>::from_data(TensorData::new(mask, dims), &device)
        } else {
            x
        };
        x.matmul(widen(&self.a).transpose())
            .matmul(widen(&self.b).transpose())
            * self.scale
    }

    /// `scale · B A`, the update this adapter makes to the weight (`[out, in]`).
    pub fn delta(&self) -> Tensor<2> {
        widen(&self.b).matmul(widen(&self.a)) * self.scale
    }
}

/// An inverted-dropout mask as torch's dropout makes one: each of `n` entries is kept with
/// probability `1 − p` and then holds `1 / (1 − p)`, else 0.
///
/// Drawn from its own SplitMix64 stream rather than the device's generator, so masks depend
/// only on `seed`: threads computing micro-batches side by side cannot draw each other's
/// numbers, and a resumed run draws the same masks. Generated on the host, a few times
/// faster than a random tensor op on the CPU backend.
pub fn dropout_mask(seed: u64, n: usize, p: f64) -> Vec<f32> {
    let keep = 1.0 - p;
    // An entry is kept when a uniform 32-bit number falls below keep · 2³².
    let threshold = (keep * 4_294_967_296.0).round() as u64;
    let kept = (1.0 / keep) as f32;
    let mut state = seed;
    let mut mask = Vec::with_capacity(n);
    while mask.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for half in [z & 0xffff_ffff, z >> 32] {
            if mask.len() < n {
                mask.push(if half < threshold { kept } else { 0.0 });
            }
        }
    }
    mask
}

/// Root-mean-square layer norm: `weight * x / sqrt(mean(x²) + eps)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden_size]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square for numerical stability.
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises over the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms) * widen(&self.weight).unsqueeze::<3>()
    }
}

/// Keys and values of one layer for the positions seen so far.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
}

impl LayerCache {
    /// Appends `[batch, kv_heads, new, head_dim]` keys and values; returns all of them.
    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let k = match self.keys.take() {
            Some(old) => Tensor::cat(vec![old, k], 2),
            None => k,
        };
        let v = match self.values.take() {
            Some(old) => Tensor::cat(vec![old, v], 2),
            None => v,
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        (k, v)
    }
}

/// The KV cache of a whole model: lets decoding and multiple-choice scoring reuse the
/// attention keys and values of a prefix instead of recomputing them.
///
/// Cloning is cheap (tensors are reference-counted) and gives an independent cache, which is
/// how one context is shared by several continuations.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Multi-head causal self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection, `[heads * head_dim, hidden]`.
    pub q_proj: Linear,
    /// Key projection, `[kv_heads * head_dim, hidden]`.
    pub k_proj: Linear,
    /// Value projection, `[kv_heads * head_dim, hidden]`.
    pub v_proj: Linear,
    /// Output projection, `[hidden, heads * head_dim]`.
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Queries `[batch, heads, new, head_dim]`, keys and values `[batch, kv_heads, new,
    /// head_dim]` of `x`, RoPE applied to queries and keys.
    fn project(&self, x: &Tensor<3>, rope: &RopeTables) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let rotated = |proj: &Linear, n: usize| {
            apply_rope(heads(proj.forward(x.clone()), n), &rope.cos, &rope.sin)
        };
        let (q, (k, v)) = side_by_side(
            x,
            || rotated(&self.q_proj, nh),
            || {
                side_by_side(
                    x,
                    || rotated(&self.k_proj, nkv),
                    || heads(self.v_proj.forward(x.clone()), nkv),
                )
            },
        );
        (q, k, v)
    }

    /// The output projection of attention outputs `[batch, heads, new, head_dim]`.
    fn output(&self, out: Tensor<4>) -> Tensor<3> {
        let [b, nh, t, hd] = out.dims();
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, nh * hd]))
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let x_device_is_autodiff = x.device().is_autodiff();
        let (q, k, v) = self.project(&x, rope);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = if x_device_is_autodiff {
            // Under autodiff burn decomposes the fused op anyway; our blocked form skips the
            // masked scores. Scaling the queries rather than the scores touches `t × head_dim`
            // numbers per head instead of `t × s`.
            causal_attention(q * scale, k, v, rope.mask.as_ref(), self.num_kv_heads)
        } else {
            fused_causal_attention(q, k, v, scale)
        };
        self.output(out)
    }

    /// One new token for each of `batch` independent sequences (`x`: `[batch, 1, hidden]`,
    /// row `i` continuing `caches[i]`). The projections run on all rows at once; attention
    /// runs per row, since each sequence has its own length and keys.
    fn forward_rows(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        caches: &mut [&mut LayerCache],
    ) -> Tensor<3> {
        let (q, k, v) = self.project(&x, rope);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let row = |t: &Tensor<4>, i: usize| t.clone().slice_dim(0, i..i + 1);
        let outs = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| {
                let (k, v) = cache.append(row(&k, i), row(&v, i));
                fused_causal_attention(row(&q, i), k, v, scale)
            })
            .collect();
        self.output(Tensor::cat(outs, 0))
    }
}

/// Query rows per block of [`causal_attention`]: a block attends only to the keys at or
/// before its last row, so the masked upper triangle is mostly never computed. With 512
/// tokens, 4 blocks compute 62.5 % of the scores; smaller blocks save more but make the
/// products too small to run at full speed.
const QUERY_BLOCK: usize = 128;

/// `softmax(q kᵀ + mask) v` per head for already-scaled queries `q` `[batch, heads, new,
/// head_dim]` and keys/values `[batch, kv_heads, total, head_dim]` (the last `new` positions
/// being the queries' own). Returns `[batch, heads, new, head_dim]`.
///
/// Query head `h` reads key/value head `h / groups` (HF's `repeat_kv`): folding the groups
/// into the query rows avoids materialising repeated keys and values. Long inputs are cut
/// into query blocks that skip the keys after them; the skipped scores are the ones the
/// causal mask sets to −∞, whose softmax weight is exactly 0, so the result is the same.
fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<2>>,
    kv_heads: usize,
) -> Tensor<4> {
    let [b, nh, t, hd] = q.dims();
    let total = k.dims()[2];
    let start = total - t;
    let groups = nh / kv_heads;
    let attend = |q: Tensor<4>, rows: std::ops::Range<usize>| {
        let n = rows.len();
        let keys = 0..start + rows.end;
        let s = keys.len();
        let q = q.reshape([b, kv_heads, groups * n, hd]);
        let k = k.clone().slice_dim(2, keys.clone());
        let scores = q.matmul(k.swap_dims(2, 3)).reshape([b, nh, n, s]);
        let scores = match mask {
            Some(mask) => scores + mask.clone().slice([rows, keys.clone()]).unsqueeze::<4>(),
            None => scores,
        };
        let probs = softmax(scores, 3).reshape([b, kv_heads, groups * n, s]);
        probs
            .matmul(v.clone().slice_dim(2, keys))
            .reshape([b, nh, n, hd])
    };
    if mask.is_none() {
        return attend(q, 0..t);
    }
    in_query_blocks(q, attend)
}

/// `attend(query rows, their range)` over blocks of [`QUERY_BLOCK`] query rows (one call
/// for fewer than two blocks), concatenated along the query axis. `attend` gives a block
/// the keys up to its last row only: the later ones are causally masked.
fn in_query_blocks(
    q: Tensor<4>,
    attend: impl Fn(Tensor<4>, std::ops::Range<usize>) -> Tensor<4>,
) -> Tensor<4> {
    let t = q.dims()[2];
    if t < 2 * QUERY_BLOCK {
        return attend(q, 0..t);
    }
    let blocks = (0..t)
        .step_by(QUERY_BLOCK)
        .map(|r0| {
            let rows = r0..(r0 + QUERY_BLOCK).min(t);
            attend(q.clone().slice_dim(2, rows.clone()), rows)
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// `softmax(scale · q kᵀ, causal) v` by the backend's fused attention (flex: one pass per
/// head over tiles of keys, rayon over batch × heads), for inference. Query head `h` reads
/// key/value head `h / groups` inside the kernel, so grouped keys and values are never
/// repeated; with a cache the queries are the last `new` of `total` positions, which is the
/// kernel's causal alignment (`key ≤ query + total − new`). Long inputs go in query blocks
/// given only the keys up to their last row, as in [`causal_attention`]: flex's kernel
/// scores every key of a row and exponentiates the masked ones too, so with 512 tokens the
/// blocks do 62.5 % of its work.
fn fused_causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let options = burn::tensor::ops::AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: true,
    };
    let start = k.dims()[2] - q.dims()[2];
    in_query_blocks(q, |q, rows| {
        let keys = 0..start + rows.end;
        let (k, v) = (
            k.clone().slice_dim(2, keys.clone()),
            v.clone().slice_dim(2, keys),
        );
        burn::tensor::module::attention(q, k, v, None, None, options)
    })
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `[hidden, intermediate]`.
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = side_by_side(
            &x,
            || silu(self.gate_proj.forward(x.clone())),
            || self.up_proj.forward(x.clone()),
        );
        self.down_proj.forward(gate * up)
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

/// HF names of a layer's projections (relative to `model.layers.N.`), in checkpoint order;
/// [`DecoderLayer::projections`] lists the fields in the same order.
const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl DecoderLayer {
    /// The projections, in the order of [`PROJECTIONS`].
    fn projections(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// As [`DecoderLayer::projections`], mutably.
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    /// The layer's output for input `x` (positions as `rope` says), extending `cache` when
    /// given.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        self.around(x, |normed| self.self_attn.forward(normed, rope, cache))
    }

    /// As [`DecoderLayer::forward`] for one new token of each of several sequences, row `i`
    /// of `x` (`[batch, 1, hidden]`) extending `caches[i]` (see [`Llama::decode_rows`]).
    fn forward_rows(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        caches: &mut [&mut LayerCache],
    ) -> Tensor<3> {
        self.around(x, |normed| {
            self.self_attn.forward_rows(normed, rope, caches)
        })
    }

    /// The pre-norm residual block around `attention` (given the normed input), then the
    /// MLP's.
    fn around(&self, x: Tensor<3>, attention: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
        let x = x.clone() + attention(self.input_layernorm.forward(x));
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// The per-call RoPE tables and causal mask, shared by all layers.
pub struct RopeTables {
    /// `[1, 1, new, head_dim]` for one sequence, `[batch, 1, 1, head_dim]` for one token of
    /// each of `batch` sequences: either way they broadcast over `[batch, heads, new,
    /// head_dim]`.
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// Additive `[new, total]` mask (`-inf` above the causal diagonal); `None` for one token.
    mask: Option<Tensor<2>>,
}

impl RopeTables {
    /// The tables of `new` tokens after `start` cached positions.
    pub fn new(rope: &Rope, start: usize, new: usize, device: &Device) -> Self {
        let (cos, sin) = rope.tables(start, new, device);
        let mask = (new > 1).then(|| causal_mask(start, new, device));
        RopeTables {
            cos: cos.unsqueeze(),
            sin: sin.unsqueeze(),
            mask,
        }
    }

    /// The tables of one token at each of `positions`, one per row of a batch.
    pub fn rows(rope: &Rope, positions: &[usize], device: &Device) -> Self {
        let (cos, sin): (Vec<_>, Vec<_>) = positions
            .iter()
            .map(|&position| rope.tables(position, 1, device))
            .unzip();
        let per_row = |t: Vec<Tensor<2>>| {
            let t = Tensor::cat(t, 0);
            let [batch, head_dim] = t.dims();
            t.reshape([batch, 1, 1, head_dim])
        };
        RopeTables {
            cos: per_row(cos),
            sin: per_row(sin),
            mask: None,
        }
    }
}

/// Token embeddings `[batch, seq, hidden]` of `tokens` `[batch, seq]`: the input of layer 0.
pub fn embed(weight: &Param<Tensor<2>>, tokens: Tensor<2, Int>) -> Tensor<3> {
    cast_to(
        burn::tensor::module::embedding(weight.val(), tokens),
        COMPUTE_DTYPE,
    )
}

/// Token embeddings `[batch, seq, hidden]` looked up in a quantized embedding: only the rows
/// of the tokens are widened.
fn embed_quantized(embedding: &QuantMatrix, tokens: Tensor<2, Int>) -> Tensor<3> {
    let [b, t] = tokens.dims();
    let hidden = embedding.dims()[1];
    let device = tokens.device();
    let ids = tokens
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("token ids are integers");
    let mut values = vec![0.0f32; b * t * hidden];
    for (&id, row) in ids.iter().zip(values.chunks_exact_mut(hidden)) {
        embedding.dequantize_row(id as usize, row);
    }
    Tensor::from_data(TensorData::new(values, [b, t, hidden]), &device)
}

/// Logits `[batch, seq, vocab]` of the last layer's output: the final norm, then the LM head
/// (`head`: `lm_head.weight`, or the embedding when tied) multiplied in `precision`.
pub fn head_logits(
    norm: &RmsNorm,
    head: &Param<Tensor<2>>,
    precision: Precision,
    hidden: Tensor<3>,
) -> Tensor<3> {
    lm_head(head, precision, norm.forward(hidden))
}

fn lm_head(head: &Param<Tensor<2>>, precision: Precision, normed: Tensor<3>) -> Tensor<3> {
    Linear {
        weight: head.clone(),
        bias: None,
        lora: None,
        precision,
        quantized: None,
    }
    .forward(normed)
}

/// A trainable parameter whose id derives from its HF name (FNV-1a), so a model loaded
/// from a checkpoint gets the same ids as the model that wrote it, and optimizer state
/// saved alongside matches its parameters on resume.
fn named_param<const D: usize>(name: &str, value: Tensor<D>) -> Param<Tensor<D>> {
    let hash = crate::fnv1a64(name.bytes());
    let param = Param::from_tensor(value);
    let (_, value, mapper) = param.consume();
    Param::from_mapped_value(ParamId::from(hash), value, mapper)
}

/// A LLaMA causal language model (`LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// The decoder stack.
    pub layers: Vec<DecoderLayer>,
    /// The final norm.
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    rope: Rope,
    /// The LM head's [`Precision`] (the projections keep theirs in their [`Linear`]s).
    #[module(skip)]
    head_precision: Precision,
    /// The embedding and the LM head (the same matrix when tied) in a block format, when
    /// the model is quantized (see [`Llama::attach_quantized`]).
    #[module(skip)]
    quantized_embedding: Option<Arc<QuantMatrix>>,
    #[module(skip)]
    quantized_head: Option<Arc<QuantMatrix>>,
}

/// `init(name, shape)` as a named parameter (see [`named_param`]).
pub(crate) fn matrix<E>(
    init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    name: &str,
    shape: [usize; 2],
) -> Result<Param<Tensor<2>>, E> {
    init(name, &shape).map(|t| named_param(name, t))
}

/// A 1-D weight; it travels through `init` as a `[1, n]` row so one callback serves every
/// shape.
fn vector<E>(
    init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    name: &str,
    n: usize,
) -> Result<Param<Tensor<1>>, E> {
    let row = init(name, &[1, n])?;
    // Detached: the reshape must not make the parameter a non-leaf of an autodiff graph.
    Ok(named_param(name, row.reshape([n]).detach()))
}

fn linear<E>(
    init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    name: &str,
    [out, inp]: [usize; 2],
    bias: bool,
) -> Result<Linear, E> {
    Ok(Linear {
        weight: matrix(init, &format!("{name}.weight"), [out, inp])?,
        bias: if bias {
            Some(vector(init, &format!("{name}.bias"), out)?)
        } else {
            None
        },
        lora: None,
        precision: Precision::F32,
        quantized: None,
    })
}

impl RmsNorm {
    /// The norm `{prefix}.weight` of `config`'s hidden size, filled by `init`.
    pub fn build<E>(
        config: &LlamaConfig,
        prefix: &str,
        init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    ) -> Result<Self, E> {
        Ok(RmsNorm {
            weight: vector(init, &format!("{prefix}.weight"), config.hidden_size)?,
            eps: config.rms_norm_eps,
        })
    }
}

impl DecoderLayer {
    /// Layer `index` of `config` with its weights filled by `init(name, shape)` under their HF
    /// names (`model.layers.{index}.…`).
    pub fn build<E>(
        config: &LlamaConfig,
        index: usize,
        init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    ) -> Result<Self, E> {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        let inter = config.intermediate_size;
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let p = format!("model.layers.{index}");
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::build(config, &format!("{p}.input_layernorm"), init)?,
            self_attn: Attention {
                q_proj: linear(init, &format!("{p}.self_attn.q_proj"), [q, h], ab)?,
                k_proj: linear(init, &format!("{p}.self_attn.k_proj"), [kv, h], ab)?,
                v_proj: linear(init, &format!("{p}.self_attn.v_proj"), [kv, h], ab)?,
                o_proj: linear(init, &format!("{p}.self_attn.o_proj"), [h, q], ab)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: RmsNorm::build(
                config,
                &format!("{p}.post_attention_layernorm"),
                init,
            )?,
            mlp: Mlp {
                gate_proj: linear(init, &format!("{p}.mlp.gate_proj"), [inter, h], mb)?,
                up_proj: linear(init, &format!("{p}.mlp.up_proj"), [inter, h], mb)?,
                down_proj: linear(init, &format!("{p}.mlp.down_proj"), [h, inter], mb)?,
            },
        })
    }

    /// Computes the layer's projections in `precision` (see [`Llama::set_precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        for linear in self.projections_mut() {
            linear.precision = precision;
        }
    }

    /// Calls `f` with each of the layer's parameters and its HF name (`{prefix}.…`, prefix
    /// `model.layers.N`), in checkpoint order.
    pub fn visit_weights(&self, prefix: &str, f: &mut impl FnMut(String, WeightRef<'_>)) {
        f(
            format!("{prefix}.input_layernorm.weight"),
            WeightRef::Vector(&self.input_layernorm.weight),
        );
        f(
            format!("{prefix}.post_attention_layernorm.weight"),
            WeightRef::Vector(&self.post_attention_layernorm.weight),
        );
        for (name, lin) in PROJECTIONS.iter().zip(self.projections()) {
            f(
                format!("{prefix}.{name}.weight"),
                WeightRef::Matrix(&lin.weight),
            );
            if let Some(bias) = &lin.bias {
                f(format!("{prefix}.{name}.bias"), WeightRef::Vector(bias));
            }
        }
    }
}

impl Llama {
    /// A model of `config` from its parts, computing in f32 ([`crate::units`] builds them).
    pub(crate) fn from_parts(
        config: &LlamaConfig,
        embed_tokens: Param<Tensor<2>>,
        layers: Vec<DecoderLayer>,
        norm: RmsNorm,
        lm_head: Option<Param<Tensor<2>>>,
    ) -> Self {
        Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(config),
            head_precision: Precision::F32,
            quantized_embedding: None,
            quantized_head: None,
        }
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    /// The model's rotary embedding.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Final hidden states `[batch, seq, hidden]` (after the last norm) of `tokens`
    /// `[batch, seq]`. With a cache, the tokens continue the cached positions and the cache
    /// is extended with them.
    pub fn forward_hidden(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.norm.forward(self.forward_layers(tokens, cache))
    }

    /// The last decoder layer's output `[batch, seq, hidden]` (before the final norm: the head
    /// unit's input) of `tokens` `[batch, seq]`, continuing `cache` as
    /// [`Llama::forward_hidden`] does.
    pub fn forward_layers(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let tables = RopeTables::new(&self.rope, start, t, &tokens.device());
        let mut x = self.embed(tokens);
        match cache {
            Some(cache) => {
                for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, &tables, Some(layer_cache));
                }
                cache.len += t;
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(x, &tables, None);
                }
            }
        }
        x
    }

    /// Token embeddings `[batch, seq, hidden]` of `tokens`, from the quantized embedding when
    /// the model is held quantized.
    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        match &self.quantized_embedding {
            Some(quantized) => embed_quantized(quantized, tokens),
            None => embed(&self.embed_tokens, tokens),
        }
    }

    /// Logits `[batch, vocab]` of one new token for each of several independent sequences:
    /// `tokens[i]` continues `caches[i]`, whatever its length, and extends it. Equal to running
    /// each sequence alone with [`Llama::forward`]; the weights are read once for all rows
    /// (continuous batching of decoding steps).
    pub fn decode_rows(
        &self,
        tokens: &[u32],
        caches: &mut [KvCache],
        device: &Device,
    ) -> Tensor<2> {
        assert_eq!(tokens.len(), caches.len(), "one cache per token");
        let positions: Vec<usize> = caches.iter().map(KvCache::len).collect();
        let tables = RopeTables::rows(&self.rope, &positions, device);
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let batch = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, 1]), device);
        let mut x = self.embed(tokens);
        for (index, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut LayerCache> =
                caches.iter_mut().map(|c| &mut c.layers[index]).collect();
            x = layer.forward_rows(x, &tables, &mut layer_caches);
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        let logits = self.logits(self.norm.forward(x));
        let vocab = logits.dims()[2];
        logits.reshape([batch, vocab])
    }

    /// The LM head's weight `[vocab, hidden]`: `lm_head`, or the embedding when tied.
    pub fn head(&self) -> &Param<Tensor<2>> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits `[batch, seq, vocab]` of hidden states from [`Llama::forward_hidden`].
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = self.head();
        if let Some(quantized) = &self.quantized_head {
            let [b, t, h] = hidden.dims();
            let logits = quantized.forward(hidden.reshape([b * t, h]));
            return logits.reshape([b, t, quantized.dims()[0]]);
        }
        lm_head(head, self.head_precision, hidden)
    }

    /// Puts the matrices a [`crate::quant::Quantizer`] took while this model was built into
    /// place (every projection, the embedding and the LM head). Panics when one is missing:
    /// the model would otherwise compute with an empty stand-in.
    pub fn attach_quantized(&mut self, mut weights: QuantizedWeights) {
        let mut take = |name: &str| {
            weights
                .take(name)
                .unwrap_or_else(|| panic!("{name} was not quantized"))
        };
        self.visit_linears_mut(|name, linear| {
            linear.quantized = Some(take(&format!("{name}.weight")));
        });
        let embedding = take("model.embed_tokens.weight");
        self.quantized_head = Some(match &self.lm_head {
            Some(_) => take("lm_head.weight"),
            None => embedding.clone(),
        });
        self.quantized_embedding = Some(embedding);
    }

    /// Whether the weights are held in a block format (such a model computes on the CPU
    /// only and cannot be saved or trained).
    pub fn is_quantized(&self) -> bool {
        self.quantized_embedding.is_some()
    }

    /// Computes every projection and the LM head in `precision` from now on (the weights
    /// keep their dtype). Check `device.supports_dtype(precision.dtype())` first: a backend
    /// without bf16 arithmetic computes garbage in it.
    pub fn set_precision(&mut self, precision: Precision) {
        for layer in &mut self.layers {
            layer.set_precision(precision);
        }
        self.head_precision = precision;
    }

    /// What the projections are computed in.
    pub fn precision(&self) -> Precision {
        self.head_precision
    }

    /// Seeds the dropout masks of the next forward pass: each LoRA adapter gets its own
    /// stream derived from `seed` and its position in the model. A trainer calls this before
    /// every micro-batch, so masks follow from (run seed, step, micro-batch) alone.
    pub fn set_dropout_seed(&mut self, seed: u64) {
        let mut index = 0u64;
        self.visit_linears_mut(|_, linear| {
            if let Some(lora) = &mut linear.lora {
                index += 1;
                lora.dropout_seed = seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93);
            }
        });
    }

    /// Logits `[batch, seq, vocab]` of `tokens` `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.forward_hidden(tokens, cache))
    }
}

/// `[new, start + new]` additive mask: query `i` (at position `start + i`) sees keys
/// `0..=start + i`.
fn causal_mask(start: usize, new: usize, device: &Device) -> Tensor<2> {
    let total = start + new;
    let data: Vec<f32> = (0..new)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [new, total]), device)
}

/// A weight of the model under its HF name, for saving and inspection.
#[derive(Debug, Clone)]
pub struct NamedWeight {
    /// HF tensor name, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// The shape in the checkpoint (1-D for norms and biases).
    pub shape: Vec<usize>,
    /// The values; 1-D weights are viewed as one row.
    pub value: Tensor<2>,
}

/// A parameter of the model, as stored: a matrix or a vector.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    /// A 2-D weight (embeddings, projections).
    Matrix(&'a Param<Tensor<2>>),
    /// A 1-D weight (norms, biases).
    Vector(&'a Param<Tensor<1>>),
}

impl Llama {
    /// Calls `f` with each projection (`q_proj` … `down_proj`) and its HF module name
    /// (`model.layers.0.self_attn.q_proj`).
    pub fn visit_linears(&self, mut f: impl FnMut(&str, &Linear)) {
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, lin) in PROJECTIONS.iter().zip(layer.projections()) {
                f(&format!("model.layers.{i}.{name}"), lin);
            }
        }
    }

    /// As [`Llama::visit_linears`], mutably, for attaching or removing adapters.
    pub fn visit_linears_mut(&mut self, mut f: impl FnMut(&str, &mut Linear)) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, lin) in PROJECTIONS.iter().zip(layer.projections_mut()) {
                f(&format!("model.layers.{i}.{name}"), lin);
            }
        }
    }

    /// Calls `f` with every parameter and its HF name, in checkpoint order. A tied LM head is
    /// not repeated. The one place that knows how fields map to HF names on the way out.
    pub fn visit_weights(&self, mut f: impl FnMut(String, WeightRef<'_>)) {
        f(
            "model.embed_tokens.weight".into(),
            WeightRef::Matrix(&self.embed_tokens),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_weights(&format!("model.layers.{i}"), &mut f);
        }
        f(
            "model.norm.weight".into(),
            WeightRef::Vector(&self.norm.weight),
        );
        if let Some(head) = &self.lm_head {
            f("lm_head.weight".into(), WeightRef::Matrix(head));
        }
    }

    /// Every weight under its HF name, in checkpoint order, matrices first (vectors are
    /// viewed as one row).
    pub fn named_weights(&self) -> Vec<NamedWeight> {
        let mut matrices = Vec::new();
        let mut vectors = Vec::new();
        self.visit_weights(|name, weight| match weight {
            WeightRef::Matrix(p) => {
                let value = p.val();
                matrices.push(NamedWeight {
                    name,
                    shape: value.dims().to_vec(),
                    value,
                });
            }
            WeightRef::Vector(p) => {
                let n = p.dims()[0];
                vectors.push(NamedWeight {
                    name,
                    shape: vec![n],
                    value: p.val().reshape([1, n]),
                });
            }
        });
        matrices.extend(vectors);
        matrices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_drop_p_and_rescale_the_rest() {
        let n = 200_000;
        let mask = dropout_mask(7, n, 0.1);
        assert_eq!(mask.len(), n);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == (1.0 / 0.9) as f32));
        assert_eq!(mask, dropout_mask(7, n, 0.1), "a seed gives one mask");
        assert_ne!(mask, dropout_mask(8, n, 0.1), "another seed another");
        assert!(dropout_mask(1, 1000, 0.0).iter().all(|&m| m == 1.0));
    }

    /// Blocked attention (the autodiff path) and the fused kernel in query blocks (the
    /// inference path) against the textbook formula with repeated key/value heads (HF's
    /// `repeat_kv`), over more tokens than one block, with and without a cached prefix.
    #[test]
    fn blocked_attention_equals_full_attention() {
        let device = Device::flex();
        let (b, nh, nkv, hd) = (2, 4, 2, 8);
        for (start, t) in [(0, 2 * QUERY_BLOCK + 37), (19, 2 * QUERY_BLOCK + 1)] {
            let total = start + t;
            let normal = |shape: [usize; 4]| {
                Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
            };
            let q = normal([b, nh, t, hd]);
            let k = normal([b, nkv, total, hd]);
            let v = normal([b, nkv, total, hd]);
            let mask = causal_mask(start, t, &device);

            let blocked = causal_attention(q.clone(), k.clone(), v.clone(), Some(&mask), nkv);
            let fused = fused_causal_attention(q.clone(), k.clone(), v.clone(), 1.0);

            let repeat = |x: Tensor<4>| {
                x.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, nh / nkv)
                    .reshape([b, nh, total, hd])
            };
            let scores = q.matmul(repeat(k).swap_dims(2, 3)) + mask.unsqueeze::<4>();
            let want = softmax(scores, 3).matmul(repeat(v));

            for (path, got) in [("blocked", blocked), ("fused", fused)] {
                let diff = (got - want.clone()).abs().max().into_scalar::<f32>();
                assert!(
                    diff < 1e-5,
                    "{path}, start {start}, {t} tokens: max |Δ| = {diff}"
                );
            }
        }
    }
}
