//! The classifier head: global average pool, dropout, the fully connected layer and softmax
//! cross-entropy, each forward with its backward.

use mobilenet_kernels::gemm::{gemm, PackedB};
use mobilenet_kernels::{Epilogue, Isa};

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

/// Knowledge distillation (Hinton et al. 2015): the mean over `n` rows of
/// `T² · KL(soft ‖ softmax(logits / T))`, where `soft` holds the teacher's probabilities at
/// temperature `T` (rows summing to 1). The `T²` keeps the gradient's size independent of `T`.
/// Returns the loss and writes `dlogits = T · (softmax(logits / T) − soft) / n`.
pub fn distillation_loss(
    logits: &[f32],
    soft: &[f32],
    k: usize,
    temperature: f32,
    dlogits: &mut [f32],
) -> f32 {
    let n = logits.len() / k;
    let t = temperature as f64;
    let mut loss = 0.0f64;
    for ((row, q), d) in logits
        .chunks_exact(k)
        .zip(soft.chunks_exact(k))
        .zip(dlogits.chunks_exact_mut(k))
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| ((v as f64 - max) / t).exp()).sum();
        let log_sum = sum.ln();
        for j in 0..k {
            let log_p = (row[j] as f64 - max) / t - log_sum;
            let q = q[j] as f64;
            if q > 0.0 {
                loss += q * (q.ln() - log_p);
            }
            d[j] = (t * (log_p.exp() - q) / n as f64) as f32;
        }
    }
    (t * t * loss / n.max(1) as f64) as f32
}

/// The teacher's probabilities at temperature `T` from its probabilities at 1:
/// `softmax(z / T) = p^(1/T) / Σ p^(1/T)`, row by row (so any runtime's output serves, an
/// integer model's included).
pub fn soften(probabilities: &mut [f32], k: usize, temperature: f32) {
    for row in probabilities.chunks_exact_mut(k) {
        let mut sum = 0.0f64;
        for p in row.iter_mut() {
            *p = p.max(0.0).powf(1.0 / temperature);
            sum += *p as f64;
        }
        if sum > 0.0 {
            row.iter_mut().for_each(|p| *p = (*p as f64 / sum) as f32);
        } else {
            row.fill(1.0 / k as f32);
        }
    }
}

/// The classifier: `logits[batch, classes] = pooled[batch, cin] · W[cin, classes] + b`.
pub(crate) fn fc_forward(
    isa: Isa,
    pooled: &[f32],
    (w, b): (&[f32], &[f32]),
    cin: usize,
    classes: usize,
    logits: &mut [f32],
) {
    let batch = pooled.len() / cin;
    let packed = PackedB::new(isa, w, cin, classes);
    let epi = Epilogue::new(Some(b), f32::NEG_INFINITY, f32::INFINITY);
    gemm(batch, pooled, cin, &packed, logits, classes, &epi);
}

/// Backward of [`fc_forward`]: `dW = pooledᵀ · dlogits`, `db = Σ dlogits` (both overwritten)
/// and `dpooled = dlogits · Wᵀ`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fc_backward(
    isa: Isa,
    pooled: &[f32],
    dlogits: &[f32],
    w: &[f32],
    (cin, classes): (usize, usize),
    dw: &mut [f32],
    db: &mut [f32],
    dpooled: &mut [f32],
) {
    dw.fill(0.0);
    for (prow, drow) in pooled.chunks_exact(cin).zip(dlogits.chunks_exact(classes)) {
        for (i, &pv) in prow.iter().enumerate() {
            if pv != 0.0 {
                for (g, &d) in dw[i * classes..(i + 1) * classes].iter_mut().zip(drow) {
                    *g += pv * d;
                }
            }
        }
    }
    db.fill(0.0);
    for drow in dlogits.chunks_exact(classes) {
        for (g, &d) in db.iter_mut().zip(drow) {
            *g += d;
        }
    }
    let batch = pooled.len() / cin;
    let wt = PackedB::from_transposed(isa, w, classes, cin);
    gemm(
        batch,
        dlogits,
        classes,
        &wt,
        dpooled,
        cin,
        &Epilogue::linear(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;
    use crate::train::bn::{activation_backward, activation_forward};
    use crate::train::gradcheck::{check_gradient, project};
    use crate::train::Rng;

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
        // Distillation: the gradient matches finite differences at several temperatures, and a
        // student that already gives the teacher's soft targets has zero loss and gradient.
        let mut soft: Vec<f32> = (0..n * k).map(|_| rng.uniform().max(1e-3)).collect();
        for row in soft.chunks_exact_mut(k) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|p| *p /= s);
        }
        for t in [1.0, 2.0, 4.0] {
            let mut d = vec![0.0; n * k];
            distillation_loss(&logits, &soft, k, t, &mut d);
            check_gradient("distill", &mut logits, &d, |l| {
                let mut scratch = vec![0.0; n * k];
                distillation_loss(l, &soft, k, t, &mut scratch) as f64
            });
            let mut same = vec![0.0; n * k];
            for (row, out) in logits.chunks_exact(k).zip(same.chunks_exact_mut(k)) {
                let e: Vec<f32> = row.iter().map(|v| (v / t).exp()).collect();
                let s: f32 = e.iter().sum();
                out.iter_mut().zip(&e).for_each(|(o, v)| *o = v / s);
            }
            let loss = distillation_loss(&logits, &same, k, t, &mut d);
            assert!(
                loss.abs() < 1e-5 && d.iter().all(|g| g.abs() < 1e-6),
                "{loss}"
            );
        }
        // Softening probabilities equals a softmax of the logits at the temperature.
        let row = [1.0f32, 2.0, 0.5];
        let mut p: Vec<f32> = row.iter().map(|v| v.exp()).collect();
        let s: f32 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= s);
        soften(&mut p, 3, 2.0);
        let e: Vec<f32> = row.iter().map(|v| (v / 2.0).exp()).collect();
        let s: f32 = e.iter().sum();
        for (a, b) in p.iter().zip(&e) {
            assert!((a - b / s).abs() < 1e-6);
        }

        // Uniform logits: loss ln k whatever the smoothing.
        let mut d = vec![0.0; k];
        let (loss, _) = softmax_cross_entropy(&[0.0; 5], &[2], k, 0.1, &mut d);
        assert!((loss - (k as f32).ln()).abs() < 1e-6);
    }
}
