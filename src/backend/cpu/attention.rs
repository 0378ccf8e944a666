//! Causal self-attention (one task per sequence and head, its score matrix in a scratch buffer
//! of that task) and the rotary embedding.

use rayon::prelude::*;

use super::matmul::{Mat, gemm, gemm_raw};
use super::{Real, expect_len};
use crate::backend::AttentionShape;

/// A pointer that tasks share to write disjoint elements of one output.
#[derive(Clone, Copy)]
struct SharedOut<F>(*mut F);
// SAFETY: every task writes a set of elements no other task touches (see the callers).
unsafe impl<F> Send for SharedOut<F> {}
unsafe impl<F> Sync for SharedOut<F> {}

impl<F> SharedOut<F> {
    /// # Safety
    /// `offset` must lie within the allocation the pointer came from.
    unsafe fn at(self, offset: usize) -> *mut F {
        unsafe { self.0.add(offset) }
    }
}

/// The q, k or v block of head `h` of sequence `b` in `qkv` (rows of 3·C).
fn head<'a, F>(qkv: &'a [F], s: &AttentionShape, b: usize, part: usize, h: usize) -> Mat<'a, F> {
    let (t, c, hd) = (s.seq_len, s.channels, s.head_dim());
    let start = b * t * 3 * c + part * c + h * hd;
    Mat::strided(&qkv[start..], t, hd, 3 * c)
}

/// Offset of head `h` of sequence `b` in a (rows, `width`) tensor whose heads are `hd` wide.
fn head_offset(s: &AttentionShape, b: usize, h: usize, width: usize) -> usize {
    b * s.seq_len * width + h * s.head_dim()
}

fn scale<F: Real>(s: &AttentionShape) -> F {
    F::one() / F::of(s.head_dim() as f64).sqrt()
}

pub(super) fn forward<F: Real>(out: &mut [F], lse: &mut [F], qkv: &[F], s: AttentionShape) {
    let t = s.seq_len;
    expect_len("attention qkv", qkv.len(), s.rows() * 3 * s.channels);
    expect_len("attention output", out.len(), s.rows() * s.channels);
    expect_len("attention log-sum-exp", lse.len(), s.batch * s.heads * t);
    expect_len("attention head width", s.head_dim() * s.heads, s.channels);
    let out = SharedOut(out.as_mut_ptr());
    // lse is (batch, heads, seq_len): one contiguous row of seq_len per task.
    lse.par_chunks_mut(t).enumerate().for_each_init(
        || vec![F::zero(); t * t],
        |probs, (task, lse)| {
            let (b, h) = (task / s.heads, task % s.heads);
            let (q, k, v) = (
                head(qkv, &s, b, 0, h),
                head(qkv, &s, b, 1, h),
                head(qkv, &s, b, 2, h),
            );
            gemm(probs, q, k.t(), scale(&s), None, false);
            for (i, row) in probs.chunks_exact_mut(t).enumerate() {
                let (visible, future) = row.split_at_mut(i + 1);
                let max = visible.iter().copied().fold(F::neg_infinity(), F::max);
                let mut sum = F::zero();
                for p in visible.iter_mut() {
                    *p = (*p - max).exp();
                    sum += *p;
                }
                visible.iter_mut().for_each(|p| *p /= sum);
                future.fill(F::zero());
                lse[i] = max + sum.ln();
            }
            // SAFETY: this task alone writes the columns of head h in the rows of sequence b.
            unsafe {
                let y = out.at(head_offset(&s, b, h, s.channels));
                gemm_raw(
                    y,
                    s.channels,
                    Mat::row_major(probs, t, t),
                    v,
                    F::one(),
                    None,
                    false,
                );
            }
        },
    );
}

