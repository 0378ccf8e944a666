//! The training loop: batches with gradient accumulation, the optimizer step, validation,
//! checkpoints and the run's record.

pub mod checkpoint;
pub mod schedule;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use crate::backend::Backend;
use crate::data::{TrainLoader, ValData};
use crate::dist::{Comm, RankFailed, SingleRank, ThreadComm};
use crate::model::{Gpt, ModelConfig, Pass};
use crate::optim::{OptimConfig, Optimizer, reduce_scatter_gradients, shard_of};
use crate::progress::Progress;
use crate::records::{self, EvalPoint, GIT_COMMIT, Record};
use checkpoint::{Checkpoint, RunState};
pub use schedule::Schedule;

#[cfg(test)]
mod tests;

/// Most tokens in one micro-batch (with the model limits, keeps buffer sizes from overflowing).
pub const MAX_MICRO_BATCH_TOKENS: usize = 1 << 24;

/// Set (by the Ctrl-C handler) to make the loop save a checkpoint and stop after its current step.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Bytes of every optimizer state tensor: f32 on every backend (the CUDA one keeps master
/// weights and optimizer state in f32 too).
fn optimizer_state_bytes(optimizer: &Optimizer) -> u64 {
    let values: usize = optimizer.state().iter().map(|(_, t)| t.len).sum();
    (values * std::mem::size_of::<f32>()) as u64
}

/// Every setting that shapes a run's result: model, optimizer, schedule, batch, data,
/// validation and stopping rule. A resumed run must have the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Glob of the training shards.
    pub train_data: String,
    /// Glob of the validation shards.
    pub val_data: String,
    pub val_tokens: usize,
    /// Validate every this many steps (0: only at the end).
    pub val_every: usize,
    pub max_steps: usize,
    /// Stop at the first validation loss at or below this.
    pub target_loss: Option<f64>,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f32,
    pub seed: u64,
}

impl TrainConfig {
    pub fn batch_tokens(&self) -> usize {
        self.micro_batch * self.seq_len * self.grad_accum
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optim.validate()?;
        self.schedule.validate()?;
        if let Some(target) = self.target_loss {
            ensure!(
                target.is_finite(),
                "--target-loss must be finite, not {target}"
            );
        }
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "--grad-clip must be finite and not negative, not {}",
            self.grad_clip
        );
        ensure!(self.max_steps > 0, "--max-steps must be positive");
        ensure!(
            self.micro_batch > 0 && self.seq_len > 0 && self.grad_accum > 0,
            "batch sizes must be positive"
        );
        ensure!(
            self.micro_batch.saturating_mul(self.seq_len) <= MAX_MICRO_BATCH_TOKENS,
            "a micro-batch of {} × {} tokens is more than {MAX_MICRO_BATCH_TOKENS}",
            self.micro_batch,
            self.seq_len
        );
        ensure!(self.val_tokens > 0, "--val-tokens must be positive");
        Ok(())
    }
}

/// How a run reports and saves itself; none of it changes the trajectory.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub checkpoint_dir: PathBuf,
    /// Save every this many steps and at the end (0: never).
    pub checkpoint_every: usize,
    pub resume: Option<PathBuf>,
    /// Where the run's record is appended (None: nowhere).
    pub records: Option<PathBuf>,
    /// Without a terminal, log a progress line every this many steps.
    pub log_every: usize,
    /// On a non-finite loss, end the run and record where it diverged (studies: a diverged
    /// trial is a result) instead of failing.
    pub record_divergence: bool,
    /// The study trial this run is, copied into its record.
    pub trial: Option<records::TrialTag>,
}

/// The dotted paths where two JSON values differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for key in keys {
                let (va, vb) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{key}"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{}: {a} in the checkpoint, {b} now", &path[1..])),
        _ => {}
    }
}

fn ensure_same_run(saved: &TrainConfig, current: &TrainConfig, path: &Path) -> Result<()> {
    // Through JSON text, so that f32 settings print as written (0.05, not 0.0500000007).
    let json = |c: &TrainConfig| -> Result<Value> {
        Ok(serde_json::from_str(&serde_json::to_string(c)?)?)
    };
    let mut diffs = Vec::new();
    differences("", &json(saved)?, &json(current)?, &mut diffs);
    if !diffs.is_empty() {
        bail!(
            "{} belongs to a run with other settings; resume with the flags of the original run:\n  {}",
            path.display(),
            diffs.join("\n  ")
        );
    }
    Ok(())
}

