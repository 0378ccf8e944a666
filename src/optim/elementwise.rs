//! Any element-wise update rule over one contiguous parameter group: one backend call per
//! step over the whole range, its state tensors as long as the group.

use anyhow::Result;

use super::{GroupOptimizer, GroupRange, UpdateRule};
use crate::backend::{Backend, BufferKind, ElementwiseRule, Tensor};
use crate::dist::Comm;

pub struct Elementwise {
    param: Tensor,
    grad: Tensor,
    state: Vec<Tensor>,
    names: Vec<&'static str>,
    rule: UpdateRule,
}

impl Elementwise {
    /// Allocates the rule's state (zero, or Adagrad's initial accumulator value). `rule` must
    /// be element-wise ([`UpdateRule::elementwise`]).
    pub fn new(backend: &mut dyn Backend, range: &GroupRange, rule: UpdateRule) -> Result<Self> {
        let names = Self::step_rule(&rule, 0, 1.0).state_names();
        let mut state = Vec::with_capacity(names.len());
        for _ in &names {
            state.push(backend.alloc(range.param.len, BufferKind::OptimizerState)?);
        }
        if let UpdateRule::Adagrad(adagrad) = &rule {
            backend.fill(state[0], adagrad.initial_accumulator_value)?;
        }
        Ok(Elementwise {
            param: range.param,
            grad: range.grad,
            state,
            names,
            rule,
        })
    }

    fn step_rule(rule: &UpdateRule, step: usize, lr_scale: f32) -> ElementwiseRule {
        rule.elementwise(step, lr_scale)
            .expect("Elementwise is built only for element-wise rules")
    }
}

impl GroupOptimizer for Elementwise {
    /// Each rank steps its own part of the group (ZeRO-1): nothing to share.
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        _comm: &dyn Comm,
    ) -> Result<()> {
        let rule = Self::step_rule(&self.rule, step, lr_scale);
        backend.elementwise_update(rule, self.param, self.grad, &self.state)
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        self.names
            .iter()
            .copied()
            .zip(self.state.iter().copied())
            .collect()
    }

    fn describe(&self) -> String {
        self.rule.describe()
    }
}
