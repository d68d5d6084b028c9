//! Base Address Register decoding and sizing.
//!
//! A BAR's low bits say what it is: bit 0 set is an I/O port range, otherwise memory with
//! bits 2:1 giving the width (00 = 32-bit, 10 = 64-bit, taking the next slot as the high
//! half) and bit 3 prefetchability. The size comes from the classic probe: write all ones,
//! read back the implemented address bits, restore. Decoding is done with memory and I/O
//! decode switched off so the device never answers at the probe address.

use crate::{regs, ConfigAccess, PciAddress};

/// One decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Bar {
    /// Not implemented, or the high half of the 64-bit BAR in the slot before.
    #[default]
    None,
    /// A memory range.
    Memory {
        /// Physical address the firmware assigned (may be above 4 GiB; 0 if unassigned).
        address: u64,
        /// Size in bytes (a power of two).
        size: u64,
        /// Reads have no side effects; may be mapped write-combining.
        prefetchable: bool,
        /// The BAR takes two slots.
        is_64bit: bool,
    },
    /// An I/O port range.
    Io {
        /// First port.
        port: u32,
        /// Number of ports.
        size: u32,
    },
}

impl Bar {
    /// The physical address and size of a memory BAR with an assigned address.
    pub fn memory_range(&self) -> Option<(u64, u64)> {
        match *self {
            Bar::Memory { address, size, .. } if address != 0 && size != 0 => Some((address, size)),
            _ => None,
        }
    }

    /// Whether this is a memory BAR that decodes a size but has no address (firmware that
    /// does not assign BARs leaves them so; see [`crate::assign_memory_bars`]).
    pub fn is_unassigned_memory(&self) -> bool {
        matches!(*self, Bar::Memory { address: 0, size, .. } if size != 0)
    }

    /// Decodes from the original register values and the values read back after writing
    /// all ones (`probe_*`). `high`/`probe_high` are only used for 64-bit memory BARs.
    pub fn decode(low: u32, probe_low: u32, high: u32, probe_high: u32) -> Bar {
        if low & 1 == 1 {
            // I/O: bits 31:2 address; upper 16 bits may read as zero on x86.
            let mask = probe_low & !0x3;
            let mask = if mask & 0xffff_0000 == 0 {
                mask | 0xffff_0000
            } else {
                mask
            };
            if mask & 0xffff == 0 {
                return Bar::None;
            }
            let size = (!mask).wrapping_add(1);
            return Bar::Io {
                port: low & !0x3,
                size,
            };
        }
        let kind = (low >> 1) & 0x3;
        let prefetchable = low & 0x8 != 0;
        match kind {
            0 => {
                let mask = probe_low & !0xf;
                if mask == 0 {
                    return Bar::None;
                }
                Bar::Memory {
                    address: u64::from(low & !0xf),
                    size: u64::from((!mask).wrapping_add(1)),
                    prefetchable,
                    is_64bit: false,
                }
            }
            2 => {
                let mask = (u64::from(probe_high) << 32) | u64::from(probe_low & !0xf);
                if mask == 0 {
                    return Bar::None;
                }
                Bar::Memory {
                    address: (u64::from(high) << 32) | u64::from(low & !0xf),
                    size: (!mask).wrapping_add(1),
                    prefetchable,
                    is_64bit: true,
                }
            }
            // 01 (below 1 MiB) is obsolete, 11 reserved: treat as not decodable.
            _ => Bar::None,
        }
    }
}

