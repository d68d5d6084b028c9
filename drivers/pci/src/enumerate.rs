//! The bus walk and the per-function view drivers use.
//!
//! [`enumerate`] starts at bus 0 and follows PCI-to-PCI bridges through their secondary bus
//! numbers (the firmware has numbered them), plus the extra root buses of a multi-function
//! host bridge. A bitmap of visited buses makes bad bridge numbering unable to loop. Only
//! vendor ID reads are spent on empty slots, so a bus costs 32 reads.

use crate::bar::read_bars;
use crate::{regs, Bar, Capabilities, ConfigAccess, PciAddress};

/// One PCI function found by [`enumerate`], with its access mechanism.
#[derive(Clone, Copy)]
pub struct PciDevice {
    /// Where the function sits.
    pub address: PciAddress,
    /// Vendor ID (0x1af4 for virtio, 0x8086 for Intel).
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Base class (0x02 network, 0x06 bridge).
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision ID.
    pub revision: u8,
    /// Header type without the multi-function bit (0 device, 1 PCI bridge).
    pub header_type: u8,
    /// Decoded BARs; the high slot of a 64-bit BAR is [`Bar::None`].
    pub bars: [Bar; 6],
    access: &'static dyn ConfigAccess,
}

impl core::fmt::Debug for PciDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciDevice")
            .field("address", &self.address)
            .field("vendor_id", &format_args!("{:#06x}", self.vendor_id))
            .field("device_id", &format_args!("{:#06x}", self.device_id))
            .field("class", &self.class)
            .field("subclass", &self.subclass)
            .field("prog_if", &self.prog_if)
            .field("bars", &self.bars)
            .finish()
    }
}

impl core::fmt::Display for PciDevice {
    /// One line: `00:03.0 1af4:1000 class 02.00.00` followed by the memory/I/O BARs.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x}",
            self.address, self.vendor_id, self.device_id, self.class, self.subclass, self.prog_if
        )?;
        for (i, bar) in self.bars.iter().enumerate() {
            match *bar {
                Bar::None => {}
                Bar::Memory {
                    address,
                    size,
                    is_64bit,
                    ..
                } => write!(
                    f,
                    " bar{i}=mem{}:{address:#x}+{size:#x}",
                    if is_64bit { "64" } else { "32" }
                )?,
                Bar::Io { port, size } => write!(f, " bar{i}=io:{port:#x}+{size:#x}")?,
            }
        }
        Ok(())
    }
}

impl PciDevice {
    /// Reads the function's header through `access` and sizes its BARs, or `None` when no
    /// function answers at `address`.
    pub fn probe(access: &'static dyn ConfigAccess, address: PciAddress) -> Option<Self> {
        let vendor_id = access.read_u16(address, regs::VENDOR_ID);
        if vendor_id == 0xffff || vendor_id == 0 {
            return None;
        }
        let header_type = access.read_u8(address, regs::HEADER_TYPE) & 0x7f;
        let bar_count = match header_type {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        Some(Self {
            address,
            vendor_id,
            device_id: access.read_u16(address, regs::DEVICE_ID),
            class: access.read_u8(address, regs::CLASS),
            subclass: access.read_u8(address, regs::SUBCLASS),
            prog_if: access.read_u8(address, regs::PROG_IF),
            revision: access.read_u8(address, regs::REVISION),
            header_type,
            bars: read_bars(access, address, bar_count),
            access,
        })
    }

    /// Reads a configuration byte.
    pub fn config_read_u8(&self, offset: u16) -> u8 {
        self.access.read_u8(self.address, offset)
    }
    /// Reads a configuration word (`offset` 2-aligned).
    pub fn config_read_u16(&self, offset: u16) -> u16 {
        self.access.read_u16(self.address, offset)
    }
    /// Reads a configuration dword (`offset` 4-aligned).
    pub fn config_read_u32(&self, offset: u16) -> u32 {
        self.access.read_u32(self.address, offset)
    }
    /// Writes a configuration byte.
    pub fn config_write_u8(&self, offset: u16, value: u8) {
        self.access.write_u8(self.address, offset, value)
    }
    /// Writes a configuration word (`offset` 2-aligned).
    pub fn config_write_u16(&self, offset: u16, value: u16) {
        self.access.write_u16(self.address, offset, value)
    }
    /// Writes a configuration dword (`offset` 4-aligned).
    pub fn config_write_u32(&self, offset: u16, value: u32) {
        self.access.write_u32(self.address, offset, value)
    }

    /// Walks the capability list.
    pub fn capabilities(&self) -> Capabilities<'static> {
        Capabilities::new(self.access, self.address)
    }

