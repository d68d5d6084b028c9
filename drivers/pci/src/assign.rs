//! Addresses for memory BARs the firmware left unassigned.
//!
//! Minimal firmware (QEMU's qboot) hands over with every BAR still at 0. [`assign_memory_bars`]
//! gives each such memory BAR on a root bus an address from windows the caller derives from
//! the machine's memory map, writes it, reads it back and updates [`PciDevice::bars`].
//!
//! Policy, chosen to be predictable rather than clever:
//! - largest BARs first, each aligned to its size (at least 4 KiB, so every BAR owns its
//!   pages), at the lowest free address of its window;
//! - BARs the firmware did assign, and the caller's reserved ranges, are never overlapped;
//! - 32-bit BARs only below 4 GiB; 64-bit BARs try the window above 4 GiB first, when there
//!   is one, then the one below;
//! - I/O BARs are left alone: the appliance's drivers reach their devices through memory BARs;
//! - functions behind a PCI-to-PCI bridge are reported and skipped: they would need the
//!   bridge's forwarding windows programmed too, which this does not do (nor does it treat
//!   windows a firmware programmed as busy).
//!
//! Memory decoding is left as it was found (off, under a firmware that assigned nothing), as
//! Linux leaves it: the driver that binds a function switches it on, and only for a function
//! none of whose memory BARs is at 0 ([`PciDevice::unassigned_memory_bar`]), since a BAR at 0
//! would claim low RAM on hardware that decodes it. Functions no driver binds stay silent.
//! Every BAR that stays unassigned (no space, rejected write, bad size, behind a bridge) is
//! reported; nothing here panics.

use crate::{regs, Bar, PciAddress, PciDevice};
use core::ops::Range;

/// Where [`assign_memory_bars`] may place BARs.
#[derive(Clone, Debug)]
pub struct BarWindows<'a> {
    /// Addresses for 32-bit BARs, and for 64-bit BARs that do not fit `above_4g`. Clamped to
    /// end at 4 GiB.
    pub below_4g: Range<u64>,
    /// Addresses for 64-bit BARs, when the platform has a range above 4 GiB to spare.
    pub above_4g: Option<Range<u64>>,
    /// Ranges inside the windows that must stay free (RAM, firmware areas, ECAM).
    pub reserved: &'a [Range<u64>],
}

/// What happened to one BAR that had no address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarReport {
    /// The BAR now decodes at `address`.
    Assigned {
        /// The function.
        function: PciAddress,
        /// BAR index (the low slot of a 64-bit BAR).
        bar: u8,
        /// The address written.
        address: u64,
        /// The BAR's size.
        size: u64,
        /// The BAR takes two slots.
        is_64bit: bool,
    },
    /// The BAR is still at 0.
    Unassigned {
        /// The function.
        function: PciAddress,
        /// BAR index.
        bar: u8,
        /// The BAR's size.
        size: u64,
        /// The BAR takes two slots.
        is_64bit: bool,
        /// Why.
        reason: Unassigned,
    },
}

/// Why a BAR was left at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unassigned {
    /// The function sits behind a PCI-to-PCI bridge (bridge windows are not programmed).
    BehindBridge,
    /// No free, aligned range of the BAR's size is left in the windows.
    NoSpace,
    /// The probed size is not a power of two: the BAR is malformed.
    BadSize,
    /// After writing `wanted` the BAR read back `read_back`; it was set back to 0.
    Rejected {
        /// The address written.
        wanted: u64,
        /// The address read back.
        read_back: u64,
    },
}

