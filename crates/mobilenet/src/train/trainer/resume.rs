//! Resuming a run from its checkpoint.

use std::path::Path;

use super::{check_memory, Trainer, TrainerState, CHECKPOINT};
use crate::error::ModelError;
use crate::train::dist::Group;
use crate::train::failure::TrainFailure;
use crate::train::net::TrainNet;
use crate::train::optim::Optimizer;
use crate::weights::ModelFile;

impl Trainer {
    /// Resumes the run in `dir` from its checkpoint.
    pub fn resume(dir: &Path) -> Result<Trainer, TrainFailure> {
        Trainer::resume_in(dir, None)
    }

    /// Resumes the run in `dir` as one rank of `group`, whatever group wrote the checkpoint:
    /// the weights are the same on every rank, and the position counts global batches.
    pub fn resume_in(dir: &Path, group: Option<Group>) -> Result<Trainer, TrainFailure> {
        if !dir.is_dir() {
            // Not created by the lock below: a mistyped path is an error, not a new folder.
            return Err(TrainFailure::Checkpoint {
                path: dir.to_path_buf(),
                reason: "no such run directory".into(),
            });
        }
        let lock = super::ranks::lock(dir, group.as_ref())?;
        let path = dir.join(CHECKPOINT);
        if !path.exists() {
            return Err(TrainFailure::Checkpoint {
                path,
                reason: "no checkpoint: the run stopped before its first one was written (start \
                         it again without --resume), or this is not a run directory"
                    .into(),
            });
        }
        let bytes = crate::files::read_regular(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let (model, extra, metadata) = ModelFile::from_bytes_with(&bytes, &path, "optimizer/")?;
        let bad = |reason: String| TrainFailure::Checkpoint {
            path: path.clone(),
            reason,
        };
        let state: TrainerState = serde_json::from_str(
            metadata
                .get("trainer")
                .ok_or_else(|| bad("no trainer state".into()))?,
        )
        .map_err(|e| bad(format!("invalid trainer state: {e}")))?;
        let optimizer_meta: Optimizer = serde_json::from_str(
            metadata
                .get("optimizer")
                .ok_or_else(|| bad("no optimiser state".into()))?,
        )
        .map_err(|e| bad(format!("invalid optimiser state: {e}")))?;
        check_memory(&model.config, state.options.batch_size)?;
        if let Some(g) = &group {
            super::ranks::check_batch(state.options.batch_size, g)?;
        }
        let mut net = TrainNet::from_model(&model, state.options.threads)?;
        net.set_precision(state.options.precision)?;
        net.set_group(group);
        let mut optimizer = Optimizer::new(
            optimizer_meta.kind,
            optimizer_meta.weight_decay,
            &net.params,
        );
        optimizer.step = optimizer_meta.step;
        for (i, p) in net.params.iter().enumerate() {
            for (prefix, target) in [
                ("optimizer/mean_square/", &mut optimizer.mean_square[i]),
                ("optimizer/momentum/", &mut optimizer.momentum[i]),
            ] {
                if target.is_empty() {
                    continue;
                }
                let t = extra
                    .get(&format!("{prefix}{}", p.name))
                    .ok_or_else(|| bad(format!("missing {prefix}{}", p.name)))?;
                if t.data.len() != target.len() {
                    return Err(bad(format!(
                        "{prefix}{} has {} values, expected {}",
                        p.name,
                        t.data.len(),
                        target.len()
                    )));
                }
                target.copy_from_slice(&t.data);
            }
        }
        let trainer = Trainer {
            net,
            optimizer,
            state,
            dir: dir.to_path_buf(),
            _lock: lock,
            teacher: None,
        };
        if let Some(tensor) = trainer.first_non_finite() {
            return Err(bad(format!("{tensor} holds NaN or infinite values")));
        }
        Ok(trainer)
    }
}
