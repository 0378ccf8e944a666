//! Adadelta (`torch.optim.Adadelta`): steps scaled by the ratio of the running RMS of past
//! updates to that of past gradients.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{FRACTION, NON_NEGATIVE, check};
use crate::backend::ElementwiseRule;

/// PyTorch's defaults: lr 1, ρ 0.9, ε 1e-6, no weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdadeltaConfig {
    pub lr: f32,
    /// Smoothing constant of both running averages.
    pub rho: f32,
    pub eps: f32,
    /// Coupled (L2): added to the gradient as `wd·p`.
    pub weight_decay: f32,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

impl AdadeltaConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} Adadelta learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("the Adadelta rho", self.rho, 0.0..1.0, FRACTION)?;
        check(
            "Adadelta epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            &format!("the {group} Adadelta weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )
    }

    pub(super) fn rule(&self, lr_scale: f32) -> ElementwiseRule {
        ElementwiseRule::Adadelta {
            lr: self.lr * lr_scale,
            rho: self.rho,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "adadelta lr {} rho {} eps {:e} wd {}",
            self.lr, self.rho, self.eps, self.weight_decay
        )
    }
}
