//! LayerNorm, RMSNorm and QK-norm, forward and backward, one row per task.

use rayon::prelude::*;

use super::{Real, expect_len};

const LAYERNORM_EPS: f64 = 1e-5;
const RMSNORM_EPS: f64 = 1e-6;
/// Rows per task in the backward passes that also reduce over rows.
const BLOCK_ROWS: usize = 32;

fn mean<F: Real>(x: &[F]) -> F {
    x.iter().copied().sum::<F>() / F::of(x.len() as f64)
}

pub(super) fn layernorm_forward<F: Real>(
    out: &mut [F],
    mean_out: &mut [F],
    rstd_out: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: &[F],
    c: usize,
) {
    let rows = inp.len() / c;
    expect_len("layernorm input", inp.len(), rows * c);
    expect_len("layernorm output", out.len(), inp.len());
    expect_len("layernorm mean", mean_out.len(), rows);
    expect_len("layernorm rstd", rstd_out.len(), rows);
    expect_len("layernorm weight", weight.len(), c);
    expect_len("layernorm bias", bias.len(), c);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean_out.par_iter_mut().zip(rstd_out.par_iter_mut()))
        .for_each(|((y, x), (m, r))| {
            let mu = mean(x);
            let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<F>() / F::of(c as f64);
            let rstd = F::one() / (var + F::of(LAYERNORM_EPS)).sqrt();
            for i in 0..c {
                y[i] = (x[i] - mu) * rstd * weight[i] + bias[i];
            }
            (*m, *r) = (mu, rstd);
        });
}

/// `dinp += ∂L/∂inp`, `dweight += Σ dout·x̂`, `dbias += Σ dout`.
pub(super) fn layernorm_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    mean_in: &[F],
    rstd_in: &[F],
    c: usize,
) {
    let rows = inp.len() / c;
    expect_len("layernorm input", inp.len(), rows * c);
    expect_len("layernorm input gradient", dinp.len(), inp.len());
    expect_len("layernorm output gradient", dout.len(), inp.len());
    expect_len("layernorm mean", mean_in.len(), rows);
    expect_len("layernorm rstd", rstd_in.len(), rows);
    for (what, len) in [
        ("layernorm weight", weight.len()),
        ("layernorm weight gradient", dweight.len()),
        ("layernorm bias gradient", dbias.len()),
    ] {
        expect_len(what, len, c);
    }
    // Each block of rows returns its partial [dweight | dbias]; partials are added in order.
    let partials: Vec<Vec<F>> = dinp
        .par_chunks_mut(BLOCK_ROWS * c)
        .enumerate()
        .map(|(block, dinp)| {
            let mut partial = vec![F::zero(); 2 * c];
            let (pw, pb) = partial.split_at_mut(c);
            for (j, dx) in dinp.chunks_exact_mut(c).enumerate() {
                let row = block * BLOCK_ROWS + j;
                let x = &inp[row * c..(row + 1) * c];
                let dy = &dout[row * c..(row + 1) * c];
                let (mu, rstd) = (mean_in[row], rstd_in[row]);
                let xhat = |i: usize| (x[i] - mu) * rstd;
                let mut dnorm_mean = F::zero();
                let mut dnorm_xhat_mean = F::zero();
                for i in 0..c {
                    let dnorm = dy[i] * weight[i];
                    dnorm_mean += dnorm;
                    dnorm_xhat_mean += dnorm * xhat(i);
                    pw[i] += dy[i] * xhat(i);
                    pb[i] += dy[i];
                }
                dnorm_mean /= F::of(c as f64);
                dnorm_xhat_mean /= F::of(c as f64);
                for i in 0..c {
                    let dnorm = dy[i] * weight[i];
                    dx[i] += rstd * (dnorm - dnorm_mean - xhat(i) * dnorm_xhat_mean);
                }
            }
            partial
        })
        .collect();
    for partial in &partials {
        let (pw, pb) = partial.split_at(c);
        dweight.iter_mut().zip(pw).for_each(|(d, &p)| *d += p);
        dbias.iter_mut().zip(pb).for_each(|(d, &p)| *d += p);
    }
}

