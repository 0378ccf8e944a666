//! The compute interface that the model and the optimizers are written against.
//!
//! A backend owns all memory. Callers hold [`Tensor`]s: plain views (buffer, offset, length)
//! into buffers the backend allocated, so that parameters, gradients and activations can each
//! live in one flat allocation and every named tensor is a view into it (as in llm.c).
//! Shapes are passed explicitly to each operation; all matrices are row-major.
//!
//! Conventions, shared by every backend:
//! - parameter gradients are always *accumulated* (`+=`), so that gradient accumulation over
//!   micro-batches needs no extra buffers; the caller zeroes them once per optimizer step;
//! - input gradients are *overwritten*, except where a method says it adds (the norms, whose
//!   input is the residual stream that already carries the gradient of the skip connection);
//! - an output tensor never overlaps an input tensor of the same call unless the method says
//!   it works in place.

pub mod cpu;
pub mod cuda;

use anyhow::Result;

use crate::dist::Comm;

/// [`Backend::all_gather_pieces`] through the host.
pub fn all_gather_on_host<B: Backend + ?Sized>(
    backend: &mut B,
    t: Tensor,
    lens: &[usize],
    comm: &dyn Comm,
) -> Result<()> {
    let (start, len) = piece_of(lens, comm.rank());
    let mine = backend.read(t.slice(start, len))?;
    backend.write(t, &comm.gather_pieces(&mine, lens)?)
}

/// [`Backend::reduce_scatter_sum`] through the host.
pub fn reduce_scatter_on_host<B: Backend + ?Sized>(
    backend: &mut B,
    t: Tensor,
    lens: &[usize],
    comm: &dyn Comm,
) -> Result<()> {
    let values = backend.read(t)?;
    let sum = comm.reduce_scatter_pieces(&values, lens)?;
    let (start, len) = piece_of(lens, comm.rank());
    backend.write(t.slice(start, len), &sum)
}

/// Where piece `rank` of consecutive pieces of `lens` starts, and its length.
fn piece_of(lens: &[usize], rank: usize) -> (usize, usize) {
    (lens[..rank].iter().sum(), lens[rank])
}

/// A view of `len` consecutive `f32`-valued elements of one backend buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub buffer: usize,
    pub offset: usize,
    pub len: usize,
}

impl Tensor {
    /// The sub-view of `len` elements starting `start` elements into this one.
    pub fn slice(self, start: usize, len: usize) -> Tensor {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "slice {start}+{len} out of a tensor of {}",
            self.len
        );
        Tensor {
            buffer: self.buffer,
            offset: self.offset + start,
            len,
        }
    }

    /// Part `index` of `count` equal parts, e.g. layer `l` of a tensor stacked over layers.
    pub fn chunk(self, index: usize, count: usize) -> Tensor {
        assert!(
            count > 0 && self.len.is_multiple_of(count) && index < count,
            "chunk {index} of {count} of a tensor of {}",
            self.len
        );
        let len = self.len / count;
        self.slice(index * len, len)
    }
}

/// A target id that takes no part in the loss (its row gets loss 0 and no gradient).
pub const IGNORE_TARGET: u32 = u32::MAX;

/// A view of a buffer of token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenTensor {
    pub buffer: usize,
    pub len: usize,
}

/// What a buffer holds; a backend may choose its storage precision by it (the CUDA backend keeps
/// fp32 master weights and optimizer state but bf16 activations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    Parameters,
    Gradients,
    Activations,
    ActivationGradients,
    /// Per-row statistics saved for the backward pass (norms' mean and 1/std, attention's
    /// log-sum-exp) and per-row losses: kept in f32 even where activations are bf16.
    Statistics,
    OptimizerState,
    /// Tables computed once on the host (rotary cos/sin).
    Constants,
    /// Work space that carries nothing from one call to the next.
    Scratch,
}

/// Shape of a (batched) matrix product `out[i] = alpha·op(a[i])·op(b[i]) + beta·out[i]`
/// where `op(a)` is `m×k`, `op(b)` is `k×n` and `out[i]` is `m×n`, all row-major and packed
/// back to back `batch` times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `a` is stored `k×m` and used transposed.
    pub transpose_a: bool,
    /// `b` is stored `n×k` and used transposed.
    pub transpose_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

/// Weight decay of the Adam family: added to the gradient (Adam's L2, `torch.optim.Adam`) or
/// applied to the weights, `p ← p·(1 − lr·wd)` (AdamW's decoupled decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDecay {
    Coupled,
    Decoupled,
}

