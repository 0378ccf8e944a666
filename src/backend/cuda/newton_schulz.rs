//! Muon's Newton–Schulz on the GPU: all `count` matrices of one shape orthogonalised together,
//! through strided-batched cuBLASLt products, with the algorithm, coefficients and tall-matrix
//! handling of the CPU's [`crate::optim::newton_schulz`].
//!
//! In f32 with true f32 products (`CUBLAS_COMPUTE_32F`, not TF32), so that it can be checked
//! against the CPU at f32 tolerance; modded-nanogpt runs it in bf16, which would be faster and
//! is not here. cuBLASLt writes D = α·A·B + β·C with C apart from D, so the CPU's copies before
//! each accumulating product are not needed. Not yet run on a GPU.

use anyhow::{Result, ensure};
use cudarc::driver::CudaSlice;

use super::launch::Kernels;
use super::matmul::Matmul;
use super::view::{self, View, ViewOf};
use crate::optim::NsCoefficients;
use crate::optim::NsProducts;

/// Scratch space for one batch shape: two Gram-sized buffers and one the size of the input.
pub struct NewtonSchulz {
    rows: usize,
    cols: usize,
    count: usize,
    gram: CudaSlice<f32>,
    poly: CudaSlice<f32>,
    next: CudaSlice<f32>,
}

impl NewtonSchulz {
    /// Space for `count` matrices of `rows × cols`.
    pub fn new(kernels: &Kernels, rows: usize, cols: usize, count: usize) -> Result<NewtonSchulz> {
        ensure!(
            rows > 0 && cols > 0 && count > 0,
            "Newton–Schulz of {count} matrices of {rows}×{cols}: nothing to orthogonalise"
        );
        let small = rows.min(cols);
        let stream = kernels.stream();
        Ok(NewtonSchulz {
            rows,
            cols,
            count,
            gram: stream.alloc_zeros(count * small * small)?,
            poly: stream.alloc_zeros(count * small * small)?,
            next: stream.alloc_zeros(count * rows * cols)?,
        })
    }

    /// Replaces each of the `count` matrices in `x` by its approximate orthogonal factor, as
    /// [`crate::optim::newton_schulz`] does: Frobenius normalisation, then `steps` of
    /// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ (X ← a·X + X·(b·A + c·A²) with A = XᵀX when
    /// tall).
    pub fn run(
        &mut self,
        kernels: &Kernels,
        matmul: &mut Matmul,
        x: View<f32>,
        steps: usize,
        coefficients: NsCoefficients,
    ) -> Result<()> {
        coefficients.check_steps(steps)?;
        let (rows, cols, count) = (self.rows, self.cols, self.count);
        ensure!(
            x.len() == count * rows * cols,
            "Newton–Schulz input of {} elements, not {count} matrices of {rows}×{cols}",
            x.len()
        );
        let (eps, scale) = coefficients.normalisation();
        kernels.frobenius_normalize(&x, count, eps, scale)?;
        let (gram, poly) = (self.gram.view(), self.poly.view());
        // X alternates between the caller's buffer and `next`.
        let (mut current, mut other) = (x, self.next.view());
        for step in 0..steps {
            let products = NsProducts::new(rows, cols, count, coefficients.at(step));
            matmul.gemm(gram, current, current, None, products.gram)?;
            matmul.gemm(poly, gram, gram, Some(gram), products.poly)?;
            if products.tall {
                matmul.gemm(other, current, poly, Some(current), products.update)?;
            } else {
                matmul.gemm(other, poly, current, Some(current), products.update)?;
            }
            std::mem::swap(&mut current, &mut other);
        }
        if steps % 2 == 1 {
            // The result is in `next`: `current` is it and `other` the caller's buffer.
            view::copy(kernels.stream(), other, current)?;
        }
        Ok(())
    }
}
