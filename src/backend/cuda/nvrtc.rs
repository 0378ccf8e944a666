//! NVRTC, the CUDA run-time compiler: finding the library and compiling one program to a CUBIN
//! for one architecture, keeping the compiler's log.
//!
//! cudarc's safe NVRTC API returns PTX only and drops the log on success, so this uses its
//! result-level API: the CUBIN needs no driver JIT at load time, and the log carries ptxas's
//! register and spill counts (`--ptxas-options=-v`).

use std::ffi::{CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NvrtcError {
    #[error(
        "NVRTC (libnvrtc.so.13) cannot be loaded: put the lib directory of a CUDA 13 toolkit, or \
         the nvidia/cu13/lib directory of the nvidia-cuda-nvrtc pip wheel, on LD_LIBRARY_PATH, \
         or name it in SPEEDRUN_NVRTC_DIR"
    )]
    Missing,
    #[error("{file} does not compile for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC failed while {what} for {file}: {source}")]
    Call {
        what: &'static str,
        file: String,
        source: result::NvrtcError,
    },
}

/// The NVRTC version, e.g. (13, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: i32,
    pub minor: i32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Libraries loaded by absolute path, kept open for the life of the process.
static PRELOADED: OnceLock<Vec<libloading::Library>> = OnceLock::new();

/// Directories where libnvrtc is looked for when the dynamic loader cannot find it by name.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("SPEEDRUN_NVRTC_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(Path::new(&root).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs
}

/// Loads libnvrtc.so.13 from `dir` by absolute path, after the libnvrtc-builtins.so.13.* it
/// opens by soname (libnvrtc has no RUNPATH, so its own directory is not searched). Once
/// loaded, cudarc's `dlopen("libnvrtc.so.13")` finds the library by its soname.
fn preload(dir: &Path) -> Option<Vec<libloading::Library>> {
    let nvrtc = dir.join("libnvrtc.so.13");
    if !nvrtc.is_file() {
        return None;
    }
    let builtins = std::fs::read_dir(dir).ok()?.flatten().find(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libnvrtc-builtins.so.13.") && !name.contains(".alt")
    })?;
    // SAFETY: NVIDIA's libraries, whose initialisers have no preconditions.
    unsafe {
        let builtins = libloading::Library::new(builtins.path()).ok()?;
        let nvrtc = libloading::Library::new(&nvrtc).ok()?;
        Some(vec![builtins, nvrtc])
    }
}

/// Makes NVRTC loadable (preloading it from [`search_dirs`] if the loader cannot find it) and
/// returns its version, or [`NvrtcError::Missing`].
pub fn load() -> Result<Version, NvrtcError> {
    static VERSION: OnceLock<Option<Version>> = OnceLock::new();
    let version = VERSION.get_or_init(|| {
        // SAFETY: only tries to dlopen cudarc's candidate names.
        let present = || unsafe { sys::is_culib_present() };
        if !present() {
            let libs = search_dirs().iter().find_map(|dir| preload(dir))?;
            // Only ever set here, inside this OnceLock's initialiser.
            PRELOADED.get_or_init(|| libs);
            if !present() {
                return None;
            }
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the library is loadable; the call writes two integers.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .ok()?;
        Some(Version { major, minor })
    });
    version.ok_or(NvrtcError::Missing)
}

/// What NVRTC made of one program: the CUBIN, the PTX it was assembled from, and the
/// compiler's log.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub ptx: String,
    pub log: String,
}

/// A NUL-terminated string from NVRTC.
fn text(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = (chars.iter())
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

fn log_of(prog: sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is a live program.
    text(&unsafe { result::get_program_log(prog) }.unwrap_or_default())
}

/// Compiles the CUDA C++ `program` (named `file` in messages) to a CUBIN for `arch` with
/// `options` (besides the architecture). Call [`load`] first.
pub fn compile(
    file: &str,
    program: &str,
    arch: &str,
    options: &[&str],
) -> Result<Compiled, NvrtcError> {
    let call = |what| {
        let file = file.to_string();
        move |source| NvrtcError::Call { what, file, source }
    };
    load()?;
    // The program is ours and the name a file name; neither holds a NUL byte.
    let source = CString::new(program).expect("kernel source without NUL bytes");
    let name = CString::new(file).expect("file name without NUL bytes");
    let prog = result::create_program(&source, Some(&name)).map_err(call("creating a program"))?;
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(options.iter().map(|o| o.to_string()));
    // SAFETY: `prog` was just created and is destroyed below, once, after its last use; the
    // CUBIN buffer is as large as NVRTC says it needs.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = log_of(prog);
        let outcome = match compiled {
            Err(_) => Err(NvrtcError::Compile {
                file: file.to_string(),
                arch: arch.to_string(),
                log,
            }),
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(call("sizing the CUBIN"))
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                            .result()
                            .map_err(call("reading the CUBIN"))?;
                        let ptx = text(&result::get_ptx(prog).map_err(call("reading the PTX"))?);
                        Ok(Compiled { cubin, ptx, log })
                    })
            }
        };
        result::destroy_program(prog).map_err(call("destroying a program"))?;
        outcome
    }
}