/// What an Adam step ([`ElementwiseRule::Adam`]) computes once for all elements, in the
/// precision of the backend that takes it: every backend computes these alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep<F> {
    /// Weight decay added to the gradient (coupled; 0 when decoupled).
    pub coupled: F,
    /// The weights' factor before the step: 1 − lr·wd when decoupled, else 1.
    pub keep: F,
    /// lr over the first moment's bias correction.
    pub step_size: F,
    /// √ of the second moment's bias correction.
    pub bias2_sqrt: F,
}

impl<F: num_traits::Float> AdamStep<F> {
    /// `step` counts from 1.
    pub fn new(lr: F, beta1: F, beta2: F, weight_decay: F, decay: WeightDecay, step: u32) -> Self {
        let one = F::one();
        let (coupled, keep) = match decay {
            WeightDecay::Coupled => (weight_decay, one),
            WeightDecay::Decoupled => (F::zero(), one - lr * weight_decay),
        };
        let step = i32::try_from(step).unwrap_or(i32::MAX);
        AdamStep {
            coupled,
            keep,
            step_size: lr / (one - beta1.powi(step)),
            bias2_sqrt: (one - beta2.powi(step)).sqrt(),
        }
    }
}

/// One step of an element-wise optimizer over a flat range, with PyTorch's semantics (see each
/// variant); every hyper-parameter is already scaled for this step. Coupled weight decay means
/// `g ← g + wd·p` before the rule. The state tensors, each as long as the parameters, come in
/// the order each variant lists ([`ElementwiseRule::state_names`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ElementwiseRule {
    /// `torch.optim.SGD`: coupled decay; with momentum μ > 0, `b ← μ·b + (1 − dampening)·g`
    /// (`b ← g` on the first step), then `g ← g + μ·b` (Nesterov) or `g ← b`; `p ← p − lr·g`.
    /// State: `b` when μ > 0.
    Sgd {
        lr: f32,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        weight_decay: f32,
        first_step: bool,
    },
    /// `torch.optim.Adagrad` (`lr` already decayed): coupled decay; `s ← s + g²`;
    /// `p ← p − lr·g/(√s + ε)`. State: `s`.
    Adagrad {
        lr: f32,
        eps: f32,
        weight_decay: f32,
    },
    /// `torch.optim.RMSprop`: coupled decay; `v ← α·v + (1 − α)·g²`; centered:
    /// `a ← α·a + (1 − α)·g`, `d = √(v − a²) + ε`, else `d = √v + ε`; with momentum μ > 0,
    /// `b ← μ·b + g/d`, `p ← p − lr·b`, else `p ← p − lr·g/d`. State: `v`, then `a` if centered,
    /// then `b` if μ > 0.
    Rmsprop {
        lr: f32,
        alpha: f32,
        eps: f32,
        weight_decay: f32,
        momentum: f32,
        centered: bool,
    },
    /// `torch.optim.Adadelta`: coupled decay; `v ← ρ·v + (1 − ρ)·g²`;
    /// `Δ = √(u + ε)/√(v + ε)·g`; `u ← ρ·u + (1 − ρ)·Δ²`; `p ← p − lr·Δ`. State: `v`, `u`.
    Adadelta {
        lr: f32,
        rho: f32,
        eps: f32,
        weight_decay: f32,
    },
    /// Adam (`torch.optim.Adam`, coupled decay), AdamW (`torch.optim.AdamW`, decoupled) and,
    /// with `nesterov`, AlgoPerf's NAdamW baseline (decoupled): `m ← β1·m + (1 − β1)·g`,
    /// `v ← β2·v + (1 − β2)·g²`, `p ← p − lr/(1 − β1ᵗ)·n/(√v/√(1 − β2ᵗ) + ε)` with `n = m`, or
    /// `n = β1·m + (1 − β1)·g` with Nesterov. State: `m`, `v`.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        decay: WeightDecay,
        nesterov: bool,
        /// 1-based step count, for bias correction.
        step: u32,
    },
    /// Schedule-Free AdamW (Defazio et al. 2024, `AdamWScheduleFree`), on the parameters y
    /// where gradients are taken: `v ← β2·v + (1 − β2)·g²`; `d = g/(√(v/bias2) + ε) + wd·y`;
    /// `y ← (1 − c)·y + c·z + lr·(β1·(1 − c) − 1)·d`; `z ← z − lr·d`. State: `z`, `v`.
    ScheduleFree {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        /// c: the weight of this step's z in the running average x.
        averaging: f32,
        /// 1 − β2ᵗ.
        bias2: f32,
    },
}

