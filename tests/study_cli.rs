//! End-to-end tests of `speedrun study run`, `speedrun study plan` and `speedrun report` on tiny
//! models and synthetic data.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fail, succeed};

/// Writes synthetic shards into `dir/synth`.
fn make_data(dir: &Path) {
    succeed(
        dir,
        &[
            "data",
            "synth",
            "--out",
            "synth",
            "--train-tokens",
            "300000",
            "--val-tokens",
            "20000",
        ],
    );
}

/// A study file: the tiny model on the synthetic data; `workloads` and `optimizers` are TOML.
fn study_file(trials: usize, workloads: &str, optimizers: &str) -> String {
    format!(
        r#"
name = "t"
records = "records/t.jsonl"
trials = {trials}
args = ["--device", "cpu", "--model", "tiny", "--vocab", "64", "--context", "64",
        "--seq-len", "64", "--micro-batch", "8", "--batch-tokens", "512",
        "--val-tokens", "4096", "--train-data", "synth/synth_train_*.bin",
        "--val-data", "synth/synth_val_*.bin"]
{workloads}
{optimizers}
"#
    )
}

const WORKLOADS: &str = r#"
[[workloads]]
name = "one-layer"
args = ["--layers", "1", "--max-steps", "12", "--val-every", "4", "--target-loss", "3.5"]

[[workloads]]
name = "two-layers"
args = ["--layers", "2", "--max-steps", "12", "--val-every", "4", "--target-loss", "3.5"]
"#;

const OPTIMIZERS: &str = r#"
[[optimizers]]
name = "adamw"
args = ["--optimizer", "adamw", "--optimizer-all"]
search.lr = { log_uniform = [1e-3, 3e-2] }
search.warmup-frac = { uniform = [0.0, 0.2] }

[[optimizers]]
name = "muon"
args = ["--optimizer", "muon"]
search.lr = { log_uniform = [1e-3, 1e-1] }
"#;

/// AdamW on every group at its defaults: no search.
const ADAMW_DEFAULTS: &str = r#"
[[optimizers]]
name = "adamw"
args = ["--optimizer", "adamw", "--optimizer-all"]
"#;

/// The records of the log, as JSON values.
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_study_runs_each_trial_once_and_its_report_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    make_data(p);
    std::fs::write(p.join("t.toml"), study_file(1, WORKLOADS, OPTIMIZERS)).unwrap();

    let (plan, _) = succeed(p, &["study", "plan", "t.toml"]);
    assert_eq!(plan.matches("| to run |").count(), 4, "{plan}");
    succeed(p, &["study", "run", "t.toml"]);
    let log = p.join("records/t.jsonl");
    let runs = records(&log);
    assert_eq!(runs.len(), 4);
    for run in &runs {
        let tag = &run["trial"];
        assert_eq!(tag["study"], "t");
        // The drawn learning rate is the one the run trained with.
        let lr = tag["hparams"]["lr"].as_f64().unwrap();
        let trained = run["config"]["optim"]["matrix"]["lr"].as_f64().unwrap();
        assert!((trained - lr).abs() <= 1e-6 * lr, "{lr} vs {trained}");
        if tag["optimizer"] == "adamw" {
            let frac = tag["hparams"]["warmup-frac"].as_f64().unwrap();
            let warmup = run["config"]["schedule"]["warmup_steps"].as_u64().unwrap();
            assert_eq!(warmup, (frac * 12.0).round() as u64);
        }
    }
    // Finished trials leave no checkpoints behind, nor the directories that held them.
    assert!(p.join("checkpoints/studies").exists());
    assert!(!p.join("checkpoints/studies/t").exists());

    // One more trial each: only the new ones run.
    std::fs::write(p.join("t.toml"), study_file(2, WORKLOADS, OPTIMIZERS)).unwrap();
    let (_, log_text) = succeed(p, &["study", "run", "t.toml"]);
    assert!(log_text.contains("4 done, 4 to run"), "{log_text}");
    let runs = records(&log);
    assert_eq!(runs.len(), 8);
    let (plan, _) = succeed(p, &["study", "plan", "t.toml"]);
    assert_eq!(plan.matches("| done |").count(), 8, "{plan}");
    // Running it again has nothing to do.
    let (_, log_text) = succeed(p, &["study", "run", "t.toml"]);
    assert!(log_text.contains("8 done, 0 to run"), "{log_text}");
    assert_eq!(records(&log).len(), 8);

    let (written, _) = succeed(
        p,
        &["report", "--records", "records/t.jsonl", "--out", "report"],
    );
    for file in ["report.md", "profiles.png", "one-layer_loss_vs_time.svg"] {
        assert!(written.contains(file), "{written}");
        assert!(p.join("report").join(file).exists());
    }
    let md = std::fs::read_to_string(p.join("report/report.md")).unwrap();
    assert!(md.contains("## Workload one-layer") && md.contains("## AlgoPerf scores"));
    assert!(md.contains("| adamw | study 0 trial "), "{md}");

    // A changed search space no longer matches the trials already run.
    let changed = OPTIMIZERS.replace("1e-3, 3e-2", "1e-4, 3e-2");
    std::fs::write(p.join("t.toml"), study_file(2, WORKLOADS, &changed)).unwrap();
    let err = fail(p, &["study", "run", "t.toml"]);
    assert!(err.contains("with other settings"), "{err}");
    let err = fail(
        p,
        &["report", "--records", "records/t.jsonl", "--study", "u"],
    );
    assert!(err.contains("no trials of study \"u\""), "{err}");
}

