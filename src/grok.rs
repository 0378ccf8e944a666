//! Grokking (Power et al. 2022, "Grokking: generalization beyond overfitting on small
//! algorithmic datasets"): a small transformer trained on modular division a / b (mod p) first
//! memorises its training pairs, then — much later, and thanks to weight decay — suddenly
//! generalises to the pairs it never saw.
//!
//! Every pair (a, b) with a in 0..p and b in 1..p is one example: the sequence [a, b, =] with
//! tokens 0..p for the numbers and p for "=" (vocabulary p + 1), whose answer c = a·b⁻¹ mod p is
//! the target at the last position; the other positions are not scored. A seeded shuffle puts a
//! fraction of the pairs in the training set and the rest in the validation set. The model is
//! the crate's [`Gpt`] (2 layers, width 128, 4 heads by default), trained full-batch by default
//! with AdamW (weight decay 1 on every parameter); the loss and accuracy on both sets are
//! measured at log-spaced steps ([`is_eval_step`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backend::{Backend, IGNORE_TARGET};
use crate::model::{Arch, Gpt, ModelConfig, ModelOverrides, ModelSize, Pass};
use crate::optim::{OptimConfig, Optimizer, OptimizerKind, UpdateRule};
use crate::progress::Progress;
use crate::train::STOP_REQUESTED;

/// Largest modulus accepted: p·(p − 1) examples must fit in memory comfortably (4M at 2039).
pub const MAX_P: u32 = 2048;
/// Accuracy that counts as "learned" for [`GrokResult::step_train_99`] and
/// [`GrokResult::step_val_99`], and for stopping once grokked.
pub const ACCURACY_THRESHOLD: f64 = 0.99;
/// Tokens per example: a, b, "=".
pub const SEQ_LEN: usize = 3;

/// One example: `[a, b, EQ, answer]` with EQ = p and answer = a·b⁻¹ mod p.
pub type Example = [u32; 4];

/// Every setting of a grokking run. The default is a reduced version of Power et al.'s setup that
/// groks on a 2-core CPU in minutes: p = 47 (2162 pairs) instead of 97, half of them for
/// training, full batch, the `speedrun` architecture with 2 layers × 128 wide and 4 heads, and
/// AdamW on every parameter (lr 3e-3, betas (0.9, 0.98), eps 1e-8, weight decay 1.0), a 10-step
/// linear warm-up then a constant rate, at most 100,000 steps, stopping once the validation
/// accuracy has been ≥ 99% at two consecutive evaluations. `p: 97, lr: 1e-3` is Power et al.'s
/// own setting (hours on a CPU).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrokConfig {
    /// The prime modulus: examples are the p·(p − 1) pairs (a, b), b ≠ 0.
    pub p: u32,
    /// Fraction of the pairs used for training (round(train_frac·N) of them; the rest validate).
    pub train_frac: f64,
    /// Seeds the split, the initialisation and the order of the batches.
    pub seed: u64,
    pub arch: Arch,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    /// The update rule of every parameter, or, with Muon, Shampoo or SOAP, of the hidden
    /// matrices (AdamW updates the rest).
    pub optimizer: OptimizerKind,
    /// Learning rate of every group (all but the hidden matrices under Muon).
    pub lr: f32,
    /// Muon learning rate of the hidden matrices (with `optimizer: muon`).
    pub muon_lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Weight decay on every parameter group: decoupled (each step multiplies the weights by
    /// 1 − lr·weight_decay) for AdamW, NAdamW and Muon, added to the gradient for the others.
    pub weight_decay: f32,
    /// The learning rate ramps up linearly over this many steps, then stays constant.
    pub warmup_steps: usize,
    /// Examples per step, sampled without replacement epoch by epoch; None: the whole
    /// training set every step (full batch).
    pub batch: Option<usize>,
    pub max_steps: usize,
    /// Stop once this many seconds of training (evaluation excluded) have passed.
    pub time_budget: Option<f64>,
    /// Stop once the validation accuracy has been ≥ 99% at two consecutive evaluations.
    pub stop_when_grokked: bool,
}

impl Default for GrokConfig {
    fn default() -> Self {
        GrokConfig {
            p: 47,
            train_frac: 0.5,
            seed: 0,
            arch: Arch::Speedrun,
            layers: 2,
            width: 128,
            heads: 4,
            optimizer: OptimizerKind::Adamw,
            lr: 3e-3,
            muon_lr: 0.02,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 1.0,
            warmup_steps: 10,
            batch: None,
            max_steps: 100_000,
            time_budget: None,
            stop_when_grokked: true,
        }
    }
}

