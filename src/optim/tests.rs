//! Optimizers against independent references: AdamW against steps computed by hand (in
//! Python, from the PyTorch formulas), Muon against a plain nalgebra transcription of
//! KellerJordan/Muon, Newton–Schulz against the SVD of its input.

use clap::ValueEnum;
use nalgebra::DMatrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    AdadeltaConfig, AdagradConfig, AdamConfig, AdamVariant, Elementwise, GroupOptimizer,
    GroupRange, MuonConfig, NewtonSchulzScratch, NsCoefficients, OptimConfig, Optimizer,
    OptimizerKind, RmspropConfig, ScheduleFree, SfAdamwConfig, SgdConfig, ShampooConfig,
    SoapConfig, UpdateRule, newton_schulz,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BufferKind, ElementwiseRule, WeightDecay};
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
        let rule = ElementwiseRule::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            decay: WeightDecay::Decoupled,
            nesterov: false,
            step: step as u32 + 1,
        };
        b.elementwise_update(rule, param, grad, &[m, v]).unwrap();
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

/// Three steps of each element-wise rule from the same start and gradients, through the
/// group optimizer, against values computed by hand from the published formulas (PyTorch's
/// documentation; AlgoPerf's NAdamW), each element on its own in plain Python floats:
/// scripts/optimizer_hand_steps.py.
#[test]
fn elementwise_rules_match_hand_computed_steps() {
    let cases: [(&str, UpdateRule, [[f64; 3]; 3]); 9] = [
        (
            "sgd_plain",
            UpdateRule::Sgd(SgdConfig {
                lr: 0.1,
                weight_decay: 0.01,
                ..SgdConfig::default()
            }),
            [
                [0.4795, -1.4885, 1.998],
                [0.5090205, -1.5270115, 1.896002],
                [0.5035114795, -1.5554844884999999, 1.964105998],
            ],
        ),
        (
            "sgd_momentum_dampening",
            UpdateRule::Sgd(SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.2,
                nesterov: false,
                weight_decay: 0.01,
            }),
            [
                [0.4795, -1.4885, 1.998],
                [0.4846664, -1.5089591999999998, 1.9146016],
                [0.48492842688, -1.55016531264, 1.8940113587199998],
            ],
        ),
        (
            "sgd_nesterov",
            UpdateRule::Sgd(SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: 0.0,
            }),
            [
                [0.46199999999999997, -1.481, 2.0],
                [0.5027999999999999, -1.5489000000000002, 1.81],
                [0.5030199999999999, -1.63101, 1.862],
            ],
        ),
        (
            "adagrad",
            UpdateRule::Adagrad(AdagradConfig {
                lr: 0.1,
                lr_decay: 0.5,
                weight_decay: 0.01,
                initial_accumulator_value: 0.1,
                eps: 1e-10,
            }),
            [
                [0.44560343675904507, -1.4658235715497463, 1.993688055971014],
                [0.48674315947606334, -1.5160395519364571, 1.930022902403036],
                [0.4810522234931599, -1.5403627278228245, 1.9568961563697536],
            ],
        ),
        (
            "rmsprop_plain",
            UpdateRule::Rmsprop(RmspropConfig {
                lr: 0.01,
                alpha: 0.9,
                ..RmspropConfig::default()
            }),
            [
                [0.4683772283983154, -1.468377233398313, 2.0],
                [0.4951033502086057, -1.49914646180068, 1.9683772243983162],
                [0.49045896486353685, -1.5184272077435153, 1.9871526862222229],
            ],
        ),
        (
            "rmsprop_centered_momentum",
            UpdateRule::Rmsprop(RmspropConfig {
                lr: 0.01,
                alpha: 0.9,
                eps: 1e-8,
                weight_decay: 0.01,
                momentum: 0.5,
                centered: true,
            }),
            [
                [0.46666667208671997, -1.4666666763284997, 1.9666667222221297],
                [0.4765414347353735, -1.4812094028859022, 1.9166070451198192],
                [0.47637937586539925, -1.5088179786952542, 1.909817592625551],
            ],
        ),
        (
            "adadelta",
            UpdateRule::Adadelta(AdadeltaConfig {
                weight_decay: 0.01,
                ..AdadeltaConfig::default()
            }),
            [
                [0.4968380985103748, -1.496838917230356, 1.9968765247622278],
                [0.5005716140930582, -1.5011407131846617, 1.9924325317695064],
                [0.499642394453527, -1.5048168519717346, 1.9960013444520384],
            ],
        ),
        (
            "adam_coupled",
            UpdateRule::Adam(AdamConfig {
                lr: 0.1,
                weight_decay: 0.1,
                ..AdamVariant::Adam.defaults()
            }),
            [
                [0.4000000039999998, -1.4000000039999998, 1.9000000049999999],
                [0.4072224867467668, -1.4072224867467669, 1.8155142046712203],
                [0.3970435488456278, -1.4381502478792227, 1.780743340180031],
            ],
        ),
        (
            "nadamw",
            UpdateRule::Nadamw(AdamConfig {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            }),
            [
                [0.30500000949999956, -1.295000018999998, 1.98],
                [0.38616862358760606, -1.40459932830162, 1.8188140055212734],
                [0.38269327549770993, -1.4934577227156602, 1.8278484993034794],
            ],
        ),
    ];
    let grads = [[0.2, -0.1, 0.0], [-0.3, 0.4, 1.0], [0.05, 0.3, -0.7]];
    for (name, rule, expected) in cases {
        let mut b = CpuBackend::<f64>::new();
        let range = GroupRange {
            group: Group::Matrix,
            param: b.alloc(3, BufferKind::Parameters).unwrap(),
            grad: b.alloc(3, BufferKind::Gradients).unwrap(),
        };
        let mut optimizer = Elementwise::new(&mut b, &range, rule).unwrap();
        b.write(range.param, &[0.5, -1.5, 2.0]).unwrap();
        for (step, (g, want)) in grads.iter().zip(expected).enumerate() {
            b.write(range.grad, g).unwrap();
            optimizer.step(&mut b, step, 1.0).unwrap();
            let got = b.read(range.param).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-6,
                    "{name} step {}: {got:?} vs {want:?}",
                    step + 1
                );
            }
        }
    }
}

