//! Depthwise 3×3 convolution on u8 NHWC activations with i32 accumulation and requantization.
//!
//! `acc[c] = Σ_taps inside (x − x_zp)·w' + bias`, where `w' = w − w_zp` fits in 9 bits. The
//! zero point is folded out of the inner loop: `Σ (x − x_zp)·w' = Σ x·w' − x_zp·Σ w'`, with
//! `−x_zp·Σ_9 w'` precomputed per channel and `x_zp·w'` added back for each tap that falls
//! outside the image (TFLite skips those taps, which is the same as reading `x_zp` there).
//!
//! The AVX-512 variant multiplies with VNNI's `vpdpwssd`: a zero-extended byte in each i32 lane
//! (high half 0) against `w'` (high half its sign) adds exactly `x·w'`. Interior pixels go four
//! at a time with the filter in registers.

use super::{IntIsa, IntIsaKind, Requant};
use crate::ConvGeometry;

/// Depthwise weights prepared for [`qdwconv3x3`].
#[derive(Clone, Debug, PartialEq)]
pub struct QDwWeights {
    c: usize,
    /// Channels padded to a multiple of 16.
    cp: usize,
    input_zp: i32,
    /// `w'` as `[9][cp]`.
    w: Vec<i32>,
    /// `x_zp·w'` as `[9][cp]`: what a tap outside the image adds back.
    zw: Vec<i32>,
    /// `−x_zp·Σ_9 w'` per channel.
    zsum: Vec<i32>,
    /// `w'` as i16 `[9][cp]`, the NEON kernel's operand.
    #[cfg(target_arch = "aarch64")]
    w16: Vec<i16>,
}

impl QDwWeights {
    /// `w`: `[3, 3, c]` weights with their zero point already subtracted; `input_zp`: the
    /// input's zero point in the byte domain.
    ///
    /// # Panics
    ///
    /// If `w.len() != 9·c` or a weight does not fit in 16 bits.
    pub fn new(w: &[i32], c: usize, input_zp: u8) -> QDwWeights {
        assert_eq!(w.len(), 9 * c, "depthwise weights must be 3·3·c");
        assert!(
            w.iter().all(|v| (-32768..32768).contains(v)),
            "depthwise weights must fit in 16 bits"
        );
        let cp = c.div_ceil(16) * 16;
        let z = input_zp as i32;
        let mut r = QDwWeights {
            c,
            cp,
            input_zp: z,
            w: vec![0; 9 * cp],
            zw: vec![0; 9 * cp],
            zsum: vec![0; cp],
            #[cfg(target_arch = "aarch64")]
            w16: vec![0; 9 * cp],
        };
        for t in 0..9 {
            for ch in 0..c {
                let v = w[t * c + ch];
                r.w[t * cp + ch] = v;
                #[cfg(target_arch = "aarch64")]
                {
                    r.w16[t * cp + ch] = v as i16;
                }
                r.zw[t * cp + ch] = z * v;
                r.zsum[ch] -= z * v;
            }
        }
        r
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.c
    }
}

/// Output columns `lo..hi` whose three taps all lie inside the image.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn interior_columns(g: &ConvGeometry) -> (usize, usize) {
    let lo = g.pad_left.div_ceil(g.stride).min(g.out_w);
    match g.in_w + g.pad_left >= 3 {
        true => (
            lo,
            ((g.in_w + g.pad_left - 3) / g.stride + 1).clamp(lo, g.out_w),
        ),
        false => (lo, lo),
    }
}

/// Valid filter taps `lo..hi` along one axis for output coordinate `o`.
fn taps(o: usize, stride: usize, pad: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).clamp(0, 3) as usize;
    let hi = (size as isize - start).clamp(0, 3) as usize;
    (lo, hi.max(lo))
}