/// `y = x / rms(x)`; returns 1/rms.
fn rms_normalize<F: Real>(y: &mut [F], x: &[F]) -> F {
    let mean_square = x.iter().map(|&v| v * v).sum::<F>() / F::of(x.len() as f64);
    let rstd = F::one() / (mean_square + F::of(RMSNORM_EPS)).sqrt();
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * rstd);
    rstd
}

/// The input gradient of `y = x / rms(x)`: `rstd·(dy − y·mean(dy·y))`, added to `dx` when
/// `accumulate`, else written.
fn rms_normalize_backward<F: Real>(dx: &mut [F], dy: &[F], x: &[F], rstd: F, accumulate: bool) {
    let n = F::of(x.len() as f64);
    let dy_dot_y = dy.iter().zip(x).map(|(&d, &x)| d * x * rstd).sum::<F>() / n;
    for i in 0..x.len() {
        let g = rstd * (dy[i] - x[i] * rstd * dy_dot_y);
        dx[i] = if accumulate { dx[i] + g } else { g };
    }
}

pub(super) fn rmsnorm_forward<F: Real>(out: &mut [F], rstd: &mut [F], inp: &[F], c: usize) {
    expect_len("rmsnorm input", inp.len(), rstd.len() * c);
    expect_len("rmsnorm output", out.len(), inp.len());
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter_mut())
        .for_each(|((y, x), r)| *r = rms_normalize(y, x));
}

pub(super) fn rmsnorm_backward<F: Real>(
    dinp: &mut [F],
    dout: &[F],
    inp: &[F],
    rstd: &[F],
    c: usize,
) {
    expect_len("rmsnorm input", inp.len(), rstd.len() * c);
    expect_len("rmsnorm input gradient", dinp.len(), inp.len());
    expect_len("rmsnorm output gradient", dout.len(), inp.len());
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c).zip(rstd.par_iter()))
        .for_each(|((dx, dy), (x, &r))| rms_normalize_backward(dx, dy, x, r, true));
}

/// Per row of `qkv` (3c wide): each q head and each k head normalised, v copied.
pub(super) fn qk_norm_forward<F: Real>(
    out: &mut [F],
    rstd: &mut [F],
    qkv: &[F],
    heads: usize,
    c: usize,
) {
    let hd = c / heads;
    let rows = qkv.len() / (3 * c);
    expect_len("qk-norm input", qkv.len(), rows * 3 * c);
    expect_len("qk-norm output", out.len(), qkv.len());
    expect_len("qk-norm rstd", rstd.len(), rows * 2 * heads);
    expect_len("qk-norm head width", hd * heads, c);
    out.par_chunks_mut(3 * c)
        .zip(qkv.par_chunks(3 * c))
        .zip(rstd.par_chunks_mut(2 * heads))
        .for_each(|((y, x), r)| {
            let (y_qk, y_v) = y.split_at_mut(2 * c);
            for (h, (yh, xh)) in y_qk
                .chunks_exact_mut(hd)
                .zip(x.chunks_exact(hd))
                .enumerate()
            {
                r[h] = rms_normalize(yh, xh);
            }
            y_v.copy_from_slice(&x[2 * c..]);
        });
}

pub(super) fn qk_norm_backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    rstd: &[F],
    heads: usize,
    c: usize,
) {
    let hd = c / heads;
    let rows = qkv.len() / (3 * c);
    expect_len("qk-norm input", qkv.len(), rows * 3 * c);
    expect_len("qk-norm input gradient", dqkv.len(), qkv.len());
    expect_len("qk-norm output gradient", dout.len(), qkv.len());
    expect_len("qk-norm rstd", rstd.len(), rows * 2 * heads);
    expect_len("qk-norm head width", hd * heads, c);
    dqkv.par_chunks_mut(3 * c)
        .zip(dout.par_chunks(3 * c))
        .zip(qkv.par_chunks(3 * c).zip(rstd.par_chunks(2 * heads)))
        .for_each(|((dx, dy), (x, r))| {
            let (dx_qk, dx_v) = dx.split_at_mut(2 * c);
            for (h, dxh) in dx_qk.chunks_exact_mut(hd).enumerate() {
                let span = h * hd..(h + 1) * hd;
                rms_normalize_backward(dxh, &dy[span.clone()], &x[span], r[h], false);
            }
            dx_v.copy_from_slice(&dy[2 * c..]);
        });
}
