//! The monotonic clock: the TSC, calibrated once at boot.
//!
//! Calibration source, best first: CPUID leaf 0x15 when it names both the TSC/crystal ratio
//! and the crystal frequency (exact, costs nothing); otherwise the i8254 PIT, whose channel 0
//! is reprogrammed as a free-running 1.193182 MHz down-counter and read through the latch
//! command over a 5 ms window (works under TCG and KVM, needs no speaker port, so microvm
//! works too); otherwise CPUID 0x16's nominal base frequency; otherwise a loud guess.
//! Under QEMU TCG the TSC follows the host's TSC and the PIT follows QEMU's virtual clock,
//! which tracks real time, so the PIT measurement is what makes `now_micros` real time.
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
    /// Measured against the PIT.
    Pit,
    /// CPUID leaf 0x16 base frequency (nominal).
    Cpuid16,
    /// No source worked; 2 GHz assumed.
    Assumed,
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// Microseconds per TSC tick, 0.64 fixed point.
static MICROS_PER_TICK: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks in the 5 ms calibration window.
const PIT_WINDOW_TICKS: u64 = PIT_HZ / 200;

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
    let ticks = tsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ticks_to_micros(ticks, MICROS_PER_TICK.load(Ordering::Relaxed))
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

/// Finds the TSC frequency and starts the clock at zero. Call once at boot.
pub fn calibrate() -> (u64, TscSource) {
    let (hz, source) = if let Some(hz) = cpuid_15() {
        (hz, TscSource::Cpuid15)
    } else if let Some(hz) = pit_measure() {
        (hz, TscSource::Pit)
    } else if let Some(hz) = cpuid_16() {
        (hz, TscSource::Cpuid16)
    } else {
        (2_000_000_000, TscSource::Assumed)
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    MICROS_PER_TICK.store(micros_multiplier(hz), Ordering::Relaxed);
    BOOT_TSC.store(tsc(), Ordering::Relaxed);
    (hz, source)
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

fn cpuid_16() -> Option<u64> {
    if max_leaf() < 0x16 {
        return None;
    }
    let mhz = u64::from(cpuid(0x16).eax & 0xffff);
    (mhz != 0).then_some(mhz * 1_000_000)
}

/// Latches and reads PIT channel 0's current count.
fn pit_read_channel0() -> u16 {
    // SAFETY: the PIT's ports belong to the clock, which runs once at boot with interrupts off.
    unsafe {
        outb(0x43, 0x00); // latch channel 0
        let low = inb(0x40);
        let high = inb(0x40);
        u16::from_le_bytes([low, high])
    }
}

/// Measures TSC ticks across `PIT_WINDOW_TICKS` PIT ticks; `None` when no PIT counts.
fn pit_measure() -> Option<u64> {
    // SAFETY: as in `pit_read_channel0`. Channel 0, lobyte/hibyte, mode 2, count 0 = 65536:
    // a free-running counter. Its IRQ 0 is never unmasked (interrupts stay off).
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
    }
    // Wait for the first change so the window starts on a tick edge.
    let mut prev = pit_read_channel0();
    let mut spins = 0u32;
    loop {
        let now = pit_read_channel0();
        if now != prev {
            prev = now;
            break;
        }
        spins += 1;
        if spins > 1_000_000 {
            return None;
        }
    }
    let start = tsc();
    let mut elapsed: u64 = 0;
    let mut reads = 0u32;
    while elapsed < PIT_WINDOW_TICKS {
        let now = pit_read_channel0();
        // Counts down, reloading from 65536: the difference modulo 2^16 is the ticks passed.
        elapsed += u64::from(prev.wrapping_sub(now));
        prev = now;
        reads += 1;
        if reads > 50_000_000 {
            return None;
        }
    }
    let ticks = tsc() - start;
    let hz = u128::from(ticks) * u128::from(PIT_HZ) / u128::from(elapsed);
    let hz = u64::try_from(hz).ok()?;
    // Anything outside 100 MHz..20 GHz is a broken PIT or TSC, not a CPU.
    (100_000_000..20_000_000_000).contains(&hz).then_some(hz)
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
        for hz in [cpuid_15(), cpuid_16()].into_iter().flatten() {
            assert!((100_000_000..20_000_000_000).contains(&hz));
        }
    }
}
