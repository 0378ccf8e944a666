//! Optimizers, by parameter group as in the speedrun: the hidden matrices use the optimizer
//! chosen with `--optimizer`; embeddings, the head and scalars use AdamW unless told otherwise,
//! each group with its own learning rate. Every group is one contiguous range of the flat
//! parameter buffer, so each element-wise update is one backend call over it. Each update rule
//! lives in its own file; [`UpdateRule`] names them all.

mod adadelta;
mod adagrad;
mod adam;
mod elementwise;
mod kronecker;
mod matrix_sets;
mod muon;
mod rmsprop;
mod sf_adamw;
mod sgd;
mod shampoo;
mod soap;

use std::ops::Range;

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ElementwiseRule, Tensor};
use crate::dist::{Comm, SingleRank};
use crate::model::{Arch, Gpt, Group, ParamSpec};
pub use adadelta::AdadeltaConfig;
pub use adagrad::AdagradConfig;
pub use adam::{AdamConfig, AdamVariant};
pub use elementwise::Elementwise;
pub(crate) use kronecker::MatrixGroup;
pub use muon::{Muon, NewtonSchulzScratch, NsCoefficients, newton_schulz};
pub use rmsprop::RmspropConfig;
pub use sf_adamw::{ScheduleFree, SfAdamwConfig};
pub use sgd::SgdConfig;
pub use shampoo::{Shampoo, ShampooConfig};
pub use soap::{Soap, SoapConfig};

/// The optimizers `--optimizer` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with optional (Nesterov) momentum (torch.optim.SGD; lr 1e-3, momentum 0).
    Sgd,
    /// Adagrad (torch.optim.Adagrad; lr 1e-2, eps 1e-10).
    Adagrad,
    /// RMSprop, optionally centered, with momentum (torch.optim.RMSprop; lr 1e-2, alpha 0.99,
    /// eps 1e-8).
    Rmsprop,
    /// Adadelta (torch.optim.Adadelta; lr 1, rho 0.9, eps 1e-6).
    Adadelta,
    /// Adam with L2 weight decay added to the gradient (torch.optim.Adam; lr 1e-3, betas 0.9,
    /// 0.999).
    Adam,
    /// AdamW: decoupled weight decay, bias correction (torch.optim.AdamW semantics; defaults
    /// of the architecture's record).
    Adamw,
    /// NAdamW, AlgoPerf's baseline: AdamW with a Nesterov first moment (its self-tuning
    /// hyper-parameters: lr 0.00175, betas 0.933, 0.9955, wd 0.081).
    Nadamw,
    /// Muon: Nesterov momentum orthogonalised by a Newton–Schulz iteration.
    Muon,
    /// Schedule-Free AdamW (facebookresearch/schedule_free; lr 0.0025, betas 0.9, 0.999): no
    /// learning-rate decay; validation and checkpoints use its averaged weights.
    #[value(name = "sf-adamw")]
    #[serde(rename = "sf-adamw")]
    SfAdamw,
    /// Shampoo with Adam grafting (Distributed Shampoo's, as in the speedrun's optimizer
    /// comparison; lr 0.0018, betas 0.95, 0.95, roots every 10 steps, blocks of 1024).
    Shampoo,
    /// SOAP: Adam in the eigenbasis of Shampoo's factors (lr 3e-3, betas 0.95, 0.95, wd 0.01,
    /// basis refreshed every 10 steps).
    Soap,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::Rmsprop => "rmsprop",
            OptimizerKind::Adadelta => "adadelta",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Nadamw => "nadamw",
            OptimizerKind::Muon => "muon",
            OptimizerKind::SfAdamw => "sf-adamw",
            OptimizerKind::Shampoo => "shampoo",
            OptimizerKind::Soap => "soap",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MuonConfig {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub ns_steps: usize,
    /// Keller Jordan's quintic or Polar Express (absent in configs of earlier versions: the
    /// quintic).
    #[serde(default)]
    pub ns_coefficients: NsCoefficients,
    /// Decoupled, as in AdamW.
    pub weight_decay: f32,
    /// The momentum ramps linearly from this value to `momentum` over the first
    /// `momentum_warmup_steps` steps.
    pub momentum_warmup_start: f32,
    pub momentum_warmup_steps: usize,
}

