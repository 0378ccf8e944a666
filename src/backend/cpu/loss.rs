//! Fused (soft-capped) softmax cross-entropy: loss per row, and the logits' gradient written
//! over the logits, so the probabilities are never stored.

use rayon::prelude::*;

use super::{Real, expect_len};
use crate::backend::IGNORE_TARGET;

/// Logits per block of vectorised exponentials.
const EXP_BLOCK: usize = 256;

pub(super) fn softmax_cross_entropy<F: Real>(
    logits: &mut [F],
    losses: &mut [F],
    targets: &[u32],
    vocab: usize,
    padded_vocab: usize,
    softcap: Option<F>,
    grad_scale: Option<F>,
) {
    expect_len(
        "cross-entropy logits",
        logits.len(),
        targets.len() * padded_vocab,
    );
    expect_len("cross-entropy losses", losses.len(), targets.len());
    assert!(vocab <= padded_vocab, "vocabulary larger than its padding");
    logits
        .par_chunks_mut(padded_vocab)
        .zip(losses.par_iter_mut().zip(targets.par_iter()))
        .for_each(|(z, (loss, &target))| {
            if target == IGNORE_TARGET {
                *loss = F::zero();
                if grad_scale.is_some() {
                    z.fill(F::zero());
                }
                return;
            }
            let target = target as usize;
            assert!(
                target < vocab,
                "target token {target} outside vocabulary {vocab}"
            );
            let (z, padding) = z.split_at_mut(vocab);
            // Soft-cap in place: z ← cap·tanh(z/cap); the gradient needs only the capped value,
            // since d(cap·tanh(x/cap))/dx = 1 − (capped/cap)².
            if let Some(cap) = softcap {
                z.iter_mut().for_each(|z| *z /= cap);
                F::tanh_in_place(z);
                z.iter_mut().for_each(|z| *z *= cap);
            }
            let max = z.iter().copied().fold(F::neg_infinity(), F::max);
            // The exponentials go through a block on the stack, so that they run vectorised.
            let mut exps = [F::zero(); EXP_BLOCK];
            let mut sum = F::zero();
            for block in z.chunks(EXP_BLOCK) {
                let e = &mut exps[..block.len()];
                e.iter_mut().zip(block).for_each(|(e, &v)| *e = v - max);
                F::exp_in_place(e);
                sum += e.iter().copied().sum();
            }
            let lse = max + sum.ln();
            *loss = lse - z[target];
            if let Some(scale) = grad_scale {
                for (start, block) in (0..).step_by(EXP_BLOCK).zip(z.chunks_mut(EXP_BLOCK)) {
                    let p = &mut exps[..block.len()];
                    p.iter_mut().zip(&*block).for_each(|(p, &v)| *p = v - lse);
                    F::exp_in_place(p);
                    for (j, (zj, &p)) in (start..).zip(block.iter_mut().zip(&*p)) {
                        let indicator = if j == target { F::one() } else { F::zero() };
                        let cap_slope = softcap.map_or(F::one(), |cap| {
                            let u = *zj / cap;
                            F::one() - u * u
                        });
                        *zj = scale * (p - indicator) * cap_slope;
                    }
                }
                padding.fill(F::zero());
            }
        });
}
