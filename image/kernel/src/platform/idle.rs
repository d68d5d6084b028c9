//! The idle halt: a poll loop that sleeps when there is nothing to poll.
//!
//! A spinning guest keeps its vCPU thread at 100 % and, under QEMU on a small host, takes
//! the core that QEMU's I/O thread needs to move frames from the host socket into the
//! receive ring. So after [`EMPTY_TURNS`] consecutive loop turns without work, [`Idle`]
//! arms the local APIC timer ([`super::apic`]) and halts, never past the caller's next
//! deadline. Devices stay in poll mode with their interrupts off, so only the timer wakes
//! the CPU. While turns keep finding work the loop never halts; once it is idle it halts
//! again after every empty turn.
//!
//! How long: the configured period `P` (`idle.halt=`, default [`DEFAULT_HALT_US`] us) while
//! work is recent, growing to a quarter of the time since the last work, up to
//! [`BACKOFF`]` x P`. Measured under QEMU TCG, every halt costs QEMU's main loop (which
//! also moves the frames) about 70 us of host CPU for the timer, so short halts during
//! traffic keep the guest's bursts short and the I/O thread served, and long halts in
//! quiet times keep an idle relay near 10 % of a host core instead of 100 %. The added
//! latency is at most `BACKOFF x P` for the first frame after a quiet spell, and `P` during
//! traffic; the receive ring holds far more than that.
//!
//! Command line: `idle.halt=off` keeps the old pure spin (no APIC is touched);
//! `idle.halt=<N>us` or `<N>ms` sets `P` ([`MIN_PERIOD_US`]..=[`MAX_PERIOD_US`]).

/// Default longest halt, in microseconds.
pub const DEFAULT_HALT_US: u64 = 100;
/// The longest halt, as a multiple of the configured period.
pub const BACKOFF: u64 = 10;
/// Consecutive empty turns before the first halt.
pub const EMPTY_TURNS: u32 = 4;
/// A halt shorter than this is not worth arming the timer for: spin instead.
pub const MIN_HALT_US: u64 = 10;
/// Shortest configurable period.
pub const MIN_PERIOD_US: u64 = 10;
/// Longest configurable period.
pub const MAX_PERIOD_US: u64 = 1_000;
/// The command-line key.
pub const KEY: &str = "idle.halt";

/// What `idle.halt=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltSetting {
    /// Spin: never halt.
    Off,
    /// Halt for at most this many microseconds.
    Micros(u64),
}

/// Parses the value of `idle.halt=` (`None`: key absent, the default period).
pub fn parse_setting(value: Option<&str>) -> Result<HaltSetting, &'static str> {
    let Some(value) = value else {
        return Ok(HaltSetting::Micros(DEFAULT_HALT_US));
    };
    if value == "off" {
        return Ok(HaltSetting::Off);
    }
    let micros = if let Some(n) = value.strip_suffix("us") {
        n.parse::<u64>().ok()
    } else if let Some(n) = value.strip_suffix("ms") {
        n.parse::<u64>().ok().and_then(|n| n.checked_mul(1000))
    } else {
        None
    };
    match micros {
        Some(us) if (MIN_PERIOD_US..=MAX_PERIOD_US).contains(&us) => Ok(HaltSetting::Micros(us)),
        Some(_) => Err("the halt period must be between 10us and 1ms"),
        None => Err("expected `off` or a period such as 100us or 1ms"),
    }
}

/// When to halt: the pure part of [`Idle`].
#[derive(Clone, Debug)]
pub struct IdlePolicy {
    period_us: u64,
    empty_turns: u32,
    /// When the last turn with work ran.
    last_work_us: u64,
}

impl IdlePolicy {
    /// A policy that halts for at most `period_us`.
    pub fn new(period_us: u64) -> Self {
        Self {
            period_us,
            empty_turns: 0,
            last_work_us: 0,
        }
    }

    /// After a loop turn: how long to halt (microseconds), or `None` to keep spinning.
    /// `deadline_us` is the earliest time something must run (relay timers, counters).
    pub fn after_turn(
        &mut self,
        worked: bool,
        now_us: u64,
        deadline_us: Option<u64>,
    ) -> Option<u64> {
        if worked {
            self.empty_turns = 0;
            self.last_work_us = now_us;
            return None;
        }
        self.empty_turns = self.empty_turns.saturating_add(1);
        if self.empty_turns < EMPTY_TURNS {
            return None;
        }
        let idle_for = now_us.saturating_sub(self.last_work_us);
        let want = (idle_for / 4).clamp(self.period_us, self.period_us * BACKOFF);
        let until = deadline_us.map_or(now_us + want, |d| d.min(now_us + want));
        let halt = until.saturating_sub(now_us);
        (halt >= MIN_HALT_US).then_some(halt)
    }
}

/// What the idle halt has done, for the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleReport {
    /// Halts since boot.
    pub halts: u64,
    /// Microseconds spent halted since boot.
    pub halted_us: u64,
    /// Interrupts other than the timer's since boot (none expected).
    pub stray_interrupts: u64,
}