/// Schedule-Free AdamW against a plain transcription of the reference's step
/// (scripts/optimizer_hand_steps.py): the training weights y after each step, and the
/// evaluation weights x it switches to and back from.
#[test]
fn schedule_free_matches_a_transcription_of_the_reference() {
    let expected = [
        [
            [0.39950000499999977, -1.398500009999999, 1.998],
            [0.39950000499999977, -1.398500009999999, 1.998],
        ],
        [
            [0.4639923769243261, -1.4731735616034798, 1.9191388030367003],
            [0.4581294340221146, -1.4663850569122543, 1.9263080027606365],
        ],
        [
            [0.47187764162922996, -1.5337055082121822, 1.9365876532587412],
            [0.46958627369471073, -1.5224854329955275, 1.9348743781757238],
        ],
    ];
    let grads = [[0.2, -0.1, 0.0], [-0.3, 0.4, 1.0], [0.05, 0.3, -0.7]];
    let mut b = CpuBackend::<f64>::new();
    let range = GroupRange {
        group: Group::Matrix,
        param: b.alloc(3, BufferKind::Parameters).unwrap(),
        grad: b.alloc(3, BufferKind::Gradients).unwrap(),
    };
    let config = SfAdamwConfig {
        lr: 0.1,
        weight_decay: 0.01,
        ..SfAdamwConfig::default()
    };
    let mut optimizer = ScheduleFree::new(&mut b, &range, config).unwrap();
    b.write(range.param, &[0.5, -1.5, 2.0]).unwrap();
    optimizer.start(&mut b).unwrap();
    let close = |got: &[f32], want: &[f64; 3]| {
        got.iter()
            .zip(want)
            .all(|(g, w)| (*g as f64 - w).abs() < 1e-6)
    };
    for (step, (g, [y, x])) in grads.iter().zip(expected).enumerate() {
        b.write(range.grad, g).unwrap();
        optimizer.step(&mut b, step, 1.0).unwrap();
        let got = b.read(range.param).unwrap();
        assert!(close(&got, &y), "step {} y: {got:?} vs {y:?}", step + 1);
        optimizer.eval_weights(&mut b).unwrap();
        let got = b.read(range.param).unwrap();
        assert!(close(&got, &x), "step {} x: {got:?} vs {x:?}", step + 1);
        optimizer.train_weights(&mut b).unwrap();
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
        newton_schulz(
            &mut b,
            x,
            rows,
            cols,
            count,
            5,
            NsCoefficients::Quintic,
            &scratch,
        )
        .unwrap();
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
        ns_coefficients: NsCoefficients::Quintic,
        weight_decay: 0.1,
        momentum_warmup_start: 0.85,
        momentum_warmup_steps: 300,
    };
    let optim_config = OptimConfig {
        matrix: UpdateRule::Muon(muon.clone()),
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
                    Group::Embedding => *optim_config.clone().embedding.lr_mut(),
                    Group::Head => *optim_config.clone().head.lr_mut(),
                    _ => *optim_config.clone().scalar.lr_mut(),
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
    for kind in OptimizerKind::value_variants().iter().copied() {
        let optimizer =
            Optimizer::new(&mut b, &model, &OptimConfig::defaults(Arch::Speedrun, kind)).unwrap();
        let names: Vec<String> = optimizer
            .state()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let matrix_state: &[&str] = match kind {
            // PyTorch's default SGD has no momentum, hence no state.
            OptimizerKind::Sgd => &[],
            OptimizerKind::Adagrad => &["matrix.sum"],
            OptimizerKind::Rmsprop => &["matrix.square_avg"],
            OptimizerKind::Adadelta => &["matrix.square_avg", "matrix.acc_delta"],
            OptimizerKind::Adam | OptimizerKind::Adamw | OptimizerKind::Nadamw => {
                &["matrix.m", "matrix.v"]
            }
            OptimizerKind::Muon => &["matrix.momentum"],
            OptimizerKind::SfAdamw => &["matrix.z", "matrix.v", "matrix.sums"],
            OptimizerKind::Shampoo => &[
                "matrix.factors",
                "matrix.roots",
                "matrix.momentum",
                "matrix.second_moment",
            ],
            OptimizerKind::Soap => &["matrix.factors", "matrix.bases", "matrix.m", "matrix.v"],
        };
        let mut want = vec!["embedding.m", "embedding.v", "head.m", "head.v"];
        want.extend(matrix_state);
        assert_eq!(names, want);
    }
}

/// Every rule with all its state in use, on every group it can update.
fn every_rule() -> Vec<OptimConfig> {
    let rules = [
        UpdateRule::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            ..SgdConfig::default()
        }),
        UpdateRule::Adagrad(AdagradConfig::default()),
        UpdateRule::Rmsprop(RmspropConfig {
            momentum: 0.5,
            centered: true,
            ..RmspropConfig::default()
        }),
        UpdateRule::Adadelta(AdadeltaConfig::default()),
        UpdateRule::Adam(AdamVariant::Adam.defaults()),
        UpdateRule::Adamw(AdamVariant::Adamw.defaults()),
        UpdateRule::Nadamw(AdamVariant::Nadamw.defaults()),
        UpdateRule::Muon(MuonConfig::default()),
        UpdateRule::SfAdamw(SfAdamwConfig::default()),
        UpdateRule::Shampoo(ShampooConfig::default()),
        UpdateRule::Soap(SoapConfig::default()),
    ];
    rules
        .into_iter()
        .map(|rule| {
            let rest = if rule.matrices_only() {
                UpdateRule::Adamw(AdamVariant::Adamw.defaults())
            } else {
                rule.clone()
            };
            OptimConfig {
                matrix: rule,
                embedding: rest.clone(),
                head: rest.clone(),
                scalar: rest,
            }
        })
        .collect()
}

