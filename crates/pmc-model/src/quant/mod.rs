//! Weights held quantized in ggml's block formats (`q8_0`, `q4_0`, `q4_1`: 32 weights per
//! block with their own scale) and multiplied without being widened: each product quantizes
//! its input rows to 8 bits per block and sums integer products block by block (see
//! [`kernels`]), as llama.cpp does when it decodes. For inference on the CPU: the weights take
//! 1.1 (`q8_0`) or 0.6 (`q4_*`) bytes each instead of 4, and a decoding step, which reads
//! every weight once, moves that much less memory.
//!
//! A model is quantized while it is built ([`Quantizer`]): each matrix is read, quantized and
//! dropped in turn, so the f32 model never exists whole.

pub mod kernels;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use burn::prelude::*;

use crate::config::WeightDType;
use kernels::{BLOCK, Kernels, Operands, TILE_ROWS, Tile, TileKernel};

/// A block format of quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// ggml's `Q8_0`: `w = d · q`, `q` an i8, one scale per 32 weights.
    Q8_0,
    /// ggml's `Q4_0`: `w = d · (q − 8)`, `q` in 0..16.
    Q4_0,
    /// ggml's `Q4_1`: `w = d · q + m`, `q` in 0..16, a scale and a minimum per 32 weights.
    Q4_1,
}

impl QuantKind {
    /// The ggml name (`q8_0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            QuantKind::Q8_0 => "q8_0",
            QuantKind::Q4_0 => "q4_0",
            QuantKind::Q4_1 => "q4_1",
        }
    }
}

/// How a model's weights are held in memory: as dense tensors of a float dtype, or quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dense tensors (f32, bf16, f16).
    Dense(WeightDType),
    /// Matrices in a block format; norms and biases stay f32.
    Quantized(QuantKind),
}

impl Default for WeightFormat {
    fn default() -> Self {
        WeightFormat::Dense(WeightDType::F32)
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "q8_0" => Ok(Self::Quantized(QuantKind::Q8_0)),
            "q4_0" => Ok(Self::Quantized(QuantKind::Q4_0)),
            "q4_1" => Ok(Self::Quantized(QuantKind::Q4_1)),
            _ => WeightDType::parse(s).map(Self::Dense).ok_or_else(|| {
                format!("unknown dtype `{s}` (expected f32, bf16, f16, q8_0, q4_0 or q4_1)")
            }),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightFormat::Dense(WeightDType::F32) => f.write_str("f32"),
            WeightFormat::Dense(WeightDType::BF16) => f.write_str("bf16"),
            WeightFormat::Dense(WeightDType::F16) => f.write_str("f16"),
            WeightFormat::Quantized(kind) => f.write_str(kind.name()),
        }
    }
}

/// The kernels of this CPU, chosen on first use.
pub fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let chosen = Kernels::detect();
        tracing::info!(kernels = chosen.name, "quantized dot products");
        chosen
    })
}

/// The quants of a matrix, in the element type its kernel reads.
#[derive(Debug)]
enum Quants {
    /// One i8 per weight.
    Bytes(Vec<i8>),
    /// Two 4-bit weights per byte; `mins` holds each block's offset (`−8 d` for `q4_0`).
    Nibbles { packed: Vec<u8>, mins: Vec<f32> },
}

/// A `[rows, cols]` matrix (HF's `[out, in]` weight layout) quantized row by row.
#[derive(Debug)]
pub struct QuantMatrix {
    kind: QuantKind,
    rows: usize,
    cols: usize,
    /// One per block, `rows · cols / 32`.
    scales: Vec<f32>,
    quants: Quants,
}

/// Why a matrix cannot be quantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cols} columns is not a multiple of the block size 32")]
pub struct NotBlockAligned {
    /// The row length.
    pub cols: usize,
}

