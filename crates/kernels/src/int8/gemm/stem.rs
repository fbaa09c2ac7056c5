//! Direct 3×3 convolution over a few input channels (a MobileNet's stem) on AVX-512 VNNI: the
//! GEMM's tile with A's quads read from the image itself instead of an im2col copy.
//!
//! A pixel's 3×3×cin window is three runs of `3·cin` bytes, one per kernel row; each run is
//! read as `qr = ⌈3·cin / 4⌉` quads. The bytes of a run's last quad past `3·cin` belong to the
//! next pixel and meet zero weights. Blocks of 16 output pixels whose windows lie inside the
//! image read it in place; the others (the image's edge, a partial last block) read a copy of
//! their windows' bytes padded with the input's zero point. A uint8 model's row sums
//! (`row_coeff·Σ window`, see [`super::qgemm`]) take a byte permute per quad (AVX-512 VBMI)
//! and one `vpdpbusd` against ones for 16 pixels at a time.

use super::{IntIsa, PackedQB, Requant};
use crate::ConvGeometry;

/// Bytes a block of 16 outputs reads from its first window's start (at most 128: two vectors).
#[cfg(target_arch = "x86_64")]
fn block_bytes(span: usize, qr: usize) -> usize {
    15 * span + 4 * qr
}

/// Stem weights packed for [`qstem`]: B of the GEMM with `k = 3·4·qr`, kernel row `ky`'s
/// `3·cin` weights at `ky·4·qr`, zeros in between.
#[derive(Clone, Debug, PartialEq)]
pub struct QStemWeights {
    cin: usize,
    qr: usize,
    b: PackedQB,
}

impl QStemWeights {
    /// `w`: `[n, 3, 3, cin]` signed weights (as [`PackedQB::new`] takes a 3×3 convolution's
    /// im2col rows). `None` where the direct kernel does not apply: more than 4 input channels.
    ///
    /// # Panics
    ///
    /// If `w.len() != 9·cin·n`.
    pub fn new(w: &[i8], cin: usize, n: usize) -> Option<QStemWeights> {
        assert_eq!(w.len(), 9 * cin * n, "weights must be n·3·3·cin");
        if cin == 0 || cin > 4 {
            return None;
        }
        let qr = (3 * cin).div_ceil(4);
        let k = 12 * qr;
        let mut rows = vec![0i8; n * k];
        for j in 0..n {
            for ky in 0..3 {
                rows[j * k + ky * 4 * qr..][..3 * cin]
                    .copy_from_slice(&w[(j * 3 + ky) * 3 * cin..][..3 * cin]);
            }
        }
        Some(QStemWeights {
            cin,
            qr,
            b: PackedQB::new(&rows, k, n),
        })
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.b.n
    }
}

