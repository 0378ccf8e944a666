//! Launchers for kernels/precondition.cu: the element-wise and layout work of the matrix
//! preconditioners (Shampoo, SOAP) besides their matrix products and the cuSOLVER calls of
//! solver.rs, and the conversions and column permutations solver.rs puts around those calls.

use anyhow::{Context, Result, ensure};
use cudarc::driver::LaunchConfig;

use super::kernels::Param::{B32, B64, F32};
use super::launch::{Kernel, Kernels, THREADS, elementwise, expect_len, int, plain, row_count};
use super::view::View;
use crate::backend::BlockLayout;

const ADAM_DIRECTION: Kernel = plain(
    "precondition.cu",
    "adam_direction",
    &[B64, B64, B64, B64, B64, F32, F32, F32, F32, F32],
);
const MATCH_NORMS: Kernel = plain("precondition.cu", "match_norms", &[B64, B64, B64]);
const TILES: &[super::kernels::Param] = &[B64, B64, B64, B32, B32, B32, B32, B32, B32, B32, B32];
const PACK_TILES: Kernel = plain("precondition.cu", "pack_tiles", TILES);
const UNPACK_TILES: Kernel = plain("precondition.cu", "unpack_tiles", TILES);
const SCALE_EIGENVECTORS: Kernel = plain(
    "precondition.cu",
    "scale_eigenvectors",
    &[B64, B64, B64, B32, B64, F32, F32],
);
const WIDEN: Kernel = plain("precondition.cu", "widen", &[B64, B64, B64]);
const NARROW: Kernel = plain("precondition.cu", "narrow", &[B64, B64, B64]);
const NARROW_TRANSPOSED: Kernel = plain("precondition.cu", "narrow_transposed", &[B64, B64, B32]);
const GATHER_COLUMNS: Kernel = plain("precondition.cu", "gather_columns", &[B64, B64, B64, B32]);
const SCATTER_COLUMNS: Kernel = plain("precondition.cu", "scatter_columns", &[B64, B64, B64, B32]);
const COLUMN_SCORES: Kernel = plain(
    "precondition.cu",
    "column_scores",
    &[B64, B64, B64, B32, B64],
);

/// The kernels whose launchers are in this file.
pub(super) const KERNELS: &[Kernel] = &[
    ADAM_DIRECTION,
    MATCH_NORMS,
    PACK_TILES,
    UNPACK_TILES,
    SCALE_EIGENVECTORS,
    WIDEN,
    NARROW,
    NARROW_TRANSPOSED,
    GATHER_COLUMNS,
    SCATTER_COLUMNS,
    COLUMN_SCORES,
];

/// The elements of `batch` square `n × n` matrices, or an error where a kernel's int cannot
/// hold `n`.
fn square(what: &str, n: usize, batch: usize) -> Result<usize> {
    int(what, n)?;
    n.checked_mul(n)
        .and_then(|nn| nn.checked_mul(batch))
        .with_context(|| format!("{batch} {what} of {n} × {n} overflow"))
}

