//! The MobileNet v1 configuration: width multiplier α, input resolution, head and conventions.

pub use crate::preset::{format_alpha, Preset, PRESET_ALPHAS, PRESET_RESOLUTIONS};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Smallest input resolution accepted. At 32×32 the body's five stride-2 layers leave a 1×1 map.
pub const MIN_RESOLUTION: usize = 32;
/// Largest input resolution accepted (a 4096² input already needs ~2 GB for one activation).
pub const MAX_RESOLUTION: usize = 4096;
/// Largest width multiplier accepted.
pub const MAX_ALPHA: f64 = 4.0;
/// TF-slim's `min_depth`: no layer is thinner than this many channels.
pub const DEFAULT_MIN_DEPTH: usize = 8;
/// TF-slim's `dropout_keep_prob = 0.999`, written as a drop rate.
pub const DEFAULT_DROPOUT: f64 = 0.001;
/// The paper's ImageNet class count. Google's TF checkpoints have 1001 (index 0 = background).
pub const IMAGENET_CLASSES: usize = 1000;
/// Most classes a classifier head may have (ImageNet-21k has 21,841; JFT 18,291).
pub const MAX_CLASSES: usize = 1 << 20;

/// The non-linearity after every batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`, as the paper's text says.
    Relu,
    /// `min(max(x, 0), 6)`, as every released checkpoint uses (TF-slim, Keras, timm).
    #[default]
    Relu6,
}

/// How 3×3 convolutions pad their input.
///
/// Both give the same output size, `ceil(in / stride)`; they differ in where the zero
/// rows and columns go, which changes the numbers a pretrained model produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Padding {
    /// TensorFlow "SAME": total padding `max((out−1)·s + k − in, 0)`, `total/2` at the
    /// top/left and the rest at the bottom/right (so stride 2 on an even input pads only
    /// bottom/right). Google's checkpoints need this.
    #[default]
    TfSame,
    /// One row/column of zeros on every side (PyTorch `padding=1`).
    Symmetric,
}

/// Which network of the paper to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// MobileNet as in Table 1: a 3×3 stem and 13 depthwise-separable blocks.
    #[default]
    Standard,
    /// Table 4's "Conv MobileNet": each depthwise-separable pair replaced by one full 3×3 conv.
    FullConv,
    /// Table 5's "Shallow MobileNet": the five 14×14×512 separable blocks (7–11) removed.
    Shallow,
}

/// The stride of the first convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// Stride 2, as in the paper: 224×224 → 112×112.
    #[default]
    Standard,
    /// Stride 1, for CIFAR-sized inputs: the paper's network would shrink a 32×32 image to 1×1
    /// (five stride-2 layers); with a stride-1 stem it ends at 2×2 and the first layers see the
    /// whole image. Block 1's depthwise layer is stride 1 already. The common CIFAR adaptation
    /// of MobileNet v1; it costs what the standard network costs at twice the resolution.
    SmallInput,
}

impl Stem {
    /// Stride of the stem convolution.
    pub fn stride(self) -> usize {
        match self {
            Stem::Standard => 2,
            Stem::SmallInput => 1,
        }
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stem::Standard => "standard",
            Stem::SmallInput => "small-input",
        })
    }
}

impl FromStr for Stem {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Stem::Standard),
            "small-input" => Ok(Stem::SmallInput),
            _ => Err(ConfigError::UnknownName {
                what: "stem",
                value: s.to_string(),
                expected: "standard, small-input",
            }),
        }
    }
}

impl Variant {
    /// All variants, in the order the paper introduces them.
    pub const ALL: [Variant; 3] = [Variant::Standard, Variant::FullConv, Variant::Shallow];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Standard => "standard",
            Variant::FullConv => "full-conv",
            Variant::Shallow => "shallow",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| ConfigError::UnknownName {
                what: "variant",
                value: s.to_string(),
                expected: "standard, full-conv, shallow",
            })
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
        })
    }
}

