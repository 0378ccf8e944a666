//! A synthetic token source whose entropy rate is known exactly: a random
//! sparse first-order Markov chain. A model trained on it can do no better
//! than the chain's entropy rate, which makes loss curves checkable.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Exp1;
use serde::{Deserialize, Serialize};

use super::shard::write_shard;

/// Largest vocabulary: states are written as u16 tokens.
const MAX_VOCAB: usize = 1 << 16;
/// Largest number of transitions (vocab·successors) kept in memory (~1.3 GiB).
const MAX_EDGES: usize = 1 << 27;
/// Power iteration stops once the L1 change of π in one step is below this.
const STATIONARY_TOL: f64 = 1e-14;
/// Work cap (edge updates) for power iteration, so a slowly mixing or
/// periodic chain fails in seconds instead of hanging.
const STATIONARY_MAX_WORK: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("vocab {vocab} is out of range (expected 3 <= vocab <= {MAX_VOCAB})")]
    BadVocab { vocab: usize },
    #[error(
        "successors {successors} is out of range (expected 2 <= successors <= vocab = {vocab})"
    )]
    BadSuccessors { successors: usize, vocab: usize },
    #[error(
        "vocab {vocab} x successors {successors} = {edges} transitions is too many (expected at most {MAX_EDGES})"
    )]
    TooManyEdges {
        vocab: usize,
        successors: usize,
        edges: usize,
    },
    #[error("transition row {state}: {reason}")]
    BadRow { state: usize, reason: String },
    #[error(
        "stationary distribution did not converge after {iterations} power iterations (last L1 change {change:e}, expected < {STATIONARY_TOL:e}): the chain mixes too slowly or is periodic; use more successors"
    )]
    NoConvergence { iterations: usize, change: f64 },
    #[error("synth config {field} is {value} (expected {expected})")]
    BadSize {
        field: &'static str,
        value: usize,
        expected: &'static str,
    },
}

/// A first-order Markov chain over `vocab` states with sparse transition
/// rows (compressed sparse row storage) and its precomputed stationary
/// distribution.
pub struct MarkovChain {
    /// Row s is `next[offsets[s]..offsets[s + 1]]`.
    offsets: Vec<usize>,
    next: Vec<u16>,
    prob: Vec<f64>,
    /// Running sums of `prob` within each row, for sampling.
    cum: Vec<f64>,
    stationary: Vec<f64>,
    stationary_cum: Vec<f64>,
}

fn check_shape(vocab: usize, successors: usize) -> Result<(), SynthError> {
    if !(3..=MAX_VOCAB).contains(&vocab) {
        return Err(SynthError::BadVocab { vocab });
    }
    if !(2..=vocab).contains(&successors) {
        return Err(SynthError::BadSuccessors { successors, vocab });
    }
    let edges = vocab * successors;
    if edges > MAX_EDGES {
        return Err(SynthError::TooManyEdges {
            vocab,
            successors,
            edges,
        });
    }
    Ok(())
}

