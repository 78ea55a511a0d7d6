//! Dot products of quantized weight blocks with 8-bit activation blocks, as ggml computes
//! them: integer products summed per 32-element block, then scaled in f32.
//!
//! Three implementations of the same two functions — portable scalar code, AVX2, and
//! AVX-512 VNNI (`vpdpbusd` on 256-bit registers) — chosen once at run time from the CPU's
//! features ([`Kernels::detect`]), so a portable build runs the fast code without
//! `-C target-cpu=native`. The SIMD versions are checked against the scalar one in the tests.

/// Elements per block (all our formats).
pub const BLOCK: usize = 32;

/// One weight row against one activation row, both `blocks` blocks long.
pub struct RowPair<'a, W> {
    /// The weight row's quants: `blocks · 32` i8 (8-bit) or `blocks · 16` bytes of nibbles.
    pub weight: &'a [W],
    /// The weight row's block scales.
    pub weight_scale: &'a [f32],
    /// The activation row's quants, `blocks · 32` i8.
    pub input: &'a [i8],
    /// The activation row's block scales.
    pub input_scale: &'a [f32],
}

/// The dot products, in one implementation.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// `Σ_b dw_b · dx_b · Σ_i w_bi · x_bi` for 8-bit signed weights.
    pub dot_q8: fn(&RowPair<'_, i8>) -> f32,
    /// `Σ_b dw_b · dx_b · Σ_i q_bi · x_bi + Σ_b mw_b · sx_b` for 4-bit weights `dw · q + mw`
    /// (`q` in 0..16; nibble `i` of a block's byte `j` is element `j` for the low nibble, `j
    /// + 16` for the high one, ggml's order), `sx_b = dx_b · Σ_i x_bi`.
    pub dot_q4: fn(&RowPair<'_, u8>, weight_min: &[f32], input_sum: &[f32]) -> f32,
    /// What the implementation is, for logs and benchmarks.
    pub name: &'static str,
}

impl Kernels {
    /// The fastest implementation this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    dot_q8: |p| unsafe { x86::dot_q8_vnni(p) },
                    dot_q4: |p, m, s| unsafe { x86::dot_q4_vnni(p, m, s) },
                    name: "avx512-vnni",
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    dot_q8: |p| unsafe { x86::dot_q8_avx2(p) },
                    dot_q4: |p, m, s| unsafe { x86::dot_q4_avx2(p, m, s) },
                    name: "avx2",
                };
            }
        }
        Self::scalar()
    }

    /// The portable implementation.
    pub fn scalar() -> Self {
        Self {
            dot_q8: scalar::dot_q8,
            dot_q4: scalar::dot_q4,
            name: "scalar",
        }
    }

    /// Every implementation this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                all.push(Self {
                    dot_q8: |p| unsafe { x86::dot_q8_avx2(p) },
                    dot_q4: |p, m, s| unsafe { x86::dot_q4_avx2(p, m, s) },
                    name: "avx2",
                });
            }
            let best = Self::detect();
            if best.name != all.last().map_or("", |k| k.name) {
                all.push(best);
            }
        }
        all
    }
}

mod scalar {
    use super::{BLOCK, RowPair};

    pub fn dot_q8(p: &RowPair<'_, i8>) -> f32 {
        let mut total = 0.0f32;
        for (b, (&dw, &dx)) in p.weight_scale.iter().zip(p.input_scale).enumerate() {
            let w = &p.weight[b * BLOCK..(b + 1) * BLOCK];
            let x = &p.input[b * BLOCK..(b + 1) * BLOCK];
            let sum: i32 = w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum();
            total += dw * dx * sum as f32;
        }
        total
    }

