//! The CUDA paths that need no GPU: `--device cuda` failing with one sentence where there is
//! no driver.

mod common;

use common::fail;
use speedrun::backend::cuda::driver_present;

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