#[cfg(all(target_os = "none", not(test)))]
pub use machine::Idle;

#[cfg(all(target_os = "none", not(test)))]
mod machine {
    use super::*;
    use crate::platform::apic::{self, LocalApic};
    use crate::platform::clock;

    /// The idle halt on the local APIC timer. See the module doc.
    pub struct Idle {
        policy: IdlePolicy,
        apic: LocalApic,
        halts: u64,
        halted_ticks: u64,
    }

    impl Idle {
        /// Sets up the local APIC and its timer for halts of at most `period_us`.
        pub fn start(period_us: u64) -> Result<Idle, apic::ApicError> {
            Ok(Idle {
                policy: IdlePolicy::new(period_us),
                apic: apic::init()?,
                halts: 0,
                halted_ticks: 0,
            })
        }

        /// The APIC and timer in use, for the console.
        pub fn apic(&self) -> &LocalApic {
            &self.apic
        }

        /// Called once per loop turn: halts when the policy says so.
        #[inline]
        pub fn after_turn(&mut self, worked: bool, now_us: u64, deadline_us: Option<u64>) {
            let Some(micros) = self.policy.after_turn(worked, now_us, deadline_us) else {
                return;
            };
            let start = clock::tsc();
            let deadline_tsc = start + micros * clock::tsc_hz() / 1_000_000;
            self.apic.halt_until(micros, deadline_tsc);
            self.halts += 1;
            self.halted_ticks += clock::tsc().wrapping_sub(start);
        }

        /// Counters since boot.
        pub fn report(&self) -> IdleReport {
            IdleReport {
                halts: self.halts,
                halted_us: clock::ticks_to_micros_calibrated(self.halted_ticks),
                stray_interrupts: apic::stray_interrupts(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn with work at `busy_us`, then the empty turns at `quiet_us` that do not halt
    /// yet: after it, the next empty turn is the first that may.
    fn work_then_quiet(p: &mut IdlePolicy, busy_us: u64, quiet_us: u64) {
        assert_eq!(p.after_turn(true, busy_us, None), None);
        for _ in 0..EMPTY_TURNS - 1 {
            assert_eq!(p.after_turn(false, quiet_us, None), None);
        }
    }

    /// A policy halting for `period_us` that worked at `busy_us` and has been quiet since
    /// ([`work_then_quiet`]): its next empty turn is the first that may halt.
    fn gone_quiet(period_us: u64, busy_us: u64, quiet_us: u64) -> IdlePolicy {
        let mut p = IdlePolicy::new(period_us);
        work_then_quiet(&mut p, busy_us, quiet_us);
        p
    }

    #[test]
    fn settings_parse_periods_and_off() {
        assert_eq!(
            parse_setting(None),
            Ok(HaltSetting::Micros(DEFAULT_HALT_US))
        );
        assert_eq!(parse_setting(Some("off")), Ok(HaltSetting::Off));
        assert_eq!(parse_setting(Some("150us")), Ok(HaltSetting::Micros(150)));
        assert_eq!(parse_setting(Some("1ms")), Ok(HaltSetting::Micros(1000)));
        for bad in [
            "", "100", "us", "5us", "2ms", "1001us", "-1us", "1.5ms", "on",
        ] {
            assert!(parse_setting(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn halts_only_after_enough_empty_turns_and_again_after_each() {
        let mut p = gone_quiet(100, 1000, 1001);
        assert_eq!(p.after_turn(false, 1002, None), Some(100));
        // Still idle: the next empty turn halts at once.
        assert_eq!(p.after_turn(false, 1102, None), Some(100));
        // Work resets the count.
        assert_eq!(p.after_turn(true, 1200, None), None);
        assert_eq!(p.after_turn(false, 1201, None), None);
    }

    #[test]
    fn halts_grow_with_the_quiet_time_up_to_the_backoff() {
        let mut p = gone_quiet(100, 10_000, 10_001);
        assert_eq!(p.after_turn(false, 10_200, None), Some(100));
        assert_eq!(p.after_turn(false, 12_000, None), Some(500));
        assert_eq!(p.after_turn(false, 20_000, None), Some(100 * BACKOFF));
        assert_eq!(p.after_turn(false, 900_000, None), Some(100 * BACKOFF));
        // Work brings the period back at once.
        work_then_quiet(&mut p, 900_010, 900_011);
        assert_eq!(p.after_turn(false, 900_020, None), Some(100));
    }

    #[test]
    fn never_halts_past_the_deadline() {
        let mut p = gone_quiet(200, 1000, 1000);
        assert_eq!(p.after_turn(false, 1000, Some(1050)), Some(50));
        assert_eq!(p.after_turn(false, 1000, Some(5000)), Some(200));
        // Too close (or past): spin and let the loop run it.
        assert_eq!(p.after_turn(false, 1000, Some(1005)), None);
        assert_eq!(p.after_turn(false, 1000, Some(900)), None);
    }
}
