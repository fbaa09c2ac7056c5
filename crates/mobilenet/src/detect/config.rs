//! An SSD detector as data: the backbone, which maps it predicts from, the extra layers, the
//! anchors, the classes and how boxes are decoded and filtered.
//!
//! One code path serves every SSD-MobileNet v1: COCO SSD300 ([`DetectorConfig::ssd300`]) and
//! face-api's face detector ([`DetectorConfig::face_api`]) differ only in these values.

use serde::{Deserialize, Serialize};

use crate::config::{Activation, MobileNetConfig, Padding};
use crate::cost::LayerCost;
use crate::error::ConfigError;
use crate::layers::{conv_output_size, Hwc, Layer, LayerKind, KERNEL};

/// How a class's score comes from the logits of an anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFunction {
    /// Each class on its own: `σ(logit)` (the background logit is never read).
    Sigmoid,
    /// Softmax over all logits of the anchor, background included.
    Softmax,
}

/// How an image is fitted to the square input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Pad to a square with zeros at the bottom or right, then resize (face-api).
    PadBottomRight,
    /// Resize to the square, changing the aspect ratio (TF Object Detection API).
    Stretch,
}

/// Where the extra anchor of the interpolated scale goes among an anchor position's boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterpolatedPosition {
    /// Right after the aspect ratio 1 box (the order of older Object Detection API exports,
    /// face-api's detector among them).
    Second,
    /// After all aspect ratios (the Object Detection API today).
    Last,
}

/// The Object Detection API's `ssd_anchor_generator` (a multiple-grid anchor generator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorConfig {
    /// Anchor scale (fraction of the image side) on the first map…
    pub min_scale: f64,
    /// …and on the last; the maps between are spaced linearly.
    pub max_scale: f64,
    /// Aspect ratios (width / height) at every position.
    pub aspect_ratios: Vec<f64>,
    /// Aspect ratio of one more box at the scale between this map's and the next's (√(s·s′));
    /// 0 for none.
    pub interpolated_scale_aspect_ratio: f64,
    /// Where that box goes.
    pub interpolated_position: InterpolatedPosition,
    /// The first map has only three boxes: scale 0.1 ratio 1, and `min_scale` ratios 2 and ½.
    pub reduce_boxes_in_lowest_layer: bool,
}

impl AnchorConfig {
    /// The Object Detection API's defaults (`ssd_mobilenet_v1_coco.config`).
    pub fn tf_default() -> AnchorConfig {
        AnchorConfig {
            min_scale: 0.2,
            max_scale: 0.95,
            aspect_ratios: vec![1.0, 2.0, 0.5, 3.0, 0.3333],
            interpolated_scale_aspect_ratio: 1.0,
            interpolated_position: InterpolatedPosition::Last,
            reduce_boxes_in_lowest_layer: true,
        }
    }

    /// Boxes per position on map `index`.
    pub fn boxes_per_position(&self, index: usize) -> usize {
        if index == 0 && self.reduce_boxes_in_lowest_layer {
            3
        } else {
            self.aspect_ratios.len() + usize::from(self.interpolated_scale_aspect_ratio > 0.0)
        }
    }
}

/// Non-maximum suppression, per class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NmsConfig {
    /// Boxes below this score are dropped before suppression.
    pub min_score: f32,
    /// A box overlapping a kept box of its class by more than this IoU is suppressed.
    pub iou: f32,
    /// Most detections per image, over all classes.
    pub max_detections: usize,
}

impl NmsConfig {
    /// Checks the settings: a minimum score in [0, 1], an IoU in (0, 1], at least one
    /// detection. `names` are the three settings as the caller's user writes them (flags,
    /// query parameters, option keys), for the message.
    ///
    /// # Errors
    ///
    /// The first setting out of range, as `"<name> <value> is out of range: it must be …"`.
    pub fn check(&self, names: [&str; 3]) -> Result<(), String> {
        let [score, iou, max] = names;
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err(format!(
                "{score} {} is out of range: it must be in [0, 1]",
                self.min_score
            ));
        }
        if !(self.iou > 0.0 && self.iou <= 1.0) {
            return Err(format!(
                "{iou} {} is out of range: it must be in (0, 1]",
                self.iou
            ));
        }
        if self.max_detections == 0 {
            return Err(format!("{max} 0 reports nothing: give at least 1"));
        }
        Ok(())
    }
}

