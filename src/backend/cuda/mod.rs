//! The CUDA side: opening a GPU, compiling the kernels of kernels/ with NVRTC, launching them,
//! the training backend built on them ([`backend::CudaBackend`]), and checking all of it against
//! the CPU reference.
//!
//! Everything CUDA is loaded at run time
//! (cudarc's dynamic loading), so the binary builds and runs its CPU paths on a machine with no
//! CUDA at all; cudarc panics when a library it needs is missing, so every entry point here asks
//! whether the library is present first and returns an error instead.
//!
//! None of this has run on a GPU yet: the kernels compile (`speedrun kernels`, and CI), but
//! `speedrun check --device cuda` has not been run on hardware.

pub mod attention;
pub mod backend;
pub mod check;
pub mod elementwise;
pub mod kernels;
pub mod launch;
pub mod matmul;
pub mod nccl;
pub mod nvrtc;
pub mod precondition;
pub mod solver;
pub mod view;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, DriverError, sys};
use thiserror::Error;

/// The oldest driver API the bindings (CUDA 13.0) and NVRTC 13's CUBINs need.
const MIN_DRIVER_VERSION: i32 = 13000;

/// Why a GPU could not be opened: each is one sentence a user can act on.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(
        "no NVIDIA driver: libcuda.so.1 cannot be loaded, so --device cuda needs a machine with \
         an NVIDIA GPU and its driver installed"
    )]
    NoDriver,
    #[error("the NVIDIA driver found no CUDA device")]
    NoDevice,
    #[error("CUDA device {ordinal} does not exist: the driver reports {count} device(s)")]
    NoSuchDevice { ordinal: usize, count: i32 },
    #[error(
        "the NVIDIA driver supports CUDA {}.{} but speedrun needs CUDA 13.0 or newer \
         (driver 580 or newer)",
        .0 / 1000,
        .0 % 1000 / 10
    )]
    OldDriver(i32),
    #[error(
        "{name} has compute capability {major}.{minor}, but the kernels need 8.0 (Ampere) or newer"
    )]
    OldDevice {
        name: String,
        major: i32,
        minor: i32,
    },
    #[error("CUDA driver call failed while {what}: {source}")]
    Driver {
        what: &'static str,
        source: DriverError,
    },
}

fn driver(what: &'static str) -> impl FnOnce(DriverError) -> OpenError {
    move |source| OpenError::Driver { what, source }
}

/// Whether the CUDA driver library can be loaded at all (cudarc would panic on its first call
/// otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver's candidate names.
    unsafe { sys::is_culib_present() }
}

/// How many GPUs the driver shows this process (0 without a driver or a device);
/// `CUDA_VISIBLE_DEVICES` chooses which.
pub fn visible_gpus() -> usize {
    if !driver_present() || cudarc::driver::result::init().is_err() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// An opened GPU: its context, the stream everything is queued on, and what NVRTC compiles
/// for it.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    /// The NVRTC architecture of the device, e.g. `sm_90a`.
    pub arch: String,
}

impl Gpu {
    /// Opens device `ordinal`, or says in one sentence why it cannot.
    pub fn open(ordinal: usize) -> Result<Gpu, OpenError> {
        if !driver_present() {
            return Err(OpenError::NoDriver);
        }
        let mut version = 0;
        // SAFETY: the library is present (checked above); the call only writes `version`.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(driver("asking the driver's version"))?;
        if version < MIN_DRIVER_VERSION {
            return Err(OpenError::OldDriver(version));
        }
        match cudarc::driver::result::init() {
            Err(DriverError(sys::cudaError_enum::CUDA_ERROR_NO_DEVICE)) => {
                return Err(OpenError::NoDevice);
            }
            other => other.map_err(driver("initialising the driver"))?,
        }
        let count = CudaContext::device_count().map_err(driver("counting devices"))?;
        if count == 0 {
            return Err(OpenError::NoDevice);
        }
        if i32::try_from(ordinal).map_or(true, |o| o >= count) {
            return Err(OpenError::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating a context"))?;
        let name = ctx.name().map_err(driver("asking the device's name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("asking the compute capability"))?;
        if major < 8 {
            return Err(OpenError::OldDevice { name, major, minor });
        }
        // One stream and no cross-stream events: cudarc's per-argument event tracking costs a
        // record or a wait on every launch and buys nothing with a single stream.
        // SAFETY: called before any allocation on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            name,
            arch: arch_of(major, minor),
        })
    }
}

/// NVRTC's architecture for compute capability `major.minor`: Hopper (9.0) gets `sm_90a`, whose
/// wgmma and TMA instructions plain `sm_90` lacks; others `sm_<major><minor>`.
pub fn arch_of(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopper_gets_the_arch_specific_target_and_others_the_plain_one() {
        assert_eq!(arch_of(9, 0), "sm_90a");
        assert_eq!(arch_of(8, 0), "sm_80");
        assert_eq!(arch_of(8, 6), "sm_86");
        assert_eq!(arch_of(12, 0), "sm_120");
    }

    #[test]
    fn old_driver_versions_read_as_cuda_versions() {
        let message = OpenError::OldDriver(12040).to_string();
        assert!(message.contains("supports CUDA 12.4 "), "{message}");
    }

    /// Only meaningful where the machine has no driver (as CI's has not); elsewhere it checks
    /// nothing, which it says.
    #[test]
    fn opening_without_a_driver_is_an_error_not_a_panic() {
        if driver_present() {
            eprintln!("skipped: a CUDA driver library is present on this machine");
            return;
        }
        let error = Gpu::open(0).err().expect("no driver, no GPU");
        assert!(matches!(error, OpenError::NoDriver), "{error}");
    }
}
