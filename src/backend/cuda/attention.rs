//! Launchers of kernels/attention.cu: causal flash attention forward and backward, and the
//! decode step over a key/value cache. Semantics are those of
//! [`crate::backend::Backend::attention_forward`], `attention_backward` and `attention_decode`.
//!
//! Two implementations: for bf16 heads of 64 (the models' width) whose tensors are 4-byte
//! aligned, kernels whose products run on tensor cores (`mma.sync` m16n8k16, blocks of 4 warps
//! on 64-row tiles); for everything else, SIMT kernels. Each SIMT block has 2, 4 or 8 warps,
//! each owning 4 rows of the tile the block keeps: the most warps whose shared-memory tiles
//! (float) fit the 48 KiB a block may use without opting in, for the given head width (8 for
//! heads up to 64 wide, fewer above).

use anyhow::{Result, ensure};
use cudarc::driver::LaunchConfig;

use super::kernels::Param::{B32, B64};
use super::launch::{Element, Kernel, Kernels, expect_len, int, plain, typed, warp_per_row};
use super::view::View;
use crate::backend::AttentionShape;

/// The widest head the kernels support (each lane owns at most 4 of a head's dimensions).
pub const MAX_HEAD_DIM: usize = 128;
/// Rows of a block's own tile per warp, and rows of the tile that streams past (one per lane):
/// ATTN_ROWS_PER_WARP and ATTN_TILE in attention.cu.
const ROWS_PER_WARP: usize = 4;
const TILE: usize = 32;
/// Shared memory a block may use without opting in to more.
const SHARED_LIMIT: usize = 48 << 10;
/// Warps per block of the decode kernel.
const DECODE_WARPS: usize = 4;
/// The head width of the tensor-core kernels, their rows per tile and warps per block
/// (MMA_D, MMA_TILE and MMA_WARPS in attention.cu).
const MMA_HEAD_DIM: usize = 64;
const MMA_TILE: usize = 64;
const MMA_WARPS: u32 = 4;

const FORWARD: Kernel = typed(
    "attention.cu",
    "attention_forward",
    &[B64, B64, B64, B32, B32, B32, B32],
);
const BACKWARD_PREPROCESS: Kernel = typed(
    "attention.cu",
    "attention_backward_preprocess",
    &[B64, B64, B64, B32, B32, B32, B32, B32],
);
const BACKWARD_DKV: Kernel = typed(
    "attention.cu",
    "attention_backward_dkv",
    &[B64, B64, B64, B64, B64, B32, B32, B32, B32],
);
const BACKWARD_DQ: Kernel = typed(
    "attention.cu",
    "attention_backward_dq",
    &[B64, B64, B64, B64, B64, B32, B32, B32, B32],
);
const DECODE: Kernel = typed(
    "attention.cu",
    "attention_decode",
    &[B64, B64, B64, B64, B32, B32, B32],
);

const FORWARD_MMA: Kernel = plain(
    "attention.cu",
    "attention_forward_mma",
    &[B64, B64, B64, B32, B32, B32],
);
const BACKWARD_DKV_MMA: Kernel = plain(
    "attention.cu",
    "attention_backward_dkv_mma",
    &[B64, B64, B64, B64, B64, B32, B32, B32],
);
const BACKWARD_DQ_MMA: Kernel = plain(
    "attention.cu",
    "attention_backward_dq_mma",
    &[B64, B64, B64, B64, B64, B32, B32, B32],
);

/// The kernels whose launchers are in this file.
pub(super) const KERNELS: &[Kernel] = &[
    FORWARD,
    BACKWARD_PREPROCESS,
    BACKWARD_DKV,
    BACKWARD_DQ,
    DECODE,
    FORWARD_MMA,
    BACKWARD_DKV_MMA,
    BACKWARD_DQ_MMA,
];

/// Whether the tensor-core kernels take this launch: bf16 heads of 64, and every tensor
/// 4-byte aligned (they move pairs of bf16 as one 32-bit word; every offset they add is even).
fn tensor_cores<T: Element>(d: usize, addresses: &[u64]) -> bool {
    T::NAME == "bf16" && d == MMA_HEAD_DIM && addresses.iter().all(|a| a % 4 == 0)
}

