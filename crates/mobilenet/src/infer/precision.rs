//! Inference precision: f32 throughout, or the GEMMs in bf16 ([`Precision::Bf16`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use mobilenet_kernels::gemm::bf16::bf16_supported;
use mobilenet_kernels::gemm::PackedB;
use mobilenet_kernels::IsaKind;

use super::op::Op;
use super::InferenceModel;

/// The arithmetic of the f32 engine's GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Every operation in f32.
    #[default]
    F32,
    /// The 1×1 convolutions, im2col convolutions, classifier and heads — all but a few
    /// percent of the multiply-adds — with activations and weights rounded to bfloat16
    /// (8 significant bits) and products summed in f32 (AVX512-BF16 `vdpbf16ps`). Depthwise
    /// convolutions, the 3-channel stem, biases, clamps and the activations in memory stay
    /// f32.
    Bf16,
}

impl Precision {
    /// Whether this CPU runs it (bf16: AVX512-BF16).
    pub fn is_supported(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => bf16_supported(),
        }
    }

    /// Short name for reports and flags.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a model cannot run at a precision on this CPU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrecisionUnsupported(String);

impl InferenceModel {
    /// The arithmetic of the GEMMs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs the GEMMs at `precision` from now on: for bf16, every packed GEMM operand is
    /// rounded to bf16 once, here (see [`Precision::Bf16`]).
    ///
    /// # Errors
    ///
    /// bf16 where the CPU has no AVX512-BF16 (or the model was planned for another
    /// instruction set than AVX-512), and going back to f32 from bf16 (the weights were
    /// rounded: plan the model again). The model is unchanged then.
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), PrecisionUnsupported> {
        match (self.precision, precision) {
            (a, b) if a == b => return Ok(()),
            (Precision::Bf16, Precision::F32) => {
                return Err(PrecisionUnsupported(
                    "the weights were rounded to bf16: load the model again for f32".into(),
                ))
            }
            _ => {}
        }
        if !bf16_supported() {
            return Err(PrecisionUnsupported(
                "bf16 inference needs AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake, \
                 Sapphire Rapids and later), which this CPU lacks: use f32, or an int8 model \
                 for a faster one"
                    .into(),
            ));
        }
        if self.isa.kind() != IsaKind::Avx512 {
            return Err(PrecisionUnsupported(format!(
                "bf16 runs with the AVX-512 kernels, and this model was planned for {} \
                 (MOBILENET_ISA?)",
                self.isa
            )));
        }
        let mut missing = false;
        let mut round = |b: &mut PackedB| match b.to_bf16() {
            Some(r) => *b = r,
            None => missing = true,
        };
        for layer in &mut self.layers {
            each_gemm(&mut layer.op, &mut round);
        }
        for head in &mut self.heads {
            round(&mut head.gemm.weights);
        }
        // Unreachable after the checks above (every packing here is for AVX-512).
        debug_assert!(!missing, "an AVX-512 packing was not made bf16");
        self.precision = precision;
        Ok(())
    }
}

/// Calls `f` on every packed GEMM operand of `op`.
fn each_gemm(op: &mut Op, f: &mut impl FnMut(&mut PackedB)) {
    match op {
        Op::Conv(c) => {
            if let Some(p) = &mut c.packed {
                f(p);
            }
        }
        Op::Pointwise(g) | Op::Fc(g) => f(&mut g.weights),
        Op::Separable(s) => f(&mut s.pointwise.weights),
        Op::Pipeline(stages) => {
            for stage in stages {
                each_gemm(&mut stage.layer.op, f);
            }
        }
        Op::Depthwise(_) | Op::AvgPool => {}
    }
}