#[test]
fn restored_state_continues_bit_for_bit() {
    // Three steps, then copy the weights (the evaluation weights, as checkpoints hold them) and
    // every state tensor into a fresh optimizer, as a resume does; two more steps on each must
    // give identical parameters.
    let config = tiny_speedrun();
    for optim_config in every_rule() {
        let name = optim_config.matrix.describe();
        let mut b = CpuBackend::<f32>::new();
        let model = Gpt::new(&mut b, &config, 1, 4).unwrap();
        let mut first = Optimizer::new(&mut b, &model, &optim_config).unwrap();
        b.write(model.param_buffer, &random(model.num_params(), 3))
            .unwrap();
        first.start(&mut b).unwrap();
        let grads = |step: usize| random(model.num_params(), 100 + step as u64);
        for step in 0..3 {
            b.write(model.grad_buffer, &grads(step)).unwrap();
            first.step(&mut b, step, 1.0).unwrap();
        }
        let saved = first
            .with_eval_weights(&mut b, |b| b.read(model.param_buffer))
            .unwrap();
        let mut second = Optimizer::new(&mut b, &model, &optim_config).unwrap();
        for ((state, from), (_, to)) in first.state().into_iter().zip(second.state()) {
            let values = b.read(from).unwrap();
            assert!(
                values.iter().any(|&v| v != 0.0),
                "{state} of {name} holds nothing after three steps"
            );
            b.write(to, &values).unwrap();
        }
        let mut finals = Vec::new();
        for (optimizer, restored) in [(&mut first, false), (&mut second, true)] {
            if restored {
                b.write(model.param_buffer, &saved).unwrap();
                optimizer.restored(&mut b).unwrap();
            }
            for step in 3..5 {
                b.write(model.grad_buffer, &grads(step)).unwrap();
                optimizer.step(&mut b, step, 1.0).unwrap();
            }
            finals.push(b.read(model.param_buffer).unwrap());
        }
        assert_eq!(finals[0], finals[1], "{name}");
    }
}

