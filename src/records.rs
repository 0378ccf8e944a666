//! The records log: one JSON object per line per finished run, and the comparison tables that
//! `speedrun records` prints from it. A line is a language-model run ([`Record`], no `kind` field
//! or `"kind": "train"`) or a grokking run ([`GrokRecord`], `"kind": "grok"`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::grok::{GrokConfig, GrokPoint, GrokResult, StopReason};
use crate::train::TrainConfig;

/// The commit this binary was built from (with "-dirty" if the tree had changes).
pub const GIT_COMMIT: &str = env!("SPEEDRUN_GIT_COMMIT");

/// One validation measurement: written as `[step, tokens, train_seconds, val_loss]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "(usize, u64, f64, f64)", into = "(usize, u64, f64, f64)")]
pub struct EvalPoint {
    pub step: usize,
    pub tokens: u64,
    /// Training wall-clock time so far, validation and checkpoints excluded.
    pub train_seconds: f64,
    pub val_loss: f64,
}

impl From<(usize, u64, f64, f64)> for EvalPoint {
    fn from((step, tokens, train_seconds, val_loss): (usize, u64, f64, f64)) -> Self {
        EvalPoint {
            step,
            tokens,
            train_seconds,
            val_loss,
        }
    }
}

impl From<EvalPoint> for (usize, u64, f64, f64) {
    fn from(p: EvalPoint) -> Self {
        (p.step, p.tokens, p.train_seconds, p.val_loss)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub run_id: String,
    /// When the run finished (RFC 3339, UTC).
    pub date: String,
    pub git_commit: String,
    pub host: String,
    pub device: String,
    /// Data-parallel ranks the run trained on (1 in records of earlier versions).
    #[serde(default = "one_rank")]
    pub ranks: usize,
    pub arch: String,
    pub model: String,
    pub params: usize,
    pub optimizer: String,
    /// Every setting of the run: model, optimizer groups, schedule, batch, data.
    pub config: TrainConfig,
    pub batch_tokens: usize,
    pub seq_len: usize,
    pub steps: usize,
    pub tokens: u64,
    pub eval_curve: Vec<EvalPoint>,
    pub target_loss: Option<f64>,
    /// Training seconds until the first validation at or below the target.
    pub time_to_target: Option<f64>,
    /// The last validation loss; NaN (written as null) for a run that diverged before any.
    #[serde(deserialize_with = "nan_if_null")]
    pub final_val_loss: f64,
    pub train_seconds: f64,
    pub peak_memory_bytes: u64,
    pub tokens_per_second: f64,
    /// Bytes of optimizer state (f32), all groups: what the optimizer adds to the weights and
    /// gradients (absent in records of earlier versions: 0).
    #[serde(default)]
    pub optimizer_state_bytes: u64,
    /// The step at which the training or validation loss stopped being finite, if it did (a
    /// study records such a trial rather than failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged_at: Option<usize>,
    /// Which trial of which study this run was, if any ([`crate::study`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<TrialTag>,
}

/// A study's trial: what it compares and the hyper-parameters it drew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialTag {
    pub study: String,
    pub workload: String,
    /// The optimizer's name in the study file.
    pub optimizer: String,
    /// Which repetition of the search (each with its own model seed), from 0.
    pub study_index: usize,
    /// The trial's index within its study, from 0: its point of the quasi-random sequence.
    pub trial: usize,
    /// Training flag (without "--") → the value drawn for it.
    pub hparams: std::collections::BTreeMap<String, serde_json::Value>,
}

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn one_rank() -> usize {
    1
}

/// The `kind` of a grokking record: always the string "grok".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrokKind {
    #[default]
    #[serde(rename = "grok")]
    Grok,
}

