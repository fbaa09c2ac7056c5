//! Data-parallel training steps (`train::dist`) with ranks as threads: one step on 2 and 4
//! ranks with synchronised batch norm equals one step of a single process on the same global
//! batch within 1e-5 (the parameters after an RMSprop update, the moving statistics; the
//! gradients within 1e-6 of a process whose threads split the batch as the ranks do), and
//! every rank ends with the same bits. With per-rank batch norm the ranks still agree with each other, and
//! differ from the single process (the check can tell the two apart). Uneven shards (8 images
//! on 3 ranks) weigh each rank by its images. The same arithmetic runs
//! over MPI in `crates/cli/tests/mpi.rs`.

use std::sync::Arc;

mod common;

use common::data_parallel::{batch, model, step, After, BATCH, RES};
use mobilenet::train::dist::{Collective, Group, ThreadGroup, BUCKET_BYTES};
use mobilenet::train::net::TrainNet;

/// One process on the whole batch with `threads` threads (each takes an equal run of rows,
/// as ranks take shards, so it adds up the same partial sums in f32).
fn single(threads: usize) -> After {
    let (images, labels) = batch();
    let mut net = TrainNet::from_model(&model(), threads).expect("should succeed");
    step(&mut net, &images, &labels)
}

/// Each rank's step on its shard of the batch (images `r·B/n ..` `(r+1)·B/n`), in `ranks`
/// threads.
fn ranks(ranks: usize, sync_bn: bool, bucket_bytes: usize) -> Vec<After> {
    let (images, labels) = batch();
    let px = RES * RES * 3;
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadGroup::new(ranks)
            .into_iter()
            .map(|g| {
                let (images, labels) = (&images, &labels);
                s.spawn(move || {
                    let r = g.rank();
                    let mut net = TrainNet::from_model(&model(), 1).expect("should succeed");
                    net.set_group(Some(Group {
                        collective: Arc::new(g),
                        sync_bn,
                        bucket_bytes,
                    }));
                    let (a, b) = (r * BATCH / ranks, (r + 1) * BATCH / ranks);
                    step(&mut net, &images[a * px..b * px], &labels[a..b])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank"))
            .collect()
    })
}

/// The largest |a − b| over tensors, relative to max(1, |b|).
fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / q.abs().max(1.0))
        })
        .fold(0.0, f32::max)
}

/// The largest |a − b| of each tensor relative to that tensor's largest |b|, over tensors.
fn worst_of_tensors(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let m = y.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
                / m
        })
        .fold(0.0, f32::max)
}

/// A rank's step against one process's: parameters, moving statistics and the global loss
/// within 1e-5.
fn like_one_process(who: &str, after: &After, one: &After) {
    let (p, b) = (
        worst(&after.params, &one.params),
        worst(&after.buffers, &one.buffers),
    );
    assert!(
        p <= 1e-5 && b <= 1e-5,
        "{who}: parameters {p:.1e}, moving statistics {b:.1e} from one process"
    );
    assert!(
        (after.loss - one.loss).abs() <= 1e-5,
        "{who}: the global loss"
    );
}

#[test]
fn synchronised_batch_norm_steps_equal_one_process_on_the_global_batch() {
    let one = single(1);
    for n in [2, 4] {
        let all = ranks(n, true, BUCKET_BYTES);
        // The same partition of the batch in one process: the same sums, up to the order
        // the shards' totals are added in.
        let threads = single(n);
        for (r, after) in all.iter().enumerate() {
            like_one_process(&format!("{n} ranks, rank {r}"), after, &one);
            // Gradients: f32 sums in another order move the smallest ones (batch norm's γ,
            // differences of large sums) by up to 6e-4 of their tensor's largest between one
            // thread and n; the ranks are where n threads are.
            let g = worst_of_tensors(&after.grads, &threads.grads);
            assert!(
                g <= 1e-6,
                "{n} ranks, rank {r}: gradients {g:.1e} from {n} threads"
            );
            // Every rank holds the same bits.
            assert_eq!(
                after.params, all[0].params,
                "{n} ranks: rank {r}'s parameters"
            );
            assert_eq!(
                after.buffers, all[0].buffers,
                "{n} ranks: rank {r}'s statistics"
            );
        }
    }
}

#[test]
fn per_rank_batch_norm_keeps_ranks_identical_and_differs_from_one_process() {
    let one = single(1);
    let all = ranks(2, false, BUCKET_BYTES);
    assert_eq!(all[0].params, all[1].params);
    assert_eq!(all[0].buffers, all[1].buffers);
    let g = worst(&all[0].params, &one.params);
    assert!(g > 1e-3, "shard statistics change the step ({g:.1e})");
}

#[test]
fn uneven_shards_weigh_each_rank_by_its_images() {
    // 8 images on 3 ranks: shards of 2, 3 and 3.
    let one = single(1);
    let all = ranks(3, true, BUCKET_BYTES);
    for (r, after) in all.iter().enumerate() {
        like_one_process(&format!("rank {r}"), after, &one);
        assert_eq!(after.params, all[0].params, "rank {r}'s parameters");
    }
}

#[test]
fn gradient_buckets_sum_as_one_allreduce() {
    // One allreduce after the backward pass, buckets of 4 KB (a few layers each) and the
    // default 1 MB (all of this small network in one): element by element the same sums.
    let whole = ranks(3, true, 0);
    assert!(whole.iter().all(|a| a.allreduces == 1));
    for (bytes, at_least) in [(4096, 4), (BUCKET_BYTES, 1)] {
        let bucketed = ranks(3, true, bytes);
        assert!(
            bucketed.iter().all(|a| a.allreduces >= at_least),
            "{bytes} B: {} allreduces",
            bucketed[0].allreduces
        );
        for (r, (a, b)) in bucketed.iter().zip(&whole).enumerate() {
            assert_eq!(
                a.grads, b.grads,
                "buckets of {bytes} B, rank {r}'s gradients"
            );
            assert_eq!(
                a.params, b.params,
                "buckets of {bytes} B, rank {r}'s parameters"
            );
        }
    }
}
