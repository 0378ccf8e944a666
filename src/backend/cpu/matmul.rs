//! Matrix products through the `gemm` crate: the linear layers and the batched products the
//! optimizers use.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Real, expect_len};
use crate::backend::Gemm;

/// A read-only strided matrix view: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, F> {
    data: &'a [F],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, F> Mat<'a, F> {
    pub fn row_major(data: &'a [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows of `cols` contiguous elements, `row_stride` apart (a column block of a wider matrix).
    pub fn strided(data: &'a [F], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * row_stride + cols <= data.len(),
            "{rows}×{cols} matrix with row stride {row_stride} does not fit in {} elements",
            data.len()
        );
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// `dst = scale·a·b + keep·dst`, with `dst` row-major with row stride `dst_stride`, starting at
/// the pointer; `keep = None` overwrites `dst` without reading it.
///
/// # Safety
/// `dst` must be valid for writes of the `a.rows × b.cols` block it addresses, and no other
/// thread may access those elements during the call.
pub(super) unsafe fn gemm_raw<F: Real>(
    dst: *mut F,
    dst_stride: usize,
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    scale: F,
    keep: Option<F>,
    parallel: bool,
) {
    assert_eq!(
        a.cols, b.rows,
        "inner dimensions of a matrix product differ"
    );
    let parallelism = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: `a` and `b` were checked to fit their slices; `dst` is the caller's promise.
    // The gemm crate computes dst := alpha·dst + beta·lhs·rhs (alpha unused unless read_dst).
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            dst_stride as isize,
            keep.is_some(),
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            keep.unwrap_or(F::zero()),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Safe form of [`gemm_raw`] for a packed row-major `dst`.
pub(super) fn gemm<F: Real>(
    dst: &mut [F],
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    scale: F,
    keep: Option<F>,
    parallel: bool,
) {
    assert_eq!(dst.len(), a.rows * b.cols, "matrix product output size");
    // SAFETY: `dst` is an exclusive slice of exactly the block written.
    unsafe { gemm_raw(dst.as_mut_ptr(), b.cols, a, b, scale, keep, parallel) }
}

/// Row strides that are a multiple of this many bytes put the rows a product packs together
/// into the same L1 cache sets; such a weight is read through a copy with padded rows.
const ALIASING_STRIDE_BYTES: usize = 4096;
/// The padding: one cache line.
const ROW_PADDING_BYTES: usize = 64;

/// `out (rows, out_dim) = inp (rows, in_dim) · weight (out_dim, in_dim)ᵀ + bias`. `scratch`
/// holds the padded copy of a weight whose row stride aliases in the cache (GPT-2's MLP
/// projection, 3072 floats = 3 × 4 KiB: the product ran at half speed on it, and the copy
/// costs far less than it saves).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<F: Real>(
    out: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    scratch: &mut Vec<F>,
) {
    expect_len("matmul input", inp.len(), rows * in_dim);
    expect_len("matmul weight", weight.len(), out_dim * in_dim);
    expect_len("matmul output", out.len(), rows * out_dim);
    let x = Mat::row_major(inp, rows, in_dim);
    let size = std::mem::size_of::<F>();
    let w = if in_dim > 0 && (in_dim * size).is_multiple_of(ALIASING_STRIDE_BYTES) {
        let stride = in_dim + ROW_PADDING_BYTES / size;
        scratch.resize(out_dim * stride, F::zero());
        (scratch
            .par_chunks_mut(stride)
            .zip(weight.par_chunks(in_dim)))
        .for_each(|(padded, row)| padded[..in_dim].copy_from_slice(row));
        Mat::strided(scratch, out_dim, in_dim, stride)
    } else {
        Mat::row_major(weight, out_dim, in_dim)
    };
    let keep = bias.map(|bias| {
        expect_len("matmul bias", bias.len(), out_dim);
        out.par_chunks_mut(out_dim)
            .for_each(|row| row.copy_from_slice(bias));
        F::one()
    });
    gemm(out, x, w.t(), F::one(), keep, true);
}

/// `dinp = dout · weight`, `dweight += doutᵀ · inp`, `dbias += Σ_rows dout`.
pub(super) fn backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    weight: &[F],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    expect_len("matmul input", inp.len(), rows * in_dim);
    expect_len("matmul input gradient", dinp.len(), rows * in_dim);
    expect_len("matmul weight", weight.len(), out_dim * in_dim);
    expect_len("matmul weight gradient", dweight.len(), out_dim * in_dim);
    expect_len("matmul output gradient", dout.len(), rows * out_dim);
    let dy = Mat::row_major(dout, rows, out_dim);
    let x = Mat::row_major(inp, rows, in_dim);
    let w = Mat::row_major(weight, out_dim, in_dim);
    gemm(dinp, dy, w, F::one(), None, true);
    gemm(dweight, dy.t(), x, F::one(), Some(F::one()), true);
    if let Some(dbias) = dbias {
        expect_len("matmul bias gradient", dbias.len(), out_dim);
        add_column_sums(dbias, dout, out_dim);
    }
}

/// `dst += Σ_rows m` for a row-major matrix `m` of `cols` columns, summed in fixed blocks of
/// rows (in parallel) whose partial sums are added in order: deterministic for any thread count.
pub(super) fn add_column_sums<F: Real>(dst: &mut [F], m: &[F], cols: usize) {
    const BLOCK_ROWS: usize = 64;
    let partials: Vec<Vec<F>> = m
        .par_chunks(BLOCK_ROWS * cols)
        .map(|block| {
            let mut sum = vec![F::zero(); cols];
            for row in block.chunks_exact(cols) {
                sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
            }
            sum
        })
        .collect();
    for partial in &partials {
        dst.iter_mut().zip(partial).for_each(|(d, &p)| *d += p);
    }
}

/// The batched product of [`Gemm`]: matrices of one batch entry are packed back to back.
pub(super) fn batched<F: Real>(out: &mut [F], a: &[F], b: &[F], shape: Gemm) {
    let Gemm {
        batch,
        m,
        n,
        k,
        transpose_a,
        transpose_b,
        alpha,
        beta,
    } = shape;
    assert!(
        out.len() == batch * m * n && a.len() == batch * m * k && b.len() == batch * k * n,
        "batched gemm operand sizes do not match {shape:?}"
    );
    let (alpha, keep) = (
        F::of(alpha as f64),
        (beta != 0.0).then(|| F::of(beta as f64)),
    );
    let product = |(i, out): (usize, &mut [F])| {
        let a = &a[i * m * k..(i + 1) * m * k];
        let b = &b[i * k * n..(i + 1) * k * n];
        let a = if transpose_a {
            Mat::row_major(a, k, m).t()
        } else {
            Mat::row_major(a, m, k)
        };
        let b = if transpose_b {
            Mat::row_major(b, n, k).t()
        } else {
            Mat::row_major(b, k, n)
        };
        gemm(out, a, b, alpha, keep, batch == 1);
    };
    if batch == 1 {
        product((0, out));
    } else {
        out.par_chunks_mut(m * n).enumerate().for_each(product);
    }
}
