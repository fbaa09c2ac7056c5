//! Synchronous data parallelism: the collective operations a training step needs, and what a
//! step does with them.
//!
//! Every rank holds the same weights and takes a disjoint shard of each global batch (as even
//! as the batch allows; rank r's `share` is its images over the batch's). The step runs on the
//! shard; with synchronised batch norm (the default) each layer's batch statistics are summed
//! across ranks before they normalise (Σz, Σz² per channel) and so are the backward sums (Σdy,
//! Σdy·x̂), so every rank normalises and differentiates as a single process on the whole batch
//! would. Its loss is the mean over its shard, so its gradients are the global mean's over its
//! share; `average` weighs each rank's by its share while summing them. With per-rank batch norm each rank uses its shard's statistics and the
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
    /// Starts summing `values` across ranks and returns while they travel, where the
    /// transport can (MPI: a non-blocking allreduce); [`PendingSum::finish`] gives the sums.
    /// Every rank starts the same sums in the same order, among its other collectives. By
    /// default the sum is made here, whole.
    fn start_sum_f32(&self, values: Vec<f32>) -> Box<dyn PendingSum + '_> {
        let mut values = values;
        self.sum_f32(&mut values);
        Box::new(Summed(values))
    }
}

/// A sum started by [`Collective::start_sum_f32`].
pub trait PendingSum {
    /// Lets the operation move on (MPI progresses inside its calls); whether it is done.
    fn progress(&mut self) -> bool;
    /// The sums, waiting for the other ranks' values if they have not all arrived (under the
    /// collective's timeout).
    fn finish(self: Box<Self>) -> Vec<f32>;
}

/// A sum already made.
struct Summed(Vec<f32>);

impl PendingSum for Summed {
    fn progress(&mut self) -> bool {
        true
    }

    fn finish(self: Box<Self>) -> Vec<f32> {
        self.0
    }
}

/// The group a [`super::net::TrainNet`] trains in.
#[derive(Clone, Debug)]
pub struct Group {
    /// The ranks.
    pub collective: Arc<dyn Collective>,
    /// Batch statistics over the global batch (synchronised batch norm) rather than each
    /// rank's shard.
    pub sync_bn: bool,
    /// Gradients are summed in buckets of about this many bytes, each sent as soon as the
    /// backward pass has finished its layers, so the transfer overlaps the layers below; 0:
    /// all of them in one allreduce after the backward pass.
    pub bucket_bytes: usize,
}

/// The default [`Group::bucket_bytes`]: 1 MB. Each bucket is one more allreduce and its
/// latency; PyTorch's DDP uses 25 MB, sized for networks a hundred times larger than these.
pub const BUCKET_BYTES: usize = 1_000_000;

/// Forward: the moments `(Σz, Σz²)` of every rank's shard, summed, times this rank's
/// `share`: what this shard's sums would be if it had the global batch's statistics, so that
/// batch norm, dividing by the shard's rows, gets the global means.
pub(crate) fn sync_moments(c: &dyn Collective, m: &mut Moments, share: f64) {
    sum_pair(c, m, 1.0, share);
}

/// Backward: batch norm's sums `(Σdy, Σdy·x̂)` as one process would have them. Each rank's dy
/// is the global loss's over its `share` (its loss is its shard's mean), so the sums are
/// weighed by the shares: Σ_r share_r·S_r, the same on every rank, which batch norm divides by
/// the shard's rows for means in the shard's scale, and which are γ and β's global gradients.
pub(crate) fn sync_backward_sums(c: &dyn Collective, s: &mut Moments, share: f64) {
    sum_pair(c, s, share, 1.0);
}

/// `(a, b)` ← `after · Σ_ranks(before · (a, b))`, in one allreduce.
fn sum_pair(c: &dyn Collective, (a, b): &mut Moments, before: f64, after: f64) {
    let mut both: Vec<f64> = a.iter().chain(b.iter()).map(|v| v * before).collect();
    c.sum_f64(&mut both);
    for (x, y) in a.iter_mut().chain(b.iter_mut()).zip(&both) {
        *x = y * after;
    }
}

