//! `speedrun bench`: the speed of training steps on random tokens, by phase (forward with the
//! loss, backward, optimizer), as tokens per second and achieved GFLOP/s, next to the
//! backend's measured matrix-product peak.

use std::fmt;
use std::time::Instant;

use anyhow::{Result, ensure};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::algoperf::median;
use crate::backend::{Backend, BufferKind, Gemm};
use crate::model::{Gpt, ModelConfig, Pass};
use crate::optim::{OptimConfig, Optimizer};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub model: ModelConfig,
    pub optim: OptimConfig,
    /// Sequences per step (no gradient accumulation).
    pub batch: usize,
    pub seq_len: usize,
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
    pub steps: usize,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    /// Training FLOPs per token: 6·N + 6·L·C·T, N the parameters of the matrix products (the
    /// layers' 12·C² each and the V·C head), the second term causal attention.
    pub flops_per_token: f64,
    /// GFLOP/s of an f32 `gemm_size`³ product on this backend, best of several.
    pub gemm_peak_gflops: Option<f64>,
}

impl BenchReport {
    pub fn tokens_per_second(&self) -> f64 {
        (self.batch * self.seq_len) as f64 / (self.step_ms / 1e3)
    }

    pub fn achieved_gflops(&self) -> f64 {
        self.flops_per_token * self.tokens_per_second() / 1e9
    }
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
    config.optim.validate()?;
    let model = Gpt::new(backend, &config.model, config.batch, config.seq_len)?;
    model.init_params(backend, 0)?;
    let mut optimizer = Optimizer::new(backend, &model, &config.optim)?;
    optimizer.start(backend)?;
    let n = config.batch * config.seq_len;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let vocab = config.model.vocab as u32;
    let tokens: Vec<u32> = (0..n + 1).map(|_| rng.random_range(0..vocab)).collect();
    let (inputs, targets) = (&tokens[..n], &tokens[1..]);
    let loss_scale = 1.0 / n as f32;
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for step in 0..config.warmup + config.steps {
        let mut times = [0.0; 3];
        let mut timed = |i: usize, f: &mut dyn FnMut(&mut dyn Backend) -> Result<()>| {
            let started = Instant::now();
            f(backend)?;
            backend.synchronize()?;
            times[i] = started.elapsed().as_secs_f64() * 1e3;
            Ok::<_, anyhow::Error>(())
        };
        timed(0, &mut |b| {
            model.zero_grads(b)?;
            model.forward(b, inputs, targets, Pass::Train { loss_scale })?;
            Ok(())
        })?;
        timed(1, &mut |b| model.backward(b))?;
        timed(2, &mut |b| optimizer.step(b, step, 1.0))?;
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
    let gemm_peak_gflops = match config.gemm_size {
        0 => None,
        size => Some(gemm_peak(backend, size)?),
    };
    Ok(BenchReport {
        device: backend.describe(),
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
        steps: config.steps,
        forward_ms: forward,
        backward_ms: backward,
        optimizer_ms: optim,
        step_ms: median(totals),
        flops_per_token: flops_per_token(&config.model, config.seq_len),
        gemm_peak_gflops,
    })
}

/// GFLOP/s of the best of five f32 `size`³ products through the backend's `gemm`.
pub fn gemm_peak(backend: &mut dyn Backend, size: usize) -> Result<f64> {
    let len = size * size;
    let [a, b, out] = [(); 3].map(|_| backend.alloc(len, BufferKind::Scratch));
    let (a, b, out) = (a?, b?, out?);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let values: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    backend.write(a, &values)?;
    backend.write(b, &values)?;
    let shape = Gemm {
        batch: 1,
        m: size,
        n: size,
        k: size,
        transpose_a: false,
        transpose_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let started = Instant::now();
        backend.gemm(out, a, b, shape)?;
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
            "model: {}, {} parameters; {} × {} tokens per step; median of {} steps",
            self.model, self.params, self.batch, self.seq_len, self.steps
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
        if let Some(peak) = self.gemm_peak_gflops {
            write!(
                f,
                " | f32 GEMM peak {peak:.1} GFLOP/s: {:.0}% of it",
                100.0 * self.achieved_gflops() / peak
            )?;
        }
        writeln!(f)
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
    fn a_bench_of_a_tiny_model_times_every_phase() {
        let model =
            ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &ModelOverrides::default()).unwrap();
        let config = BenchConfig {
            optim: OptimConfig::defaults(Arch::Speedrun, OptimizerKind::Muon),
            model,
            batch: 2,
            seq_len: 16,
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
            text.contains("tokens/s") && text.contains("GEMM peak"),
            "{text}"
        );
    }
}
