//! Requantization with gemmlowp's fixed-point arithmetic (TFLite's definition: the scalar form
//! and the exact vector forms, checked against each other), or XNNPACK's single-precision form
//! ([`Requant::fp32`]), the cheaper one an explicitly chosen fast mode uses.

use super::IntIsa;

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2·a·b`, rounded to
/// nearest with ties toward +∞ for positive products and toward zero for negative ones (the
/// nudge is `2^30` or `1 − 2^30`, then C's truncating division), saturating the single
/// overflow case `a = b = i32::MIN`.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    // Rust's integer division truncates toward zero, as C's does.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    if exponent <= 0 {
        return x;
    }
    let mask = (1i64 << exponent) - 1;
    let remainder = (x as i64) & mask;
    let threshold = (mask >> 1) + i64::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// TFLite's `MultiplyByQuantizedMultiplier(x, multiplier, shift)` (double rounding): scale
/// `x` by `multiplier · 2^(shift − 31)`.
pub fn requantize(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier),
        right,
    )
}

/// Per-output-channel requantization: `clamp(requantize(acc + bias, m, shift) + zp, min, max)`.
///
/// Vectors are padded to a multiple of 16 channels so vector kernels load them whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Requant {
    n: usize,
    bias: Vec<i32>,
    multiplier: Vec<i32>,
    left: Vec<i32>,
    right: Vec<i32>,
    /// Derived for the vector kernels: each odd channel's multiplier in the even slot before
    /// it (the 64-bit lanes' low halves).
    mult_odd: Vec<i32>,
    /// Whether any channel shifts left (a multiplier above 1).
    any_left: bool,
    /// The two roundings as one: `r = (p + c − [p < −2^30 and e > 0]·2^31) >> (31 + e)` for
    /// the 64-bit product `p`, with `c = 2^30 + [e > 0]·2^(30+e) (+ zp·2^(31+e))`, split into
    /// even and odd channels (64-bit lanes).
    c_even: Vec<i64>,
    c_odd: Vec<i64>,
    s_even: Vec<i64>,
    s_odd: Vec<i64>,
    /// The AVX2 form's 64-bit constants, per block of 8 channels: `c + 2^63`, `2^(63 − s)` and
    /// the negative correction `[s > 31]·2^31`, four even then four odd lanes of each.
    avx2_blocks: Vec<i64>,
    /// Whether `c` includes the zero point (every `e ≤ 20`, so that it cannot overflow).
    zp_folded: bool,
    /// Whether every channel shifts right (`e ≥ 1`): the vector forms then shift the odd
    /// channels' 64-bit lanes straight into their high halves.
    all_right: bool,
    /// XNNPACK's form instead: `clamp(rne(min(f32(acc + bias)·scale, max − zp)) + zp, min,
    /// max)` with these per-channel single-precision scales (the Q31 fields unused).
    fp32: bool,
    scale: Vec<f32>,
    zero_point: i32,
    min: i32,
    max: i32,
}