impl QuantMatrix {
    /// Quantizes row-major `values` of `[rows, cols]`; `cols` must be a multiple of 32.
    pub fn quantize(
        values: &[f32],
        rows: usize,
        cols: usize,
        kind: QuantKind,
    ) -> std::result::Result<Self, NotBlockAligned> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(NotBlockAligned { cols });
        }
        assert_eq!(
            values.len(),
            rows * cols,
            "quantize: {rows} × {cols} values"
        );
        let blocks = values.len() / BLOCK;
        let mut scales = Vec::with_capacity(blocks);
        let quants = match kind {
            QuantKind::Q8_0 => {
                let mut q = Vec::with_capacity(values.len());
                for block in values.chunks_exact(BLOCK) {
                    let (d, inv) = symmetric_scale(block, 127.0);
                    scales.push(d);
                    q.extend(block.iter().map(|&x| (x * inv).round() as i8));
                }
                Quants::Bytes(q)
            }
            QuantKind::Q4_0 | QuantKind::Q4_1 => {
                let mut packed = Vec::with_capacity(values.len() / 2);
                let mut mins = Vec::with_capacity(blocks);
                let mut levels = [0u8; BLOCK];
                for block in values.chunks_exact(BLOCK) {
                    let (d, m) = if kind == QuantKind::Q4_0 {
                        // ggml: the value of largest magnitude maps to −8 exactly.
                        let max = block
                            .iter()
                            .copied()
                            .fold(0.0f32, |a, x| if x.abs() > a.abs() { x } else { a });
                        let d = max / -8.0;
                        (d, -8.0 * d)
                    } else {
                        let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                        let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        ((hi - lo) / 15.0, lo)
                    };
                    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                    for (level, &x) in levels.iter_mut().zip(block) {
                        *level = ((x - m) * inv).round().clamp(0.0, 15.0) as u8;
                    }
                    scales.push(d);
                    mins.push(m);
                    let (low, high) = levels.split_at(BLOCK / 2);
                    packed.extend(low.iter().zip(high).map(|(&l, &h)| l | (h << 4)));
                }
                Quants::Nibbles { packed, mins }
            }
        };
        Ok(Self {
            kind,
            rows,
            cols,
            scales,
            quants,
        })
    }

    /// The matrix in ggml's block layout, row by row (what a GGUF file holds): each block's
    /// scale as f16 (and for `q4_1` its minimum), then its 32 quants — one i8 each for `q8_0`,
    /// two per byte for the 4-bit formats (weight `j` in the low nibble of byte `j`, weight
    /// `j + 16` in the high one).
    pub fn ggml_blocks(&self) -> Vec<u8> {
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let blocks = self.scales.len();
        let mut out = Vec::with_capacity(blocks * 36);
        for (b, &d) in self.scales.iter().enumerate() {
            out.extend(f16(d));
            match &self.quants {
                Quants::Bytes(q) => {
                    out.extend(q[b * BLOCK..(b + 1) * BLOCK].iter().map(|&v| v as u8));
                }
                Quants::Nibbles { packed, mins } => {
                    if self.kind == QuantKind::Q4_1 {
                        out.extend(f16(mins[b]));
                    }
                    out.extend_from_slice(&packed[b * BLOCK / 2..(b + 1) * BLOCK / 2]);
                }
            }
        }
        out
    }

    /// The block format.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held (quants and scales).
    pub fn size_bytes(&self) -> usize {
        let quants = match &self.quants {
            Quants::Bytes(q) => q.len(),
            Quants::Nibbles { packed, mins } => packed.len() + 4 * mins.len(),
        };
        quants + 4 * self.scales.len()
    }

    /// Row `row` widened to f32 (an embedding lookup).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for b in 0..blocks {
            let index = row * blocks + b;
            let d = self.scales[index];
            let out = &mut out[b * BLOCK..(b + 1) * BLOCK];
            match &self.quants {
                Quants::Bytes(q) => {
                    for (o, &q) in out.iter_mut().zip(&q[index * BLOCK..(index + 1) * BLOCK]) {
                        *o = d * q as f32;
                    }
                }
                Quants::Nibbles { packed, mins } => {
                    let m = mins[index];
                    let bytes = &packed[index * BLOCK / 2..(index + 1) * BLOCK / 2];
                    let (low, high) = out.split_at_mut(BLOCK / 2);
                    for ((l, h), &byte) in low.iter_mut().zip(high).zip(bytes) {
                        *l = d * (byte & 0x0f) as f32 + m;
                        *h = d * (byte >> 4) as f32 + m;
                    }
                }
            }
        }
    }

    /// Every value widened to f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (row, chunk) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(row, chunk);
        }
        out
    }

    /// `x · selfᵀ` for row-major `x` of `[m, cols]`: `[m, rows]`, with `kernels`.
    pub fn matmul_with(&self, x: &[f32], m: usize, kernels: Kernels) -> Vec<f32> {
        assert_eq!(
            x.len(),
            m * self.cols,
            "matmul: input is not [{m}, {}]",
            self.cols
        );
        if m == 0 {
            return Vec::new();
        }
        if self.rows < TILE_ROWS {
            // Smaller than one tile (never a LLaMA matrix): the dense product.
            let weights = self.dequantize();
            return x
                .chunks_exact(self.cols)
                .flat_map(|x| {
                    weights
                        .chunks_exact(self.cols)
                        .map(move |w| w.iter().zip(x).map(|(w, x)| w * x).sum::<f32>())
                })
                .collect();
        }
        let input = QuantizedInput::new(x, m, self.cols);
        let blocks = self.cols / BLOCK;
        match &self.quants {
            Quants::Bytes(q) => {
                let operands = input.operands(blocks, q, &self.scales, &[]);
                self.tiled(&operands, kernels.q8, m, kernels.columns)
            }
            Quants::Nibbles { packed, mins } => {
                let operands = input.operands(blocks, packed, &self.scales, mins);
                self.tiled(&operands, kernels.q4, m, kernels.columns)
            }
        }
    }

    /// The product `[m, rows]`, tile by tile, in rayon tasks of (at most
    /// [`INPUTS_PER_TASK`] input rows) × (a share of the weight rows). Within a task each
    /// weight tile, once loaded, meets every input tile of the task while it sits in L1, and
    /// the task's quantized inputs stay in L2: the weights stream from memory once per
    /// `INPUTS_PER_TASK` inputs, not once per tile of inputs (a prompt's products were bound
    /// by reloading the weights). Where the rows or inputs do not divide into tiles, the last
    /// tile is shifted back to end at the last one and recomputes a few (identical) results.
    fn tiled<W: Sync>(
        &self,
        operands: &Operands<'_, W>,
        kernel: TileKernel<W>,
        m: usize,
        columns: usize,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let (rows, columns) = (self.rows, columns.min(m));
        let inputs_per_task = m.min(INPUTS_PER_TASK);
        let input_chunks = m.div_ceil(inputs_per_task);
        // Enough tasks to keep every core busy (and to even out a slow one), each with
        // enough multiply-adds to pay for itself.
        let row_tiles = rows.div_ceil(TILE_ROWS);
        let wanted = (4 * rayon::current_num_threads()).div_ceil(input_chunks);
        let affordable = (rows * self.cols * inputs_per_task / MIN_TASK_WORK).max(1);
        let row_chunks = wanted.min(affordable).clamp(1, row_tiles);
        let rows_per_task = row_tiles.div_ceil(row_chunks) * TILE_ROWS;
        let mut out = vec![0.0f32; m * rows];
        let target = DisjointWrites(out.as_mut_ptr());
        let tasks = input_chunks * rows.div_ceil(rows_per_task);
        (0..tasks).into_par_iter().for_each(|task| {
            let (input_chunk, row_chunk) = (task % input_chunks, task / input_chunks);
            let inputs =
                input_chunk * inputs_per_task..((input_chunk + 1) * inputs_per_task).min(m);
            let weight_rows =
                row_chunk * rows_per_task..((row_chunk + 1) * rows_per_task).min(rows);
            let mut tile: Tile = Default::default();
            for r in weight_rows.clone().step_by(TILE_ROWS) {
                let row = r.min(rows - TILE_ROWS);
                for c in inputs.clone().step_by(columns) {
                    let column = c.min(m - columns);
                    kernel(operands, row, column, columns, &mut tile);
                    for (i, results) in tile.iter().enumerate() {
                        for (j, &result) in results[..columns].iter().enumerate() {
                            let (row, input) = (row + i, column + j);
                            if weight_rows.contains(&row) && inputs.contains(&input) {
                                // SAFETY: `input * rows + row` is inside `out` (input < m,
                                // row < rows), and no other task owns this (input, row).
                                unsafe { target.write(input * rows + row, result) };
                            }
                        }
                    }
                }
            }
        });
        out
    }

    /// `x · selfᵀ` with this CPU's kernels.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, kernels())
    }

    /// `x · selfᵀ` over the last dimension of `x` `[.., cols]`, on `x`'s (CPU) device.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [m, k] = x.dims();
        debug_assert_eq!(k, self.cols);
        let device = x.device();
        let values = x
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("activations convert to f32");
        let out = self.matmul(&values, m);
        Tensor::from_data(TensorData::new(out, [m, self.rows]), &device)
    }
}