impl core::fmt::Display for BarReport {
    /// `00:01.0 bar4 assigned mem64:0xc0000000+0x4000 (firmware left it unassigned)` or
    /// `00:01.0 bar4 mem64 size 0x4000 left unassigned: <reason>`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let width = |is_64bit: bool| if is_64bit { "64" } else { "32" };
        match *self {
            BarReport::Assigned {
                function,
                bar,
                address,
                size,
                is_64bit,
            } => write!(
                f,
                "{function} bar{bar} assigned mem{}:{address:#x}+{size:#x} (firmware left it unassigned)",
                width(is_64bit)
            ),
            BarReport::Unassigned {
                function,
                bar,
                size,
                is_64bit,
                reason,
            } => {
                write!(
                    f,
                    "{function} bar{bar} mem{} size {size:#x} left unassigned: ",
                    width(is_64bit)
                )?;
                match reason {
                    Unassigned::BehindBridge => {
                        f.write_str("behind a bridge (bridge windows are not programmed)")
                    }
                    Unassigned::NoSpace => f.write_str("no free range in the BAR windows"),
                    Unassigned::BadSize => f.write_str("size is not a power of two"),
                    Unassigned::Rejected { wanted, read_back } => {
                        write!(f, "wrote {wanted:#x}, read back {read_back:#x}")
                    }
                }
            }
        }
    }
}

/// Assigns every memory BAR of `devices` that decodes a size but sits at address 0 (see the
/// module doc for the policy), calling `report` once per such BAR. Returns how many were
/// assigned. `devices` is the list [`crate::enumerate`] produced; bridges in it decide which
/// functions are behind a bridge.
pub fn assign_memory_bars(
    devices: &mut [PciDevice],
    windows: &BarWindows<'_>,
    mut report: impl FnMut(BarReport),
) -> usize {
    const FOUR_GIB: u64 = 1 << 32;
    let below_4g = windows.below_4g.start..windows.below_4g.end.min(FOUR_GIB);
    let mut assigned = 0;
    // One pass per distinct size, largest first: no sorting buffer needed, and every BAR
    // is looked at in exactly one pass.
    let mut smaller_than: Option<u64> = None;
    while let Some(size) = next_size(devices, smaller_than) {
        smaller_than = Some(size);
        for d in 0..devices.len() {
            for i in 0..devices[d].bars.len() {
                let Bar::Memory {
                    address: 0,
                    size: bar_size,
                    is_64bit,
                    ..
                } = devices[d].bars[i]
                else {
                    continue;
                };
                if bar_size != size {
                    continue;
                }
                let outcome = assign_one(devices, d, i, size, is_64bit, &below_4g, windows);
                if matches!(outcome, BarReport::Assigned { .. }) {
                    assigned += 1;
                }
                report(outcome);
            }
        }
    }
    assigned
}

/// Finds, writes and records an address for BAR `i` of `devices[d]` (memory, unassigned,
/// `size` bytes).
fn assign_one(
    devices: &mut [PciDevice],
    d: usize,
    i: usize,
    size: u64,
    is_64bit: bool,
    below_4g: &Range<u64>,
    windows: &BarWindows<'_>,
) -> BarReport {
    let function = devices[d].address;
    let unassigned = |reason| BarReport::Unassigned {
        function,
        bar: i as u8,
        size,
        is_64bit,
        reason,
    };
    if behind_bridge(devices, function) {
        return unassigned(Unassigned::BehindBridge);
    }
    if !size.is_power_of_two() {
        return unassigned(Unassigned::BadSize);
    }
    let align = size.max(4096);
    let free = |window: &Range<u64>| find_free(window, size, align, devices, windows.reserved);
    let found = match (&windows.above_4g, is_64bit) {
        (Some(high), true) => free(high).or_else(|| free(below_4g)),
        _ => free(below_4g),
    };
    let Some(address) = found else {
        return unassigned(Unassigned::NoSpace);
    };
    if let Err(read_back) = program(&devices[d], i, address, is_64bit) {
        return unassigned(Unassigned::Rejected {
            wanted: address,
            read_back,
        });
    }
    if let Bar::Memory { address: a, .. } = &mut devices[d].bars[i] {
        *a = address;
    }
    BarReport::Assigned {
        function,
        bar: i as u8,
        address,
        size,
        is_64bit,
    }
}