/// The update rule of one parameter group, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "lowercase")]
pub enum UpdateRule {
    Sgd(SgdConfig),
    Adagrad(AdagradConfig),
    Rmsprop(RmspropConfig),
    Adadelta(AdadeltaConfig),
    Adam(AdamConfig),
    Adamw(AdamConfig),
    Nadamw(AdamConfig),
    Muon(MuonConfig),
    #[serde(rename = "sf-adamw")]
    SfAdamw(SfAdamwConfig),
    Shampoo(ShampooConfig),
    Soap(SoapConfig),
}

impl UpdateRule {
    pub fn kind(&self) -> OptimizerKind {
        match self {
            UpdateRule::Sgd(_) => OptimizerKind::Sgd,
            UpdateRule::Adagrad(_) => OptimizerKind::Adagrad,
            UpdateRule::Rmsprop(_) => OptimizerKind::Rmsprop,
            UpdateRule::Adadelta(_) => OptimizerKind::Adadelta,
            UpdateRule::Adam(_) => OptimizerKind::Adam,
            UpdateRule::Adamw(_) => OptimizerKind::Adamw,
            UpdateRule::Nadamw(_) => OptimizerKind::Nadamw,
            UpdateRule::Muon(_) => OptimizerKind::Muon,
            UpdateRule::SfAdamw(_) => OptimizerKind::SfAdamw,
            UpdateRule::Shampoo(_) => OptimizerKind::Shampoo,
            UpdateRule::Soap(_) => OptimizerKind::Soap,
        }
    }

    /// `kind` with its reference defaults (PyTorch's, AlgoPerf's for NAdamW, KellerJordan/Muon's
    /// for Muon).
    pub fn defaults(kind: OptimizerKind) -> UpdateRule {
        match kind {
            OptimizerKind::Sgd => UpdateRule::Sgd(SgdConfig::default()),
            OptimizerKind::Adagrad => UpdateRule::Adagrad(AdagradConfig::default()),
            OptimizerKind::Rmsprop => UpdateRule::Rmsprop(RmspropConfig::default()),
            OptimizerKind::Adadelta => UpdateRule::Adadelta(AdadeltaConfig::default()),
            OptimizerKind::Adam => UpdateRule::Adam(AdamVariant::Adam.defaults()),
            OptimizerKind::Adamw => UpdateRule::Adamw(AdamVariant::Adamw.defaults()),
            OptimizerKind::Nadamw => UpdateRule::Nadamw(AdamVariant::Nadamw.defaults()),
            OptimizerKind::Muon => UpdateRule::Muon(MuonConfig::default()),
            OptimizerKind::SfAdamw => UpdateRule::SfAdamw(SfAdamwConfig::default()),
            OptimizerKind::Shampoo => UpdateRule::Shampoo(ShampooConfig::default()),
            OptimizerKind::Soap => UpdateRule::Soap(SoapConfig::default()),
        }
    }

    /// The backend step of a stateless-between-steps element-wise rule at `step` (0-based)
    /// with the learning rate scaled by `lr_scale`; None for Muon (matrices) and Schedule-Free
    /// AdamW (host-side averaging weights).
    pub fn elementwise(&self, step: usize, lr_scale: f32) -> Option<ElementwiseRule> {
        Some(match self {
            UpdateRule::Sgd(c) => c.rule(step, lr_scale),
            UpdateRule::Adagrad(c) => c.rule(step, lr_scale),
            UpdateRule::Rmsprop(c) => c.rule(lr_scale),
            UpdateRule::Adadelta(c) => c.rule(lr_scale),
            UpdateRule::Adam(c) => c.rule(AdamVariant::Adam, step, lr_scale),
            UpdateRule::Adamw(c) => c.rule(AdamVariant::Adamw, step, lr_scale),
            UpdateRule::Nadamw(c) => c.rule(AdamVariant::Nadamw, step, lr_scale),
            UpdateRule::Muon(_)
            | UpdateRule::SfAdamw(_)
            | UpdateRule::Shampoo(_)
            | UpdateRule::Soap(_) => return None,
        })
    }

