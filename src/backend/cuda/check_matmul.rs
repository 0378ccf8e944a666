//! The cuBLASLt matrix products and the batched Newton–Schulz against the CPU backend, on the
//! same (bf16-rounded where the GPU reads bf16) inputs. Sizes are not multiples of 8, 16 or
//! 64, and k is odd, so no product can lean on aligned tiles or vector loads.

use anyhow::{Result, ensure};
use half::bf16;

use super::Check;
use crate::backend::cuda::backend::CudaBackend;
use crate::backend::cuda::matmul::{Matmul, MatmulElement};
use crate::backend::cuda::view::ViewOf;
use crate::backend::{Backend, BufferKind, Gemm};
use crate::optim::{NewtonSchulzScratch, NsCoefficients, newton_schulz};

const BATCH: usize = 3;
const M: usize = 37;
const N: usize = 29;
const K: usize = 23;

fn label(transpose: bool) -> &'static str {
    if transpose { "T" } else { "N" }
}

impl Check<'_> {
    pub(super) fn matmul(&mut self, ordinal: usize) -> Result<()> {
        let mut matmul = Matmul::new(self.kernels.stream())?;
        self.gemm::<bf16, bf16>(&mut matmul)?;
        self.gemm::<bf16, f32>(&mut matmul)?;
        self.gemm::<f32, f32>(&mut matmul)?;
        // Muon's Newton–Schulz as training runs it: the optimizer's code on the CUDA backend.
        // Wide and tall, 3 matrices each; an odd and an even number of steps, so the result
        // ends in the scratch buffer once and in place once.
        let mut gpu = CudaBackend::<f32>::new(ordinal)?;
        for coefficients in [NsCoefficients::Quintic, NsCoefficients::Polar] {
            for (rows, cols, steps) in [(27, 45, 5), (45, 27, 4)] {
                self.newton_schulz(&mut gpu, rows, cols, 3, steps, coefficients)?;
            }
        }
        Ok(())
    }

    /// Every transpose combination with α and β (C read in place, as D), then two with C apart
    /// from D (one with β = 0), whose D starts as NaNs that must not be read.
    fn gemm<I: MatmulElement, O: MatmulElement>(&mut self, matmul: &mut Matmul) -> Result<()> {
        let a = self.random::<I>(BATCH * M * K, 1.0);
        let b = self.random::<I>(BATCH * K * N, 1.0);
        let c = self.random::<O>(BATCH * M * N, 1.0);
        let nans = vec![f32::NAN; BATCH * M * N];
        let (ga, gb, gc) = (self.up::<I>(&a)?, self.up::<I>(&b)?, self.up::<O>(&c)?);
        let (ca, cb) = (self.tensor(&a)?, self.tensor(&b)?);
        let cases = [
            (false, false, 0.75, 0.5, false),
            (false, true, 0.75, 0.5, false),
            (true, false, 0.75, 0.5, false),
            (true, true, 0.75, 0.5, false),
            (false, true, 1.25, -0.5, true),
            (true, false, 1.0, 0.0, true),
        ];
        for (transpose_a, transpose_b, alpha, beta, apart) in cases {
            let shape = Gemm {
                batch: BATCH,
                m: M,
                n: N,
                k: K,
                transpose_a,
                transpose_b,
                alpha,
                beta,
            };
            let gd = self.up::<O>(if apart { &nans } else { &c })?;
            let (d, a, b, c_apart) = (gd.view(), ga.view(), gb.view(), apart.then(|| gc.view()));
            matmul.gemm(d, a, b, c_apart, shape)?;
            if beta == 0.0 {
                // Idempotent with β = 0: the same call again must find its plan made.
                let plans = matmul.plans();
                matmul.gemm(d, a, b, c_apart, shape)?;
                ensure!(
                    matmul.plans() == plans,
                    "repeating a matrix product made a new plan instead of reusing its own"
                );
            }
            // The CPU accumulates into its output: C there, whether the GPU's C is apart or not.
            let cout = self.tensor(&c)?;
            self.cpu.gemm(cout, ca, cb, shape)?;
            let kernel = format!(
                "gemm {}→{} {}{} α={alpha} β={beta}{}",
                I::NAME,
                O::NAME,
                label(transpose_a),
                label(transpose_b),
                if apart { ", C apart from D" } else { "" }
            );
            let gpu = self.down(&gd)?;
            self.compare(&kernel, "out", O::NAME, &gpu, cout)?;
        }
        Ok(())
    }

    fn newton_schulz(
        &mut self,
        gpu: &mut CudaBackend<f32>,
        rows: usize,
        cols: usize,
        count: usize,
        steps: usize,
        coefficients: NsCoefficients,
    ) -> Result<()> {
        let x = self.random::<f32>(count * rows * cols, 1.0);
        let mut results = Vec::new();
        for backend in [gpu as &mut dyn Backend, &mut self.cpu] {
            let t = backend.alloc(x.len(), BufferKind::Scratch)?;
            backend.write(t, &x)?;
            let scratch = NewtonSchulzScratch::new(backend, &[(rows, cols, count)])?;
            newton_schulz(backend, t, rows, cols, count, steps, coefficients, &scratch)?;
            results.push((backend.read(t)?, t));
        }
        let kernel = format!("newton_schulz {coefficients:?} {count}×{rows}×{cols}, {steps} steps");
        let (gpu_x, cpu_x) = (&results[0].0, results[1].1);
        self.compare(&kernel, "x", "f32", gpu_x, cpu_x)
    }
}
