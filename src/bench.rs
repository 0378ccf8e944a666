//! `speedrun bench`: the speed of training steps on random tokens, by phase (forward with the
//! loss, backward, optimizer), as tokens per second and achieved GFLOP/s, next to the
//! backend's measured matrix-product peak (in its compute precision: f32 on the CPU, bf16 on a
//! GPU) and, for GPUs whose data sheet we know, the spec peak: the model FLOPs utilisation.

use std::fmt;
use std::time::Instant;

use anyhow::{Result, ensure};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::algoperf::median;
use crate::backend::{Backend, BufferKind};
use crate::model::{Gpt, ModelConfig, Pass};
use crate::optim::{OptimConfig, Optimizer};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub model: ModelConfig,
    pub optim: OptimConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accum: usize,
    /// Timed steps, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
    /// Side of the square product timed for the peak (0: skip it).
    pub gemm_size: usize,
}

/// Median milliseconds of each phase, and what follows from them.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub device: String,
    pub model: String,
    pub params: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub accum: usize,
    pub steps: usize,
    /// Forward and backward: all micro-batches of a step.
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    /// Training FLOPs per token: 6·N + 6·L·C·T, N the parameters of the matrix products (the
    /// layers' 12·C² each and the V·C head), the second term causal attention.
    pub flops_per_token: f64,
    /// GFLOP/s of a `gemm_size`³ matrix product through the model's own `matmul_forward` (so
    /// in the backend's compute precision), best of several.
    pub gemm_peak_gflops: Option<f64>,
    /// The data sheet's dense bf16 peak of the device, and where that figure comes from.
    pub spec_peak: Option<(f64, &'static str)>,
    /// Memory of the training steps: on a GPU the buffers the backend allocated (not cuBLASLt's
    /// workspace or per-call temporaries), on the CPU the process's peak RSS.
    pub peak_memory_bytes: u64,
}

impl BenchReport {
    pub fn tokens_per_step(&self) -> usize {
        self.batch * self.seq_len * self.accum
    }

    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_per_step() as f64 / (self.step_ms / 1e3)
    }

    pub fn achieved_gflops(&self) -> f64 {
        self.flops_per_token * self.tokens_per_second() / 1e9
    }

    /// Model FLOPs utilisation over the measured matrix-product peak, as a fraction; None
    /// where the "peak" came out below what the steps achieved, which makes it a disturbed
    /// measurement (a busy machine), not a peak.
    pub fn mfu_measured(&self) -> Option<f64> {
        self.gemm_peak_gflops
            .map(|peak| self.achieved_gflops() / peak)
            .filter(|&mfu| mfu <= 1.0)
    }

    /// Model FLOPs utilisation over the data sheet's peak, as a fraction.
    pub fn mfu_spec(&self) -> Option<f64> {
        self.spec_peak
            .map(|(gflops, _)| self.achieved_gflops() / gflops)
    }

    /// The figures as one JSON object (the keys scripts/torch_reference.py writes too).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "implementation": "speedrun",
            "commit": crate::records::GIT_COMMIT,
            "device": self.device,
            "model": self.model,
            "params": self.params,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "accum": self.accum,
            "tokens_per_step": self.tokens_per_step(),
            "steps": self.steps,
            "forward_ms": self.forward_ms,
            "backward_ms": self.backward_ms,
            "optimizer_ms": self.optimizer_ms,
            "ms_per_step": self.step_ms,
            "tokens_per_s": self.tokens_per_second(),
            "flops_per_token": self.flops_per_token,
            "achieved_tflops": self.achieved_gflops() / 1e3,
            "gemm_peak_tflops": self.gemm_peak_gflops.map(|g| g / 1e3),
            "spec_peak_tflops": self.spec_peak.map(|(g, _)| g / 1e3),
            "spec_peak_source": self.spec_peak.map(|(_, source)| source),
            "mfu_measured": self.mfu_measured(),
            "mfu_spec": self.mfu_spec(),
            "mfu_unit": "fraction",
            "peak_memory_bytes": self.peak_memory_bytes,
        })
    }
}