impl GrokConfig {
    /// The model: `layers` × `width` with `heads` heads, vocabulary p + 1, context 3.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let overrides = ModelOverrides {
            layers: Some(self.layers),
            channels: Some(self.width),
            heads: Some(self.heads),
            vocab: Some(self.p as usize + 1),
            max_seq_len: Some(SEQ_LEN),
            ..ModelOverrides::default()
        };
        ModelConfig::new(self.arch, ModelSize::Tiny, &overrides)
    }

    /// `optimizer` on every group with `lr` and `weight_decay` (and, for the Adam family,
    /// the betas and ε; other rules keep their reference defaults), except for the matrix
    /// optimizers: Muon updates the hidden matrices at `muon_lr`, Shampoo and SOAP at `lr`, and
    /// AdamW the rest.
    pub fn optim_config(&self) -> OptimConfig {
        let with_settings = |kind| {
            let mut rule = UpdateRule::defaults(kind);
            *rule.lr_mut() = self.lr;
            *rule.weight_decay_mut() = self.weight_decay;
            if let Some(adam) = rule.adam_mut() {
                (adam.beta1, adam.beta2, adam.eps) = (self.beta1, self.beta2, self.eps);
            }
            rule
        };
        let (matrix, rest) = match self.optimizer {
            OptimizerKind::Muon => {
                let mut muon = UpdateRule::defaults(OptimizerKind::Muon);
                *muon.lr_mut() = self.muon_lr;
                *muon.weight_decay_mut() = self.weight_decay;
                (muon, with_settings(OptimizerKind::Adamw))
            }
            // Shampoo and SOAP precondition the matrices; AdamW updates the rest.
            kind if UpdateRule::defaults(kind).matrices_only() => {
                (with_settings(kind), with_settings(OptimizerKind::Adamw))
            }
            kind => (with_settings(kind), with_settings(kind)),
        };
        OptimConfig {
            matrix,
            embedding: rest.clone(),
            head: rest.clone(),
            scalar: rest,
        }
    }

    /// Checks every setting; the sizes of the split are checked by [`modular_division`].
    pub fn validate(&self) -> Result<()> {
        check_modulus(self.p)?;
        check_train_frac(self.train_frac)?;
        self.model_config()?;
        self.optim_config().validate()?;
        ensure!(self.max_steps > 0, "the number of steps must be positive");
        ensure!(
            self.batch != Some(0),
            "the batch size must be positive (or full batch)"
        );
        if let Some(budget) = self.time_budget {
            ensure!(
                budget.is_finite() && budget > 0.0,
                "the time budget must be positive and finite, not {budget}"
            );
        }
        Ok(())
    }
}

/// One evaluation: written as `[step, train_loss, train_acc, val_loss, val_acc, train_seconds]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "(usize, f64, f64, f64, f64, f64)",
    into = "(usize, f64, f64, f64, f64, f64)"
)]
pub struct GrokPoint {
    pub step: usize,
    /// Mean loss and accuracy over the whole training set (evaluation mode).
    pub train_loss: f64,
    pub train_acc: f64,
    /// Mean loss and accuracy over the whole validation set.
    pub val_loss: f64,
    pub val_acc: f64,
    /// Training wall-clock time so far, evaluation excluded.
    pub train_seconds: f64,
}

impl From<(usize, f64, f64, f64, f64, f64)> for GrokPoint {
    fn from(t: (usize, f64, f64, f64, f64, f64)) -> Self {
        let (step, train_loss, train_acc, val_loss, val_acc, train_seconds) = t;
        GrokPoint {
            step,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            train_seconds,
        }
    }
}