pub(super) fn backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    out: &[F],
    lse: &[F],
    s: AttentionShape,
) {
    let (t, c, hd) = (s.seq_len, s.channels, s.head_dim());
    expect_len("attention qkv", qkv.len(), s.rows() * 3 * c);
    expect_len("attention qkv gradient", dqkv.len(), qkv.len());
    expect_len("attention output", out.len(), s.rows() * c);
    expect_len("attention output gradient", dout.len(), out.len());
    expect_len("attention log-sum-exp", lse.len(), s.batch * s.heads * t);
    expect_len("attention head width", hd * s.heads, c);
    let dqkv = SharedOut(dqkv.as_mut_ptr());
    let scale = scale::<F>(&s);
    lse.par_chunks(t).enumerate().for_each_init(
        || (vec![F::zero(); t * t], vec![F::zero(); t * t]),
        |(probs, dprobs), (task, lse)| {
            let (b, h) = (task / s.heads, task % s.heads);
            let (q, k, v) = (
                head(qkv, &s, b, 0, h),
                head(qkv, &s, b, 1, h),
                head(qkv, &s, b, 2, h),
            );
            let dy_start = head_offset(&s, b, h, c);
            let dy = Mat::strided(&dout[dy_start..], t, hd, c);
            // Recompute the probabilities from the saved log-sum-exp.
            gemm(probs, q, k.t(), scale, None, false);
            for (i, row) in probs.chunks_exact_mut(t).enumerate() {
                let (visible, future) = row.split_at_mut(i + 1);
                visible.iter_mut().for_each(|p| *p = (*p - lse[i]).exp());
                future.fill(F::zero());
            }
            gemm(dprobs, dy, v.t(), F::one(), None, false);
            // dS = P ∘ (dP − Σ_j dY·Y): the softmax backward, row by row.
            for i in 0..t {
                let row = dy_start + i * c;
                let dy_dot_y: F = (0..hd).map(|j| dout[row + j] * out[row + j]).sum();
                let p = &probs[i * t..(i + 1) * t];
                let dp = &mut dprobs[i * t..(i + 1) * t];
                dp.iter_mut()
                    .zip(p)
                    .for_each(|(d, &p)| *d = p * (*d - dy_dot_y));
            }
            let (probs, dscores) = (
                Mat::row_major(&probs[..], t, t),
                Mat::row_major(&dprobs[..], t, t),
            );
            // SAFETY: this task alone writes head h of q, k and v in the rows of sequence b.
            unsafe {
                let at = |part: usize| dqkv.at(head_offset(&s, b, h, 3 * c) + part * c);
                gemm_raw(at(0), 3 * c, dscores, k, scale, None, false);
                gemm_raw(at(1), 3 * c, dscores.t(), q, scale, None, false);
                gemm_raw(at(2), 3 * c, probs.t(), dy, F::one(), None, false);
            }
        },
    );
}

/// One query row against `len` cached keys and values, head by head.
pub(super) fn decode<F: Real>(
    out: &mut [F],
    qkv: &[F],
    keys: &[F],
    values: &[F],
    heads: usize,
    c: usize,
) {
    let hd = c / heads;
    let len = keys.len() / c;
    expect_len("decode qkv row", qkv.len(), 3 * c);
    expect_len("decode output", out.len(), c);
    expect_len("decode keys", keys.len(), len * c);
    expect_len("decode values", values.len(), len * c);
    expect_len("decode head width", hd * heads, c);
    let scale = F::one() / F::of(hd as f64).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(h, y)| {
        let q = &qkv[h * hd..(h + 1) * hd];
        let key = |j: usize| &keys[j * c + h * hd..][..hd];
        let value = |j: usize| &values[j * c + h * hd..][..hd];
        let dot = |a: &[F], b: &[F]| a.iter().zip(b).map(|(&x, &y)| x * y).sum::<F>();
        let scores: Vec<F> = (0..len).map(|j| dot(q, key(j)) * scale).collect();
        let max = scores.iter().copied().fold(F::neg_infinity(), F::max);
        let weights: Vec<F> = scores.iter().map(|&s| (s - max).exp()).collect();
        let sum: F = weights.iter().copied().sum();
        y.fill(F::zero());
        for (j, &w) in weights.iter().enumerate() {
            for (y, &v) in y.iter_mut().zip(value(j)) {
                *y += w / sum * v;
            }
        }
    });
}

/// Rotates each (i, i + head_dim/2) pair of every q and k head by angle t·θ_i, in place; the
/// inverse rotation (the transpose, for the backward pass) when `inverse`.
pub(super) fn rope<F: Real>(qkv: &mut [F], table: &[F], s: AttentionShape, inverse: bool) {
    let (c, hd) = (s.channels, s.head_dim());
    let half = hd / 2;
    let max_len = table.len() / hd;
    expect_len("rope table", table.len(), max_len * hd);
    expect_len("rope qkv", qkv.len(), s.rows() * 3 * c);
    assert!(s.seq_len <= max_len, "rope table shorter than the sequence");
    qkv.par_chunks_mut(3 * c).enumerate().for_each(|(row, x)| {
        let pos = row % s.seq_len;
        let (cos, sin) = table[pos * hd..(pos + 1) * hd].split_at(half);
        for head in x[..2 * c].chunks_exact_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                let sin = if inverse { -sin[i] } else { sin[i] };
                x1[i] = a * cos[i] + b * sin;
                x2[i] = b * cos[i] - a * sin;
            }
        }
    });
}