/// Running sums of `p`.
fn cumulative(p: &[f64]) -> Vec<f64> {
    p.iter()
        .scan(0.0, |acc, &x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

/// Index drawn from running sums `cum` with a uniform `u` in [0, 1). The
/// clamp covers a final sum a rounding error below 1.
fn pick(cum: &[f64], u: f64) -> usize {
    cum.partition_point(|&c| c <= u).min(cum.len() - 1)
}

fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum()
}

impl MarkovChain {
    /// A random chain: each state s goes to `successors` distinct states,
    /// always including (s+1) mod V and (s+2) mod V (cycles of length V and
    /// V-1 with gcd 1 make it irreducible and aperiodic, so π is unique), the
    /// rest uniform without replacement, with Dirichlet(1) probabilities.
    pub fn random(vocab: usize, successors: usize, seed: u64) -> Result<MarkovChain, SynthError> {
        check_shape(vocab, successors)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rows = Vec::with_capacity(vocab);
        for s in 0..vocab {
            let mut targets = vec![(s + 1) % vocab, (s + 2) % vocab];
            // Indices 0..V-2 enumerate s+3, ..., s+V (mod V): every state
            // except the two already chosen.
            let rest = rand::seq::index::sample(&mut rng, vocab - 2, successors - 2);
            targets.extend(rest.into_iter().map(|i| (s + 3 + i) % vocab));
            // Dirichlet(1) = normalised Exp(1). The floor keeps every listed
            // successor reachable even if a draw is exactly zero.
            let weights: Vec<f64> = targets
                .iter()
                .map(|_| rng.sample::<f64, _>(Exp1).max(f64::MIN_POSITIVE))
                .collect();
            let total: f64 = weights.iter().sum();
            rows.push(
                targets
                    .into_iter()
                    .zip(weights)
                    .map(|(t, w)| (t, w / total))
                    .collect(),
            );
        }
        MarkovChain::from_rows(rows)
    }

    /// A chain with explicit sparse rows: `rows[s]` lists (next state,
    /// probability). Rows must be non-empty, with distinct in-range targets
    /// and non-negative probabilities summing to 1 (within 1e-9; they are
    /// renormalised exactly).
    pub(crate) fn from_rows(rows: Vec<Vec<(usize, f64)>>) -> Result<MarkovChain, SynthError> {
        let vocab = rows.len();
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(SynthError::BadVocab { vocab });
        }
        let bad = |state, reason: String| SynthError::BadRow { state, reason };
        let mut offsets = vec![0];
        let (mut next, mut prob) = (Vec::new(), Vec::new());
        let mut seen = vec![false; vocab];
        for (s, row) in rows.iter().enumerate() {
            if row.is_empty() {
                return Err(bad(s, "has no successors".into()));
            }
            let total: f64 = row.iter().map(|&(_, p)| p).sum();
            if (total - 1.0).abs() > 1e-9 {
                return Err(bad(s, format!("probabilities sum to {total} (expected 1)")));
            }
            for &(t, p) in row {
                if t >= vocab {
                    return Err(bad(s, format!("target {t} is outside 0..{vocab}")));
                }
                if seen[t] {
                    return Err(bad(s, format!("target {t} is listed twice")));
                }
                if !(p >= 0.0 && p.is_finite()) {
                    return Err(bad(s, format!("probability {p} for target {t} is invalid")));
                }
                seen[t] = true;
                // Lossless: t < vocab <= 65536.
                next.push(t as u16);
                prob.push(p / total);
            }
            for &(t, _) in row {
                seen[t] = false;
            }
            offsets.push(next.len());
        }
        let mut chain = MarkovChain {
            cum: Vec::with_capacity(prob.len()),
            offsets,
            next,
            prob,
            stationary: Vec::new(),
            stationary_cum: Vec::new(),
        };
        for s in 0..vocab {
            let (_, p) = chain.row(s);
            let c = cumulative(p);
            chain.cum.extend(c);
        }
        chain.stationary = chain.power_iteration()?;
        chain.stationary_cum = cumulative(&chain.stationary);
        Ok(chain)
    }

    fn vocab(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Successors of `s` and their probabilities.
    fn row(&self, s: usize) -> (&[u16], &[f64]) {
        let r = self.offsets[s]..self.offsets[s + 1];
        (&self.next[r.clone()], &self.prob[r])
    }

    /// π with πP = π, by power iteration from uniform.
    fn power_iteration(&self) -> Result<Vec<f64>, SynthError> {
        let v = self.vocab();
        let max_iterations = (STATIONARY_MAX_WORK / self.next.len()).clamp(10_000, 10_000_000);
        let mut pi = vec![1.0 / v as f64; v];
        let mut new = vec![0.0; v];
        let mut change = f64::INFINITY;
        for _ in 0..max_iterations {
            new.fill(0.0);
            for (s, &mass) in pi.iter().enumerate() {
                let (next, prob) = self.row(s);
                for (&t, &p) in next.iter().zip(prob) {
                    new[usize::from(t)] += mass * p;
                }
            }
            // Renormalise so rounding does not drift the total mass.
            let total: f64 = new.iter().sum();
            new.iter_mut().for_each(|x| *x /= total);
            change = pi.iter().zip(&new).map(|(a, b)| (a - b).abs()).sum();
            std::mem::swap(&mut pi, &mut new);
            if change < STATIONARY_TOL {
                return Ok(pi);
            }
        }
        Err(SynthError::NoConvergence {
            iterations: max_iterations,
            change,
        })
    }

    /// The stationary distribution π.
    pub fn stationary(&self) -> &[f64] {
        &self.stationary
    }

    /// Entropy rate in nats: Σ_s π(s)·H(P(·|s)).
    pub fn entropy_rate(&self) -> f64 {
        (0..self.vocab())
            .map(|s| self.stationary[s] * entropy(self.row(s).1))
            .sum()
    }

    /// Entropy of the stationary distribution, H(π), in nats: the best
    /// loss of a unigram model.
    pub fn marginal_entropy(&self) -> f64 {
        entropy(&self.stationary)
    }

    /// `n` states of one trajectory: the first drawn from π, the rest by the
    /// chain.
    pub fn sample(&self, n: usize, rng: &mut impl rand::Rng) -> Vec<u16> {
        self.walk(&mut None, n, rng)
    }

    /// Continues a trajectory from `state` (None: start from π) for `n` steps,
    /// leaving the last state in `state`, so one chain can span many shards.
    fn walk<R: rand::Rng + ?Sized>(
        &self,
        state: &mut Option<usize>,
        n: usize,
        rng: &mut R,
    ) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let s = match *state {
                None => pick(&self.stationary_cum, u),
                Some(prev) => {
                    let r = self.offsets[prev]..self.offsets[prev + 1];
                    usize::from(self.next[r.start + pick(&self.cum[r], u)])
                }
            };
            // Lossless: states are < vocab <= 65536.
            out.push(s as u16);
            *state = Some(s);
        }
        out
    }
}

