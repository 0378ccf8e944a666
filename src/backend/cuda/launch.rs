//! Typed launchers for the kernels of kernels/: each checks its operands' sizes (a kernel would
//! read or write out of bounds otherwise), picks the launch shape and queues the kernel on the
//! GPU's stream. Shapes and semantics are those of the [`crate::backend::Backend`] method each
//! one will implement.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use half::bf16;

use super::Gpu;
use super::kernels::Param::{self, B32, B64, F32};
use super::kernels::{Cache, SOURCES};
use super::view::{self, View};
use crate::backend::{AdamStep, AttentionShape, ElementwiseRule, IGNORE_TARGET};

/// How an activation is stored on the GPU: the kernels come in an `_f32` and a `_bf16` version.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Unpin + Send + Sync + 'static {
    /// The suffix of the kernels' names, and the type's name in reports.
    const NAME: &'static str;
    fn of(x: f32) -> Self;
    fn f32(self) -> f32;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn of(x: f32) -> Self {
        x
    }
    fn f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn of(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Threads per block of the elementwise and per-row kernels.
pub(super) const THREADS: u32 = 256;
/// Threads per block of the cross-entropy, one block per row of the vocabulary.
const LOSS_THREADS: u32 = 1024;
/// Rows per block of the LayerNorm backward, whose weight and bias gradients are summed per block.
const LAYERNORM_BLOCK_ROWS: usize = 32;
/// Blocks of the first pass of the sum of squares: fixed, so the result does not depend on the
/// device.
const SUM_BLOCKS: usize = 1024;

pub(super) fn expect_len(what: &str, len: usize, expected: usize) -> Result<()> {
    ensure!(
        len == expected,
        "{what}: {len} elements where the shape needs {expected}"
    );
    Ok(())
}

/// An `int` kernel argument.
pub(super) fn int(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).with_context(|| format!("{what} {value} does not fit a kernel's int"))
}

