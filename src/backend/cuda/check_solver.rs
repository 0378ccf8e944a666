//! The matrix preconditioners' operations on the CUDA backend (kernels/precondition.cu and
//! cuSOLVER, through `CudaBackend`'s `Backend` methods) against the CPU backend on the same
//! inputs: the Adam direction, norm matching, blocking into tiles and back (a layout with all
//! four tile shapes), the scaled eigenvectors, the symmetric eigensolver and QR.
//!
//! Eigenvectors and Q's columns are unique only up to sign (and eigenvectors of equal
//! eigenvalues only up to a rotation), which the two solvers choose differently, so those are
//! compared through sign-invariant quantities: the eigenvalues, V·diag(λ)·Vᵀ (which rebuilds A),
//! and VᵀV (which must be I); each column of Q with its sign matched to the CPU's column (which
//! also checks that the ranked columns come back in their places), and QᵀQ. Sizes are not
//! multiples of 32 and every batch holds several matrices.
//!
//! Then a few steps of Shampoo and SOAP on their own (`GroupOptimizer`s over a matrix group,
//! tiles of 32), from the same gradients on both sides, compared by the change of the weights.
//! Their ε are raised where the reference's would make the comparison ill-posed: Shampoo's
//! (1e-12) so that the roots of the rank-deficient factors of one gradient do not hinge on
//! rounding (as its CPU test does), and both Adam ε to the gradients' scale, so that Adam's
//! direction, m̂/(√v̂ + ε), is a smooth function of the (solver-rotated) gradient rather than
//! ±1 wherever a component is nonzero. SOAP's matrices are square single tiles with
//! near-diagonal gradients, so its factors are full rank with eigenvalues well apart: the
//! eigenbasis of a singular factor's null space, or of close eigenvalues, is the solver's
//! choice, and SOAP's Adam is not rotation-invariant.

use anyhow::Result;

use super::{Check, Comparison, relative_error};
use crate::backend::cuda::backend::CudaBackend;
use crate::backend::{Backend, BlockLayout, BufferKind, Tensor};
use crate::model::ParamSpec;
use crate::optim::{
    GroupOptimizer, GroupRange, MatrixGroup, Shampoo, ShampooConfig, Soap, SoapConfig,
};

/// Elements of the element-wise operations: odd, so the grid-stride loops' tails run.
const LEN: usize = 30_003;
/// Matrix sizes and batches of the solvers: one below a warp multiple, one above.
const SOLVES: [(usize, usize); 2] = [(45, 3), (130, 2)];

/// `a·bᵀ` (or `aᵀ·b` with `transpose_first`) of row-major `n × n` matrices, in f64.
fn product(a: &[f32], b: &[f32], n: usize, transpose_first: bool) -> Vec<f32> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let sum: f64 = (0..n)
                .map(|k| {
                    let (x, y) = if transpose_first {
                        (a[k * n + i], b[k * n + j])
                    } else {
                        (a[i * n + k], b[j * n + k])
                    };
                    x as f64 * y as f64
                })
                .sum();
            out[i * n + j] = sum as f32;
        }
    }
    out
}

fn identity(n: usize, batch: usize) -> Vec<f32> {
    (0..batch * n * n)
        .map(|e| if e % (n * n) / n == e % n { 1.0 } else { 0.0 })
        .collect()
}

