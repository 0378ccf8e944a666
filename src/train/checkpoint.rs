//! Checkpoints: one safetensors file with every parameter (`param.<name>`, in its own shape),
//! every optimizer state tensor (`optim.<group>.<state>`), and the run's state as JSON in the
//! metadata (`speedrun`): configuration, step, data position, time and curve so far. Written to
//! a temporary file and renamed into place, so a crash never leaves a partial checkpoint.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::backend::{Backend, Tensor};
use crate::data::LoaderPosition;
use crate::dist::Comm;
use crate::model::{Gpt, ParamSpec};
use crate::optim::{Optimizer, StatePart};
use crate::records::EvalPoint;

const METADATA_KEY: &str = "speedrun";
const FORMAT_VERSION: u32 = 1;

/// Everything about a run that is not a tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    pub run_id: String,
    pub config: TrainConfig,
    /// Optimizer steps done.
    pub step: usize,
    /// Where the next training batch starts.
    pub loader: LoaderPosition,
    pub tokens: u64,
    pub train_seconds: f64,
    pub eval_curve: Vec<EvalPoint>,
}

impl RunState {
    /// The state of a new run, with a fresh run id (UTC time and a random suffix).
    pub fn new(config: &TrainConfig) -> RunState {
        let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        RunState {
            format: FORMAT_VERSION,
            run_id: format!("{now}-{:04x}", rand::random::<u16>()),
            config: config.clone(),
            step: 0,
            loader: LoaderPosition::default(),
            tokens: 0,
            train_seconds: 0.0,
            eval_curve: Vec::new(),
        }
    }
}

impl RunState {
    /// Whether the state is one a run can be in; a checkpoint's is checked before it is used.
    fn check(&self) -> Result<()> {
        // The run id names a directory: keep it a plain name.
        ensure!(
            !self.run_id.is_empty()
                && self
                    .run_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "run id {:?} is not a plain name",
            self.run_id
        );
        ensure!(
            self.step <= self.config.max_steps,
            "step {} is past the run's {} steps",
            self.step,
            self.config.max_steps
        );
        let expected = self.step as u64 * self.config.batch_tokens() as u64;
        ensure!(
            self.tokens == expected,
            "{} tokens after {} steps of {} tokens",
            self.tokens,
            self.step,
            self.config.batch_tokens()
        );
        ensure!(
            self.train_seconds.is_finite() && self.train_seconds >= 0.0,
            "training time {} s",
            self.train_seconds
        );
        ensure!(
            self.eval_curve
                .iter()
                .all(|p| p.step <= self.step && p.val_loss.is_finite()),
            "the validation curve has points past step {} or non-finite losses",
            self.step
        );
        Ok(())
    }

    /// Why a run in this state has nothing left to do, if it has not.
    pub fn finished(&self) -> Option<String> {
        if self.step >= self.config.max_steps {
            return Some(format!("it has done all {} steps", self.config.max_steps));
        }
        let target = self.config.target_loss?;
        let last = self.eval_curve.last().filter(|p| p.step == self.step)?;
        (last.val_loss <= target).then(|| format!("it reached the target at step {}", last.step))
    }
}