/// One grokking run ([`crate::grok`]): modular division, its settings and its curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrokRecord {
    /// Always "grok": what tells this line from a language-model [`Record`].
    pub kind: GrokKind,
    pub run_id: String,
    /// When the run finished (RFC 3339, UTC).
    pub date: String,
    pub git_commit: String,
    pub host: String,
    pub device: String,
    /// Every setting: modulus, split, model, optimizer, batch, stopping rule.
    pub config: GrokConfig,
    pub params: usize,
    pub train_size: usize,
    pub val_size: usize,
    pub steps: usize,
    pub train_seconds: f64,
    pub stop: StopReason,
    /// The first evaluated step (and training seconds) with train / validation accuracy ≥ 99%,
    /// or null.
    pub step_train_99: Option<usize>,
    pub seconds_train_99: Option<f64>,
    pub step_val_99: Option<usize>,
    pub seconds_val_99: Option<f64>,
    pub final_train_acc: f64,
    pub final_val_acc: f64,
    pub final_train_loss: f64,
    pub final_val_loss: f64,
    /// `[step, train_loss, train_acc, val_loss, val_acc, train_seconds]` at each evaluation.
    pub curve: Vec<GrokPoint>,
}

impl GrokRecord {
    /// The record of a finished run, dated now, with this build's commit and this host.
    pub fn new(config: &GrokConfig, result: &GrokResult) -> GrokRecord {
        let last = result.curve.last();
        let final_of = |value: fn(&GrokPoint) -> f64| last.map_or(f64::NAN, value);
        GrokRecord {
            kind: GrokKind::Grok,
            run_id: result.run_id.clone(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_commit: GIT_COMMIT.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            device: result.device.clone(),
            config: config.clone(),
            params: result.params,
            train_size: result.train_size,
            val_size: result.val_size,
            steps: result.steps,
            train_seconds: result.train_seconds,
            stop: result.stop,
            step_train_99: result.step_train_99,
            seconds_train_99: result.seconds_train_99,
            step_val_99: result.step_val_99,
            seconds_val_99: result.seconds_val_99,
            final_train_acc: final_of(|p| p.train_acc),
            final_val_acc: final_of(|p| p.val_acc),
            final_train_loss: final_of(|p| p.train_loss),
            final_val_loss: final_of(|p| p.val_loss),
            curve: result.curve.clone(),
        }
    }
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A language-model training run.
    Train(Box<Record>),
    /// A grokking run.
    Grok(Box<GrokRecord>),
}

/// Appends one record ([`Record`] or [`GrokRecord`]) as a line of JSON, creating the
/// file and its directory if needed. The line is written with a single `write` on an
/// append-mode file and synced, so concurrent runs never interleave within a line and a crash
/// cannot leave half a record.
pub fn append<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the records directory {}", dir.display()))?;
    }
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the records log {}", path.display()))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot append to the records log {}", path.display()))
}

/// Reads one line of the log, by its `kind`: absent or "train" is a [`Record`], "grok" a
/// [`GrokRecord`].
pub fn parse_entry(line: &str) -> Result<Entry> {
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let kind: Kind = serde_json::from_str(line)?;
    Ok(match kind.kind.as_deref() {
        None | Some("train") => Entry::Train(Box::new(serde_json::from_str(line)?)),
        Some("grok") => Entry::Grok(Box::new(serde_json::from_str(line)?)),
        Some(other) => bail!("unknown record kind {other:?} (expected \"train\" or \"grok\")"),
    })
}

/// Every record in a log, of both kinds, in file order; a malformed line is an error naming
/// the file and line.
pub fn load(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the records log {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            parse_entry(line)
                .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))
        })
        .collect()
}

fn seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.2} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// The tables of a log: the language-model runs (as [`train_table`]), then, if there are any,
/// the grokking runs under a "Grokking runs" heading (as [`grok_table`]); each oldest first. A
/// log of language-model runs only prints just their table.
pub fn table(entries: &[Entry]) -> String {
    let (mut train, mut grok) = (Vec::new(), Vec::new());
    for entry in entries {
        match entry {
            Entry::Train(r) => train.push(r.as_ref().clone()),
            Entry::Grok(r) => grok.push(r.as_ref().clone()),
        }
    }
    let mut out = String::new();
    if !train.is_empty() {
        out.push_str(&train_table(&train));
    }
    if !grok.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("### Grokking runs\n\n");
        out.push_str(&grok_table(&grok));
    }
    out
}

fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// A markdown table comparing grokking runs, oldest first: the step (and training time) at
/// which train and validation accuracy first reached 99%.
pub fn grok_table(records: &[GrokRecord]) -> String {
    let mut out = String::from(
        "| date | run | p | train | arch | model | optimizer | lr | wd | batch | device | steps \
         | train ≥ 99% | val ≥ 99% | final train acc | final val acc | train time | stop |\n\
         |---|---|---:|---:|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let reached = |step: Option<usize>, s: Option<f64>| match (step, s) {
        (Some(step), Some(s)) => format!("step {step} ({})", seconds(s)),
        (Some(step), None) => format!("step {step}"),
        _ => "not reached".into(),
    };
    for r in records {
        let c = &r.config;
        let lr = match c.optimizer {
            crate::optim::OptimizerKind::Muon => format!("{} (adamw {})", c.muon_lr, c.lr),
            _ => format!("{}", c.lr),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {}×{} ({}h) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.date.get(..10).unwrap_or(&r.date),
            r.run_id,
            c.p,
            r.train_size,
            c.arch,
            c.layers,
            c.width,
            c.heads,
            c.optimizer,
            lr,
            c.weight_decay,
            c.batch.map_or("full".into(), |b| b.to_string()),
            r.device,
            r.steps,
            reached(r.step_train_99, r.seconds_train_99),
            reached(r.step_val_99, r.seconds_val_99),
            percent(r.final_train_acc),
            percent(r.final_val_acc),
            seconds(r.train_seconds),
            r.stop,
        ));
    }
    out
}

/// AlgoPerf scores ([`crate::algoperf`]) of the optimizers in a log of language-model runs with
/// a target: each optimizer is a submission, each distinct workload (architecture, model, batch,
/// sequence length, data, target loss) a workload, and every run of an optimizer on a workload
/// one trial of a single study. A markdown table, best score first.
pub fn algoperf_table(records: &[Record]) -> String {
    let workload = |r: &Record| {
        let c = &r.config;
        format!(
            "{} {} | {} tokens × {} | {} | target {}",
            r.arch,
            r.model,
            r.batch_tokens,
            r.seq_len,
            c.train_data,
            r.target_loss.map_or("-".into(), |t| t.to_string())
        )
    };
    // Each run with a target, with its workload's key (formatted once).
    let runs: Vec<(String, &Record)> = (records.iter())
        .filter(|r| r.target_loss.is_some())
        .map(|r| (workload(r), r))
        .collect();
    let mut workloads: Vec<&str> = runs.iter().map(|(w, _)| w.as_str()).collect();
    workloads.sort();
    workloads.dedup();
    let mut optimizers: Vec<&str> = runs.iter().map(|(_, r)| r.optimizer.as_str()).collect();
    optimizers.sort();
    optimizers.dedup();
    let trials: Vec<Vec<crate::algoperf::Trials>> = optimizers
        .iter()
        .map(|&optimizer| {
            workloads
                .iter()
                .map(|&w| {
                    vec![
                        (runs.iter())
                            .filter(|(key, r)| r.optimizer == optimizer && key == w)
                            .map(|(_, r)| r.time_to_target)
                            .collect(),
                    ]
                })
                .collect()
        })
        .collect();
    let scores = crate::algoperf::scores(&trials);
    let mut rows: Vec<(f64, &str, usize, usize)> = optimizers
        .iter()
        .zip(&trials)
        .zip(&scores)
        .map(|((&optimizer, per_workload), &score)| {
            let runs = per_workload.iter().map(|s| s[0].len()).sum();
            let reached = per_workload
                .iter()
                .filter(|s| s[0].iter().any(Option::is_some))
                .count();
            (score, optimizer, reached, runs)
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let mut out = format!(
        "AlgoPerf scores over {} workload(s) (1 = fastest to the target on every workload; no \
         credit beyond {}× the fastest):\n\n| optimizer | score | workloads reached | runs |\n\
         |---|---:|---:|---:|\n",
        workloads.len(),
        crate::algoperf::MAX_RATIO
    );
    for (score, optimizer, reached, runs) in rows {
        out.push_str(&format!(
            "| {optimizer} | {score:.3} | {reached} | {runs} |\n"
        ));
    }
    out
}

/// A markdown table comparing language-model runs, oldest first.
pub fn train_table(records: &[Record]) -> String {
    let mut out = String::from(
        "| date | run | arch | model | params | optimizer | lr | groups | device | steps \
         | tokens | target | time to target | final val loss | train time | tokens/s |\n\
         |---|---|---|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        let target = r.target_loss.map_or("-".into(), |t| format!("{t:.4}"));
        let reached = match (r.target_loss, r.time_to_target) {
            (None, _) => "-".into(),
            (Some(_), None) => "not reached".into(),
            (Some(_), Some(t)) => seconds(t),
        };
        let optim = &r.config.optim;
        // Which groups the chosen optimizer updates: the hidden matrices, or all of them.
        let groups = if optim.embedding.kind() == optim.matrix.kind() {
            "all"
        } else {
            "matrices"
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}M | {} | {} | {} | {} | {} | {:.1}M | {} | {} | {} | {} | {:.0} |\n",
            r.date.get(..10).unwrap_or(&r.date),
            r.run_id,
            r.arch,
            r.model,
            r.params as f64 / 1e6,
            r.optimizer,
            *optim.matrix.clone().lr_mut(),
            groups,
            r.device,
            r.steps,
            r.tokens as f64 / 1e6,
            target,
            reached,
            match r.diverged_at {
                Some(step) => format!("diverged at step {step}"),
                None => format!("{:.4}", r.final_val_loss),
            },
            seconds(r.train_seconds),
            r.tokens_per_second,
        ));
    }
    out
}