impl FromStr for Activation {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "relu" => Ok(Activation::Relu),
            "relu6" => Ok(Activation::Relu6),
            _ => Err(ConfigError::UnknownName {
                what: "activation",
                value: s.to_string(),
                expected: "relu, relu6",
            }),
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Padding::TfSame => "tf-same",
            Padding::Symmetric => "symmetric",
        })
    }
}

impl FromStr for Padding {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tf-same" | "same" => Ok(Padding::TfSame),
            "symmetric" => Ok(Padding::Symmetric),
            _ => Err(ConfigError::UnknownName {
                what: "padding",
                value: s.to_string(),
                expected: "tf-same, symmetric",
            }),
        }
    }
}

/// The classifier on top of the body: global average pool → dropout → fully connected → softmax.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierHead {
    /// Number of output classes (1000 for the paper's ImageNet, 1001 for Google's checkpoints).
    pub classes: usize,
    /// Dropout rate before the fully connected layer, during training only.
    pub dropout: f64,
}

/// A validated MobileNet v1 configuration.
///
/// Built from a preset or from α and resolution; every setter checks its value, so a
/// `MobileNetConfig` always describes a network that can be built.
///
/// ```
/// use mobilenet::{MobileNetConfig, Activation};
/// let config = MobileNetConfig::new(0.5, 160)?
///     .with_classes(1001)?
///     .with_activation(Activation::Relu6);
/// assert_eq!(config.depth(1024), 512);
/// assert_eq!(config.preset().to_string(), "0.5_160");
/// # Ok::<(), mobilenet::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MobileNetConfig {
    alpha: f64,
    resolution: usize,
    min_depth: usize,
    head: Option<ClassifierHead>,
    activation: Activation,
    padding: Padding,
    variant: Variant,
    stem: Stem,
}

impl MobileNetConfig {
    /// Width multiplier `alpha` ∈ (0, 4] and square input `resolution` ≥ 32, with the paper's
    /// defaults for the rest: 1000 classes, dropout 0.001, `min_depth` 8, ReLU6, TF SAME padding.
    pub fn new(alpha: f64, resolution: usize) -> Result<Self, ConfigError> {
        if !(alpha.is_finite() && alpha > 0.0 && alpha <= MAX_ALPHA) {
            return Err(ConfigError::Alpha(alpha));
        }
        if resolution < MIN_RESOLUTION {
            return Err(ConfigError::Resolution(resolution));
        }
        if resolution > MAX_RESOLUTION {
            return Err(ConfigError::ResolutionTooLarge(resolution));
        }
        Ok(MobileNetConfig {
            alpha,
            resolution,
            min_depth: DEFAULT_MIN_DEPTH,
            head: Some(ClassifierHead {
                classes: IMAGENET_CLASSES,
                dropout: DEFAULT_DROPOUT,
            }),
            activation: Activation::default(),
            padding: Padding::default(),
            variant: Variant::default(),
            stem: Stem::default(),
        })
    }

    /// The α × resolution name of this configuration, e.g. `0.75_192`.
    pub fn preset(&self) -> Preset {
        Preset {
            alpha: self.alpha,
            resolution: self.resolution,
        }
    }

    /// Builds the configuration of a preset, with the defaults of [`MobileNetConfig::new`].
    pub fn from_preset(preset: Preset) -> Result<Self, ConfigError> {
        MobileNetConfig::new(preset.alpha, preset.resolution)
    }

    /// The same network at another input resolution (the weights fit any).
    pub fn with_resolution(mut self, resolution: usize) -> Result<Self, ConfigError> {
        if resolution < MIN_RESOLUTION {
            return Err(ConfigError::Resolution(resolution));
        }
        if resolution > MAX_RESOLUTION {
            return Err(ConfigError::ResolutionTooLarge(resolution));
        }
        self.resolution = resolution;
        Ok(self)
    }

