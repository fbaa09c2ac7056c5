//! CPU kernels for MobileNet inference and training.
//!
//! This crate knows nothing about MobileNet: its functions take slices, shapes and strides.
//! Every fast kernel has a scalar reference beside it (`*_reference`), and tests compare each
//! instruction-set variant with that reference on edge sizes.
//!
//! Instruction sets are chosen at run time ([`Isa::detect`]), never at compile time, so one
//! release binary runs on any x86-64 or aarch64 machine. Kernels are written once, generic
//! over [`simd::SimdF32`], and compiled per instruction set.
//!
//! | kernel | what |
//! |---|---|
//! | [`gemm::gemm`] | `C = epilogue(A·B)`, B packed once ([`gemm::PackedB`]): 1×1 convs, FC |
//! | [`dwconv::dwconv3x3`] | depthwise 3×3, stride 1/2, any padding, NHWC |
//! | [`conv::conv2d`] | direct k×k conv, NHWC/HWIO: the stem |
//! | [`pool::global_avg_pool`], [`pool::softmax`] | the head |
//! | [`int8`] | u8 × s8 GEMM (VNNI), depthwise, pool: quantized inference, bit-exact with TFLite |

pub mod aligned;
pub mod backward;
pub mod bn;
pub mod conv;
pub mod dwconv;
mod epilogue;
pub mod gemm;
pub mod hugepages;
pub mod int8;
mod isa;
pub mod pool;
pub mod rng;
pub mod simd;
#[cfg(test)]
mod testing;

pub use epilogue::Epilogue;
pub use isa::{Isa, IsaKind};

/// The arguments a row kernel (the stem's conv, the depthwise conv) passes through
/// [`simd_dispatch!`] to its generic body: geometry, the kernel's own parameters `P`, input,
/// weights, epilogue, output rows, first output row, number of rows.
pub(crate) type RowsCall<'a, P> = (
    &'a ConvGeometry,
    P,
    &'a [f32],
    &'a [f32],
    &'a Epilogue<'a>,
    &'a mut [f32],
    usize,
    usize,
);

/// Spatial geometry of a 2-D convolution on one image: sizes, stride and leading padding.
///
/// Padding at the bottom and right is implicit: taps that fall outside the input read zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
}

impl ConvGeometry {
    /// TensorFlow "SAME": output `ceil(in / stride)`, total padding
    /// `max((out − 1)·stride + k − in, 0)` split with the smaller half at the top/left.
    pub fn tf_same(in_h: usize, in_w: usize, k: usize, stride: usize) -> ConvGeometry {
        let (out_h, out_w) = (in_h.div_ceil(stride), in_w.div_ceil(stride));
        let total = |out: usize, inp: usize| ((out - 1) * stride + k).saturating_sub(inp);
        ConvGeometry {
            in_h,
            in_w,
            out_h,
            out_w,
            stride,
            pad_top: total(out_h, in_h) / 2,
            pad_left: total(out_w, in_w) / 2,
        }
    }

    /// `pad` zeros on every side (PyTorch's `padding=pad`): output `(in + 2·pad − k) / s + 1`.
    pub fn symmetric(
        in_h: usize,
        in_w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> ConvGeometry {
        let out = |inp: usize| (inp + 2 * pad).saturating_sub(k) / stride + 1;
        ConvGeometry {
            in_h,
            in_w,
            out_h: out(in_h),
            out_w: out(in_w),
            stride,
            pad_top: pad,
            pad_left: pad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_puts_the_odd_pad_bottom_right() {
        let g = ConvGeometry::tf_same(224, 224, 3, 2);
        assert_eq!((g.out_h, g.pad_top), (112, 0));
        let g = ConvGeometry::tf_same(7, 7, 3, 2);
        assert_eq!((g.out_h, g.pad_top), (4, 1));
        let g = ConvGeometry::tf_same(14, 14, 3, 1);
        assert_eq!((g.out_h, g.pad_top), (14, 1));
        let g = ConvGeometry::symmetric(224, 224, 3, 2, 1);
        assert_eq!((g.out_h, g.pad_top), (112, 1));
    }
}
