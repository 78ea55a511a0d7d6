//! The cross-entropy's pass over a row of logits: `softmax − onehot`, scaled, written over the
//! logits in place, and the row's `−log p(target)`, for the fused LM head and loss
//! (the fused cross-entropy of `loss`); and the scoring pass, `log p(target)` and whether the
//! target is the row's argmax, for log-likelihood evaluation and perplexity.
//!
//! A vocabulary row is long (49,152 logits for SmolLM2) and the backend's own `exp` is a
//! scalar library call per element on one thread. Here rows go to rayon's pool, and each row
//! is read twice and written twice by loops over 16 lanes with a polynomial `exp` (Cephes'
//! `expf`: Cody–Waite reduction, degree-6 polynomial, within 2 ulp of `f32::exp` for
//! arguments ≤ 0) that the compiler vectorises: with SSE2 everywhere, and compiled for
//! AVX2 where the CPU has it and `PMC_CPU_MAX` allows (`pmc-cpu`). Both compile the
//! same operations in the same order (Rust does not fuse or reorder floating-point
//! arithmetic), so both give the same bits.

use rayon::prelude::*;

/// Lanes of the accumulators: two AVX2 registers, four SSE ones.
const LANES: usize = 16;

/// Turns each `vocab`-long row of `logits` into the gradient of `scale · −log softmax(row)
/// [target]` (`scale · (softmax − onehot)`) and returns `Σ −log p(target)` over the rows;
/// rows whose target is `None` become zeros and add nothing. Deterministic: the rows' terms
/// are summed in order.
pub fn cross_entropy_rows(
    logits: &mut [f32],
    vocab: usize,
    targets: &[Option<u32>],
    scale: f32,
) -> f64 {
    assert_eq!(logits.len(), vocab * targets.len(), "one row per target");
    let kernel = Kernel::detect();
    let nll: Vec<f64> = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| match target {
            Some(t) => {
                assert!(
                    (t as usize) < vocab,
                    "target token {t} is outside the vocabulary of {vocab}"
                );
                kernel.run(row, t as usize, scale)
            }
            None => {
                row.fill(0.0);
                0.0
            }
        })
        .collect();
    nll.iter().sum()
}

/// `log p(target)` of each `vocab`-long row of `logits` and whether the target is the row's
/// most likely token (the first index of its maximum, as `argmax`). The rows are used as
/// scratch space: they hold `exp(x − max)` afterwards.
pub fn target_log_probs(logits: &mut [f32], vocab: usize, targets: &[u32]) -> Vec<(f64, bool)> {
    assert_eq!(logits.len(), vocab * targets.len(), "one row per target");
    let kernel = Kernel::detect();
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            assert!(
                (t as usize) < vocab,
                "target token {t} is outside the vocabulary of {vocab}"
            );
            kernel.log_prob(row, t as usize)
        })
        .collect()
}

/// The implementation of a row's pass this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Compiled for the x86-64 baseline (SSE2), or for whatever the target is.
    Portable,
    /// The same code compiled for AVX2 (no FMA: Rust never fuses a multiply and an add, so
    /// it would change nothing).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// AVX2 where the CPU has it and the cap allows it, the portable code otherwise.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && pmc_cpu::allows("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// What the implementation is, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable (SSE2)",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
        }
    }

    /// Every implementation this CPU runs (for tests).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Kernel::Portable];
        if Self::detect() != Kernel::Portable {
            all.push(Self::detect());
        }
        all
    }

    /// A row's pass (see [`cross_entropy_rows`]) for target `target`.
    pub fn run(self, row: &mut [f32], target: usize, scale: f32) -> f64 {
        match self {
            Kernel::Portable => row_pass(row, target, scale),
            // SAFETY: detect() saw AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { row_pass_avx2(row, target, scale) },
        }
    }

    /// A row's scoring pass (see [`target_log_probs`]).
    pub fn log_prob(self, row: &mut [f32], target: usize) -> (f64, bool) {
        match self {
            Kernel::Portable => row_log_prob(row, target),
            // SAFETY: detect() saw AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { row_log_prob_avx2(row, target) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_log_prob_avx2(row: &mut [f32], target: usize) -> (f64, bool) {
    row_log_prob(row, target)
}

/// `log p(target) = x[target] − max − ln Σ exp(x − max)`, and whether `target` is the first
/// index of the maximum. Leaves `exp(x − max)` in the row.
#[inline(always)]
fn row_log_prob(row: &mut [f32], target: usize) -> (f64, bool) {
    let target_logit = row[target];
    let max = row_max(row);
    let greedy = target_logit == max && row[..target].iter().all(|&x| x < max);
    let sum = exp_in_place(row, max);
    (
        (target_logit as f64 - max as f64) - (sum as f64).ln(),
        greedy,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_pass_avx2(row: &mut [f32], target: usize, scale: f32) -> f64 {
    row_pass(row, target, scale)
}

/// The row's pass: its maximum, `e = exp(x − max)` written over it with their sum, then
/// `e · scale / sum`, minus `scale` at the target. Returns `−log p(target)`.
#[inline(always)]
fn row_pass(row: &mut [f32], target: usize, scale: f32) -> f64 {
    let target_logit = row[target];
    let max = row_max(row);
    let sum = exp_in_place(row, max);
    let factor = scale / sum;
    for x in row.iter_mut() {
        *x *= factor;
    }
    row[target] -= scale;
    (max as f64 + (sum as f64).ln()) - target_logit as f64
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            // Not f32::max: its NaN rule keeps the compiler from using vector max
            // instructions. A NaN logit still makes the loss NaN (through the sum).
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
    }
    max
}

/// `x ← exp(x − max)` over the row; returns the sum (16 partial sums, added in order).
#[inline(always)]
fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    let mut tail = 0.0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        tail += *x;
    }
    lanes.iter().sum::<f32>() + tail
}

