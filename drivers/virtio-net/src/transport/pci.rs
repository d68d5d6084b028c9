//! Modern virtio-pci transport (virtio 1.2, section 4.1).
//!
//! Finds the common, notify and device configuration structures through the vendor-specific
//! capabilities, decodes their BARs from configuration space (32- or 64-bit; a 64-bit BAR
//! may sit above 4 GiB, as OVMF places them) and asks the platform to map each structure.
//! Needs only [`PciConfig`]: BAR sizing and enumeration stay in the kernel's PCI code.

use super::{FeatureWindow, Transport, TransportError};
use crate::queue::QueueSetup;
use netoops_driver_platform::{memory_bar_base, MmioRegion, PciConfig, Platform};

/// Red Hat / virtio PCI vendor id.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional virtio-net device id (legacy + modern).
pub const DEVICE_NET_TRANSITIONAL: u16 = 0x1000;
/// Modern-only virtio-net device id (0x1040 + device type 1).
pub const DEVICE_NET_MODERN: u16 = 0x1041;

/// Whether a PCI function with these ids is a virtio-net device.
pub fn is_virtio_net(vendor: u16, device: u16) -> bool {
    vendor == VIRTIO_VENDOR && (device == DEVICE_NET_TRANSITIONAL || device == DEVICE_NET_MODERN)
}

const CAP_ID_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_DEVICE: u8 = 4;

// Common configuration structure offsets.
const DEVICE_FEATURE_SELECT: usize = 0;
const DEVICE_FEATURE: usize = 4;
const DRIVER_FEATURE_SELECT: usize = 8;
const DRIVER_FEATURE: usize = 12;
const MSIX_CONFIG: usize = 16;
const DEVICE_STATUS: usize = 20;
const CONFIG_GENERATION: usize = 21;
const QUEUE_SELECT: usize = 22;
const QUEUE_SIZE: usize = 24;
const QUEUE_MSIX_VECTOR: usize = 26;
const QUEUE_ENABLE: usize = 28;
const QUEUE_NOTIFY_OFF: usize = 30;
const QUEUE_DESC: usize = 32;
const QUEUE_DRIVER: usize = 40;
const QUEUE_DEVICE: usize = 48;
const COMMON_LEN: usize = 56;

const NO_VECTOR: u16 = 0xffff;
/// Queues whose notify offsets are remembered (virtio-net uses receive 0 and transmit 1).
const NOTIFY_QUEUES: usize = 2;

/// One virtio vendor capability as found in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    /// Structure type (1 common, 2 notify, 3 ISR, 4 device, 5 PCI access).
    pub cfg_type: u8,
    /// BAR index holding the structure.
    pub bar: u8,
    /// Offset inside the BAR.
    pub offset: u32,
    /// Length of the structure.
    pub length: u32,
    /// For notify capabilities: bytes between the notify addresses of two queues.
    pub notify_off_multiplier: u32,
}

/// Walks the capability list and returns the first virtio capability of each type
/// this driver uses (common, notify, device), in that order.
pub fn find_caps(cfg: &impl PciConfig) -> [Option<VirtioCap>; 3] {
    let mut found = [None; 3];
    // Status bit 4: capability list present.
    if cfg.read_u16(0x06) & 0x10 == 0 {
        return found;
    }
    let mut ptr = cfg.read_u8(0x34) & 0xfc;
    // A malformed list could loop; 48 entries is every possible dword slot above 0x40.
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        let p = u16::from(ptr);
        if cfg.read_u8(p) == CAP_ID_VENDOR {
            let cap = VirtioCap {
                cfg_type: cfg.read_u8(p + 3),
                bar: cfg.read_u8(p + 4),
                offset: cfg.read_u32(p + 8),
                length: cfg.read_u32(p + 12),
                notify_off_multiplier: if cfg.read_u8(p + 2) >= 20 {
                    cfg.read_u32(p + 16)
                } else {
                    0
                },
            };
            let slot = match cap.cfg_type {
                CFG_COMMON => Some(0),
                CFG_NOTIFY => Some(1),
                CFG_DEVICE => Some(2),
                _ => None,
            };
            if let Some(slot) = slot {
                // The spec lets devices offer alternatives; the first usable one wins.
                if found[slot].is_none() && cap.bar <= 5 {
                    found[slot] = Some(cap);
                }
            }
        }
        ptr = cfg.read_u8(p + 1) & 0xfc;
    }
    found
}

