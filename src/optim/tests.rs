//! Optimizers against independent references: AdamW against steps computed by hand (in
//! Python, from the PyTorch formulas), Muon against a plain nalgebra transcription of
//! KellerJordan/Muon, Newton–Schulz against the SVD of its input.

use nalgebra::DMatrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    MatrixOptimizer, MuonConfig, NewtonSchulzScratch, OptimConfig, Optimizer, OptimizerKind,
    newton_schulz,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::{AdamStep, Backend, BufferKind};
use crate::model::{Arch, Gpt, Group, ModelConfig, ModelOverrides, ModelSize};

pub(super) fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn adamw_matches_hand_computed_steps() {
    // Two steps of p ← p(1 − lr·wd); m, v EMAs; p ← p − lr·m̂/(√v̂ + ε), worked out by hand:
    // step 1, p = 0.5, g = 0.2: 0.5·0.99 − 0.1·0.2/(0.2 + 1e-8) = 0.395000005.
    let mut b = CpuBackend::<f64>::new();
    let [param, grad, m, v] = [(); 4].map(|_| b.alloc(3, BufferKind::Parameters).unwrap());
    b.write(param, &[0.5, -1.5, 2.0]).unwrap();
    let expected = [
        [0.395_000_005, -1.385_000_01, 1.98],
        [
            0.415_820_185_591_942_8,
            -1.427_100_357_385_128_4,
            1.885_786_318_695_407,
        ],
    ];
    for (step, (g, want)) in [[0.2, -0.1, 0.0], [-0.3, 0.4, 1.0]]
        .iter()
        .zip(expected)
        .enumerate()
    {
        b.write(grad, g).unwrap();
        let hp = AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step: step as u32 + 1,
        };
        b.adamw_update(param, grad, m, v, hp).unwrap();
        let got = b.read(param).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() < 1e-6,
                "step {}: {got:?} vs {want:?}",
                step + 1
            );
        }
    }
}

pub(super) fn to_matrix(values: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_row_iterator(rows, cols, values.iter().map(|&v| v as f64))
}

/// A square matrix with singular values spread evenly over [0.1, 1] and random singular
/// vectors. (A square Gaussian matrix has singular values arbitrarily close to zero, which five
/// Newton–Schulz steps cannot lift, by design: Muon leaves near-null directions small.)
fn conditioned_square(n: usize, seed: u64) -> Vec<f32> {
    let orthogonal = |seed| to_matrix(&random(n * n, seed), n, n).qr().q();
    let singular = DMatrix::from_diagonal(&nalgebra::DVector::from_fn(n, |i, _| {
        0.1 + 0.9 * i as f64 / (n - 1) as f64
    }));
    let m = orthogonal(seed) * singular * orthogonal(seed + 1).transpose();
    m.transpose().iter().map(|&v| v as f32).collect() // row-major
}

#[test]
fn newton_schulz_output_singular_values_lie_in_the_expected_band() {
    // KellerJordan/Muon: NS5 leaves singular values roughly in 0.68–1.13 instead of exactly 1,
    // with the input's singular vectors. Checked on the f32 backend that trains, for Gaussian
    // matrices of several shapes (wide and tall) and a square one of condition number 10.
    let cases = [(32, 64), (64, 32), (48, 128), (128, 48), (96, 96)];
    for (rows, cols) in cases {
        let count = 2;
        let mut b = CpuBackend::<f32>::new();
        let x = b.alloc(count * rows * cols, BufferKind::Scratch).unwrap();
        let input: Vec<f32> = if rows == cols {
            (0..count)
                .flat_map(|i| conditioned_square(rows, 7 + 2 * i as u64))
                .collect()
        } else {
            random(count * rows * cols, (rows * cols) as u64)
        };
        b.write(x, &input).unwrap();
        let scratch = NewtonSchulzScratch::new(&mut b, &[(rows, cols, count)]).unwrap();
        newton_schulz(&mut b, x, rows, cols, count, 5, &scratch).unwrap();
        let output = b.read(x).unwrap();
        for i in 0..count {
            let span = i * rows * cols..(i + 1) * rows * cols;
            let g = to_matrix(&input[span.clone()], rows, cols);
            let o = to_matrix(&output[span], rows, cols);
            let sv = o.clone().svd(false, false).singular_values;
            let (min, max) = (sv.min(), sv.max());
            assert!(
                0.67 <= min && max <= 1.15,
                "{rows}×{cols}: singular values in [{min}, {max}]"
            );
            // Same singular vectors: O is close to the polar factor U·Vᵀ of the input, within
            // the spread of its singular values.
            let svd = g.svd(true, true);
            let polar = svd.u.unwrap() * svd.v_t.unwrap();
            let distance = (o - polar).svd(false, false).singular_values.max();
            let spread = (1.0 - min).abs().max((max - 1.0).abs());
            assert!(
                distance <= spread + 1e-3,
                "{rows}×{cols}: ‖O − UVᵀ‖ = {distance}"
            );
        }
    }
}

