//! The CUDA training backend: [`Backend`] on one GPU, with the kernels of kernels/ and
//! cuBLASLt.
//!
//! Memory follows the design card: every buffer the model or an optimizer allocates is one
//! device allocation, and tensors are views into it. What a buffer holds decides its storage:
//! activations and their gradients are `A` (bf16 to train, f32 to check against the CPU at f32
//! tolerance); parameters, their gradients, optimizer state, per-row statistics, constants and
//! scratch are f32. With bf16 activations each parameter buffer also has a bf16 copy, which the
//! matrix products read; any write to the f32 weights marks the copy stale, and the next product
//! refreshes it in one conversion pass, so the optimizers need not know about it.
//!
//! All work is queued on the GPU's one stream; only reads to the host, sums and `synchronize`
//! wait for it. Scratch that depends on the shapes of a step (the gradients of biases, norms,
//! embeddings and attention) grows to its high-water mark during the first step and is reused
//! after, so a step allocates nothing once the first is done.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use half::bf16;

use super::Gpu;
use super::elementwise::bias_backward_scratch;
use super::kernels::Cache;
use super::launch::{Activation, Kernels, embedding_backward_scratch, layernorm_backward_scratch};
use super::matmul::{Dtype, Matmul, MatmulElement};
use super::nccl::Nccl;
use super::solver::Solver;
use super::view::{self, View, ViewOf};
use crate::backend::{
    AttentionShape, Backend, BlockLayout, BufferKind, ElementwiseRule, Gemm, Tensor, TokenTensor,
    all_gather_on_host, reduce_scatter_on_host,
};
use crate::dist::Comm;

/// One device allocation, in the precision its kind is stored in.
enum Memory {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
}

impl Memory {
    fn dtype(&self) -> Dtype {
        match self {
            Memory::F32(_) => Dtype::F32,
            Memory::Bf16(_) => Dtype::Bf16,
        }
    }
}

struct Buffer {
    kind: BufferKind,
    memory: Memory,
    /// The bf16 copy of a parameter buffer that bf16 matrix products read, and whether it lags
    /// the f32 weights.
    shadow: Option<(CudaSlice<bf16>, bool)>,
}

/// Token ids on the device, and the host's copy of them (the embedding's backward pass sorts
/// them on the host, and the loss checks its targets there).
struct TokenBuffer {
    device: CudaSlice<u32>,
    host: Vec<u32>,
    /// Page-locked copy the upload reads, so that it is queued without waiting; `uploaded`
    /// marks the end of the last upload from it.
    staging: PinnedHostSlice<u32>,
    uploaded: CudaEvent,
}

impl Drop for TokenBuffer {
    /// The staging area is freed only after the upload that reads it (cudarc's own event for
    /// it is not recorded with event tracking off).
    fn drop(&mut self) {
        let _ = self.uploaded.synchronize();
    }
}

impl<A: MatmulElement> Drop for CudaBackend<A> {
    /// NCCL first: a rank that ends on an error may leave collectives queued, which the
    /// teardown of the rest (freeing, unloading modules) would wait for; the abort ends them.
    fn drop(&mut self) {
        drop(self.nccl.take());
    }
}

/// A second stream for collectives that overlap the main stream's work: `ready` marks what
/// they must wait for on the main stream, `done` what the main stream must wait for.
struct SideStream {
    stream: Arc<CudaStream>,
    ready: CudaEvent,
    done: CudaEvent,
    /// Collectives were queued since the main stream last waited for them.
    pending: bool,
}

/// Matches the CPU's [`crate::backend::cpu`] layer by layer; `A` is how activations are stored.
pub struct CudaBackend<A: MatmulElement> {
    gpu: Gpu,
    kernels: Kernels,
    matmul: Matmul,
    buffers: Vec<Buffer>,
    tokens: Vec<TokenBuffer>,
    /// Work space of the bias and attention gradients, grown on demand.
    scratch: Option<CudaSlice<f32>>,
    /// cuSOLVER for Shampoo's and SOAP's eigendecompositions and QR, opened on first use, and
    /// the bytes of its work space counted in `allocated`.
    solver: Option<Solver>,
    solver_bytes: u64,
    /// The gradients' and weights' collectives on the device, once [`CudaBackend::use_nccl`] set it up.
    nccl: Option<Nccl>,
    /// The stream the gradients' reduce-scatters run on, beside the backward pass.
    side: Option<SideStream>,
    /// Bytes allocated through this backend, and the most at any time.
    allocated: u64,
    peak: u64,
    activations: PhantomData<A>,
}

