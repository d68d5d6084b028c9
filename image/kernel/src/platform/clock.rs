//! The monotonic clock: the TSC, calibrated at boot and refined once the board runs.
//!
//! Calibration source, best first: CPUID leaf 0x15 when it names both the TSC/crystal ratio
//! and the crystal frequency (exact, costs nothing); the hypervisor's timing leaf
//! 0x4000_0010 (TSC kHz; KVM with `vmware-cpuid-freq`, VMware, others); otherwise the i8254
//! PIT, whose channel 0 is reprogrammed as a free-running 1.193182 MHz down-counter and read
//! through the latch command (works under TCG and KVM, needs no speaker port, so microvm
//! works too); otherwise CPUID 0x16's nominal base frequency; otherwise a loud guess.
//! Under QEMU TCG the TSC follows the host's TSC and the PIT follows QEMU's virtual clock,
//! which tracks real time, so the PIT measurement is what makes `now_micros` real time.
//!
//! The boot window on the PIT is at least [`PIT_BOOT_WINDOW_TICKS`] (1 ms: it used to be 5 ms,
//! a quarter of the time from kernel entry to `ready` under TCG), which is good to about
//! 0.1-0.3 %. It is not a busy wait: [`calibrate_begin`] starts it and [`Calibrating::finish`]
//! ends it after the rest of the platform's bring-up (RTC, heap, ACPI, PCI: a millisecond or
//! more) ran inside it, waiting only for what is left of the millisecond. For that window
//! channel 0 counts down once from 65535 (mode 0) and the read-back command's status says
//! whether it reached zero (55 ms: then the window is measured again, synchronously). The
//! board loop then calls [`refine_on_pit`] every turn, which keeps reading the
//! free-running PIT (at least every few ms: the counter wraps every 55 ms) for
//! [`REFINE_PIT_TICKS`] (250 ms) and replaces the rate with that measurement
//! ([`set_rate`]); `now_micros` stays continuous and monotonic across the change.
//!
//! `now_micros` converts with a 0.64 fixed-point multiplier (microseconds per tick), so it
//! is one `rdtsc` and one 64x64->128 multiply, no division, on the per-packet path.

use super::port::{inb, outb};
use core::sync::atomic::{AtomicU64, Ordering};

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15 (TSC/crystal ratio and crystal frequency).
    Cpuid15,
    /// The hypervisor's timing leaf 0x4000_0010 (TSC kHz).
    Hypervisor,
    /// Measured against the PIT.
    Pit,
    /// CPUID leaf 0x16 base frequency (nominal).
    Cpuid16,
    /// No source worked; 2 GHz assumed.
    Assumed,
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// The TSC value at which `now_micros` read [`BASE_US`] (calibration, or the last rate
/// change).
static BASE_TSC: AtomicU64 = AtomicU64::new(0);
static BASE_US: AtomicU64 = AtomicU64::new(0);
/// Microseconds per TSC tick, 0.64 fixed point.
static MICROS_PER_TICK: AtomicU64 = AtomicU64::new(0);

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// PIT ticks in the boot calibration window (1 ms).
pub const PIT_BOOT_WINDOW_TICKS: u64 = PIT_HZ / 1000;
/// PIT ticks the board's background measurement covers (250 ms).
pub const REFINE_PIT_TICKS: u64 = PIT_HZ / 4;

/// Reads the time-stamp counter.
#[inline(always)]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc is unprivileged and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The calibrated TSC frequency in Hz (0 before [`calibrate`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since calibration; monotonic.
#[inline]
pub fn now_micros() -> u64 {
    now_micros_at(tsc())
}

/// `now_micros` at the TSC value `tsc` (not before the last rate change).
fn now_micros_at(tsc: u64) -> u64 {
    let ticks = tsc.wrapping_sub(BASE_TSC.load(Ordering::Relaxed));
    BASE_US.load(Ordering::Relaxed)
        + ticks_to_micros(ticks, MICROS_PER_TICK.load(Ordering::Relaxed))
}