/// The dense bf16 tensor-core peak in GFLOP/s from NVIDIA's data sheets, by the device's name
/// in `describe` (none for CPUs and unknown GPUs).
pub fn spec_peak(device: &str) -> Option<(f64, &'static str)> {
    let name = device.to_uppercase();
    let gpu = name.starts_with("CUDA");
    let known: [(&str, &str, f64, &'static str); 5] = [
        (
            "H200",
            "",
            989.4e3,
            "H200 dense bf16 (the H100 SXM's SMs and clocks)",
        ),
        ("H100", "PCIE", 756.0e3, "H100 PCIe dense bf16"),
        ("H100", "NVL", 835.5e3, "H100 NVL dense bf16"),
        ("H100", "", 989.4e3, "H100 SXM dense bf16"),
        ("A100", "", 312.0e3, "A100 dense bf16"),
    ];
    known
        .into_iter()
        .find(|(model, variant, _, _)| gpu && name.contains(model) && name.contains(variant))
        .map(|(_, _, gflops, source)| (gflops, source))
}

/// Training FLOPs per token of `model` at sequence length `seq_len` (see
/// [`BenchReport::flops_per_token`]).
pub fn flops_per_token(model: &ModelConfig, seq_len: usize) -> f64 {
    let (l, c) = (model.layers as f64, model.channels as f64);
    let matmul_params = l * 12.0 * c * c + model.padded_vocab as f64 * c;
    6.0 * matmul_params + 6.0 * l * c * seq_len as f64
}

/// Times `config.steps` training steps of a freshly initialised model on random tokens.
pub fn run(backend: &mut dyn Backend, config: &BenchConfig) -> Result<BenchReport> {
    ensure!(config.steps > 0, "--steps must be positive");
    ensure!(config.accum > 0, "--accum must be positive");
    config.optim.validate()?;
    let model = Gpt::new(backend, &config.model, config.batch, config.seq_len)?;
    model.init_params(backend, 0)?;
    let mut optimizer = Optimizer::new(backend, &model, &config.optim)?;
    optimizer.start(backend)?;
    let n = config.batch * config.seq_len;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let vocab = config.model.vocab as u32;
    // One stream of tokens, each micro-batch its own slice of it.
    let tokens: Vec<u32> = (0..n * config.accum + 1)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let micro_batch = |i: usize| {
        (
            &tokens[i * n..(i + 1) * n],
            &tokens[i * n + 1..(i + 1) * n + 1],
        )
    };
    let loss_scale = 1.0 / (n * config.accum) as f32;
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for step in 0..config.warmup + config.steps {
        // Zeroing the gradients counts as forward time, as before accumulation existed.
        let mut times = [timed(backend, |b| model.zero_grads(b))?, 0.0, 0.0];
        for i in 0..config.accum {
            let (inputs, targets) = micro_batch(i);
            let pass = Pass::Train { loss_scale };
            times[0] += timed(backend, |b| {
                model.forward(b, inputs, targets, pass).map(drop)
            })?;
            times[1] += timed(backend, |b| model.backward(b))?;
        }
        times[2] = timed(backend, |b| optimizer.step(b, step, 1.0))?;
        if step >= config.warmup {
            for (phase, t) in phases.iter_mut().zip(times) {
                phase.push(t);
            }
        }
    }
    let totals: Vec<f64> = (0..config.steps)
        .map(|i| phases.iter().map(|p| p[i]).sum())
        .collect();
    let [forward, backward, optim] = phases.map(median);
    // Before the peak's own buffers are allocated.
    let peak_memory_bytes = backend.peak_memory_bytes();
    let gemm_peak_gflops = match config.gemm_size {
        0 => None,
        size => Some(gemm_peak(backend, size)?),
    };
    let device = backend.describe();
    Ok(BenchReport {
        spec_peak: spec_peak(&device),
        peak_memory_bytes,
        device,
        model: format!(
            "{} {} ({} layers, width {}, vocab {} padded to {})",
            config.model.arch,
            config.model.name,
            config.model.layers,
            config.model.channels,
            config.model.vocab,
            config.model.padded_vocab
        ),
        params: model.num_params(),
        batch: config.batch,
        seq_len: config.seq_len,
        accum: config.accum,
        steps: config.steps,
        forward_ms: forward,
        backward_ms: backward,
        optimizer_ms: optim,
        step_ms: median(totals),
        flops_per_token: flops_per_token(&config.model, config.seq_len),
        gemm_peak_gflops,
    })
}

/// Milliseconds `f` takes, waiting for the backend to finish its work.
fn timed(backend: &mut dyn Backend, f: impl FnOnce(&mut dyn Backend) -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    f(backend)?;
    backend.synchronize()?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// GFLOP/s of the best of six `size`³ matrix products through the model's `matmul_forward`:
/// activations times weights, in the precision the backend trains in.
pub fn gemm_peak(backend: &mut dyn Backend, size: usize) -> Result<f64> {
    let len = size * size;
    let inp = backend.alloc(len, BufferKind::Activations)?;
    let out = backend.alloc(len, BufferKind::Activations)?;
    let weight = backend.alloc(len, BufferKind::Parameters)?;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let values: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    backend.write(inp, &values)?;
    backend.write(weight, &values)?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let started = Instant::now();
        backend.matmul_forward(out, inp, weight, None, size, size, size)?;
        backend.synchronize()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(2.0 * (size as f64).powi(3) / best / 1e9)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device: {}", self.device)?;
        writeln!(
            f,
            "model: {}, {} parameters; {} micro-batch(es) of {} × {} tokens per step; median of \
             {} steps",
            self.model, self.params, self.accum, self.batch, self.seq_len, self.steps
        )?;
        writeln!(
            f,
            "forward {:.1} ms | backward {:.1} ms | optimizer {:.1} ms | step {:.1} ms",
            self.forward_ms, self.backward_ms, self.optimizer_ms, self.step_ms
        )?;
        write!(
            f,
            "{:.1} tokens/s | {:.1} GFLOP/s achieved ({:.3} GFLOP per token)",
            self.tokens_per_second(),
            self.achieved_gflops(),
            self.flops_per_token / 1e9
        )?;
        writeln!(f)?;
        match (self.gemm_peak_gflops, self.mfu_measured()) {
            (Some(peak), Some(mfu)) => writeln!(
                f,
                "matrix-product peak measured here {peak:.1} GFLOP/s: MFU {:.1}% of it",
                100.0 * mfu
            )?,
            (Some(peak), None) => writeln!(
                f,
                "matrix-product peak measured here {peak:.1} GFLOP/s, below what the steps \
                 achieved: a disturbed measurement (a busy machine?), so no MFU over it"
            )?,
            _ => {}
        }
        if let (Some((peak, source)), Some(mfu)) = (self.spec_peak, self.mfu_spec()) {
            writeln!(
                f,
                "spec peak {:.1} TFLOP/s ({source}): MFU {:.1}% of it",
                peak / 1e3,
                100.0 * mfu
            )?;
        }
        writeln!(
            f,
            "peak memory {:.2} GiB",
            self.peak_memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Arch, ModelOverrides, ModelSize};
    use crate::optim::OptimizerKind;

    #[test]
    fn flops_per_token_of_gpt2_d12() {
        // 6·(12 layers · 12·768² + 50304·768) + 6·12·768·1024 by hand: 6·(84,934,656 +
        // 38,633,472) + 56,623,104 = 798,031,872.
        let model =
            ModelConfig::new(Arch::Gpt2, ModelSize::D12, &ModelOverrides::default()).unwrap();
        assert_eq!(flops_per_token(&model, 1024), 798_031_872.0);
    }

    #[test]
    fn spec_peaks_come_from_the_gpu_name() {
        let peak = |name| spec_peak(name).map(|(gflops, _)| gflops);
        assert_eq!(
            peak("cuda: NVIDIA H100 80GB HBM3 (sm_90a; bf16 …)"),
            Some(989.4e3)
        );
        assert_eq!(peak("cuda: NVIDIA H100 PCIe (sm_90a)"), Some(756.0e3));
        assert_eq!(peak("cuda: NVIDIA H200 (sm_90a)"), Some(989.4e3));
        assert_eq!(peak("cuda: NVIDIA GeForce RTX 4090 (sm_89)"), None);
        assert_eq!(peak("cpu: AMD EPYC H100-like name"), None);
    }

    #[test]
    fn a_bench_of_a_tiny_model_times_every_phase() {
        let model =
            ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &ModelOverrides::default()).unwrap();
        let config = BenchConfig {
            optim: OptimConfig::defaults(Arch::Speedrun, OptimizerKind::Muon),
            model,
            batch: 2,
            seq_len: 16,
            accum: 2,
            steps: 3,
            warmup: 1,
            gemm_size: 64,
        };
        let report = run(&mut CpuBackend::<f32>::new(), &config).unwrap();
        for ms in [report.forward_ms, report.backward_ms, report.optimizer_ms] {
            assert!(ms > 0.0 && ms <= report.step_ms);
        }
        assert!(report.gemm_peak_gflops.unwrap() > 0.0);
        let text = report.to_string();
        assert!(
            text.contains("tokens/s") && text.contains("matrix-product peak"),
            "{text}"
        );
        // Two micro-batches of 2 × 16 tokens per step.
        assert_eq!(report.tokens_per_step(), 64);
        let json = report.json();
        assert_eq!(json["tokens_per_step"], 64);
        assert!(json["mfu_measured"].as_f64().unwrap() > 0.0);
        // No data-sheet peak for a CPU.
        assert!(json["mfu_spec"].is_null());
        // A "peak" below what the steps achieved is no peak: no MFU over it.
        let disturbed = BenchReport {
            gemm_peak_gflops: Some(report.achieved_gflops() / 2.0),
            ..report
        };
        assert!(disturbed.json()["mfu_measured"].is_null());
        assert!(disturbed.to_string().contains("disturbed"));
    }
}