/// The most input rows a task of [`QuantMatrix::matmul_with`] takes: 64 quantized rows of
/// a LLaMA-7B projection (4,096 columns) are 264 KiB with their scales, within L2.
const INPUTS_PER_TASK: usize = 64;

/// The fewest multiply-accumulates a rayon task of [`QuantMatrix::matmul_with`] is given.
const MIN_TASK_WORK: usize = 16 * 1024;

/// The output of [`QuantMatrix::tiled`], written by several tasks at once, each to its own
/// elements.
#[derive(Clone, Copy)]
struct DisjointWrites(*mut f32);

// SAFETY: tasks write disjoint elements (see `write`), and the buffer outlives them.
unsafe impl Send for DisjointWrites {}
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    /// # Safety
    /// `index` is in bounds, and no other thread reads or writes that element meanwhile.
    unsafe fn write(self, index: usize, value: f32) {
        unsafe { *self.0.add(index) = value };
    }
}

/// `max |x| / levels` and its inverse (0 for an all-zero block).
fn symmetric_scale(block: &[f32], levels: f32) -> (f32, f32) {
    // Eight lanes of maxima, which vectorise (one running maximum does not).
    debug_assert!(block.len().is_multiple_of(8));
    let mut lanes = [0.0f32; 8];
    for chunk in block.chunks_exact(8) {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x.abs());
        }
    }
    let amax = lanes.into_iter().fold(0.0f32, f32::max);
    let d = amax / levels;
    (d, if d == 0.0 { 0.0 } else { 1.0 / d })
}

