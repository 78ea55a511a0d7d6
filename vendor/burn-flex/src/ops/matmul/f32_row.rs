//! One-row f32 products `x · B` whose `B` has contiguous columns — `x @ w.T` for a weight
//! `w` of `[n, k]`, the matrix–vector product of every layer in a decoding step.
//!
//! gemm runs a one-row product on one thread (its matrix–vector path), so decoding read
//! all the weights with a single core. Here the output columns are split across rayon's pool
//! in parts of at least [`MIN_PART_BYTES`] of weights, each part a contiguous run of `w`'s
//! rows. With AVX-512 each output is one dot product over a weight row with a software
//! prefetch [`PREFETCH_BYTES`] ahead of the stream (on two Zen 4 cores, faster than gemm's
//! path and than the same kernel without the prefetch, which leaves the stream to the
//! hardware prefetchers); elsewhere each part is gemm's own matrix–vector product.

use rayon::prelude::*;

use super::gemm_call;

/// Weight bytes below which a part is not split further: smaller parts cost more in
/// hand-overs between threads than they save in reading.
const MIN_PART_BYTES: usize = 256 * 1024;

/// `B` of a product `x · B`, `[k, n]`, read by columns: column `j` is `k` consecutive `f32`
/// from `ptr + j · column_stride`.
#[derive(Clone, Copy)]
pub struct Columns {
    pub ptr: *const f32,
    pub k: usize,
    pub n: usize,
    pub column_stride: usize,
}

// The pointer is only read, and the caller keeps the storage alive for the call.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    /// Where column `j` starts (a method, so closures capture the whole Sync struct).
    fn column(self, j: usize) -> *const f32 {
        self.ptr.wrapping_add(j * self.column_stride)
    }
}

/// `out[j] = Σᵢ x[i] · B[i][j]` for `x` of `B.k` contiguous `f32`.
///
/// # Safety
/// `x` must address `b.k` values, and `b` its `n` columns of `k` values each.
pub unsafe fn product(x: *const f32, b: Columns, out: &mut [f32]) {
    debug_assert_eq!(out.len(), b.n);
    let x = SendPtr(x);
    let column_bytes = b.k.max(1) * 4;
    let columns_per_part = MIN_PART_BYTES.div_ceil(column_bytes);
    let parts = rayon::current_num_threads()
        .min(b.n / columns_per_part.max(1))
        .max(1);
    let kernel = Kernel::detect();
    if parts == 1 {
        unsafe { kernel.run(x.0, b, 0, out) };
        return;
    }
    let chunk = b.n.div_ceil(parts);
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(part, out)| unsafe { kernel.run(x.get(), b, part * chunk, out) });
}

/// The most rows [`few_rows_product`] takes: beyond, gemm's own parallel path is faster.
pub const MAX_ROWS: usize = 16;

/// The left-hand side of a few-rows product: `m` rows of `k` values, `row_stride` apart.
#[derive(Clone, Copy)]
pub struct Rows {
    pub ptr: *const f32,
    pub m: usize,
    pub row_stride: isize,
}

unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    // A method, so closures capture the whole (Sync) struct and not its raw pointer.
    fn start(self) -> *const f32 {
        self.ptr
    }
}

