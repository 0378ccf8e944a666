//! Flash attention (forward, backward, decode) against the CPU's dense attention, on the same
//! inputs. Sequence lengths are not multiples of the kernels' 32- or 64-row tiles. Heads of 64
//! take the tensor-core kernels in bf16 and the SIMT ones in f32; the other widths (16, 82,
//! 128) the SIMT kernels in both, with every block size their launchers choose (8, 4 and 2
//! warps).
//!
//! The backward pass takes the CPU forward pass's output (rounded to T, as the GPU stores it)
//! and log-sum-exp on both sides, so that it is compared on identical inputs; the forward pass
//! is compared on its own. Output buffers start as NaN, so an element a kernel fails to write
//! shows up as a NaN error.

use anyhow::Result;

use super::{Check, stored};
use crate::backend::AttentionShape;
use crate::backend::Backend;
use crate::backend::cuda::launch::{Element, Kernels};
use crate::backend::cuda::view::ViewOf;

/// (batch, seq_len, heads, channels).
const SHAPES: &[(usize, usize, usize, usize)] = &[
    // Heads of 16: eight warps per block, two query tiles, the second partial.
    (2, 61, 3, 48),
    // Heads of 64, the models' width (tensor cores in bf16): two and three key tiles of 64.
    (2, 100, 2, 128),
    (1, 150, 3, 192),
    // Heads of 82: not a multiple of the warp, so some lanes own fewer dimensions.
    (1, 45, 4, 328),
    // Heads of 128: four warps per block in the forward pass, two in the backward.
    (1, 70, 2, 256),
];

/// Cached positions for the decode check: more than the kernel's four warps, and fewer.
const DECODE_LENGTHS: &[usize] = &[61, 3];

impl Check<'_> {
    pub(super) fn attention<T: Element>(&mut self) -> Result<()> {
        for &(batch, seq_len, heads, channels) in SHAPES {
            let shape = AttentionShape {
                batch,
                seq_len,
                heads,
                channels,
            };
            self.flash_attention::<T>(shape)?;
        }
        for &(heads, channels) in &[(3, 48), (2, 128), (2, 256)] {
            for &len in DECODE_LENGTHS {
                self.decode::<T>(heads, channels, len)?;
            }
        }
        Ok(())
    }

    fn flash_attention<T: Element>(&mut self, shape: AttentionShape) -> Result<()> {
        let (rows, c) = (shape.rows(), shape.channels);
        let lse_len = shape.batch * shape.heads * shape.seq_len;
        let name = format!(
            "{}×{}, {} heads of {}",
            shape.batch,
            shape.seq_len,
            shape.heads,
            shape.head_dim()
        );
        let qkv = self.random::<T>(rows * 3 * c, 1.0);
        let dout = self.random::<T>(rows * c, 1.0);
        let (gqkv, gdout) = (self.up::<T>(&qkv)?, self.up::<T>(&dout)?);
        let out = self.up::<T>(&vec![f32::NAN; rows * c])?;
        let lse = self.up::<f32>(&vec![f32::NAN; lse_len])?;
        self.kernels
            .attention_forward(&out.view(), &lse.view(), &gqkv.view(), shape)?;

        let (cqkv, cdout) = (self.tensor(&qkv)?, self.tensor(&dout)?);
        let cout = self.tensor(&vec![0.0; rows * c])?;
        let clse = self.tensor(&vec![0.0; lse_len])?;
        self.cpu.attention_forward(cout, clse, cqkv, shape)?;
        let gpu = self.down(&out)?;
        self.compare(
            &format!("attention_forward {name}"),
            "out",
            T::NAME,
            &gpu,
            cout,
        )?;
        let gpu = self.down(&lse)?;
        self.compare(
            &format!("attention_forward {name}"),
            "lse",
            "f32",
            &gpu,
            clse,
        )?;

        // The backward pass from the CPU's output (as T stores it) and log-sum-exp, on both sides.
        let ref_out = stored::<T>(&self.cpu.read(cout)?);
        let ref_lse = self.cpu.read(clse)?;
        let (gout, glse) = (self.up::<T>(&ref_out)?, self.up::<f32>(&ref_lse)?);
        let scratch =
            self.up::<f32>(&vec![f32::NAN; Kernels::attention_backward_scratch(shape)])?;
        let dqkv = self.up::<T>(&vec![f32::NAN; rows * 3 * c])?;
        self.kernels.attention_backward(
            &dqkv.view(),
            &gdout.view(),
            &gqkv.view(),
            &gout.view(),
            &glse.view(),
            &scratch.view(),
            shape,
        )?;
        let (cout, clse) = (self.tensor(&ref_out)?, self.tensor(&ref_lse)?);
        let cdqkv = self.tensor(&vec![0.0; rows * 3 * c])?;
        self.cpu
            .attention_backward(cdqkv, cdout, cqkv, cout, clse, shape)?;
        let gpu = self.down(&dqkv)?;
        self.compare(
            &format!("attention_backward {name}"),
            "dqkv",
            T::NAME,
            &gpu,
            cdqkv,
        )
    }

    fn decode<T: Element>(&mut self, heads: usize, channels: usize, len: usize) -> Result<()> {
        let qkv = self.random::<T>(3 * channels, 1.0);
        let keys = self.random::<T>(len * channels, 1.0);
        let values = self.random::<T>(len * channels, 1.0);
        let (gqkv, gkeys, gvalues) = (
            self.up::<T>(&qkv)?,
            self.up::<T>(&keys)?,
            self.up::<T>(&values)?,
        );
        let out = self.up::<T>(&vec![f32::NAN; channels])?;
        self.kernels.attention_decode(
            &out.view(),
            &gqkv.view(),
            &gkeys.view(),
            &gvalues.view(),
            heads,
            channels,
        )?;
        let (cqkv, ckeys, cvalues) = (
            self.tensor(&qkv)?,
            self.tensor(&keys)?,
            self.tensor(&values)?,
        );
        let cout = self.tensor(&vec![0.0; channels])?;
        self.cpu
            .attention_decode(cout, cqkv, ckeys, cvalues, heads, channels)?;
        let gpu = self.down(&out)?;
        let kernel = format!(
            "attention_decode {len} cached, {heads} heads of {}",
            channels / heads
        );
        self.compare(&kernel, "out", T::NAME, &gpu, cout)
    }
}