/// Input rows quantized to 8 bits per block (ggml's `q8_0`, plus each block's sum for the
/// offsets of 4-bit weights).
struct QuantizedInput {
    quants: Vec<i8>,
    scales: Vec<f32>,
    /// `d · Σ q` per block.
    sums: Vec<f32>,
}

impl QuantizedInput {
    /// These inputs against a weight matrix's quants, scales and (4-bit) offsets.
    fn operands<'a, W>(
        &'a self,
        blocks: usize,
        weight: &'a [W],
        weight_scale: &'a [f32],
        weight_min: &'a [f32],
    ) -> Operands<'a, W> {
        Operands {
            blocks,
            weight,
            weight_scale,
            weight_min,
            input: &self.quants,
            input_scale: &self.scales,
            input_sum: &self.sums,
        }
    }

    fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len() == rows * cols);
        let blocks = x.len() / BLOCK;
        let mut quants = vec![0i8; x.len()];
        let mut scales = Vec::with_capacity(blocks);
        let mut sums = Vec::with_capacity(blocks);
        for (block, q) in x.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
            let (d, inv) = symmetric_scale(block, 127.0);
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(block) {
                *q = round_small(v * inv) as i8;
                // Wrapping: no overflow check in the way of vectorising (|sum| ≤ 32 · 127).
                sum = sum.wrapping_add(*q as i32);
            }
            scales.push(d);
            sums.push(d * sum as f32);
        }
        Self {
            quants,
            scales,
            sums,
        }
    }
}

/// `x` rounded to the nearest integer (ties to even) for `|x| < 2²²`: adding and removing
/// 1.5 · 2²³ leaves no fraction bits, and unlike `f32::round`, which is a library call on
/// baseline x86-64, it vectorises.
fn round_small(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (x + SHIFT) - SHIFT
}

/// Matrices quantized while a model is built, by HF name.
#[derive(Debug, Default)]
pub struct QuantizedWeights {
    matrices: HashMap<String, Arc<QuantMatrix>>,
}

impl QuantizedWeights {
    /// The matrix stored under `name`, taken out.
    pub fn take(&mut self, name: &str) -> Option<Arc<QuantMatrix>> {
        self.matrices.remove(name)
    }

    /// Bytes held by all matrices.
    pub fn size_bytes(&self) -> usize {
        self.matrices.values().map(|m| m.size_bytes()).sum()
    }
}

/// Wraps a model builder's `init(name, shape)` so that every matrix (the embedding, the
/// projections, the LM head) is quantized as soon as it is read: the model gets an empty
/// `[rows, 0]` stand-in and the quantized matrix is kept aside until
/// [`crate::Llama::attach_quantized`] puts it in place. Norms and biases pass through.
pub struct Quantizer {
    kind: QuantKind,
    weights: QuantizedWeights,
}

impl Quantizer {
    /// Quantizes into `kind`.
    pub fn new(kind: QuantKind) -> Self {
        Self {
            kind,
            weights: QuantizedWeights::default(),
        }
    }