    /// The first memory BAR that decodes a size but has no address, if any. A driver must not
    /// switch memory decoding on while one is left: that BAR would claim low RAM.
    pub fn unassigned_memory_bar(&self) -> Option<u8> {
        let i = self.bars.iter().position(Bar::is_unassigned_memory)?;
        u8::try_from(i).ok()
    }

    /// Lets the device DMA and answer memory (and I/O, when it has I/O BARs) accesses.
    /// Legacy INTx is switched off: the appliance polls.
    pub fn enable_bus_master(&self) {
        let has_io = self.bars.iter().any(|b| matches!(b, Bar::Io { .. }));
        let mut command = self.config_read_u16(regs::COMMAND);
        command |=
            regs::COMMAND_BUS_MASTER | regs::COMMAND_MEMORY_SPACE | regs::COMMAND_INTX_DISABLE;
        if has_io {
            command |= regs::COMMAND_IO_SPACE;
        }
        self.config_write_u16(regs::COMMAND, command);
    }

    /// The configuration mechanism this device was found through.
    pub fn access(&self) -> &'static dyn ConfigAccess {
        self.access
    }
}

/// Buses still to scan, as an explicit work stack instead of recursion (bridges nest at most
/// 255 deep, but the kernel stack is small), and the ones already queued, so a bus that two
/// bridges claim is scanned once.
struct PendingBuses {
    stack: [u8; 256],
    top: usize,
    visited: [u64; 4],
    max_bus: u8,
}

impl PendingBuses {
    fn new(max_bus: u8) -> Self {
        Self {
            stack: [0; 256],
            top: 0,
            visited: [0; 4],
            max_bus,
        }
    }

    /// Queues `bus` unless it is past the access's last bus or was queued before.
    fn push(&mut self, bus: u8) {
        let (word, bit) = (usize::from(bus / 64), bus % 64);
        if bus <= self.max_bus
            && self.visited[word] & (1 << bit) == 0
            && self.top < self.stack.len()
        {
            self.visited[word] |= 1 << bit;
            self.stack[self.top] = bus;
            self.top += 1;
        }
    }

    fn pop(&mut self) -> Option<u8> {
        self.top = self.top.checked_sub(1)?;
        Some(self.stack[self.top])
    }
}

