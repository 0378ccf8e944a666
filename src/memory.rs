//! `speedrun memory`: the bytes a training run needs, by kind, from the model's layout and the
//! optimizer's state — on the CPU backend (everything f32) and in the mixed-precision layout of
//! the lectures (bf16 weights, gradients and activations for compute; f32 master weights and
//! optimizer state), next to the lectures' rule of 16 bytes per parameter for mixed-precision
//! Adam (2 + 2 for bf16 weights and gradients, 4 for the f32 master copy, 4 + 4 for m and v).

use std::fmt;

use anyhow::Result;

use crate::backend::cuda::backend::{has_bf16_copy, stored_bytes};
use crate::backend::cuda::matmul::Dtype;
use crate::backend::{BufferKind, Tensor};
use crate::model::{ModelConfig, activation_floats, param_layout};
use crate::optim::{OptimConfig, group_ranges, state_values};

/// Element counts of one run's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    pub model: String,
    pub params: usize,
    /// Per group: name, parameters, optimizer state values, the rule in words.
    pub groups: Vec<(&'static str, usize, usize, String)>,
    pub batch: usize,
    pub seq_len: usize,
    /// Saved activations, their per-row statistics (f32 in every layout) and the
    /// activations' gradients (one micro-batch).
    pub activations: usize,
    pub statistics: usize,
    pub activation_grads: usize,
}

impl MemoryReport {
    pub fn new(
        model: &ModelConfig,
        optim: &OptimConfig,
        batch: usize,
        seq_len: usize,
    ) -> Result<Self> {
        let unbounded = Tensor {
            buffer: 0,
            offset: 0,
            len: usize::MAX,
        };
        let layout = param_layout(model, unbounded);
        let mut groups = Vec::new();
        for (range, specs) in group_ranges(&layout.specs, unbounded, unbounded) {
            let rule = optim.rule(range.group);
            let state = state_values(rule, &range, &specs)?;
            groups.push((range.group.name(), range.param.len, state, rule.describe()));
        }
        let sizes = activation_floats(model, batch, seq_len);
        Ok(MemoryReport {
            model: format!("{} {}", model.arch, model.name),
            params: layout.total,
            groups,
            batch,
            seq_len,
            activations: sizes.values,
            statistics: sizes.statistics,
            activation_grads: sizes.grads,
        })
    }

    /// Optimizer state values, all groups.
    pub fn state_values(&self) -> usize {
        self.groups.iter().map(|(_, _, state, _)| state).sum()
    }

    /// Bytes on the CPU backend: every buffer f32.
    pub fn cpu_bytes(&self) -> [u64; 4] {
        let f32s = |n: usize| 4 * n as u64;
        [
            f32s(self.params),
            f32s(self.params),
            f32s(self.state_values()),
            f32s(self.activations + self.statistics + self.activation_grads),
        ]
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.3} GB", bytes as f64 / 1e9)
}

/// Bytes of one memory row in each layout: the CPU's, the lectures' mixed precision, and the
/// CUDA backend's.
struct Row {
    what: &'static str,
    /// Bytes per parameter in each layout, where the row is per parameter.
    per_param: Option<[f64; 3]>,
    bytes: [u64; 3],
}

impl MemoryReport {
    /// Bytes of the CUDA backend (src/backend/cuda/backend.rs) training with bf16 activations:
    /// [bf16 copy of the weights, f32 weights, gradients, optimizer state, activations with
    /// their statistics and gradients].
    pub fn cuda_bytes(&self) -> [u64; 5] {
        let bytes = |kind, n: usize| n as u64 * stored_bytes(kind, Dtype::Bf16) as u64;
        let copy = if has_bf16_copy(BufferKind::Parameters, Dtype::Bf16) {
            2 * self.params as u64
        } else {
            0
        };
        [
            copy,
            bytes(BufferKind::Parameters, self.params),
            bytes(BufferKind::Gradients, self.params),
            bytes(BufferKind::OptimizerState, self.state_values()),
            bytes(BufferKind::Activations, self.activations)
                + bytes(BufferKind::Statistics, self.statistics)
                + bytes(BufferKind::ActivationGradients, self.activation_grads),
        ]
    }

