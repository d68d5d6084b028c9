//! Reading firmware-provided structures by physical address.
//!
//! Boot information and ACPI tables are parsed through [`PhysMemory`] rather than raw
//! pointers, so the parsers are ordinary safe code that runs under host unit tests against
//! byte images, and so a firmware pointer outside the identity map is a parse error instead
//! of a page fault.

/// Read access to physical memory.
pub trait PhysMemory {
    /// Copies `buf.len()` bytes at `phys` into `buf`; `false` if the range is not readable.
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool;
}

impl dyn PhysMemory + '_ {
    /// Reads `N` bytes at `phys`.
    pub fn read_array<const N: usize>(&self, phys: u64) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.read(phys, &mut b).then_some(b)
    }
    /// Reads a little-endian u16.
    pub fn read_u16(&self, phys: u64) -> Option<u16> {
        self.read_array(phys).map(u16::from_le_bytes)
    }
    /// Reads a little-endian u32.
    pub fn read_u32(&self, phys: u64) -> Option<u32> {
        self.read_array(phys).map(u32::from_le_bytes)
    }
    /// Reads a little-endian u64.
    pub fn read_u64(&self, phys: u64) -> Option<u64> {
        self.read_array(phys).map(u64::from_le_bytes)
    }
}

/// The kernel's view: the first 4 GiB are identity mapped (see `paging`), so a physical
/// address below 4 GiB is readable at the same virtual address. Address 0 is refused so a null
/// firmware pointer stays an error (the rest of page 0 is legal: QEMU's PVH option ROM
/// keeps its E820 table at 0x5a8).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMapped;

impl PhysMemory for IdentityMapped {
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        let Some(end) = phys.checked_add(buf.len() as u64) else {
            return false;
        };
        if phys == 0 || end > super::paging::IDENTITY_MAPPED_END {
            return false;
        }
        // SAFETY: the range is inside the identity map (checked above), which covers RAM
        // and firmware regions, and `buf` is ours; a byte copy assumes no alignment. One
        // bulk copy, not a volatile load per byte: the tables are plain memory nothing
        // writes while they are read, and under TCG the per-byte loop was most of the
        // ACPI phase of the boot.
        unsafe {
            core::ptr::copy_nonoverlapping(phys as *const u8, buf.as_mut_ptr(), buf.len());
        }
        true
    }
}

#[cfg(test)]
pub mod testing {
    //! A sparse physical memory for parser tests.
    use super::PhysMemory;
    use std::vec::Vec;

    #[derive(Default)]
    pub struct SparseMemory {
        pub chunks: Vec<(u64, Vec<u8>)>,
    }

    impl SparseMemory {
        pub fn put(&mut self, phys: u64, bytes: &[u8]) {
            self.chunks.push((phys, bytes.to_vec()));
        }
    }

    impl PhysMemory for SparseMemory {
        fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
            for (base, bytes) in &self.chunks {
                let end = base + bytes.len() as u64;
                if phys >= *base && phys + buf.len() as u64 <= end {
                    let off = (phys - base) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return true;
                }
            }
            false
        }
    }
}