    /// Whether the rule works on whole matrices, and so only on the hidden-matrix group.
    pub fn matrices_only(&self) -> bool {
        matches!(
            self,
            UpdateRule::Muon(_) | UpdateRule::Shampoo(_) | UpdateRule::Soap(_)
        )
    }

    /// The peak learning rate, to override it.
    pub fn lr_mut(&mut self) -> &mut f32 {
        match self {
            UpdateRule::Sgd(c) => &mut c.lr,
            UpdateRule::Adagrad(c) => &mut c.lr,
            UpdateRule::Rmsprop(c) => &mut c.lr,
            UpdateRule::Adadelta(c) => &mut c.lr,
            UpdateRule::Adam(c) | UpdateRule::Adamw(c) | UpdateRule::Nadamw(c) => &mut c.lr,
            UpdateRule::Muon(c) => &mut c.lr,
            UpdateRule::SfAdamw(c) => &mut c.lr,
            UpdateRule::Shampoo(c) => &mut c.lr,
            UpdateRule::Soap(c) => &mut c.lr,
        }
    }

    /// The weight decay (coupled or decoupled, as the rule defines it), to override it.
    pub fn weight_decay_mut(&mut self) -> &mut f32 {
        match self {
            UpdateRule::Sgd(c) => &mut c.weight_decay,
            UpdateRule::Adagrad(c) => &mut c.weight_decay,
            UpdateRule::Rmsprop(c) => &mut c.weight_decay,
            UpdateRule::Adadelta(c) => &mut c.weight_decay,
            UpdateRule::Adam(c) | UpdateRule::Adamw(c) | UpdateRule::Nadamw(c) => {
                &mut c.weight_decay
            }
            UpdateRule::Muon(c) => &mut c.weight_decay,
            UpdateRule::SfAdamw(c) => &mut c.weight_decay,
            UpdateRule::Shampoo(c) => &mut c.weight_decay,
            UpdateRule::Soap(c) => &mut c.weight_decay,
        }
    }

    /// The Adam family's settings, if the rule is one of them.
    pub fn adam_mut(&mut self) -> Option<&mut AdamConfig> {
        match self {
            UpdateRule::Adam(c) | UpdateRule::Adamw(c) | UpdateRule::Nadamw(c) => Some(c),
            _ => None,
        }
    }

    fn validate(&self, group: &str) -> Result<()> {
        match self {
            UpdateRule::Sgd(c) => c.validate(group),
            UpdateRule::Adagrad(c) => c.validate(group),
            UpdateRule::Rmsprop(c) => c.validate(group),
            UpdateRule::Adadelta(c) => c.validate(group),
            UpdateRule::Adam(c) | UpdateRule::Adamw(c) | UpdateRule::Nadamw(c) => c.validate(group),
            UpdateRule::Muon(c) => c.validate(),
            UpdateRule::SfAdamw(c) => c.validate(group),
            UpdateRule::Shampoo(c) => c.validate(),
            UpdateRule::Soap(c) => c.validate(),
        }
    }

    /// One line for the start-up summary.
    pub fn describe(&self) -> String {
        match self {
            UpdateRule::Sgd(c) => c.describe(),
            UpdateRule::Adagrad(c) => c.describe(),
            UpdateRule::Rmsprop(c) => c.describe(),
            UpdateRule::Adadelta(c) => c.describe(),
            UpdateRule::Adam(c) => c.describe(AdamVariant::Adam),
            UpdateRule::Adamw(c) => c.describe(AdamVariant::Adamw),
            UpdateRule::Nadamw(c) => c.describe(AdamVariant::Nadamw),
            UpdateRule::Muon(c) => c.describe(),
            UpdateRule::SfAdamw(c) => c.describe(),
            UpdateRule::Shampoo(c) => c.describe(),
            UpdateRule::Soap(c) => c.describe(),
        }
    }
}

