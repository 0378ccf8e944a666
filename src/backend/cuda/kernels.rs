//! The kernels of kernels/: embedded in the binary, compiled with NVRTC for one architecture,
//! and cached on disk.
//!
//! Each file is compiled as its own program: kernels/prelude.cuh, then the file, with `#line`
//! markers so that compiler messages name the file and line they are about. The prelude defines
//! everything the kernels would otherwise take from CUDA headers, so compiling needs no include
//! path. A CUBIN is cached under a name made of the file, the architecture, the NVRTC version
//! and a hash of everything that goes into the compiler (prelude, source and options), so a
//! changed kernel, compiler or option never loads a stale binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::nvrtc::{self, Compiled, Version};

/// One kernels/*.cu file.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub file: &'static str,
    pub text: &'static str,
}

macro_rules! kernel_sources {
    ($($file:literal),* $(,)?) => {
        &[$(Source { file: $file, text: include_str!(concat!("../../../kernels/", $file)) }),*]
    };
}

/// Every kernel file; a test checks that the list and the directory agree.
pub const SOURCES: &[Source] = kernel_sources![
    "activation.cu",
    "attention.cu",
    "bias.cu",
    "embedding.cu",
    "loss.cu",
    "memory.cu",
    "newton_schulz.cu",
    "norm.cu",
    "optim.cu",
    "precondition.cu",
    "reduce.cu",
    "rope.cu",
];

const PRELUDE: &str = include_str!("../../../kernels/prelude.cuh");

/// Compiler options besides the architecture. No fast math: the kernels are checked against
/// the CPU's f32 results. `-v` puts ptxas's register and spill counts into the log.
const OPTIONS: &[&str] = &["-std=c++17", "--ptxas-options=-v"];

/// The architectures the kernels must compile for: Hopper and the oldest supported (Ampere).
pub const REQUIRED_ARCHS: &[&str] = &["sm_90a", "sm_80"];

/// The text NVRTC compiles for `source`: the prelude, then the file.
pub fn program(source: &Source) -> String {
    format!(
        "#line 1 \"prelude.cuh\"\n{PRELUDE}\n#line 1 \"{}\"\n{}",
        source.file, source.text
    )
}

/// Rejects what NVRTC could not turn into a CUBIN (e.g. `compute_90a`, which gives PTX only).
pub fn check_arch(arch: &str) -> Result<()> {
    let digits = arch.strip_prefix("sm_").unwrap_or_default();
    let digits = digits.strip_suffix('a').unwrap_or(digits);
    ensure!(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        "{arch:?} is not a GPU architecture like sm_80 or sm_90a"
    );
    Ok(())
}

/// Compiles one file for `arch` (no cache).
pub fn compile(source: &Source, arch: &str) -> Result<Compiled> {
    check_arch(arch)?;
    Ok(nvrtc::compile(
        source.file,
        &program(source),
        arch,
        OPTIONS,
    )?)
}

/// The cache file name of `source` compiled for `arch` by NVRTC `version`.
pub fn cache_name(source: &Source, arch: &str, version: Version) -> String {
    // Everything NVRTC is given, NUL-separated: no two different lists give the same bytes.
    let program = program(source);
    let mut parts = vec![program.as_str()];
    parts.extend(OPTIONS);
    let hash = crate::hash::fnv1a(parts.join("\0").as_bytes());
    let stem = source.file.trim_end_matches(".cu");
    format!("{stem}-{arch}-nvrtc{version}-{hash:016x}.cubin")
}

