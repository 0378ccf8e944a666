//! The GPT model: forward and backward written once against the [`Backend`] interface, one
//! backend call per layer operation, llm.c style. Backward reads like forward, reversed.

use anyhow::{Result, bail, ensure};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::{Arch, ModelConfig};
use super::params::{Init, ParamSpec, ParamTensors, num_params, param_layout};
use crate::backend::{AttentionShape, Backend, BufferKind, IGNORE_TARGET, Tensor, TokenTensor};

/// Saved activations of one micro-batch. Per-layer tensors are stacked over layers (L, …).
/// N = batch·seq_len rows, C channels, H heads, V padded vocabulary.
struct Activations {
    encoded: Tensor,          // (N, C) token (+ position) embeddings
    x0: Option<Tensor>,       // (N, C) speedrun: normalised embeddings, the input of layer 0
    x0_rstd: Option<Tensor>,  // (N)
    ln1: Tensor,              // (L, N, C)
    ln1_mean: Option<Tensor>, // (L, N) gpt2
    ln1_rstd: Tensor,         // (L, N)
    qkv: Tensor,              // (L, N, 3C)
    qkv_rot: Option<Tensor>,  // (L, N, 3C) speedrun: q, k normalised and rotated
    qk_rstd: Option<Tensor>,  // (L, N, 2H)
    atty: Tensor,             // (L, N, C)
    att_lse: Tensor,          // (L, B, H, T)
    attproj: Tensor,          // (L, N, C)
    residual2: Tensor,        // (L, N, C)
    ln2: Tensor,              // (L, N, C)
    ln2_mean: Option<Tensor>, // (L, N) gpt2
    ln2_rstd: Tensor,         // (L, N)
    fch: Tensor,              // (L, N, 4C)
    fch_act: Tensor,          // (L, N, 4C)
    fcproj: Tensor,           // (L, N, C)
    residual3: Tensor,        // (L, N, C)
    lnf: Tensor,              // (N, C)
    lnf_mean: Option<Tensor>, // (N) gpt2
    lnf_rstd: Tensor,         // (N)
    logits: Tensor,           // (N, V), overwritten by its gradient in training
    losses: Tensor,           // (N)
}

/// Gradients of activations. Only the residual stream's gradient crosses layers; the others
/// are scratch reused by every layer.
struct ActivationGrads {
    residual: Tensor,        // (N, C)
    ln: Tensor,              // (N, C) gradient of a norm's output
    atty: Tensor,            // (N, C)
    qkv: Tensor,             // (N, 3C)
    qkv_rot: Option<Tensor>, // (N, 3C) speedrun
    fch: Tensor,             // (N, 4C)
    fch_act: Tensor,         // (N, 4C)
}

/// Hands out consecutive views of one buffer.
struct Arena {
    base: Tensor,
    next: usize,
}

impl Arena {
    fn unbounded() -> Arena {
        Arena {
            base: Tensor {
                buffer: 0,
                offset: 0,
                len: usize::MAX,
            },
            next: 0,
        }
    }

    fn take(&mut self, len: usize) -> Tensor {
        let t = self.base.slice(self.next, len);
        self.next += len;
        t
    }

    fn take_if(&mut self, present: bool, len: usize) -> Option<Tensor> {
        present.then(|| self.take(len))
    }
}

/// A forward pass for evaluation only, or for training: then the loss gradient, scaled by
/// `loss_scale` (1 / tokens per optimizer step), is left in place for [`Gpt::backward`].
#[derive(Clone, Copy, Debug)]
pub enum Pass {
    Eval,
    Train { loss_scale: f32 },
}

/// A GPT with all its memory allocated on a backend for micro-batches of `batch × seq_len`.
pub struct Gpt {
    pub config: ModelConfig,
    pub batch: usize,
    pub seq_len: usize,
    pub params: ParamTensors,
    pub grads: ParamTensors,
    /// Parameter specs, in memory order; their tensors are views of `param_buffer`.
    pub specs: Vec<ParamSpec>,
    pub param_buffer: Tensor,
    pub grad_buffer: Tensor,
    acts: Activations,
    act_grads: ActivationGrads,
    inputs: TokenTensor,
    targets: TokenTensor,
    /// speedrun: per position, cos then sin of its angles: (max_seq_len, head_dim).
    rope_table: Option<Tensor>,
}

