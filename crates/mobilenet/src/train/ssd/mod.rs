//! Training an SSD detector: targets and loss ([`loss`]), the trainable network ([`net`]), the
//! data and its augmentation ([`data`]), the run with its checkpoints ([`trainer`]).

pub mod data;
pub mod loss;
pub mod net;
pub mod trainer;

pub use data::{DetectionData, Sample};
pub use loss::{match_anchors, ssd_loss, SsdLoss, Targets};
pub use net::{SsdStepOptions, SsdTrainNet};
pub use trainer::{SsdEpoch, SsdRun, SsdTrainError, SsdTrainOptions, StepReport};
