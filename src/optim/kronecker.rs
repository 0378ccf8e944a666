//! What Shampoo and SOAP share: every hidden matrix cut into tiles of at most `block × block`
//! (so that no factor outgrows the O(n³) budget), the tiles of one shape packed together so that
//! each step is a batched GEMM, and per tile a left (rows × rows) and a right (cols × cols)
//! Kronecker factor, EMAs of G·Gᵀ and Gᵀ·G.

use anyhow::Result;

use super::matrix_sets::matrix_sets;
use super::{GroupRange, shard_of};
use crate::backend::{Backend, BlockLayout, BufferKind, Gemm, Tensor};
use crate::dist::Comm;
use crate::model::params::Init;
use crate::model::{Group, ParamSpec};

/// `count` square `n × n` matrices back to back from `offset` in a factor-shaped buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Squares {
    pub n: usize,
    pub count: usize,
    pub offset: usize,
}

impl Squares {
    /// These matrices in `buffer` (a factor-shaped tensor).
    pub fn of(&self, buffer: Tensor) -> Tensor {
        buffer.slice(self.offset, self.count * self.n * self.n)
    }

    /// Rank `rank`'s share of these matrices (the rank-th of equal consecutive shares,
    /// [`shard_of`]), and every rank's share in elements.
    pub fn share(&self, rank: usize, ranks: usize) -> (Squares, Vec<usize>) {
        let size = self.n * self.n;
        let mine = shard_of(self.count, rank, ranks);
        let lens = (0..ranks)
            .map(|r| shard_of(self.count, r, ranks).len() * size)
            .collect();
        let share = Squares {
            n: self.n,
            count: mine.len(),
            offset: self.offset + mine.start * size,
        };
        (share, lens)
    }

    /// The batched product `alpha·A·B` (`alpha·A·Bᵀ` with `transpose_b`) of matrices like these.
    pub fn product(&self, transpose_b: bool, alpha: f32) -> Gemm {
        Gemm {
            batch: self.count,
            m: self.n,
            n: self.n,
            k: self.n,
            transpose_a: false,
            transpose_b,
            alpha,
            beta: 0.0,
        }
    }
}

/// The `count` tiles of one shape, at `offset` in the packed form of the group, with their
/// factors.
#[derive(Clone, Copy, Debug)]
pub(super) struct TileBatch {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub count: usize,
    pub left: Squares,
    pub right: Squares,
}

impl TileBatch {
    /// These tiles in `packed` (a group-sized tensor in packed order).
    pub fn of(&self, packed: Tensor) -> Tensor {
        packed.slice(self.offset, self.count * self.rows * self.cols)
    }

    fn gemm(&self, m: usize, n: usize, k: usize, transpose: (bool, bool), alpha: f32) -> Gemm {
        Gemm {
            batch: self.count,
            m,
            n,
            k,
            transpose_a: transpose.0,
            transpose_b: transpose.1,
            alpha,
            beta: 0.0,
        }
    }

    /// `out = alpha·op(left)·x·op(right)` for every tile, `op` transposing where `transpose`
    /// says; `left`, `right` are this batch's factor-shaped matrices, `tmp` is tile-shaped.
    pub fn two_sided(
        &self,
        backend: &mut dyn Backend,
        [out, left, x, right, tmp]: [Tensor; 5],
        transpose: (bool, bool),
        alpha: f32,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        backend.gemm(
            tmp,
            left,
            x,
            self.gemm(rows, cols, rows, (transpose.0, false), 1.0),
        )?;
        backend.gemm(
            out,
            tmp,
            right,
            self.gemm(rows, cols, cols, (false, transpose.1), alpha),
        )
    }
}

/// The tiling of one group's matrices.
pub(super) struct Tiling {
    /// Each run of same-shape matrices with its offset in the group.
    layouts: Vec<(usize, BlockLayout)>,
    pub batches: Vec<TileBatch>,
    /// Elements of all factors: each batch's left matrices, then its right ones.
    pub factor_len: usize,
}

