//! Keeping large tensor buffers in the process instead of handing them back to the kernel.
//!
//! glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
//! `mmap` and returns it with `munmap` on free. A training step allocates and frees tensors of
//! that size dozens of times (a `[4, 8, 512, 512]` attention-score tensor is 32 MiB, the
//! logits of a 512-token batch 64 MiB), so every one of them costs a page fault and a
//! kernel-side zeroing per 4 KiB page: on the `bench-train` config that was an eighth of the
//! step time. Serving them from the heap and never trimming it lets freed buffers be reused.

/// Makes glibc's malloc serve large allocations from one heap and keep freed memory for
/// reuse. Process-wide, so only binaries call it, once, at start-up; peak RSS is unchanged
/// (the memory is reused, not added), but the process no longer shrinks after a peak.
/// A no-op on other C libraries.
pub fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; called before other threads
    // allocate, as glibc recommends.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // One arena: a worker thread's arena is made of 64 MiB heaps, which cannot hold a
        // larger buffer (a logits chunk, a layer's activations), and gives pages back with
        // madvise when it shrinks, so the buffers thread pools allocate were faulted in and
        // zeroed again step after step. SmolLM2 training (bench-train --model smollm2-135m,
        // Zen 3): 4.27 M → 2.39 M page faults, 138 → 126 CPU-seconds for the same work.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