impl Check<'_> {
    pub(super) fn solver(&mut self, ordinal: usize) -> Result<()> {
        let mut gpu = CudaBackend::<f32>::new(ordinal)?;
        self.adam_direction(&mut gpu)?;
        self.match_norms(&mut gpu)?;
        self.blocks(&mut gpu)?;
        for (n, batch) in SOLVES {
            self.eigen(&mut gpu, n, batch)?;
            self.qr(&mut gpu, n, batch)?;
        }
        let shampoo = ShampooConfig {
            eps: 1e-4,
            graft_eps: 1e-2,
            precond_every: 2,
            block: 32,
            ..ShampooConfig::default()
        };
        // 70 × 45 in tiles of 32: all four tile shapes.
        self.preconditioner_steps(
            ordinal,
            "Shampoo",
            &[(70, 45, 2), (24, 40, 1)],
            |b, r, s| Ok(Box::new(Shampoo::new(b, r, s, shampoo.clone())?)),
        )?;
        let soap = SoapConfig {
            lr: 1e-2,
            eps: 1e-2,
            precond_every: 2,
            block: 32,
            ..SoapConfig::default()
        };
        self.preconditioner_steps(ordinal, "SOAP", &[(32, 32, 2), (24, 24, 1)], |b, r, s| {
            Ok(Box::new(Soap::new(b, r, s, soap.clone())?))
        })
    }

    /// `STEPS` steps of the optimizer `make` builds over a matrix group of `shapes`
    /// ((rows, cols, count) each) on both sides, from the same weights and gradients.
    fn preconditioner_steps(
        &mut self,
        ordinal: usize,
        name: &str,
        shapes: &[(usize, usize, usize)],
        make: impl Fn(&mut dyn Backend, &GroupRange, &[&ParamSpec]) -> Result<Box<dyn GroupOptimizer>>,
    ) -> Result<()> {
        /// Step 0 (SOAP's first, which only builds its bases), two preconditioner refreshes
        /// (steps 0 and 2) and the steps after each.
        const STEPS: usize = 4;
        let len: usize = shapes.iter().map(|(r, c, n)| r * c * n).sum();
        // SOAP's (square, one tile each): near-diagonal, so that the factors' eigenvalues are
        // well apart and their eigenvectors, which SOAP's Adam sees the gradients in, are
        // determined to far below the tolerance despite the two sides' rounding.
        let square = shapes.iter().all(|&(r, c, _)| r == c);
        let gradient = |check: &mut Self| -> Vec<f32> {
            let noise = check.random::<f32>(len, if square { 1e-5 } else { 0.01 });
            if !square {
                return noise;
            }
            let mut g = noise;
            let mut offset = 0;
            for &(n, _, count) in shapes {
                for _ in 0..count {
                    for d in 0..n {
                        g[offset + d * n + d] += 0.01 * (1.0 + d as f32 / n as f32);
                    }
                    offset += n * n;
                }
            }
            g
        };
        let weights = self.random::<f32>(len, 1.0);
        let mut gpu = CudaBackend::<f32>::new(ordinal)?;
        let mut sides = Vec::new();
        for backend in [
            &mut gpu as &mut dyn Backend,
            &mut self.cpu as &mut dyn Backend,
        ] {
            let group = MatrixGroup::new(backend, shapes)?;
            backend.write(group.range.param, &weights)?;
            let mut optimizer = make(backend, &group.range, &group.specs())?;
            optimizer.start(backend)?;
            sides.push((group.range, optimizer));
        }
        for step in 0..STEPS {
            let grad = gradient(self);
            for (backend, (range, optimizer)) in [
                &mut gpu as &mut dyn Backend,
                &mut self.cpu as &mut dyn Backend,
            ]
            .into_iter()
            .zip(&mut sides)
            {
                backend.write(range.grad, &grad)?;
                optimizer.step(backend, step, 1.0)?;
            }
        }
        let change = |after: Vec<f32>| -> Vec<f32> {
            after.iter().zip(&weights).map(|(a, b)| a - b).collect()
        };
        let gpu_change = change(gpu.read(sides[0].0.param)?);
        let cpu_change = change(self.cpu.read(sides[1].0.param)?);
        let kernel = format!("{name}, {STEPS} steps (tiles of 32)");
        self.push(&kernel, "update", &gpu_change, &cpu_change);
        Ok(())
    }

    /// `x` on both sides: the GPU's tensor (f32 scratch) and the CPU's.
    fn pair(&mut self, gpu: &mut CudaBackend<f32>, x: &[f32]) -> Result<(Tensor, Tensor)> {
        let g = gpu.alloc(x.len(), BufferKind::Scratch)?;
        gpu.write(g, x)?;
        Ok((g, self.tensor(x)?))
    }

    fn push(&mut self, kernel: &str, tensor: &'static str, gpu: &[f32], cpu: &[f32]) {
        self.comparisons.push(Comparison {
            kernel: kernel.to_string(),
            tensor,
            dtype: "f32",
            error: relative_error(gpu, cpu),
        });
    }

    fn adam_direction(&mut self, gpu: &mut CudaBackend<f32>) -> Result<()> {
        let kernel = "adam_direction (step 3)";
        let grad = self.random::<f32>(LEN, 0.1);
        let m = self.random::<f32>(LEN, 0.05);
        let v: Vec<f32> = self
            .random::<f32>(LEN, 0.05)
            .iter()
            .map(|x| x * x)
            .collect();
        let (ggrad, cgrad) = self.pair(gpu, &grad)?;
        let (gm, cm) = self.pair(gpu, &m)?;
        let (gv, cv) = self.pair(gpu, &v)?;
        let (gout, cout) = self.pair(gpu, &vec![0.0; LEN])?;
        gpu.adam_direction(gout, ggrad, gm, gv, 0.9, 0.95, 1e-8, 3)?;
        self.cpu
            .adam_direction(cout, cgrad, cm, cv, 0.9, 0.95, 1e-8, 3)?;
        let out = gpu.read(gout)?;
        self.compare(kernel, "out", "f32", &out, cout)?;
        // The change of the moments, which is what the step computes.
        for (tensor, old, g, c) in [("m", &m, gm, cm), ("v", &v, gv, cv)] {
            let delta = |x: &[f32]| -> Vec<f32> { x.iter().zip(old).map(|(a, b)| a - b).collect() };
            let (gpu_new, cpu_new) = (gpu.read(g)?, self.cpu.read(c)?);
            self.push(kernel, tensor, &delta(&gpu_new), &delta(&cpu_new));
        }
        Ok(())
    }

    fn match_norms(&mut self, gpu: &mut CudaBackend<f32>) -> Result<()> {
        let (batch, part) = (3, 10_001);
        let mut x = self.random::<f32>(batch * part, 1.0);
        // A zero part stays zero.
        x[part..2 * part].fill(0.0);
        let target = self.random::<f32>(batch * part, 0.3);
        let (gx, cx) = self.pair(gpu, &x)?;
        let (gt, ct) = self.pair(gpu, &target)?;
        gpu.match_norms(gx, gt, batch)?;
        self.cpu.match_norms(cx, ct, batch)?;
        let out = gpu.read(gx)?;
        self.compare("match_norms (one part zero)", "x", "f32", &out, cx)
    }

    fn blocks(&mut self, gpu: &mut CudaBackend<f32>) -> Result<()> {
        // 70 = 2·32 + 6 rows, 45 = 32 + 13 columns: full tiles, short columns, short rows and
        // both, of two matrices.
        let layout = BlockLayout {
            rows: 70,
            cols: 45,
            count: 2,
            block: 32,
        };
        assert_eq!(layout.tile_sets().len(), 4, "all four tile shapes");
        let len = layout.elements();
        let matrices = self.random::<f32>(len, 1.0);
        let (gm, cm) = self.pair(gpu, &matrices)?;
        let (gb, cb) = self.pair(gpu, &vec![0.0; len])?;
        gpu.pack_blocks(gb, gm, layout)?;
        self.cpu.pack_blocks(cb, cm, layout)?;
        let packed = gpu.read(gb)?;
        self.compare("pack_blocks (4 tile shapes)", "blocks", "f32", &packed, cb)?;
        // Back into zeroed matrices: every element must be written, and be the original.
        let (gback, cback) = self.pair(gpu, &vec![0.0; len])?;
        gpu.unpack_blocks(gback, gb, layout)?;
        self.cpu.unpack_blocks(cback, cb, layout)?;
        let back = gpu.read(gback)?;
        self.compare(
            "unpack_blocks (4 tile shapes)",
            "matrices",
            "f32",
            &back,
            cback,
        )?;
        self.push(
            "unpack_blocks (4 tile shapes)",
            "matrices vs the original",
            &back,
            &matrices,
        );
        Ok(())
    }

    /// `batch` random symmetric positive definite `n × n` matrices B·Bᵀ/n + 0.1·I.
    fn spd(&mut self, n: usize, batch: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(batch * n * n);
        for _ in 0..batch {
            let b = self.random::<f32>(n * n, 1.0);
            let mut a = product(&b, &b, n, false);
            a.iter_mut().for_each(|x| *x /= n as f32);
            (0..n).for_each(|d| a[d * n + d] += 0.1);
            // Exactly symmetric, as the optimizers' factors are.
            for i in 0..n {
                for j in 0..i {
                    a[j * n + i] = a[i * n + j];
                }
            }
            out.extend(a);
        }
        out
    }

    fn eigen(&mut self, gpu: &mut CudaBackend<f32>, n: usize, batch: usize) -> Result<()> {
        let kernel = format!("symmetric_eigen ({batch} × {n}²)");
        let (nn, a) = (n * n, self.spd(n, batch));
        let (ga, ca) = self.pair(gpu, &a)?;
        let (gvalues, cvalues) = self.pair(gpu, &vec![0.0; batch * n])?;
        let (gvectors, cvectors) = self.pair(gpu, &vec![0.0; batch * nn])?;
        gpu.symmetric_eigen(ga, n, batch, gvalues, gvectors)?;
        self.cpu.symmetric_eigen(ca, n, batch, cvalues, cvectors)?;
        let (values, vectors) = (gpu.read(gvalues)?, gpu.read(gvectors)?);
        let cpu_vectors = self.cpu.read(cvectors)?;
        let cpu_values = self.cpu.read(cvalues)?;
        self.push(&kernel, "eigenvalues", &values, &cpu_values);
        let ascending = values.chunks(n).all(|l| l.windows(2).all(|w| w[0] <= w[1]));
        self.push(
            &kernel,
            "eigenvalues ascending (0 = yes)",
            &[if ascending { 0.0 } else { 1.0 }],
            &[0.0],
        );
        // V·diag(λ)·Vᵀ against A, and VᵀV against I: neither depends on the signs.
        let rebuild = |vectors: &[f32], values: &[f32]| -> Vec<f32> {
            (0..batch)
                .flat_map(|b| {
                    let v = &vectors[b * nn..(b + 1) * nn];
                    let l = &values[b * n..(b + 1) * n];
                    let scaled: Vec<f32> = (0..nn).map(|e| v[e] * l[e % n]).collect();
                    product(&scaled, v, n, false)
                })
                .collect()
        };
        self.push(
            &kernel,
            "V·diag(λ)·Vᵀ vs A",
            &rebuild(&vectors, &values),
            &a,
        );
        self.push(
            &kernel,
            "V·diag(λ)·Vᵀ vs the CPU's",
            &rebuild(&vectors, &values),
            &rebuild(&cpu_vectors, &cpu_values),
        );
        let gram: Vec<f32> = (0..batch)
            .flat_map(|b| {
                let v = &vectors[b * nn..(b + 1) * nn];
                product(v, v, n, true)
            })
            .collect();
        self.push(&kernel, "VᵀV vs I", &gram, &identity(n, batch));

        // The inverse fourth root's factor from the same (the CPU's) eigenpairs on both sides,
        // with a few eigenvalues made negative, which must count as zero.
        let mut shifted = cpu_values.clone();
        shifted.iter_mut().step_by(7).for_each(|l| *l = -*l);
        let (gv, cv) = self.pair(gpu, &cpu_vectors)?;
        let (gl, cl) = self.pair(gpu, &shifted)?;
        let (gout, cout) = self.pair(gpu, &vec![0.0; batch * nn])?;
        gpu.scale_eigenvectors(gout, gv, gl, n, batch, -0.125, 1e-3)?;
        self.cpu
            .scale_eigenvectors(cout, cv, cl, n, batch, -0.125, 1e-3)?;
        let out = gpu.read(gout)?;
        let kernel = format!("scale_eigenvectors ({batch} × {n}², some λ < 0)");
        self.compare(&kernel, "out", "f32", &out, cout)
    }

    fn qr(&mut self, gpu: &mut CudaBackend<f32>, n: usize, batch: usize) -> Result<()> {
        let nn = n * n;
        let a = self.random::<f32>(batch * nn, 1.0);
        let rank_by = self.random::<f32>(batch * nn, 1.0);
        for ranked in [false, true] {
            let kernel = format!(
                "orthonormalize ({batch} × {n}²{})",
                if ranked { ", ranked" } else { "" }
            );
            let (ga, ca) = self.pair(gpu, &a)?;
            let (gr, cr) = self.pair(gpu, &rank_by)?;
            gpu.orthonormalize(ga, n, batch, ranked.then_some(gr))?;
            self.cpu
                .orthonormalize(ca, n, batch, ranked.then_some(cr))?;
            let (q, cpu_q) = (gpu.read(ga)?, self.cpu.read(ca)?);
            // Each GPU column with the sign of the CPU's: a column out of its place, or from
            // another order of orthogonalisation, differs in more than its sign.
            let mut aligned = q.clone();
            for b in 0..batch {
                for j in 0..n {
                    let column = |i: usize| b * nn + i * n + j;
                    let dot: f64 = (0..n)
                        .map(|i| q[column(i)] as f64 * cpu_q[column(i)] as f64)
                        .sum();
                    if dot < 0.0 {
                        (0..n).for_each(|i| aligned[column(i)] = -q[column(i)]);
                    }
                }
            }
            self.push(&kernel, "Q (columns up to sign)", &aligned, &cpu_q);
            let gram: Vec<f32> = (0..batch)
                .flat_map(|b| {
                    let q = &q[b * nn..(b + 1) * nn];
                    product(q, q, n, true)
                })
                .collect();
            self.push(&kernel, "QᵀQ vs I", &gram, &identity(n, batch));
        }
        Ok(())
    }
}
