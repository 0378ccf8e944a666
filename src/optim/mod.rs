//! Optimizers, by parameter group as in the speedrun: the hidden matrices use the optimizer
//! chosen with `--optimizer`; embeddings, the head and scalars always use Adam, each group with
//! its own learning rate. Every group is one contiguous range of the flat parameter buffer, so
//! each element-wise update is one backend call over it.

mod adamw;
mod kronecker;
mod matrix_sets;
mod muon;
mod shampoo;
mod soap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Tensor};
use crate::model::{Arch, Gpt, Group};
pub use adamw::Adam;
pub use muon::{Muon, NewtonSchulzScratch, newton_schulz};
pub use shampoo::{Shampoo, ShampooConfig};
pub use soap::{Soap, SoapConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (PyTorch semantics: bias correction, decoupled weight decay).
    Adamw,
    /// Muon: Nesterov momentum orthogonalised by a Newton–Schulz iteration.
    Muon,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Muon => "muon",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled: each step multiplies the weights by (1 − lr·weight_decay).
    pub weight_decay: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MuonConfig {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub ns_steps: usize,
    /// Decoupled, as in AdamW.
    pub weight_decay: f32,
    /// The momentum ramps linearly from this value to `momentum` over the first
    /// `momentum_warmup_steps` steps.
    pub momentum_warmup_start: f32,
    pub momentum_warmup_steps: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "lowercase")]
pub enum MatrixOptimizer {
    Adamw(AdamConfig),
    Muon(MuonConfig),
}

impl MatrixOptimizer {
    pub fn kind(&self) -> OptimizerKind {
        match self {
            MatrixOptimizer::Adamw(_) => OptimizerKind::Adamw,
            MatrixOptimizer::Muon(_) => OptimizerKind::Muon,
        }
    }
}

/// The update rule of every parameter group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub matrix: MatrixOptimizer,
    pub embedding: AdamConfig,
    pub head: AdamConfig,
    pub scalar: AdamConfig,
}

/// Checks that a hyper-parameter is finite and in `range` (described in words by `expected`).
fn check(
    name: &str,
    value: f32,
    range: impl std::ops::RangeBounds<f32>,
    expected: &str,
) -> Result<()> {
    anyhow::ensure!(
        value.is_finite() && range.contains(&value),
        "{name} must be {expected}, not {value}"
    );
    Ok(())
}

const NON_NEGATIVE: &str = "finite and not negative";
const FRACTION: &str = "in [0, 1)";

impl AdamConfig {
    fn validate(&self, group: &str) -> Result<()> {
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
}

impl MuonConfig {
    fn validate(&self) -> Result<()> {
        check("the Muon learning rate", self.lr, 0.0.., NON_NEGATIVE)?;
        check("the Muon momentum", self.momentum, 0.0..1.0, FRACTION)?;
        check(
            "the Muon warm-up momentum",
            self.momentum_warmup_start,
            0.0..1.0,
            FRACTION,
        )?;
        check(
            "the Muon weight decay",
            self.weight_decay,
            0.0..,
            NON_NEGATIVE,
        )?;
        anyhow::ensure!(
            self.ns_steps > 0,
            "Muon needs at least one Newton–Schulz step"
        );
        Ok(())
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        match &self.matrix {
            MatrixOptimizer::Adamw(adam) => adam.validate("matrix")?,
            MatrixOptimizer::Muon(muon) => muon.validate()?,
        }
        self.embedding.validate("embedding")?;
        self.head.validate("head")?;
        self.scalar.validate("scalar")
    }

