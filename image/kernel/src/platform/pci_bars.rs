//! Addresses for PCI memory BARs the firmware left unassigned.
//!
//! SeaBIOS, OVMF and the firmware of real machines assign every BAR, and then nothing here
//! runs. QEMU's qboot (a fast firmware that boots our PVH image) assigns none, so the
//! platform picks free physical address space itself ([`windows`]) and hands it to
//! [`netoops_pci::assign_memory_bars`]:
//! - below 4 GiB: from the end of RAM, rounded up to 256 MiB to keep a gap, up to the
//!   I/O APIC at 0xFEC0_0000;
//! - above 4 GiB: from past the end of RAM, rounded up to 1 GiB, up to the CPU's physical
//!   address limit;
//! - every memory-map region and the ECAM window are reserved ([`reserved`]).
//!
//! This relies on the chipset forwarding any address that is not RAM to PCI, which QEMU's pc
//! and q35 machines do (their PCI address space lies under all of system memory). Real
//! chipsets decode only their configured PCI holes, but on them the firmware has assigned
//! the BARs. Drivers reach the new addresses like any other BAR: `map_mmio` maps any range
//! uncached, above 4 GiB included.

use super::acpi::EcamWindow;
use super::bootinfo::{MemoryKind, MemoryRegion};
use alloc::vec::Vec;
use core::ops::Range;

/// The I/O APIC, HPET and local APIC live from here up to 4 GiB.
pub const BELOW_4G_END: u64 = 0xfec0_0000;
/// Start of the window below 4 GiB: the end of RAM rounded up to this.
const BELOW_4G_ALIGN: u64 = 256 << 20;
/// Start of the window above 4 GiB: past the memory map, rounded up to this.
const ABOVE_4G_ALIGN: u64 = 1 << 30;
const FOUR_GIB: u64 = 1 << 32;
/// Reports room reserved up front (a machine with more unassigned BARs grows the list): a
/// growing vector is code run at boot only for this, which under TCG costs its translation.
const REPORTS: usize = 16;

/// The address windows for unassigned BARs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    /// For 32-bit BARs (and 64-bit ones that do not fit above).
    pub below_4g: Range<u64>,
    /// For 64-bit BARs; `None` when the physical address limit leaves nothing above.
    pub above_4g: Option<Range<u64>>,
}

/// What the assignment did, for the boot banner.
#[derive(Debug)]
pub struct Assignment {
    /// The windows used.
    pub windows: Windows,
    /// One entry per BAR that had no address.
    pub reports: Vec<netoops_pci::BarReport>,
}

/// The windows for a machine with memory map `memory` and physical addresses below
/// `phys_limit`.
pub fn windows(memory: &[MemoryRegion], phys_limit: u64) -> Windows {
    // One plain loop for both ends of RAM: this runs once at boot, where under TCG each
    // instruction costs its translation.
    let (mut ram_end_below_4g, mut ram_end) = (None::<u64>, None::<u64>);
    for r in memory {
        if !matches!(
            r.kind,
            MemoryKind::Usable | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs
        ) {
            continue;
        }
        let end = r.end();
        ram_end = Some(ram_end.map_or(end, |e| e.max(end)));
        if r.start < FOUR_GIB {
            let end = end.min(FOUR_GIB);
            ram_end_below_4g = Some(ram_end_below_4g.map_or(end, |e| e.max(end)));
        }
    }
    // Without RAM in the map nothing is known about the machine: no window below 4 GiB.
    let below_start =
        ram_end_below_4g.map_or(BELOW_4G_END, |end| end.next_multiple_of(BELOW_4G_ALIGN));
    // Above 4 GiB only RAM decides the start: reserved ranges may lie far up (QEMU reserves
    // the AMD HyperTransport range just below 1 TiB) and are skipped as reserved instead.
    let above_start = ram_end
        .unwrap_or(0)
        .max(FOUR_GIB)
        .checked_next_multiple_of(ABOVE_4G_ALIGN)
        .unwrap_or(u64::MAX);
    Windows {
        below_4g: below_start..BELOW_4G_END,
        above_4g: (above_start < phys_limit).then_some(above_start..phys_limit),
    }
}

/// Ranges no BAR may take: every memory-map region (whatever its kind) and the ECAM window.
pub fn reserved(memory: &[MemoryRegion], ecam: Option<EcamWindow>) -> Vec<Range<u64>> {
    let mut ranges = Vec::with_capacity(memory.len() + 1);
    for r in memory {
        ranges.push(r.start..r.end());
    }
    if let Some(w) = ecam {
        ranges.push(w.start_address()..w.start_address() + w.size());
    }
    ranges
}

