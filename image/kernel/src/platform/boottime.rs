//! Boot timing from points the kernel knows.
//!
//! The trampoline ([`super::boot`]) reads the TSC as its first instruction on every entry
//! path (PVH, multiboot2, the UEFI stub's 64-bit entry), so "N ms after kernel entry" is
//! right on any machine. "After reset" is only known where the TSC is zero at reset:
//! QEMU under TCG counts it from the start of the VM, but KVM guests see a TSC that keeps
//! the host's count (the issue saw `1405726 ms after reset`), and firmware on real hardware
//! may have run for seconds or written the TSC. So the reset figure is printed only under
//! TCG (CPUID leaf 0x4000_0000 says `TCGTCGTCGTCG`) and is `unknown` everywhere else,
//! rather than a wrong number.

use core::fmt;

/// CPUID leaf 0x4000_0000's signature under QEMU's TCG accelerator.
pub const TCG_SIGNATURE: [u8; 12] = *b"TCGTCGTCGTCG";

/// What the TSC counted before the kernel was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscOrigin {
    /// Zero at reset (QEMU TCG): its value is time since the VM started.
    Reset,
    /// Not known: a hypervisor with this CPUID signature (KVM's `KVMKVMKVM`, ...) or, with
    /// `None`, no hypervisor (real hardware, where firmware ran for an unknown time).
    Unknown(Option<[u8; 12]>),
}

impl TscOrigin {
    /// The origin implied by the hypervisor's CPUID signature (`None`: no hypervisor bit).
    pub fn from_signature(signature: Option<[u8; 12]>) -> Self {
        match signature {
            Some(s) if s == TCG_SIGNATURE => TscOrigin::Reset,
            other => TscOrigin::Unknown(other),
        }
    }

    /// Asks this CPU (CPUID.1:ECX bit 31, then leaf 0x4000_0000).
    #[cfg(target_arch = "x86_64")]
    pub fn detect() -> Self {
        use core::arch::x86_64::__cpuid;
        let hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
        let signature = hypervisor.then(|| {
            let r = __cpuid(0x4000_0000);
            let mut s = [0u8; 12];
            s[..4].copy_from_slice(&r.ebx.to_le_bytes());
            s[4..8].copy_from_slice(&r.ecx.to_le_bytes());
            s[8..].copy_from_slice(&r.edx.to_le_bytes());
            s
        });
        Self::from_signature(signature)
    }
}

impl fmt::Display for TscOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TscOrigin::Reset => f.write_str("zero at reset (QEMU TCG)"),
            TscOrigin::Unknown(None) => f.write_str("unknown (no hypervisor)"),
            TscOrigin::Unknown(Some(s)) => {
                f.write_str("unknown (hypervisor ")?;
                for &b in s.iter().filter(|b| b.is_ascii_graphic()) {
                    write!(f, "{}", b as char)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// The TSC at kernel entry, its rate and origin: every boot figure the kernel prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootClock {
    /// TSC read by the trampoline's first instruction.
    pub entry_tsc: u64,
    /// Calibrated TSC frequency (Hz).
    pub hz: u64,
    /// Whether the TSC's value is also time since reset.
    pub origin: TscOrigin,
}

impl BootClock {
    /// Microseconds from kernel entry to the TSC value `tsc` (0 for a value before entry).
    pub fn entry_to_us(&self, tsc: u64) -> u64 {
        ticks_to_us(tsc.saturating_sub(self.entry_tsc), self.hz)
    }

    /// Microseconds from reset to `tsc`, when the TSC started at zero.
    pub fn reset_to_us(&self, tsc: u64) -> Option<u64> {
        (self.origin == TscOrigin::Reset).then(|| ticks_to_us(tsc, self.hz))
    }

    /// `reset_to_us` as console text: `<N> ms` or `unknown`.
    pub fn reset_to(&self, tsc: u64) -> Millis {
        Millis(self.reset_to_us(tsc))
    }
}

/// Most boot phases [`stamp`] records.
pub const MAX_PHASES: usize = 24;

/// The TSC at the end of each boot phase so far, with its name.
struct Phases {
    names: [&'static str; MAX_PHASES],
    tsc: [u64; MAX_PHASES],
    len: usize,
}

static PHASES: spin::Mutex<Phases> = spin::Mutex::new(Phases {
    names: [""; MAX_PHASES],
    tsc: [0; MAX_PHASES],
    len: 0,
});

/// Records that the boot phase `name` ended at `tsc` (phases past [`MAX_PHASES`] are not kept).
pub fn stamp_at(name: &'static str, tsc: u64) {
    let mut p = PHASES.lock();
    let i = p.len;
    if i < MAX_PHASES {
        p.names[i] = name;
        p.tsc[i] = tsc;
        p.len += 1;
    }
}

/// Records that the boot phase `name` ends now. Never inlined: each call site is then three
/// instructions, and boot code is paid by its size under TCG (about 1 µs per instruction).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub fn stamp(name: &'static str) {
    // SAFETY: rdtsc is unprivileged and has no side effects.
    stamp_at(name, unsafe { core::arch::x86_64::_rdtsc() });
}

/// The boot phases as `<name> <us>` pairs, each phase's own time from the end of the one
/// before (the first from kernel entry): the `boot: phases` console line.
pub struct PhaseList<'a>(pub &'a BootClock);

