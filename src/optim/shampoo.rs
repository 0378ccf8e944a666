//! Shampoo (Gupta et al. 2018) as Distributed Shampoo runs it (Shi et al. 2023,
//! facebookresearch/optimizers): per tile G of a hidden matrix (see [`super::kronecker`]),
//!
//! - factors L ← β2·L + (1−β2)·G·Gᵀ and R ← β2·R + (1−β2)·Gᵀ·G;
//! - every `precond_every` steps (step 0 included) the inverse fourth roots of the
//!   bias-corrected factors, (L̂₊ + ε·I)^(−1/4) with L̂ = L/(1 − β2ᵗ), from an eigendecomposition
//!   whose eigenvalues are clamped at 0 before ε is added;
//! - M, the bias-corrected EMA of G with β1 (Distributed Shampoo's "filtered gradient"): the
//!   momentum acts on the gradient, before either preconditioner;
//! - the direction L^(−1/4)·M·R^(−1/4), rescaled to the Frobenius norm of the Adam direction
//!   M/(√V̂ + ε_graft) of the same tile (layer-wise grafting; V is the EMA of G² with β2);
//! - W ← W·(1 − lr·wd) − lr·direction (decoupled weight decay).
//!
//! Deviations from Distributed Shampoo: ε is absolute, as there, but negative eigenvalues are
//! clamped to 0 where it shifts the whole spectrum by the most negative one; roots are taken
//! from the first step where it runs the grafted method alone until its first root
//! (`start_preconditioning_step`); Adam's second moment for grafting shares β2 with the factors
//! (the speedrun's Shampoo record sets both to 0.95).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::kronecker::{Squares, Tiling};
use super::{FRACTION, GroupOptimizer, GroupRange, NON_NEGATIVE, check};
use crate::backend::{Backend, BufferKind, Tensor};
use crate::dist::Comm;
use crate::model::ParamSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShampooConfig {
    pub lr: f32,
    /// EMA of the gradient, preconditioned by Shampoo and by the grafted Adam alike.
    pub beta1: f32,
    /// EMA of the Kronecker factors (and of Adam's second moment when grafting).
    pub beta2: f32,
    /// Added to the factors' eigenvalues (after clamping them at 0) before the inverse root:
    /// absolute, so an all-zero factor (a tile whose gradient is still zero, as behind a
    /// zero-initialised projection) gets the finite root ε^(−1/4)·I.
    pub eps: f32,
    /// Adam's ε in the grafted direction.
    pub graft_eps: f32,
    /// Decoupled, as in AdamW.
    pub weight_decay: f32,
    /// Steps between recomputations of the inverse roots.
    pub precond_every: usize,
    /// Largest tile side: longer dimensions are split into tiles with factors of their own.
    pub block: usize,
    /// Rescale each tile's step to the norm of Adam's (without it, the raw Shampoo step).
    pub graft: bool,
}

impl Default for ShampooConfig {
    /// The speedrun's Distributed Shampoo run (modded-nanogpt records/102924_Optimizers:
    /// lr 0.0018, betas (0.95, 0.95), ε 1e-12, Adam grafting with ε 1e-8, no weight decay,
    /// roots every 10 steps), with Distributed Shampoo's default tile side of 1024 (the record
    /// used 8192).
    fn default() -> Self {
        ShampooConfig {
            lr: 0.0018,
            beta1: 0.95,
            beta2: 0.95,
            eps: 1e-12,
            graft_eps: 1e-8,
            weight_decay: 0.0,
            precond_every: 10,
            block: 1024,
            graft: true,
        }
    }
}

