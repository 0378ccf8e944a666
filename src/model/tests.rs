//! Whole-model checks: parameter counts against published figures, the initial loss against
//! hand computation, and every parameter's gradient against finite differences of the loss,
//! computed by the same model code running on the f64 backend.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    Arch, Decoder, Gpt, ModelConfig, ModelOverrides, ModelSize, ParamSpec, Pass, num_params,
    sample_token,
};
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

#[test]
fn rope_table_holds_the_rotary_angles() {
    // head_dim 4: θ_0 = 1, θ_1 = 10000^(−1/2) = 0.01; per position t: cos(t·θ), sin(t·θ).
    let table = super::gpt::rope_table(4, 3, 10_000.0);
    let want: Vec<f32> = [[0.0, 0.0], [1.0, 0.01], [2.0, 0.02]]
        .iter()
        .flat_map(|angles: &[f64; 2]| {
            let cos = angles.map(|a| a.cos() as f32);
            let sin = angles.map(|a| a.sin() as f32);
            [cos, sin].concat()
        })
        .collect();
    assert_eq!(table.len(), want.len());
    for (got, want) in table.iter().zip(&want) {
        assert!((got - want).abs() < 1e-7, "{table:?} vs {want:?}");
    }
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

fn random_params(model: &Gpt, rng: &mut ChaCha8Rng) -> Vec<f32> {
    // Random values everywhere: the real init zeroes some tensors, which would zero the
    // gradients of others and hide their errors.
    (0..model.num_params())
        .map(|_| rng.random_range(-0.8f32..0.8))
        .collect()
}

/// Rows of a (vocab, C) tensor beyond the real vocabulary are padding.
fn padding_rows(config: &ModelConfig, spec: &ParamSpec) -> Option<std::ops::Range<usize>> {
    let c = config.channels;
    (spec.shape == [config.padded_vocab, c])
        .then(|| spec.tensor.offset + config.vocab * c..spec.tensor.offset + spec.tensor.len)
}

/// A tiny model of `arch` for 2 sequences of 5 tokens on the f64 backend, with random weights
/// (written to it, and returned) and random inputs and targets; `rng` goes on from them.
struct Setup {
    config: ModelConfig,
    backend: CpuBackend<f64>,
    model: Gpt,
    params: Vec<f32>,
    x: Vec<u32>,
    y: Vec<u32>,
    rng: ChaCha8Rng,
}

fn setup(arch: Arch, seed: u64) -> Setup {
    let config = tiny(arch);
    let (batch, seq_len) = (2, 5);
    let mut backend = CpuBackend::<f64>::new();
    let model = Gpt::new(&mut backend, &config, batch, seq_len).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let params = random_params(&model, &mut rng);
    backend.write(model.param_buffer, &params).unwrap();
    let n = batch * seq_len;
    let (x, y) = (
        random_tokens(n, config.vocab, &mut rng),
        random_tokens(n, config.vocab, &mut rng),
    );
    Setup {
        config,
        backend,
        model,
        params,
        x,
        y,
        rng,
    }
}

/// Central differences of the loss in directions the f32 host interface can express exactly:
/// the step is measured as the difference of the two f32 values written.
fn check_model_gradients(arch: Arch) {
    let Setup {
        config,
        mut backend,
        model,
        params,
        x,
        y,
        mut rng,
    } = setup(arch, 42);
    let n = x.len();

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
    for spec in &model.specs {
        let t = spec.tensor;
        let padding = padding_rows(&config, spec);
        let real_end = padding.as_ref().map_or(t.offset + t.len, |p| p.start);
        if let Some(padding) = padding {
            assert!(
                grads[padding].iter().all(|&g| g == 0.0),
                "{}: padding rows get gradient",
                spec.name
            );
        }
        // A handful of real elements of every tensor, including its first and last.
        let mut picks = vec![t.offset, real_end - 1];
        picks.extend((0..8).map(|_| rng.random_range(t.offset..real_end)));
        for i in picks {
            let h = 1e-3f32;
            let (up, down) = (params[i] + h, params[i] - h);
            let numeric = (loss_at(&mut backend, i, up) - loss_at(&mut backend, i, down))
                / (up as f64 - down as f64);
            let analytic = grads[i] as f64;
            let err = (numeric - analytic).abs();
            assert!(
                err <= 1e-7 + 1e-4 * numeric.abs(),
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
    // The production backend agrees with the same code in f64 to f32 precision, tensor by
    // tensor (with random weights, so that no gradient is trivially zero).
    for arch in [Arch::Gpt2, Arch::Speedrun] {
        let config = tiny(arch);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (x, y) = (
            random_tokens(10, 11, &mut rng),
            random_tokens(10, 11, &mut rng),
        );
        let mut params = None;
        let mut run = |backend: &mut dyn Backend| {
            let model = Gpt::new(backend, &config, 2, 5).unwrap();
            let p = params.get_or_insert_with(|| random_params(&model, &mut rng));
            backend.write(model.param_buffer, p).unwrap();
            model.zero_grads(backend).unwrap();
            let loss = model
                .forward(backend, &x, &y, Pass::Train { loss_scale: 0.1 })
                .unwrap();
            model.backward(backend).unwrap();
            (loss, backend.read(model.grad_buffer).unwrap(), model.specs)
        };
        let (loss32, grads32, specs) = run(&mut CpuBackend::<f32>::new());
        let (loss64, grads64, _) = run(&mut CpuBackend::<f64>::new());
        assert!(
            (loss32 - loss64).abs() < 1e-6 * loss64.abs(),
            "{arch:?} loss"
        );
        for spec in &specs {
            let range = spec.tensor.offset..spec.tensor.offset + spec.tensor.len;
            let norm = |g: &[f32]| g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let diff: Vec<f32> = grads32[range.clone()]
                .iter()
                .zip(&grads64[range.clone()])
                .map(|(a, b)| a - b)
                .collect();
            let reference = norm(&grads64[range]);
            assert!(reference > 0.0, "{arch:?} {}: zero gradient", spec.name);
            assert!(
                norm(&diff) < 1e-5 * reference,
                "{arch:?} {}: relative error {}",
                spec.name,
                norm(&diff) / reference
            );
        }
    }
}

#[test]
fn decoding_with_the_cache_gives_the_logits_of_the_full_forward_pass() {
    for arch in [Arch::Gpt2, Arch::Speedrun] {
        let config = tiny(arch);
        let t = config.max_seq_len;
        let mut backend = CpuBackend::<f64>::new();
        let model = Gpt::new(&mut backend, &config, 1, t).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let params = random_params(&model, &mut rng);
        backend.write(model.param_buffer, &params).unwrap();
        let tokens = random_tokens(t, config.vocab, &mut rng);
        model
            .forward(&mut backend, &tokens, &tokens, Pass::Eval)
            .unwrap();
        let full = model.logits(&mut backend).unwrap();

        let mut decoder = Decoder::new(&mut backend, &config).unwrap();
        backend.write(decoder.param_buffer, &params).unwrap();
        for (pos, &token) in tokens.iter().enumerate() {
            let logits = decoder.step(&mut backend, token).unwrap();
            let want = &full[pos * config.padded_vocab..][..config.vocab];
            for (got, want) in logits.iter().zip(want) {
                assert!(
                    (got - want).abs() < 1e-6,
                    "{arch:?} position {pos}: {got} vs {want}"
                );
            }
        }
        let err = decoder.step(&mut backend, 0).unwrap_err();
        assert!(
            err.to_string().contains("context of 6 tokens is full"),
            "{err}"
        );
    }
}

#[test]
fn sampling_is_greedy_at_zero_temperature_and_follows_the_softmax_otherwise() {
    let logits = [0.0, 2f32.ln(), 4f32.ln(), -1e9];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(sample_token(&logits, 0.0, 0, &mut rng), 2);
    assert_eq!(sample_token(&logits, 1.0, 1, &mut rng), 2);
    // Probabilities 1/7, 2/7, 4/7: counts within 5 standard deviations.
    let n = 70_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[sample_token(&logits, 1.0, 0, &mut rng) as usize] += 1;
    }
    for (count, p) in counts.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0, 0.0]) {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (*count as f64 - n as f64 * p).abs() <= 5.0 * sd + 1e-9,
            "{counts:?}"
        );
    }
    // Top-2 never draws the third most likely token.
    assert!((0..1000).all(|_| sample_token(&logits, 1.0, 2, &mut rng) != 0));
}

