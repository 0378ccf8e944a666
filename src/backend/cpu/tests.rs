//! Every kernel against an independent reference: forward passes against direct formulas
//! written here with plain loops, backward passes against central finite differences, all in
//! f64 so that the expected precision is ~1e-9, far below any real bug.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Real, activation, attention, embedding, loss, matmul, norm, optim};
use crate::backend::{AttentionShape, BlockLayout, Gemm};

fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ∂f/∂x by central differences.
fn numeric_gradient(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let saved = x[i];
            x[i] = saved + H;
            let up = f(&x);
            x[i] = saved - H;
            let down = f(&x);
            x[i] = saved;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Max |got − want| must be within `tol` times the largest |want| (or 1).
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} over scale {scale:e}\n got {got:?}\nwant {want:?}"
    );
}

const FD_TOL: f64 = 1e-7;

#[test]
fn layernorm_forward_matches_definition_and_backward_matches_finite_differences() {
    let (n, c) = (3, 7);
    let (x, w, b, dy) = (
        random(n * c, 1),
        random(c, 2),
        random(c, 3),
        random(n * c, 4),
    );
    let forward = |x: &[f64], w: &[f64], b: &[f64]| {
        let (mut y, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        norm::layernorm_forward(&mut y, &mut mean, &mut rstd, x, w, b, c);
        (y, mean, rstd)
    };
    let (y, mean, rstd) = forward(&x, &w, &b);
    for r in 0..n {
        let row = &x[r * c..(r + 1) * c];
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        for i in 0..c {
            let want = (row[i] - mu) / (var + 1e-5).sqrt() * w[i] + b[i];
            assert!((y[r * c + i] - want).abs() < 1e-12);
        }
        assert!((mean[r] - mu).abs() < 1e-12);
    }
    // Backward adds into existing gradients: start them from non-zero values.
    let (dx0, dw0, db0) = (random(n * c, 5), random(c, 6), random(c, 7));
    let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
    norm::layernorm_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &mean, &rstd, c);
    let sub = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>();
    let num_dx = numeric_gradient(&x, |x| dot(&dy, &forward(x, &w, &b).0));
    let num_dw = numeric_gradient(&w, |w| dot(&dy, &forward(&x, w, &b).0));
    let num_db = numeric_gradient(&b, |b| dot(&dy, &forward(&x, &w, b).0));
    assert_close("dx", &sub(&dx, &dx0), &num_dx, FD_TOL);
    assert_close("dweight", &sub(&dw, &dw0), &num_dw, FD_TOL);
    assert_close("dbias", &sub(&db, &db0), &num_db, FD_TOL);
}

#[test]
fn rmsnorm_matches_definition_and_backward_matches_finite_differences() {
    let (n, c) = (4, 6);
    let (x, dy) = (random(n * c, 11), random(n * c, 12));
    let forward = |x: &[f64]| {
        let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        norm::rmsnorm_forward(&mut y, &mut rstd, x, c);
        (y, rstd)
    };
    let (y, rstd) = forward(&x);
    for (row_y, row_x) in y.chunks(c).zip(x.chunks(c)) {
        let mean_square = row_x.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let want: Vec<f64> = row_x
            .iter()
            .map(|v| v / (mean_square + 1e-6).sqrt())
            .collect();
        assert_close("rmsnorm", row_y, &want, 1e-12);
    }
    let dx0 = random(n * c, 13);
    let mut dx = dx0.clone();
    norm::rmsnorm_backward(&mut dx, &dy, &x, &rstd, c);
    let got: Vec<f64> = dx.iter().zip(&dx0).map(|(a, b)| a - b).collect();
    let num = numeric_gradient(&x, |x| dot(&dy, &forward(x).0));
    assert_close("dx", &got, &num, FD_TOL);
}