impl Gpt {
    pub fn new(
        backend: &mut dyn Backend,
        config: &ModelConfig,
        batch: usize,
        seq_len: usize,
    ) -> Result<Gpt> {
        config.validate()?;
        ensure!(
            batch > 0 && seq_len > 0,
            "batch size and sequence length must be positive"
        );
        ensure!(
            seq_len <= config.max_seq_len,
            "sequence length {seq_len} exceeds the model's context of {}",
            config.max_seq_len
        );
        let total = num_params(config);
        let param_buffer = backend.alloc(total, BufferKind::Parameters)?;
        let grad_buffer = backend.alloc(total, BufferKind::Gradients)?;
        let layout = param_layout(config, param_buffer);
        let grads = param_layout(config, grad_buffer).tensors;

        let sizes = activation_floats(config, batch, seq_len);
        let mut values = Arena {
            base: backend.alloc(sizes.values, BufferKind::Activations)?,
            next: 0,
        };
        let mut statistics = Arena {
            base: backend.alloc(sizes.statistics, BufferKind::Statistics)?,
            next: 0,
        };
        let acts = activations(config, batch, seq_len, &mut values, &mut statistics);
        let mut arena = Arena {
            base: backend.alloc(sizes.grads, BufferKind::ActivationGradients)?,
            next: 0,
        };
        let act_grads = activation_grads(config, batch * seq_len, &mut arena).0;

        let rope_table = match config.arch {
            Arch::Gpt2 => None,
            Arch::Speedrun => {
                let table = rope_table(config.head_dim(), config.max_seq_len, config.rope_base);
                let t = backend.alloc(table.len(), BufferKind::Constants)?;
                backend.write(t, &table)?;
                Some(t)
            }
        };
        Ok(Gpt {
            config: config.clone(),
            batch,
            seq_len,
            params: layout.tensors,
            grads,
            specs: layout.specs,
            param_buffer,
            grad_buffer,
            acts,
            act_grads,
            inputs: backend.alloc_tokens(batch * seq_len)?,
            targets: backend.alloc_tokens(batch * seq_len)?,
            rope_table,
        })
    }

    pub fn num_params(&self) -> usize {
        self.param_buffer.len
    }

