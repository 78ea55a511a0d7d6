//! 2-D bf16 products with AVX-512 BF16's `VDPBF16PS` (AMD Zen 4, Intel Cooper Lake and
//! later), picked at run time.
//!
//! `VDPBF16PS` multiplies 16 pairs of bf16 and adds both products of each pair to an f32
//! lane: twice the multiply-adds of an f32 FMA per instruction, from half the bytes. Without
//! it a bf16 product is widened to f32, multiplied and rounded back (`matmul_bf16`), which is
//! slower than f32 itself. The operands are packed so that an instruction's pair is two
//! consecutive `k` (an odd `k` is padded with a zero):
//! - lhs rows as `u32` pairs `(a[i][2p], a[i][2p + 1])`, each broadcast to every lane;
//! - rhs in panels of [`PANEL`] columns, lane `j` holding `(b[2p][j], b[2p + 1][j])`.
//!
//! Sums are accumulated in f32 and rounded to bf16 once, at the end.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use burn_std::bf16;
use rayon::prelude::*;

/// lhs rows per micro-tile: 6 rows × 2 accumulators + 2 rhs vectors + 1 broadcast fit the
/// 32 vector registers with room to spare.
const ROWS: usize = 6;
/// f32 lanes of a 512-bit vector.
const LANES: usize = 16;
/// rhs columns per micro-tile (two accumulators per row).
const PANEL: usize = 2 * LANES;
/// Pairs of `k` per pass: a panel's block (`PANEL × K_BLOCK × 4` bytes = 32 KiB) stays in
/// L1/L2 while every micro-tile of a row block reads it.
const K_BLOCK: usize = 256;
/// lhs rows per parallel task (8 micro-tiles reading the same rhs blocks).
const ROW_BLOCK: usize = 8 * ROWS;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bf16")
        && pmc_cpu::allows("avx512bf16")
}

/// A strided `rows × cols` bf16 matrix: element `(r, c)` at `ptr + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub struct Strided {
    pub ptr: *const bf16,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

// The pointer is only read, and the caller keeps the storage alive for the call.
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

impl Strided {
    /// `(r, c)` as raw bits.
    ///
    /// # Safety
    /// `(r, c)` must be in bounds, and `ptr` and the strides must address it.
    unsafe fn bits(&self, r: usize, c: usize) -> u32 {
        let offset = r as isize * self.row_stride + c as isize * self.col_stride;
        unsafe { (*self.ptr.offset(offset)).to_bits() as u32 }
    }

    /// The pair `((r, 2p), (r, 2p + 1))` along a row, a zero past the last column.
    unsafe fn row_pair(&self, r: usize, p: usize) -> u32 {
        let c = 2 * p;
        let hi = if c + 1 < self.cols {
            unsafe { self.bits(r, c + 1) }
        } else {
            0
        };
        unsafe { self.bits(r, c) | (hi << 16) }
    }

    /// The pair `((2p, c), (2p + 1, c))` down a column, a zero past the last row.
    unsafe fn column_pair(&self, p: usize, c: usize) -> u32 {
        let r = 2 * p;
        let hi = if r + 1 < self.rows {
            unsafe { self.bits(r + 1, c) }
        } else {
            0
        };
        unsafe { self.bits(r, c) | (hi << 16) }
    }
}

impl Strided {
    /// Row `r` (`cols` elements) as bits, when the columns are contiguous.
    unsafe fn row(&self, r: usize) -> &[u16] {
        unsafe { self.line(r as isize * self.row_stride, self.cols) }
    }

    /// Column `c` (`rows` elements) as bits, when the rows are contiguous.
    unsafe fn column(&self, c: usize) -> &[u16] {
        unsafe { self.line(c as isize * self.col_stride, self.rows) }
    }

    unsafe fn line(&self, offset: isize, len: usize) -> &[u16] {
        unsafe { core::slice::from_raw_parts(self.ptr.offset(offset).cast::<u16>(), len) }
    }
}

/// `out[p] = (line[2p], line[2p + 1])`, a zero past the end of `line`.
fn pairs_within<'a>(line: &[u16], out: impl Iterator<Item = &'a mut u32>) {
    let mut chunks = line.chunks(2);
    for (pair, chunk) in out.zip(&mut chunks) {
        let hi = chunk.get(1).copied().unwrap_or(0);
        *pair = chunk[0] as u32 | (hi as u32) << 16;
    }
}

/// `out[i] = (lo[i], hi[i])`; `hi` absent (past the last `k`) is zeros.
fn pairs_across<'a>(lo: &[u16], hi: Option<&[u16]>, out: impl Iterator<Item = &'a mut u32>) {
    match hi {
        Some(hi) => {
            for ((pair, &l), &h) in out.zip(lo).zip(hi) {
                *pair = l as u32 | (h as u32) << 16;
            }
        }
        None => {
            for (pair, &l) in out.zip(lo) {
                *pair = l as u32;
            }
        }
    }
}

/// lhs rows per packing task.
const PACK_ROWS: usize = 64;

