//! Token (and learned position) embeddings.

use rayon::prelude::*;

use super::{Real, expect_len};

pub(super) fn forward<F: Real>(
    out: &mut [F],
    tokens: &[u32],
    table: &[F],
    positions: Option<&[F]>,
    seq_len: usize,
    c: usize,
) {
    expect_len("embedding output", out.len(), tokens.len() * c);
    expect_len("embedding tokens", tokens.len() % seq_len, 0);
    if let Some(positions) = positions {
        assert!(
            positions.len() >= seq_len * c,
            "position table shorter than the sequence"
        );
    }
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (y, &token))| {
            let token = token as usize;
            y.copy_from_slice(&table[token * c..(token + 1) * c]);
            if let Some(positions) = positions {
                let t = row % seq_len;
                y.iter_mut()
                    .zip(&positions[t * c..(t + 1) * c])
                    .for_each(|(y, &p)| *y += p);
            }
        });
}

/// Scatter-adds the output gradient into the table rows it came from. Rows are bucketed by
/// token first, so that each table row is owned by one task and sums its gradients in row
/// order: parallel, and deterministic.
pub(super) fn backward<F: Real>(
    dtable: &mut [F],
    dpositions: Option<&mut [F]>,
    dout: &[F],
    tokens: &[u32],
    seq_len: usize,
    c: usize,
) {
    expect_len("embedding output gradient", dout.len(), tokens.len() * c);
    expect_len("embedding table gradient", dtable.len() % c, 0);
    let vocab = dtable.len() / c;
    // Counting sort of row indices by token: rows of token v are order[start[v]..start[v+1]].
    let mut start = vec![0usize; vocab + 1];
    for &token in tokens {
        start[token as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; tokens.len()];
    for (row, &token) in tokens.iter().enumerate() {
        order[next[token as usize]] = row;
        next[token as usize] += 1;
    }
    dtable
        .par_chunks_mut(c)
        .enumerate()
        .filter(|(v, _)| start[*v] < start[v + 1])
        .for_each(|(v, d)| {
            for &row in &order[start[v]..start[v + 1]] {
                d.iter_mut()
                    .zip(&dout[row * c..(row + 1) * c])
                    .for_each(|(d, &g)| *d += g);
            }
        });
    if let Some(dpositions) = dpositions {
        assert!(
            dpositions.len() >= seq_len * c,
            "position gradient shorter than the sequence"
        );
        let batch = tokens.len() / seq_len;
        dpositions[..seq_len * c]
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(t, d)| {
                for b in 0..batch {
                    let row = b * seq_len + t;
                    d.iter_mut()
                        .zip(&dout[row * c..(row + 1) * c])
                        .for_each(|(d, &g)| *d += g);
                }
            });
    }
}
