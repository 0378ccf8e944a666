//! Matrix products through cuBLASLt, at cudarc's `result` level: the safe `CudaBlasLT` wants
//! one element type for A, B, C and D, runs f32 as TF32 and asks the heuristic on every call.
//!
//! Here inputs are bf16 (or f32), accumulation is f32 (`CUBLAS_COMPUTE_32F`, also for f32
//! inputs: true f32, never TF32), and the output is bf16 or f32, with the row-major semantics
//! of [`Gemm`]. cuBLAS is column-major, and a row-major `m×n` matrix is the column-major
//! `n×m` one, so `C = op(A)·op(B)` is computed as `Cᵀ = op(B)ᵀ·op(A)ᵀ`: the operands swap
//! places, the transpose flags stay with them ([`column_major`]). One plan (descriptor, four
//! layouts, the heuristic's algorithm) is kept per shape, types and alignment, so the hot loop
//! asks no heuristic. Not yet run on a GPU.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use cudarc::cublaslt::result::{self, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use half::bf16;

use super::launch::Element;
use super::view::View;
use crate::backend::Gemm;

/// A matrix element cuBLASLt reads or writes here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F32,
}

impl Dtype {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }

    fn bytes(self) -> u64 {
        match self {
            Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }
}

pub trait MatmulElement: Element {
    const DTYPE: Dtype;
}

impl MatmulElement for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

impl MatmulElement for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

/// The input and output types cuBLASLt computes with `CUBLAS_COMPUTE_32F` and an f32 scale:
/// bf16 → bf16, bf16 → f32 and f32 → f32 (f32 inputs with a bf16 output are not among them).
pub fn supported(input: Dtype, output: Dtype) -> bool {
    !(input == Dtype::F32 && output == Dtype::Bf16)
}

/// NVIDIA's recommended workspace: 32 MiB on Hopper (compute capability 9) and newer, 4 MiB
/// before.
pub fn workspace_bytes(major: i32) -> usize {
    if major >= 9 { 32 << 20 } else { 4 << 20 }
}

/// One column-major matrix as cuBLASLt describes it: `rows × cols` stored, `ld` elements
/// between columns, `stride` elements between the matrices of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub stride: i64,
}

/// A row-major [`Gemm`] as the column-major product cuBLASLt computes: its A is our `b`, its
/// B our `a`, and its column-major `n×m` result is our row-major `m×n` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnMajor {
    /// cuBLAS's `m`, `n`, `k`: our `n`, `m`, `k`.
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// cuBLAS's A: our `b`, transposed when `b` is.
    pub a: Layout,
    pub transa: bool,
    /// cuBLAS's B: our `a`, transposed when `a` is.
    pub b: Layout,
    pub transb: bool,
    /// C and D: our output.
    pub c: Layout,
    pub batch: i32,
}

/// The column-major form of `shape`; an error for an empty product (cuBLASLt refuses empty
/// layouts) or sizes beyond its integer types.
pub fn column_major(shape: &Gemm) -> Result<ColumnMajor> {
    let Gemm {
        batch,
        m,
        n,
        k,
        transpose_a,
        transpose_b,
        ..
    } = *shape;
    ensure!(
        batch > 0 && m > 0 && n > 0 && k > 0,
        "empty matrix product {batch}×({m}×{k})·({k}×{n}): cuBLASLt needs every size positive"
    );
    // Every size, and each operand's whole batch, must fit cuBLASLt's int64 (and so usize).
    for (rows, cols) in [(m, k), (k, n), (m, n)] {
        let total = (batch as u128) * (rows as u128) * (cols as u128);
        ensure!(
            i64::try_from(total).is_ok(),
            "matrix product {shape:?} is too large for cuBLASLt"
        );
    }
    // Each of these is at most a checked total, so the casts are exact.
    let layout = |rows: usize, cols: usize, stride: usize| Layout {
        rows: rows as u64,
        cols: cols as u64,
        ld: rows as i64,
        stride: stride as i64,
    };
    // Row-major `r×c` with row stride `c` is column-major `c×r` with leading dimension `c`.
    let (b_rows, b_cols) = if transpose_b { (n, k) } else { (k, n) };
    let (a_rows, a_cols) = if transpose_a { (k, m) } else { (m, k) };
    Ok(ColumnMajor {
        m: n as u64,
        n: m as u64,
        k: k as u64,
        a: layout(b_cols, b_rows, k * n),
        transa: transpose_b,
        b: layout(a_cols, a_rows, m * k),
        transb: transpose_a,
        c: layout(n, m, m * n),
        batch: i32::try_from(batch).context("matrix product batch too large for cuBLASLt")?,
    })
}

