//! Running model work on rayon's thread pool.
//!
//! Every parallel product (the quantized kernels, the GEMM behind burn's matmul) runs on
//! rayon's global pool. Called from a thread outside the pool, each one is handed over to the
//! pool's workers while the caller sleeps until it is done: two futex round trips per
//! product. A decoding step is a few hundred products of tens of microseconds each, so on
//! two cores those hand-overs took about a third of the step. Called from a worker, the
//! caller takes its own share of the product and the other workers steal the rest.

/// Runs `work` on one of rayon's worker threads (the caller waits for it once), so the
/// parallel work inside splits among the workers without a hand-over per product.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work(); // already a worker
    }
    rayon::scope(|_| work())
}
