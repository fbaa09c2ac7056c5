//! Mixed-precision training: the pointwise GEMMs in bf16.

use mobilenet_kernels::IsaKind;

use super::{TrainError, TrainNet};
use crate::infer::Precision;

impl TrainNet {
    /// The arithmetic of the pointwise layers' GEMMs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Trains with the 1×1 convolutions' three GEMMs — the forward pass, the weight gradient
    /// `Xᵀ·dZ` and the input gradient `dZ·Wᵀ`; the 1×1 convolutions hold 95% of the network's
    /// multiply-adds (the paper's Table 2) — at
    /// `precision`. In bf16 both operands of each are rounded to bfloat16 as the GEMM reads
    /// them and the products are summed in f32; everything else stays f32: the master
    /// weights, their gradients and the optimiser's state, batch norm and its statistics,
    /// the depthwise layers, the stem, the classifier, the loss, and the activations kept for
    /// the backward pass. bf16 keeps f32's exponent range, so no loss scaling is needed.
    ///
    /// # Errors
    ///
    /// bf16 where the CPU has no AVX512-BF16 or the instruction set in use is not AVX-512
    /// (`MOBILENET_ISA`); the network is unchanged then.
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), TrainError> {
        if precision == Precision::Bf16 {
            if !precision.is_supported() {
                return Err(TrainError::Precision(
                    "bf16 training needs a CPU with AVX512-BF16 (Zen 4 and later, Cooper Lake, \
                     Sapphire Rapids and later); this one has none"
                        .into(),
                ));
            }
            if self.isa.kind() != IsaKind::Avx512 {
                return Err(TrainError::Precision(format!(
                    "bf16 training runs on the AVX-512 instruction set, not {}",
                    self.isa
                )));
            }
        }
        let bf16 = precision == Precision::Bf16;
        for conv in self.convs.iter_mut().flatten() {
            conv.set_bf16(bf16);
        }
        self.precision = precision;
        Ok(())
    }
}