/// The update rule of every parameter group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub matrix: UpdateRule,
    #[serde(deserialize_with = "rule_or_bare_adamw")]
    pub embedding: UpdateRule,
    #[serde(deserialize_with = "rule_or_bare_adamw")]
    pub head: UpdateRule,
    #[serde(deserialize_with = "rule_or_bare_adamw")]
    pub scalar: UpdateRule,
}

/// Reads a group's rule, or the bare AdamW settings (no "optimizer" field) that records and
/// checkpoints written before the optimizer zoo hold for the non-matrix groups.
fn rule_or_bare_adamw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<UpdateRule, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Rule(UpdateRule),
        BareAdamw(AdamConfig),
    }
    Ok(match Either::deserialize(d)? {
        Either::Rule(rule) => rule,
        Either::BareAdamw(adam) => UpdateRule::Adamw(adam),
    })
}

/// Checks that a hyper-parameter is finite and in `range` (described in words by `expected`).
pub(super) fn check(
    name: &str,
    value: f32,
    range: impl std::ops::RangeBounds<f32>,
    expected: &str,
) -> Result<()> {
    ensure!(
        value.is_finite() && range.contains(&value),
        "{name} must be {expected}, not {value}"
    );
    Ok(())
}

pub(super) const NON_NEGATIVE: &str = "finite and not negative";
pub(super) const FRACTION: &str = "in [0, 1)";

/// The speedrun's Muon (modded-nanogpt): lr 0.05, Nesterov momentum 0.95 ramped up from 0.85
/// over 300 steps, 5 Newton–Schulz steps, no weight decay.
impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            lr: 0.05,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            ns_coefficients: NsCoefficients::Quintic,
            weight_decay: 0.0,
            momentum_warmup_start: 0.85,
            momentum_warmup_steps: 300,
        }
    }
}

impl MuonConfig {
    fn describe(&self) -> String {
        format!(
            "muon lr {} momentum {} (from {} over {} steps) nesterov {} ns_steps {} ({:?}) wd {}",
            self.lr,
            self.momentum,
            self.momentum_warmup_start,
            self.momentum_warmup_steps,
            self.nesterov,
            self.ns_steps,
            self.ns_coefficients,
            self.weight_decay
        )
    }

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
        ensure!(
            self.ns_steps > 0,
            "Muon needs at least one Newton–Schulz step"
        );
        if let Some(most) = self.ns_coefficients.max_steps() {
            ensure!(
                self.ns_steps <= most,
                "the Polar Express schedule defines {most} Newton–Schulz steps, not {}",
                self.ns_steps
            );
        }
        Ok(())
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        self.matrix.validate("matrix")?;
        for (group, rule) in [
            ("embedding", &self.embedding),
            ("head", &self.head),
            ("scalar", &self.scalar),
        ] {
            if rule.matrices_only() {
                bail!(
                    "{} works on hidden matrices only; the {group} group cannot use it",
                    rule.kind()
                );
            }
            rule.validate(group)?;
        }
        Ok(())
    }

    /// Defaults of the record each architecture comes from: the speedrun's (modded-nanogpt)
    /// for `speedrun`, llm.c's GPT-2 (124M) run for `gpt2`, with AdamW for the embeddings, the
    /// head and the scalars. The hidden matrices get `kind` with those defaults for AdamW and
    /// Muon, and with the reference defaults ([`UpdateRule::defaults`]) for the others.
    pub fn defaults(arch: Arch, kind: OptimizerKind) -> OptimConfig {
        let adam = |lr: f32, beta1: f32, eps: f32, weight_decay: f32| {
            UpdateRule::Adamw(AdamConfig {
                lr,
                beta1,
                beta2: 0.95,
                eps,
                weight_decay,
            })
        };
        match arch {
            Arch::Speedrun => OptimConfig {
                matrix: match kind {
                    // Keller Jordan's AdamW baseline learning rate (3× llm.c's).
                    OptimizerKind::Adamw => adam(0.0018, 0.8, 1e-10, 0.0),
                    _ => UpdateRule::defaults(kind),
                },
                embedding: adam(0.6, 0.8, 1e-10, 0.0),
                head: adam(0.008, 0.8, 1e-10, 0.0),
                scalar: adam(0.04, 0.8, 1e-10, 0.0),
            },
            // llm.c: AdamW lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the 2D
            // tensors (embeddings and matrices), none on gains and biases.
            Arch::Gpt2 => OptimConfig {
                matrix: match kind {
                    OptimizerKind::Adamw => adam(6e-4, 0.9, 1e-8, 0.1),
                    _ => UpdateRule::defaults(kind),
                },
                embedding: adam(6e-4, 0.9, 1e-8, 0.1),
                head: adam(6e-4, 0.9, 1e-8, 0.1),
                scalar: adam(6e-4, 0.9, 1e-8, 0.0),
            },
        }
    }

    /// The rule of `group`.
    pub fn rule(&self, group: Group) -> &UpdateRule {
        match group {
            Group::Matrix => &self.matrix,
            Group::Embedding => &self.embedding,
            Group::Head => &self.head,
            Group::Scalar => &self.scalar,
        }
    }
}

