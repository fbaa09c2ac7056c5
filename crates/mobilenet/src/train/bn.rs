//! Batch norm with the activation after it: the single-threaded reference ops (batch norm in
//! training and evaluation mode, ReLU/ReLU6, each forward with its backward) and the threaded
//! forward/backward pair the network runs, rows of `[rows, c]` (NHWC, rows = N·H·W) split
//! between the execution layer's threads.

use mobilenet_kernels::bn::BnAct;
use mobilenet_kernels::Isa;

use crate::config::Activation;
use crate::exec::{for_each_part, map_ranges, split, SpinPool};

/// What batch norm's backward pass needs from its forward pass.
#[derive(Clone, Debug, Default)]
pub struct BnCache {
    /// Batch mean per channel (the moving mean when `fixed`).
    pub mean: Vec<f32>,
    /// `1 / √(σ²_batch + ε)` per channel (of the moving variance when `fixed`).
    pub inv_std: Vec<f32>,
    /// The forward's `y = z·scale + shift` per channel (`scale = γ·inv_std`): the backward
    /// pass recomputes `y` to see where the activation passed the gradient.
    pub scale: Vec<f32>,
    /// See `scale`.
    pub shift: Vec<f32>,
    /// The statistics were fixed, not the batch's: they do not depend on the input, so the
    /// backward pass has no terms through them.
    pub fixed: bool,
}

/// Per-channel `(Σx, Σx²)` over rows, in f64.
pub(crate) type Moments = (Vec<f64>, Vec<f64>);

/// Per-channel sums over rows: `(Σx, Σx²)` in f64 (a batch of 32 at 112×112 has 401k rows).
pub(crate) fn channel_moments(isa: Isa, x: &[f32], c: usize) -> Moments {
    let mut sum = vec![0.0f64; c];
    let mut sq = vec![0.0f64; c];
    // Sum each block of rows in f32 (vectorises), then add the block to the f64 totals.
    let mut bsum = vec![0.0f32; c];
    let mut bsq = vec![0.0f32; c];
    for block in x.chunks(256 * c) {
        bsum.fill(0.0);
        bsq.fill(0.0);
        mobilenet_kernels::bn::channel_moments(isa, block, c, &mut bsum, &mut bsq);
        for ch in 0..c {
            sum[ch] += bsum[ch] as f64;
            sq[ch] += bsq[ch] as f64;
        }
    }
    (sum, sq)
}

impl BnCache {
    /// Sets `scale = γ·inv_std` and `shift = β − mean·scale` from the statistics.
    fn set_affine(&mut self, gamma: &[f32], beta: &[f32]) {
        self.scale = gamma
            .iter()
            .zip(&self.inv_std)
            .map(|(g, s)| g * s)
            .collect();
        self.shift = (beta.iter().zip(&self.mean).zip(&self.scale))
            .map(|((b, m), s)| b - m * s)
            .collect();
    }

    /// The kernels' view of this cache for an activation with upper bound `hi`.
    fn channels(&self, hi: f32) -> BnAct<'_> {
        BnAct {
            mean: &self.mean,
            inv_std: &self.inv_std,
            scale: &self.scale,
            shift: &self.shift,
            hi,
        }
    }
}

/// Batch statistics from per-channel `Σx` and `Σx²` over `rows` values: the cache (mean,
/// `1/√(σ² + ε)`) and the unbiased variance (for the moving average).
pub(crate) fn bn_statistics(sum: &[f64], sq: &[f64], rows: usize, eps: f32) -> (BnCache, Vec<f32>) {
    let n = rows as f64;
    let mut cache = BnCache::default();
    let mut unbiased = Vec::with_capacity(sum.len());
    for (&s, &q) in sum.iter().zip(sq) {
        let mean = s / n;
        let var = (q / n - mean * mean).max(0.0);
        cache.mean.push(mean as f32);
        cache.inv_std.push((1.0 / (var + eps as f64).sqrt()) as f32);
        unbiased.push(if rows > 1 {
            (var * n / (n - 1.0)) as f32
        } else {
            var as f32
        });
    }
    (cache, unbiased)
}

