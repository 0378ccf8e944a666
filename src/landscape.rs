//! Loss-landscape projections, as in Li et al., "Visualizing the Loss Landscape of Neural Nets"
//! (2018): the loss along a line L(w₀ + α·d) or on a plane L(w₀ + α·d₁ + β·d₂) through the
//! weights w₀ of a checkpoint.
//!
//! Random directions are filter-normalised per tensor: a Gaussian direction is drawn for every
//! parameter, then each tensor's part of it is scaled to the norm of the weight tensor it
//! perturbs, so that α = 1 moves every tensor by its own size and directions compare across
//! layers and models (a tensor whose weights are all zero gets no perturbation). The direction
//! towards a second checkpoint is w₁ − w₀, unscaled: α = 1 reaches w₁.

use std::ops::Range;

use anyhow::{Result, ensure};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::Backend;
use crate::data::ValData;
use crate::model::{Gpt, Pass};
use crate::progress::Progress;

/// Something whose loss can be evaluated at a flat parameter vector.
pub trait Objective {
    fn loss(&mut self, params: &[f32]) -> Result<f64>;
}

/// A model's mean validation loss, evaluated on a fixed set of validation tokens.
pub struct ModelLoss<'a> {
    pub backend: &'a mut dyn Backend,
    pub model: &'a Gpt,
    pub val: &'a ValData,
}

impl Objective for ModelLoss<'_> {
    fn loss(&mut self, params: &[f32]) -> Result<f64> {
        self.backend.write(self.model.param_buffer, params)?;
        let (mut total, mut batches) = (0.0, 0);
        for (inputs, targets) in self.val.batches(self.model.batch, self.model.seq_len)? {
            total += self
                .model
                .forward(self.backend, &inputs, &targets, Pass::Eval)?;
            batches += 1;
        }
        Ok(total / batches as f64)
    }
}

/// A Gaussian direction (seeded), each tensor's part scaled to the norm of the same part of
/// `weights`. `tensors` are the element ranges of the parameter tensors.
pub fn filter_normalized_direction(
    weights: &[f32],
    tensors: &[Range<usize>],
    seed: u64,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut direction: Vec<f32> = (0..weights.len())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    for range in tensors {
        let scale = norm(&weights[range.clone()]) / norm(&direction[range.clone()]).max(1e-30);
        direction[range.clone()]
            .iter_mut()
            .for_each(|d| *d = (*d as f64 * scale) as f32);
    }
    direction
}

/// `count` evenly spaced values from −extent to extent (0 included when `count` is odd).
pub fn grid(extent: f64, count: usize) -> Vec<f64> {
    match count {
        0 => Vec::new(),
        1 => vec![0.0],
        // Written so that round steps print as round numbers (−0.2, not −0.19999999999999996).
        n => (0..n)
            .map(|i| extent * (2 * i as i64 - (n as i64 - 1)) as f64 / (n - 1) as f64)
            .collect(),
    }
}

/// `origin + Σ coefficient·direction`, in f64 then rounded once.
fn point(origin: &[f32], terms: &[(f64, &[f32])]) -> Vec<f32> {
    (0..origin.len())
        .map(|i| {
            let offset: f64 = terms.iter().map(|(c, d)| c * d[i] as f64).sum();
            (origin[i] as f64 + offset) as f32
        })
        .collect()
}

/// L(origin + α·direction) for each α.
pub fn line(
    objective: &mut dyn Objective,
    origin: &[f32],
    direction: &[f32],
    alphas: &[f64],
    log_every: usize,
) -> Result<Vec<f64>> {
    ensure!(
        direction.len() == origin.len(),
        "the direction has the wrong length"
    );
    let progress = Progress::new(alphas.len(), 0, log_every);
    let mut losses = Vec::with_capacity(alphas.len());
    for (i, &alpha) in alphas.iter().enumerate() {
        losses.push(objective.loss(&point(origin, &[(alpha, direction)]))?);
        progress.update(i + 1, &format!("α {alpha:+.3}: loss {:.4}", losses[i]));
    }
    Ok(losses)
}