/// Depthwise 3×3 of one image, writing output rows `row0 .. row0 + n` (`n` whole rows fill
/// `output`): input `[in_h, in_w, c]` bytes, output `[out_h, out_w, c]` bytes.
///
/// # Panics
///
/// If a slice is shorter than its shape says, the band reaches past `out_h`, or `rq` has not
/// `c` channels.
pub fn qdwconv3x3(
    isa: IntIsa,
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
) {
    let c = w.c;
    let row_len = g.out_w * c;
    assert!(
        row_len > 0 && output.len().is_multiple_of(row_len),
        "output is not whole rows"
    );
    let rows = output.len() / row_len;
    assert!(row0 + rows <= g.out_h, "output rows past out_h");
    assert!(
        input.len() >= g.in_h * g.in_w * c,
        "input shorter than in_h·in_w·c"
    );
    assert_eq!(
        rq.len(),
        c,
        "requantization for {} channels, not {c}",
        rq.len()
    );
    assert!(
        g.pad_top < 3 && g.pad_left < 3,
        "padding larger than the kernel"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        _ if isa.avx512() => {
            // Safety: AVX-512 is present; shapes checked above.
            unsafe { avx512::rows(g, input, w, rq, output, row0, rows) }
        }
        #[cfg(target_arch = "x86_64")]
        _ if isa.kind() == IntIsaKind::AvxVnni && c.is_multiple_of(8) => {
            // Safety: AVX2 and AVX-VNNI are present; shapes checked above.
            unsafe { avx2::rows_vnni(g, input, w, rq, output, row0, rows) }
        }
        #[cfg(target_arch = "x86_64")]
        _ if isa.avx2() && c.is_multiple_of(8) => {
            // Safety: AVX2 is present; shapes checked above.
            unsafe { avx2::rows(g, input, w, rq, output, row0, rows) }
        }
        #[cfg(target_arch = "aarch64")]
        _ if isa.neon() && c.is_multiple_of(8) => {
            // Safety: shapes checked above (NEON is part of every aarch64 CPU).
            unsafe { neon::rows(g, input, w, rq, output, row0, rows) }
        }
        _ => scalar_rows(g, input, w, rq, output, row0, rows),
    }
}

#[cfg(target_arch = "aarch64")]
#[path = "dwconv_neon.rs"]
mod neon;

