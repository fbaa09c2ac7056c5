//! [`TrainNet`] in a group of ranks (see [`crate::train::dist`]): the step's hooks.

use super::super::bn::{bn_act_backward_sums, channel_moments, BnCache, Moments};
use super::super::dist::{
    average, share, sync_backward_sums, sync_moments, Buckets, Collective, Group,
};
use super::{StepStats, TrainNet};
use crate::train::profile::TrainOp;
use crate::weights::{names, BnTensor};

impl TrainNet {
    /// Trains as one rank of `group` from now on: each step takes this rank's shard of the
    /// global batch (at least one image), and leaves the same weights on every rank. `None`: a
    /// single process.
    pub fn set_group(&mut self, group: Option<Group>) {
        self.group = group;
    }

    /// Start of a step on `batch` images: this rank's share of the global batch and the
    /// global batch's size (1 and `batch` alone).
    pub(super) fn group_start(&mut self, batch: usize) {
        self.group_share = match &self.group {
            Some(g) => share(&*g.collective, batch),
            None => (1.0, batch),
        };
    }

    /// Allreduces the last step's gradients took: one per bucket (see
    /// [`Group::bucket_bytes`]); 0 outside a group.
    pub fn last_gradient_allreduces(&self) -> usize {
        self.gradient_allreduces
    }

    /// Images of the global batch of the last step (the step's alone outside a group).
    pub fn last_global_batch(&self) -> usize {
        self.group_share.1
    }

    /// What one step sends into collectives per rank: bytes of gradients (in buckets, see
    /// [`Group::bucket_bytes`]),
    /// bytes of synchronised batch norm's sums and how many allreduces they take (two per
    /// convolution layer: forward and backward; none with per-rank batch norm).
    pub fn allreduce_per_step(&self) -> (usize, usize, usize) {
        let grads = 4 * self.params.iter().map(|p| p.value.len()).sum::<usize>();
        let convs: Vec<usize> = self
            .layers
            .iter()
            .filter(|l| super::is_conv(l))
            .map(|l| l.output[2])
            .collect();
        match self.sync_bn() {
            Some(_) => (grads, 32 * convs.iter().sum::<usize>(), 2 * convs.len()),
            None => (grads, 0, 0),
        }
    }

    /// The group this network trains in, if any.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// The group, if batch statistics are synchronised across it.
    fn sync_bn(&self) -> Option<&Group> {
        self.group.as_ref().filter(|g| g.sync_bn)
    }

    /// Forward: the moments of conv output `z` (`c` channels) summed over the group (the
    /// shard's `m` as they are outside one).
    pub(super) fn group_moments(
        &mut self,
        m: Option<Moments>,
        z: &[f32],
        c: usize,
    ) -> Option<Moments> {
        let Some(g) = self.sync_bn().cloned() else {
            return m;
        };
        let mut m = m.unwrap_or_else(|| channel_moments(self.isa, z, c));
        let t = self.clock();
        sync_moments(&*g.collective, &mut m, self.group_share.0);
        self.record(TrainOp::Collectives, t);
        Some(m)
    }

    /// The unbiased batch variance batch norm returned for a shard of `rows` rows, made the
    /// global batch's (`rows` × ranks): the moving variance a single process would keep.
    pub(super) fn group_variance(&self, var: &mut [f32], rows: usize) {
        if self.sync_bn().is_none() {
            return;
        }
        let (n, total) = (rows as f64, rows as f64 / self.group_share.0);
        let shard = if rows > 1 { (n - 1.0) / n } else { 1.0 };
        let factor = shard * total / (total - 1.0);
        for v in var {
            *v = (*v as f64 * factor) as f32;
        }
    }

    /// Backward: batch norm's sums (Σdy, Σdy·x̂) of conv layer output `z` summed over the group
    /// (those of fixed statistics stay the shard's: they only make γ and β's gradients).
    pub(super) fn group_backward_sums(
        &mut self,
        sums: Option<Moments>,
        (z, da): (&[f32], &[f32]),
        cache: &BnCache,
        c: usize,
    ) -> Option<Moments> {
        let Some(g) = self.sync_bn().filter(|_| !cache.fixed).cloned() else {
            return sums;
        };
        let act = self.config.activation();
        let mut s = sums.unwrap_or_else(|| bn_act_backward_sums(self.isa, z, da, c, cache, act));
        let t = self.clock();
        sync_backward_sums(&*g.collective, &mut s, self.group_share.0);
        self.record(TrainOp::Collectives, t);
        Some(s)
    }

    /// The gradient buckets of a step in `c` (the group's collective; `None` outside a group),
    /// the classifier's gradients, final once the head's backward pass ran, handed over.
    pub(super) fn group_buckets<'c>(
        &mut self,
        c: Option<&'c dyn Collective>,
        grads: &[Vec<f32>],
    ) -> Option<Buckets<'c>> {
        let (c, g) = (c?, self.group.as_ref()?);
        let mut b = Buckets::new(c, self.group_share.0 as f32, g.bucket_bytes, grads.len());
        self.group_ready(Some(&mut b), grads, self.fc_param..grads.len());
        Some(b)
    }

    /// Parameters whose gradients are final, handed to the step's buckets.
    pub(super) fn group_ready(
        &mut self,
        buckets: Option<&mut Buckets<'_>>,
        grads: &[Vec<f32>],
        params: impl IntoIterator<Item = usize>,
    ) {
        if let Some(b) = buckets {
            let t = self.clock();
            b.ready(grads, params);
            self.record(TrainOp::Collectives, t);
        }
    }

    /// After a step: gradients averaged over the group, the moving statistics too when each
    /// rank's batch norm had its own (with synchronised ones they are the same everywhere), and
    /// the loss and accuracy of the global batch.
    pub(super) fn group_finish(
        &mut self,
        grads: &mut [Vec<f32>],
        buckets: Option<Buckets>,
        stats: StepStats,
        batch: usize,
        moved_bn: bool,
    ) -> StepStats {
        let Some(g) = self.group.clone() else {
            return stats;
        };
        let c = &*g.collective;
        let (share, total) = self.group_share;
        let t = self.clock();
        self.gradient_allreduces = match buckets {
            Some(b) => b.finish(grads),
            None => average(c, grads, share as f32),
        };
        if moved_bn && !g.sync_bn {
            let keys: Vec<String> = self
                .layers
                .iter()
                .flat_map(|l| {
                    [BnTensor::MovingMean, BnTensor::MovingVariance].map(|t| names::bn(&l.name, t))
                })
                .filter(|k| self.buffers.contains_key(k))
                .collect();
            let mut flat: Vec<f32> = keys.iter().flat_map(|k| self.buffers[k].clone()).collect();
            c.sum_f32(&mut flat);
            let inv = 1.0 / c.size() as f32;
            let mut at = 0;
            for k in &keys {
                let b = self
                    .buffers
                    .get_mut(k)
                    .unwrap_or_else(|| unreachable!("kept"));
                for (x, y) in b.iter_mut().zip(&flat[at..]) {
                    *x = y * inv;
                }
                at += b.len();
            }
        }
        let mut totals = [stats.loss as f64 * batch as f64, stats.correct as f64];
        c.sum_f64(&mut totals);
        self.record(TrainOp::Collectives, t);
        StepStats {
            loss: (totals[0] / total.max(1) as f64) as f32,
            correct: totals[1].round() as usize,
        }
    }
}
