//! Muon: momentum, orthogonalised per matrix by a Newton–Schulz iteration
//! (KellerJordan/Muon). All matrices of one shape are orthogonalised together with batched
//! matrix products.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::matrix_sets::{MatrixSet, matrix_sets};
use super::{GroupOptimizer, GroupRange, MuonConfig, shard_of};
use crate::backend::{Backend, BufferKind, Gemm, Tensor};
use crate::dist::Comm;
use crate::model::ParamSpec;

/// Quintic Newton–Schulz coefficients (a, b, c) tuned by Keller Jordan: they push singular
/// values quickly towards 1 without converging exactly (they land in about 0.7–1.1).
pub const NS_COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
const NS_EPS: f32 = 1e-7;

/// Polar Express (Amsel et al. 2025, as modded-nanogpt uses it since 09/2025): one (a, b, c) per
/// iteration, optimal for each step in turn, for at most five iterations.
pub const POLAR_EXPRESS_COEFFICIENTS: [(f32, f32, f32); 5] = [
    (8.156_554, -22.483_293, 15.878_77),
    (4.042_93, -2.808_917_5, 0.500_017_8),
    (3.891_668, -2.772_484, 0.506_064_8),
    (3.285_753_7, -2.368_129_5, 0.464_490_24),
    (2.346_541_3, -1.709_782_8, 0.423_235_5),
];
/// Polar Express divides by ‖X‖_F·(1 + 2%) + 1e-6: the margin keeps the largest singular
/// value below 1 under rounding, where its polynomials are tuned.
const POLAR_SAFETY: f32 = 1.02;
const POLAR_EPS: f32 = 1e-6;

/// The polynomial schedule of the Newton–Schulz iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NsCoefficients {
    /// Keller Jordan's (3.4445, −4.7750, 2.0315) at every step.
    #[default]
    Quintic,
    /// Polar Express: per-step coefficients, at most 5 steps.
    Polar,
}

impl NsCoefficients {
    /// The most steps the schedule defines.
    pub fn max_steps(self) -> Option<usize> {
        match self {
            NsCoefficients::Quintic => None,
            NsCoefficients::Polar => Some(POLAR_EXPRESS_COEFFICIENTS.len()),
        }
    }

    /// Refuses more steps than the schedule defines.
    pub(crate) fn check_steps(self, steps: usize) -> Result<()> {
        if let Some(most) = self.max_steps() {
            anyhow::ensure!(
                steps <= most,
                "{self:?} defines {most} Newton–Schulz steps, not {steps}"
            );
        }
        Ok(())
    }

    /// The (a, b, c) of step `step` (0-based); Polar Express defines `max_steps` of them.
    pub(crate) fn at(self, step: usize) -> (f32, f32, f32) {
        match self {
            NsCoefficients::Quintic => NS_COEFFICIENTS,
            NsCoefficients::Polar => POLAR_EXPRESS_COEFFICIENTS[step],
        }
    }

    /// How each matrix is normalised before the first step: `X ← (X/(‖X‖_F + eps))·scale`.
    pub(crate) fn normalisation(self) -> (f32, f32) {
        match self {
            NsCoefficients::Quintic => (NS_EPS, 1.0),
            // X/(s·‖X‖ + ε) = (X/(‖X‖ + ε/s))/s.
            NsCoefficients::Polar => (POLAR_EPS / POLAR_SAFETY, 1.0 / POLAR_SAFETY),
        }
    }
}

/// The three products of one Newton–Schulz step with coefficients (a, b, c) on `count`
/// matrices of `rows × cols`: A = X·Xᵀ (XᵀX when tall), then B = c·A·A + b·A (accumulating
/// onto b·A), then X' = B·X + a·X (X·B + a·X when tall; accumulating onto a·X).
pub(crate) struct NsProducts {
    pub gram: Gemm,
    pub poly: Gemm,
    pub update: Gemm,
    /// X' = X·B rather than B·X.
    pub tall: bool,
}

impl NsProducts {
    pub fn new(rows: usize, cols: usize, count: usize, (a, b, c): (f32, f32, f32)) -> Self {
        let tall = rows > cols;
        let (small, large) = (rows.min(cols), rows.max(cols));
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
        NsProducts {
            gram: shape(small, small, large, tall, !tall, 1.0, 0.0),
            poly: shape(small, small, small, false, false, c, b),
            update: shape(
                rows,
                cols,
                if tall { cols } else { rows },
                false,
                false,
                1.0,
                a,
            ),
            tall,
        }
    }
}

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
/// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ and (a, b, c) from `coefficients`. A tall matrix is
/// treated as its transpose (A = XᵀX, X ← a·X + X·(b·A + c·A²)), so only the smaller Gram
/// matrix is ever formed.
#[allow(clippy::too_many_arguments)]
pub fn newton_schulz(
    backend: &mut dyn Backend,
    x: Tensor,
    rows: usize,
    cols: usize,
    count: usize,
    steps: usize,
    coefficients: NsCoefficients,
    scratch: &NewtonSchulzScratch,
) -> Result<()> {
    coefficients.check_steps(steps)?;
    let small = rows.min(cols);
    let gram = scratch.gram.slice(0, count * small * small);
    let poly = scratch.poly.slice(0, count * small * small);
    let next = scratch.next.slice(0, count * rows * cols);
    let (eps, scale) = coefficients.normalisation();
    backend.normalize_frobenius(x, count, eps)?;
    if scale != 1.0 {
        backend.scale(x, scale)?;
    }
    let (mut current, mut other) = (x, next);
    for step in 0..steps {
        let products = NsProducts::new(rows, cols, count, coefficients.at(step));
        backend.gemm(gram, current, current, products.gram)?;
        backend.copy(poly, gram)?;
        backend.gemm(poly, gram, gram, products.poly)?;
        backend.copy(other, current)?;
        let (left, right) = if products.tall {
            (current, poly)
        } else {
            (poly, current)
        };
        backend.gemm(other, left, right, products.update)?;
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
    /// Every rank computes the momentum; of each set of same-shape matrices, rank r
    /// orthogonalises the r-th of equal consecutive shares ([`shard_of`]), and an all-gather
    /// gives every rank all of them before the identical weight update.
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        comm: &dyn Comm,
    ) -> Result<()> {
        let beta = self.momentum_at(step);
        let nesterov = self.config.nesterov;
        backend.muon_momentum(self.update, self.momentum, self.grad, beta, nesterov)?;
        let lr = self.config.lr * lr_scale;
        for set in &self.sets {
            let update = self.update.slice(set.offset, set.len());
            let (rows, cols, steps) = (set.rows, set.cols, self.config.ns_steps);
            let size = rows * cols;
            let mine = shard_of(set.count, comm.rank(), comm.size());
            if !mine.is_empty() {
                newton_schulz(
                    backend,
                    update.slice(mine.start * size, mine.len() * size),
                    rows,
                    cols,
                    mine.len(),
                    steps,
                    self.config.ns_coefficients,
                    &self.scratch,
                )?;
            }
            if comm.size() > 1 {
                // In rank order the shares are the matrices in order.
                let lens: Vec<usize> = (0..comm.size())
                    .map(|r| shard_of(set.count, r, comm.size()).len() * size)
                    .collect();
                backend.all_gather_pieces(update, &lens, comm)?;
            }
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
        self.config.describe()
    }
}