/// How a buffer of `kind` is stored when activations are stored as `activations`.
pub fn storage(kind: BufferKind, activations: Dtype) -> Dtype {
    match kind {
        BufferKind::Activations | BufferKind::ActivationGradients => activations,
        BufferKind::Parameters
        | BufferKind::Gradients
        | BufferKind::OptimizerState
        | BufferKind::Statistics
        | BufferKind::Constants
        | BufferKind::Scratch => Dtype::F32,
    }
}

/// Bytes per element of a buffer of `kind` (its bf16 copy, if any, not counted).
pub fn stored_bytes(kind: BufferKind, activations: Dtype) -> usize {
    match storage(kind, activations) {
        Dtype::Bf16 => 2,
        Dtype::F32 => 4,
    }
}

/// Whether a buffer of `kind` keeps a bf16 copy for the matrix products.
pub fn has_bf16_copy(kind: BufferKind, activations: Dtype) -> bool {
    kind == BufferKind::Parameters && activations == Dtype::Bf16
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// A zeroed device allocation of `len` elements, or an error that says how much was asked.
fn alloc<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    stream.alloc_zeros::<T>(len).with_context(|| {
        format!(
            "cannot allocate {:.2} GiB on the GPU for {what}",
            gib(len * std::mem::size_of::<T>())
        )
    })
}

