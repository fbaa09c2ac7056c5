//! Batch-norm passes for training, vectorised over channels: per-channel sums, the fused
//! normalise + clamp, and the backward pass's sums and update. Rows of `c` channels (NHWC).
//!
//! Sums are f32 over the rows given; callers keep blocks short (a few hundred rows) and add the
//! blocks in f64, so precision does not depend on the batch size.

use crate::simd::SimdF32;
use crate::Isa;

/// The per-channel vectors of a batch norm followed by a clamp to `[0, hi]`, as its backward
/// pass reads them: `x̂ = (z − mean)·inv_std`, and the forward's `y = z·scale + shift` (the
/// same fused multiply-add as [`affine_clamp`]) tells where the clamp passed the gradient, so
/// the backward pass needs neither the clamped output nor a masked copy of the gradient.
#[derive(Clone, Copy, Debug)]
pub struct BnAct<'a> {
    /// Mean per channel.
    pub mean: &'a [f32],
    /// `1/√(σ² + ε)` per channel.
    pub inv_std: &'a [f32],
    /// The forward pass's per-channel scale.
    pub scale: &'a [f32],
    /// The forward pass's per-channel shift.
    pub shift: &'a [f32],
    /// Upper bound of the clamp (∞ for ReLU).
    pub hi: f32,
}

impl BnAct<'_> {
    fn check(&self, c: usize) {
        for v in [self.mean, self.inv_std, self.scale, self.shift] {
            assert!(v.len() >= c, "per-channel vectors shorter than c");
        }
    }
}

enum Job<'a> {
    Moments {
        x: &'a [f32],
        c: usize,
        sum: &'a mut [f32],
        sq: &'a mut [f32],
    },
    Affine {
        x: &'a [f32],
        c: usize,
        scale: &'a [f32],
        shift: &'a [f32],
        lo: f32,
        hi: f32,
        y: &'a mut [f32],
    },
    BackwardSums {
        z: &'a [f32],
        da: &'a [f32],
        c: usize,
        bn: BnAct<'a>,
        sum_dy: &'a mut [f32],
        sum_dyx: &'a mut [f32],
    },
    BackwardApply {
        z: &'a [f32],
        da: &'a [f32],
        c: usize,
        bn: BnAct<'a>,
        k: &'a [f32],
        mean_dy: &'a [f32],
        mean_dyx: &'a [f32],
        dz: &'a mut [f32],
    },
}

/// Values of one operand in a tile of rows: every pass walks the rows a tile at a time and
/// the channel blocks within it, so the rows it revisits for the next block are still in L1.
/// (Walking all rows once per block of channels read 32-channel layers twice from memory.)
const TILE_VALUES: usize = 2048;
/// How far ahead (in values, 8 KB) the passes prefetch what they read. A training step's
/// activations come from memory (CIFAR's batch of 64 holds 4–8 MB a layer), and on Zen 5 the
/// hardware prefetcher alone left the backward passes waiting on loads: the sums over
/// 65536×16 values from memory took 222–386 µs, 149–184 with the prefetch; the apply 246–535,
/// 191–241 (`examples/bn_passes`, two runs each).
const PF: usize = 2048;

/// Adds each channel's sum and sum of squares over the rows of `x` to `sum` and `sq`.
pub fn channel_moments(isa: Isa, x: &[f32], c: usize, sum: &mut [f32], sq: &mut [f32]) {
    assert!(
        c > 0 && x.len().is_multiple_of(c) && sum.len() >= c && sq.len() >= c,
        "shapes"
    );
    run(isa, &mut Job::Moments { x, c, sum, sq });
}

/// `y = clamp(x · scale[c] + shift[c], lo, hi)` per channel.
#[allow(clippy::too_many_arguments)] // a per-channel affine map and its clamp
pub fn affine_clamp(
    isa: Isa,
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    y: &mut [f32],
) {
    assert!(
        c > 0 && x.len().is_multiple_of(c) && y.len() >= x.len(),
        "shapes"
    );
    assert!(
        scale.len() >= c && shift.len() >= c,
        "per-channel vectors shorter than c"
    );
    run(
        isa,
        &mut Job::Affine {
            x,
            c,
            scale,
            shift,
            lo,
            hi,
            y,
        },
    );
}