    /// Sets the number of classes of the classifier head (adding a head if there was none).
    pub fn with_classes(mut self, classes: usize) -> Result<Self, ConfigError> {
        if classes == 0 || classes > MAX_CLASSES {
            return Err(ConfigError::Classes(classes));
        }
        let dropout = self.head.map_or(DEFAULT_DROPOUT, |h| h.dropout);
        self.head = Some(ClassifierHead { classes, dropout });
        Ok(self)
    }

    /// Removes the classifier: the network ends with the last pointwise layer's feature map.
    /// This is the backbone used for fine-tuning, distillation and detection.
    pub fn without_head(mut self) -> Self {
        self.head = None;
        self
    }

    /// Sets the dropout rate (a drop probability, not TF-slim's keep probability) of the head.
    /// Without a head this only validates the value.
    pub fn with_dropout(mut self, rate: f64) -> Result<Self, ConfigError> {
        if !(0.0..1.0).contains(&rate) {
            return Err(ConfigError::Dropout(rate));
        }
        if let Some(head) = &mut self.head {
            head.dropout = rate;
        }
        Ok(self)
    }

    /// Sets the smallest channel count any layer may have (TF-slim default 8).
    pub fn with_min_depth(mut self, min_depth: usize) -> Result<Self, ConfigError> {
        if min_depth == 0 {
            return Err(ConfigError::MinDepth(min_depth));
        }
        self.min_depth = min_depth;
        Ok(self)
    }

    /// Sets the non-linearity after each batch norm.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the padding convention of the 3×3 convolutions.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Selects the standard network or one of the paper's two comparison networks.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// Sets the stride of the first convolution (see [`Stem`]).
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// The stem's stride option.
    pub fn stem(&self) -> Stem {
        self.stem
    }

    /// Width multiplier α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// Input height and width in pixels.
    pub fn resolution(&self) -> usize {
        self.resolution
    }
    /// Smallest channel count of any layer.
    pub fn min_depth(&self) -> usize {
        self.min_depth
    }
    /// The classifier head, or `None` for the body alone.
    pub fn head(&self) -> Option<ClassifierHead> {
        self.head
    }
    /// Number of classes, or `None` without a head.
    pub fn classes(&self) -> Option<usize> {
        self.head.map(|h| h.classes)
    }
    /// The non-linearity after each batch norm.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// The padding convention of the 3×3 convolutions.
    pub fn padding(&self) -> Padding {
        self.padding
    }
    /// Which network of the paper this is.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The channel count of a layer that has `base` channels at α = 1:
    /// `max(floor(base·α), min_depth)`, TF-slim's rule, which Google's checkpoints follow.
    pub fn depth(&self, base: usize) -> usize {
        // f64 multiplication and truncation, exactly as Python's `int(d * depth_multiplier)`.
        let scaled = (base as f64 * self.alpha) as usize;
        scaled.max(self.min_depth)
    }
}

impl Default for MobileNetConfig {
    /// MobileNet 1.0-224 with 1000 classes.
    fn default() -> Self {
        MobileNetConfig {
            alpha: 1.0,
            resolution: 224,
            min_depth: DEFAULT_MIN_DEPTH,
            head: Some(ClassifierHead {
                classes: IMAGENET_CLASSES,
                dropout: DEFAULT_DROPOUT,
            }),
            activation: Activation::default(),
            padding: Padding::default(),
            variant: Variant::default(),
            stem: Stem::default(),
        }
    }
}

