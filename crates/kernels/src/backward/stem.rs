//! The stem's weight gradient with its sums in registers: `dW[ky, kx, ci, co] += Σ x·dy` for a
//! convolution whose patch rows are short (`k·cin ≤ 9`: the 3×3 stem on RGB or grey images).
//!
//! One vector of output channels at a time, `R` filter rows of `k·cin` sums each held in
//! registers over the whole image: per output pixel one load of `dy` and `R·k·cin` broadcast
//! multiply-adds, the `k·cin` values of a patch row read from consecutive addresses. The image
//! is first copied into a zero-bordered buffer, so that no tap needs a bounds check. (Adding
//! into `dW` in memory per pixel and tap was a load, a multiply-add and a store each: 30 µs an
//! image for CIFAR's stem, the slowest kernel of its training step.)

use super::{load_n, store_n};
use crate::conv::ConvShape;
use crate::simd::SimdF32;
use crate::ConvGeometry;

/// Whether [`weights`] takes this shape.
pub(super) fn supported(shape: ConvShape) -> bool {
    matches!((shape.k, shape.cin), (3, 1) | (3, 3))
}

/// `dw += ∂/∂w` of one image (see the module); `shape` is [`supported`].
///
/// # Safety
///
/// `x` holds `in_h·in_w·cin` values, `dy` `out_h·out_w·cout`, `dw` `k·k·cin·cout`; the
/// instruction set of `S` is available.
#[inline(always)]
pub(super) unsafe fn weights<S: SimdF32>(
    s: S,
    g: &ConvGeometry,
    shape: ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let ConvShape { k, cin, .. } = shape;
    // The padded image: every tap of every output lies inside it.
    let bottom = ((g.out_h - 1) * g.stride + k).saturating_sub(g.pad_top + g.in_h);
    let right = ((g.out_w - 1) * g.stride + k).saturating_sub(g.pad_left + g.in_w);
    let (ph, pw) = (g.pad_top + g.in_h + bottom, g.pad_left + g.in_w + right);
    let mut padded = vec![0.0f32; ph * pw * cin];
    for (y, row) in x[..g.in_h * g.in_w * cin]
        .chunks_exact(g.in_w * cin)
        .enumerate()
    {
        padded[((g.pad_top + y) * pw + g.pad_left) * cin..][..row.len()].copy_from_slice(row);
    }
    let img = Padded {
        x: &padded,
        row: pw * cin,
    };
    // Three filter rows' 27 sums take 27 of AVX-512's and NEON's 32 registers; AVX2's 16
    // hold one row's nine.
    // Safety: forwarded.
    unsafe {
        match (cin, S::LANES == 8) {
            (3, false) => rows::<S, 9, 3>(s, g, shape, img, dy, dw),
            (3, true) => rows::<S, 9, 1>(s, g, shape, img, dy, dw),
            (_, false) => rows::<S, 3, 3>(s, g, shape, img, dy, dw),
            (_, true) => rows::<S, 3, 1>(s, g, shape, img, dy, dw),
        }
    }
}

/// The zero-bordered image and its row length in values.
#[derive(Clone, Copy)]
struct Padded<'a> {
    x: &'a [f32],
    row: usize,
}

/// [`weights`] for patch rows of `KC = k·cin` values, `R` filter rows a pass (`k` a multiple
/// of `R`).
#[inline(always)]
unsafe fn rows<S: SimdF32, const KC: usize, const R: usize>(
    s: S,
    g: &ConvGeometry,
    shape: ConvShape,
    img: Padded<'_>,
    dy: &[f32],
    dw: &mut [f32],
) {
    let ConvShape { k, cin, cout } = shape;
    debug_assert!(k * cin == KC && k.is_multiple_of(R));
    // Safety: the padded image holds every tap (see `weights`); dy and dw hold their shapes.
    unsafe {
        for c0 in (0..cout).step_by(S::LANES) {
            let n = (cout - c0).min(S::LANES);
            for ky0 in (0..k).step_by(R) {
                let mut acc = [[s.zero(); KC]; R];
                for oy in 0..g.out_h {
                    let base: [*const f32; R] = std::array::from_fn(|r| {
                        img.x.as_ptr().add((oy * g.stride + ky0 + r) * img.row)
                    });
                    let d_row = dy.as_ptr().add(oy * g.out_w * cout + c0);
                    for ox in 0..g.out_w {
                        let d = load_n(s, n, d_row.add(ox * cout));
                        let at = ox * g.stride * cin;
                        for (r, p) in base.iter().enumerate() {
                            for (j, a) in acc[r].iter_mut().enumerate() {
                                *a = s.fma(s.splat(*p.add(at + j)), d, *a);
                            }
                        }
                    }
                }
                for (r, sums) in acc.iter().enumerate() {
                    for (j, a) in sums.iter().enumerate() {
                        let dst = dw.as_mut_ptr().add(((ky0 + r) * KC + j) * cout + c0);
                        store_n(s, n, dst, s.add(load_n(s, n, dst), *a));
                    }
                }
            }
        }
    }
}