/// Batch norm in training mode: normalise each channel of `x` (`[rows, c]`) by the batch
/// statistics, then `y = γ·x̂ + β`. Returns the cache and the unbiased batch variance (for the
/// moving average).
pub fn bn_forward_train(
    x: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
) -> (BnCache, Vec<f32>) {
    let rows = x.len() / c;
    let (sum, sq) = channel_moments(Isa::SCALAR, x, c);
    let (mut cache, unbiased) = bn_statistics(&sum, &sq, rows, eps);
    // y = x·scale + shift with scale = γ·inv_std, shift = β − mean·scale.
    cache.set_affine(gamma, beta);
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ch in 0..c {
            yr[ch] = xr[ch] * cache.scale[ch] + cache.shift[ch];
        }
    }
    (cache, unbiased)
}

/// Batch norm with fixed statistics (evaluation): `y = γ·(x − μ)/√(σ² + ε) + β`.
#[allow(clippy::too_many_arguments)]
pub fn bn_forward_eval(
    x: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    y: &mut [f32],
) {
    let scale: Vec<f32> = (0..c)
        .map(|ch| gamma[ch] / (var[ch] + eps).sqrt())
        .collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ch in 0..c {
            yr[ch] = xr[ch] * scale[ch] + shift[ch];
        }
    }
}

/// Batch norm backward (training mode). `x` is the forward input; `dgamma`/`dbeta` are
/// overwritten; `dx` is overwritten.
///
/// `dx = γ·inv_std/m · (m·dy − Σdy − x̂·Σ(dy·x̂))`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    x: &[f32],
    c: usize,
    cache: &BnCache,
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let rows = (x.len() / c) as f64;
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dy_xhat = vec![0.0f64; c];
    let mut b_dy = vec![0.0f32; c];
    let mut b_dyx = vec![0.0f32; c];
    for (xb, db) in x.chunks(256 * c).zip(dy.chunks(256 * c)) {
        b_dy.fill(0.0);
        b_dyx.fill(0.0);
        for (xr, dr) in xb.chunks_exact(c).zip(db.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (xr[ch] - cache.mean[ch]) * cache.inv_std[ch];
                b_dy[ch] += dr[ch];
                b_dyx[ch] += dr[ch] * xhat;
            }
        }
        for ch in 0..c {
            sum_dy[ch] += b_dy[ch] as f64;
            sum_dy_xhat[ch] += b_dyx[ch] as f64;
        }
    }
    for ch in 0..c {
        dbeta[ch] = sum_dy[ch] as f32;
        dgamma[ch] = sum_dy_xhat[ch] as f32;
    }
    let k: Vec<f32> = (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect();
    let mean_dy: Vec<f32> = (0..c).map(|ch| (sum_dy[ch] / rows) as f32).collect();
    let mean_dyx: Vec<f32> = (0..c).map(|ch| (sum_dy_xhat[ch] / rows) as f32).collect();
    for ((dxr, xr), dr) in dx
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(dy.chunks_exact(c))
    {
        for ch in 0..c {
            let xhat = (xr[ch] - cache.mean[ch]) * cache.inv_std[ch];
            dxr[ch] = k[ch] * (dr[ch] - mean_dy[ch] - xhat * mean_dyx[ch]);
        }
    }
}

/// The sums batch norm's backward pass needs, over a block of rows, with the activation's
/// derivative applied first: `(Σdy, Σdy·x̂)` per channel for `dy = da · act'(y)` (`y` and x̂
/// recomputed from `z` and the cache).
pub(crate) fn bn_act_backward_sums(
    isa: Isa,
    z: &[f32],
    da: &[f32],
    c: usize,
    cache: &BnCache,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let bn = cache.channels(activation_max(act));
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dyx = vec![0.0f64; c];
    let mut b_dy = vec![0.0f32; c];
    let mut b_dyx = vec![0.0f32; c];
    let block = 256 * c;
    for (zb, db) in z.chunks(block).zip(da.chunks(block)) {
        b_dy.fill(0.0);
        b_dyx.fill(0.0);
        mobilenet_kernels::bn::backward_sums(isa, (zb, db), c, &bn, &mut b_dy, &mut b_dyx);
        for ch in 0..c {
            sum_dy[ch] += b_dy[ch] as f64;
            sum_dyx[ch] += b_dyx[ch] as f64;
        }
    }
    (sum_dy, sum_dyx)
}