/// A grid-stride launch over `n` elements.
pub(super) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, eight rows per block.
pub(super) fn warp_per_row(rows: usize) -> LaunchConfig {
    let per_block = THREADS as usize / 32;
    LaunchConfig {
        grid_dim: (rows.div_ceil(per_block) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The rows of a token buffer sorted by token (stably), cut into one bucket per distinct token:
/// the rows of bucket `b` are `order[start[b]..start[b + 1]]`, all holding `token[b]`. The
/// embedding backward gives each bucket to one thread per channel, which adds its rows in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Buckets {
    pub order: Vec<i32>,
    pub start: Vec<i32>,
    pub token: Vec<u32>,
}

pub fn bucket_rows(tokens: &[u32], vocab: usize) -> Result<Buckets> {
    ensure!(
        i32::try_from(tokens.len()).is_ok(),
        "{} tokens are too many for one embedding backward",
        tokens.len()
    );
    let mut count = vec![0usize; vocab];
    for &token in tokens {
        match count.get_mut(token as usize) {
            Some(c) => *c += 1,
            None => bail!("token {token} is outside the vocabulary of {vocab}"),
        }
    }
    let (mut start, mut token, mut next) = (vec![0], Vec::new(), vec![0usize; vocab]);
    let mut total = 0;
    for (v, &c) in count.iter().enumerate() {
        if c > 0 {
            next[v] = total;
            total += c;
            token.push(v as u32);
            start.push(total as i32);
        }
    }
    let mut order = vec![0i32; tokens.len()];
    for (row, &t) in tokens.iter().enumerate() {
        order[next[t as usize]] = row as i32;
        next[t as usize] += 1;
    }
    Ok(Buckets {
        order,
        start,
        token,
    })
}

/// A kernel the launchers call: its file, its name, to which `typed` kernels add `_f32` or
/// `_bf16`, and its parameters (a test checks them against the compiled PTX, and every launch
/// checks its arguments against them).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub file: &'static str,
    pub name: &'static str,
    pub typed: bool,
    pub params: &'static [Param],
}

pub(super) const fn typed(
    file: &'static str,
    name: &'static str,
    params: &'static [Param],
) -> Kernel {
    Kernel {
        file,
        name,
        typed: true,
        params,
    }
}

pub(super) const fn plain(
    file: &'static str,
    name: &'static str,
    params: &'static [Param],
) -> Kernel {
    Kernel {
        file,
        name,
        typed: false,
        params,
    }
}

// B64: a pointer or a long long; B32: an int; F32: a float.
const ADD: Kernel = typed("activation.cu", "add", &[B64, B64, B64, B64]);
const UNARY: &[Param] = &[B64, B64, B64];
const UNARY_BACKWARD: &[Param] = &[B64, B64, B64, B64];
const GELU_FORWARD: Kernel = typed("activation.cu", "gelu_forward", UNARY);
const GELU_BACKWARD: Kernel = typed("activation.cu", "gelu_backward", UNARY_BACKWARD);
const RELU2_FORWARD: Kernel = typed("activation.cu", "relu2_forward", UNARY);
const RELU2_BACKWARD: Kernel = typed("activation.cu", "relu2_backward", UNARY_BACKWARD);
const LAYERNORM_FORWARD: Kernel = typed(
    "norm.cu",
    "layernorm_forward",
    &[B64, B64, B64, B64, B64, B64, B32, B32],
);
const LAYERNORM_BACKWARD: Kernel = typed(
    "norm.cu",
    "layernorm_backward",
    &[B64, B64, B64, B64, B64, B64, B64, B32, B32, B32],
);
const LAYERNORM_BACKWARD_REDUCE: Kernel = plain(
    "norm.cu",
    "layernorm_backward_reduce",
    &[B64, B64, B64, B32, B32],
);
const RMSNORM_FORWARD: Kernel = typed("norm.cu", "rmsnorm_forward", &[B64, B64, B64, B32, B32]);
const RMSNORM_BACKWARD: Kernel = typed(
    "norm.cu",
    "rmsnorm_backward",
    &[B64, B64, B64, B64, B32, B32],
);
const QK_NORM_FORWARD: Kernel = typed(
    "norm.cu",
    "qk_norm_forward",
    &[B64, B64, B64, B32, B32, B32],
);
const QK_NORM_BACKWARD: Kernel = typed(
    "norm.cu",
    "qk_norm_backward",
    &[B64, B64, B64, B64, B32, B32, B32],
);
const ROPE: Kernel = typed("rope.cu", "rope", &[B64, B64, B64, B32, B32, B32, B32]);
const EMBEDDING_FORWARD: Kernel = typed(
    "embedding.cu",
    "embedding_forward",
    &[B64, B64, B64, B64, B32, B32, B64, B32],
);
const EMBEDDING_BACKWARD_TABLE: Kernel = typed(
    "embedding.cu",
    "embedding_backward_table",
    &[B64, B64, B64, B64, B64, B32],
);
const EMBEDDING_BACKWARD_POSITIONS: Kernel = typed(
    "embedding.cu",
    "embedding_backward_positions",
    &[B64, B64, B32, B32, B32],
);
const SOFTMAX_CROSS_ENTROPY: Kernel = typed(
    "loss.cu",
    "softmax_cross_entropy",
    &[B64, B64, B64, B32, B32, F32, F32, B32],
);
const ADAM_UPDATE: Kernel = plain(
    "optim.cu",
    "adam_update",
    &[
        B64, B64, B64, B64, B64, B64, F32, F32, F32, F32, F32, F32, F32, B32,
    ],
);
const SGD_UPDATE: Kernel = plain(
    "optim.cu",
    "sgd_update",
    &[B64, B64, B64, B64, B64, F32, F32, F32, F32, B32, B32],
);
const ADAGRAD_UPDATE: Kernel = plain(
    "optim.cu",
    "adagrad_update",
    &[B64, B64, B64, B64, B64, F32, F32, F32],
);
const RMSPROP_UPDATE: Kernel = plain(
    "optim.cu",
    "rmsprop_update",
    &[B64, B64, B64, B64, B64, B64, B64, F32, F32, F32, F32, F32],
);
const ADADELTA_UPDATE: Kernel = plain(
    "optim.cu",
    "adadelta_update",
    &[B64, B64, B64, B64, B64, B64, F32, F32, F32, F32],
);
const SCHEDULE_FREE_UPDATE: Kernel = plain(
    "optim.cu",
    "schedule_free_update",
    &[
        B64, B64, B64, B64, B64, B64, F32, F32, F32, F32, F32, F32, F32,
    ],
);
const SUM_SQUARES_PARTIAL: Kernel = plain("reduce.cu", "sum_squares_partial", &[B64, B64, B64]);
const SUM_VALUES_PARTIAL: Kernel = plain("reduce.cu", "sum_values_partial", &[B64, B64, B64]);
const SUM_PARTIALS: Kernel = plain("reduce.cu", "sum_partials", &[B64, B64, B32]);
const FROBENIUS_NORMALIZE: Kernel = plain(
    "newton_schulz.cu",
    "frobenius_normalize",
    &[B64, B64, F32, F32],
);

/// Every kernel the launchers call; a test checks it against what kernels/ compiles to.
pub fn all_kernels() -> Vec<Kernel> {
    KERNELS
        .iter()
        .chain(super::attention::KERNELS)
        .chain(super::elementwise::KERNELS)
        .chain(super::precondition::KERNELS)
        .copied()
        .collect()
}

/// The kernels whose launchers are in this file.
const KERNELS: &[Kernel] = &[
    ADD,
    GELU_FORWARD,
    GELU_BACKWARD,
    RELU2_FORWARD,
    RELU2_BACKWARD,
    LAYERNORM_FORWARD,
    LAYERNORM_BACKWARD,
    LAYERNORM_BACKWARD_REDUCE,
    RMSNORM_FORWARD,
    RMSNORM_BACKWARD,
    QK_NORM_FORWARD,
    QK_NORM_BACKWARD,
    ROPE,
    EMBEDDING_FORWARD,
    EMBEDDING_BACKWARD_TABLE,
    EMBEDDING_BACKWARD_POSITIONS,
    SOFTMAX_CROSS_ENTROPY,
    ADAM_UPDATE,
    SGD_UPDATE,
    ADAGRAD_UPDATE,
    RMSPROP_UPDATE,
    ADADELTA_UPDATE,
    SCHEDULE_FREE_UPDATE,
    SUM_SQUARES_PARTIAL,
    SUM_VALUES_PARTIAL,
    SUM_PARTIALS,
    FROBENIUS_NORMALIZE,
];

/// A loaded kernel with its declared parameters.
pub(super) struct Prepared {
    function: CudaFunction,
    kernel: Kernel,
}

impl Prepared {
    pub(super) fn args<'a>(&'a self, stream: &'a Arc<CudaStream>) -> Launch<'a> {
        Launch {
            args: stream.launch_builder(&self.function),
            kernel: self.kernel,
            pushed: Vec::new(),
        }
    }
}

/// The arguments of one launch, each pushed with its parameter type, so that a launch whose
/// arguments do not match the kernel's parameters is an error instead of undefined behaviour.
pub(super) struct Launch<'a> {
    args: LaunchArgs<'a>,
    kernel: Kernel,
    pushed: Vec<Param>,
}

impl<'a> Launch<'a> {
    /// A device buffer (its address).
    pub(super) fn buf<T>(&mut self, buffer: &'a View<T>) -> &mut Self {
        self.args.arg(buffer.address_ref());
        self.pushed.push(B64);
        self
    }

    /// An optional buffer: its address, or null where it is absent.
    pub(super) fn maybe<T>(&mut self, buffer: Option<&'a View<T>>) -> &mut Self {
        match buffer {
            Some(buffer) => self.buf(buffer),
            None => self.null(),
        }
    }

