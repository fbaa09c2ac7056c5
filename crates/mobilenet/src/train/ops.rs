//! Training ops as explicit forward/backward pairs (llm.c style), on row-major `[rows, c]`
//! views of NHWC activations (rows = N·H·W). Each has a finite-difference gradient check below.
//!
//! The convolutions' forward and backward passes are in [`super::net`], on top of the
//! kernels crate.

use crate::config::Activation;

/// What batch norm's backward pass needs from its forward pass.
#[derive(Clone, Debug, Default)]
pub struct BnCache {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// `1 / √(σ²_batch + ε)` per channel.
    pub inv_std: Vec<f32>,
}

/// Per-channel sums over rows: `(Σx, Σx²)` in f64 (a batch of 32 at 112×112 has 401k rows).
pub(crate) fn channel_moments(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0f64; c];
    let mut sq = vec![0.0f64; c];
    // Sum each block of rows in f32 (vectorises), then add the block to the f64 totals.
    let mut bsum = vec![0.0f32; c];
    let mut bsq = vec![0.0f32; c];
    let isa = mobilenet_kernels::Isa::detect();
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
    let (sum, sq) = channel_moments(x, c);
    let (cache, unbiased) = bn_statistics(&sum, &sq, rows, eps);
    // y = x·scale + shift with scale = γ·inv_std, shift = β − mean·scale.
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| beta[ch] - cache.mean[ch] * scale[ch])
        .collect();
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ch in 0..c {
            yr[ch] = xr[ch] * scale[ch] + shift[ch];
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
/// derivative applied first: `dy = da · act'(a)` is written back into `da`, and the result is
/// `(Σdy, Σdy·x̂)` per channel (x̂ recomputed from `z` and the cache).
pub(crate) fn bn_act_backward_sums(
    z: &[f32],
    a: &[f32],
    da: &mut [f32],
    c: usize,
    cache: &BnCache,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let isa = mobilenet_kernels::Isa::detect();
    let hi = activation_max(act);
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dyx = vec![0.0f64; c];
    let mut b_dy = vec![0.0f32; c];
    let mut b_dyx = vec![0.0f32; c];
    let block = 256 * c;
    for ((zb, ab), db) in z
        .chunks(block)
        .zip(a.chunks(block))
        .zip(da.chunks_mut(block))
    {
        b_dy.fill(0.0);
        b_dyx.fill(0.0);
        mobilenet_kernels::bn::backward_sums(
            isa,
            zb,
            ab,
            db,
            c,
            &cache.mean,
            &cache.inv_std,
            hi,
            &mut b_dy,
            &mut b_dyx,
        );
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

/// Global average pool: `x` `[n, pixels, c]` → `y` `[n, c]`.
pub fn avgpool_forward(x: &[f32], n: usize, pixels: usize, c: usize, y: &mut [f32]) {
    for (img, out) in x
        .chunks_exact(pixels * c)
        .zip(y.chunks_exact_mut(c))
        .take(n)
    {
        mobilenet_kernels::pool::global_avg_pool(img, pixels, c, out);
    }
}

/// Backward of [`avgpool_forward`]: every pixel gets `dy / pixels`.
pub fn avgpool_backward(dy: &[f32], n: usize, pixels: usize, c: usize, dx: &mut [f32]) {
    let scale = 1.0 / pixels as f32;
    for (img, d) in dx
        .chunks_exact_mut(pixels * c)
        .zip(dy.chunks_exact(c))
        .take(n)
    {
        for px in img.chunks_exact_mut(c) {
            for (o, &g) in px.iter_mut().zip(d) {
                *o = g * scale;
            }
        }
    }
}

/// Inverted dropout: keeps each value with probability `1 − rate`, scaled by `1/(1 − rate)`;
/// `mask` receives the per-value factor (0 or the scale) for the backward pass.
pub fn dropout_forward(x: &mut [f32], rate: f32, rng: &mut crate::train::Rng, mask: &mut Vec<f32>) {
    mask.clear();
    if rate <= 0.0 {
        mask.resize(x.len(), 1.0);
        return;
    }
    let scale = 1.0 / (1.0 - rate);
    for v in x.iter_mut() {
        let m = if rng.uniform() >= rate { scale } else { 0.0 };
        mask.push(m);
        *v *= m;
    }
}

/// Backward of [`dropout_forward`].
pub fn dropout_backward(mask: &[f32], d: &mut [f32]) {
    for (g, &m) in d.iter_mut().zip(mask) {
        *g *= m;
    }
}

/// Mean softmax cross-entropy over `n` rows of `k` logits, with label smoothing `smoothing`
/// (the target puts `1 − smoothing + smoothing/k` on the label and `smoothing/k` elsewhere).
/// Returns the loss, the number of rows whose arg-max is the label, and writes
/// `dlogits = (softmax − target) / n`.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[usize],
    k: usize,
    smoothing: f32,
    dlogits: &mut [f32],
) -> (f32, usize) {
    let n = labels.len();
    let mut loss = 0.0f64;
    let mut correct = 0;
    let off = smoothing / k as f32;
    let on = 1.0 - smoothing + off;
    for ((row, d), &label) in logits
        .chunks_exact(k)
        .zip(dlogits.chunks_exact_mut(k))
        .zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let log_sum = sum.ln() + max as f64;
        let mut best = 0;
        for j in 0..k {
            if row[j] > row[best] {
                best = j;
            }
            let target = if j == label { on } else { off };
            let logp = row[j] as f64 - log_sum;
            loss -= target as f64 * logp;
            d[j] = ((logp.exp() - target as f64) / n as f64) as f32;
        }
        if best == label {
            correct += 1;
        }
    }
    ((loss / n as f64) as f32, correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Rng;

    /// Central-difference check of `grad` against `loss` at a sample of coordinates of `x`.
    pub(crate) fn check_gradient(
        what: &str,
        x: &mut [f32],
        grad: &[f32],
        mut loss: impl FnMut(&[f32]) -> f64,
    ) {
        let eps = 1e-2f32;
        let step = (x.len() / 40).max(1);
        for i in (0..x.len()).step_by(step) {
            let orig = x[i];
            x[i] = orig + eps;
            let up = loss(x);
            x[i] = orig - eps;
            let down = loss(x);
            x[i] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            let analytic = grad[i] as f64;
            let tol = 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3;
            assert!(
                (numeric - analytic).abs() <= tol,
                "{what}[{i}]: numeric {numeric}, analytic {analytic}"
            );
        }
    }

    /// A fixed random projection of an output to a scalar loss.
    fn project(y: &[f32], r: &[f32]) -> f64 {
        y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn batch_norm_gradients() {
        let (rows, c) = (12, 5);
        let mut rng = Rng::new(1);
        let mut x: Vec<f32> = (0..rows * c).map(|_| rng.normal() * 2.0 + 0.5).collect();
        let mut gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let mut beta: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let r: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
        let eps = 1e-3;
        let mut y = vec![0.0; rows * c];
        let (cache, _) = bn_forward_train(&x, c, &gamma, &beta, eps, &mut y);
        let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
        bn_backward(&x, c, &cache, &gamma, &r, &mut dx, &mut dg, &mut db);
        let (g0, b0) = (gamma.clone(), beta.clone());
        check_gradient("bn dx", &mut x, &dx, |x| {
            let mut y = vec![0.0; rows * c];
            bn_forward_train(x, c, &g0, &b0, eps, &mut y);
            project(&y, &r)
        });
        let x0 = x.clone();
        check_gradient("bn dgamma", &mut gamma, &dg, |g| {
            let mut y = vec![0.0; rows * c];
            bn_forward_train(&x0, c, g, &b0, eps, &mut y);
            project(&y, &r)
        });
        check_gradient("bn dbeta", &mut beta, &db, |b| {
            let mut y = vec![0.0; rows * c];
            bn_forward_train(&x0, c, &g0, b, eps, &mut y);
            project(&y, &r)
        });
    }

    #[test]
    fn batch_norm_normalises_and_reports_unbiased_variance() {
        let x = [1.0, 10.0, 3.0, 20.0, 5.0, 30.0];
        let mut y = [0.0; 6];
        let (cache, var) = bn_forward_train(&x, 2, &[1.0, 1.0], &[0.0, 0.0], 0.0, &mut y);
        assert_eq!(cache.mean, [3.0, 20.0]);
        assert_eq!(var, [4.0, 100.0]);
        assert!((y[0] + 1.224_744_9).abs() < 1e-5 && y[2].abs() < 1e-6);
    }

    #[test]
    fn activation_pool_and_dropout_gradients() {
        let mut rng = Rng::new(2);
        let (n, pixels, c) = (2, 6, 3);
        // Values away from the kinks at 0 and 6, where the derivative jumps.
        let mut x: Vec<f32> = (0..n * pixels * c)
            .map(|i| if i % 3 == 0 { 7.0 } else { 0.5 + 4.0 * rng.uniform() } * if i % 4 == 0 { -1.0 } else { 1.0 })
            .collect();
        let r: Vec<f32> = (0..n * c).map(|_| rng.normal()).collect();
        let forward = |x: &[f32]| {
            let mut a = x.to_vec();
            activation_forward(&mut a, Activation::Relu6);
            let mut p = vec![0.0; n * c];
            avgpool_forward(&a, n, pixels, c, &mut p);
            (a, p)
        };
        let (a, _) = forward(&x);
        let mut dx = vec![0.0; x.len()];
        avgpool_backward(&r, n, pixels, c, &mut dx);
        activation_backward(&a, Activation::Relu6, &mut dx);
        check_gradient("relu6+avgpool", &mut x, &dx, |x| project(&forward(x).1, &r));

        let mut v: Vec<f32> = (0..100).map(|_| rng.normal()).collect();
        let orig = v.clone();
        let mut mask = Vec::new();
        dropout_forward(&mut v, 0.25, &mut rng, &mut mask);
        let kept = mask.iter().filter(|&&m| m > 0.0).count();
        assert!((60..=90).contains(&kept), "{kept} of 100 kept at rate 0.25");
        for ((o, y), m) in orig.iter().zip(&v).zip(&mask) {
            assert_eq!(*y, o * m);
        }
        let mut d = vec![1.0; 100];
        dropout_backward(&mask, &mut d);
        assert_eq!(d, mask);
    }

    #[test]
    fn cross_entropy_gradient_and_smoothing() {
        let mut rng = Rng::new(3);
        let (n, k) = (4, 5);
        let mut logits: Vec<f32> = (0..n * k).map(|_| 2.0 * rng.normal()).collect();
        let labels = [0, 3, 4, 1];
        for smoothing in [0.0, 0.1] {
            let mut d = vec![0.0; n * k];
            softmax_cross_entropy(&logits, &labels, k, smoothing, &mut d);
            check_gradient("xent", &mut logits, &d, |l| {
                let mut scratch = vec![0.0; n * k];
                softmax_cross_entropy(l, &labels, k, smoothing, &mut scratch).0 as f64
            });
        }
        // Uniform logits: loss ln k whatever the smoothing.
        let mut d = vec![0.0; k];
        let (loss, _) = softmax_cross_entropy(&[0.0; 5], &[2], k, 0.1, &mut d);
        assert!((loss - (k as f32).ln()).abs() < 1e-6);
    }
}
