//! Launchers for kernels/memory.cu (fill, scale, precision conversion), kernels/bias.cu and the
//! optimizers' helper steps of kernels/optim.cu (lerp, Muon's momentum, applying an update):
//! the elementwise work the backend needs besides the layers of launch.rs.

use anyhow::{Result, ensure};
use cudarc::driver::LaunchConfig;
use half::bf16;

use super::kernels::Param::{B32, B64, F32};
use super::launch::{
    Element, Kernel, Kernels, THREADS, elementwise, expect_len, int, plain, row_count, typed,
};
use super::view::View;

const FILL: Kernel = typed("memory.cu", "fill", &[B64, F32, B64]);
const SCALE: Kernel = typed("memory.cu", "scale", &[B64, F32, B64]);
const CONVERT_TO_BF16: Kernel = plain("memory.cu", "convert_f32_to_bf16", &[B64, B64, B64]);
const CONVERT_TO_F32: Kernel = plain("memory.cu", "convert_bf16_to_f32", &[B64, B64, B64]);
const ADD_BIAS: Kernel = typed("bias.cu", "add_bias", &[B64, B64, B64, B32]);
const BIAS_BACKWARD_PARTIAL: Kernel = typed(
    "bias.cu",
    "bias_backward_partial",
    &[B64, B64, B32, B32, B32],
);
const BIAS_BACKWARD_REDUCE: Kernel =
    plain("bias.cu", "bias_backward_reduce", &[B64, B64, B32, B32]);
const LERP: Kernel = plain("optim.cu", "lerp", &[B64, B64, B64, F32]);
const MUON_MOMENTUM: Kernel = plain("optim.cu", "muon_momentum", &[B64, B64, B64, B64, F32, B32]);
const APPLY_UPDATE: Kernel = plain("optim.cu", "apply_update", &[B64, B64, B64, F32, F32]);

/// The kernels whose launchers are in this file.
pub(super) const KERNELS: &[Kernel] = &[
    FILL,
    SCALE,
    CONVERT_TO_BF16,
    CONVERT_TO_F32,
    ADD_BIAS,
    BIAS_BACKWARD_PARTIAL,
    BIAS_BACKWARD_REDUCE,
    LERP,
    MUON_MOMENTUM,
    APPLY_UPDATE,
];

/// Rows summed by one block of the bias gradient's first pass.
const BIAS_CHUNK_ROWS: usize = 256;

/// f32 scratch elements [`Kernels::bias_backward`] needs for `rows` rows of `cols`.
pub fn bias_backward_scratch(rows: usize, cols: usize) -> usize {
    rows.div_ceil(BIAS_CHUNK_ROWS).max(1) * cols
}