/// Assigns the memory BARs of `devices` left at 0, if any; `None` when the firmware
/// assigned them all (the usual case).
#[cfg(all(target_os = "none", not(test)))]
pub fn assign(
    devices: &mut [netoops_pci::PciDevice],
    memory: &[MemoryRegion],
    ecam: Option<EcamWindow>,
) -> Option<Assignment> {
    let unassigned = devices
        .iter()
        .any(|d| d.bars.iter().any(netoops_pci::Bar::is_unassigned_memory));
    if !unassigned {
        return None;
    }
    let windows = windows(memory, phys_limit());
    let reserved = reserved(memory, ecam);
    let mut reports = Vec::with_capacity(REPORTS);
    netoops_pci::assign_memory_bars(
        devices,
        &netoops_pci::BarWindows {
            below_4g: windows.below_4g.clone(),
            above_4g: windows.above_4g.clone(),
            reserved: &reserved,
        },
        |r| reports.push(r),
    );
    Some(Assignment { windows, reports })
}

/// One past the highest physical address the CPU and the page tables reach.
#[cfg(all(target_os = "none", not(test)))]
fn phys_limit() -> u64 {
    use core::arch::x86_64::__cpuid;
    // CPUID 0x8000_0008 EAX[7:0]: physical address bits; 36 when the leaf is missing.
    let bits = if __cpuid(0x8000_0000).eax >= 0x8000_0008 {
        (__cpuid(0x8000_0008).eax & 0xff).clamp(32, 52)
    } else {
        36
    };
    (1u64 << bits).min(super::paging::MAPPABLE_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion { start, len, kind }
    }

    #[test]
    fn a_small_guest_gets_the_hole_above_ram_and_the_space_above_4g() {
        // qboot's map on q35 with `-m 256M` and the (AMD) qemu64 CPU: ECAM and the
        // HyperTransport range below 1 TiB are reserved.
        let map = [
            region(0, 0x9fc00, MemoryKind::Usable),
            region(0x9fc00, 0x400, MemoryKind::Reserved),
            region(0xd0000, 0x20000, MemoryKind::AcpiNvs),
            region(0xf0000, 0x10000, MemoryKind::Reserved),
            region(0xb000_0000, 0x1000_0000, MemoryKind::Reserved),
            region(0xfd_0000_0000, 0x3_0000_0000, MemoryKind::Reserved),
            region(0x10_0000, 0xff0_0000, MemoryKind::Usable),
        ];
        let w = windows(&map, 1 << 40);
        assert_eq!(w.below_4g, 0x1000_0000..BELOW_4G_END);
        assert_eq!(w.above_4g, Some(FOUR_GIB..1 << 40));
        let r = reserved(&map, None);
        assert!(r.contains(&(0xb000_0000..0xc000_0000)));
        assert!(r.contains(&(0xfd_0000_0000..1 << 40)));
    }

    #[test]
    fn ram_above_4g_and_reserved_regions_near_4g_shift_the_windows() {
        // q35 with 3 GiB: 2 GiB low, 1 GiB high, a firmware range just below 4 GiB.
        let map = [
            region(0x10_0000, 0x7ff0_0000, MemoryKind::Usable),
            region(0x7ff0_0000, 0x10_0000, MemoryKind::AcpiReclaimable),
            region(0xfeff_c000, 0x4000, MemoryKind::Reserved),
            region(FOUR_GIB, 1 << 30, MemoryKind::Usable),
        ];
        let w = windows(&map, 1 << 40);
        assert_eq!(w.below_4g, 0x8000_0000..BELOW_4G_END);
        assert_eq!(w.above_4g, Some(0x1_4000_0000..1 << 40));
        let ecam = EcamWindow {
            base: 0xb000_0000,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
        };
        let r = reserved(&map, Some(ecam));
        assert!(r.contains(&(0xfeff_c000..0xff00_0000)));
        assert_eq!(r.last(), Some(&(0xb000_0000..0xc000_0000)));
        // A physical limit at or below the end of RAM leaves no window above 4 GiB.
        assert_eq!(windows(&map, 0x1_4000_0000).above_4g, None);
    }

    #[test]
    fn ram_up_to_the_apic_leaves_an_empty_window_below() {
        let map = [region(0, 0xfe00_0000, MemoryKind::Usable)];
        assert!(windows(&map, 1 << 36).below_4g.is_empty());
        assert!(windows(&[], 1 << 36).below_4g.is_empty());
    }
}
