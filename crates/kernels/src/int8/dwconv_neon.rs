//! NEON depthwise 3×3: 8 channels at a time, the block's nine filters held in registers as
//! i16 (`w'` fits in 9 bits) while the block runs over the band's pixels. A pixel's 8 bytes
//! are widened to i16 (`ushll`) and multiplied into the i32 sums (`smlal`/`smlal2`: exact);
//! a tap outside the image reads the input's zero point, as TFLite's skipped tap. Pixels whose
//! nine taps all lie inside the image skip the checks.

use std::arch::aarch64::*;

use super::super::requant::neon::{narrow8, Rq4};
use super::{QDwWeights, Requant};
use crate::ConvGeometry;

/// [`super::qdwconv3x3`] for `c` a multiple of 8.
///
/// # Safety
///
/// The shapes must have been checked as `qdwconv3x3` does.
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
    let (inp, out) = (input.as_ptr(), output.as_mut_ptr());
    let cols = super::interior_columns(g);
    for ch in (0..c).step_by(8) {
        // Safety: weights, sums and constants are padded to cp ≥ ch + 8 channels; pixels are
        // read only inside the image, outputs written inside the band.
        unsafe {
            let taps: [int16x8_t; 9] =
                std::array::from_fn(|t| vld1q_s16(w.w16.as_ptr().add(t * w.cp + ch)));
            let zp = vdupq_n_s16(w.input_zp as i16);
            let zsum = [
                vld1q_s32(w.zsum.as_ptr().add(ch)),
                vld1q_s32(w.zsum.as_ptr().add(ch + 4)),
            ];
            let rq4 = [Rq4::load(rq, ch), Rq4::load(rq, ch + 4)];
            for r in 0..rows {
                let oy = row0 + r;
                let y0 = (oy * g.stride) as isize - g.pad_top as isize;
                let rows_inside = y0 >= 0 && y0 as usize + 3 <= g.in_h;
                for ox in 0..g.out_w {
                    let x0 = (ox * g.stride) as isize - g.pad_left as isize;
                    let [mut lo, mut hi] = zsum;
                    if rows_inside && (cols.0..cols.1).contains(&ox) {
                        // Every tap inside: no checks.
                        let base = inp.add((y0 as usize * g.in_w + x0 as usize) * c + ch);
                        for (t, wt) in taps.iter().enumerate() {
                            let px = base.add(((t / 3) * g.in_w + t % 3) * c);
                            let x = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(px)));
                            lo = vmlal_s16(lo, vget_low_s16(x), vget_low_s16(*wt));
                            hi = vmlal_high_s16(hi, x, *wt);
                        }
                    } else {
                        for (t, wt) in taps.iter().enumerate() {
                            let (iy, ix) = (y0 + (t / 3) as isize, x0 + (t % 3) as isize);
                            let inside = iy >= 0
                                && ix >= 0
                                && (iy as usize) < g.in_h
                                && (ix as usize) < g.in_w;
                            let x = if inside {
                                let px = inp.add((iy as usize * g.in_w + ix as usize) * c + ch);
                                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(px)))
                            } else {
                                zp
                            };
                            lo = vmlal_s16(lo, vget_low_s16(x), vget_low_s16(*wt));
                            hi = vmlal_high_s16(hi, x, *wt);
                        }
                    }
                    let v = narrow8(rq4[0].apply(lo), rq4[1].apply(hi));
                    vst1_u8(out.add((r * g.out_w + ox) * c + ch), v);
                }
            }
        }
    }
}
