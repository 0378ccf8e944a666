//! Studies: which optimizer reaches the target loss fastest, on which workload, tuned the way
//! AlgoPerf's external-tuning ruleset tunes submissions. A study file names workloads (the
//! training flags of a model, data, target and step budget), optimizers (their flags and a
//! search space of hyper-parameters) and how many trials each optimizer gets; every trial is one
//! training run whose record carries its [`TrialTag`].
//!
//! Trial i of every optimizer takes the i-th point of the same quasi-random (Halton) sequence,
//! mapped through that optimizer's own search space (one coordinate per flag, the same for
//! every optimizer that searches it), so no optimizer is luckier in its draws.
//! With `studies = N` the whole search is repeated N times with different model seeds; AlgoPerf
//! scores by the median over studies of each study's fastest trial ([`crate::algoperf`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::Value;

use crate::records::TrialTag;

/// Training flags the study sets itself, one value per trial: not allowed in a study file.
const MANAGED_FLAGS: [&str; 6] = [
    "seed",
    "records",
    "no-record",
    "checkpoint-dir",
    "resume",
    "threads",
];

/// A study file (TOML, or JSON if the name ends in `.json`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// Names the study in every trial's record; letters, digits, '.', '_' and '-'.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The records log the trials are appended to.
    #[serde(default = "default_records")]
    pub records: PathBuf,
    /// Trials checkpoint under `<checkpoint_dir>/<study>/<workload>/<optimizer>/s<study>-t<trial>`.
    #[serde(default = "default_checkpoint_dir")]
    pub checkpoint_dir: PathBuf,
    /// Keep each finished trial's checkpoints (by default they are deleted once its record is
    /// written).
    #[serde(default)]
    pub keep_checkpoints: bool,
    /// Trials per optimizer, workload and study.
    pub trials: usize,
    /// Repetitions of the whole search, study k training with model seed `seed + k`.
    #[serde(default = "one")]
    pub studies: usize,
    /// The model seed of study 0.
    #[serde(default)]
    pub seed: u64,
    /// Seed of the random shift applied to the Halton points.
    #[serde(default)]
    pub search_seed: u64,
    /// Training flags of every trial (workload and optimizer flags come after them).
    #[serde(default)]
    pub args: Vec<String>,
    pub workloads: Vec<WorkloadSpec>,
    pub optimizers: Vec<OptimizerSpec>,
}

fn default_records() -> PathBuf {
    PathBuf::from("records/records.jsonl")
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("checkpoints/studies")
}

fn one() -> usize {
    1
}

/// A model, its data, target loss and step budget: training flags.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    pub args: Vec<String>,
}

/// An optimizer's fixed flags and the hyper-parameters its trials draw.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    pub name: String,
    pub args: Vec<String>,
    /// Training flag (without the leading "--") → the distribution its value is drawn from.
    #[serde(default)]
    pub search: BTreeMap<String, Distribution>,
}

/// Where a hyper-parameter is drawn from, by a point u in [0, 1).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Uniform in [lo, hi].
    Uniform([f64; 2]),
    /// Uniform in log space between lo > 0 and hi (learning rates, ε).
    LogUniform([f64; 2]),
    /// 1 − x with x log-uniform in [lo, hi] (β's near 1, as AlgoPerf's baselines draw them).
    OneMinusLogUniform([f64; 2]),
    /// An integer in lo..=hi, each equally likely.
    IntUniform([i64; 2]),
    /// One of the listed values (numbers, strings or booleans), each equally likely.
    Choice(Vec<Value>),
}