    /// A null pointer, for an optional buffer that is absent.
    pub(super) fn null(&mut self) -> &mut Self {
        self.args.arg(&0u64);
        self.pushed.push(B64);
        self
    }

    pub(super) fn int(&mut self, value: &'a i32) -> &mut Self {
        self.args.arg(value);
        self.pushed.push(B32);
        self
    }

    pub(super) fn long(&mut self, value: &'a i64) -> &mut Self {
        self.args.arg(value);
        self.pushed.push(B64);
        self
    }

    pub(super) fn float(&mut self, value: &'a f32) -> &mut Self {
        self.args.arg(value);
        self.pushed.push(F32);
        self
    }

    /// Queues the kernel.
    ///
    /// # Safety
    /// Every buffer must be as large as the kernel reads and writes for this launch shape.
    pub(super) unsafe fn launch(&mut self, config: LaunchConfig) -> Result<()> {
        ensure!(
            self.pushed == self.kernel.params,
            "{} launched with arguments {:?} where it takes {:?}",
            self.kernel.name,
            self.pushed,
            self.kernel.params
        );
        // An empty grid has nothing to do, and CUDA refuses to launch one.
        if config.grid_dim.0 == 0 {
            return Ok(());
        }
        // SAFETY: the arguments match the parameters in number and size (checked above); the
        // caller vouches for the buffers' sizes.
        unsafe { self.args.launch(config) }?;
        Ok(())
    }
}

/// The kernels of every file in kernels/, loaded on one GPU.
pub struct Kernels {
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// The sums' per-block partials and their total, allocated once.
    sum_partials: CudaSlice<f32>,
    sum_total: CudaSlice<f64>,
}

/// f32 scratch elements [`Kernels::layernorm_backward`] needs.
pub fn layernorm_backward_scratch(rows: usize, channels: usize) -> usize {
    rows.div_ceil(LAYERNORM_BLOCK_ROWS) * 2 * channels
}

/// 32-bit scratch elements [`Kernels::embedding_backward`] needs for `rows` tokens: the rows
/// in bucket order, the buckets' starts and their tokens.
pub fn embedding_backward_scratch(rows: usize) -> usize {
    3 * rows + 1
}

impl Kernels {
    /// Compiles (or takes from `cache`) every kernel file for the GPU's architecture and loads it.
    pub fn load(gpu: &Gpu, cache: &Cache) -> Result<Kernels> {
        let mut modules = HashMap::new();
        for source in SOURCES {
            let cubin = cache.cubin(source, &gpu.arch)?;
            let module = gpu
                .ctx
                .load_module(Ptx::from_binary(cubin))
                .with_context(|| format!("cannot load the kernels of {}", source.file))?;
            modules.insert(source.file, module);
        }
        Ok(Kernels {
            stream: gpu.stream.clone(),
            modules,
            sum_partials: gpu.stream.alloc_zeros(SUM_BLOCKS)?,
            sum_total: gpu.stream.alloc_zeros(1)?,
        })
    }

    /// Kernel `name` of kernels/`file` (a cheap lookup in the driver).
    fn function(&self, file: &str, name: &str) -> Result<CudaFunction> {
        let module = self
            .modules
            .get(file)
            .with_context(|| format!("no kernel file {file}"))?;
        module
            .load_function(name)
            .with_context(|| format!("{file} has no kernel {name}"))
    }

    /// The `T` version of a kernel that comes in an f32 and a bf16 version.
    pub(super) fn typed<T: Element>(&self, kernel: Kernel) -> Result<Prepared> {
        debug_assert!(kernel.typed, "{} has no typed versions", kernel.name);
        let function = self.function(kernel.file, &format!("{}_{}", kernel.name, T::NAME))?;
        Ok(Prepared { function, kernel })
    }

