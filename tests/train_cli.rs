//! End-to-end tests of the `speedrun` binary on synthetic data: learning to the known entropy
//! rate, stopping at a target, resuming bitwise, the records log, and errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::SafeTensors;
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{fail, speedrun, succeed};

/// A temporary directory with synthetic shards (vocab 64) and their entropy rate.
struct Workspace {
    dir: TempDir,
    entropy_rate: f64,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        succeed(
            dir.path(),
            &[
                "data",
                "synth",
                "--out",
                "synth",
                "--train-tokens",
                "1000000",
                "--val-tokens",
                "40000",
            ],
        );
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("synth/synth.json")).unwrap(),
        )
        .unwrap();
        let entropy_rate = summary["entropy_rate"].as_f64().unwrap();
        Workspace { dir, entropy_rate }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a tiny model with these extra flags; returns stderr.
    fn train(&self, extra: &[&str]) -> String {
        let mut args = TINY.to_vec();
        args.extend(extra);
        succeed(self.path(), &args).1
    }

    fn records(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path().join(file))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("every records line is JSON"))
            .collect()
    }
}

/// A tiny model on the synthetic data: 2 layers, width 64, 2048 tokens per step.
const TINY: &[&str] = &[
    "train",
    "--device",
    "cpu",
    "--model",
    "tiny",
    "--vocab",
    "64",
    "--context",
    "64",
    "--seq-len",
    "64",
    "--micro-batch",
    "16",
    "--batch-tokens",
    "2048",
    "--val-tokens",
    "32768",
    "--train-data",
    "synth/synth_train_*.bin",
    "--val-data",
    "synth/synth_val_*.bin",
];

