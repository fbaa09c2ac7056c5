//! AVX2 depthwise 3×3, 8 channels at a time: a channel block's nine filter vectors and
//! requantization constants are loaded once per block. Each byte is zero-extended into an i32
//! lane whose high half is 0, so `vpmaddwd` against `w'` (its high half the sign) adds exactly
//! `x·w'` (on AVX-VNNI one `vpdpwssd` does the multiply and the add); a tap outside the image
//! reads the input's zero point, as TFLite's skipped tap. The columns whose taps all lie inside
//! the image run four outputs a step, each input column loaded once for the outputs that share
//! it (rows above and below the image read a row of zero points); the others take a checked
//! per-pixel path.

use std::arch::x86_64::*;

use super::super::requant::x86_avx2::{Rq8, EXACT_RELU, GENERAL};
use super::{QDwWeights, Requant};
use crate::ConvGeometry;

/// Output pixels per step of the interior loop.
const PX: usize = 4;

/// [`super::qdwconv3x3`] for `c` a multiple of 8.
///
/// # Safety
///
/// AVX2 must be present and the shapes checked as `qdwconv3x3` does.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn rows(
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
    rows: usize,
) {
    // Safety: forwarded.
    unsafe { rows_as::<false>(g, input, w, rq, output, row0, rows) }
}

/// [`rows`] with AVX-VNNI's `vpdpwssd`.
///
/// # Safety
///
/// AVX2 and AVX-VNNI must be present and the shapes checked as `qdwconv3x3` does.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn rows_vnni(
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
    rows: usize,
) {
    // Safety: forwarded.
    unsafe { rows_as::<true>(g, input, w, rq, output, row0, rows) }
}

#[inline(always)]
unsafe fn rows_as<const VNNI: bool>(
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
    rows: usize,
) {
    let c = w.c;
    let (lo, hi) = super::interior_columns(g);
    let blocks = (hi - lo) / PX;
    let rest = hi - lo - PX * blocks;
    let zp_row = vec![w.input_zp as u8; g.in_w * c];
    for ch in (0..c).step_by(8) {
        // Safety: weights and sums are padded to cp ≥ ch + 8 channels; pixels are read
        // only inside the image (or the zero-point row), outputs written inside the band.
        unsafe {
            let mut taps = [_mm256_setzero_si256(); 9];
            for (t, v) in taps.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(w.w.as_ptr().add(t * w.cp + ch).cast());
            }
            let k = Block {
                taps,
                zsum: _mm256_loadu_si256(w.zsum.as_ptr().add(ch).cast()),
                zp: _mm256_set1_epi32(w.input_zp),
                rq8: Rq8::load(rq, ch),
            };
            for r in 0..rows {
                let oy = row0 + r;
                let out_row = output.as_mut_ptr().add(r * g.out_w * c + ch);
                for ox in (0..lo).chain(hi..g.out_w) {
                    border::<VNNI>(g, input, c, ch, &k, oy, ox, out_row.add(ox * c));
                }
                if lo == hi {
                    continue;
                }
                let ix = lo * g.stride - g.pad_left;
                let mut in_rows = [zp_row.as_ptr(); 3];
                for (ky, p) in in_rows.iter_mut().enumerate() {
                    let iy = (oy * g.stride + ky).wrapping_sub(g.pad_top);
                    if iy < g.in_h {
                        *p = input.as_ptr().add(iy * g.in_w * c);
                    }
                    *p = p.add(ix * c + ch);
                }
                let out = out_row.add(lo * c);
                let skip = PX * blocks;
                let after = in_rows.map(|p| p.add(skip * g.stride * c));
                let row = Row {
                    rows: in_rows,
                    after,
                    c,
                    k: &k,
                    out,
                    blocks,
                    rest,
                };
                match (g.stride, k.rq8.mode()) {
                    (1, EXACT_RELU) => row_interior::<VNNI, 1, EXACT_RELU>(&row),
                    (1, _) => row_interior::<VNNI, 1, GENERAL>(&row),
                    (_, EXACT_RELU) => row_interior::<VNNI, 2, EXACT_RELU>(&row),
                    (_, _) => row_interior::<VNNI, 2, GENERAL>(&row),
                }
            }
        }
    }
}

/// One row's interior: `blocks` of PX outputs from `rows`, then `rest` single ones from
/// `after`.
struct Row<'a> {
    rows: [*const u8; 3],
    after: [*const u8; 3],
    c: usize,
    k: &'a Block,
    out: *mut u8,
    blocks: usize,
    rest: usize,
}