/// The largest size among unassigned memory BARs that is below `smaller_than`.
///
/// Plain loops here and in [`find_free`]: this runs once, at boot, where under TCG each
/// instruction costs its translation, and the iterator adapters' code was several times
/// larger.
fn next_size(devices: &[PciDevice], smaller_than: Option<u64>) -> Option<u64> {
    let mut largest: Option<u64> = None;
    for d in devices {
        for b in &d.bars {
            if let Bar::Memory {
                address: 0, size, ..
            } = *b
            {
                let below = smaller_than.is_none_or(|limit| size < limit);
                if size != 0 && below && largest.is_none_or(|l| size > l) {
                    largest = Some(size);
                }
            }
        }
    }
    largest
}

/// Whether a bridge in `devices` forwards `function`'s bus (its secondary..=subordinate).
/// Bridges numbered at or below their own bus are ignored as malformed.
fn behind_bridge(devices: &[PciDevice], function: PciAddress) -> bool {
    devices.iter().filter(|b| b.header_type == 1).any(|b| {
        let secondary = b.config_read_u8(regs::SECONDARY_BUS);
        let subordinate = b.config_read_u8(regs::SUBORDINATE_BUS).max(secondary);
        secondary > b.address.bus && (secondary..=subordinate).contains(&function.bus)
    })
}

/// The lowest `align`-aligned address in `window` where `size` bytes overlap neither an
/// assigned BAR of `devices` nor a `reserved` range.
fn find_free(
    window: &Range<u64>,
    size: u64,
    align: u64,
    devices: &[PciDevice],
    reserved: &[Range<u64>],
) -> Option<u64> {
    let mut at = window.start.checked_next_multiple_of(align)?;
    loop {
        let end = at.checked_add(size)?;
        if end > window.end {
            return None;
        }
        // The furthest end among the busy ranges that overlap `at..end`.
        let mut blocker: Option<u64> = None;
        let mut busy = |start: u64, busy_end: u64| {
            if start < end && at < busy_end && blocker.is_none_or(|b| busy_end > b) {
                blocker = Some(busy_end);
            }
        };
        for d in devices {
            for (start, len) in d.bars.iter().filter_map(Bar::memory_range) {
                busy(start, start.saturating_add(len));
            }
        }
        for r in reserved {
            busy(r.start, r.end);
        }
        match blocker {
            None => return Some(at),
            // Strictly increasing, so the walk ends after at most one step per busy range.
            Some(busy_end) => at = busy_end.checked_next_multiple_of(align)?,
        }
    }
}