/// A modern virtio-pci device with its structures mapped.
#[derive(Debug)]
pub struct PciTransport {
    common: MmioRegion,
    notify: MmioRegion,
    notify_off_multiplier: u32,
    device: MmioRegion,
    notify_offsets: [Option<usize>; NOTIFY_QUEUES],
}

impl PciTransport {
    /// Maps the device's structures and enables memory decoding and bus mastering.
    pub fn new(cfg: &impl PciConfig, platform: &impl Platform) -> Result<Self, TransportError> {
        let id = cfg.read_u32(0);
        if !is_virtio_net(id as u16, (id >> 16) as u16) {
            return Err(TransportError::NotVirtioNet);
        }
        let [common, notify, device] = find_caps(cfg);
        let common = common.ok_or(TransportError::MissingCapability(CFG_COMMON))?;
        let notify = notify.ok_or(TransportError::MissingCapability(CFG_NOTIFY))?;
        let device = device.ok_or(TransportError::MissingCapability(CFG_DEVICE))?;
        if (common.length as usize) < COMMON_LEN {
            return Err(TransportError::MissingCapability(CFG_COMMON));
        }
        if notify.length < 2 {
            return Err(TransportError::MissingCapability(CFG_NOTIFY));
        }
        if device.length < 8 {
            return Err(TransportError::MissingCapability(CFG_DEVICE));
        }

        // Command register: memory space (bit 1) and bus master (bit 2). The upper half
        // of the dword is the status register, whose bits clear on a written 1: write 0s.
        let command = cfg.read_u16(0x04);
        cfg.write_u32(0x04, u32::from(command | 0x6));

        let map = |cap: &VirtioCap| -> Result<MmioRegion, TransportError> {
            let base = memory_bar_base(cfg, cap.bar).ok_or(TransportError::BarUnusable(cap.bar))?;
            platform
                .map_mmio(base + u64::from(cap.offset), cap.length as usize)
                .ok_or(TransportError::MapFailed)
        };
        Ok(Self {
            common: map(&common)?,
            notify: map(&notify)?,
            notify_off_multiplier: notify.notify_off_multiplier,
            device: map(&device)?,
            notify_offsets: [None; NOTIFY_QUEUES],
        })
    }
}

impl Transport for PciTransport {
    fn after_reset(&mut self) {
        self.notify_offsets = [None; NOTIFY_QUEUES];
    }

    fn status(&self) -> u8 {
        self.common.read_u8(DEVICE_STATUS)
    }

    fn set_status(&mut self, status: u8) {
        self.common.write_u8(DEVICE_STATUS, status);
    }

    fn device_features(&mut self) -> u64 {
        FeatureWindow::new(DEVICE_FEATURE_SELECT, DEVICE_FEATURE, false).read(&self.common)
    }

    fn set_driver_features(&mut self, features: u64) {
        FeatureWindow::new(DRIVER_FEATURE_SELECT, DRIVER_FEATURE, false)
            .write(&self.common, features);
        // We poll: no configuration-change interrupts.
        self.common.write_u16(MSIX_CONFIG, NO_VECTOR);
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.common.write_u16(QUEUE_SELECT, queue);
        self.common.read_u16(QUEUE_SIZE)
    }

    fn setup_queue(&mut self, setup: QueueSetup) -> Result<(), TransportError> {
        let QueueSetup { queue, size, addrs } = setup;
        self.common.write_u16(QUEUE_SELECT, queue);
        if self.common.read_u16(QUEUE_SIZE) == 0 {
            return Err(TransportError::QueueUnavailable(queue));
        }
        if self.common.read_u16(QUEUE_ENABLE) != 0 {
            return Err(TransportError::QueueAlreadyEnabled(queue));
        }
        self.common.write_u16(QUEUE_SIZE, size);
        self.common.write_u16(QUEUE_MSIX_VECTOR, NO_VECTOR);
        self.common.write_u64_split(QUEUE_DESC, addrs.desc);
        self.common.write_u64_split(QUEUE_DRIVER, addrs.avail);
        self.common.write_u64_split(QUEUE_DEVICE, addrs.used);
        let off = usize::from(self.common.read_u16(QUEUE_NOTIFY_OFF))
            * self.notify_off_multiplier as usize;
        if off + 2 > self.notify.len() {
            return Err(TransportError::MissingCapability(CFG_NOTIFY));
        }
        if let Some(slot) = self.notify_offsets.get_mut(usize::from(queue)) {
            *slot = Some(off);
        }
        self.common.write_u16(QUEUE_ENABLE, 1);
        Ok(())
    }

