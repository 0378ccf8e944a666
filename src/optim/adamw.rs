//! Adam(W) over one contiguous parameter group.

use anyhow::Result;

use super::{AdamConfig, GroupOptimizer, GroupRange};
use crate::backend::{AdamStep, Backend, BufferKind, Tensor};

pub struct Adam {
    param: Tensor,
    grad: Tensor,
    /// First and second moment estimates.
    m: Tensor,
    v: Tensor,
    config: AdamConfig,
}

impl Adam {
    pub fn new(backend: &mut dyn Backend, range: &GroupRange, config: AdamConfig) -> Result<Adam> {
        Ok(Adam {
            param: range.param,
            grad: range.grad,
            m: backend.alloc(range.param.len, BufferKind::OptimizerState)?,
            v: backend.alloc(range.param.len, BufferKind::OptimizerState)?,
            config,
        })
    }
}

impl GroupOptimizer for Adam {
    fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()> {
        let c = &self.config;
        let hp = AdamStep {
            lr: c.lr * lr_scale,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            step: u32::try_from(step + 1)?,
        };
        backend.adamw_update(self.param, self.grad, self.m, self.v, hp)
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        vec![("m", self.m), ("v", self.v)]
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "adamw lr {} betas ({}, {}) eps {:e} wd {}",
            c.lr, c.beta1, c.beta2, c.eps, c.weight_decay
        )
    }
}