impl From<GrokPoint> for (usize, f64, f64, f64, f64, f64) {
    fn from(p: GrokPoint) -> Self {
        (
            p.step,
            p.train_loss,
            p.train_acc,
            p.val_loss,
            p.val_acc,
            p.train_seconds,
        )
    }
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Validation accuracy ≥ 99% at two consecutive evaluations.
    Grokked,
    MaxSteps,
    TimeBudget,
    /// Ctrl-C ([`STOP_REQUESTED`]).
    Interrupted,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Grokked => "grokked",
            StopReason::MaxSteps => "max steps",
            StopReason::TimeBudget => "time budget",
            StopReason::Interrupted => "interrupted",
        })
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrokResult {
    /// UTC start time and a random suffix, as for language-model runs.
    pub run_id: String,
    /// The backend, in words.
    pub device: String,
    pub params: usize,
    pub train_size: usize,
    pub val_size: usize,
    /// Evaluations at log-spaced steps and at the end.
    pub curve: Vec<GrokPoint>,
    /// The first evaluated step (and its training seconds) with train / validation accuracy
    /// ≥ 99%, if any.
    pub step_train_99: Option<usize>,
    pub seconds_train_99: Option<f64>,
    pub step_val_99: Option<usize>,
    pub seconds_val_99: Option<f64>,
    pub steps: usize,
    pub train_seconds: f64,
    pub stop: StopReason,
}

fn is_prime(p: u32) -> bool {
    p >= 2
        && (2..)
            .take_while(|d| d * d <= p)
            .all(|d| !p.is_multiple_of(d))
}

fn check_modulus(p: u32) -> Result<()> {
    ensure!(
        (3..=MAX_P).contains(&p),
        "the modulus p must be a prime in 3..={MAX_P}, not {p}"
    );
    ensure!(
        is_prime(p),
        "the modulus p must be prime (division mod p needs every b ≠ 0 invertible), not {p}"
    );
    Ok(())
}

fn check_train_frac(train_frac: f64) -> Result<()> {
    ensure!(
        train_frac > 0.0 && train_frac < 1.0,
        "the training fraction must lie strictly between 0 and 1, not {train_frac}"
    );
    Ok(())
}

/// b^e mod p.
fn pow_mod(b: u32, mut e: u32, p: u32) -> u32 {
    let (mut base, mut acc, p) = (b as u64 % p as u64, 1u64, p as u64);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc * base % p;
        }
        base = base * base % p;
        e >>= 1;
    }
    acc as u32
}

/// The modular division data set: every pair (a, b), a in 0..p, b in 1..p, as
/// `[a, b, EQ = p, a·b⁻¹ mod p]` (the inverse by Fermat: b^(p−2)), split by a shuffle seeded with
/// `seed` into (train, validation): the first round(train_frac·N) of the shuffled N = p·(p − 1)
/// pairs train. `p` must be a prime in 3..=[`MAX_P`] and both sets non-empty.
pub fn modular_division(
    p: u32,
    train_frac: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    check_modulus(p)?;
    check_train_frac(train_frac)?;
    let mut examples: Vec<Example> = (0..p)
        .flat_map(|a| {
            (1..p).map(move |b| {
                let c = (a as u64 * pow_mod(b, p - 2, p) as u64 % p as u64) as u32;
                [a, b, p, c]
            })
        })
        .collect();
    let n = examples.len();
    let train = (train_frac * n as f64).round() as usize;
    ensure!(
        train > 0 && train < n,
        "a training fraction of {train_frac} of {n} pairs leaves {train} for training and {} \
         for validation: both need at least one",
        n - train
    );
    examples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let val = examples.split_off(train);
    Ok((examples, val))
}

/// The evaluation steps: 1 to 10, then 15 per decade (mantissas 10, 12, 15, 17, 20, 25, 30, 35,
/// 40, 45, 50, 60, 70, 80, 90: 12, 15, 17, 20, …, 90, 100, 120, …), at most 25% apart.
pub fn is_eval_step(step: usize) -> bool {
    const MANTISSAS: [usize; 15] = [10, 12, 15, 17, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90];
    if step <= 10 {
        return step >= 1;
    }
    let mut scale = 1;
    while step / scale >= 100 {
        scale *= 10;
    }
    step.is_multiple_of(scale) && MANTISSAS.contains(&(step / scale))
}

/// Model inputs and targets for `examples` (one row of 3 positions each; only the last is
/// scored), padded to `rows` examples with rows whose targets are all ignored.
fn batch_tokens(examples: &[Example], rows: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
    inputs.clear();
    targets.clear();
    for e in examples {
        inputs.extend_from_slice(&e[..3]);
        targets.extend_from_slice(&[IGNORE_TARGET, IGNORE_TARGET, e[3]]);
    }
    let eq = examples.first().map_or(0, |e| e[2]);
    for _ in examples.len()..rows {
        inputs.extend_from_slice(&[0, 0, eq]);
        targets.extend_from_slice(&[IGNORE_TARGET; 3]);
    }
}

