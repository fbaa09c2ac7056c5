//! The threaded batch norm against the single-threaded reference ops and finite differences.

use super::*;
use crate::train::gradcheck::{check_gradient, project};
use crate::train::Rng;

/// The threaded backward on `z` (`c` channels) for the output gradient
/// `da`: `(dz, dγ, dβ)`.
fn backward(
    pool: &mut SpinPool,
    (z, c): (&[f32], usize),
    cache: &BnCache,
    gamma: &[f32],
    act: Activation,
    da: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut dz, mut dg, mut db) = (vec![0.0; z.len()], vec![0.0; c], vec![0.0; c]);
    bn_act_backward(
        pool,
        Isa::detect(),
        z,
        c,
        cache,
        gamma,
        act,
        da,
        &mut dz,
        &mut dg,
        &mut db,
    );
    (dz, dg, db)
}

#[test]
fn batch_norm_gradients() {
    let (rows, c) = (12, 5);
    let mut rng = Rng::new(1);
    let mut x: Vec<f32> = (0..rows * c).map(|_| rng.normal() * 2.0 + 0.5).collect();
    let mut gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
    let mut beta: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
    let r: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
    let eps = 1e-3;
    let mut y = vec![0.0; rows * c];
    let (cache, _) = bn_forward_train(&x, c, &gamma, &beta, eps, &mut y);
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    bn_backward(&x, c, &cache, &gamma, &r, &mut dx, &mut dg, &mut db);
    let (g0, b0) = (gamma.clone(), beta.clone());
    check_gradient("bn dx", &mut x, &dx, |x| {
        let mut y = vec![0.0; rows * c];
        bn_forward_train(x, c, &g0, &b0, eps, &mut y);
        project(&y, &r)
    });
    let x0 = x.clone();
    check_gradient("bn dgamma", &mut gamma, &dg, |g| {
        let mut y = vec![0.0; rows * c];
        bn_forward_train(&x0, c, g, &b0, eps, &mut y);
        project(&y, &r)
    });
    check_gradient("bn dbeta", &mut beta, &db, |b| {
        let mut y = vec![0.0; rows * c];
        bn_forward_train(&x0, c, &g0, b, eps, &mut y);
        project(&y, &r)
    });
}

/// Frozen batch norm (moving statistics in a training step): the threaded pair's
/// gradients for z, γ and β match central differences of `project(act(bn_eval(z)))`.
#[test]
fn frozen_batch_norm_gradients() {
    let (rows, c) = (20, 4);
    let mut rng = Rng::new(6);
    let mut z: Vec<f32> = (0..rows * c).map(|_| 2.0 * rng.normal() + 0.5).collect();
    let mut gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
    let mut beta: Vec<f32> = (0..c).map(|_| 0.5 + rng.normal()).collect();
    let mean: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
    let var: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    let r: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
    let (eps, act) = (1e-3, Activation::Relu6);
    let loss = |z: &[f32], g: &[f32], b: &[f32]| {
        let mut y = vec![0.0; rows * c];
        bn_forward_eval(z, c, g, b, &mean, &var, eps, &mut y);
        activation_forward(&mut y, act);
        project(&y, &r)
    };
    let mut pool = SpinPool::new(2);
    let mut a = vec![0.0; rows * c];
    let cache = bn_act_forward_fixed(
        &mut pool,
        Isa::detect(),
        &z,
        (&gamma, &beta),
        (&mean, &var),
        eps,
        act,
        &mut a,
    );
    let (dz, dg, db) = backward(&mut pool, (&z, c), &cache, &gamma, act, &r);
    let (g0, b0, z0) = (gamma.clone(), beta.clone(), z.clone());
    check_gradient("frozen bn dz", &mut z, &dz, |z| loss(z, &g0, &b0));
    check_gradient("frozen bn dgamma", &mut gamma, &dg, |g| loss(&z0, g, &b0));
    check_gradient("frozen bn dbeta", &mut beta, &db, |b| loss(&z0, &g0, b));
}

#[test]
fn batch_norm_normalises_and_reports_unbiased_variance() {
    let x = [1.0, 10.0, 3.0, 20.0, 5.0, 30.0];
    let mut y = [0.0; 6];
    let (cache, var) = bn_forward_train(&x, 2, &[1.0, 1.0], &[0.0, 0.0], 0.0, &mut y);
    assert_eq!(cache.mean, [3.0, 20.0]);
    assert_eq!(var, [4.0, 100.0]);
    assert!((y[0] + 1.224_744_9).abs() < 1e-5 && y[2].abs() < 1e-6);
}

/// The threaded batch norm + activation equals the single-threaded reference ops.
#[test]
fn threaded_batch_norm_matches_the_reference() {
    let (rows, c) = (37, 6);
    let mut rng = Rng::new(4);
    let z: Vec<f32> = (0..rows * c).map(|_| 3.0 * rng.normal()).collect();
    let gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
    let beta: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
    let da0: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
    let act = Activation::Relu6;
    let mut a_ref = vec![0.0; rows * c];
    let (cache_ref, var_ref) = bn_forward_train(&z, c, &gamma, &beta, 1e-3, &mut a_ref);
    activation_forward(&mut a_ref, act);
    let mut dy_ref = da0.clone();
    activation_backward(&a_ref, act, &mut dy_ref);
    let (mut dz_ref, mut dg_ref, mut db_ref) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    bn_backward(
        &z,
        c,
        &cache_ref,
        &gamma,
        &dy_ref,
        &mut dz_ref,
        &mut dg_ref,
        &mut db_ref,
    );
    for threads in [1, 2, 3, 5] {
        let mut pool = SpinPool::new(threads);
        let mut a = vec![0.0; rows * c];
        let (cache, var) = bn_act_forward(
            &mut pool,
            Isa::detect(),
            (&z, None),
            c,
            &gamma,
            &beta,
            1e-3,
            act,
            &mut a,
        );
        let close = |x: &[f32], y: &[f32], what: &str| {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                    "{threads} threads {what}[{i}]: {p} vs {q}"
                );
            }
        };
        close(&a, &a_ref, "a");
        close(&cache.mean, &cache_ref.mean, "mean");
        close(&var, &var_ref, "var");
        let (dz, dg, db) = backward(&mut pool, (&z, c), &cache, &gamma, act, &da0);
        close(&dz, &dz_ref, "dz");
        close(&dg, &dg_ref, "dgamma");
        close(&db, &db_ref, "dbeta");
    }
}