#[test]
fn bad_trial_flags_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let unknown = OPTIMIZERS.replace("search.warmup-frac", "search.warmup-fraction");
    std::fs::write(p.join("t.toml"), study_file(1, WORKLOADS, &unknown)).unwrap();
    let err = fail(p, &["study", "run", "t.toml"]);
    assert!(
        err.contains("one-layer / adamw / study 0 / trial 0") && err.contains("--warmup-fraction"),
        "{err}"
    );
    let untargeted = WORKLOADS.replace(", \"--target-loss\", \"3.5\"", "");
    std::fs::write(p.join("t.toml"), study_file(1, &untargeted, OPTIMIZERS)).unwrap();
    let err = fail(p, &["study", "run", "t.toml"]);
    assert!(err.contains("no --target-loss"), "{err}");
    assert!(!p.join("records").exists());
}

#[test]
fn an_interrupted_trial_continues_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    make_data(p);
    // A trial long enough to interrupt, checkpointing every 2 steps, with a target it never
    // reaches.
    let workload = r#"
[[workloads]]
name = "w"
args = ["--max-steps", "300", "--val-every", "100", "--target-loss", "0.0", "--checkpoint-every", "2"]
"#;
    std::fs::write(p.join("t.toml"), study_file(1, workload, ADAMW_DEFAULTS)).unwrap();
    let trial_dir = p.join("checkpoints/studies/t/w/adamw/s0-t0");
    let child = Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(["study", "run", "t.toml"])
        .current_dir(p)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt (as Ctrl-C does) once the first checkpoint is on disk.
    let started = Instant::now();
    let has_checkpoint = || {
        std::fs::read_dir(&trial_dir).is_ok_and(|runs| {
            runs.flatten()
                .any(|run| std::fs::read_dir(run.path()).is_ok_and(|mut f| f.next().is_some()))
        })
    };
    while !has_checkpoint() {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("study interrupted during trial w / adamw"),
        "{stderr}"
    );
    assert!(!p.join("records/t.jsonl").exists());

    let (plan, _) = succeed(p, &["study", "plan", "t.toml"]);
    assert!(plan.contains("| interrupted ("), "{plan}");
    let (_, log) = succeed(p, &["study", "run", "t.toml"]);
    assert!(log.contains("resuming at step"), "{log}");
    let runs = records(&p.join("records/t.jsonl"));
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["steps"], 300);
    assert!(runs[0]["time_to_target"].is_null());
    assert!(!trial_dir.exists());
}

#[test]
fn the_committed_study_files_plan_and_their_records_match_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<_> = std::fs::read_dir(root.join("records/studies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        // Every trial's flags parse; where the study was run, each planned trial has its record
        // (written with the settings the file gives it, or `plan` would fail).
        let (plan, _) = succeed(root, &["study", "plan", file.to_str().unwrap()]);
        let runs = plan.lines().skip(2).count();
        let done = plan.matches("| done |").count();
        assert!(
            runs > 0 && (done == 0 || done == runs),
            "{}:\n{plan}",
            file.display()
        );
        if file.ends_with("cpu-d2-d6.toml") {
            assert_eq!(done, 27, "{plan}");
        }
    }
}

#[test]
fn a_diverging_trial_is_recorded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    make_data(p);
    // Validation only at the end: SGD at an absurd rate diverges before its first one (on
    // gpt2, whose LayerNorm gains and unbounded logits let the loss overflow).
    let workload = r#"
[[workloads]]
name = "w"
args = ["--arch", "gpt2", "--max-steps", "12", "--val-every", "0", "--target-loss", "3.5"]
"#;
    let optimizers = format!(
        r#"{ADAMW_DEFAULTS}
[[optimizers]]
name = "sgd"
args = ["--optimizer", "sgd", "--optimizer-all", "--lr", "1e30"]
"#
    );
    std::fs::write(p.join("t.toml"), study_file(1, workload, &optimizers)).unwrap();
    succeed(p, &["study", "run", "t.toml"]);
    let runs = records(&p.join("records/t.jsonl"));
    let sgd = runs
        .iter()
        .find(|r| r["trial"]["optimizer"] == "sgd")
        .unwrap();
    assert!(sgd["diverged_at"].as_u64().unwrap() < 12, "{sgd}");
    assert!(sgd["final_val_loss"].is_null() && sgd["time_to_target"].is_null());
    // The log still reads: the study is done, and the report and table show the divergence.
    let (plan, _) = succeed(p, &["study", "plan", "t.toml"]);
    assert_eq!(plan.matches("| done |").count(), 2, "{plan}");
    let (table, _) = succeed(p, &["records", "--file", "records/t.jsonl"]);
    assert!(table.contains("| diverged at step "), "{table}");
    succeed(
        p,
        &["report", "--records", "records/t.jsonl", "--out", "report"],
    );
    let md = std::fs::read_to_string(p.join("report/report.md")).unwrap();
    assert!(
        md.contains("| sgd | study 0 trial 0 | defaults | not reached | - | - | diverged at step "),
        "{md}"
    );
}