impl ElementwiseRule {
    /// The names of the state tensors the rule reads and writes, in order (PyTorch's names,
    /// except Adam's `m` and `v`).
    pub fn state_names(&self) -> Vec<&'static str> {
        match *self {
            ElementwiseRule::Sgd { momentum, .. } => {
                [(momentum != 0.0).then_some("momentum_buffer")]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            ElementwiseRule::Adagrad { .. } => vec!["sum"],
            ElementwiseRule::Rmsprop {
                momentum, centered, ..
            } => [
                Some("square_avg"),
                centered.then_some("grad_avg"),
                (momentum != 0.0).then_some("momentum_buffer"),
            ]
            .into_iter()
            .flatten()
            .collect(),
            ElementwiseRule::Adadelta { .. } => vec!["square_avg", "acc_delta"],
            ElementwiseRule::Adam { .. } => vec!["m", "v"],
            ElementwiseRule::ScheduleFree { .. } => vec!["z", "v"],
        }
    }
}

/// A batch of `count` row-major `rows × cols` matrices cut into tiles of at most
/// `block × block`, for optimizers that keep statistics per tile (Shampoo and SOAP precondition
/// each tile with its own Kronecker factors, whose cost grows with the cube of their size).
/// Along each dimension the tiles are `block` long, the last one shorter where `block` does not
/// divide the dimension, so there are at most four tile shapes. The packed form groups the tiles
/// by shape, each group one batch for [`Gemm`]; see [`BlockLayout::tile_sets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    pub rows: usize,
    pub cols: usize,
    pub count: usize,
    pub block: usize,
}

/// The tiles of one shape in the packed form of a [`BlockLayout`]: `count` tiles of
/// `rows × cols`, row-major, back to back from `offset`. They cover a `grid.0 × grid.1` grid of
/// tiles of every matrix, whose first tile starts at row `origin.0`, column `origin.1`; they are
/// ordered by matrix, then tile row, then tile column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileSet {
    pub rows: usize,
    pub cols: usize,
    pub count: usize,
    pub offset: usize,
    pub grid: (usize, usize),
    pub origin: (usize, usize),
}

impl TileSet {
    pub fn elements(&self) -> usize {
        self.rows * self.cols * self.count
    }

    /// The matrix, first row and first column of tile `index` of this set.
    pub fn tile(&self, index: usize) -> (usize, usize, usize) {
        let per_matrix = self.grid.0 * self.grid.1;
        let (matrix, within) = (index / per_matrix, index % per_matrix);
        (
            matrix,
            self.origin.0 + within / self.grid.1 * self.rows,
            self.origin.1 + within % self.grid.1 * self.cols,
        )
    }
}

impl BlockLayout {
    /// The tile shapes along one dimension: (length, number of tiles, first index), full
    /// tiles first.
    fn spans(dim: usize, block: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let full = dim / block;
        [(block, full, 0), (dim % block, 1, full * block)]
            .into_iter()
            .filter(|&(len, number, _)| len > 0 && number > 0)
    }

    /// The tile groups of the packed form, in order: full tiles, then those cut short in the
    /// last columns, the last rows, and both.
    pub fn tile_sets(&self) -> Vec<TileSet> {
        assert!(self.block > 0, "block size 0");
        let mut sets = Vec::new();
        let mut offset = 0;
        for (rows, row_tiles, row0) in Self::spans(self.rows, self.block) {
            for (cols, col_tiles, col0) in Self::spans(self.cols, self.block) {
                let set = TileSet {
                    rows,
                    cols,
                    count: self.count * row_tiles * col_tiles,
                    offset,
                    grid: (row_tiles, col_tiles),
                    origin: (row0, col0),
                };
                offset += set.elements();
                sets.push(set);
            }
        }
        sets
    }

    pub fn elements(&self) -> usize {
        self.rows * self.cols * self.count
    }
}

/// Attention shape: `batch` sequences of `seq_len` tokens, `heads` heads of `channels/heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub channels: usize,
}

impl AttentionShape {
    pub fn head_dim(&self) -> usize {
        self.channels / self.heads
    }
    pub fn rows(&self) -> usize {
        self.batch * self.seq_len
    }
}

