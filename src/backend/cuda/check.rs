//! `speedrun check --device cuda`: every kernel of kernels/ on random inputs, against the CPU
//! reference backend on the very same inputs, as a table of ‖gpu − cpu‖/‖cpu‖ per tensor.
//!
//! Each activation kernel runs twice, storing activations as f32 and as bf16; for bf16 the
//! inputs are rounded to bf16 first, so both sides compute from identical values and the error
//! measures the kernel (and the rounding of its output), not the input rounding. Tolerances:
//! 1e-2 for tensors stored in bf16, 1e-4 for f32 ones.
//!
//! The cuBLASLt matrix products and Newton–Schulz are compared in check_matmul.rs, the
//! element-wise optimizer rules other than Adam in check_optim.rs, flash attention in
//! check_attention.rs, the matrix preconditioners' operations (cuSOLVER included) in
//! check_solver.rs, one whole training step of each architecture through the CUDA backend in
//! check_step.rs.
//!
//! Not yet run on a GPU.

use anyhow::{Result, bail};
use cudarc::driver::CudaSlice;
use half::bf16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::Gpu;
use super::kernels::Cache;
use super::launch::{self, Activation, Element, Kernels};
use super::view::ViewOf;
use crate::backend::cpu::CpuBackend;
use crate::backend::{
    AttentionShape, Backend, BufferKind, ElementwiseRule, IGNORE_TARGET, Tensor, WeightDecay,
};
use crate::model::gpt::rope_table;

// A child, to use the private Check and its helpers.
#[path = "check_attention.rs"]
mod check_attention;
#[path = "check_matmul.rs"]
mod check_matmul;
#[path = "check_optim.rs"]
mod check_optim;
#[path = "check_solver.rs"]
mod check_solver;
#[path = "check_step.rs"]
mod check_step;

pub const BF16_TOLERANCE: f64 = 1e-2;
pub const F32_TOLERANCE: f64 = 1e-4;

/// Rows (4 sequences of 61: not a multiple of any kernel's rows per block) and a width above
/// one block of threads and not a multiple of the warp, so the kernels' tails are exercised and
/// threads own several channels; a vocabulary above the loss kernel's 1024 threads, so each
/// thread's online softmax rescales.
const SEQ_LEN: usize = 61;
const ROWS: usize = 4 * SEQ_LEN;
const CHANNELS: usize = 328;
/// Heads of 82: neither a multiple of the warp nor a power of two.
const HEADS: usize = 4;
const VOCAB: usize = 3000;
const PADDED_VOCAB: usize = 3072;

/// One compared tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub kernel: String,
    pub tensor: &'static str,
    /// How the GPU stores the tensor: "f32" or "bf16".
    pub dtype: &'static str,
    pub error: f64,
}

impl Comparison {
    pub fn tolerance(&self) -> f64 {
        if self.dtype == "bf16" {
            BF16_TOLERANCE
        } else {
            F32_TOLERANCE
        }
    }

    /// Within tolerance (a NaN error never is).
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance()
    }
}

/// ‖gpu − cpu‖/‖cpu‖ in f64 (the absolute ‖gpu − cpu‖ where the reference is all zeros);
/// infinite for tensors of different lengths, NaN where the GPU produced one.
pub fn relative_error(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.len() != cpu.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &c) in gpu.iter().zip(cpu) {
        diff += (g as f64 - c as f64).powi(2);
        norm += (c as f64).powi(2);
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// The comparisons as a markdown table.
pub fn table(comparisons: &[Comparison]) -> String {
    let mut out = String::from(
        "| kernel | tensor | dtype | ‖gpu−cpu‖/‖cpu‖ | tolerance | |\n|---|---|---|---:|---:|---|\n",
    );
    for c in comparisons {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.0e} | {} |\n",
            c.kernel,
            c.tensor,
            c.dtype,
            c.error,
            c.tolerance(),
            if c.passed() { "ok" } else { "FAIL" }
        ));
    }
    out
}