/// The alignment in bytes (a power of two, at most the 256 cuBLASLt asks about) of a matrix
/// at device address `address` and of every later one in its batch, `stride_bytes` apart.
/// The heuristic assumes 256 unless told, and an algorithm chosen for 256 may refuse a view
/// into a buffer or an odd batch stride.
pub fn alignment(address: u64, stride_bytes: u64, batch: i32) -> u32 {
    let mut bits = address | 256;
    if batch > 1 {
        bits |= stride_bytes;
    }
    1 << bits.trailing_zeros()
}

/// What a plan depends on: not alpha and beta (passed per call), nor the addresses beyond
/// their alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub input: Dtype,
    pub output: Dtype,
    /// Of our a, b, C and D.
    pub alignment: [u32; 4],
}

impl PlanKey {
    pub fn new(shape: &Gemm, input: Dtype, output: Dtype, alignment: [u32; 4]) -> PlanKey {
        PlanKey {
            batch: shape.batch,
            m: shape.m,
            n: shape.n,
            k: shape.k,
            transpose_a: shape.transpose_a,
            transpose_b: shape.transpose_b,
            input,
            output,
            alignment,
        }
    }
}

fn cublas(what: &'static str) -> impl FnOnce(CublasError) -> anyhow::Error {
    move |error| anyhow::anyhow!("cuBLASLt failed while {what}: {error}")
}

/// A matrix layout, destroyed with its plan.
struct LayoutHandle(sys::cublasLtMatrixLayout_t);

impl LayoutHandle {
    fn new(dtype: Dtype, layout: Layout, batch: i32) -> Result<LayoutHandle> {
        let handle = LayoutHandle(
            result::create_matrix_layout(dtype.cuda(), layout.rows, layout.cols, layout.ld)
                .map_err(cublas("creating a matrix layout"))?,
        );
        let attribute = sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT;
        // SAFETY: a live layout; the attribute is an int32 and the pointer is to one.
        unsafe { set_attribute_layout(handle.0, attribute, &batch) }?;
        let attribute =
            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET;
        // SAFETY: as above, an int64.
        unsafe { set_attribute_layout(handle.0, attribute, &layout.stride) }?;
        Ok(handle)
    }
}

/// # Safety
/// `layout` must be live and `T` the attribute's type.
unsafe fn set_attribute_layout<T>(
    layout: sys::cublasLtMatrixLayout_t,
    attribute: sys::cublasLtMatrixLayoutAttribute_t,
    value: &T,
) -> Result<()> {
    let pointer = (value as *const T).cast::<c_void>();
    // SAFETY: the caller's promise; `value` lives through the call.
    unsafe { result::set_matrix_layout_attribute(layout, attribute, pointer, size_of::<T>()) }
        .map_err(cublas("describing a matrix layout"))
}

impl Drop for LayoutHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout and destroyed only here. An error here has
        // nowhere to go and leaks at most a descriptor.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

struct DescHandle(sys::cublasLtMatmulDesc_t);

impl Drop for DescHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc and destroyed only here.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}

struct PrefHandle(sys::cublasLtMatmulPreference_t);

impl Drop for PrefHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref and destroyed only here.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

/// # Safety
/// `desc` must be live and `T` the attribute's type.
unsafe fn set_attribute_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attribute: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    let pointer = (value as *const T).cast::<c_void>();
    // SAFETY: the caller's promise; `value` lives through the call.
    unsafe { result::set_matmul_desc_attribute(desc, attribute, pointer, size_of::<T>()) }
        .map_err(cublas("describing a matrix product"))
}

/// # Safety
/// `pref` must be live and `T` the attribute's type.
unsafe fn set_attribute_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attribute: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<()> {
    let pointer = (value as *const T).cast::<c_void>();
    // SAFETY: the caller's promise; `value` lives through the call.
    unsafe { result::set_matmul_pref_attribute(pref, attribute, pointer, size_of::<T>()) }
        .map_err(cublas("setting the heuristic's preferences"))
}

