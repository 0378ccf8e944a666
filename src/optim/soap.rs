//! SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"; reference
//! implementation nikhilvyas/SOAP, soap.py): Adam run in the eigenbasis of Shampoo's factors.
//! Per tile G of a hidden matrix (see [`super::kronecker`]), in the reference's order:
//!
//! - step 0 only accumulates: L ← β2·L + (1−β2)·G·Gᵀ, R ← β2·R + (1−β2)·Gᵀ·G (the reference's
//!   `shampoo_beta` defaults to β2), and the bases Q_L, Q_R become their eigenvectors; the
//!   weights do not move, so that no gradient is ever projected onto a basis built from it;
//! - every later step t: G′ = Q_Lᵀ·G·Q_R; Adam moments M, V of G′ (kept in the rotated basis)
//!   with β1, β2; N = M/(√V + ε); W ← (W − lr·(√(1−β2ᵗ)/(1−β1ᵗ))·Q_L·N·Q_Rᵀ)·(1 − lr·wd)
//!   (the reference decays the weights after the step); then L, R take in G;
//! - when t is a multiple of `precond_every`: M is rotated back to the original basis, each
//!   basis is refreshed by one power iteration Q ← QR(F·Q) of its factor F, with the columns
//!   orthogonalised by decreasing Rayleigh quotient qᵀ·F·q, and M is rotated into the new basis.
//!
//! Deviations from the reference, none of which changes the update beyond rounding:
//! - the reference sorts the basis columns by Rayleigh quotient before its QR and permutes V to
//!   match; here the QR takes the columns in that order but writes them back in their old
//!   places (see [`Backend::orthonormalize`]), so V stays put: the same basis, permuted;
//! - the first eigendecomposition keeps ascending order (the reference flips to descending):
//!   the order of the basis is irrelevant until the first refresh sorts it;
//! - M is rotated back and forth only when the basis changes, where the reference makes the
//!   round trip through an unchanged basis every step;
//! - ε enters as Adam's ε/√(1−β2ᵗ) on the bias-corrected moments, the same quantity;
//! - dimensions above `block` are split into tiles, where the reference leaves dimensions above
//!   its `max_precond_dim` (10000, our default `block`) unrotated; no matrix of these models
//!   comes near it.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::kronecker::Tiling;
use super::{FRACTION, GroupOptimizer, GroupRange, NON_NEGATIVE, check};
use crate::backend::{Backend, BufferKind, Tensor};
use crate::dist::Comm;
use crate::model::ParamSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoapConfig {
    pub lr: f32,
    /// Adam's first-moment EMA, in the rotated basis.
    pub beta1: f32,
    /// Adam's second-moment EMA, and the EMA of the Kronecker factors.
    pub beta2: f32,
    /// Adam's ε.
    pub eps: f32,
    /// Decoupled, applied after the step as in the reference.
    pub weight_decay: f32,
    /// Steps between refreshes of the eigenbases.
    pub precond_every: usize,
    /// Largest tile side: longer dimensions are split into tiles with factors of their own.
    pub block: usize,
}

impl Default for SoapConfig {
    /// The reference implementation's defaults: lr 3e-3, betas (0.95, 0.95), ε 1e-8, weight
    /// decay 0.01, preconditioner refresh every 10 steps, `max_precond_dim` 10000 as the block.
    fn default() -> Self {
        SoapConfig {
            lr: 3e-3,
            beta1: 0.95,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            precond_every: 10,
            block: 10000,
        }
    }
}