/// A data set cut into model-sized chunks, tokens prepared once.
struct EvalSet {
    chunks: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>, // inputs, targets, answers
    size: usize,
}

impl EvalSet {
    fn new(examples: &[Example], rows: usize) -> EvalSet {
        let chunks = examples
            .chunks(rows)
            .map(|chunk| {
                let (mut inputs, mut targets) = (Vec::new(), Vec::new());
                batch_tokens(chunk, rows, &mut inputs, &mut targets);
                (inputs, targets, chunk.iter().map(|e| e[3]).collect())
            })
            .collect();
        EvalSet {
            chunks,
            size: examples.len(),
        }
    }

    /// Mean loss and accuracy (argmax of the answer position's logits) over the set.
    fn evaluate(&self, backend: &mut dyn Backend, model: &Gpt) -> Result<(f64, f64)> {
        let (vocab, padded) = (model.config.vocab, model.config.padded_vocab);
        let (mut loss, mut correct) = (0.0, 0usize);
        for (inputs, targets, answers) in &self.chunks {
            loss += model.forward(backend, inputs, targets, Pass::Eval)? * answers.len() as f64;
            let logits = model.logits(backend)?;
            for (i, &answer) in answers.iter().enumerate() {
                let row = (i * SEQ_LEN + SEQ_LEN - 1) * padded;
                let best = argmax(&logits[row..row + vocab]);
                correct += usize::from(best == answer as usize);
            }
        }
        let n = self.size as f64;
        Ok((loss / n, correct as f64 / n))
    }
}

/// Index of the largest value (the first on ties).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Where the training examples of each step come from.
struct Batches {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// None: the whole training set every step (its tokens prepared once).
    sampler: Option<Sampler>,
}

/// `batch` examples per step, without replacement within an epoch (shuffled per epoch).
struct Sampler {
    order: Vec<usize>,
    next: usize,
    batch: usize,
    rng: ChaCha8Rng,
    picked: Vec<Example>,
}

impl Batches {
    fn new(train: &[Example], batch: Option<usize>, seed: u64) -> Batches {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let sampler = match batch {
            Some(batch) if batch < train.len() => Some(Sampler {
                order: (0..train.len()).collect(),
                next: train.len(), // shuffle before the first batch
                batch,
                // Not the split's stream: a stream of its own, from the same seed.
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6261_7463_6865_7321),
                picked: Vec::with_capacity(batch),
            }),
            _ => {
                batch_tokens(train, train.len(), &mut inputs, &mut targets);
                None
            }
        };
        Batches {
            inputs,
            targets,
            sampler,
        }
    }

    /// The next step's inputs and targets.
    fn next(&mut self, train: &[Example]) -> (&[u32], &[u32]) {
        if let Some(s) = &mut self.sampler {
            if s.next + s.batch > s.order.len() {
                s.order.shuffle(&mut s.rng);
                s.next = 0;
            }
            s.picked.clear();
            let indices = &s.order[s.next..s.next + s.batch];
            s.picked.extend(indices.iter().map(|&i| train[i]));
            s.next += s.batch;
            batch_tokens(&s.picked, s.batch, &mut self.inputs, &mut self.targets);
        }
        (&self.inputs, &self.targets)
    }
}

