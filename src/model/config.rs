//! Model architectures and sizes.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

pub use crate::data::tokenizer::GPT2_VOCAB;
/// The vocabulary is padded to a multiple of this, for fast matrix products
/// (50257 → 50304, as llm.c and the speedrun do).
pub const VOCAB_PADDING: usize = 64;
/// Limits on model dimensions, far above any real model here, that keep sizes from overflowing.
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_CONTEXT: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// llm.c's GPT-2: LayerNorm with bias, GELU MLP, learned positions, biases, tied lm_head.
    Gpt2,
    /// The modded-nanogpt record architecture: RMSNorm, rotary embeddings, QK-norm, ReLU² MLP,
    /// no biases, untied zero-initialised lm_head, zero-initialised output projections, tanh
    /// logit soft-cap.
    Speedrun,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Gpt2 => "gpt2",
            Arch::Speedrun => "speedrun",
        })
    }
}

/// Named sizes: d12 is GPT-2 small (124M), d24 medium, d36 large, d48 XL (1.5B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelSize {
    /// 12 layers, 768 wide, 12 heads.
    D12,
    /// 24 layers, 1024 wide, 16 heads.
    D24,
    /// 36 layers, 1280 wide, 20 heads.
    D36,
    /// 48 layers, 1600 wide, 25 heads.
    D48,
    /// 2 layers, 64 wide, 4 heads: for tests and CPU demos (set --vocab and --context to fit).
    Tiny,
}

impl ModelSize {
    /// (layers, channels, heads).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            ModelSize::D12 => (12, 768, 12),
            ModelSize::D24 => (24, 1024, 16),
            ModelSize::D36 => (36, 1280, 20),
            ModelSize::D48 => (48, 1600, 25),
            ModelSize::Tiny => (2, 64, 4),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The preset the dimensions came from ("d12", …, or "custom" when overridden).
    pub name: String,
    pub layers: usize,
    pub channels: usize,
    pub heads: usize,
    /// Real vocabulary size: token ids must be below it.
    pub vocab: usize,
    /// Vocabulary rounded up to a multiple of [`VOCAB_PADDING`]; the extra logits are ignored.
    pub padded_vocab: usize,
    /// Longest sequence the model supports (size of the position embedding / rotary table).
    pub max_seq_len: usize,
    /// `speedrun` only: logits become `cap·tanh(logits/cap)`.
    pub softcap: Option<f32>,
    /// `speedrun` only: rotary base θ.
    pub rope_base: f32,
}

/// Everything a user may set about the model; `None` keeps the preset's value.
#[derive(Clone, Debug, Default)]
pub struct ModelOverrides {
    pub layers: Option<usize>,
    pub channels: Option<usize>,
    pub heads: Option<usize>,
    pub vocab: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub softcap: Option<f32>,
    pub rope_base: Option<f32>,
}

impl ModelConfig {
    pub fn new(arch: Arch, size: ModelSize, o: &ModelOverrides) -> Result<ModelConfig> {
        let (layers, channels, heads) = size.dims();
        let custom = o.layers.is_some() || o.channels.is_some() || o.heads.is_some();
        let name = if custom {
            "custom".to_string()
        } else {
            format!("{size:?}").to_lowercase()
        };
        let vocab = o.vocab.unwrap_or(GPT2_VOCAB);
        let config = ModelConfig {
            arch,
            name,
            layers: o.layers.unwrap_or(layers),
            channels: o.channels.unwrap_or(channels),
            heads: o.heads.unwrap_or(heads),
            vocab,
            padded_vocab: vocab.div_ceil(VOCAB_PADDING) * VOCAB_PADDING,
            max_seq_len: o.max_seq_len.unwrap_or(1024),
            softcap: match arch {
                Arch::Gpt2 => None,
                Arch::Speedrun => match o.softcap {
                    None => Some(15.0),
                    Some(0.0) => None,
                    cap => cap,
                },
            },
            rope_base: o.rope_base.unwrap_or(10_000.0),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        // Generous bounds (GPT-2 XL is 48 × 1600 with 25 heads) that keep every buffer size
        // far from overflowing.
        let within = |value: usize, max: usize| (1..=max).contains(&value);
        ensure!(
            within(self.layers, MAX_LAYERS),
            "--layers must be in 1..={MAX_LAYERS}, not {}",
            self.layers
        );
        ensure!(
            within(self.channels, MAX_WIDTH),
            "--width must be in 1..={MAX_WIDTH}, not {}",
            self.channels
        );
        ensure!(
            within(self.heads, self.channels) && self.channels.is_multiple_of(self.heads),
            "--heads {} does not divide the width {}",
            self.heads,
            self.channels
        );
        ensure!(
            self.arch == Arch::Gpt2 || self.head_dim().is_multiple_of(2),
            "rotary embeddings need an even head dimension, not {} (width / heads)",
            self.head_dim()
        );
        ensure!(
            within(self.vocab, MAX_VOCAB),
            "--vocab must be in 1..={MAX_VOCAB}, not {}",
            self.vocab
        );
        if let Some(cap) = self.softcap {
            ensure!(
                cap.is_finite() && cap > 0.0,
                "--softcap must be positive and finite (or 0 for none), not {cap}"
            );
        }
        ensure!(
            self.rope_base.is_finite() && self.rope_base > 1.0,
            "--rope-base must be finite and above 1, not {}",
            self.rope_base
        );
        ensure!(
            within(self.max_seq_len, MAX_CONTEXT),
            "--context must be in 1..={MAX_CONTEXT}, not {}",
            self.max_seq_len
        );
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.channels / self.heads
    }
}