/// KellerJordan/Muon's `zeropower_via_newtonschulz5`, transcribed directly (in f64).
fn reference_newton_schulz(g: &DMatrix<f64>) -> DMatrix<f64> {
    // The published coefficients, in f32 as the implementation stores them.
    let (a, b, c) = (3.4445f32 as f64, -4.7750f32 as f64, 2.0315f32 as f64);
    let tall = g.nrows() > g.ncols();
    let mut x = if tall { g.transpose() } else { g.clone() };
    x /= x.norm() + 1e-7f32 as f64;
    for _ in 0..5 {
        let gram = &x * x.transpose();
        let poly = &gram * b + &gram * &gram * c;
        x = &x * a + poly * &x;
    }
    if tall { x.transpose() } else { x }
}

fn tiny_speedrun() -> ModelConfig {
    let overrides = ModelOverrides {
        channels: Some(8),
        heads: Some(2),
        vocab: Some(16),
        max_seq_len: Some(4),
        ..ModelOverrides::default()
    };
    ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &overrides).unwrap()
}

#[test]
fn muon_steps_match_a_direct_transcription_of_the_reference() {
    let config = tiny_speedrun();
    let mut b = CpuBackend::<f64>::new();
    let model = Gpt::new(&mut b, &config, 1, 4).unwrap();
    let muon = MuonConfig {
        lr: 0.05,
        momentum: 0.95,
        nesterov: true,
        ns_steps: 5,
        weight_decay: 0.1,
        momentum_warmup_start: 0.85,
        momentum_warmup_steps: 300,
    };
    let optim_config = OptimConfig {
        matrix: MatrixOptimizer::Muon(muon.clone()),
        ..OptimConfig::defaults(Arch::Speedrun, OptimizerKind::Muon)
    };
    let mut optimizer = Optimizer::new(&mut b, &model, &optim_config).unwrap();
    let n = model.num_params();
    let mut params = random(n, 1);
    b.write(model.param_buffer, &params).unwrap();
    let mut momentum: Vec<Vec<f64>> = Vec::new();
    for step in 0..2 {
        let grads = random(n, 10 + step as u64);
        b.write(model.grad_buffer, &grads).unwrap();
        optimizer.step(&mut b, step, 1.0).unwrap();
        let got = b.read(model.param_buffer).unwrap();
        // Reference: each matrix on its own.
        let frac = step as f64 / muon.momentum_warmup_steps as f64;
        let beta = (1.0 - frac) * muon.momentum_warmup_start as f64 + frac * muon.momentum as f64;
        let mut index = 0;
        for spec in model.specs.iter().filter(|s| s.group == Group::Matrix) {
            let (rows, cols) = spec.matrix.unwrap();
            for start in
                (spec.tensor.offset..spec.tensor.offset + spec.tensor.len).step_by(rows * cols)
            {
                let span = start..start + rows * cols;
                let g = to_matrix(&grads[span.clone()], rows, cols);
                if momentum.len() == index {
                    momentum.push(vec![0.0; rows * cols]);
                }
                let m = &mut momentum[index];
                let mut u = DMatrix::zeros(rows, cols);
                for r in 0..rows {
                    for c in 0..cols {
                        let k = r * cols + c;
                        m[k] = beta * m[k] + (1.0 - beta) * g[(r, c)];
                        u[(r, c)] = (1.0 - beta) * g[(r, c)] + beta * m[k];
                    }
                }
                let o = reference_newton_schulz(&u);
                let lr = muon.lr as f64;
                let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
                for r in 0..rows {
                    for c in 0..cols {
                        let k = start + r * cols + c;
                        let p = params[k] as f64 * (1.0 - lr * muon.weight_decay as f64)
                            - lr * scale * o[(r, c)];
                        assert!(
                            (got[k] as f64 - p).abs() < 1e-6,
                            "step {step} {} element {}: {} vs {p}",
                            spec.name,
                            k - spec.tensor.offset,
                            got[k]
                        );
                    }
                }
                index += 1;
            }
        }
        // Adam groups: the first step moves every weight by lr·g/(|g| + ε) ≈ lr·sign(g).
        if step == 0 {
            for spec in model.specs.iter().filter(|s| s.group != Group::Matrix) {
                let lr = match spec.group {
                    Group::Embedding => optim_config.embedding.lr,
                    Group::Head => optim_config.head.lr,
                    _ => optim_config.scalar.lr,
                };
                for k in spec.tensor.offset..spec.tensor.offset + spec.tensor.len {
                    let moved = got[k] - params[k];
                    assert!(
                        (moved + lr * grads[k].signum()).abs() < 1e-6,
                        "{}",
                        spec.name
                    );
                }
            }
        }
        params = got;
    }
}

#[test]
fn every_group_gets_its_own_optimizer_and_state() {
    let config = tiny_speedrun();
    let mut b = CpuBackend::<f32>::new();
    let model = Gpt::new(&mut b, &config, 1, 4).unwrap();
    for kind in [OptimizerKind::Adamw, OptimizerKind::Muon] {
        let optimizer =
            Optimizer::new(&mut b, &model, &OptimConfig::defaults(Arch::Speedrun, kind)).unwrap();
        let names: Vec<String> = optimizer
            .state()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let matrix_state: &[&str] = match kind {
            OptimizerKind::Adamw => &["matrix.m", "matrix.v"],
            OptimizerKind::Muon => &["matrix.momentum"],
        };
        let mut want = vec!["embedding.m", "embedding.v", "head.m", "head.v"];
        want.extend(matrix_state);
        assert_eq!(names, want);
    }
}
