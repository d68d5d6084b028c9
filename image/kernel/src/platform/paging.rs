//! Page tables: the boot identity map and uncached MMIO mappings.
//!
//! The boot trampoline ([`super::boot`]) identity-maps the first 4 GiB with 2 MiB pages,
//! write-back. Everything stays identity mapped (virtual == physical), so DMA addresses are
//! pointer values. [`map_mmio`] marks the 2 MiB pages covering a device range cache-disabled
//! and write-through (PCD|PWT: UC with the power-on PAT) and creates the directory levels for
//! ranges above 4 GiB (OVMF places 64-bit BARs there), up to the 47-bit canonical limit.
//! Table pages for new levels come from the heap, which is itself identity mapped.

/// End of the boot identity map.
pub const IDENTITY_MAPPED_END: u64 = 4 << 30;
/// Highest mappable physical address + 1 (lower half of the 48-bit virtual space).
pub const MAPPABLE_END: u64 = 1 << 47;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 << 20;

/// Why a range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range is empty, wraps or reaches past [`MAPPABLE_END`].
    OutOfRange,
    /// No memory for a page-table page.
    NoMemory,
}

/// Maps `[phys, phys + len)` uncached with 2 MiB pages into the tables rooted at `pml4`,
/// allocating missing levels with `alloc_table` (which returns a zeroed, 4 KiB-aligned,
/// identity-mapped page). Returns the number of 2 MiB pages written.
///
/// # Safety
/// `pml4` must point to a valid, identity-mapped PML4 whose present entries point to valid
/// identity-mapped tables, and nothing else may access the tables concurrently. The caller
/// must flush the TLB afterwards.
pub unsafe fn map_uncached(
    pml4: *mut u64,
    phys: u64,
    len: u64,
    mut alloc_table: impl FnMut() -> Option<*mut u64>,
) -> Result<usize, MapError> {
    let end = phys.checked_add(len).ok_or(MapError::OutOfRange)?;
    if len == 0 || end > MAPPABLE_END {
        return Err(MapError::OutOfRange);
    }
    let mut page = phys & !(PAGE_2M - 1);
    let mut written = 0;
    while page < end {
        let indices = [(page >> 39) & 511, (page >> 30) & 511];
        let mut table = pml4;
        for index in indices {
            // SAFETY: `table` is a valid table page (the root from the caller, or a page
            // that a present entry points to), and `index` < 512.
            let entry = unsafe { &mut *table.add(index as usize) };
            if *entry & PRESENT == 0 {
                let new = alloc_table().ok_or(MapError::NoMemory)?;
                *entry = new as u64 | PRESENT | WRITABLE;
            } else if *entry & HUGE != 0 {
                // A 1 GiB page: never created by this kernel; refuse rather than split.
                return Err(MapError::OutOfRange);
            }
            table = (*entry & ADDRESS_MASK) as *mut u64;
        }
        let index = (page >> 21) & 511;
        // SAFETY: `table` is the page directory reached above; `index` < 512.
        unsafe {
            *table.add(index as usize) =
                page | PRESENT | WRITABLE | HUGE | WRITE_THROUGH | CACHE_DISABLE;
        }
        written += 1;
        page += PAGE_2M;
    }
    Ok(written)
}

#[cfg(all(target_os = "none", not(test)))]
unsafe extern "C" {
    /// The boot trampoline's PML4.
    static mut boot_pml4: [u64; 512];
}

#[cfg(all(target_os = "none", not(test)))]
static TABLES: spin::Mutex<()> = spin::Mutex::new(());

#[cfg(all(target_os = "none", not(test)))]
unsafe extern "C" {
    /// The boot trampoline's four page directories (first 4 GiB).
    static mut boot_pd: [u64; 2048];
    /// The page below the boot stack.
    static boot_stack_guard: u8;
}

/// A 4 KiB-aligned page table.
#[repr(C, align(4096))]
pub struct PageTable(pub [u64; 512]);

/// The page table that replaces the first 2 MiB page when guards are installed.
#[cfg(all(target_os = "none", not(test)))]
static mut FIRST_2M: PageTable = PageTable([0; 512]);

/// The 4 KiB entries for the first 2 MiB: identity mapped, write-back, except the pages in
/// `holes` (page 0 so null pointers fault; the stack guard so an overflow faults).
pub fn split_first_2m(table: &mut PageTable, holes: &[u64]) {
    for (i, entry) in table.0.iter_mut().enumerate() {
        let address = (i as u64) << 12;
        *entry = if holes.contains(&address) {
            0
        } else {
            address | PRESENT | WRITABLE
        };
    }
}

/// Unmaps page 0 and the page below the boot stack by splitting the first 2 MiB (which holds
/// the kernel image) into 4 KiB pages. Call at the end of platform bring-up: the boot
/// information and BIOS-area reads that need page 0 are done by then. A stack overflow then
/// page-faults, which escalates to a double fault reported on the IST stack.
#[cfg(all(target_os = "none", not(test)))]
pub fn install_guards() -> bool {
    let _guard = TABLES.lock();
    let stack_guard = &raw const boot_stack_guard as u64;
    if stack_guard >= PAGE_2M || stack_guard % 4096 != 0 {
        return false;
    }
    // SAFETY: FIRST_2M is only touched here, under the table lock; the directory entry
    // switch keeps every other page of the first 2 MiB mapped identically, and CR3 is
    // reloaded to flush the old 2 MiB translation.
    unsafe {
        let table = &raw mut FIRST_2M;
        split_first_2m(&mut *table, &[0, stack_guard]);
        let pd = &raw mut boot_pd;
        (*pd)[0] = table as u64 | PRESENT | WRITABLE;
        core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags));
    }
    true
}

