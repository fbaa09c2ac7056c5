//! Training: explicit forward/backward pairs, one file per kind of layer, chained by the
//! trainable network; optimisers; the training loop with its checkpoints.
//!
//! | file | what |
//! |---|---|
//! | `conv.rs` | stem, depthwise and pointwise convolutions: forward, weight and input gradients |
//! | `bn.rs` | batch norm + activation: reference ops and the threaded pair the network runs |
//! | `head.rs` | average pool, dropout, classifier, softmax cross-entropy |
//! | `net/` | [`net::TrainNet`]: parameters and one step, chaining the layers; the classifier's step and partial freezing |
//! | `optim.rs` | RMSprop (TF and PyTorch forms), SGD with momentum, Adam/AdamW, weight decay |
//! | `options.rs` | [`trainer::TrainOptions`]: the recipe of a run and its valid ranges |
//! | `step.rs` | the options and statistics of one step ([`net::StepOptions`], [`net::Distill`]) |
//! | `trainer.rs` | epochs, evaluation, checkpoints, resume |
//! | `distill.rs` | the teacher of a distilled run: loaded, checked, run on the student's batches |
//! | `history.rs` | [`trainer::EpochMetrics`] and the choice of the best epoch |
//! | `failure.rs` | [`trainer::TrainFailure`]: why a run stopped |
//! | `profile.rs` | [`profile::TrainProfile`]: seconds per operation (`train --profile`) |
//! | `ssd/` | SSD detectors: anchor matching and the loss, the trainable network, the training loop |
//! | `run.rs` | the data record a resume checks, the run directory's lock |
//! | `dist.rs` | data parallelism: [`dist::Collective`], synchronised batch norm, gradient averaging |
//! | `mpi.rs` | the `mpi` feature: [`dist::Collective`] over Open MPI, with a timeout |

pub mod bn;
mod conv;
pub mod dist;
mod distill;
mod failure;
#[cfg(test)]
mod gradcheck;
pub mod head;
mod history;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod net;
pub mod optim;
mod options;
pub mod profile;
pub mod recipe;
pub mod run;
pub mod ssd;
mod step;
pub mod trainer;

pub use crate::Rng;
