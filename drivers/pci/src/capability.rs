//! The standard capability list (configuration offsets 0x40..0x100).
//!
//! The list is a chain of `(id, next)` byte pairs starting at the capabilities pointer
//! (0x34). Virtio finds its common/notify/ISR/device-config structures as vendor-specific
//! capabilities (id 0x09) on it. The walk is bounded: a pointer into the header, a pointer
//! past the end, or more links than the space can hold (a loop) ends it.

use crate::{regs, ConfigAccess, PciAddress};

/// Vendor-specific capability (virtio structures).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// Most links the 192 bytes after the header can hold (4 bytes each at minimum).
const MAX_LINKS: usize = 48;

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Configuration-space offset of the capability (its ID byte). Fields of the capability
    /// are read with the device's `config_read_*` at `offset + n`.
    pub offset: u8,
}

/// Iterator over a function's capability list; see [`crate::PciDevice::capabilities`].
pub struct Capabilities<'a> {
    access: &'a dyn ConfigAccess,
    addr: PciAddress,
    next: u8,
    links: usize,
}

impl<'a> Capabilities<'a> {
    /// Starts a walk; yields nothing when the status register says there is no list.
    pub fn new(access: &'a dyn ConfigAccess, addr: PciAddress) -> Self {
        let status = access.read_u16(addr, regs::STATUS);
        let next = if status & regs::STATUS_CAPABILITIES != 0 {
            access.read_u8(addr, regs::CAPABILITIES_PTR)
        } else {
            0
        };
        Self {
            access,
            addr,
            next,
            links: 0,
        }
    }
}

impl Iterator for Capabilities<'_> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        // The low two bits of every pointer are reserved; pointers into the 64-byte header
        // are malformed.
        let offset = self.next & !3;
        if offset < 0x40 || self.links >= MAX_LINKS {
            self.next = 0;
            return None;
        }
        self.links += 1;
        let id = self.access.read_u8(self.addr, u16::from(offset));
        if id == 0xff {
            // Function vanished or the space reads as all ones.
            self.next = 0;
            return None;
        }
        self.next = self.access.read_u8(self.addr, u16::from(offset) + 1);
        Some(Capability { id, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Function, MemConfig};
    use std::vec::Vec;

    /// Walks the capability list of a function whose configuration space holds `links`
    /// (`(offset, id, next)`, the first one where the capabilities pointer points), with the
    /// status register's capability bit set or not.
    fn walk(links: &[(u8, u8, u8)], status_bit: bool) -> Vec<Capability> {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 2, 0);
        let mut f = Function::new(0x1af4, 0x1041, 2, 0);
        if status_bit {
            f.put16(6, regs::STATUS_CAPABILITIES);
        }
        f.space[0x34] = links.first().map_or(0, |l| l.0);
        for &(at, id, next) in links {
            f.space[usize::from(at)] = id;
            f.space[usize::from(at) + 1] = next;
        }
        cfg.add(a, f);
        Capabilities::new(&cfg, a).collect()
    }

    #[test]
    fn walks_virtio_style_vendor_capabilities() {
        let caps = walk(
            &[
                (0x98, 0x11, 0x84),
                (0x84, 0x09, 0x70),
                (0x70, 0x09, 0x60),
                (0x60, 0x09, 0),
            ],
            true,
        );
        assert_eq!(
            caps,
            [
                Capability {
                    id: CAP_ID_MSIX,
                    offset: 0x98
                },
                Capability {
                    id: CAP_ID_VENDOR,
                    offset: 0x84
                },
                Capability {
                    id: CAP_ID_VENDOR,
                    offset: 0x70
                },
                Capability {
                    id: CAP_ID_VENDOR,
                    offset: 0x60
                },
            ]
        );
    }

    #[test]
    fn no_list_without_the_status_bit() {
        assert_eq!(walk(&[(0x40, 0x09, 0)], false), []);
    }

    #[test]
    fn a_loop_ends_after_the_bound() {
        let caps = walk(&[(0x40, 0x09, 0x50), (0x50, 0x05, 0x40)], true);
        assert_eq!(caps.len(), MAX_LINKS);
    }

    #[test]
    fn a_pointer_into_the_header_ends_the_walk() {
        let caps = walk(&[(0x40, 0x09, 0x10)], true);
        assert_eq!(
            caps,
            [Capability {
                id: CAP_ID_VENDOR,
                offset: 0x40
            }]
        );
    }

    #[test]
    fn reserved_low_pointer_bits_are_ignored() {
        let caps = walk(&[(0x40, 0x10, 0x53), (0x50, 0x09, 0)], true);
        let offsets: Vec<_> = caps.iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0x40, 0x50]);
    }
}