/// An SSD detector with a MobileNet v1 backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// A short name for reports.
    pub name: String,
    /// Side of the square input in pixels.
    pub input: usize,
    /// Width multiplier α of the backbone.
    pub alpha: f64,
    /// The backbone's non-linearity (the extra layers use it too).
    pub activation: Activation,
    /// How 3×3 convolutions pad (the extra layers' too).
    pub padding: Padding,
    /// Batch norm's ε.
    pub bn_epsilon: f32,
    /// Body layers whose outputs are the first feature maps (the Object Detection API:
    /// `conv_11/pointwise` and `conv_13/pointwise`).
    pub body_maps: Vec<String>,
    /// Output channels of each extra map: a 1×1 convolution to half as many channels, then a
    /// 3×3 stride-2 convolution, from the previous map.
    pub extra_depths: Vec<usize>,
    /// The anchors.
    pub anchors: AnchorConfig,
    /// Class logits per anchor, background (index 0) included.
    pub classes: usize,
    /// Names of classes 1, 2, …: only these are reported (face-api's detector has a third
    /// logit it never reads).
    pub labels: Vec<String>,
    /// Logits to scores.
    pub score: ScoreFunction,
    /// Box coder scales for the (y, x, h, w) offsets.
    pub box_scales: [f32; 4],
    /// Suppression defaults.
    pub nms: NmsConfig,
    /// Fitting an image to the input.
    pub fit: Fit,
    /// Input normalisation `pixel · scale + offset` (pixels 0–255).
    pub scale: f32,
    /// See `scale`.
    pub offset: f32,
}

/// One row of [`DetectorConfig::cost`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CostRow {
    /// Layer name (`head_<m>` for a map's two predictors).
    pub name: String,
    /// Input shape `[h, w, c]`.
    pub input: Hwc,
    /// Output shape.
    pub output: Hwc,
    /// Mult-Adds and parameters.
    pub cost: LayerCost,
}

/// The 90 COCO category ids of the Object Detection API's label map are 1–90 with gaps; the
/// SSD300 head has one logit per id plus background.
pub const COCO_LOGITS: usize = 91;

impl DetectorConfig {
    /// SSD300 with a MobileNet v1 α 1.0 backbone as in the Object Detection API's
    /// `ssd_mobilenet_v1_coco` (the paper's Table 13), with `classes` logits per anchor
    /// (background included; [`COCO_LOGITS`] for COCO) and the given labels.
    pub fn ssd300(classes: usize, labels: Vec<String>) -> DetectorConfig {
        DetectorConfig {
            name: "ssd300".into(),
            input: 300,
            alpha: 1.0,
            activation: Activation::Relu6,
            padding: Padding::TfSame,
            bn_epsilon: 1e-3,
            body_maps: vec!["conv_11/pointwise".into(), "conv_13/pointwise".into()],
            extra_depths: vec![512, 256, 256, 128],
            anchors: AnchorConfig::tf_default(),
            classes,
            labels,
            score: ScoreFunction::Sigmoid,
            box_scales: [10.0, 10.0, 5.0, 5.0],
            nms: NmsConfig {
                min_score: 0.5,
                iou: 0.6,
                max_detections: 100,
            },
            fit: Fit::Stretch,
            scale: 2.0 / 255.0,
            offset: -1.0,
        }
    }

    /// face-api's SSD-MobileNet v1 face detector: 512×512, the same maps, older anchor order,
    /// three logits per anchor of which the second is the face.
    pub fn face_api() -> DetectorConfig {
        let mut anchors = AnchorConfig::tf_default();
        anchors.interpolated_position = InterpolatedPosition::Second;
        DetectorConfig {
            name: "face".into(),
            input: 512,
            anchors,
            classes: 3,
            labels: vec!["face".into()],
            nms: NmsConfig {
                min_score: 0.5,
                iou: 0.5,
                max_detections: 100,
            },
            fit: Fit::PadBottomRight,
            // face-api multiplies by the f32 nearest 1/127.5 and subtracts 1.
            scale: 0.007_843_138,
            ..DetectorConfig::ssd300(3, Vec::new())
        }
    }

    /// The backbone: MobileNet v1 at α and the input size, without its classifier.
    ///
    /// # Errors
    ///
    /// α or the input size out of range.
    pub fn backbone(&self) -> Result<MobileNetConfig, ConfigError> {
        Ok(MobileNetConfig::new(self.alpha, self.input)?
            .without_head()
            .with_activation(self.activation)
            .with_padding(self.padding))
    }

