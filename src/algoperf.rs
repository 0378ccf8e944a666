//! AlgoPerf's scoring of training algorithms by time to target (Dahl et al. 2023, "Benchmarking
//! Neural Network Training Algorithms"; mlcommons/algorithmic-efficiency), as the lectures
//! describe it. For each workload w and submission s: the time t(s, w) is, in each study, the
//! fastest trial that reached the target, then the median over studies (∞ where none did); the
//! ratio r(s, w) = t(s, w) / min over submissions of t(·, w); the performance profile
//! ρ_s(τ) = the share of workloads with r(s, w) ≤ τ; and the score is the normalised area under
//! ρ_s over τ in [1, r_max] with r_max = 4, so a submission more than 4× slower than the best
//! (or that never reaches the target) earns nothing on that workload and 1.0 means fastest on
//! every workload. The area of the step function ρ_s is computed exactly:
//! score_s = (1/|W|)·Σ_w max(0, r_max − r(s, w))/(r_max − 1).

/// Where ratios stop earning credit.
pub const MAX_RATIO: f64 = 4.0;

/// The times of one submission on one workload: per study, each trial's time to target (None:
/// never reached within its budget).
pub type Trials = Vec<Vec<Option<f64>>>;

/// t(s, w): the fastest trial of each study, then the median over studies; ∞ if there are no
/// studies. An even number of studies takes the mean of the two middle values (∞ if either is).
pub fn time_to_target(studies: &[Vec<Option<f64>>]) -> f64 {
    let best: Vec<f64> = studies
        .iter()
        .map(|trials| {
            trials
                .iter()
                .filter_map(|&t| t)
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    if best.is_empty() {
        return f64::INFINITY;
    }
    median(best)
}

/// The middle value, or the mean of the two middle values of an even count (∞ counts as
/// larger than everything). `values` must not be empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The ratios r(s, w): `times[s][w]` over the best time of workload w. A workload nobody
/// reached gives every submission ∞.
pub fn ratios(times: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let workloads = times.first().map_or(0, Vec::len);
    let best: Vec<f64> = (0..workloads)
        .map(|w| times.iter().map(|t| t[w]).fold(f64::INFINITY, f64::min))
        .collect();
    times
        .iter()
        .map(|t| {
            t.iter()
                .zip(&best)
                // t == b is the fastest (also at 0 s: a target met before training).
                .map(|(&t, &b)| match t {
                    t if t == b && t.is_finite() => 1.0,
                    t if t.is_finite() => t / b,
                    _ => f64::INFINITY,
                })
                .collect()
        })
        .collect()
}

/// ρ(τ): the share of workloads whose ratio is at most τ.
pub fn profile(ratios: &[f64], tau: f64) -> f64 {
    if ratios.is_empty() {
        return 0.0;
    }
    ratios.iter().filter(|&&r| r <= tau).count() as f64 / ratios.len() as f64
}

/// The normalised area under ρ over [1, [`MAX_RATIO`]].
pub fn score(ratios: &[f64]) -> f64 {
    if ratios.is_empty() {
        return 0.0;
    }
    let credit: f64 = ratios
        .iter()
        .map(|&r| (MAX_RATIO - r.max(1.0)).max(0.0))
        .sum();
    credit / (MAX_RATIO - 1.0) / ratios.len() as f64
}

/// Every submission's score from its trials: `trials[s][w]` are submission s's studies on
/// workload w.
pub fn scores(trials: &[Vec<Trials>]) -> Vec<f64> {
    let times: Vec<Vec<f64>> = trials
        .iter()
        .map(|per_workload| per_workload.iter().map(|s| time_to_target(s)).collect())
        .collect();
    ratios(&times).iter().map(|r| score(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn time_to_target_is_the_median_of_each_studys_fastest_trial() {
        // Studies' fastest: 10, 30, never → median 30.
        let studies = vec![
            vec![Some(12.0), Some(10.0), None],
            vec![None, Some(30.0)],
            vec![None, None],
        ];
        assert_eq!(time_to_target(&studies), 30.0);
        // Two of three studies never reached it: the median is ∞.
        let studies = vec![vec![None], vec![Some(5.0)], vec![None]];
        assert_eq!(time_to_target(&studies), INF);
        // Two studies: the mean of 4 and 6.
        assert_eq!(time_to_target(&[vec![Some(4.0)], vec![Some(6.0)]]), 5.0);
        assert_eq!(time_to_target(&[]), INF);
    }

    #[test]
    fn one_workload_scores_by_the_ratio_to_the_fastest() {
        // t = 10 and 20: ratios 1 and 2; scores (4 − 1)/3 = 1 and (4 − 2)/3 = 2/3.
        let s = scores(&[vec![vec![vec![Some(10.0)]]], vec![vec![vec![Some(20.0)]]]]);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - 2.0 / 3.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn ties_share_the_best_score_and_four_times_slower_earns_nothing() {
        let times = vec![vec![10.0], vec![10.0], vec![40.0], vec![50.0]];
        let r = ratios(&times);
        assert_eq!(r, vec![vec![1.0], vec![1.0], vec![4.0], vec![5.0]]);
        let s: Vec<f64> = r.iter().map(|r| score(r)).collect();
        assert_eq!(s, vec![1.0, 1.0, 0.0, 0.0]);
        // A target met before any training (0 s) is the fastest, not 0/0.
        assert_eq!(
            ratios(&[vec![0.0], vec![0.0], vec![3.0]])[..2],
            [vec![1.0], vec![1.0]]
        );
    }

    #[test]
    fn unreached_targets_count_as_infinitely_slow() {
        // Three workloads. A: 10, ∞, 25. B: 30, 15, ∞. C: nobody reaches it.
        let times = vec![
            vec![10.0, 30.0, INF],
            vec![INF, 15.0, INF],
            vec![25.0, INF, INF],
        ];
        let r = ratios(&times);
        assert_eq!(r[0], vec![1.0, 2.0, INF]);
        assert_eq!(r[1], vec![INF, 1.0, INF]);
        assert_eq!(r[2], vec![2.5, INF, INF]);
        // Scores by hand: (3 + 2 + 0)/3/3, (0 + 3 + 0)/9, (1.5 + 0 + 0)/9.
        let s: Vec<f64> = r.iter().map(|r| score(r)).collect();
        let want = [5.0 / 9.0, 3.0 / 9.0, 1.5 / 9.0];
        for (got, want) in s.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        // The profile of the first: ρ(1) = 1/3, ρ(2) = 2/3, never 1.
        assert_eq!(profile(&r[0], 1.0), 1.0 / 3.0);
        assert_eq!(profile(&r[0], 2.0), 2.0 / 3.0);
        assert_eq!(profile(&r[0], MAX_RATIO), 2.0 / 3.0);
    }

    #[test]
    fn the_score_is_the_area_under_the_profile() {
        // Numerical integration of ρ over [1, 4] agrees with the closed form.
        let r = [1.0, 1.7, 3.2, 9.0];
        let n = 300_000;
        let area: f64 = (0..n)
            .map(|i| profile(&r, 1.0 + 3.0 * (i as f64 + 0.5) / n as f64))
            .sum::<f64>()
            / n as f64;
        assert!((area - score(&r)).abs() < 1e-4, "{area} vs {}", score(&r));
    }
}