/// A directory of compiled kernels.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// `$SPEEDRUN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/speedrun/kernels`, else
    /// `~/.cache/speedrun/kernels`; `None` without any of these variables.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("SPEEDRUN_KERNEL_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("speedrun/kernels")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/speedrun/kernels")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached CUBIN called `name`, if there is one that looks like an ELF file (anything
    /// else is treated as absent and will be overwritten).
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.dir.join(name)).ok()?;
        bytes.starts_with(b"\x7fELF").then_some(bytes)
    }

    /// Stores a CUBIN atomically: a concurrent reader sees the old file or the whole new one.
    pub fn store(&self, name: &str, cubin: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join(name);
        crate::atomic::write_file(&path, |file| std::io::Write::write_all(file, cubin))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The CUBIN of `source` for `arch`: from the cache, or compiled and then cached. A cache
    /// that cannot be written costs only the next start's compile time, so that is a warning.
    pub fn cubin(&self, source: &Source, arch: &str) -> Result<Vec<u8>> {
        let name = cache_name(source, arch, nvrtc::load()?);
        if let Some(cubin) = self.load(&name) {
            return Ok(cubin);
        }
        let compiled = compile(source, arch)?;
        if let Err(error) = self.store(&name, &compiled.cubin) {
            tracing::warn!("kernel cache: {error:#}");
        }
        Ok(compiled.cubin)
    }
}

/// Compiles every kernel file for each of `archs` (no GPU needed), printing a line per file
/// and architecture: its kernels, the most registers one uses, and any that spill. An error
/// names every file that failed; each failure's compiler log goes to standard error.
pub fn compile_all(archs: &[String]) -> Result<()> {
    for arch in archs {
        check_arch(arch)?;
    }
    let version = nvrtc::load()?;
    println!("NVRTC {version}");
    let mut failed = Vec::new();
    for arch in archs {
        for source in SOURCES {
            let compiled = match compile(source, arch) {
                Ok(compiled) => compiled,
                Err(error) => {
                    println!("{arch:<7} {:<14} FAILED", source.file);
                    eprintln!("{error:#}");
                    failed.push(format!("{} ({arch})", source.file));
                    continue;
                }
            };
            let usage = ptxas_usage(&compiled.log);
            let registers = usage.iter().map(|u| u.registers).max().unwrap_or(0);
            let spilling: Vec<&str> = (usage.iter())
                .filter(|u| u.spill_stores + u.spill_loads > 0)
                .map(|u| u.function.as_str())
                .collect();
            let spills = if spilling.is_empty() {
                "no spills".to_string()
            } else {
                format!("spills in {}", spilling.join(", "))
            };
            println!(
                "{arch:<7} {:<14} {:>2} kernels, at most {registers} registers, {spills}",
                source.file,
                usage.len()
            );
        }
    }
    ensure!(
        failed.is_empty(),
        "{} of {} compiles failed: {}",
        failed.len(),
        archs.len() * SOURCES.len(),
        failed.join(", ")
    );
    Ok(())
}

/// The size class of a kernel parameter, as PTX declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `.u64`: a pointer or a `long long`.
    B64,
    /// `.u32`: an `int` or `unsigned int`.
    B32,
    /// `.f32`: a `float`.
    F32,
}

/// Every kernel entry point of a PTX module, with its parameters in order.
pub fn ptx_entries(ptx: &str) -> Result<BTreeMap<String, Vec<Param>>> {
    let mut entries = BTreeMap::new();
    let mut current: Option<(String, Vec<Param>)> = None;
    for line in ptx.lines().map(str::trim) {
        if let Some(rest) = line.split(".entry ").nth(1) {
            let name = rest.trim_end_matches('(').trim().to_string();
            current = Some((name, Vec::new()));
        } else if let Some((name, params)) = current.as_mut() {
            if let Some(declaration) = line.strip_prefix(".param ") {
                params.push(match declaration.split_whitespace().next() {
                    Some(".u64" | ".b64" | ".s64") => Param::B64,
                    Some(".u32" | ".b32" | ".s32") => Param::B32,
                    Some(".f32") => Param::F32,
                    other => anyhow::bail!("kernel {name}: unexpected parameter type {other:?}"),
                });
            } else if line.starts_with(')') {
                let (name, params) = current.take().unwrap_or_default();
                entries.insert(name, params);
            }
        }
    }
    Ok(entries)
}

/// What ptxas reported for one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub function: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// The number just before `unit` in `line`, e.g. 28 in "Used 28 registers".
fn count_before(line: &str, unit: &str) -> Option<u32> {
    let before = &line[..line.find(unit)?];
    before.split_whitespace().last()?.parse().ok()
}

