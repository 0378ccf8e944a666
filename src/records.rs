//! The records log: one JSON object per line per finished run, and the comparison table that
//! `speedrun records` prints from it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
    pub final_val_loss: f64,
    pub train_seconds: f64,
    pub peak_memory_bytes: u64,
    pub tokens_per_second: f64,
}

/// Appends one record as a line of JSON, creating the file and its directory if needed.
/// The line is written with a single `write` on an append-mode file and synced, so
/// concurrent runs never interleave within a line and a crash cannot leave half a record.
pub fn append(path: &Path, record: &Record) -> Result<()> {
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

/// Every record in a log; a malformed line is an error naming the file and line.
pub fn load(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the records log {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
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

/// A markdown table comparing runs, oldest first.
pub fn table(records: &[Record]) -> String {
    let mut out = String::from(
        "| date | run | arch | model | params | optimizer | device | steps | tokens \
         | target | time to target | final val loss | train time | tokens/s |\n\
         |---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        let target = r.target_loss.map_or("-".into(), |t| format!("{t:.4}"));
        let reached = match (r.target_loss, r.time_to_target) {
            (None, _) => "-".into(),
            (Some(_), None) => "not reached".into(),
            (Some(_), Some(t)) => seconds(t),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}M | {} | {} | {} | {:.1}M | {} | {} | {:.4} | {} | {:.0} |\n",
            r.date.get(..10).unwrap_or(&r.date),
            r.run_id,
            r.arch,
            r.model,
            r.params as f64 / 1e6,
            r.optimizer,
            r.device,
            r.steps,
            r.tokens as f64 / 1e6,
            target,
            reached,
            r.final_val_loss,
            seconds(r.train_seconds),
            r.tokens_per_second,
        ));
    }
    out
}
