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

/// As [`on_pool`], with the other workers kept awake until `work` returns: each waits for
/// work by polling the pool instead of going to sleep.
///
/// Between the products of a decoding step the caller does a few microseconds of
/// element-wise work alone; a rayon worker that finds nothing to steal for that long goes to
/// sleep, and the next product waits for the kernel to wake it (on SmolLM2, ~90 context
/// switches a token and 1.73 of 2 cores busy). Polling costs the other cores while the step
/// runs — as ggml's thread pool does while it computes a graph — so it is meant for short,
/// latency-bound work such as a decoding step, not for long batched products where the
/// workers are busy anyway.
pub fn on_awake_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    on_pool(|| {
        let done = AtomicBool::new(false);
        let caller = rayon::current_thread_index();
        rayon::scope(|scope| {
            for _ in 1..rayon::current_num_threads() {
                scope.spawn(|_| {
                    // The caller itself may pop a poller while it waits inside `work`;
                    // polling there would never return to `work`.
                    if rayon::current_thread_index() == caller {
                        return;
                    }
                    // `yield_now` runs one pending job of the pool (stolen work included).
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() == Some(rayon::Yield::Idle) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let result = work();
            done.store(true, Ordering::Release);
            result
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn parallel_sum(n: u64) -> u64 {
        (0..n).into_par_iter().map(|i| i * i).sum()
    }

    #[test]
    fn awake_pool_returns_the_work_result_and_lets_the_workers_go() {
        let expected: u64 = (0..100_000u64).map(|i| i * i).sum();
        for _ in 0..50 {
            assert_eq!(on_awake_pool(|| parallel_sum(100_000)), expected);
        }
        // From inside the pool, nested, and with nested joins in the work.
        let nested = rayon::scope(|_| {
            on_awake_pool(|| {
                let (a, b) = rayon::join(
                    || parallel_sum(1000),
                    || on_awake_pool(|| parallel_sum(2000)),
                );
                a + b
            })
        });
        assert_eq!(nested, parallel_sum(1000) + parallel_sum(2000));
        // The pollers stopped: the pool still runs ordinary work to completion.
        assert_eq!(parallel_sum(100_000), expected);
    }
}