#[test]
fn backward_hands_over_each_gradient_part_once_and_only_when_final() {
    // Data parallelism sums each part as soon as it is handed over: a part handed over before
    // the pass is done with it, or twice, or never, would give wrong sums.
    for arch in [Arch::Gpt2, Arch::Speedrun] {
        let Setup {
            mut backend,
            model,
            x,
            y,
            ..
        } = setup(arch, 7);
        model.zero_grads(&mut backend).unwrap();
        let train = Pass::Train { loss_scale: 0.1 };
        model.forward(&mut backend, &x, &y, train).unwrap();
        let mut parts = Vec::new();
        model
            .backward_with(&mut backend, &mut |b, part| {
                parts.push((part, b.read(part)?));
                Ok(())
            })
            .unwrap();
        let grads = backend.read(model.grad_buffer).unwrap();
        parts.sort_by_key(|(part, _)| part.offset);
        let mut next = model.grad_buffer.offset;
        for (part, values) in &parts {
            assert_eq!(part.offset, next, "{arch:?}: a gap or an overlap at {next}");
            let start = part.offset - model.grad_buffer.offset;
            assert!(
                values[..] == grads[start..start + part.len],
                "{arch:?}: the part at {} changed after it was handed over",
                part.offset
            );
            next += part.len;
        }
        assert_eq!(next, model.grad_buffer.offset + model.grad_buffer.len);
    }
}