const MAX_TRAIN_SHARDS: usize = 999_999;

/// Parameters of a synthetic dataset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthConfig {
    pub vocab: usize,
    pub successors: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub shard_tokens: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            vocab: 64,
            successors: 4,
            train_tokens: 4_194_304,
            val_tokens: 262_144,
            shard_tokens: 100_000_000,
            seed: 1337,
        }
    }
}

impl SynthConfig {
    /// Checks every field, so bad settings fail before any file is written.
    pub fn validate(&self) -> Result<(), SynthError> {
        check_shape(self.vocab, self.successors)?;
        // The shard header's token count is an i32, and the val set is one shard.
        let max = i32::MAX as usize;
        for (field, value) in [
            ("train_tokens", self.train_tokens),
            ("val_tokens", self.val_tokens),
            ("shard_tokens", self.shard_tokens),
        ] {
            if value == 0 {
                return Err(SynthError::BadSize {
                    field,
                    value,
                    expected: "a positive count",
                });
            }
        }
        for (field, value) in [
            ("val_tokens", self.val_tokens),
            ("shard_tokens", self.shard_tokens),
        ] {
            if value > max {
                return Err(SynthError::BadSize {
                    field,
                    value,
                    expected: "at most 2147483647, the most one shard can hold",
                });
            }
        }
        // Shard names have six digits.
        if self.train_tokens.div_ceil(self.shard_tokens) > MAX_TRAIN_SHARDS {
            return Err(SynthError::BadSize {
                field: "train_tokens",
                value: self.train_tokens,
                expected: "at most 999999 shards of shard_tokens",
            });
        }
        Ok(())
    }
}

/// What `write_synth_dataset` wrote, also saved as `synth.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthSummary {
    pub config: SynthConfig,
    pub entropy_rate: f64,
    pub marginal_entropy: f64,
    pub train_files: Vec<PathBuf>,
    pub val_files: Vec<PathBuf>,
}

/// RNG streams of the dataset seed: the chain itself uses stream 0.
const TRAIN_STREAM: u64 = 1;
const VAL_STREAM: u64 = 2;

fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Writes a synthetic dataset into `dir`: train shards
/// `synth_train_000000.bin`, ... (one continuous chain, at most
/// `shard_tokens` each), `synth_val_000000.bin` (an independent chain), and
/// `synth.json`. The output depends only on `config`.
pub fn write_synth_dataset(dir: &Path, config: &SynthConfig) -> anyhow::Result<SynthSummary> {
    config.validate()?;
    let chain = MarkovChain::random(config.vocab, config.successors, config.seed)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let num_train = config.train_tokens.div_ceil(config.shard_tokens);
    let train_names: Vec<String> = (0..num_train)
        .map(|i| format!("synth_train_{i:06}.bin"))
        .collect();
    refuse_stale_train_shards(dir, &train_names)?;

    let mut rng = stream_rng(config.seed, TRAIN_STREAM);
    let mut state = None;
    let mut train_files = Vec::with_capacity(num_train);
    for (i, name) in train_names.iter().enumerate() {
        let start = i * config.shard_tokens;
        let n = config.shard_tokens.min(config.train_tokens - start);
        let tokens = chain.walk(&mut state, n, &mut rng);
        let path = dir.join(name);
        write_shard(&path, &tokens)?;
        train_files.push(path);
    }

    let val_path = dir.join("synth_val_000000.bin");
    let val = chain.sample(config.val_tokens, &mut stream_rng(config.seed, VAL_STREAM));
    write_shard(&val_path, &val)?;

    let summary = SynthSummary {
        config: config.clone(),
        entropy_rate: chain.entropy_rate(),
        marginal_entropy: chain.marginal_entropy(),
        train_files,
        val_files: vec![val_path],
    };
    write_json_atomic(&dir.join("synth.json"), &summary)?;
    Ok(summary)
}

