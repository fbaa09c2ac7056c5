//! The fast integer engine: a [`QuantModel`] planned onto the `int8` kernels (VNNI GEMM for
//! the 1×1 layers and the im2col'd stem, vectorised depthwise, integer pool), giving the same
//! bytes as the reference interpreter — and so as TFLite's reference kernels — or, planned with
//! [`Requantization::Xnnpack`], those of TFLite with its XNNPACK delegate.
//!
//! Activations live as bytes: uint8 models as they are, int8 models shifted by 128. Weights are
//! signed bytes: int8 as they are, uint8 as `w − 128`, with `(128 − w_zp)·Σx` added per pixel
//! (the GEMM's row-sum term) and `−x_zp·Σ_k w'` folded into the bias.

use mobilenet_kernels::int8::dwconv::QDwWeights;
use mobilenet_kernels::int8::gemm::stem::QStemWeights;
use mobilenet_kernels::int8::gemm::PackedQB;
use mobilenet_kernels::int8::{IntIsa, Requant};
use mobilenet_kernels::ConvGeometry;

use super::ir::{QConv, QOp, QuantModel};
use crate::tflite::ElementType;

/// How the convolutions' 32-bit sums become bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Requantization {
    /// TFLite's fixed-point arithmetic (gemmlowp's double rounding): the bytes of TFLite's
    /// reference kernels and of the reference interpreter, on every instruction set.
    #[default]
    Tflite,
    /// XNNPACK's single-precision form ([`Requant::fp32`]): about a third of the work per
    /// output, the bytes of TFLite running with its default XNNPACK delegate rather than of
    /// TFLite's own kernels (outputs differ from those by a few steps).
    Xnnpack,
}

impl Requantization {
    /// The name the command line takes.
    pub fn name(self) -> &'static str {
        match self {
            Requantization::Tflite => "tflite",
            Requantization::Xnnpack => "xnnpack",
        }
    }
}

/// Why a quantized model cannot run on the fast engine (the reference interpreter still can).
#[derive(Debug, thiserror::Error)]
#[error("the integer engine cannot run this model: {0}")]
pub struct Unsupported(String);

#[derive(Debug)]
pub(super) enum Step {
    /// Full 3×3 convolution through im2col and the GEMM.
    Stem {
        g: ConvGeometry,
        cin: usize,
        /// Bytes per im2col row (9·cin rounded up to 4).
        kp: usize,
        pad: u8,
        b: PackedQB,
        /// The same weights for the direct kernel, where it applies (few input channels).
        direct: Option<QStemWeights>,
        row_coeff: i32,
        rq: Requant,
    },
    /// 1×1 convolution or fully connected layer over `pixels` rows.
    Gemm {
        pixels: usize,
        b: PackedQB,
        row_coeff: i32,
        rq: Requant,
    },
    Depthwise {
        g: ConvGeometry,
        w: QDwWeights,
        rq: Requant,
    },
    Pool {
        pixels: usize,
        c: usize,
        min: u8,
        max: u8,
    },
    Softmax {
        table: Vec<f32>,
        output_scale: f32,
        output_zp: i32,
        signed: bool,
    },
}

impl Step {
    pub(super) fn output_len(&self) -> usize {
        match self {
            Step::Stem { g, b, .. } => g.out_h * g.out_w * b.n(),
            Step::Gemm { pixels, b, .. } => pixels * b.n(),
            Step::Depthwise { g, w, .. } => g.out_h * g.out_w * w.channels(),
            Step::Pool { c, .. } => *c,
            Step::Softmax { table: _, .. } => 0,
        }
    }
}