#[test]
fn configs_of_earlier_versions_still_read() {
    // Before the optimizer zoo, the non-matrix groups were bare AdamW settings.
    let config = OptimConfig::defaults(Arch::Gpt2, OptimizerKind::Adamw);
    let mut json = serde_json::to_value(&config).unwrap();
    for group in ["embedding", "head", "scalar"] {
        json[group].as_object_mut().unwrap().remove("optimizer");
    }
    assert!(json["embedding"].get("lr").is_some());
    let read: OptimConfig = serde_json::from_value(json).unwrap();
    assert_eq!(read, config);
    // Today's form reads back as written, for every rule.
    for config in every_rule() {
        let line = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<OptimConfig>(&line).unwrap(), config);
    }
}

/// modded-nanogpt's `polar_express`, transcribed directly (in f64) with the published
/// coefficients (Polar Express, Amsel et al. 2025, 5 steps with a 2% safety factor).
fn reference_polar_express(g: &DMatrix<f64>) -> DMatrix<f64> {
    let coefficients = [
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ];
    let tall = g.nrows() > g.ncols();
    let mut x = if tall { g.transpose() } else { g.clone() };
    x /= x.norm() * 1.02 + 1e-6;
    for (a, b, c) in coefficients {
        let gram = &x * x.transpose();
        let poly = &gram * b + &gram * &gram * c;
        x = &x * a + poly * &x;
    }
    if tall { x.transpose() } else { x }
}

