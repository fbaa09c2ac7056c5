//! Gradients of the convolutions for training: depthwise 3×3 (input and weights) and the direct
//! k×k convolution (weights; the stem's input needs no gradient).
//!
//! All NHWC, one image per call, vectorised over channels. The 1×1 convolutions' gradients are
//! GEMMs (`dX = dY·Wᵀ`, `dW = Xᵀ·dY`) and use [`crate::gemm`]. Each kernel has a scalar
//! reference below and tests comparing every instruction set with it.

use crate::conv::ConvShape;
use crate::simd::SimdF32;
use crate::{ConvGeometry, Isa};

mod dw_input;
mod dw_weights;
mod stem;

/// Kernel size of the depthwise convolution.
const K: usize = 3;

/// One backward computation, so that one `#[target_feature]` wrapper per instruction set
/// serves all of them.
enum Job<'a> {
    DwInput {
        g: &'a ConvGeometry,
        c: usize,
        dy: &'a [f32],
        w: &'a [f32],
        dx: &'a mut [f32],
    },
    DwWeights {
        g: &'a ConvGeometry,
        c: usize,
        x: &'a [f32],
        dy: &'a [f32],
        dw: &'a mut [f32],
    },
    ConvWeights {
        g: &'a ConvGeometry,
        shape: ConvShape,
        x: &'a [f32],
        dy: &'a [f32],
        dw: &'a mut [f32],
    },
}

/// Gradient of a depthwise 3×3 convolution with respect to its input, for one image:
/// `dx[iy, ix, c] = Σ dy[oy, ox, c] · w[ky, kx, c]` over the taps that read `(iy, ix)`.
/// `dx` (`[in_h, in_w, c]`) is overwritten.
///
/// # Panics
///
/// If a slice is shorter than its shape.
pub fn dwconv3x3_backward_input(
    isa: Isa,
    g: &ConvGeometry,
    c: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) {
    assert!(
        dy.len() >= g.out_h * g.out_w * c,
        "dy shorter than out_h·out_w·c"
    );
    assert!(w.len() >= K * K * c, "w shorter than 3·3·c");
    assert!(
        dx.len() >= g.in_h * g.in_w * c,
        "dx shorter than in_h·in_w·c"
    );
    run(isa, &mut Job::DwInput { g, c, dy, w, dx });
}

/// Gradient of a depthwise 3×3 convolution with respect to its weights, for one image, added
/// to `dw` (`[3, 3, c]`): `dw[ky, kx, c] += Σ dy[oy, ox, c] · x[iy, ix, c]`.
///
/// # Panics
///
/// If a slice is shorter than its shape.
pub fn dwconv3x3_backward_weights(
    isa: Isa,
    g: &ConvGeometry,
    c: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    assert!(x.len() >= g.in_h * g.in_w * c, "x shorter than in_h·in_w·c");
    assert!(
        dy.len() >= g.out_h * g.out_w * c,
        "dy shorter than out_h·out_w·c"
    );
    assert!(dw.len() >= K * K * c, "dw shorter than 3·3·c");
    run(isa, &mut Job::DwWeights { g, c, x, dy, dw });
}

/// Gradient of a direct k×k convolution with respect to its weights (`[k, k, cin, cout]`),
/// for one image, added to `dw`.
///
/// # Panics
///
/// If a slice is shorter than its shape.
pub fn conv2d_backward_weights(
    isa: Isa,
    g: &ConvGeometry,
    shape: ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let ConvShape { k, cin, cout } = shape;
    assert!(
        x.len() >= g.in_h * g.in_w * cin,
        "x shorter than in_h·in_w·cin"
    );
    assert!(
        dy.len() >= g.out_h * g.out_w * cout,
        "dy shorter than out_h·out_w·cout"
    );
    assert!(
        dw.len() >= k * k * cin * cout,
        "dw shorter than k·k·cin·cout"
    );
    run(
        isa,
        &mut Job::ConvWeights {
            g,
            shape,
            x,
            dy,
            dw,
        },
    );
}