/// Sets the model's gradients to those of the mean loss over the tokens of the next
/// `grad_accum` micro-batches, and returns that loss. `buffers` hold the token ids. With
/// several ranks, micro-batch i is rank (i mod ranks)'s, and during each rank's last backward
/// pass the gradients are reduce-scattered part by part ([`reduce_scatter_gradients`]): each
/// rank ends with the one-rank step's gradient in its share of the buffer, and the optimizer
/// gathers what it updates whole ([`Optimizer::gather_whole_gradients`]).
pub fn compute_gradients(
    backend: &mut dyn Backend,
    model: &Gpt,
    loader: &mut TrainLoader,
    grad_accum: usize,
    (inputs, targets): (&mut Vec<u32>, &mut Vec<u32>),
    comm: &dyn Comm,
) -> Result<f64> {
    let loss_scale = 1.0 / (model.batch * model.seq_len * grad_accum) as f32;
    model.zero_grads(backend)?;
    let mut loss = 0.0;
    for i in 0..grad_accum {
        if i % comm.size() != comm.rank() {
            loader.skip_batch()?;
            continue;
        }
        loader.next_batch(inputs, targets)?;
        loss += model.forward(backend, inputs, targets, Pass::Train { loss_scale })?;
        // In this rank's last micro-batch, each part of the gradients is summed over the
        // ranks as soon as the backward pass is done with it.
        if i + comm.size() >= grad_accum {
            let grads = model.grad_buffer;
            model.backward_with(backend, &mut |b, part| {
                reduce_scatter_gradients(b, grads, part, comm)
            })?;
        } else {
            model.backward(backend)?;
        }
    }
    Ok(comm.sum_f64(loss)? / grad_accum as f64)
}

/// Mean loss over the validation tokens (not finite if training diverged).
fn evaluate(backend: &mut dyn Backend, model: &Gpt, val: &ValData) -> Result<f64> {
    let (mut total, mut batches) = (0.0, 0);
    for (inputs, targets) in val.batches(model.batch, model.seq_len)? {
        total += model.forward(backend, &inputs, &targets, Pass::Eval)?;
        batches += 1;
    }
    Ok(total / batches as f64)
}

fn log_start(
    config: &TrainConfig,
    model: &Gpt,
    optimizer: &Optimizer,
    device: &str,
    run: &RunState,
) {
    let m = &config.model;
    info!("run {} on {device}, build {GIT_COMMIT}", run.run_id);
    info!(
        "model: {} {}: {} layers, width {}, {} heads, vocab {} (padded {}), context {}, {:.2}M parameters{}",
        m.arch,
        m.name,
        m.layers,
        m.channels,
        m.heads,
        m.vocab,
        m.padded_vocab,
        m.max_seq_len,
        model.num_params() as f64 / 1e6,
        m.softcap
            .map_or(String::new(), |c| format!(", logit soft-cap {c}")),
    );
    info!(
        "batch: {} tokens per step = {} sequences × {} tokens × {} accumulation steps",
        config.batch_tokens(),
        config.micro_batch,
        config.seq_len,
        config.grad_accum
    );
    for line in optimizer.describe() {
        info!("optimizer: {line}");
    }
    let s = &config.schedule;
    info!(
        "schedule: {} steps, warm-up {} steps, cool-down over the last {}% to {}× the peak; gradient clipping {}",
        config.max_steps,
        s.warmup_steps,
        s.cooldown_frac * 100.0,
        s.final_lr_frac,
        if config.grad_clip > 0.0 {
            format!("at {}", config.grad_clip)
        } else {
            "off".into()
        }
    );
    let when = match config.val_every {
        0 => "at the end".to_string(),
        n => format!("every {n} steps and at the end"),
    };
    info!(
        "validation: '{}' {when}; target loss {}",
        config.val_data,
        config.target_loss.map_or("none".into(), |t| t.to_string())
    );
    if run.step > 0 {
        info!(
            "resuming at step {} ({} tokens, {:.1} s of training so far)",
            run.step, run.tokens, run.train_seconds
        );
    }
}