/// Plans one convolution of the IR onto the kernels; `col_len` grows to the im2col buffer it
/// needs.
fn conv_step(
    conv: &QConv,
    offset: i32,
    requantization: Requantization,
    col_len: &mut usize,
) -> Result<Step, Unsupported> {
    let byte = |v: i32, what: &str| -> Result<u8, Unsupported> {
        u8::try_from(v + offset).map_err(|_| Unsupported(format!("{what} {v} is not a byte")))
    };
    let QConv {
        depthwise,
        weights,
        weight_zp,
        weight_signed,
        bias,
        k,
        stride,
        pad_top,
        pad_left,
        cin,
        cout,
        in_hw,
        out_hw,
        input_zp,
        multipliers,
        scales,
        output_zp,
        act,
    } = conv;
    let zp = byte(*input_zp, "input zero point")?;
    let rq = |bias: &[i32]| -> Result<Requant, Unsupported> {
        let (m, s): (Vec<i32>, Vec<i32>) =
            multipliers.iter().map(|q| (q.multiplier, q.shift)).unzip();
        if s.iter().any(|s| !(-31..=30).contains(s)) {
            return Err(Unsupported("a requantization shift is out of range".into()));
        }
        if m.iter().any(|&m| m != 0 && m < 1 << 30) {
            return Err(Unsupported("a negative requantization multiplier".into()));
        }
        let (lo, hi) = (act.0 + offset, act.1 + offset);
        if !(0 <= lo && lo <= hi && hi <= 255 && (0..=255).contains(&(output_zp + offset))) {
            return Err(Unsupported(format!(
                "output range {}..={} or zero point {output_zp} outside the type",
                act.0, act.1
            )));
        }
        let (zp, lo, hi) = (output_zp + offset, act.0 + offset, act.1 + offset);
        match requantization {
            Requantization::Tflite => Ok(Requant::new(bias, &m, &s, zp, lo, hi)),
            Requantization::Xnnpack => {
                // XNNPACK refuses the same scales.
                if scales.iter().any(|s| !(*s > 0.0 && *s < 256.0)) {
                    return Err(Unsupported(
                        "a requantization scale outside (0, 256) for XNNPACK's form".into(),
                    ));
                }
                Ok(Requant::fp32(bias, scales, zp, lo, hi))
            }
        }
    };
    let g = ConvGeometry {
        in_h: in_hw.0,
        in_w: in_hw.1,
        out_h: out_hw.0,
        out_w: out_hw.1,
        stride: *stride,
        pad_top: *pad_top,
        pad_left: *pad_left,
    };
    if *depthwise {
        if *k != 3 {
            return Err(Unsupported(format!("{k}×{k} depthwise")));
        }
        if weights.iter().any(|w| !(-32768..32768).contains(w)) {
            return Err(Unsupported("depthwise weights beyond 16 bits".into()));
        }
        Ok(Step::Depthwise {
            g,
            w: QDwWeights::new(weights, *cout, zp),
            rq: rq(bias)?,
        })
    } else {
        let depth = k * k * cin;
        // Signed bytes for the GEMM and the per-row coefficient they leave out.
        let zps: Vec<i32> = (0..*cout)
            .map(|co| weight_zp[if weight_zp.len() == 1 { 0 } else { co }])
            .collect();
        let base = if *weight_signed { 0 } else { 128 };
        let coeff = base - zps[0];
        if zps.iter().any(|&z| base - z != coeff) {
            return Err(Unsupported(
                "per-channel weight zero points that differ".into(),
            ));
        }
        let mut w8 = Vec::with_capacity(weights.len());
        let mut bias_adj = bias.clone();
        for co in 0..*cout {
            let row = &weights[co * depth..][..depth];
            for &w in row {
                let v = w.wrapping_add(zps[co]).wrapping_sub(base);
                w8.push(
                    i8::try_from(v).map_err(|_| {
                        Unsupported(format!("weight {v} does not fit a signed byte"))
                    })?,
                );
            }
            // Modulo 2^32, as the int32 accumulator it folds into.
            let sum = row.iter().fold(0i32, |a, &w| a.wrapping_add(w));
            bias_adj[co] = bias_adj[co].wrapping_sub((zp as i32).wrapping_mul(sum));
        }
        let rq = rq(&bias_adj)?;
        if *k == 1 {
            Ok(Step::Gemm {
                pixels: out_hw.0 * out_hw.1,
                b: PackedQB::new(&w8, depth, *cout),
                row_coeff: coeff,
                rq,
            })
        } else if *k == 3 {
            let kp = depth.div_ceil(4) * 4;
            // im2col rows padded with zero weights up to kp.
            let mut padded = vec![0i8; cout * kp];
            for co in 0..*cout {
                padded[co * kp..][..depth].copy_from_slice(&w8[co * depth..][..depth]);
            }
            *col_len = (*col_len).max(out_hw.0 * out_hw.1 * kp);
            Ok(Step::Stem {
                g,
                cin: *cin,
                kp,
                pad: zp,
                b: PackedQB::new(&padded, kp, *cout),
                direct: QStemWeights::new(&w8, *cin, *cout),
                row_coeff: coeff,
                rq,
            })
        } else {
            Err(Unsupported(format!("{k}×{k} convolution")))
        }
    }
}

