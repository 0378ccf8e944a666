//! The CPU reference backend.
//!
//! Every operation is a plain function over slices (one file per concern, like the CUDA kernels
//! in kernels/), run on all cores with rayon; matrix products go through the `gemm` crate.
//! The backend is generic over the float type: `CpuBackend<f32>` is what `--device cpu` trains
//! with, and `CpuBackend<f64>` runs the very same code as a high-precision oracle in tests.
//!
//! Every parallel reduction sums fixed-size blocks and adds the block results in order, so
//! results do not depend on the number of threads or on scheduling: a run is bitwise
//! reproducible, which is what lets a resumed run follow the uninterrupted one exactly.

mod activation;
mod attention;
mod embedding;
mod linalg;
mod loss;
mod matmul;
mod norm;
mod optim;
mod views;

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use anyhow::{Result, ensure};

use super::{
    AttentionShape, Backend, BlockLayout, BufferKind, ElementwiseRule, Gemm, Tensor, TokenTensor,
};
use views::Views;

/// Elements per task of the elementwise and reduction loops: large enough to amortise
/// scheduling, small enough to spread over many cores. Fixed, so that reductions are
/// deterministic.
const CHUNK: usize = 1 << 14;

/// Panics unless an operand has the length its operation's shape implies: a caller's bug,
/// caught before any kernel reads or writes out of place.
fn expect_len(what: &str, len: usize, expected: usize) {
    assert_eq!(
        len, expected,
        "{what}: {len} elements where the shape needs {expected}"
    );
}

/// The float types the reference backend computes in.
pub trait Real:
    num_traits::Float
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Debug
    + Default
    + 'static
{
    fn of(x: f64) -> Self;
    fn f32(self) -> f32;
    fn f64(self) -> f64;
    const NAME: &'static str;
    /// `x ← tanh(x)` over a slice: the hot transcendental of GELU and the logit soft-cap,
    /// vectorised for f32 (libm's scalar `tanhf` was a seventh of a d12 step).
    fn tanh_in_place(xs: &mut [Self]);
    /// `x ← eˣ` over a slice, vectorised for f32 like [`Real::tanh_in_place`].
    fn exp_in_place(xs: &mut [Self]);
}

/// Applies `f` to `xs` eight lanes at a time, the tail element by element.
fn map_f32x8(xs: &mut [f32], f: impl Fn(wide::f32x8) -> wide::f32x8, tail: impl Fn(f32) -> f32) {
    let mut lanes = xs.chunks_exact_mut(8);
    for chunk in &mut lanes {
        let v = f(wide::f32x8::new(chunk.try_into().expect("chunks of 8")));
        chunk.copy_from_slice(v.as_array());
    }
    lanes
        .into_remainder()
        .iter_mut()
        .for_each(|x| *x = tail(*x));
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f32(self) -> f32 {
        self
    }
    fn f64(self) -> f64 {
        self as f64
    }
    const NAME: &'static str = "f32";
    fn tanh_in_place(xs: &mut [f32]) {
        map_f32x8(xs, wide::f32x8::tanh, f32::tanh);
    }
    fn exp_in_place(xs: &mut [f32]) {
        map_f32x8(xs, wide::f32x8::exp, f32::exp);
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f32(self) -> f32 {
        self as f32
    }
    fn f64(self) -> f64 {
        self
    }
    const NAME: &'static str = "f64";
    fn tanh_in_place(xs: &mut [f64]) {
        xs.iter_mut().for_each(|x| *x = x.tanh());
    }
    fn exp_in_place(xs: &mut [f64]) {
        xs.iter_mut().for_each(|x| *x = x.exp());
    }
}

/// The CPU backend: buffers are plain vectors, [`Tensor`]s index into them.
#[derive(Default)]
pub struct CpuBackend<F: Real = f32> {
    floats: Vec<Vec<F>>,
    tokens: Vec<Vec<u32>>,
    /// A weight copied with padded rows for [`matmul::forward`], kept between calls.
    padded_weight: Vec<F>,
}

impl<F: Real> CpuBackend<F> {
    pub fn new() -> Self {
        Self::default()
    }

    fn views(&mut self) -> Views<'_, F> {
        Views::new(&mut self.floats)
    }
}

/// The processor's model name, from /proc ("cpu" where that is unavailable).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}

/// Peak resident set size of this process, from /proc (0 where that is unavailable).
fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

