//! Synchronous data parallelism: the collective operations a training step needs, and what a
//! step does with them.
//!
//! Every rank holds the same weights and takes an equal, disjoint shard of each global batch.
//! The step runs on the shard; with synchronised batch norm (the default) each layer's batch
//! statistics are summed across ranks before they normalise (Σz, Σz² per channel) and so are the
//! backward sums (Σdy, Σdy·x̂), so every rank normalises and differentiates as a single
//! process on the whole batch would. Its loss is the mean over its shard, which scales its
//! gradients by the rank count relative to the global batch's mean; [`average`] undoes that
//! while summing them. With per-rank batch norm each rank uses its shard's statistics and the
//! moving averages are averaged across ranks after every step, so the ranks stay identical.
//!
//! The transport is behind [`Collective`]: MPI for `mpirun` (the CLI's `mpi` feature), or
//! [`ThreadGroup`], ranks as threads of one process, with which tests check the arithmetic.

use std::sync::{Arc, Barrier, Mutex};

use super::bn::Moments;

/// The collective operations of a fixed group of ranks. Every rank calls each operation in the
/// same order with buffers of the same length. An implementation that cannot complete one (a
/// rank died, a timeout) ends the process with a message saying so rather than return: a step
/// cannot continue with part of the group.
pub trait Collective: std::fmt::Debug + Send + Sync {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum across ranks, in place; every rank gets the same result.
    fn sum_f64(&self, values: &mut [f64]);
    /// Element-wise sum across ranks, in place; every rank gets the same result.
    fn sum_f32(&self, values: &mut [f32]);
    /// Rank 0's `values` on every rank.
    fn broadcast_f32(&self, values: &mut [f32]);
}

/// The group a [`super::net::TrainNet`] trains in.
#[derive(Clone, Debug)]
pub struct Group {
    /// The ranks.
    pub collective: Arc<dyn Collective>,
    /// Batch statistics over the global batch (synchronised batch norm) rather than each
    /// rank's shard.
    pub sync_bn: bool,
}

/// Batch-norm sums `(Σa, Σb)` of every rank's shard, divided by the rank count: what one
/// shard's sums would be if every shard had the global batch's statistics. Batch norm then
/// divides by the shard's rows and gets the global means; its γ and β gradients (the sums
/// themselves) come out as the global ones over the rank count, which [`average`] restores.
pub(crate) fn sync_sums(c: &dyn Collective, (a, b): &mut Moments) {
    let n = a.len();
    let mut both: Vec<f64> = a.iter().chain(b.iter()).copied().collect();
    c.sum_f64(&mut both);
    let inv = 1.0 / c.size() as f64;
    for (x, y) in a.iter_mut().chain(b.iter_mut()).zip(&both) {
        *x = y * inv;
    }
    debug_assert_eq!(a.len(), n);
}

/// Gradients summed across ranks in one allreduce of all of them and divided by the rank
/// count (each shard's loss is a mean over its shard, so each rank's gradients are the rank
/// count times its share of the global batch's).
pub(crate) fn average(c: &dyn Collective, grads: &mut [Vec<f32>]) {
    let total: usize = grads.iter().map(Vec::len).sum();
    let mut flat = Vec::with_capacity(total);
    for g in grads.iter() {
        flat.extend_from_slice(g);
    }
    c.sum_f32(&mut flat);
    let inv = 1.0 / c.size() as f32;
    let mut at = 0;
    for g in grads.iter_mut() {
        for (x, y) in g.iter_mut().zip(&flat[at..]) {
            *x = y * inv;
        }
        at += g.len();
    }
}

/// Bytes one rank sends into [`average`] per step for gradients of these lengths.
pub fn gradient_bytes(grads: &[Vec<f32>]) -> usize {
    4 * grads.iter().map(Vec::len).sum::<usize>()
}

/// Ranks as threads of one process: sums in rank order, so every rank gets the same bits.
#[derive(Debug)]
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    size: usize,
    barrier: Barrier,
    buffer: Mutex<Vec<f64>>,
}

impl ThreadGroup {
    /// `size` ranks sharing one buffer; hand one to each thread.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            buffer: Mutex::new(Vec::new()),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Every rank's `values` combined by `op` in rank order (`op(acc, rank, values)`).
    fn collect(&self, values: &mut [f64], op: impl Fn(&mut [f64], usize, &[f64])) {
        let s = &self.shared;
        for turn in 0..s.size {
            if turn == self.rank {
                let mut buf = s.buffer.lock().unwrap_or_else(|e| e.into_inner());
                if turn == 0 {
                    buf.clear();
                    buf.resize(values.len(), 0.0);
                }
                op(&mut buf, turn, values);
            }
            s.barrier.wait();
        }
        values.copy_from_slice(&s.buffer.lock().unwrap_or_else(|e| e.into_inner()));
        s.barrier.wait();
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.collect(values, |acc, _, v| {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        });
    }

    fn sum_f32(&self, values: &mut [f32]) {
        // Summed in f32 in rank order, as an MPI_SUM of floats is.
        let mut wide: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        self.collect(&mut wide, |acc, _, v| {
            for (a, x) in acc.iter_mut().zip(v) {
                *a = (*a as f32 + *x as f32) as f64;
            }
        });
        for (v, w) in values.iter_mut().zip(&wide) {
            *v = *w as f32;
        }
    }

    fn broadcast_f32(&self, values: &mut [f32]) {
        let mut wide: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        self.collect(&mut wide, |acc, rank, v| {
            if rank == 0 {
                acc.copy_from_slice(v);
            }
        });
        for (v, w) in values.iter_mut().zip(&wide) {
            *v = *w as f32;
        }
    }
}