fn run(isa: Isa, job: &mut Job<'_>) {
    // Safety (of the variants): the public functions checked the slices against the shapes.
    crate::simd_dispatch!(isa, (job: &mut Job<'_>) => run_generic)
}

/// The first `n ≤ LANES` values at `p` (a whole vector without a mask when `n` is all of it).
/// A function inlined into the kernels, not a closure: closures do not inherit the caller's
/// target features, and the intrinsics in one would become calls.
#[inline(always)]
unsafe fn load_n<S: SimdF32>(s: S, n: usize, p: *const f32) -> S::V {
    // Safety: the caller guarantees n values at p.
    unsafe {
        match n == S::LANES {
            true => s.load(p),
            false => s.load_partial(p, n),
        }
    }
}

/// Stores the first `n ≤ LANES` lanes of `v` at `p`, as [`load_n`] loads them.
#[inline(always)]
unsafe fn store_n<S: SimdF32>(s: S, n: usize, p: *mut f32, v: S::V) {
    // Safety: the caller guarantees n writable values at p.
    unsafe {
        match n == S::LANES {
            true => s.store(p, v),
            false => s.store_partial(p, v, n),
        }
    }
}

/// `acc[0..n] += alpha · b[0..n]`.
#[inline(always)]
unsafe fn axpy<S: SimdF32>(s: S, acc: *mut f32, alpha: f32, b: *const f32, n: usize) {
    let lanes = S::LANES;
    // Safety: the caller guarantees n values at each pointer.
    unsafe {
        let av = s.splat(alpha);
        let mut i = 0;
        while i + lanes <= n {
            s.store(acc.add(i), s.fma(av, s.load(b.add(i)), s.load(acc.add(i))));
            i += lanes;
        }
        if i < n {
            let r = n - i;
            let v = s.fma(
                av,
                s.load_partial(b.add(i), r),
                s.load_partial(acc.add(i), r),
            );
            s.store_partial(acc.add(i), v, r);
        }
    }
}

/// The input row and column a tap reads for output `(o, k)`, if inside the image.
#[inline(always)]
pub(super) fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < size).then_some(i)
}