/// Rounds to 4 significant digits: the values print as written and re-parse exactly.
fn round_significant(x: f64) -> f64 {
    if !x.is_normal() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

impl Distribution {
    fn validate(&self) -> Result<()> {
        let ordered = |[lo, hi]: [f64; 2]| {
            ensure!(
                lo.is_finite() && hi.is_finite() && lo <= hi,
                "bounds [{lo}, {hi}] must be finite with lo ≤ hi"
            );
            Ok(())
        };
        match self {
            Distribution::Uniform(b) => ordered(*b),
            Distribution::LogUniform(b) | Distribution::OneMinusLogUniform(b) => {
                ordered(*b)?;
                ensure!(
                    b[0] > 0.0,
                    "log-uniform bounds must be positive, not {}",
                    b[0]
                );
                Ok(())
            }
            Distribution::IntUniform([lo, hi]) => {
                ensure!(lo <= hi, "bounds [{lo}, {hi}] must have lo ≤ hi");
                ensure!(
                    hi.checked_sub(*lo).and_then(|d| d.checked_add(1)).is_some(),
                    "bounds [{lo}, {hi}] span more integers than fit in 64 bits"
                );
                Ok(())
            }
            Distribution::Choice(values) => {
                ensure!(!values.is_empty(), "a choice needs at least one value");
                for v in values {
                    ensure!(
                        v.is_number() || v.is_string() || v.is_boolean(),
                        "choices must be numbers, strings or booleans, not {v}"
                    );
                }
                Ok(())
            }
        }
    }

    /// The value at `u` in [0, 1): the inverse of the distribution's CDF.
    pub fn sample(&self, u: f64) -> Value {
        let lerp = |lo: f64, hi: f64| lo + u * (hi - lo);
        let number = |x: f64| Value::from(round_significant(x));
        match self {
            Distribution::Uniform([lo, hi]) => number(lerp(*lo, *hi)),
            Distribution::LogUniform([lo, hi]) => number(lerp(lo.ln(), hi.ln()).exp()),
            Distribution::OneMinusLogUniform([lo, hi]) => {
                // Rounded in x, so 1 − x keeps the digits that matter (0.9987, not 0.999).
                Value::from(1.0 - round_significant(lerp(lo.ln(), hi.ln()).exp()))
            }
            Distribution::IntUniform([lo, hi]) => {
                let span = (hi - lo + 1) as f64;
                Value::from(lo + ((u * span) as i64).min(hi - lo))
            }
            Distribution::Choice(values) => {
                values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone()
            }
        }
    }
}

/// The radical inverse of `index` in base `base`: the Halton sequence's coordinate.
fn radical_inverse(mut index: u64, base: u64) -> f64 {
    let (mut value, mut scale) = (0.0, 1.0 / base as f64);
    while index > 0 {
        value += (index % base) as f64 * scale;
        index /= base;
        scale /= base as f64;
    }
    value
}

/// The first `n` primes: the Halton bases of `n` dimensions.
fn primes(n: usize) -> Vec<u64> {
    let mut found = Vec::with_capacity(n);
    let mut candidate = 2;
    while found.len() < n {
        if found.iter().all(|p| candidate % p != 0) {
            found.push(candidate);
        }
        candidate += 1;
    }
    found
}

/// Point `index` (from 0) of a `dims`-dimensional Halton sequence, shifted modulo 1 by a random
/// vector drawn from `seed` (a Cranley–Patterson rotation: as evenly spread, but a different set
/// for each seed). The sequence starts at its second point; its first is the corner 0.
pub fn halton_point(index: usize, dims: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    primes(dims)
        .into_iter()
        .map(|base| (radical_inverse(index as u64 + 1, base) + rng.random::<f64>()).fract())
        .collect()
}

/// One training run of a study: its tag (what the record carries) and its training flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub tag: TrialTag,
    /// Training flags, in order: the study's, the workload's, the optimizer's, the drawn
    /// hyper-parameters', and the seed.
    pub args: Vec<String>,
}

impl Trial {
    /// "d4 / muon / study 0 / trial 2".
    pub fn label(&self) -> String {
        let t = &self.tag;
        format!(
            "{} / {} / study {} / trial {}",
            t.workload, t.optimizer, t.study_index, t.trial
        )
    }

    /// "lr=0.003162, weight-decay=0.05", or "defaults" without a search space.
    pub fn describe_hparams(&self) -> String {
        describe_hparams(&self.tag.hparams)
    }
}