/// Maps `[phys, phys + len)` uncached (identity) and returns its virtual address (== `phys`).
///
/// Call after the heap is up (new directory levels come from it). Panics when the range
/// cannot be mapped: a BAR outside the 47-bit space or an exhausted heap at device bring-up
/// is a machine the appliance cannot run on, not an input to tolerate.
#[cfg(all(target_os = "none", not(test)))]
pub fn map_mmio(phys: u64, len: usize) -> core::ptr::NonNull<u8> {
    let _guard = TABLES.lock();
    let alloc_table = || {
        let layout = core::alloc::Layout::from_size_align(4096, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let page = unsafe { alloc::alloc::alloc_zeroed(layout) };
        (!page.is_null()).then_some(page.cast::<u64>())
    };
    // SAFETY: boot_pml4 is the active root, identity mapped in .bss; the lock serializes
    // table edits; CR3 is reloaded below to flush stale translations.
    let result =
        unsafe { map_uncached((&raw mut boot_pml4).cast(), phys, len as u64, alloc_table) };
    if let Err(e) = result {
        panic!("map_mmio({phys:#x}, {len:#x}): {e:?}");
    }
    // SAFETY: rewriting CR3 with its own value flushes non-global TLB entries only.
    unsafe {
        core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags));
    }
    core::ptr::NonNull::new(phys as *mut u8)
        .unwrap_or_else(|| panic!("map_mmio: physical address 0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    #[repr(align(4096))]
    struct Table([u64; 512]);

    struct Tables {
        pages: Vec<Box<Table>>,
    }

    impl Tables {
        fn alloc(&mut self) -> Option<*mut u64> {
            let mut t = Box::new(Table([0; 512]));
            let p = t.0.as_mut_ptr();
            self.pages.push(t);
            Some(p)
        }
    }

    #[test]
    fn maps_above_4g_creating_levels_once() {
        let mut tables = Tables { pages: Vec::new() };
        let root = tables.alloc().unwrap();
        // A 16 KiB BAR at 0x8_0000_1000 and a 4 MiB one right after: same directory.
        // SAFETY: `root` and every allocated level are live host allocations.
        let n = unsafe { map_uncached(root, 0x8_0000_1000, 0x4000, || tables.alloc()) }.unwrap();
        assert_eq!(n, 1);
        // SAFETY: as above.
        let n = unsafe { map_uncached(root, 0x8_0020_0000, 4 << 20, || tables.alloc()) }.unwrap();
        assert_eq!(n, 2);
        assert_eq!(tables.pages.len(), 3, "root + PDPT + one directory");
        // SAFETY: walking the tables just built.
        unsafe {
            let pdpt = (*root & ADDRESS_MASK) as *const u64;
            let pd = (*pdpt.add(32) & ADDRESS_MASK) as *const u64;
            for i in 0..3 {
                let e = *pd.add(i);
                assert_eq!(e & ADDRESS_MASK, 0x8_0000_0000 + (i as u64) * PAGE_2M);
                assert_eq!(
                    e & 0xff,
                    PRESENT | WRITABLE | HUGE | WRITE_THROUGH | CACHE_DISABLE
                );
            }
            assert_eq!(*pd.add(3), 0);
        }
    }

    #[test]
    fn remaps_existing_pages_uncached_without_new_tables() {
        let mut tables = Tables { pages: Vec::new() };
        let root = tables.alloc().unwrap();
        let pdpt = tables.alloc().unwrap();
        let pd = tables.alloc().unwrap();
        // SAFETY: freshly allocated tables; build a write-back map of 0xc000_0000.
        unsafe {
            *root = pdpt as u64 | PRESENT | WRITABLE;
            *pdpt.add(3) = pd as u64 | PRESENT | WRITABLE;
            *pd.add(0x1f7) = 0xfee0_0000 | PRESENT | WRITABLE | HUGE;
        }
        // SAFETY: valid tables as built above.
        let n = unsafe { map_uncached(root, 0xfebf_0000, 0x1000, || None) }.unwrap();
        assert_eq!(n, 1);
        // SAFETY: reading the table we own.
        let e = unsafe { *pd.add(0x1f5) };
        assert_eq!(
            e,
            0xfea0_0000 | PRESENT | WRITABLE | HUGE | WRITE_THROUGH | CACHE_DISABLE
        );
    }

    #[test]
    fn splitting_the_first_2m_leaves_exactly_the_holes_unmapped() {
        let mut t = Box::new(PageTable([0xdead; 512]));
        split_first_2m(&mut t, &[0, 0x14_9000]);
        assert_eq!(t.0[0], 0);
        assert_eq!(t.0[0x149], 0);
        assert_eq!(t.0[1], 0x1000 | PRESENT | WRITABLE);
        assert_eq!(t.0[0x100], 0x10_0000 | PRESENT | WRITABLE);
        assert_eq!(t.0[511], 0x1f_f000 | PRESENT | WRITABLE);
        assert_eq!(t.0.iter().filter(|&&e| e == 0).count(), 2);
    }

    #[test]
    fn rejects_bad_ranges_and_reports_exhaustion() {
        let mut tables = Tables { pages: Vec::new() };
        let root = tables.alloc().unwrap();
        // SAFETY: valid root; these calls fail before or at the first allocation.
        unsafe {
            assert_eq!(
                map_uncached(root, 0x1000, 0, || None),
                Err(MapError::OutOfRange)
            );
            assert_eq!(
                map_uncached(root, u64::MAX, 2, || None),
                Err(MapError::OutOfRange)
            );
            assert_eq!(
                map_uncached(root, MAPPABLE_END, 1, || None),
                Err(MapError::OutOfRange)
            );
            assert_eq!(
                map_uncached(root, 0x1_0000_0000, 1, || None),
                Err(MapError::NoMemory)
            );
        }
    }
}