/// `out[r][j] = Σᵢ x[r][i] · B[i][j]` for `m` rows (`out` row-major `[m, n]`), the columns
/// split across rayon's pool as in [`product`], each part one gemm call on all rows: the
/// weights are read once for every row, on every core (gemm alone runs such a small product
/// on one thread).
///
/// # Safety
/// `x` must address its `m` rows of `b.k` values, and `b` its `n` columns of `k` values.
pub unsafe fn few_rows_product(x: Rows, b: Columns, out: &mut [f32]) {
    debug_assert_eq!(out.len(), x.m * b.n);
    let column_bytes = b.k.max(1) * 4;
    let columns_per_part = MIN_PART_BYTES.div_ceil(column_bytes);
    let parts = rayon::current_num_threads()
        .min(b.n / columns_per_part.max(1))
        .max(1);
    let chunk = b.n.div_ceil(parts);
    let out_ptr = SendMutPtr(out.as_mut_ptr());
    let run = |part: usize| {
        let first = part * chunk;
        let width = chunk.min(b.n - first);
        // SAFETY: parts write disjoint column ranges of `out`; the caller vouches for the
        // operands.
        unsafe {
            gemm_call::<f32>(
                x.m,
                width,
                b.k,
                out_ptr.get().add(first),
                1,
                b.n as isize,
                x.start(),
                1,
                x.row_stride,
                b.column(first),
                b.column_stride as isize,
                1,
                gemm::Parallelism::None,
            )
        }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SendMutPtr(*mut f32);
unsafe impl Send for SendMutPtr {}
unsafe impl Sync for SendMutPtr {}

impl SendMutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*const f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // A method, so closures capture the wrapper (which is Sync) and not its raw field.
    fn get(self) -> *const f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Gemm,
}

/// The name of the kernel [`product`] runs on this CPU (for logs and CI).
pub fn kernel_name() -> &'static str {
    match Kernel::detect() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => "avx512f dot products",
        Kernel::Gemm => "gemm matrix-vector",
    }
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && pmc_cpu::allows("avx512f") {
            return Kernel::Avx512;
        }
        Kernel::Gemm
    }

    /// Columns `first..first + out.len()` of `x · B` into `out`, on the calling thread.
    unsafe fn run(self, x: *const f32, b: Columns, first: usize, out: &mut [f32]) {
        let w = b.ptr.wrapping_add(first * b.column_stride);
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::dot_rows(x, w, b.column_stride, b.k, out) },
            Kernel::Gemm => unsafe {
                gemm_call::<f32>(
                    1,
                    out.len(),
                    b.k,
                    out.as_mut_ptr(),
                    1,
                    out.len() as isize,
                    x,
                    1,
                    b.k as isize,
                    w,
                    b.column_stride as isize,
                    1,
                    gemm::Parallelism::None,
                )
            },
        }
    }
}

/// How far ahead of the weight row being read the kernel asks for cache lines (1024 f32).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 4096;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    use super::PREFETCH_BYTES;

    /// `out[r] = x · w[r]` for rows `w + r · stride` of `k` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_rows(x: *const f32, w: *const f32, stride: usize, k: usize, out: &mut [f32]) {
        const LANES: usize = 16;
        const STEP: usize = 4 * LANES; // four independent accumulators hide the FMA latency
        let whole = k / STEP * STEP;
        let tail_mask: __mmask16 = ((1u32 << (k % LANES)) - 1) as __mmask16;
        for (r, o) in out.iter_mut().enumerate() {
            let row = w.wrapping_add(r * stride);
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            unsafe {
                while i < whole {
                    // Prefetches never fault, so running past the matrix's end is harmless.
                    let ahead = (row.wrapping_add(i) as *const i8).wrapping_add(PREFETCH_BYTES);
                    for line in 0..4 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                    }
                    for (lane, acc) in acc.iter_mut().enumerate() {
                        let at = i + lane * LANES;
                        *acc = _mm512_fmadd_ps(
                            _mm512_loadu_ps(row.add(at)),
                            _mm512_loadu_ps(x.add(at)),
                            *acc,
                        );
                    }
                    i += STEP;
                }
                while i + LANES <= k {
                    acc[0] = _mm512_fmadd_ps(
                        _mm512_loadu_ps(row.add(i)),
                        _mm512_loadu_ps(x.add(i)),
                        acc[0],
                    );
                    i += LANES;
                }
                if i < k {
                    acc[1] = _mm512_fmadd_ps(
                        _mm512_maskz_loadu_ps(tail_mask, row.add(i)),
                        _mm512_maskz_loadu_ps(tail_mask, x.add(i)),
                        acc[1],
                    );
                }
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            *o = _mm512_reduce_add_ps(sum);
        }
    }
}
