//! The AVX-512 depthwise 3×3: VNNI's `vpdpwssd` on widened bytes, four pixels (or four
//! pairs of pixels of an 8-channel layer) a step with the filter in registers, the rows
//! outside the image read as zero points, a per-pixel path for the other borders.

use std::arch::x86_64::*;

use super::super::requant::x86::{Rq16, EXACT_RELU, EXACT_RELU_FOLDED, FP32, GENERAL};
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
                    row_interior(&Interior {
                        in_rows,
                        c,
                        stride: g.stride,
                        k: &k,
                        kp: kp.as_ref(),
                        out,
                        blocks,
                        rest,
                    });
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
    /// `zsum` plus the bias: where the interior's sums start (its stores add no bias).
    zsum_bias: __m512i,
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
                zsum_bias: _mm512_add_epi32(
                    _mm512_loadu_si512(w.zsum.as_ptr().add(b).cast()),
                    Rq16::load(rq, b).bias(),
                ),
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
                zsum_bias: _mm512_shuffle_i64x2::<0b01_00_01_00>(self.zsum_bias, self.zsum_bias),
                r16: self.r16.low_half_twice(),
                ..*self
            }
        }
    }
}

/// One output row's interior: `blocks` of PX outputs and `rest` single outputs, or with
/// `kp` (eight channels, two pixels a vector) `blocks` of 2·PX pixels and `rest` single
/// pairs; `in_rows` and `out` as [`interior`]'s.
struct Interior<'a> {
    in_rows: [*const u8; 3],
    c: usize,
    stride: usize,
    k: &'a Block,
    kp: Option<&'a Block>,
    out: *mut u8,
    blocks: usize,
    rest: usize,
}

/// [`Interior`] in the requantization form of its constants, chosen once per row, not per
/// store.
#[inline(always)]
unsafe fn row_interior(r: &Interior) {
    // Safety: forwarded from `rows`.
    unsafe {
        match r.k.r16.mode() {
            FP32 => row_interior_as::<FP32>(r),
            EXACT_RELU_FOLDED => row_interior_as::<EXACT_RELU_FOLDED>(r),
            EXACT_RELU => row_interior_as::<EXACT_RELU>(r),
            _ => row_interior_as::<GENERAL>(r),
        }
    }
}

/// [`row_interior`] in form `M`.
#[inline(always)]
unsafe fn row_interior_as<const M: u8>(r: &Interior) {
    let Interior {
        in_rows,
        c,
        stride,
        k,
        kp,
        out,
        blocks,
        rest,
    } = *r;
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
            let mut acc = [k.zsum_bias; PX];
            let mut acc2 = [_mm512_setzero_si512(); PX];
            for (ky, row) in rows.iter().enumerate() {
                let w3 = [k.wv[3 * ky], k.wv[3 * ky + 1], k.wv[3 * ky + 2]];
                let row = row.add(blk * PX * S * c);
                let a = if ky < 2 { &mut acc } else { &mut acc2 };
                filter_row::<S, PX>(row, c, k.mask, w3, a);
            }
            for p in 0..PX {
                k.r16.store_biased::<M>(
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