    fn notify(&self, queue: u16) {
        if let Some(Some(off)) = self.notify_offsets.get(usize::from(queue)) {
            self.notify.write_u16(*off, queue);
        }
    }

    fn config_generation(&self) -> u32 {
        u32::from(self.common.read_u8(CONFIG_GENERATION))
    }

    fn read_config_u8(&self, offset: usize) -> u8 {
        self.device.read_u8(offset)
    }

    fn read_config_u16(&self, offset: usize) -> u16 {
        self.device.read_u16(offset)
    }

    fn is_legacy(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configuration space laid out the way QEMU 7.2 lays out `-device virtio-net-pci`
    /// (capability order, BAR 4 for every structure), with BAR 4 placed above 4 GiB as
    /// OVMF does.
    struct Captured([u8; 256]);

    impl PciConfig for Captured {
        fn read_u32(&self, offset: u16) -> u32 {
            let o = usize::from(offset);
            u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
        }
        fn write_u32(&self, _: u16, _: u32) {}
    }

    fn put(c: &mut [u8; 256], off: usize, bytes: &[u8]) {
        c[off..off + bytes.len()].copy_from_slice(bytes)
    }

    fn vendor_cap(c: &mut [u8; 256], at: usize, next: u8, cfg_type: u8, offset: u32) {
        let len = if cfg_type == 2 { 0x14 } else { 0x10 };
        put(c, at, &[0x09, next, len, cfg_type, 4]);
        put(c, at + 8, &offset.to_le_bytes());
        put(c, at + 12, &0x1000u32.to_le_bytes());
        if cfg_type == 2 {
            put(c, at + 16, &4u32.to_le_bytes());
        }
    }

    fn qemu_q35() -> Captured {
        let mut c = [0u8; 256];
        put(&mut c, 0x00, &[0xf4, 0x1a, 0x00, 0x10]); // 1af4:1000
        put(&mut c, 0x06, &[0x10, 0x00]); // capability list
        put(&mut c, 0x10, &0x0000_c061u32.to_le_bytes()); // BAR0: I/O
        put(&mut c, 0x14, &0xfebd_1000u32.to_le_bytes()); // BAR1: MSI-X table
        put(&mut c, 0x20, &0xfe00_000cu32.to_le_bytes()); // BAR4: 64-bit prefetchable
        put(&mut c, 0x24, &0x0000_0001u32.to_le_bytes()); // ...above 4 GiB
        put(&mut c, 0x34, &[0x98]);
        put(&mut c, 0x98, &[0x11, 0x84]); // MSI-X
        put(&mut c, 0x84, &[0x09, 0x70, 0x14, 0x05, 0x00]); // PCI cfg access
        vendor_cap(&mut c, 0x70, 0x60, 2, 0x3000); // notify
        vendor_cap(&mut c, 0x60, 0x50, 4, 0x2000); // device
        vendor_cap(&mut c, 0x50, 0x40, 3, 0x1000); // ISR
        vendor_cap(&mut c, 0x40, 0x00, 1, 0x0000); // common
        Captured(c)
    }

    #[test]
    fn finds_the_three_structures_and_their_bar() {
        let cfg = qemu_q35();
        let [common, notify, device] = find_caps(&cfg);
        let common = common.unwrap();
        assert_eq!((common.bar, common.offset, common.length), (4, 0, 0x1000));
        let notify = notify.unwrap();
        assert_eq!((notify.bar, notify.offset), (4, 0x3000));
        assert_eq!(notify.notify_off_multiplier, 4);
        let device = device.unwrap();
        assert_eq!((device.bar, device.offset), (4, 0x2000));
        assert_eq!(memory_bar_base(&cfg, 4), Some(0x1_fe00_0000));
        assert_eq!(memory_bar_base(&cfg, 0), None, "I/O BAR");
        assert_eq!(memory_bar_base(&cfg, 1), Some(0xfebd_1000));
        assert_eq!(memory_bar_base(&cfg, 2), None, "unassigned");
        assert!(is_virtio_net(0x1af4, 0x1041));
        assert!(!is_virtio_net(0x8086, 0x100e));
    }

    #[test]
    fn a_looping_capability_list_terminates() {
        let mut c = qemu_q35();
        c.0[0x41] = 0x70; // common -> notify -> ... -> common again
        let [common, ..] = find_caps(&c);
        assert!(common.is_some());
    }
}