#[test]
fn qk_norm_normalises_each_head_copies_v_and_backward_matches_finite_differences() {
    let (n, heads, c) = (3, 2, 8);
    let (qkv, dy) = (random(n * 3 * c, 21), random(n * 3 * c, 22));
    let forward = |qkv: &[f64]| {
        let (mut out, mut rstd) = (vec![0.0; n * 3 * c], vec![0.0; n * 2 * heads]);
        norm::qk_norm_forward(&mut out, &mut rstd, qkv, heads, c);
        (out, rstd)
    };
    let (out, rstd) = forward(&qkv);
    let hd = c / heads;
    for (row_out, row_in) in out.chunks(3 * c).zip(qkv.chunks(3 * c)) {
        for (head_out, head_in) in row_out[..2 * c].chunks(hd).zip(row_in.chunks(hd)) {
            let mean_square = head_in.iter().map(|v| v * v).sum::<f64>() / hd as f64;
            let want: Vec<f64> = head_in
                .iter()
                .map(|v| v / (mean_square + 1e-6).sqrt())
                .collect();
            assert_close("qk-norm", head_out, &want, 1e-12);
        }
        assert_eq!(&row_out[2 * c..], &row_in[2 * c..]);
    }
    let mut dqkv = vec![f64::NAN; n * 3 * c]; // overwritten, never read
    norm::qk_norm_backward(&mut dqkv, &dy, &qkv, &rstd, heads, c);
    let num = numeric_gradient(&qkv, |qkv| dot(&dy, &forward(qkv).0));
    assert_close("dqkv", &dqkv, &num, FD_TOL);
}

/// The rotary table in f64, laid out as the model lays it out, for `seq_len` positions.
fn rope_table(seq_len: usize, head_dim: usize) -> Vec<f64> {
    let half = head_dim / 2;
    let angle = |t: usize, i: usize| t as f64 * 10_000f64.powf(-(i as f64) / half as f64);
    (0..seq_len)
        .flat_map(|t| {
            let cos = (0..half).map(move |i| angle(t, i).cos());
            let sin = (0..half).map(move |i| angle(t, i).sin());
            cos.chain(sin)
        })
        .collect()
}

#[test]
fn rope_scores_depend_only_on_relative_position_and_backward_inverts_forward() {
    // RoPE's defining property: ⟨R_m q, R_n k⟩ depends on m − n only.
    let (heads, c, seq_len) = (1, 8, 9);
    let shape = AttentionShape {
        batch: 1,
        seq_len,
        heads,
        channels: c,
    };
    let (q, k) = (random(c, 31), random(c, 32));
    // Row t holds q and k at position t (v unused).
    let mut qkv: Vec<f64> = (0..seq_len)
        .flat_map(|_| {
            q.iter()
                .chain(&k)
                .copied()
                .chain(std::iter::repeat_n(0.0, c))
        })
        .collect();
    let original = qkv.clone();
    let table = rope_table(seq_len, c / heads);
    attention::rope(&mut qkv, &table, shape, false);
    let score = |m: usize, n: usize| dot(&qkv[m * 3 * c..][..c], &qkv[n * 3 * c + c..][..c]);
    for shift in 1..4 {
        assert!((score(2, 1) - score(2 + shift, 1 + shift)).abs() < 1e-12);
        assert!((score(1, 4) - score(1 + shift, 4 + shift)).abs() < 1e-12);
    }
    assert!(
        (score(0, 0) - dot(&q, &k)).abs() < 1e-12,
        "position 0 is not rotated"
    );
    // The backward pass applies the transpose of the rotation, i.e. its inverse.
    attention::rope(&mut qkv, &table, shape, true);
    assert_close("rope⁻¹∘rope", &qkv, &original, 1e-12);
}

