//! The CUDA paths that need no GPU: compiling every kernel with NVRTC, compiler errors, and
//! `--device cuda` failing with one sentence where there is no driver.

mod common;

use common::{fail, succeed};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use speedrun::backend::cuda::{driver_present, kernels, launch, nvrtc};

/// Whether NVRTC can be loaded; without it a test is skipped (saying so), unless
/// SPEEDRUN_REQUIRE_NVRTC=1, as CI sets, makes that a failure.
fn nvrtc_available(test: &str) -> bool {
    match nvrtc::load() {
        Ok(_) => true,
        Err(error) => {
            assert!(
                std::env::var("SPEEDRUN_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "SPEEDRUN_REQUIRE_NVRTC=1, but {error}"
            );
            eprintln!("skipped {test}: {error}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_hopper_and_ampere() {
    if !nvrtc_available("every_kernel_compiles_for_hopper_and_ampere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = succeed(
        dir.path(),
        &["kernels", "--arch", "sm_90a", "--arch", "sm_80"],
    );
    for arch in ["sm_90a", "sm_80"] {
        for source in kernels::SOURCES {
            assert!(
                stdout.lines().any(|line| line.starts_with(arch)
                    && line.contains(source.file)
                    && line.contains(" kernels, at most ")),
                "no line for {} on {arch}:\n{stdout}",
                source.file
            );
        }
    }
}

/// A kernel renamed, or a parameter added, removed or retyped, on one side only would fail
/// only on a GPU (a missing kernel, or a launch refused for its arguments); here it fails
/// without one.
#[test]
fn the_launchers_call_exactly_the_kernels_the_files_define_with_their_parameters() {
    if !nvrtc_available(
        "the_launchers_call_exactly_the_kernels_the_files_define_with_their_parameters",
    ) {
        return;
    }
    let mut defined = BTreeMap::new();
    for source in kernels::SOURCES {
        let compiled = kernels::compile(source, "sm_80").unwrap();
        for (name, params) in kernels::ptx_entries(&compiled.ptx).unwrap() {
            defined.insert((source.file, name), params);
        }
    }
    let mut called = BTreeMap::new();
    for kernel in launch::all_kernels() {
        let names = if kernel.typed {
            vec![
                format!("{}_f32", kernel.name),
                format!("{}_bf16", kernel.name),
            ]
        } else {
            vec![kernel.name.to_string()]
        };
        for name in names {
            called.insert((kernel.file, name), kernel.params.to_vec());
        }
    }
    assert_eq!(called, defined);
}

#[test]
fn a_compile_error_names_the_file_line_and_message() {
    if !nvrtc_available("a_compile_error_names_the_file_line_and_message") {
        return;
    }
    let source = kernels::Source {
        file: "broken.cu",
        text: "extern \"C\" __global__ void k(float* x) {\n    x[0] = undefined_name;\n}\n",
    };
    let error = kernels::compile(&source, "sm_80")
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("broken.cu does not compile for sm_80"),
        "{error}"
    );
    assert!(error.contains("broken.cu(2)"), "{error}");
    assert!(error.contains("undefined_name"), "{error}");
}

/// `speedrun kernels --arch sm_80` with NVRTC hidden from the dynamic loader, so that only
/// `nvrtc_dir` (SPEEDRUN_NVRTC_DIR) can lead to it.
fn compile_with_nvrtc_dir(dir: &Path, nvrtc_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(["kernels", "--arch", "sm_80"])
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("CUDA_HOME")
        .env_remove("CUDA_PATH")
        .env("SPEEDRUN_NVRTC_DIR", nvrtc_dir)
        .output()
        .unwrap()
}

#[test]
fn nvrtc_is_preloaded_from_speedrun_nvrtc_dir() {
    if !nvrtc_available("nvrtc_is_preloaded_from_speedrun_nvrtc_dir") {
        return;
    }
    // The directory CI (or the developer) put on LD_LIBRARY_PATH.
    let library_path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let Some(nvrtc_dir) = std::env::split_paths(&library_path)
        .find(|dir: &PathBuf| dir.join("libnvrtc.so.13").is_file())
    else {
        eprintln!("skipped: NVRTC is loadable, but not from a directory on LD_LIBRARY_PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = compile_with_nvrtc_dir(dir.path(), &nvrtc_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn without_nvrtc_the_kernels_command_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = compile_with_nvrtc_dir(dir.path(), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("skipped: this machine's loader finds NVRTC without help");
        return;
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("error: NVRTC (libnvrtc.so.13) cannot be loaded"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = fail(dir.path(), &["kernels", "--arch", "compute_90a"]);
    assert!(stderr.contains("not a GPU architecture"), "{stderr}");
}

#[test]
fn device_cuda_without_a_driver_fails_with_one_sentence() {
    if driver_present() {
        eprintln!("skipped: this machine has a CUDA driver library");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["train", "--device", "cuda"][..],
        &["bench", "--device", "cuda"],
        &["check", "--device", "cuda"],
        &["check"],
    ] {
        let stderr = fail(dir.path(), args);
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with("error: no NVIDIA driver: libcuda.so.1")),
            "{args:?}:\n{stderr}"
        );
    }
}

#[test]
fn check_refuses_devices_other_than_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = fail(dir.path(), &["check", "--device", "cpu"]);
    assert!(stderr.contains("use --device cuda"), "{stderr}");
}