/// Every operation the model and the optimizers need. Shapes are in elements: `rows` is the
/// number of token positions (batch × sequence length), `channels` the width of a row.
pub trait Backend {
    /// One line naming the device and its precision, for logs and records.
    fn describe(&self) -> String;

    // ---- memory ----

    /// A new zero-filled buffer of `len` elements.
    fn alloc(&mut self, len: usize, kind: BufferKind) -> Result<Tensor>;
    /// A new buffer of `len` token ids (all zero).
    fn alloc_tokens(&mut self, len: usize) -> Result<TokenTensor>;
    fn write(&mut self, dst: Tensor, src: &[f32]) -> Result<()>;
    fn read(&mut self, src: Tensor) -> Result<Vec<f32>>;
    fn write_tokens(&mut self, dst: TokenTensor, src: &[u32]) -> Result<()>;
    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()>;
    fn copy(&mut self, dst: Tensor, src: Tensor) -> Result<()>;
    /// Waits until all queued work is done (for timing) and reports any deferred error.
    fn synchronize(&mut self) -> Result<()>;
    /// Peak memory used so far, in bytes (device memory, or the process's peak RSS on CPU).
    fn peak_memory_bytes(&self) -> u64;

    // ---- layers, forward and backward ----

    /// `out[b,t,:] = table[tokens[b,t],:] (+ positions[t,:])`; `out` is (batch·seq_len, channels).
    fn embedding_forward(
        &mut self,
        out: Tensor,
        tokens: TokenTensor,
        table: Tensor,
        positions: Option<Tensor>,
        seq_len: usize,
        channels: usize,
    ) -> Result<()>;
    /// Accumulates `dout` rows into the rows of `dtable` (and `dpositions`) they were read from.
    fn embedding_backward(
        &mut self,
        dtable: Tensor,
        dpositions: Option<Tensor>,
        dout: Tensor,
        tokens: TokenTensor,
        seq_len: usize,
        channels: usize,
    ) -> Result<()>;

    /// LayerNorm over each row with weight and bias, saving per-row mean and 1/std (eps 1e-5).
    fn layernorm_forward(
        &mut self,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        inp: Tensor,
        weight: Tensor,
        bias: Tensor,
        channels: usize,
    ) -> Result<()>;
    /// Adds the input gradient to `dinp`; accumulates `dweight`, `dbias`.
    fn layernorm_backward(
        &mut self,
        dinp: Tensor,
        dweight: Tensor,
        dbias: Tensor,
        dout: Tensor,
        inp: Tensor,
        weight: Tensor,
        mean: Tensor,
        rstd: Tensor,
        channels: usize,
    ) -> Result<()>;