/// L(origin + α·d₁ + β·d₂) on the grid `alphas × betas`, row by row of β:
/// `losses[j·alphas.len() + i]` is at (alphas[i], betas[j]).
pub fn plane(
    objective: &mut dyn Objective,
    origin: &[f32],
    (d1, d2): (&[f32], &[f32]),
    alphas: &[f64],
    betas: &[f64],
    log_every: usize,
) -> Result<Vec<f64>> {
    ensure!(
        d1.len() == origin.len() && d2.len() == origin.len(),
        "a direction has the wrong length"
    );
    let total = alphas.len() * betas.len();
    let progress = Progress::new(total, 0, log_every);
    let mut losses = Vec::with_capacity(total);
    for &beta in betas {
        for &alpha in alphas {
            let loss = objective.loss(&point(origin, &[(alpha, d1), (beta, d2)]))?;
            losses.push(loss);
            let message = format!("α {alpha:+.3} β {beta:+.3}: loss {loss:.4}");
            progress.update(losses.len(), &message);
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L(w) = ½ Σ aᵢ wᵢ².
    struct Quadratic(Vec<f64>);

    impl Objective for Quadratic {
        fn loss(&mut self, w: &[f32]) -> Result<f64> {
            Ok(0.5
                * self
                    .0
                    .iter()
                    .zip(w)
                    .map(|(a, &w)| a * (w as f64).powi(2))
                    .sum::<f64>())
        }
    }

    #[test]
    fn a_quadratic_gives_its_parabola_along_a_line_and_on_a_plane() {
        // Along w₀ + α·d: ½ Σ aᵢ (w₀ᵢ + α dᵢ)² = c₀ + c₁·α + c₂·α², with
        // c₀ = ½ Σ aᵢ w₀ᵢ², c₁ = Σ aᵢ w₀ᵢ dᵢ, c₂ = ½ Σ aᵢ dᵢ².
        let a = vec![1.0, 2.0, 0.5];
        let (w0, d, e) = (
            [1.0f32, -1.0, 2.0],
            [0.5f32, 0.25, -1.0],
            [0.0f32, 1.0, 0.5],
        );
        let alphas = grid(2.0, 9);
        let losses = line(&mut Quadratic(a.clone()), &w0, &d, &alphas, 0).unwrap();
        // By hand: c₀ = ½(1 + 2 + 0.5·4) = 2.5; c₁ = 1·0.5 + 2·(−0.25) + 0.5·(−2) = −1;
        // c₂ = ½(0.25 + 2·0.0625 + 0.5·1) = 0.4375.
        let (c0, c1, c2) = (2.5, -1.0, 0.4375);
        for (&alpha, &loss) in alphas.iter().zip(&losses) {
            let want = c0 + c1 * alpha + c2 * alpha * alpha;
            assert!((loss - want).abs() < 1e-6, "α {alpha}: {loss} vs {want}");
        }
        // On the plane, β adds e₁·β + e₂·β² and the cross term Σ aᵢ dᵢ eᵢ·αβ, with
        // e₁ = Σ aᵢ w₀ᵢ eᵢ = 2·(−1)·1 + 0.5·2·0.5 = −1.5, e₂ = ½ Σ aᵢ eᵢ² = ½(2 + 0.5·0.25) and
        // Σ aᵢ dᵢ eᵢ = 2·0.25·1 + 0.5·(−1)·0.5 = 0.25.
        let betas = grid(1.0, 3);
        let losses = plane(&mut Quadratic(a), &w0, (&d, &e), &alphas, &betas, 0).unwrap();
        let (e1, e2, de) = (-1.5, 1.0625, 0.25);
        for (j, &beta) in betas.iter().enumerate() {
            for (i, &alpha) in alphas.iter().enumerate() {
                let want = c0
                    + c1 * alpha
                    + c2 * alpha * alpha
                    + e1 * beta
                    + e2 * beta * beta
                    + de * alpha * beta;
                let got = losses[j * alphas.len() + i];
                assert!(
                    (got - want).abs() < 1e-6,
                    "({alpha}, {beta}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn filter_normalised_directions_match_each_tensors_norm() {
        let weights = [3.0f32, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let tensors = [0..2, 2..4, 4..8];
        let d = filter_normalized_direction(&weights, &tensors, 7);
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm(&d[0..2]) - 5.0).abs() < 1e-5);
        assert_eq!(&d[2..4], &[0.0, 0.0], "zero weights get no perturbation");
        assert!((norm(&d[4..8]) - 2.0).abs() < 1e-5);
        assert_eq!(
            d,
            filter_normalized_direction(&weights, &tensors, 7),
            "seeded"
        );
        assert_ne!(d, filter_normalized_direction(&weights, &tensors, 8));
    }

    #[test]
    fn grids_are_symmetric_and_hold_zero() {
        assert_eq!(grid(1.0, 5), [-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(grid(3.0, 1), [0.0]);
        assert!(grid(1.0, 0).is_empty());
    }
}