/// Opens GPU `ordinal`, loads the kernels, compares each with the CPU and prints the table;
/// an error if any tensor is out of tolerance.
pub fn run(ordinal: usize, seed: u64) -> Result<()> {
    let gpu = Gpu::open(ordinal)?;
    let cache = Cache::new(
        Cache::default_dir().unwrap_or_else(|| std::env::temp_dir().join("speedrun-kernels")),
    );
    eprintln!(
        "{} ({}), kernels cached in {}",
        gpu.name,
        gpu.arch,
        cache.dir().display()
    );
    let kernels = Kernels::load(&gpu, &cache)?;
    let mut check = Check {
        kernels: &kernels,
        cpu: CpuBackend::new(),
        rng: ChaCha8Rng::seed_from_u64(seed),
        comparisons: Vec::new(),
    };
    // Each section on its own: one that fails (a launch error, a missing library) is a failed
    // row with its error printed, and the others still run, so one run on a GPU tells all.
    type Section = fn(&mut Check, usize) -> Result<()>;
    let sections: [(&str, Section); 19] = [
        ("activations f32", |c, _| c.activations::<f32>()),
        ("activations bf16", |c, _| c.activations::<bf16>()),
        ("norms f32", |c, _| c.norms::<f32>()),
        ("norms bf16", |c, _| c.norms::<bf16>()),
        ("qk-norm and rotary f32", |c, _| c.attention_prep::<f32>()),
        ("qk-norm and rotary bf16", |c, _| c.attention_prep::<bf16>()),
        ("attention f32", |c, _| c.attention::<f32>()),
        ("attention bf16", |c, _| c.attention::<bf16>()),
        ("embedding f32", |c, _| c.embedding::<f32>()),
        ("embedding bf16", |c, _| c.embedding::<bf16>()),
        ("cross-entropy f32", |c, _| c.cross_entropy::<f32>()),
        ("cross-entropy bf16", |c, _| c.cross_entropy::<bf16>()),
        ("adam", |c, _| c.adam()),
        ("element-wise optimizers", |c, _| c.optimizers()),
        ("sum of squares", |c, _| c.sum_squares()),
        ("matrix products and Newton–Schulz", |c, ordinal| {
            c.matmul(ordinal)
        }),
        ("preconditioners and solvers", |c, ordinal| {
            c.solver(ordinal)
        }),
        ("whole training steps", |c, ordinal| {
            c.training_steps(ordinal)
        }),
        ("NCCL", |c, ordinal| c.nccl_one_rank(ordinal)),
    ];
    for (name, section) in sections {
        if let Err(error) = section(&mut check, ordinal) {
            eprintln!("{name} stopped: {error:#}");
            check.comparisons.push(Comparison {
                kernel: format!("{name}: stopped by an error (printed above)"),
                tensor: "-",
                dtype: "f32",
                error: f64::NAN,
            });
        }
    }
    print!("{}", table(&check.comparisons));
    let failed = check.comparisons.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} tensors differ from the CPU reference by more than their tolerance",
            check.comparisons.len()
        );
    }
    eprintln!("all {} tensors within tolerance", check.comparisons.len());
    Ok(())
}

/// `x` as the GPU stores it in `T` (rounded to bf16, or unchanged).
fn stored<T: Element>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| T::of(v).f32()).collect()
}

struct Check<'a> {
    kernels: &'a Kernels,
    cpu: CpuBackend<f32>,
    rng: ChaCha8Rng,
    comparisons: Vec<Comparison>,
}