    pub(super) fn plain(&self, kernel: Kernel) -> Result<Prepared> {
        debug_assert!(!kernel.typed, "{} comes in typed versions", kernel.name);
        let function = self.function(kernel.file, kernel.name)?;
        Ok(Prepared { function, kernel })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `out = a + b`.
    pub fn add<T: Element>(&self, out: &View<T>, a: &View<T>, b: &View<T>) -> Result<()> {
        let n = out.len();
        expect_len("add operand", a.len(), n)?;
        expect_len("add operand", b.len(), n)?;
        let kernel = self.typed::<T>(ADD)?;
        let n64 = n as i64;
        let mut launch = kernel.args(&self.stream);
        launch.buf(out).buf(a).buf(b).long(&n64);
        // SAFETY: the argument list matches add_T(T*, const T*, const T*, i64), and every
        // buffer holds n elements.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `out = f(inp)` for `op` one of gelu_forward, relu2_forward.
    pub fn activation_forward<T: Element>(
        &self,
        op: Activation,
        out: &View<T>,
        inp: &View<T>,
    ) -> Result<()> {
        let n = out.len();
        expect_len("activation input", inp.len(), n)?;
        let kernel = self.typed::<T>(op.forward())?;
        let n64 = n as i64;
        let mut launch = kernel.args(&self.stream);
        launch.buf(out).buf(inp).long(&n64);
        // SAFETY: matches op_forward_T(T*, const T*, i64); both buffers hold n elements.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `dinp = dout·f'(inp)`.
    pub fn activation_backward<T: Element>(
        &self,
        op: Activation,
        dinp: &View<T>,
        dout: &View<T>,
        inp: &View<T>,
    ) -> Result<()> {
        let n = dinp.len();
        expect_len("activation output gradient", dout.len(), n)?;
        expect_len("activation input", inp.len(), n)?;
        let kernel = self.typed::<T>(op.backward())?;
        let n64 = n as i64;
        let mut launch = kernel.args(&self.stream);
        launch.buf(dinp).buf(dout).buf(inp).long(&n64);
        // SAFETY: matches op_backward_T(T*, const T*, const T*, i64); all hold n elements.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// LayerNorm of each `channels`-wide row, saving the mean and 1/std of each (eps 1e-5).
    pub fn layernorm_forward<T: Element>(
        &self,
        out: &View<T>,
        mean: &View<f32>,
        rstd: &View<f32>,
        inp: &View<T>,
        weight: &View<f32>,
        bias: &View<f32>,
        channels: usize,
    ) -> Result<()> {
        let rows = row_count("layernorm input", inp.len(), channels)?;
        expect_len("layernorm output", out.len(), inp.len())?;
        expect_len("layernorm mean", mean.len(), rows)?;
        expect_len("layernorm rstd", rstd.len(), rows)?;
        expect_len("layernorm weight", weight.len(), channels)?;
        expect_len("layernorm bias", bias.len(), channels)?;
        let kernel = self.typed::<T>(LAYERNORM_FORWARD)?;
        let (rows32, c32) = (int("rows", rows)?, int("channels", channels)?);
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(out)
            .buf(mean)
            .buf(rstd)
            .buf(inp)
            .buf(weight)
            .buf(bias)
            .int(&rows32)
            .int(&c32);
        // SAFETY: matches layernorm_forward_T; sizes checked above.
        unsafe { launch.launch(warp_per_row(rows)) }?;
        Ok(())
    }

    /// Adds the input gradient to `dinp`; accumulates `dweight` and `dbias` (deterministically:
    /// per-block partial sums, added in block order by a second kernel).
    pub fn layernorm_backward<T: Element>(
        &self,
        dinp: &View<T>,
        dweight: &View<f32>,
        dbias: &View<f32>,
        dout: &View<T>,
        inp: &View<T>,
        weight: &View<f32>,
        mean: &View<f32>,
        rstd: &View<f32>,
        scratch: &View<f32>,
        channels: usize,
    ) -> Result<()> {
        let rows = row_count("layernorm input", inp.len(), channels)?;
        expect_len("layernorm input gradient", dinp.len(), inp.len())?;
        expect_len("layernorm output gradient", dout.len(), inp.len())?;
        expect_len("layernorm mean", mean.len(), rows)?;
        expect_len("layernorm rstd", rstd.len(), rows)?;
        expect_len("layernorm weight", weight.len(), channels)?;
        expect_len("layernorm weight gradient", dweight.len(), channels)?;
        expect_len("layernorm bias gradient", dbias.len(), channels)?;
        if rows == 0 {
            return Ok(());
        }
        let blocks = rows.div_ceil(LAYERNORM_BLOCK_ROWS);
        // The per-block partial sums of the weight and bias gradients.
        let partials = scratch.slice(0, layernorm_backward_scratch(rows, channels))?;
        let (rows32, c32, blocks32) = (
            int("rows", rows)?,
            int("channels", channels)?,
            int("blocks", blocks)?,
        );
        let block_rows = LAYERNORM_BLOCK_ROWS as i32;
        let kernel = self.typed::<T>(LAYERNORM_BACKWARD)?;
        let shared = (2 * channels + 32) * std::mem::size_of::<f32>();
        ensure!(
            shared <= 48 << 10,
            "layernorm backward of {channels} channels needs more than 48 KiB of shared memory"
        );
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(dinp)
            .buf(&partials)
            .buf(dout)
            .buf(inp)
            .buf(weight)
            .buf(mean)
            .buf(rstd)
            .int(&rows32)
            .int(&block_rows)
            .int(&c32);
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: matches layernorm_backward_T; partials holds blocks·2·channels floats and the
        // shared memory 2·channels + 32 floats, as the kernel expects.
        unsafe { launch.launch(config) }?;
        let kernel = self.plain(LAYERNORM_BACKWARD_REDUCE)?;
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(dweight)
            .buf(dbias)
            .buf(&partials)
            .int(&blocks32)
            .int(&c32);
        // SAFETY: matches layernorm_backward_reduce; one thread per entry of [dweight | dbias].
        unsafe { launch.launch(elementwise_exact(2 * channels)) }?;
        Ok(())
    }

    /// RMSNorm without weights (eps 1e-6), saving 1/rms of each row.
    pub fn rmsnorm_forward<T: Element>(
        &self,
        out: &View<T>,
        rstd: &View<f32>,
        inp: &View<T>,
        channels: usize,
    ) -> Result<()> {
        let rows = row_count("rmsnorm input", inp.len(), channels)?;
        expect_len("rmsnorm output", out.len(), inp.len())?;
        expect_len("rmsnorm rstd", rstd.len(), rows)?;
        let kernel = self.typed::<T>(RMSNORM_FORWARD)?;
        let (rows32, c32) = (int("rows", rows)?, int("channels", channels)?);
        let mut launch = kernel.args(&self.stream);
        launch.buf(out).buf(rstd).buf(inp).int(&rows32).int(&c32);
        // SAFETY: matches rmsnorm_forward_T; sizes checked above.
        unsafe { launch.launch(warp_per_row(rows)) }?;
        Ok(())
    }

    /// Adds the input gradient to `dinp`.
    pub fn rmsnorm_backward<T: Element>(
        &self,
        dinp: &View<T>,
        dout: &View<T>,
        inp: &View<T>,
        rstd: &View<f32>,
        channels: usize,
    ) -> Result<()> {
        let rows = row_count("rmsnorm input", inp.len(), channels)?;
        expect_len("rmsnorm input gradient", dinp.len(), inp.len())?;
        expect_len("rmsnorm output gradient", dout.len(), inp.len())?;
        expect_len("rmsnorm rstd", rstd.len(), rows)?;
        let kernel = self.typed::<T>(RMSNORM_BACKWARD)?;
        let (rows32, c32) = (int("rows", rows)?, int("channels", channels)?);
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(dinp)
            .buf(dout)
            .buf(inp)
            .buf(rstd)
            .int(&rows32)
            .int(&c32);
        // SAFETY: matches rmsnorm_backward_T; sizes checked above.
        unsafe { launch.launch(warp_per_row(rows)) }?;
        Ok(())
    }

    /// QK-norm: every q and k head of `qkv` (rows, 3·channels) RMS-normalised (eps 1e-6), v
    /// copied; `rstd` (rows, 2·heads) saves 1/rms of each q and k head.
    pub fn qk_norm_forward<T: Element>(
        &self,
        out: &View<T>,
        rstd: &View<f32>,
        qkv: &View<T>,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let rows = qk_norm_rows(qkv.len(), heads, channels)?;
        expect_len("qk-norm output", out.len(), qkv.len())?;
        expect_len("qk-norm rstd", rstd.len(), rows * 2 * heads)?;
        let kernel = self.typed::<T>(QK_NORM_FORWARD)?;
        let (rows32, heads32, c32) = (
            int("rows", rows)?,
            int("heads", heads)?,
            int("channels", channels)?,
        );
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(out)
            .buf(rstd)
            .buf(qkv)
            .int(&rows32)
            .int(&heads32)
            .int(&c32);
        // SAFETY: matches qk_norm_forward_T; one warp per head of each row, sizes checked.
        unsafe { launch.launch(warp_per_row(rows * 3 * heads)) }?;
        Ok(())
    }

    /// Overwrites `dqkv` with the input gradient of [`Kernels::qk_norm_forward`] (the v part is
    /// `dout`'s).
    pub fn qk_norm_backward<T: Element>(
        &self,
        dqkv: &View<T>,
        dout: &View<T>,
        qkv: &View<T>,
        rstd: &View<f32>,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let rows = qk_norm_rows(qkv.len(), heads, channels)?;
        expect_len("qk-norm input gradient", dqkv.len(), qkv.len())?;
        expect_len("qk-norm output gradient", dout.len(), qkv.len())?;
        expect_len("qk-norm rstd", rstd.len(), rows * 2 * heads)?;
        let kernel = self.typed::<T>(QK_NORM_BACKWARD)?;
        let (rows32, heads32, c32) = (
            int("rows", rows)?,
            int("heads", heads)?,
            int("channels", channels)?,
        );
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(dqkv)
            .buf(dout)
            .buf(qkv)
            .buf(rstd)
            .int(&rows32)
            .int(&heads32)
            .int(&c32);
        // SAFETY: matches qk_norm_backward_T; one warp per head of each row, sizes checked.
        unsafe { launch.launch(warp_per_row(rows * 3 * heads)) }?;
        Ok(())
    }

    /// Rotary embedding in place on the q and k parts of `qkv`, or with `inverse` the inverse
    /// rotation (the backward pass, on the gradient); `table` as for
    /// [`crate::backend::Backend::rope_forward`].
    pub fn rope<T: Element>(
        &self,
        qkv: &View<T>,
        table: &View<f32>,
        shape: AttentionShape,
        inverse: bool,
    ) -> Result<()> {
        let (c, heads) = (shape.channels, shape.heads);
        ensure!(
            heads > 0 && c.is_multiple_of(heads) && shape.head_dim().is_multiple_of(2),
            "rope needs heads of an even width: {c} channels in {heads} heads"
        );
        let hd = shape.head_dim();
        expect_len("rope qkv", qkv.len(), shape.rows() * 3 * c)?;
        ensure!(
            table.len().is_multiple_of(hd) && table.len() / hd >= shape.seq_len,
            "rope table of {} values does not cover {} positions of {hd}",
            table.len(),
            shape.seq_len
        );
        let kernel = self.typed::<T>(ROPE)?;
        let (rows64, seq32, c32, hd32) = (
            shape.rows() as i64,
            int("sequence length", shape.seq_len)?,
            int("channels", c)?,
            int("head width", hd)?,
        );
        let inverse = i32::from(inverse);
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(qkv)
            .buf(table)
            .long(&rows64)
            .int(&seq32)
            .int(&c32)
            .int(&hd32)
            .int(&inverse);
        // SAFETY: matches rope_T; one thread per rotated pair, sizes checked above.
        unsafe { launch.launch(elementwise(shape.rows() * c)) }?;
        Ok(())
    }

    /// `out[row] = table[tokens[row]] (+ positions[row % seq_len])`.
    pub fn embedding_forward<T: Element>(
        &self,
        out: &View<T>,
        tokens: &View<u32>,
        table: &View<f32>,
        positions: Option<&View<f32>>,
        seq_len: usize,
        channels: usize,
    ) -> Result<()> {
        let rows = tokens.len();
        expect_len("embedding output", out.len(), rows * channels)?;
        let vocab = row_count("embedding table", table.len(), channels)?;
        ensure!(
            seq_len > 0 && rows.is_multiple_of(seq_len),
            "{rows} tokens are not whole sequences of {seq_len}"
        );
        if let Some(positions) = positions {
            ensure!(
                positions.len() >= seq_len * channels,
                "position table shorter than the sequence"
            );
        }
        let kernel = self.typed::<T>(EMBEDDING_FORWARD)?;
        let (vocab32, seq32, rows64, c32) = (
            int("vocabulary", vocab)?,
            int("sequence length", seq_len)?,
            rows as i64,
            int("channels", channels)?,
        );
        let mut launch = kernel.args(&self.stream);
        launch.buf(out).buf(tokens).buf(table);
        match positions {
            Some(positions) => launch.buf(positions),
            None => launch.null(),
        };
        launch.int(&vocab32).int(&seq32).long(&rows64).int(&c32);
        // SAFETY: matches embedding_forward_T; sizes checked above, tokens outside the table
        // give NaN rows instead of out-of-bounds reads.
        unsafe { launch.launch(elementwise(rows * channels)) }?;
        Ok(())
    }

    /// Accumulates `dout` rows into the rows of `dtable` (and `dpositions`) they were read from,
    /// in row order: the host sorts the rows by token (`tokens` is the host copy of the ids).
    pub fn embedding_backward<T: Element>(
        &self,
        dtable: &View<f32>,
        dpositions: Option<&View<f32>>,
        dout: &View<T>,
        tokens: &[u32],
        scratch: &View<f32>,
        seq_len: usize,
        channels: usize,
    ) -> Result<()> {
        let rows = tokens.len();
        expect_len("embedding output gradient", dout.len(), rows * channels)?;
        let vocab = row_count("embedding table gradient", dtable.len(), channels)?;
        ensure!(
            seq_len > 0 && rows.is_multiple_of(seq_len),
            "{rows} tokens are not whole sequences of {seq_len}"
        );
        let buckets = bucket_rows(tokens, vocab)?;
        let c32 = int("channels", channels)?;
        if !buckets.token.is_empty() {
            // The buckets into the scratch back to back as 32-bit integers, in one upload (which
            // waits for the copy).
            ensure!(
                scratch.len() >= embedding_backward_scratch(rows),
                "embedding backward scratch of {} elements for {rows} tokens",
                scratch.len()
            );
            let (starts, tokens) = (buckets.start.len(), buckets.token.len());
            let packed: Vec<u32> = (buckets.order.iter().chain(&buckets.start))
                .map(|&i| i as u32)
                .chain(buckets.token.iter().copied())
                .collect();
            view::upload(
                &self.stream,
                scratch.slice(0, packed.len())?.cast::<u32>(),
                &packed,
            )?;
            let order = scratch.slice(0, rows)?.cast::<i32>();
            let start = scratch.slice(rows, starts)?.cast::<i32>();
            let token = scratch.slice(rows + starts, tokens)?.cast::<u32>();
            let kernel = self.typed::<T>(EMBEDDING_BACKWARD_TABLE)?;
            let mut launch = kernel.args(&self.stream);
            launch
                .buf(dtable)
                .buf(dout)
                .buf(&order)
                .buf(&start)
                .buf(&token)
                .int(&c32);
            let config = LaunchConfig {
                grid_dim: (
                    buckets.token.len() as u32,
                    channels.div_ceil(THREADS as usize) as u32,
                    1,
                ),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches embedding_backward_table_T; every bucket's token is inside the
            // table and every row index inside dout (bucket_rows checked both).
            unsafe { launch.launch(config) }?;
        }
        if let Some(dpositions) = dpositions {
            ensure!(
                dpositions.len() >= seq_len * channels,
                "position gradient shorter than the sequence"
            );
            let kernel = self.typed::<T>(EMBEDDING_BACKWARD_POSITIONS)?;
            let (batch32, seq32) = (
                int("batch", rows / seq_len)?,
                int("sequence length", seq_len)?,
            );
            let mut launch = kernel.args(&self.stream);
            launch
                .buf(dpositions)
                .buf(dout)
                .int(&batch32)
                .int(&seq32)
                .int(&c32);
            // SAFETY: matches embedding_backward_positions_T; one thread per (t, c).
            unsafe { launch.launch(elementwise_exact(seq_len * channels)) }?;
        }
        Ok(())
    }

    /// Softmax cross-entropy over the first `vocab` of `padded_vocab` logits per row, after the
    /// optional soft-cap; the loss of each row into `losses`, and with `grad_scale` the scaled
    /// gradient over the logits in place (see [`crate::backend::Backend::softmax_cross_entropy`]).
    /// `targets` is the host copy of the device's `targets_dev`, checked here so that a bad
    /// target is an error, not a NaN.
    pub fn softmax_cross_entropy<T: Element>(
        &self,
        logits: &View<T>,
        losses: &View<f32>,
        targets_dev: &View<u32>,
        targets: &[u32],
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let rows = targets.len();
        expect_len("cross-entropy targets", targets_dev.len(), rows)?;
        expect_len("cross-entropy logits", logits.len(), rows * padded_vocab)?;
        expect_len("cross-entropy losses", losses.len(), rows)?;
        ensure!(
            vocab > 0 && vocab <= padded_vocab,
            "vocabulary {vocab} empty or larger than its padding {padded_vocab}"
        );
        if let Some(&bad) = targets
            .iter()
            .find(|&&t| t != IGNORE_TARGET && t as usize >= vocab)
        {
            bail!("target token {bad} outside vocabulary {vocab}");
        }
        let cap = match softcap {
            Some(cap) if cap > 0.0 && cap.is_finite() => cap,
            Some(cap) => bail!("soft-cap {cap} must be positive and finite"),
            None => 0.0,
        };
        let kernel = self.typed::<T>(SOFTMAX_CROSS_ENTROPY)?;
        let (vocab32, padded32) = (
            int("vocabulary", vocab)?,
            int("padded vocabulary", padded_vocab)?,
        );
        let (scale, write_grad) = (grad_scale.unwrap_or(0.0), i32::from(grad_scale.is_some()));
        let mut launch = kernel.args(&self.stream);
        launch
            .buf(logits)
            .buf(losses)
            .buf(targets_dev)
            .int(&vocab32)
            .int(&padded32)
            .float(&cap)
            .float(&scale)
            .int(&write_grad);
        let config = LaunchConfig {
            grid_dim: (int("rows", rows)? as u32, 1, 1),
            block_dim: (LOSS_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        if rows > 0 {
            // SAFETY: matches softmax_cross_entropy_T; one block per row of padded_vocab logits.
            unsafe { launch.launch(config) }?;
        }
        Ok(())
    }

    /// One step of [`ElementwiseRule::Adam`] over a flat range, with the same float arithmetic
    /// for the step size and bias correction as the CPU rule; with `param_bf16` the new weights
    /// are also written there in bf16.
    pub fn adam_update(
        &self,
        rule: ElementwiseRule,
        param: &View<f32>,
        grad: &View<f32>,
        m: &View<f32>,
        v: &View<f32>,
        param_bf16: Option<&View<bf16>>,
    ) -> Result<()> {
        let ElementwiseRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decay,
            nesterov,
            step,
        } = rule
        else {
            bail!("adam_update runs the Adam rule, not {rule:?}");
        };
        let n = param.len();
        for (what, len) in [("gradient", grad.len()), ("m", m.len()), ("v", v.len())] {
            expect_len(&format!("Adam {what}"), len, n)?;
        }
        if let Some(copy) = &param_bf16 {
            expect_len("bf16 parameter copy", copy.len(), n)?;
        }
        let AdamStep {
            coupled,
            keep,
            step_size,
            bias2_sqrt,
        } = AdamStep::new(lr, beta1, beta2, weight_decay, decay, step);
        let (n64, nesterov) = (n as i64, i32::from(nesterov));
        let kernel = self.plain(ADAM_UPDATE)?;
        let mut launch = kernel.args(&self.stream);
        launch.buf(param).buf(grad).buf(m).buf(v);
        match param_bf16 {
            Some(copy) => launch.buf(copy),
            None => launch.null(),
        };
        launch
            .long(&n64)
            .float(&beta1)
            .float(&beta2)
            .float(&eps)
            .float(&coupled)
            .float(&keep)
            .float(&step_size)
            .float(&bias2_sqrt)
            .int(&nesterov);
        // SAFETY: matches adam_update; every buffer holds n elements (or the copy is null).
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// One step of any [`ElementwiseRule`] over a flat range, with `state`
    /// as [`ElementwiseRule::state_names`] orders it; with `param_bf16` the new weights are
    /// also written there in bf16. The rule's scalars go to the kernel as they are, so both
    /// sides compute from the same f32 values.
    pub fn elementwise_update(
        &self,
        rule: ElementwiseRule,
        param: &View<f32>,
        grad: &View<f32>,
        state: &[View<f32>],
        param_bf16: Option<&View<bf16>>,
    ) -> Result<()> {
        let names = rule.state_names();
        ensure!(
            state.len() == names.len(),
            "{rule:?} takes {} state tensors ({}), not {}",
            names.len(),
            names.join(", "),
            state.len()
        );
        let n = param.len();
        expect_len("optimizer gradient", grad.len(), n)?;
        for (name, s) in names.iter().zip(state.iter()) {
            expect_len(&format!("optimizer state {name}"), s.len(), n)?;
        }
        if let Some(copy) = &param_bf16 {
            expect_len("bf16 parameter copy", copy.len(), n)?;
        }
        let n64 = n as i64;
        match (rule, state) {
            (ElementwiseRule::Adam { .. }, [m, v]) => {
                self.adam_update(rule, param, grad, m, v, param_bf16)
            }
            (
                ElementwiseRule::Sgd {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay,
                    first_step,
                },
                state,
            ) => {
                // The buffer exists exactly when momentum ≠ 0 (checked above): null tells the
                // kernel to step without one.
                let buffer = state.first();
                let (nesterov, first_step) = (i32::from(nesterov), i32::from(first_step));
                let kernel = self.plain(SGD_UPDATE)?;
                let mut launch = kernel.args(&self.stream);
                launch
                    .buf(param)
                    .buf(grad)
                    .maybe(buffer)
                    .maybe(param_bf16)
                    .long(&n64)
                    .float(&lr)
                    .float(&momentum)
                    .float(&dampening)
                    .float(&weight_decay)
                    .int(&nesterov)
                    .int(&first_step);
                // SAFETY: matches sgd_update; every buffer holds n elements (or is null).
                unsafe { launch.launch(elementwise(n)) }
            }
            (
                ElementwiseRule::Adagrad {
                    lr,
                    eps,
                    weight_decay,
                },
                [sum],
            ) => {
                let kernel = self.plain(ADAGRAD_UPDATE)?;
                let mut launch = kernel.args(&self.stream);
                launch
                    .buf(param)
                    .buf(grad)
                    .buf(sum)
                    .maybe(param_bf16)
                    .long(&n64)
                    .float(&lr)
                    .float(&eps)
                    .float(&weight_decay);
                // SAFETY: matches adagrad_update; every buffer holds n elements (or is null).
                unsafe { launch.launch(elementwise(n)) }
            }
            (
                ElementwiseRule::Rmsprop {
                    lr,
                    alpha,
                    eps,
                    weight_decay,
                    momentum,
                    centered,
                },
                [square_avg, rest @ ..],
            ) => {
                // The optional averages in state_names' order: grad_avg if centered, then the
                // momentum buffer if momentum ≠ 0 (their count was checked above).
                let mut rest = rest.iter();
                let grad_avg = if centered { rest.next() } else { None };
                let buffer = if momentum != 0.0 { rest.next() } else { None };
                let kernel = self.plain(RMSPROP_UPDATE)?;
                let mut launch = kernel.args(&self.stream);
                launch
                    .buf(param)
                    .buf(grad)
                    .buf(square_avg)
                    .maybe(grad_avg)
                    .maybe(buffer)
                    .maybe(param_bf16)
                    .long(&n64)
                    .float(&lr)
                    .float(&alpha)
                    .float(&eps)
                    .float(&weight_decay)
                    .float(&momentum);
                // SAFETY: matches rmsprop_update; every buffer holds n elements (or is null).
                unsafe { launch.launch(elementwise(n)) }
            }
            (
                ElementwiseRule::Adadelta {
                    lr,
                    rho,
                    eps,
                    weight_decay,
                },
                [square_avg, acc_delta],
            ) => {
                let kernel = self.plain(ADADELTA_UPDATE)?;
                let mut launch = kernel.args(&self.stream);
                launch
                    .buf(param)
                    .buf(grad)
                    .buf(square_avg)
                    .buf(acc_delta)
                    .maybe(param_bf16)
                    .long(&n64)
                    .float(&lr)
                    .float(&rho)
                    .float(&eps)
                    .float(&weight_decay);
                // SAFETY: matches adadelta_update; every buffer holds n elements (or is null).
                unsafe { launch.launch(elementwise(n)) }
            }
            (
                ElementwiseRule::ScheduleFree {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    averaging,
                    bias2,
                },
                [z, v],
            ) => {
                // The CPU's y step, by the same formula.
                let y_step = lr * (beta1 * (1.0 - averaging) - 1.0);
                let kernel = self.plain(SCHEDULE_FREE_UPDATE)?;
                let mut launch = kernel.args(&self.stream);
                launch
                    .buf(param)
                    .buf(grad)
                    .buf(z)
                    .buf(v)
                    .maybe(param_bf16)
                    .long(&n64)
                    .float(&lr)
                    .float(&beta2)
                    .float(&eps)
                    .float(&weight_decay)
                    .float(&averaging)
                    .float(&bias2)
                    .float(&y_step);
                // SAFETY: matches schedule_free_update; every buffer holds n elements (or is
                // null).
                unsafe { launch.launch(elementwise(n)) }
            }
            // Unreachable after the state count check; an error rather than a panic all the same.
            (rule, state) => bail!("{rule:?} with {} state tensors", state.len()),
        }
    }

    /// `Σ x²` in a fixed order (the square of the global gradient norm).
    pub fn sum_squares(&self, x: &View<f32>) -> Result<f64> {
        self.reduce(SUM_SQUARES_PARTIAL, x)
    }

    /// `Σ x` in a fixed order (the losses of a batch).
    pub fn sum(&self, x: &View<f32>) -> Result<f64> {
        self.reduce(SUM_VALUES_PARTIAL, x)
    }

    /// A sum over `x` whose per-block partials `partial` computes, added in order in double.
    fn reduce(&self, partial: Kernel, x: &View<f32>) -> Result<f64> {
        let n = x.len();
        let blocks = n.div_ceil(THREADS as usize).clamp(1, SUM_BLOCKS);
        let (partials, total) = (View::of(&self.sum_partials), View::of(&self.sum_total));
        let kernel = self.plain(partial)?;
        let n64 = n as i64;
        let mut launch = kernel.args(&self.stream);
        launch.buf(&partials).buf(x).long(&n64);
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches sum_*_partial; partials holds one float per block.
        unsafe { launch.launch(config) }?;
        let kernel = self.plain(SUM_PARTIALS)?;
        let count = blocks as i32;
        let mut launch = kernel.args(&self.stream);
        launch.buf(&total).buf(&partials).int(&count);
        let one_thread = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches sum_partials; one thread reads `count` partials and writes one double.
        unsafe { launch.launch(one_thread) }?;
        Ok(view::download(&self.stream, total)?[0])
    }

    /// `x[m] ← (x[m]/(‖x[m]‖_F + eps))·scale` for each of the `count` equal parts of `x`.
    pub fn frobenius_normalize(
        &self,
        x: &View<f32>,
        count: usize,
        eps: f32,
        scale: f32,
    ) -> Result<()> {
        ensure!(count > 0, "no matrices to normalise");
        let size = row_count("normalised matrices", x.len(), count)?;
        let kernel = self.plain(FROBENIUS_NORMALIZE)?;
        let size64 = size as i64;
        let mut launch = kernel.args(&self.stream);
        launch.buf(x).long(&size64).float(&eps).float(&scale);
        let config = LaunchConfig {
            grid_dim: (
                u32::try_from(count).context("too many matrices for one launch")?,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches frobenius_normalize; one block per matrix of `size` floats, and x
        // holds count·size.
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}

/// The activations with a forward and a backward kernel in kernels/activation.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation.
    Gelu,
    /// relu(x)².
    Relu2,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Relu2 => "relu2",
        }
    }

    fn forward(self) -> Kernel {
        match self {
            Activation::Gelu => GELU_FORWARD,
            Activation::Relu2 => RELU2_FORWARD,
        }
    }

    fn backward(self) -> Kernel {
        match self {
            Activation::Gelu => GELU_BACKWARD,
            Activation::Relu2 => RELU2_BACKWARD,
        }
    }
}

/// The number of `channels`-wide rows in `len` elements.
pub(super) fn row_count(what: &str, len: usize, channels: usize) -> Result<usize> {
    ensure!(
        channels > 0 && len.is_multiple_of(channels),
        "{what}: {len} elements are not whole rows of {channels}"
    );
    Ok(len / channels)
}

/// The rows of a qkv tensor (rows, 3·channels) split into `heads` heads.
fn qk_norm_rows(len: usize, heads: usize, channels: usize) -> Result<usize> {
    ensure!(
        heads > 0 && channels.is_multiple_of(heads),
        "{channels} channels do not split into {heads} heads"
    );
    row_count("qk-norm input", len, 3 * channels)
}

/// One thread per element, for kernels without a grid-stride loop.
pub(super) fn elementwise_exact(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_bucketed_by_token_in_row_order() {
        let tokens = [3, 1, 3, 0, 1, 3];
        let buckets = bucket_rows(&tokens, 5).unwrap();
        assert_eq!(buckets.token, vec![0, 1, 3]);
        assert_eq!(buckets.start, vec![0, 1, 3, 6]);
        assert_eq!(buckets.order, vec![3, 1, 4, 0, 2, 5]);
    }

    #[test]
    fn a_token_outside_the_vocabulary_is_an_error() {
        let error = bucket_rows(&[0, 7], 5).unwrap_err().to_string();
        assert!(error.contains("token 7"), "{error}");
    }

    #[test]
    fn launch_shapes_cover_every_element() {
        for n in [1, 255, 256, 257, 1 << 20] {
            let config = elementwise_exact(n);
            assert!(config.grid_dim.0 as usize * THREADS as usize >= n);
        }
        // Eight rows per block, rounded up.
        assert_eq!(warp_per_row(17).grid_dim.0, 3);
    }
}