/// The tensor-core kernels' launch: 64-row tiles of each of `heads` (batch·heads) heads, 4
/// warps, static shared memory only.
fn mma_config(seq_len: usize, heads: usize) -> Result<LaunchConfig> {
    ensure!(
        heads <= 65535,
        "attention over {heads} (sequence, head) pairs: at most 65535 fit a launch"
    );
    Ok(LaunchConfig {
        grid_dim: (seq_len.div_ceil(MMA_TILE) as u32, heads as u32, 1),
        block_dim: (32 * MMA_WARPS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The floats of shared memory each tiled kernel needs, for a block's own tile of `rows` rows
/// and heads `d` wide (the layouts commented in attention.cu).
#[derive(Clone, Copy)]
enum Tiling {
    /// Q rows×D | K 32×(D+1) | V 32×D.
    Forward,
    /// K rows×D | V rows×D | Q 32×(D+1) | dO 32×(D+1).
    KeysValues,
    /// Q rows×D | dO rows×D | K 32×(D+1) | V 32×(D+1).
    Queries,
}

impl Tiling {
    fn floats(self, rows: usize, d: usize) -> usize {
        match self {
            Tiling::Forward => rows * d + TILE * (d + 1) + TILE * d,
            Tiling::KeysValues | Tiling::Queries => 2 * rows * d + 2 * TILE * (d + 1),
        }
    }

    /// The launch over `tiles` tiles of each of `heads` (batch·heads) heads: the most warps
    /// (8, 4, 2) whose tiles fit the shared memory. With heads at most [`MAX_HEAD_DIM`] wide, two
    /// warps always fit.
    fn config(self, seq_len: usize, heads: usize, d: usize) -> Result<LaunchConfig> {
        let warps = [8, 4, 2]
            .into_iter()
            .find(|&w| self.floats(w * ROWS_PER_WARP, d) * 4 <= SHARED_LIMIT)
            .expect("two warps fit any head up to MAX_HEAD_DIM");
        let rows = warps * ROWS_PER_WARP;
        ensure!(
            heads <= 65535,
            "attention over {heads} (sequence, head) pairs: at most 65535 fit a launch"
        );
        Ok(LaunchConfig {
            grid_dim: (seq_len.div_ceil(rows) as u32, heads as u32, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: (self.floats(rows, d) * 4) as u32,
        })
    }
}

/// Checks the head layout and returns the head width.
fn head_dim(what: &str, heads: usize, channels: usize) -> Result<usize> {
    ensure!(
        heads > 0 && channels.is_multiple_of(heads),
        "{what}: {channels} channels do not split into {heads} heads"
    );
    let d = channels / heads;
    ensure!(
        (1..=MAX_HEAD_DIM).contains(&d),
        "{what}: heads of {d} dimensions; the attention kernels support 1 to {MAX_HEAD_DIM}"
    );
    Ok(d)
}

/// The kernels' int arguments for `shape`: sequence length, heads, channels, head width.
fn shape_ints(shape: &AttentionShape) -> Result<[i32; 4]> {
    Ok([
        int("sequence length", shape.seq_len)?,
        int("heads", shape.heads)?,
        int("channels", shape.channels)?,
        int("head width", shape.head_dim())?,
    ])
}

impl Kernels {
    /// Causal attention over `qkv` (rows, 3·channels), writing `out` (rows, channels) and the
    /// log-sum-exp of every scaled score row into `lse` (batch, heads, seq_len).
    pub fn attention_forward<T: Element>(
        &self,
        out: &View<T>,
        lse: &View<f32>,
        qkv: &View<T>,
        shape: AttentionShape,
    ) -> Result<()> {
        let d = head_dim("attention forward", shape.heads, shape.channels)?;
        let (rows, c) = (shape.rows(), shape.channels);
        expect_len("attention qkv", qkv.len(), rows * 3 * c)?;
        expect_len("attention output", out.len(), rows * c)?;
        expect_len(
            "attention log-sum-exp",
            lse.len(),
            shape.batch * shape.heads * shape.seq_len,
        )?;
        let bh = shape.batch * shape.heads;
        let [seq, heads, channels, width] = shape_ints(&shape)?;
        if tensor_cores::<T>(d, &[out.address(), qkv.address()]) {
            let kernel = self.plain(FORWARD_MMA)?;
            let mut launch = kernel.args(self.stream());
            launch
                .buf(out)
                .buf(lse)
                .buf(qkv)
                .int(&seq)
                .int(&heads)
                .int(&channels);
            // SAFETY: matches attention_forward_mma (bf16, heads of 64: T is bf16 and d is 64,
            // checked by tensor_cores); qkv, out and lse hold the shape's elements (checked
            // above) and are 4-byte aligned; the grid covers seq_len in 64-row tiles and
            // batch·heads heads.
            return unsafe { launch.launch(mma_config(shape.seq_len, bh)?) };
        }
        let config = Tiling::Forward.config(shape.seq_len, bh, d)?;
        let kernel = self.typed::<T>(FORWARD)?;
        let mut launch = kernel.args(self.stream());
        launch
            .buf(out)
            .buf(lse)
            .buf(qkv)
            .int(&seq)
            .int(&heads)
            .int(&channels)
            .int(&width);
        // SAFETY: matches attention_forward_T; qkv, out and lse hold the shape's elements
        // (checked above), the grid covers seq_len in tiles of the block's rows and batch·heads
        // heads, and the shared memory is the kernel's layout for this block size.
        unsafe { launch.launch(config) }?;
        Ok(())
    }

    /// f32 scratch elements the backward needs (the backend preallocates it once; nothing may
    /// be allocated per call): one value per (batch, head, position).
    pub fn attention_backward_scratch(shape: AttentionShape) -> usize {
        shape.batch * shape.heads * shape.seq_len
    }

    /// Overwrites `dqkv` with the gradient of the attention whose output `out` and log-sum-exp
    /// `lse` the forward pass wrote, given the output gradient `dout`. `scratch` holds at least
    /// [`Kernels::attention_backward_scratch`] floats.
    pub fn attention_backward<T: Element>(
        &self,
        dqkv: &View<T>,
        dout: &View<T>,
        qkv: &View<T>,
        out: &View<T>,
        lse: &View<f32>,
        scratch: &View<f32>,
        shape: AttentionShape,
    ) -> Result<()> {
        let d = head_dim("attention backward", shape.heads, shape.channels)?;
        let (rows, c) = (shape.rows(), shape.channels);
        let count = Self::attention_backward_scratch(shape);
        expect_len("attention qkv", qkv.len(), rows * 3 * c)?;
        expect_len("attention qkv gradient", dqkv.len(), rows * 3 * c)?;
        expect_len("attention output", out.len(), rows * c)?;
        expect_len("attention output gradient", dout.len(), rows * c)?;
        expect_len("attention log-sum-exp", lse.len(), count)?;
        ensure!(
            scratch.len() >= count,
            "attention backward scratch: {} floats where the shape needs {count}",
            scratch.len()
        );
        let dvec = scratch.slice(0, count)?;
        let [seq, heads, channels, width] = shape_ints(&shape)?;
        let count32 = int("attention rows of all heads", count)?;
        let bh = shape.batch * shape.heads;

        let kernel = self.typed::<T>(BACKWARD_PREPROCESS)?;
        let mut launch = kernel.args(self.stream());
        launch
            .buf(&dvec)
            .buf(dout)
            .buf(out)
            .int(&count32)
            .int(&seq)
            .int(&heads)
            .int(&channels)
            .int(&width);
        // SAFETY: matches attention_backward_preprocess_T; one warp per (batch, head, position),
        // `count` of them, dvec holds count floats, dout and out the shape's elements.
        unsafe { launch.launch(warp_per_row(count)) }?;

        if tensor_cores::<T>(d, &[dqkv.address(), dout.address(), qkv.address()]) {
            for tiled in [BACKWARD_DKV_MMA, BACKWARD_DQ_MMA] {
                let kernel = self.plain(tiled)?;
                let mut launch = kernel.args(self.stream());
                launch
                    .buf(dqkv)
                    .buf(dout)
                    .buf(qkv)
                    .buf(lse)
                    .buf(&dvec)
                    .int(&seq)
                    .int(&heads)
                    .int(&channels);
                // SAFETY: matches attention_backward_{dkv,dq}_mma (bf16, heads of 64: checked
                // by tensor_cores); every buffer holds the shape's elements (checked above),
                // the bf16 ones 4-byte aligned; the grid covers seq_len in 64-row tiles and
                // batch·heads heads. The dK/dV kernel writes only the k and v parts of dqkv and
                // the dQ kernel only the q part.
                unsafe { launch.launch(mma_config(shape.seq_len, bh)?) }?;
            }
            return Ok(());
        }
        for (tiled, tiling) in [
            (BACKWARD_DKV, Tiling::KeysValues),
            (BACKWARD_DQ, Tiling::Queries),
        ] {
            let config = tiling.config(shape.seq_len, bh, d)?;
            let kernel = self.typed::<T>(tiled)?;
            let mut launch = kernel.args(self.stream());
            launch
                .buf(dqkv)
                .buf(dout)
                .buf(qkv)
                .buf(lse)
                .buf(&dvec)
                .int(&seq)
                .int(&heads)
                .int(&channels)
                .int(&width);
            // SAFETY: matches attention_backward_{dkv,dq}_T; every buffer holds the shape's
            // elements (checked above), the grid covers seq_len in tiles of the block's rows
            // and batch·heads heads, the shared memory is the kernel's layout for this block
            // size. The dK/dV kernel writes only the k and v parts of dqkv and the dQ kernel
            // only the q part.
            unsafe { launch.launch(config) }?;
        }
        Ok(())
    }

    /// Attention of one new position (the q part of the 3·channels-wide `qkv` row) over the
    /// `len` cached rows of `keys` and `values` (len, channels), writing the `channels`-wide
    /// `out`.
    pub fn attention_decode<T: Element>(
        &self,
        out: &View<T>,
        qkv: &View<T>,
        keys: &View<T>,
        values: &View<T>,
        heads: usize,
        channels: usize,
    ) -> Result<()> {
        let d = head_dim("attention decode", heads, channels)?;
        expect_len("decode qkv row", qkv.len(), 3 * channels)?;
        expect_len("decode output", out.len(), channels)?;
        ensure!(
            keys.len().is_multiple_of(channels) && !keys.is_empty(),
            "decode keys: {} elements are not one or more rows of {channels}",
            keys.len()
        );
        expect_len("decode values", values.len(), keys.len())?;
        let len = int("decode cache length", keys.len() / channels)?;
        let (c32, d32) = (int("channels", channels)?, int("head width", d)?);
        let kernel = self.typed::<T>(DECODE)?;
        let mut launch = kernel.args(self.stream());
        launch
            .buf(out)
            .buf(qkv)
            .buf(keys)
            .buf(values)
            .int(&len)
            .int(&c32)
            .int(&d32);
        let config = LaunchConfig {
            grid_dim: (heads as u32, 1, 1),
            block_dim: (32 * DECODE_WARPS as u32, 1, 1),
            shared_mem_bytes: (DECODE_WARPS * (d + 2) * 4) as u32,
        };
        // SAFETY: matches attention_decode_T; one block per head, out and qkv hold a row of
        // the channels, keys and values len rows; shared memory is warps·(D + 2) floats.
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_head_width_fits_the_shared_memory() {
        for tiling in [Tiling::Forward, Tiling::KeysValues, Tiling::Queries] {
            for d in 1..=MAX_HEAD_DIM {
                let config = tiling.config(100, 6, d).unwrap();
                assert!(config.shared_mem_bytes as usize <= SHARED_LIMIT);
                let warps = config.block_dim.0 as usize / 32;
                // The kernels need the block's rows to divide the streamed tile.
                assert!(TILE.is_multiple_of(warps * ROWS_PER_WARP));
                if d <= 64 {
                    assert_eq!(warps, 8, "{d}");
                }
            }
        }
    }

    #[test]
    fn heads_wider_than_supported_are_refused_with_the_limit() {
        let error = head_dim("attention forward", 1, 256)
            .unwrap_err()
            .to_string();
        assert!(error.contains("1 to 128"), "{error}");
        assert!(head_dim("attention forward", 3, 100).is_err());
        assert_eq!(head_dim("attention forward", 12, 768).unwrap(), 64);
    }
}