    /// Defaults of the record each architecture comes from: the speedrun's (modded-nanogpt)
    /// for `speedrun`, llm.c's GPT-2 (124M) run for `gpt2`.
    pub fn defaults(arch: Arch, kind: OptimizerKind) -> OptimConfig {
        let adam = |lr: f32, beta1: f32, eps: f32, weight_decay: f32| AdamConfig {
            lr,
            beta1,
            beta2: 0.95,
            eps,
            weight_decay,
        };
        let muon = MuonConfig {
            lr: 0.05,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            weight_decay: 0.0,
            momentum_warmup_start: 0.85,
            momentum_warmup_steps: 300,
        };
        match arch {
            Arch::Speedrun => OptimConfig {
                matrix: match kind {
                    // Keller Jordan's AdamW baseline learning rate (3× llm.c's).
                    OptimizerKind::Adamw => MatrixOptimizer::Adamw(adam(0.0018, 0.8, 1e-10, 0.0)),
                    OptimizerKind::Muon => MatrixOptimizer::Muon(muon),
                },
                embedding: adam(0.6, 0.8, 1e-10, 0.0),
                head: adam(0.008, 0.8, 1e-10, 0.0),
                scalar: adam(0.04, 0.8, 1e-10, 0.0),
            },
            // llm.c: AdamW lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the 2D
            // tensors (embeddings and matrices), none on gains and biases.
            Arch::Gpt2 => OptimConfig {
                matrix: match kind {
                    OptimizerKind::Adamw => MatrixOptimizer::Adamw(adam(6e-4, 0.9, 1e-8, 0.1)),
                    OptimizerKind::Muon => MatrixOptimizer::Muon(muon),
                },
                embedding: adam(6e-4, 0.9, 1e-8, 0.1),
                head: adam(6e-4, 0.9, 1e-8, 0.1),
                scalar: adam(6e-4, 0.9, 1e-8, 0.0),
            },
        }
    }
}

/// The update of one parameter group.
pub trait GroupOptimizer {
    /// Applies step `step` (0-based) with every learning rate multiplied by `lr_scale`.
    fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()>;
    /// Named state tensors, for checkpoints.
    fn state(&self) -> Vec<(&'static str, Tensor)>;
    /// One line for the start-up summary.
    fn describe(&self) -> String;
}

/// One parameter group's parameters and gradients (contiguous ranges) and its update rule.
pub struct GroupRange {
    pub group: Group,
    pub param: Tensor,
    pub grad: Tensor,
}

/// All groups of a model with their update rules.
pub struct Optimizer {
    groups: Vec<(GroupRange, Box<dyn GroupOptimizer>)>,
}

impl Optimizer {
    pub fn new(backend: &mut dyn Backend, model: &Gpt, config: &OptimConfig) -> Result<Optimizer> {
        let mut groups = Vec::new();
        for group in Group::ALL {
            let specs: Vec<_> = model.specs.iter().filter(|s| s.group == group).collect();
            let (Some(first), Some(last)) = (specs.first(), specs.last()) else {
                continue;
            };
            let start = first.tensor.offset - model.param_buffer.offset;
            let len = last.tensor.offset + last.tensor.len - first.tensor.offset;
            assert_eq!(
                len,
                specs.iter().map(|s| s.tensor.len).sum::<usize>(),
                "the {} group is not contiguous in the parameter layout",
                group.name()
            );
            let range = GroupRange {
                group,
                param: model.param_buffer.slice(start, len),
                grad: model.grad_buffer.slice(start, len),
            };
            let rule: Box<dyn GroupOptimizer> = match (group, &config.matrix) {
                (Group::Matrix, MatrixOptimizer::Muon(muon)) => {
                    Box::new(Muon::new(backend, &range, &specs, muon.clone())?)
                }
                (Group::Matrix, MatrixOptimizer::Adamw(adam)) => {
                    Box::new(Adam::new(backend, &range, adam.clone())?)
                }
                (Group::Embedding, _) => {
                    Box::new(Adam::new(backend, &range, config.embedding.clone())?)
                }
                (Group::Head, _) => Box::new(Adam::new(backend, &range, config.head.clone())?),
                (Group::Scalar, _) => Box::new(Adam::new(backend, &range, config.scalar.clone())?),
            };
            groups.push((range, rule));
        }
        Ok(Optimizer { groups })
    }

    pub fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()> {
        for (_, rule) in &mut self.groups {
            rule.step(backend, step, lr_scale)?;
        }
        Ok(())
    }

    /// Every state tensor, named `<group>.<state>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|(range, rule)| {
                rule.state()
                    .into_iter()
                    .map(|(name, t)| (format!("{}.{name}", range.group.name()), t))
            })
            .collect()
    }

    /// One line per group: name, parameter count, update rule.
    pub fn describe(&self) -> Vec<String> {
        self.groups
            .iter()
            .map(|(range, rule)| {
                format!(
                    "{:<9} {:>12} params  {}",
                    range.group.name(),
                    range.param.len,
                    rule.describe()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
