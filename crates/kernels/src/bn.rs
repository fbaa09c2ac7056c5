//! Batch-norm passes for training, vectorised over channels: per-channel sums, the fused
//! normalise + clamp, and the backward pass's sums and update. Rows of `c` channels (NHWC).
//!
//! Sums are f32 over the rows given; callers keep blocks short (a few hundred rows) and add the
//! blocks in f64, so precision does not depend on the batch size.

use crate::simd::SimdF32;
use crate::Isa;

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
        a: &'a [f32],
        d: &'a mut [f32],
        c: usize,
        mean: &'a [f32],
        inv_std: &'a [f32],
        hi: f32,
        sum_dy: &'a mut [f32],
        sum_dyx: &'a mut [f32],
    },
    BackwardApply {
        z: &'a [f32],
        dy: &'a [f32],
        c: usize,
        mean: &'a [f32],
        inv_std: &'a [f32],
        k: &'a [f32],
        mean_dy: &'a [f32],
        mean_dyx: &'a [f32],
        dz: &'a mut [f32],
    },
}

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

/// Backward sums of batch norm followed by a clamp to `[0, hi]`: zeroes `d` where the output `a`
/// sat on a bound (`d` becomes dL/dy), then adds `Σd` and `Σd·x̂` (x̂ = (z − mean)·inv_std) per
/// channel to `sum_dy` and `sum_dyx`.
#[allow(clippy::too_many_arguments)]
pub fn backward_sums(
    isa: Isa,
    z: &[f32],
    a: &[f32],
    d: &mut [f32],
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    hi: f32,
    sum_dy: &mut [f32],
    sum_dyx: &mut [f32],
) {
    assert!(
        c > 0 && z.len().is_multiple_of(c) && a.len() >= z.len() && d.len() >= z.len(),
        "shapes"
    );
    assert!(
        mean.len() >= c && inv_std.len() >= c && sum_dy.len() >= c && sum_dyx.len() >= c,
        "per-channel vectors shorter than c"
    );
    run(
        isa,
        &mut Job::BackwardSums {
            z,
            a,
            d,
            c,
            mean,
            inv_std,
            hi,
            sum_dy,
            sum_dyx,
        },
    );
}