    /// Checks what the type cannot: a backbone, maps that exist, anchors and classes that
    /// make sense.
    ///
    /// # Errors
    ///
    /// The first problem found, in words.
    pub fn validate(&self) -> Result<(), String> {
        let backbone = self.backbone().map_err(|e| e.to_string())?;
        let body = backbone.layers();
        for name in &self.body_maps {
            if !body.iter().any(|l| &l.name == name) {
                return Err(format!(
                    "feature map {name:?} is not a layer of the backbone"
                ));
            }
        }
        if self.maps_count() == 0 {
            return Err("no feature maps".into());
        }
        if self.extra_depths.iter().any(|&d| d < 2) {
            return Err("an extra layer needs at least 2 channels".into());
        }
        let a = &self.anchors;
        if !(a.min_scale > 0.0 && a.min_scale <= a.max_scale && a.max_scale.is_finite()) {
            return Err("anchor scales must satisfy 0 < min_scale <= max_scale".into());
        }
        if a.aspect_ratios.is_empty() || a.aspect_ratios.iter().any(|r| !r.is_finite() || *r <= 0.0)
        {
            return Err("anchor aspect ratios must be positive".into());
        }
        if self.classes < 2 || self.labels.is_empty() || self.labels.len() >= self.classes {
            return Err(format!(
                "{} logits per anchor and {} labels: need background plus 1 ≤ labels < logits",
                self.classes,
                self.labels.len()
            ));
        }
        if !(self.nms.iou > 0.0 && self.nms.iou <= 1.0) || self.nms.max_detections == 0 {
            return Err("NMS needs 0 < iou ≤ 1 and max_detections ≥ 1".into());
        }
        if self.box_scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err("box coder scales must be positive".into());
        }
        Ok(())
    }

    /// Number of feature maps.
    pub fn maps_count(&self) -> usize {
        self.body_maps.len() + self.extra_depths.len()
    }

    /// Names of the layers whose outputs are the feature maps, in prediction order.
    pub fn map_layers(&self) -> Vec<String> {
        let extras = (0..self.extra_depths.len()).map(|j| format!("extra_{j}/conv"));
        self.body_maps.iter().cloned().chain(extras).collect()
    }

    /// The extra layers after the body, each a 1×1 then a 3×3 stride-2 convolution.
    pub fn extra_layers(&self, body_output: Hwc) -> Vec<Layer> {
        let mut shape = body_output;
        let mut layers = Vec::new();
        for (j, &depth) in self.extra_depths.iter().enumerate() {
            let reduced = [shape[0], shape[1], depth / 2];
            layers.push(Layer {
                name: format!("extra_{j}/reduce"),
                block: None,
                kind: LayerKind::Pointwise,
                kernel: 1,
                stride: 1,
                input: shape,
                output: reduced,
            });
            let output = [
                conv_output_size(shape[0], 2),
                conv_output_size(shape[1], 2),
                depth,
            ];
            layers.push(Layer {
                name: format!("extra_{j}/conv"),
                block: None,
                kind: LayerKind::Conv,
                kernel: KERNEL,
                stride: 2,
                input: reduced,
                output,
            });
            shape = output;
        }
        layers
    }

    /// Every convolution before the heads: the body, then the extra layers.
    ///
    /// # Errors
    ///
    /// As [`DetectorConfig::backbone`].
    pub fn layers(&self) -> Result<Vec<Layer>, ConfigError> {
        let mut layers = self.backbone()?.layers();
        let last = layers
            .last()
            .map_or([self.input, self.input, 3], |l| l.output);
        layers.extend(self.extra_layers(last));
        Ok(layers)
    }

    /// Shapes `[h, w, c]` of the feature maps, in prediction order.
    ///
    /// # Errors
    ///
    /// As [`DetectorConfig::backbone`].
    pub fn map_shapes(&self) -> Result<Vec<Hwc>, ConfigError> {
        let layers = self.layers()?;
        Ok(self
            .map_layers()
            .iter()
            .filter_map(|name| layers.iter().find(|l| &l.name == name).map(|l| l.output))
            .collect())
    }

    /// The anchors of every map, in prediction order (see [`super::generate_anchors`]).
    ///
    /// # Errors
    ///
    /// As [`DetectorConfig::backbone`].
    pub fn all_anchors(&self) -> Result<Vec<[f32; 4]>, ConfigError> {
        let grids: Vec<(usize, usize)> = self.map_shapes()?.iter().map(|s| (s[0], s[1])).collect();
        Ok(super::anchors::generate(&self.anchors, &grids))
    }

    /// Output channels of map `index`'s box predictor and class predictor.
    pub fn head_channels(&self, index: usize) -> (usize, usize) {
        let boxes = self.anchors.boxes_per_position(index);
        (4 * boxes, self.classes * boxes)
    }

    /// Cost per layer (the body and extra layers as [`Layer::cost`] counts them; each map's
    /// box and class predictors as one 1×1 convolution with a bias), and the total.
    ///
    /// # Errors
    ///
    /// As [`DetectorConfig::backbone`].
    pub fn cost(&self) -> Result<(Vec<CostRow>, LayerCost), ConfigError> {
        let mut rows: Vec<CostRow> = self
            .layers()?
            .into_iter()
            .map(|l| CostRow {
                cost: l.cost(),
                name: l.name,
                input: l.input,
                output: l.output,
            })
            .collect();
        for (m, shape) in self.map_shapes()?.into_iter().enumerate() {
            let (boxes, classes) = self.head_channels(m);
            let cout = (boxes + classes) as u64;
            let [h, w, cin] = shape.map(|d| d as u64);
            let cost = LayerCost {
                mult_adds: h * w * cin * cout,
                weights: cin * cout,
                biases: cout,
                bn_params: 0,
            };
            let out = [shape[0], shape[1], boxes + classes];
            rows.push(CostRow {
                name: format!("head_{m}"),
                input: shape,
                output: out,
                cost,
            });
        }
        let mut total = LayerCost::default();
        for CostRow { cost: c, .. } in &rows {
            total.mult_adds += c.mult_adds;
            total.weights += c.weights;
            total.biases += c.biases;
            total.bn_params += c.bn_params;
        }
        Ok((rows, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_settings_out_of_range_are_named_with_the_callers_names() {
        let ok = NmsConfig {
            min_score: 0.5,
            iou: 0.6,
            max_detections: 100,
        };
        let names = ["--min-score", "--iou", "--max-detections"];
        assert_eq!(ok.check(names), Ok(()));
        let bad = |n: NmsConfig| n.check(names).expect_err("out of range");
        let e = bad(NmsConfig {
            min_score: 1.5,
            ..ok
        });
        assert_eq!(e, "--min-score 1.5 is out of range: it must be in [0, 1]");
        assert_eq!(
            bad(NmsConfig { iou: 0.0, ..ok }),
            "--iou 0 is out of range: it must be in (0, 1]"
        );
        assert!(bad(NmsConfig {
            max_detections: 0,
            ..ok
        })
        .starts_with("--max-detections 0"));
        // A NaN is out of every range.
        assert!(bad(NmsConfig {
            min_score: f32::NAN,
            ..ok
        })
        .starts_with("--min-score NaN"));
    }

    /// The paper's Table 13: SSD 300 with MobileNet, 1.2 billion Mult-Adds and 6.8 million
    /// parameters, for COCO's 90 classes plus background. Counted: every convolution's
    /// weights (batch norm's γ/β not counted, as in Tables 1–12) and the predictors' weights
    /// and biases; 1,917 anchors.
    #[test]
    fn ssd300_matches_table_13() {
        let config = DetectorConfig::ssd300(COCO_LOGITS, vec!["person".into()]);
        config.validate().expect("should succeed");
        let (_, total) = config.cost().expect("should succeed");
        assert_eq!(total.mult_adds, 1_237_129_408);
        assert_eq!(total.params(), 6_794_495);
        assert_eq!((total.mult_adds as f64 / 1e9 * 10.0).round(), 12.0);
        assert_eq!((total.params() as f64 / 1e6 * 10.0).round(), 68.0);
        let shapes = config.map_shapes().expect("should succeed");
        assert_eq!(
            shapes,
            vec![
                [19, 19, 512],
                [10, 10, 1024],
                [5, 5, 512],
                [3, 3, 256],
                [2, 2, 256],
                [1, 1, 128]
            ]
        );
        let anchors: usize = shapes
            .iter()
            .enumerate()
            .map(|(m, s)| s[0] * s[1] * config.anchors.boxes_per_position(m))
            .sum();
        assert_eq!(anchors, 1917);
    }

    #[test]
    fn face_api_has_5118_anchors_at_512() {
        let config = DetectorConfig::face_api();
        config.validate().expect("should succeed");
        let shapes = config.map_shapes().expect("should succeed");
        let sides: Vec<usize> = shapes.iter().map(|s| s[0]).collect();
        assert_eq!(sides, [32, 16, 8, 4, 2, 1]);
        assert_eq!(config.head_channels(0), (12, 9));
        assert_eq!(config.head_channels(1), (24, 18));
    }

    #[test]
    fn bad_configs_are_named() {
        let mut c = DetectorConfig::face_api();
        c.body_maps[0] = "conv_99/pointwise".into();
        assert!(c.validate().expect_err("should fail").contains("conv_99"));
        let mut c = DetectorConfig::face_api();
        c.labels = vec!["a".into(), "b".into(), "c".into()];
        assert!(c.validate().expect_err("should fail").contains("labels"));
    }
}