impl Tiling {
    pub fn new(
        range: &GroupRange,
        specs: &[&ParamSpec],
        block: usize,
        optimizer: &str,
    ) -> Result<Tiling> {
        let mut layouts = Vec::new();
        let mut batches = Vec::new();
        let mut factor_len = 0;
        for set in matrix_sets(range, specs, optimizer)? {
            let layout = BlockLayout {
                rows: set.rows,
                cols: set.cols,
                count: set.count,
                block,
            };
            for tiles in layout.tile_sets() {
                let mut squares = |n: usize| {
                    let squares = Squares {
                        n,
                        count: tiles.count,
                        offset: factor_len,
                    };
                    factor_len += tiles.count * n * n;
                    squares
                };
                let (left, right) = (squares(tiles.rows), squares(tiles.cols));
                batches.push(TileBatch {
                    offset: set.offset + tiles.offset,
                    rows: tiles.rows,
                    cols: tiles.cols,
                    count: tiles.count,
                    left,
                    right,
                });
            }
            layouts.push((set.offset, layout));
        }
        Ok(Tiling {
            layouts,
            batches,
            factor_len,
        })
    }

    /// Copies the group's matrices into packed form.
    pub fn pack(&self, backend: &mut dyn Backend, packed: Tensor, matrices: Tensor) -> Result<()> {
        for &(offset, layout) in &self.layouts {
            let len = layout.elements();
            backend.pack_blocks(
                packed.slice(offset, len),
                matrices.slice(offset, len),
                layout,
            )?;
        }
        Ok(())
    }

    /// Copies packed tiles back into the group's matrices.
    pub fn unpack(
        &self,
        backend: &mut dyn Backend,
        matrices: Tensor,
        packed: Tensor,
    ) -> Result<()> {
        for &(offset, layout) in &self.layouts {
            let len = layout.elements();
            backend.unpack_blocks(
                matrices.slice(offset, len),
                packed.slice(offset, len),
                layout,
            )?;
        }
        Ok(())
    }

    /// Every batch of left and of right factors.
    pub fn factors(&self) -> impl Iterator<Item = Squares> + '_ {
        self.batches.iter().flat_map(|b| [b.left, b.right])
    }

    /// Runs `work` on this rank's share of every factor batch, then gathers `results` (a
    /// factor-shaped buffer `work` writes) so that every rank holds every matrix's: how
    /// data-parallel ranks share out the eigendecompositions, as modded-nanogpt shares out
    /// Muon's matrices. Every rank must call it.
    pub fn on_shares(
        &self,
        backend: &mut dyn Backend,
        comm: &dyn Comm,
        results: Tensor,
        mut work: impl FnMut(&mut dyn Backend, Squares) -> Result<()>,
    ) -> Result<()> {
        for squares in self.factors() {
            let (mine, lens) = squares.share(comm.rank(), comm.size());
            if mine.count > 0 {
                work(backend, mine)?;
            }
            if comm.size() > 1 {
                backend.all_gather_pieces(squares.of(results), &lens, comm)?;
            }
        }
        Ok(())
    }

    /// The largest factor batch in elements (matrices) and in rows (one eigenvalue per row),
    /// for scratch space.
    pub fn largest_factor(&self) -> (usize, usize) {
        let most = |size: fn(&Squares) -> usize| self.factors().map(|s| size(&s)).max();
        (
            most(|s| s.count * s.n * s.n).unwrap_or(0),
            most(|s| s.count * s.n).unwrap_or(0),
        )
    }

    /// L ← β·L + (1−β)·G·Gᵀ and R ← β·R + (1−β)·Gᵀ·G for every tile G of `packed`.
    pub fn update_factors(
        &self,
        backend: &mut dyn Backend,
        factors: Tensor,
        packed: Tensor,
        beta: f32,
    ) -> Result<()> {
        for b in &self.batches {
            let g = b.of(packed);
            let ema = |n, k, transpose| Gemm {
                alpha: 1.0 - beta,
                beta,
                ..b.gemm(n, n, k, transpose, 1.0)
            };
            let (rows, cols) = (b.rows, b.cols);
            backend.gemm(b.left.of(factors), g, g, ema(rows, cols, (false, true)))?;
            backend.gemm(b.right.of(factors), g, g, ema(cols, rows, (true, false)))?;
        }
        Ok(())
    }
}

