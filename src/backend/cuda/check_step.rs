//! One whole training step of a small model of each architecture on the CUDA backend against
//! the CPU backend: the loss and every parameter's gradient after forward and backward on the
//! same weights and tokens, then the change of every parameter in one optimizer step taken from
//! the same gradients (the CPU's are copied to the GPU first, so that the step is compared on
//! its own: Adam's first step is ±lr wherever a gradient is nonzero, and would turn any tiny
//! difference of a near-zero gradient into a full-size one).
//!
//! Runs with activations stored as f32 (everything held to the f32 tolerance) and as bf16
//! (gradients held to the bf16 one). The weights are random rather than each architecture's
//! initialisation, whose zero output projections would leave most gradients exactly zero.

use anyhow::Result;
use half::bf16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{Check, Comparison, relative_error};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::backend::CudaBackend;
use crate::backend::cuda::matmul::MatmulElement;
use crate::backend::{Backend, BufferKind};
use crate::dist::SingleRank;
use crate::model::{Arch, Gpt, ModelConfig, ModelOverrides, ModelSize, Pass};
use crate::optim::{OptimConfig, Optimizer, OptimizerKind};

const BATCH: usize = 2;
/// Not a multiple of any attention tile.
const SEQ_LEN: usize = 45;
const VOCAB: usize = 1000;

/// Two layers, 96 wide, 3 heads of 32: small enough to run in a moment on the CPU.
fn small_model(arch: Arch) -> Result<ModelConfig> {
    ModelConfig::new(
        arch,
        ModelSize::Tiny,
        &ModelOverrides {
            layers: Some(2),
            channels: Some(96),
            heads: Some(3),
            vocab: Some(VOCAB),
            max_seq_len: Some(64),
            softcap: None,
            rope_base: None,
        },
    )
}

