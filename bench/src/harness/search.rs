//! The lossless-rate search (RFC 2544, section 26.1, by binary search).
//!
//! The first trial runs at the highest rate worth trying (what the baseline receiver took);
//! if nothing is lost there, that is the answer. Otherwise each trial halves the interval
//! between the highest rate known lossless (0 at first) and the lowest rate known lossy, for
//! a fixed number of trials or until the interval is narrower than the resolution. The answer
//! is the highest rate that was measured lossless, never an interpolation.

/// See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSearch {
    /// Highest rate measured lossless (0: none yet).
    lossless: u64,
    /// Lowest rate measured lossy.
    lossy: Option<u64>,
    next: Option<u64>,
    trials_left: usize,
    resolution: u64,
}

impl RateSearch {
    /// A search starting at `max` datagrams per second, for at most `trials` trials, stopping
    /// when the interval is narrower than `resolution`.
    pub fn new(max: u64, trials: usize, resolution: u64) -> Self {
        Self {
            lossless: 0,
            lossy: None,
            next: (max > 0 && trials > 0).then_some(max),
            trials_left: trials,
            resolution: resolution.max(1),
        }
    }

    /// The rate of the next trial, `None` when the search is over.
    pub fn next_rate(&self) -> Option<u64> {
        self.next
    }

    /// Records the outcome of a trial at `rate`.
    pub fn record(&mut self, rate: u64, lossless: bool) {
        self.trials_left = self.trials_left.saturating_sub(1);
        if lossless {
            self.lossless = self.lossless.max(rate);
        } else {
            self.lossy = Some(self.lossy.map_or(rate, |l| l.min(rate)));
        }
        self.next = match self.lossy {
            // Lossless at the top: nothing higher to find.
            None => None,
            Some(_) if self.trials_left == 0 => None,
            Some(hi) if hi <= self.lossless + self.resolution => None,
            Some(hi) => Some(self.lossless + (hi - self.lossless) / 2),
        };
    }

    /// The highest rate measured lossless, if any.
    pub fn result(&self) -> Option<u64> {
        (self.lossless > 0).then_some(self.lossless)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a target that is lossless up to `capacity`.
    fn search(max: u64, trials: usize, capacity: u64) -> (Option<u64>, Vec<u64>) {
        let mut s = RateSearch::new(max, trials, max / 200);
        let mut rates = Vec::new();
        while let Some(r) = s.next_rate() {
            rates.push(r);
            s.record(r, r <= capacity);
        }
        (s.result(), rates)
    }

    #[test]
    fn lossless_at_the_top_takes_one_trial() {
        assert_eq!(search(100_000, 8, 200_000), (Some(100_000), vec![100_000]));
    }

    #[test]
    fn bisects_towards_the_capacity() {
        let (result, rates) = search(100_000, 8, 23_000);
        assert_eq!(
            rates,
            [100_000, 50_000, 25_000, 12_500, 18_750, 21_875, 23_437, 22_656]
        );
        assert_eq!(result, Some(22_656));
        // Eight trials from 100,000 find the capacity within 100,000 / 2^7.
        assert!(23_000 - result.unwrap() < 100_000 / 128);
    }

    #[test]
    fn stops_at_the_resolution_and_reports_none_when_all_lose() {
        let (result, rates) = search(1000, 50, 700);
        assert!(rates.len() < 12, "{rates:?}");
        assert!(700 - result.unwrap() <= 5);
        let (result, rates) = search(1000, 5, 0);
        assert_eq!(result, None);
        assert_eq!(rates, [1000, 500, 250, 125, 62]);
        assert_eq!(RateSearch::new(0, 5, 1).next_rate(), None);
    }
}