impl SoapConfig {
    pub fn validate(&self) -> Result<()> {
        check("the SOAP learning rate", self.lr, 0.0.., NON_NEGATIVE)?;
        check("SOAP beta1", self.beta1, 0.0..1.0, FRACTION)?;
        check("SOAP beta2", self.beta2, 0.0..1.0, FRACTION)?;
        check(
            "the SOAP epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            "the SOAP weight decay",
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        anyhow::ensure!(
            self.precond_every > 0,
            "SOAP must refresh its eigenbases at least every step, not every 0"
        );
        anyhow::ensure!(self.block > 0, "the SOAP block size must be positive");
        Ok(())
    }

    pub fn describe(&self) -> String {
        let c = self;
        format!(
            "soap lr {} betas ({}, {}) eps {:e} bases every {} block {} wd {}",
            c.lr, c.beta1, c.beta2, c.eps, c.precond_every, c.block, c.weight_decay
        )
    }
}

pub struct Soap {
    param: Tensor,
    grad: Tensor,
    tiling: Tiling,
    /// L and R of every tile (see [`Tiling`]), and their eigenbases Q_L, Q_R.
    factors: Tensor,
    bases: Tensor,
    /// Adam's moments, in the rotated basis and packed tile order.
    m: Tensor,
    v: Tensor,
    /// Group-sized work space: the packed gradient, its rotation, intermediate products.
    packed: Tensor,
    rotated: Tensor,
    work: Tensor,
    /// Factor-sized work space: eigenvalues, and F·Q before its QR.
    eigenvalues: Tensor,
    power: Tensor,
    config: SoapConfig,
}

impl Soap {
    pub fn new(
        backend: &mut dyn Backend,
        range: &GroupRange,
        specs: &[&ParamSpec],
        config: SoapConfig,
    ) -> Result<Soap> {
        config.validate()?;
        let tiling = Tiling::new(range, specs, config.block, "SOAP")?;
        let len = range.param.len;
        let (matrices, rows) = tiling.largest_factor();
        let mut state = |len| backend.alloc(len, BufferKind::OptimizerState);
        let (factors, bases, m, v) = (
            state(tiling.factor_len)?,
            state(tiling.factor_len)?,
            state(len)?,
            state(len)?,
        );
        let mut scratch = |len| backend.alloc(len, BufferKind::Scratch);
        Ok(Soap {
            param: range.param,
            grad: range.grad,
            factors,
            bases,
            m,
            v,
            packed: scratch(len)?,
            rotated: scratch(len)?,
            work: scratch(len)?,
            eigenvalues: scratch(rows)?,
            power: scratch(matrices)?,
            tiling,
            config,
        })
    }

    /// `out = op(Q_L)·x·op(Q_R)` for every tile, through `tmp`; `transpose` (true, false)
    /// rotates into the eigenbasis, (false, true) back out of it.
    fn rotate(
        &self,
        backend: &mut dyn Backend,
        [out, x, tmp]: [Tensor; 3],
        transpose: (bool, bool),
    ) -> Result<()> {
        for b in &self.tiling.batches {
            let (left, right) = (b.left.of(self.bases), b.right.of(self.bases));
            let operands = [b.of(out), left, b.of(x), right, b.of(tmp)];
            b.two_sided(backend, operands, transpose, 1.0)?;
        }
        Ok(())
    }