/// "lr=0.003162, weight-decay=0.05", or "defaults".
pub fn describe_hparams(hparams: &BTreeMap<String, Value>) -> String {
    if hparams.is_empty() {
        return "defaults".into();
    }
    (hparams.iter())
        .map(|(k, v)| format!("{k}={}", flag_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A drawn value as a command-line value.
fn flag_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && (name.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The flag names (without "--") among `args`.
fn flag_names(args: &[String]) -> impl Iterator<Item = &str> {
    (args.iter()).filter_map(|a| {
        a.strip_prefix("--")
            .map(|f| f.split('=').next().unwrap_or(f))
    })
}

impl StudyFile {
    /// Reads and checks a study file: TOML, or JSON for a `.json` name.
    pub fn load(path: &Path) -> Result<StudyFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the study file {}", path.display()))?;
        let study: StudyFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(anyhow::Error::from)
        } else {
            toml::from_str(&text).map_err(anyhow::Error::from)
        }
        .with_context(|| format!("{} is not a valid study file", path.display()))?;
        study
            .validate()
            .with_context(|| format!("study file {}", path.display()))?;
        Ok(study)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            valid_name(&self.name),
            "the study name {:?} must be letters, digits, '.', '_' or '-'",
            self.name
        );
        ensure!(self.trials > 0, "trials must be positive");
        ensure!(self.studies > 0, "studies must be positive");
        ensure!(!self.workloads.is_empty(), "it names no [[workloads]]");
        ensure!(!self.optimizers.is_empty(), "it names no [[optimizers]]");
        let mut names = Vec::new();
        let flag_lists = (self.workloads.iter().map(|w| (&w.name, &w.args)))
            .chain(self.optimizers.iter().map(|o| (&o.name, &o.args)));
        for (name, args) in flag_lists {
            ensure!(
                valid_name(name),
                "the name {name:?} must be letters, digits, '.', '_' or '-'"
            );
            ensure!(!names.contains(&name), "the name {name:?} is used twice");
            names.push(name);
            check_unmanaged(flag_names(args), name)?;
        }
        check_unmanaged(flag_names(&self.args), "args")?;
        for optimizer in &self.optimizers {
            for (flag, distribution) in &optimizer.search {
                let context = || format!("optimizer {:?}, search.{flag}", optimizer.name);
                ensure!(
                    valid_name(flag) && !flag.starts_with('-'),
                    "{}: name the flag without its leading \"--\"",
                    context()
                );
                check_unmanaged(std::iter::once(flag.as_str()), &optimizer.name)?;
                distribution.validate().with_context(context)?;
            }
        }
        Ok(())
    }

    /// Every trial, in the order `study run` runs them: by study, then workload, then trial
    /// index, then optimizer, so that a study stopped early has compared the optimizers on
    /// equal numbers of trials.
    pub fn trials(&self) -> Vec<Trial> {
        let mut trials = Vec::new();
        for study_index in 0..self.studies {
            for workload in &self.workloads {
                for trial in 0..self.trials {
                    for optimizer in &self.optimizers {
                        trials.push(self.trial(study_index, workload, optimizer, trial));
                    }
                }
            }
        }
        trials
    }

    fn trial(
        &self,
        study_index: usize,
        workload: &WorkloadSpec,
        optimizer: &OptimizerSpec,
        trial: usize,
    ) -> Trial {
        // One coordinate per flag any optimizer searches, in alphabetical order: a flag draws
        // from the same coordinate in every optimizer.
        let mut flags: Vec<&String> = (self.optimizers.iter())
            .flat_map(|o| o.search.keys())
            .collect();
        flags.sort();
        flags.dedup();
        let point = halton_point(trial, flags.len(), self.search_seed);
        let hparams: BTreeMap<String, Value> = (optimizer.search.iter())
            .map(|(flag, distribution)| {
                let coordinate = flags.binary_search(&flag).unwrap_or_default();
                (flag.clone(), distribution.sample(point[coordinate]))
            })
            .collect();
        let mut args: Vec<String> = (self.args.iter())
            .chain(&workload.args)
            .chain(&optimizer.args)
            .cloned()
            .collect();
        for (flag, value) in &hparams {
            args.push(format!("--{flag}"));
            args.push(flag_value(value));
        }
        args.push("--seed".into());
        args.push((self.seed + study_index as u64).to_string());
        Trial {
            tag: TrialTag {
                study: self.name.clone(),
                workload: workload.name.clone(),
                optimizer: optimizer.name.clone(),
                study_index,
                trial,
                hparams,
            },
            args,
        }
    }

    /// Where `trial` keeps its checkpoints.
    pub fn checkpoint_dir(&self, trial: &TrialTag) -> PathBuf {
        self.checkpoint_dir
            .join(&self.name)
            .join(&trial.workload)
            .join(&trial.optimizer)
            .join(format!("s{}-t{}", trial.study_index, trial.trial))
    }
}

fn check_unmanaged<'a>(flags: impl Iterator<Item = &'a str>, owner: &str) -> Result<()> {
    for flag in flags {
        if MANAGED_FLAGS.contains(&flag) {
            bail!(
                "{owner}: --{flag} is set by the study itself (use the study file's `seed`, \
                 `records` and `checkpoint_dir`, and `study run --threads`)"
            );
        }
    }
    Ok(())
}