impl ShampooConfig {
    pub fn validate(&self) -> Result<()> {
        check("the Shampoo learning rate", self.lr, 0.0.., NON_NEGATIVE)?;
        check("Shampoo beta1", self.beta1, 0.0..1.0, FRACTION)?;
        check("Shampoo beta2", self.beta2, 0.0..1.0, FRACTION)?;
        check(
            "the Shampoo epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            "the Shampoo grafting epsilon",
            self.graft_eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            "the Shampoo weight decay",
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        anyhow::ensure!(
            self.precond_every > 0,
            "Shampoo must recompute its roots at least every step, not every 0"
        );
        anyhow::ensure!(self.block > 0, "the Shampoo block size must be positive");
        Ok(())
    }

    pub fn describe(&self) -> String {
        let c = self;
        format!(
            "shampoo lr {} betas ({}, {}) eps {:e} roots every {} block {} graft {} (eps {:e}) wd {}",
            c.lr,
            c.beta1,
            c.beta2,
            c.eps,
            c.precond_every,
            c.block,
            c.graft,
            c.graft_eps,
            c.weight_decay
        )
    }
}

/// Work space for [`inverse_fourth_roots`], sized for the largest factor batch.
struct RootScratch {
    eigenvalues: Tensor,
    eigenvectors: Tensor,
    scaled: Tensor,
}

/// `roots = (A/bias + eps·I)^(−1/4)` for the matrices `squares` of `factors`, eigenvalues of A
/// clamped at 0: from A = V·Λ·Vᵀ, `roots = bias^(1/4)·S·Sᵀ` with
/// S = V·(Λ₊ + eps·bias)^(−1/8), which is the same matrix with one GEMM.
fn inverse_fourth_roots(
    backend: &mut dyn Backend,
    factors: Tensor,
    roots: Tensor,
    squares: Squares,
    eps: f32,
    bias: f32,
    scratch: &RootScratch,
) -> Result<()> {
    let Squares { n, count, .. } = squares;
    let values = scratch.eigenvalues.slice(0, count * n);
    let vectors = scratch.eigenvectors.slice(0, count * n * n);
    let scaled = scratch.scaled.slice(0, count * n * n);
    backend.symmetric_eigen(squares.of(factors), n, count, values, vectors)?;
    backend.scale_eigenvectors(scaled, vectors, values, n, count, -0.125, eps * bias)?;
    let shape = squares.product(true, bias.powf(0.25));
    backend.gemm(squares.of(roots), scaled, scaled, shape)
}

pub struct Shampoo {
    param: Tensor,
    grad: Tensor,
    tiling: Tiling,
    /// L and R of every tile (see [`Tiling`]), and their inverse fourth roots.
    factors: Tensor,
    roots: Tensor,
    /// EMA of the gradient and (grafting) of its square, in packed tile order.
    momentum: Tensor,
    second_moment: Option<Tensor>,
    /// Group-sized work space: the packed gradient (then the step), the Adam direction, and
    /// intermediate products (then the step in matrix order).
    packed: Tensor,
    direction: Tensor,
    work: Tensor,
    root_scratch: RootScratch,
    config: ShampooConfig,
}

impl Shampoo {
    pub fn new(
        backend: &mut dyn Backend,
        range: &GroupRange,
        specs: &[&ParamSpec],
        config: ShampooConfig,
    ) -> Result<Shampoo> {
        config.validate()?;
        let tiling = Tiling::new(range, specs, config.block, "Shampoo")?;
        let len = range.param.len;
        let (matrices, rows) = tiling.largest_factor();
        let mut state = |len| backend.alloc(len, BufferKind::OptimizerState);
        let (factors, roots, momentum) = (
            state(tiling.factor_len)?,
            state(tiling.factor_len)?,
            state(len)?,
        );
        let second_moment = config.graft.then(|| state(len)).transpose()?;
        let mut scratch = |len| backend.alloc(len, BufferKind::Scratch);
        Ok(Shampoo {
            param: range.param,
            grad: range.grad,
            factors,
            roots,
            momentum,
            second_moment,
            packed: scratch(len)?,
            direction: scratch(len)?,
            work: scratch(len)?,
            root_scratch: RootScratch {
                eigenvalues: scratch(rows)?,
                eigenvectors: scratch(matrices)?,
                scaled: scratch(matrices)?,
            },
            tiling,
            config,
        })
    }
}

impl GroupOptimizer for Shampoo {
    /// Every rank updates every factor and takes the whole step; the inverse roots, the
    /// eigendecompositions that dominate the cost, are shared out ([`Tiling::on_shares`]).
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        comm: &dyn Comm,
    ) -> Result<()> {
        let c = &self.config;
        let t = u32::try_from(step + 1)?;
        let bias = |beta: f32| (1.0 - (beta as f64).powi(t as i32)) as f32;
        self.tiling.pack(backend, self.packed, self.grad)?;
        self.tiling
            .update_factors(backend, self.factors, self.packed, c.beta2)?;
        if step.is_multiple_of(c.precond_every) {
            let (factors, roots, scratch) = (self.factors, self.roots, &self.root_scratch);
            self.tiling
                .on_shares(backend, comm, roots, |backend, squares| {
                    inverse_fourth_roots(
                        backend,
                        factors,
                        roots,
                        squares,
                        c.eps,
                        bias(c.beta2),
                        scratch,
                    )
                })?;
        }
        match self.second_moment {
            Some(v) => backend.adam_direction(
                self.direction,
                self.packed,
                self.momentum,
                v,
                c.beta1,
                c.beta2,
                c.graft_eps,
                t,
            )?,
            // The EMA alone; the copy it leaves in `direction` goes unused.
            None => {
                backend.muon_momentum(self.direction, self.momentum, self.packed, c.beta1, false)?
            }
        }
        for b in &self.tiling.batches {
            let (left, right) = (b.left.of(self.roots), b.right.of(self.roots));
            let operands = [
                b.of(self.packed),
                left,
                b.of(self.momentum),
                right,
                b.of(self.work),
            ];
            b.two_sided(backend, operands, (false, false), 1.0 / bias(c.beta1))?;
            if c.graft {
                backend.match_norms(b.of(self.packed), b.of(self.direction), b.count)?;
            }
        }
        self.tiling.unpack(backend, self.work, self.packed)?;
        let lr = c.lr * lr_scale;
        backend.apply_update(self.param, self.work, lr, lr * c.weight_decay)
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        let mut state = vec![
            ("factors", self.factors),
            ("roots", self.roots),
            ("momentum", self.momentum),
        ];
        state.extend(self.second_moment.map(|v| ("second_moment", v)));
        state
    }