impl Kernels {
    /// The Adam direction (see [`crate::backend::Backend::adam_direction`]), with the bias
    /// corrections computed in f32 as the CPU computes them.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_direction(
        &self,
        out: &View<f32>,
        grad: &View<f32>,
        m: &View<f32>,
        v: &View<f32>,
        beta1: f32,
        beta2: f32,
        eps: f32,
        step: u32,
    ) -> Result<()> {
        let n = out.len();
        expect_len("Adam direction gradient", grad.len(), n)?;
        expect_len("Adam direction m", m.len(), n)?;
        expect_len("Adam direction v", v.len(), n)?;
        let step = i32::try_from(step).context("Adam step beyond i32")?;
        let bias1 = 1.0 - beta1.powi(step);
        let bias2_sqrt = (1.0 - beta2.powi(step)).sqrt();
        let prepared = self.plain(ADAM_DIRECTION)?;
        let n64 = n as i64;
        let mut launch = prepared.args(self.stream());
        launch
            .buf(out)
            .buf(grad)
            .buf(m)
            .buf(v)
            .long(&n64)
            .float(&beta1)
            .float(&beta2)
            .float(&eps)
            .float(&bias1)
            .float(&bias2_sqrt);
        // SAFETY: matches adam_direction; all four hold n floats.
        unsafe { launch.launch(elementwise(n)) }
    }

    /// `x ← x·‖target‖/(‖x‖ + 1e-16)` for each of the `batch` equal parts.
    pub fn match_norms(&self, x: &View<f32>, target: &View<f32>, batch: usize) -> Result<()> {
        ensure!(batch > 0, "match_norms over no parts");
        expect_len("match_norms target", target.len(), x.len())?;
        let size = row_count("match_norms operand", x.len(), batch)?;
        let prepared = self.plain(MATCH_NORMS)?;
        let size64 = size as i64;
        let mut launch = prepared.args(self.stream());
        launch.buf(x).buf(target).long(&size64);
        let config = LaunchConfig {
            grid_dim: (
                u32::try_from(batch).context("too many parts for one launch")?,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches match_norms; one block per part of `size` floats, both hold
        // batch·size.
        unsafe { launch.launch(config) }
    }

    /// Matrices into their packed tiles ([`BlockLayout`]), one launch per tile shape.
    pub fn pack_blocks(
        &self,
        blocks: &View<f32>,
        matrices: &View<f32>,
        layout: BlockLayout,
    ) -> Result<()> {
        self.tiles(PACK_TILES, blocks, matrices, layout)
    }

    /// The inverse of [`Kernels::pack_blocks`].
    pub fn unpack_blocks(
        &self,
        matrices: &View<f32>,
        blocks: &View<f32>,
        layout: BlockLayout,
    ) -> Result<()> {
        self.tiles(UNPACK_TILES, matrices, blocks, layout)
    }

    /// `kernel` (pack_tiles or unpack_tiles) over every tile set; its first two arguments are
    /// the packed blocks and the matrices, in the kernel's order.
    fn tiles(
        &self,
        kernel: Kernel,
        first: &View<f32>,
        second: &View<f32>,
        layout: BlockLayout,
    ) -> Result<()> {
        ensure!(layout.block > 0, "tiles of size 0");
        expect_len("packed blocks", first.len(), layout.elements())?;
        expect_len("blocked matrices", second.len(), layout.elements())?;
        let (rows, cols) = (int("rows", layout.rows)?, int("columns", layout.cols)?);
        let packs = kernel.name == PACK_TILES.name;
        for set in layout.tile_sets() {
            // The set's part of the packed form; the matrices are indexed whole.
            let (blocks, matrices) = if packs {
                (first.slice(set.offset, set.elements())?, *second)
            } else {
                (second.slice(set.offset, set.elements())?, *first)
            };
            let n64 = set.elements() as i64;
            let shape = [
                int("tile rows", set.rows)?,
                int("tile columns", set.cols)?,
                int("tile grid rows", set.grid.0)?,
                int("tile grid columns", set.grid.1)?,
                int("first tile row", set.origin.0)?,
                int("first tile column", set.origin.1)?,
            ];
            let prepared = self.plain(kernel)?;
            let mut launch = prepared.args(self.stream());
            if packs {
                launch.buf(&blocks).buf(&matrices);
            } else {
                launch.buf(&matrices).buf(&blocks);
            }
            launch.long(&n64).int(&rows).int(&cols);
            for value in &shape {
                launch.int(value);
            }
            // SAFETY: matches pack_tiles / unpack_tiles; `blocks` holds the set's elements, and
            // every index the kernel computes lies inside the layout's matrices (the sets tile
            // them exactly).
            unsafe { launch.launch(elementwise(set.elements())) }?;
        }
        Ok(())
    }

    /// `out = V·diag((max(λ, 0) + eps)^exponent)` per matrix
    /// (see [`crate::backend::Backend::scale_eigenvectors`]).
    #[allow(clippy::too_many_arguments)]
    pub fn scale_eigenvectors(
        &self,
        out: &View<f32>,
        vectors: &View<f32>,
        values: &View<f32>,
        n: usize,
        batch: usize,
        exponent: f32,
        eps: f32,
    ) -> Result<()> {
        let len = square("eigenvector matrices", n, batch)?;
        expect_len("scaled eigenvectors", out.len(), len)?;
        expect_len("eigenvectors", vectors.len(), len)?;
        expect_len("eigenvalues", values.len(), batch * n)?;
        if len == 0 {
            return Ok(());
        }
        let prepared = self.plain(SCALE_EIGENVECTORS)?;
        let (n32, count) = (n as i32, batch as i64);
        let mut launch = prepared.args(self.stream());
        launch
            .buf(out)
            .buf(vectors)
            .buf(values)
            .int(&n32)
            .long(&count)
            .float(&exponent)
            .float(&eps);
        // SAFETY: matches scale_eigenvectors; out and vectors hold batch·n·n floats, values
        // batch·n.
        unsafe { launch.launch(elementwise(len)) }
    }

    /// `out ← in` widened to f64.
    pub fn widen(&self, out: &View<f64>, inp: &View<f32>) -> Result<()> {
        expect_len("widened copy", out.len(), inp.len())?;
        self.convert_f64(WIDEN, out, inp, out.len())
    }

    /// `out ← in` rounded to f32.
    pub fn narrow(&self, out: &View<f32>, inp: &View<f64>) -> Result<()> {
        expect_len("narrowed copy", out.len(), inp.len())?;
        self.convert_f64(NARROW, out, inp, out.len())
    }

    fn convert_f64<O, I>(
        &self,
        kernel: Kernel,
        out: &View<O>,
        inp: &View<I>,
        n: usize,
    ) -> Result<()> {
        let prepared = self.plain(kernel)?;
        let n64 = n as i64;
        let mut launch = prepared.args(self.stream());
        launch.buf(out).buf(inp).long(&n64);
        // SAFETY: matches widen / narrow(Out*, const In*, i64); both hold n elements.
        unsafe { launch.launch(elementwise(n)) }
    }

    /// The column-major f64 `n × n` matrix `inp` as row-major f32 with the same columns.
    pub fn narrow_transposed(&self, out: &View<f32>, inp: &View<f64>, n: usize) -> Result<()> {
        let len = square("matrix", n, 1)?;
        expect_len("row-major matrix", out.len(), len)?;
        expect_len("column-major matrix", inp.len(), len)?;
        let prepared = self.plain(NARROW_TRANSPOSED)?;
        let n32 = n as i32;
        let mut launch = prepared.args(self.stream());
        launch.buf(out).buf(inp).int(&n32);
        // SAFETY: matches narrow_transposed; both hold n·n elements.
        unsafe { launch.launch(elementwise(len)) }
    }

    /// The row-major f32 `n × n` matrix `inp`, columns taken in `order` (none: as they are), as
    /// a column-major f64 matrix.
    pub fn gather_columns(
        &self,
        out: &View<f64>,
        inp: &View<f32>,
        order: Option<&View<i32>>,
        n: usize,
    ) -> Result<()> {
        self.permute_columns(GATHER_COLUMNS, out, inp, order, n)
    }

    /// The inverse of [`Kernels::gather_columns`]: column k of the column-major `inp` to column
    /// `order[k]` of the row-major `out`.
    pub fn scatter_columns(
        &self,
        out: &View<f32>,
        inp: &View<f64>,
        order: Option<&View<i32>>,
        n: usize,
    ) -> Result<()> {
        self.permute_columns(SCATTER_COLUMNS, out, inp, order, n)
    }

    fn permute_columns<O, I>(
        &self,
        kernel: Kernel,
        out: &View<O>,
        inp: &View<I>,
        order: Option<&View<i32>>,
        n: usize,
    ) -> Result<()> {
        let len = square("matrix", n, 1)?;
        expect_len("permuted matrix", out.len(), len)?;
        expect_len("matrix to permute", inp.len(), len)?;
        if let Some(order) = order {
            // The caller's order must be a permutation of 0..n: it comes from a sort (solver.rs).
            expect_len("column order", order.len(), n)?;
        }
        let prepared = self.plain(kernel)?;
        let n32 = n as i32;
        let mut launch = prepared.args(self.stream());
        launch.buf(out).buf(inp).maybe(order).int(&n32);
        // SAFETY: matches gather_columns / scatter_columns; both matrices hold n·n elements
        // and `order`, where present, n column indices below n.
        unsafe { launch.launch(elementwise(len)) }
    }

    /// `scores[b·n + j] = ⟨rank_by_j, a_j⟩` for the columns of `batch` row-major `n × n`
    /// matrices, in the CPU's order and roundings.
    pub fn column_scores(
        &self,
        scores: &View<f32>,
        a: &View<f32>,
        rank_by: &View<f32>,
        n: usize,
        batch: usize,
    ) -> Result<()> {
        let len = square("ranked matrices", n, batch)?;
        expect_len("ranked matrices", a.len(), len)?;
        expect_len("ranking matrices", rank_by.len(), len)?;
        expect_len("column scores", scores.len(), batch * n)?;
        let prepared = self.plain(COLUMN_SCORES)?;
        let (n32, count) = (n as i32, batch as i64);
        let mut launch = prepared.args(self.stream());
        launch
            .buf(scores)
            .buf(a)
            .buf(rank_by)
            .int(&n32)
            .long(&count);
        // SAFETY: matches column_scores; a and rank_by hold batch·n·n floats, scores batch·n.
        unsafe { launch.launch(elementwise(batch * n)) }
    }
}