/// Per-kernel registers and spills from the log of a compile with `--ptxas-options=-v`.
pub fn ptxas_usage(log: &str) -> Vec<Usage> {
    let mut usage: Vec<Usage> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let function = rest.split('\'').next().unwrap_or_default().to_string();
            usage.push(Usage {
                function,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
            });
        } else if let Some(current) = usage.last_mut() {
            if let Some(n) = count_before(line, " bytes spill stores") {
                current.spill_stores = n;
            }
            if let Some(n) = count_before(line, " bytes spill loads") {
                current.spill_loads = n;
            }
            if let Some(n) = count_before(line, " registers") {
                current.registers = n;
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = SOURCES.iter().map(|s| s.file).collect();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn compiler_messages_point_into_the_kernel_file() {
        let source = &SOURCES[0];
        let text = program(source);
        let marker = format!("#line 1 \"{}\"\n", source.file);
        let (_, after) = text.split_once(&marker).unwrap();
        assert_eq!(after, source.text);
    }

    #[test]
    fn only_sm_architectures_are_accepted() {
        for arch in ["sm_80", "sm_90a", "sm_120"] {
            check_arch(arch).unwrap();
        }
        for arch in ["compute_90a", "sm_", "sm_9x", "90", "sm_90aa"] {
            assert!(check_arch(arch).is_err(), "{arch}");
        }
    }

    #[test]
    fn cache_names_change_with_source_arch_and_compiler() {
        let v13 = Version {
            major: 13,
            minor: 0,
        };
        let name = cache_name(&SOURCES[0], "sm_90a", v13);
        assert!(name.starts_with("activation-sm_90a-nvrtc13.0-"), "{name}");
        assert_ne!(name, cache_name(&SOURCES[0], "sm_80", v13));
        let v131 = Version { minor: 1, ..v13 };
        assert_ne!(name, cache_name(&SOURCES[0], "sm_90a", v131));
        let edited = Source {
            text: "// edited\n",
            ..SOURCES[0]
        };
        assert_ne!(name, cache_name(&edited, "sm_90a", v13));
    }

    #[test]
    fn the_cache_returns_what_it_stored_and_ignores_what_is_not_a_cubin() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("nested/kernels"));
        assert_eq!(cache.load("k.cubin"), None);
        let cubin = b"\x7fELF and the rest".to_vec();
        cache.store("k.cubin", &cubin).unwrap();
        assert_eq!(cache.load("k.cubin"), Some(cubin));
        cache.store("k.cubin", b"truncated").unwrap();
        assert_eq!(cache.load("k.cubin"), None);
    }

    #[test]
    fn ptx_entries_list_each_kernels_parameters() {
        // As NVRTC 13.0 writes them (abridged).
        let ptx = "\
.version 9.0
.target sm_80
.visible .entry sum_partials(
	.param .u64 sum_partials_param_0,
	.param .u64 sum_partials_param_1,
	.param .u32 sum_partials_param_2
)
{
	.reg .pred 	%p<3>;
}
.visible .entry scale(
	.param .f32 scale_param_0
)
{
}";
        let entries = ptx_entries(ptx).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries["sum_partials"],
            vec![Param::B64, Param::B64, Param::B32]
        );
        assert_eq!(entries["scale"], vec![Param::F32]);
        let odd = ".visible .entry k(\n\t.param .align 16 .b8 k_param_0[32]\n)";
        assert!(ptx_entries(odd).is_err());
    }

    #[test]
    fn ptxas_usage_is_read_per_kernel() {
        let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'relu2_backward_bf16' for 'sm_80'
ptxas info    : Function properties for relu2_backward_bf16
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers, 384 bytes cmem[0]
ptxas info    : Compile time = 2.659 ms
ptxas info    : Compiling entry function 'layernorm_backward_f32' for 'sm_90a'
ptxas info    : Function properties for layernorm_backward_f32
ptxas         .     8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers";
        assert_eq!(
            ptxas_usage(log),
            vec![
                Usage {
                    function: "relu2_backward_bf16".into(),
                    registers: 14,
                    spill_stores: 0,
                    spill_loads: 0
                },
                Usage {
                    function: "layernorm_backward_f32".into(),
                    registers: 255,
                    spill_stores: 12,
                    spill_loads: 16
                },
            ]
        );
    }
}