    /// Initialises every parameter as its spec says, from a seeded generator (deterministic).
    pub fn init_params(&self, backend: &mut dyn Backend, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for spec in &self.specs {
            let n = spec.tensor.len;
            let values: Vec<f32> = match spec.init {
                Init::Normal { std } => {
                    let normal = Normal::new(0.0, std)?;
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
                Init::Uniform { bound } => {
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
            };
            backend.write(spec.tensor, &values)?;
        }
        Ok(())
    }

    /// The logits of the last forward pass in evaluation mode, soft-capped: (rows, padded
    /// vocab). (A training pass overwrites them with their gradient.)
    pub fn logits(&self, backend: &mut dyn Backend) -> Result<Vec<f32>> {
        backend.read(self.acts.logits)
    }

    pub fn zero_grads(&self, backend: &mut dyn Backend) -> Result<()> {
        backend.fill(self.grad_buffer, 0.0)
    }

    fn rows(&self) -> usize {
        self.batch * self.seq_len
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            batch: self.batch,
            seq_len: self.seq_len,
            heads: self.config.heads,
            channels: self.config.channels,
        }
    }

    /// The residual stream entering layer `l`.
    fn layer_input(&self, l: usize) -> Tensor {
        let a = &self.acts;
        match l {
            0 => a.x0.unwrap_or(a.encoded),
            _ => a.residual3.chunk(l - 1, self.config.layers),
        }
    }

    /// The input of the final norm: the residual stream after the last layer.
    fn final_residual(&self) -> Tensor {
        let l = self.config.layers;
        self.acts.residual3.chunk(l - 1, l)
    }

    /// The norm at `site`: views of its output, statistics and (gpt2) parameters.
    fn norm(&self, site: Site) -> Norm {
        let (p, g, a, layers) = (&self.params, &self.grads, &self.acts, self.config.layers);
        let at = |t: Tensor| match site {
            Site::Attention(l) | Site::Mlp(l) => t.chunk(l, layers),
            Site::Final => t,
        };
        let (out, rstd, mean, weight, bias, dweight, dbias) = match site {
            Site::Attention(_) => (
                a.ln1, a.ln1_rstd, a.ln1_mean, p.ln1w, p.ln1b, g.ln1w, g.ln1b,
            ),
            Site::Mlp(_) => (
                a.ln2, a.ln2_rstd, a.ln2_mean, p.ln2w, p.ln2b, g.ln2w, g.ln2b,
            ),
            Site::Final => (
                a.lnf, a.lnf_rstd, a.lnf_mean, p.lnfw, p.lnfb, g.lnfw, g.lnfb,
            ),
        };
        let layer_norm = match (mean, weight, bias, dweight, dbias) {
            (Some(mean), Some(weight), Some(bias), Some(dweight), Some(dbias)) => {
                Some(LayerNormState {
                    mean: at(mean),
                    weight: at(weight),
                    bias: at(bias),
                    dweight: at(dweight),
                    dbias: at(dbias),
                })
            }
            _ => None,
        };
        Norm {
            out: at(out),
            rstd: at(rstd),
            layer_norm,
        }
    }

    /// Runs the model on one micro-batch and returns the mean loss over its targets (those not
    /// [`IGNORE_TARGET`]).
    pub fn forward(
        &self,
        b: &mut dyn Backend,
        inputs: &[u32],
        targets: &[u32],
        pass: Pass,
    ) -> Result<f64> {
        let (n, c, layers) = (self.rows(), self.config.channels, self.config.layers);
        ensure!(
            inputs.len() == n && targets.len() == n,
            "a micro-batch of {} inputs and {} targets for a model built for {n}",
            inputs.len(),
            targets.len()
        );
        let outside = |t: u32| t as usize >= self.config.vocab;
        if let Some(&bad) = inputs.iter().find(|&&t| outside(t)) {
            bail!(
                "input token {bad} is outside the vocabulary of {}",
                self.config.vocab
            );
        }
        if let Some(&bad) = targets.iter().find(|&&t| outside(t) && t != IGNORE_TARGET) {
            bail!(
                "target token {bad} is outside the vocabulary of {}",
                self.config.vocab
            );
        }
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
        ensure!(counted > 0, "every target of the micro-batch is ignored");
        b.write_tokens(self.inputs, inputs)?;
        b.write_tokens(self.targets, targets)?;
        let (p, a) = (&self.params, &self.acts);

        b.embedding_forward(a.encoded, self.inputs, p.wte, p.wpe, self.seq_len, c)?;
        if let (Some(x0), Some(rstd)) = (a.x0, a.x0_rstd) {
            b.rmsnorm_forward(x0, rstd, a.encoded, c)?;
        }
        for l in 0..layers {
            let at = |t: Tensor| t.chunk(l, layers);
            let x = self.layer_input(l);
            // Attention block.
            self.norm(Site::Attention(l)).forward(b, x, c)?;
            b.matmul_forward(
                at(a.qkv),
                at(a.ln1),
                at(p.qkvw),
                p.qkvb.map(at),
                n,
                c,
                3 * c,
            )?;
            let attention_input = match (a.qkv_rot, a.qk_rstd, self.rope_table) {
                (Some(rot), Some(rstd), Some(table)) => {
                    b.qk_norm_forward(at(rot), at(rstd), at(a.qkv), self.config.heads, c)?;
                    b.rope_forward(at(rot), table, self.attention_shape())?;
                    at(rot)
                }
                _ => at(a.qkv),
            };
            b.attention_forward(
                at(a.atty),
                at(a.att_lse),
                attention_input,
                self.attention_shape(),
            )?;
            let attprojb = p.attprojb.map(at);
            b.matmul_forward(at(a.attproj), at(a.atty), at(p.attprojw), attprojb, n, c, c)?;
            b.add(at(a.residual2), x, at(a.attproj))?;
            // MLP block.
            self.norm(Site::Mlp(l)).forward(b, at(a.residual2), c)?;
            b.matmul_forward(at(a.fch), at(a.ln2), at(p.fcw), p.fcb.map(at), n, c, 4 * c)?;
            match self.config.arch {
                Arch::Gpt2 => b.gelu_forward(at(a.fch_act), at(a.fch))?,
                Arch::Speedrun => b.relu2_forward(at(a.fch_act), at(a.fch))?,
            }
            let fcprojb = p.fcprojb.map(at);
            b.matmul_forward(
                at(a.fcproj),
                at(a.fch_act),
                at(p.fcprojw),
                fcprojb,
                n,
                4 * c,
                c,
            )?;
            b.add(at(a.residual3), at(a.residual2), at(a.fcproj))?;
        }
        self.norm(Site::Final)
            .forward(b, self.final_residual(), c)?;
        let vocab = self.config.padded_vocab;
        b.matmul_forward(a.logits, a.lnf, p.head(), None, n, c, vocab)?;
        let loss_scale = match pass {
            Pass::Eval => None,
            Pass::Train { loss_scale } => Some(loss_scale),
        };
        b.softmax_cross_entropy(
            a.logits,
            a.losses,
            self.targets,
            self.config.vocab,
            vocab,
            self.config.softcap,
            loss_scale,
        )?;
        Ok(b.sum(a.losses)? / counted as f64)
    }

    /// Accumulates the parameter gradients of the last `Pass::Train` forward into `grads`.
    pub fn backward(&self, b: &mut dyn Backend) -> Result<()> {
        self.backward_with(b, &mut |_, _| Ok(()))
    }

    /// [`Self::backward`], calling `done` with each part of the gradient buffer as soon as the
    /// pass has finished accumulating into it (a layer's tensors after that layer, the rest at
    /// the end), so that data parallelism can sum those gradients while the pass goes on.
    /// Every part of the buffer is handed over once.
    pub fn backward_with(
        &self,
        b: &mut dyn Backend,
        done: &mut dyn FnMut(&mut dyn Backend, Tensor) -> Result<()>,
    ) -> Result<()> {
        let (n, c, layers) = (self.rows(), self.config.channels, self.config.layers);
        let (p, g, a, d) = (&self.params, &self.grads, &self.acts, &self.act_grads);

        // The loss gradient w.r.t. the logits is already in `logits`.
        let vocab = self.config.padded_vocab;
        b.matmul_backward(d.ln, g.head(), None, a.logits, a.lnf, p.head(), n, c, vocab)?;
        b.fill(d.residual, 0.0)?;
        self.norm(Site::Final)
            .backward(b, d.residual, d.ln, self.final_residual(), c)?;

        for l in (0..layers).rev() {
            let at = |t: Tensor| t.chunk(l, layers);
            let x = self.layer_input(l);
            // MLP block: its output's gradient is the residual gradient.
            let fcprojb = g.fcprojb.map(at);
            let fch_act = at(a.fch_act);
            b.matmul_backward(
                d.fch_act,
                at(g.fcprojw),
                fcprojb,
                d.residual,
                fch_act,
                at(p.fcprojw),
                n,
                4 * c,
                c,
            )?;
            match self.config.arch {
                Arch::Gpt2 => b.gelu_backward(d.fch, d.fch_act, at(a.fch))?,
                Arch::Speedrun => b.relu2_backward(d.fch, d.fch_act, at(a.fch))?,
            }
            let (fcw, fcb) = (at(g.fcw), g.fcb.map(at));
            b.matmul_backward(d.ln, fcw, fcb, d.fch, at(a.ln2), at(p.fcw), n, c, 4 * c)?;
            self.norm(Site::Mlp(l))
                .backward(b, d.residual, d.ln, at(a.residual2), c)?;
            // Attention block.
            let (attprojw, attprojb) = (at(g.attprojw), g.attprojb.map(at));
            let atty = at(a.atty);
            b.matmul_backward(
                d.atty,
                attprojw,
                attprojb,
                d.residual,
                atty,
                at(p.attprojw),
                n,
                c,
                c,
            )?;
            let shape = self.attention_shape();
            match (a.qkv_rot, a.qk_rstd, d.qkv_rot, self.rope_table) {
                (Some(rot), Some(rstd), Some(drot), Some(table)) => {
                    b.attention_backward(drot, d.atty, at(rot), atty, at(a.att_lse), shape)?;
                    b.rope_backward(drot, table, shape)?;
                    let heads = self.config.heads;
                    b.qk_norm_backward(d.qkv, drot, at(a.qkv), at(rstd), heads, c)?;
                }
                _ => b.attention_backward(d.qkv, d.atty, at(a.qkv), atty, at(a.att_lse), shape)?,
            }
            let (qkvw, qkvb) = (at(g.qkvw), g.qkvb.map(at));
            b.matmul_backward(d.ln, qkvw, qkvb, d.qkv, at(a.ln1), at(p.qkvw), n, c, 3 * c)?;
            self.norm(Site::Attention(l))
                .backward(b, d.residual, d.ln, x, c)?;
            for t in g.of_layer(l, layers) {
                done(b, t)?;
            }
        }

        // Embeddings: the residual gradient reaches them directly (gpt2) or through the
        // normalisation of the embeddings (speedrun).
        let dencoded = match a.x0_rstd {
            Some(rstd) => {
                b.fill(d.ln, 0.0)?;
                b.rmsnorm_backward(d.ln, d.residual, a.encoded, rstd, c)?;
                d.ln
            }
            None => d.residual,
        };
        b.embedding_backward(g.wte, g.wpe, dencoded, self.inputs, self.seq_len, c)?;
        g.outside_layers().into_iter().try_for_each(|t| done(b, t))
    }
}

/// Where a normalisation sits: before the attention or the MLP of a layer, or before the head.
#[derive(Clone, Copy)]
enum Site {
    Attention(usize),
    Mlp(usize),
    Final,
}

/// One normalisation: its output and saved statistics and, for LayerNorm (gpt2), its mean,
/// parameters and their gradients. Without them it is RMSNorm (speedrun).
struct Norm {
    out: Tensor,
    rstd: Tensor,
    layer_norm: Option<LayerNormState>,
}

struct LayerNormState {
    mean: Tensor,
    weight: Tensor,
    bias: Tensor,
    dweight: Tensor,
    dbias: Tensor,
}

impl Norm {
    fn forward(&self, b: &mut dyn Backend, inp: Tensor, c: usize) -> Result<()> {
        match &self.layer_norm {
            Some(ln) => {
                b.layernorm_forward(self.out, ln.mean, self.rstd, inp, ln.weight, ln.bias, c)
            }
            None => b.rmsnorm_forward(self.out, self.rstd, inp, c),
        }
    }

