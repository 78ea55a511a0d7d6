//! Products of quantized weight blocks with 8-bit activation blocks, as ggml computes them:
//! integer products summed per 32-element block, then scaled in f32.
//!
//! A kernel computes a tile of the output at once — [`TILE_ROWS`] weight rows against up to
//! [`MAX_TILE_COLUMNS`] input rows — so each weight block, once loaded and unpacked, meets
//! several input blocks while it sits in a register, and the tile's independent accumulators
//! keep the multiply units busy instead of waiting on one chain of additions (one row pair at
//! a time ran at a tenth of the VNNI units' rate).
//!
//! Three implementations of the same two tile kernels — portable scalar code, AVX2, and
//! AVX-512 VNNI (`vpdpbusd` on 256-bit registers, whose 32 registers hold a 4 × 4 tile) —
//! chosen once at run time from the CPU's features ([`Kernels::detect`]), so a portable build
//! runs the fast code without `-C target-cpu=native`. The SIMD versions are checked against
//! the scalar one in the tests.

/// Elements per block (all our formats).
pub const BLOCK: usize = 32;

/// Weight rows per tile.
pub const TILE_ROWS: usize = 4;

/// The most input rows per tile.
pub const MAX_TILE_COLUMNS: usize = 4;

/// A tile's results: `out[i][j]` is weight row `row + i` against input row `column + j`.
pub type Tile = [[f32; MAX_TILE_COLUMNS]; TILE_ROWS];

/// A quantized weight matrix and quantized input rows, both `blocks` blocks per row.
pub struct Operands<'a, W> {
    /// Blocks per row.
    pub blocks: usize,
    /// The weights' quants, row-major: 32 i8 (8-bit) or 16 bytes of nibbles per block.
    pub weight: &'a [W],
    /// One scale per weight block.
    pub weight_scale: &'a [f32],
    /// One offset per weight block (4-bit formats: `w = d · q + m`); empty for 8-bit ones.
    pub weight_min: &'a [f32],
    /// The inputs' quants, 32 i8 per block.
    pub input: &'a [i8],
    /// One scale per input block.
    pub input_scale: &'a [f32],
    /// `d · Σ q` per input block (what a weight offset multiplies).
    pub input_sum: &'a [f32],
}

impl<W> Operands<'_, W> {
    /// Panics unless rows `row..row + TILE_ROWS` and inputs `column..column + columns` are
    /// in bounds (and, for 4-bit weights, their offsets), so the SIMD kernels can read
    /// without checks.
    fn check_tile(&self, row: usize, column: usize, columns: usize, weight_per_block: usize) {
        let four_bit = weight_per_block == BLOCK / 2;
        assert!((1..=MAX_TILE_COLUMNS).contains(&columns));
        let weight_blocks = (row + TILE_ROWS) * self.blocks;
        let input_blocks = (column + columns) * self.blocks;
        assert!(self.weight_scale.len() >= weight_blocks);
        assert!(self.weight.len() >= weight_blocks * weight_per_block);
        assert!(!four_bit || self.weight_min.len() >= weight_blocks);
        assert!(self.input.len() >= input_blocks * BLOCK);
        assert!(self.input_scale.len() >= input_blocks && self.input_sum.len() >= input_blocks);
    }

    /// `Σ_b m_b · sx_b` of weight row `row` and input row `column`: the 4-bit offsets' share.
    fn offsets(&self, row: usize, column: usize) -> f32 {
        if self.weight_min.is_empty() {
            return 0.0;
        }
        let n = self.blocks;
        let mins = &self.weight_min[row * n..(row + 1) * n];
        let sums = &self.input_sum[column * n..(column + 1) * n];
        mins.iter().zip(sums).map(|(m, s)| m * s).sum()
    }
}