/// Attention computed the slow, obvious way: explicit scores, causal mask, softmax.
fn reference_attention(qkv: &[f64], s: AttentionShape) -> (Vec<f64>, Vec<f64>) {
    let (t, c, hd) = (s.seq_len, s.channels, s.head_dim());
    let mut out = vec![0.0; s.rows() * c];
    let mut lse = vec![0.0; s.batch * s.heads * t];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..t {
                let q = &qkv[(b * t + i) * 3 * c + h * hd..][..hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        dot(q, &qkv[(b * t + j) * 3 * c + c + h * hd..][..hd]) / (hd as f64).sqrt()
                    })
                    .collect();
                let z: f64 = scores.iter().map(|s| s.exp()).sum();
                lse[(b * s.heads + h) * t + i] = z.ln();
                for (j, score) in scores.iter().enumerate() {
                    let v = &qkv[(b * t + j) * 3 * c + 2 * c + h * hd..][..hd];
                    for d in 0..hd {
                        out[(b * t + i) * c + h * hd + d] += score.exp() / z * v[d];
                    }
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_matches_reference_and_backward_matches_finite_differences() {
    let s = AttentionShape {
        batch: 2,
        seq_len: 5,
        heads: 2,
        channels: 6,
    };
    let qkv: Vec<f64> = random(s.rows() * 3 * s.channels, 41)
        .iter()
        .map(|x| 2.0 * x)
        .collect();
    let dy = random(s.rows() * s.channels, 42);
    let forward = |qkv: &[f64]| {
        let mut out = vec![0.0; s.rows() * s.channels];
        let mut lse = vec![0.0; s.batch * s.heads * s.seq_len];
        attention::forward(&mut out, &mut lse, qkv, s);
        (out, lse)
    };
    let (out, lse) = forward(&qkv);
    let (want_out, want_lse) = reference_attention(&qkv, s);
    assert_close("attention output", &out, &want_out, 1e-12);
    assert_close("log-sum-exp", &lse, &want_lse, 1e-12);
    let mut dqkv = vec![f64::NAN; qkv.len()];
    attention::backward(&mut dqkv, &dy, &qkv, &out, &lse, s);
    let num = numeric_gradient(&qkv, |qkv| dot(&dy, &forward(qkv).0));
    assert_close("dqkv", &dqkv, &num, FD_TOL);
}

#[test]
fn attention_decode_over_a_cache_matches_the_last_row_of_full_attention() {
    let s = AttentionShape {
        batch: 1,
        seq_len: 6,
        heads: 2,
        channels: 8,
    };
    let c = s.channels;
    let qkv: Vec<f64> = random(s.rows() * 3 * c, 45)
        .iter()
        .map(|x| 2.0 * x)
        .collect();
    let (want, _) = reference_attention(&qkv, s);
    for len in 1..=s.seq_len {
        let rows = || qkv.chunks(3 * c).take(len);
        let keys: Vec<f64> = rows().flat_map(|r| r[c..2 * c].to_vec()).collect();
        let values: Vec<f64> = rows().flat_map(|r| r[2 * c..].to_vec()).collect();
        let mut out = vec![f64::NAN; c];
        let last = &qkv[(len - 1) * 3 * c..len * 3 * c];
        attention::decode(&mut out, last, &keys, &values, s.heads, c);
        assert_close("decode", &out, &want[(len - 1) * c..len * c], 1e-12);
    }
}

#[test]
fn vectorised_f32_tanh_and_exp_match_f64_libm() {
    // 1001 values (not a multiple of the 8 lanes) from −30 to 30, where tanh saturates and
    // eˣ spans 26 orders of magnitude; the f64 functions of the C library are the reference.
    let xs: Vec<f32> = (0..1001).map(|i| -30.0 + 0.06 * i as f32).collect();
    let check = |name: &str, batch: fn(&mut [f32]), exact: fn(f64) -> f64, ulps: f64| {
        let mut got = xs.clone();
        batch(&mut got);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = exact(f64::from(x));
            let bound = ulps * f64::from(f32::EPSILON) * want.abs();
            assert!(
                (f64::from(y) - want).abs() <= bound,
                "{name}({x}) = {y}, want {want} within {ulps} ulps"
            );
        }
    };
    check("tanh", f32::tanh_in_place, f64::tanh, 4.0);
    check("exp", f32::exp_in_place, f64::exp, 4.0);
}

#[test]
fn matmul_matches_reference_and_backward_matches_finite_differences() {
    // 512 f64 values make rows of 4 KiB: the path through a padded copy of the weight.
    for ic in [4, 512] {
        let (n, oc) = (5, 3);
        let (x, w, bias, dy) = (
            random(n * ic, 51),
            random(oc * ic, 52),
            random(oc, 53),
            random(n * oc, 54),
        );
        let forward = |x: &[f64], w: &[f64], bias: &[f64]| {
            let mut y = vec![0.0; n * oc];
            matmul::forward(&mut y, x, w, Some(bias), n, ic, oc, &mut Vec::new());
            y
        };
        let y = forward(&x, &w, &bias);
        for r in 0..n {
            for o in 0..oc {
                let want = dot(&x[r * ic..][..ic], &w[o * ic..][..ic]) + bias[o];
                assert!((y[r * oc + o] - want).abs() < 1e-12);
            }
        }
        let (dw0, db0) = (random(oc * ic, 55), random(oc, 56));
        let (mut dx, mut dw, mut db) = (vec![f64::NAN; n * ic], dw0.clone(), db0.clone());
        matmul::backward(&mut dx, &mut dw, Some(&mut db), &dy, &x, &w, n, ic, oc);
        let minus = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>();
        let num_dx = numeric_gradient(&x, |x| dot(&dy, &forward(x, &w, &bias)));
        let num_dw = numeric_gradient(&w, |w| dot(&dy, &forward(&x, w, &bias)));
        let num_db = numeric_gradient(&bias, |b| dot(&dy, &forward(&x, &w, b)));
        assert_close("dx", &dx, &num_dx, FD_TOL);
        assert_close("dweight", &minus(&dw, &dw0), &num_dw, FD_TOL);
        assert_close("dbias", &minus(&db, &db0), &num_db, FD_TOL);
    }
}

#[test]
fn column_sums_do_not_depend_on_block_boundaries() {
    // 200 rows span several 64-row blocks; compare with a plain sequential sum.
    let (rows, cols) = (200, 3);
    let m = random(rows * cols, 57);
    let mut got = vec![1.0; cols];
    matmul::add_column_sums(&mut got, &m, cols);
    for j in 0..cols {
        let want = 1.0 + (0..rows).map(|r| m[r * cols + j]).sum::<f64>();
        assert!((got[j] - want).abs() < 1e-12);
    }
}

#[test]
fn batched_gemm_matches_reference_for_every_transpose() {
    let (batch, m, n, k) = (3, 4, 5, 6);
    for (transpose_a, transpose_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b, c0) = (
            random(batch * m * k, 61),
            random(batch * k * n, 62),
            random(batch * m * n, 63),
        );
        let (alpha, beta) = (0.5f32, -2.0f32);
        let mut out = c0.clone();
        let shape = Gemm {
            batch,
            m,
            n,
            k,
            transpose_a,
            transpose_b,
            alpha,
            beta,
        };
        matmul::batched(&mut out, &a, &b, shape);
        for i in 0..batch {
            for r in 0..m {
                for col in 0..n {
                    let a_at = |kk: usize| {
                        if transpose_a {
                            a[i * m * k + kk * m + r]
                        } else {
                            a[i * m * k + r * k + kk]
                        }
                    };
                    let b_at = |kk: usize| {
                        if transpose_b {
                            b[i * k * n + col * k + kk]
                        } else {
                            b[i * k * n + kk * n + col]
                        }
                    };
                    let product: f64 = (0..k).map(|kk| a_at(kk) * b_at(kk)).sum();
                    let want = alpha as f64 * product + beta as f64 * c0[i * m * n + r * n + col];
                    let got = out[i * m * n + r * n + col];
                    assert!(
                        (got - want).abs() < 1e-12,
                        "transpose ({transpose_a}, {transpose_b})"
                    );
                }
            }
        }
    }
}