/// `exp(x)` for `x ≤ 0` (Cephes' `expf`); arguments below −87 give `exp(−87)` ≈ 1.6e-38
/// instead of a smaller number or zero, which no sum of a row with its maximum's 1 can tell.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let exponent = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((exponent + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (ours, theirs) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max((ours - theirs).abs() / theirs);
            x += 0.000_37;
        }
        assert!(
            worst < 2.5 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 2e-38);
    }

    /// Every kernel against the definition in f64, on rows with a tail and large logits.
    #[test]
    fn every_kernel_gives_the_gradient_and_loss_of_the_definition() {
        let vocab = 1003;
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..vocab)
                    .map(|i| {
                        ((i * 7919 + r * 104_729) % 2003) as f32 * 0.013 - 9.0 + r as f32 * 40.0
                    })
                    .collect()
            })
            .collect();
        let scale = 0.25f32;
        for kernel in Kernel::available() {
            for (r, logits) in rows.iter().enumerate() {
                let target = (r * 331) % vocab;
                let mut row = logits.clone();
                let nll = kernel.run(&mut row, target, scale);
                let max = logits
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
                let want_nll = max + sum.ln() - logits[target] as f64;
                assert!(
                    (nll - want_nll).abs() < 1e-5,
                    "{kernel:?}: {nll} vs {want_nll}"
                );
                let (log_p, greedy) = kernel.log_prob(&mut logits.clone(), target);
                assert!(
                    (log_p + want_nll).abs() < 1e-5,
                    "{kernel:?}: log p {log_p} vs {}",
                    -want_nll
                );
                assert_eq!(greedy, logits[target] as f64 == max, "{kernel:?}");
                for (i, (&g, &x)) in row.iter().zip(logits).enumerate() {
                    let p = (x as f64 - max).exp() / sum;
                    let want = scale as f64 * (p - if i == target { 1.0 } else { 0.0 });
                    assert!(
                        (g as f64 - want).abs() < 1e-7,
                        "{kernel:?} [{i}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// The AVX2 build and the portable one compute the same operations in the same order.
    #[test]
    fn the_kernels_agree_bit_for_bit() {
        let logits: Vec<f32> = (0..4099)
            .map(|i| ((i * 31) % 97) as f32 * 0.37 - 20.0)
            .collect();
        let results: Vec<(Vec<f32>, f64)> = Kernel::available()
            .into_iter()
            .map(|k| {
                let mut row = logits.clone();
                let nll = k.run(&mut row, 17, 0.5);
                (row, nll)
            })
            .collect();
        for other in &results[1..] {
            assert_eq!(other.1.to_bits(), results[0].1.to_bits());
            assert!(
                other
                    .0
                    .iter()
                    .zip(&results[0].0)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    /// The greedy flag is `argmax == target`: the first index of the maximum wins a tie.
    #[test]
    fn scoring_names_the_first_maximum_greedy() {
        let vocab = 4;
        let mut logits = vec![0.0f32, 3.0, 1.0, 3.0, /* row 2 */ 5.0, 1.0, 1.0, 1.0];
        let scored = target_log_probs(&mut logits, vocab, &[3, 0]);
        assert!(!scored[0].1, "index 1 holds the first maximum");
        assert!(scored[1].1);
        let want = 3.0 - (1.0f64 + 2.0 * 3f64.exp() + 1f64.exp()).ln();
        assert!(
            (scored[0].0 - want).abs() < 1e-6,
            "{} vs {want}",
            scored[0].0
        );
        let mut greedy_row = vec![0.0f32, 3.0, 1.0, 2.0];
        assert!(target_log_probs(&mut greedy_row, vocab, &[1])[0].1);
    }

    #[test]
    fn rows_without_a_target_add_nothing() {
        let vocab = 5;
        let mut logits = vec![1.0f32; 2 * vocab];
        let nll = cross_entropy_rows(&mut logits, vocab, &[None, Some(2)], 1.0);
        assert!((nll - (5.0f64).ln()).abs() < 1e-6);
        assert!(logits[..vocab].iter().all(|&g| g == 0.0));
        assert!((logits[vocab + 2] - (0.2 - 1.0)).abs() < 1e-6);
    }
}