/// Fills `out[..TILE_ROWS][..columns]` for weight rows `row..` and input rows `column..`.
pub type TileKernel<W> = fn(&Operands<'_, W>, row: usize, column: usize, columns: usize, &mut Tile);

/// The tile kernels, in one implementation.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// 8-bit signed weights: `Σ_b dw_b · dx_b · Σ_i w_bi · x_bi`.
    pub q8: TileKernel<i8>,
    /// 4-bit weights `dw · q + mw` (`q` in 0..16; nibble `i` of a block's byte `j` is element
    /// `j` for the low nibble, `j + 16` for the high one, ggml's order):
    /// `Σ_b dw_b · dx_b · Σ_i q_bi · x_bi + Σ_b mw_b · sx_b`.
    pub q4: TileKernel<u8>,
    /// Input rows per tile this implementation's registers hold.
    pub columns: usize,
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
                && pmc_cpu::allows("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    q8: |o, r, c, n, out| unsafe { x86::q8_vnni(o, r, c, n, out) },
                    q4: |o, r, c, n, out| unsafe { x86::q4_vnni(o, r, c, n, out) },
                    columns: 4,
                    name: "avx512-vnni",
                };
            }
            if let Some(avx2) = Self::avx2() {
                return avx2;
            }
        }
        Self::scalar()
    }

    #[cfg(target_arch = "x86_64")]
    fn avx2() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && pmc_cpu::allows("avx2"))
        .then_some(Self {
            q8: |o, r, c, n, out| unsafe { x86::q8_avx2(o, r, c, n, out) },
            q4: |o, r, c, n, out| unsafe { x86::q4_avx2(o, r, c, n, out) },
            // 16 registers: a 4 × 2 tile of accumulators and its operands.
            columns: 2,
            name: "avx2",
        })
    }

    /// The portable implementation.
    pub fn scalar() -> Self {
        Self {
            q8: scalar::q8,
            q4: scalar::q4,
            columns: MAX_TILE_COLUMNS,
            name: "scalar",
        }
    }

    /// Every implementation this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            all.extend(Self::avx2());
            let best = Self::detect();
            if best.name != all.last().map_or("", |k| k.name) {
                all.push(best);
            }
        }
        all
    }
}

mod scalar {
    use super::{BLOCK, Operands, Tile};

    pub fn q8(o: &Operands<'_, i8>, row: usize, column: usize, columns: usize, out: &mut Tile) {
        tile(o, (row, column, columns), BLOCK, out, |wq, xq| {
            wq.iter().zip(xq).map(|(&w, &x)| w as i32 * x as i32).sum()
        });
    }

    pub fn q4(o: &Operands<'_, u8>, row: usize, column: usize, columns: usize, out: &mut Tile) {
        tile(o, (row, column, columns), BLOCK / 2, out, |wq, xq| {
            let mut sum = 0i32;
            for (k, &byte) in wq.iter().enumerate() {
                sum += (byte & 0x0f) as i32 * xq[k] as i32;
                sum += (byte >> 4) as i32 * xq[k + BLOCK / 2] as i32;
            }
            sum
        });
    }