    pub fn dot_q4(p: &RowPair<'_, u8>, weight_min: &[f32], input_sum: &[f32]) -> f32 {
        let mut total = 0.0f32;
        for (b, (&dw, &dx)) in p.weight_scale.iter().zip(p.input_scale).enumerate() {
            let w = &p.weight[b * BLOCK / 2..(b + 1) * BLOCK / 2];
            let x = &p.input[b * BLOCK..(b + 1) * BLOCK];
            let mut sum = 0i32;
            for (j, &byte) in w.iter().enumerate() {
                sum += (byte & 0x0f) as i32 * x[j] as i32;
                sum += (byte >> 4) as i32 * x[j + BLOCK / 2] as i32;
            }
            total += dw * dx * sum as f32 + weight_min[b] * input_sum[b];
        }
        total
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, RowPair};

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let folded = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let folded = _mm_add_ps(folded, _mm_movehl_ps(folded, folded));
        let folded = _mm_add_ss(folded, _mm_movehdup_ps(folded));
        _mm_cvtss_f32(folded)
    }

    /// The 32 nibbles of a 4-bit block as bytes 0..16 in ggml's element order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn unpack_nibbles(block: *const u8) -> __m256i {
        let packed = unsafe { _mm_loadu_si128(block as *const __m128i) };
        let low_mask = _mm_set1_epi8(0x0f);
        let low = _mm_and_si128(packed, low_mask);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
        _mm256_set_m128i(high, low)
    }

    /// Eight i32 partial sums of `u8 · i8` products with AVX2: `maddubs` pairs them into
    /// i16 (no saturation for 4-bit weights: 2 · 15 · 128 < 2¹⁵), `madd` widens.
    #[target_feature(enable = "avx2,fma")]
    fn unsigned_dot_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(unsigned, signed);
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// Eight i32 partial sums of `i8 · i8` products: `|x| · sign(w, x)` makes the left side
    /// unsigned without changing the products (ggml's trick; `|−128|` cannot occur because
    /// quantization stays within ±127).
    #[target_feature(enable = "avx2,fma")]
    fn signed_dot_avx2(w: __m256i, x: __m256i) -> __m256i {
        unsigned_dot_avx2(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x))
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn signed_dot_vnni(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            _mm256_sign_epi8(x, x),
            _mm256_sign_epi8(w, x),
        )
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn unsigned_dot_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
    }

    macro_rules! dot_q8 {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(p: &RowPair<'_, i8>) -> f32 {
                let blocks = p.weight_scale.len();
                assert!(p.weight.len() >= blocks * BLOCK && p.input.len() >= blocks * BLOCK);
                assert!(p.input_scale.len() >= blocks);
                let mut acc = _mm256_setzero_ps();
                for b in 0..blocks {
                    // SAFETY: the asserts above keep every block in bounds.
                    let (w, x) = unsafe {
                        (
                            _mm256_loadu_si256(p.weight.as_ptr().add(b * BLOCK) as *const __m256i),
                            _mm256_loadu_si256(p.input.as_ptr().add(b * BLOCK) as *const __m256i),
                        )
                    };
                    let sums = _mm256_cvtepi32_ps($dot(w, x));
                    let scale = _mm256_set1_ps(p.weight_scale[b] * p.input_scale[b]);
                    acc = _mm256_fmadd_ps(sums, scale, acc);
                }
                horizontal_sum(acc)
            }
        };
    }

    macro_rules! dot_q4 {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(p: &RowPair<'_, u8>, weight_min: &[f32], input_sum: &[f32]) -> f32 {
                let blocks = p.weight_scale.len();
                assert!(p.weight.len() >= blocks * BLOCK / 2 && p.input.len() >= blocks * BLOCK);
                assert!(p.input_scale.len() >= blocks);
                assert!(weight_min.len() >= blocks && input_sum.len() >= blocks);
                let mut acc = _mm256_setzero_ps();
                let mut offsets = 0.0f32;
                for b in 0..blocks {
                    // SAFETY: the asserts above keep every block in bounds.
                    let (w, x) = unsafe {
                        (
                            unpack_nibbles(p.weight.as_ptr().add(b * BLOCK / 2)),
                            _mm256_loadu_si256(p.input.as_ptr().add(b * BLOCK) as *const __m256i),
                        )
                    };
                    let sums = _mm256_cvtepi32_ps($dot(w, x));
                    let scale = _mm256_set1_ps(p.weight_scale[b] * p.input_scale[b]);
                    acc = _mm256_fmadd_ps(sums, scale, acc);
                    offsets += weight_min[b] * input_sum[b];
                }
                horizontal_sum(acc) + offsets
            }
        };
    }

    dot_q8!(dot_q8_avx2, "avx2,fma", signed_dot_avx2);
    dot_q8!(dot_q8_vnni, "avx2,fma,avx512vnni,avx512vl", signed_dot_vnni);
    dot_q4!(dot_q4_avx2, "avx2,fma", unsigned_dot_avx2);
    dot_q4!(
        dot_q4_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        unsigned_dot_vnni
    );
}
