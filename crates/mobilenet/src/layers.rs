//! The layer table: the paper's Table 1 as data, and the concrete layers a configuration gives.
//!
//! [`MOBILENET_V1_BODY`] is the single source for building the network, its cost accounting,
//! its weight names and the shapes the benchmarks use. α, resolution and variant are applied
//! in one place, [`MobileNetConfig::layers`].

use std::fmt;

use serde::Serialize;

use mobilenet_kernels::ConvGeometry;

use crate::config::{MobileNetConfig, Padding, Variant};

/// What a row of Table 1 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// A full 3×3 convolution (the stem; every block in the full-conv variant).
    Conv3x3,
    /// A depthwise 3×3 convolution followed by a pointwise 1×1 convolution.
    Separable,
}

/// One block of the body at α = 1: its kind, stride and output channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Stem conv or depthwise-separable pair.
    pub kind: BlockKind,
    /// Stride of the 3×3 convolution (the depthwise one in a separable block).
    pub stride: usize,
    /// Output channels at α = 1.
    pub channels: usize,
}

const fn stem(stride: usize, channels: usize) -> BlockSpec {
    BlockSpec {
        kind: BlockKind::Conv3x3,
        stride,
        channels,
    }
}

const fn sep(stride: usize, channels: usize) -> BlockSpec {
    BlockSpec {
        kind: BlockKind::Separable,
        stride,
        channels,
    }
}

/// The MobileNet v1 body, paper Table 1, one entry per block (index = TF-slim's `Conv2d_<i>`).
///
/// Columns: kind, stride of the 3×3 conv, output channels at α = 1.
/// Block 13 is stride 1: Table 1 prints "s2" there, a known misprint (its input is already
/// 7×7 and so is its output; TF-slim's `_CONV_DEFS` and every released checkpoint use 1).
pub const MOBILENET_V1_BODY: [BlockSpec; 14] = [
    stem(2, 32),  // 0: 224×224×3 → 112×112×32
    sep(1, 64),   // 1: 112×112
    sep(2, 128),  // 2: → 56×56
    sep(1, 128),  // 3
    sep(2, 256),  // 4: → 28×28
    sep(1, 256),  // 5
    sep(2, 512),  // 6: → 14×14
    sep(1, 512),  // 7 ┐
    sep(1, 512),  // 8 │
    sep(1, 512),  // 9 │ the five 14×14×512 blocks the shallow variant removes
    sep(1, 512),  // 10│
    sep(1, 512),  // 11┘
    sep(2, 1024), // 12: → 7×7
    sep(1, 1024), // 13: stride 1 (Table 1's "s2" is a misprint)
];

/// Blocks removed by [`Variant::Shallow`] (Table 5): the five stride-1 14×14×512 blocks.
pub const SHALLOW_REMOVED_BLOCKS: std::ops::RangeInclusive<usize> = 7..=11;

/// Kernel size of every spatial convolution in MobileNet v1.
pub const KERNEL: usize = 3;

/// The kind of a concrete layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Full k×k convolution (the stem, or a full-conv variant block).
    Conv,
    /// Depthwise k×k convolution, one filter per channel.
    Depthwise,
    /// 1×1 convolution mixing channels (a GEMM in NHWC).
    Pointwise,
    /// Global average pool over the final feature map.
    AvgPool,
    /// Fully connected classifier with bias.
    Fc,
}

impl LayerKind {
    /// The kinds that carry weights, in the order of the paper's Table 2 breakdown.
    pub const WEIGHTED: [LayerKind; 4] = [
        LayerKind::Conv,
        LayerKind::Depthwise,
        LayerKind::Pointwise,
        LayerKind::Fc,
    ];

