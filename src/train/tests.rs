//! Gradient accumulation: k micro-batches of B sequences give the gradient of the mean loss
//! over all k·B sequences, the same as one micro-batch of k·B.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::compute_gradients;
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::data::{LoaderPosition, TrainLoader, write_shard};
use crate::model::{Arch, Gpt, ModelConfig, ModelOverrides, ModelSize};

#[test]
fn accumulated_micro_batches_give_the_gradient_of_one_large_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let tokens: Vec<u16> = (0..200).map(|_| rng.random_range(0..11)).collect();
    write_shard(&dir.path().join("train.bin"), &tokens).unwrap();
    let pattern = format!("{}/*.bin", dir.path().display());
    let overrides = ModelOverrides {
        channels: Some(8),
        heads: Some(2),
        vocab: Some(11),
        max_seq_len: Some(5),
        ..ModelOverrides::default()
    };
    let config = ModelConfig::new(Arch::Speedrun, ModelSize::Tiny, &overrides).unwrap();
    let params: Vec<f32> = (0..crate::model::num_params(&config))
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    // (sequences per micro-batch, micro-batches): both cover the same 4 sequences.
    let mut results = Vec::new();
    for (batch, accum) in [(4, 1), (2, 2), (1, 4)] {
        let mut backend = CpuBackend::<f64>::new();
        let model = Gpt::new(&mut backend, &config, batch, 5).unwrap();
        backend.write(model.param_buffer, &params).unwrap();
        let mut loader =
            TrainLoader::new(&pattern, batch, 5, 11, LoaderPosition::default()).unwrap();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let loss = compute_gradients(
            &mut backend,
            &model,
            &mut loader,
            accum,
            (&mut inputs, &mut targets),
            &crate::dist::SingleRank,
        )
        .unwrap();
        results.push((loss, backend.read(model.grad_buffer).unwrap()));
    }
    let (loss, grads) = &results[0];
    for (other_loss, other_grads) in &results[1..] {
        assert!((loss - other_loss).abs() < 1e-12, "{loss} vs {other_loss}");
        let scale = grads.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0);
        for (a, b) in grads.iter().zip(other_grads) {
            assert!((a - b).abs() <= 1e-6 * scale, "{a} vs {b}");
        }
    }
}
