//! Muon: momentum, orthogonalised per matrix by a Newton–Schulz iteration
//! (KellerJordan/Muon). All matrices of one shape are orthogonalised together with batched
//! matrix products.

use anyhow::Result;

use super::matrix_sets::{MatrixSet, matrix_sets};
use super::{GroupOptimizer, GroupRange, MuonConfig};
use crate::backend::{Backend, BufferKind, Gemm, Tensor};
use crate::model::ParamSpec;

/// Quintic Newton–Schulz coefficients (a, b, c) tuned by Keller Jordan: they push singular
/// values quickly towards 1 without converging exactly (they land in about 0.7–1.1).
pub const NS_COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
const NS_EPS: f32 = 1e-7;

/// Work space for [`newton_schulz`]: two Gram-sized and one input-sized buffer.
pub struct NewtonSchulzScratch {
    gram: Tensor,
    poly: Tensor,
    next: Tensor,
}

impl NewtonSchulzScratch {
    /// Space for any one of the batches `(rows, cols, count)`: `count` matrices of
    /// `rows × cols` each.
    pub fn new(
        backend: &mut dyn Backend,
        batches: &[(usize, usize, usize)],
    ) -> Result<NewtonSchulzScratch> {
        let largest = |size: fn(usize, usize) -> usize| {
            batches
                .iter()
                .map(|&(rows, cols, count)| count * size(rows, cols))
                .max()
                .unwrap_or(0)
        };
        let gram = largest(|rows, cols| rows.min(cols).pow(2));
        Ok(NewtonSchulzScratch {
            gram: backend.alloc(gram, BufferKind::Scratch)?,
            poly: backend.alloc(gram, BufferKind::Scratch)?,
            next: backend.alloc(largest(|rows, cols| rows * cols), BufferKind::Scratch)?,
        })
    }
}

/// Replaces each of the `count` `rows × cols` matrices in `x` by an approximate orthogonal
/// factor U·Vᵀ of itself: normalise by the Frobenius norm, then iterate
/// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ. A tall matrix is treated as its transpose (A = XᵀX,
/// X ← a·X + X·(b·A + c·A²)), so only the smaller Gram matrix is ever formed.
pub fn newton_schulz(
    backend: &mut dyn Backend,
    x: Tensor,
    rows: usize,
    cols: usize,
    count: usize,
    steps: usize,
    scratch: &NewtonSchulzScratch,
) -> Result<()> {
    let (a, b, c) = NS_COEFFICIENTS;
    let tall = rows > cols;
    let (small, large) = (rows.min(cols), rows.max(cols));
    let gram = scratch.gram.slice(0, count * small * small);
    let poly = scratch.poly.slice(0, count * small * small);
    let next = scratch.next.slice(0, count * rows * cols);
    let shape = |m, n, k, transpose_a, transpose_b, alpha, beta| Gemm {
        batch: count,
        m,
        n,
        k,
        transpose_a,
        transpose_b,
        alpha,
        beta,
    };
    backend.normalize_frobenius(x, count, NS_EPS)?;
    let (mut current, mut other) = (x, next);
    for _ in 0..steps {
        // A = X·Xᵀ (or XᵀX when tall).
        let gram_shape = shape(small, small, large, tall, !tall, 1.0, 0.0);
        backend.gemm(gram, current, current, gram_shape)?;
        // B = b·A + c·A·A.
        backend.copy(poly, gram)?;
        backend.gemm(
            poly,
            gram,
            gram,
            shape(small, small, small, false, false, c, b),
        )?;
        // X ← a·X + B·X (or X·B when tall).
        backend.copy(other, current)?;
        if tall {
            backend.gemm(
                other,
                current,
                poly,
                shape(rows, cols, cols, false, false, 1.0, a),
            )?;
        } else {
            backend.gemm(
                other,
                poly,
                current,
                shape(rows, cols, rows, false, false, 1.0, a),
            )?;
        }
        std::mem::swap(&mut current, &mut other);
    }
    if current != x {
        backend.copy(x, current)?;
    }
    Ok(())
}

pub struct Muon {
    param: Tensor,
    grad: Tensor,
    momentum: Tensor,
    /// The orthogonalised update, overwritten every step.
    update: Tensor,
    sets: Vec<MatrixSet>,
    scratch: NewtonSchulzScratch,
    config: MuonConfig,
}

impl Muon {
    pub fn new(
        backend: &mut dyn Backend,
        range: &GroupRange,
        specs: &[&ParamSpec],
        config: MuonConfig,
    ) -> Result<Muon> {
        let sets = matrix_sets(range, specs, "Muon")?;
        let batches: Vec<_> = sets.iter().map(|s| (s.rows, s.cols, s.count)).collect();
        let scratch = NewtonSchulzScratch::new(backend, &batches)?;
        Ok(Muon {
            param: range.param,
            grad: range.grad,
            momentum: backend.alloc(range.param.len, BufferKind::OptimizerState)?,
            update: backend.alloc(range.param.len, BufferKind::Scratch)?,
            sets,
            scratch,
            config,
        })
    }

    /// Momentum at `step`: linear warm-up from `momentum_warmup_start` to `momentum`.
    fn momentum_at(&self, step: usize) -> f32 {
        let c = &self.config;
        let frac = match c.momentum_warmup_steps {
            0 => 1.0,
            n => (step as f32 / n as f32).min(1.0),
        };
        (1.0 - frac) * c.momentum_warmup_start + frac * c.momentum
    }
}

impl GroupOptimizer for Muon {
    fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()> {
        let beta = self.momentum_at(step);
        let nesterov = self.config.nesterov;
        backend.muon_momentum(self.update, self.momentum, self.grad, beta, nesterov)?;
        let lr = self.config.lr * lr_scale;
        for set in &self.sets {
            let update = self.update.slice(set.offset, set.len());
            let (rows, cols, steps) = (set.rows, set.cols, self.config.ns_steps);
            newton_schulz(backend, update, rows, cols, set.count, steps, &self.scratch)?;
            // Tall matrices get larger steps, so that the update's RMS stays comparable.
            let shape_scale = (rows as f32 / cols as f32).max(1.0).sqrt();
            let param = self.param.slice(set.offset, set.len());
            backend.apply_update(
                param,
                update,
                lr * shape_scale,
                lr * self.config.weight_decay,
            )?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        vec![("momentum", self.momentum)]
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "muon lr {} momentum {} (from {} over {} steps) nesterov {} ns_steps {} wd {}",
            c.lr,
            c.momentum,
            c.momentum_warmup_start,
            c.momentum_warmup_steps,
            c.nesterov,
            c.ns_steps,
            c.weight_decay
        )
    }
}