#[cfg(test)]
pub mod test_support {
    use super::*;
    use crate::model::Arch;
    use crate::optim::{OptimConfig, OptimizerKind};

    /// A plausible finished run of the tiny model.
    pub fn train_record() -> Record {
        use crate::model::{ModelConfig, ModelOverrides, ModelSize};
        use crate::train::{Schedule, TrainConfig};
        let model =
            ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &ModelOverrides::default()).unwrap();
        let config = TrainConfig {
            optim: OptimConfig::defaults(Arch::Speedrun, OptimizerKind::Muon),
            model,
            schedule: Schedule {
                warmup_steps: 0,
                cooldown_frac: 0.4,
                final_lr_frac: 0.1,
            },
            micro_batch: 4,
            seq_len: 64,
            grad_accum: 1,
            train_data: "train/*.bin".into(),
            val_data: "val/*.bin".into(),
            val_tokens: 1024,
            val_every: 10,
            max_steps: 20,
            target_loss: Some(1.2),
            grad_clip: 0.0,
            seed: 0,
        };
        Record {
            run_id: "20260101-000000-abcd".into(),
            date: "2026-01-01T00:00:00Z".into(),
            git_commit: "abc".into(),
            host: "host".into(),
            device: "cpu".into(),
            ranks: 1,
            arch: "speedrun".into(),
            model: "tiny".into(),
            params: 1000,
            optimizer: "muon".into(),
            config,
            batch_tokens: 256,
            seq_len: 64,
            steps: 20,
            tokens: 5120,
            eval_curve: vec![EvalPoint::from((20, 5120, 1.5, 1.19))],
            target_loss: Some(1.2),
            time_to_target: Some(1.5),
            final_val_loss: 1.19,
            train_seconds: 1.5,
            peak_memory_bytes: 1 << 20,
            optimizer_state_bytes: 4 << 10,
            tokens_per_second: 3413.0,
            diverged_at: None,
            trial: None,
        }
    }
}