/// The update of one parameter group.
pub trait GroupOptimizer {
    /// Called once on a fresh run, after the weights are initialised (not after a restore).
    fn start(&mut self, _backend: &mut dyn Backend) -> Result<()> {
        Ok(())
    }
    /// Applies step `step` (0-based) with every learning rate multiplied by `lr_scale`, taken
    /// by the data-parallel ranks of `comm` together, each with the same gradients, so that
    /// rules can share out their work (Muon's Newton–Schulz iterations, Shampoo's and SOAP's
    /// decompositions); the others take the whole step on every rank.
    fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        comm: &dyn Comm,
    ) -> Result<()>;
    /// [`Self::step_on`] on one rank.
    fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()> {
        self.step_on(backend, step, lr_scale, &SingleRank)
    }
    /// Puts the weights to evaluate (and to save) in the parameter buffer, for optimizers that
    /// train at another point than they evaluate (Schedule-Free); [`Self::train_weights`]
    /// undoes it.
    fn eval_weights(&mut self, _backend: &mut dyn Backend) -> Result<()> {
        Ok(())
    }
    /// Puts the weights to take gradients at back in the parameter buffer.
    fn train_weights(&mut self, _backend: &mut dyn Backend) -> Result<()> {
        Ok(())
    }
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

/// Each group's parameter and gradient ranges and its specs, in [`Group::ALL`] order, for a
/// model laid out in `param_buffer` (gradients alike in `grad_buffer`).
pub fn group_ranges(
    specs: &[ParamSpec],
    param_buffer: Tensor,
    grad_buffer: Tensor,
) -> Vec<(GroupRange, Vec<&ParamSpec>)> {
    Group::ALL
        .iter()
        .filter_map(|&group| {
            let specs: Vec<_> = specs.iter().filter(|s| s.group == group).collect();
            let (first, last) = (specs.first()?, specs.last()?);
            let start = first.tensor.offset - param_buffer.offset;
            let len = last.tensor.offset + last.tensor.len - first.tensor.offset;
            assert_eq!(
                len,
                specs.iter().map(|s| s.tensor.len).sum::<usize>(),
                "the {} group is not contiguous in the parameter layout",
                group.name()
            );
            let range = GroupRange {
                group,
                param: param_buffer.slice(start, len),
                grad: grad_buffer.slice(start, len),
            };
            Some((range, specs))
        })
        .collect()
}