impl<A: MatmulElement> CudaBackend<A> {
    /// Opens GPU `ordinal` and runs on it (see [`CudaBackend::on`]).
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::on(Gpu::open(ordinal)?)
    }

    /// Loads every kernel on `gpu` (compiling those the disk cache lacks) and makes a
    /// cuBLASLt handle.
    pub fn on(gpu: Gpu) -> Result<Self> {
        let cache = Cache::new(
            Cache::default_dir().context("no cache directory for compiled kernels: set HOME")?,
        );
        let kernels = Kernels::load(&gpu, &cache)?;
        let matmul = Matmul::new(&gpu.stream)?;
        Ok(CudaBackend {
            gpu,
            kernels,
            matmul,
            buffers: Vec::new(),
            tokens: Vec::new(),
            scratch: None,
            solver: None,
            solver_bytes: 0,
            nccl: None,
            side: None,
            allocated: 0,
            peak: 0,
            activations: PhantomData,
        })
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.gpu.stream
    }

    fn count(&mut self, bytes: usize) {
        self.allocated += bytes as u64;
        self.peak = self.peak.max(self.allocated);
    }

    fn buffer(&self, t: Tensor) -> Result<&Buffer> {
        self.buffers
            .get(t.buffer)
            .with_context(|| format!("no GPU buffer {} (tensor {t:?})", t.buffer))
    }

    /// The view of tensor `t`, which must be stored as `T`.
    fn view<T: MatmulElement>(&self, t: Tensor) -> Result<View<T>> {
        let buffer = self.buffer(t)?;
        let whole = match (&buffer.memory, T::DTYPE) {
            (Memory::F32(slice), Dtype::F32) => slice.view().cast::<T>(),
            (Memory::Bf16(slice), Dtype::Bf16) => slice.view().cast::<T>(),
            (memory, _) => bail!(
                "a {:?} tensor is stored as {:?}, where this operation needs {}",
                buffer.kind,
                memory.dtype(),
                T::NAME
            ),
        };
        whole.slice(t.offset, t.len)
    }

    fn f32(&self, t: Tensor) -> Result<View<f32>> {
        self.view::<f32>(t)
    }

    fn act(&self, t: Tensor) -> Result<View<A>> {
        self.view::<A>(t)
    }

    fn token_buffer(&self, t: TokenTensor) -> Result<(View<u32>, &[u32])> {
        let buffer = self
            .tokens
            .get(t.buffer)
            .with_context(|| format!("no GPU token buffer {}", t.buffer))?;
        ensure!(
            t.len <= buffer.host.len(),
            "token tensor longer than its buffer"
        );
        Ok((buffer.device.view().slice(0, t.len)?, &buffer.host[..t.len]))
    }

    /// Notes a write to `t`: a parameter buffer's bf16 copy no longer matches it.
    fn wrote(&mut self, t: Tensor) {
        if let Some(Buffer {
            shadow: Some((_, stale)),
            ..
        }) = self.buffers.get_mut(t.buffer)
        {
            *stale = true;
        }
    }

    /// The weights of a matrix product as `A`: the bf16 copy of a parameter buffer (refreshed
    /// if stale), or the tensor itself where it is stored as `A`.
    fn weights(&mut self, t: Tensor) -> Result<View<A>> {
        let buffer = self
            .buffers
            .get_mut(t.buffer)
            .with_context(|| format!("no GPU buffer {}", t.buffer))?;
        let (Memory::F32(master), Some((shadow, stale))) = (&buffer.memory, &mut buffer.shadow)
        else {
            return self.act(t);
        };
        if *stale {
            self.kernels
                .convert_to_bf16(&shadow.view(), &master.view())?;
            *stale = false;
        }
        Ok(shadow.view().slice(t.offset, t.len)?.cast::<A>())
    }

    /// At least `len` floats of scratch, valid until the next call.
    fn scratch(&mut self, len: usize) -> Result<View<f32>> {
        let (have, len) = (self.scratch.as_ref().map_or(0, |s| s.len()), len.max(1));
        if have < len {
            // Freed in stream order: kernels queued on the old scratch finish first.
            self.scratch = None;
            self.allocated -= (have * 4) as u64;
            self.scratch = Some(alloc::<f32>(self.stream(), len, "scratch")?);
            self.count(len * 4);
        }
        let scratch = self.scratch.as_ref().expect("allocated above");
        scratch.view().slice(0, len)
    }

    /// Sums over `host`'s ranks go through NCCL on the device from now on (collective: every
    /// rank calls it, each on its own GPU).
    /// A wait on the device that goes `timeout` without its collectives completing ends the
    /// run with an error ([`Nccl::wait`]).
    pub fn use_nccl(&mut self, host: &dyn Comm, timeout: Duration) -> Result<()> {
        // NCCL joins on the thread's current device: this backend's, where one process drives
        // several GPUs from several threads.
        (self.gpu.ctx.bind_to_thread()).context("making the GPU current for NCCL")?;
        self.nccl = Some(Nccl::new(host, timeout)?);
        let ctx = &self.gpu.ctx;
        let event = || ctx.new_event(None).context("creating a CUDA event");
        self.side = Some(SideStream {
            stream: ctx.new_stream().context("creating a stream for NCCL")?,
            ready: event()?,
            done: event()?,
            pending: false,
        });
        Ok(())
    }

    /// Before a call that blocks on the stream: with NCCL, waits for it while watching the
    /// communicator, so that a lost rank ends the run instead of hanging it.
    fn settle(&mut self) -> Result<()> {
        self.wait_for_collectives()?;
        self.watch()
    }

    /// With NCCL, waits for the main stream while watching the communicator (not for the
    /// side stream's collectives unless the main stream waits for them).
    fn watch(&mut self) -> Result<()> {
        match &mut self.nccl {
            Some(nccl) => nccl.wait(&self.gpu.stream),
            None => Ok(()),
        }
    }

    /// The NCCL communicator for a collective over `comm`'s ranks (None: through the host).
    fn nccl_for(&self, comm: &dyn Comm) -> Result<Option<&Nccl>> {
        let Some(nccl) = &self.nccl else {
            return Ok(None);
        };
        ensure!(
            nccl.size() == comm.size(),
            "NCCL was set up for {} ranks, the run has {}",
            nccl.size(),
            comm.size()
        );
        Ok(Some(nccl))
    }

    /// The cuSOLVER handle, opened on first use: a backend that never needs it works without
    /// the library.
    fn solver(&mut self) -> Result<()> {
        if self.solver.is_none() {
            self.solver = Some(Solver::new(self.stream())?);
        }
        Ok(())
    }

    /// Counts the growth (or shrinking) of the solver's work space since the last call.
    fn count_solver(&mut self) {
        let bytes = self.solver.as_ref().map_or(0, |s| s.bytes() as u64);
        if bytes >= self.solver_bytes {
            self.count((bytes - self.solver_bytes) as usize);
        } else {
            self.allocated -= self.solver_bytes - bytes;
        }
        self.solver_bytes = bytes;
    }
}

