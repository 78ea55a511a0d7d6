//! Accuracy with confidence intervals, macro-F1, and paired tests between two runs.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Fraction of `correct`.
pub fn accuracy(correct: &[bool]) -> f64 {
    if correct.is_empty() {
        return f64::NAN;
    }
    correct.iter().filter(|&&c| c).count() as f64 / correct.len() as f64
}

/// Standard error of a mean of 0/1 outcomes, as lm-evaluation-harness reports it
/// (sample standard deviation / √n).
pub fn stderr(correct: &[bool]) -> f64 {
    let n = correct.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let p = accuracy(correct);
    (p * (1.0 - p) * n / (n - 1.0) / n).sqrt()
}

pub use pmc_train::probe::wilson;

/// Percentile bootstrap 95 % interval of the accuracy (`samples` resamples, seeded).
pub fn bootstrap(correct: &[bool], samples: usize, seed: u64) -> (f64, f64) {
    let n = correct.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..samples)
        .map(|_| (0..n).filter(|_| correct[rng.random_range(0..n)]).count() as f64 / n as f64)
        .collect();
    stats.sort_by(f64::total_cmp);
    (percentile(&stats, 0.025), percentile(&stats, 0.975))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Macro-averaged F1 over `classes` classes (a class never predicted nor present scores 0,
/// as scikit-learn's `f1_score(average="macro")` with `zero_division=0`).
pub fn macro_f1(gold: &[usize], pred: &[Option<usize>], classes: usize) -> f64 {
    let mut f1 = 0.0;
    for c in 0..classes {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p == Some(c))
            .count() as f64;
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g != c && **p == Some(c))
            .count() as f64;
        let fn_ = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p != Some(c))
            .count() as f64;
        let denom = 2.0 * tp + fp + fn_;
        f1 += if denom == 0.0 { 0.0 } else { 2.0 * tp / denom };
    }
    f1 / classes as f64
}

/// McNemar's exact test (two-sided binomial on the discordant pairs): `b` questions only run
/// A got right, `c` only run B. Returns the p-value.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X ≤ k) for X ~ Binomial(n, 1/2), doubled, in log space to stay finite for large n.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Paired bootstrap of the accuracy difference A − B: the 95 % interval and the share of
/// resamples where A does not beat B (a one-sided p-value for "A is better").
pub fn paired_bootstrap(a: &[bool], b: &[bool], samples: usize, seed: u64) -> (f64, f64, f64) {
    let n = a.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut diffs: Vec<f64> = (0..samples)
        .map(|_| {
            let mut d = 0i64;
            for _ in 0..n {
                let i = rng.random_range(0..n);
                d += a[i] as i64 - b[i] as i64;
            }
            d as f64 / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let not_better = diffs.iter().filter(|&&d| d <= 0.0).count() as f64 / samples as f64;
    (
        percentile(&diffs, 0.025),
        percentile(&diffs, 0.975),
        not_better,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_a_hand_computed_case() {
        // 8 of 10: centre (0.8 + 1.92/20)/(1 + 3.84/10), computed by hand with z = 1.96.
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert!(wilson(0, 0).0.is_nan());
    }

    #[test]
    fn accuracy_and_stderr() {
        let c = [true, true, false, true];
        assert_eq!(accuracy(&c), 0.75);
        // sample std of [1,1,0,1] = 0.5, / sqrt(4) = 0.25
        assert!((stderr(&c) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn macro_f1_hand_case() {
        // gold: yes yes no maybe; pred: yes no no none.
        let gold = [0, 0, 1, 2];
        let pred = [Some(0), Some(1), Some(1), None];
        // yes: tp1 fp0 fn1 -> 2/3; no: tp1 fp1 fn0 -> 2/3; maybe: 0.
        assert!((macro_f1(&gold, &pred, 3) - 4.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn mcnemar_hand_cases() {
        // b = 0, c = 5: 2 * (1/2)^5 = 0.0625
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b = 2, c = 8: 2 * (1 + 10 + 45) / 1024
        assert!((mcnemar_exact(2, 8) - 2.0 * 56.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
    }

    #[test]
    fn bootstrap_brackets_the_accuracy() {
        let c: Vec<bool> = (0..400).map(|i| i % 4 != 0).collect();
        let (lo, hi) = bootstrap(&c, 2000, 1);
        assert!(lo < 0.75 && 0.75 < hi && hi - lo < 0.1, "{lo} {hi}");
        let (dlo, dhi, p) = paired_bootstrap(&c, &c, 500, 2);
        assert_eq!((dlo, dhi, p), (0.0, 0.0, 1.0));
    }
}