/// Backward sums of batch norm followed by a clamp to `[0, hi]`: with `dy = da` where the
/// forward's `y` lay strictly inside the bounds and 0 elsewhere, adds `Σdy` and `Σdy·x̂` per
/// channel to `sum_dy` and `sum_dyx`.
pub fn backward_sums(
    isa: Isa,
    (z, da): (&[f32], &[f32]),
    c: usize,
    bn: &BnAct<'_>,
    sum_dy: &mut [f32],
    sum_dyx: &mut [f32],
) {
    assert!(
        c > 0 && z.len().is_multiple_of(c) && da.len() >= z.len(),
        "shapes"
    );
    bn.check(c);
    assert!(
        sum_dy.len() >= c && sum_dyx.len() >= c,
        "per-channel sums shorter than c"
    );
    run(
        isa,
        &mut Job::BackwardSums {
            z,
            da,
            c,
            bn: *bn,
            sum_dy,
            sum_dyx,
        },
    );
}

/// `dz = k · (dy − mean_dy − x̂ · mean_dyx)` per channel, `dy` the clamp's gradient from `da`
/// as in [`backward_sums`].
pub fn backward_apply(
    isa: Isa,
    (z, da): (&[f32], &[f32]),
    c: usize,
    bn: &BnAct<'_>,
    (k, mean_dy, mean_dyx): (&[f32], &[f32], &[f32]),
    dz: &mut [f32],
) {
    assert!(
        c > 0 && z.len().is_multiple_of(c) && da.len() >= z.len() && dz.len() >= z.len(),
        "shapes"
    );
    bn.check(c);
    for v in [k, mean_dy, mean_dyx] {
        assert!(v.len() >= c, "per-channel vectors shorter than c");
    }
    run(
        isa,
        &mut Job::BackwardApply {
            z,
            da,
            c,
            bn: *bn,
            k,
            mean_dy,
            mean_dyx,
            dz,
        },
    );
}

/// The clamp's gradient `dy` (`da` where the forward's `y = z·m + t` lay strictly inside
/// `(lo, hi)`, else 0) and `x̂ = (z − mean)·inv_std` of the `n` channels at `z` and `da` (a
/// whole vector when `n` is the lane count), from `neg_mu = −mean` and `is = inv_std`.
#[inline(always)]
unsafe fn dy_xhat<S: SimdF32>(
    s: S,
    (z, da, n): (*const f32, *const f32, usize),
    (neg_mu, is, m, t): (S::V, S::V, S::V, S::V),
    (lo, hi): (S::V, S::V),
) -> (S::V, S::V) {
    // Safety: the caller's pointers hold n values (its contract with the public functions).
    unsafe {
        let (z, da) = match n == S::LANES {
            true => (s.load(z), s.load(da)),
            false => (s.load_partial(z, n), s.load_partial(da, n)),
        };
        let dy = s.keep_inside(s.fma(z, m, t), lo, hi, da);
        (dy, s.mul(s.add(z, neg_mu), is))
    }
}

