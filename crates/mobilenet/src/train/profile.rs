//! Where training time goes: seconds per kind of operation, summed over a run's steps
//! (`train --profile`). Timing is off unless asked for; on, it costs two clock reads per layer
//! and operation.

use std::time::Instant;

/// The operations a training step is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainOp {
    /// Waiting for the loader's next batch (decoding and augmentation that did not keep up).
    Data,
    /// The stem's 3×3 convolution, forward.
    StemForward,
    /// Depthwise 3×3 convolutions, forward.
    DepthwiseForward,
    /// Pointwise 1×1 convolutions (GEMMs), forward.
    PointwiseForward,
    /// Batch norm and activation, forward.
    BnForward,
    /// Average pool, dropout, classifier and loss, forward and backward.
    Head,
    /// Batch norm and activation, backward: the sums over the batch where no convolution above
    /// took them (the top layer); the sums of the others are taken inside the dX pass of the
    /// layer above, and the pass that makes dZ inside the layer's own convolution backward, and
    /// are booked there.
    BnBackward,
    /// The stem's weight gradient.
    StemBackward,
    /// Depthwise weight and input gradients.
    DepthwiseBackward,
    /// Pointwise weight and input gradients (GEMMs).
    PointwiseBackward,
    /// The optimiser's update of every trained parameter.
    Optimizer,
    /// A distillation teacher's forward pass.
    Teacher,
    /// A frozen backbone's forward pass in the inference engine.
    FrozenBackbone,
    /// Held-out evaluation at the end of each epoch.
    Evaluation,
    /// Waiting for the other ranks in collectives (gradients, synchronised batch norm).
    Collectives,
}

impl TrainOp {
    /// Every operation, in the order of [`TrainProfile::seconds`].
    pub const ALL: [TrainOp; 15] = [
        TrainOp::Data,
        TrainOp::StemForward,
        TrainOp::DepthwiseForward,
        TrainOp::PointwiseForward,
        TrainOp::BnForward,
        TrainOp::Head,
        TrainOp::BnBackward,
        TrainOp::StemBackward,
        TrainOp::DepthwiseBackward,
        TrainOp::PointwiseBackward,
        TrainOp::Optimizer,
        TrainOp::Teacher,
        TrainOp::FrozenBackbone,
        TrainOp::Evaluation,
        TrainOp::Collectives,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            TrainOp::Data => "data wait",
            TrainOp::StemForward => "stem conv forward",
            TrainOp::DepthwiseForward => "depthwise forward",
            TrainOp::PointwiseForward => "pointwise forward",
            TrainOp::BnForward => "batch norm + act forward",
            TrainOp::Head => "pool, classifier, loss",
            TrainOp::BnBackward => "batch norm backward sums",
            TrainOp::StemBackward => "stem conv backward",
            TrainOp::DepthwiseBackward => "depthwise backward",
            TrainOp::PointwiseBackward => "pointwise backward",
            TrainOp::Optimizer => "optimiser update",
            TrainOp::Teacher => "teacher forward",
            TrainOp::FrozenBackbone => "frozen backbone forward",
            TrainOp::Evaluation => "held-out evaluation",
            TrainOp::Collectives => "allreduce across ranks",
        }
    }

    fn index(self) -> usize {
        TrainOp::ALL
            .iter()
            .position(|&o| o == self)
            .unwrap_or_else(|| unreachable!("ALL lists every operation"))
    }
}

/// Seconds per operation, summed over the steps of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainProfile {
    /// Seconds by operation, in the order of [`TrainOp::ALL`].
    pub seconds: [f64; 15],
    /// Training steps timed.
    pub steps: usize,
    /// Training images in those steps.
    pub images: usize,
}

impl TrainProfile {
    /// Adds the time since `start` to `op`.
    pub fn add(&mut self, op: TrainOp, start: Instant) {
        self.seconds[op.index()] += start.elapsed().as_secs_f64();
    }

    /// Seconds spent in `op`.
    pub fn get(&self, op: TrainOp) -> f64 {
        self.seconds[op.index()]
    }

    /// Every timed second.
    pub fn total(&self) -> f64 {
        self.seconds.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_slot() {
        let mut p = TrainProfile::default();
        let start = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        p.add(TrainOp::Evaluation, start);
        assert!(p.get(TrainOp::Evaluation) >= 0.002);
        assert_eq!(p.get(TrainOp::Data), 0.0);
        assert_eq!(p.total(), p.get(TrainOp::Evaluation));
        let names: std::collections::BTreeSet<_> = TrainOp::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), TrainOp::ALL.len());
    }
}