    /// Adds the gradient through the norm into `dinp` (the residual stream's gradient).
    fn backward(
        &self,
        b: &mut dyn Backend,
        dinp: Tensor,
        dout: Tensor,
        inp: Tensor,
        c: usize,
    ) -> Result<()> {
        match &self.layer_norm {
            Some(ln) => b.layernorm_backward(
                dinp, ln.dweight, ln.dbias, dout, inp, ln.weight, ln.mean, self.rstd, c,
            ),
            None => b.rmsnorm_backward(dinp, dout, inp, self.rstd, c),
        }
    }
}

/// Elements of the buffers [`Gpt::new`] allocates besides parameters and gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationSizes {
    /// Saved activations ([`BufferKind::Activations`]).
    pub values: usize,
    /// Saved per-row statistics and losses ([`BufferKind::Statistics`]).
    pub statistics: usize,
    /// Gradients of the activations ([`BufferKind::ActivationGradients`]).
    pub grads: usize,
}

/// What [`Gpt::new`] allocates for `batch` sequences of `seq_len` tokens.
pub fn activation_floats(config: &ModelConfig, batch: usize, seq_len: usize) -> ActivationSizes {
    let (mut values, mut statistics) = (Arena::unbounded(), Arena::unbounded());
    activations(config, batch, seq_len, &mut values, &mut statistics);
    ActivationSizes {
        values: values.next,
        statistics: statistics.next,
        grads: activation_grads(config, batch * seq_len, &mut Arena::unbounded()).1,
    }
}

