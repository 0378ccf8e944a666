//! Dense symmetric eigendecomposition and QR for the matrix preconditioners, through faer.
//!
//! Each matrix is converted to f64 (whatever the storage type: the inverse fourth roots of
//! ill-conditioned factors need the precision, and the cost is a copy next to an O(n³) solve),
//! decomposed sequentially, and the matrices of a batch run in parallel with rayon. Sequential
//! solves keep the results independent of the thread count.

use anyhow::{Result, anyhow};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::linalg::householder;
use faer::linalg::qr::no_pivoting::factor as qr;
use faer::{Conj, Mat, Par, diag::Diag};
use rayon::prelude::*;

use super::{Real, expect_len};

/// A row-major `n × n` matrix as an f64 faer matrix, columns taken in the order `columns`.
fn to_faer<F: Real>(m: &[F], n: usize, columns: impl Fn(usize) -> usize) -> Mat<f64> {
    Mat::from_fn(n, n, |i, j| m[i * n + columns(j)].f64())
}

pub(super) fn symmetric_eigen<F: Real>(
    matrices: &[F],
    n: usize,
    batch: usize,
    eigenvalues: &mut [F],
    eigenvectors: &mut [F],
) -> Result<()> {
    expect_len("eigen input", matrices.len(), batch * n * n);
    expect_len("eigenvalues", eigenvalues.len(), batch * n);
    expect_len("eigenvectors", eigenvectors.len(), batch * n * n);
    if n == 0 {
        return Ok(());
    }
    let par = Par::Seq;
    let scratch =
        evd::self_adjoint_evd_scratch::<f64>(n, ComputeEigenvectors::Yes, par, Default::default());
    eigenvalues
        .par_chunks_mut(n)
        .zip(eigenvectors.par_chunks_mut(n * n))
        .zip(matrices.par_chunks(n * n))
        .try_for_each(|((values, vectors), m)| {
            let a = to_faer(m, n, |j| j);
            let mut s = Diag::<f64>::zeros(n);
            let mut u = Mat::<f64>::zeros(n, n);
            let mut memory = MemBuffer::new(scratch);
            evd::self_adjoint_evd(
                a.as_ref(),
                s.as_mut(),
                Some(u.as_mut()),
                par,
                MemStack::new(&mut memory),
                Default::default(),
            )
            .map_err(|e| anyhow!("symmetric eigendecomposition failed: {e:?}"))?;
            for i in 0..n {
                values[i] = F::of(s[i]);
                for j in 0..n {
                    vectors[i * n + j] = F::of(u[(i, j)]);
                }
            }
            Ok(())
        })
}

pub(super) fn scale_eigenvectors<F: Real>(
    out: &mut [F],
    eigenvectors: &[F],
    eigenvalues: &[F],
    n: usize,
    batch: usize,
    exponent: F,
    eps: F,
) {
    expect_len("scaled eigenvectors", out.len(), batch * n * n);
    expect_len("eigenvectors", eigenvectors.len(), batch * n * n);
    expect_len("eigenvalues", eigenvalues.len(), batch * n);
    if n == 0 {
        return;
    }
    out.par_chunks_mut(n * n)
        .zip(eigenvectors.par_chunks(n * n))
        .zip(eigenvalues.par_chunks(n))
        .for_each(|((out, vectors), values)| {
            let scales: Vec<F> = values
                .iter()
                .map(|&l| (l.max(F::zero()) + eps).powf(exponent))
                .collect();
            for (out, vectors) in out.chunks_mut(n).zip(vectors.chunks(n)) {
                for ((o, &v), &s) in out.iter_mut().zip(vectors).zip(&scales) {
                    *o = v * s;
                }
            }
        });
}

