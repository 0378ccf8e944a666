//! Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"; the AlgoPerf
//! self-tuning winner), as `AdamWScheduleFree` in facebookresearch/schedule_free: no
//! learning-rate decay is needed. It keeps two sequences, z (plain AdamW-normalised steps) and
//! x (a running average of z weighted by the squared peak learning rate so far); gradients are
//! taken at y = β1·x + (1 − β1)·z, which is what the parameter buffer holds while training.
//! Validation and checkpoints use x ([`GroupOptimizer::eval_weights`]): x = (y − (1 − β1)·z)/β1.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{FRACTION, GroupOptimizer, GroupRange, NON_NEGATIVE, check};
use crate::backend::{Backend, BufferKind, ElementwiseRule, Tensor};
use crate::dist::Comm;

/// The reference's defaults: lr 0.0025, betas (0.9, 0.999), ε 1e-8, no weight decay, step
/// weights lr_max² (`weight_lr_power` 2, r 0). Its optional warm-up is the trainer's
/// `--warmup-steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SfAdamwConfig {
    pub lr: f32,
    /// Interpolation between x and z for the gradient point (the reference's "momentum").
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Computed at y and added to the normalised gradient, as the reference does.
    pub weight_decay: f32,
}

impl Default for SfAdamwConfig {
    fn default() -> Self {
        SfAdamwConfig {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl SfAdamwConfig {
    pub(super) fn validate(&self, group: &str) -> Result<()> {
        check(
            &format!("the {group} Schedule-Free learning rate"),
            self.lr,
            0.0..,
            NON_NEGATIVE,
        )?;
        // β1 = 0 would make x undefined (x = (y − z)/β1 + z).
        check(
            "the Schedule-Free beta1",
            self.beta1,
            f32::MIN_POSITIVE..1.0,
            "in (0, 1)",
        )?;
        check("the Schedule-Free beta2", self.beta2, 0.0..1.0, FRACTION)?;
        check(
            "Schedule-Free epsilon",
            self.eps,
            f32::MIN_POSITIVE..,
            "positive and finite",
        )?;
        check(
            &format!("the {group} Schedule-Free weight decay"),
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "sf-adamw lr {} betas ({}, {}) eps {:e} wd {}",
            self.lr, self.beta1, self.beta2, self.eps, self.weight_decay
        )
    }
}

pub struct ScheduleFree {
    param: Tensor,
    grad: Tensor,
    z: Tensor,
    v: Tensor,
    /// [largest learning rate so far, sum of the step weights]: kept on the host for the
    /// step and mirrored here so that checkpoints carry them (f32 on both sides, so a resumed
    /// run computes exactly what the uninterrupted one does).
    sums: Tensor,
    lr_max: f32,
    weight_sum: f32,
    /// Whether `lr_max` and `weight_sum` are current: set by `start` on a fresh run, by the
    /// first step's read of `sums` after a restore.
    loaded: bool,
    config: SfAdamwConfig,
}

impl ScheduleFree {
    pub fn new(
        backend: &mut dyn Backend,
        range: &GroupRange,
        config: SfAdamwConfig,
    ) -> Result<Self> {
        Ok(ScheduleFree {
            param: range.param,
            grad: range.grad,
            z: backend.alloc(range.param.len, BufferKind::OptimizerState)?,
            v: backend.alloc(range.param.len, BufferKind::OptimizerState)?,
            sums: backend.alloc(2, BufferKind::OptimizerState)?,
            lr_max: 0.0,
            weight_sum: 0.0,
            loaded: false,
            config,
        })
    }
}

impl GroupOptimizer for ScheduleFree {
    fn start(&mut self, backend: &mut dyn Backend) -> Result<()> {
        // z starts at the initial weights, so x = y = z.
        self.loaded = true;
        backend.copy(self.z, self.param)
    }

    /// Every rank takes the whole step.
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        _comm: &dyn Comm,
    ) -> Result<()> {
        if !self.loaded {
            let sums = backend.read(self.sums)?;
            (self.lr_max, self.weight_sum) = (sums[0], sums[1]);
            self.loaded = true;
        }
        let c = &self.config;
        let lr = c.lr * lr_scale;
        self.lr_max = self.lr_max.max(lr);
        let weight = self.lr_max * self.lr_max;
        self.weight_sum += weight;
        let averaging = if self.weight_sum > 0.0 {
            weight / self.weight_sum
        } else {
            0.0
        };
        backend.write(self.sums, &[self.lr_max, self.weight_sum])?;
        let rule = ElementwiseRule::ScheduleFree {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            averaging,
            bias2: 1.0 - c.beta2.powi(i32::try_from(step + 1).unwrap_or(i32::MAX)),
        };
        backend.elementwise_update(rule, self.param, self.grad, &[self.z, self.v])
    }

    fn eval_weights(&mut self, backend: &mut dyn Backend) -> Result<()> {
        // x = y + (1 − 1/β1)·(z − y).
        backend.lerp(self.param, self.z, 1.0 - 1.0 / self.config.beta1)
    }

    fn train_weights(&mut self, backend: &mut dyn Backend) -> Result<()> {
        // y = x + (1 − β1)·(z − x).
        backend.lerp(self.param, self.z, 1.0 - self.config.beta1)
    }

    fn state(&self) -> Vec<(&'static str, Tensor)> {
        vec![("z", self.z), ("v", self.v), ("sums", self.sums)]
    }

    fn describe(&self) -> String {
        self.config.describe()
    }
}