/// Optimizer state values (what checkpoints save) of `rule` over one group: per parameter for
/// the element-wise rules and Muon, plus the Kronecker factors and their roots or bases per
/// tile for Shampoo and SOAP.
pub fn state_values(rule: &UpdateRule, range: &GroupRange, specs: &[&ParamSpec]) -> Result<usize> {
    let len = range.param.len;
    let factors = |block, name| {
        Ok::<_, anyhow::Error>(kronecker::Tiling::new(range, specs, block, name)?.factor_len)
    };
    Ok(match rule {
        UpdateRule::Muon(_) => len,
        // z and v, and the two host scalars mirrored for checkpoints.
        UpdateRule::SfAdamw(_) => 2 * len + 2,
        // momentum (and Adam's second moment when grafting); factors and roots.
        UpdateRule::Shampoo(c) => {
            (1 + usize::from(c.graft)) * len + 2 * factors(c.block, "Shampoo")?
        }
        // m and v; factors and eigenbases.
        UpdateRule::Soap(c) => 2 * len + 2 * factors(c.block, "SOAP")?,
        rule => {
            let names = rule
                .elementwise(0, 1.0)
                .map_or(0, |r| r.state_names().len());
            names * len
        }
    })
}

/// Rank `rank` of `ranks`' share of `len` values: the rank-th of equal consecutive chunks of
/// ⌈len / ranks⌉ (the last ones shorter or empty).
pub fn shard_of(len: usize, rank: usize, ranks: usize) -> Range<usize> {
    let chunk = len.div_ceil(ranks);
    (rank * chunk).min(len)..((rank + 1) * chunk).min(len)
}

/// Sums the ranks' gradients in `part` of the flat gradient buffer `grads` (ZeRO-1): each
/// rank gets the sum of its share ([`shard_of`]) of the part, the rest of the part is left
/// unspecified. Called for each part as the backward pass completes it, so that the sums
/// overlap the rest of the pass; every rank must call it for the same parts in the same order.
pub fn reduce_scatter_gradients(
    backend: &mut dyn Backend,
    grads: Tensor,
    part: Tensor,
    comm: &dyn Comm,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    ensure!(
        part.buffer == grads.buffer
            && part.offset >= grads.offset
            && part.offset + part.len <= grads.offset + grads.len,
        "gradient part {part:?} outside the gradient buffer {grads:?}"
    );
    let start = part.offset - grads.offset;
    let shares = shares_of(start..start + part.len, grads.len, comm.size());
    backend.reduce_scatter_sum(part, &lens(&shares), comm)
}

/// Each rank's part of the flat range `span` of a buffer of `len` values, relative to the
/// span's start: its intersection with the rank's share ([`shard_of`]). In rank order the
/// parts are consecutive and cover the span.
fn shares_of(span: Range<usize>, len: usize, ranks: usize) -> Vec<Range<usize>> {
    (0..ranks)
        .map(|r| intersect(&span, &shard_of(len, r, ranks)))
        .map(|p| p.start - span.start..p.end - span.start)
        .collect()
}

fn lens(parts: &[Range<usize>]) -> Vec<usize> {
    parts.iter().map(Range::len).collect()
}

/// `a ∩ b`; an empty intersection is an empty range within `a`.
fn intersect(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    let start = a.start.max(b.start).min(a.end);
    start..a.end.min(b.end).max(start)
}

/// One optimizer state tensor as checkpoints hold it, and which part of it this rank keeps.
pub struct StatePart {
    /// `<group>.<state>`.
    pub name: String,
    /// The whole tensor's length.
    pub len: usize,
    /// Each rank's values of the whole tensor, by rank: consecutive ranges covering it; a
    /// single range where every rank keeps all of it.
    pub pieces: Vec<Range<usize>>,
    /// This rank's piece of the tensor.
    pub mine: Range<usize>,
    /// This rank's values (None where its piece is empty).
    pub tensor: Option<Tensor>,
}

/// One group: its whole range, its update rule over this rank's part of it (None if that part
/// is empty), and which part that is.
struct GroupSlot {
    range: GroupRange,
    rule: Option<Box<dyn GroupOptimizer>>,
    /// Each rank's share of the group, relative to its start: of its gradients after their
    /// reduce-scatter and, where `sharded`, of its weights and optimizer state.
    shares: Vec<Range<usize>>,
    /// Whether each rank keeps and updates only its share (ZeRO-1), not the whole group.
    sharded: bool,
    /// The names of the rule's state tensors.
    state_names: Vec<&'static str>,
    description: String,
}

