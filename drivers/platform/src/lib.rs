//! The platform boundary of the poll-mode drivers (virtio-net, e1000): DMA memory, MMIO
//! mappings and PCI configuration access.
//!
//! Drivers never call into the kernel. The kernel (or a host test) implements [`Platform`]
//! and, for PCI devices, [`PciConfig`]; drivers only see the two memory types defined here.
//! All raw-pointer access of the drivers lives in this crate: [`DmaRegion`] and
//! [`MmioRegion`] check every offset against the length they were created with, so the ring
//! and transport code above them is safe code.
//!
//! Out-of-range accesses are driver bugs, not device input: they read as zero (DMA) or
//! all-ones (MMIO, like an absent bus device), writes are ignored, and debug builds assert.

#![no_std]

use core::ptr::NonNull;

/// A physically contiguous memory block shared with the device.
///
/// The block stays valid and exclusively owned by the driver (and the device it is handed
/// to) for the rest of the program: the driver never frees DMA memory.
#[derive(Debug)]
pub struct DmaRegion {
    virt: NonNull<u8>,
    phys: u64,
    len: usize,
}

// SAFETY: the region is plain memory owned by one driver instance; moving that owner to
// another thread moves the only handle to it.
unsafe impl Send for DmaRegion {}

impl DmaRegion {
    /// Wraps memory the platform handed out.
    ///
    /// # Safety
    /// `virt` must point to `len` bytes of readable and writable memory that is
    /// cache-coherent with device DMA, that the device reaches at bus address `phys`, that
    /// nothing else uses, and that stays valid for the rest of the program.
    pub unsafe fn new(virt: NonNull<u8>, phys: u64, len: usize) -> Self {
        Self { virt, phys, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bus address of byte `offset`.
    pub fn phys(&self, offset: usize) -> u64 {
        self.phys + offset as u64
    }

    /// Whether `size` bytes at `offset` lie inside the region with natural alignment.
    fn fits(&self, offset: usize, size: usize) -> bool {
        let ok = offset.checked_add(size).is_some_and(|end| end <= self.len)
            && (self.virt.as_ptr() as usize + offset) % size.clamp(1, 8) == 0;
        debug_assert!(ok, "DMA access {offset}+{size} outside {}", self.len);
        ok
    }

    /// Volatile read of a little-endian `u16`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        if !self.fits(offset, 2) {
            return 0;
        }
        // SAFETY: `fits` checked bounds and alignment; the region is valid memory (`new`).
        u16::from_le(unsafe { self.virt.as_ptr().add(offset).cast::<u16>().read_volatile() })
    }

    /// Volatile read of a little-endian `u32`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        if !self.fits(offset, 4) {
            return 0;
        }
        // SAFETY: `fits` checked bounds and alignment; the region is valid memory (`new`).
        u32::from_le(unsafe { self.virt.as_ptr().add(offset).cast::<u32>().read_volatile() })
    }

    /// Volatile read of a little-endian `u64`.
    pub fn read_u64(&self, offset: usize) -> u64 {
        if !self.fits(offset, 8) {
            return 0;
        }
        // SAFETY: `fits` checked bounds and alignment; the region is valid memory (`new`).
        u64::from_le(unsafe { self.virt.as_ptr().add(offset).cast::<u64>().read_volatile() })
    }

    /// Volatile write of a little-endian `u16`.
    pub fn write_u16(&mut self, offset: usize, value: u16) {
        if self.fits(offset, 2) {
            // SAFETY: `fits` checked bounds and alignment; the region is valid memory.
            unsafe {
                self.virt
                    .as_ptr()
                    .add(offset)
                    .cast::<u16>()
                    .write_volatile(value.to_le())
            }
        }
    }

    /// Volatile write of a little-endian `u32`.
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        if self.fits(offset, 4) {
            // SAFETY: `fits` checked bounds and alignment; the region is valid memory.
            unsafe {
                self.virt
                    .as_ptr()
                    .add(offset)
                    .cast::<u32>()
                    .write_volatile(value.to_le())
            }
        }
    }

    /// Volatile write of a little-endian `u64`.
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        if self.fits(offset, 8) {
            // SAFETY: `fits` checked bounds and alignment; the region is valid memory.
            unsafe {
                self.virt
                    .as_ptr()
                    .add(offset)
                    .cast::<u64>()
                    .write_volatile(value.to_le())
            }
        }
    }

    /// Asks the CPU to bring `len` bytes at `offset` (clamped to the region) into its caches:
    /// receive loops call it for the next filled buffer while the current one is handled,
    /// so the reassembler's first read of a frame the device wrote does not stall on memory.
    /// A hint only; nothing is read or written.
    pub fn prefetch(&self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.len);
        for at in (offset..end).step_by(64) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 neither faults nor changes memory or flags; the address is
            // inside the region (`at < end <= len`).
            unsafe {
                core::arch::asm!(
                    "prefetcht0 [{0}]",
                    in(reg) self.virt.as_ptr().add(at),
                    options(nostack, readonly, preserves_flags)
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = at;
        }
    }

    /// Zeroes the whole region.
    pub fn zero(&mut self) {
        // SAFETY: the region is `len` writable bytes (`new`).
        unsafe { core::ptr::write_bytes(self.virt.as_ptr(), 0, self.len) }
    }

    /// Borrows `len` bytes at `offset`, clamped to the region.
    ///
    /// # Safety
    /// The device must not write the range while the borrow lives (the buffer is not
    /// posted to it).
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let (offset, len) = self.clamp(offset, len);
        // SAFETY: the range is inside the region (clamped); the caller guarantees the
        // device does not write it meanwhile, and `&self` excludes driver writes.
        unsafe { core::slice::from_raw_parts(self.virt.as_ptr().add(offset), len) }
    }

    /// Borrows `len` bytes at `offset` mutably, clamped to the region.
    ///
    /// # Safety
    /// The device must not access the range while the borrow lives (the buffer is not
    /// posted to it).
    pub unsafe fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let (offset, len) = self.clamp(offset, len);
        // SAFETY: the range is inside the region (clamped); the caller guarantees the
        // device does not access it meanwhile, and `&mut self` excludes other borrows.
        unsafe { core::slice::from_raw_parts_mut(self.virt.as_ptr().add(offset), len) }
    }

    fn clamp(&self, offset: usize, len: usize) -> (usize, usize) {
        let offset = offset.min(self.len);
        (offset, len.min(self.len - offset))
    }
}

