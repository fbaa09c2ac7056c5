//! The execution layer under every runtime: the thread pool, how work is split between its
//! threads, and the few parallel helpers the runtimes call (rows of an image, whole images,
//! a GEMM by rows or by columns, per-thread partial sums).
//!
//! All sharing of one buffer between threads happens here: the runtimes above (f32 inference,
//! training, int8) hand a buffer and a partition to a helper and get disjoint `&mut` chunks
//! back, so none of them holds a raw pointer or an `unsafe` block. Kernels below know nothing
//! of threads.

mod parallel;
mod pool;

pub use parallel::{
    by_rows, for_each_part, for_each_part2, map_parts, map_ranges, par_gemm, par_gemm_moments,
    qgemm_split, split, GemmSplit, RowsFn,
};
pub use pool::SpinPool;

/// `threads`, or every core for 0 (the `--threads` convention of every command).
pub fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
}
