//! RMSprop (`torch.optim.RMSprop`), optionally centered and with momentum.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{FRACTION, NON_NEGATIVE, check};
use crate::backend::ElementwiseRule;

/// PyTorch's defaults: lr 1e-2, α 0.99, ε 1e-8, no weight decay, no momentum, not centered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmspropConfig {
    pub lr: f32,
    /// Smoothing constant of the square (and gradient) averages.
    pub alpha: f32,
    pub eps: f32,
    /// Coupled (L2): added to the gradient as `wd·p`.
    pub weight_decay: f32,
    pub momentum: f32,
    /// Divide by the estimated standard deviation (√(E[g²] − E[g]²)) instead of the root mean
    /// square.
    pub centered: bool,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        RmspropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

impl RmspropConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} RMSprop learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("the RMSprop alpha", self.alpha, 0.0..1.0, FRACTION)?;
        check(
            "RMSprop epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            &format!("the {group} RMSprop weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("the RMSprop momentum", self.momentum, 0.0..1.0, FRACTION)
    }

    pub(super) fn rule(&self, lr_scale: f32) -> ElementwiseRule {
        ElementwiseRule::Rmsprop {
            lr: self.lr * lr_scale,
            alpha: self.alpha,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            centered: self.centered,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "rmsprop{} lr {} alpha {} eps {:e} momentum {} wd {}",
            if self.centered { " (centered)" } else { "" },
            self.lr,
            self.alpha,
            self.eps,
            self.momentum,
            self.weight_decay
        )
    }
}
