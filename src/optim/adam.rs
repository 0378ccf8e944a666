//! The Adam family: Adam (`torch.optim.Adam`, weight decay added to the gradient), AdamW
//! (`torch.optim.AdamW`, decoupled weight decay) and NAdamW (AlgoPerf's baseline: AdamW with a
//! Nesterov first moment), all with bias correction.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{FRACTION, NON_NEGATIVE, check};
use crate::backend::{ElementwiseRule, WeightDecay};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Coupled for Adam (`g ← g + wd·p`); decoupled for AdamW and NAdamW (each step multiplies
    /// the weights by 1 − lr·wd).
    pub weight_decay: f32,
}

/// Which member of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamVariant {
    Adam,
    Adamw,
    Nadamw,
}

impl AdamVariant {
    fn name(self) -> &'static str {
        match self {
            AdamVariant::Adam => "adam",
            AdamVariant::Adamw => "adamw",
            AdamVariant::Nadamw => "nadamw",
        }
    }

    /// The reference defaults: PyTorch's for Adam (lr 1e-3, betas (0.9, 0.999), ε 1e-8, no
    /// decay) and AdamW (the same with weight decay 0.01); for NAdamW the hyper-parameters of
    /// AlgoPerf's self-tuning NAdamW baseline (lr 0.0017486, β1 1 − 0.0673393, β2 0.9955160,
    /// ε 1e-8, weight decay 0.0812162).
    pub fn defaults(self) -> AdamConfig {
        match self {
            AdamVariant::Adam | AdamVariant::Adamw => AdamConfig {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: if self == AdamVariant::Adam { 0.0 } else { 0.01 },
            },
            AdamVariant::Nadamw => AdamConfig {
                lr: 0.001_748_638_8,
                beta1: 1.0 - 0.067_339_26,
                beta2: 0.995_515_97,
                eps: 1e-8,
                weight_decay: 0.081_216_165,
            },
        }
    }
}

impl AdamConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("Adam beta1", self.beta1, 0.0..1.0, FRACTION)?;
        check("Adam beta2", self.beta2, 0.0..1.0, FRACTION)?;
        check(
            "Adam epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            &format!("the {group} weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )
    }

    pub(super) fn rule(&self, variant: AdamVariant, step: usize, lr_scale: f32) -> ElementwiseRule {
        ElementwiseRule::Adam {
            lr: self.lr * lr_scale,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay: match variant {
                AdamVariant::Adam => WeightDecay::Coupled,
                AdamVariant::Adamw | AdamVariant::Nadamw => WeightDecay::Decoupled,
            },
            nesterov: variant == AdamVariant::Nadamw,
            step: u32::try_from(step + 1).unwrap_or(u32::MAX),
        }
    }

    pub(super) fn describe(&self, variant: AdamVariant) -> String {
        format!(
            "{} lr {} betas ({}, {}) eps {:e} wd {}",
            variant.name(),
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay
        )
    }
}