fn scalar_rows(
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
    rows: usize,
) {
    let c = w.c;
    let mut acc = vec![0i32; c];
    for r in 0..rows {
        let oy = row0 + r;
        let (ky0, ky1) = taps(oy, g.stride, g.pad_top, g.in_h);
        for ox in 0..g.out_w {
            let (kx0, kx1) = taps(ox, g.stride, g.pad_left, g.in_w);
            acc.fill(0);
            for ky in ky0..ky1 {
                let iy = oy * g.stride + ky - g.pad_top;
                for kx in kx0..kx1 {
                    let ix = ox * g.stride + kx - g.pad_left;
                    let px = &input[(iy * g.in_w + ix) * c..][..c];
                    let wt = &w.w[(ky * 3 + kx) * w.cp..][..c];
                    for ((a, &x), &wv) in acc.iter_mut().zip(px).zip(wt) {
                        *a += (x as i32 - w.input_zp) * wv;
                    }
                }
            }
            let out = &mut output[(r * g.out_w + ox) * c..][..c];
            rq.row(IntIsa::SCALAR, &acc, 0, 0, out);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "dwconv_avx2.rs"]
mod avx2;

#[cfg(target_arch = "x86_64")]
#[path = "dwconv_avx512.rs"]
mod avx512;

/// The definition: `out = rq(Σ_taps inside (x − x_zp)·w')` for the whole image.
pub fn qdwconv3x3_reference(
    g: &ConvGeometry,
    input: &[u8],
    w: &QDwWeights,
    rq: &Requant,
    output: &mut [u8],
) {
    let c = w.c;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ch in 0..c {
                let mut acc = 0i32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = (oy * g.stride + ky, ox * g.stride + kx);
                        let (Some(iy), Some(ix)) =
                            (iy.checked_sub(g.pad_top), ix.checked_sub(g.pad_left))
                        else {
                            continue;
                        };
                        if iy < g.in_h && ix < g.in_w {
                            let x = input[(iy * g.in_w + ix) * c + ch] as i32;
                            acc += (x - w.input_zp) * w.w[(ky * 3 + kx) * w.cp + ch];
                        }
                    }
                }
                output[(oy * g.out_w + ox) * c + ch] = rq.apply(ch, acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(in_hw: usize, c: usize, stride: usize, zp: u8) {
        // Lower bound 0, and at the output's zero point 3 (ReLU: the exact form's cheaper
        // variant).
        for lo in [0, 3] {
            check_with(in_hw, c, stride, zp, false, lo);
            check_with(in_hw, c, stride, zp, true, lo);
        }
    }

    /// `fp32`: XNNPACK's requantization instead of TFLite's.
    fn check_with(in_hw: usize, c: usize, stride: usize, zp: u8, fp32: bool, lo: i32) {
        let g = ConvGeometry::tf_same(in_hw, in_hw, 3, stride);
        let mut s = 0x9e37_79b9u32 ^ (c as u32 * 31 + in_hw as u32);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let input: Vec<u8> = (0..in_hw * in_hw * c).map(|_| next() as u8).collect();
        let wts: Vec<i32> = (0..9 * c).map(|_| (next() % 511) as i32 - 255).collect();
        let w = QDwWeights::new(&wts, c, zp);
        let bias: Vec<i32> = (0..c).map(|_| (next() % 4000) as i32 - 2000).collect();
        let rq = match fp32 {
            false => {
                // Per-channel multipliers and shifts: every lane's constants matter.
                let mult: Vec<i32> = (0..c as i32).map(|j| (1 << 30) + 12345 * j).collect();
                let shift: Vec<i32> = (0..c as i32).map(|j| -8 + j % 3).collect();
                Requant::new(&bias, &mult, &shift, 3, lo, 255)
            }
            true => {
                let scale: Vec<f32> = (0..c).map(|j| 0.002 + j as f32 * 1e-4).collect();
                Requant::fp32(&bias, &scale, 3, lo, 255)
            }
        };
        let mut want = vec![0u8; g.out_h * g.out_w * c];
        qdwconv3x3_reference(&g, &input, &w, &rq, &mut want);
        for isa in IntIsa::available() {
            let mut got = vec![0u8; want.len()];
            qdwconv3x3(isa, &g, &input, &w, &rq, &mut got, 0);
            assert_eq!(
                got, want,
                "{isa} {in_hw}×{in_hw}×{c} stride {stride} fp32 {fp32}"
            );
            // Bands of rows compose the whole.
            let row = g.out_w * c;
            let mut bands = vec![0u8; want.len()];
            let split = g.out_h / 2;
            let (top, bottom) = bands.split_at_mut(split * row);
            qdwconv3x3(isa, &g, &input, &w, &rq, top, 0);
            qdwconv3x3(isa, &g, &input, &w, &rq, bottom, split);
            assert_eq!(bands, want, "{isa} bands");
        }
    }

    #[test]
    fn every_isa_matches_reference_on_edge_sizes() {
        for &(hw, c, s) in &[
            (1, 1, 1),
            (2, 3, 2),
            (5, 17, 1),
            (7, 32, 2),
            (8, 40, 2),
            (9, 16, 1),
            (13, 48, 1),
            (20, 40, 2),
            (21, 8, 2),
            (23, 32, 1),
            // Eight channels at stride 1, two pixels a vector: 8-pixel blocks, single
            // pairs, an odd pixel left to the border path.
            (3, 8, 1),
            (4, 8, 1),
            (11, 8, 1),
            (12, 8, 1),
            (19, 8, 1),
            (33, 8, 1),
            // Wider than 16 outputs at stride 2 (no padded copy): blocks, then single pixels.
            (40, 16, 2),
            (34, 24, 2),
        ] {
            check(hw, c, s, 0);
            check(hw, c, s, 128);
            check(hw, c, s, 201);
        }
    }
}
