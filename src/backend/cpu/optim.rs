//! Optimizer updates and reductions over flat ranges.

use rayon::prelude::*;

use super::{CHUNK, Real};
use crate::backend::AdamStep;

pub(super) fn fill<F: Real>(x: &mut [F], value: F) {
    x.par_chunks_mut(CHUNK).for_each(|x| x.fill(value));
}

pub(super) fn scale<F: Real>(x: &mut [F], factor: F) {
    x.par_chunks_mut(CHUNK)
        .for_each(|x| x.iter_mut().for_each(|x| *x *= factor));
}

/// `Σ f(x)` in f64, over fixed chunks added in order (deterministic).
pub(super) fn sum<F: Real>(x: &[F], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|x| x.iter().map(|&v| f(v.f64())).sum())
        .collect();
    partials.iter().sum()
}

/// PyTorch's AdamW: decoupled decay, then the bias-corrected Adam step.
pub(super) fn adamw<F: Real>(param: &mut [F], grad: &[F], m: &mut [F], v: &mut [F], hp: AdamStep) {
    assert!(
        grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(),
        "adamw operand sizes"
    );
    let of = |x: f32| F::of(x as f64);
    let (lr, beta1, beta2, eps) = (of(hp.lr), of(hp.beta1), of(hp.beta2), of(hp.eps));
    let decay = F::one() - lr * of(hp.weight_decay);
    let step = hp.step as i32;
    let bias1 = F::one() - beta1.powi(step);
    let bias2_sqrt = (F::one() - beta2.powi(step)).sqrt();
    let step_size = lr / bias1;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                m[i] = beta1 * m[i] + (F::one() - beta1) * g[i];
                v[i] = beta2 * v[i] + (F::one() - beta2) * g[i] * g[i];
                let denom = v[i].sqrt() / bias2_sqrt + eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}

pub(super) fn muon_momentum<F: Real>(
    update: &mut [F],
    momentum: &mut [F],
    grad: &[F],
    beta: F,
    nesterov: bool,
) {
    assert!(
        momentum.len() == update.len() && grad.len() == update.len(),
        "muon momentum operand sizes"
    );
    update
        .par_chunks_mut(CHUNK)
        .zip(momentum.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(u, (m, g))| {
            for i in 0..u.len() {
                m[i] = beta * m[i] + (F::one() - beta) * g[i];
                u[i] = if nesterov {
                    (F::one() - beta) * g[i] + beta * m[i]
                } else {
                    m[i]
                };
            }
        });
}

pub(super) fn apply_update<F: Real>(param: &mut [F], update: &[F], step_size: F, decay: F) {
    assert_eq!(param.len(), update.len(), "update operand sizes");
    let keep = F::one() - decay;
    param
        .par_chunks_mut(CHUNK)
        .zip(update.par_chunks(CHUNK))
        .for_each(|(p, u)| {
            for i in 0..p.len() {
                p[i] = p[i] * keep - step_size * u[i];
            }
        });
}

pub(super) fn normalize_frobenius<F: Real>(x: &mut [F], batch: usize, eps: F) {
    assert!(
        batch > 0 && x.len().is_multiple_of(batch),
        "frobenius batch does not divide the tensor"
    );
    x.par_chunks_mut(x.len() / batch).for_each(|m| {
        let norm = m.iter().map(|&v| v * v).sum::<F>().sqrt();
        let factor = F::one() / (norm + eps);
        m.iter_mut().for_each(|v| *v *= factor);
    });
}