/// A matrix group built by hand, for tests and checks of the matrix optimizers: `count`
/// matrices of `rows × cols` per entry of `shapes`, back to back in one parameter buffer (and
/// one gradient buffer) of `backend`.
pub(crate) struct MatrixGroup {
    pub specs: Vec<ParamSpec>,
    pub range: GroupRange,
}

impl MatrixGroup {
    pub fn new(backend: &mut dyn Backend, shapes: &[(usize, usize, usize)]) -> Result<Self> {
        let len = shapes.iter().map(|(r, c, n)| r * c * n).sum();
        let param = backend.alloc(len, BufferKind::Parameters)?;
        let grad = backend.alloc(len, BufferKind::Gradients)?;
        let mut offset = 0;
        let specs = shapes
            .iter()
            .map(|&(rows, cols, count)| {
                let spec = ParamSpec {
                    name: "w",
                    shape: vec![count, rows, cols],
                    group: Group::Matrix,
                    init: Init::Zeros,
                    tensor: param.slice(offset, rows * cols * count),
                    matrix: Some((rows, cols)),
                };
                offset += rows * cols * count;
                spec
            })
            .collect();
        Ok(MatrixGroup {
            specs,
            range: GroupRange {
                group: Group::Matrix,
                param,
                grad,
            },
        })
    }

    pub fn specs(&self) -> Vec<&ParamSpec> {
        self.specs.iter().collect()
    }
}

/// What the Shampoo and SOAP tests share: matrix groups built by hand, and the checks that any
/// matrix optimizer must pass (exact resumption from its state, a falling training loss).
#[cfg(test)]
pub(super) mod test_support {
    use super::MatrixGroup;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use nalgebra::DMatrix;