/// A mapped window of device registers (uncached).
#[derive(Debug, Clone, Copy)]
pub struct MmioRegion {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the window is device registers; accesses are single volatile loads and stores
// and the driver that owns it serialises them.
unsafe impl Send for MmioRegion {}

impl MmioRegion {
    /// Wraps a mapping the platform made.
    ///
    /// # Safety
    /// `base` must map `len` bytes of device registers uncached, valid for the rest of the
    /// program, and no other driver may program the same device.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-window, or `None` if it does not fit.
    pub fn subregion(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset < len` (checked above), so the pointer stays inside the mapping.
        let base = unsafe { self.base.add(offset) };
        Some(Self { base, len })
    }

    fn fits(&self, offset: usize, size: usize) -> bool {
        let ok = offset.checked_add(size).is_some_and(|end| end <= self.len)
            && (self.base.as_ptr() as usize + offset) % size == 0;
        debug_assert!(ok, "MMIO access {offset}+{size} outside {}", self.len);
        ok
    }

    /// Reads a register byte.
    pub fn read_u8(&self, offset: usize) -> u8 {
        if !self.fits(offset, 1) {
            return 0xff;
        }
        // SAFETY: in bounds (`fits`); the mapping is valid device memory (`new`).
        unsafe { self.base.as_ptr().add(offset).read_volatile() }
    }

    /// Reads a little-endian 16-bit register.
    pub fn read_u16(&self, offset: usize) -> u16 {
        if !self.fits(offset, 2) {
            return 0xffff;
        }
        // SAFETY: in bounds and aligned (`fits`); the mapping is valid device memory.
        u16::from_le(unsafe { self.base.as_ptr().add(offset).cast::<u16>().read_volatile() })
    }

    /// Reads a little-endian 32-bit register.
    pub fn read_u32(&self, offset: usize) -> u32 {
        if !self.fits(offset, 4) {
            return 0xffff_ffff;
        }
        // SAFETY: in bounds and aligned (`fits`); the mapping is valid device memory.
        u32::from_le(unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_volatile() })
    }

    /// Writes a register byte.
    pub fn write_u8(&self, offset: usize, value: u8) {
        if self.fits(offset, 1) {
            // SAFETY: in bounds (`fits`); the mapping is valid device memory.
            unsafe { self.base.as_ptr().add(offset).write_volatile(value) }
        }
    }

    /// Writes a little-endian 16-bit register.
    pub fn write_u16(&self, offset: usize, value: u16) {
        if self.fits(offset, 2) {
            // SAFETY: in bounds and aligned (`fits`); the mapping is valid device memory.
            unsafe {
                self.base
                    .as_ptr()
                    .add(offset)
                    .cast::<u16>()
                    .write_volatile(value.to_le())
            }
        }
    }

    /// Writes a little-endian 32-bit register.
    pub fn write_u32(&self, offset: usize, value: u32) {
        if self.fits(offset, 4) {
            // SAFETY: in bounds and aligned (`fits`); the mapping is valid device memory.
            unsafe {
                self.base
                    .as_ptr()
                    .add(offset)
                    .cast::<u32>()
                    .write_volatile(value.to_le())
            }
        }
    }

    /// Writes a 64-bit register as two 32-bit halves, low first (virtio allows this for
    /// every 64-bit field).
    pub fn write_u64_split(&self, offset: usize, value: u64) {
        self.write_u32(offset, value as u32);
        self.write_u32(offset + 4, (value >> 32) as u32);
    }
}

/// What the driver needs from the platform.
///
/// # Safety
/// Implementors promise what [`DmaRegion::new`] and [`MmioRegion::new`] require of the
/// regions they return: DMA memory is coherent, exclusively owned, valid forever and
/// reachable by the device at the reported bus address; MMIO mappings are uncached and
/// valid forever.
pub unsafe trait Platform {
    /// Allocates `size` bytes aligned to `align` (a power of two, at most 4096) for device
    /// DMA. The contents need not be zeroed.
    fn dma_alloc(&self, size: usize, align: usize) -> Option<DmaRegion>;

    /// Maps `len` bytes of device registers at physical address `phys` (possibly above
    /// 4 GiB) uncached.
    fn map_mmio(&self, phys: u64, len: usize) -> Option<MmioRegion>;
}

/// Access to one PCI function's configuration space.
///
/// The kernel implements this over its PCI enumerator (legacy ports or ECAM); the driver
/// decodes capabilities and BARs itself, so this is all it needs. Offsets are
/// dword-aligned byte offsets below 256.
pub trait PciConfig {
    /// Reads the dword at `offset`.
    fn read_u32(&self, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write_u32(&self, offset: u16, value: u32);

    /// Reads the byte at `offset` (any alignment).
    fn read_u8(&self, offset: u16) -> u8 {
        (self.read_u32(offset & !3) >> ((offset & 3) * 8)) as u8
    }

    /// Reads the 16-bit word at `offset` (even).
    fn read_u16(&self, offset: u16) -> u16 {
        (self.read_u32(offset & !3) >> ((offset & 2) * 8)) as u16
    }
}

/// Physical base address of memory BAR `index`, or `None` for I/O, unassigned or invalid
/// BARs. Reads only: sizing is the enumerator's job.
pub fn memory_bar_base(cfg: &impl PciConfig, index: u8) -> Option<u64> {
    if index > 5 {
        return None;
    }
    let off = 0x10 + 4 * u16::from(index);
    let low = cfg.read_u32(off);
    if low & 1 != 0 {
        return None;
    }
    let base = match (low >> 1) & 3 {
        0 => u64::from(low & !0xf),
        2 if index < 5 => u64::from(low & !0xf) | (u64::from(cfg.read_u32(off + 4)) << 32),
        _ => return None,
    };
    (base != 0).then_some(base)
}

#[cfg(any(test, feature = "host"))]
pub mod host {
    //! Host memory standing in for identity-mapped DMA memory in unit tests.
    extern crate std;

    use super::*;
    use std::alloc::{alloc_zeroed, Layout};

    /// Leaks zeroed host memory and reports its address as the bus address, the way the
    /// kernel's identity map does.
    pub struct HostPlatform;

    // SAFETY: the memory is fresh, leaked (valid forever), exclusively handed out, and
    // coherent because the "device" is test code on the same CPU.
    unsafe impl Platform for HostPlatform {
        fn dma_alloc(&self, size: usize, align: usize) -> Option<DmaRegion> {
            let layout = Layout::from_size_align(size.max(1), align).ok()?;
            // SAFETY: the layout has non-zero size.
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
            // SAFETY: fresh allocation of `size` bytes, never freed.
            Some(unsafe { DmaRegion::new(ptr, ptr.as_ptr() as u64, size) })
        }

        fn map_mmio(&self, _phys: u64, _len: usize) -> Option<MmioRegion> {
            None
        }
    }

    #[test]
    fn dma_region_reads_back_and_clamps() {
        let mut r = HostPlatform.dma_alloc(64, 8).unwrap();
        r.write_u16(2, 0xbeef);
        r.write_u32(4, 0xdead_beef);
        r.write_u64(8, 0x0123_4567_89ab_cdef);
        assert_eq!(r.read_u16(2), 0xbeef);
        assert_eq!(r.read_u32(4), 0xdead_beef);
        assert_eq!(r.read_u64(8), 0x0123_4567_89ab_cdef);
        // SAFETY: no device in this test.
        let b = unsafe { r.bytes(60, 100) };
        assert_eq!(b.len(), 4);
        assert_eq!(r.phys(8), r.phys(0) + 8);
    }

    #[test]
    fn pci_config_narrow_reads_pick_the_right_lanes() {
        struct Fixed;
        impl PciConfig for Fixed {
            fn read_u32(&self, offset: u16) -> u32 {
                assert_eq!(offset % 4, 0);
                0x1234_5678 + u32::from(offset)
            }
            fn write_u32(&self, _: u16, _: u32) {}
        }
        assert_eq!(Fixed.read_u8(0), 0x78);
        assert_eq!(Fixed.read_u8(3), 0x12);
        assert_eq!(Fixed.read_u16(2), 0x1234);
        assert_eq!(Fixed.read_u16(4), 0x567c);
    }
}
