//! Rate pacing: a token bucket that sleeps, and a precise wait.
//!
//! [`TokenBucket`] grants datagrams at `rate` per second with a small burst allowance, so the
//! offered rate holds on average even when single sends are late (a stall shorter than the
//! burst window is made up, a longer one is not). It hands tokens out a tick's worth at a time
//! ([`TokenBucket::TICK`], about 1 ms of the rate, at most one batch) and sleeps while they
//! accrue: granting them one by one as they appear would have the sender wake every few
//! microseconds, which on a 2-core machine is a whole core taken from the receivers being
//! measured. The rate is counted from elapsed time, so a sleep that overshoots costs no rate,
//! only a slightly larger next batch.
//!
//! [`wait_until`] sleeps for the bulk of a wait and spins (yielding) for the last stretch,
//! because a sleep alone overshoots by the timer slack; only unthrottled storm timing uses it.
//! [`sleep_until`] only sleeps. [`tighten_timer_slack`] lowers the slack for this thread.

use std::thread;
use std::time::{Duration, Instant};

/// Waits shorter than this spin instead of sleeping.
const SPIN_BELOW: Duration = Duration::from_micros(150);
/// A sleep is cut this much short and the rest spun.
const SLEEP_MARGIN: Duration = Duration::from_micros(80);

/// Sleeps and spins until `deadline`.
pub fn wait_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        let Some(left) = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        if left > SPIN_BELOW {
            thread::sleep(left - SLEEP_MARGIN);
        } else if left > Duration::from_micros(20) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Sleeps until `deadline` without spinning (ends up to a timer slack plus a scheduling delay
/// late).
pub fn sleep_until(deadline: Instant) {
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !left.is_zero() {
            thread::sleep(left);
        }
    }
}

/// Asks Linux for 1 µs timer slack on this thread (default 50 µs), so sleeps end on time.
/// Best effort: failure only makes pacing spin a little more.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Grants sends at a fixed rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Datagrams per second; 0 means no limit.
    rate: f64,
    /// Most tokens that can pile up.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// How much lateness the bucket makes up for.
    pub const BURST_WINDOW: Duration = Duration::from_millis(25);
    /// How much of the rate [`TokenBucket::take`] lets accrue before it grants: the sender
    /// wakes about once per tick (or once per full batch, when that comes sooner).
    pub const TICK: Duration = Duration::from_millis(1);

    /// A bucket for `rate` datagrams per second (0 = unthrottled), starting with one token at
    /// `start`. Bursts are capped at 25 ms worth of tokens, and at least `batch`.
    pub fn new(rate: u64, batch: usize, start: Instant) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            burst: (rate * Self::BURST_WINDOW.as_secs_f64()).max(batch.max(1) as f64),
            tokens: 1.0,
            last: start,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Tokens worth waking up for: a tick of the rate, at least one, at most `want` (so
    /// never more than the burst cap, which holds at least a tick and a batch).
    fn quantum(&self, want: usize) -> f64 {
        (self.rate * Self::TICK.as_secs_f64())
            .floor()
            .max(1.0)
            .min(want as f64)
    }

    /// Sleeps until a tick's worth of datagrams (or `want`, if fewer) may go and returns how
    /// many may go now (1 to `want`); the caller returns unused ones with
    /// [`TokenBucket::refund`]. It never spins: the wait is one sleep, and an overslept
    /// wait only makes the grant larger.
    pub fn take(&mut self, want: usize) -> usize {
        if self.rate <= 0.0 || want == 0 {
            return want;
        }
        let need = self.quantum(want);
        loop {
            self.refill(Instant::now());
            if self.tokens >= need {
                let n = (self.tokens.floor() as usize).min(want);
                self.tokens -= n as f64;
                return n;
            }
            let wait = Duration::from_secs_f64((need - self.tokens) / self.rate);
            sleep_until(self.last + wait);
        }
    }

    /// Gives back tokens taken but not used.
    pub fn refund(&mut self, n: usize) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + n as f64).min(self.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unthrottled_grants_everything() {
        let mut b = TokenBucket::new(0, 64, Instant::now());
        assert_eq!(b.take(64), 64);
        assert_eq!(b.take(0), 0);
    }

    #[test]
    fn rate_holds_within_two_percent() {
        tighten_timer_slack();
        // The first token is there at start: 4,999 intervals of 50 µs.
        let ideal = 4_999.0 / 20_000.0;
        // Never early; late only when this loaded machine deschedules the thread for longer
        // than the burst window, so up to three tries for that one.
        let mut times = Vec::new();
        for _ in 0..3 {
            // 20,000/s for 0.25 s: 5,000 grants, with the batches the bucket hands out.
            let start = Instant::now();
            let mut b = TokenBucket::new(20_000, 16, start);
            let mut granted = 0;
            while granted < 5_000 {
                granted += b.take((5_000 - granted).min(16));
            }
            let secs = start.elapsed().as_secs_f64();
            assert!(secs >= ideal * 0.98, "{secs} s, too fast");
            times.push(secs);
            if secs <= ideal * 1.10 {
                return;
            }
        }
        panic!("{times:?} s against {ideal} s: too slow three times (loaded machine?)");
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        // SAFETY: rusage is plain integers, so all zeroes is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes one rusage, ours, for the calling thread.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        assert_eq!(rc, 0);
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
    }

    #[test]
    fn grants_a_tick_at_a_time_and_sleeps_between() {
        tighten_timer_slack();
        // 50,000/s in batches of 64: a tick is 50 datagrams, so no grant is smaller (the old
        // bucket granted 1 or 2 every 20 µs and spun in between).
        let start = Instant::now();
        let cpu = thread_cpu();
        let mut b = TokenBucket::new(50_000, 64, start);
        let mut grants = Vec::new();
        let mut granted = 0;
        while granted < 10_000 {
            let n = b.take(64);
            grants.push(n);
            granted += n;
        }
        let wall = start.elapsed();
        let cpu = thread_cpu() - cpu;
        assert!(grants.iter().all(|&n| n >= 50), "{grants:?}");
        assert!(grants.len() <= 10_000 / 50, "{} grants", grants.len());
        // 0.2 s of waiting that costs next to no CPU (generous: a loaded machine's sleeps
        // cost more than an idle one's).
        assert!(wall >= Duration::from_millis(195), "{wall:?}");
        assert!(cpu < wall / 4, "{cpu:?} of CPU in {wall:?}");
    }

    #[test]
    fn refund_and_burst_cap() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1_000, 8, start);
        assert_eq!(b.take(8), 1);
        b.refund(1);
        // After a long pause at most `burst` (25 ms at 1000/s) pile up.
        b.refill(start + Duration::from_secs(10));
        assert_eq!(b.tokens, 25.0);
    }

    #[test]
    fn waits_are_not_early() {
        tighten_timer_slack();
        for us in [10, 200, 2_000] {
            let t = Instant::now() + Duration::from_micros(us);
            wait_until(t);
            assert!(Instant::now() >= t);
        }
    }
}
