//! Global average pooling and softmax.

/// Mean over the `pixels` positions of an `[pixels, c]` NHWC map, into `out[c]`.
pub fn global_avg_pool(input: &[f32], pixels: usize, c: usize, out: &mut [f32]) {
    assert!(
        input.len() >= pixels * c && out.len() >= c,
        "pool buffers too short"
    );
    out[..c].fill(0.0);
    for px in input[..pixels * c].chunks_exact(c) {
        for (o, &x) in out.iter_mut().zip(px) {
            *o += x;
        }
    }
    let scale = 1.0 / pixels as f32;
    for o in &mut out[..c] {
        *o *= scale;
    }
}

/// Softmax of `logits` into `out`, computed stably (max subtracted first).
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "softmax buffers differ in length");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = (x - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_averages_each_channel() {
        let input = [1.0, 10.0, 3.0, 20.0, 5.0, 30.0];
        let mut out = [0.0; 2];
        global_avg_pool(&input, 3, 2, &mut out);
        assert_eq!(out, [3.0, 20.0]);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let logits = [1000.0, 1001.0, 999.0];
        let mut p = [0.0; 3];
        softmax(&logits, &mut p);
        let e = [(-1.0f32).exp(), 1.0, (-2.0f32).exp()];
        let s: f32 = e.iter().sum();
        for (got, want) in p.iter().zip(e.iter().map(|x| x / s)) {
            assert!((got - want).abs() < 1e-6);
        }
    }
}