/// Saves the run after its current step (every rank takes part; rank 0 writes and logs);
/// returns the checkpoint's path.
fn save_checkpoint(
    options: &RunOptions,
    backend: &mut dyn Backend,
    model: &Gpt,
    optimizer: &mut Optimizer,
    run: &RunState,
    comm: &dyn Comm,
) -> Result<PathBuf> {
    let path = checkpoint::path_for(&options.checkpoint_dir, &run.run_id, run.step);
    checkpoint::save(&path, backend, model, optimizer, run, comm)?;
    if comm.is_lead() {
        info!("checkpoint {}", path.display());
    }
    Ok(path)
}

/// Trains as `config` says and returns the run's record (also appended to the log if asked).
pub fn train(
    backend: &mut dyn Backend,
    config: &TrainConfig,
    options: &RunOptions,
) -> Result<Record> {
    train_rank(backend, config, options, &SingleRank)?.context("the only rank returned no record")
}

/// Makes a rank's backend, given the rank's communicator.
pub type NewBackend = dyn Fn(&dyn Comm) -> Result<Box<dyn Backend>> + Sync;

/// Trains as `config` says on `ranks` data-parallel ranks, threads of this process, each with
/// a backend of its own from `new_backend` (given the rank's communicator: a GPU rank takes
/// its GPU and joins NCCL over it) and a disjoint share of every step's micro-batches;
/// returns the run's record (rank 0's). The result equals one rank's up to the order of
/// floating-point sums. A rank that fails ends every rank's run.
pub fn train_ranks(
    config: &TrainConfig,
    options: &RunOptions,
    ranks: usize,
    new_backend: &NewBackend,
) -> Result<Record> {
    ensure!(ranks > 0, "--ranks must be positive");
    if ranks == 1 {
        return train(new_backend(&SingleRank)?.as_mut(), config, options);
    }
    let comms = ThreadComm::group(ranks);
    let results: Vec<Result<Option<Record>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (comms.iter())
            .map(|comm| {
                scope.spawn(move || {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        train_rank(new_backend(comm)?.as_mut(), config, options, comm)
                    }))
                    .unwrap_or_else(|_| Err(anyhow!("rank {} panicked", comm.rank())));
                    if result.is_err() {
                        comm.abort();
                    }
                    result
                })
            })
            .collect();
        (handles.into_iter())
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a rank's thread panicked")))
            })
            .collect()
    });
    // The first rank's own error; "another rank failed" only if no rank says more.
    let mut record = None;
    let mut echo = None;
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Ok(r) => record = record.or(r),
            Err(e) if e.downcast_ref::<RankFailed>().is_some() => echo = echo.or(Some(e)),
            Err(e) if rank == 0 => return Err(e),
            Err(e) => return Err(e.context(format!("rank {rank}"))),
        }
    }
    if let Some(e) = echo {
        return Err(e);
    }
    record.context("rank 0 returned no record")
}

/// Trains as `config` says as one rank of `comm`, whose other ranks make the same call in
/// their own processes; returns the record on rank 0 (None on the others). A rank that fails
/// aborts `comm`, so that the others end too.
pub fn train_on(
    backend: &mut dyn Backend,
    config: &TrainConfig,
    options: &RunOptions,
    comm: &dyn Comm,
) -> Result<Option<Record>> {
    let result = train_rank(backend, config, options, comm);
    if result.is_err() {
        comm.abort();
    }
    result
}