    fn describe(&self) -> String {
        self.config.describe()
    }
}

#[cfg(test)]
mod tests {
    //! Against a dense nalgebra transcription of the published rule (nalgebra's own symmetric
    //! eigensolver for the roots), and against the defining property of the inverse root.

    use nalgebra::DMatrix;

    use super::super::kronecker::MatrixGroup;
    use super::super::kronecker::test_support::{
        assert_moves_like, assert_resumes_exactly, assert_training_lowers_the_loss,
    };
    use super::super::tests::{random, to_matrix};
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn config() -> ShampooConfig {
        ShampooConfig {
            lr: 0.1,
            weight_decay: 0.1,
            precond_every: 2,
            ..ShampooConfig::default()
        }
    }

    #[test]
    fn inverse_fourth_roots_raised_to_the_fourth_undo_the_regularised_factor() {
        // X = (A/bias + ε·I)^(−1/4) must satisfy X⁴·(A/bias + ε·I) = I, for an SPD A and for
        // A = 0 (where ε alone keeps the root finite). ε is large enough to matter.
        let (n, eps, bias) = (5, 0.5f32, 0.3f32);
        let mut b = CpuBackend::<f64>::new();
        let b_matrix = to_matrix(&random(n * n, 3), n, n);
        let spd = &b_matrix * b_matrix.transpose() + DMatrix::identity(n, n) * 0.1;
        let factors = b.alloc(2 * n * n, BufferKind::OptimizerState).unwrap();
        let roots = b.alloc(2 * n * n, BufferKind::OptimizerState).unwrap();
        let values: Vec<f32> = spd.transpose().iter().map(|&x| x as f32).collect();
        b.write(factors.slice(0, n * n), &values).unwrap();
        let scratch = RootScratch {
            eigenvalues: b.alloc(2 * n, BufferKind::Scratch).unwrap(),
            eigenvectors: b.alloc(2 * n * n, BufferKind::Scratch).unwrap(),
            scaled: b.alloc(2 * n * n, BufferKind::Scratch).unwrap(),
        };
        let squares = Squares {
            n,
            count: 2,
            offset: 0,
        };
        inverse_fourth_roots(&mut b, factors, roots, squares, eps, bias, &scratch).unwrap();
        let got = b.read(roots).unwrap();
        let stored = to_matrix(&values, n, n); // A as the backend holds it
        for (i, a) in [stored, DMatrix::zeros(n, n)].into_iter().enumerate() {
            let x = to_matrix(&got[i * n * n..(i + 1) * n * n], n, n);
            let regularised = a / bias as f64 + DMatrix::identity(n, n) * eps as f64;
            let product = &x * &x * &x * &x * regularised;
            let error = (product - DMatrix::identity(n, n)).abs().max();
            assert!(error < 1e-6, "matrix {i}: ‖X⁴·(A + εI) − I‖ = {error}");
        }
    }

