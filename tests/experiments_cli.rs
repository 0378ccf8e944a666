//! End-to-end tests of the lectures' experiments: `speedrun landscape` on a trained tiny model,
//! and `speedrun grok`.

use std::path::Path;

mod common;
use common::{fail, speedrun, succeed};

/// (alpha or (alpha, beta), loss) rows of a landscape CSV.
fn csv_rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn landscape_passes_through_the_checkpoints_validation_loss() {
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
            "400000",
            "--val-tokens",
            "20000",
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
        "16384",
        "--train-data",
        "synth/synth_train_*.bin",
        "--val-data",
        "synth/synth_val_*.bin",
        "--max-steps",
        "40",
        "--val-every",
        "20",
        "--checkpoint-every",
        "20",
        "--records",
        "log.jsonl",
    ];
    succeed(p, &train);
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(p.join("log.jsonl")).unwrap().trim()).unwrap();
    let run = std::fs::read_dir(p.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (end, middle) = (
        run.join("step_000040.safetensors"),
        run.join("step_000020.safetensors"),
    );
    let end = end.to_str().unwrap();

    // A random line: α = 0 is the checkpoint itself, evaluated exactly as in training.
    succeed(
        p,
        &[
            "landscape",
            "--checkpoint",
            end,
            "--points",
            "5",
            "--out",
            "line",
        ],
    );
    let rows = csv_rows(&p.join("line/landscape_line.csv"));
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    );
    assert_eq!(rows[2][1], record["final_val_loss"].as_f64().unwrap());
    // A trained model sits in a valley: a whole-size step in a random direction costs loss.
    assert!(
        rows[0][1] > rows[2][1] && rows[4][1] > rows[2][1],
        "{rows:?}"
    );
    for ext in ["svg", "png"] {
        assert!(p.join(format!("line/landscape_line.{ext}")).exists());
    }

    // Towards the halfway checkpoint: α = −1 … 1 passes through it at α = 1.
    let args = [
        "landscape",
        "--checkpoint",
        end,
        "--to",
        middle.to_str().unwrap(),
        "--points",
        "3",
        "--out",
        "to",
    ];
    succeed(p, &args);
    let rows = csv_rows(&p.join("to/landscape_line.csv"));
    let halfway = record["eval_curve"][1][3].as_f64().unwrap();
    assert!((rows[2][1] - halfway).abs() < 1e-6, "{rows:?} vs {halfway}");

    // A plane: the centre of the grid is the checkpoint again.
    succeed(
        p,
        &[
            "landscape",
            "--checkpoint",
            end,
            "--plane",
            "--points",
            "3",
            "--out",
            "plane",
        ],
    );
    let rows = csv_rows(&p.join("plane/landscape_plane.csv"));
    assert_eq!(rows.len(), 9);
    assert_eq!(&rows[4][..2], &[0.0, 0.0]);
    assert_eq!(rows[4][2], record["final_val_loss"].as_f64().unwrap());
    for ext in ["svg", "png"] {
        assert!(p.join(format!("plane/landscape_plane.{ext}")).exists());
    }
}

#[test]
fn grok_writes_its_curve_plot_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let args = [
        "grok",
        "--device",
        "cpu",
        "--p",
        "11",
        "--width",
        "64",
        "--lr",
        "3e-3",
        "--max-steps",
        "200",
        "--keep-going",
        "--out",
        "plots",
        "--records",
        "log.jsonl",
    ];
    succeed(p, &args);
    let rows = csv_rows(&p.join("plots/grok.csv"));
    // Steps 1–10; 12, 15, 17, 20, 25, …, 50, 60, 70, 80, 90; 100, 120, 150, 170, 200.
    assert_eq!(rows.len(), 10 + 14 + 5);
    assert_eq!(rows.last().unwrap()[0], 200.0);
    assert!(rows.windows(2).all(|w| w[0][0] < w[1][0]));
    for row in &rows {
        assert!((0.0..=1.0).contains(&row[2]) && (0.0..=1.0).contains(&row[4]));
    }
    for plot in ["plots/grok.svg", "plots/grok.png"] {
        assert!(
            std::fs::metadata(p.join(plot)).unwrap().len() > 1000,
            "{plot}"
        );
    }
    let log = std::fs::read_to_string(p.join("log.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(record["kind"], "grok");
    assert_eq!(record["config"]["p"], 11);
    assert_eq!(record["steps"], 200);
    assert_eq!(record["stop"], "max_steps");
    assert_eq!(record["curve"].as_array().unwrap().len(), rows.len());
    let printed = speedrun(p, &["records", "--file", "log.jsonl"]);
    assert!(printed.status.success());
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(stdout.contains("### Grokking runs"), "{stdout}");
    assert!(stdout.contains(record["run_id"].as_str().unwrap()));

    // A modulus that is not prime is refused before anything runs.
    let err = fail(p, &["grok", "--p", "91", "--out", "other"]);
    assert!(err.contains("prime"), "{err}");
    assert!(!p.join("other").exists());
}
