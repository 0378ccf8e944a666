//! The element-wise optimizer kernels besides Adam's (compared in check.rs) against the CPU
//! backend's `elementwise_update`: each rule with its options switched on, a few steps on fresh
//! random gradients from the state the optimizer starts from, each step's rule made by
//! [`UpdateRule::elementwise`] as training makes it (SGD's first step, Adagrad's decayed lr),
//! and Schedule-Free AdamW's as its optimizer makes it.

use anyhow::{Context, Result};
use half::bf16;

use super::{Check, Comparison, relative_error};
use crate::backend::cuda::view::ViewOf;
use crate::backend::{Backend, ElementwiseRule, Tensor};
use crate::optim::{AdadeltaConfig, AdagradConfig, RmspropConfig, SgdConfig, UpdateRule};

/// Enough for SGD's first step and the momentum steps after it, and for Adagrad's lr to decay.
const STEPS: usize = 3;
/// Odd, so the grid-stride loop's tail is exercised.
const LEN: usize = 100_003;

impl Check<'_> {
    pub(super) fn optimizers(&mut self) -> Result<()> {
        // Learning rates large enough that the change of the weights is far above their rounding.
        let sgd = |momentum, dampening, nesterov| {
            UpdateRule::Sgd(SgdConfig {
                lr: 0.05,
                momentum,
                dampening,
                nesterov,
                weight_decay: 0.1,
            })
        };
        let rmsprop = |momentum, centered| {
            UpdateRule::Rmsprop(RmspropConfig {
                lr: 0.01,
                alpha: 0.99,
                eps: 1e-8,
                weight_decay: 0.1,
                momentum,
                centered,
            })
        };
        let cases = [
            ("sgd_update (Nesterov, L2)", sgd(0.9, 0.0, true)),
            ("sgd_update (dampened momentum, L2)", sgd(0.9, 0.5, false)),
            ("sgd_update (no momentum, L2)", sgd(0.0, 0.0, false)),
            (
                "adagrad_update (lr decay, L2)",
                UpdateRule::Adagrad(AdagradConfig {
                    lr: 0.05,
                    lr_decay: 0.5,
                    weight_decay: 0.1,
                    initial_accumulator_value: 0.1,
                    eps: 1e-10,
                }),
            ),
            ("rmsprop_update (L2)", rmsprop(0.0, false)),
            ("rmsprop_update (centered, L2)", rmsprop(0.0, true)),
            ("rmsprop_update (momentum, L2)", rmsprop(0.9, false)),
            (
                "rmsprop_update (centered, momentum, L2)",
                rmsprop(0.9, true),
            ),
            (
                "adadelta_update (L2)",
                // ε well above PyTorch's 1e-6, so that the first steps are not vanishingly small.
                UpdateRule::Adadelta(AdadeltaConfig {
                    lr: 1.0,
                    rho: 0.9,
                    eps: 1e-4,
                    weight_decay: 0.1,
                }),
            ),
        ];
        for (kernel, rule) in cases {
            let step_rule = |step| {
                rule.elementwise(step, 1.0)
                    .with_context(|| format!("{kernel}: not an element-wise rule"))
            };
            // As optim::Elementwise allocates it.
            let initial = match &rule {
                UpdateRule::Adagrad(c) => c.initial_accumulator_value,
                _ => 0.0,
            };
            self.optimizer(kernel, step_rule, initial)?;
        }
        // Schedule-Free AdamW's rule as optim::sf_adamw makes it without warm-up: the weight
        // of step t's z in the average is 1/(t + 1). Its z starts at 0 here rather than at the
        // weights, which changes nothing in what is compared.
        let schedule_free = |step: usize| {
            Ok(ElementwiseRule::ScheduleFree {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                averaging: 1.0 / (step + 1) as f32,
                bias2: 1.0 - 0.999f32.powi(step as i32 + 1),
            })
        };
        self.optimizer("schedule_free_update (wd)", schedule_free, 0.0)
    }

    /// `STEPS` steps of the rules `step_rule` makes on both sides from the same weights and
    /// state (each state tensor starting at `initial`), then the change of the weights and of
    /// each state tensor, and the bf16 copy of the last weights.
    fn optimizer(
        &mut self,
        kernel: &str,
        step_rule: impl Fn(usize) -> Result<ElementwiseRule>,
        initial: f32,
    ) -> Result<()> {
        let names = step_rule(0)?.state_names();
        let param = self.random::<f32>(LEN, 1.0);
        let state = vec![initial; LEN];

        let gparam = self.up::<f32>(&param)?;
        let gstate = names
            .iter()
            .map(|_| self.up::<f32>(&state))
            .collect::<Result<Vec<_>>>()?;
        let copy = self.kernels.stream().alloc_zeros::<bf16>(LEN)?;
        let cparam = self.tensor(&param)?;
        let cstate = names
            .iter()
            .map(|_| self.tensor(&state))
            .collect::<Result<Vec<_>>>()?;
        for step in 0..STEPS {
            let rule = step_rule(step)?;
            let grad = self.random::<f32>(LEN, 0.5);
            let ggrad = self.up::<f32>(&grad)?;
            self.kernels.elementwise_update(
                rule,
                &gparam.view(),
                &ggrad.view(),
                &gstate.iter().map(ViewOf::view).collect::<Vec<_>>(),
                Some(&copy.view()),
            )?;
            let cgrad = self.tensor(&grad)?;
            self.cpu.elementwise_update(rule, cparam, cgrad, &cstate)?;
        }

        let gpu = self.down(&gparam)?;
        self.change(kernel, "param", &param, &gpu, cparam)?;
        for ((&name, g), &c) in names.iter().zip(&gstate).zip(&cstate) {
            let gpu = self.down(g)?;
            self.change(kernel, name, &state, &gpu, c)?;
        }
        let gpu = self.down(&copy)?;
        self.compare(kernel, "param (bf16 copy)", "bf16", &gpu, cparam)
    }

    /// Compares the change of an f32 tensor from `old`, which is what the steps compute: the
    /// tensors themselves can be dominated by their old values.
    fn change(
        &mut self,
        kernel: &str,
        tensor: &'static str,
        old: &[f32],
        gpu: &[f32],
        cpu: Tensor,
    ) -> Result<()> {
        let cpu = self.cpu.read(cpu)?;
        let delta = |x: &[f32]| -> Vec<f32> { x.iter().zip(old).map(|(a, b)| a - b).collect() };
        self.comparisons.push(Comparison {
            kernel: kernel.to_string(),
            tensor,
            dtype: "f32",
            error: relative_error(&delta(gpu), &delta(&cpu)),
        });
        Ok(())
    }
}