/// A `synth_train_*.bin` left from a larger earlier dataset would be picked
/// up by the train glob and silently mix two datasets, so refuse it.
fn refuse_stale_train_shards(dir: &Path, planned: &[String]) -> anyhow::Result<()> {
    let pattern = format!(
        "{}/synth_train_*.bin",
        glob::Pattern::escape(&dir.to_string_lossy())
    );
    for entry in glob::glob(&pattern).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| planned.contains(&n)) {
            anyhow::bail!(
                "{}: stale train shard that this config ({} shards) would not overwrite; remove it or use an empty directory",
                path.display(),
                planned.len()
            );
        }
    }
    Ok(())
}

/// Writes pretty JSON via a temporary file in the same directory, fsync, rename.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(value)?;
    crate::atomic::write_file(path, |f| f.write_all(&json))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::Shard;

    /// P(to | from), 0 when `to` is not a successor.
    fn p(chain: &MarkovChain, from: usize, to: usize) -> f64 {
        let (next, prob) = chain.row(from);
        next.iter()
            .position(|&t| usize::from(t) == to)
            .map_or(0.0, |i| prob[i])
    }

    #[test]
    fn stationary_distribution_is_invariant_under_the_chain() {
        for (vocab, successors, seed) in [(64, 4, 1337), (1000, 8, 7), (3, 2, 0), (50, 50, 3)] {
            let chain = MarkovChain::random(vocab, successors, seed).expect("chain");
            let pi = chain.stationary();
            assert_eq!(pi.len(), vocab);
            assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(pi.iter().all(|&x| x > 0.0));
            let mut pi_p = vec![0.0; vocab];
            for (s, &mass) in pi.iter().enumerate() {
                for (t, x) in pi_p.iter_mut().enumerate() {
                    *x += mass * p(&chain, s, t);
                }
            }
            let err = pi
                .iter()
                .zip(&pi_p)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "vocab {vocab}: |πP - π| = {err}");
        }
    }

    #[test]
    fn rows_sum_to_one_with_distinct_successors_including_the_next_two() {
        let (vocab, successors) = (64, 5);
        let chain = MarkovChain::random(vocab, successors, 42).expect("chain");
        for s in 0..vocab {
            let (next, prob) = chain.row(s);
            assert_eq!(next.len(), successors);
            let mut sorted: Vec<u16> = next.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), successors, "row {s} repeats a successor");
            assert!(p(&chain, s, (s + 1) % vocab) > 0.0);
            assert!(p(&chain, s, (s + 2) % vocab) > 0.0);
            assert!((prob.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn different_seeds_give_different_chains_and_equal_seeds_equal_ones() {
        let a = MarkovChain::random(64, 4, 1).expect("chain");
        let b = MarkovChain::random(64, 4, 1).expect("chain");
        let c = MarkovChain::random(64, 4, 2).expect("chain");
        assert_eq!(a.prob, b.prob);
        assert_eq!(a.next, b.next);
        assert_ne!(a.prob, c.prob);
    }

    #[test]
    fn empirical_conditional_entropy_matches_entropy_rate() {
        let chain = MarkovChain::random(64, 4, 1337).expect("chain");
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let n = 2_000_001;
        let xs = chain.sample(n, &mut rng);
        let nll: Vec<f64> = xs
            .windows(2)
            .map(|w| -p(&chain, usize::from(w[0]), usize::from(w[1])).ln())
            .collect();
        assert!(
            nll.iter().all(|x| x.is_finite()),
            "sampled an impossible move"
        );
        let mean = nll.iter().sum::<f64>() / nll.len() as f64;
        // Successive terms are correlated through the state, so estimate the
        // standard error from the spread of 1000 block means (batch means),
        // not from the per-token variance.
        let blocks = 1000;
        let len = nll.len() / blocks;
        let block_means: Vec<f64> = nll
            .chunks_exact(len)
            .map(|c| c.iter().sum::<f64>() / len as f64)
            .collect();
        let bm = block_means.iter().sum::<f64>() / blocks as f64;
        let var = block_means.iter().map(|x| (x - bm).powi(2)).sum::<f64>() / (blocks - 1) as f64;
        let se = (var / blocks as f64).sqrt();
        let h = chain.entropy_rate();
        assert!(se > 0.0 && se < 0.005, "standard error {se}");
        assert!(
            (mean - h).abs() < 4.0 * se,
            "empirical {mean} vs entropy rate {h} (se {se})"
        );
        // Sanity: conditioning can only lower entropy, and the rate is below
        // ln(successors) (uniform rows) while being clearly positive.
        assert!(h < chain.marginal_entropy());
        assert!(h > 0.1 && h < 4f64.ln());
    }

    #[test]
    fn hand_made_two_state_chain_has_hand_computed_entropies() {
        // P = [[1/2, 1/2], [1, 0]]. π1 = π0/2 → π = (2/3, 1/3).
        // Entropy rate = 2/3·ln 2 + 1/3·0 = 0.6931471805599453·2/3 = 0.46209812037329687.
        // H(π) = ln 3 − 2/3·ln 2 = 1.0986122886681098 − 0.46209812037329687 = 0.63651416829481293.
        let chain =
            MarkovChain::from_rows(vec![vec![(0, 0.5), (1, 0.5)], vec![(0, 1.0)]]).expect("chain");
        let pi = chain.stationary();
        assert!((pi[0] - 2.0 / 3.0).abs() < 1e-12 && (pi[1] - 1.0 / 3.0).abs() < 1e-12);
        assert!((chain.entropy_rate() - 0.462_098_120_373_296_9).abs() < 1e-12);
        assert!((chain.marginal_entropy() - 0.636_514_168_294_812_9).abs() < 1e-12);
    }

    #[test]
    fn hand_made_doubly_stochastic_three_state_chain_has_hand_computed_entropies() {
        // Each state moves to one of the other two with probability 1/2: the
        // matrix is doubly stochastic so π is uniform, the entropy rate is
        // ln 2 = 0.6931471805599453 and H(π) = ln 3 = 1.0986122886681098.
        let chain = MarkovChain::from_rows(vec![
            vec![(1, 0.5), (2, 0.5)],
            vec![(0, 0.5), (2, 0.5)],
            vec![(0, 0.5), (1, 0.5)],
        ])
        .expect("chain");
        assert!(
            chain
                .stationary()
                .iter()
                .all(|&x| (x - 1.0 / 3.0).abs() < 1e-12)
        );
        assert!((chain.entropy_rate() - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((chain.marginal_entropy() - 1.098_612_288_668_109_8).abs() < 1e-12);
    }

    #[test]
    fn sample_never_takes_a_zero_probability_move() {
        // From 1 the only move is to 0, so every 1 is followed by 0.
        let chain =
            MarkovChain::from_rows(vec![vec![(0, 0.5), (1, 0.5)], vec![(0, 1.0)]]).expect("chain");
        let xs = chain.sample(10_000, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(xs.windows(2).all(|w| w[0] == 0 || w[1] == 0));
        // About a third of the time in state 1 (π1 = 1/3).
        let ones = xs.iter().filter(|&&x| x == 1).count() as f64 / xs.len() as f64;
        assert!((ones - 1.0 / 3.0).abs() < 0.03, "{ones}");
    }

    #[test]
    fn periodic_chain_reports_no_convergence() {
        // 0, 1, 3 → 2 and 2 → {0, 1}: period 2. From uniform, π alternates
        // between (1/8, 1/8, 3/4, 0) and (3/8, 3/8, 1/4, 0) forever.
        let periodic = MarkovChain::from_rows(vec![
            vec![(2, 1.0)],
            vec![(2, 1.0)],
            vec![(0, 0.5), (1, 0.5)],
            vec![(2, 1.0)],
        ]);
        assert!(
            matches!(periodic, Err(SynthError::NoConvergence { .. })),
            "period-2 chain must not converge"
        );
    }

    #[test]
    fn invalid_chain_parameters_are_errors() {
        assert!(matches!(
            MarkovChain::random(2, 2, 0),
            Err(SynthError::BadVocab { vocab: 2 })
        ));
        assert!(matches!(
            MarkovChain::random(70_000, 2, 0),
            Err(SynthError::BadVocab { .. })
        ));
        assert!(matches!(
            MarkovChain::random(10, 1, 0),
            Err(SynthError::BadSuccessors { .. })
        ));
        assert!(matches!(
            MarkovChain::random(10, 11, 0),
            Err(SynthError::BadSuccessors { .. })
        ));
        assert!(matches!(
            MarkovChain::random(65536, 65536, 0),
            Err(SynthError::TooManyEdges { .. })
        ));
        let bad_rows: [Vec<Vec<(usize, f64)>>; 4] = [
            vec![vec![(0, 0.5)]],
            vec![vec![(1, 1.0)]],
            vec![vec![(0, 0.5), (0, 0.5)]],
            vec![vec![]],
        ];
        for rows in bad_rows {
            assert!(matches!(
                MarkovChain::from_rows(rows),
                Err(SynthError::BadRow { state: 0, .. })
            ));
        }
        let mut config = SynthConfig {
            val_tokens: 0,
            ..SynthConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(SynthError::BadSize {
                field: "val_tokens",
                ..
            })
        ));
        config.val_tokens = 10;
        config.shard_tokens = 1 << 31;
        assert!(matches!(
            config.validate(),
            Err(SynthError::BadSize {
                field: "shard_tokens",
                ..
            })
        ));
        assert!(SynthConfig::default().validate().is_ok());
    }

    fn small_config() -> SynthConfig {
        SynthConfig {
            vocab: 16,
            successors: 3,
            train_tokens: 25_000,
            val_tokens: 5_000,
            shard_tokens: 10_000,
            seed: 11,
        }
    }

    #[test]
    fn synth_dataset_writes_openable_shards_and_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config();
        let summary = write_synth_dataset(dir.path(), &config).expect("write");
        // 25_000 tokens in shards of at most 10_000: 10_000, 10_000, 5_000.
        let names: Vec<_> = summary
            .train_files
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            [
                "synth_train_000000.bin",
                "synth_train_000001.bin",
                "synth_train_000002.bin"
            ]
        );
        let lens: Vec<usize> = summary
            .train_files
            .iter()
            .map(|p| Shard::open(p, 16).expect("train shard").len())
            .collect();
        assert_eq!(lens, [10_000, 10_000, 5_000]);
        assert_eq!(summary.val_files, [dir.path().join("synth_val_000000.bin")]);
        let val = Shard::open(&summary.val_files[0], 16).expect("val shard");
        assert_eq!(val.len(), 5_000);

        let json = std::fs::read_to_string(dir.path().join("synth.json")).expect("json");
        let saved: SynthSummary = serde_json::from_str(&json).expect("parse");
        // serde_json may round the last bit of an f64.
        assert!((saved.entropy_rate - summary.entropy_rate).abs() < 1e-15);
        assert_eq!(saved.train_files, summary.train_files);
        assert!(summary.entropy_rate > 0.0 && summary.entropy_rate < 3f64.ln());

        // The train shards are one trajectory: every move, including those
        // across shard boundaries, is a transition the chain allows.
        let chain = MarkovChain::random(16, 3, 11).expect("chain");
        let train: Vec<u16> = summary
            .train_files
            .iter()
            .flat_map(|p| Shard::open(p, 16).expect("open").tokens().to_vec())
            .collect();
        assert!(
            train
                .windows(2)
                .all(|w| p(&chain, usize::from(w[0]), usize::from(w[1])) > 0.0)
        );
        // Val is a different stream, not a copy of the train start.
        assert_ne!(&train[..5_000], val.tokens());
    }

    #[test]
    fn synth_dataset_is_deterministic() {
        let (a, b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let config = small_config();
        write_synth_dataset(a.path(), &config).expect("write a");
        write_synth_dataset(b.path(), &config).expect("write b");
        for name in [
            "synth_train_000000.bin",
            "synth_train_000001.bin",
            "synth_train_000002.bin",
            "synth_val_000000.bin",
        ] {
            let x = std::fs::read(a.path().join(name)).expect("read a");
            let y = std::fs::read(b.path().join(name)).expect("read b");
            assert!(x == y, "{name} differs between runs");
        }
        // Rewriting in place gives the same bytes too.
        let before = std::fs::read(a.path().join("synth_val_000000.bin")).expect("read");
        write_synth_dataset(a.path(), &config).expect("rewrite");
        let after = std::fs::read(a.path().join("synth_val_000000.bin")).expect("read");
        assert!(before == after);
    }

    #[test]
    fn synth_dataset_refuses_stale_train_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config();
        write_synth_dataset(dir.path(), &config).expect("write");
        let smaller = SynthConfig {
            train_tokens: 15_000,
            ..config
        };
        let err = write_synth_dataset(dir.path(), &smaller).expect_err("stale shard");
        assert!(err.to_string().contains("synth_train_000002.bin"), "{err}");
    }
}
