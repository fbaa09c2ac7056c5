//! The reference interpreter of the integer IR: TFLite's reference kernels, one op at a time,
//! in plain Rust. The fast engine ([`super::QuantEngine`]) is checked against it byte for
//! byte, and it against LiteRT's outputs.

use super::ir::{QConv, QOp, QuantModel};

impl QuantModel {
    /// Runs one image (quantized input values: 0..255 for uint8, −128..127 for int8) and returns
    /// the quantized outputs; `observe` sees every layer's output.
    pub fn run(&self, input: &[i32], observe: &mut dyn FnMut(usize, &[i32])) -> Vec<i32> {
        self.run_with_heads(input, observe).0
    }

    /// Like [`QuantModel::run`], also returning each head's output (a detector's predictors,
    /// in the order of the model's outputs).
    pub fn run_with_heads(
        &self,
        input: &[i32],
        observe: &mut dyn FnMut(usize, &[i32]),
    ) -> (Vec<i32>, Vec<Vec<i32>>) {
        let mut x = input.to_vec();
        let mut heads = vec![Vec::new(); self.heads.len()];
        for (i, op) in self.ops.iter().enumerate() {
            x = match op {
                QOp::Conv(conv) => conv.reference(&x),
                QOp::AvgPool { hw, c, act } => {
                    let n = *hw as i32;
                    (0..*c)
                        .map(|ch| {
                            let sum: i32 = (0..*hw).map(|p| x[p * c + ch]).sum();
                            let avg = if sum > 0 {
                                (sum + n / 2) / n
                            } else {
                                (sum - n / 2) / n
                            };
                            avg.clamp(act.0, act.1)
                        })
                        .collect()
                }
                QOp::Softmax {
                    table,
                    output_scale,
                    output_zp,
                    signed,
                } => softmax(table, *output_scale, *output_zp, *signed, &x),
            };
            observe(i, &x);
            for (head, out) in self.heads.iter().zip(&mut heads) {
                if head.after == i {
                    *out = head.conv.reference(&x);
                }
            }
        }
        (x, heads)
    }
}

impl QConv {
    /// TFLite's reference convolution of one image `x` (quantized values, NHWC).
    fn reference(&self, x: &[i32]) -> Vec<i32> {
        let (k, cin, cout, stride) = (self.k, self.cin, self.cout, self.stride);
        let ((in_h, in_w), (out_h, out_w)) = (self.in_hw, self.out_hw);
        let (weights, input_zp) = (&self.weights, self.input_zp);
        let mut out = vec![0i32; out_h * out_w * cout];
        for oy in 0..out_h {
            for ox in 0..out_w {
                for co in 0..cout {
                    let mut acc = self.bias[co];
                    for ky in 0..k {
                        let Some(iy) = (oy * stride + ky)
                            .checked_sub(self.pad_top)
                            .filter(|&v| v < in_h)
                        else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = (ox * stride + kx)
                                .checked_sub(self.pad_left)
                                .filter(|&v| v < in_w)
                            else {
                                continue;
                            };
                            let px = &x[(iy * in_w + ix) * cin..][..cin];
                            if self.depthwise {
                                // Wrapping, as TFLite's int32 accumulators.
                                acc = acc.wrapping_add(
                                    (px[co] - input_zp)
                                        .wrapping_mul(weights[(ky * k + kx) * cout + co]),
                                );
                            } else {
                                let w = &weights[((co * k + ky) * k + kx) * cin..][..cin];
                                for ci in 0..cin {
                                    acc = acc.wrapping_add((px[ci] - input_zp).wrapping_mul(w[ci]));
                                }
                            }
                        }
                    }
                    let v = self.multipliers[co].apply(acc) + self.output_zp;
                    out[(oy * out_w + ox) * cout + co] = v.clamp(self.act.0, self.act.1);
                }
            }
        }
        out
    }
}

/// TFLite's quantized softmax on x86: `table[255 − (max − v)] = exp(−s·β·(max − v))`, the sum
/// in f32, probabilities scaled by `1 / (sum · s_out)`; uint8 adds ½ and truncates (zero point
/// 0), int8 rounds and adds the zero point.
pub(crate) fn softmax(
    table: &[f32],
    output_scale: f32,
    output_zp: i32,
    signed: bool,
    x: &[i32],
) -> Vec<i32> {
    let mut out = vec![0; x.len()];
    softmax_into(table, (output_scale, output_zp, signed), |i| x[i], &mut out);
    out
}

/// [`softmax`] of the `out.len()` values `x(0), x(1), …`, written to `out` (the integer
/// engine's last step: no allocation, its bytes read in place).
pub(crate) fn softmax_into(
    table: &[f32],
    (output_scale, output_zp, signed): (f32, i32, bool),
    x: impl Fn(usize) -> i32,
    out: &mut [i32],
) {
    let n = out.len();
    let max = (0..n).map(&x).max().unwrap_or(0);
    let at = |v: i32| table[(255 + v - max).clamp(0, 255) as usize];
    // In order, as TFLite sums (f32 addition is not associative).
    let mut sum = 0.0f32;
    for i in 0..n {
        sum += at(x(i));
    }
    let inv = 1.0 / (sum * output_scale);
    let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
    for (i, o) in out.iter_mut().enumerate() {
        let p = at(x(i)) * inv;
        let q = if signed {
            p.round() as i32 + output_zp
        } else {
            (p + 0.5) as i32
        };
        *o = q.clamp(lo, hi);
    }
}
