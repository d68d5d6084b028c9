//! PCI configuration access, enumeration and BAR decoding.
//!
//! Owns: the [`ConfigAccess`] seam with its two mechanisms ([`LegacyPorts`] through
//! 0xCF8/0xCFC and [`Ecam`] through memory-mapped configuration space from ACPI MCFG), the
//! bus walk ([`enumerate`]), BAR decoding ([`Bar`]), the capability-list walk
//! ([`PciDevice::capabilities`]) and addresses for memory BARs the firmware left unassigned
//! ([`assign_memory_bars`]).
//!
//! Contract: this crate never allocates and never maps memory. The kernel hands it an access
//! mechanism that lives for `'static` (ECAM needs the window already mapped uncached) and
//! collects the devices the walk reports. Malformed configuration space (capability loops,
//! pointers into the header, BARs that decode to nonsense) ends a walk early or decodes to
//! [`Bar::None`]; it never panics.
#![no_std]

#[cfg(test)]
extern crate std;

mod assign;
mod bar;
mod capability;
mod config;
mod enumerate;

pub use assign::{assign_memory_bars, BarReport, BarWindows, Unassigned};
pub use bar::Bar;
pub use capability::{
    Capabilities, Capability, CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PCIE, CAP_ID_VENDOR,
};
pub use config::{ConfigAccess, Ecam, LegacyPorts};
pub use enumerate::{enumerate, PciDevice};

/// Bus/device/function of one PCI function (segment 0 only: the appliance has one segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PciAddress {
    /// Bus number, 0..=255.
    pub bus: u8,
    /// Device number, 0..=31.
    pub dev: u8,
    /// Function number, 0..=7.
    pub func: u8,
}

impl PciAddress {
    /// The address of `bus:dev.func`; `dev` and `func` are masked to their 5 and 3 bits.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self {
            bus,
            dev: dev & 0x1f,
            func: func & 0x07,
        }
    }
}

impl core::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Offsets of the type-0/type-1 header fields this crate reads.
pub mod regs {
    /// Vendor ID (u16).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (u16).
    pub const COMMAND: u16 = 0x04;
    /// Status register (u16).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (u8).
    pub const REVISION: u16 = 0x08;
    /// Programming interface (u8).
    pub const PROG_IF: u16 = 0x09;
    /// Subclass (u8).
    pub const SUBCLASS: u16 = 0x0a;
    /// Class code (u8).
    pub const CLASS: u16 = 0x0b;
    /// Header type (u8); bit 7 marks a multi-function device.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First BAR (u32); six in a type-0 header, two in a type-1 header.
    pub const BAR0: u16 = 0x10;
    /// Type-1 header: secondary bus number (u8).
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type-1 header: subordinate bus number (u8).
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    /// Capabilities pointer (u8) for type-0 and type-1 headers.
    pub const CAPABILITIES_PTR: u16 = 0x34;
    /// Interrupt line (u8).
    pub const INTERRUPT_LINE: u16 = 0x3c;

    /// Command: respond to I/O space accesses.
    pub const COMMAND_IO_SPACE: u16 = 1 << 0;
    /// Command: respond to memory space accesses.
    pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
    /// Command: may act as a bus master (DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command: legacy INTx disabled.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status: the capability list is present.
    pub const STATUS_CAPABILITIES: u16 = 1 << 4;
}

#[cfg(test)]
pub(crate) mod testing {
    //! A configuration space held in host memory, for the unit tests of every module.
    use super::{ConfigAccess, PciAddress};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Per-function 4 KiB images, plus BAR size masks that model the write-ones probe.
    #[derive(Default)]
    pub struct MemConfig {
        pub functions: Mutex<BTreeMap<PciAddress, Function>>,
    }

    #[derive(Clone)]
    pub struct Function {
        pub space: [u8; 4096],
        /// For each BAR slot: the mask of address bits the device implements (0 = not
        /// implemented). Writes to a BAR keep only these bits plus the read-only low bits.
        pub bar_masks: [u32; 6],
    }

    impl Function {
        pub fn new(vendor: u16, device: u16, class: u8, subclass: u8) -> Self {
            let mut f = Function {
                space: [0; 4096],
                bar_masks: [0; 6],
            };
            f.put16(0, vendor);
            f.put16(2, device);
            f.space[0x0b] = class;
            f.space[0x0a] = subclass;
            f
        }
        pub fn put16(&mut self, off: usize, v: u16) {
            self.space[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
        pub fn put32(&mut self, off: usize, v: u32) {
            self.space[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        pub fn get32(&self, off: usize) -> u32 {
            u32::from_le_bytes(self.space[off..off + 4].try_into().unwrap())
        }
        /// Sets BAR `i` to `value` with `size` bytes decoded (size a power of two).
        pub fn set_bar(&mut self, i: usize, value: u32, size: u32) {
            self.put32(0x10 + 4 * i, value);
            self.bar_masks[i] = !(size.wrapping_sub(1));
        }
    }

    impl MemConfig {
        pub fn add(&self, addr: PciAddress, f: Function) {
            self.functions.lock().unwrap().insert(addr, f);
        }
        pub fn leak(self) -> &'static MemConfig {
            std::boxed::Box::leak(std::boxed::Box::new(self))
        }
    }

    impl ConfigAccess for MemConfig {
        fn read_u32(&self, addr: PciAddress, offset: u16) -> u32 {
            let map = self.functions.lock().unwrap();
            match map.get(&addr) {
                Some(f) => f.get32(usize::from(offset & 0xffc)),
                None => u32::MAX,
            }
        }
        fn write_u32(&self, addr: PciAddress, offset: u16, value: u32) {
            let mut map = self.functions.lock().unwrap();
            let Some(f) = map.get_mut(&addr) else { return };
            let off = usize::from(offset & 0xffc);
            if (0x10..0x28).contains(&off) {
                let i = (off - 0x10) / 4;
                let old = f.get32(off);
                let upper_half = i > 0 && {
                    let prev = f.get32(off - 4);
                    prev & 1 == 0 && (prev >> 1) & 3 == 2
                };
                let low = if upper_half {
                    0
                } else if old & 1 == 1 {
                    0x3
                } else {
                    0xf
                };
                let mask = f.bar_masks[i];
                let v = if mask == 0 {
                    0
                } else {
                    (value & mask & !low) | (old & low)
                };
                f.put32(off, v);
            } else {
                f.put32(off, value);
            }
        }
    }
}