/// The newest checkpoint (highest step) under a trial's checkpoint directory, whatever run
/// wrote it; None if there is none (or no directory).
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let dir_text =
        (dir.to_str()).with_context(|| format!("{} is not valid UTF-8", dir.display()))?;
    let pattern = format!("{}/*/step_*.safetensors", glob::Pattern::escape(dir_text));
    let step = |p: &PathBuf| -> Option<usize> {
        let stem = p.file_stem()?.to_str()?;
        stem.strip_prefix("step_")?.parse().ok()
    };
    let mut latest: Option<(usize, PathBuf)> = None;
    for path in glob::glob(&pattern)? {
        let path = path?;
        if let Some(s) = step(&path)
            && latest.as_ref().is_none_or(|(best, _)| s > *best)
        {
            latest = Some((s, path));
        }
    }
    Ok(latest.map(|(_, p)| p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        name = "toy"
        trials = 4
        studies = 2
        seed = 10
        args = ["--model", "tiny"]

        [[workloads]]
        name = "small"
        args = ["--layers", "2"]

        [[workloads]]
        name = "large"
        args = ["--layers", "4"]

        [[optimizers]]
        name = "adamw"
        args = ["--optimizer", "adamw"]
        search.lr = { log_uniform = [1e-4, 1e-1] }
        search.weight-decay = { uniform = [0.0, 0.2] }
        search.adam-beta2 = { one_minus_log_uniform = [0.001, 0.1] }

        [[optimizers]]
        name = "muon"
        args = ["--optimizer", "muon"]
        search.lr = { log_uniform = [1e-3, 1.0] }
        search.ns-steps = { int_uniform = [3, 6] }
        search.ns-coeffs = { choice = ["quintic", "polar"] }
    "#;

    fn example() -> StudyFile {
        let study: StudyFile = toml::from_str(EXAMPLE).unwrap();
        study.validate().unwrap();
        study
    }

    #[test]
    fn halton_points_are_the_radical_inverses_by_hand() {
        // Base 2: 1 → 0.1b = 0.5, 2 → 0.01b = 0.25, 3 → 0.11b = 0.75, 6 → 0.011b = 0.375.
        let twos: Vec<f64> = [1, 2, 3, 6].map(|i| radical_inverse(i, 2)).to_vec();
        assert_eq!(twos, vec![0.5, 0.25, 0.75, 0.375]);
        // Base 3: 5 = 12₃ → 0.21₃ = 2/3 + 1/9.
        assert!((radical_inverse(5, 3) - (2.0 / 3.0 + 1.0 / 9.0)).abs() < 1e-15);
        assert_eq!(primes(6), vec![2, 3, 5, 7, 11, 13]);
    }

    #[test]
    fn shifted_halton_points_stay_evenly_spread() {
        // The first 2^k − 1 points of base 2 are the multiples of 2^−k; shifted, they still lie
        // one per cell of width 2^−k.
        let n = 63;
        let mut cells = vec![0; 64];
        for i in 0..n {
            let u = halton_point(i, 3, 7)[0];
            assert!((0.0..1.0).contains(&u));
            cells[(u * 64.0) as usize] += 1;
        }
        assert!(cells.iter().all(|&c| c <= 1), "{cells:?}");
        // The seed changes the set; the same seed gives the same point.
        assert_ne!(halton_point(0, 2, 1), halton_point(0, 2, 2));
        assert_eq!(halton_point(5, 2, 1), halton_point(5, 2, 1));
    }

    #[test]
    fn distributions_map_the_unit_interval_onto_their_ranges() {
        let log = Distribution::LogUniform([1e-4, 1e-2]);
        assert_eq!(log.sample(0.0), Value::from(1e-4));
        assert_eq!(log.sample(0.5), Value::from(1e-3));
        let uniform = Distribution::Uniform([0.0, 0.2]);
        assert_eq!(uniform.sample(0.25), Value::from(0.05));
        // 1 − β with 1 − β log-uniform in [0.001, 0.1]: the middle is β = 0.99.
        let beta = Distribution::OneMinusLogUniform([0.001, 0.1]);
        assert_eq!(beta.sample(0.5), Value::from(0.99));
        let int = Distribution::IntUniform([3, 6]);
        let ints: Vec<Value> = [0.0, 0.24, 0.25, 0.99].map(|u| int.sample(u)).to_vec();
        assert_eq!(ints, [3, 3, 4, 6].map(Value::from).to_vec());
        let choice = Distribution::Choice(vec!["a".into(), "b".into()]);
        assert_eq!(choice.sample(0.49), Value::from("a"));
        assert_eq!(choice.sample(0.5), Value::from("b"));
        // Four significant digits: e^(ln 1e-4 + 0.3·ln 100) = 3.98107…e-4.
        assert_eq!(log.sample(0.3), Value::from(3.981e-4));
    }

    #[test]
    fn every_optimizer_draws_trial_i_from_the_same_point() {
        let study = example();
        let trials = study.trials();
        // 2 studies × 2 workloads × 4 trials × 2 optimizers.
        assert_eq!(trials.len(), 32);
        let find = |opt: &str, trial: usize| {
            (trials.iter())
                .find(|t| t.tag.optimizer == opt && t.tag.trial == trial && t.tag.study_index == 0)
                .unwrap()
        };
        for i in 0..4 {
            // One coordinate per flag of either search, sorted: adam-beta2, lr, ns-coeffs,
            // ns-steps, weight-decay; lr is coordinate 1 for both optimizers.
            let u = halton_point(i, 5, 0);
            let (adamw, muon) = (&find("adamw", i).tag.hparams, &find("muon", i).tag.hparams);
            let space = |o: usize, key: &str| &study.optimizers[o].search[key];
            assert_eq!(adamw["adam-beta2"], space(0, "adam-beta2").sample(u[0]));
            assert_eq!(adamw["lr"], space(0, "lr").sample(u[1]));
            assert_eq!(muon["lr"], space(1, "lr").sample(u[1]));
            assert_eq!(muon["ns-steps"], space(1, "ns-steps").sample(u[3]));
            assert_eq!(adamw["weight-decay"], space(0, "weight-decay").sample(u[4]));
        }
        // Studies repeat the same draws with the next seed.
        let t0 = &trials[0];
        let t_again = (trials.iter())
            .find(|t| t.tag.study_index == 1 && t.tag.trial == 0 && t.tag.workload == "small")
            .unwrap();
        assert_eq!(t0.tag.hparams, t_again.tag.hparams);
        assert!(t0.args.ends_with(&["--seed".into(), "10".into()]));
        assert!(t_again.args.ends_with(&["--seed".into(), "11".into()]));
    }

    #[test]
    fn trial_flags_come_in_order_and_trials_interleave_optimizers() {
        let study = example();
        let trials = study.trials();
        let first = &trials[0];
        assert_eq!(first.tag.optimizer, "adamw");
        assert_eq!(trials[1].tag.optimizer, "muon");
        assert_eq!((trials[1].tag.trial, trials[2].tag.trial), (0, 1));
        let h = &first.tag.hparams;
        let want: Vec<String> = [
            "--model",
            "tiny",
            "--layers",
            "2",
            "--optimizer",
            "adamw",
            "--adam-beta2",
            &h["adam-beta2"].to_string(),
            "--lr",
            &h["lr"].to_string(),
            "--weight-decay",
            &h["weight-decay"].to_string(),
            "--seed",
            "10",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(first.args, want);
        let muon = &trials[1];
        let coeffs = muon.args.iter().position(|a| a == "--ns-coeffs").unwrap();
        assert!(["quintic", "polar"].contains(&muon.args[coeffs + 1].as_str()));
        assert_eq!(
            study.checkpoint_dir(&muon.tag),
            Path::new("checkpoints/studies/toy/small/muon/s0-t0")
        );
    }

    #[test]
    fn bad_study_files_are_refused_with_the_reason() {
        let with = |from: &str, to: &str| {
            let text = EXAMPLE.replacen(from, to, 1);
            let study: StudyFile = toml::from_str(&text)?;
            study.validate()
        };
        let err = |from, to| format!("{:#}", with(from, to).unwrap_err());
        assert!(err("\"--layers\", \"2\"", "\"--seed\", \"2\"").contains("--seed is set by"));
        assert!(
            err(
                "search.lr = { log_uniform = [1e-4",
                "search.lr = { log_uniform = [0.0"
            )
            .contains("positive")
        );
        assert!(err("name = \"large\"", "name = \"small\"").contains("used twice"));
        assert!(err("name = \"toy\"", "name = \"a b\"").contains("letters, digits"));
        assert!(err("trials = 4", "trials = 0").contains("trials must be positive"));
        assert!(
            with("trials = 4", "trails = 4").is_err(),
            "unknown keys are errors"
        );
        assert!(with("{ uniform = [0.0, 0.2] }", "{ uniform = [0.3, 0.2] }").is_err());
        assert!(with("{ int_uniform = [3, 6] }", "{ gaussian = [3, 6] }").is_err());
    }

    #[test]
    fn a_json_study_file_plans_the_same_trials_as_its_toml_twin() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("study.toml");
        std::fs::write(&toml_path, EXAMPLE).unwrap();
        // The same study, converted by the toml crate's own reader into JSON.
        let value: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let json_path = dir.path().join("study.json");
        std::fs::write(&json_path, serde_json::to_string(&value).unwrap()).unwrap();
        let from_toml = StudyFile::load(&toml_path).unwrap().trials();
        let from_json = StudyFile::load(&json_path).unwrap().trials();
        assert_eq!(from_toml, from_json);
        // A broken file names itself.
        std::fs::write(&json_path, "{\"name\": 3}").unwrap();
        let err = format!("{:#}", StudyFile::load(&json_path).unwrap_err());
        assert!(
            err.contains("study.json is not a valid study file"),
            "{err}"
        );
    }

    #[test]
    fn the_latest_checkpoint_is_the_highest_step_of_any_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(latest_checkpoint(&dir.path().join("none")).unwrap(), None);
        for (run, step) in [("run-a", 100), ("run-a", 200), ("run-b", 150)] {
            let path = dir
                .path()
                .join(run)
                .join(format!("step_{step:06}.safetensors"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"").unwrap();
        }
        let latest = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert!(
            latest.ends_with("run-a/step_000200.safetensors"),
            "{latest:?}"
        );
    }
}