impl<F: Real> Backend for CpuBackend<F> {
    fn describe(&self) -> String {
        format!(
            "cpu: {} ({}, {} threads)",
            cpu_model(),
            F::NAME,
            rayon::current_num_threads()
        )
    }

    fn alloc(&mut self, len: usize, kind: BufferKind) -> Result<Tensor> {
        let mut buffer = Vec::new();
        buffer.try_reserve_exact(len).map_err(|_| {
            let gib = (len * std::mem::size_of::<F>()) as f64 / (1u64 << 30) as f64;
            anyhow::anyhow!("cannot allocate {gib:.2} GiB for a {kind:?} buffer")
        })?;
        buffer.resize(len, F::zero());
        self.floats.push(buffer);
        Ok(Tensor {
            buffer: self.floats.len() - 1,
            offset: 0,
            len,
        })
    }

    fn alloc_tokens(&mut self, len: usize) -> Result<TokenTensor> {
        self.tokens.push(vec![0; len]);
        Ok(TokenTensor {
            buffer: self.tokens.len() - 1,
            len,
        })
    }

    fn write(&mut self, dst: Tensor, src: &[f32]) -> Result<()> {
        ensure!(
            src.len() == dst.len,
            "write of {} values into a tensor of {}",
            src.len(),
            dst.len
        );
        let dst = self.views().mutable(dst);
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = F::of(s as f64));
        Ok(())
    }

    fn read(&mut self, src: Tensor) -> Result<Vec<f32>> {
        Ok(self.views().shared(src).iter().map(|x| x.f32()).collect())
    }

    fn write_tokens(&mut self, dst: TokenTensor, src: &[u32]) -> Result<()> {
        ensure!(
            src.len() == dst.len,
            "write of {} tokens into a buffer of {}",
            src.len(),
            dst.len
        );
        self.tokens[dst.buffer][..dst.len].copy_from_slice(src);
        Ok(())
    }

    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()> {
        optim::fill(self.views().mutable(dst), F::of(value as f64));
        Ok(())
    }

    fn copy(&mut self, dst: Tensor, src: Tensor) -> Result<()> {
        let mut v = self.views();
        let (dst, src) = (v.mutable(dst), v.shared(src));
        dst.copy_from_slice(src);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    fn peak_memory_bytes(&self) -> u64 {
        peak_rss_bytes()
    }

    fn embedding_forward(
        &mut self,
        out: Tensor,
        tokens: TokenTensor,
        table: Tensor,
        positions: Option<Tensor>,
        seq_len: usize,
        channels: usize,
    ) -> Result<()> {
        let tokens = &self.tokens[tokens.buffer][..tokens.len];
        let mut v = Views::new(&mut self.floats);
        let out = v.mutable(out);
        let table = v.shared(table);
        let positions = positions.map(|p| v.shared(p));
        embedding::forward(out, tokens, table, positions, seq_len, channels);
        Ok(())
    }

    fn embedding_backward(
        &mut self,
        dtable: Tensor,
        dpositions: Option<Tensor>,
        dout: Tensor,
        tokens: TokenTensor,
        seq_len: usize,
        channels: usize,
    ) -> Result<()> {
        let tokens = &self.tokens[tokens.buffer][..tokens.len];
        let mut v = Views::new(&mut self.floats);
        let dtable = v.mutable(dtable);
        let dpositions = dpositions.map(|p| v.mutable(p));
        let dout = v.shared(dout);
        embedding::backward(dtable, dpositions, dout, tokens, seq_len, channels);
        Ok(())
    }

    fn layernorm_forward(
        &mut self,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        inp: Tensor,
        weight: Tensor,
        bias: Tensor,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        norm::layernorm_forward(
            v.mutable(out),
            v.mutable(mean),
            v.mutable(rstd),
            v.shared(inp),
            v.shared(weight),
            v.shared(bias),
            channels,
        );
        Ok(())
    }

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
    ) -> Result<()> {
        let mut v = self.views();
        norm::layernorm_backward(
            v.mutable(dinp),
            v.mutable(dweight),
            v.mutable(dbias),
            v.shared(dout),
            v.shared(inp),
            v.shared(weight),
            v.shared(mean),
            v.shared(rstd),
            channels,
        );
        Ok(())
    }

    fn rmsnorm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        inp: Tensor,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        norm::rmsnorm_forward(v.mutable(out), v.mutable(rstd), v.shared(inp), channels);
        Ok(())
    }

    fn rmsnorm_backward(
        &mut self,
        dinp: Tensor,
        dout: Tensor,
        inp: Tensor,
        rstd: Tensor,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        norm::rmsnorm_backward(
            v.mutable(dinp),
            v.shared(dout),
            v.shared(inp),
            v.shared(rstd),
            channels,
        );
        Ok(())
    }

    fn qk_norm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        qkv: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        norm::qk_norm_forward(
            v.mutable(out),
            v.mutable(rstd),
            v.shared(qkv),
            heads,
            channels,
        );
        Ok(())
    }

    fn qk_norm_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        rstd: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        norm::qk_norm_backward(
            v.mutable(dqkv),
            v.shared(dout),
            v.shared(qkv),
            v.shared(rstd),
            heads,
            channels,
        );
        Ok(())
    }

    fn rope_forward(&mut self, qkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()> {
        let mut v = self.views();
        attention::rope(v.mutable(qkv), v.shared(table), shape, false);
        Ok(())
    }

    fn rope_backward(&mut self, dqkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()> {
        let mut v = self.views();
        attention::rope(v.mutable(dqkv), v.shared(table), shape, true);
        Ok(())
    }

    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<()> {
        let mut v = Views::new(&mut self.floats);
        let out = v.mutable(out);
        let (inp, weight) = (v.shared(inp), v.shared(weight));
        let bias = bias.map(|b| v.shared(b));
        let scratch = &mut self.padded_weight;
        matmul::forward(out, inp, weight, bias, rows, in_dim, out_dim, scratch);
        Ok(())
    }

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
    ) -> Result<()> {
        let mut v = self.views();
        let (dinp, dweight) = (v.mutable(dinp), v.mutable(dweight));
        let dbias = dbias.map(|b| v.mutable(b));
        let (dout, inp, weight) = (v.shared(dout), v.shared(inp), v.shared(weight));
        matmul::backward(
            dinp, dweight, dbias, dout, inp, weight, rows, in_dim, out_dim,
        );
        Ok(())
    }

    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        shape: AttentionShape,
    ) -> Result<()> {
        let mut v = self.views();
        attention::forward(v.mutable(out), v.mutable(lse), v.shared(qkv), shape);
        Ok(())
    }

    fn attention_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        shape: AttentionShape,
    ) -> Result<()> {
        let mut v = self.views();
        attention::backward(
            v.mutable(dqkv),
            v.shared(dout),
            v.shared(qkv),
            v.shared(out),
            v.shared(lse),
            shape,
        );
        Ok(())
    }

    fn attention_decode(
        &mut self,
        out: Tensor,
        qkv: Tensor,
        keys: Tensor,
        values: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let mut v = self.views();
        attention::decode(
            v.mutable(out),
            v.shared(qkv),
            v.shared(keys),
            v.shared(values),
            heads,
            channels,
        );
        Ok(())
    }

    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        let mut v = self.views();
        activation::gelu_forward(v.mutable(out), v.shared(inp));
        Ok(())
    }

    fn gelu_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()> {
        let mut v = self.views();
        activation::gelu_backward(v.mutable(dinp), v.shared(dout), v.shared(inp));
        Ok(())
    }

    fn relu2_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        let mut v = self.views();
        activation::relu2_forward(v.mutable(out), v.shared(inp));
        Ok(())
    }

    fn relu2_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()> {
        let mut v = self.views();
        activation::relu2_backward(v.mutable(dinp), v.shared(dout), v.shared(inp));
        Ok(())
    }

    fn add(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()> {
        let mut v = self.views();
        activation::add(v.mutable(out), v.shared(a), v.shared(b));
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: Tensor,
        losses: Tensor,
        targets: TokenTensor,
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let targets = &self.tokens[targets.buffer][..targets.len];
        let mut v = Views::new(&mut self.floats);
        loss::softmax_cross_entropy(
            v.mutable(logits),
            v.mutable(losses),
            targets,
            vocab,
            padded_vocab,
            softcap.map(|c| F::of(c as f64)),
            grad_scale.map(|s| F::of(s as f64)),
        );
        Ok(())
    }

    fn sum(&mut self, t: Tensor) -> Result<f64> {
        Ok(optim::sum(self.views().shared(t), |x| x))
    }

    fn sum_squares(&mut self, t: Tensor) -> Result<f64> {
        Ok(optim::sum(self.views().shared(t), |x| x * x))
    }

    fn scale(&mut self, t: Tensor, factor: f32) -> Result<()> {
        optim::scale(self.views().mutable(t), F::of(factor as f64));
        Ok(())
    }

    fn elementwise_update(
        &mut self,
        rule: ElementwiseRule,
        param: Tensor,
        grad: Tensor,
        state: &[Tensor],
    ) -> Result<()> {
        let mut views = self.views();
        let (param, grad) = (views.mutable(param), views.shared(grad));
        let state = state.iter().map(|&s| views.mutable(s)).collect();
        optim::elementwise(rule, param, grad, state);
        Ok(())
    }

    fn lerp(&mut self, x: Tensor, end: Tensor, weight: f32) -> Result<()> {
        let mut v = self.views();
        optim::lerp(v.mutable(x), v.shared(end), F::of(weight as f64));
        Ok(())
    }

    fn muon_momentum(
        &mut self,
        update: Tensor,
        momentum: Tensor,
        grad: Tensor,
        beta: f32,
        nesterov: bool,
    ) -> Result<()> {
        let mut v = self.views();
        optim::muon_momentum(
            v.mutable(update),
            v.mutable(momentum),
            v.shared(grad),
            F::of(beta as f64),
            nesterov,
        );
        Ok(())
    }

    fn apply_update(
        &mut self,
        param: Tensor,
        update: Tensor,
        step_size: f32,
        decay: f32,
    ) -> Result<()> {
        let mut v = self.views();
        optim::apply_update(
            v.mutable(param),
            v.shared(update),
            F::of(step_size as f64),
            F::of(decay as f64),
        );
        Ok(())
    }

    fn normalize_frobenius(&mut self, x: Tensor, batch: usize, eps: f32) -> Result<()> {
        optim::normalize_frobenius(self.views().mutable(x), batch, F::of(eps as f64));
        Ok(())
    }

    fn gemm(&mut self, out: Tensor, a: Tensor, b: Tensor, shape: Gemm) -> Result<()> {
        let mut v = self.views();
        matmul::batched(v.mutable(out), v.shared(a), v.shared(b), shape);
        Ok(())
    }

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
    ) -> Result<()> {
        let mut views = self.views();
        optim::adam_direction(
            views.mutable(out),
            views.shared(grad),
            views.mutable(m),
            views.mutable(v),
            beta1,
            beta2,
            eps,
            step,
        );
        Ok(())
    }

    fn match_norms(&mut self, x: Tensor, target: Tensor, batch: usize) -> Result<()> {
        let mut v = self.views();
        optim::match_norms(v.mutable(x), v.shared(target), batch);
        Ok(())
    }

    fn pack_blocks(&mut self, blocks: Tensor, matrices: Tensor, layout: BlockLayout) -> Result<()> {
        let mut v = self.views();
        optim::pack_blocks(v.mutable(blocks), v.shared(matrices), layout);
        Ok(())
    }

    fn unpack_blocks(
        &mut self,
        matrices: Tensor,
        blocks: Tensor,
        layout: BlockLayout,
    ) -> Result<()> {
        let mut v = self.views();
        optim::unpack_blocks(v.mutable(matrices), v.shared(blocks), layout);
        Ok(())
    }

    fn symmetric_eigen(
        &mut self,
        matrices: Tensor,
        n: usize,
        batch: usize,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
    ) -> Result<()> {
        let mut v = self.views();
        linalg::symmetric_eigen(
            v.shared(matrices),
            n,
            batch,
            v.mutable(eigenvalues),
            v.mutable(eigenvectors),
        )
    }

    fn scale_eigenvectors(
        &mut self,
        out: Tensor,
        eigenvectors: Tensor,
        eigenvalues: Tensor,
        n: usize,
        batch: usize,
        exponent: f32,
        eps: f32,
    ) -> Result<()> {
        let mut v = self.views();
        linalg::scale_eigenvectors(
            v.mutable(out),
            v.shared(eigenvectors),
            v.shared(eigenvalues),
            n,
            batch,
            F::of(exponent as f64),
            F::of(eps as f64),
        );
        Ok(())
    }

    fn orthonormalize(
        &mut self,
        matrices: Tensor,
        n: usize,
        batch: usize,
        rank_by: Option<Tensor>,
    ) -> Result<()> {
        let mut v = self.views();
        let matrices = v.mutable(matrices);
        let rank_by = rank_by.map(|r| v.shared(r));
        linalg::orthonormalize(matrices, n, batch, rank_by);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
