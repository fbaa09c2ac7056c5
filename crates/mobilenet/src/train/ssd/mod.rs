//! Training an SSD detector: targets and loss ([`loss`]), the trainable network ([`net`]).

pub mod loss;
pub mod net;

pub use loss::{match_anchors, ssd_loss, SsdLoss, Targets};
pub use net::{SsdStepOptions, SsdTrainNet};