    /// One power iteration per basis, Q ← QR(F·Q), columns taken by decreasing Rayleigh
    /// quotient; the bases are shared out over the ranks ([`Tiling::on_shares`]).
    fn refresh_bases(&self, backend: &mut dyn Backend, comm: &dyn Comm) -> Result<()> {
        let (factors, bases, power) = (self.factors, self.bases, self.power);
        self.tiling
            .on_shares(backend, comm, bases, |backend, squares| {
                let (n, count) = (squares.n, squares.count);
                let basis = squares.of(bases);
                let power = power.slice(0, count * n * n);
                let shape = squares.product(false, 1.0);
                backend.gemm(power, squares.of(factors), basis, shape)?;
                backend.orthonormalize(power, n, count, Some(basis))?;
                backend.copy(basis, power)
            })
    }
}

impl GroupOptimizer for Soap {
    /// Every rank updates every factor and takes the whole step; the bases' eigen- and QR
    /// decompositions are shared out ([`Tiling::on_shares`]).
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        comm: &dyn Comm,
    ) -> Result<()> {
        let c = &self.config;
        self.tiling.pack(backend, self.packed, self.grad)?;
        if step == 0 {
            self.tiling
                .update_factors(backend, self.factors, self.packed, c.beta2)?;
            let (factors, bases, eigenvalues) = (self.factors, self.bases, self.eigenvalues);
            return self
                .tiling
                .on_shares(backend, comm, bases, |backend, squares| {
                    let values = eigenvalues.slice(0, squares.count * squares.n);
                    let (factors, bases) = (squares.of(factors), squares.of(bases));
                    backend.symmetric_eigen(factors, squares.n, squares.count, values, bases)
                });
        }
        // The step uses the bases built before this gradient; the factors take it in after.
        let t = u32::try_from(step)?;
        let (into, out_of) = ((true, false), (false, true));
        self.rotate(backend, [self.rotated, self.packed, self.work], into)?;
        self.tiling
            .update_factors(backend, self.factors, self.packed, c.beta2)?;
        let bias2 = (1.0 - (c.beta2 as f64).powi(t as i32)).sqrt() as f32;
        backend.adam_direction(
            self.work,
            self.rotated,
            self.m,
            self.v,
            c.beta1,
            c.beta2,
            c.eps / bias2,
            t,
        )?;
        self.rotate(backend, [self.packed, self.work, self.rotated], out_of)?;
        self.tiling.unpack(backend, self.rotated, self.packed)?;
        let lr = c.lr * lr_scale;
        let decay = lr * c.weight_decay;
        backend.apply_update(self.param, self.rotated, lr * (1.0 - decay), decay)?;
        if step.is_multiple_of(c.precond_every) {
            self.rotate(backend, [self.packed, self.m, self.work], out_of)?;
            self.refresh_bases(backend, comm)?;
            self.rotate(backend, [self.m, self.packed, self.work], into)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        vec![
            ("factors", self.factors),
            ("bases", self.bases),
            ("m", self.m),
            ("v", self.v),
        ]
    }

    fn describe(&self) -> String {
        self.config.describe()
    }
}

#[cfg(test)]
mod tests {
    //! Against a dense nalgebra transcription of the reference's `step` (its sorting of the
    //! basis by Rayleigh quotient and permutation of V included), with nalgebra's own
    //! eigensolver and QR.

    use nalgebra::DMatrix;

    use super::super::kronecker::MatrixGroup;
    use super::super::kronecker::test_support::{
        assert_moves_like, assert_resumes_exactly, assert_training_lowers_the_loss,
    };
    use super::super::tests::{random, to_matrix};
    use super::*;
    use crate::backend::cpu::CpuBackend;

    /// A 3×2 and a 2×4 matrix: every product's shape tells left from right.
    const SHAPES: [(usize, usize, usize); 2] = [(3, 2, 1), (2, 4, 1)];

    fn config() -> SoapConfig {
        SoapConfig {
            lr: 0.1,
            weight_decay: 0.1,
            precond_every: 2,
            ..SoapConfig::default()
        }
    }

