//! virtio-mmio transport, versions 1 (legacy) and 2 (virtio 1.2, section 4.2).
//!
//! Also parses the `virtio_mmio.device=<size>@<base>:<irq>` entries that QEMU's microvm
//! machine appends to the kernel command line for each populated transport, which is how
//! a kernel without ACPI or device tree learns where its devices are.

use super::{FeatureWindow, Transport, TransportError};
use crate::queue::QueueSetup;
use netoops_driver_platform::MmioRegion;

// Registers of both versions.
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_NOTIFY: usize = 0x050;
const STATUS: usize = 0x070;
const CONFIG: usize = 0x100;

// Version 1 (legacy) only: the queue is one guest-page-aligned block found by page number.
const GUEST_PAGE_SIZE: usize = 0x028;
const QUEUE_ALIGN: usize = 0x03c;
const QUEUE_PFN: usize = 0x040;

// Version 2 only: the three parts of a queue placed separately, enabled by QUEUE_READY.
const QUEUE_READY: usize = 0x044;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG_GENERATION: usize = 0x0fc;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const DEVICE_NET: u32 = 1;
const LEGACY_PAGE: u32 = 4096;

/// Bytes of register space to map for one device (QEMU spaces them 512 bytes apart).
pub const WINDOW_LEN: usize = 0x200;

/// One `virtio_mmio.device=` entry from the kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical base of the register window.
    pub base: u64,
    /// Window size in bytes.
    pub size: u64,
    /// Interrupt line (unused by this poll-mode driver, kept for completeness).
    pub irq: u32,
}

/// Iterates over the `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` entries of a kernel
/// command line (Linux syntax: size takes K/M/G suffixes, numbers may be 0x-prefixed).
/// Malformed entries are skipped.
pub fn cmdline_devices(cmdline: &str) -> impl Iterator<Item = MmioDevice> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix("virtio_mmio.device="))
        .filter_map(parse_device)
}

fn parse_device(spec: &str) -> Option<MmioDevice> {
    let (size, rest) = spec.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    let size = parse_size(size)?;
    let base = parse_number(base)?;
    let irq = u32::try_from(parse_number(irq)?).ok()?;
    (size > 0).then_some(MmioDevice { base, size, irq })
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A virtio-mmio network device.
#[derive(Debug)]
pub struct MmioTransport {
    regs: MmioRegion,
    version: u32,
}

impl MmioTransport {
    /// Checks the magic value, version and device type of a mapped register window of at
    /// least [`WINDOW_LEN`] bytes.
    pub fn new(regs: MmioRegion) -> Result<Self, TransportError> {
        if regs.len() < CONFIG + 8 || regs.read_u32(MAGIC) != MAGIC_VALUE {
            return Err(TransportError::NotVirtioNet);
        }
        let version = regs.read_u32(VERSION);
        if version != 1 && version != 2 {
            return Err(TransportError::UnsupportedVersion(version));
        }
        if regs.read_u32(DEVICE_ID) != DEVICE_NET {
            return Err(TransportError::NotVirtioNet);
        }
        Ok(Self { regs, version })
    }

    /// The register interface version (1 legacy, 2 modern).
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl Transport for MmioTransport {
    fn after_reset(&mut self) {
        if self.version == 1 {
            self.regs.write_u32(GUEST_PAGE_SIZE, LEGACY_PAGE);
        }
    }

    fn status(&self) -> u8 {
        self.regs.read_u32(STATUS) as u8
    }

    fn set_status(&mut self, status: u8) {
        self.regs.write_u32(STATUS, u32::from(status));
    }

    fn device_features(&mut self) -> u64 {
        let window = FeatureWindow::new(DEVICE_FEATURES_SEL, DEVICE_FEATURES, self.version == 1);
        window.read(&self.regs)
    }

    fn set_driver_features(&mut self, features: u64) {
        let window = FeatureWindow::new(DRIVER_FEATURES_SEL, DRIVER_FEATURES, self.version == 1);
        window.write(&self.regs, features);
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.regs.write_u32(QUEUE_SEL, u32::from(queue));
        u16::try_from(self.regs.read_u32(QUEUE_NUM_MAX)).unwrap_or(u16::MAX)
    }

    fn setup_queue(&mut self, setup: QueueSetup) -> Result<(), TransportError> {
        let QueueSetup { queue, size, addrs } = setup;
        self.regs.write_u32(QUEUE_SEL, u32::from(queue));
        if self.regs.read_u32(QUEUE_NUM_MAX) == 0 {
            return Err(TransportError::QueueUnavailable(queue));
        }
        if self.version == 1 {
            // Legacy: one page-aligned block, given as a 32-bit page frame number; the
            // used ring sits at the next QueueAlign boundary, which is how SplitQueue lays
            // it out.
            let pfn = addrs.desc / u64::from(LEGACY_PAGE);
            if addrs.desc % u64::from(LEGACY_PAGE) != 0 || pfn > u64::from(u32::MAX) {
                return Err(TransportError::QueueAddressUnusable(queue));
            }
            if self.regs.read_u32(QUEUE_PFN) != 0 {
                return Err(TransportError::QueueAlreadyEnabled(queue));
            }
            self.regs.write_u32(QUEUE_NUM, u32::from(size));
            self.regs.write_u32(QUEUE_ALIGN, LEGACY_PAGE);
            self.regs.write_u32(QUEUE_PFN, pfn as u32);
        } else {
            if self.regs.read_u32(QUEUE_READY) != 0 {
                return Err(TransportError::QueueAlreadyEnabled(queue));
            }
            self.regs.write_u32(QUEUE_NUM, u32::from(size));
            self.regs.write_u64_split(QUEUE_DESC, addrs.desc);
            self.regs.write_u64_split(QUEUE_DRIVER, addrs.avail);
            self.regs.write_u64_split(QUEUE_DEVICE, addrs.used);
            self.regs.write_u32(QUEUE_READY, 1);
        }
        Ok(())
    }

    fn notify(&self, queue: u16) {
        self.regs.write_u32(QUEUE_NOTIFY, u32::from(queue));
    }

    fn config_generation(&self) -> u32 {
        if self.version == 1 {
            0
        } else {
            self.regs.read_u32(CONFIG_GENERATION)
        }
    }

    fn read_config_u8(&self, offset: usize) -> u8 {
        self.regs.read_u8(CONFIG + offset)
    }

    fn read_config_u16(&self, offset: usize) -> u16 {
        self.regs.read_u16(CONFIG + offset)
    }

    fn is_legacy(&self) -> bool {
        self.version == 1
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn parses_what_qemu_microvm_appends() {
        let cmdline = "console=ttyS0 selftest=virtio-echo \
                       virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0000000:5:3";
        let devs: Vec<_> = cmdline_devices(cmdline).collect();
        assert_eq!(
            devs,
            [
                MmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                },
                MmioDevice {
                    base: 0xd000_0000,
                    size: 4096,
                    irq: 5
                },
            ]
        );
    }

    #[test]
    fn skips_malformed_entries() {
        let cmdline = "virtio_mmio.device=512 virtio_mmio.device=@0x1:1 \
                       virtio_mmio.device=0@0x1000:1 virtio_mmio.device=99999999999G@0x1:1 \
                       virtio_mmio.device=1k@zz:1 virtio_mmio.device=1M@4096:7";
        let devs: Vec<_> = cmdline_devices(cmdline).collect();
        assert_eq!(
            devs,
            [MmioDevice {
                base: 4096,
                size: 1 << 20,
                irq: 7
            }]
        );
    }
}