#[test]
fn gelu_matches_published_values_and_backward_matches_finite_differences() {
    // Tanh-approximate GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), values by hand.
    let x = [1.0, -1.0, 2.0, 0.0];
    let mut y = [0.0; 4];
    activation::gelu_forward(&mut y, &x);
    let want = [
        0.841_191_990_608_276_8,
        -0.158_808_009_391_723_24,
        1.954_597_694_087_775,
        0.0,
    ];
    assert_close("gelu", &y, &want, 1e-12);
    let x = random(20, 71).iter().map(|v| 3.0 * v).collect::<Vec<_>>();
    let dy = random(20, 72);
    let mut dx = vec![f64::NAN; 20];
    activation::gelu_backward(&mut dx, &dy, &x);
    let num = numeric_gradient(&x, |x| {
        let mut y = vec![0.0; x.len()];
        activation::gelu_forward(&mut y, x);
        dot(&dy, &y)
    });
    assert_close("dgelu", &dx, &num, FD_TOL);
}

#[test]
fn relu_squared_matches_definition_and_backward_matches_finite_differences() {
    let x = [-2.0, -0.5, 0.5, 3.0];
    let mut y = [0.0; 4];
    activation::relu2_forward(&mut y, &x);
    assert_eq!(y, [0.0, 0.0, 0.25, 9.0]);
    // Keep away from 0, where the second derivative jumps.
    let x: Vec<f64> = random(20, 81)
        .iter()
        .map(|v| v + v.signum() * 0.1)
        .collect();
    let dy = random(20, 82);
    let mut dx = vec![f64::NAN; 20];
    activation::relu2_backward(&mut dx, &dy, &x);
    let num = numeric_gradient(&x, |x| {
        let mut y = vec![0.0; x.len()];
        activation::relu2_forward(&mut y, x);
        dot(&dy, &y)
    });
    assert_close("drelu2", &dx, &num, FD_TOL);
}