/// Writes `address` into BAR `index` with memory decoding off, and reads it back. On a
/// mismatch the BAR is set back to 0 and the read-back address is the error.
fn program(device: &PciDevice, index: usize, address: u64, is_64bit: bool) -> Result<(), u64> {
    let offset = regs::BAR0 + 4 * index as u16;
    let command = device.config_read_u16(regs::COMMAND);
    device.config_write_u16(regs::COMMAND, command & !regs::COMMAND_MEMORY_SPACE);
    let write = |address: u64| {
        // The low four bits are read-only type flags; the device ignores what is written.
        device.config_write_u32(offset, address as u32 & !0xf);
        if is_64bit {
            device.config_write_u32(offset + 4, (address >> 32) as u32);
        }
    };
    write(address);
    let mut read_back = u64::from(device.config_read_u32(offset) & !0xf);
    if is_64bit {
        read_back |= u64::from(device.config_read_u32(offset + 4)) << 32;
    }
    if read_back != address {
        write(0);
    }
    device.config_write_u16(regs::COMMAND, command);
    if read_back == address {
        Ok(())
    } else {
        Err(read_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Function, MemConfig};
    use crate::{enumerate, ConfigAccess};
    use std::vec::Vec;

    fn nic() -> Function {
        Function::new(0x1af4, 0x1000, 0x02, 0x00)
    }

    /// A NIC with these `(slot, value, size)` 32-bit BARs.
    fn nic_with(bars: &[(usize, u32, u32)]) -> Function {
        let mut f = nic();
        for &(i, value, size) in bars {
            f.set_bar(i, value, size);
        }
        f
    }

    /// A 64-bit BAR in slots `i`, `i + 1`, unassigned.
    fn set_bar64(f: &mut Function, i: usize, size: u32) {
        f.set_bar(i, 0x4, size);
        f.bar_masks[i + 1] = u32::MAX;
    }

    fn run(
        cfg: MemConfig,
        windows: &BarWindows<'_>,
    ) -> (&'static MemConfig, Vec<PciDevice>, Vec<BarReport>) {
        let cfg = cfg.leak();
        let mut devices = Vec::new();
        enumerate(cfg, |d| devices.push(d));
        let mut reports = Vec::new();
        let n = assign_memory_bars(&mut devices, windows, |r| reports.push(r));
        let assigned = reports
            .iter()
            .filter(|r| matches!(r, BarReport::Assigned { .. }))
            .count();
        assert_eq!(n, assigned);
        (cfg, devices, reports)
    }

    fn window(below_4g: Range<u64>) -> BarWindows<'static> {
        BarWindows {
            below_4g,
            above_4g: None,
            reserved: &[],
        }
    }

    /// Checks that BAR `bar` of `device` decodes `len` bytes at `start`.
    #[track_caller]
    fn assert_placed(device: &PciDevice, bar: usize, start: u64, len: u64) {
        assert_eq!(
            device.bars[bar].memory_range(),
            Some((start, len)),
            "bar {bar}"
        );
    }

    /// Windows below and above 4 GiB, nothing reserved.
    fn split_windows(below_4g: Range<u64>, above_4g: Range<u64>) -> BarWindows<'static> {
        BarWindows {
            above_4g: Some(above_4g),
            ..window(below_4g)
        }
    }

    #[test]
    fn assigns_largest_first_each_aligned_to_its_size() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 1, 0);
        let b = PciAddress::new(0, 2, 0);
        let mut f = nic();
        f.set_bar(0, 0x1, 0x20); // I/O: left alone
        f.set_bar(1, 0, 0x100); // smaller than a page: page-aligned
        f.set_bar(2, 0, 0x10_0000);
        cfg.add(a, f);
        cfg.add(b, nic_with(&[(0, 0, 0x4000)]));

        let (cfg, devices, reports) = run(cfg, &window(0xc000_0000..0xc010_5000));
        let expect = [
            (a, 2, 0xc000_0000, 0x10_0000),
            (b, 0, 0xc010_0000, 0x4000),
            (a, 1, 0xc010_4000, 0x100),
        ];
        for (report, (function, bar, address, size)) in reports.iter().zip(expect) {
            assert_eq!(
                *report,
                BarReport::Assigned {
                    function,
                    bar,
                    address,
                    size,
                    is_64bit: false
                }
            );
            let reg = regs::BAR0 + 4 * u16::from(bar);
            assert_eq!(u64::from(cfg.read_u32(function, reg)), address);
        }
        assert_eq!(reports.len(), 3);
        // Smallest first would have put bar1 at the window start and left no 1 MiB slot.
        let ranges: Vec<_> = devices
            .iter()
            .flat_map(|d| d.bars.iter().filter_map(Bar::memory_range))
            .collect();
        assert_eq!(
            ranges,
            [
                (0xc010_4000, 0x100),
                (0xc000_0000, 0x10_0000),
                (0xc010_0000, 0x4000)
            ]
        );
        assert_eq!(cfg.read_u32(a, regs::BAR0), 0x1, "I/O BAR untouched");
        for f in [a, b] {
            assert_eq!(
                cfg.read_u16(f, regs::COMMAND) & regs::COMMAND_MEMORY_SPACE,
                0,
                "decoding is left to the driver"
            );
        }
        assert_eq!(
            std::format!("{}", reports[0]),
            "00:01.0 bar2 assigned mem32:0xc0000000+0x100000 (firmware left it unassigned)"
        );
    }

    #[test]
    fn a_64bit_bar_gets_both_halves_above_4g_or_falls_back_below() {
        let a = PciAddress::new(0, 1, 0);
        let device = || {
            let cfg = MemConfig::default();
            let mut f = nic();
            f.set_bar(1, 0, 0x1000);
            set_bar64(&mut f, 4, 0x4000);
            cfg.add(a, f);
            cfg
        };
        let windows = split_windows(0xc000_0000..0xfec0_0000, 0x10_0000_0000..0x20_0000_0000);
        let (cfg, devices, reports) = run(device(), &windows);
        assert_eq!(
            cfg.read_u32(a, 0x20),
            0x4,
            "low half keeps the 64-bit type bits"
        );
        assert_eq!(cfg.read_u32(a, 0x24), 0x10);
        assert_placed(&devices[0], 4, 0x10_0000_0000, 0x4000);
        assert_placed(&devices[0], 1, 0xc000_0000, 0x1000);
        assert!(matches!(
            reports[0],
            BarReport::Assigned {
                bar: 4,
                is_64bit: true,
                ..
            }
        ));

        // No window above 4 GiB: the 64-bit BAR goes below, high half 0.
        let (cfg, devices, _) = run(device(), &window(0xc000_0000..0xfec0_0000));
        assert_placed(&devices[0], 4, 0xc000_0000, 0x4000);
        assert_eq!(cfg.read_u32(a, 0x20), 0xc000_0004);
        assert_eq!(cfg.read_u32(a, 0x24), 0);

        // A full window above 4 GiB also falls back; a 32-bit BAR never goes above.
        let windows = split_windows(0xc000_0000..0xc000_4000, 0x10_0000_0000..0x10_0000_1000);
        let (_, devices, reports) = run(device(), &windows);
        assert_placed(&devices[0], 4, 0xc000_0000, 0x4000);
        assert!(devices[0].bars[1].is_unassigned_memory());
        assert!(matches!(
            reports[1],
            BarReport::Unassigned {
                bar: 1,
                reason: Unassigned::NoSpace,
                ..
            }
        ));
    }

    #[test]
    fn firmware_assigned_bars_and_reserved_ranges_are_skipped_around() {
        let cfg = MemConfig::default();
        let fw = PciAddress::new(0, 1, 0);
        cfg.add(fw, nic_with(&[(0, 0xc000_0000, 0x1_0000)]));
        let new = PciAddress::new(0, 2, 0);
        cfg.add(new, nic_with(&[(0, 0, 0x1_0000), (1, 0, 0x1000)]));
        let reserved = [0xc001_0000..0xc001_8000, 0xc002_0000..0xc002_1000];
        let windows = BarWindows {
            reserved: &reserved,
            ..window(0xc000_0000..0xfec0_0000)
        };
        let (cfg, devices, reports) = run(cfg, &windows);
        assert_eq!(reports.len(), 2);
        assert_eq!(
            cfg.read_u32(fw, regs::BAR0),
            0xc000_0000,
            "firmware BAR kept"
        );
        // 64 KiB: past the firmware BAR, past the reserved range at 0xc001_0000, and
        // aligned past the one at 0xc002_0000.
        assert_placed(&devices[1], 0, 0xc003_0000, 0x1_0000);
        // 4 KiB fits in the gap after the first reserved range.
        assert_placed(&devices[1], 1, 0xc001_8000, 0x1000);
        assert_eq!(cfg.read_u32(new, regs::BAR0), 0xc003_0000);
    }

    #[test]
    fn an_exhausted_window_leaves_the_bar_at_zero_and_decoding_off() {
        let cfg = MemConfig::default();
        let (a, b) = (PciAddress::new(0, 1, 0), PciAddress::new(0, 2, 0));
        for f in [a, b] {
            cfg.add(f, nic_with(&[(0, 0, 0x2000)]));
        }
        let (cfg, devices, reports) = run(cfg, &window(0xc000_0000..0xc000_2000));
        assert_placed(&devices[0], 0, 0xc000_0000, 0x2000);
        assert!(devices[1].bars[0].is_unassigned_memory());
        // What a driver checks before it switches decoding on.
        assert_eq!(devices[0].unassigned_memory_bar(), None);
        assert_eq!(devices[1].unassigned_memory_bar(), Some(0));
        assert_eq!(cfg.read_u32(b, regs::BAR0), 0);
        assert_eq!(
            cfg.read_u16(b, regs::COMMAND) & regs::COMMAND_MEMORY_SPACE,
            0
        );
        assert_eq!(
            std::format!("{}", reports[1]),
            "00:02.0 bar0 mem32 size 0x2000 left unassigned: no free range in the BAR windows"
        );
        // Degenerate windows: empty, inverted, at the very top of the address space.
        let inverted = Range {
            start: 0xd000_0000,
            end: 0xc000_0000,
        };
        for w in [0..0, inverted, u64::MAX - 0xfff..u64::MAX] {
            let cfg = MemConfig::default();
            let mut g = nic();
            set_bar64(&mut g, 0, 0x2000);
            cfg.add(a, g);
            let windows = split_windows(0..0, w);
            let (_, _, reports) = run(cfg, &windows);
            assert!(matches!(
                reports[..],
                [BarReport::Unassigned {
                    reason: Unassigned::NoSpace,
                    ..
                }]
            ));
        }
    }

    #[test]
    fn functions_behind_a_bridge_are_reported_not_written() {
        let cfg = MemConfig::default();
        let mut bridge = Function::new(0x1b36, 0x000c, 0x06, 0x04);
        bridge.space[0x0e] = 1;
        bridge.space[0x19] = 1;
        bridge.space[0x1a] = 1;
        cfg.add(PciAddress::new(0, 3, 0), bridge);
        let behind = PciAddress::new(1, 0, 0);
        cfg.add(behind, nic_with(&[(1, 0, 0x1000)]));
        let (cfg, devices, reports) = run(cfg, &window(0xc000_0000..0xfec0_0000));
        assert!(matches!(
            reports[..],
            [BarReport::Unassigned { function, reason: Unassigned::BehindBridge, .. }] if function == behind
        ));
        assert!(devices[1].bars[1].is_unassigned_memory());
        assert_eq!(cfg.read_u32(behind, 0x14), 0);
    }

    #[test]
    fn a_bar_that_does_not_take_the_address_is_reset_and_reported() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 1, 0);
        cfg.add(a, nic_with(&[(1, 0, 0x1000)]));
        let cfg = cfg.leak();
        let mut devices = Vec::new();
        enumerate(cfg, |d| devices.push(d));
        // The device stops implementing the BAR after the probe: writes read back as 0.
        cfg.functions.lock().unwrap().get_mut(&a).unwrap().bar_masks[1] = 0;
        let mut reports = Vec::new();
        let n = assign_memory_bars(&mut devices, &window(0xc000_0000..0xfec0_0000), |r| {
            reports.push(r)
        });
        assert_eq!(n, 0);
        assert_eq!(
            reports[..],
            [BarReport::Unassigned {
                function: a,
                bar: 1,
                size: 0x1000,
                is_64bit: false,
                reason: Unassigned::Rejected {
                    wanted: 0xc000_0000,
                    read_back: 0
                }
            }]
        );
        assert!(devices[0].bars[1].is_unassigned_memory());
    }

    #[test]
    fn nothing_to_do_when_the_firmware_assigned_everything() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 1, 0);
        cfg.add(a, nic_with(&[(1, 0xfebf_1000, 0x1000)]));
        let (cfg, _, reports) = run(cfg, &window(0xc000_0000..0xfec0_0000));
        assert!(reports.is_empty());
        assert_eq!(
            cfg.read_u16(a, regs::COMMAND),
            0,
            "command register untouched"
        );
    }
}