fn val_losses(record: &Value) -> Vec<f64> {
    record["eval_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[3].as_f64().unwrap())
        .collect()
}

/// Trains the tiny model with `optimizer` (and `extra` flags) for 150 steps and checks that it
/// ends within 0.05 nats of the entropy rate, and the record.
fn learns_to_the_entropy_rate(optimizer: &str, extra: &[&str]) {
    let ws = Workspace::new();
    let mut args = vec![
        "--optimizer",
        optimizer,
        "--max-steps",
        "150",
        "--val-every",
        "50",
        "--records",
        "log.jsonl",
    ];
    args.extend(extra);
    ws.train(&args);
    let records = ws.records("log.jsonl");
    assert_eq!(records.len(), 1, "one record per run");
    let r = &records[0];
    let loss = r["final_val_loss"].as_f64().unwrap();
    // No model can beat the entropy rate beyond the sampling noise of 32768 validation tokens
    // (standard error about 0.004): a loss far below it would mean the model sees the future.
    assert!(
        loss < ws.entropy_rate + 0.05 && loss > ws.entropy_rate - 0.02,
        "{optimizer}: val loss {loss} vs entropy rate {}",
        ws.entropy_rate
    );
    // The record is complete and consistent.
    assert_eq!(r["optimizer"], optimizer);
    assert_eq!(r["steps"], 150);
    assert_eq!(r["tokens"], 150 * 2048);
    assert_eq!(r["params"], 2 * 64 * 64 + 2 * 12 * 64 * 64);
    let curve = r["eval_curve"].as_array().unwrap();
    let steps: Vec<u64> = curve.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 50, 100, 150]);
    assert!(
        (val_losses(r)[0] - 64f64.ln()).abs() < 1e-4,
        "a zero lm_head predicts uniformly"
    );
    assert_eq!(curve.last().unwrap()[3].as_f64().unwrap(), loss);
    assert!(r["time_to_target"].is_null() && r["target_loss"].is_null());
    assert!(r["train_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 0);
    // f32 state values per parameter: Muon one per matrix parameter and AdamW two for the
    // embeddings and head; the others run on every group: one (sgd's momentum, adagrad's sum,
    // rmsprop's square average) or two.
    let (matrix, other) = (2 * 12 * 64 * 64, 2 * 64 * 64);
    let state_values = match optimizer {
        "muon" => matrix + 2 * other,
        "sgd" | "adagrad" | "rmsprop" => matrix + other,
        // z and v, and two scalars (peak learning rate, sum of weights) per group.
        "sf-adamw" => 2 * (matrix + other) + 2 * 3,
        // Shampoo: momentum and Adam's second moment; SOAP: m and v; both: per matrix (one
        // tile each) a left r×r and a right c×c factor, and as many values again for the roots
        // or the eigenbases. Per layer q, k, v and the projection are 64×64 (2·64² each), the
        // MLP's 256×64 and 64×256 (256² + 64² each).
        "shampoo" | "soap" => {
            let factors = 2 * (4 * 2 * 64 * 64 + 2 * (256 * 256 + 64 * 64));
            2 * matrix + 2 * other + 2 * factors
        }
        _ => 2 * (matrix + other),
    };
    assert_eq!(
        r["optimizer_state_bytes"].as_u64().unwrap(),
        4 * state_values as u64
    );
    for key in ["run_id", "date", "git_commit", "host", "device"] {
        assert!(!r[key].as_str().unwrap().is_empty(), "{key}");
    }
    // `speedrun records` shows the run.
    let out = speedrun(ws.path(), &["records", "--file", "log.jsonl"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && table.contains(r["run_id"].as_str().unwrap()),
        "{table}"
    );
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_muon() {
    learns_to_the_entropy_rate("muon", &[]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_adamw() {
    learns_to_the_entropy_rate("adamw", &[]);
}

// Each element-wise optimizer on every group (so that it, not the default AdamW of the
// embeddings and head, does the learning), at a learning rate tuned for this model by a sweep
// over factors of about 3 (150 steps, final validation loss 1.132–1.141 against an entropy
// rate of 1.115 on the build machine); PyTorch's defaults are tuned for other models.

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_sgd_momentum() {
    learns_to_the_entropy_rate(
        "sgd",
        &["--optimizer-all", "--lr", "0.3", "--momentum", "0.9"],
    );
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_adagrad() {
    learns_to_the_entropy_rate("adagrad", &["--optimizer-all", "--lr", "0.1"]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_rmsprop() {
    learns_to_the_entropy_rate("rmsprop", &["--optimizer-all", "--lr", "0.01"]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_adadelta() {
    learns_to_the_entropy_rate("adadelta", &["--optimizer-all", "--lr", "10"]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_adam() {
    learns_to_the_entropy_rate("adam", &["--optimizer-all", "--lr", "0.03"]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_schedule_free_adamw() {
    learns_to_the_entropy_rate("sf-adamw", &["--optimizer-all", "--lr", "0.03"]);
}

// Shampoo and SOAP precondition the hidden matrices only (their own learning is tested in
// src/optim/shampoo.rs and soap.rs); here the whole command line path, at their defaults.

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_shampoo() {
    learns_to_the_entropy_rate("shampoo", &[]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_soap() {
    learns_to_the_entropy_rate("soap", &[]);
}

#[test]
fn tiny_model_learns_markov_data_to_the_entropy_rate_with_nadamw() {
    learns_to_the_entropy_rate("nadamw", &["--optimizer-all", "--lr", "0.03"]);
}

#[test]
fn run_stops_at_the_first_validation_at_or_below_the_target() {
    let ws = Workspace::new();
    let target = ws.entropy_rate + 0.15;
    let target_arg = target.to_string();
    ws.train(&[
        "--max-steps",
        "400",
        "--val-every",
        "10",
        "--target-loss",
        &target_arg,
        "--records",
        "log.jsonl",
    ]);
    let r = &ws.records("log.jsonl")[0];
    let losses = val_losses(r);
    let (last, before) = losses.split_last().unwrap();
    assert!(
        *last <= target && before.iter().all(|l| *l > target),
        "{losses:?}"
    );
    let steps = r["steps"].as_u64().unwrap();
    assert!(steps < 400 && steps.is_multiple_of(10));
    let curve = r["eval_curve"].as_array().unwrap();
    assert_eq!(r["time_to_target"], curve.last().unwrap()[2]);
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    all.sort();
    all
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((name_a, data_a), (name_b, data_b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert!(data_a == data_b, "{name_a} differs");
    }
}

fn only_run_dir(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "one run directory in {}", dir.display());
    runs[0].clone()
}

fn resume_follows_the_uninterrupted_run(flags: &[&str]) {
    let ws = Workspace::new();
    let run = |checkpoints: &str, records: &str, extra: &[&str]| {
        let mut args = flags.to_vec();
        args.extend([
            "--max-steps",
            "30",
            "--val-every",
            "5",
            "--checkpoint-every",
            "15",
        ]);
        args.extend(["--checkpoint-dir", checkpoints, "--records", records]);
        args.extend(extra);
        ws.train(&args);
    };
    run("full", "full.jsonl", &[]);
    let full = only_run_dir(&ws.path().join("full"));
    let halfway = full.join("step_000015.safetensors");
    let halfway = halfway.to_str().unwrap();
    run("resumed", "resumed.jsonl", &["--resume", halfway]);
    let resumed = only_run_dir(&ws.path().join("resumed"));

    // Same weights and optimizer state, bit for bit, and the same validation curve.
    assert_same_tensors(
        &full.join("step_000030.safetensors"),
        &resumed.join("step_000030.safetensors"),
    );
    let (full, resumed) = (
        &ws.records("full.jsonl")[0],
        &ws.records("resumed.jsonl")[0],
    );
    assert_eq!(
        full["run_id"], resumed["run_id"],
        "a resumed run keeps its id"
    );
    assert_eq!(val_losses(full), val_losses(resumed));
    assert_eq!(full["steps"], resumed["steps"]);
    assert_eq!(full["tokens"], resumed["tokens"]);
}

#[test]
fn resumed_speedrun_muon_run_matches_the_uninterrupted_run_bitwise() {
    resume_follows_the_uninterrupted_run(&["--optimizer", "muon"]);
}

#[test]
fn resumed_gpt2_adamw_run_matches_the_uninterrupted_run_bitwise() {
    resume_follows_the_uninterrupted_run(&[
        "--arch",
        "gpt2",
        "--optimizer",
        "adamw",
        "--warmup-steps",
        "5",
    ]);
}

#[test]
fn resumed_schedule_free_run_matches_the_uninterrupted_run_bitwise() {
    // Checkpoints hold Schedule-Free's averaged weights; the resumed run rebuilds its training
    // weights from them and z, exactly as the uninterrupted run does after each checkpoint.
    resume_follows_the_uninterrupted_run(&["--optimizer", "sf-adamw", "--optimizer-all"]);
}

#[test]
fn resumed_data_parallel_run_matches_the_uninterrupted_run_bitwise() {
    // Two ranks, two micro-batches of 8 sequences each per step.
    resume_follows_the_uninterrupted_run(&[
        "--optimizer",
        "muon",
        "--micro-batch",
        "8",
        "--ranks",
        "2",
    ]);
}

/// Trains the tiny model for 20 steps (4 micro-batches of 4 sequences per step) on 1, 2 and 4
/// ranks: the validation curves agree to f32 summation-order precision.
fn data_parallel_run_matches_one_rank(optimizer: &[&str]) {
    let ws = Workspace::new();
    let run = |ranks: &str| {
        let records = format!("ranks{ranks}.jsonl");
        let mut args = optimizer.to_vec();
        args.extend([
            "--micro-batch",
            "4",
            "--batch-tokens",
            "1024",
            "--max-steps",
            "20",
        ]);
        args.extend([
            "--val-every",
            "5",
            "--checkpoint-every",
            "0",
            "--ranks",
            ranks,
        ]);
        args.extend(["--records", &records]);
        ws.train(&args);
        ws.records(&records).remove(0)
    };
    let one = run("1");
    let losses = val_losses(&one);
    assert_eq!(losses.len(), 5);
    assert!(losses[4] < losses[0] - 1.0, "it learns: {losses:?}");
    for ranks in ["2", "4"] {
        let many = run(ranks);
        assert_eq!(many["ranks"].as_u64(), ranks.parse().ok());
        assert_eq!(
            (&many["steps"], &many["tokens"]),
            (&one["steps"], &one["tokens"])
        );
        assert_eq!(val_losses(&many).len(), losses.len());
        for (a, b) in losses.iter().zip(val_losses(&many)) {
            assert!(
                (a - b).abs() <= 1e-5 * a,
                "{ranks} ranks: {b} against {a} on one"
            );
        }
        // ZeRO-1: each rank keeps the element-wise state of its share of the parameters only;
        // the record counts rank 0's: with AdamW on every group, Adam's two moments of its
        // ⌈P / N⌉ values, 4 bytes each.
        if optimizer.contains(&"adamw") {
            let state = many["optimizer_state_bytes"].as_u64().unwrap();
            let params = one["params"].as_u64().unwrap();
            assert_eq!(state, 2 * 4 * params.div_ceil(ranks.parse().unwrap()));
        }
    }
}

#[test]
fn a_data_parallel_checkpoint_resumes_on_any_number_of_ranks() {
    let ws = Workspace::new();
    let run = |ranks: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "--optimizer",
            "muon",
            "--micro-batch",
            "4",
            "--batch-tokens",
        ];
        args.extend([
            "1024",
            "--max-steps",
            "20",
            "--val-every",
            "5",
            "--ranks",
            ranks,
        ]);
        let records = format!("{name}.jsonl");
        args.extend([
            "--checkpoint-every",
            "10",
            "--checkpoint-dir",
            name,
            "--records",
            &records,
        ]);
        args.extend(extra);
        ws.train(&args);
        ws.records(&records).remove(0)
    };
    let whole = run("2", "two", &[]);
    let two = only_run_dir(&ws.path().join("two"));
    // The same tensors, names and shapes as a one-rank run's checkpoint.
    run("1", "one", &[]);
    let one = only_run_dir(&ws.path().join("one"));
    let names = |p: &Path| -> Vec<String> {
        (tensors(p).into_iter())
            .map(|(n, d)| format!("{n} {}", d.len()))
            .collect()
    };
    assert_eq!(
        names(&two.join("step_000010.safetensors")),
        names(&one.join("step_000010.safetensors"))
    );
    let halfway = two.join("step_000010.safetensors");
    for ranks in ["1", "4"] {
        let name = format!("resumed{ranks}");
        let resumed = run(ranks, &name, &["--resume", halfway.to_str().unwrap()]);
        assert_eq!(val_losses(&resumed).len(), val_losses(&whole).len());
        for (a, b) in val_losses(&whole).iter().zip(val_losses(&resumed)) {
            assert!(
                (a - b).abs() <= 1e-5 * a,
                "resumed on {ranks}: {b} against {a}"
            );
        }
    }
}

#[test]
fn data_parallel_adamw_run_matches_one_rank() {
    data_parallel_run_matches_one_rank(&["--optimizer", "adamw", "--optimizer-all"]);
}

#[test]
fn data_parallel_schedule_free_run_matches_one_rank() {
    // Every rank swaps in Schedule-Free's evaluation weights for validation and back.
    data_parallel_run_matches_one_rank(&["--optimizer", "sf-adamw", "--optimizer-all"]);
}

#[test]
fn data_parallel_muon_run_matches_one_rank() {
    data_parallel_run_matches_one_rank(&["--optimizer", "muon"]);
}

#[test]
fn two_processes_meeting_over_tcp_train_as_two_threads_do() {
    let ws = Workspace::new();
    let flags = |extra: &[&'static str]| {
        let mut args = Vec::new();
        args.extend([
            "--optimizer",
            "adamw",
            "--optimizer-all",
            "--micro-batch",
            "4",
        ]);
        args.extend([
            "--batch-tokens",
            "1024",
            "--max-steps",
            "12",
            "--val-every",
            "4",
        ]);
        args.extend(["--checkpoint-every", "0"]);
        args.extend(extra);
        args
    };
    ws.train(&flags(&["--ranks", "2", "--records", "threads.jsonl"]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rendezvous = format!("127.0.0.1:{port}");
    let nodes: Vec<_> = ["1", "0"]
        .into_iter()
        .map(|rank| {
            let mut args = TINY.to_vec();
            args.extend(flags(&["--nodes", "2", "--records", "nodes.jsonl"]));
            args.extend(["--node-rank", rank, "--rendezvous", &rendezvous]);
            args.extend(["--rendezvous-timeout", "30"]);
            Command::new(env!("CARGO_BIN_EXE_speedrun"))
                .args(&args)
                .current_dir(ws.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for node in nodes {
        let out = node.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Node 0 alone writes the record; sums in rank order make it the two threads' bit for bit.
    let (threads, nodes) = (&ws.records("threads.jsonl")[0], &ws.records("nodes.jsonl"));
    assert_eq!(nodes.len(), 1);
    assert_eq!(val_losses(threads), val_losses(&nodes[0]));
}

#[test]
fn ranks_must_share_the_micro_batches_equally() {
    let ws = Workspace::new();
    let mut args = TINY.to_vec();
    args.extend([
        "--micro-batch",
        "4",
        "--batch-tokens",
        "768",
        "--ranks",
        "2",
    ]);
    let err = fail(ws.path(), &args);
    assert!(
        err.contains("2 ranks cannot share the 3 micro-batches"),
        "{err}"
    );
    args.extend(["--ranks", "0"]);
    assert!(fail(ws.path(), &args).contains("--ranks must be positive"));
}

#[test]
fn gpu_ranks_are_refused_where_they_cannot_run() {
    let ws = Workspace::new();
    let with = |extra: &[&'static str]| {
        let mut args = TINY.to_vec();
        args.extend(extra);
        fail(ws.path(), &args)
    };
    let err = with(&["--gpus", "2", "--ranks", "2"]);
    assert!(err.contains("give one of them"), "{err}");
    // TINY trains on the CPU.
    let err = with(&["--gpus", "2"]);
    assert!(err.contains("--gpus needs a GPU"), "{err}");
    let nodes = [
        "--nodes",
        "2",
        "--node-rank",
        "0",
        "--rendezvous",
        "127.0.0.1:1",
    ];
    let err = with(&[&["--gpus", "2"][..], &nodes].concat());
    assert!(err.contains("start one process per GPU"), "{err}");
}

#[test]
fn resume_refuses_other_settings_and_finished_runs() {
    let ws = Workspace::new();
    ws.train(&["--max-steps", "4", "--checkpoint-every", "2", "--no-record"]);
    let checkpoint = only_run_dir(&ws.path().join("checkpoints")).join("step_000002.safetensors");
    let mut args = TINY.to_vec();
    args.extend([
        "--max-steps",
        "4",
        "--lr",
        "0.01",
        "--no-record",
        "--resume",
        checkpoint.to_str().unwrap(),
    ]);
    let err = fail(ws.path(), &args);
    assert!(
        err.contains("optim.matrix.lr: 0.05 in the checkpoint, 0.01 now"),
        "{err}"
    );
    // Resuming the last checkpoint of a finished run would only log it twice.
    let last = checkpoint.with_file_name("step_000004.safetensors");
    let mut args = TINY.to_vec();
    args.extend([
        "--max-steps",
        "4",
        "--no-record",
        "--resume",
        last.to_str().unwrap(),
    ]);
    let err = fail(ws.path(), &args);
    assert!(
        err.contains("is from a finished run (it has done all 4 steps)"),
        "{err}"
    );
}

fn write_raw_shard(path: &Path, magic: i32, version: i32, count: i32, tokens: &[u16]) {
    let mut bytes = Vec::new();
    let header: Vec<i32> = [magic, version, count]
        .into_iter()
        .chain(std::iter::repeat_n(0, 253))
        .collect();
    for v in header {
        bytes.extend(v.to_le_bytes());
    }
    for t in tokens {
        bytes.extend(t.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_training_data_gives_errors_naming_the_file_and_the_problem() {
    let ws = Workspace::new();
    let dir = ws.path();
    let tokens: Vec<u16> = (0..5000).map(|i| (i % 64) as u16).collect();
    write_raw_shard(&dir.join("magic.bin"), 12345, 1, 5000, &tokens);
    write_raw_shard(&dir.join("truncated.bin"), 20240520, 1, 6000, &tokens);
    let mut out_of_range = tokens.clone();
    out_of_range[777] = 100;
    write_raw_shard(&dir.join("range.bin"), 20240520, 1, 5000, &out_of_range);
    let cases = [
        ("magic.bin", "magic.bin: bad magic number 12345"),
        (
            "truncated.bin",
            "truncated.bin: file is 11024 bytes but its header says 6000 tokens",
        ),
        (
            "range.bin",
            "range.bin: token 100 at token offset 777 is outside the vocabulary (vocab size 64)",
        ),
        ("nothing_*.bin", "no files match pattern 'nothing_*.bin'"),
    ];
    for (file, message) in cases {
        let mut args = TINY.to_vec();
        args.extend(["--train-data", file, "--max-steps", "2", "--no-record"]);
        let err = fail(dir, &args);
        assert!(err.contains(message), "{file}: {err}");
    }
}

#[test]
fn inconsistent_batch_flags_are_rejected_with_the_numbers() {
    let ws = Workspace::new();
    let mut args = TINY.to_vec();
    args.extend(["--batch-tokens", "3000"]);
    let err = fail(ws.path(), &args);
    assert!(
        err.contains(
            "--batch-tokens 3000 is not a positive multiple of --micro-batch 16 × --seq-len 64"
        ),
        "{err}"
    );
    let mut args = TINY.to_vec();
    args.extend(["--optimizer", "adamw", "--momentum", "0.9"]);
    let err = fail(ws.path(), &args);
    assert!(
        err.contains("--arch speedrun --optimizer adamw has no use for --momentum"),
        "{err}"
    );
    for (flags, expected) in [
        (
            &["--optimizer", "sgd", "--alpha", "0.9", "--rho", "0.5"][..],
            "--optimizer sgd has no use for --alpha, --rho",
        ),
        (
            &["--optimizer", "muon", "--optimizer-all"],
            "--optimizer-all needs an element-wise optimizer: muon",
        ),
        (
            &[
                "--optimizer",
                "sgd",
                "--optimizer-all",
                "--adam-beta1",
                "0.9",
            ],
            "has no use for --adam-beta1",
        ),
        (
            &["--optimizer", "sgd", "--nesterov", "true"],
            "Nesterov SGD needs a positive momentum and zero dampening",
        ),
        (
            &["--optimizer", "rmsprop", "--alpha", "1.5"],
            "the RMSprop alpha must be in [0, 1), not 1.5",
        ),
    ] {
        let mut args = TINY.to_vec();
        args.extend(flags);
        let err = fail(ws.path(), &args);
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
}

/// Starts a run, sends it SIGINT once it has logged step `after`, and returns its log and the
/// step it says it stopped after.
fn interrupt(ws: &Workspace, args: &[&str], after: usize) -> (String, usize) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(args)
        .current_dir(ws.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let marker = format!("step {after:>6}/");
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(&marker) {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert!(
        !child.wait().unwrap().success(),
        "an interrupted run exits with an error:\n{log}"
    );
    let (_, rest) = log.split_once("interrupted after step ").expect(&log);
    let step = rest.split(';').next().unwrap().parse().unwrap();
    assert!(step >= after, "{log}");
    (log, step)
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let ws = Workspace::new();
    let mut args = TINY.to_vec();
    args.extend([
        "--max-steps",
        "100000",
        "--log-every",
        "1",
        "--checkpoint-every",
        "0",
        "--no-record",
    ]);
    let (log, step) = interrupt(&ws, &args, 3);
    let run_dir = only_run_dir(&ws.path().join("checkpoints"));
    let checkpoint = run_dir.join(format!("step_{step:06}.safetensors"));
    let relative = checkpoint
        .strip_prefix(ws.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(log.contains(&format!("--resume {relative}")), "{log}");

    args.extend(["--resume", &relative]);
    let (log, resumed_step) = interrupt(&ws, &args, step + 2);
    assert!(
        log.contains(&format!("resuming at step {step} ({} tokens", step * 2048)),
        "{log}"
    );
    assert!(
        run_dir
            .join(format!("step_{resumed_step:06}.safetensors"))
            .exists()
    );
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    // Wide enough that the matrix products split their work across threads.
    let ws = Workspace::new();
    let checkpoint = |threads: &str| {
        let dir = format!("threads{threads}");
        ws.train(&[
            "--threads",
            threads,
            "--width",
            "256",
            "--max-steps",
            "6",
            "--val-every",
            "0",
            "--checkpoint-every",
            "6",
            "--checkpoint-dir",
            &dir,
            "--no-record",
        ]);
        only_run_dir(&ws.path().join(dir)).join("step_000006.safetensors")
    };
    assert_same_tensors(&checkpoint("1"), &checkpoint("3"));
}