    /// Lowercase name, as in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Conv => "conv",
            LayerKind::Depthwise => "depthwise",
            LayerKind::Pointwise => "pointwise",
            LayerKind::AvgPool => "avgpool",
            LayerKind::Fc => "fc",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A feature-map shape `[height, width, channels]` (NHWC without the batch).
pub type Hwc = [usize; 3];

/// One concrete layer of a configured network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Our name for the layer: `conv_0`, `conv_<i>/depthwise`, `conv_<i>/pointwise`, `conv_<i>`
    /// (full-conv variant), `avgpool`, `fc`. Weight names are derived from it.
    pub name: String,
    /// Index of the Table 1 block this layer belongs to (`None` for pool and classifier).
    #[serde(skip)]
    pub block: Option<usize>,
    /// What the layer computes.
    pub kind: LayerKind,
    /// Spatial kernel size (k for k×k; the pooled window for `AvgPool`; 1 for `Fc`).
    #[serde(skip)]
    pub kernel: usize,
    /// Spatial stride.
    pub stride: usize,
    /// Input shape `[h, w, c]`.
    pub input: Hwc,
    /// Output shape `[h, w, c]`.
    pub output: Hwc,
}

impl Layer {
    /// The geometry of this layer's 3×3 convolution under a padding convention.
    pub fn geometry(&self, padding: Padding) -> ConvGeometry {
        let [h, w, _] = self.input;
        match padding {
            Padding::TfSame => ConvGeometry::tf_same(h, w, KERNEL, self.stride),
            Padding::Symmetric => ConvGeometry::symmetric(h, w, KERNEL, self.stride, KERNEL / 2),
        }
    }

    /// Whether batch norm and the activation follow this layer (every conv; not pool or FC).
    pub fn has_batch_norm(&self) -> bool {
        matches!(
            self.kind,
            LayerKind::Conv | LayerKind::Depthwise | LayerKind::Pointwise
        )
    }

    /// The TF-slim variable scope of this layer in Google's checkpoints, e.g.
    /// `MobilenetV1/Conv2d_3_depthwise` or `MobilenetV1/Logits/Conv2d_1c_1x1`.
    /// `None` for layers TF-slim has no variables for (the pool) or that only exist in
    /// the paper's comparison networks (full-conv blocks after the stem).
    pub fn tf_slim_scope(&self) -> Option<String> {
        let scope = match (self.kind, self.block) {
            (LayerKind::Conv, Some(0)) => "Conv2d_0".to_string(),
            (LayerKind::Depthwise, Some(i)) => format!("Conv2d_{i}_depthwise"),
            (LayerKind::Pointwise, Some(i)) => format!("Conv2d_{i}_pointwise"),
            (LayerKind::Fc, _) => "Logits/Conv2d_1c_1x1".to_string(),
            _ => return None,
        };
        Some(format!("MobilenetV1/{scope}"))
    }

    /// The filter shape as Table 1 prints it: `3×3×3×32`, `3×3×32 dw`, `1×1×32×64`,
    /// `pool 7×7`, `1024×1000`.
    pub fn filter_description(&self) -> String {
        let k = self.kernel;
        let cin = self.input[2];
        let cout = self.output[2];
        match self.kind {
            LayerKind::Conv | LayerKind::Pointwise => format!("{k}×{k}×{cin}×{cout}"),
            LayerKind::Depthwise => format!("{k}×{k}×{cin} dw"),
            LayerKind::AvgPool => format!("pool {}×{}", self.input[0], self.input[1]),
            LayerKind::Fc => format!("{cin}×{cout}"),
        }
    }
}

/// Output size of a convolution with TF "SAME" or symmetric padding: `ceil(in / stride)`.
///
/// For 3×3 kernels symmetric padding of 1 gives `(in + 2 − 3) / s + 1`, the same number.
pub fn conv_output_size(input: usize, stride: usize) -> usize {
    input.div_ceil(stride)
}