/// Reads and sizes the `count` BARs (6 for type-0 headers, 2 for bridges) of `addr`.
///
/// Memory and I/O decode are switched off during the probe and the command register is
/// restored afterwards.
pub(crate) fn read_bars(access: &dyn ConfigAccess, addr: PciAddress, count: usize) -> [Bar; 6] {
    let mut bars = [Bar::None; 6];
    let command = access.read_u16(addr, regs::COMMAND);
    access.write_u16(
        addr,
        regs::COMMAND,
        command & !(regs::COMMAND_IO_SPACE | regs::COMMAND_MEMORY_SPACE),
    );
    let count = count.min(6);
    let mut i = 0;
    while i < count {
        let off = regs::BAR0 + 4 * i as u16;
        let low = access.read_u32(addr, off);
        access.write_u32(addr, off, u32::MAX);
        let probe_low = access.read_u32(addr, off);
        access.write_u32(addr, off, low);
        let is_64 = low & 1 == 0 && (low >> 1) & 3 == 2 && i + 1 < count;
        let (high, probe_high) = if is_64 {
            let hoff = off + 4;
            let high = access.read_u32(addr, hoff);
            access.write_u32(addr, hoff, u32::MAX);
            let probe_high = access.read_u32(addr, hoff);
            access.write_u32(addr, hoff, high);
            (high, probe_high)
        } else {
            (0, 0)
        };
        bars[i] = if low & 1 == 0 && (low >> 1) & 3 == 2 && !is_64 {
            // A 64-bit BAR in the last slot has no high half: malformed.
            Bar::None
        } else {
            Bar::decode(low, probe_low, high, probe_high)
        };
        i += if is_64 { 2 } else { 1 };
    }
    access.write_u16(addr, regs::COMMAND, command);
    bars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Function, MemConfig};

    #[test]
    fn decodes_32bit_memory() {
        let bar = Bar::decode(0xfebf_1000, 0xffff_f000, 0, 0);
        assert_eq!(
            bar,
            Bar::Memory {
                address: 0xfebf_1000,
                size: 0x1000,
                prefetchable: false,
                is_64bit: false
            }
        );
        assert_eq!(bar.memory_range(), Some((0xfebf_1000, 0x1000)));
    }

    #[test]
    fn decodes_64bit_prefetchable_memory_above_4g() {
        let bar = Bar::decode(0x0000_000c, 0xffff_c00c, 0x0000_0008, 0xffff_ffff);
        assert_eq!(
            bar,
            Bar::Memory {
                address: 0x8_0000_0000,
                size: 0x4000,
                prefetchable: true,
                is_64bit: true
            }
        );
    }

    #[test]
    fn decodes_io_with_16bit_decoder() {
        // Upper half reads back zero on devices that decode only 16 bits of port address.
        assert_eq!(
            Bar::decode(0xc041, 0x0000_ffe1, 0, 0),
            Bar::Io {
                port: 0xc040,
                size: 0x20
            }
        );
        assert_eq!(
            Bar::decode(0xc001, 0xffff_ffe1, 0, 0),
            Bar::Io {
                port: 0xc000,
                size: 0x20
            }
        );
    }

    #[test]
    fn unimplemented_and_reserved_kinds_decode_to_none() {
        assert_eq!(Bar::decode(0, 0, 0, 0), Bar::None);
        assert_eq!(Bar::decode(0x6, 0xffff_fff6, 0, 0), Bar::None);
        assert_eq!(Bar::decode(0x2, 0xffff_fff2, 0, 0), Bar::None);
        assert_eq!(Bar::decode(0x1, 0x1, 0, 0), Bar::None);
        assert_eq!(Bar::None.memory_range(), None);
    }

    #[test]
    fn probing_sizes_every_slot_and_restores_registers() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 3, 0);
        let mut f = Function::new(0x1af4, 0x1041, 0x02, 0x00);
        f.put16(0x04, 0x0007);
        f.set_bar(0, 0xc001, 0x20); // I/O
        f.set_bar(1, 0xfebd_1000, 0x1000); // 32-bit memory
        f.set_bar(4, 0x0000_000c, 0x4000); // 64-bit prefetchable, low half
        f.set_bar(5, 0x0000_0008, 0); // high half
        f.bar_masks[5] = u32::MAX;
        cfg.add(a, f);
        let bars = read_bars(&cfg, a, 6);
        assert_eq!(
            bars[0],
            Bar::Io {
                port: 0xc000,
                size: 0x20
            }
        );
        assert_eq!(bars[1].memory_range(), Some((0xfebd_1000, 0x1000)));
        assert_eq!(bars[2], Bar::None);
        assert_eq!(bars[3], Bar::None);
        assert_eq!(bars[4].memory_range(), Some((0x8_0000_0000, 0x4000)));
        assert_eq!(bars[5], Bar::None);
        assert_eq!(cfg.read_u32(a, 0x10), 0xc001);
        assert_eq!(cfg.read_u32(a, 0x20), 0x0000_000c);
        assert_eq!(cfg.read_u32(a, 0x24), 0x0000_0008);
        assert_eq!(cfg.read_u16(a, regs::COMMAND), 0x0007);
    }

    #[test]
    fn a_64bit_bar_in_the_last_slot_is_rejected() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 4, 0);
        let mut f = Function::new(0x8086, 0x100e, 0x02, 0x00);
        f.set_bar(5, 0x0000_0004, 0x1000);
        cfg.add(a, f);
        assert_eq!(read_bars(&cfg, a, 6)[5], Bar::None);
    }
}
