//! End-to-end tests of the data and generation commands: `data prepare`, `data inspect`,
//! `data fineweb` (its error path; the download itself is tested against a local server in
//! src/data/fineweb.rs) and `sample`.

use std::collections::HashSet;
use std::path::Path;

mod common;
use common::{speedrun, succeed};

use speedrun::data::Shard;

#[test]
fn prepare_then_inspect_shows_the_documents_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let docs = "{\"text\": \"Hello world\"}\n{\"text\": \"The quick brown fox.\"}\n";
    std::fs::write(dir.path().join("docs.jsonl"), docs).unwrap();
    let args = [
        "data",
        "prepare",
        "docs.jsonl",
        "--out",
        "out",
        "--val-tokens",
        "3",
    ];
    succeed(dir.path(), &args);
    let (stdout, _) = succeed(dir.path(), &["data", "inspect", "out/data_val_000000.bin"]);
    assert!(stdout.contains("3 tokens"), "{stdout}");
    assert!(
        stdout.contains(r#"first 3 tokens as text: "<|endoftext|>Hello world""#),
        "{stdout}"
    );
    let (stdout, _) = succeed(
        dir.path(),
        &["data", "inspect", "out/data_train_000001.bin"],
    );
    assert!(
        stdout.contains(r#""<|endoftext|>The quick brown fox.""#),
        "{stdout}"
    );
    // A second run refuses to mix its shards with the first run's.
    let out = speedrun(dir.path(), &args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data_val_000000.bin"), "{stderr}");
}

#[test]
fn fineweb_download_failure_names_the_file_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = speedrun(
        dir.path(),
        &[
            "data",
            "fineweb",
            "--train-shards",
            "1",
            "--base-url",
            "http://127.0.0.1:1",
        ]
        .into_iter()
        .chain(["--retries", "0", "--timeout", "1", "--dir", "fw"])
        .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fw/fineweb_val_000000.bin: download failed")
            && stderr.contains("http://127.0.0.1:1/fineweb_val_000000.bin"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every (token, next token) pair of a shard.
fn transitions(path: &Path) -> HashSet<(u32, u32)> {
    let shard = Shard::open(path, 1 << 16).unwrap();
    let tokens = shard.tokens();
    tokens
        .windows(2)
        .map(|w| (w[0] as u32, w[1] as u32))
        .collect()
}

#[test]
fn greedy_samples_of_a_trained_model_follow_the_chain_it_learned() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    succeed(
        p,
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
    let train = [
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
        "--max-steps",
        "150",
        "--val-every",
        "0",
        "--checkpoint-every",
        "150",
        "--no-record",
    ];
    succeed(p, &train);
    let run = std::fs::read_dir(p.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let checkpoint = run.join("step_000150.safetensors");
    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend(extra);
        let (stdout, _) = succeed(p, &args);
        stdout
            .trim()
            .split(',')
            .map(|t| t.parse::<u32>().unwrap())
            .collect::<Vec<u32>>()
    };
    let greedy = sample(&[
        "--prompt-tokens",
        "5,6",
        "--tokens",
        "60",
        "--temperature",
        "0",
    ]);
    assert_eq!(greedy.len(), 60);
    // Greedy decoding picks a most likely next token, which is always a possible one: every
    // step of the continuation is a transition seen in the training data.
    let seen = transitions(&p.join("synth/synth_train_000000.bin"));
    let path: Vec<u32> = [6].into_iter().chain(greedy.iter().copied()).collect();
    for w in path.windows(2) {
        assert!(
            seen.contains(&(w[0], w[1])),
            "{} → {} never occurs in the data",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        greedy,
        sample(&[
            "--prompt-tokens",
            "5,6",
            "--tokens",
            "60",
            "--temperature",
            "0"
        ])
    );
    // Seeded sampling is reproducible, and different seeds give different samples.
    let seeded = |seed: &str| sample(&["--prompt-tokens", "5", "--tokens", "40", "--seed", seed]);
    assert_eq!(seeded("1"), seeded("1"));
    assert_ne!(seeded("1"), seeded("2"));
    // Prompt and continuation must fit in the context.
    let out = speedrun(
        p,
        &[
            "sample",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--prompt-tokens",
            "1",
            "--tokens",
            "64",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 prompt tokens + 64 new ones exceed the model's context of 64"),
        "{stderr}"
    );
}