/// Everything one product needs but its pointers and scalars.
struct Plan {
    desc: DescHandle,
    a: LayoutHandle,
    b: LayoutHandle,
    c: LayoutHandle,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    fn new(
        handle: sys::cublasLtHandle_t,
        key: &PlanKey,
        cm: &ColumnMajor,
        workspace: usize,
    ) -> Result<Plan> {
        let desc = DescHandle(
            result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )
            .map_err(cublas("creating a matrix product descriptor"))?,
        );
        // cublasOperation_t, a C enum (int): CUBLAS_OP_N = 0, CUBLAS_OP_T = 1; cudarc's
        // cublasLt bindings do not include it.
        let op = |transpose: bool| i32::from(transpose);
        use sys::cublasLtMatmulDescAttributes_t::{
            CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB,
        };
        // SAFETY: a live descriptor; both attributes are a cublasOperation_t (an int).
        unsafe {
            set_attribute_desc(desc.0, CUBLASLT_MATMUL_DESC_TRANSA, &op(cm.transa))?;
            set_attribute_desc(desc.0, CUBLASLT_MATMUL_DESC_TRANSB, &op(cm.transb))?;
        }
        let a = LayoutHandle::new(key.input, cm.a, cm.batch)?;
        let b = LayoutHandle::new(key.input, cm.b, cm.batch)?;
        let c = LayoutHandle::new(key.output, cm.c, cm.batch)?;

        let pref = PrefHandle(
            result::create_matmul_pref().map_err(cublas("creating heuristic preferences"))?,
        );
        use sys::cublasLtMatmulPreferenceAttributes_t::{
            CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        };
        // cuBLAS's A and B are our b and a.
        let [our_a, our_b, c_align, d_align] = key.alignment;
        let workspace = workspace as u64;
        // SAFETY: a live preference; the workspace size is a uint64, alignments uint32.
        unsafe {
            set_attribute_pref(pref.0, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace)?;
            set_attribute_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &our_b)?;
            set_attribute_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &our_a)?;
            set_attribute_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c_align)?;
            set_attribute_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d_align)?;
        }
        // SAFETY: every handle is live; C and D share a layout.
        let heuristic = unsafe {
            result::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, c.0, c.0, pref.0)
        }
        .map_err(|error| {
            anyhow::anyhow!("cuBLASLt has no algorithm for the matrix product {key:?}: {error}")
        })?;
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: heuristic.algo,
        })
    }
}

/// cuBLASLt on one stream: its handle, its workspace and the plans made so far.
pub struct Matmul {
    plans: HashMap<PlanKey, Plan>,
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
}

