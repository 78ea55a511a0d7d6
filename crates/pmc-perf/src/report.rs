//! The comparison tables every benchmark prints: medians over alternating rounds and the
//! per-round ratio of ours to each reference, with its range.

/// Bytes as GiB with two decimals.
pub fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

/// Tokens per second with one decimal.
pub fn tok_per_s(x: f64) -> String {
    format!("{x:.1} tok/s")
}

/// One row of a comparison table over rounds of figures `F`.
pub struct Metric<F> {
    name: &'static str,
    get: fn(&F) -> Option<f64>,
    format: fn(f64) -> String,
}

impl<F> Metric<F> {
    pub fn new(name: &'static str, get: fn(&F) -> Option<f64>, format: fn(f64) -> String) -> Self {
        Self { name, get, format }
    }

    /// `| name | ours | theirs | ratio | theirs | ratio |…`: medians over the rounds, and
    /// for each reference the per-round ratio's median and range (`n/a` where a reference
    /// did not run every round). `None` when ours has no such figure.
    pub fn row(&self, ours: &[F], references: &[Vec<F>]) -> Option<String> {
        let ours: Vec<f64> = ours.iter().filter_map(self.get).collect();
        let mut line = format!("| {} | {} |", self.name, (self.format)(median(&ours)?));
        for reference in references {
            let theirs: Vec<f64> = reference.iter().filter_map(self.get).collect();
            match median(&theirs) {
                Some(t) if theirs.len() == ours.len() => {
                    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| o / t).collect();
                    line += &format!(" {} | {} |", (self.format)(t), ratio_summary(&ratios));
                }
                _ => line += " n/a | n/a |",
            }
        }
        Some(line)
    }
}

/// The median of `values` (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// `1.23 × (1.10–1.31)`: the median ratio and its range over the rounds.
pub fn ratio_summary(ratios: &[f64]) -> String {
    let Some(mid) = median(ratios) else {
        return "n/a".into();
    };
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mid:.2} × ({lo:.2}–{hi:.2})")
}