/// [`Row`] at stride `S` in requantization form `M`.
#[inline(always)]
unsafe fn row_interior<const VNNI: bool, const S: usize, const M: u8>(r: &Row) {
    // Safety: forwarded from `rows_as`.
    unsafe {
        interior::<VNNI, S, PX, M>(r.rows, r.c, r.k, r.out, r.blocks);
        let out = r.out.add(PX * r.blocks * r.c);
        interior::<VNNI, S, 1, M>(r.after, r.c, r.k, out, r.rest);
    }
}

/// One block of 8 channels: its filter, zero-point sum and requantization constants.
struct Block {
    taps: [__m256i; 9],
    zsum: __m256i,
    zp: __m256i,
    rq8: Rq8,
}

/// `a + x·w` in i32 lanes (`x`'s and `w`'s high halves 0 and the sign): one `vpdpwssd` on
/// AVX-VNNI (through `asm!`, the VEX form), else `vpmaddwd` + `vpaddd`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dp<const VNNI: bool>(a: __m256i, x: __m256i, w: __m256i) -> __m256i {
    // Safety: the caller runs with AVX2, and with AVX-VNNI where VNNI.
    unsafe {
        if VNNI {
            let mut a = a;
            std::arch::asm!(
                "{{vex}} vpdpwssd {a}, {x}, {w}",
                a = inout(ymm_reg) a,
                x = in(ymm_reg) x,
                w = in(ymm_reg) w,
                options(pure, nomem, nostack)
            );
            a
        } else {
            _mm256_add_epi32(a, _mm256_madd_epi16(x, w))
        }
    }
}

/// `blocks·P` outputs of one row whose taps lie inside the image's columns, at stride `S`;
/// `rows[ky]` is the input pixel under the first output's tap `(ky, 0)`. The `(P − 1)·S + 3`
/// columns of a filter row are each loaded once; two sums per output (filter rows 0–1, row 2)
/// halve the dependency chains.
#[inline(always)]
unsafe fn interior<const VNNI: bool, const S: usize, const P: usize, const M: u8>(
    rows: [*const u8; 3],
    c: usize,
    k: &Block,
    out: *mut u8,
    blocks: usize,
) {
    // Safety: the caller guarantees `blocks·P` outputs whose taps are inside the image.
    unsafe {
        for blk in 0..blocks {
            let mut acc = [k.zsum; P];
            let mut acc2 = [_mm256_setzero_si256(); P];
            for (ky, row) in rows.iter().enumerate() {
                let row = row.add(blk * P * S * c);
                let mut x = [_mm256_setzero_si256(); 9];
                for (j, v) in x.iter_mut().enumerate().take((P - 1) * S + 3) {
                    *v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(row.add(j * c).cast()));
                }
                for kx in 0..3 {
                    let wt = k.taps[3 * ky + kx];
                    for p in 0..P {
                        match ky {
                            2 => acc2[p] = dp::<VNNI>(acc2[p], x[p * S + kx], wt),
                            _ => acc[p] = dp::<VNNI>(acc[p], x[p * S + kx], wt),
                        }
                    }
                }
            }
            for p in 0..P {
                let v = _mm256_add_epi32(acc[p], acc2[p]);
                k.rq8.store_as::<M>(v, 8, out.add((blk * P + p) * c));
            }
        }
    }
}

/// Output `(oy, ox)` at any position: taps outside the image read the zero point.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn border<const VNNI: bool>(
    g: &ConvGeometry,
    input: &[u8],
    c: usize,
    ch: usize,
    k: &Block,
    oy: usize,
    ox: usize,
    out: *mut u8,
) {
    let y0 = (oy * g.stride) as isize - g.pad_top as isize;
    let x0 = (ox * g.stride) as isize - g.pad_left as isize;
    // Safety: pixels are read only inside the image.
    unsafe {
        let mut acc = k.zsum;
        for (t, wt) in k.taps.iter().enumerate() {
            let (iy, ix) = (y0 + (t / 3) as isize, x0 + (t % 3) as isize);
            let inside = iy >= 0 && ix >= 0 && (iy as usize) < g.in_h && (ix as usize) < g.in_w;
            let x = if inside {
                let px = input
                    .as_ptr()
                    .add((iy as usize * g.in_w + ix as usize) * c + ch);
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(px.cast()))
            } else {
                k.zp
            };
            acc = dp::<VNNI>(acc, x, *wt);
        }
        k.rq8.store(acc, 8, out);
    }
}