    fn rows(&self) -> Vec<Row> {
        let psi = self.params as u64;
        let state = self.state_values() as u64;
        let [weights, grads, state_cpu, acts_cpu] = self.cpu_bytes();
        let acts = (self.activations + self.activation_grads) as u64;
        // Mixed precision: bf16 compute weights, gradients and activations; f32 master, state
        // and per-row statistics.
        let mixed = [
            2 * psi,
            4 * psi,
            2 * psi,
            4 * state,
            2 * acts + 4 * self.statistics as u64,
        ];
        let cuda = self.cuda_bytes();
        let per = |bytes: [u64; 3]| Some(bytes.map(|b| b as f64 / psi as f64));
        let row = |what, bytes: [u64; 3], per_param: bool| Row {
            what,
            per_param: if per_param { per(bytes) } else { None },
            bytes,
        };
        let model = [
            weights + grads + state_cpu,
            mixed[..4].iter().sum(),
            cuda[..4].iter().sum(),
        ];
        vec![
            row("weights for compute", [weights, mixed[0], cuda[0]], true),
            row("master weights", [0, mixed[1], cuda[1]], true),
            row("gradients", [grads, mixed[2], cuda[2]], true),
            row("optimizer state", [state_cpu, mixed[3], cuda[3]], true),
            row("**model states**", model, true),
            row(
                "activations and their gradients (one micro-batch)",
                [acts_cpu, mixed[4], cuda[4]],
                false,
            ),
            row(
                "**total**",
                [model[0] + acts_cpu, model[1] + mixed[4], model[2] + cuda[4]],
                false,
            ),
        ]
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: Ψ = {} parameters; micro-batch {} × {} tokens",
            self.model, self.params, self.batch, self.seq_len
        )?;
        for (name, len, state, rule) in &self.groups {
            writeln!(
                f,
                "  {name:<9} {len:>12} params, {:.2} state values each: {rule}",
                *state as f64 / *len as f64
            )?;
        }
        writeln!(
            f,
            "\n| memory | bytes/param: CPU, mixed, CUDA | CPU (f32) | mixed precision | CUDA backend |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for row in self.rows() {
            let per_param = row.per_param.map_or(String::new(), |[cpu, mixed, cuda]| {
                format!("{cpu:.2}, {mixed:.2}, {cuda:.2}")
            });
            let [cpu, mixed, cuda] = row.bytes.map(|b| if b == 0 { "-".into() } else { gb(b) });
            writeln!(
                f,
                "| {} | {per_param} | {cpu} | {mixed} | {cuda} |",
                row.what
            )?;
        }
        writeln!(
            f,
            "\nmixed precision: the lectures' layout (bf16 weights for compute, gradients and \
             activations; f32 master weights, optimizer state and per-row statistics). CUDA \
             backend: the same but with f32 gradients, accumulated over micro-batches at full \
             precision."
        )?;
        writeln!(
            f,
            "The lectures' rule for mixed-precision Adam: 16Ψ = {} of model states.",
            gb(16 * self.params as u64)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelOverrides, ModelSize};
    use crate::optim::OptimizerKind;