    /// One matrix's Shampoo state, transcribed from the update rule.
    struct Reference {
        l: DMatrix<f64>,
        r: DMatrix<f64>,
        root_l: DMatrix<f64>,
        root_r: DMatrix<f64>,
        m: DMatrix<f64>,
        v: DMatrix<f64>,
    }

    /// (F/bias + ε·I)^(−1/4) with F's eigenvalues clamped at 0.
    fn reference_root(f: &DMatrix<f64>, bias: f64, eps: f64) -> DMatrix<f64> {
        let e = (f / bias).symmetric_eigen();
        let d = e.eigenvalues.map(|l| (l.max(0.0) + eps).powf(-0.25));
        &e.eigenvectors * DMatrix::from_diagonal(&d) * e.eigenvectors.transpose()
    }

    impl Reference {
        fn new(rows: usize, cols: usize) -> Reference {
            Reference {
                l: DMatrix::zeros(rows, rows),
                r: DMatrix::zeros(cols, cols),
                root_l: DMatrix::zeros(rows, rows),
                root_r: DMatrix::zeros(cols, cols),
                m: DMatrix::zeros(rows, cols),
                v: DMatrix::zeros(rows, cols),
            }
        }

        /// Step `step` (0-based) on weights `w` with gradient `g`.
        fn step(&mut self, c: &ShampooConfig, step: usize, g: &DMatrix<f64>, w: &mut DMatrix<f64>) {
            let (b1, b2, t) = (c.beta1 as f64, c.beta2 as f64, step as i32 + 1);
            let (bias1, bias2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            self.l = &self.l * b2 + g * g.transpose() * (1.0 - b2);
            self.r = &self.r * b2 + g.transpose() * g * (1.0 - b2);
            if step.is_multiple_of(c.precond_every) {
                self.root_l = reference_root(&self.l, bias2, c.eps as f64);
                self.root_r = reference_root(&self.r, bias2, c.eps as f64);
            }
            self.m = &self.m * b1 + g * (1.0 - b1);
            self.v = &self.v * b2 + g.component_mul(g) * (1.0 - b2);
            let m_hat = &self.m / bias1;
            let mut direction = &self.root_l * &m_hat * &self.root_r;
            if c.graft {
                let denominator = (&self.v / bias2).map(|x| x.sqrt() + c.graft_eps as f64);
                let adam = m_hat.component_div(&denominator);
                direction *= adam.norm() / direction.norm();
            }
            let lr = c.lr as f64;
            *w = &*w * (1.0 - lr * c.weight_decay as f64) - direction * lr;
        }
    }

    #[test]
    fn steps_match_a_dense_transcription_of_grafted_and_plain_shampoo() {
        // Rank-deficient factors (a 3×2 gradient gives a rank-2 L) would make the roots hinge
        // on rounding at ε = 1e-12; ε = 1e-4 keeps the comparison well-posed.
        let shapes = [(3, 2, 1), (2, 4, 1)];
        for graft in [true, false] {
            let c = ShampooConfig {
                eps: 1e-4,
                graft,
                ..config()
            };
            let mut b = CpuBackend::<f64>::new();
            let group = MatrixGroup::new(&mut b, &shapes).unwrap();
            let mut shampoo =
                Shampoo::new(&mut b, &group.range, &group.specs(), c.clone()).unwrap();
            let n = group.range.param.len;
            let mut params = random(n, 1);
            b.write(group.range.param, &params).unwrap();
            let mut references: Vec<_> = shapes
                .iter()
                .map(|&(r, c, _)| Reference::new(r, c))
                .collect();
            for step in 0..3 {
                let grads = random(n, 20 + step as u64);
                b.write(group.range.grad, &grads).unwrap();
                shampoo.step(&mut b, step, 1.0).unwrap();
                let got = b.read(group.range.param).unwrap();
                assert_moves_like(
                    &shapes,
                    [&params, &got, &grads],
                    |i, g, w| references[i].step(&c, step, g, w),
                    &format!("graft {graft}, step {step}"),
                );
                params = got;
            }
        }
    }