/// `dz = k · (dy − mean_dy − x̂ · mean_dyx)` per channel, x̂ = (z − mean)·inv_std.
#[allow(clippy::too_many_arguments)]
pub fn backward_apply(
    isa: Isa,
    z: &[f32],
    dy: &[f32],
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    k: &[f32],
    mean_dy: &[f32],
    mean_dyx: &[f32],
    dz: &mut [f32],
) {
    assert!(
        c > 0 && z.len().is_multiple_of(c) && dy.len() >= z.len() && dz.len() >= z.len(),
        "shapes"
    );
    for v in [mean, inv_std, k, mean_dy, mean_dyx] {
        assert!(v.len() >= c, "per-channel vectors shorter than c");
    }
    run(
        isa,
        &mut Job::BackwardApply {
            z,
            dy,
            c,
            mean,
            inv_std,
            k,
            mean_dy,
            mean_dyx,
            dz,
        },
    );
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
        // For each block of channels [cb, cb + n): `$body` with `ld!`/`st!` for that width.
        macro_rules! blocks {
            ($c:expr, |$cb:ident, $n:ident, $full:ident| $body:block) => {{
                let mut $cb = 0;
                while $cb < $c {
                    let $n = ($c - $cb).min(lanes);
                    let $full = $n == lanes;
                    $body
                    $cb += lanes;
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
        match job {
            Job::Moments { x, c, sum, sq } => {
                let c = *c;
                blocks!(c, |cb, n, full| {
                    let (mut a, mut b) = (
                        ld!(sum.as_ptr().add(cb), full, n),
                        ld!(sq.as_ptr().add(cb), full, n),
                    );
                    for row in x.chunks_exact(c) {
                        let v = ld!(row.as_ptr().add(cb), full, n);
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
                blocks!(c, |cb, n, full| {
                    let (m, t) = (
                        ld!(scale.as_ptr().add(cb), full, n),
                        ld!(shift.as_ptr().add(cb), full, n),
                    );
                    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
                        let v = s.fma(ld!(xr.as_ptr().add(cb), full, n), m, t);
                        st!(yr.as_mut_ptr().add(cb), s.min(s.max(v, lo), hi), full, n);
                    }
                });
            }
            Job::BackwardSums {
                z,
                a,
                d,
                c,
                mean,
                inv_std,
                hi,
                sum_dy,
                sum_dyx,
            } => {
                let (c, hi) = (*c, *hi);
                blocks!(c, |cb, n, full| {
                    let neg_mu = s.mul(ld!(mean.as_ptr().add(cb), full, n), s.splat(-1.0));
                    let is = ld!(inv_std.as_ptr().add(cb), full, n);
                    let (mut sd, mut sdx) = (
                        ld!(sum_dy.as_ptr().add(cb), full, n),
                        ld!(sum_dyx.as_ptr().add(cb), full, n),
                    );
                    let (lo, hi) = (s.zero(), s.splat(hi));
                    let rows = z.len() / c;
                    for r in 0..rows {
                        let o = r * c + cb;
                        let dp = d.as_mut_ptr().add(o);
                        let dv = s.keep_inside(
                            ld!(a.as_ptr().add(o), full, n),
                            lo,
                            hi,
                            ld!(dp, full, n),
                        );
                        st!(dp, dv, full, n);
                        let xhat = s.mul(s.add(ld!(z.as_ptr().add(o), full, n), neg_mu), is);
                        sd = s.add(sd, dv);
                        sdx = s.fma(dv, xhat, sdx);
                    }
                    st!(sum_dy.as_mut_ptr().add(cb), sd, full, n);
                    st!(sum_dyx.as_mut_ptr().add(cb), sdx, full, n);
                });
            }
            Job::BackwardApply {
                z,
                dy,
                c,
                mean,
                inv_std,
                k,
                mean_dy,
                mean_dyx,
                dz,
            } => {
                let c = *c;
                blocks!(c, |cb, n, full| {
                    let neg = s.splat(-1.0);
                    let neg_mu = s.mul(ld!(mean.as_ptr().add(cb), full, n), neg);
                    let is = ld!(inv_std.as_ptr().add(cb), full, n);
                    let kk = ld!(k.as_ptr().add(cb), full, n);
                    let neg_md = s.mul(ld!(mean_dy.as_ptr().add(cb), full, n), neg);
                    let neg_mdx = s.mul(ld!(mean_dyx.as_ptr().add(cb), full, n), neg);
                    for ((zr, dr), or) in z
                        .chunks_exact(c)
                        .zip(dy.chunks_exact(c))
                        .zip(dz.chunks_exact_mut(c))
                    {
                        let xhat = s.mul(s.add(ld!(zr.as_ptr().add(cb), full, n), neg_mu), is);
                        let t = s.add(ld!(dr.as_ptr().add(cb), full, n), neg_md);
                        let t = s.fma(xhat, neg_mdx, t);
                        st!(or.as_mut_ptr().add(cb), s.mul(kk, t), full, n);
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
        for c in [1, 5, 8, 16, 17, 40] {
            let rows = 23;
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
            let a: Vec<f32> = rng
                .signed_vec(rows * c)
                .iter()
                .map(|v| 4.0 * v + 2.0)
                .collect();
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
                    want_y[i] = (x[i] * scale[ch] + shift[ch]).clamp(0.0, 6.0);
                    if !(a[i] > 0.0 && a[i] < 6.0) {
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
                let mut d = d0.clone();
                let (mut sd, mut sdx) = (vec![0.0; c], vec![0.0; c]);
                backward_sums(isa, &x, &a, &mut d, c, &mean, &inv, 6.0, &mut sd, &mut sdx);
                assert_eq!(d, want_d, "{isa} mask c{c}");
                assert_close(&sd, &want_sd, 1e-5, &format!("{isa} sum dy c{c}"));
                assert_close(&sdx, &want_sdx, 1e-5, &format!("{isa} sum dy·x̂ c{c}"));
                let mut dz = vec![0.0; rows * c];
                backward_apply(isa, &x, &want_d, c, &mean, &inv, &k, &md, &mdx, &mut dz);
                assert_close(&dz, &want_dz, 1e-5, &format!("{isa} apply c{c}"));
            }
        }
    }
}
