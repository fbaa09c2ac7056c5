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

use super::{IntIsa, Requant};
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
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::requant::x86::{Rq16, EXACT_RELU, FP32, GENERAL};
    use super::{taps, QDwWeights, Requant};
    use crate::ConvGeometry;

    /// Output pixels per step of the interior loop.
    const PX: usize = 4;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
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
        // Output columns whose 3 taps all lie inside the image: `lo..hi`.
        let lo = g.pad_left.div_ceil(g.stride).min(g.out_w);
        let hi = if g.in_w + g.pad_left >= 3 {
            ((g.in_w + g.pad_left - 3) / g.stride + 1).clamp(lo, g.out_w)
        } else {
            lo
        };
        // Eight channels at stride 1: a vector holds two neighbouring pixels (its 16 bytes
        // are both pixels' channels), so half the lanes do not idle. The interior runs four
        // vectors (8 pixels) at a time, then single vectors; the border path takes the rest.
        let paired = c == 8 && g.stride == 1;
        // Narrow images (the 16×16, 8×8, 5×5 and 4×4 layers of the thinner models): a quarter
        // to a half of the pixels would take the per-pixel border path. A copy of the input with its zero point in
        // the padding columns makes every column interior (taps there add `x_zp·w'`, as the
        // rows above and below do, see `zp_row`).
        let right = ((g.out_w - 1) * g.stride + 3).saturating_sub(g.pad_left + g.in_w);
        // (Only small inputs: copying 7×7×1024 or 14×14×512 bytes cost what it saved.)
        let small = g.in_h * g.in_w * c <= 32 << 10;
        if g.out_w <= 16 && small && !paired && (g.pad_left > 0 || right > 0) {
            let wp = g.pad_left + g.in_w + right;
            let mut padded = vec![w.input_zp as u8; g.in_h * wp * c];
            for (y, row) in input[..g.in_h * g.in_w * c]
                .chunks_exact(g.in_w * c)
                .enumerate()
            {
                padded[(y * wp + g.pad_left) * c..][..row.len()].copy_from_slice(row);
            }
            let gp = ConvGeometry {
                in_w: wp,
                pad_left: 0,
                ..*g
            };
            // Safety: as the caller's, for the padded image.
            return unsafe { self::rows(&gp, &padded, w, rq, output, row0, rows) };
        }
        let blocks = match paired {
            true => (hi - lo) / (2 * PX),
            false => (hi - lo) / PX,
        };
        // What the blocks leave of the interior: single pairs, or single pixels (one vector
        // each, still with the filter in registers, rather than the border path).
        let rest = match paired {
            true => (hi - lo - 2 * PX * blocks) / 2,
            false => hi - lo - PX * blocks,
        };
        let done = match paired {
            true => lo + 2 * PX * blocks + 2 * rest,
            false => hi,
        };
        // Bands of rows whose outputs fill about 32 KB; inside a band, channel block by
        // channel block, so the block's filter and constants are loaded once per band.
        let band = (32768 / (g.out_w * c).max(1)).clamp(1, rows.max(1));
        // A row of input zero points stands in for the rows above and below the image: a tap
        // there adds `x_zp·w'`, which is what TFLite's skipped tap comes to after `zsum`. So
        // the first and last output rows run the interior loop too (on 7×7 layers they are
        // 2 of 7 rows, and the per-pixel border path cost as much as the interior).
        let zp_row = vec![w.input_zp as u8; g.in_w * c];
        // Safety: every load reads channels < c of a pixel inside the image (masked past c) or
        // the padded weight vectors; every store writes channels < c of an output pixel.
        unsafe {
            for r0 in (0..rows).step_by(band) {
                let band_rows = r0..(r0 + band).min(rows);
                let mut b = 0;
                while b < c {
                    let k = Block::load(w, rq, b);
                    let kp = match paired {
                        true => Some(k.low_half_twice()),
                        false => None,
                    };
                    for r in band_rows.clone() {
                        let oy = row0 + r;
                        let out_row = output.as_mut_ptr().add(r * g.out_w * c);
                        if done == lo {
                            border(g, input, w, &k, out_row, oy, 0..g.out_w);
                            continue;
                        }
                        border(g, input, w, &k, out_row, oy, 0..lo);
                        border(g, input, w, &k, out_row, oy, done..g.out_w);
                        let ix = lo * g.stride - g.pad_left;
                        let in_rows: [*const u8; 3] = std::array::from_fn(|ky| {
                            let iy = (oy * g.stride + ky).wrapping_sub(g.pad_top);
                            let row = match iy < g.in_h {
                                true => input.as_ptr().add(iy * g.in_w * c),
                                false => zp_row.as_ptr(),
                            };
                            row.add(ix * c + b)
                        });
                        let out = out_row.add(lo * c + b);
                        // The requantization's form chosen once per row, not per store.
                        match k.r16.mode() {
                            FP32 => row_interior::<FP32>(
                                in_rows,
                                c,
                                g.stride,
                                &k,
                                kp.as_ref(),
                                out,
                                blocks,
                                rest,
                            ),
                            EXACT_RELU => row_interior::<EXACT_RELU>(
                                in_rows,
                                c,
                                g.stride,
                                &k,
                                kp.as_ref(),
                                out,
                                blocks,
                                rest,
                            ),
                            _ => row_interior::<GENERAL>(
                                in_rows,
                                c,
                                g.stride,
                                &k,
                                kp.as_ref(),
                                out,
                                blocks,
                                rest,
                            ),
                        }
                    }
                    b += 16;
                }
            }
        }
    }

    /// One block of 16 channels: its filter, zero-point sum and requantization constants.
    struct Block {
        b: usize,
        n: usize,
        mask: u16,
        wv: [__m512i; 9],
        zsum: __m512i,
        r16: Rq16,
    }

    impl Block {
        #[inline(always)]
        unsafe fn load(w: &QDwWeights, rq: &Requant, b: usize) -> Block {
            let n = (w.c - b).min(16);
            // Safety: the weight vectors are padded to a multiple of 16 channels.
            unsafe {
                Block {
                    b,
                    n,
                    mask: if n == 16 {
                        u16::MAX
                    } else {
                        ((1u32 << n) - 1) as u16
                    },
                    wv: std::array::from_fn(|t| {
                        _mm512_loadu_si512(w.w.as_ptr().add(t * w.cp + b).cast())
                    }),
                    zsum: _mm512_loadu_si512(w.zsum.as_ptr().add(b).cast()),
                    r16: Rq16::load(rq, b),
                }
            }
        }
    }

    impl Block {
        /// An 8-channel block's filter and constants in both halves of the vectors, for
        /// vectors that hold two pixels.
        #[inline(always)]
        unsafe fn low_half_twice(&self) -> Block {
            // Safety: the caller runs with AVX-512 F.
            unsafe {
                let mut wv = self.wv;
                for v in &mut wv {
                    *v = _mm512_shuffle_i64x2::<0b01_00_01_00>(*v, *v);
                }
                Block {
                    n: 16,
                    mask: u16::MAX,
                    wv,
                    zsum: _mm512_shuffle_i64x2::<0b01_00_01_00>(self.zsum, self.zsum),
                    r16: self.r16.low_half_twice(),
                    ..*self
                }
            }
        }
    }

    /// A row's interior in requantization form `M`: `blocks` of PX outputs and `rest` single
    /// outputs, or with `kp` (eight channels, two pixels a vector) `blocks` of 2·PX pixels and
    /// `rest` single pairs.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_interior<const M: u8>(
        in_rows: [*const u8; 3],
        c: usize,
        stride: usize,
        k: &Block,
        kp: Option<&Block>,
        out: *mut u8,
        blocks: usize,
        rest: usize,
    ) {
        // Safety: forwarded from `rows`.
        unsafe {
            if let Some(kp) = kp {
                // Output vector p is pixels 2p and 2p + 1: input pixels two apart, 16 bytes
                // out.
                interior::<2, PX, M>(in_rows, c, 2 * c, kp, out, blocks);
                let skip = 2 * PX * blocks * c;
                let after = in_rows.map(|p| p.add(skip));
                interior::<2, 1, M>(after, c, 2 * c, kp, out.add(skip), rest);
            } else if stride == 1 {
                interior::<1, PX, M>(in_rows, c, c, k, out, blocks);
                let skip = PX * blocks * c;
                let after = in_rows.map(|p| p.add(skip));
                interior::<1, 1, M>(after, c, c, k, out.add(skip), rest);
            } else {
                interior::<2, PX, M>(in_rows, c, c, k, out, blocks);
                let skip = PX * blocks * c;
                let after = in_rows.map(|p| p.add(2 * skip));
                interior::<2, 1, M>(after, c, c, k, out.add(skip), rest);
            }
        }
    }

    /// `blocks·PX` output pixels of one row whose taps lie inside the image's columns, each
    /// channel block's nine filter vectors and requantization constants held in registers;
    /// input columns shared by neighbouring outputs are loaded once. `rows[ky]` is the input
    /// pixel under the first output's tap `(ky, 0)` (in the zero-point row above or below the
    /// image).
    ///
    /// Output vectors are `c_out` bytes apart (`c`, or `2c` where a vector holds two pixels
    /// and `S` is then the two pixels' step).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
    unsafe fn interior<const S: usize, const PX: usize, const M: u8>(
        rows: [*const u8; 3],
        c: usize,
        c_out: usize,
        k: &Block,
        out: *mut u8,
        blocks: usize,
    ) {
        // Safety: the caller guarantees `blocks·PX` outputs whose taps are inside the image.
        unsafe {
            for blk in 0..blocks {
                // Two accumulator sets (filter rows 0–1, row 2) halve the dependency chains:
                // nine dependent multiply-adds per output would leave the 5-cycle latency
                // exposed.
                let mut acc = [k.zsum; PX];
                let mut acc2 = [_mm512_setzero_si512(); PX];
                for (ky, row) in rows.iter().enumerate() {
                    let w3 = [k.wv[3 * ky], k.wv[3 * ky + 1], k.wv[3 * ky + 2]];
                    let row = row.add(blk * PX * S * c);
                    let a = if ky < 2 { &mut acc } else { &mut acc2 };
                    filter_row::<S, PX>(row, c, k.mask, w3, a);
                }
                for p in 0..PX {
                    k.r16.store_as::<M>(
                        _mm512_add_epi32(acc[p], acc2[p]),
                        k.n,
                        out.add((blk * PX + p) * c_out),
                    );
                }
            }
        }
    }

    /// `a + Σ pairs x·w` as one `vpdpwssd`. (Through the intrinsic, LLVM splits it into
    /// `vpmaddwd` + `vpaddd`: two uops on the two 512-bit ports instead of one.)
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
    #[inline]
    unsafe fn dp(a: __m512i, x: __m512i, w: __m512i) -> __m512i {
        let mut a = a;
        // Safety: the caller's target features include AVX-512 VNNI.
        unsafe {
            std::arch::asm!(
                "vpdpwssd {a}, {x}, {w}",
                a = inout(zmm_reg) a,
                x = in(zmm_reg) x,
                w = in(zmm_reg) w,
                options(pure, nomem, nostack)
            );
        }
        a
    }

    /// Widened bytes of input column `j` (channels of one pixel).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
    #[inline]
    unsafe fn col(row: *const u8, c: usize, mask: u16, j: usize) -> __m512i {
        // A whole block (every MobileNet layer from α·32 channels up) loads unmasked, which
        // folds into one `vpmovzxbd` from memory.
        unsafe {
            let p = row.add(j * c);
            if mask == u16::MAX {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
            } else {
                _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p.cast()))
            }
        }
    }

    /// One filter row for four outputs at stride `S`: the `3·S + 3` input columns they cover
    /// (six at stride 1, nine at stride 2), each loaded once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
    #[inline]
    unsafe fn filter_row<const S: usize, const PX: usize>(
        row: *const u8,
        c: usize,
        mask: u16,
        w: [__m512i; 3],
        a: &mut [__m512i; PX],
    ) {
        // Safety: the caller's row holds the `(PX − 1)·S + 3` columns read.
        unsafe {
            let x: [__m512i; 9] = std::array::from_fn(|j| {
                if j < (PX - 1) * S + 3 {
                    col(row, c, mask, j)
                } else {
                    _mm512_setzero_si512()
                }
            });
            for kx in 0..3 {
                for (p, acc) in a.iter_mut().enumerate() {
                    *acc = dp(*acc, x[p * S + kx], w[kx]);
                }
            }
        }
    }

    /// Output pixels `xs` of row `oy`, any position (taps outside the image skipped, their
    /// zero-point term added back), channel block by channel block with the block's
    /// requantization constants loaded once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512vnni")]
    unsafe fn border(
        g: &ConvGeometry,
        input: &[u8],
        w: &QDwWeights,
        k: &Block,
        out_row: *mut u8,
        oy: usize,
        xs: std::ops::Range<usize>,
    ) {
        let (c, cp, b) = (w.c, w.cp, k.b);
        let inp = input.as_ptr();
        let (ky0, ky1) = taps(oy, g.stride, g.pad_top, g.in_h);
        // Safety: as in `rows`.
        unsafe {
            for ox in xs {
                let (kx0, kx1) = taps(ox, g.stride, g.pad_left, g.in_w);
                let mut acc = k.zsum;
                for t in 0..9 {
                    let (ky, kx) = (t / 3, t % 3);
                    if !(ky0..ky1).contains(&ky) || !(kx0..kx1).contains(&kx) {
                        let zw = _mm512_loadu_si512(w.zw.as_ptr().add(t * cp + b).cast());
                        acc = _mm512_add_epi32(acc, zw);
                    }
                }
                for ky in ky0..ky1 {
                    let iy = oy * g.stride + ky - g.pad_top;
                    for kx in kx0..kx1 {
                        let ix = ox * g.stride + kx - g.pad_left;
                        let px = inp.add((iy * g.in_w + ix) * c + b);
                        acc = dp(acc, col(px, c, k.mask, 0), k.wv[ky * 3 + kx]);
                    }
                }
                k.r16.store(acc, k.n, out_row.add(ox * c + b));
            }
        }
    }
}

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