/// All groups of a model with their update rules.
pub struct Optimizer {
    groups: Vec<GroupSlot>,
    rank: usize,
    ranks: usize,
}

impl Optimizer {
    pub fn new(backend: &mut dyn Backend, model: &Gpt, config: &OptimConfig) -> Result<Optimizer> {
        Self::sharded(backend, model, config, 0, 1)
    }

    /// The optimizer of rank `rank` of `ranks` data-parallel ranks (ZeRO-1): each element-wise
    /// group keeps state for, and updates, only the rank's share ([`shard_of`]) of the flat
    /// parameter buffer; the other rules (Muon, Schedule-Free, Shampoo, SOAP) keep and update
    /// every parameter on every rank. After a step the ranks must exchange their shares of the
    /// parameters.
    pub fn sharded(
        backend: &mut dyn Backend,
        model: &Gpt,
        config: &OptimConfig,
        rank: usize,
        ranks: usize,
    ) -> Result<Optimizer> {
        let mut groups = Vec::new();
        for (range, specs) in group_ranges(&model.specs, model.param_buffer, model.grad_buffer) {
            let group = range.group;
            let start = range.param.offset - model.param_buffer.offset;
            let shares = shares_of(
                start..start + range.param.len,
                model.param_buffer.len,
                ranks,
            );
            let rule: Box<dyn GroupOptimizer> = match config.rule(group) {
                rule if rule.matrices_only() && group != Group::Matrix => {
                    bail!("{} cannot update the {} group", rule.kind(), group.name())
                }
                UpdateRule::Muon(c) => Box::new(Muon::new(backend, &range, &specs, c.clone())?),
                UpdateRule::Shampoo(c) => {
                    Box::new(Shampoo::new(backend, &range, &specs, c.clone())?)
                }
                UpdateRule::Soap(c) => Box::new(Soap::new(backend, &range, &specs, c.clone())?),
                UpdateRule::SfAdamw(c) => Box::new(ScheduleFree::new(backend, &range, c.clone())?),
                rule if ranks > 1 => {
                    let mine = shares[rank].clone();
                    let part = GroupRange {
                        group,
                        param: range.param.slice(mine.start, mine.len()),
                        grad: range.grad.slice(mine.start, mine.len()),
                    };
                    let state_names = (rule.elementwise(0, 1.0))
                        .map_or_else(Vec::new, |r| r.state_names().to_vec());
                    let rule = (!mine.is_empty())
                        .then(|| Elementwise::new(backend, &part, rule.clone()))
                        .transpose()?
                        .map(|e| Box::new(e) as Box<dyn GroupOptimizer>);
                    groups.push(GroupSlot {
                        description: config.rule(group).describe(),
                        range,
                        rule,
                        shares,
                        sharded: true,
                        state_names,
                    });
                    continue;
                }
                rule => Box::new(Elementwise::new(backend, &range, rule.clone())?),
            };
            groups.push(GroupSlot {
                description: rule.describe(),
                state_names: rule.state().into_iter().map(|(name, _)| name).collect(),
                range,
                rule: Some(rule),
                shares,
                sharded: false,
            });
        }
        Ok(Optimizer {
            groups,
            rank,
            ranks,
        })
    }

    /// After every part of the gradients went through [`reduce_scatter_gradients`] (each
    /// rank holds the sum of its share, which is all its share of the element-wise groups
    /// needs), the groups every rank updates whole (Muon, Shampoo, SOAP, Schedule-Free) gather
    /// their shares. Every rank must call it.
    pub fn gather_whole_gradients(&self, backend: &mut dyn Backend, comm: &dyn Comm) -> Result<()> {
        ensure!(
            comm.size() == self.ranks,
            "an optimizer for {} ranks in a run of {}",
            self.ranks,
            comm.size()
        );
        if self.ranks == 1 {
            return Ok(());
        }
        backend.wait_for_collectives()?;
        for slot in self.groups.iter().filter(|slot| !slot.sharded) {
            backend.all_gather_pieces(slot.range.grad, &lens(&slot.shares), comm)?;
        }
        Ok(())
    }