impl MobileNetConfig {
    /// The blocks of Table 1 this configuration's variant keeps, with their Table 1 index.
    pub fn blocks(&self) -> impl Iterator<Item = (usize, BlockSpec)> + '_ {
        MOBILENET_V1_BODY
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| {
                self.variant() != Variant::Shallow || !SHALLOW_REMOVED_BLOCKS.contains(i)
            })
            .map(|(i, block)| {
                let stride = if i == 0 {
                    self.stem().stride()
                } else {
                    block.stride
                };
                let kind = match self.variant() {
                    Variant::FullConv => BlockKind::Conv3x3,
                    _ => block.kind,
                };
                (
                    i,
                    BlockSpec {
                        kind,
                        stride,
                        ..block
                    },
                )
            })
    }

    /// Every layer of the network in execution order, with α, resolution and variant applied.
    ///
    /// With a classifier head the list ends with `avgpool` and `fc`; without one it ends with
    /// the last pointwise (or full-conv) layer.
    pub fn layers(&self) -> Vec<Layer> {
        let mut layers = Vec::with_capacity(2 * MOBILENET_V1_BODY.len() + 2);
        let mut shape: Hwc = [self.resolution(), self.resolution(), 3];
        for (i, block) in self.blocks() {
            let out_h = conv_output_size(shape[0], block.stride);
            let out_w = conv_output_size(shape[1], block.stride);
            let channels = self.depth(block.channels);
            match block.kind {
                BlockKind::Conv3x3 => {
                    let output = [out_h, out_w, channels];
                    layers.push(Layer {
                        name: format!("conv_{i}"),
                        block: Some(i),
                        kind: LayerKind::Conv,
                        kernel: KERNEL,
                        stride: block.stride,
                        input: shape,
                        output,
                    });
                    shape = output;
                }
                BlockKind::Separable => {
                    let dw_out = [out_h, out_w, shape[2]];
                    layers.push(Layer {
                        name: format!("conv_{i}/depthwise"),
                        block: Some(i),
                        kind: LayerKind::Depthwise,
                        kernel: KERNEL,
                        stride: block.stride,
                        input: shape,
                        output: dw_out,
                    });
                    let pw_out = [out_h, out_w, channels];
                    layers.push(Layer {
                        name: format!("conv_{i}/pointwise"),
                        block: Some(i),
                        kind: LayerKind::Pointwise,
                        kernel: 1,
                        stride: 1,
                        input: dw_out,
                        output: pw_out,
                    });
                    shape = pw_out;
                }
            }
        }
        if let Some(head) = self.head() {
            let pooled = [1, 1, shape[2]];
            layers.push(Layer {
                name: "avgpool".to_string(),
                block: None,
                kind: LayerKind::AvgPool,
                kernel: shape[0],
                stride: 1,
                input: shape,
                output: pooled,
            });
            layers.push(Layer {
                name: "fc".to_string(),
                block: None,
                kind: LayerKind::Fc,
                kernel: 1,
                stride: 1,
                input: pooled,
                output: [1, 1, head.classes],
            });
        }
        layers
    }

    /// Shape `[h, w, c]` of the body's final feature map (the input of the average pool).
    pub fn feature_shape(&self) -> Hwc {
        let body = self.without_head().layers();
        body.last()
            .map_or([self.resolution(), self.resolution(), 3], |l| l.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(alpha: f64, resolution: usize) -> MobileNetConfig {
        MobileNetConfig::new(alpha, resolution).expect("valid test config")
    }

    #[test]
    fn standard_network_has_28_conv_layers_and_ends_7x7() {
        let layers = config(1.0, 224).without_head().layers();
        // "Counting depthwise and pointwise convolutions as separate layers, MobileNet has 28
        // layers": 27 convolutions plus the FC layer.
        assert_eq!(layers.len(), 27);
        assert_eq!(config(1.0, 224).layers().len(), 29);
        let last = layers.last().unwrap();
        assert_eq!(last.output, [7, 7, 1024]);
        // The misprinted last depthwise: stride 1, 7×7 in and out.
        let dw13 = layers
            .iter()
            .find(|l| l.name == "conv_13/depthwise")
            .unwrap();
        assert_eq!(
            (dw13.stride, dw13.input, dw13.output),
            (1, [7, 7, 1024], [7, 7, 1024])
        );
    }

    #[test]
    fn table1_input_sizes_match_the_paper() {
        // (name, input h, input c) from Table 1's "Input Size" column.
        let expected = [
            ("conv_0", 224, 3),
            ("conv_1/depthwise", 112, 32),
            ("conv_1/pointwise", 112, 32),
            ("conv_2/depthwise", 112, 64),
            ("conv_2/pointwise", 56, 64),
            ("conv_4/depthwise", 56, 128),
            ("conv_4/pointwise", 28, 128),
            ("conv_6/pointwise", 14, 256),
            ("conv_11/pointwise", 14, 512),
            ("conv_12/depthwise", 14, 512),
            ("conv_12/pointwise", 7, 512),
            ("conv_13/depthwise", 7, 1024),
            ("avgpool", 7, 1024),
            ("fc", 1, 1024),
        ];
        let layers = config(1.0, 224).layers();
        for (name, h, c) in expected {
            let layer = layers.iter().find(|l| l.name == name).unwrap();
            assert_eq!(layer.input, [h, h, c], "{name}");
        }
    }

    #[test]
    fn final_map_follows_resolution() {
        for (res, side) in [
            (224, 7),
            (192, 6),
            (160, 5),
            (128, 4),
            (32, 1),
            (33, 2),
            (97, 4),
        ] {
            assert_eq!(
                config(1.0, res).feature_shape(),
                [side, side, 1024],
                "{res}"
            );
        }
    }

    #[test]
    fn variants_change_the_blocks() {
        let full = config(1.0, 224).with_variant(Variant::FullConv).layers();
        assert!(full
            .iter()
            .all(|l| matches!(l.kind, LayerKind::Conv | LayerKind::AvgPool | LayerKind::Fc)));
        assert_eq!(full.len(), 14 + 2);
        let shallow = config(1.0, 224).with_variant(Variant::Shallow).layers();
        assert_eq!(shallow.len(), 29 - 10);
        assert!(!shallow.iter().any(|l| l.name.starts_with("conv_9/")));
        assert_eq!(shallow.last().unwrap().input, [1, 1, 1024]);
    }

    #[test]
    fn small_input_stem_keeps_cifar_images_at_2x2() {
        let standard = config(0.5, 32).without_head();
        assert_eq!(standard.feature_shape(), [1, 1, 512]);
        let small = standard.with_stem(crate::Stem::SmallInput);
        assert_eq!(small.layers()[0].output, [32, 32, 16]);
        assert_eq!(small.feature_shape(), [2, 2, 512]);
        // Exactly the standard network at twice the resolution (same maps after the stem).
        let cost = |c: &MobileNetConfig| crate::ModelCost::of(c).total.mult_adds;
        assert_eq!(cost(&small), cost(&config(0.5, 64).without_head()));
    }

    #[test]
    fn tf_slim_scopes() {
        let layers = config(1.0, 224).layers();
        let scopes: Vec<_> = layers.iter().map(Layer::tf_slim_scope).collect();
        assert_eq!(scopes[0].as_deref(), Some("MobilenetV1/Conv2d_0"));
        assert_eq!(scopes[1].as_deref(), Some("MobilenetV1/Conv2d_1_depthwise"));
        assert_eq!(
            scopes[26].as_deref(),
            Some("MobilenetV1/Conv2d_13_pointwise")
        );
        assert_eq!(scopes[27], None);
        assert_eq!(
            scopes[28].as_deref(),
            Some("MobilenetV1/Logits/Conv2d_1c_1x1")
        );
    }

    #[test]
    fn filter_descriptions_read_like_table1() {
        let layers = config(1.0, 224).layers();
        let d: Vec<_> = layers.iter().map(Layer::filter_description).collect();
        assert_eq!(d[0], "3×3×3×32");
        assert_eq!(d[1], "3×3×32 dw");
        assert_eq!(d[2], "1×1×32×64");
        assert_eq!(d[27], "pool 7×7");
        assert_eq!(d[28], "1024×1000");
    }
}