impl<A: MatmulElement> Backend for CudaBackend<A> {
    fn describe(&self) -> String {
        format!(
            "cuda: {} ({}; {} activations, f32 weights, gradients and optimizer state)",
            self.gpu.name,
            self.gpu.arch,
            A::NAME
        )
    }

    fn alloc(&mut self, len: usize, kind: BufferKind) -> Result<Tensor> {
        let what = format!("a {kind:?} buffer");
        self.count(len * stored_bytes(kind, A::DTYPE));
        let memory = match storage(kind, A::DTYPE) {
            Dtype::Bf16 => Memory::Bf16(alloc(self.stream(), len, &what)?),
            Dtype::F32 => Memory::F32(alloc(self.stream(), len, &what)?),
        };
        let shadow = if has_bf16_copy(kind, A::DTYPE) {
            self.count(len * 2);
            Some((
                alloc(self.stream(), len, "the bf16 copy of the weights")?,
                true,
            ))
        } else {
            None
        };
        self.buffers.push(Buffer {
            kind,
            memory,
            shadow,
        });
        Ok(Tensor {
            buffer: self.buffers.len() - 1,
            offset: 0,
            len,
        })
    }

    fn alloc_tokens(&mut self, len: usize) -> Result<TokenTensor> {
        let device = alloc::<u32>(self.stream(), len, "token ids")?;
        self.count(len * 4);
        let ctx = &self.gpu.ctx;
        // SAFETY: the staging area is written before any upload reads it.
        let staging = unsafe { ctx.alloc_pinned::<u32>(len) }
            .context("allocating page-locked host memory for token ids")?;
        let uploaded = ctx.new_event(None).context("creating a CUDA event")?;
        self.tokens.push(TokenBuffer {
            device,
            host: vec![0; len],
            staging,
            uploaded,
        });
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
        self.settle()?;
        match self.buffer(dst)?.memory.dtype() {
            Dtype::F32 => view::upload(self.stream(), self.f32(dst)?, src)?,
            Dtype::Bf16 => {
                let host: Vec<bf16> = src.iter().map(|&x| bf16::from_f32(x)).collect();
                view::upload(self.stream(), self.view::<bf16>(dst)?, &host)?
            }
        }
        self.wrote(dst);
        Ok(())
    }

    fn read(&mut self, src: Tensor) -> Result<Vec<f32>> {
        self.settle()?;
        Ok(match self.buffer(src)?.memory.dtype() {
            Dtype::F32 => view::download(self.stream(), self.f32(src)?)?,
            Dtype::Bf16 => view::download(self.stream(), self.view::<bf16>(src)?)?
                .into_iter()
                .map(bf16::to_f32)
                .collect(),
        })
    }