/// Replaces the TSC rate (a better measurement than the boot one) without a jump in
/// `now_micros`: from now on it advances at the new rate from the value it has now. Call from
/// the board loop only (interrupts never read the clock, and the kernel is single-core).
pub fn set_rate(hz: u64) {
    let now = tsc();
    let us = now_micros_at(now);
    BASE_TSC.store(now, Ordering::Relaxed);
    BASE_US.store(us, Ordering::Relaxed);
    MICROS_PER_TICK.store(micros_multiplier(hz), Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
}

/// Converts `ticks` with a 0.64 micros-per-tick multiplier.
fn ticks_to_micros(ticks: u64, mult: u64) -> u64 {
    ((u128::from(ticks) * u128::from(mult)) >> 64) as u64
}

/// The 0.64 multiplier for a TSC running at `hz` (> 1 MHz, so it fits).
fn micros_multiplier(hz: u64) -> u64 {
    let mult = (1_000_000u128 << 64) / u128::from(hz.max(1_000_001));
    u64::try_from(mult).unwrap_or(u64::MAX)
}

/// Converts TSC ticks to microseconds with the calibrated rate (for boot timing reports).
pub fn ticks_to_micros_calibrated(ticks: u64) -> u64 {
    ticks_to_micros(ticks, MICROS_PER_TICK.load(Ordering::Relaxed))
}

/// A TSC calibration under way: [`calibrate_begin`], then [`Self::finish`].
#[must_use = "the clock runs only once `finish` is called"]
#[derive(Debug)]
pub enum Calibrating {
    /// A CPUID leaf gave the rate.
    Known(u64, TscSource),
    /// A PIT window started at this TSC value and channel 0 count.
    Pit { start_tsc: u64, start_count: u16 },
    /// No rate known, no PIT: CPUID 0x16's nominal rate or a guess.
    Fallback,
}

/// Starts finding the TSC frequency; nothing may read the clock until [`Calibrating::finish`]
/// (the rest of the platform's bring-up runs in between). Call once at boot.
pub fn calibrate_begin() -> Calibrating {
    if let Some(hz) = cpuid_15() {
        Calibrating::Known(hz, TscSource::Cpuid15)
    } else if let Some(hz) = hypervisor_tsc_hz() {
        Calibrating::Known(hz, TscSource::Hypervisor)
    } else if let Some((start_tsc, start_count)) = pit_window_begin() {
        Calibrating::Pit {
            start_tsc,
            start_count,
        }
    } else {
        Calibrating::Fallback
    }
}

impl Calibrating {
    /// Ends the calibration (waiting for what is left of the PIT window, if anything) and
    /// starts the clock at zero.
    pub fn finish(self) -> (u64, TscSource) {
        let pit = match self {
            Calibrating::Known(hz, source) => Some((hz, source)),
            Calibrating::Pit {
                start_tsc,
                start_count,
            } => {
                let hz = pit_window_end(start_tsc, start_count).or_else(pit_measure);
                // Free-running again for the board's refinement.
                pit_start();
                hz.map(|hz| (hz, TscSource::Pit))
            }
            Calibrating::Fallback => None,
        };
        let (hz, source) = pit.unwrap_or_else(|| match cpuid_16() {
            Some(hz) => (hz, TscSource::Cpuid16),
            None => (2_000_000_000, TscSource::Assumed),
        });
        TSC_HZ.store(hz, Ordering::Relaxed);
        MICROS_PER_TICK.store(micros_multiplier(hz), Ordering::Relaxed);
        BASE_US.store(0, Ordering::Relaxed);
        BASE_TSC.store(tsc(), Ordering::Relaxed);
        (hz, source)
    }
}

fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, 0)
}

fn max_leaf() -> u32 {
    cpuid(0).eax
}

fn cpuid_15() -> Option<u64> {
    if max_leaf() < 0x15 {
        return None;
    }
    let r = cpuid(0x15);
    let (denominator, numerator, crystal) = (u64::from(r.eax), u64::from(r.ebx), u64::from(r.ecx));
    if denominator == 0 || numerator == 0 || crystal == 0 {
        return None;
    }
    Some(crystal * numerator / denominator)
}