#[test]
fn polar_express_matches_a_direct_transcription_and_nearly_orthogonalises() {
    for (rows, cols) in [(12, 20), (20, 12), (16, 16)] {
        let count = 2;
        let mut b = CpuBackend::<f64>::new();
        let x = b.alloc(count * rows * cols, BufferKind::Scratch).unwrap();
        let input = random(count * rows * cols, (rows + 3 * cols) as u64);
        b.write(x, &input).unwrap();
        let scratch = NewtonSchulzScratch::new(&mut b, &[(rows, cols, count)]).unwrap();
        newton_schulz(
            &mut b,
            x,
            rows,
            cols,
            count,
            5,
            NsCoefficients::Polar,
            &scratch,
        )
        .unwrap();
        let output = b.read(x).unwrap();
        for i in 0..count {
            let span = i * rows * cols..(i + 1) * rows * cols;
            let want = reference_polar_express(&to_matrix(&input[span.clone()], rows, cols));
            let got = to_matrix(&output[span], rows, cols);
            // The coefficients are stored in f32, the reference keeps them in f64.
            assert!((&got - &want).norm() < 1e-4, "{rows}×{cols}");
            let sv = got.svd(false, false).singular_values;
            // Like the quintic, it leaves singular values near 1, not at 1 (0.86–1.14 measured
            // here), and lifts small ones much faster.
            let (min, max) = (sv.min(), sv.max());
            assert!(0.8 <= min && max <= 1.15, "{rows}×{cols}: [{min}, {max}]");
        }
        // More than five steps are not defined.
        let err = newton_schulz(
            &mut b,
            x,
            rows,
            cols,
            count,
            6,
            NsCoefficients::Polar,
            &scratch,
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("5 Newton–Schulz steps")
        );
    }
}

#[test]
fn shards_split_the_buffer_into_equal_consecutive_chunks() {
    let shards = |len, ranks| {
        (0..ranks)
            .map(|r| super::shard_of(len, r, ranks))
            .collect::<Vec<_>>()
    };
    assert_eq!(shards(10, 4), vec![0..3, 3..6, 6..9, 9..10]);
    assert_eq!(shards(2, 4), vec![0..1, 1..2, 2..2, 2..2]);
    assert_eq!(shards(8, 1), vec![0..8]);
    assert_eq!(super::intersect(&(4..9), &(0..3)), 4..4);
    assert_eq!(super::intersect(&(4..9), &(6..12)), 6..9);
}

#[test]
fn every_rule_steps_alike_on_three_ranks_and_on_one() {
    // The gradients' reduce-scatter (and gather, for the rules that update whole matrices),
    // the ranks' sharded steps (ZeRO-1 for the element-wise rules, shared-out Newton–Schulz
    // for Muon, shared-out eigendecompositions for Shampoo and SOAP) and the gather of
    // parameter shares give the one-rank step's parameters bit for bit.
    let config = tiny_speedrun();
    for mut optim_config in every_rule() {
        // SOAP refreshes its bases at step 2 of the 3 (its first decomposition is at step 0).
        if let UpdateRule::Soap(soap) = &mut optim_config.matrix {
            soap.precond_every = 2;
        }
        let name = optim_config.matrix.describe();
        let run = |rank: usize, comm: &dyn crate::dist::Comm| {
            let mut b = CpuBackend::<f32>::new();
            let model = Gpt::new(&mut b, &config, 1, 4).unwrap();
            let ranks = comm.size();
            let mut optimizer =
                Optimizer::sharded(&mut b, &model, &optim_config, rank, ranks).unwrap();
            b.write(model.param_buffer, &random(model.num_params(), 3))
                .unwrap();
            optimizer.start(&mut b).unwrap();
            for step in 0..3 {
                // Rank 0 holds the gradients, the others zeros: their sum in rank order is
                // the one rank's gradients, bit for bit.
                let mut grads = random(model.num_params(), 20 + step as u64);
                if rank > 0 {
                    grads.fill(0.0);
                }
                b.write(model.grad_buffer, &grads).unwrap();
                let all = model.grad_buffer;
                super::reduce_scatter_gradients(&mut b, all, all, comm).unwrap();
                optimizer.gather_whole_gradients(&mut b, comm).unwrap();
                optimizer.step_on(&mut b, step, 0.5, comm).unwrap();
                optimizer.gather_params(&mut b, comm).unwrap();
            }
            b.read(model.param_buffer).unwrap()
        };
        let one = run(0, &crate::dist::SingleRank);
        let comms = crate::dist::ThreadComm::group(3);
        let ranks: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (comms.iter().enumerate())
                .map(|(r, c)| s.spawn(move || run(r, c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, params) in ranks.iter().enumerate() {
            assert!(params == &one, "{name}: rank {r} differs from one rank");
        }
    }
}