    fn write_tokens(&mut self, dst: TokenTensor, src: &[u32]) -> Result<()> {
        ensure!(
            src.len() == dst.len,
            "write of {} tokens into a buffer of {}",
            src.len(),
            dst.len
        );
        // Queued, not waited for: the host goes on (to read the next batch) while the GPU
        // works through what is before the copy on the stream.
        let (device, _) = self.token_buffer(dst)?;
        let stream = Arc::clone(&self.gpu.stream);
        let buffer = &mut self.tokens[dst.buffer];
        // The previous upload from the staging area must be done before it is overwritten.
        (buffer.uploaded.synchronize()).context("waiting for the last token upload")?;
        let staging = &mut buffer.staging.as_mut_slice()?[..src.len()];
        staging.copy_from_slice(src);
        if !src.is_empty() {
            // SAFETY: `device` holds src.len() ids; the staging area stays untouched until
            // `uploaded` says the copy is done.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    device.address(),
                    &*staging,
                    stream.cu_stream(),
                )
            }?;
        }
        buffer.uploaded.record(&stream)?;
        buffer.host[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()> {
        let dtype = self.buffer(dst)?.memory.dtype();
        // Only +0.0 is all zero bytes.
        match (dtype, value.to_bits() == 0) {
            (Dtype::F32, true) => view::zero(self.stream(), self.f32(dst)?)?,
            (Dtype::Bf16, true) => view::zero(self.stream(), self.view::<bf16>(dst)?)?,
            (Dtype::F32, false) => self.kernels.fill(&self.f32(dst)?, value)?,
            (Dtype::Bf16, false) => self.kernels.fill(&self.view::<bf16>(dst)?, value)?,
        }
        self.wrote(dst);
        Ok(())
    }

    fn copy(&mut self, dst: Tensor, src: Tensor) -> Result<()> {
        let types = (
            self.buffer(dst)?.memory.dtype(),
            self.buffer(src)?.memory.dtype(),
        );
        match types {
            (Dtype::F32, Dtype::F32) => view::copy(self.stream(), self.f32(dst)?, self.f32(src)?)?,
            (Dtype::Bf16, Dtype::Bf16) => view::copy(
                self.stream(),
                self.view::<bf16>(dst)?,
                self.view::<bf16>(src)?,
            )?,
            (Dtype::Bf16, Dtype::F32) => self
                .kernels
                .convert_to_bf16(&self.view::<bf16>(dst)?, &self.f32(src)?)?,
            (Dtype::F32, Dtype::Bf16) => self
                .kernels
                .convert_to_f32(&self.f32(dst)?, &self.view::<bf16>(src)?)?,
        }
        self.wrote(dst);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        self.settle()?;
        self.stream()
            .synchronize()
            .context("a GPU kernel or copy failed")
    }

    /// The most bytes the backend's buffers held at once (not cuBLASLt's 32 MiB workspace, nor
    /// the few temporaries launchers allocate per call).
    fn peak_memory_bytes(&self) -> u64 {
        self.peak
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
        let (tokens, _) = self.token_buffer(tokens)?;
        let positions = positions.map(|p| self.f32(p)).transpose()?;
        self.kernels.embedding_forward(
            &self.act(out)?,
            &tokens,
            &self.f32(table)?,
            positions.as_ref(),
            seq_len,
            channels,
        )
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
        // Its launcher waits for an upload: watched, without waiting for the gradients'
        // reduce-scatters that run beside the backward pass.
        self.watch()?;
        let dpositions = dpositions.map(|p| self.f32(p)).transpose()?;
        let scratch = self.scratch(embedding_backward_scratch(tokens.len))?;
        let (_, host_tokens) = self.token_buffer(tokens)?;
        self.kernels.embedding_backward(
            &self.f32(dtable)?,
            dpositions.as_ref(),
            &self.act(dout)?,
            host_tokens,
            &scratch,
            seq_len,
            channels,
        )
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
        self.kernels.layernorm_forward(
            &self.act(out)?,
            &self.f32(mean)?,
            &self.f32(rstd)?,
            &self.act(inp)?,
            &self.f32(weight)?,
            &self.f32(bias)?,
            channels,
        )
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
        let scratch = self.scratch(layernorm_backward_scratch(inp.len / channels, channels))?;
        self.kernels.layernorm_backward(
            &self.act(dinp)?,
            &self.f32(dweight)?,
            &self.f32(dbias)?,
            &self.act(dout)?,
            &self.act(inp)?,
            &self.f32(weight)?,
            &self.f32(mean)?,
            &self.f32(rstd)?,
            &scratch,
            channels,
        )
    }

    fn rmsnorm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        inp: Tensor,
        channels: usize,
    ) -> Result<()> {
        self.kernels
            .rmsnorm_forward(&self.act(out)?, &self.f32(rstd)?, &self.act(inp)?, channels)
    }

    fn rmsnorm_backward(
        &mut self,
        dinp: Tensor,
        dout: Tensor,
        inp: Tensor,
        rstd: Tensor,
        channels: usize,
    ) -> Result<()> {
        self.kernels.rmsnorm_backward(
            &self.act(dinp)?,
            &self.act(dout)?,
            &self.act(inp)?,
            &self.f32(rstd)?,
            channels,
        )
    }

    fn qk_norm_forward(
        &mut self,
        out: Tensor,
        rstd: Tensor,
        qkv: Tensor,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        self.kernels.qk_norm_forward(
            &self.act(out)?,
            &self.f32(rstd)?,
            &self.act(qkv)?,
            heads,
            channels,
        )
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
        self.kernels.qk_norm_backward(
            &self.act(dqkv)?,
            &self.act(dout)?,
            &self.act(qkv)?,
            &self.f32(rstd)?,
            heads,
            channels,
        )
    }

    fn rope_forward(&mut self, qkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()> {
        self.kernels
            .rope(&self.act(qkv)?, &self.f32(table)?, shape, false)
    }

    fn rope_backward(&mut self, dqkv: Tensor, table: Tensor, shape: AttentionShape) -> Result<()> {
        self.kernels
            .rope(&self.act(dqkv)?, &self.f32(table)?, shape, true)
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
        let weights = self.weights(weight)?;
        let (out_view, inp) = (self.act(out)?, self.act(inp)?);
        let shape = Gemm {
            batch: 1,
            m: rows,
            n: out_dim,
            k: in_dim,
            transpose_a: false,
            transpose_b: true,
            alpha: 1.0,
            beta: 0.0,
        };
        self.matmul
            .gemm::<A, A>(out_view, inp, weights, None, shape)?;
        if let Some(bias) = bias {
            self.kernels.add_bias(&out_view, &self.f32(bias)?)?;
        }
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
        let weights = self.weights(weight)?;
        let (dinp, dout_view, inp) = (self.act(dinp)?, self.act(dout)?, self.act(inp)?);
        // dinp (rows × in) = dout (rows × out) · W (out × in).
        let input_gradient = Gemm {
            batch: 1,
            m: rows,
            n: in_dim,
            k: out_dim,
            transpose_a: false,
            transpose_b: false,
            alpha: 1.0,
            beta: 0.0,
        };
        self.matmul
            .gemm::<A, A>(dinp, dout_view, weights, None, input_gradient)?;
        // dW (out × in) += doutᵀ · inp, accumulated in f32.
        let weight_gradient = Gemm {
            batch: 1,
            m: out_dim,
            n: in_dim,
            k: rows,
            transpose_a: true,
            transpose_b: false,
            alpha: 1.0,
            beta: 1.0,
        };
        let dweight = self.f32(dweight)?;
        self.matmul
            .gemm::<A, f32>(dweight, dout_view, inp, None, weight_gradient)?;
        if let Some(dbias) = dbias {
            let scratch = self.scratch(bias_backward_scratch(rows, out_dim))?;
            self.kernels
                .bias_backward(&self.f32(dbias)?, &dout_view, &scratch)?;
        }
        Ok(())
    }

    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        shape: AttentionShape,
    ) -> Result<()> {
        self.kernels
            .attention_forward(&self.act(out)?, &self.f32(lse)?, &self.act(qkv)?, shape)
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
        let scratch = self.scratch(Kernels::attention_backward_scratch(shape))?;
        self.kernels.attention_backward(
            &self.act(dqkv)?,
            &self.act(dout)?,
            &self.act(qkv)?,
            &self.act(out)?,
            &self.f32(lse)?,
            &scratch,
            shape,
        )
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
        self.kernels.attention_decode(
            &self.act(out)?,
            &self.act(qkv)?,
            &self.act(keys)?,
            &self.act(values)?,
            heads,
            channels,
        )
    }

    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        self.kernels
            .activation_forward(Activation::Gelu, &self.act(out)?, &self.act(inp)?)
    }

    fn gelu_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()> {
        self.kernels.activation_backward(
            Activation::Gelu,
            &self.act(dinp)?,
            &self.act(dout)?,
            &self.act(inp)?,
        )
    }

    fn relu2_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        self.kernels
            .activation_forward(Activation::Relu2, &self.act(out)?, &self.act(inp)?)
    }

    fn relu2_backward(&mut self, dinp: Tensor, dout: Tensor, inp: Tensor) -> Result<()> {
        self.kernels.activation_backward(
            Activation::Relu2,
            &self.act(dinp)?,
            &self.act(dout)?,
            &self.act(inp)?,
        )
    }

    fn add(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()> {
        self.kernels
            .add(&self.act(out)?, &self.act(a)?, &self.act(b)?)
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
        let (logits, losses) = (self.act(logits)?, self.f32(losses)?);
        let (targets_dev, targets_host) = self.token_buffer(targets)?;
        self.kernels.softmax_cross_entropy(
            &logits,
            &losses,
            &targets_dev,
            targets_host,
            vocab,
            padded_vocab,
            softcap,
            grad_scale,
        )
    }

    /// On the side stream, after what the main stream queued so far (the backward pass up to
    /// the part `t`), so that the rest of the pass runs meanwhile.
    fn reduce_scatter_sum(&mut self, t: Tensor, lens: &[usize], comm: &dyn Comm) -> Result<()> {
        let x = self.f32(t)?;
        let (Some(nccl), Some(side)) = (self.nccl_for(comm)?, self.side.as_ref()) else {
            return reduce_scatter_on_host(self, t, lens, comm);
        };
        side.ready.record(&self.gpu.stream)?;
        side.stream.wait(&side.ready)?;
        nccl.reduce_scatter_sum(x, lens, &side.stream)?;
        side.done.record(&side.stream)?;
        if let Some(side) = &mut self.side {
            side.pending = true;
        }
        self.wrote(t);
        Ok(())
    }

    fn wait_for_collectives(&mut self) -> Result<()> {
        if let Some(side) = self.side.as_mut().filter(|side| side.pending) {
            self.gpu.stream.wait(&side.done)?;
            side.pending = false;
        }
        Ok(())
    }

    fn all_gather_pieces(&mut self, t: Tensor, lens: &[usize], comm: &dyn Comm) -> Result<()> {
        match self.nccl_for(comm)? {
            Some(nccl) => nccl.all_gather_pieces(self.f32(t)?, lens, &self.gpu.stream)?,
            None => return all_gather_on_host(self, t, lens, comm),
        }
        self.wrote(t);
        Ok(())
    }

    fn sum(&mut self, t: Tensor) -> Result<f64> {
        self.settle()?;
        self.kernels.sum(&self.f32(t)?)
    }

    fn sum_squares(&mut self, t: Tensor) -> Result<f64> {
        self.settle()?;
        self.kernels.sum_squares(&self.f32(t)?)
    }

    fn scale(&mut self, t: Tensor, factor: f32) -> Result<()> {
        match self.buffer(t)?.memory.dtype() {
            Dtype::F32 => self.kernels.scale(&self.f32(t)?, factor)?,
            Dtype::Bf16 => self.kernels.scale(&self.view::<bf16>(t)?, factor)?,
        }
        self.wrote(t);
        Ok(())
    }

    fn elementwise_update(
        &mut self,
        rule: ElementwiseRule,
        param: Tensor,
        grad: Tensor,
        state: &[Tensor],
    ) -> Result<()> {
        let state = state
            .iter()
            .map(|&s| self.f32(s))
            .collect::<Result<Vec<_>>>()?;
        self.kernels
            .elementwise_update(rule, &self.f32(param)?, &self.f32(grad)?, &state, None)?;
        self.wrote(param);
        Ok(())
    }

    fn lerp(&mut self, x: Tensor, end: Tensor, weight: f32) -> Result<()> {
        self.kernels.lerp(&self.f32(x)?, &self.f32(end)?, weight)?;
        self.wrote(x);
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
        self.kernels.muon_momentum(
            &self.f32(update)?,
            &self.f32(momentum)?,
            &self.f32(grad)?,
            beta,
            nesterov,
        )
    }

    fn apply_update(
        &mut self,
        param: Tensor,
        update: Tensor,
        step_size: f32,
        decay: f32,
    ) -> Result<()> {
        self.kernels
            .apply_update(&self.f32(param)?, &self.f32(update)?, step_size, decay)?;
        self.wrote(param);
        Ok(())
    }

    fn normalize_frobenius(&mut self, x: Tensor, batch: usize, eps: f32) -> Result<()> {
        self.kernels
            .frobenius_normalize(&self.f32(x)?, batch, eps, 1.0)?;
        self.wrote(x);
        Ok(())
    }

    fn gemm(&mut self, out: Tensor, a: Tensor, b: Tensor, shape: Gemm) -> Result<()> {
        let (out_view, a, b) = (self.f32(out)?, self.f32(a)?, self.f32(b)?);
        self.matmul.gemm::<f32, f32>(out_view, a, b, None, shape)?;
        self.wrote(out);
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
        self.kernels.adam_direction(
            &self.f32(out)?,
            &self.f32(grad)?,
            &self.f32(m)?,
            &self.f32(v)?,
            beta1,
            beta2,
            eps,
            step,
        )?;
        self.wrote(out);
        Ok(())
    }

    fn match_norms(&mut self, x: Tensor, target: Tensor, batch: usize) -> Result<()> {
        self.kernels
            .match_norms(&self.f32(x)?, &self.f32(target)?, batch)?;
        self.wrote(x);
        Ok(())
    }

    fn pack_blocks(&mut self, blocks: Tensor, matrices: Tensor, layout: BlockLayout) -> Result<()> {
        self.kernels
            .pack_blocks(&self.f32(blocks)?, &self.f32(matrices)?, layout)?;
        self.wrote(blocks);
        Ok(())
    }

    fn unpack_blocks(
        &mut self,
        matrices: Tensor,
        blocks: Tensor,
        layout: BlockLayout,
    ) -> Result<()> {
        self.kernels
            .unpack_blocks(&self.f32(matrices)?, &self.f32(blocks)?, layout)?;
        self.wrote(matrices);
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
        // cuSOLVER's results are checked on the host: a wait.
        self.settle()?;
        let (matrices, values, vectors) = (
            self.f32(matrices)?,
            self.f32(eigenvalues)?,
            self.f32(eigenvectors)?,
        );
        self.solver()?;
        let solver = self.solver.as_mut().expect("opened above");
        let result = solver.symmetric_eigen(&self.kernels, &matrices, n, batch, &values, &vectors);
        self.count_solver();
        result?;
        self.wrote(eigenvalues);
        self.wrote(eigenvectors);
        Ok(())
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
        self.kernels.scale_eigenvectors(
            &self.f32(out)?,
            &self.f32(eigenvectors)?,
            &self.f32(eigenvalues)?,
            n,
            batch,
            exponent,
            eps,
        )?;
        self.wrote(out);
        Ok(())
    }

    fn orthonormalize(
        &mut self,
        matrices: Tensor,
        n: usize,
        batch: usize,
        rank_by: Option<Tensor>,
    ) -> Result<()> {
        self.settle()?;
        let view = self.f32(matrices)?;
        let rank_by = rank_by.map(|r| self.f32(r)).transpose()?;
        self.solver()?;
        let solver = self.solver.as_mut().expect("opened above");
        let result = solver.orthonormalize(&self.kernels, &view, n, batch, rank_by.as_ref());
        self.count_solver();
        result?;
        self.wrote(matrices);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_activations_and_their_gradients_take_the_activation_type() {
        use BufferKind as K;
        let all = [
            K::Parameters,
            K::Gradients,
            K::Activations,
            K::ActivationGradients,
            K::OptimizerState,
            K::Statistics,
            K::Constants,
            K::Scratch,
        ];
        for kind in all {
            assert_eq!(storage(kind, Dtype::F32), Dtype::F32, "{kind:?}");
            let bf16 = matches!(kind, K::Activations | K::ActivationGradients);
            let expected = if bf16 { Dtype::Bf16 } else { Dtype::F32 };
            assert_eq!(storage(kind, Dtype::Bf16), expected, "{kind:?}");
            assert_eq!(
                has_bf16_copy(kind, Dtype::Bf16),
                kind == K::Parameters,
                "{kind:?}"
            );
            assert!(!has_bf16_copy(kind, Dtype::F32), "{kind:?}");
        }
    }
}