/// Upper bound of the activation (∞ for ReLU).
pub fn activation_max(act: Activation) -> f32 {
    match act {
        Activation::Relu => f32::INFINITY,
        Activation::Relu6 => 6.0,
    }
}

/// Applies ReLU or ReLU6 in place.
pub fn activation_forward(y: &mut [f32], act: Activation) {
    let hi = activation_max(act);
    for v in y {
        *v = v.max(0.0).min(hi);
    }
}

/// Multiplies `d` by the activation's derivative, read from its output `a`: 1 where
/// `0 < a < max`, else 0.
pub fn activation_backward(a: &[f32], act: Activation, d: &mut [f32]) {
    let hi = activation_max(act);
    for (g, &v) in d.iter_mut().zip(a) {
        if !(v > 0.0 && v < hi) {
            *g = 0.0;
        }
    }
}

/// Batch norm with batch statistics followed by the activation, rows split between threads:
/// per-thread channel sums (or the `moments` of `z` its producer took), combined, then
/// `a = act(z·scale + shift)` in parallel. Returns the cache and the unbiased batch variance.
/// The single-threaded reference is [`bn_forward_train`] followed by [`activation_forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_act_forward(
    pool: &mut SpinPool,
    isa: Isa,
    (z, moments): (&[f32], Option<Moments>),
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    act: Activation,
    a: &mut [f32],
) -> (BnCache, Vec<f32>) {
    let rows = z.len() / c;
    let ranges = split(rows, pool.threads(), 1);
    let (sum, sq) = moments.unwrap_or_else(|| {
        combine(map_ranges(pool, &ranges, |_, r| {
            channel_moments(isa, &z[r.start * c..r.end * c], c)
        }))
    });
    let (mut cache, unbiased) = bn_statistics(&sum, &sq, rows, eps);
    cache.set_affine(gamma, beta);
    affine_act(pool, isa, z, &cache, act, a);
    (cache, unbiased)
}

/// Batch norm with fixed (moving) statistics followed by the activation, in a training step
/// whose batch norm is frozen: `a = act(γ·(z − μ)/√(σ² + ε) + β)`. The cache it returns makes
/// [`bn_act_backward`] give `dz = γ/√(σ² + ε) · dy` and the γ, β gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_act_forward_fixed(
    pool: &mut SpinPool,
    isa: Isa,
    z: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    eps: f32,
    act: Activation,
    a: &mut [f32],
) -> BnCache {
    let mut cache = BnCache {
        mean: mean.to_vec(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        fixed: true,
        ..BnCache::default()
    };
    cache.set_affine(gamma, beta);
    affine_act(pool, isa, z, &cache, act, a);
    cache
}

/// `a = act(z·scale + shift)` with the cache's per-channel scale and shift, rows split between
/// the pool's threads.
fn affine_act(
    pool: &mut SpinPool,
    isa: Isa,
    z: &[f32],
    cache: &BnCache,
    act: Activation,
    a: &mut [f32],
) {
    let c = cache.scale.len();
    let ranges = split(z.len() / c, pool.threads(), 1);
    let (scale, shift, hi) = (&cache.scale, &cache.shift, activation_max(act));
    for_each_part(pool, a, &ranges, c, |_, row, out| {
        let x = &z[row * c..row * c + out.len()];
        mobilenet_kernels::bn::affine_clamp(isa, x, c, scale, shift, 0.0, hi, out);
    });
}

/// Backward of [`bn_act_forward`]: `da` (dL/da) → `dz`, `dgamma`, `dbeta`, rows split between
/// threads: one pass over `z` and `da` for the sums ([`bn_act_backward_sums_all`]), one that
/// writes `dz` ([`BnGrad::apply`]). The reference is [`activation_backward`] then
/// [`bn_backward`]. The network makes `dz` a block at a time inside the convolution's backward
/// pass instead (`ConvLayer::backward`); this whole-batch form is what the tests check.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_act_backward(
    pool: &mut SpinPool,
    isa: Isa,
    z: &[f32],
    c: usize,
    cache: &BnCache,
    gamma: &[f32],
    act: Activation,
    da: &[f32],
    dz: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let grad =
        bn_act_backward_sums_all(pool, isa, (z, da), None, cache, gamma, act, (dgamma, dbeta));
    let ranges = split(z.len() / c, pool.threads(), 1);
    for_each_part(pool, dz, &ranges, c, |_, row, out| {
        grad.apply(isa, (z, da), row, out)
    });
}

