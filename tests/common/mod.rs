//! What the end-to-end tests share: running the `speedrun` binary in a directory.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn speedrun(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the speedrun binary runs")
}

/// Runs and checks that it succeeded; returns its standard output and error output.
pub fn succeed(dir: &Path, args: &[&str]) -> (String, String) {
    let out = speedrun(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "speedrun {args:?} failed:\n{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// Fails, without a panic, and returns the error output.
pub fn fail(dir: &Path, args: &[&str]) -> String {
    let out = speedrun(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "speedrun {args:?} should fail:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "speedrun {args:?} panicked:\n{stderr}"
    );
    stderr
}