    use super::super::tests::{random, to_matrix};
    use super::super::{AdamConfig, Elementwise, GroupOptimizer, GroupRange, UpdateRule};
    use crate::backend::Backend;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Arch, Gpt, Group, ModelConfig, ModelOverrides, ModelSize, ParamSpec, Pass};

    /// Checks that each matrix of a group (one per entry of `shapes`, back to back) moved from
    /// `before` to `after` as `reference` moves it — called with the matrix's index, its
    /// gradient and its weights before, to update in place — to within 1e-6 of the largest
    /// element of the reference's move (the backend takes its scalars in f32).
    pub fn assert_moves_like(
        shapes: &[(usize, usize, usize)],
        [before, after, grads]: [&[f32]; 3],
        mut reference: impl FnMut(usize, &DMatrix<f64>, &mut DMatrix<f64>),
        what: &str,
    ) {
        let mut offset = 0;
        for (i, &(rows, cols, _)) in shapes.iter().enumerate() {
            let span = offset..offset + rows * cols;
            let g = to_matrix(&grads[span.clone()], rows, cols);
            let start = to_matrix(&before[span.clone()], rows, cols);
            let mut want = start.clone();
            reference(i, &g, &mut want);
            let got = to_matrix(&after[span], rows, cols);
            let (moved, want_moved) = (&got - &start, &want - &start);
            let error = (moved - &want_moved).abs().max();
            assert!(
                error < 1e-6 * want_moved.abs().max(),
                "{what}, {rows}×{cols}: error {error}"
            );
            offset += rows * cols;
        }
    }

    /// Builds a matrix optimizer over a group.
    pub type Make<'a> =
        &'a dyn Fn(&mut dyn Backend, &GroupRange, &[&ParamSpec]) -> Box<dyn GroupOptimizer>;

    /// Three steps, then the parameters and every state tensor copied into a fresh optimizer:
    /// two more steps on each must agree bit for bit (on the f32 backend that trains, whose
    /// host reads and writes are exact).
    pub fn assert_resumes_exactly(make: Make) {
        let shapes = [(3, 2, 2), (5, 3, 1)];
        let mut first = CpuBackend::<f32>::new();
        let group = MatrixGroup::new(&mut first, &shapes).unwrap();
        let mut optimizer = make(&mut first, &group.range, &group.specs());
        let n = group.range.param.len;
        first.write(group.range.param, &random(n, 1)).unwrap();
        for step in 0..3 {
            first
                .write(group.range.grad, &random(n, 10 + step as u64))
                .unwrap();
            optimizer.step(&mut first, step, 1.0).unwrap();
        }
        let mut second = CpuBackend::<f32>::new();
        let copy = MatrixGroup::new(&mut second, &shapes).unwrap();
        let mut resumed = make(&mut second, &copy.range, &copy.specs());
        let params = first.read(group.range.param).unwrap();
        second.write(copy.range.param, &params).unwrap();
        for ((name, from), (_, to)) in optimizer.state().into_iter().zip(resumed.state()) {
            let values = first.read(from).unwrap();
            assert!(
                values.iter().any(|&x| x != 0.0),
                "state {name} is all zeros"
            );
            second.write(to, &values).unwrap();
        }
        for step in 3..5 {
            let grads = random(n, 10 + step as u64);
            for (backend, range, rule) in [
                (&mut first, &group.range, &mut optimizer),
                (&mut second, &copy.range, &mut resumed),
            ] {
                backend.write(range.grad, &grads).unwrap();
                rule.step(backend, step, 1.0).unwrap();
            }
            assert_eq!(
                first.read(group.range.param).unwrap(),
                second.read(copy.range.param).unwrap(),
                "step {step}"
            );
        }
    }

    /// A tiny GPT-2 trained on one fixed batch, its hidden matrices by the optimizer under test
    /// and the other groups by Adam (as in training). The final loss must be well below both
    /// the initial one and that of the same run with the matrices frozen (the embeddings alone
    /// fit a lot of one batch).
    pub fn assert_training_lowers_the_loss(make: Make) {
        let trained = training_losses(Some(make));
        let frozen = training_losses(None);
        let (first, last) = (trained[0], trained[trained.len() - 1]);
        let baseline = frozen[frozen.len() - 1];
        assert!(
            last.is_finite() && last < 0.5 * first && last < 0.5 * baseline,
            "loss {first} → {last} (→ {baseline} with frozen matrices): {trained:?}"
        );
    }

    /// Losses of 40 steps on one batch; `make` updates the matrices (`None` leaves them).
    fn training_losses(make: Option<Make>) -> Vec<f64> {
        let overrides = ModelOverrides {
            channels: Some(16),
            heads: Some(2),
            vocab: Some(16),
            max_seq_len: Some(8),
            ..ModelOverrides::default()
        };
        let config = ModelConfig::new(Arch::Gpt2, ModelSize::Tiny, &overrides).unwrap();
        let mut b = CpuBackend::<f32>::new();
        let model = Gpt::new(&mut b, &config, 2, 8).unwrap();
        model.init_params(&mut b, 1).unwrap();
        let adam = AdamConfig {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut rules: Vec<Box<dyn GroupOptimizer>> = Vec::new();
        for group in Group::ALL {
            let specs: Vec<&ParamSpec> = model.specs.iter().filter(|s| s.group == group).collect();
            let Some(first) = specs.first() else {
                continue; // GPT-2 ties its head to the embedding
            };
            let start = first.tensor.offset - model.param_buffer.offset;
            let len = specs.iter().map(|s| s.tensor.len).sum();
            let range = GroupRange {
                group,
                param: model.param_buffer.slice(start, len),
                grad: model.grad_buffer.slice(start, len),
            };
            match (group, make) {
                (Group::Matrix, Some(make)) => rules.push(make(&mut b, &range, &specs)),
                (Group::Matrix, None) => {}
                _ => rules.push(Box::new(
                    Elementwise::new(&mut b, &range, UpdateRule::Adamw(adam.clone())).unwrap(),
                )),
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let tokens: Vec<u32> = (0..17).map(|_| rng.random_range(0..16)).collect();
        let inputs = [&tokens[..8], &tokens[8..16]].concat();
        let targets = [&tokens[1..9], &tokens[9..17]].concat();
        let pass = Pass::Train {
            loss_scale: 1.0 / 16.0,
        };
        (0..40)
            .map(|step| {
                model.zero_grads(&mut b).unwrap();
                let loss = model.forward(&mut b, &inputs, &targets, pass).unwrap();
                model.backward(&mut b).unwrap();
                for rule in &mut rules {
                    rule.step(&mut b, step, 1.0).unwrap();
                }
                loss
            })
            .collect()
    }
}