    /// The reference tile: for each weight row and input, the sum over blocks of
    /// `weight scale · input scale · dot(quants)`, plus the 4-bit offsets.
    /// `weight_units` is how many `W` hold one block's quants.
    fn tile<W>(
        o: &Operands<'_, W>,
        (row, column, columns): (usize, usize, usize),
        weight_units: usize,
        out: &mut Tile,
        dot: impl Fn(&[W], &[i8]) -> i32,
    ) {
        o.check_tile(row, column, columns, weight_units);
        let n = o.blocks;
        for (i, out) in out.iter_mut().enumerate() {
            for (j, out) in out[..columns].iter_mut().enumerate() {
                let (w, x) = ((row + i) * n, (column + j) * n);
                let mut total = 0.0f32;
                for b in 0..n {
                    let wq = &o.weight[(w + b) * weight_units..(w + b + 1) * weight_units];
                    let xq = &o.input[(x + b) * BLOCK..(x + b + 1) * BLOCK];
                    total += o.weight_scale[w + b] * o.input_scale[x + b] * dot(wq, xq) as f32;
                }
                *out = total + o.offsets(row + i, column + j);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, MAX_TILE_COLUMNS, Operands, TILE_ROWS, Tile};

    /// How far ahead (in bytes of a weight row) the 8-bit kernels ask for the weights: the
    /// four rows of a tile are four interleaved streams that the hardware prefetcher follows
    /// late, and a decoding step reads every weight once from memory. 256 bytes ahead took
    /// the one-input product of a 140 MiB matrix from 7 to 9–10 GB/s on a Zen 3; the 4-bit
    /// kernels, with half the bytes per block, were no faster with it.
    const Q8_PREFETCH: usize = 256;

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let folded = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let folded = _mm_add_ps(folded, _mm_movehl_ps(folded, folded));
        let folded = _mm_add_ss(folded, _mm_movehdup_ps(folded));
        _mm_cvtss_f32(folded)
    }

    /// The block of 8-bit weights at `block`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_q8(block: *const i8) -> __m256i {
        unsafe { _mm256_lddqu_si256(block as *const __m256i) }
    }

    /// The block of 4-bit weights at `block`: its 32 nibbles as bytes 0..16 in ggml's
    /// element order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_q4(block: *const u8) -> __m256i {
        let packed = unsafe { _mm_lddqu_si128(block as *const __m128i) };
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