/// The TSC rate from the hypervisor's timing leaf 0x4000_0010 (EAX: TSC kHz), when CPUID
/// says a hypervisor is present and its leaf 0x4000_0000 reaches that far.
fn hypervisor_tsc_hz() -> Option<u64> {
    if cpuid(1).ecx & (1 << 31) == 0 || cpuid(0x4000_0000).eax < 0x4000_0010 {
        return None;
    }
    let khz = u64::from(cpuid(0x4000_0010).eax);
    plausible(khz * 1000)
}

/// `hz` when it can be a CPU's TSC (100 MHz..20 GHz), not a broken timer or leaf.
fn plausible(hz: u64) -> Option<u64> {
    (100_000_000..20_000_000_000).contains(&hz).then_some(hz)
}

fn cpuid_16() -> Option<u64> {
    if max_leaf() < 0x16 {
        return None;
    }
    let mhz = u64::from(cpuid(0x16).eax & 0xffff);
    (mhz != 0).then_some(mhz * 1_000_000)
}

/// Latches and reads PIT channel 0's current count.
fn pit_read_channel0() -> u16 {
    // SAFETY: the PIT's ports belong to the clock (the boot calibration, then the board
    // loop's refinement, never both at once); latching and reading the count has no other
    // effect.
    unsafe {
        outb(0x43, 0x00); // latch channel 0
        let low = inb(0x40);
        let high = inb(0x40);
        u16::from_le_bytes([low, high])
    }
}

/// Programs PIT channel 0 as a free-running counter: lobyte/hibyte, mode 2, count 0 =
/// 65536. Its IRQ 0 is never unmasked (interrupts stay off but in the idle halt, where the
/// 8259s are masked).
fn pit_start() {
    // SAFETY: the PIT's ports belong to the clock, which only the boot code and the board loop
    // use, one at a time.
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
    }
}

/// Waits for channel 0's count to change from its current value (so a window starts on a
/// tick edge) and returns the new count; `None` when it never changes (no PIT).
fn pit_next_edge() -> Option<u16> {
    let first = pit_read_channel0();
    for _ in 0..1_000_000u32 {
        let now = pit_read_channel0();
        if now != first {
            return Some(now);
        }
    }
    None
}

