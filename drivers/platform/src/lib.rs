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

/// A little-endian word that the regions read and write with one volatile access.
pub trait Word: Copy + sealed::Sealed {
    /// All bits clear: what a DMA read outside the region gives.
    const ZERO: Self;
    /// All bits set: what an MMIO read outside the window gives.
    const ONES: Self;
    /// From little-endian to native order.
    fn from_le(v: Self) -> Self;
    /// From native to little-endian order.
    fn to_le(self) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! words {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Word for $t {
            const ZERO: Self = 0;
            const ONES: Self = <$t>::MAX;
            fn from_le(v: Self) -> Self {
                <$t>::from_le(v)
            }
            fn to_le(self) -> Self {
                <$t>::to_le(self)
            }
        }
    )*};
}
words!(u8, u16, u32, u64);

/// The named accessors (`read_u32`, `write_u32`, ...) over a region's generic `read` and
/// `write`; `mut` where writes take `&mut self`.
macro_rules! accessors {
    ($($read:ident $write:ident $t:ty),*; mut) => {$(
        #[doc = concat!("Volatile read of a little-endian `", stringify!($t), "`.")]
        pub fn $read(&self, offset: usize) -> $t {
            self.read(offset)
        }
        #[doc = concat!("Volatile write of a little-endian `", stringify!($t), "`.")]
        pub fn $write(&mut self, offset: usize, value: $t) {
            self.write(offset, value)
        }
    )*};
    ($($read:ident $write:ident $t:ty),*) => {$(
        #[doc = concat!("Volatile read of a little-endian `", stringify!($t), "` register.")]
        pub fn $read(&self, offset: usize) -> $t {
            self.read(offset)
        }
        #[doc = concat!("Volatile write of a little-endian `", stringify!($t), "` register.")]
        pub fn $write(&self, offset: usize, value: $t) {
            self.write(offset, value)
        }
    )*};
}

/// `len` bytes at `ptr` with bounds- and alignment-checked volatile access: the part both
/// region kinds share. Whoever makes one vouches for the memory (see the regions' `new`).
#[derive(Debug, Clone, Copy)]
struct Window {
    ptr: NonNull<u8>,
    len: usize,
}

impl Window {
    /// Whether a `size`-byte access at `offset` lies inside with natural alignment.
    fn fits(&self, offset: usize, size: usize) -> bool {
        let ok = offset.checked_add(size).is_some_and(|end| end <= self.len)
            && (self.ptr.as_ptr() as usize + offset) % size.clamp(1, 8) == 0;
        debug_assert!(ok, "access {offset}+{size} outside {} bytes", self.len);
        ok
    }

    /// The word at `offset`, or `None` outside the window.
    fn read<T: Word>(&self, offset: usize) -> Option<T> {
        if !self.fits(offset, core::mem::size_of::<T>()) {
            return None;
        }
        let at = self.ptr.as_ptr().wrapping_add(offset).cast::<T>();
        // SAFETY: in bounds and aligned (`fits`); the memory is valid (the region's `new`).
        Some(T::from_le(unsafe { at.read_volatile() }))
    }

    /// Writes the word at `offset`; ignored outside the window.
    fn write<T: Word>(&self, offset: usize, value: T) {
        if self.fits(offset, core::mem::size_of::<T>()) {
            let at = self.ptr.as_ptr().wrapping_add(offset).cast::<T>();
            // SAFETY: in bounds and aligned (`fits`); the memory is valid (the region's `new`).
            unsafe { at.write_volatile(value.to_le()) }
        }
    }

    /// `len` bytes at `offset`, both clamped to the window.
    fn clamp(&self, offset: usize, len: usize) -> (*mut u8, usize) {
        let offset = offset.min(self.len);
        (
            self.ptr.as_ptr().wrapping_add(offset),
            len.min(self.len - offset),
        )
    }
}

/// A physically contiguous memory block shared with the device.
///
/// The block stays valid and exclusively owned by the driver (and the device it is handed
/// to) for the rest of the program: the driver never frees DMA memory.
#[derive(Debug)]
pub struct DmaRegion {
    window: Window,
    phys: u64,
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
        Self {
            window: Window { ptr: virt, len },
            phys,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.window.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.window.len == 0
    }