/// The launch shape of one thread per column, `blocks_y` blocks down.
fn per_column(cols: usize, blocks_y: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(THREADS as usize) as u32, blocks_y as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Kernels {
    /// Every element of `x` set to `value` (rounded to T).
    pub fn fill<T: Element>(&self, x: &View<T>, value: f32) -> Result<()> {
        self.unary_scalar(FILL, x, value)
    }

    /// `x ← x·factor`.
    pub fn scale<T: Element>(&self, x: &View<T>, factor: f32) -> Result<()> {
        self.unary_scalar(SCALE, x, factor)
    }

    fn unary_scalar<T: Element>(&self, kernel: Kernel, x: &View<T>, value: f32) -> Result<()> {
        let prepared = self.typed::<T>(kernel)?;
        let n64 = x.len() as i64;
        let mut launch = prepared.args(self.stream());
        launch.buf(x).float(&value).long(&n64);
        // SAFETY: matches fill_T / scale_T(T*, float, i64); x holds n elements.
        unsafe { launch.launch(elementwise(x.len())) }
    }

    /// `out ← in` rounded to bf16.
    pub fn convert_to_bf16(&self, out: &View<bf16>, inp: &View<f32>) -> Result<()> {
        self.convert(CONVERT_TO_BF16, out, inp)
    }

    /// `out ← in` widened to f32.
    pub fn convert_to_f32(&self, out: &View<f32>, inp: &View<bf16>) -> Result<()> {
        self.convert(CONVERT_TO_F32, out, inp)
    }

    fn convert<I, O>(&self, kernel: Kernel, out: &View<O>, inp: &View<I>) -> Result<()> {
        expect_len("converted copy", out.len(), inp.len())?;
        let prepared = self.plain(kernel)?;
        let n64 = out.len() as i64;
        let mut launch = prepared.args(self.stream());
        launch.buf(out).buf(inp).long(&n64);
        // SAFETY: matches convert_*(Out*, const In*, i64); both hold n elements.
        unsafe { launch.launch(elementwise(out.len())) }
    }

    /// `out[r, :] += bias` for every row of `out` (rows of `bias.len()`).
    pub fn add_bias<T: Element>(&self, out: &View<T>, bias: &View<f32>) -> Result<()> {
        let cols = bias.len();
        let rows = row_count("biased output", out.len(), cols)?;
        let prepared = self.typed::<T>(ADD_BIAS)?;
        let (rows64, cols32) = (rows as i64, int("columns", cols)?);
        let mut launch = prepared.args(self.stream());
        launch.buf(out).buf(bias).long(&rows64).int(&cols32);
        // SAFETY: matches add_bias_T; out holds rows·cols elements, bias cols.
        unsafe { launch.launch(elementwise(out.len())) }
    }

    /// `dbias += Σ_rows dout`, in a fixed order: per-chunk column sums into `scratch` (at least
    /// [`bias_backward_scratch`] floats), then the chunks added in order.
    pub fn bias_backward<T: Element>(
        &self,
        dbias: &View<f32>,
        dout: &View<T>,
        scratch: &View<f32>,
    ) -> Result<()> {
        let cols = dbias.len();
        let rows = row_count("bias output gradient", dout.len(), cols)?;
        let chunks = rows.div_ceil(BIAS_CHUNK_ROWS);
        if chunks == 0 {
            return Ok(());
        }
        // The chunks are the grid's y dimension.
        ensure!(
            chunks <= 65535,
            "a bias gradient over {rows} rows: at most {} rows per call",
            65535 * BIAS_CHUNK_ROWS
        );
        ensure!(
            scratch.len() >= chunks * cols,
            "bias gradient scratch of {} floats where {} are needed",
            scratch.len(),
            chunks * cols
        );
        let (rows32, cols32, chunk32, chunks32) = (
            int("rows", rows)?,
            int("columns", cols)?,
            BIAS_CHUNK_ROWS as i32,
            int("row chunks", chunks)?,
        );
        let prepared = self.typed::<T>(BIAS_BACKWARD_PARTIAL)?;
        let mut launch = prepared.args(self.stream());
        launch
            .buf(scratch)
            .buf(dout)
            .int(&rows32)
            .int(&cols32)
            .int(&chunk32);
        // SAFETY: matches bias_backward_partial_T; one thread per (column, chunk), scratch
        // holds chunks·cols floats.
        unsafe { launch.launch(per_column(cols, chunks)) }?;
        let prepared = self.plain(BIAS_BACKWARD_REDUCE)?;
        let mut launch = prepared.args(self.stream());
        launch.buf(dbias).buf(scratch).int(&chunks32).int(&cols32);
        // SAFETY: matches bias_backward_reduce; one thread per column.
        unsafe { launch.launch(per_column(cols, 1)) }
    }

    /// `x ← x + weight·(end − x)`.
    pub fn lerp(&self, x: &View<f32>, end: &View<f32>, weight: f32) -> Result<()> {
        expect_len("lerp end", end.len(), x.len())?;
        let prepared = self.plain(LERP)?;
        let n64 = x.len() as i64;
        let mut launch = prepared.args(self.stream());
        launch.buf(x).buf(end).long(&n64).float(&weight);
        // SAFETY: matches lerp; both hold n floats.
        unsafe { launch.launch(elementwise(x.len())) }
    }

    /// Muon's momentum (see [`crate::backend::Backend::muon_momentum`]).
    pub fn muon_momentum(
        &self,
        update: &View<f32>,
        momentum: &View<f32>,
        grad: &View<f32>,
        beta: f32,
        nesterov: bool,
    ) -> Result<()> {
        let n = update.len();
        expect_len("Muon momentum", momentum.len(), n)?;
        expect_len("Muon gradient", grad.len(), n)?;
        let prepared = self.plain(MUON_MOMENTUM)?;
        let (n64, nesterov) = (n as i64, i32::from(nesterov));
        let mut launch = prepared.args(self.stream());
        launch
            .buf(update)
            .buf(momentum)
            .buf(grad)
            .long(&n64)
            .float(&beta)
            .int(&nesterov);
        // SAFETY: matches muon_momentum; all three hold n floats.
        unsafe { launch.launch(elementwise(n)) }
    }

    /// `param ← param·(1 − decay) − step_size·update`.
    pub fn apply_update(
        &self,
        param: &View<f32>,
        update: &View<f32>,
        step_size: f32,
        decay: f32,
    ) -> Result<()> {
        expect_len("update", update.len(), param.len())?;
        let prepared = self.plain(APPLY_UPDATE)?;
        // The CPU's factor, computed alike (the kernel's multiply-add may be fused, within an ulp).
        let (n64, keep) = (param.len() as i64, 1.0 - decay);
        let mut launch = prepared.args(self.stream());
        launch
            .buf(param)
            .buf(update)
            .long(&n64)
            .float(&step_size)
            .float(&keep);
        // SAFETY: matches apply_update; both hold n floats.
        unsafe { launch.launch(elementwise(param.len())) }
    }
}