impl Check<'_> {
    pub(super) fn training_steps(&mut self, ordinal: usize) -> Result<()> {
        for arch in [Arch::Gpt2, Arch::Speedrun] {
            // Shampoo and SOAP are compared in check_solver.rs over several steps with settings
            // that make their result unique: at their defaults, SOAP's first step only builds
            // its bases, and Shampoo's ε of 1e-12 leaves a rank-deficient factor's null space to
            // the solver.
            for optimizer in [OptimizerKind::Adamw, OptimizerKind::Muon] {
                self.training_step::<f32>(ordinal, arch, optimizer)?;
                self.training_step::<bf16>(ordinal, arch, optimizer)?;
            }
        }
        Ok(())
    }

    fn training_step<A: MatmulElement>(
        &mut self,
        ordinal: usize,
        arch: Arch,
        kind: OptimizerKind,
    ) -> Result<()> {
        let config = small_model(arch)?;
        let optim = OptimConfig::defaults(arch, kind);
        let mut gpu = CudaBackend::<A>::new(ordinal)?;
        let mut cpu = CpuBackend::<f32>::new();
        let gpu_model = Gpt::new(&mut gpu, &config, BATCH, SEQ_LEN)?;
        let cpu_model = Gpt::new(&mut cpu, &config, BATCH, SEQ_LEN)?;

        // Random weights, rounded as the GPU's matrix products will read them, on both sides.
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let normal = Normal::new(0.0f32, 0.1)?;
        for (gpu_spec, cpu_spec) in gpu_model.specs.iter().zip(&cpu_model.specs) {
            let values: Vec<f32> = (0..cpu_spec.tensor.len)
                .map(|_| A::of(normal.sample(&mut rng)).f32())
                .collect();
            gpu.write(gpu_spec.tensor, &values)?;
            cpu.write(cpu_spec.tensor, &values)?;
        }
        let tokens = self.tokens(BATCH * SEQ_LEN + 1, VOCAB);
        let (inputs, targets) = (&tokens[..BATCH * SEQ_LEN], &tokens[1..]);
        let pass = Pass::Train {
            loss_scale: 1.0 / (BATCH * SEQ_LEN) as f32,
        };
        let label = format!("step {arch} {}", A::NAME);
        let mut losses = [0.0; 2];
        for (i, (backend, model)) in [
            (&mut gpu as &mut dyn Backend, &gpu_model),
            (&mut cpu as &mut dyn Backend, &cpu_model),
        ]
        .into_iter()
        .enumerate()
        {
            model.zero_grads(backend)?;
            losses[i] = model.forward(backend, inputs, targets, pass)?;
            model.backward(backend)?;
        }
        if kind == OptimizerKind::Adamw {
            // The forward and backward pass do not depend on the optimizer: compared once.
            self.comparisons.push(Comparison {
                kernel: label.clone(),
                tensor: "loss",
                dtype: A::NAME,
                error: relative_error(&[losses[0] as f32], &[losses[1] as f32]),
            });
            for (gpu_spec, cpu_spec) in gpu_model.specs.iter().zip(&cpu_model.specs) {
                let offset = cpu_spec.tensor.offset - cpu_model.param_buffer.offset;
                let grad = |model: &Gpt| model.grad_buffer.slice(offset, cpu_spec.tensor.len);
                let gpu_grad = gpu.read(grad(&gpu_model))?;
                let cpu_grad = cpu.read(grad(&cpu_model))?;
                self.comparisons.push(Comparison {
                    kernel: format!("{label} gradient"),
                    tensor: gpu_spec.name,
                    dtype: A::NAME,
                    error: relative_error(&gpu_grad, &cpu_grad),
                });
            }
        }

        // The optimizer step, from the CPU's gradients on both sides.
        let grads = cpu.read(cpu_model.grad_buffer)?;
        gpu.write(gpu_model.grad_buffer, &grads)?;
        let before = cpu.read(cpu_model.param_buffer)?;
        let mut gpu_optimizer = Optimizer::new(&mut gpu, &gpu_model, &optim)?;
        let mut cpu_optimizer = Optimizer::new(&mut cpu, &cpu_model, &optim)?;
        gpu_optimizer.start(&mut gpu)?;
        cpu_optimizer.start(&mut cpu)?;
        gpu_optimizer.step(&mut gpu, 0, 1.0)?;
        cpu_optimizer.step(&mut cpu, 0, 1.0)?;
        let gpu_after = gpu.read(gpu_model.param_buffer)?;
        let cpu_after = cpu.read(cpu_model.param_buffer)?;
        for spec in &cpu_model.specs {
            let start = spec.tensor.offset - cpu_model.param_buffer.offset;
            let range = start..start + spec.tensor.len;
            let change = |after: &[f32]| -> Vec<f32> {
                after[range.clone()]
                    .iter()
                    .zip(&before[range.clone()])
                    .map(|(a, b)| a - b)
                    .collect()
            };
            self.comparisons.push(Comparison {
                kernel: format!("step {arch} {} {kind:?} update", A::NAME),
                tensor: spec.name,
                dtype: "f32",
                error: relative_error(&change(&gpu_after), &change(&cpu_after)),
            });
        }
        Ok(())
    }
}

impl Check<'_> {
    /// NCCL's grouped reduce-scatter and all-gather over one rank, as data-parallel training
    /// calls them on the gradients and weights: they must run and leave the values exactly as
    /// they were (a sum over one rank), so that a run with NCCL gives the losses of one
    /// without.
    pub(super) fn nccl_one_rank(&mut self, ordinal: usize) -> Result<()> {
        if !crate::backend::cuda::nccl::present() {
            // Only multi-process GPU runs need it; its absence is no fault of the backend.
            eprintln!("NCCL skipped: libnccl.so.2 cannot be loaded on this machine");
            return Ok(());
        }
        let mut gpu = CudaBackend::<f32>::new(ordinal)?;
        let values = self.random::<f32>(1_000_003, 1.0);
        let grads = gpu.alloc(values.len(), BufferKind::Gradients)?;
        gpu.write(grads, &values)?;
        gpu.use_nccl(&SingleRank, std::time::Duration::from_secs(60))?;
        let lens = [values.len()];
        gpu.reduce_scatter_sum(grads, &lens, &SingleRank)?;
        let summed = gpu.read(grads)?;
        gpu.all_gather_pieces(grads, &lens, &SingleRank)?;
        let gathered = gpu.read(grads)?;
        for (kernel, result) in [("reduce-scatter", summed), ("all-gather", gathered)] {
            self.comparisons.push(Comparison {
                kernel: format!("NCCL {kernel}, one rank"),
                tensor: "gradients",
                dtype: "f32",
                error: relative_error(&result, &values),
            });
        }
        Ok(())
    }
}