    fn row_major(m: &DMatrix<f64>) -> Vec<f32> {
        m.transpose().iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn the_first_step_only_builds_factors_and_their_eigenbases() {
        let mut b = CpuBackend::<f64>::new();
        let group = MatrixGroup::new(&mut b, &SHAPES).unwrap();
        let mut soap = Soap::new(&mut b, &group.range, &group.specs(), config()).unwrap();
        let n = group.range.param.len;
        let (params, grads) = (random(n, 1), random(n, 2));
        b.write(group.range.param, &params).unwrap();
        b.write(group.range.grad, &grads).unwrap();
        soap.step(&mut b, 0, 1.0).unwrap();
        assert_eq!(b.read(group.range.param).unwrap(), params);
        let (factors, bases) = (b.read(soap.factors).unwrap(), b.read(soap.bases).unwrap());
        let (mut offset, mut factor_offset) = (0, 0);
        for (rows, cols, _) in SHAPES {
            let g = to_matrix(&grads[offset..offset + rows * cols], rows, cols);
            let weight = 1.0 - config().beta2 as f64;
            for want in [&g * g.transpose() * weight, g.transpose() * &g * weight] {
                let d = want.nrows();
                let span = factor_offset..factor_offset + d * d;
                let (f, q) = (
                    to_matrix(&factors[span.clone()], d, d),
                    to_matrix(&bases[span], d, d),
                );
                // Read back through the f32 interface: agreement to its rounding.
                assert!((&f - &want).abs().max() < 1e-8, "factor {f} vs {want}");
                let identity = DMatrix::identity(d, d);
                assert!(
                    (q.transpose() * &q - &identity).abs().max() < 1e-6,
                    "QᵀQ ≠ I"
                );
                let rotated = q.transpose() * &f * &q;
                let diagonal = DMatrix::from_diagonal(&rotated.diagonal());
                assert!((&f * &q - &q * diagonal).abs().max() < 1e-7, "F·Q ≠ Q·Λ");
                factor_offset += d * d;
            }
            offset += rows * cols;
        }
    }

    /// One matrix's SOAP state, transcribed from the reference; `m` is kept in the eigenbasis.
    struct Reference {
        l: DMatrix<f64>,
        r: DMatrix<f64>,
        q_l: DMatrix<f64>,
        q_r: DMatrix<f64>,
        m: DMatrix<f64>,
        v: DMatrix<f64>,
    }

    impl Reference {
        /// Random positive definite factors with their exact eigenbases, and random moments:
        /// a state in which every eigenvalue is distinct, so that the basis is unique.
        fn random(rows: usize, cols: usize, seed: u64) -> Reference {
            let spd = |n: usize, seed| {
                let b = to_matrix(&random(n * n, seed), n, n);
                &b * b.transpose() + DMatrix::identity(n, n) * 0.1
            };
            let (l, r) = (spd(rows, seed), spd(cols, seed + 1));
            let (q_l, q_r) = (
                l.clone().symmetric_eigen().eigenvectors,
                r.clone().symmetric_eigen().eigenvectors,
            );
            let m = to_matrix(&random(rows * cols, seed + 2), rows, cols);
            let v = to_matrix(&random(rows * cols, seed + 3), rows, cols).map(|x| x.abs());
            Reference {
                l,
                r,
                q_l,
                q_r,
                m,
                v,
            }
        }

        /// The reference's `step` for its step count `t` (the optimizer's step index).
        fn step(&mut self, c: &SoapConfig, t: usize, g: &DMatrix<f64>, w: &mut DMatrix<f64>) {
            let (b1, b2, lr) = (c.beta1 as f64, c.beta2 as f64, c.lr as f64);
            let projected = self.q_l.transpose() * g * &self.q_r;
            self.m = &self.m * b1 + &projected * (1.0 - b1);
            self.v = &self.v * b2 + projected.component_mul(&projected) * (1.0 - b2);
            let n = self
                .m
                .component_div(&self.v.map(|x| x.sqrt() + c.eps as f64));
            let step_size = lr * (1.0 - b2.powi(t as i32)).sqrt() / (1.0 - b1.powi(t as i32));
            *w -= &self.q_l * n * self.q_r.transpose() * step_size;
            *w *= 1.0 - lr * c.weight_decay as f64;
            // update_preconditioner
            self.m = &self.q_l * &self.m * self.q_r.transpose();
            self.l = &self.l * b2 + g * g.transpose() * (1.0 - b2);
            self.r = &self.r * b2 + g.transpose() * g * (1.0 - b2);
            if t.is_multiple_of(c.precond_every) {
                for side in [0, 1] {
                    let (f, q) = if side == 0 {
                        (&self.l, &self.q_l)
                    } else {
                        (&self.r, &self.q_r)
                    };
                    let estimates = (q.transpose() * f * q).diagonal();
                    let mut order: Vec<usize> = (0..q.ncols()).collect();
                    order.sort_by(|&a, &b| estimates[b].total_cmp(&estimates[a]));
                    let sorted = q.select_columns(&order);
                    self.v = if side == 0 {
                        self.v.select_rows(&order)
                    } else {
                        self.v.select_columns(&order)
                    };
                    let refreshed = (f * sorted).qr().q();
                    *(if side == 0 {
                        &mut self.q_l
                    } else {
                        &mut self.q_r
                    }) = refreshed;
                }
            }
            self.m = self.q_l.transpose() * &self.m * &self.q_r;
        }
    }

    #[test]
    fn steps_match_a_dense_transcription_of_the_reference() {
        // From a written state with distinct eigenvalues (after one gradient the factors of a
        // non-square matrix are singular, and the basis of their null space is arbitrary), four
        // steps: a refresh after steps 2 and 4, each then used by the next step.
        let c = config();
        let mut b = CpuBackend::<f64>::new();
        let group = MatrixGroup::new(&mut b, &SHAPES).unwrap();
        let mut soap = Soap::new(&mut b, &group.range, &group.specs(), c.clone()).unwrap();
        let mut references: Vec<_> = SHAPES
            .iter()
            .enumerate()
            .map(|(i, &(rows, cols, _))| Reference::random(rows, cols, 10 * i as u64))
            .collect();
        // The optimizer's layout: each matrix's L then R; moments in matrix order (no tiling).
        let flat = |f: fn(&Reference) -> Vec<&DMatrix<f64>>| -> Vec<f32> {
            references
                .iter()
                .flat_map(|r| f(r).into_iter().flat_map(row_major))
                .collect()
        };
        b.write(soap.factors, &flat(|r| vec![&r.l, &r.r])).unwrap();
        b.write(soap.bases, &flat(|r| vec![&r.q_l, &r.q_r]))
            .unwrap();
        b.write(soap.m, &flat(|r| vec![&r.m])).unwrap();
        b.write(soap.v, &flat(|r| vec![&r.v])).unwrap();
        // The reference starts from what the backend holds (its f32 interface rounds).
        let stored =
            |t: Tensor, offset: usize, rows: usize, cols: usize, b: &mut CpuBackend<f64>| {
                to_matrix(&b.read(t.slice(offset, rows * cols)).unwrap(), rows, cols)
            };
        let (mut offset, mut factor_offset) = (0, 0);
        for (r, &(rows, cols, _)) in references.iter_mut().zip(&SHAPES) {
            r.l = stored(soap.factors, factor_offset, rows, rows, &mut b);
            r.q_l = stored(soap.bases, factor_offset, rows, rows, &mut b);
            r.r = stored(
                soap.factors,
                factor_offset + rows * rows,
                cols,
                cols,
                &mut b,
            );
            r.q_r = stored(soap.bases, factor_offset + rows * rows, cols, cols, &mut b);
            r.m = stored(soap.m, offset, rows, cols, &mut b);
            r.v = stored(soap.v, offset, rows, cols, &mut b);
            offset += rows * cols;
            factor_offset += rows * rows + cols * cols;
        }
        let n = group.range.param.len;
        let mut params = random(n, 1);
        b.write(group.range.param, &params).unwrap();
        for step in 1..=4 {
            let grads = random(n, 20 + step as u64);
            b.write(group.range.grad, &grads).unwrap();
            soap.step(&mut b, step, 1.0).unwrap();
            let got = b.read(group.range.param).unwrap();
            assert_moves_like(
                &SHAPES,
                [&params, &got, &grads],
                |i, g, w| references[i].step(&c, step, g, w),
                &format!("step {step}"),
            );
            params = got;
        }
    }

    #[test]
    fn resuming_from_the_saved_state_continues_exactly() {
        let c = SoapConfig {
            block: 2,
            ..config()
        };
        assert_resumes_exactly(&|b, range, specs| {
            Box::new(Soap::new(b, range, specs, c.clone()).unwrap())
        });
    }

    #[test]
    fn training_lowers_the_loss() {
        let c = SoapConfig {
            lr: 0.01,
            precond_every: 5,
            ..SoapConfig::default()
        };
        assert_training_lowers_the_loss(&|b, range, specs| {
            Box::new(Soap::new(b, range, specs, c.clone()).unwrap())
        });
    }

    #[test]
    fn invalid_hyper_parameters_are_rejected() {
        for (c, message) in [
            (
                SoapConfig {
                    beta1: -0.1,
                    ..config()
                },
                "SOAP beta1 must be in [0, 1)",
            ),
            (
                SoapConfig {
                    lr: f32::NAN,
                    ..config()
                },
                "the SOAP learning rate must be",
            ),
            (
                SoapConfig {
                    precond_every: 0,
                    ..config()
                },
                "at least every step",
            ),
        ] {
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
        }
    }
}