    #[test]
    fn a_blocked_matrix_moves_as_its_blocks_would_on_their_own() {
        // Two 5×3 matrices in blocks of 2 (rows 2+2+1, columns 2+1) against the same twelve
        // blocks given as separate matrices with no blocking.
        let c = ShampooConfig {
            block: 2,
            ..config()
        };
        let (rows, cols, count) = (5, 3, 2);
        let spans = |dim: usize| -> Vec<(usize, usize)> {
            (0..dim).step_by(2).map(|s| (s, (dim - s).min(2))).collect()
        };
        let mut tiles = Vec::new(); // (matrix, first row, rows, first column, columns)
        for k in 0..count {
            for (r0, r) in spans(rows) {
                for (c0, cc) in spans(cols) {
                    tiles.push((k, r0, r, c0, cc));
                }
            }
        }
        let extract = |values: &[f32]| -> Vec<f32> {
            tiles
                .iter()
                .flat_map(|&(k, r0, r, c0, cc)| {
                    (r0..r0 + r).flat_map(move |i| {
                        (c0..c0 + cc).map(move |j| values[k * rows * cols + i * cols + j])
                    })
                })
                .collect()
        };
        let mut b = CpuBackend::<f64>::new();
        let whole = MatrixGroup::new(&mut b, &[(rows, cols, count)]).unwrap();
        let shapes: Vec<_> = tiles.iter().map(|&(_, _, r, _, cc)| (r, cc, 1)).collect();
        let parts = MatrixGroup::new(&mut b, &shapes).unwrap();
        let mut blocked = Shampoo::new(&mut b, &whole.range, &whole.specs(), c.clone()).unwrap();
        let unblocked = ShampooConfig { block: 1024, ..c };
        let mut separate = Shampoo::new(&mut b, &parts.range, &parts.specs(), unblocked).unwrap();
        let n = whole.range.param.len;
        let params = random(n, 5);
        b.write(whole.range.param, &params).unwrap();
        b.write(parts.range.param, &extract(&params)).unwrap();
        for step in 0..3 {
            let grads = random(n, 30 + step as u64);
            b.write(whole.range.grad, &grads).unwrap();
            b.write(parts.range.grad, &extract(&grads)).unwrap();
            blocked.step(&mut b, step, 1.0).unwrap();
            separate.step(&mut b, step, 1.0).unwrap();
            let got = extract(&b.read(whole.range.param).unwrap());
            let want = b.read(parts.range.param).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "step {step}: {got:?}\nvs {want:?}");
            }
        }
    }

    #[test]
    fn resuming_from_the_saved_state_continues_exactly() {
        let c = ShampooConfig {
            block: 2,
            ..config()
        };
        assert_resumes_exactly(&|b, range, specs| {
            Box::new(Shampoo::new(b, range, specs, c.clone()).unwrap())
        });
    }

    #[test]
    fn training_lowers_the_loss() {
        let c = ShampooConfig {
            lr: 0.01,
            precond_every: 5,
            ..ShampooConfig::default()
        };
        assert_training_lowers_the_loss(&|b, range, specs| {
            Box::new(Shampoo::new(b, range, specs, c.clone()).unwrap())
        });
    }

    #[test]
    fn invalid_hyper_parameters_are_rejected() {
        for (c, message) in [
            (
                ShampooConfig {
                    beta2: 1.0,
                    ..config()
                },
                "Shampoo beta2 must be in [0, 1)",
            ),
            (
                ShampooConfig {
                    eps: 0.0,
                    ..config()
                },
                "the Shampoo epsilon must be positive",
            ),
            (
                ShampooConfig {
                    precond_every: 0,
                    ..config()
                },
                "at least every step",
            ),
            (
                ShampooConfig {
                    block: 0,
                    ..config()
                },
                "block size must be positive",
            ),
        ] {
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
        }
    }
}