struct F32Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl View for F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(bytemuck::cast_slice(&self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn param_tensors(specs: &[ParamSpec]) -> impl Iterator<Item = (String, Vec<usize>, Tensor)> + '_ {
    specs
        .iter()
        .map(|s| (format!("param.{}", s.name), s.shape.clone(), s.tensor))
}

/// The file name of the checkpoint of `run_id` after `step` steps, under `dir`.
pub fn path_for(dir: &Path, run_id: &str, step: usize) -> PathBuf {
    dir.join(run_id).join(format!("step_{step:06}.safetensors"))
}

/// The whole of one optimizer state tensor on every rank: its parts gathered from the ranks
/// that hold them.
fn gather(backend: &mut dyn Backend, comm: &dyn Comm, part: &StatePart) -> Result<Vec<f32>> {
    let mine = (part.tensor.map(|t| backend.read(t)))
        .transpose()?
        .unwrap_or_default();
    if part.pieces.len() == 1 {
        return Ok(mine);
    }
    ensure!(
        part.pieces.len() == comm.size(),
        "{} is split over {} ranks, not {}",
        part.name,
        part.pieces.len(),
        comm.size()
    );
    let lens: Vec<usize> = part.pieces.iter().map(Range::len).collect();
    comm.gather_pieces(&mine, &lens)
}

/// Writes a checkpoint of the run. Every rank calls it (optimizer state split over ranks is
/// gathered); rank 0 writes the file, in the one-rank format whatever the number of ranks.
pub fn save(
    path: &Path,
    backend: &mut dyn Backend,
    model: &Gpt,
    optimizer: &mut Optimizer,
    state: &RunState,
    comm: &dyn Comm,
) -> Result<()> {
    let lead = comm.is_lead();
    let parts = optimizer.state_parts();
    // The weights saved are the ones to evaluate (Schedule-Free's average), as a user of the
    // checkpoint expects; a resume turns them back into training weights.
    let data = optimizer.with_eval_weights(backend, |backend| {
        let mut named = Vec::new();
        for (name, shape, tensor) in param_tensors(&model.specs).filter(|_| lead) {
            named.push((
                name,
                F32Tensor {
                    shape,
                    data: backend.read(tensor)?,
                },
            ));
        }
        for part in &parts {
            let data = gather(backend, comm, part)?;
            let shape = vec![part.len];
            named.push((format!("optim.{}", part.name), F32Tensor { shape, data }));
        }
        Ok(named)
    })?;
    if !lead {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    }
    let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(state)?)]);
    // Serialised in memory so that the file goes through the same synced write-and-rename as
    // every other file speedrun writes.
    let bytes = safetensors::serialize(data, Some(metadata))?;
    crate::atomic::write_file(path, |f| f.write_all(&bytes))
        .with_context(|| format!("cannot write checkpoint {}", path.display()))
}

/// An opened checkpoint: its run state is read, its tensors are restored on demand.
pub struct Checkpoint {
    path: PathBuf,
    mmap: Mmap,
    pub state: RunState,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let file = File::open(path)
            .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        // SAFETY: the file is only read; checkpoints are replaced by rename, never rewritten.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map checkpoint {}", path.display()))?;
        let (_, metadata) = SafeTensors::read_metadata(&mmap)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let Some(json) = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
        else {
            bail!(
                "{}: not a speedrun checkpoint (no '{METADATA_KEY}' metadata)",
                path.display()
            );
        };
        let state: RunState = serde_json::from_str(json)
            .with_context(|| format!("{}: unreadable run state", path.display()))?;
        ensure!(
            state.format == FORMAT_VERSION,
            "{}: checkpoint format {} (this build reads format {FORMAT_VERSION})",
            path.display(),
            state.format
        );
        state
            .check()
            .with_context(|| format!("{}: inconsistent run state", path.display()))?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            mmap,
            state,
        })
    }

    /// Writes every parameter, and this rank's part of every optimizer state tensor, back
    /// into the backend.
    pub fn restore(
        &self,
        backend: &mut dyn Backend,
        model: &Gpt,
        optimizer: &Optimizer,
    ) -> Result<()> {
        self.load(backend, param_tensors(&model.specs))?;
        let file = self.file()?;
        for part in optimizer.state_parts() {
            let values = self.values(&file, &format!("optim.{}", part.name), &[part.len])?;
            if let Some(tensor) = part.tensor {
                backend.write(tensor, &values[part.mine])?;
            }
        }
        Ok(())
    }

    /// Writes the parameters alone into the views `specs` describe (for generation).
    pub fn restore_params(&self, backend: &mut dyn Backend, specs: &[ParamSpec]) -> Result<()> {
        self.load(backend, param_tensors(specs))
    }

    fn file(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap)
            .with_context(|| format!("{}: corrupt safetensors data", self.path.display()))
    }

    /// The values of tensor `name`, which must be f32 of `shape`.
    fn values(&self, file: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = file
            .tensor(name)
            .with_context(|| format!("{}: no tensor '{name}'", self.path.display()))?;
        ensure!(
            view.dtype() == Dtype::F32 && view.shape() == shape,
            "{}: tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
            self.path.display(),
            view.dtype(),
            view.shape()
        );
        Ok(bytemuck::pod_collect_to_vec(view.data()))
    }

    fn load(
        &self,
        backend: &mut dyn Backend,
        tensors: impl IntoIterator<Item = (String, Vec<usize>, Tensor)>,
    ) -> Result<()> {
        let file = self.file()?;
        for (name, shape, tensor) in tensors {
            backend.write(tensor, &self.values(&file, &name, &shape)?)?;
        }
        Ok(())
    }
}
