//! Adagrad (`torch.optim.Adagrad`): per-coordinate steps shrinking with the summed squares of
//! past gradients.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{NON_NEGATIVE, check};
use crate::backend::ElementwiseRule;

/// PyTorch's defaults: lr 1e-2, no learning-rate decay, no weight decay, accumulator starting
/// at 0, ε 1e-10.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdagradConfig {
    pub lr: f32,
    /// Step t (1-based) uses lr / (1 + (t − 1)·lr_decay).
    pub lr_decay: f32,
    /// Coupled (L2): added to the gradient as `wd·p`.
    pub weight_decay: f32,
    /// The sum of squares starts here.
    pub initial_accumulator_value: f32,
    pub eps: f32,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

impl AdagradConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} Adagrad learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        check("the Adagrad lr decay", self.lr_decay, 0.0.., NON_NEGATIVE)?;
        check(
            &format!("the {group} Adagrad weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        check(
            "the Adagrad initial accumulator value",
            self.initial_accumulator_value,
            0.0..,
            NON_NEGATIVE,
        )?;
        check(
            "Adagrad epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )
    }

    pub(super) fn rule(&self, step: usize, lr_scale: f32) -> ElementwiseRule {
        ElementwiseRule::Adagrad {
            lr: self.lr * lr_scale / (1.0 + step as f32 * self.lr_decay),
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "adagrad lr {} lr_decay {} eps {:e} wd {} initial accumulator {}",
            self.lr, self.lr_decay, self.eps, self.weight_decay, self.initial_accumulator_value
        )
    }
}
