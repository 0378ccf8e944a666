//! Fused (soft-capped) softmax cross-entropy: loss per row, and the logits' gradient written
//! over the logits, so the probabilities are never stored.

use rayon::prelude::*;

use super::{Real, expect_len};
use crate::backend::IGNORE_TARGET;

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
                z.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
            }
            let max = z.iter().copied().fold(F::neg_infinity(), F::max);
            let sum: F = z.iter().map(|&v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            *loss = lse - z[target];
            if let Some(scale) = grad_scale {
                for (j, zj) in z.iter_mut().enumerate() {
                    let p = (*zj - lse).exp();
                    let indicator = if j == target { F::one() } else { F::zero() };
                    let cap_slope = softcap.map_or(F::one(), |cap| {
                        let u = *zj / cap;
                        F::one() - u * u
                    });
                    *zj = scale * (p - indicator) * cap_slope;
                }
                padding.fill(F::zero());
            }
        });
}
