//! The kernel side of the virtio-net driver's platform boundary.
//!
//! Implements [`netoops_driver_platform::Platform`] over the kernel's DMA allocator and MMIO
//! mapper, and [`netoops_driver_platform::PciConfig`] over an enumerated [`netoops_pci::PciDevice`].
//! Nothing else: device discovery and the data path live with their callers.

use netoops_driver_platform::{DmaRegion, MmioRegion, PciConfig, Platform};

/// The kernel's memory services, as the driver needs them.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelPlatform;

// SAFETY: `dma_alloc` returns fresh, never-freed heap memory (not zeroed: the trait does not
// ask for it, and the drivers initialize what they read) from the identity-mapped
// (write-back, DMA-coherent on x86) heap, at the physical address it reports; `map_mmio`
// maps the range uncached at an address that stays valid for the life of the kernel.
unsafe impl Platform for KernelPlatform {
    fn dma_alloc(&self, size: usize, align: usize) -> Option<DmaRegion> {
        let (ptr, phys) = crate::platform::memory::dma_alloc_uninit(size, align);
        // SAFETY: see the impl's safety note: `size` bytes, exclusively ours, forever.
        Some(unsafe { DmaRegion::new(ptr, phys, size) })
    }

    fn map_mmio(&self, phys: u64, len: usize) -> Option<MmioRegion> {
        let ptr = crate::platform::map_mmio(phys, len);
        // SAFETY: `map_mmio` mapped `len` bytes at `phys` uncached, permanently; the caller
        // (one driver per device) is the only user of those registers.
        Some(unsafe { MmioRegion::new(ptr, len) })
    }
}

/// Configuration-space access to one enumerated PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciFunction(pub netoops_pci::PciDevice);

impl PciConfig for PciFunction {
    fn read_u32(&self, offset: u16) -> u32 {
        self.0.config_read_u32(offset)
    }

    fn write_u32(&self, offset: u16, value: u32) {
        self.0.config_write_u32(offset, value)
    }

    fn read_u8(&self, offset: u16) -> u8 {
        self.0.config_read_u8(offset)
    }

    fn read_u16(&self, offset: u16) -> u16 {
        self.0.config_read_u16(offset)
    }
}
