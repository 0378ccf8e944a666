//! Dense symmetric eigendecomposition and QR for the matrix preconditioners, through cuSOLVER's
//! dense API (cudarc's `cusolver` result and sys level), on the backend's one stream.
//!
//! Precision: like the CPU (src/backend/cpu/linalg.rs), every matrix is solved in f64: a kernel
//! widens the f32 matrix into an f64 work matrix, `cusolverDnDsyevd` (divide and conquer) or
//! `cusolverDnDgeqrf` + `cusolverDnDorgqr` work on it, and kernels round the results back to
//! f32. Shampoo's inverse fourth roots of ill-conditioned factors need the precision, and the
//! widening costs a copy next to an O(n³) solve. The matrices of a batch are solved one after the
//! other through one work space of one matrix, grown to its high-water mark and kept, so that a
//! call allocates nothing once the largest shape has been seen.
//!
//! Layout: cuSOLVER is column-major. A row-major symmetric matrix reads the same, with the
//! row-major lower triangle (the one the trait promises to read) as the column-major upper one;
//! the eigenvectors come back as columns of the column-major matrix, which `narrow_transposed`
//! writes as the columns of the row-major output. For QR, `gather_columns` builds the
//! column-major matrix whose column k is column `order[k]` of the row-major input (so cuSOLVER
//! factors A·P, not Aᵀ), and `scatter_columns` writes Q's column k back to column `order[k]`.
//!
//! Each call checks cuSOLVER's `devInfo` of every matrix after the batch (one small download,
//! which waits for the stream) and names the matrix whose solve failed.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cudarc::cusolver::result::{self, CusolverError};
use cudarc::cusolver::sys;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use super::launch::{Kernels, expect_len};
use super::view::{self, View, ViewOf};

fn cusolver(what: String) -> impl FnOnce(CusolverError) -> anyhow::Error {
    move |error| anyhow!("cuSOLVER failed while {what}: {error}")
}

/// Whether libcusolver can be loaded (cudarc would panic on its first call otherwise).
pub fn present() -> bool {
    // SAFETY: only tries to dlopen the library's candidate names.
    unsafe { sys::is_culib_present() }
}

/// A cuSOLVER dense handle bound to the backend's stream, and the work space of its calls.
pub struct Solver {
    handle: sys::cusolverDnHandle_t,
    stream: Arc<CudaStream>,
    /// One f64 matrix, its eigenvalues or Householder scalars, then cuSOLVER's work space.
    work: Option<CudaSlice<f64>>,
    /// `devInfo` of each solve of a batch.
    infos: Option<CudaSlice<i32>>,
    /// The ranking scores of `orthonormalize`'s columns, and the column orders made from them.
    scores: Option<CudaSlice<f32>>,
    order: Option<CudaSlice<i32>>,
}

/// `slot` grown to at least `len` elements (the old allocation freed in stream order: work
/// queued on it finishes first), and its first `len` as a view.
fn grow<T: DeviceRepr + ValidAsZeroBits>(
    slot: &mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<View<T>> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None;
        *slot = Some(stream.alloc_zeros::<T>(len).with_context(|| {
            format!(
                "cannot allocate {:.1} MiB on the GPU for {what}",
                (len * std::mem::size_of::<T>()) as f64 / (1 << 20) as f64
            )
        })?);
    }
    slot.as_ref().expect("allocated above").view().slice(0, len)
}

