//! TFLite's fixed-point real multipliers (`QuantizeMultiplier`, `MultiplyByQuantizedMultiplier`).

use mobilenet_kernels::int8::requantize;

/// A real multiplier as TFLite stores it: `m · 2^shift` with `m` a Q31 fixed-point number in
/// [0.5, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizedMultiplier {
    /// Q31 mantissa.
    pub multiplier: i32,
    /// Power-of-two exponent (positive: left shift).
    pub shift: i32,
}

impl QuantizedMultiplier {
    /// TFLite's `QuantizeMultiplier`: `frexp`, round the fraction to Q31 (half away from zero),
    /// renormalise 2^31 to 2^30 with the exponent one higher, flush exponents below −31 to zero.
    pub fn new(real: f64) -> QuantizedMultiplier {
        if real == 0.0 || !real.is_finite() {
            return QuantizedMultiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        let (fraction, mut shift) = frexp(real);
        let mut q = (fraction * (1i64 << 31) as f64).round() as i64;
        if q == 1i64 << 31 {
            q /= 2;
            shift += 1;
        }
        if shift < -31 {
            return QuantizedMultiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        QuantizedMultiplier {
            multiplier: q as i32,
            shift,
        }
    }

    /// TFLite's `MultiplyByQuantizedMultiplier(x, m, shift)`.
    pub fn apply(self, x: i32) -> i32 {
        requantize(x, self.multiplier, self.shift)
    }
}

/// `x = fraction · 2^exponent` with |fraction| in [0.5, 1), as C's `frexp`.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale up first.
        let (f, e) = frexp(x * (1u64 << 54) as f64);
        return (f, e - 54);
    }
    let fraction = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (fraction, exp - 1022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_helpers_match_their_definitions() {
        // 0.75 = 0.75·2^0 → Q31 0.75·2^31.
        assert_eq!(
            QuantizedMultiplier::new(0.75),
            QuantizedMultiplier {
                multiplier: 1_610_612_736,
                shift: 0
            }
        );
        assert_eq!(
            QuantizedMultiplier::new(0.0),
            QuantizedMultiplier {
                multiplier: 0,
                shift: 0
            }
        );
        // 3.0 = 0.75·2^2.
        assert_eq!(QuantizedMultiplier::new(3.0).shift, 2);
        // A fraction that rounds up to 2^31 renormalises.
        let m = QuantizedMultiplier::new(0.999_999_999_9);
        assert_eq!((m.multiplier, m.shift), (1 << 30, 1));
        // x · 0.5 with the multiplier 2^30 (shift 0): ties round upward in the doubling high
        // multiply (3.5 → 4, −3.5 → −3).
        let half = QuantizedMultiplier::new(0.5);
        assert_eq!(half.apply(7), 4);
        assert_eq!(half.apply(-7), -3);
        for &(x, real) in &[(1000, 0.0123), (-777, 0.5), (123_456, 1.7), (5, 3e-5)] {
            let got = QuantizedMultiplier::new(real).apply(x) as f64;
            assert!((got - x as f64 * real).abs() <= 1.0, "{x}·{real}: {got}");
        }
        let (f, e) = frexp(10.0);
        assert_eq!((f, e), (0.625, 4));
        let (f, e) = frexp(f64::MIN_POSITIVE / 4.0);
        assert!((f * 2f64.powi(e) - f64::MIN_POSITIVE / 4.0).abs() < 1e-320);
    }
}