pub(super) fn orthonormalize<F: Real>(
    matrices: &mut [F],
    n: usize,
    batch: usize,
    rank_by: Option<&[F]>,
) {
    expect_len("orthonormalize input", matrices.len(), batch * n * n);
    if let Some(rank_by) = rank_by {
        expect_len("orthonormalize ranking", rank_by.len(), batch * n * n);
    }
    if n == 0 {
        return;
    }
    let par = Par::Seq;
    let block = qr::recommended_block_size::<f64>(n, n);
    let scratch = StackReq::any_of(&[
        qr::qr_in_place_scratch::<f64>(n, n, block, par, Default::default()),
        householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            n, block, n,
        ),
    ]);
    matrices
        .par_chunks_mut(n * n)
        .enumerate()
        .for_each(|(index, m)| {
            // order[k]: the column taken k-th; by decreasing ⟨rank_by_j, A_j⟩ (stable).
            let mut order: Vec<usize> = (0..n).collect();
            if let Some(rank_by) = rank_by {
                let r = &rank_by[index * n * n..(index + 1) * n * n];
                let key = |j: usize| (0..n).map(|i| r[i * n + j] * m[i * n + j]).sum::<F>();
                let keys: Vec<F> = (0..n).map(key).collect();
                order.sort_by(|&a, &b| {
                    keys[b]
                        .partial_cmp(&keys[a])
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
            }
            let mut a = to_faer(m, n, |k| order[k]);
            let mut coefficients = Mat::<f64>::zeros(block, n);
            let mut memory = MemBuffer::new(scratch);
            let stack = MemStack::new(&mut memory);
            qr::qr_in_place(
                a.as_mut(),
                coefficients.as_mut(),
                par,
                stack,
                Default::default(),
            );
            let mut q = Mat::<f64>::identity(n, n);
            householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
                a.as_ref(),
                coefficients.as_ref(),
                Conj::No,
                q.as_mut(),
                par,
                stack,
            );
            for i in 0..n {
                for (k, &j) in order.iter().enumerate() {
                    m[i * n + j] = F::of(q[(i, k)]);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    //! Against the defining identities, checked with plain loops in f64.

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{orthonormalize, scale_eigenvectors, symmetric_eigen};

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// `a·b` for row-major `n × n` matrices, with either operand optionally transposed.
    fn product(a: &[f64], b: &[f64], n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let at = |i: usize, k: usize| if ta { a[k * n + i] } else { a[i * n + k] };
        let bt = |k: usize, j: usize| if tb { b[j * n + k] } else { b[k * n + j] };
        (0..n * n)
            .map(|e| (0..n).map(|k| at(e / n, k) * bt(k, e % n)).sum())
            .collect()
    }

    fn identity(n: usize) -> Vec<f64> {
        (0..n * n)
            .map(|e| if e / n == e % n { 1.0 } else { 0.0 })
            .collect()
    }

    fn max_difference(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// `batch` random symmetric positive definite matrices B·Bᵀ + 0.1·I.
    fn spd(n: usize, batch: usize, seed: u64) -> Vec<f64> {
        (0..batch)
            .flat_map(|i| {
                let b = random(n * n, seed + i as u64);
                let mut a = product(&b, &b, n, false, true);
                (0..n).for_each(|d| a[d * n + d] += 0.1);
                a
            })
            .collect()
    }

    #[test]
    fn eigenpairs_satisfy_av_equals_lambda_v_with_orthonormal_vectors_in_ascending_order() {
        let (n, batch) = (7, 3);
        let a = spd(n, batch, 1);
        let (mut values, mut vectors) = (vec![0.0; batch * n], vec![0.0; batch * n * n]);
        symmetric_eigen(&a, n, batch, &mut values, &mut vectors).unwrap();
        for i in 0..batch {
            let a = &a[i * n * n..(i + 1) * n * n];
            let v = &vectors[i * n * n..(i + 1) * n * n];
            let l = &values[i * n..(i + 1) * n];
            assert!(l.windows(2).all(|w| w[0] <= w[1]), "not ascending: {l:?}");
            let av = product(a, v, n, false, false);
            let v_lambda: Vec<f64> = (0..n * n).map(|e| v[e] * l[e % n]).collect();
            assert!(max_difference(&av, &v_lambda) < 1e-10, "A·V ≠ V·Λ");
            let vtv = product(v, v, n, true, false);
            assert!(max_difference(&vtv, &identity(n)) < 1e-10, "VᵀV ≠ I");
        }
    }

    #[test]
    fn scaled_eigenvectors_give_matrix_powers_of_the_positive_part() {
        // With exponent 1/2 and no ε, out·outᵀ rebuilds an SPD matrix; an indefinite one
        // (A − 2I, eigenvalues shifted below zero) comes back as its positive part, which
        // squares to the positive part of A².
        let n = 5;
        let a = spd(n, 1, 4);
        let mut shifted = a.clone();
        (0..n).for_each(|d| shifted[d * n + d] -= 2.0);
        for (m, want) in [(&a, a.clone()), (&shifted, Vec::new())] {
            let (mut values, mut vectors) = (vec![0.0; n], vec![0.0; n * n]);
            symmetric_eigen(m, n, 1, &mut values, &mut vectors).unwrap();
            let mut half = vec![0.0; n * n];
            scale_eigenvectors(&mut half, &vectors, &values, n, 1, 0.5, 0.0);
            let got = product(&half, &half, n, false, true);
            if want.is_empty() {
                assert!(values[0] < 0.0, "the shift should make A indefinite");
                // P = A₊ satisfies P·(A − P) = 0 and A − P ⪯ 0 (checked through P·A = P·P).
                let pa = product(&got, m, n, false, false);
                let pp = product(&got, &got, n, false, false);
                assert!(max_difference(&pa, &pp) < 1e-10, "A₊·A ≠ A₊²");
                let trace = |m: &[f64]| (0..n).map(|d| m[d * n + d]).sum::<f64>();
                assert!(trace(&got) > trace(m) + 0.1, "the negative part was kept");
            } else {
                assert!(max_difference(&got, &want) < 1e-10, "A^½·A^½ ≠ A");
            }
        }
    }

    /// Checks QᵀQ = I and that R = Qᵀ·A (columns of A taken in `order`) is upper triangular,
    /// i.e. Q·R = A·P for the column permutation P.
    fn assert_qr(q: &[f64], a: &[f64], n: usize, order: &[usize]) {
        let qtq = product(q, q, n, true, false);
        assert!(max_difference(&qtq, &identity(n)) < 1e-12, "QᵀQ ≠ I");
        let permute =
            |m: &[f64]| -> Vec<f64> { (0..n * n).map(|e| m[e / n * n + order[e % n]]).collect() };
        let (q, a) = (permute(q), permute(a));
        let r = product(&q, &a, n, true, false);
        for i in 0..n {
            for j in 0..i {
                assert!(r[i * n + j].abs() < 1e-12, "R[{i},{j}] = {}", r[i * n + j]);
            }
        }
        let qr = product(&q, &r, n, false, false);
        assert!(max_difference(&qr, &a) < 1e-12, "Q·R ≠ A");
    }

    #[test]
    fn orthonormalize_returns_the_q_of_a_qr_decomposition() {
        let (n, batch) = (6, 2);
        let a = random(batch * n * n, 7);
        let mut q = a.clone();
        orthonormalize(&mut q, n, batch, None);
        let order: Vec<usize> = (0..n).collect();
        for i in 0..batch {
            let span = i * n * n..(i + 1) * n * n;
            assert_qr(&q[span.clone()], &a[span], n, &order);
        }
    }

    #[test]
    fn ranked_orthonormalize_takes_columns_by_decreasing_rank_and_keeps_their_places() {
        let n = 6;
        let (a, rank_by) = (random(n * n, 8), random(n * n, 9));
        let mut q = a.clone();
        orthonormalize(&mut q, n, 1, Some(&rank_by));
        let key = |j: usize| {
            (0..n)
                .map(|i| a[i * n + j] * rank_by[i * n + j])
                .sum::<f64>()
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| key(y).total_cmp(&key(x)));
        assert_ne!(
            order,
            (0..n).collect::<Vec<_>>(),
            "a trivial ordering tests nothing"
        );
        assert_qr(&q, &a, n, &order);
    }

    #[test]
    fn zero_and_rank_deficient_inputs_still_give_orthonormal_bases() {
        // A factor is all zeros while its gradients are (behind a zero-initialised projection)
        // and rank-deficient for a while after: neither may produce NaNs.
        let n = 4;
        let zero = vec![0.0; n * n];
        let (mut values, mut vectors) = (vec![1.0; n], vec![0.0; n * n]);
        symmetric_eigen(&zero, n, 1, &mut values, &mut vectors).unwrap();
        assert_eq!(values, [0.0; 4]);
        let vtv = product(&vectors, &vectors, n, true, false);
        assert!(max_difference(&vtv, &identity(n)) < 1e-12, "VᵀV ≠ I");
        let column: Vec<f64> = (0..n * n)
            .map(|e| if e % n == 0 { e as f64 + 1.0 } else { 0.0 })
            .collect();
        let order: Vec<usize> = (0..n).collect();
        for a in [zero, column] {
            let mut q = a.clone();
            orthonormalize(&mut q, n, 1, None);
            assert_qr(&q, &a, n, &order);
        }
    }

    #[test]
    #[should_panic(expected = "eigenvectors: 8 elements where the shape needs 9")]
    fn eigen_rejects_an_output_of_another_shape() {
        let a = spd(3, 1, 2);
        symmetric_eigen(&a, 3, 1, &mut [0.0; 3], &mut [0.0; 8]).unwrap();
    }
}