impl Requant {
    /// Parameters for `bias.len()` channels; `multiplier` and `shift` hold one value per
    /// channel or one for all. `min ≤ max` are output bounds in 0..=255.
    ///
    /// # Panics
    ///
    /// If a multiplier is not a Q31 value in `[2^30, 2^31)` (or 0), a shift is outside
    /// −31..=30, the per-channel lengths differ, or the bounds are not bytes.
    pub fn new(
        bias: &[i32],
        multiplier: &[i32],
        shift: &[i32],
        zero_point: i32,
        min: i32,
        max: i32,
    ) -> Requant {
        let n = bias.len();
        let pick = |v: &[i32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        assert!(
            multiplier.len() == n || multiplier.len() == 1,
            "one multiplier or one per channel"
        );
        assert_eq!(multiplier.len(), shift.len(), "a shift per multiplier");
        assert!(
            0 <= min && min <= max && max <= 255,
            "bounds {min}..={max} are not bytes"
        );
        let padded = n.div_ceil(16) * 16;
        let mut r = Requant {
            n,
            bias: vec![0; padded],
            multiplier: vec![0; padded],
            left: vec![0; padded],
            right: vec![0; padded],
            mult_odd: vec![0; padded],
            any_left: false,
            c_even: vec![0; padded / 2],
            c_odd: vec![0; padded / 2],
            s_even: vec![0; padded / 2],
            s_odd: vec![0; padded / 2],
            avx2_blocks: vec![0; padded / 8 * 24],
            zp_folded: false,
            all_right: false,
            fp32: false,
            scale: vec![0.0; padded],
            zero_point,
            min,
            max,
        };
        for (i, &b) in bias.iter().enumerate() {
            let (m, s) = (pick(multiplier, i), pick(shift, i));
            assert!(
                m == 0 || (1 << 30..=i32::MAX).contains(&m),
                "multiplier {m} is not Q31 in [0.5, 1)"
            );
            assert!((-31..=30).contains(&s), "shift {s} out of range");
            r.bias[i] = b;
            r.multiplier[i] = m;
            r.left[i] = s.max(0);
            r.right[i] = (-s).max(0);
        }
        for j in 0..padded {
            if j % 2 == 0 {
                r.mult_odd[j] = r.multiplier[j + 1];
            }
        }
        r.any_left = r.left.iter().any(|&l| l > 0);
        r.zp_folded = r.right.iter().all(|&e| e <= 20);
        r.all_right = r.right[..n].iter().all(|&e| e >= 1);
        for j in 0..padded {
            let e = r.right[j] as i64;
            let mut c = (1i64 << 30) + if e > 0 { 1i64 << (30 + e) } else { 0 };
            if r.zp_folded {
                c += (zero_point as i64) << (31 + e);
            }
            let (cv, sv) = if j % 2 == 0 {
                (&mut r.c_even, &mut r.s_even)
            } else {
                (&mut r.c_odd, &mut r.s_odd)
            };
            cv[j / 2] = c;
            sv[j / 2] = 31 + e;
            // Lane j % 8 of block j / 8: even channels in slots 0..4, odd ones in 4..8.
            let (block, lane) = (j / 8, (j % 8) / 2 + if j % 2 == 0 { 0 } else { 4 });
            let b = &mut r.avx2_blocks[block * 24..][..24];
            b[lane] = c.wrapping_add(i64::MIN);
            b[8 + lane] = 1i64 << (63 - (31 + e));
            b[16 + lane] = if e > 0 { 1 << 31 } else { 0 };
        }
        r
    }

    /// XNNPACK's "fp32" requantization, for `bias.len()` channels with `scale` holding one
    /// value per channel or one for all: the output byte is `clamp(rne(min(f32(acc + bias) ·
    /// scale, max − zp)) + zp, min, max)`: the accumulator rounded to single precision,
    /// multiplied in single precision, capped at the upper bound and rounded to the nearest
    /// integer, ties to even. XNNPACK's x86 kernels compute exactly this (their narrowing
    /// saturations only ever reach the bounds), so with its scales (`s_in·s_w / s_out` in
    /// single precision) the bytes are its bytes; TFLite's own kernels round differently.
    ///
    /// # Panics
    ///
    /// If a scale is not in (0, 256) (XNNPACK's range), the lengths differ, or the bounds are
    /// not bytes.
    pub fn fp32(bias: &[i32], scale: &[f32], zero_point: i32, min: i32, max: i32) -> Requant {
        let n = bias.len();
        assert!(
            scale.len() == n || scale.len() == 1,
            "one scale or one per channel"
        );
        assert!(
            scale.iter().all(|&s| s > 0.0 && s < 256.0),
            "requantization scales must lie in (0, 256)"
        );
        let mut r = Requant::new(bias, &[0], &[0], zero_point, min, max);
        for j in 0..n {
            r.scale[j] = scale[if scale.len() == 1 { 0 } else { j }];
        }
        r.fp32 = true;
        r
    }

    /// Whether this is XNNPACK's single-precision form ([`Requant::fp32`]).
    pub fn is_fp32(&self) -> bool {
        self.fp32
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no channels.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The output byte of channel `j` for accumulator `acc` (bias not yet added).
    #[inline]
    pub fn apply(&self, j: usize, acc: i32) -> u8 {
        let x = acc.wrapping_add(self.bias[j]);
        if self.fp32 {
            let f = (x as f32 * self.scale[j]).min((self.max - self.zero_point) as f32);
            // `as` saturates: below −2^31 gives i32::MIN, as `cvtps2dq` does.
            let v = f.round_ties_even() as i32;
            return v.wrapping_add(self.zero_point).clamp(self.min, self.max) as u8;
        }
        let v = rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(
                x.wrapping_mul(1 << self.left[j]),
                self.multiplier[j],
            ),
            self.right[j],
        );
        v.wrapping_add(self.zero_point).clamp(self.min, self.max) as u8
    }

    /// Requantizes `acc[j] + add` for channels `j0 .. j0 + acc.len()` into `out`. The vector
    /// forms load their constants in blocks of 8 or 16 channels: a row that starts elsewhere
    /// goes the scalar way.
    pub fn row(&self, isa: IntIsa, acc: &[i32], add: i32, j0: usize, out: &mut [u8]) {
        assert!(out.len() >= acc.len() && j0 + acc.len() <= self.n);
        let isa = if j0.is_multiple_of(16) {
            isa
        } else {
            IntIsa::SCALAR
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            _ if isa.avx512() => {
                // Safety: AVX-512 is present; the slices cover `acc.len()` values from j0.
                unsafe {
                    x86::requant_row(self, acc.as_ptr(), acc.len(), add, j0, out.as_mut_ptr())
                }
            }
            #[cfg(target_arch = "x86_64")]
            _ if isa.avx2() => {
                // Safety: AVX2 is present; the slices cover `acc.len()` values from j0.
                unsafe {
                    x86_avx2::requant_row_avx2(
                        self,
                        acc.as_ptr(),
                        acc.len(),
                        add,
                        j0,
                        out.as_mut_ptr(),
                    )
                }
            }
            #[cfg(target_arch = "aarch64")]
            _ if isa.neon() => {
                // Safety: out holds acc.len() bytes; j0 + acc.len() ≤ n (both checked above).
                unsafe { neon::requant_row(self, acc, add, j0, out.as_mut_ptr()) }
            }
            _ => {
                for (j, (&a, o)) in acc.iter().zip(out.iter_mut()).enumerate() {
                    *o = self.apply(j0 + j, a.wrapping_add(add));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "requant_avx512.rs"]
pub(crate) mod x86;

#[cfg(target_arch = "x86_64")]
#[path = "requant_avx2.rs"]
pub(crate) mod x86_avx2;

#[cfg(target_arch = "aarch64")]
#[path = "requant_neon.rs"]
pub(crate) mod neon;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_helpers_match_their_definitions() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
        // x · 0.5 with the multiplier 2^30: the doubling high multiply rounds ties upward
        // (3.5 → 4, −3.5 → −3), unlike the power-of-two divide (−2.5 → −3 above).
        assert_eq!(requantize(7, 1 << 30, 0), 4);
        assert_eq!(requantize(-7, 1 << 30, 0), -3);
    }

    /// Accumulators that hit every rounding case: ties, negatives, extremes, large shifts.
    fn hard_values() -> Vec<i32> {
        let mut v = vec![
            0,
            1,
            -1,
            2,
            -2,
            3,
            -3,
            i32::MAX,
            i32::MIN + 1,
            1 << 20,
            -(1 << 20),
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..2000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Magnitudes from 2^31 down to 2^4: the small ones land inside the output range.
            v.push((s as i32) >> (s % 28));
        }
        v
    }

    #[test]
    fn requant_rows_equal_the_scalar_definition_on_every_isa() {
        let values = hard_values();
        let n = 37;
        let bias: Vec<i32> = (0..n as i32).map(|i| i * 1001 - 17_000).collect();
        let mults: Vec<i32> = (0..n as i32).map(|i| (1 << 30) + i * 19_999_999).collect();
        // Exponents 0..=11 with left shifts, and 15..=31 (no zero-point folding), then
        // uint8's middle zero point with small exponents, where negative results are kept
        // and their rounding (ties away from zero) shows. Then the same with a lower bound
        // at or above the zero point (ReLU), where the vector forms skip the negative
        // rounding correction: whatever it would change ends at the bound.
        let left = (0..n as i32).map(|i| (i % 14) - 11).collect::<Vec<_>>();
        let large = (0..n as i32).map(|i| -15 - i % 17).collect::<Vec<_>>();
        let small = (0..n as i32).map(|i| -1 - i % 8).collect::<Vec<_>>();
        for (shifts, zp, lo, hi) in [
            (&left, 7, 3, 250),
            (&large, 7, 3, 250),
            (&small, 128, 0, 255),
            (&left, 7, 7, 250),
            (&large, 7, 9, 255),
            (&small, 128, 128, 255),
            (&small, 3, 3, 100),
        ] {
            let rq = Requant::new(&bias, &mults, shifts, zp, lo, hi);
            for isa in IntIsa::available() {
                for (row, chunk) in values.chunks(n).enumerate() {
                    if chunk.len() < n {
                        continue;
                    }
                    let add = row as i32 * 3 - 40;
                    // From channel 0, and from channels where no vector block starts.
                    for j0 in [0, 5, 16] {
                        let mut got = vec![0u8; n - j0];
                        rq.row(isa, &chunk[j0..], add, j0, &mut got);
                        for (i, (&acc, &g)) in chunk[j0..].iter().zip(&got).enumerate() {
                            let j = j0 + i;
                            let x = acc.wrapping_add(add).wrapping_add(bias[j]);
                            let want =
                                (requantize(x, mults[j], shifts[j]) + zp).clamp(lo, hi) as u8;
                            assert_eq!(g, want, "{isa} acc {acc} ch {j} shift {}", shifts[j]);
                        }
                    }
                }
            }
        }
    }

    /// Exact ties of the power-of-two divide on both sides of zero, near the lower bound:
    /// below the zero point a negative tie's rounding (away from zero) shows in the byte;
    /// with the bound at the zero point (ReLU) it must not, which the vector forms exploit.
    #[test]
    fn negative_ties_round_away_from_zero_on_every_isa() {
        let n = 32;
        // ×0.5 exactly, then 2^−e: (2k + 1)·2^e ends at k + ½ after both steps.
        let shifts: Vec<i32> = (0..n as i32).map(|j| -1 - j % 8).collect();
        for (zp, lo) in [(7, 3), (7, 6), (7, 7), (128, 0), (128, 128), (0, 0)] {
            let rq = Requant::new(&[0; 32], &[1 << 30; 32], &shifts, zp, lo, 255);
            for isa in IntIsa::available() {
                for k in -12..12 {
                    let acc: Vec<i32> = (0..n).map(|j| (2 * k + 1) << (1 + j % 8)).collect();
                    let mut got = vec![0u8; n];
                    rq.row(isa, &acc, 0, 0, &mut got);
                    for (j, (&a, &g)) in acc.iter().zip(&got).enumerate() {
                        let want = (requantize(a, 1 << 30, shifts[j]) + zp).clamp(lo, 255);
                        assert_eq!(g as i32, want, "{isa} zp {zp} lo {lo} acc {a} ch {j}");
                    }
                }
            }
        }
    }

    /// XNNPACK's form, written out in double precision: the product of two single-precision
    /// values is exact there, so rounding it once to single precision is `f32`'s multiply.
    fn fp32_definition(x: i32, scale: f32, zp: i32, lo: i32, hi: i32) -> u8 {
        let f = ((x as f32 as f64) * scale as f64) as f32;
        let f = (f as f64).min((hi - zp) as f64).round_ties_even();
        (f.max(i32::MIN as f64) as i64 + zp as i64).clamp(lo as i64, hi as i64) as u8
    }

    #[test]
    fn fp32_rows_equal_their_definition_on_every_isa() {
        let mut values = hard_values();
        // Ties: odd values times a half, which round to the even neighbour.
        values.extend((-41..41).map(|v| 2 * v + 1));
        let n = 37;
        let bias: Vec<i32> = (0..n as i32).map(|i| i * 101 - 1_700).collect();
        let mut scale: Vec<f32> = (0..n).map(|i| 0.5f32.powi(i as i32 % 9) * 0.75).collect();
        scale[3] = 0.5;
        scale[4] = 255.9;
        scale[5] = 1e-9;
        for (zp, lo, hi) in [(7, 3, 250), (128, 0, 255), (0, 0, 255)] {
            let rq = Requant::fp32(&bias, &scale, zp, lo, hi);
            assert!(rq.is_fp32());
            for isa in IntIsa::available() {
                for (row, chunk) in values.chunks(n).enumerate() {
                    let chunk = &chunk[..chunk.len().min(n)];
                    let add = row as i32 * 3 - 40;
                    for j0 in [0, 5, 16] {
                        if j0 >= chunk.len() {
                            continue;
                        }
                        let mut got = vec![0u8; chunk.len() - j0];
                        rq.row(isa, &chunk[j0..], add, j0, &mut got);
                        for (i, (&acc, &g)) in chunk[j0..].iter().zip(&got).enumerate() {
                            let j = j0 + i;
                            let x = acc.wrapping_add(add).wrapping_add(bias[j]);
                            let want = fp32_definition(x, scale[j], zp, lo, hi);
                            assert_eq!(g, want, "{isa} acc {acc} ch {j} scale {}", scale[j]);
                        }
                    }
                }
            }
        }
        // A tie in the middle of the bytes: 5 · 0.5 = 2.5 → 2, 7 · 0.5 = 3.5 → 4.
        let rq = Requant::fp32(&[0], &[0.5], 10, 0, 255);
        assert_eq!((rq.apply(0, 5), rq.apply(0, 7)), (12, 14));
    }
}