    /// RMSNorm without weights over each row of `channels` (eps 1e-6), saving 1/rms per row.
    fn rmsnorm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        inp: Tensor,
        channels: usize,
    ) -> Result<()>;
    /// Adds the input gradient to `dinp`.
    fn rmsnorm_backward(
        &mut self,
        dinp: Tensor,
        dout: Tensor,
        inp: Tensor,
        rstd: Tensor,
        channels: usize,
    ) -> Result<()>;

    /// QK-norm: `out` is `qkv` (rows, 3·channels) with every head of q and of k RMS-normalised
    /// (no weights, eps 1e-6) and v copied; `rstd` (rows, 2·heads) saves 1/rms of each q and k head.
    fn qk_norm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        qkv: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()>;
    /// Overwrites `dqkv` (the v part is `dout`'s v part).
    fn qk_norm_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        rstd: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()>;

    /// Rotary embedding, in place, on the q and k parts of `qkv` (batch·seq_len, 3·channels).
    /// Dimension `i` of a head pairs with `i + head_dim/2` and turns by angle `t·θ_i`. `table`
    /// has one row of head_dim values per position t: cos(t·θ_i) for i < head_dim/2, then
    /// sin(t·θ_i); its first row is used for position 0 of each sequence (so a slice starting
    /// at row p serves a sequence that starts at position p).
    fn rope_forward(&mut self, qkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()>;
    /// The inverse rotation, in place on the gradient.
    fn rope_backward(&mut self, dqkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()>;

    /// `out = inp·weightᵀ (+ bias)`: `inp` (rows, in_dim), `weight` (out_dim, in_dim).
    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<()>;
    /// Overwrites `dinp`; accumulates `dweight` and `dbias`.
    fn matmul_backward(
        &mut self,
        dinp: Tensor,
        dweight: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp: Tensor,
        weight: Tensor,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<()>;

    /// Causal self-attention with scale 1/√head_dim over `qkv` (rows, 3·channels: q | k | v, each
    /// split into heads). Writes `out` (rows, channels) and the log-sum-exp of every score row
    /// into `lse` (batch, heads, seq_len), from which the backward pass recomputes probabilities.
    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        shape: AttentionShape,
    ) -> Result<()>;
    /// Overwrites `dqkv`.
    fn attention_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        shape: AttentionShape,
    ) -> Result<()>;

    /// Attention of one new position over a key/value cache, for generation: `qkv` is the new
    /// position's row (3·channels wide; only its q part is read), `keys` and `values` hold
    /// (len, channels) cached rows, the new position's last. Writes the `channels`-wide `out`.
    fn attention_decode(
        &mut self,
        out: Tensor,
        qkv: Tensor,
        keys: Tensor,
        values: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()>;

    /// GELU, tanh approximation.
    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()>;
    fn gelu_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()>;
    /// `relu(x)²`.
    fn relu2_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()>;
    fn relu2_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()>;
    /// `out = a + b`.
    fn add(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()>;

    /// Softmax cross-entropy over the first `vocab` of `padded_vocab` logits per row, after an
    /// optional soft-cap `cap·tanh(z/cap)`; writes each row's loss into `losses`. With
    /// `grad_scale = Some(s)` it overwrites `logits` in place with `s·∂loss/∂logits` (zero in the
    /// padding), so the probabilities are never stored. A row whose target is [`IGNORE_TARGET`]
    /// gets loss 0 and a zero gradient.
    fn softmax_cross_entropy(
        &mut self,
        logits: Tensor,
        losses: Tensor,
        targets: TokenTensor,
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) -> Result<()>;

    // ---- reductions and elementwise helpers ----

    /// `t` is cut into consecutive pieces of `lens[r]` elements, piece r for rank r of `comm`:
    /// afterwards this rank's piece holds the sum over ranks of that piece (the rest of `t` is
    /// left unspecified). ZeRO-1's gradient sum: each rank gets what its share of the
    /// optimizer needs, at half the traffic of an all-reduce. Every rank must call it.
    fn reduce_scatter_sum(&mut self, t: Tensor, lens: &[usize], comm: &dyn Comm) -> Result<()> {
        reduce_scatter_on_host(self, t, lens, comm)
    }

    /// Makes the work queued after this call wait for the reduce-scatters issued so far, where
    /// the backend runs them beside its other work (the CUDA backend: on a stream of their
    /// own, overlapping the backward pass). A no-op where collectives finish when called.
    fn wait_for_collectives(&mut self) -> Result<()> {
        Ok(())
    }

    /// `t` is cut into pieces as for [`Backend::reduce_scatter_sum`], and rank r holds the
    /// values of piece r: afterwards every rank holds all of them (the weights each rank
    /// updated, the matrices each rank orthogonalised). Every rank must call it.
    fn all_gather_pieces(&mut self, t: Tensor, lens: &[usize], comm: &dyn Comm) -> Result<()> {
        all_gather_on_host(self, t, lens, comm)
    }

    fn sum(&mut self, t: Tensor) -> Result<f64>;
    fn sum_squares(&mut self, t: Tensor) -> Result<f64>;
    fn scale(&mut self, t: Tensor, factor: f32) -> Result<()>;

    // ---- optimizer updates ----

    /// One element-wise optimizer step over a flat range; `state` holds the rule's state
    /// tensors (as [`ElementwiseRule::state_names`] lists them, each as long as `param`).
    fn elementwise_update(
        &mut self,
        rule: ElementwiseRule,
        param: Tensor,
        grad: Tensor,
        state: &[Tensor],
    ) -> Result<()>;
    /// `x ← x + weight·(end − x)`.
    fn lerp(&mut self, x: Tensor, end: Tensor, weight: f32) -> Result<()>;
    /// Muon momentum: `m ← β·m + (1−β)·g`; `update ← (1−β)·g + β·m` with Nesterov, else `m`.
    fn muon_momentum(
        &mut self,
        update: Tensor,
        momentum: Tensor,
        grad: Tensor,
        beta: f32,
        nesterov: bool,
    ) -> Result<()>;
    /// `param ← param·(1 − decay) − step_size·update`.
    fn apply_update(
        &mut self,
        param: Tensor,
        update: Tensor,
        step_size: f32,
        decay: f32,
    ) -> Result<()>;
    /// Divides each of the `batch` equal parts of `x` by its Frobenius norm plus `eps`.
    fn normalize_frobenius(&mut self, x: Tensor, batch: usize, eps: f32) -> Result<()>;
    /// Batched matrix product, see [`Gemm`].
    fn gemm(&mut self, out: Tensor, a: Tensor, b: Tensor, shape: Gemm) -> Result<()>;
    /// The Adam direction without applying it: `m`, `v` EMAs of `grad` (as in
    /// [`ElementwiseRule::Adam`]), then `out = m̂/(√v̂ + eps)` with the bias-corrected moments
    /// of 1-based step `step`. Preconditioned optimizers rotate, rescale or graft it before the
    /// update.
    fn adam_direction(
        &mut self,
        out: Tensor,
        grad: Tensor,
        m: Tensor,
        v: Tensor,
        beta1: f32,
        beta2: f32,
        eps: f32,
        step: u32,
    ) -> Result<()>;
    /// Rescales each of the `batch` equal parts of `x` to the Frobenius norm of the matching part
    /// of `target`: `x ← x·‖target‖/(‖x‖ + 1e-16)` (layer-wise grafting; a zero part stays zero).
    fn match_norms(&mut self, x: Tensor, target: Tensor, batch: usize) -> Result<()>;
    /// Copies matrices into their packed tiles (see [`BlockLayout`]); `blocks` and `matrices`
    /// both hold `layout.elements()` elements.
    fn pack_blocks(&mut self, blocks: Tensor, matrices: Tensor, layout: BlockLayout) -> Result<()>;
    /// The inverse of [`Backend::pack_blocks`].
    fn unpack_blocks(
        &mut self,
        matrices: Tensor,
        blocks: Tensor,
        layout: BlockLayout,
    ) -> Result<()>;

    // ---- dense linear algebra, for the matrix preconditioners ----
    //
    // All matrices are row-major, like everything else here. cuSOLVER works column-major, where
    // a row-major symmetric matrix reads the same but eigenvectors come out as rows and QR
    // factors the transpose, so the CUDA backend transposes around its solver calls.

    /// Eigendecomposition of `batch` symmetric `n × n` matrices stored back to back in `matrices`
    /// (only their lower triangles are read): the eigenvalues of each, ascending, into
    /// `eigenvalues` (batch·n), and the unit eigenvectors as the columns of each `n × n` matrix of
    /// `eigenvectors` (batch·n·n), so that A = V·diag(λ)·Vᵀ. An error where the solver reports
    /// no convergence. CPU: faer (tridiagonal reduction, then a tridiagonal eigensolver), in f64
    /// whatever the storage. CUDA: cuSOLVER `syevjBatched` (Jacobi, matrices up to 32×32) or, for larger
    /// ones, `syevd`/`syevj` per matrix or `XsyevBatched`.
    fn symmetric_eigen(
        &mut self,
        matrices: Tensor,
        n: usize,
        batch: usize,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
    ) -> Result<()>;
    /// `out = V·diag((max(λ, 0) + eps)^exponent)` for each of `batch` eigendecompositions from
    /// [`Backend::symmetric_eigen`]: with exponent p/2, `out·outᵀ` is the matrix power
    /// (A₊ + eps·I)^p of the positive part of A, symmetric by construction. Shampoo's inverse
    /// roots, in one elementwise kernel and one GEMM.
    fn scale_eigenvectors(
        &mut self,
        out: Tensor,
        eigenvectors: Tensor,
        eigenvalues: Tensor,
        n: usize,
        batch: usize,
        exponent: f32,
        eps: f32,
    ) -> Result<()>;
    /// Replaces each of `batch` `n × n` matrices A by the orthogonal factor Q of its Householder
    /// QR decomposition A = Q·R (the signs of Q's columns are the solver's choice). With `rank_by`
    /// (same shape) the columns are orthogonalised in decreasing order of ⟨rank_by_j, A_j⟩ and Q's
    /// columns are written back in their original places: SOAP passes its eigenbasis B with
    /// A = L·B, so that its power iteration keeps the directions of the largest Rayleigh quotients
    /// bⱼᵀ·L·bⱼ first, as the reference does by sorting. CUDA: cuSOLVER `geqrf` + `orgqr`
    /// (batched by streams), with a permutation kernel around them for `rank_by`.
    fn orthonormalize(
        &mut self,
        matrices: Tensor,
        n: usize,
        batch: usize,
        rank_by: Option<Tensor>,
    ) -> Result<()>;
}
