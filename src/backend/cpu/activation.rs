//! Elementwise activations and the residual add.

use rayon::prelude::*;

use super::{CHUNK, Real};

/// √(2/π), for the tanh approximation of GELU.
const GELU_SCALE: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044715;

/// Runs `f` on matching chunks of `out` and `inp`, in parallel.
fn map_chunks<F: Real>(out: &mut [F], inp: &[F], f: impl Fn(&mut [F], &[F]) + Sync) {
    assert_eq!(out.len(), inp.len(), "elementwise operand sizes");
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(y, x)| f(y, x));
}

/// Runs `f` on matching chunks of `dinp`, `dout` and `inp`, in parallel.
fn map_chunks_backward<F: Real>(
    dinp: &mut [F],
    dout: &[F],
    inp: &[F],
    f: impl Fn(&mut [F], &[F], &[F]) + Sync,
) {
    assert!(
        dinp.len() == dout.len() && dinp.len() == inp.len(),
        "elementwise operand sizes"
    );
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(inp.par_chunks(CHUNK)))
        .for_each(|(dx, (dy, x))| f(dx, dy, x));
}

fn map<F: Real>(out: &mut [F], inp: &[F], f: impl Fn(F) -> F + Sync) {
    map_chunks(out, inp, |y, x| {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x))
    });
}

/// `dinp = dout · f'(inp)`.
fn map_backward<F: Real>(dinp: &mut [F], dout: &[F], inp: &[F], df: impl Fn(F) -> F + Sync) {
    map_chunks_backward(dinp, dout, inp, |dx, dy, x| {
        for i in 0..dx.len() {
            dx[i] = dy[i] * df(x[i]);
        }
    });
}

/// `t ← tanh(√(2/π)·(x + 0.044715·x³))` for every `x` of `inp`: the inner part of GELU,
/// batched so that the tanh runs vectorised.
fn gelu_tanh<F: Real>(t: &mut [F], x: &[F]) {
    let (s, k) = (F::of(GELU_SCALE), F::of(GELU_CUBIC));
    t.iter_mut()
        .zip(x)
        .for_each(|(t, &x)| *t = s * (x + k * x * x * x));
    F::tanh_in_place(t);
}

pub(super) fn gelu_forward<F: Real>(out: &mut [F], inp: &[F]) {
    let half = F::of(0.5);
    map_chunks(out, inp, |y, x| {
        gelu_tanh(y, x);
        y.iter_mut()
            .zip(x)
            .for_each(|(y, &x)| *y = half * x * (F::one() + *y));
    });
}

pub(super) fn gelu_backward<F: Real>(dinp: &mut [F], dout: &[F], inp: &[F]) {
    let (s, k) = (F::of(GELU_SCALE), F::of(GELU_CUBIC));
    let (half, three) = (F::of(0.5), F::of(3.0));
    map_chunks_backward(dinp, dout, inp, |dx, dy, x| {
        // dx holds the tanh until it is replaced by the gradient.
        gelu_tanh(dx, x);
        for i in 0..dx.len() {
            let (tanh, x) = (dx[i], x[i]);
            let sech2 = F::one() - tanh * tanh;
            dx[i] = dy[i]
                * (half * (F::one() + tanh)
                    + half * x * sech2 * s * (F::one() + three * k * x * x));
        }
    });
}

pub(super) fn relu2_forward<F: Real>(out: &mut [F], inp: &[F]) {
    map(out, inp, |x| {
        let r = x.max(F::zero());
        r * r
    });
}

pub(super) fn relu2_backward<F: Real>(dinp: &mut [F], dout: &[F], inp: &[F]) {
    let two = F::of(2.0);
    map_backward(dinp, dout, inp, |x| two * x.max(F::zero()));
}

pub(super) fn add<F: Real>(out: &mut [F], a: &[F], b: &[F]) {
    assert!(
        out.len() == a.len() && out.len() == b.len(),
        "add operand sizes"
    );
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for i in 0..y.len() {
                y[i] = a[i] + b[i];
            }
        });
}