impl Check<'_> {
    /// `n` normal values of standard deviation `scale`, as `T` stores them.
    fn random<T: Element>(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let x: Vec<f32> = (0..n)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut self.rng);
                scale * z
            })
            .collect();
        stored::<T>(&x)
    }

    fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n)
            .map(|_| self.rng.random_range(0..vocab as u32))
            .collect()
    }

    fn up<T: Element>(&self, x: &[f32]) -> Result<CudaSlice<T>> {
        let host: Vec<T> = x.iter().map(|&v| T::of(v)).collect();
        Ok(self.kernels.stream().clone_htod(&host)?)
    }

    fn down<T: Element>(&self, x: &CudaSlice<T>) -> Result<Vec<f32>> {
        let host = self.kernels.stream().clone_dtoh(x)?;
        Ok(host.into_iter().map(Element::f32).collect())
    }

    fn tensor(&mut self, x: &[f32]) -> Result<Tensor> {
        let t = self.cpu.alloc(x.len(), BufferKind::Scratch)?;
        self.cpu.write(t, x)?;
        Ok(t)
    }

    fn compare(
        &mut self,
        kernel: &str,
        tensor: &'static str,
        dtype: &'static str,
        gpu: &[f32],
        cpu: Tensor,
    ) -> Result<()> {
        let cpu = self.cpu.read(cpu)?;
        self.comparisons.push(Comparison {
            kernel: kernel.to_string(),
            tensor,
            dtype,
            error: relative_error(gpu, &cpu),
        });
        Ok(())
    }

    fn activations<T: Element>(&mut self) -> Result<()> {
        let n = ROWS * CHANNELS;
        let (a, b) = (self.random::<T>(n, 1.0), self.random::<T>(n, 1.0));
        let (ga, gb) = (self.up::<T>(&a)?, self.up::<T>(&b)?);
        let out = self.kernels.stream().alloc_zeros::<T>(n)?;
        self.kernels.add(&out.view(), &ga.view(), &gb.view())?;
        let (ca, cb, cout) = (
            self.tensor(&a)?,
            self.tensor(&b)?,
            self.tensor(&vec![0.0; n])?,
        );
        self.cpu.add(cout, ca, cb)?;
        let gpu = self.down(&out)?;
        self.compare("add", "out", T::NAME, &gpu, cout)?;

        // b serves as the output gradient.
        for op in [Activation::Gelu, Activation::Relu2] {
            let name = op.name();
            self.kernels
                .activation_forward(op, &out.view(), &ga.view())?;
            let dinp = self.kernels.stream().alloc_zeros::<T>(n)?;
            self.kernels
                .activation_backward(op, &dinp.view(), &gb.view(), &ga.view())?;
            let cdinp = self.tensor(&vec![0.0; n])?;
            match op {
                Activation::Gelu => {
                    self.cpu.gelu_forward(cout, ca)?;
                    self.cpu.gelu_backward(cdinp, cb, ca)?;
                }
                Activation::Relu2 => {
                    self.cpu.relu2_forward(cout, ca)?;
                    self.cpu.relu2_backward(cdinp, cb, ca)?;
                }
            }
            let gpu = self.down(&out)?;
            self.compare(&format!("{name}_forward"), "out", T::NAME, &gpu, cout)?;
            let gpu = self.down(&dinp)?;
            self.compare(&format!("{name}_backward"), "dinp", T::NAME, &gpu, cdinp)?;
        }
        Ok(())
    }

    fn norms<T: Element>(&mut self) -> Result<()> {
        let (rows, c) = (ROWS, CHANNELS);
        let n = rows * c;
        // An offset mean, so LayerNorm's centring matters.
        let x: Vec<f32> = self.random::<T>(n, 2.0).iter().map(|v| v + 0.5).collect();
        let x = stored::<T>(&x);
        let dout = self.random::<T>(n, 1.0);
        // The norms add their input gradient to what dinp holds (the residual's gradient).
        let dinp0 = self.random::<T>(n, 0.5);
        let weight = self.random::<f32>(c, 1.0);
        let bias = self.random::<f32>(c, 1.0);
        let dweight0 = self.random::<f32>(c, 1.0);
        let dbias0 = self.random::<f32>(c, 1.0);

        let gx = self.up::<T>(&x)?;
        let gdout = self.up::<T>(&dout)?;
        let (gw, gb) = (self.up::<f32>(&weight)?, self.up::<f32>(&bias)?);
        let stream = self.kernels.stream().clone();
        let out = stream.alloc_zeros::<T>(n)?;
        let mean = stream.alloc_zeros::<f32>(rows)?;
        let rstd = stream.alloc_zeros::<f32>(rows)?;
        self.kernels.layernorm_forward(
            &out.view(),
            &mean.view(),
            &rstd.view(),
            &gx.view(),
            &gw.view(),
            &gb.view(),
            c,
        )?;
        let dinp = self.up::<T>(&dinp0)?;
        let dweight = self.up::<f32>(&dweight0)?;
        let dbias = self.up::<f32>(&dbias0)?;
        self.kernels.layernorm_backward(
            &dinp.view(),
            &dweight.view(),
            &dbias.view(),
            &gdout.view(),
            &gx.view(),
            &gw.view(),
            &mean.view(),
            &rstd.view(),
            &stream
                .alloc_zeros::<f32>(launch::layernorm_backward_scratch(rows, c))?
                .view(),
            c,
        )?;

        let cx = self.tensor(&x)?;
        let cdout = self.tensor(&dout)?;
        let (cw, cb) = (self.tensor(&weight)?, self.tensor(&bias)?);
        let cout = self.tensor(&vec![0.0; n])?;
        let cmean = self.tensor(&vec![0.0; rows])?;
        let crstd = self.tensor(&vec![0.0; rows])?;
        self.cpu
            .layernorm_forward(cout, cmean, crstd, cx, cw, cb, c)?;
        let cdinp = self.tensor(&dinp0)?;
        let cdweight = self.tensor(&dweight0)?;
        let cdbias = self.tensor(&dbias0)?;
        self.cpu
            .layernorm_backward(cdinp, cdweight, cdbias, cdout, cx, cw, cmean, crstd, c)?;
        for (tensor, dtype, gpu, cpu) in [
            ("out", T::NAME, self.down(&out)?, cout),
            ("mean", "f32", self.down(&mean)?, cmean),
            ("rstd", "f32", self.down(&rstd)?, crstd),
        ] {
            self.compare("layernorm_forward", tensor, dtype, &gpu, cpu)?;
        }
        for (tensor, dtype, gpu, cpu) in [
            ("dinp", T::NAME, self.down(&dinp)?, cdinp),
            ("dweight", "f32", self.down(&dweight)?, cdweight),
            ("dbias", "f32", self.down(&dbias)?, cdbias),
        ] {
            self.compare("layernorm_backward", tensor, dtype, &gpu, cpu)?;
        }

        self.kernels
            .rmsnorm_forward(&out.view(), &rstd.view(), &gx.view(), c)?;
        let dinp = self.up::<T>(&dinp0)?;
        self.kernels
            .rmsnorm_backward(&dinp.view(), &gdout.view(), &gx.view(), &rstd.view(), c)?;
        self.cpu.rmsnorm_forward(cout, crstd, cx, c)?;
        let cdinp = self.tensor(&dinp0)?;
        self.cpu.rmsnorm_backward(cdinp, cdout, cx, crstd, c)?;
        let gpu = self.down(&out)?;
        self.compare("rmsnorm_forward", "out", T::NAME, &gpu, cout)?;
        let gpu = self.down(&rstd)?;
        self.compare("rmsnorm_forward", "rstd", "f32", &gpu, crstd)?;
        let gpu = self.down(&dinp)?;
        self.compare("rmsnorm_backward", "dinp", T::NAME, &gpu, cdinp)?;
        Ok(())
    }

    /// QK-norm and rotary embeddings, the steps between the qkv projection and attention.
    fn attention_prep<T: Element>(&mut self) -> Result<()> {
        let shape = AttentionShape {
            batch: ROWS / SEQ_LEN,
            seq_len: SEQ_LEN,
            heads: HEADS,
            channels: CHANNELS,
        };
        let (rows, c, heads, hd) = (ROWS, CHANNELS, HEADS, shape.head_dim());
        let n = rows * 3 * c;
        let qkv = self.random::<T>(n, 1.0);
        let dout = self.random::<T>(n, 1.0);
        let stream = self.kernels.stream().clone();
        let (gqkv, gdout) = (self.up::<T>(&qkv)?, self.up::<T>(&dout)?);
        let out = stream.alloc_zeros::<T>(n)?;
        let rstd = stream.alloc_zeros::<f32>(rows * 2 * heads)?;
        let dqkv = stream.alloc_zeros::<T>(n)?;
        self.kernels
            .qk_norm_forward(&out.view(), &rstd.view(), &gqkv.view(), heads, c)?;
        self.kernels.qk_norm_backward(
            &dqkv.view(),
            &gdout.view(),
            &gqkv.view(),
            &rstd.view(),
            heads,
            c,
        )?;
        let (cqkv, cdout) = (self.tensor(&qkv)?, self.tensor(&dout)?);
        let cout = self.tensor(&vec![0.0; n])?;
        let crstd = self.tensor(&vec![0.0; rows * 2 * heads])?;
        let cdqkv = self.tensor(&vec![0.0; n])?;
        self.cpu.qk_norm_forward(cout, crstd, cqkv, heads, c)?;
        self.cpu
            .qk_norm_backward(cdqkv, cdout, cqkv, crstd, heads, c)?;
        let gpu = self.down(&out)?;
        self.compare("qk_norm_forward", "out", T::NAME, &gpu, cout)?;
        let gpu = self.down(&rstd)?;
        self.compare("qk_norm_forward", "rstd", "f32", &gpu, crstd)?;
        let gpu = self.down(&dqkv)?;
        self.compare("qk_norm_backward", "dqkv", T::NAME, &gpu, cdqkv)?;

        let table = rope_table(hd, SEQ_LEN, 10_000.0);
        let gtable = self.up::<f32>(&table)?;
        let ctable = self.tensor(&table)?;
        let rotated = self.up::<T>(&qkv)?;
        self.kernels
            .rope(&rotated.view(), &gtable.view(), shape, false)?;
        let drotated = self.up::<T>(&dout)?;
        self.kernels
            .rope(&drotated.view(), &gtable.view(), shape, true)?;
        let crotated = self.tensor(&qkv)?;
        self.cpu.rope_forward(crotated, ctable, shape)?;
        let cdrotated = self.tensor(&dout)?;
        self.cpu.rope_backward(cdrotated, ctable, shape)?;
        let gpu = self.down(&rotated)?;
        self.compare("rope_forward", "qkv", T::NAME, &gpu, crotated)?;
        let gpu = self.down(&drotated)?;
        self.compare("rope_backward", "dqkv", T::NAME, &gpu, cdrotated)?;
        Ok(())
    }

    fn embedding<T: Element>(&mut self) -> Result<()> {
        let (rows, c) = (ROWS, CHANNELS);
        // A small vocabulary, so that tokens repeat and the backward pass adds rows up.
        let vocab = 50;
        let tokens = self.tokens(rows, vocab);
        let table = self.random::<f32>(vocab * c, 1.0);
        let positions = self.random::<f32>(SEQ_LEN * c, 1.0);
        let dout = self.random::<T>(rows * c, 1.0);
        let dtable0 = self.random::<f32>(vocab * c, 1.0);
        let dpositions0 = self.random::<f32>(SEQ_LEN * c, 1.0);

        let stream = self.kernels.stream().clone();
        let gtokens = stream.clone_htod(&tokens)?;
        let (gtable, gpos) = (self.up::<f32>(&table)?, self.up::<f32>(&positions)?);
        let out = stream.alloc_zeros::<T>(rows * c)?;
        self.kernels.embedding_forward(
            &out.view(),
            &gtokens.view(),
            &gtable.view(),
            Some(&gpos.view()),
            SEQ_LEN,
            c,
        )?;
        let gdout = self.up::<T>(&dout)?;
        let dtable = self.up::<f32>(&dtable0)?;
        let dpositions = self.up::<f32>(&dpositions0)?;
        self.kernels.embedding_backward(
            &dtable.view(),
            Some(&dpositions.view()),
            &gdout.view(),
            &tokens,
            &stream
                .alloc_zeros::<f32>(launch::embedding_backward_scratch(rows))?
                .view(),
            SEQ_LEN,
            c,
        )?;

        let ctokens = self.cpu.alloc_tokens(rows)?;
        self.cpu.write_tokens(ctokens, &tokens)?;
        let (ctable, cpos) = (self.tensor(&table)?, self.tensor(&positions)?);
        let cout = self.tensor(&vec![0.0; rows * c])?;
        self.cpu
            .embedding_forward(cout, ctokens, ctable, Some(cpos), SEQ_LEN, c)?;
        let cdout = self.tensor(&dout)?;
        let cdtable = self.tensor(&dtable0)?;
        let cdpositions = self.tensor(&dpositions0)?;
        self.cpu
            .embedding_backward(cdtable, Some(cdpositions), cdout, ctokens, SEQ_LEN, c)?;
        let gpu = self.down(&out)?;
        self.compare("embedding_forward", "out", T::NAME, &gpu, cout)?;
        let gpu = self.down(&dtable)?;
        self.compare("embedding_backward", "dtable", "f32", &gpu, cdtable)?;
        let gpu = self.down(&dpositions)?;
        self.compare("embedding_backward", "dpositions", "f32", &gpu, cdpositions)?;
        Ok(())
    }

    /// Training (the gradient written over the logits) and evaluation (the capped logits).
    fn cross_entropy<T: Element>(&mut self) -> Result<()> {
        self.cross_entropy_pass::<T>(Some(1.0 / ROWS as f32))?;
        self.cross_entropy_pass::<T>(None)
    }

    fn cross_entropy_pass<T: Element>(&mut self, grad_scale: Option<f32>) -> Result<()> {
        let rows = ROWS;
        let mut targets = self.tokens(rows, VOCAB);
        targets[1] = IGNORE_TARGET;
        let logits = self.random::<T>(rows * PADDED_VOCAB, 4.0);
        let softcap = Some(15.0);
        let (kernel, written) = match grad_scale {
            Some(_) => ("softmax_cross_entropy", "dlogits"),
            None => ("softmax_cross_entropy (evaluation)", "capped logits"),
        };

        let stream = self.kernels.stream().clone();
        let gtargets = stream.clone_htod(&targets)?;
        let glogits = self.up::<T>(&logits)?;
        let losses = stream.alloc_zeros::<f32>(rows)?;
        self.kernels.softmax_cross_entropy(
            &glogits.view(),
            &losses.view(),
            &gtargets.view(),
            &targets,
            VOCAB,
            PADDED_VOCAB,
            softcap,
            grad_scale,
        )?;

        let ctargets = self.cpu.alloc_tokens(rows)?;
        self.cpu.write_tokens(ctargets, &targets)?;
        let clogits = self.tensor(&logits)?;
        let closses = self.tensor(&vec![0.0; rows])?;
        self.cpu.softmax_cross_entropy(
            clogits,
            closses,
            ctargets,
            VOCAB,
            PADDED_VOCAB,
            softcap,
            grad_scale,
        )?;
        let gpu = self.down(&losses)?;
        self.compare(kernel, "losses", "f32", &gpu, closses)?;
        let gpu = self.down(&glogits)?;
        self.compare(kernel, written, T::NAME, &gpu, clogits)
    }

    /// AdamW (decoupled decay) and NAdam-style Nesterov with coupled decay, a few steps in.
    fn adam(&mut self) -> Result<()> {
        // Odd, so the grid-stride loop's tail is exercised.
        let n = 100_003;
        for (kernel, decay, nesterov) in [
            ("adam_update (AdamW)", WeightDecay::Decoupled, false),
            ("adam_update (Nesterov, L2)", WeightDecay::Coupled, true),
        ] {
            let rule = ElementwiseRule::Adam {
                // Large enough that the change of the weights is far above their rounding.
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                decay,
                nesterov,
                step: 3,
            };
            let param = self.random::<f32>(n, 1.0);
            let grad = self.random::<f32>(n, 0.1);
            let m = self.random::<f32>(n, 0.05);
            let v: Vec<f32> = self.random::<f32>(n, 0.05).iter().map(|x| x * x).collect();

            let stream = self.kernels.stream().clone();
            let gparam = self.up::<f32>(&param)?;
            let ggrad = self.up::<f32>(&grad)?;
            let (gm, gv) = (self.up::<f32>(&m)?, self.up::<f32>(&v)?);
            let copy = stream.alloc_zeros::<bf16>(n)?;
            self.kernels.adam_update(
                rule,
                &gparam.view(),
                &ggrad.view(),
                &gm.view(),
                &gv.view(),
                Some(&copy.view()),
            )?;

            let (cparam, cgrad) = (self.tensor(&param)?, self.tensor(&grad)?);
            let (cm, cv) = (self.tensor(&m)?, self.tensor(&v)?);
            self.cpu
                .elementwise_update(rule, cparam, cgrad, &[cm, cv])?;
            // The change of each tensor, which is what the step computes: the tensors
            // themselves are dominated by their old values.
            for (tensor, old, gpu, cpu) in [
                ("param", &param, self.down(&gparam)?, cparam),
                ("m", &m, self.down(&gm)?, cm),
                ("v", &v, self.down(&gv)?, cv),
            ] {
                let cpu_new = self.cpu.read(cpu)?;
                let delta =
                    |x: &[f32]| -> Vec<f32> { x.iter().zip(old).map(|(a, b)| a - b).collect() };
                self.comparisons.push(Comparison {
                    kernel: kernel.to_string(),
                    tensor,
                    dtype: "f32",
                    error: relative_error(&delta(&gpu), &delta(&cpu_new)),
                });
            }
            let gpu = self.down(&copy)?;
            self.compare(kernel, "param (bf16 copy)", "bf16", &gpu, cparam)?;
        }
        Ok(())
    }

    fn sum_squares(&mut self) -> Result<()> {
        let x = self.random::<f32>(1_000_003, 1.0);
        let gx = self.up::<f32>(&x)?;
        let gpu = self.kernels.sum_squares(&gx.view())?;
        let cx = self.tensor(&x)?;
        let cpu = self.cpu.sum_squares(cx)?;
        self.comparisons.push(Comparison {
            kernel: "sum_squares (global norm²)".into(),
            tensor: "sum",
            dtype: "f32",
            error: relative_error(&[gpu as f32], &[cpu as f32]),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_the_ratio_of_norms() {
        // ‖(3, 4) − (0, 0)‖ = 5 against ‖(0, 0)‖ = 0: absolute; ‖(1, 1)‖/‖(3, 4)‖ = √2/5.
        assert_eq!(relative_error(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
        let e = relative_error(&[4.0, 5.0], &[3.0, 4.0]);
        assert!((e - 2f64.sqrt() / 5.0).abs() < 1e-15, "{e}");
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(relative_error(&[f32::NAN], &[1.0]).is_nan());
    }

    #[test]
    fn tolerances_follow_the_storage_type_and_nan_fails() {
        let row = |dtype, error| Comparison {
            kernel: "k".into(),
            tensor: "t",
            dtype,
            error,
        };
        assert!(row("bf16", 5e-3).passed());
        assert!(!row("f32", 5e-3).passed());
        assert!(row("f32", 5e-5).passed());
        assert!(!row("bf16", f64::NAN).passed());
        let table = table(&[row("bf16", 5e-3), row("f32", 5e-3)]);
        assert!(
            table.contains("| k | t | bf16 | 5.00e-3 | 1e-2 | ok |"),
            "{table}"
        );
        assert!(
            table.contains("| k | t | f32 | 5.00e-3 | 1e-4 | FAIL |"),
            "{table}"
        );
    }
}