/// One rank's share of the run; rank 0 alone logs, validates, checkpoints and returns the
/// record (the others return None).
fn train_rank(
    backend: &mut dyn Backend,
    config: &TrainConfig,
    options: &RunOptions,
    comm: &dyn Comm,
) -> Result<Option<Record>> {
    let lead = comm.is_lead();
    config.validate()?;
    let ranks = comm.size();
    ensure!(
        config.grad_accum.is_multiple_of(ranks),
        "{ranks} ranks cannot share the {} micro-batches of a step equally: make --batch-tokens \
         a multiple of --micro-batch × --seq-len × the number of ranks",
        config.grad_accum
    );
    let m = &config.model;
    let model = Gpt::new(backend, m, config.micro_batch, config.seq_len)?;
    let mut optimizer =
        Optimizer::sharded(backend, &model, &config.optim, comm.rank(), comm.size())?;
    let mut run = match &options.resume {
        Some(path) => {
            let checkpoint = Checkpoint::open(path)?;
            ensure_same_run(&checkpoint.state.config, config, path)?;
            if let Some(why) = checkpoint.state.finished() {
                bail!(
                    "{} is from a finished run ({why}): nothing to resume",
                    path.display()
                );
            }
            checkpoint.restore(backend, &model, &optimizer)?;
            optimizer.restored(backend)?;
            checkpoint.state
        }
        None => {
            model.init_params(backend, config.seed)?;
            optimizer.start(backend)?;
            RunState::new(config)
        }
    };
    let mut loader = TrainLoader::new(
        &config.train_data,
        config.micro_batch,
        config.seq_len,
        m.vocab,
        run.loader,
    )
    .context("training data (--train-data)")?;
    let device = backend.describe();
    // Rank 0 validates and broadcasts the loss.
    let val = if lead {
        let val = ValData::load(&config.val_data, config.val_tokens, m.vocab)
            .context("validation data (--val-data, --val-tokens)")?;
        // Checked now rather than at the first validation, which may come at the end of the run.
        let val_batches = val
            .batch_count(config.micro_batch, config.seq_len)
            .context("validation data (--val-tokens)")?;
        log_start(config, &model, &optimizer, &device, &run);
        if comm.size() > 1 {
            info!(
                "data parallel: {} ranks, {} micro-batches each per step",
                comm.size(),
                config.grad_accum / comm.size()
            );
        }
        info!(
            "data: {} training shard(s) matching '{}'; {} validation tokens in {val_batches} batches",
            loader.files().len(),
            config.train_data,
            val.num_tokens()
        );
        Some(val)
    } else {
        None
    };

    // Every rank must start where rank 0 does (the same checkpoint, or none).
    for (what, value) in [
        ("step", run.step),
        ("data shard", run.loader.shard),
        ("data offset", run.loader.offset),
        ("data epoch", run.loader.epoch),
    ] {
        let lead_value = comm.broadcast_f64(value as f64, 0)?;
        ensure!(
            lead_value == value as f64,
            "rank {} starts at {what} {value} where rank 0 starts at {lead_value}: resume every \
             rank from the same checkpoint",
            comm.rank()
        );
    }
    let tokens_per_step = config.batch_tokens() as u64;
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let progress = lead.then(|| Progress::new(config.max_steps, run.step, options.log_every));
    let mut time_to_target = None;
    let mut diverged_at = None;
    // A non-finite loss at `step`: the end of the run, recorded or failed as `options` say.
    let diverged = |step: usize, which: &str, loss: f64| -> Result<Option<usize>> {
        ensure!(
            options.record_divergence,
            "training diverged at step {step}: the {which} loss is {loss}"
        );
        if lead {
            info!("training diverged at step {step}: the {which} loss is {loss}; ending the run");
        }
        Ok(Some(step))
    };
    loop {
        let step = run.step;
        let last = step >= config.max_steps;
        let evaluated = run.eval_curve.last().is_some_and(|p| p.step == step);
        if !evaluated && (last || (config.val_every > 0 && step.is_multiple_of(config.val_every))) {
            // Every rank puts its evaluation weights in and back (Schedule-Free's round trip
            // is not exact), so that the replicas stay identical; rank 0 evaluates.
            let val_loss = optimizer.with_eval_weights(backend, |b| match &val {
                Some(val) => evaluate(b, &model, val),
                None => Ok(f64::NAN),
            })?;
            let val_loss = comm.broadcast_f64(val_loss, 0)?;
            if !val_loss.is_finite() {
                diverged_at = diverged(step, "validation", val_loss)?;
                break;
            }
            run.eval_curve.push(EvalPoint {
                step,
                tokens: run.tokens,
                train_seconds: run.train_seconds,
                val_loss,
            });
            if lead {
                info!(
                    "step {step:>6} | val loss {val_loss:.4} | train time {:.1} s",
                    run.train_seconds
                );
            }
        }
        let reached = |p: &&EvalPoint| {
            config
                .target_loss
                .is_some_and(|t| p.step == step && p.val_loss <= t)
        };
        if let Some(point) = run.eval_curve.last().filter(reached) {
            time_to_target = Some(point.train_seconds);
            if lead {
                info!(
                    "target reached at step {step} after {:.1} s of training",
                    point.train_seconds
                );
            }
            break;
        }
        if last {
            break;
        }

        let started = Instant::now();
        let loss = compute_gradients(
            backend,
            &model,
            &mut loader,
            config.grad_accum,
            (&mut inputs, &mut targets),
            comm,
        )?;
        optimizer.gather_whole_gradients(backend, comm)?;
        if config.grad_clip > 0.0 {
            // Each rank's share holds summed gradients (the rest may hold its own).
            let grads = model.grad_buffer;
            let share = shard_of(grads.len, comm.rank(), comm.size());
            let share = grads.slice(share.start, share.len());
            let norm = comm.sum_f64(backend.sum_squares(share)?)?.sqrt();
            if norm > config.grad_clip as f64 {
                backend.scale(grads, (config.grad_clip as f64 / norm) as f32)?;
            }
        }
        let lr_scale = config.schedule.lr_scale(step, config.max_steps);
        optimizer.step_on(backend, step, lr_scale, comm)?;
        optimizer.gather_params(backend, comm)?;
        backend.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        if !loss.is_finite() {
            diverged_at = diverged(step, "training", loss)?;
            break;
        }
        run.step += 1;
        run.tokens += tokens_per_step;
        run.train_seconds += seconds;
        run.loader = loader.position();
        if let Some(progress) = &progress {
            progress.update(
                run.step,
                &format!(
                    "step {:>6}/{} | loss {loss:.4} | lr × {lr_scale:.3} | {:.1} ms | {:.0} tokens/s",
                    run.step,
                    config.max_steps,
                    seconds * 1e3,
                    tokens_per_step as f64 / seconds
                ),
            );
        }
        if options.checkpoint_every > 0
            && run.step.is_multiple_of(options.checkpoint_every)
            && run.step < config.max_steps
        {
            save_checkpoint(options, backend, &model, &mut optimizer, &run, comm)?;
        }
        // Rank 0 decides, so that every rank stops after the same step.
        // After the last step the loop validates and ends by itself: no checkpoint of a run
        // that cannot be resumed.
        let stop = STOP_REQUESTED.load(Ordering::Relaxed);
        if comm.broadcast_f64(f64::from(u8::from(stop)), 0)? != 0.0 && run.step < config.max_steps {
            let path = save_checkpoint(options, backend, &model, &mut optimizer, &run, comm)?;
            if !lead {
                bail!(
                    "interrupted after step {}; node 0 saved the checkpoint",
                    run.step
                );
            }
            bail!(
                "interrupted after step {}; continue with the same flags and --resume {}",
                run.step,
                path.display()
            );
        }
    }
    drop(progress);
    // Diverged weights are no use to anyone: no final checkpoint then.
    if options.checkpoint_every > 0 && diverged_at.is_none() {
        save_checkpoint(options, backend, &model, &mut optimizer, &run, comm)?;
    }
    if !lead {
        return Ok(None);
    }

    let final_val_loss = run.eval_curve.last().map_or(f64::NAN, |p| p.val_loss);
    let record = Record {
        run_id: run.run_id.clone(),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        git_commit: GIT_COMMIT.to_string(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        device,
        ranks: comm.size(),
        arch: m.arch.to_string(),
        model: m.name.clone(),
        params: model.num_params(),
        optimizer: config.optim.matrix.kind().to_string(),
        config: config.clone(),
        batch_tokens: config.batch_tokens(),
        seq_len: config.seq_len,
        steps: run.step,
        tokens: run.tokens,
        eval_curve: run.eval_curve,
        target_loss: config.target_loss,
        time_to_target,
        final_val_loss,
        train_seconds: run.train_seconds,
        peak_memory_bytes: backend.peak_memory_bytes(),
        tokens_per_second: run.tokens as f64 / run.train_seconds.max(f64::MIN_POSITIVE),
        optimizer_state_bytes: optimizer_state_bytes(&optimizer),
        diverged_at,
        trial: options.trial.clone(),
    };
    if let Some(path) = &options.records {
        records::append(path, &record)?;
        info!("record appended to {}", path.display());
    }
    Ok(Some(record))
}