/// Lays out the saved activations in `arena` and their per-row statistics in `stats`.
fn activations(
    config: &ModelConfig,
    batch: usize,
    seq_len: usize,
    arena: &mut Arena,
    stats: &mut Arena,
) -> Activations {
    let (l, c, h) = (config.layers, config.channels, config.heads);
    let n = batch * seq_len;
    let gpt2 = config.arch == Arch::Gpt2;
    let speedrun = !gpt2;
    Activations {
        encoded: arena.take(n * c),
        x0: arena.take_if(speedrun, n * c),
        x0_rstd: stats.take_if(speedrun, n),
        ln1: arena.take(l * n * c),
        ln1_mean: stats.take_if(gpt2, l * n),
        ln1_rstd: stats.take(l * n),
        qkv: arena.take(l * n * 3 * c),
        qkv_rot: arena.take_if(speedrun, l * n * 3 * c),
        qk_rstd: stats.take_if(speedrun, l * n * 2 * h),
        atty: arena.take(l * n * c),
        att_lse: stats.take(l * batch * h * seq_len),
        attproj: arena.take(l * n * c),
        residual2: arena.take(l * n * c),
        ln2: arena.take(l * n * c),
        ln2_mean: stats.take_if(gpt2, l * n),
        ln2_rstd: stats.take(l * n),
        fch: arena.take(l * n * 4 * c),
        fch_act: arena.take(l * n * 4 * c),
        fcproj: arena.take(l * n * c),
        residual3: arena.take(l * n * c),
        lnf: arena.take(n * c),
        lnf_mean: stats.take_if(gpt2, n),
        lnf_rstd: stats.take(n),
        logits: arena.take(n * config.padded_vocab),
        losses: stats.take(n),
    }
}