/// A quantized MobileNet planned for the integer kernels of one instruction set.
#[derive(Debug)]
pub struct QuantEngine {
    isa: IntIsa,
    requantization: Requantization,
    pub(super) steps: Vec<Step>,
    /// 1×1 convolutions reading step `.0`'s output (a detector's predictors).
    pub(super) heads: Vec<(usize, Step)>,
    /// 128 for int8 models (bytes are `x + 128`), 0 for uint8.
    pub(super) offset: i32,
    input_len: usize,
    output_len: usize,
    /// Largest activation in bytes.
    pub(super) max_len: usize,
    /// Largest im2col buffer.
    pub(super) col_len: usize,
}

impl QuantEngine {
    /// Plans `model` for the best integer kernels of this CPU.
    pub fn new(model: &QuantModel) -> Result<QuantEngine, Unsupported> {
        QuantEngine::with_isa(model, IntIsa::detect())
    }

    /// Plans `model` for `isa`'s kernels.
    pub fn with_isa(model: &QuantModel, isa: IntIsa) -> Result<QuantEngine, Unsupported> {
        QuantEngine::planned(model, isa, Requantization::Tflite)
    }

    /// Plans `model` for `isa`'s kernels with the given requantization.
    pub fn planned(
        model: &QuantModel,
        isa: IntIsa,
        requantization: Requantization,
    ) -> Result<QuantEngine, Unsupported> {
        let offset = if model.kind == ElementType::I8 {
            128
        } else {
            0
        };
        let byte = |v: i32, what: &str| -> Result<u8, Unsupported> {
            u8::try_from(v + offset).map_err(|_| Unsupported(format!("{what} {v} is not a byte")))
        };
        let mut steps = Vec::new();
        let mut col_len = 0;
        let mut last_c = 3;
        for op in &model.ops {
            let step = match op {
                QOp::Conv(conv) => conv_step(conv, offset, requantization, &mut col_len)?,
                QOp::AvgPool { hw, c, act } => Step::Pool {
                    pixels: *hw,
                    c: *c,
                    min: byte(act.0, "pool bound")?,
                    max: byte(act.1, "pool bound")?,
                },
                QOp::Softmax {
                    table,
                    output_scale,
                    output_zp,
                    signed,
                } => Step::Softmax {
                    table: table.clone(),
                    output_scale: *output_scale,
                    output_zp: *output_zp,
                    signed: *signed,
                },
            };
            if !matches!(step, Step::Softmax { .. }) {
                last_c = step.output_len();
            }
            steps.push(step);
        }
        let heads = model
            .heads
            .iter()
            .map(
                |h| match conv_step(&h.conv, offset, requantization, &mut col_len)? {
                    step @ Step::Gemm { .. } => Ok((h.after, step)),
                    _ => Err(Unsupported("a head that is not a 1×1 convolution".into())),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let max_len = steps
            .iter()
            .map(Step::output_len)
            .chain([model.input_len])
            .max()
            .unwrap_or(0);
        Ok(QuantEngine {
            isa,
            requantization,
            steps,
            heads,
            offset,
            input_len: model.input_len,
            output_len: last_c,
            max_len,
            col_len,
        })
    }

    /// The kernels' instruction set.
    pub fn isa(&self) -> IntIsa {
        self.isa
    }

    /// How sums become bytes.
    pub fn requantization(&self) -> Requantization {
        self.requantization
    }

    /// Bytes per input image.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Values per output.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// The byte for a quantized input value (`x` for uint8 models, `x + 128` for int8).
    pub fn to_byte(&self, q: i32) -> u8 {
        (q + self.offset).clamp(0, 255) as u8
    }

    /// A short name per step, e.g. `pw 7 112x112 64->128`, for profiles.
    pub fn step_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Stem { g, b, .. } => format!("stem {}x{} ->{}", g.out_h, g.out_w, b.n()),
                Step::Gemm { pixels, b, .. } => format!("gemm {pixels}x{}->{}", b.k(), b.n()),
                Step::Depthwise { g, w, .. } => {
                    format!("dw s{} {}x{} {}", g.stride, g.out_h, g.out_w, w.channels())
                }
                Step::Pool { pixels, c, .. } => format!("avgpool {pixels}x{c}"),
                Step::Softmax { .. } => "softmax".to_string(),
            })
            .collect()
    }
}