    #[test]
    fn adamw_everywhere_follows_the_sixteen_bytes_rule() {
        // GPT-2 d12 with AdamW on every group: two state values per parameter, so the
        // mixed-precision model states are 2 + 4 + 2 + 8 = 16 bytes per parameter, and the f32
        // CPU ones 4 + 4 + 8 = 16 as well.
        let model =
            ModelConfig::new(Arch::Gpt2, ModelSize::D12, &ModelOverrides::default()).unwrap();
        let optim = OptimConfig::defaults(Arch::Gpt2, OptimizerKind::Adamw);
        let report = MemoryReport::new(&model, &optim, 4, 64).unwrap();
        assert_eq!(
            report.params, 124_475_904,
            "llm.c's d12 with the vocabulary padded to 50304"
        );
        assert_eq!(report.state_values(), 2 * report.params);
        let text = report.to_string();
        assert!(
            text.contains("| **model states** | 16.00, 16.00, 18.00 |"),
            "{text}"
        );
        assert!(text.contains("16Ψ = 1.992 GB"), "{text}");
        // Muon keeps one value per matrix parameter instead of two.
        let muon = OptimConfig::defaults(Arch::Gpt2, OptimizerKind::Muon);
        let report = MemoryReport::new(&model, &muon, 4, 64).unwrap();
        let matrix = report.groups.iter().find(|g| g.0 == "matrix").unwrap().1;
        assert_eq!(report.state_values(), 2 * report.params - matrix);
        // 12 layers × 12·768² hidden-matrix weights.
        assert_eq!(matrix, 12 * 12 * 768 * 768);
    }

    #[test]
    fn the_state_counted_is_the_state_the_optimizers_allocate() {
        use crate::backend::cpu::CpuBackend;
        use crate::model::Gpt;
        use crate::optim::Optimizer;
        use clap::ValueEnum;
        let overrides = ModelOverrides {
            channels: Some(32),
            heads: Some(2),
            vocab: Some(64),
            max_seq_len: Some(8),
            ..ModelOverrides::default()
        };
        for arch in [Arch::Speedrun, Arch::Gpt2] {
            let model = ModelConfig::new(arch, ModelSize::Tiny, &overrides).unwrap();
            for &kind in OptimizerKind::value_variants() {
                let optim = OptimConfig::defaults(arch, kind);
                let report = MemoryReport::new(&model, &optim, 1, 8).unwrap();
                let mut backend = CpuBackend::<f32>::new();
                let gpt = Gpt::new(&mut backend, &model, 1, 8).unwrap();
                let optimizer = Optimizer::new(&mut backend, &gpt, &optim).unwrap();
                let allocated: usize = optimizer.state().iter().map(|(_, t)| t.len).sum();
                assert_eq!(report.state_values(), allocated, "{arch} {kind}");
            }
        }
    }

    #[test]
    fn the_cuda_layout_is_the_mixed_one_with_f32_gradients() {
        let model =
            ModelConfig::new(Arch::Gpt2, ModelSize::D12, &ModelOverrides::default()).unwrap();
        let optim = OptimConfig::defaults(Arch::Gpt2, OptimizerKind::Adamw);
        let report = MemoryReport::new(&model, &optim, 4, 64).unwrap();
        let psi = report.params as u64;
        let [copy, master, grads, state, acts] = report.cuda_bytes();
        // bf16 copy 2, f32 master 4, f32 gradients 4, AdamW's m and v 4 + 4 bytes.
        assert_eq!(
            [copy, master, grads, state],
            [2 * psi, 4 * psi, 4 * psi, 8 * psi]
        );
        let (values, stats) = (
            (report.activations + report.activation_grads) as u64,
            report.statistics as u64,
        );
        assert_eq!(acts, 2 * values + 4 * stats);
        assert!(report.to_string().contains("16.00, 16.00, 18.00"));
    }

    #[test]
    fn activations_grow_linearly_with_the_batch() {
        let model =
            ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &ModelOverrides::default()).unwrap();
        let optim = OptimConfig::defaults(Arch::Speedrun, OptimizerKind::Muon);
        let one = MemoryReport::new(&model, &optim, 1, 64).unwrap();
        let four = MemoryReport::new(&model, &optim, 4, 64).unwrap();
        assert_eq!(four.activations, 4 * one.activations);
        assert_eq!(four.statistics, 4 * one.statistics);
        assert_eq!(four.activation_grads, 4 * one.activation_grads);
        assert_eq!(one.params, four.params);
    }
}