/// The column order `orthonormalize` takes for one matrix: by decreasing score, stably, with the
/// CPU's comparison (src/backend/cpu/linalg.rs), so equal scores keep their order there and here.
pub fn rank_columns(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

impl Solver {
    /// A handle on `stream`; an error, not cudarc's panic, where libcusolver cannot be loaded.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Solver> {
        if !present() {
            bail!(
                "cuSOLVER (libcusolver.so.13, or .12) cannot be loaded, and Shampoo and SOAP need \
                 it on the GPU: install CUDA's cuSOLVER (e.g. pip install nvidia-cusolver, with \
                 the cuBLAS, cuSPARSE and nvJitLink libraries it links to) and put its lib \
                 directory on LD_LIBRARY_PATH, or train with --device cpu"
            );
        }
        stream
            .context()
            .bind_to_thread()
            .context("cannot make the GPU's context current")?;
        let handle = result::dn_create().map_err(cusolver("creating its handle".into()))?;
        let solver = Solver {
            handle,
            stream: stream.clone(),
            work: None,
            infos: None,
            scores: None,
            order: None,
        };
        // SAFETY: a live handle and the backend's live stream (kept alive by `solver.stream`).
        unsafe { result::dn_set_stream(handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(cusolver("setting its stream".into()))?;
        // Left at cuSOLVER's default, deterministic results (cusolverDnSetDeterministicMode
        // exists only from CUDA 12.2, and cudarc would panic on an older library without it).
        Ok(solver)
    }

    /// Bytes of device memory the work space holds now.
    pub fn bytes(&self) -> usize {
        self.work.as_ref().map_or(0, |s| s.len() * 8)
            + self.infos.as_ref().map_or(0, |s| s.len() * 4)
            + self.scores.as_ref().map_or(0, |s| s.len() * 4)
            + self.order.as_ref().map_or(0, |s| s.len() * 4)
    }

    /// Eigenvalues (ascending) and eigenvectors (the columns of each row-major matrix) of
    /// `batch` symmetric `n × n` matrices; see [`crate::backend::Backend::symmetric_eigen`].
    pub fn symmetric_eigen(
        &mut self,
        kernels: &Kernels,
        matrices: &View<f32>,
        n: usize,
        batch: usize,
        eigenvalues: &View<f32>,
        eigenvectors: &View<f32>,
    ) -> Result<()> {
        let nn = n * n;
        expect_len("eigen input", matrices.len(), batch * nn)?;
        expect_len("eigenvalues", eigenvalues.len(), batch * n)?;
        expect_len("eigenvectors", eigenvectors.len(), batch * nn)?;
        if n == 0 || batch == 0 {
            return Ok(());
        }
        let n32 = i32::try_from(n).context("an eigendecomposition beyond i32 rows")?;
        let (jobz, uplo) = (
            sys::cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR,
            // The row-major lower triangle, read column-major.
            sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER,
        );
        let matrix = grow(&mut self.work, &self.stream, nn + n, "the eigensolver")?;
        let mut lwork = 0;
        // SAFETY: a live handle; the pointers are device memory of n·n and n doubles, which the
        // size query does not touch.
        unsafe {
            sys::cusolverDnDsyevd_bufferSize(
                self.handle,
                jobz,
                uplo,
                n32,
                matrix.address() as *const f64,
                n32,
                (matrix.address() + (nn * 8) as u64) as *const f64,
                &mut lwork,
            )
        }
        .result()
        .map_err(cusolver(format!(
            "sizing the work space of a {n} × {n} syevd"
        )))?;
        let lwork_len = usize::try_from(lwork).context("negative syevd work space")?;
        let work = grow(
            &mut self.work,
            &self.stream,
            nn + n + lwork_len,
            "the eigensolver",
        )?;
        let (a, w, scratch) = (
            work.slice(0, nn)?,
            work.slice(nn, n)?,
            work.slice(nn + n, lwork_len)?,
        );
        let infos = grow(&mut self.infos, &self.stream, batch, "solver status")?;
        for b in 0..batch {
            kernels.widen(&a, &matrices.slice(b * nn, nn)?)?;
            // SAFETY: a live handle on the stream the kernels use; `a` holds n·n doubles, `w`
            // n, `scratch` lwork, and infos[b] is one int, all in live allocations.
            unsafe {
                sys::cusolverDnDsyevd(
                    self.handle,
                    jobz,
                    uplo,
                    n32,
                    a.address() as *mut f64,
                    n32,
                    w.address() as *mut f64,
                    scratch.address() as *mut f64,
                    lwork,
                    infos.slice(b, 1)?.address() as *mut i32,
                )
            }
            .result()
            .map_err(cusolver(format!(
                "decomposing symmetric matrix {b} of {batch} ({n} × {n}, syevd)"
            )))?;
            kernels.narrow(&eigenvalues.slice(b * n, n)?, &w)?;
            kernels.narrow_transposed(&eigenvectors.slice(b * nn, nn)?, &a, n)?;
        }
        let infos = view::download(&self.stream, infos.slice(0, batch)?)?;
        for (b, &info) in infos.iter().enumerate() {
            ensure!(
                info <= 0,
                "symmetric eigendecomposition failed: no convergence for matrix {b} of {batch} \
                 ({n} × {n}; cuSOLVER syevd: {info} off-diagonal elements did not converge)"
            );
            ensure!(
                info == 0,
                "symmetric eigendecomposition of matrix {b} of {batch} ({n} × {n}): cuSOLVER \
                 syevd rejected its parameter {}",
                -info
            );
        }
        Ok(())
    }

    /// Replaces each of `batch` row-major `n × n` matrices by the Q of its QR decomposition,
    /// columns ranked by `rank_by`; see [`crate::backend::Backend::orthonormalize`].
    pub fn orthonormalize(
        &mut self,
        kernels: &Kernels,
        matrices: &View<f32>,
        n: usize,
        batch: usize,
        rank_by: Option<&View<f32>>,
    ) -> Result<()> {
        let nn = n * n;
        expect_len("orthonormalize input", matrices.len(), batch * nn)?;
        if let Some(rank_by) = rank_by {
            expect_len("orthonormalize ranking", rank_by.len(), batch * nn)?;
        }
        if n == 0 || batch == 0 {
            return Ok(());
        }
        let n32 = i32::try_from(n).context("a QR decomposition beyond i32 rows")?;

        // The ranking: ⟨rank_by_j, A_j⟩ per column on the GPU (in the CPU's order and
        // roundings), then downloaded (batch·n floats) and sorted on the host with the CPU's
        // comparison, and the orders uploaded (which waits for the copy).
        let order = match rank_by {
            None => None,
            Some(rank_by) => {
                let scores = grow(&mut self.scores, &self.stream, batch * n, "column scores")?;
                kernels.column_scores(&scores, matrices, rank_by, n, batch)?;
                let scores = view::download(&self.stream, scores)?;
                let order: Vec<i32> = scores
                    .chunks(n)
                    .flat_map(rank_columns)
                    .map(|j| j as i32)
                    .collect();
                let device = grow(&mut self.order, &self.stream, batch * n, "column orders")?;
                view::upload(&self.stream, device, &order)?;
                Some(device)
            }
        };

        let matrix = grow(&mut self.work, &self.stream, nn + n, "QR")?;
        let (a, tau) = (matrix.slice(0, nn)?, matrix.slice(nn, n)?);
        let (mut lwork_geqrf, mut lwork_orgqr) = (0, 0);
        // SAFETY: a live handle; the pointers are device memory of n·n and n doubles, which the
        // size queries do not touch.
        unsafe {
            sys::cusolverDnDgeqrf_bufferSize(
                self.handle,
                n32,
                n32,
                a.address() as *mut f64,
                n32,
                &mut lwork_geqrf,
            )
            .result()
            .map_err(cusolver(format!(
                "sizing the work space of a {n} × {n} geqrf"
            )))?;
            sys::cusolverDnDorgqr_bufferSize(
                self.handle,
                n32,
                n32,
                n32,
                a.address() as *const f64,
                n32,
                tau.address() as *const f64,
                &mut lwork_orgqr,
            )
            .result()
            .map_err(cusolver(format!(
                "sizing the work space of a {n} × {n} orgqr"
            )))?;
        }
        let lwork = lwork_geqrf.max(lwork_orgqr);
        let lwork_len = usize::try_from(lwork).context("negative QR work space")?;
        let work = grow(&mut self.work, &self.stream, nn + n + lwork_len, "QR")?;
        let (a, tau, scratch) = (
            work.slice(0, nn)?,
            work.slice(nn, n)?,
            work.slice(nn + n, lwork_len)?,
        );
        // Two statuses per matrix: geqrf's, then orgqr's.
        let infos = grow(&mut self.infos, &self.stream, 2 * batch, "solver status")?;
        for b in 0..batch {
            let m = matrices.slice(b * nn, nn)?;
            let order = order.map(|o| o.slice(b * n, n)).transpose()?;
            kernels.gather_columns(&a, &m, order.as_ref(), n)?;
            // SAFETY: a live handle on the stream the kernels use; `a` holds n·n doubles, `tau`
            // n, `scratch` lwork, and each info one int, all in live allocations.
            unsafe {
                sys::cusolverDnDgeqrf(
                    self.handle,
                    n32,
                    n32,
                    a.address() as *mut f64,
                    n32,
                    tau.address() as *mut f64,
                    scratch.address() as *mut f64,
                    lwork,
                    infos.slice(2 * b, 1)?.address() as *mut i32,
                )
                .result()
                .map_err(cusolver(format!(
                    "factoring matrix {b} of {batch} ({n} × {n}, geqrf)"
                )))?;
                sys::cusolverDnDorgqr(
                    self.handle,
                    n32,
                    n32,
                    n32,
                    a.address() as *mut f64,
                    n32,
                    tau.address() as *const f64,
                    scratch.address() as *mut f64,
                    lwork,
                    infos.slice(2 * b + 1, 1)?.address() as *mut i32,
                )
                .result()
                .map_err(cusolver(format!(
                    "forming the Q of matrix {b} of {batch} ({n} × {n}, orgqr)"
                )))?;
            }
            kernels.scatter_columns(&m, &a, order.as_ref(), n)?;
        }
        let infos = view::download(&self.stream, infos.slice(0, 2 * batch)?)?;
        for (i, &info) in infos.iter().enumerate() {
            let (b, call) = (i / 2, ["geqrf", "orgqr"][i % 2]);
            ensure!(
                info == 0,
                "QR orthonormalisation of matrix {b} of {batch} ({n} × {n}): cuSOLVER {call} \
                 reported {info}"
            );
        }
        Ok(())
    }
}

impl Drop for Solver {
    fn drop(&mut self) {
        // SAFETY: created by dn_create and destroyed only here; queued work finishes first
        // (cusolverDnDestroy synchronises). An error here has nowhere to go.
        let _ = unsafe { result::dn_destroy(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::rank_columns;

    #[test]
    fn columns_rank_by_decreasing_score_keeping_ties_in_order() {
        assert_eq!(rank_columns(&[1.0, 3.0, 2.0, 3.0]), vec![1, 3, 2, 0]);
        assert_eq!(rank_columns(&[]), Vec::<usize>::new());
    }
}
