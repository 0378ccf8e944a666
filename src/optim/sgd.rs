//! Stochastic gradient descent with momentum (`torch.optim.SGD`).

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use super::{FRACTION, NON_NEGATIVE, check};
use crate::backend::ElementwiseRule;

/// PyTorch's defaults: lr 1e-3, no momentum, no dampening, no Nesterov, no weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    /// Damps the gradient's share of the momentum buffer: `b ← μ·b + (1 − dampening)·g`.
    pub dampening: f32,
    pub nesterov: bool,
    /// Coupled (L2): added to the gradient as `wd·p`.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl SgdConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} SGD learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("the SGD momentum", self.momentum, 0.0..1.0, FRACTION)?;
        check("the SGD dampening", self.dampening, 0.0..=1.0, "in [0, 1]")?;
        check(
            &format!("the {group} SGD weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        // PyTorch's rule: Nesterov momentum needs momentum and no dampening.
        ensure!(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            "Nesterov SGD needs a positive momentum and zero dampening"
        );
        Ok(())
    }

    pub(super) fn rule(&self, step: usize, lr_scale: f32) -> ElementwiseRule {
        ElementwiseRule::Sgd {
            lr: self.lr * lr_scale,
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            first_step: step == 0,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "sgd lr {} momentum {}{} dampening {} wd {}",
            self.lr,
            self.momentum,
            if self.nesterov { " (nesterov)" } else { "" },
            self.dampening,
            self.weight_decay
        )
    }
}