    /// After a step, in which each rank updated its share of the element-wise groups'
    /// weights, every rank gathers the others' shares.
    pub fn gather_params(&self, backend: &mut dyn Backend, comm: &dyn Comm) -> Result<()> {
        for slot in self.groups.iter().filter(|slot| slot.sharded) {
            backend.all_gather_pieces(slot.range.param, &lens(&slot.shares), comm)?;
        }
        Ok(())
    }

    fn rules(&mut self) -> impl Iterator<Item = &mut Box<dyn GroupOptimizer>> {
        self.groups.iter_mut().filter_map(|g| g.rule.as_mut())
    }

    /// Prepares the state of a fresh run, after the weights are initialised.
    pub fn start(&mut self, backend: &mut dyn Backend) -> Result<()> {
        self.rules().try_for_each(|rule| rule.start(backend))
    }

    pub fn step(&mut self, backend: &mut dyn Backend, step: usize, lr_scale: f32) -> Result<()> {
        self.step_on(backend, step, lr_scale, &SingleRank)
    }

    /// [`Self::step`] on data-parallel ranks that all call it, with the same gradients.
    pub fn step_on(
        &mut self,
        backend: &mut dyn Backend,
        step: usize,
        lr_scale: f32,
        comm: &dyn Comm,
    ) -> Result<()> {
        self.rules()
            .try_for_each(|rule| rule.step_on(backend, step, lr_scale, comm))
    }

    /// Runs `f` with the weights to evaluate in the parameter buffer (Schedule-Free's average
    /// x), then puts the training weights back.
    pub fn with_eval_weights<T>(
        &mut self,
        backend: &mut dyn Backend,
        f: impl FnOnce(&mut dyn Backend) -> Result<T>,
    ) -> Result<T> {
        self.rules()
            .try_for_each(|rule| rule.eval_weights(backend))?;
        let result = f(backend);
        self.rules()
            .try_for_each(|rule| rule.train_weights(backend))?;
        result
    }

    /// After restoring a checkpoint (which holds the evaluation weights), puts the training
    /// weights in the parameter buffer.
    pub fn restored(&mut self, backend: &mut dyn Backend) -> Result<()> {
        self.rules()
            .try_for_each(|rule| rule.train_weights(backend))
    }

    /// This rank's state tensors, named `<group>.<state>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.state_parts()
            .into_iter()
            .filter_map(|part| Some((part.name, part.tensor?)))
            .collect()
    }

    /// Every state tensor as checkpoints hold it, with this rank's part of it. Every rank
    /// lists the same tensors in the same order.
    pub fn state_parts(&self) -> Vec<StatePart> {
        let mut parts = Vec::new();
        for slot in &self.groups {
            let tensors: Vec<Option<Tensor>> = match &slot.rule {
                Some(rule) => rule.state().into_iter().map(|(_, t)| Some(t)).collect(),
                None => vec![None; slot.state_names.len()],
            };
            let sharded = slot.sharded;
            for (&name, tensor) in slot.state_names.iter().zip(tensors) {
                // Whole tensors may be longer than the group (Kronecker factors, host scalars).
                let len = match tensor {
                    Some(t) if !sharded => t.len,
                    _ => slot.range.param.len,
                };
                let pieces = if sharded {
                    slot.shares.clone()
                } else {
                    std::iter::once(0..len).collect()
                };
                parts.push(StatePart {
                    name: format!("{}.{name}", slot.range.group.name()),
                    len,
                    mine: pieces[if sharded { self.rank } else { 0 }].clone(),
                    pieces,
                    tensor,
                });
            }
        }
        parts
    }

    /// One line per group: name, parameter count, update rule.
    pub fn describe(&self) -> Vec<String> {
        self.groups
            .iter()
            .map(|slot| {
                format!(
                    "{:<9} {:>12} params  {}",
                    slot.range.group.name(),
                    slot.range.param.len,
                    slot.description
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