    /// Bus address of byte `offset`.
    pub fn phys(&self, offset: usize) -> u64 {
        self.phys + offset as u64
    }

    /// Volatile read of a little-endian word; 0 outside the region.
    pub fn read<T: Word>(&self, offset: usize) -> T {
        self.window.read(offset).unwrap_or(T::ZERO)
    }

    /// Volatile write of a little-endian word; ignored outside the region.
    pub fn write<T: Word>(&mut self, offset: usize, value: T) {
        self.window.write(offset, value)
    }

    accessors!(read_u16 write_u16 u16, read_u32 write_u32 u32, read_u64 write_u64 u64; mut);

    /// Asks the CPU to bring `len` bytes at `offset` (clamped to the region) into its caches:
    /// receive loops call it for the next filled buffer while the current one is handled,
    /// so the reassembler's first read of a frame the device wrote does not stall on memory.
    /// A hint only; nothing is read or written.
    pub fn prefetch(&self, offset: usize, len: usize) {
        let (start, len) = self.window.clamp(offset, len);
        for at in (0..len).step_by(64) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 neither faults nor changes memory or flags; the address is
            // inside the region (clamped).
            unsafe {
                core::arch::asm!(
                    "prefetcht0 [{0}]",
                    in(reg) start.wrapping_add(at),
                    options(nostack, readonly, preserves_flags)
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (start, at);
        }
    }

    /// Zeroes the whole region.
    pub fn zero(&mut self) {
        self.zero_range(0, self.window.len);
    }

    /// Zeroes `len` bytes at `offset`, clamped to the region.
    pub fn zero_range(&mut self, offset: usize, len: usize) {
        let (at, len) = self.window.clamp(offset, len);
        // SAFETY: the range is inside the region (clamped), which is `len` writable bytes
        // (`new`).
        unsafe { core::ptr::write_bytes(at, 0, len) }
    }

    /// Borrows `len` bytes at `offset`, clamped to the region.
    ///
    /// # Safety
    /// The device must not write the range while the borrow lives (the buffer is not
    /// posted to it).
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let (at, len) = self.window.clamp(offset, len);
        // SAFETY: the range is inside the region (clamped); the caller guarantees the
        // device does not write it meanwhile, and `&self` excludes driver writes.
        unsafe { core::slice::from_raw_parts(at, len) }
    }

    /// Borrows `len` bytes at `offset` mutably, clamped to the region.
    ///
    /// # Safety
    /// The device must not access the range while the borrow lives (the buffer is not
    /// posted to it).
    pub unsafe fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let (at, len) = self.window.clamp(offset, len);
        // SAFETY: the range is inside the region (clamped); the caller guarantees the
        // device does not access it meanwhile, and `&mut self` excludes other borrows.
        unsafe { core::slice::from_raw_parts_mut(at, len) }
    }
}

/// A mapped window of device registers (uncached).
#[derive(Debug, Clone, Copy)]
pub struct MmioRegion {
    window: Window,
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
        Self {
            window: Window { ptr: base, len },
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.window.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.window.len == 0
    }

    /// A sub-window, or `None` if it does not fit.
    pub fn subregion(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.window.len {
            return None;
        }
        // SAFETY: `offset <= len` (checked above), so the pointer stays inside the mapping
        // (or one past it, for an empty sub-window).
        let ptr = unsafe { self.window.ptr.add(offset) };
        Some(Self {
            window: Window { ptr, len },
        })
    }

    /// Volatile read of a little-endian register; all ones (an absent bus device) outside
    /// the window.
    pub fn read<T: Word>(&self, offset: usize) -> T {
        self.window.read(offset).unwrap_or(T::ONES)
    }

    /// Volatile write of a little-endian register; ignored outside the window.
    pub fn write<T: Word>(&self, offset: usize, value: T) {
        self.window.write(offset, value)
    }

    accessors!(read_u8 write_u8 u8, read_u16 write_u16 u16, read_u32 write_u32 u32);

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
