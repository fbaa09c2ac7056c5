//! Cost accounting: Mult-Adds and parameters per layer, per layer kind and in total.
//!
//! Counting rules (the ones that reproduce every table of the paper):
//! - Mult-Adds: conv `k·k·Cin·Cout·Hout·Wout`, depthwise `k·k·C·Hout·Wout`, pointwise
//!   `Cin·Cout·H·W`, FC `Cin·classes`. Batch norm, activations and the pool are not counted.
//! - Parameters: conv, depthwise and pointwise weights (no bias: batch norm follows), FC weights
//!   plus FC bias. Batch-norm parameters (trainable γ and β, 2 per channel) are reported
//!   separately in `bn_params`; the moving mean and variance add as many again as buffers.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::MobileNetConfig;
use crate::layers::{Layer, LayerKind};

/// Cost of one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// Multiply-accumulates for one image.
    pub mult_adds: u64,
    /// Weight parameters (filters, FC matrix).
    pub weights: u64,
    /// Bias parameters (only the FC layer has them).
    pub biases: u64,
    /// Trainable batch-norm parameters (γ and β) following the layer.
    pub bn_params: u64,
}

impl LayerCost {
    /// Weights plus biases: the paper's parameter count.
    pub fn params(&self) -> u64 {
        self.weights + self.biases
    }

    fn add(&mut self, other: &LayerCost) {
        self.mult_adds += other.mult_adds;
        self.weights += other.weights;
        self.biases += other.biases;
        self.bn_params += other.bn_params;
    }
}

impl Layer {
    /// Mult-Adds and parameters of this layer for one image.
    pub fn cost(&self) -> LayerCost {
        let [ho, wo, cout] = self.output.map(|d| d as u64);
        let cin = self.input[2] as u64;
        let k = self.kernel as u64;
        let bn_params = if self.has_batch_norm() { 2 * cout } else { 0 };
        let (mult_adds, weights, biases) = match self.kind {
            LayerKind::Conv => (k * k * cin * cout * ho * wo, k * k * cin * cout, 0),
            LayerKind::Depthwise => (k * k * cin * ho * wo, k * k * cin, 0),
            LayerKind::Pointwise => (cin * cout * ho * wo, cin * cout, 0),
            LayerKind::AvgPool => (0, 0, 0),
            LayerKind::Fc => (cin * cout, cin * cout, cout),
        };
        LayerCost {
            mult_adds,
            weights,
            biases,
            bn_params,
        }
    }
}

/// The cost of a whole network: per layer, per kind and in total.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCost {
    /// Every layer with its cost, in execution order.
    pub layers: Vec<(Layer, LayerCost)>,
    /// Sum over all layers.
    pub total: LayerCost,
    /// Sum per layer kind (kinds without layers are absent).
    pub by_kind: BTreeMap<&'static str, LayerCost>,
}

impl ModelCost {
    /// Computes the cost of the network `config` describes.
    ///
    /// ```
    /// use mobilenet::{MobileNetConfig, ModelCost};
    /// let cost = ModelCost::of(&MobileNetConfig::new(1.0, 224)?);
    /// assert_eq!(cost.total.mult_adds, 568_740_352); // the paper's "569 million"
    /// assert_eq!(cost.total.params(), 4_210_088); // "4.2 million"
    /// # Ok::<(), mobilenet::ConfigError>(())
    /// ```
    pub fn of(config: &MobileNetConfig) -> ModelCost {
        let layers: Vec<_> = config
            .layers()
            .into_iter()
            .map(|layer| {
                let cost = layer.cost();
                (layer, cost)
            })
            .collect();
        let mut total = LayerCost::default();
        let mut by_kind = BTreeMap::new();
        for (layer, cost) in &layers {
            total.add(cost);
            if LayerKind::WEIGHTED.contains(&layer.kind) {
                by_kind
                    .entry(layer.kind.name())
                    .or_insert_with(LayerCost::default)
                    .add(cost);
            }
        }
        ModelCost {
            layers,
            total,
            by_kind,
        }
    }

    /// Cost of one layer kind (zero if the network has none of that kind).
    pub fn kind(&self, kind: LayerKind) -> LayerCost {
        self.by_kind.get(kind.name()).copied().unwrap_or_default()
    }

    /// Cost of the layers before the classifier (no pool, no FC).
    pub fn body(&self) -> LayerCost {
        let mut body = LayerCost::default();
        for (layer, cost) in &self.layers {
            if layer.has_batch_norm() {
                body.add(cost);
            }
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Variant;

    fn cost(alpha: f64, resolution: usize) -> ModelCost {
        ModelCost::of(&MobileNetConfig::new(alpha, resolution).expect("valid test config"))
    }

    /// TF-slim's `mobilenet_v1.py` docstring lists params and Mult-Adds for each 1.0-224 layer.
    #[test]
    fn per_layer_costs_match_tf_slim_docstring() {
        let expected: [(&str, u64, u64); 10] = [
            ("conv_0", 864, 10_838_016),
            ("conv_1/depthwise", 288, 3_612_672),
            ("conv_1/pointwise", 2_048, 25_690_112),
            ("conv_2/depthwise", 576, 1_806_336),
            ("conv_3/pointwise", 16_384, 51_380_224),
            ("conv_6/depthwise", 2_304, 451_584),
            ("conv_9/pointwise", 262_144, 51_380_224),
            ("conv_12/depthwise", 4_608, 225_792),
            ("conv_13/depthwise", 9_216, 451_584),
            ("conv_13/pointwise", 1_048_576, 51_380_224),
        ];
        let cost = cost(1.0, 224);
        for (name, params, macs) in expected {
            let (_, c) = cost.layers.iter().find(|(l, _)| l.name == name).unwrap();
            assert_eq!((c.params(), c.mult_adds), (params, macs), "{name}");
        }
        let body = cost.body();
        assert_eq!(body.weights, 3_185_088);
        assert_eq!(body.mult_adds, 567_716_352);
        assert_eq!(body.bn_params, 21_888);
    }

    #[test]
    fn docstring_totals_for_0_75_128() {
        let body = cost(0.75, 128).body();
        assert_eq!((body.weights, body.mult_adds), (1_800_144, 106_002_432));
    }

    #[test]
    fn by_kind_sums_to_total() {
        for variant in Variant::ALL {
            let config = MobileNetConfig::new(0.5, 160)
                .unwrap()
                .with_variant(variant);
            let cost = ModelCost::of(&config);
            let mut sum = LayerCost::default();
            for c in cost.by_kind.values() {
                sum.add(c);
            }
            assert_eq!(sum, cost.total, "{variant}");
        }
    }

    #[test]
    fn tf_checkpoint_parameter_count() {
        // Google's checkpoints: 1001 classes, FC with bias, BN γ/β → 4.233 M ("4.24" in slim md
        // counts BN as well).
        let config = MobileNetConfig::new(1.0, 224)
            .unwrap()
            .with_classes(1001)
            .unwrap();
        let total = ModelCost::of(&config).total;
        assert_eq!(
            total.params() + total.bn_params,
            3_185_088 + 1_025_024 + 1001 + 21_888
        );
    }

    #[test]
    fn no_head_means_body_only() {
        let config = MobileNetConfig::new(1.0, 224).unwrap().without_head();
        let cost = ModelCost::of(&config);
        assert_eq!(cost.total, cost.body());
        assert_eq!(cost.kind(LayerKind::Fc), LayerCost::default());
    }
}