/// Whether [`qstem`] runs this convolution on `isa` (AVX-512 VNNI, plus VBMI where
/// `row_coeff ≠ 0`; a block's windows within two vectors).
pub fn qstem_supported(isa: IntIsa, g: &ConvGeometry, w: &QStemWeights, row_coeff: i32) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa.avx512()
            && g.pad_left < 3
            && g.pad_top < 3
            && block_bytes(g.stride * w.cin, w.qr) <= 128
            && (row_coeff == 0 || vbmi())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, g, w, row_coeff);
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Output rows `row0 ..` (whole rows filling `output`, `[rows, out_w, n]` bytes) of the 3×3
/// convolution of `input` (`[in_h, in_w, cin]` bytes; taps outside read `pad`, the input's
/// zero point): `rq(Σ window·w + row_coeff·Σ window)`, the bytes of im2col and [`super::qgemm`].
///
/// # Panics
///
/// If [`qstem_supported`] is false, or a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)] // a convolution's operands
pub fn qstem(
    isa: IntIsa,
    g: &ConvGeometry,
    input: &[u8],
    pad: u8,
    w: &QStemWeights,
    row_coeff: i32,
    rq: &Requant,
    output: &mut [u8],
    row0: usize,
) {
    assert!(
        qstem_supported(isa, g, w, row_coeff),
        "the direct stem does not run here"
    );
    let n = w.b.n;
    assert_eq!(rq.len(), n, "requantization for {} channels", rq.len());
    let row_len = g.out_w * n;
    assert!(
        row_len > 0 && output.len().is_multiple_of(row_len),
        "output is not whole rows"
    );
    assert!(row0 + output.len() / row_len <= g.out_h, "rows past out_h");
    assert!(
        input.len() >= g.in_h * g.in_w * w.cin,
        "input shorter than in_h·in_w·cin"
    );
    #[cfg(target_arch = "x86_64")]
    // Safety: AVX-512 VNNI (and VBMI where row sums are taken) checked above; shapes too.
    unsafe {
        x86::rows(g, input, pad, w, row_coeff, rq, output, row0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = pad;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::super::requant::x86::store_rows;
    use super::super::NR;
    use super::{block_bytes, QStemWeights, Requant};
    use crate::ConvGeometry;

    /// Output pixels per register tile (two tiles per block of 16).
    const R: usize = 8;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        g: &ConvGeometry,
        input: &[u8],
        pad: u8,
        w: &QStemWeights,
        row_coeff: i32,
        rq: &Requant,
        output: &mut [u8],
        row0: usize,
    ) {
        let (cin, qr, n) = (w.cin, w.qr, w.b.n);
        let span = g.stride * cin;
        let need = block_bytes(span, qr);
        let pad_row = [pad; 128];
        // Three windows' rows of an edge block, copied with the padding in place.
        let mut edge = [[pad; 128]; 3];
        let rows = output.len() / (g.out_w * n);
        // The tile of a partial block's last pixels, copied out for the pixels that exist.
        let mut partial = match g.out_w.is_multiple_of(16) {
            true => Vec::new(),
            false => vec![0u8; R * n],
        };
        let plan = SumPlan::new(span, qr, cin, need, row_coeff);
        // Safety: a block reads `need ≤ 128` bytes from each of its three row pointers, which
        // point into the image (checked to hold them) or into `pad_row`/`edge`; the stores
        // write the block's pixels of the caller's rows.
        unsafe {
            for r in 0..rows {
                let oy = row0 + r;
                let iys: [Option<usize>; 3] = std::array::from_fn(|ky| {
                    (oy * g.stride + ky)
                        .checked_sub(g.pad_top)
                        .filter(|&y| y < g.in_h)
                });
                for ox0 in (0..g.out_w).step_by(16) {
                    let px = (g.out_w - ox0).min(16);
                    let x0 = (ox0 * g.stride) as isize - g.pad_left as isize;
                    let inside = x0 >= 0
                        && px == 16
                        && x0 as usize + 15 * g.stride + 3 <= g.in_w
                        && iys.iter().all(|iy| {
                            iy.is_none_or(|y| {
                                (y * g.in_w + x0 as usize) * cin + need <= input.len()
                            })
                        });
                    let ptrs: [*const u8; 3] = std::array::from_fn(|ky| match (inside, iys[ky]) {
                        (true, Some(y)) => input.as_ptr().add((y * g.in_w + x0 as usize) * cin),
                        (true, None) => pad_row.as_ptr(),
                        (false, _) => {
                            fill_edge(&mut edge[ky], g, input, pad, cin, iys[ky], x0);
                            edge[ky].as_ptr()
                        }
                    });
                    let mut add = [0i32; 16];
                    if row_coeff != 0 {
                        row_sums(ptrs, &plan, &mut add);
                    }
                    let out = output.as_mut_ptr().add((r * g.out_w + ox0) * n);
                    for p in 0..w.b.panels() {
                        let bp = w.b.data.as_ptr().add(p * w.b.quads * NR * 4);
                        let cols = (n - p * NR).min(NR);
                        for half in 0..2 {
                            let count = px.saturating_sub(half * R).min(R);
                            if count == 0 {
                                continue;
                            }
                            let t = Tile {
                                rows: ptrs.map(|q| q.add(half * R * span)),
                                span,
                                add: &add[half * R..],
                                rq,
                                out: match count {
                                    R => out.add(half * R * n),
                                    _ => partial.as_mut_ptr(),
                                },
                                ldc: n,
                            };
                            match (cols > 16, qr) {
                                (true, 3) => tile::<2, 3>(&t, bp, p * NR, cols),
                                (true, 2) => tile::<2, 2>(&t, bp, p * NR, cols),
                                (true, _) => tile::<2, 1>(&t, bp, p * NR, cols),
                                (false, 3) => tile::<1, 3>(&t, bp, p * NR, cols),
                                (false, 2) => tile::<1, 2>(&t, bp, p * NR, cols),
                                (false, _) => tile::<1, 1>(&t, bp, p * NR, cols),
                            }
                            if count < R {
                                for i in 0..count {
                                    let px = out.add((half * R + i) * n + p * NR);
                                    let from = partial.as_ptr().add(i * n + p * NR);
                                    std::ptr::copy_nonoverlapping(from, px, cols);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bytes of input row `iy` from pixel `x0` on (128 bytes' worth), the input's zero
    /// point outside the image.
    fn fill_edge(
        dst: &mut [u8; 128],
        g: &ConvGeometry,
        input: &[u8],
        pad: u8,
        cin: usize,
        iy: Option<usize>,
        x0: isize,
    ) {
        dst.fill(pad);
        let Some(y) = iy else { return };
        let pixels = (128 / cin) as isize;
        let lo = x0.max(0);
        let hi = (x0 + pixels).min(g.in_w as isize);
        if lo < hi {
            let src = &input[(y * g.in_w + lo as usize) * cin..][..(hi - lo) as usize * cin];
            dst[(lo - x0) as usize * cin..][..src.len()].copy_from_slice(src);
        }
    }

    /// What [`row_sums`] needs, made once per call: the permute's indices (lane `p`'s quad
    /// at `p·span`), the loads' masks and, per quad of a run, its bytes inside the window.
    struct SumPlan {
        idx: [u8; 64],
        lo: u64,
        hi: u64,
        ones: [u64; 3],
        qr: usize,
        row_coeff: i32,
    }

    impl SumPlan {
        fn new(span: usize, qr: usize, cin: usize, need: usize, row_coeff: i32) -> SumPlan {
            SumPlan {
                idx: std::array::from_fn(|b| ((b / 4) * span + b % 4) as u8),
                lo: u64::MAX >> (64 - need.min(64)),
                hi: match need > 64 {
                    true => u64::MAX >> (128 - need),
                    false => 0,
                },
                ones: std::array::from_fn(|j| ones_mask(4 * j, 3 * cin)),
                qr,
                row_coeff,
            }
        }
    }

    /// `row_coeff·Σ window` of the block's 16 pixels: each quad of the three rows gathered
    /// for all pixels with one two-register byte permute, summed by `vpdpbusd` against ones
    /// where the quad's bytes belong to the window.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,avx512vbmi")]
    unsafe fn row_sums(ptrs: [*const u8; 3], plan: &SumPlan, add: &mut [i32; 16]) {
        // Safety: `need` bytes from each pointer are readable (the caller's contract).
        unsafe {
            let idx = _mm512_loadu_si512(plan.idx.as_ptr().cast());
            // A sum per kernel row: three dependency chains instead of one.
            let mut sums = [_mm512_setzero_si512(); 3];
            for (sum, p) in sums.iter_mut().zip(ptrs) {
                let lo = _mm512_maskz_loadu_epi8(plan.lo, p.cast());
                let hi = _mm512_maskz_loadu_epi8(plan.hi, p.add(64).cast());
                for j in 0..plan.qr {
                    let at = _mm512_add_epi8(idx, _mm512_set1_epi8(4 * j as i8));
                    let a = _mm512_permutex2var_epi8(lo, at, hi);
                    let ones = _mm512_maskz_set1_epi8(plan.ones[j], 1);
                    *sum = _mm512_dpbusd_epi32(*sum, a, ones);
                }
            }
            let sum = _mm512_add_epi32(_mm512_add_epi32(sums[0], sums[1]), sums[2]);
            let terms = _mm512_mullo_epi32(sum, _mm512_set1_epi32(plan.row_coeff));
            _mm512_storeu_si512(add.as_mut_ptr().cast(), terms);
        }
    }

    /// The bytes of a vector of quads that belong to the window: byte `b` of each quad
    /// where `start + b < end` (`start` the quad's place in the kernel row's run).
    fn ones_mask(start: usize, end: usize) -> u64 {
        let quad = (0..4).fold(0u64, |m, b| m | (u64::from(start + b < end) << b));
        quad * 0x1111_1111_1111_1111
    }

    struct Tile<'a> {
        /// Kernel rows 0–2 of the tile's first pixel.
        rows: [*const u8; 3],
        /// Bytes between neighbouring pixels' windows.
        span: usize,
        add: &'a [i32],
        rq: &'a Requant,
        out: *mut u8,
        ldc: usize,
    }

    /// R pixels × 16·H columns of a panel: the three rows' `QR` quads each, requantized and
    /// stored (a partial block's tile goes to a scratch tile, whose existing pixels the caller
    /// copies out: a loop over a run-time count kept the accumulators in memory).
    #[inline(always)]
    unsafe fn tile<const H: usize, const QR: usize>(
        t: &Tile,
        bp: *const i8,
        j0: usize,
        cols: usize,
    ) {
        unsafe {
            let mut acc0 = [_mm512_setzero_si512(); R];
            let mut acc1 = [_mm512_setzero_si512(); R];
            for (ky, row) in t.rows.iter().enumerate() {
                for j in 0..QR {
                    let q = ky * QR + j;
                    let b0 = _mm512_loadu_si512(bp.add(q * NR * 4).cast());
                    let b1 = match H {
                        2 => _mm512_loadu_si512(bp.add(q * NR * 4 + 64).cast()),
                        _ => b0,
                    };
                    for i in 0..R {
                        let av = _mm512_set1_epi32(
                            row.add(i * t.span + 4 * j).cast::<i32>().read_unaligned(),
                        );
                        acc0[i] = _mm512_dpbusd_epi32(acc0[i], av, b0);
                        if H == 2 {
                            acc1[i] = _mm512_dpbusd_epi32(acc1[i], av, b1);
                        }
                    }
                }
            }
            let out = t.out.add(j0);
            store_rows::<R, H>(t.rq, j0, &acc0, &acc1, t.add, out, t.ldc, cols);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::qgemm_reference;
    use super::super::tests::noise;
    use super::*;
    use crate::int8::im2col3x3;

    /// The direct stem against im2col and the GEMM's definition, whole and in bands of rows.
    fn check(h: usize, w_: usize, cin: usize, stride: usize, n: usize, row_coeff: i32, fp32: bool) {
        // Lower bound 0, and at the zero point 5 (ReLU: the exact form's cheaper variant).
        for lo in [0, 5] {
            check_lo(h, w_, cin, stride, n, row_coeff, fp32, lo);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_lo(
        h: usize,
        w_: usize,
        cin: usize,
        stride: usize,
        n: usize,
        row_coeff: i32,
        fp32: bool,
        lo: i32,
    ) {
        let g = ConvGeometry::tf_same(h, w_, 3, stride);
        let seed = (h * 131 + w_ * 17 + cin * 5 + stride + n * 3) as u32;
        let input: Vec<u8> = noise(seed, h * w_ * cin).iter().map(|&v| v as u8).collect();
        let w: Vec<i8> = noise(seed + 1, 9 * cin * n)
            .iter()
            .map(|&v| v as i8)
            .collect();
        let bias: Vec<i32> = noise(seed + 2, n)
            .iter()
            .map(|&v| (v % 20_000) as i32 - 10_000)
            .collect();
        let rq = match fp32 {
            false => {
                // Per-channel multipliers and shifts: every lane's constants matter.
                let mult: Vec<i32> = (0..n as i32).map(|j| (1 << 30) + 4321 * j).collect();
                let shift: Vec<i32> = (0..n as i32).map(|j| -7 + j % 3).collect();
                Requant::new(&bias, &mult, &shift, 5, lo, 255)
            }
            true => {
                let scale: Vec<f32> = (0..n).map(|j| 0.004 + j as f32 * 1e-4).collect();
                Requant::fp32(&bias, &scale, 5, lo, 255)
            }
        };
        let pad = 77;
        let kp = (9 * cin).div_ceil(4) * 4;
        let mut col = vec![0u8; g.out_h * g.out_w * kp];
        im2col3x3(&g, cin, &input, pad, 0..g.out_h, kp, &mut col);
        let mut padded = vec![0i8; n * kp];
        for j in 0..n {
            padded[j * kp..][..9 * cin].copy_from_slice(&w[j * 9 * cin..][..9 * cin]);
        }
        let b = PackedQB::new(&padded, kp, n);
        let mut want = vec![0u8; g.out_h * g.out_w * n];
        qgemm_reference(
            g.out_h * g.out_w,
            &col,
            kp,
            &b,
            row_coeff,
            &rq,
            &mut want,
            n,
        );
        let sw = QStemWeights::new(&w, cin, n).expect("should succeed");
        let what = format!("{h}×{w_}×{cin} s{stride} n {n} coeff {row_coeff} fp32 {fp32}");
        let mut ran = false;
        for isa in IntIsa::available() {
            if !qstem_supported(isa, &g, &sw, row_coeff) {
                continue;
            }
            ran = true;
            let mut got = vec![0u8; want.len()];
            qstem(isa, &g, &input, pad, &sw, row_coeff, &rq, &mut got, 0);
            assert_eq!(got, want, "{isa} {what}");
            let row = g.out_w * n;
            let split = g.out_h / 2;
            let mut bands = vec![0u8; want.len()];
            let (top, bottom) = bands.split_at_mut(split * row);
            qstem(isa, &g, &input, pad, &sw, row_coeff, &rq, top, 0);
            qstem(isa, &g, &input, pad, &sw, row_coeff, &rq, bottom, split);
            assert_eq!(bands, want, "{isa} bands {what}");
        }
        if !ran {
            eprintln!("no instruction set here runs the direct stem: {what} not checked");
        }
    }

    #[test]
    fn direct_stem_equals_im2col_and_gemm() {
        for &(h, w, cin, stride) in &[
            (32, 32, 3, 2),
            (33, 47, 3, 2),
            (16, 16, 3, 1),
            (5, 70, 3, 1),
            (64, 40, 3, 2),
            (9, 9, 1, 2),
            (20, 37, 2, 1),
            (17, 35, 4, 2),
            (3, 3, 3, 2),
            (1, 1, 3, 1),
        ] {
            for n in [8, 16, 24, 32, 40] {
                for coeff in [0, 3, -100] {
                    check(h, w, cin, stride, n, coeff, false);
                }
            }
            check(h, w, cin, stride, 32, 0, true);
            check(h, w, cin, stride, 24, 7, true);
        }
    }

    #[test]
    fn wider_inputs_are_left_to_im2col() {
        assert!(QStemWeights::new(&[0; 9 * 5 * 2], 5, 2).is_none());
    }
}