impl Matmul {
    /// A cuBLASLt handle and workspace for `stream`'s device; an error, not cudarc's panic,
    /// where libcublasLt cannot be loaded.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Matmul> {
        // SAFETY: only tries to dlopen the library's candidate names.
        if !unsafe { sys::is_culib_present() } {
            bail!(
                "cuBLASLt (libcublasLt.so.13) cannot be loaded: install CUDA 13's cuBLAS (e.g. \
                 pip install nvidia-cublas) and put its lib directory on LD_LIBRARY_PATH"
            );
        }
        let (major, _) = stream
            .context()
            .compute_capability()
            .context("cannot ask the device's compute capability")?;
        let workspace = stream
            .alloc_zeros::<u8>(workspace_bytes(major))
            .context("cannot allocate cuBLASLt's workspace")?;
        let handle = result::create_handle().map_err(cublas("creating its handle"))?;
        Ok(Matmul {
            plans: HashMap::new(),
            handle,
            stream: stream.clone(),
            workspace,
        })
    }

    /// How many plans are cached (one per shape, types and alignment seen).
    pub fn plans(&self) -> usize {
        self.plans.len()
    }

    /// `d[i] = alpha·op(a[i])·op(b[i]) + beta·c[i]` for each of `shape.batch` row-major
    /// matrices (see [`Gemm`]), with `c = d` when `c` is `None`; with `beta = 0` C is not read.
    pub fn gemm<I: MatmulElement, O: MatmulElement>(
        &mut self,
        d: View<O>,
        a: View<I>,
        b: View<I>,
        c: Option<View<O>>,
        shape: Gemm,
    ) -> Result<()> {
        ensure!(
            supported(I::DTYPE, O::DTYPE),
            "cuBLASLt computes no {} → {} matrix product",
            I::NAME,
            O::NAME
        );
        let cm = column_major(&shape)?;
        let Gemm { batch, m, n, k, .. } = shape;
        let sizes = [
            ("a", a.len(), batch * m * k),
            ("b", b.len(), batch * k * n),
            ("output", d.len(), batch * m * n),
            ("c", c.map_or(d.len(), |c| c.len()), batch * m * n),
        ];
        for (what, len, expected) in sizes {
            ensure!(
                len == expected,
                "matrix product {what}: {len} elements where {shape:?} needs {expected}"
            );
        }
        let stream = self.stream.clone();
        let (a_ptr, b_ptr, d_ptr) = (a.address(), b.address(), d.address());
        let c_ptr = c.map_or(d_ptr, |c| c.address());
        let (input, output) = (I::DTYPE.bytes(), O::DTYPE.bytes());
        let key = PlanKey::new(
            &shape,
            I::DTYPE,
            O::DTYPE,
            [
                alignment(a_ptr, (m * k) as u64 * input, cm.batch),
                alignment(b_ptr, (k * n) as u64 * input, cm.batch),
                alignment(c_ptr, (m * n) as u64 * output, cm.batch),
                alignment(d_ptr, (m * n) as u64 * output, cm.batch),
            ],
        );
        let workspace_len = self.workspace.len();
        if !self.plans.contains_key(&key) {
            let plan = Plan::new(self.handle, &key, &cm, workspace_len)?;
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        let (workspace, _w) = self.workspace.device_ptr_mut(&stream);
        let (alpha, beta) = (shape.alpha, shape.beta);
        // SAFETY: the plan's layouts describe exactly the buffers' checked sizes (a, b, c and
        // d hold batch·m·k, batch·k·n and batch·m·n elements of the plan's types), the
        // workspace is as large as the plan was told, and every handle is live.
        unsafe {
            result::matmul(
                self.handle,
                plan.desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                b_ptr as *const c_void,
                plan.a.0,
                a_ptr as *const c_void,
                plan.b.0,
                c_ptr as *const c_void,
                plan.c.0,
                d_ptr as *mut c_void,
                plan.c.0,
                &plan.algo,
                workspace as *mut c_void,
                workspace_len,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|error| anyhow::anyhow!("cuBLASLt matrix product {shape:?} failed: {error}"))
    }
}

impl Drop for Matmul {
    fn drop(&mut self) {
        // No plan may outlive the handle it was made with.
        self.plans.clear();
        // SAFETY: created in new, destroyed only here, after every plan made with it.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Gemm {
        Gemm {
            batch,
            m,
            n,
            k,
            transpose_a: ta,
            transpose_b: tb,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Hand-worked: out (2×3) = a (2×4)·b (4×3), stored row-major.
    #[test]
    fn a_plain_product_swaps_operands_and_keeps_row_lengths_as_leading_dimensions() {
        let cm = column_major(&shape(5, 2, 3, 4, false, false)).unwrap();
        // Cᵀ (3×2) = bᵀ (3×4)·aᵀ (4×2): b, stored 4 rows of 3, is column-major 3×4, ld 3.
        assert_eq!((cm.m, cm.n, cm.k), (3, 2, 4));
        assert_eq!(
            (cm.a, cm.transa),
            (
                Layout {
                    rows: 3,
                    cols: 4,
                    ld: 3,
                    stride: 12
                },
                false
            )
        );
        assert_eq!(
            (cm.b, cm.transb),
            (
                Layout {
                    rows: 4,
                    cols: 2,
                    ld: 4,
                    stride: 8
                },
                false
            )
        );
        let c = Layout {
            rows: 3,
            cols: 2,
            ld: 3,
            stride: 6,
        };
        assert_eq!((cm.c, cm.batch), (c, 5));
    }

    /// Hand-worked: out (2×3) = aᵀ·bᵀ with a stored 4×2 and b stored 3×4.
    #[test]
    fn transposed_operands_keep_their_flags_and_their_stored_shapes() {
        let cm = column_major(&shape(1, 2, 3, 4, true, true)).unwrap();
        // b stored 3 rows of 4: column-major 4×3, ld 4, used transposed (T → 3×4).
        assert_eq!(
            (cm.a, cm.transa),
            (
                Layout {
                    rows: 4,
                    cols: 3,
                    ld: 4,
                    stride: 12
                },
                true
            )
        );
        // a stored 4 rows of 2: column-major 2×4, ld 2, used transposed (T → 4×2).
        assert_eq!(
            (cm.b, cm.transb),
            (
                Layout {
                    rows: 2,
                    cols: 4,
                    ld: 2,
                    stride: 8
                },
                true
            )
        );
    }

    /// Element (i, j) of a column-major layout, optionally transposed, of batch matrix `p`.
    fn at(x: &[f32], l: &Layout, transpose: bool, p: usize, i: usize, j: usize) -> f32 {
        let (i, j) = if transpose { (j, i) } else { (i, j) };
        assert!(
            (i as u64) < l.rows && (j as u64) < l.cols,
            "outside the layout"
        );
        x[p * l.stride as usize + i + j * l.ld as usize]
    }

    /// What cuBLASLt computes from the mapping, evaluated literally on the host, equals the
    /// row-major product, for every transpose combination, batched, at odd sizes.
    #[test]
    fn the_column_major_product_is_the_row_major_one() {
        let (batch, m, n, k) = (2, 3, 5, 7);
        let a: Vec<f32> = (0..batch * m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..batch * k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let cm = column_major(&shape(batch, m, n, k, ta, tb)).unwrap();
            let mut c = vec![0.0f32; batch * m * n];
            for p in 0..batch {
                for i in 0..cm.m as usize {
                    for j in 0..cm.n as usize {
                        let sum: f32 = (0..k)
                            .map(|l| {
                                at(&b, &cm.a, cm.transa, p, i, l)
                                    * at(&a, &cm.b, cm.transb, p, l, j)
                            })
                            .sum();
                        c[p * cm.c.stride as usize + i + j * cm.c.ld as usize] = sum;
                    }
                }
            }
            // The row-major reference, straight from Gemm's definition.
            let a_at = |p: usize, i: usize, l: usize| {
                a[p * m * k + if ta { l * m + i } else { i * k + l }]
            };
            let b_at = |p: usize, l: usize, j: usize| {
                b[p * k * n + if tb { j * k + l } else { l * n + j }]
            };
            for p in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let expected: f32 = (0..k).map(|l| a_at(p, i, l) * b_at(p, l, j)).sum();
                        assert_eq!(c[p * m * n + i * n + j], expected, "{ta} {tb} {p} {i} {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products_are_errors_not_panics() {
        for s in [
            shape(0, 2, 3, 4, false, false),
            shape(1, 0, 3, 4, false, false),
            shape(1, 2, 3, 0, true, false),
        ] {
            let error = column_major(&s).unwrap_err().to_string();
            assert!(error.contains("empty matrix product"), "{error}");
        }
        let huge = shape(usize::MAX / 2, 1, 1, 1, false, false);
        assert!(column_major(&huge).is_err());
    }

    #[test]
    fn alignment_is_that_of_every_matrix_of_the_batch_at_most_256() {
        assert_eq!(alignment(0x1000, 0x2000, 4), 256);
        assert_eq!(alignment(0x1000 + 4, 0x2000, 4), 4);
        // bf16 matrices of 37×29 elements: every other one is 2-byte aligned.
        assert_eq!(alignment(0x1000, 37 * 29 * 2, 3), 2);
        // A single matrix: the stride does not matter.
        assert_eq!(alignment(0x1000, 37 * 29 * 2, 1), 256);
        assert_eq!(alignment(0x1010, 0, 1), 16);
    }

    #[test]
    fn plans_are_keyed_by_shape_types_and_alignment_not_by_the_scalars() {
        let base = shape(3, 37, 29, 23, false, true);
        let key = |s: &Gemm, input, output| PlanKey::new(s, input, output, [256; 4]);
        let scaled = Gemm {
            alpha: 0.5,
            beta: 2.0,
            ..base
        };
        assert_eq!(
            key(&base, Dtype::Bf16, Dtype::F32),
            key(&scaled, Dtype::Bf16, Dtype::F32)
        );
        let transposed = Gemm {
            transpose_a: true,
            ..base
        };
        let variants = [
            key(&base, Dtype::Bf16, Dtype::Bf16),
            key(&base, Dtype::F32, Dtype::F32),
            key(&transposed, Dtype::Bf16, Dtype::F32),
            key(&Gemm { k: 24, ..base }, Dtype::Bf16, Dtype::F32),
            key(&Gemm { batch: 1, ..base }, Dtype::Bf16, Dtype::F32),
            PlanKey::new(&base, Dtype::Bf16, Dtype::F32, [256, 256, 256, 2]),
        ];
        for v in variants {
            assert_ne!(v, key(&base, Dtype::Bf16, Dtype::F32), "{v:?}");
        }
    }

    #[test]
    fn only_cublaslt_supported_type_pairs_are_accepted() {
        assert!(supported(Dtype::Bf16, Dtype::Bf16));
        assert!(supported(Dtype::Bf16, Dtype::F32));
        assert!(supported(Dtype::F32, Dtype::F32));
        assert!(!supported(Dtype::F32, Dtype::Bf16));
    }

    #[test]
    fn hopper_gets_the_larger_workspace() {
        assert_eq!(workspace_bytes(9), 32 * 1024 * 1024);
        assert_eq!(workspace_bytes(10), 32 * 1024 * 1024);
        assert_eq!(workspace_bytes(8), 4 * 1024 * 1024);
    }
}