impl fmt::Display for MobileNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MobileNet v1 {}", self.preset())?;
        if self.variant != Variant::Standard {
            write!(f, " {}", self.variant)?;
        }
        if self.stem != Stem::Standard {
            write!(f, " ({} stem)", self.stem)?;
        }
        match self.head {
            Some(head) => write!(f, ", {} classes", head.classes)?,
            None => write!(f, ", no classifier")?,
        }
        write!(f, ", {}, {} padding", self.activation, self.padding)?;
        if self.min_depth != DEFAULT_MIN_DEPTH {
            write!(f, ", min_depth {}", self.min_depth)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_out_of_range_is_rejected_with_the_value() {
        for alpha in [0.0, -1.0, 4.01, f64::NAN, f64::INFINITY] {
            let err = MobileNetConfig::new(alpha, 224).unwrap_err();
            assert!(matches!(err, ConfigError::Alpha(_)), "{alpha}: {err:?}");
            assert!(err.to_string().contains(&alpha.to_string()), "{err}");
        }
        assert!(MobileNetConfig::new(4.0, 224).is_ok());
        assert!(MobileNetConfig::new(0.01, 224).is_ok());
    }

    #[test]
    fn resolution_and_classes_are_checked() {
        assert_eq!(
            MobileNetConfig::new(1.0, 31),
            Err(ConfigError::Resolution(31))
        );
        assert!(MobileNetConfig::new(1.0, 32).is_ok());
        assert!(MobileNetConfig::new(1.0, 97).is_ok());
        let c = MobileNetConfig::default();
        assert_eq!(c.with_classes(0), Err(ConfigError::Classes(0)));
        assert_eq!(
            c.with_classes(usize::MAX),
            Err(ConfigError::Classes(usize::MAX))
        );
        assert_eq!(c.with_min_depth(0), Err(ConfigError::MinDepth(0)));
        assert_eq!(c.with_dropout(1.0), Err(ConfigError::Dropout(1.0)));
    }

    #[test]
    fn depth_follows_tf_slim_rounding() {
        let c = MobileNetConfig::new(0.25, 128).unwrap();
        assert_eq!(c.depth(32), 8);
        assert_eq!(c.depth(1024), 256);
        let c = MobileNetConfig::new(0.1, 128).unwrap();
        // 32 × 0.1 = 3.2 → 3, raised to min_depth 8; 1024 × 0.1 = 102.4 → 102.
        assert_eq!(c.depth(32), 8);
        assert_eq!(c.depth(1024), 102);
        let c = c.with_min_depth(1).unwrap();
        assert_eq!(c.depth(32), 3);
        let c = MobileNetConfig::new(0.35, 224).unwrap();
        // Python: int(64 * 0.35) == 22 (64 × 0.35 = 22.399999999999995 in f64).
        assert_eq!(c.depth(64), 22);
    }

    #[test]
    fn presets_parse_and_print() {
        for preset in Preset::paper_grid() {
            let text = preset.to_string();
            assert_eq!(text.parse::<Preset>().unwrap(), preset);
        }
        assert_eq!(Preset::paper_grid().count(), 16);
        let p: Preset = "1.0_224".parse().unwrap();
        assert_eq!((p.alpha, p.resolution), (1.0, 224));
        assert_eq!(p.to_string(), "1.0_224");
        let p: Preset = "1_224".parse().unwrap();
        assert_eq!(p.to_string(), "1.0_224");
        assert_eq!("0.35_96".parse::<Preset>().unwrap().to_string(), "0.35_96");
        for bad in [
            "",
            "1.0",
            "x_224",
            "1.0_x",
            "0_224",
            "1.0_16",
            "5.0_224",
            "1.0_224_1",
        ] {
            assert_eq!(
                bad.parse::<Preset>(),
                Err(ConfigError::Preset(bad.to_string())),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn config_prints_its_conventions() {
        let c = MobileNetConfig::new(0.75, 192)
            .unwrap()
            .with_classes(1001)
            .unwrap();
        assert_eq!(
            c.to_string(),
            "MobileNet v1 0.75_192, 1001 classes, relu6, tf-same padding"
        );
        let c = c.without_head().with_variant(Variant::Shallow);
        assert_eq!(
            c.to_string(),
            "MobileNet v1 0.75_192 shallow, no classifier, relu6, tf-same padding"
        );
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        assert!("deep".parse::<Variant>().is_err());
        for a in [Activation::Relu, Activation::Relu6] {
            assert_eq!(a.to_string().parse::<Activation>().unwrap(), a);
        }
        for p in [Padding::TfSame, Padding::Symmetric] {
            assert_eq!(p.to_string().parse::<Padding>().unwrap(), p);
        }
    }
}
