//! Generation: the model run one position at a time over a key/value cache, so each new token
//! costs one row of work per layer instead of a pass over the whole sequence. It follows
//! [`Gpt::forward`](super::Gpt::forward) step for step; a test checks that both give the same
//! logits.

use anyhow::{Result, ensure};
use rand::RngExt;

use super::config::{Arch, ModelConfig};
use super::gpt::rope_table;
use super::params::{ParamSpec, ParamTensors, param_layout};
use crate::backend::{AttentionShape, Backend, BufferKind, Tensor, TokenTensor};

/// One row of work space for each activation of a decoding step.
struct Row {
    x: Tensor,       // (C) the residual stream
    x_mid: Tensor,   // (C) the residual stream between attention and MLP
    ln: Tensor,      // (C) a norm's output
    mean: Tensor,    // (1)
    rstd: Tensor,    // (1)
    qkv: Tensor,     // (3C)
    qkv_rot: Tensor, // (3C) speedrun: q, k normalised and rotated
    qk_rstd: Tensor, // (2H)
    att: Tensor,     // (C)
    proj: Tensor,    // (C)
    fch: Tensor,     // (4C)
    fch_act: Tensor, // (4C)
    logits: Tensor,  // (V)
    token: TokenTensor,
}

/// A model's parameters (no gradients) and a cache of every layer's keys and values.
pub struct Decoder {
    pub config: ModelConfig,
    pub param_buffer: Tensor,
    pub specs: Vec<ParamSpec>,
    params: ParamTensors,
    keys: Tensor,   // (L, max_seq_len, C)
    values: Tensor, // (L, max_seq_len, C)
    row: Row,
    rope_table: Option<Tensor>,
    /// Positions in the cache.
    len: usize,
}

impl Decoder {
    pub fn new(backend: &mut dyn Backend, config: &ModelConfig) -> Result<Decoder> {
        config.validate()?;
        let (l, c, h, t) = (
            config.layers,
            config.channels,
            config.heads,
            config.max_seq_len,
        );
        let param_buffer = backend.alloc(super::num_params(config), BufferKind::Parameters)?;
        let layout = param_layout(config, param_buffer);
        let token = backend.alloc_tokens(1)?;
        let mut scratch = |len, kind| backend.alloc(len, kind);
        let (acts, stats) = (BufferKind::Activations, BufferKind::Statistics);
        let row = Row {
            x: scratch(c, acts)?,
            x_mid: scratch(c, acts)?,
            ln: scratch(c, acts)?,
            mean: scratch(1, stats)?,
            rstd: scratch(1, stats)?,
            qkv: scratch(3 * c, acts)?,
            qkv_rot: scratch(3 * c, acts)?,
            qk_rstd: scratch(2 * h, stats)?,
            att: scratch(c, acts)?,
            proj: scratch(c, acts)?,
            fch: scratch(4 * c, acts)?,
            fch_act: scratch(4 * c, acts)?,
            logits: scratch(config.padded_vocab, acts)?,
            token,
        };
        let rope_table = match config.arch {
            Arch::Gpt2 => None,
            Arch::Speedrun => {
                let table = rope_table(config.head_dim(), t, config.rope_base);
                let tensor = backend.alloc(table.len(), BufferKind::Constants)?;
                backend.write(tensor, &table)?;
                Some(tensor)
            }
        };
        Ok(Decoder {
            config: config.clone(),
            param_buffer,
            specs: layout.specs,
            params: layout.tensors,
            keys: backend.alloc(l * t * c, BufferKind::Activations)?,
            values: backend.alloc(l * t * c, BufferKind::Activations)?,
            row,
            rope_table,
            len: 0,
        })
    }

    /// Positions processed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every cached position.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// LayerNorm with `weight` and `bias` where the model has them (gpt2), else RMSNorm.
    fn norm(
        &self,
        b: &mut dyn Backend,
        out: Tensor,
        inp: Tensor,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
    ) -> Result<()> {
        let (r, c) = (&self.row, self.config.channels);
        match (weight, bias) {
            (Some(w), Some(bias)) => b.layernorm_forward(out, r.mean, r.rstd, inp, w, bias, c),
            _ => b.rmsnorm_forward(out, r.rstd, inp, c),
        }
    }