#[inline(always)]
unsafe fn run_generic<S: SimdF32>(s: S, job: &mut Job<'_>) {
    // Safety: every index is bounds-checked by `tap` against the image, and channel runs stay
    // inside rows of c (or cin/cout) values; slice lengths were checked by the callers.
    unsafe {
        match job {
            Job::DwInput { g, c, dy, w, dx } => match g.stride {
                1 => dw_input::input::<S, 1>(s, g, *c, dy, w, dx),
                2 => dw_input::input::<S, 2>(s, g, *c, dy, w, dx),
                _ => dw_input::input::<S, 0>(s, g, *c, dy, w, dx),
            },
            Job::DwWeights { g, c, x, dy, dw } => match g.stride {
                1 => dw_weights::weights::<S, 1>(s, g, *c, x, dy, dw),
                2 => dw_weights::weights::<S, 2>(s, g, *c, x, dy, dw),
                _ => dw_weights::weights::<S, 0>(s, g, *c, x, dy, dw),
            },
            Job::ConvWeights {
                g,
                shape,
                x,
                dy,
                dw,
            } => {
                if stem::supported(*shape) {
                    stem::weights(s, g, *shape, x, dy, dw);
                    return;
                }
                let ConvShape { k, cin, cout } = *shape;
                for oy in 0..g.out_h {
                    for ky in 0..k {
                        let Some(iy) = tap(oy, ky, g.stride, g.pad_top, g.in_h) else {
                            continue;
                        };
                        for ox in 0..g.out_w {
                            let d = dy.as_ptr().add((oy * g.out_w + ox) * cout);
                            for kx in 0..k {
                                let Some(ix) = tap(ox, kx, g.stride, g.pad_left, g.in_w) else {
                                    continue;
                                };
                                let xi = x.as_ptr().add((iy * g.in_w + ix) * cin);
                                for ci in 0..cin {
                                    let row =
                                        dw.as_mut_ptr().add(((ky * k + kx) * cin + ci) * cout);
                                    axpy(s, row, *xi.add(ci), d, cout);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Scalar reference of [`dwconv3x3_backward_input`].
pub fn dwconv3x3_backward_input_reference(
    g: &ConvGeometry,
    c: usize,
    dy: &[f32],
    w: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0.0; g.in_h * g.in_w * c];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ky in 0..K {
                for kx in 0..K {
                    let (Some(iy), Some(ix)) = (
                        tap(oy, ky, g.stride, g.pad_top, g.in_h),
                        tap(ox, kx, g.stride, g.pad_left, g.in_w),
                    ) else {
                        continue;
                    };
                    for ch in 0..c {
                        dx[(iy * g.in_w + ix) * c + ch] +=
                            dy[(oy * g.out_w + ox) * c + ch] * w[(ky * K + kx) * c + ch];
                    }
                }
            }
        }
    }
    dx
}

/// Scalar reference of [`dwconv3x3_backward_weights`] (starting from zero).
pub fn dwconv3x3_backward_weights_reference(
    g: &ConvGeometry,
    c: usize,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let mut dw = vec![0.0; K * K * c];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ky in 0..K {
                for kx in 0..K {
                    let (Some(iy), Some(ix)) = (
                        tap(oy, ky, g.stride, g.pad_top, g.in_h),
                        tap(ox, kx, g.stride, g.pad_left, g.in_w),
                    ) else {
                        continue;
                    };
                    for ch in 0..c {
                        dw[(ky * K + kx) * c + ch] +=
                            dy[(oy * g.out_w + ox) * c + ch] * x[(iy * g.in_w + ix) * c + ch];
                    }
                }
            }
        }
    }
    dw
}

/// Scalar reference of [`conv2d_backward_weights`] (starting from zero).
pub fn conv2d_backward_weights_reference(
    g: &ConvGeometry,
    shape: ConvShape,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let ConvShape { k, cin, cout } = shape;
    let mut dw = vec![0.0; k * k * cin * cout];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ky in 0..k {
                for kx in 0..k {
                    let (Some(iy), Some(ix)) = (
                        tap(oy, ky, g.stride, g.pad_top, g.in_h),
                        tap(ox, kx, g.stride, g.pad_left, g.in_w),
                    ) else {
                        continue;
                    };
                    for ci in 0..cin {
                        for co in 0..cout {
                            dw[((ky * k + kx) * cin + ci) * cout + co] += x
                                [(iy * g.in_w + ix) * cin + ci]
                                * dy[(oy * g.out_w + ox) * cout + co];
                        }
                    }
                }
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dwconv::dwconv3x3_reference;
    use crate::testing::{assert_close, Rng};
    use crate::Epilogue;

    fn geometries() -> Vec<ConvGeometry> {
        let mut out = Vec::new();
        for (h, w) in [(1, 1), (2, 3), (5, 5), (8, 7), (13, 10)] {
            for stride in [1, 2] {
                out.push(ConvGeometry::tf_same(h, w, 3, stride));
                out.push(ConvGeometry::symmetric(h, w, 3, stride, 1));
            }
        }
        out
    }

    #[test]
    fn depthwise_gradients_match_reference_for_every_isa() {
        for g in geometries() {
            for c in [1, 5, 8, 16, 17, 33] {
                let mut rng = Rng::new((g.in_h * 100 + g.in_w * 10 + c + g.stride) as u64);
                let x = rng.signed_vec(g.in_h * g.in_w * c);
                let dy = rng.signed_vec(g.out_h * g.out_w * c);
                let w = rng.signed_vec(9 * c);
                let want_dx = dwconv3x3_backward_input_reference(&g, c, &dy, &w);
                let want_dw = dwconv3x3_backward_weights_reference(&g, c, &x, &dy);
                for isa in Isa::available() {
                    let mut dx = vec![f32::NAN; want_dx.len()];
                    dwconv3x3_backward_input(isa, &g, c, &dy, &w, &mut dx);
                    assert_close(&dx, &want_dx, 1e-5, &format!("{isa} dx {g:?} c{c}"));
                    let mut dw = vec![0.0; want_dw.len()];
                    dwconv3x3_backward_weights(isa, &g, c, &x, &dy, &mut dw);
                    assert_close(&dw, &want_dw, 1e-5, &format!("{isa} dw {g:?} c{c}"));
                }
            }
        }
    }

    /// The input gradient is the adjoint of the forward pass: ⟨conv(x), dy⟩ = ⟨x, conv_backward(dy)⟩.
    #[test]
    fn depthwise_input_gradient_is_the_adjoint_of_the_forward_pass() {
        for g in geometries() {
            let c = 7;
            let mut rng = Rng::new(g.in_h as u64 * 31 + g.stride as u64);
            let x = rng.signed_vec(g.in_h * g.in_w * c);
            let dy = rng.signed_vec(g.out_h * g.out_w * c);
            let w = rng.signed_vec(9 * c);
            let y = dwconv3x3_reference(&g, c, &x, &w, &Epilogue::linear());
            let dx = dwconv3x3_backward_input_reference(&g, c, &dy, &w);
            let lhs: f64 = y
                .iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&dx)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn conv_weight_gradient_matches_reference_for_every_isa() {
        // 3×3 on three and one input channels (the stem's register kernel), 2×2 on two (the
        // general path); the gradient adds to what dw holds.
        let mut shapes = vec![(3, 1, 4), (3, 3, 24), (2, 2, 5)];
        shapes.extend([1, 8, 17, 32].map(|cout| (3, 3, cout)));
        for g in geometries() {
            for &(k, cin, cout) in &shapes {
                let shape = ConvShape { k, cin, cout };
                let g = match k {
                    3 => g,
                    _ => ConvGeometry::tf_same(g.in_h, g.in_w, k, g.stride),
                };
                let mut rng = Rng::new((g.in_w * 7 + cout) as u64);
                let x = rng.signed_vec(g.in_h * g.in_w * cin);
                let dy = rng.signed_vec(g.out_h * g.out_w * cout);
                let before = rng.signed_vec(k * k * cin * cout);
                let mut want = conv2d_backward_weights_reference(&g, shape, &x, &dy);
                for (w, b) in want.iter_mut().zip(&before) {
                    *w += b;
                }
                for isa in Isa::available() {
                    let mut dw = before.clone();
                    conv2d_backward_weights(isa, &g, shape, &x, &dy, &mut dw);
                    let what = format!("{isa} {g:?} {k}x{k}x{cin}->{cout}");
                    assert_close(&dw, &want, 1e-5, &what);
                }
            }
        }
    }
}