/// The first pass of [`bn_act_backward`] (rows split between threads): the sums over the
/// batch (or the `sums` the producer of `da` took, see [`bn_act_backward_sums`]), written as
/// the γ and β gradients, and what the second pass needs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_act_backward_sums_all<'a>(
    pool: &mut SpinPool,
    isa: Isa,
    (z, da): (&[f32], &[f32]),
    sums: Option<Moments>,
    cache: &'a BnCache,
    gamma: &[f32],
    act: Activation,
    (dgamma, dbeta): (&mut [f32], &mut [f32]),
) -> BnGrad<'a> {
    let c = gamma.len();
    let rows = z.len() / c;
    let ranges = split(rows, pool.threads(), 1);
    let (sum_dy, sum_dyx) = sums.unwrap_or_else(|| {
        combine(map_ranges(pool, &ranges, |_, r| {
            let part = r.start * c..r.end * c;
            bn_act_backward_sums(isa, &z[part.clone()], &da[part], c, cache, act)
        }))
    });
    for ch in 0..c {
        dbeta[ch] = sum_dy[ch] as f32;
        dgamma[ch] = sum_dyx[ch] as f32;
    }
    // Fixed statistics contribute no terms of their own: dz = k·dy.
    let n = if cache.fixed {
        f64::INFINITY
    } else {
        rows as f64
    };
    BnGrad {
        bn: cache.channels(activation_max(act)),
        c,
        k: (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect(),
        mean_dy: sum_dy.iter().map(|s| (s / n) as f32).collect(),
        mean_dyx: sum_dyx.iter().map(|s| (s / n) as f32).collect(),
    }
}

/// Batch norm's backward pass once its sums are known: `dz = k·(dy − mean_dy − x̂·mean_dyx)`
/// for any block of rows, so a consumer can make `dz` a block at a time.
pub(crate) struct BnGrad<'a> {
    bn: BnAct<'a>,
    c: usize,
    k: Vec<f32>,
    mean_dy: Vec<f32>,
    mean_dyx: Vec<f32>,
}

impl BnGrad<'_> {
    /// `dz` of rows `first ..` (as many as `out` holds) of the whole batch's `z` and `da`.
    pub(crate) fn apply(&self, isa: Isa, (z, da): (&[f32], &[f32]), first: usize, out: &mut [f32]) {
        let part = first * self.c..first * self.c + out.len();
        let means = (&self.k[..], &self.mean_dy[..], &self.mean_dyx[..]);
        let (zs, ds) = (&z[part.clone()], &da[part]);
        mobilenet_kernels::bn::backward_apply(isa, (zs, ds), self.c, &self.bn, means, out);
    }
}

/// Adds `m` to the running sums `acc` (which start as `None`).
pub(crate) fn add_moments(acc: &mut Option<Moments>, m: Moments) {
    match acc {
        None => *acc = Some(m),
        Some((a, b)) => {
            for (x, y) in a.iter_mut().zip(&m.0) {
                *x += y;
            }
            for (x, y) in b.iter_mut().zip(&m.1) {
                *x += y;
            }
        }
    }
}

/// Adds up per-part `(Σa, Σb)` channel sums (parts past the work, left empty, add nothing).
pub(crate) fn combine(parts: Vec<Moments>) -> Moments {
    let mut total = None;
    for part in parts.into_iter().filter(|p| !p.0.is_empty()) {
        add_moments(&mut total, part);
    }
    total.unwrap_or_default()
}

#[cfg(test)]
mod tests;