    /// Feeds `token` at the next position and returns the logits of the token after it
    /// (the real vocabulary only, soft-capped as in training).
    pub fn step(&mut self, b: &mut dyn Backend, token: u32) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (layers, c, max) = (cfg.layers, cfg.channels, cfg.max_seq_len);
        let pos = self.len;
        ensure!(pos < max, "the context of {max} tokens is full");
        ensure!(
            (token as usize) < cfg.vocab,
            "token {token} is outside the vocabulary of {}",
            cfg.vocab
        );
        let (p, r) = (&self.params, &self.row);
        b.write_tokens(r.token, &[token])?;
        // A sequence of length 1 whose position table starts at `pos`.
        let position = p.wpe.map(|wpe| wpe.slice(pos * c, c));
        match cfg.arch {
            Arch::Gpt2 => b.embedding_forward(r.x, r.token, p.wte, position, 1, c)?,
            Arch::Speedrun => {
                b.embedding_forward(r.ln, r.token, p.wte, None, 1, c)?;
                b.rmsnorm_forward(r.x, r.rstd, r.ln, c)?;
            }
        }
        let shape = AttentionShape {
            batch: 1,
            seq_len: 1,
            heads: cfg.heads,
            channels: c,
        };
        for l in 0..layers {
            let at = |t: Tensor| t.chunk(l, layers);
            // Attention block; this position's key and value join the cache.
            self.norm(b, r.ln, r.x, p.ln1w.map(at), p.ln1b.map(at))?;
            b.matmul_forward(r.qkv, r.ln, at(p.qkvw), p.qkvb.map(at), 1, c, 3 * c)?;
            let qkv = match self.rope_table {
                Some(table) => {
                    b.qk_norm_forward(r.qkv_rot, r.qk_rstd, r.qkv, cfg.heads, c)?;
                    let hd = cfg.head_dim();
                    b.rope_forward(r.qkv_rot, table.slice(pos * hd, hd), shape)?;
                    r.qkv_rot
                }
                None => r.qkv,
            };
            let (keys, values) = (at(self.keys), at(self.values));
            b.copy(keys.slice(pos * c, c), qkv.slice(c, c))?;
            b.copy(values.slice(pos * c, c), qkv.slice(2 * c, c))?;
            let (keys, values) = (keys.slice(0, (pos + 1) * c), values.slice(0, (pos + 1) * c));
            b.attention_decode(r.att, qkv, keys, values, cfg.heads, c)?;
            b.matmul_forward(r.proj, r.att, at(p.attprojw), p.attprojb.map(at), 1, c, c)?;
            b.add(r.x_mid, r.x, r.proj)?;
            // MLP block.
            self.norm(b, r.ln, r.x_mid, p.ln2w.map(at), p.ln2b.map(at))?;
            b.matmul_forward(r.fch, r.ln, at(p.fcw), p.fcb.map(at), 1, c, 4 * c)?;
            match cfg.arch {
                Arch::Gpt2 => b.gelu_forward(r.fch_act, r.fch)?,
                Arch::Speedrun => b.relu2_forward(r.fch_act, r.fch)?,
            }
            let fcprojb = p.fcprojb.map(at);
            b.matmul_forward(r.proj, r.fch_act, at(p.fcprojw), fcprojb, 1, 4 * c, c)?;
            b.add(r.x, r.x_mid, r.proj)?;
        }
        self.norm(b, r.ln, r.x, p.lnfw, p.lnfb)?;
        b.matmul_forward(r.logits, r.ln, p.head(), None, 1, c, cfg.padded_vocab)?;
        let mut logits = b.read(r.logits.slice(0, cfg.vocab))?;
        if let Some(cap) = cfg.softcap {
            logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
        }
        self.len += 1;
        Ok(logits)
    }
}

/// Draws a token from `logits`: greedy at temperature 0, else from the softmax of
/// logits/temperature over the `top_k` most likely tokens (all when `top_k` is 0).
pub fn sample_token(
    logits: &[f32],
    temperature: f32,
    top_k: usize,
    rng: &mut impl rand::Rng,
) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature == 0.0 {
        return order[0] as u32;
    }
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = logits[order[0]];
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i] - max) / temperature) as f64).exp())
        .collect();
    let mut draw = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if draw < *w {
            return i as u32;
        }
        draw -= w;
    }
    order[order.len() - 1] as u32
}