    /// What `init` gave for `name`, quantized when it is a matrix. `Err` names the
    /// tensor's row length when it is not a multiple of 32.
    pub fn intercept(
        &mut self,
        name: &str,
        tensor: Tensor<2>,
    ) -> std::result::Result<Tensor<2>, NotBlockAligned> {
        let [rows, cols] = tensor.dims();
        if rows == 1 {
            return Ok(tensor); // a norm or a bias, as a row
        }
        let device = tensor.device();
        let values = tensor
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("weights convert to f32");
        // The embedding doubles as the LM head when tied, and every logit reads it: 4 bits
        // there cost far more than in a projection (SmolLM2, q4_1: mean NLL +0.10 against
        // +0.02), so it stays at 8 bits, as llama.cpp's 4-bit files keep it (SmolLM2's Q4_1
        // GGUF stores `token_embd` as Q8_0).
        let kind = if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            QuantKind::Q8_0
        } else {
            self.kind
        };
        let matrix = QuantMatrix::quantize(&values, rows, cols, kind)?;
        drop(values);
        self.weights
            .matrices
            .insert(name.to_string(), Arc::new(matrix));
        Ok(Tensor::from_data(
            TensorData::new(Vec::<f32>::new(), [rows, 0]),
            &device,
        ))
    }

    /// The quantized matrices.
    pub fn finish(self) -> QuantizedWeights {
        self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Each kernel this CPU has gives the scalar kernel's products (the integer sums are
    /// exact; only the order of the f32 sums differs).
    #[test]
    fn simd_kernels_equal_the_scalar_kernel() {
        let (rows, cols) = (37, 4 * BLOCK);
        let w = sample(rows * cols, 1);
        // 1, 3, 6 and 9 input rows: tiles of every width, and shifted last tiles.
        for (kind, m) in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1]
            .into_iter()
            .flat_map(|kind| [1, 3, 6, 9].map(|m| (kind, m)))
        {
            let x = sample(m * cols, 2);
            let q = QuantMatrix::quantize(&w, rows, cols, kind).unwrap();
            let want = q.matmul_with(&x, m, Kernels::scalar());
            for k in Kernels::available() {
                let got = q.matmul_with(&x, m, k);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "{} {}: {g} vs {w}",
                        k.name,
                        kind.name()
                    );
                }
            }
        }
    }

    /// The quantized product is the dense product of the dequantized weights, up to the
    /// 8-bit rounding of the input; the dequantized weights are within half a step of the
    /// originals (a whole step for `q4_0`, whose grid −8..7 clips the side opposite to the
    /// largest magnitude by one step, as ggml's does).
    #[test]
    fn quantized_product_tracks_the_dense_product() {
        let (rows, cols, m) = (64, 8 * BLOCK, 5);
        let w = sample(rows * cols, 3);
        let x = sample(m * cols, 4);
        for (kind, bound) in [
            (QuantKind::Q8_0, 0.5 / 127.0),
            (QuantKind::Q4_0, 1.0 / 8.0),
            (QuantKind::Q4_1, 1.0 / 15.0),
        ] {
            let q = QuantMatrix::quantize(&w, rows, cols, kind).unwrap();
            let deq = q.dequantize();
            let worst = w
                .iter()
                .zip(&deq)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst <= bound + 1e-6,
                "{}: |w − deq| = {worst}",
                kind.name()
            );
            let got = q.matmul(&x, m);
            for i in 0..m {
                for r in 0..rows {
                    let dense: f32 = (0..cols).map(|c| x[i * cols + c] * deq[r * cols + c]).sum();
                    let norm: f32 = (0..cols).map(|c| deq[r * cols + c].abs()).sum();
                    let err = (got[i * rows + r] - dense).abs();
                    // Each input is off by at most half a step of its block (≤ 1/254).
                    assert!(err <= norm / 254.0 + 1e-4, "{}: {err}", kind.name());
                }
            }
        }
    }

    /// Fewer rows than a tile: the dense product of the dequantized weights.
    #[test]
    fn matrices_smaller_than_a_tile_multiply_densely() {
        let (rows, cols, m) = (3, 2 * BLOCK, 2);
        let (w, x) = (sample(rows * cols, 5), sample(m * cols, 6));
        let q = QuantMatrix::quantize(&w, rows, cols, QuantKind::Q4_1).unwrap();
        let deq = q.dequantize();
        let got = q.matmul(&x, m);
        assert_eq!(got.len(), m * rows);
        for i in 0..m {
            for r in 0..rows {
                let dense: f32 = (0..cols).map(|c| x[i * cols + c] * deq[r * cols + c]).sum();
                assert!((got[i * rows + r] - dense).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rows_must_be_whole_blocks() {
        let err = QuantMatrix::quantize(&[0.0; 40], 1, 40, QuantKind::Q8_0).unwrap_err();
        assert_eq!(err, NotBlockAligned { cols: 40 });
        assert!(err.to_string().contains("multiple of the block size 32"));
    }

    #[test]
    fn weight_formats_parse_by_name() {
        assert_eq!(
            "q4_0".parse::<WeightFormat>(),
            Ok(WeightFormat::Quantized(QuantKind::Q4_0))
        );
        assert_eq!(
            "bf16".parse::<WeightFormat>(),
            Ok(WeightFormat::Dense(WeightDType::BF16))
        );
        assert!("q5_k".parse::<WeightFormat>().unwrap_err().contains("q8_0"));
    }
}