/// Gradients as one process on the global batch would have them: Σ_r share_r·g_r, in one
/// allreduce of all of them (1, the allreduces made). With equal shards, their mean.
pub(crate) fn average(c: &dyn Collective, grads: &mut [Vec<f32>], share: f32) -> usize {
    Buckets::new(c, share, 0, grads.len()).finish(grads)
}

/// The gradients of a step on their way to being averaged as [`average`] does, bucket by
/// bucket while the backward pass goes on: parameters are handed over as their gradients are
/// final ([`Buckets::ready`]), a bucket leaves when it holds [`Group::bucket_bytes`], and
/// [`Buckets::finish`] sends whatever is left (the parameters the pass never reached too, as
/// `average` would) and writes every sum back. Element by element the sums are those of one
/// allreduce.
pub(crate) struct Buckets<'c> {
    c: &'c dyn Collective,
    share: f32,
    /// Values per bucket (at least one parameter's go in a bucket).
    limit: usize,
    sent: Vec<bool>,
    open: Vec<usize>,
    open_len: usize,
    pending: Vec<(Vec<usize>, Box<dyn PendingSum + 'c>)>,
}

impl<'c> Buckets<'c> {
    /// For `params` parameters, weighed by `share`, in buckets of `bytes`.
    pub(crate) fn new(c: &'c dyn Collective, share: f32, bytes: usize, params: usize) -> Self {
        Buckets {
            c,
            share,
            limit: bytes / 4,
            sent: vec![false; params],
            open: Vec::new(),
            open_len: 0,
            pending: Vec::new(),
        }
    }

    /// The gradients of `params` are final; a full bucket leaves. With buckets of 0 bytes
    /// nothing leaves before [`Buckets::finish`].
    pub(crate) fn ready(&mut self, grads: &[Vec<f32>], params: impl IntoIterator<Item = usize>) {
        self.take(grads, params);
        if self.limit > 0 && self.open_len >= self.limit {
            self.send(grads);
        }
        for (_, sum) in &mut self.pending {
            sum.progress();
        }
    }

    /// Puts the parameters not sent yet into the open bucket.
    fn take(&mut self, grads: &[Vec<f32>], params: impl IntoIterator<Item = usize>) {
        for p in params {
            if !self.sent[p] {
                self.sent[p] = true;
                self.open.push(p);
                self.open_len += grads[p].len();
            }
        }
    }

    fn send(&mut self, grads: &[Vec<f32>]) {
        if self.open.is_empty() {
            return;
        }
        let mut flat = Vec::with_capacity(self.open_len);
        for &p in &self.open {
            flat.extend(grads[p].iter().map(|v| v * self.share));
        }
        let sum = self.c.start_sum_f32(flat);
        self.pending.push((std::mem::take(&mut self.open), sum));
        self.open_len = 0;
    }

    /// Sends the rest and writes every bucket's sums back into `grads`; the number of
    /// allreduces the gradients took.
    pub(crate) fn finish(mut self, grads: &mut [Vec<f32>]) -> usize {
        self.take(grads, 0..grads.len());
        self.send(grads);
        let n = self.pending.len();
        for (params, sum) in self.pending {
            let flat = sum.finish();
            let mut at = 0;
            for p in params {
                let len = grads[p].len();
                grads[p].copy_from_slice(&flat[at..at + len]);
                at += len;
            }
        }
        n
    }
}

/// This rank's share of the global batch: its `batch` images over every rank's.
pub(crate) fn share(c: &dyn Collective, batch: usize) -> (f64, usize) {
    let mut n = [batch as f64];
    c.sum_f64(&mut n);
    let total = n[0].round() as usize;
    (batch as f64 / total.max(1) as f64, total)
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