/// Walks every bus reachable from bus 0 and calls `found` once per function, in bus order
/// of discovery. Returns the number of functions found.
pub fn enumerate(access: &'static dyn ConfigAccess, mut found: impl FnMut(PciDevice)) -> usize {
    let mut count = 0;
    let mut pending = PendingBuses::new(access.max_bus());
    pending.push(0);
    // A multi-function host bridge at 00:00 exposes one root bus per function.
    if access.read_u8(PciAddress::new(0, 0, 0), regs::HEADER_TYPE) & 0x80 != 0 {
        for func in 1..8 {
            let a = PciAddress::new(0, 0, func);
            if access.read_u16(a, regs::VENDOR_ID) != 0xffff {
                pending.push(func);
            }
        }
    }
    while let Some(bus) = pending.pop() {
        for dev in 0..32 {
            // Function 0 says whether functions 1..8 exist; without it the slot is empty.
            let mut functions = 1;
            let mut func = 0;
            while func < functions {
                if let Some(d) = PciDevice::probe(access, PciAddress::new(bus, dev, func)) {
                    if func == 0 && d.config_read_u8(regs::HEADER_TYPE) & 0x80 != 0 {
                        functions = 8;
                    }
                    if d.header_type == 1 {
                        pending.push(d.config_read_u8(regs::SECONDARY_BUS));
                    }
                    found(d);
                    count += 1;
                }
                func += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Function, MemConfig};
    use std::vec::Vec;

    fn bridge(secondary: u8) -> Function {
        let mut f = Function::new(0x1b36, 0x000c, 0x06, 0x04);
        f.space[0x0e] = 1;
        f.space[0x19] = secondary;
        f.space[0x1a] = secondary;
        f
    }

    #[test]
    fn follows_bridges_and_multifunction_devices() {
        let cfg = MemConfig::default();
        cfg.add(
            PciAddress::new(0, 0, 0),
            Function::new(0x8086, 0x29c0, 0x06, 0x00),
        );
        let mut multi = Function::new(0x8086, 0x2918, 0x06, 0x01);
        multi.space[0x0e] = 0x80;
        cfg.add(PciAddress::new(0, 0x1f, 0), multi);
        cfg.add(
            PciAddress::new(0, 0x1f, 2),
            Function::new(0x8086, 0x2922, 0x01, 0x06),
        );
        cfg.add(PciAddress::new(0, 0x1c, 0), bridge(1));
        let mut nic = Function::new(0x1af4, 0x1041, 0x02, 0x00);
        nic.set_bar(4, 0xc, 0x4000);
        nic.bar_masks[5] = u32::MAX;
        nic.put32(0x24, 0x8);
        cfg.add(PciAddress::new(1, 0, 0), nic);
        // A device on bus 5 that no bridge leads to is not found.
        cfg.add(
            PciAddress::new(5, 0, 0),
            Function::new(0x1234, 0x1111, 0x03, 0x00),
        );
        let cfg = cfg.leak();

        let mut seen = Vec::new();
        let n = enumerate(cfg, |d| seen.push(d));
        assert_eq!(n, seen.len());
        let ids: Vec<_> = seen
            .iter()
            .map(|d| (d.address, d.vendor_id, d.device_id))
            .collect();
        assert_eq!(
            ids,
            [
                (PciAddress::new(0, 0, 0), 0x8086, 0x29c0),
                (PciAddress::new(0, 0x1c, 0), 0x1b36, 0x000c),
                (PciAddress::new(0, 0x1f, 0), 0x8086, 0x2918),
                (PciAddress::new(0, 0x1f, 2), 0x8086, 0x2922),
                (PciAddress::new(1, 0, 0), 0x1af4, 0x1041),
            ]
        );
        let nic = seen.last().unwrap();
        assert_eq!(nic.class, 2);
        assert_eq!(nic.bars[4].memory_range(), Some((0x8_0000_0000, 0x4000)));
        let line = std::format!("{nic}");
        assert_eq!(
            line,
            "01:00.0 1af4:1041 class 02.00.00 bar4=mem64:0x800000000+0x4000"
        );
    }

    #[test]
    fn a_bridge_loop_terminates() {
        let cfg = MemConfig::default();
        cfg.add(PciAddress::new(0, 1, 0), bridge(1));
        cfg.add(PciAddress::new(1, 0, 0), bridge(0));
        cfg.add(PciAddress::new(1, 1, 0), bridge(1));
        let n = enumerate(cfg.leak(), |_| {});
        assert_eq!(n, 3);
    }

    #[test]
    fn enabling_bus_master_sets_memory_and_keeps_other_bits() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 3, 0);
        let mut f = Function::new(0x1af4, 0x1000, 2, 0);
        f.put16(4, 0x0100); // SERR enable, set by firmware
        f.set_bar(0, 0xc001, 0x20);
        cfg.add(a, f);
        let cfg = cfg.leak();
        let d = PciDevice::probe(cfg, a).unwrap();
        d.enable_bus_master();
        assert_eq!(
            d.config_read_u16(regs::COMMAND),
            0x0100
                | regs::COMMAND_BUS_MASTER
                | regs::COMMAND_MEMORY_SPACE
                | regs::COMMAND_IO_SPACE
                | regs::COMMAND_INTX_DISABLE
        );
    }

    #[test]
    fn an_absent_function_probes_to_none() {
        let cfg = MemConfig::default().leak();
        assert!(PciDevice::probe(cfg, PciAddress::new(0, 0, 0)).is_none());
    }
}