fn activation_grads(config: &ModelConfig, n: usize, arena: &mut Arena) -> (ActivationGrads, usize) {
    let c = config.channels;
    let grads = ActivationGrads {
        residual: arena.take(n * c),
        ln: arena.take(n * c),
        atty: arena.take(n * c),
        qkv: arena.take(n * 3 * c),
        qkv_rot: arena.take_if(config.arch == Arch::Speedrun, n * 3 * c),
        fch: arena.take(n * 4 * c),
        fch_act: arena.take(n * 4 * c),
    };
    (grads, arena.next)
}

/// The rotary table: for each position t < max_seq_len, cos(t·θ_i) then sin(t·θ_i) for
/// i < head_dim/2, with θ_i = base^(−i/(head_dim/2)); computed in f64.
pub(crate) fn rope_table(head_dim: usize, max_seq_len: usize, base: f32) -> Vec<f32> {
    let half = head_dim / 2;
    let base = base as f64;
    let mut table = Vec::with_capacity(max_seq_len * head_dim);
    for t in 0..max_seq_len {
        let angle = |i: usize| t as f64 * base.powf(-(i as f64) / half as f64);
        table.extend((0..half).map(|i| angle(i).cos() as f32));
        table.extend((0..half).map(|i| angle(i).sin() as f32));
    }
    table
}
