//! Transports: how the driver reaches a virtio device's registers.
//!
//! [`Transport`] is the handful of operations device initialisation and the data path
//! need (virtio 1.2, sections 3.1 and 4). Two implementations exist:
//!
//! - [`pci::PciTransport`]: modern virtio-pci, found through the vendor capabilities in
//!   configuration space (q35, pc, and bare metal behind a VMM).
//! - [`mmio::MmioTransport`]: virtio-mmio version 2 (modern) and version 1 (legacy, which
//!   is what QEMU's microvm machine gives unless `virtio-mmio.force-legacy=false`).
//!
//! Legacy virtio-pci (I/O-port BAR 0) is not supported: QEMU's default transitional
//! devices also expose the modern interface, and bare-metal hosts we target are modern.

pub mod mmio;
pub mod pci;

use crate::queue::QueueSetup;
use netoops_driver_platform::MmioRegion;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Why a transport could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// Not a virtio device, or not a network device.
    NotVirtioNet,
    /// A virtio-mmio version this driver does not know.
    UnsupportedVersion(u32),
    /// A required modern virtio-pci capability is missing or too short (the `cfg_type`).
    MissingCapability(u8),
    /// A capability points at a BAR that is an I/O BAR or was never assigned an address.
    BarUnusable(u8),
    /// The platform could not map a register window.
    MapFailed,
    /// The queue does not exist on this device.
    QueueUnavailable(u16),
    /// The queue was already live when the driver tried to set it up.
    QueueAlreadyEnabled(u16),
    /// The queue memory cannot be expressed to this transport (legacy page frame limits).
    QueueAddressUnusable(u16),
}

/// A select/value register pair through which 64 feature bits are read or written 32 at a
/// time (virtio 1.2, 4.1.4.3 and 4.2.2); a legacy interface has only the low word.
pub(crate) struct FeatureWindow {
    select: usize,
    value: usize,
    /// 32-bit words behind the window: 1 on a legacy interface, else 2.
    words: u32,
}

impl FeatureWindow {
    pub(crate) fn new(select: usize, value: usize, legacy: bool) -> Self {
        let words = if legacy { 1 } else { 2 };
        FeatureWindow {
            select,
            value,
            words,
        }
    }

    /// The feature bits behind the window.
    pub(crate) fn read(&self, regs: &MmioRegion) -> u64 {
        (0..self.words).fold(0, |bits, word| {
            regs.write_u32(self.select, word);
            bits | u64::from(regs.read_u32(self.value)) << (32 * word)
        })
    }

    /// Writes `features` through the window.
    pub(crate) fn write(&self, regs: &MmioRegion, features: u64) {
        for word in 0..self.words {
            regs.write_u32(self.select, word);
            regs.write_u32(self.value, (features >> (32 * word)) as u32);
        }
    }
}

/// Register-level access to one virtio device. An owned handle (`'static`): the device's
/// tokens borrow it for as long as the driver lends them, with no further bound.
pub trait Transport: 'static {
    /// Resets the device: writes status 0 and waits until it reads back 0 (virtio 1.2,
    /// 4.1.4.3.2). QEMU resets synchronously; the wait is bounded so that a wedged device
    /// cannot hang boot. Then [`Transport::after_reset`].
    fn reset(&mut self) {
        self.set_status(0);
        for _ in 0..1_000_000 {
            if self.status() == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.after_reset();
    }
    /// Redoes what a reset undid of the transport's own state (none by default).
    fn after_reset(&mut self) {}
    /// Reads the device status byte.
    fn status(&self) -> u8;
    /// Writes the device status byte.
    fn set_status(&mut self, status: u8);
    /// All 64 feature bits the device offers (legacy transports offer only the low 32).
    fn device_features(&mut self) -> u64;
    /// Writes the features the driver accepts.
    fn set_driver_features(&mut self, features: u64);
    /// Largest size the device allows for `queue`, 0 when the queue does not exist.
    fn max_queue_size(&mut self, queue: u16) -> u16;
    /// Programs the queue `setup` names with its size and addresses, and enables it.
    fn setup_queue(&mut self, setup: QueueSetup) -> Result<(), TransportError>;
    /// Tells the device that `queue` has new available buffers.
    fn notify(&self, queue: u16);
    /// Changes whenever the device-specific configuration changes.
    fn config_generation(&self) -> u32;
    /// Reads a byte of the device-specific configuration.
    fn read_config_u8(&self, offset: usize) -> u8;
    /// Reads a little-endian 16-bit field of the device-specific configuration.
    fn read_config_u16(&self, offset: usize) -> u16;
    /// Whether this is a legacy (pre-1.0) interface: no `VERSION_1`, no `FEATURES_OK`.
    fn is_legacy(&self) -> bool;
}
