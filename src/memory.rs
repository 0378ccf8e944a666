//! `speedrun memory`: the bytes a training run needs, by kind, from the model's layout and the
//! optimizer's state — on the CPU backend (everything f32) and in the mixed-precision layout of
//! the lectures (bf16 weights, gradients and activations for compute; f32 master weights and
//! optimizer state), next to the lectures' rule of 16 bytes per parameter for mixed-precision
//! Adam (2 + 2 for bf16 weights and gradients, 4 for the f32 master copy, 4 + 4 for m and v).

use std::fmt;

use anyhow::Result;

use crate::backend::Tensor;
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

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let psi = self.params as u64;
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
        let state = self.state_values() as u64;
        let state_per_param = state as f64 / psi as f64;
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
        let rows = [
            ("weights for compute", "4", "2 (bf16)", weights, mixed[0]),
            ("master weights", "-", "4 (f32)", 0, mixed[1]),
            ("gradients", "4", "2 (bf16)", grads, mixed[2]),
        ];
        writeln!(
            f,
            "\n| memory | bytes/param, CPU | bytes/param, mixed | CPU (f32) | mixed precision |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for (what, cpu_per, mixed_per, cpu, mixed) in rows {
            let cpu = if cpu == 0 { "-".into() } else { gb(cpu) };
            writeln!(
                f,
                "| {what} | {cpu_per} | {mixed_per} | {cpu} | {} |",
                gb(mixed)
            )?;
        }
        writeln!(
            f,
            "| optimizer state | {:.2} | {:.2} (f32) | {} | {} |",
            4.0 * state_per_param,
            4.0 * state_per_param,
            gb(state_cpu),
            gb(mixed[3])
        )?;
        let model_cpu = weights + grads + state_cpu;
        let model_mixed = mixed[0] + mixed[1] + mixed[2] + mixed[3];
        writeln!(
            f,
            "| **model states** | {:.2} | {:.2} | {} | {} |",
            model_cpu as f64 / psi as f64,
            model_mixed as f64 / psi as f64,
            gb(model_cpu),
            gb(model_mixed)
        )?;
        writeln!(
            f,
            "| activations and their gradients (one micro-batch) | | | {} | {} (bf16; statistics f32) |",
            gb(acts_cpu),
            gb(mixed[4])
        )?;
        writeln!(
            f,
            "| **total** | | | {} | {} |",
            gb(model_cpu + acts_cpu),
            gb(model_mixed + mixed[4])
        )?;
        writeln!(
            f,
            "\nThe lectures' rule for mixed-precision Adam: 16Ψ = {} of model states.",
            gb(16 * psi)
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
            text.contains("| **model states** | 16.00 | 16.00 |"),
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