    /// A tile kernel of `COLUMNS` input rows: per block, the tile's input blocks and scales
    /// are loaded once, then each weight row's block is loaded (and unpacked) once and meets
    /// all of them.
    macro_rules! tile {
        ($name:ident, $features:literal, $weight:ty, $per_block:expr, $load:ident, $dot:ident, $offsets:literal, $prefetch:expr) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const COLUMNS: usize>(
                o: &Operands<'_, $weight>,
                row: usize,
                column: usize,
                out: &mut Tile,
            ) {
                let n = o.blocks;
                // One pointer per row into the quants and scales, stepped a block at a time
                // with `wrapping_add`; blocks loaded with `lddqu` and scales with
                // `broadcast_ss`. In debug-assertion builds (the dev profile users run)
                // `add` carries an overflow check, and `loadu`/`read_unaligned` are
                // `copy_nonoverlapping` with its null and overlap checks through a stack
                // temporary: those kept the tiles out of registers and halved their speed.
                // The addresses are in bounds and aligned regardless (see the SAFETY notes).
                // SAFETY: `check_tile` bounded every block of the tile's rows.
                let (mut weight, mut weight_scale, mut weight_min, mut input, mut input_scale) = unsafe {
                    (
                        [0, 1, 2, 3].map(|i| o.weight.as_ptr().add((row + i) * n * $per_block)),
                        [0, 1, 2, 3].map(|i| o.weight_scale.as_ptr().add((row + i) * n)),
                        [0, 1, 2, 3].map(|i| o.weight_min.as_ptr().wrapping_add((row + i) * n)),
                        std::array::from_fn::<_, COLUMNS, _>(|j| {
                            o.input.as_ptr().add((column + j) * n * BLOCK)
                        }),
                        std::array::from_fn::<_, COLUMNS, _>(|j| {
                            o.input_scale.as_ptr().add((column + j) * n)
                        }),
                    )
                };
                let mut acc = [[_mm256_setzero_ps(); COLUMNS]; TILE_ROWS];
                for _ in 0..n {
                    let mut x = [_mm256_setzero_si256(); COLUMNS];
                    let mut dx = [_mm256_setzero_ps(); COLUMNS];
                    for j in 0..COLUMNS {
                        // SAFETY: within the tile's input rows (see above).
                        unsafe {
                            x[j] = _mm256_lddqu_si256(input[j] as *const __m256i);
                            dx[j] = _mm256_broadcast_ss(&*input_scale[j]);
                            input[j] = input[j].wrapping_add(BLOCK);
                            input_scale[j] = input_scale[j].wrapping_add(1);
                        }
                    }
                    // 4-bit offsets: `Σ_b mw_b · sx_b`, with `sx = dx · Σ x` summed by the
                    // same dot product against ones, in vector lanes like the main sums.
                    let mut sx = [_mm256_setzero_ps(); COLUMNS];
                    if $offsets {
                        for j in 0..COLUMNS {
                            let ones = _mm256_set1_epi8(1);
                            sx[j] = _mm256_mul_ps(_mm256_cvtepi32_ps($dot(ones, x[j])), dx[j]);
                        }
                    }
                    for i in 0..TILE_ROWS {
                        if $offsets {
                            // SAFETY: `check_tile` bounded the offsets of the tile's rows.
                            let mw = unsafe { _mm256_broadcast_ss(&*weight_min[i]) };
                            weight_min[i] = weight_min[i].wrapping_add(1);
                            for j in 0..COLUMNS {
                                acc[i][j] = _mm256_fmadd_ps(sx[j], mw, acc[i][j]);
                            }
                        }
                        // SAFETY: within the tile's weight rows (see above).
                        let (w, dw) = unsafe {
                            if $prefetch > 0 {
                                _mm_prefetch::<_MM_HINT_T0>(
                                    weight[i].wrapping_add($prefetch) as *const i8,
                                );
                            }
                            let loaded = (
                                $load(weight[i]),
                                _mm256_broadcast_ss(&*weight_scale[i]),
                            );
                            weight[i] = weight[i].wrapping_add($per_block);
                            weight_scale[i] = weight_scale[i].wrapping_add(1);
                            loaded
                        };
                        for j in 0..COLUMNS {
                            let sums = _mm256_cvtepi32_ps($dot(w, x[j]));
                            acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(sums, dx[j]), dw, acc[i][j]);
                        }
                    }
                }
                for i in 0..TILE_ROWS {
                    for j in 0..COLUMNS {
                        out[i][j] = horizontal_sum(acc[i][j]);
                    }
                }
            }
        };
    }

    /// The public entry of a tile kernel: checks bounds, then picks the instance for the
    /// number of input rows.
    macro_rules! entry {
        ($name:ident, $features:literal, $weight:ty, $per_block:expr, $tile:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(
                o: &Operands<'_, $weight>,
                row: usize,
                column: usize,
                columns: usize,
                out: &mut Tile,
            ) {
                o.check_tile(row, column, columns, $per_block);
                const _: () = assert!(MAX_TILE_COLUMNS == 4 && TILE_ROWS == 4);
                // SAFETY: bounds checked above; the features are those of this function.
                unsafe {
                    match columns {
                        1 => $tile::<1>(o, row, column, out),
                        2 => $tile::<2>(o, row, column, out),
                        3 => $tile::<3>(o, row, column, out),
                        _ => $tile::<4>(o, row, column, out),
                    }
                }
            }
        };
    }

    tile!(
        q8_tile_avx2,
        "avx2,fma",
        i8,
        BLOCK,
        load_q8,
        signed_dot_avx2,
        false,
        Q8_PREFETCH
    );
    tile!(
        q4_tile_avx2,
        "avx2,fma",
        u8,
        BLOCK / 2,
        load_q4,
        unsigned_dot_avx2,
        true,
        0
    );
    tile!(
        q8_tile_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        i8,
        BLOCK,
        load_q8,
        signed_dot_vnni,
        false,
        Q8_PREFETCH
    );
    tile!(
        q4_tile_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        u8,
        BLOCK / 2,
        load_q4,
        unsigned_dot_vnni,
        true,
        0
    );
    entry!(q8_avx2, "avx2,fma", i8, BLOCK, q8_tile_avx2);
    entry!(q4_avx2, "avx2,fma", u8, BLOCK / 2, q4_tile_avx2);
    entry!(
        q8_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        i8,
        BLOCK,
        q8_tile_vnni
    );
    entry!(
        q4_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        u8,
        BLOCK / 2,
        q4_tile_vnni
    );
}
