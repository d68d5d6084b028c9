//! Poll-mode driver for the Intel 82540EM (QEMU `-device e1000`) and 82574L (QEMU
//! `-device e1000e`) gigabit Ethernet controllers, for the netoops relay.
//!
//! Owns one controller: its register window, one receive and one transmit ring of legacy
//! descriptors, and their DMA buffers. It implements [`netoops_nic::Device`]: each received
//! frame is lent in place in its DMA buffer, replies are written straight into a transmit
//! buffer, and the tail registers move once per batch rather than once per frame. It never
//! enables an interrupt, never allocates after [`E1000::new`], never panics on device input
//! (bad descriptors are counted and recycled), and reaches the machine only through the
//! platform traits of `netoops-driver-platform` ([`netoops_driver_platform::Platform`],
//! [`netoops_driver_platform::PciConfig`]), so it does not depend on the kernel.
//!
//! Written from Intel's public documents only: the "PCI/PCI-X Family of Gigabit Ethernet
//! Controllers Software Developer's Manual" (8254x) and the "82574 GbE Controller Family
//! Datasheet". No other driver's source was used.
//!
//! Layers, bottom up:
//! - [`regs`]: the register map, descriptor layouts, and the [`Registers`] access trait.
//! - [`ring`]: receive and transmit descriptor bookkeeping (safe code over
//!   [`netoops_driver_platform::DmaRegion`]).
//! - [`device`]: reset and bring-up, MAC address, link state, counters and the tokens.
//!
//! On the data path the driver touches device registers only for the batched tail writes.
//! [`E1000::driver_stats`], [`E1000::link_status`] and [`E1000::ring_state`] read registers
//! (a few uncached reads each): call them once per report, not once per frame.
//! [`netoops_nic::Device::stats`] may be called every poll: with a clock it reads the
//! statistics registers at most every [`device::STATS_REFRESH_US`].
//!
//! Both parts are driven the same way. The differences that matter here: the EEPROM read
//! register's field positions, the 82574's bus-master quiesce before reset, its receive
//! filter control (cleared to keep legacy descriptors), and TIPG (programmed on the
//! 82540EM, left at the 82574's reset value).
#![no_std]

pub mod device;
pub mod regs;
pub mod ring;

#[cfg(any(test, feature = "model"))]
pub mod model;

pub use device::{
    Config, DeviceCounters, E1000RxToken, E1000Stats, E1000TxToken, Error, LinkStatus, MacSource,
    RingState, E1000,
};
pub use regs::Registers;
pub use ring::{RxCounters, TxCounters, BUFFER_LEN};

/// Intel's PCI vendor id.
pub const INTEL_VENDOR: u16 = 0x8086;
/// 82540EM desktop adapter (QEMU `e1000`).
pub const DEVICE_82540EM: u16 = 0x100e;
/// 82574L (QEMU `e1000e`).
pub const DEVICE_82574L: u16 = 0x10d3;

/// The controllers this driver handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// 82540EM, PCI, 8254x register set.
    I82540Em,
    /// 82574L, PCIe; driven with legacy descriptors like the 82540EM.
    I82574L,
}

impl Model {
    /// Short name for console lines.
    pub fn name(self) -> &'static str {
        match self {
            Model::I82540Em => "82540em",
            Model::I82574L => "82574l",
        }
    }
}

/// Which [`Model`] a PCI function with these ids is, if the driver handles it.
pub fn is_supported(vendor: u16, device: u16) -> Option<Model> {
    match (vendor, device) {
        (INTEL_VENDOR, DEVICE_82540EM) => Some(Model::I82540Em),
        (INTEL_VENDOR, DEVICE_82574L) => Some(Model::I82574L),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ids_map_to_models() {
        assert_eq!(is_supported(0x8086, 0x100e), Some(Model::I82540Em));
        assert_eq!(is_supported(0x8086, 0x10d3), Some(Model::I82574L));
        assert_eq!(is_supported(0x8086, 0x100f), None, "82545EM: not validated");
        assert_eq!(is_supported(0x1af4, 0x100e), None);
        assert_eq!(Model::I82574L.name(), "82574l");
    }
}
