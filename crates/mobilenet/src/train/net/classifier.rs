//! The classifier's step (alone on a frozen backbone's features, or at the top of a whole
//! step) and the layer arithmetic of partial freezing.

use super::{is_conv, StepOptions, StepState, StepStats, TrainNet};
use crate::layers::Layer;
use crate::train::head::{self, fc_backward, fc_forward};
use crate::train::profile::TrainOp;
use crate::train::Rng;

impl TrainNet {
    /// One training step of the classifier alone on the backbone's last feature maps
    /// (`batch × pixels × channels`, NHWC, as a frozen backbone run in the inference engine
    /// gives them): average pool, dropout, classifier, loss and their backward. Writes the
    /// classifier's gradients (from index [`TrainNet::classifier_param`] on) and leaves the
    /// others as they are.
    ///
    /// # Panics
    ///
    /// If the sizes do not match or a label is not a class.
    pub fn head_step(
        &mut self,
        features: &[f32],
        labels: &[usize],
        soft: Option<&[f32]>,
        rng: &mut Rng,
        options: &StepOptions,
        grads: &mut [Vec<f32>],
    ) -> StepStats {
        let (batch, channels) = (labels.len(), self.params[self.fc_param].shape[0]);
        assert!(
            batch > 0 && features.len().is_multiple_of(batch * channels),
            "features must be batch × pixels × channels"
        );
        let pixels = features.len() / (batch * channels);
        let classes = self.config.classes().unwrap_or(0);
        assert!(labels.iter().all(|&l| l < classes), "label out of range");
        self.group_start(batch);
        let mut st = std::mem::take(&mut self.state);
        st.batch = batch;
        st.pooled.resize(batch * channels, 0.0);
        let t = self.clock();
        head::avgpool_forward(features, batch, pixels, channels, &mut st.pooled);
        let (stats, _) = self.classifier_step(&mut st, labels, soft, rng, options, grads);
        self.record(TrainOp::Head, t);
        self.state = st;
        self.group_finish(grads, None, stats, batch, false)
    }

    /// How many convolution layers, from the input, a freeze through `name` holds fixed: a
    /// layer (`conv_3/depthwise`) or a whole block (`conv_3`, through its pointwise layer).
    ///
    /// # Errors
    ///
    /// A name that is no convolution layer or block of this network, with the valid range.
    pub fn layers_through(&self, name: &str) -> Result<usize, String> {
        let convs: Vec<&Layer> = self.layers.iter().filter(|l| is_conv(l)).collect();
        let block = |l: &Layer| l.name.split('/').next() == Some(name);
        convs
            .iter()
            .rposition(|l| l.name == name || block(l))
            .map(|i| i + 1)
            .ok_or_else(|| {
                let last = convs
                    .last()
                    .map_or("", |l| l.name.split('/').next().unwrap_or(""));
                format!(
                    "no layer {name:?} to freeze through: name a block conv_0 … {last} or one \
                     of its layers (conv_1/depthwise, conv_1/pointwise)"
                )
            })
    }

    /// Index of the first parameter of convolution layer `layer` (counted from the input): a
    /// freeze of the layers before it leaves the parameters before this index alone.
    pub fn first_param_of_layer(&self, layer: usize) -> usize {
        (3 * layer).min(self.fc_param)
    }

    /// Dropout, classifier, loss and their backward on `st.pooled`; returns the statistics and
    /// the gradient of the loss with respect to the pooled features.
    pub(super) fn classifier_step(
        &self,
        st: &mut StepState,
        labels: &[usize],
        soft: Option<&[f32]>,
        rng: &mut Rng,
        options: &StepOptions,
        grads: &mut [Vec<f32>],
    ) -> (StepStats, Vec<f32>) {
        let (batch, classes) = (labels.len(), self.config.classes().unwrap_or(0));
        let nfc = self.fc_param;
        let fc = self.params[nfc].shape[0];
        let dropout = self.config.head().map_or(0.0, |h| h.dropout) as f32;
        head::dropout_forward(&mut st.pooled, dropout, rng, &mut st.dropout_mask);
        let (fc_w, fc_b) = (&self.params[nfc].value, &self.params[nfc + 1].value);
        st.logits.resize(batch * classes, 0.0);
        fc_forward(
            self.isa,
            &st.pooled,
            (fc_w, fc_b),
            fc,
            classes,
            &mut st.logits,
        );
        st.dlogits.resize(batch * classes, 0.0);
        let (mut loss, correct) = head::softmax_cross_entropy(
            &st.logits,
            labels,
            classes,
            options.label_smoothing,
            &mut st.dlogits,
        );
        if let (Some(soft), Some(d)) = (soft, options.distill) {
            assert_eq!(
                soft.len(),
                batch * classes,
                "soft targets must be batch × classes"
            );
            let mut dkd = vec![0.0; batch * classes];
            let kd = head::distillation_loss(&st.logits, soft, classes, d.temperature, &mut dkd);
            loss = (1.0 - d.weight) * loss + d.weight * kd;
            for (g, k) in st.dlogits.iter_mut().zip(&dkd) {
                *g = (1.0 - d.weight) * *g + d.weight * k;
            }
        }
        let mut dpooled = vec![0.0; batch * fc];
        let (dw, db) = grads[nfc..].split_at_mut(1);
        fc_backward(
            self.isa,
            &st.pooled,
            &st.dlogits,
            fc_w,
            (fc, classes),
            &mut dw[0],
            &mut db[0],
            &mut dpooled,
        );
        head::dropout_backward(&st.dropout_mask, &mut dpooled);
        (StepStats { loss, correct }, dpooled)
    }
}
