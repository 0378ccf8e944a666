//! Optimizer updates and reductions over flat ranges.

use rayon::prelude::*;

use super::{CHUNK, Real, expect_len};
use crate::backend::{AdamStep, BlockLayout, ElementwiseRule};

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

/// Runs `f(p, g, state)` on every element, in parallel over fixed chunks: `states` are as long
/// as `param`, and `f` gets the element of each.
fn par_update<F: Real, const N: usize>(
    param: &mut [F],
    grad: &[F],
    states: [&mut [F]; N],
    f: impl Fn(&mut F, F, [&mut F; N]) + Sync,
) {
    assert!(
        grad.len() == param.len() && states.iter().all(|s| s.len() == param.len()),
        "optimizer operand sizes"
    );
    let mut state_chunks = states.map(|s| s.chunks_mut(CHUNK));
    let chunks: Vec<_> = param
        .chunks_mut(CHUNK)
        .zip(grad.chunks(CHUNK))
        .map(|(p, g)| {
            let s: [&mut [F]; N] =
                std::array::from_fn(|k| state_chunks[k].next().expect("equal lengths"));
            (p, g, s)
        })
        .collect();
    chunks.into_par_iter().for_each(|(p, g, mut s)| {
        // Every slice cut to the same length first, so that the indexing below needs no
        // bounds checks and the loop vectorises.
        let n = p.len();
        let (p, g) = (&mut p[..n], &g[..n]);
        let mut s = s.each_mut().map(|c| &mut c[..n]);
        for i in 0..n {
            f(&mut p[i], g[i], s.each_mut().map(|c| &mut c[i]));
        }
    });
}

/// The state tensors as an array of the length the rule's branch expects.
fn take<T, const N: usize>(state: Vec<T>) -> [T; N] {
    state
        .try_into()
        .unwrap_or_else(|_| panic!("optimizer state count"))
}

/// One step of `rule` (see [`ElementwiseRule`] for each formula) with its state tensors.
pub(super) fn elementwise<F: Real>(
    rule: ElementwiseRule,
    param: &mut [F],
    grad: &[F],
    state: Vec<&mut [F]>,
) {
    assert_eq!(
        state.len(),
        rule.state_names().len(),
        "optimizer state count"
    );
    let of = |x: f32| F::of(x as f64);
    let one = F::one();
    match rule {
        ElementwiseRule::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
            first_step,
        } => {
            let (lr, mu, damp, wd) = (of(lr), of(momentum), of(dampening), of(weight_decay));
            if momentum == 0.0 {
                par_update(param, grad, [], |p, g, []| *p -= lr * (g + wd * *p));
            } else {
                par_update(param, grad, take(state), |p, g, [b]| {
                    let g = g + wd * *p;
                    *b = if first_step {
                        g
                    } else {
                        mu * *b + (one - damp) * g
                    };
                    *p -= lr * if nesterov { g + mu * *b } else { *b };
                });
            }
        }
        ElementwiseRule::Adagrad {
            lr,
            eps,
            weight_decay,
        } => {
            let (lr, eps, wd) = (of(lr), of(eps), of(weight_decay));
            par_update(param, grad, take(state), |p, g, [s]| {
                let g = g + wd * *p;
                *s += g * g;
                *p -= lr * g / (s.sqrt() + eps);
            });
        }
        ElementwiseRule::Rmsprop {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
        } => {
            let (lr, alpha, eps, wd, mu) =
                (of(lr), of(alpha), of(eps), of(weight_decay), of(momentum));
            // The step g/d, updating the square (and gradient) averages.
            let scaled = |p: F, g: F, v: &mut F, a: Option<&mut F>| {
                let g = g + wd * p;
                *v = alpha * *v + (one - alpha) * g * g;
                let mean_square = match a {
                    Some(a) => {
                        *a = alpha * *a + (one - alpha) * g;
                        *v - *a * *a
                    }
                    None => *v,
                };
                g / (mean_square.sqrt() + eps)
            };
            match (centered, momentum != 0.0) {
                (false, false) => par_update(param, grad, take(state), |p, g, [v]| {
                    *p -= lr * scaled(*p, g, v, None)
                }),
                (true, false) => par_update(param, grad, take(state), |p, g, [v, a]| {
                    *p -= lr * scaled(*p, g, v, Some(a))
                }),
                (false, true) => par_update(param, grad, take(state), |p, g, [v, b]| {
                    *b = mu * *b + scaled(*p, g, v, None);
                    *p -= lr * *b;
                }),
                (true, true) => par_update(param, grad, take(state), |p, g, [v, a, b]| {
                    *b = mu * *b + scaled(*p, g, v, Some(a));
                    *p -= lr * *b;
                }),
            }
        }
        ElementwiseRule::Adadelta {
            lr,
            rho,
            eps,
            weight_decay,
        } => {
            let (lr, rho, eps, wd) = (of(lr), of(rho), of(eps), of(weight_decay));
            par_update(param, grad, take(state), |p, g, [v, u]| {
                let g = g + wd * *p;
                *v = rho * *v + (one - rho) * g * g;
                let delta = (*u + eps).sqrt() / (*v + eps).sqrt() * g;
                *u = rho * *u + (one - rho) * delta * delta;
                *p -= lr * delta;
            });
        }
        ElementwiseRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decay,
            nesterov,
            step,
        } => {
            let (beta1, beta2, eps) = (of(beta1), of(beta2), of(eps));
            let AdamStep {
                coupled,
                keep,
                step_size,
                bias2_sqrt,
            } = AdamStep::new(of(lr), beta1, beta2, of(weight_decay), decay, step);
            par_update(param, grad, take(state), |p, g, [m, v]| {
                let g = g + coupled * *p;
                *m = beta1 * *m + (one - beta1) * g;
                *v = beta2 * *v + (one - beta2) * g * g;
                let numerator = if nesterov {
                    beta1 * *m + (one - beta1) * g
                } else {
                    *m
                };
                *p = *p * keep - step_size * numerator / (v.sqrt() / bias2_sqrt + eps);
            });
        }
        ElementwiseRule::ScheduleFree {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            averaging,
            bias2,
        } => {
            let (lr, beta1, beta2, eps, wd) =
                (of(lr), of(beta1), of(beta2), of(eps), of(weight_decay));
            let (c, bias2) = (of(averaging), of(bias2));
            let y_step = lr * (beta1 * (one - c) - one);
            par_update(param, grad, take(state), |y, g, [z, v]| {
                *v = beta2 * *v + (one - beta2) * g * g;
                let d = g / ((*v / bias2).sqrt() + eps) + wd * *y;
                *y = *y + c * (*z - *y) + y_step * d;
                *z -= lr * d;
            });
        }
    }
}

pub(super) fn lerp<F: Real>(x: &mut [F], end: &[F], weight: F) {
    par_update(x, end, [], |x, end, []| *x += weight * (end - *x));
}

/// `out = m̂/(√v̂ + ε)` after updating the moments (Adam's step direction, without the
/// learning rate).
#[allow(clippy::too_many_arguments)]
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
    let of = |x: f32| F::of(x as f64);
    let (beta1, beta2, eps, one) = (of(beta1), of(beta2), of(eps), F::one());
    let bias1 = one - beta1.powi(step as i32);
    let bias2_sqrt = (one - beta2.powi(step as i32)).sqrt();
    par_update(out, grad, [m, v], |out, g, [m, v]| {
        *m = beta1 * *m + (one - beta1) * g;
        *v = beta2 * *v + (one - beta2) * g * g;
        *out = *m / bias1 / (v.sqrt() / bias2_sqrt + eps);
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