impl fmt::Display for PhaseList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = PHASES.lock();
        let mut prev = self.0.entry_tsc;
        for (i, (name, &tsc)) in p.names.iter().zip(&p.tsc).take(p.len).enumerate() {
            let us = ticks_to_us(tsc.saturating_sub(prev), self.0.hz);
            prev = tsc.max(prev);
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name} {us}")?;
        }
        Ok(())
    }
}

/// Whole milliseconds, or `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub Option<u64>);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(us) => write!(f, "{} ms", us / 1000),
            None => f.write_str("unknown"),
        }
    }
}

/// `ticks` of a `hz` TSC in microseconds, without overflow for any u64 count (boot-time
/// reports only; the per-packet clock is [`super::clock::now_micros`]).
fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    let us = u128::from(ticks) * 1_000_000 / u128::from(hz.max(1));
    u64::try_from(us).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    const HZ: u64 = 2_893_436_000;

    fn clock(entry_tsc: u64, origin: TscOrigin) -> BootClock {
        BootClock {
            entry_tsc,
            hz: HZ,
            origin,
        }
    }

    #[test]
    fn entry_to_ready_is_measured_from_the_entry_tsc() {
        // KVM: the TSC kept the host's count, 1405726 ms of it, before the kernel ran.
        let entry = 1_405_726 * (HZ / 1000);
        let c = clock(entry, TscOrigin::from_signature(Some(*b"KVMKVMKVM\0\0\0")));
        let ready = entry + 7 * (HZ / 1000) + HZ / 2000;
        assert_eq!(c.entry_to_us(ready), 7_500);
        assert_eq!(c.entry_to_us(entry), 0);
        // A value before entry never wraps to a huge figure.
        assert_eq!(c.entry_to_us(entry - 1), 0);
    }

    #[test]
    fn time_since_reset_is_only_given_under_tcg() {
        let tsc = 103 * (HZ / 1000);
        let tcg = clock(
            97 * (HZ / 1000),
            TscOrigin::from_signature(Some(TCG_SIGNATURE)),
        );
        assert_eq!(tcg.origin, TscOrigin::Reset);
        assert_eq!(tcg.reset_to_us(tsc), Some(103_000));
        assert_eq!(tcg.reset_to(tsc).to_string(), "103 ms");
        for origin in [
            TscOrigin::from_signature(None),
            TscOrigin::from_signature(Some(*b"KVMKVMKVM\0\0\0")),
            TscOrigin::from_signature(Some(*b"Microsoft Hv")),
        ] {
            let c = clock(0, origin);
            assert_eq!(c.reset_to_us(tsc), None, "{origin:?}");
            assert_eq!(c.reset_to(tsc).to_string(), "unknown");
        }
    }

    #[test]
    fn long_uptimes_and_odd_rates_do_not_overflow() {
        let c = clock(0, TscOrigin::Reset);
        // Ten years of a 5 GHz TSC.
        let ticks = 5_000_000_000u64 * 86_400 * 3650;
        let c5 = BootClock {
            hz: 5_000_000_000,
            ..c
        };
        assert_eq!(c5.entry_to_us(ticks), 86_400 * 3650 * 1_000_000);
        // An uncalibrated (zero) rate is not a division by zero.
        let c0 = BootClock { hz: 0, ..c };
        assert_eq!(c0.entry_to_us(5), 5_000_000);
        assert_eq!(c0.entry_to_us(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_origin_names_the_hypervisor() {
        assert_eq!(
            TscOrigin::from_signature(Some(TCG_SIGNATURE)).to_string(),
            "zero at reset (QEMU TCG)"
        );
        assert_eq!(
            TscOrigin::from_signature(Some(*b"KVMKVMKVM\0\0\0")).to_string(),
            "unknown (hypervisor KVMKVMKVM)"
        );
        assert_eq!(
            TscOrigin::from_signature(None).to_string(),
            "unknown (no hypervisor)"
        );
    }

    #[test]
    fn phases_are_each_their_own_time_from_kernel_entry() {
        // The only test that records phases (the list is global).
        let c = clock(1_000 * (HZ / 1000), TscOrigin::Reset);
        let ms = HZ / 1000;
        stamp_at("trampoline", c.entry_tsc + ms / 4);
        stamp_at("clock", c.entry_tsc + ms / 4 + ms);
        stamp_at("nics", c.entry_tsc + 4 * ms);
        assert_eq!(
            PhaseList(&c).to_string(),
            "trampoline 250 clock 1000 nics 2750"
        );
        for _ in 0..2 * MAX_PHASES {
            stamp_at("more", c.entry_tsc + 5 * ms);
        }
        let line = PhaseList(&c).to_string();
        assert_eq!(line.split(' ').count(), 2 * MAX_PHASES, "{line}");
    }
}