/// Starts a boot window: channel 0 counts down once from 65535 (mode 0, lobyte/hibyte),
/// so [`pit_window_end`] can tell from its OUT pin whether the count ran out.
fn pit_window_begin() -> Option<(u64, u16)> {
    // SAFETY: the PIT's ports belong to the clock, which only the boot code and the board loop
    // use, one at a time.
    unsafe {
        outb(0x43, 0x30);
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let count = pit_next_edge()?;
    Some((tsc(), count))
}

/// Ends the window [`pit_window_begin`] started, once it covers at least
/// [`PIT_BOOT_WINDOW_TICKS`]: the TSC rate, or `None` when the count ran out (the window
/// was over 55 ms long, so the count alone cannot say how long) or the PIT stopped.
fn pit_window_end(start_tsc: u64, start_count: u16) -> Option<u64> {
    for _ in 0..10_000_000u32 {
        // SAFETY: as `pit_window_begin`; the read-back command (channel 0, count and status)
        // latches both, and the status byte is read first.
        let (now, status, count) = unsafe {
            outb(0x43, 0xc2);
            let now = tsc();
            let status = inb(0x40);
            let low = inb(0x40);
            let high = inb(0x40);
            (now, status, u16::from_le_bytes([low, high]))
        };
        // Bit 7: OUT, which goes high when the count reaches zero.
        if status & 0x80 != 0 {
            return None;
        }
        let elapsed = u64::from(start_count.saturating_sub(count));
        if elapsed >= PIT_BOOT_WINDOW_TICKS {
            return rate(now - start_tsc, elapsed);
        }
    }
    None
}

/// Measures TSC ticks across [`PIT_BOOT_WINDOW_TICKS`] PIT ticks now (when the overlapped
/// window failed); `None` when no PIT counts.
fn pit_measure() -> Option<u64> {
    pit_start();
    let mut prev = pit_next_edge()?;
    let start = tsc();
    let mut elapsed: u64 = 0;
    let mut reads = 0u32;
    while elapsed < PIT_BOOT_WINDOW_TICKS {
        let now = pit_read_channel0();
        elapsed += pit_ticks_between(prev, now);
        prev = now;
        reads += 1;
        if reads > 10_000_000 {
            return None;
        }
    }
    rate(tsc() - start, elapsed)
}

/// PIT ticks from count `prev` to count `now` of the free-running down-counter (it reloads
/// from 65536, so the difference modulo 2^16 is the ticks passed, if under one wrap).
fn pit_ticks_between(prev: u16, now: u16) -> u64 {
    u64::from(prev.wrapping_sub(now))
}

/// The TSC rate from `tsc_ticks` seen over `pit_ticks`, when plausible.
fn rate(tsc_ticks: u64, pit_ticks: u64) -> Option<u64> {
    if pit_ticks == 0 {
        return None;
    }
    let hz = u128::from(tsc_ticks) * u128::from(PIT_HZ) / u128::from(pit_ticks);
    plausible(u64::try_from(hz).ok()?)
}

/// The board's background measurement of the TSC against the free-running PIT, after a
/// boot calibrated on the PIT's short window. Fed a (TSC, PIT count) sample whenever
/// 2 ms of TSC time has passed; a gap longer than 30 ms (the counter may have wrapped unseen: it wraps every 55 ms)
/// restarts the window rather than count a wrong number of ticks.
#[derive(Clone, Debug)]
pub struct PitRefiner {
    /// The TSC rate the boot window gave (to turn PIT time into TSC spacing).
    boot_hz: u64,
    /// First sample of the window: TSC.
    start_tsc: u64,
    /// Last sample: TSC and PIT count.
    last: Option<(u64, u16)>,
    /// PIT ticks counted since `start_tsc`.
    pit_ticks: u64,
    done: bool,
}

impl PitRefiner {
    /// Sample at most every 2 ms of PIT time ...
    const SAMPLE_PIT: u64 = PIT_HZ / 500;
    /// ... and restart when two samples are more than 30 ms apart.
    const STALE_PIT: u64 = PIT_HZ * 3 / 100;

    /// A measurement for a TSC the boot window put at `boot_hz`.
    pub fn new(boot_hz: u64) -> Self {
        Self {
            boot_hz: boot_hz.max(1),
            start_tsc: 0,
            last: None,
            pit_ticks: 0,
            done: false,
        }
    }

    /// TSC ticks in `pit` PIT ticks at the boot rate.
    fn tsc_for(&self, pit: u64) -> u64 {
        u64::try_from(u128::from(pit) * u128::from(self.boot_hz) / u128::from(PIT_HZ))
            .unwrap_or(u64::MAX)
    }

    /// Whether a sample is due at TSC `now` (cheap: no port access).
    pub fn due(&self, now: u64) -> bool {
        !self.done
            && self
                .last
                .is_none_or(|(t, _)| now.wrapping_sub(t) >= self.tsc_for(Self::SAMPLE_PIT))
    }

    /// Takes a sample (TSC `now`, PIT count `count`); returns the refined rate once the
    /// window reaches [`REFINE_PIT_TICKS`], then never again.
    pub fn sample(&mut self, now: u64, count: u16) -> Option<u64> {
        if self.done {
            return None;
        }
        match self.last {
            Some((t, prev)) if now.wrapping_sub(t) <= self.tsc_for(Self::STALE_PIT) => {
                self.pit_ticks += pit_ticks_between(prev, count);
            }
            _ => {
                self.start_tsc = now;
                self.pit_ticks = 0;
            }
        }
        self.last = Some((now, count));
        if self.pit_ticks < REFINE_PIT_TICKS {
            return None;
        }
        self.done = true;
        rate(now.wrapping_sub(self.start_tsc), self.pit_ticks)
    }

    /// Whether the measurement is over.
    pub fn done(&self) -> bool {
        self.done
    }
}

/// Reads the PIT for a [`PitRefiner`]: call once per board-loop turn; returns the refined
/// rate once (already in force: [`set_rate`] was called).
pub fn refine_on_pit(refiner: &mut PitRefiner) -> Option<u64> {
    let now = tsc();
    if !refiner.due(now) {
        return None;
    }
    let hz = refiner.sample(now, pit_read_channel0())?;
    set_rate(hz);
    Some(hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_conversion_is_accurate() {
        for hz in [
            1_000_000_000u64,
            2_400_000_000,
            2_893_437_000,
            3_999_999_999,
        ] {
            let mult = micros_multiplier(hz);
            // One second of ticks is one million microseconds, within a microsecond.
            let one_second = ticks_to_micros(hz, mult);
            assert!(one_second.abs_diff(1_000_000) <= 1, "{hz}: {one_second}");
            // A day of ticks neither overflows nor drifts by more than a millisecond.
            let day = ticks_to_micros(hz * 86_400, mult);
            assert!(day.abs_diff(86_400_000_000) <= 1_000, "{hz}: {day}");
        }
    }

    #[test]
    fn cpuid_sources_are_consistent_when_present() {
        // On the build host: a leaf either gives a plausible frequency or is absent.
        for hz in [cpuid_15(), cpuid_16(), hypervisor_tsc_hz()]
            .into_iter()
            .flatten()
        {
            assert!((100_000_000..20_000_000_000).contains(&hz));
        }
    }

    const HZ: u64 = 2_596_000_000;

    /// TSC ticks of `pit` PIT ticks at `HZ`.
    fn tsc_of(pit: u64) -> u64 {
        (u128::from(pit) * u128::from(HZ) / u128::from(PIT_HZ)) as u64
    }

    #[test]
    fn refiner_counts_the_pit_across_wraps_and_gives_the_rate_once() {
        // Boot window 0.3 % fast; the real rate is HZ.
        let mut r = PitRefiner::new(HZ + HZ / 333);
        let (mut tsc, mut count) = (1_000_000u64, 12_345u16);
        let step = PIT_HZ / 200; // 5 ms between loop samples: many wraps of the 16-bit count
        let mut got = None;
        for _ in 0..100 {
            assert!(r.due(tsc));
            if let Some(hz) = r.sample(tsc, count) {
                got = Some(hz);
                break;
            }
            assert!(!r.due(tsc + 1), "not again at once");
            tsc += tsc_of(step);
            count = count.wrapping_sub(step as u16);
        }
        let hz = got.expect("a rate after 250 ms");
        assert!(hz.abs_diff(HZ) < HZ / 100_000, "{hz}");
        assert!(r.done());
        assert!(!r.due(tsc + tsc_of(PIT_HZ)));
        assert_eq!(r.sample(tsc + tsc_of(PIT_HZ), 0), None);
    }

    #[test]
    fn refiner_restarts_after_a_gap_where_the_pit_may_have_wrapped() {
        let mut r = PitRefiner::new(HZ);
        let step = PIT_HZ / 200;
        let (mut tsc, mut count) = (0u64, 0u16);
        for _ in 0..40 {
            assert_eq!(r.sample(tsc, count), None);
            tsc += tsc_of(step);
            count = count.wrapping_sub(step as u16);
        }
        // 100 ms unseen (the counter wrapped, so its difference alone would mislead): the
        // window starts over and needs another 250 ms.
        tsc += tsc_of(PIT_HZ / 10);
        count = count.wrapping_sub((PIT_HZ / 10) as u16);
        let mut samples = 0;
        let hz = loop {
            samples += 1;
            if let Some(hz) = r.sample(tsc, count) {
                break hz;
            }
            tsc += tsc_of(step);
            count = count.wrapping_sub(step as u16);
        };
        assert!(samples > 50, "{samples} samples: the window restarted");
        assert!(hz.abs_diff(HZ) < HZ / 100_000, "{hz}");
    }

    #[test]
    fn implausible_rates_are_refused() {
        assert_eq!(rate(1000, 0), None);
        assert_eq!(rate(10, PIT_HZ), None, "10 Hz is no TSC");
        assert_eq!(rate(HZ, PIT_HZ), Some(HZ));
    }
}
