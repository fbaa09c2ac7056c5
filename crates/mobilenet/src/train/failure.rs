//! Why a training run stopped with an error.

use std::path::PathBuf;

use crate::data::DataError;
use crate::error::ModelError;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainFailure {
    /// A batch could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A file could not be read or written.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The loss became NaN or infinite; the last checkpoint was kept.
    #[error("the loss became {loss} at epoch {epoch}, step {batch}: stopping; the last good checkpoint is kept (lower the learning rate?)")]
    NonFinite {
        /// The loss.
        loss: f32,
        /// Epoch (from 1).
        epoch: usize,
        /// Batch within the epoch.
        batch: usize,
    },
    /// A parameter, a batch-norm statistic or the optimiser's state became NaN or infinite
    /// (the loss can stay finite while they do); the last checkpoint was kept.
    #[error("{tensor} became non-finite by epoch {epoch}: stopping; the last good checkpoint is kept (lower the learning rate?)")]
    NonFiniteState {
        /// The tensor.
        tensor: String,
        /// Epoch (from 1).
        epoch: usize,
    },
    /// The model cannot be trained.
    #[error(transparent)]
    Train(#[from] super::net::TrainError),
    /// The run does not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// A training option is out of range.
    #[error("{0}")]
    Options(String),
    /// The checkpoint's trainer state is unreadable.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