#[test]
fn cross_entropy_of_uniform_logits_is_log_vocab() {
    let (vocab, padded) = (10, 16);
    // Padding logits are huge: they must be ignored.
    let mut logits: Vec<f64> = (0..2 * padded)
        .map(|j| if j % padded < vocab { 0.3 } else { 1e3 })
        .collect();
    let mut losses = vec![0.0; 2];
    loss::softmax_cross_entropy(&mut logits, &mut losses, &[3, 9], vocab, padded, None, None);
    for l in losses {
        assert!((l - (vocab as f64).ln()).abs() < 1e-12);
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences_with_softcap_and_padding() {
    let (rows, vocab, padded) = (3, 7, 8);
    let logits: Vec<f64> = random(rows * padded, 91).iter().map(|v| 4.0 * v).collect();
    let targets = [0u32, 6, 3];
    let loss_of = |z: &[f64], cap: Option<f64>| {
        let (mut z, mut losses) = (z.to_vec(), vec![0.0; rows]);
        loss::softmax_cross_entropy(&mut z, &mut losses, &targets, vocab, padded, cap, None);
        losses.iter().sum::<f64>()
    };
    for cap in [None, Some(2.5)] {
        let mut grad = logits.clone();
        let mut losses = vec![0.0; rows];
        let scale = 0.25;
        loss::softmax_cross_entropy(
            &mut grad,
            &mut losses,
            &targets,
            vocab,
            padded,
            cap,
            Some(scale),
        );
        assert!((losses.iter().sum::<f64>() - loss_of(&logits, cap)).abs() < 1e-12);
        let num: Vec<f64> = numeric_gradient(&logits, |z| loss_of(z, cap))
            .iter()
            .map(|g| scale * g)
            .collect();
        assert_close("dlogits", &grad, &num, FD_TOL);
        for row in grad.chunks(padded) {
            assert_eq!(row[vocab], 0.0, "padding gets no gradient");
        }
    }
}

#[test]
fn ignored_targets_get_no_loss_and_no_gradient() {
    let (vocab, padded) = (5, 8);
    let logits = random(3 * padded, 95);
    let targets = [2, crate::backend::IGNORE_TARGET, 4];
    let (mut grad, mut losses) = (logits.clone(), vec![f64::NAN; 3]);
    loss::softmax_cross_entropy(
        &mut grad,
        &mut losses,
        &targets,
        vocab,
        padded,
        None,
        Some(1.0),
    );
    assert_eq!(losses[1], 0.0);
    assert!(grad[padded..2 * padded].iter().all(|&g| g == 0.0));
    // The other rows are as if alone.
    for row in [0, 2] {
        let (mut g, mut l) = (logits[row * padded..(row + 1) * padded].to_vec(), vec![0.0]);
        loss::softmax_cross_entropy(
            &mut g,
            &mut l,
            &targets[row..row + 1],
            vocab,
            padded,
            None,
            Some(1.0),
        );
        assert_eq!(l[0], losses[row]);
        assert_eq!(g, grad[row * padded..(row + 1) * padded]);
    }
}

#[test]
fn embedding_backward_matches_finite_differences_with_repeated_tokens() {
    let (batch, seq_len, c, vocab) = (2, 3, 4, 5);
    let tokens = [1u32, 3, 1, 1, 0, 3];
    let (table, positions, dy) = (
        random(vocab * c, 101),
        random(seq_len * c, 102),
        random(batch * seq_len * c, 103),
    );
    let forward = |table: &[f64], positions: &[f64]| {
        let mut y = vec![0.0; batch * seq_len * c];
        embedding::forward(&mut y, &tokens, table, Some(positions), seq_len, c);
        y
    };
    let (mut dtable, mut dpositions) = (vec![0.0; vocab * c], vec![0.0; seq_len * c]);
    embedding::backward(&mut dtable, Some(&mut dpositions), &dy, &tokens, seq_len, c);
    let num_table = numeric_gradient(&table, |t| dot(&dy, &forward(t, &positions)));
    let num_positions = numeric_gradient(&positions, |p| dot(&dy, &forward(&table, p)));
    assert_close("dtable", &dtable, &num_table, FD_TOL);
    assert_close("dpositions", &dpositions, &num_positions, FD_TOL);
}

#[test]
fn frobenius_normalisation_gives_unit_norm_per_matrix() {
    let mut x = random(3 * 12, 111);
    optim::normalize_frobenius(&mut x, 3, 1e-7);
    for m in x.chunks(12) {
        let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }
}

#[test]
fn adam_direction_is_the_bias_corrected_adam_step_without_the_learning_rate() {
    // Step 2 from m = 0.1, v = 0.01 with g = 0.5, β = (0.9, 0.99), ε = 1e-8, by hand:
    // m = 0.14, v = 0.0124, m̂ = 0.14/0.19, v̂ = 0.0124/0.0199 (to the f32 rounding of β).
    let (mut out, mut m, mut v) = ([0.0f64], [0.1f64], [0.01f64]);
    optim::adam_direction(&mut out, &[0.5], &mut m, &mut v, 0.9, 0.99, 1e-8, 2);
    let want = (0.14 / 0.19) / ((0.0124f64 / 0.0199).sqrt() + 1e-8);
    assert!((m[0] - 0.14).abs() < 1e-7 && (v[0] - 0.0124).abs() < 1e-7);
    assert!((out[0] - want).abs() < 1e-6, "{} vs {want}", out[0]);
}

#[test]
fn matched_norms_take_the_target_norm_per_part_and_leave_zero_parts_at_zero() {
    let target = random(3 * 4, 112);
    let mut x = random(3 * 4, 113);
    x[4..8].fill(0.0);
    optim::match_norms(&mut x, &target, 3);
    let norm = |m: &[f64]| m.iter().map(|v| v * v).sum::<f64>().sqrt();
    for (part, (x, t)) in x.chunks(4).zip(target.chunks(4)).enumerate() {
        let want = if part == 1 { 0.0 } else { norm(t) };
        assert!((norm(x) - want).abs() < 1e-12, "part {part}");
    }
}

#[test]
fn packed_blocks_hold_each_tile_row_major_grouped_by_shape_and_unpack_back() {
    // Two 5×3 matrices in tiles of 2: rows split 2+2+1, columns 2+1, so four shapes:
    // 2×2 (2 per matrix), 2×1 (2), 1×2 (1), 1×1 (1).
    let layout = BlockLayout {
        rows: 5,
        cols: 3,
        count: 2,
        block: 2,
    };
    let shapes: Vec<_> = layout
        .tile_sets()
        .iter()
        .map(|s| (s.rows, s.cols, s.count, s.offset))
        .collect();
    assert_eq!(
        shapes,
        [(2, 2, 4, 0), (2, 1, 4, 16), (1, 2, 2, 24), (1, 1, 2, 28)]
    );
    let matrices: Vec<f64> = (0..30).map(|x| x as f64).collect();
    let mut blocks = vec![0.0; 30];
    optim::pack_blocks(&mut blocks, &matrices, layout);
    // Matrix 0 is 0..15 (row r holds 3r..3r+3), matrix 1 is 15..30.
    let want = [
        [0, 1, 3, 4],
        [6, 7, 9, 10],
        [15, 16, 18, 19],
        [21, 22, 24, 25], // 2×2
    ]
    .iter()
    .flatten()
    .chain(&[2, 5, 8, 11, 17, 20, 23, 26]) // 2×1
    .chain(&[12, 13, 27, 28]) // 1×2
    .chain(&[14, 29]) // 1×1
    .map(|&x| x as f64)
    .collect::<Vec<_>>();
    assert_eq!(blocks, want);
    let mut back = vec![0.0; 30];
    optim::unpack_blocks(&mut back, &blocks, layout);
    assert_eq!(back, matrices);
}

#[test]
#[should_panic(expected = "attention qkv: 72 elements where the shape needs 36")]
fn attention_backward_rejects_operands_of_another_shape() {
    // Inputs for two sequences, a shape and an output gradient for one: the kernel must refuse
    // rather than write past `dqkv`.
    let s = AttentionShape {
        batch: 1,
        seq_len: 2,
        heads: 1,
        channels: 6,
    };
    let mut dqkv = vec![0.0; s.rows() * 3 * s.channels];
    let (qkv, out, lse) = (vec![0.0; 2 * dqkv.len()], vec![0.0; 24], vec![0.0; 4]);
    attention::backward(&mut dqkv, &out, &qkv, &out, &lse, s);
}

#[test]
#[should_panic(expected = "out of a tensor of 10")]
fn slicing_with_an_overflowing_offset_panics() {
    let t = crate::backend::Tensor {
        buffer: 0,
        offset: 0,
        len: 10,
    };
    t.slice(usize::MAX, 2);
}

#[test]
#[should_panic(expected = "runs past its buffer of 10")]
fn a_view_with_an_overflowing_offset_panics() {
    use crate::backend::{Backend, BufferKind, Tensor};
    let mut b = super::CpuBackend::<f32>::new();
    let t = b.alloc(10, BufferKind::Scratch).unwrap();
    let _ = b.read(Tensor {
        offset: usize::MAX - 5,
        ..t
    });
}
