//! Whole-model checks: parameter counts against published figures, the initial loss against
//! hand computation, and every parameter's gradient against finite differences of the loss,
//! computed by the same model code running on the f64 backend.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Arch, Gpt, ModelConfig, ModelOverrides, ModelSize, Pass, num_params};
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;

#[test]
fn gpt2_d12_has_the_published_parameter_count() {
    // GPT-2 small with the vocabulary padded to 50304, as llm.c counts it.
    let config = ModelConfig::new(Arch::Gpt2, ModelSize::D12, &ModelOverrides::default()).unwrap();
    assert_eq!(config.padded_vocab, 50304);
    assert_eq!(num_params(&config), 124_475_904);
}

#[test]
fn speedrun_d12_parameter_count_matches_hand_count() {
    // Untied wte and lm_head (2·50304·768) plus 12 layers of 12·768² weights, no biases.
    let config =
        ModelConfig::new(Arch::Speedrun, ModelSize::D12, &ModelOverrides::default()).unwrap();
    assert_eq!(num_params(&config), 2 * 50304 * 768 + 12 * 12 * 768 * 768);
}

fn tiny(arch: Arch) -> ModelConfig {
    ModelConfig::new(
        arch,
        ModelSize::Tiny,
        &ModelOverrides {
            layers: Some(2),
            channels: Some(8),
            heads: Some(2),
            vocab: Some(11),
            max_seq_len: Some(6),
            // A small cap so that the soft-cap is far from linear.
            softcap: Some(2.0),
            rope_base: None,
        },
    )
    .unwrap()
}

fn random_tokens(n: usize, vocab: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

#[test]
fn speedrun_initial_loss_is_log_vocab() {
    // lm_head starts at zero, so every real token gets the same logit: loss = ln(vocab).
    let config = tiny(Arch::Speedrun);
    let mut backend = CpuBackend::<f64>::new();
    let model = Gpt::new(&mut backend, &config, 2, 5).unwrap();
    model.init_params(&mut backend, 7).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (x, y) = (
        random_tokens(10, 11, &mut rng),
        random_tokens(10, 11, &mut rng),
    );
    let loss = model.forward(&mut backend, &x, &y, Pass::Eval).unwrap();
    assert!((loss - 11f64.ln()).abs() < 1e-12, "loss {loss}");
}

/// Central differences of the loss in every direction that the f32 host interface can
/// express exactly: the step is measured as the difference of the two f32 values written.
fn check_model_gradients(arch: Arch) {
    let config = tiny(arch);
    let (batch, seq_len) = (2, 5);
    let mut backend = CpuBackend::<f64>::new();
    let model = Gpt::new(&mut backend, &config, batch, seq_len).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    // Random values everywhere: the real init zeroes some tensors, which would hide the
    // gradients of others.
    let params: Vec<f32> = (0..model.num_params())
        .map(|_| rng.random_range(-0.8f32..0.8))
        .collect();
    backend.write(model.param_buffer, &params).unwrap();
    let n = batch * seq_len;
    let (x, y) = (
        random_tokens(n, config.vocab, &mut rng),
        random_tokens(n, config.vocab, &mut rng),
    );

    model.zero_grads(&mut backend).unwrap();
    let train = Pass::Train {
        loss_scale: 1.0 / n as f32,
    };
    model.forward(&mut backend, &x, &y, train).unwrap();
    model.backward(&mut backend).unwrap();
    let grads = backend.read(model.grad_buffer).unwrap();

    let loss_at = |backend: &mut CpuBackend<f64>, i: usize, value: f32| {
        let mut p = params.clone();
        p[i] = value;
        backend.write(model.param_buffer, &p).unwrap();
        model.forward(backend, &x, &y, Pass::Eval).unwrap()
    };
    let scale = grads.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
    for spec in &model.specs {
        // A handful of elements of every tensor, including its first and last.
        let t = spec.tensor;
        let mut picks = vec![t.offset, t.offset + t.len - 1];
        picks.extend((0..6).map(|_| t.offset + rng.random_range(0..t.len)));
        for i in picks {
            let h = 1e-3f32;
            let (up, down) = (params[i] + h, params[i] - h);
            let numeric = (loss_at(&mut backend, i, up) - loss_at(&mut backend, i, down))
                / (up as f64 - down as f64);
            let analytic = grads[i] as f64;
            let err = (numeric - analytic).abs();
            assert!(
                err <= 1e-4 * scale.max(1e-3),
                "{arch:?} {}: element {} analytic {analytic:e} numeric {numeric:e}",
                spec.name,
                i - t.offset
            );
        }
    }
}

#[test]
fn gpt2_gradients_match_finite_differences() {
    check_model_gradients(Arch::Gpt2);
}

#[test]
fn speedrun_gradients_match_finite_differences() {
    check_model_gradients(Arch::Speedrun);
}

#[test]
fn f32_backend_matches_f64_backend() {
    // The production backend agrees with the same code in f64 to f32 precision.
    for arch in [Arch::Gpt2, Arch::Speedrun] {
        let config = tiny(arch);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (x, y) = (
            random_tokens(10, 11, &mut rng),
            random_tokens(10, 11, &mut rng),
        );
        let run = |backend: &mut dyn Backend| {
            let model = Gpt::new(backend, &config, 2, 5).unwrap();
            model.init_params(backend, 5).unwrap();
            model.zero_grads(backend).unwrap();
            let loss = model
                .forward(backend, &x, &y, Pass::Train { loss_scale: 0.1 })
                .unwrap();
            model.backward(backend).unwrap();
            (loss, backend.read(model.grad_buffer).unwrap())
        };
        let (loss32, grads32) = run(&mut CpuBackend::<f32>::new());
        let (loss64, grads64) = run(&mut CpuBackend::<f64>::new());
        assert!(
            (loss32 - loss64).abs() < 1e-5 * loss64.abs(),
            "{arch:?} loss"
        );
        let norm: f64 = grads64
            .iter()
            .map(|&g| (g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let diff: f64 = grads32
            .iter()
            .zip(&grads64)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            diff < 1e-5 * norm,
            "{arch:?} gradients: relative error {}",
            diff / norm
        );
    }
}