fn run(isa: Isa, job: &mut Job<'_>) {
    // Safety (of the variants): the public functions checked the slices against the shapes.
    crate::simd_dispatch!(isa, (job: &mut Job<'_>) => run_generic)
}

#[inline(always)]
unsafe fn run_generic<S: SimdF32>(s: S, job: &mut Job<'_>) {
    let lanes = S::LANES;
    // Safety: every row holds c values; channel blocks stop at c (partial loads and stores for
    // the last one); the per-channel vectors hold at least c values (checked by the callers).
    unsafe {
        // For each tile of rows [r0, r1) of `$x` and each block of channels [cb, cb + n)
        // within it: `$body` with `ld!`/`st!` for that width.
        macro_rules! tiles {
            ($x:expr, $c:expr, |$r0:ident, $r1:ident, $cb:ident, $n:ident, $full:ident| $body:block) => {{
                let rows = $x.len() / $c;
                let step = (TILE_VALUES / $c).max(1);
                let mut $r0 = 0;
                while $r0 < rows {
                    let $r1 = ($r0 + step).min(rows);
                    let mut $cb = 0;
                    while $cb < $c {
                        let $n = ($c - $cb).min(lanes);
                        let $full = $n == lanes;
                        $body
                        $cb += lanes;
                    }
                    $r0 = $r1;
                }
            }};
        }
        macro_rules! ld {
            ($p:expr, $full:expr, $n:expr) => {
                if $full {
                    s.load($p)
                } else {
                    s.load_partial($p, $n)
                }
            };
        }
        macro_rules! st {
            ($p:expr, $v:expr, $full:expr, $n:expr) => {
                if $full {
                    s.store($p, $v)
                } else {
                    s.store_partial($p, $v, $n)
                }
            };
        }
        // The clamp's gradient mask and x̂ of channel block `cb`: `(y, −mean, inv_std)` where
        // `y = (scale, shift)` recomputes the forward's pre-clamp value.
        macro_rules! bn_block {
            ($bn:expr, $cb:expr, $full:expr, $n:expr) => {{
                let neg_mu = s.mul(ld!($bn.mean.as_ptr().add($cb), $full, $n), s.splat(-1.0));
                let is = ld!($bn.inv_std.as_ptr().add($cb), $full, $n);
                let m = ld!($bn.scale.as_ptr().add($cb), $full, $n);
                let t = ld!($bn.shift.as_ptr().add($cb), $full, $n);
                (neg_mu, is, m, t)
            }};
        }
        match job {
            Job::Moments { x, c, sum, sq } => {
                let c = *c;
                tiles!(x, c, |r0, r1, cb, n, full| {
                    let (mut a, mut b) = (
                        ld!(sum.as_ptr().add(cb), full, n),
                        ld!(sq.as_ptr().add(cb), full, n),
                    );
                    for r in r0..r1 {
                        s.prefetch(x.as_ptr().wrapping_add(r * c + cb + PF));
                        let v = ld!(x.as_ptr().add(r * c + cb), full, n);
                        a = s.add(a, v);
                        b = s.fma(v, v, b);
                    }
                    st!(sum.as_mut_ptr().add(cb), a, full, n);
                    st!(sq.as_mut_ptr().add(cb), b, full, n);
                });
            }
            Job::Affine {
                x,
                c,
                scale,
                shift,
                lo,
                hi,
                y,
            } => {
                let c = *c;
                let (lo, hi) = (s.splat(*lo), s.splat(*hi));
                tiles!(x, c, |r0, r1, cb, n, full| {
                    let (m, t) = (
                        ld!(scale.as_ptr().add(cb), full, n),
                        ld!(shift.as_ptr().add(cb), full, n),
                    );
                    for r in r0..r1 {
                        let o = r * c + cb;
                        s.prefetch(x.as_ptr().wrapping_add(o + PF));
                        let v = s.fma(ld!(x.as_ptr().add(o), full, n), m, t);
                        st!(y.as_mut_ptr().add(o), s.min(s.max(v, lo), hi), full, n);
                    }
                });
            }
            Job::BackwardSums {
                z,
                da,
                c,
                bn,
                sum_dy,
                sum_dyx,
            } => {
                let c = *c;
                let (lo, hi) = (s.zero(), s.splat(bn.hi));
                tiles!(z, c, |r0, r1, cb, n, full| {
                    let (neg_mu, is, m, t) = bn_block!(bn, cb, full, n);
                    let (mut sd, mut sdx) = (
                        ld!(sum_dy.as_ptr().add(cb), full, n),
                        ld!(sum_dyx.as_ptr().add(cb), full, n),
                    );
                    for r in r0..r1 {
                        let o = r * c + cb;
                        s.prefetch(z.as_ptr().wrapping_add(o + PF));
                        s.prefetch(da.as_ptr().wrapping_add(o + PF));
                        let at = (z.as_ptr().add(o), da.as_ptr().add(o), n);
                        let (dv, xhat) = dy_xhat(s, at, (neg_mu, is, m, t), (lo, hi));
                        sd = s.add(sd, dv);
                        sdx = s.fma(dv, xhat, sdx);
                    }
                    st!(sum_dy.as_mut_ptr().add(cb), sd, full, n);
                    st!(sum_dyx.as_mut_ptr().add(cb), sdx, full, n);
                });
            }
            Job::BackwardApply {
                z,
                da,
                c,
                bn,
                k,
                mean_dy,
                mean_dyx,
                dz,
            } => {
                let c = *c;
                let (lo, hi) = (s.zero(), s.splat(bn.hi));
                let neg = s.splat(-1.0);
                tiles!(z, c, |r0, r1, cb, n, full| {
                    let (neg_mu, is, m, t) = bn_block!(bn, cb, full, n);
                    let kk = ld!(k.as_ptr().add(cb), full, n);
                    let neg_md = s.mul(ld!(mean_dy.as_ptr().add(cb), full, n), neg);
                    let neg_mdx = s.mul(ld!(mean_dyx.as_ptr().add(cb), full, n), neg);
                    for r in r0..r1 {
                        let o = r * c + cb;
                        s.prefetch(z.as_ptr().wrapping_add(o + PF));
                        s.prefetch(da.as_ptr().wrapping_add(o + PF));
                        let at = (z.as_ptr().add(o), da.as_ptr().add(o), n);
                        let (dv, xhat) = dy_xhat(s, at, (neg_mu, is, m, t), (lo, hi));
                        let v = s.fma(xhat, neg_mdx, s.add(dv, neg_md));
                        st!(dz.as_mut_ptr().add(o), s.mul(kk, v), full, n);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, Rng};

    #[test]
    fn every_isa_matches_scalar_formulas() {
        // The last two span several tiles of rows.
        for (c, rows) in [(1, 23), (5, 23), (8, 23), (16, 23), (17, 300), (40, 120)] {
            let mut rng = Rng::new(c as u64);
            let x = rng.signed_vec(rows * c);
            let per = |rng: &mut Rng| rng.signed_vec(c);
            let (scale, shift, mean, k, md, mdx) = (
                per(&mut rng),
                per(&mut rng),
                per(&mut rng),
                per(&mut rng),
                per(&mut rng),
                per(&mut rng),
            );
            let inv: Vec<f32> = per(&mut rng).iter().map(|v| v.abs() + 0.5).collect();
            let d0 = rng.signed_vec(rows * c);
            // Scalar formulas.
            let mut want_sum = vec![0.0f32; c];
            let mut want_sq = vec![0.0f32; c];
            let mut want_y = vec![0.0f32; rows * c];
            let mut want_d = d0.clone();
            let mut want_sd = vec![0.0f32; c];
            let mut want_sdx = vec![0.0f32; c];
            let mut want_dz = vec![0.0f32; rows * c];
            for r in 0..rows {
                for ch in 0..c {
                    let i = r * c + ch;
                    want_sum[ch] += x[i];
                    want_sq[ch] += x[i] * x[i];
                    let y = x[i].mul_add(scale[ch], shift[ch]);
                    want_y[i] = y.clamp(0.0, 6.0);
                    if !(y > 0.0 && y < 6.0) {
                        want_d[i] = 0.0;
                    }
                    let xhat = (x[i] - mean[ch]) * inv[ch];
                    want_sd[ch] += want_d[i];
                    want_sdx[ch] += want_d[i] * xhat;
                    want_dz[i] = k[ch] * (want_d[i] - md[ch] - xhat * mdx[ch]);
                }
            }
            for isa in Isa::available() {
                let (mut sum, mut sq) = (vec![0.0; c], vec![0.0; c]);
                channel_moments(isa, &x, c, &mut sum, &mut sq);
                assert_close(&sum, &want_sum, 1e-5, &format!("{isa} sum c{c}"));
                assert_close(&sq, &want_sq, 1e-5, &format!("{isa} sq c{c}"));
                let mut y = vec![0.0; rows * c];
                affine_clamp(isa, &x, c, &scale, &shift, 0.0, 6.0, &mut y);
                assert_close(&y, &want_y, 1e-6, &format!("{isa} affine c{c}"));
                let bn = BnAct {
                    mean: &mean,
                    inv_std: &inv,
                    scale: &scale,
                    shift: &shift,
                    hi: 6.0,
                };
                let (mut sd, mut sdx) = (vec![0.0; c], vec![0.0; c]);
                backward_sums(isa, (&x, &d0), c, &bn, &mut sd, &mut sdx);
                assert_close(&sd, &want_sd, 1e-5, &format!("{isa} sum dy c{c}"));
                assert_close(&sdx, &want_sdx, 1e-5, &format!("{isa} sum dy·x̂ c{c}"));
                let mut dz = vec![0.0; rows * c];
                backward_apply(isa, (&x, &d0), c, &bn, (&k, &md, &mdx), &mut dz);
                assert_close(&dz, &want_dz, 1e-5, &format!("{isa} apply c{c}"));
            }
        }
    }
}
