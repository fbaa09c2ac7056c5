//! AVX2 depthwise 3×3, 8 channels at a time: a channel block's nine filter vectors stay in
//! registers while the block runs over the band's pixels. Each byte is zero-extended into an i32 lane whose
//! high half is 0, so `vpmaddwd` against `w'` (its high half the sign) adds exactly `x·w'`;
//! a tap outside the image reads the input's zero point, as TFLite's skipped tap. Pixels whose
//! nine taps all lie inside the image skip the checks.

use std::arch::x86_64::*;

use super::super::requant::x86_avx2::Rq8;
use super::{QDwWeights, Requant};
use crate::ConvGeometry;

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
    let c = w.c;
    let zp = _mm256_set1_epi32(w.input_zp);
    let (inp, out) = (input.as_ptr(), output.as_mut_ptr());
    let cols = super::interior_columns(g);
    for ch in (0..c).step_by(8) {
        // Safety: weights and sums are padded to cp ≥ ch + 8 channels; pixels are read
        // only inside the image, outputs written inside the band.
        unsafe {
            let taps: [__m256i; 9] =
                std::array::from_fn(|t| _mm256_loadu_si256(w.w.as_ptr().add(t * w.cp + ch).cast()));
            let zsum = _mm256_loadu_si256(w.zsum.as_ptr().add(ch).cast());
            let rq8 = Rq8::load(rq, ch);
            for r in 0..rows {
                let oy = row0 + r;
                let y0 = (oy * g.stride) as isize - g.pad_top as isize;
                let rows_inside = y0 >= 0 && y0 as usize + 3 <= g.in_h;
                for ox in 0..g.out_w {
                    let x0 = (ox * g.stride) as isize - g.pad_left as isize;
                    let mut acc = zsum;
                    if rows_inside && (cols.0..cols.1).contains(&ox) {
                        // Every tap inside: no checks.
                        let base = inp.add((y0 as usize * g.in_w + x0 as usize) * c + ch);
                        for (t, wt) in taps.iter().enumerate() {
                            let px = base.add(((t / 3) * g.in_w + t % 3) * c);
                            let x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(px.cast()));
                            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, *wt));
                        }
                        rq8.store(acc, 8, out.add((r * g.out_w + ox) * c + ch));
                        continue;
                    }
                    for (t, wt) in taps.iter().enumerate() {
                        let (iy, ix) = (y0 + (t / 3) as isize, x0 + (t % 3) as isize);
                        let inside =
                            iy >= 0 && ix >= 0 && (iy as usize) < g.in_h && (ix as usize) < g.in_w;
                        let x = if inside {
                            let px = inp.add((iy as usize * g.in_w + ix as usize) * c + ch);
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(px.cast()))
                        } else {
                            zp
                        };
                        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, *wt));
                    }
                    rq8.store(acc, 8, out.add((r * g.out_w + ox) * c + ch));
                }
            }
        }
    }
}
