//! Latency summaries: median, 99th percentile and maximum, and the points of a CDF plot.
//!
//! Percentiles are nearest-rank (the smallest sample with at least p% of samples at or below
//! it), so every reported figure is a measured value.

use serde::{Deserialize, Serialize};

/// A summary of samples in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=100); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Summary {
    /// The summary of `samples` (any order; NaNs are dropped), `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let sorted = sorted(samples);
        Some(Summary {
            count: sorted.len(),
            min_ms: *sorted.first()?,
            median_ms: percentile(&sorted, 50.0)?,
            p99_ms: percentile(&sorted, 99.0)?,
            max_ms: *sorted.last()?,
        })
    }
}

/// `samples` without NaNs, ascending.
pub fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// At most `points` samples of the sorted values, evenly spaced by rank and always including
/// the first and the last, for a CDF: point `k` of `n` sits at cumulative share `(k+1)/n`.
pub fn cdf_points(sorted: &[f64], points: usize) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 || points == 0 {
        return Vec::new();
    }
    let take = points.min(n);
    (0..take)
        .map(|k| {
            // Ranks 1..=n spread over `take` points, ending at n.
            let rank = if take == 1 {
                n
            } else {
                1 + k * (n - 1) / (take - 1)
            };
            (sorted[rank - 1], rank as f64 / n as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Summary::of(&[5.0, f64::NAN, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                count: 3,
                min_ms: 1.0,
                median_ms: 3.0,
                p99_ms: 5.0,
                max_ms: 5.0
            }
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn cdf_keeps_both_ends() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let pts = cdf_points(&v, 11);
        assert_eq!(pts.len(), 11);
        assert_eq!(pts[0], (0.0, 0.001));
        assert_eq!(pts[10], (999.0, 1.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf_points(&[4.0, 7.0], 10), vec![(4.0, 0.5), (7.0, 1.0)]);
        assert_eq!(cdf_points(&[4.0], 1), vec![(4.0, 1.0)]);
        assert!(cdf_points(&[], 5).is_empty());
    }
}