/// lhs as `m × pairs` row pairs, read along whichever axis is contiguous.
unsafe fn pack_lhs(lhs: Strided, pairs: usize) -> Vec<u32> {
    let mut a = vec![0u32; lhs.rows * pairs];
    a.par_chunks_mut(PACK_ROWS * pairs)
        .enumerate()
        .for_each(|(chunk, packed)| {
            let rows = chunk * PACK_ROWS..chunk * PACK_ROWS + packed.len() / pairs;
            if lhs.col_stride == 1 {
                for (i, out) in rows.zip(packed.chunks_exact_mut(pairs)) {
                    pairs_within(unsafe { lhs.row(i) }, out.iter_mut());
                }
            } else if lhs.row_stride == 1 {
                for p in 0..pairs {
                    let lo = unsafe { &lhs.column(2 * p)[rows.clone()] };
                    let hi = (2 * p + 1 < lhs.cols)
                        .then(|| unsafe { &lhs.column(2 * p + 1)[rows.clone()] });
                    pairs_across(lo, hi, packed[p..].iter_mut().step_by(pairs));
                }
            } else {
                for (i, out) in rows.zip(packed.chunks_exact_mut(pairs)) {
                    for (p, pair) in out.iter_mut().enumerate() {
                        *pair = unsafe { lhs.row_pair(i, p) };
                    }
                }
            }
        });
    a
}

/// rhs as panels of `pairs × PANEL` column pairs (columns past `n` zero), read along
/// whichever axis is contiguous.
unsafe fn pack_rhs(rhs: Strided, pairs: usize, panels: usize) -> Vec<u32> {
    let mut b = vec![0u32; panels * pairs * PANEL];
    b.par_chunks_mut(pairs * PANEL)
        .enumerate()
        .for_each(|(panel, packed)| {
            let columns = panel * PANEL..(panel * PANEL + PANEL).min(rhs.cols);
            if rhs.row_stride == 1 {
                for (j, c) in columns.enumerate() {
                    let out = packed[j..].iter_mut().step_by(PANEL);
                    pairs_within(unsafe { rhs.column(c) }, out);
                }
            } else if rhs.col_stride == 1 {
                for (p, out) in packed.chunks_exact_mut(PANEL).enumerate() {
                    let lo = unsafe { &rhs.row(2 * p)[columns.clone()] };
                    let hi = (2 * p + 1 < rhs.rows)
                        .then(|| unsafe { &rhs.row(2 * p + 1)[columns.clone()] });
                    pairs_across(lo, hi, out.iter_mut());
                }
            } else {
                for (p, out) in packed.chunks_exact_mut(PANEL).enumerate() {
                    for (pair, c) in out.iter_mut().zip(columns.clone()) {
                        *pair = unsafe { rhs.column_pair(p, c) };
                    }
                }
            }
        });
    b
}

/// `lhs @ rhs` (`m × k` by `k × n`) as a row-major `m × n` f32 matrix.
///
/// # Safety
/// [`available`] must be true, and both operands must address all their elements.
pub unsafe fn matmul(lhs: Strided, rhs: Strided) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    debug_assert_eq!(rhs.rows, k);
    if m == 0 || k == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(PANEL);

    let (a, b) = unsafe { (pack_lhs(lhs, pairs), pack_rhs(rhs, pairs, panels)) };

    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(ROW_BLOCK * n)
        .enumerate()
        .for_each(|(block, out)| {
            let r0 = block * ROW_BLOCK;
            let rows = out.len() / n;
            for p0 in (0..pairs).step_by(K_BLOCK) {
                let kp = K_BLOCK.min(pairs - p0);
                for panel in 0..panels {
                    let b = &b[(panel * pairs + p0) * PANEL..];
                    for t0 in (0..rows).step_by(ROWS) {
                        let h = ROWS.min(rows - t0);
                        let a = &a[(r0 + t0) * pairs + p0..];
                        let mut tile = [[0f32; PANEL]; ROWS];
                        unsafe { micro_tile(h, a, pairs, b, kp, &mut tile) };
                        let col0 = panel * PANEL;
                        let width = PANEL.min(n - col0);
                        for (i, tile_row) in tile[..h].iter().enumerate() {
                            let dst = &mut out[(t0 + i) * n + col0..][..width];
                            for (d, s) in dst.iter_mut().zip(tile_row) {
                                *d += s;
                            }
                        }
                    }
                }
            }
        });
    out
}

/// `tile[..h] = a[..h] · b` over `kp` pairs of `k`, for `h ≤ ROWS` rows.
///
/// # Safety
/// [`available`] must be true; `a` holds `h` rows `a_stride` apart of at least `kp` pairs,
/// `b` at least `kp × PANEL` pairs.
unsafe fn micro_tile(
    h: usize,
    a: &[u32],
    a_stride: usize,
    b: &[u32],
    kp: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    debug_assert!(a.len() >= (h - 1) * a_stride + kp && b.len() >= kp * PANEL);
    unsafe {
        match h {
            6 => tile_rows::<6>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
            5 => tile_rows::<5>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
            4 => tile_rows::<4>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
            3 => tile_rows::<3>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
            2 => tile_rows::<2>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
            _ => tile_rows::<1>(a.as_ptr(), a_stride, b.as_ptr(), kp, tile),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_rows<const H: usize>(
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    kp: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    for p in 0..kp {
        unsafe {
            let b0: __m512bh = core::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL).cast()));
            let b1: __m512bh =
                core::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL + LANES).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let pair = *a.add(i * a_stride + p);
                let pair: __m512bh = core::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
            }
        }
    }
    for (row, acc) in tile.iter_mut().zip(&acc) {
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(LANES), acc[1]);
        }
    }
}
