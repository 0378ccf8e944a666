//! Optimizer updates and reductions over flat ranges.

use rayon::prelude::*;

use super::{CHUNK, Real, expect_len};
use crate::backend::{AdamStep, BlockLayout};

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

/// Adam's moment updates with bias correction, shared by the AdamW step and the bare direction.
#[derive(Clone, Copy)]
struct Adam<F> {
    beta1: F,
    beta2: F,
    eps: F,
    bias1: F,
    bias2_sqrt: F,
}

impl<F: Real> Adam<F> {
    fn new(beta1: f32, beta2: f32, eps: f32, step: u32) -> Self {
        let of = |x: f32| F::of(x as f64);
        let (beta1, beta2) = (of(beta1), of(beta2));
        let step = step as i32;
        Adam {
            beta1,
            beta2,
            eps: of(eps),
            bias1: F::one() - beta1.powi(step),
            bias2_sqrt: (F::one() - beta2.powi(step)).sqrt(),
        }
    }

    /// Updates the moments with gradient `g`; returns the new first moment and the denominator
    /// √v̂ + ε (so the step is m/(bias1·denominator)).
    fn moments(&self, g: F, m: &mut F, v: &mut F) -> (F, F) {
        *m = self.beta1 * *m + (F::one() - self.beta1) * g;
        *v = self.beta2 * *v + (F::one() - self.beta2) * g * g;
        (*m, v.sqrt() / self.bias2_sqrt + self.eps)
    }
}

/// PyTorch's AdamW: decoupled decay, then the bias-corrected Adam step.
pub(super) fn adamw<F: Real>(param: &mut [F], grad: &[F], m: &mut [F], v: &mut [F], hp: AdamStep) {
    assert!(
        grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(),
        "adamw operand sizes"
    );
    let adam = Adam::<F>::new(hp.beta1, hp.beta2, hp.eps, hp.step);
    let lr = F::of(hp.lr as f64);
    let decay = F::one() - lr * F::of(hp.weight_decay as f64);
    let step_size = lr / adam.bias1;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let (m, denom) = adam.moments(g[i], &mut m[i], &mut v[i]);
                p[i] = p[i] * decay - step_size * m / denom;
            }
        });
}

/// `out = m̂/(√v̂ + ε)` after updating the moments.
pub(super) fn adam_direction<F: Real>(
    out: &mut [F],
    grad: &[F],
    m: &mut [F],
    v: &mut [F],
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: u32,
) {
    assert!(
        grad.len() == out.len() && m.len() == out.len() && v.len() == out.len(),
        "adam direction operand sizes"
    );
    let adam = Adam::<F>::new(beta1, beta2, eps, step);
    out.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((out, g), (m, v))| {
            for i in 0..out.len() {
                let (m, denom) = adam.moments(g[i], &mut m[i], &mut v[i]);
                out[i] = m / adam.bias1 / denom;
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

pub(super) fn match_norms<F: Real>(x: &mut [F], target: &[F], batch: usize) {
    assert!(
        batch > 0 && x.len().is_multiple_of(batch) && target.len() == x.len(),
        "match_norms operand sizes"
    );
    let part = x.len() / batch;
    let norm = |m: &[F]| m.iter().map(|&v| v * v).sum::<F>().sqrt();
    x.par_chunks_mut(part)
        .zip(target.par_chunks(part))
        .for_each(|(x, target)| {
            let factor = norm(target) / (norm(x) + F::of(1e-16));
            x.iter_mut().for_each(|v| *v *= factor);
        });
}

/// Copies every tile into its place in the packed form, in parallel over tiles.
pub(super) fn pack_blocks<F: Real>(blocks: &mut [F], matrices: &[F], layout: BlockLayout) {
    expect_len("packed blocks", blocks.len(), layout.elements());
    expect_len("blocked matrices", matrices.len(), layout.elements());
    let (matrix_len, cols) = (layout.rows * layout.cols, layout.cols);
    for set in layout.tile_sets() {
        let tile_len = set.rows * set.cols;
        blocks[set.offset..set.offset + set.elements()]
            .par_chunks_mut(tile_len)
            .enumerate()
            .for_each(|(index, tile)| {
                let (matrix, row, col) = set.tile(index);
                for (r, dst) in tile.chunks_mut(set.cols).enumerate() {
                    let start = matrix * matrix_len + (row + r) * cols + col;
                    dst.copy_from_slice(&matrices[start..start + set.cols]);
                }
            });
    }
}

/// Copies every tile back into its matrix, in parallel over matrices.
pub(super) fn unpack_blocks<F: Real>(matrices: &mut [F], blocks: &[F], layout: BlockLayout) {
    expect_len("blocked matrices", matrices.len(), layout.elements());
    expect_len("packed blocks", blocks.len(), layout.elements());
    let (matrix_len, cols) = (layout.rows * layout.cols, layout.cols);
    if matrix_len == 0 {
        return;
    }
    let sets = layout.tile_sets();
    matrices
        .par_chunks_mut(matrix_len)
        .enumerate()
        .for_each(|(matrix, dst)| {
            for set in &sets {
                let per_matrix = set.grid.0 * set.grid.1;
                for index in matrix * per_matrix..(matrix + 1) * per_matrix {
                    let (_, row, col) = set.tile(index);
                    let tile = set.offset + index * set.rows * set.cols;
                    for (r, src) in blocks[tile..tile + set.rows * set.cols]
                        .chunks(set.cols)
                        .enumerate()
                    {
                        let start = (row + r) * cols + col;
                        dst[start..start + set.cols].copy_from_slice(src);
                    }
                }
            }
        });
}