/// Trains a model on modular division as `config` says and returns its curve. Progress shows as
/// a bar on a terminal, otherwise as a log line every `log_every` steps (0: never); every
/// evaluation is logged. Stops at `max_steps`, at the time budget, at Ctrl-C
/// ([`STOP_REQUESTED`]) or, with `stop_when_grokked`, once grokked; always evaluates last.
pub fn run(backend: &mut dyn Backend, config: &GrokConfig, log_every: usize) -> Result<GrokResult> {
    config.validate()?;
    let (train, val) = modular_division(config.p, config.train_frac, config.seed)?;
    if let Some(batch) = config.batch {
        ensure!(
            batch <= train.len(),
            "a batch of {batch} examples is more than the {} training examples",
            train.len()
        );
    }
    let rows = config.batch.unwrap_or(train.len());
    let model_config = config.model_config()?;
    let model = Gpt::new(backend, &model_config, rows, SEQ_LEN)?;
    model.init_params(backend, config.seed)?;
    let optim = config.optim_config();
    let mut optimizer = Optimizer::new(backend, &model, &optim)?;
    optimizer.start(backend)?;
    let (train_set, val_set) = (EvalSet::new(&train, rows), EvalSet::new(&val, rows));
    let mut batches = Batches::new(&train, config.batch, config.seed);

    let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let run_id = format!("{now}-{:04x}", rand::random::<u16>());
    let device = backend.describe();
    info!("grok run {run_id} on {device}");
    info!(
        "data: a / b mod {} — {} pairs, {} for training ({:.0}%), {} for validation",
        config.p,
        train.len() + val.len(),
        train.len(),
        100.0 * train.len() as f64 / (train.len() + val.len()) as f64,
        val.len()
    );
    info!(
        "model: {}: {} layers, width {}, {} heads, vocab {}, {} parameters",
        model_config.arch,
        model_config.layers,
        model_config.channels,
        model_config.heads,
        model_config.vocab,
        model.num_params()
    );
    for line in optimizer.describe() {
        info!("optimizer: {line}");
    }
    info!(
        "{} examples per step, warm-up {} steps, at most {} steps{}{}",
        rows,
        config.warmup_steps,
        config.max_steps,
        config
            .time_budget
            .map_or(String::new(), |s| format!(" or {s} s of training")),
        if config.stop_when_grokked {
            ", until grokked"
        } else {
            ""
        }
    );

    let loss_scale = 1.0 / rows as f32;
    let progress = Progress::new(config.max_steps, 0, log_every);
    let mut curve: Vec<GrokPoint> = Vec::new();
    let (mut step, mut train_seconds) = (0, 0.0);
    let stop = loop {
        let started = Instant::now();
        let (inputs, targets) = batches.next(&train);
        model.zero_grads(backend)?;
        let loss = model.forward(backend, inputs, targets, Pass::Train { loss_scale })?;
        model.backward(backend)?;
        let lr_scale = ((step + 1) as f32 / config.warmup_steps.max(1) as f32).min(1.0);
        optimizer.step(backend, step, lr_scale)?;
        backend.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        if !loss.is_finite() {
            bail!("training diverged at step {step}: the training loss is {loss}");
        }
        step += 1;
        train_seconds += seconds;
        progress.update(
            step,
            &format!(
                "step {step:>6}/{} | loss {loss:.4} | lr × {lr_scale:.3} | {:.1} ms",
                config.max_steps,
                seconds * 1e3
            ),
        );

        let limit = if step >= config.max_steps {
            Some(StopReason::MaxSteps)
        } else if config.time_budget.is_some_and(|b| train_seconds >= b) {
            Some(StopReason::TimeBudget)
        } else if STOP_REQUESTED.load(Ordering::Relaxed) {
            Some(StopReason::Interrupted)
        } else {
            None
        };
        if !is_eval_step(step) && limit.is_none() {
            continue;
        }
        let ((train_loss, train_acc), (val_loss, val_acc)) = optimizer
            .with_eval_weights(backend, |b| {
                Ok((train_set.evaluate(b, &model)?, val_set.evaluate(b, &model)?))
            })?;
        ensure!(
            train_loss.is_finite() && val_loss.is_finite(),
            "training diverged at step {step}: train loss {train_loss}, validation loss {val_loss}"
        );
        info!(
            "step {step:>6} | train loss {train_loss:.4} acc {:5.1}% | val loss {val_loss:.4} acc {:5.1}% | train time {train_seconds:.1} s",
            100.0 * train_acc,
            100.0 * val_acc
        );
        let grokked = val_acc >= ACCURACY_THRESHOLD
            && curve
                .last()
                .is_some_and(|p| p.val_acc >= ACCURACY_THRESHOLD);
        curve.push(GrokPoint {
            step,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            train_seconds,
        });
        if grokked && config.stop_when_grokked {
            break StopReason::Grokked;
        }
        if let Some(reason) = limit {
            break reason;
        }
    };
    drop(progress);

    let first = |accuracy: fn(&GrokPoint) -> f64| {
        curve
            .iter()
            .find(|p| accuracy(p) >= ACCURACY_THRESHOLD)
            .map(|p| (p.step, p.train_seconds))
    };
    let train_99 = first(|p| p.train_acc);
    let val_99 = first(|p| p.val_acc);
    let describe = |what: &str, at: Option<(usize, f64)>| match at {
        Some((step, s)) => format!("{what} ≥ 99% at step {step} ({s:.1} s)"),
        None => format!("{what} never ≥ 99%"),
    };
    info!(
        "stopped ({stop}) after {step} steps, {train_seconds:.1} s of training: {}; {}{}",
        describe("train accuracy", train_99),
        describe("validation accuracy", val_99),
        if stop == StopReason::Grokked {
            " — grokked"
        } else {
            ""
        }
    );
    Ok(GrokResult {
        run_id,
        device,
        params: model.num_params(),
        train_size: train.len(),
        val_size: val.len(),
        curve,
        step_train_99: train_99.map(|(s, _)| s),
        seconds_train_99: train_99.map(|(_, t)| t),
        step_val_99: val_99.map(|(s, _)| s),
        seconds_val_99: val_99.map(|(_, t)| t),
        steps: step,
        train_seconds,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::records::{self, Entry, GrokRecord};

    #[test]
    fn the_data_set_holds_every_pair_once_with_the_right_answer() {
        for (p, frac) in [(3, 0.5), (7, 0.3), (31, 0.5), (97, 0.4)] {
            let (train, val) = modular_division(p, frac, 5).unwrap();
            let n = (p * (p - 1)) as usize;
            assert_eq!(train.len() + val.len(), n);
            assert_eq!(train.len(), (frac * n as f64).round() as usize, "p {p}");
            let mut seen = HashSet::new();
            for &[a, b, eq, c] in train.iter().chain(&val) {
                assert!(a < p && (1..p).contains(&b) && c < p, "{a} {b} {c}");
                assert_eq!(eq, p, "the = token");
                // c·b ≡ a (mod p), checked by multiplication rather than by an inverse.
                assert_eq!(c * b % p, a, "{a} / {b} mod {p} is not {c}");
                assert!(seen.insert((a, b)), "({a}, {b}) appears twice");
            }
            assert_eq!(seen.len(), n);
        }
    }

    #[test]
    fn the_split_depends_only_on_the_seed() {
        let (train, val) = modular_division(23, 0.5, 1).unwrap();
        assert_eq!(modular_division(23, 0.5, 1).unwrap(), (train.clone(), val));
        let (other, _) = modular_division(23, 0.5, 2).unwrap();
        assert_eq!(other.len(), train.len());
        assert_ne!(
            other.iter().collect::<HashSet<_>>(),
            train.iter().collect::<HashSet<_>>()
        );
    }

    #[test]
    fn bad_moduli_and_fractions_are_errors() {
        for p in [0, 1, 2, 4, 9, 15, 91, 2049] {
            let error = modular_division(p, 0.5, 0).unwrap_err().to_string();
            assert!(error.contains("prime"), "{p}: {error}");
        }
        for frac in [0.0, 1.0, -0.5, f64::NAN, 0.001] {
            assert!(modular_division(5, frac, 0).is_err(), "{frac}");
        }
        let config = GrokConfig {
            p: 21,
            ..GrokConfig::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("prime"));
    }

    #[test]
    fn every_optimizer_makes_a_valid_configuration() {
        use clap::ValueEnum;
        for &optimizer in OptimizerKind::value_variants() {
            let config = GrokConfig {
                optimizer,
                ..GrokConfig::default()
            };
            config.validate().unwrap();
            let optim = config.optim_config();
            assert_eq!(optim.matrix.kind(), optimizer);
            let rest = if optim.matrix.matrices_only() {
                OptimizerKind::Adamw
            } else {
                optimizer
            };
            assert_eq!(optim.embedding.kind(), rest, "{optimizer}");
        }
    }

    #[test]
    fn eval_steps_are_log_spaced() {
        let steps: Vec<usize> = (0..=1000).filter(|&s| is_eval_step(s)).collect();
        assert_eq!(
            &steps[..20],
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 17, 20, 25, 30, 35, 40, 45, 50
            ]
        );
        assert_eq!(steps.len(), 10 + 15 + 15);
        assert!(is_eval_step(1200) && is_eval_step(100_000) && !is_eval_step(1250));
        for pair in steps.windows(2).skip(9) {
            assert!(pair[1] as f64 / pair[0] as f64 <= 1.25 + 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn a_short_run_memorises_the_training_set() {
        let config = GrokConfig {
            p: 11,
            width: 64,
            lr: 3e-3,
            max_steps: 300,
            stop_when_grokked: false,
            ..GrokConfig::default()
        };
        let result = run(&mut CpuBackend::<f32>::new(), &config, 0).unwrap();
        let last = result.curve.last().unwrap();
        assert_eq!(result.train_size, 55);
        assert_eq!(result.steps, 300);
        assert_eq!(last.step, 300);
        assert_eq!(last.train_acc, 1.0, "{:?}", result.curve);
        assert!(result.step_train_99.is_some_and(|s| s <= 300));
        assert!(result.curve.windows(2).all(|w| w[0].step < w[1].step));
    }

    #[test]
    fn sampled_batches_cover_an_epoch_without_repeats() {
        let (train, _) = modular_division(7, 0.5, 0).unwrap();
        let mut batches = Batches::new(&train, Some(5), 1);
        let mut seen = HashSet::new();
        for _ in 0..train.len() / 5 {
            let (inputs, targets) = batches.next(&train);
            assert_eq!((inputs.len(), targets.len()), (15, 15));
            for (x, t) in inputs.chunks(3).zip(targets.chunks(3)) {
                assert_eq!(&t[..2], [IGNORE_TARGET; 2]);
                assert!(
                    seen.insert([x[0], x[1], x[2], t[2]]),
                    "repeated within an epoch"
                );
            }
        }
        assert!(seen.iter().all(|e| train.contains(e)));
    }

    #[test]
    fn sampled_batches_and_padded_evaluation_agree_with_full_batch() {
        // A batch of 20 of the 55 training examples: evaluation runs in chunks of 20 with a
        // padded last chunk; the losses at step 1 must equal those of a model evaluated in
        // one chunk from the same parameters.
        let config = GrokConfig {
            p: 11,
            width: 32,
            batch: Some(20),
            max_steps: 1,
            ..GrokConfig::default()
        };
        let (train, _) = modular_division(11, 0.5, 0).unwrap();
        let mut backend = CpuBackend::<f64>::new();
        let model_config = config.model_config().unwrap();
        let small = Gpt::new(&mut backend, &model_config, 20, SEQ_LEN).unwrap();
        let whole = Gpt::new(&mut backend, &model_config, train.len(), SEQ_LEN).unwrap();
        small.init_params(&mut backend, 3).unwrap();
        let params = backend.read(small.param_buffer).unwrap();
        backend.write(whole.param_buffer, &params).unwrap();
        let chunked = EvalSet::new(&train, 20)
            .evaluate(&mut backend, &small)
            .unwrap();
        let single = EvalSet::new(&train, train.len())
            .evaluate(&mut backend, &whole)
            .unwrap();
        assert!(
            (chunked.0 - single.0).abs() < 1e-9,
            "{chunked:?} {single:?}"
        );
        assert_eq!(chunked.1, single.1);
        // And a sampled run goes through.
        let result = run(&mut backend, &config, 0).unwrap();
        assert_eq!((result.steps, result.curve.len()), (1, 1));
    }

    #[test]
    fn the_algoperf_table_scores_each_optimizer_by_its_fastest_run() {
        // One workload; muon's fastest run 10 s, adamw's 25 s (its other run never got there):
        // ratios 1 and 2.5, scores 1 and (4 − 2.5)/3 = 0.5. A run without a target is left out.
        let run = |optimizer: &str, time: Option<f64>| {
            let mut r = crate::records::test_support::train_record();
            r.optimizer = optimizer.into();
            r.time_to_target = time;
            r
        };
        let mut untargeted = run("sgd", None);
        untargeted.target_loss = None;
        let records = [
            run("muon", Some(12.0)),
            run("muon", Some(10.0)),
            run("adamw", None),
            run("adamw", Some(25.0)),
            untargeted,
        ];
        let table = records::algoperf_table(&records);
        assert!(table.contains("over 1 workload(s)"), "{table}");
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| m") || l.starts_with("| a"))
            .collect();
        assert_eq!(
            rows,
            ["| muon | 1.000 | 1 | 2 |", "| adamw | 0.500 | 1 | 2 |"],
            "{table}"
        );
        assert!(!table.contains("sgd"));
    }

    fn a_grok_record() -> GrokRecord {
        let config = GrokConfig {
            p: 5,
            max_steps: 12,
            ..GrokConfig::default()
        };
        let result = run(&mut CpuBackend::<f32>::new(), &config, 0).unwrap();
        GrokRecord::new(&config, &result)
    }

    #[test]
    fn the_grok_record_is_a_json_line_of_kind_grok() {
        let record = a_grok_record();
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["kind"], "grok");
        assert_eq!(value["config"]["p"], 5);
        assert_eq!(value["steps"], 12);
        assert_eq!(value["train_size"], 10);
        let curve = value["curve"].as_array().unwrap();
        // Steps 1 to 10 and 12, each [step, train loss, train acc, val loss, val acc, seconds].
        assert_eq!(curve.len(), 11);
        assert_eq!(curve[10].as_array().unwrap().len(), 6);
        assert_eq!(curve[10][0], 12);
        assert_eq!(curve[10][2].as_f64().unwrap(), record.final_train_acc);
        for key in ["run_id", "date", "git_commit", "host", "device"] {
            assert!(!value[key].as_str().unwrap().is_empty(), "{key}");
        }
        for key in ["step_val_99", "seconds_val_99"] {
            assert!(value.get(key).is_some(), "{key} is written even when null");
        }
        let line = serde_json::to_string(&record).unwrap();
        let Entry::Grok(read) = records::parse_entry(&line).unwrap() else {
            panic!("a grok line read as another kind");
        };
        assert_same_grok(&read, &record);
    }

    /// Equal up to the last bit of the floats (serde_json's default float parsing is not
    /// always exact).
    fn assert_same_grok(a: &GrokRecord, b: &GrokRecord) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
        assert_eq!(
            (&a.run_id, &a.date, &a.config),
            (&b.run_id, &b.date, &b.config)
        );
        assert_eq!(
            (a.steps, a.stop, a.step_val_99),
            (b.steps, b.stop, b.step_val_99)
        );
        assert!(close(a.train_seconds, b.train_seconds));
        assert_eq!(a.curve.len(), b.curve.len());
        for (p, q) in a.curve.iter().zip(&b.curve) {
            assert_eq!(p.step, q.step);
            let values = |p: &GrokPoint| {
                [
                    p.train_loss,
                    p.train_acc,
                    p.val_loss,
                    p.val_acc,
                    p.train_seconds,
                ]
            };
            let (x, y) = (values(p), values(q));
            assert!(x.iter().zip(&y).all(|(&x, &y)| close(x, y)), "{p:?} {q:?}");
        }
    }

    #[test]
    fn the_records_log_mixes_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (train, grok) = (
            crate::records::test_support::train_record(),
            a_grok_record(),
        );
        records::append(&path, &train).unwrap();
        records::append(&path, &grok).unwrap();
        // A language-model line that says its kind.
        let mut explicit = serde_json::to_value(&train).unwrap();
        explicit["kind"] = "train".into();
        explicit["run_id"] = "20260101-000001-beef".into();
        records::append(&path, &explicit).unwrap();
        let entries = records::load(&path).unwrap();
        assert_eq!(entries.len(), 3);
        let Entry::Train(first) = &entries[0] else {
            panic!("line 1 is a language-model record")
        };
        assert_eq!(
            (&first.run_id, &first.config),
            (&train.run_id, &train.config)
        );
        let Entry::Grok(second) = &entries[1] else {
            panic!("line 2 is a grok record")
        };
        assert_same_grok(second, &grok);
        assert!(matches!(&entries[2], Entry::Train(r) if r.run_id == "20260101-000001-beef"));
        let table = records::table(&entries);
        let grok_section = table.find("### Grokking runs").expect(&table);
        assert!(table[..grok_section].contains(&train.run_id), "{table}");
        assert!(table[grok_section..].contains(&grok.run_id), "{table}");
        // Language-model runs alone print as before: one table, no grokking section.
        let lm_only = records::table(&entries[..1]);
        assert_eq!(lm_only, records::train_table(&[train]));
        // A bad line names its file and line; so does an unknown kind.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\": \"sprint\", \"run_id\": \"x\"}\n");
        std::fs::write(&path, &text).unwrap();
        let error = format!("{:#}", records::load(&path).unwrap_err());
        assert!(
            error.contains("log.jsonl:4") && error.contains("sprint"),
            "{error}"
        );
        text.push_str("{\"kind\": \"grok\", \"run_id\": 3}\n");
        std::fs::write(&path, text.replace("sprint", "grok")).unwrap();
        let error = format!("{:#}", records::load(&path).unwrap_err());
        assert!(error.contains("log.jsonl:4"), "{error}");
    }
}
