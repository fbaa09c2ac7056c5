//! Timing helpers shared by the kernel examples (each example uses part of them).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use mobilenet_kernels::rng::Rng;

/// The fastest of `reps` runs of `f`.
pub fn fastest(reps: usize, f: impl FnMut()) -> Duration {
    fastest_after(reps, || {}, f)
}

/// The fastest of `reps` runs of `f`, each after `before` (untimed).
pub fn fastest_after(reps: usize, mut before: impl FnMut(), mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            before();
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// `n` values in [−0.5, 0.5), seeded.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| rng.next_u64() as u32 as f32 / 4e9 - 0.5)
        .collect()
}

/// `n` bytes, seeded.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}
