//! The heap and DMA memory.
//!
//! The heap is one `linked_list_allocator` region (behind a spin lock) over the largest
//! usable RAM range the loader reported between the end of the kernel image and 4 GiB, so
//! all of it is inside the identity map: physical == virtual, and DMA memory is simply
//! zeroed heap memory that is never freed. A `heap=` command-line size (e.g. `heap=64M`)
//! caps it; otherwise it takes the whole range. The allocator keeps the heap's high-water
//! mark ([`heap_peak`]).
//!
//! One zone, on purpose. The allocator writes a hole header after every block, so under a
//! hypervisor that backs guest RAM with 2 MiB pages on first touch (QEMU does) each large
//! reservation (reassembly slots, netconsole pool, spool rings) has its first pages faulted
//! in at boot. A large-block zone whose bookkeeping lived outside the memory took 2 ms off
//! the boot under TCG but left those faults to the first burst of traffic, where a host
//! stall of a few ms overflows the NIC ring: the real Linux kernel's netconsole burst to
//! the image lost 80-90 records in 3 of 9 runs, and none in 10 with one zone.

use super::bootinfo::{MemoryKind, MemoryRegion};
use core::ptr::NonNull;

/// The heap range chosen at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapRange {
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub len: u64,
}

/// Picks the heap range: the largest usable region above `kernel_end` (and above 1 MiB)
/// and below the identity-map end, capped at `cap` bytes when given.
pub fn choose_heap(
    memory: &[MemoryRegion],
    kernel_end: u64,
    limit: u64,
    cap: Option<u64>,
) -> Option<HeapRange> {
    let floor = kernel_end.max(1 << 20);
    memory
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .filter_map(|r| {
            let start = r.start.max(floor).next_multiple_of(4096);
            let end = r.end().min(limit) & !4095;
            (end > start).then(|| HeapRange {
                start,
                len: end - start,
            })
        })
        .max_by_key(|r| r.len)
        .map(|r| HeapRange {
            start: r.start,
            len: cap.map_or(r.len, |c| r.len.min(c)),
        })
}

/// Parses a size like `64M`, `512K`, `1G` or plain bytes: the core's parser (the relay's
/// budgets are written the same way), widened to a physical size.
pub fn parse_size(text: &str) -> Option<u64> {
    netoops_core::config::parse_size(text).map(|bytes| bytes as u64)
}

/// The heap allocator, recording the highest use it has ever reached on each allocation, so
/// the peak is exact without anyone sampling it (allocation is not on the per-packet path).
#[cfg(all(target_os = "none", not(test)))]
struct PeakHeap {
    heap: linked_list_allocator::LockedHeap,
    peak: core::sync::atomic::AtomicUsize,
}

// SAFETY: allocation and deallocation are linked_list_allocator's, under its lock; only the
// peak bookkeeping is added, which reads the heap under that same lock.
#[cfg(all(target_os = "none", not(test)))]
unsafe impl core::alloc::GlobalAlloc for PeakHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let mut heap = self.heap.lock();
        match heap.allocate_first_fit(layout) {
            Ok(block) => {
                self.peak
                    .fetch_max(heap.used(), core::sync::atomic::Ordering::Relaxed);
                block.as_ptr()
            }
            Err(()) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` with this `layout` (GlobalAlloc's contract), so it
        // is non-null and the heap's own.
        unsafe {
            self.heap
                .lock()
                .deallocate(NonNull::new_unchecked(ptr), layout)
        }
    }
}

#[cfg(all(target_os = "none", not(test)))]
#[global_allocator]
static ALLOCATOR: PeakHeap = PeakHeap {
    heap: linked_list_allocator::LockedHeap::empty(),
    peak: core::sync::atomic::AtomicUsize::new(0),
};

/// Hands `range` to the global allocator. Call once.
#[cfg(all(target_os = "none", not(test)))]
pub fn init_heap(range: HeapRange) {
    // SAFETY: `choose_heap` picked usable RAM above the kernel image inside the identity map;
    // nothing else uses it (boot information was copied out before), and this runs once.
    unsafe {
        ALLOCATOR
            .heap
            .lock()
            .init(range.start as *mut u8, range.len as usize);
    }
}

/// Bytes of heap in use and free.
#[cfg(all(target_os = "none", not(test)))]
pub fn heap_usage() -> (usize, usize) {
    let heap = ALLOCATOR.heap.lock();
    (heap.used(), heap.free())
}

/// The highest heap use since boot, in bytes (updated by every allocation).
#[cfg(all(target_os = "none", not(test)))]
pub fn heap_peak() -> usize {
    ALLOCATOR.peak.load(core::sync::atomic::Ordering::Relaxed)
}

/// Zeroed memory for device rings and buffers: `size` bytes aligned to `align` (a power of
/// two), never freed. Returns the pointer and its physical address (the same value: the
/// heap is identity mapped). Out of memory at bring-up is fatal (allocation error handler).
pub fn dma_alloc(size: usize, align: usize) -> (NonNull<u8>, u64) {
    // SAFETY: `dma_block` passes a layout of non-zero size.
    dma_block(size, align, |layout| unsafe {
        alloc::alloc::alloc_zeroed(layout)
    })
}

/// Memory for device rings and buffers whose driver initializes what it reads (the
/// driver-platform contract: "the contents need not be zeroed"): as [`dma_alloc`], without
/// writing it. The virtio-net driver zeroes its queues and each transmit slot on first use,
/// and reads a receive slot only where the device wrote it; the e1000e driver zeroes its
/// descriptors (its buffers are read only where the device wrote a frame). Zeroing here too
/// cost about 1 ms of boot under TCG for a 1024-entry virtio ring.
pub fn dma_alloc_uninit(size: usize, align: usize) -> (NonNull<u8>, u64) {
    // SAFETY: `dma_block` passes a layout of non-zero size.
    dma_block(size, align, |layout| unsafe { alloc::alloc::alloc(layout) })
}

/// A never-freed heap block from `alloc` (given a layout of non-zero size), with its
/// physical address.
fn dma_block(
    size: usize,
    align: usize,
    alloc: impl FnOnce(core::alloc::Layout) -> *mut u8,
) -> (NonNull<u8>, u64) {
    let layout = core::alloc::Layout::from_size_align(size.max(1), align.max(1))
        .unwrap_or_else(|_| panic!("dma_alloc: bad alignment {align}"));
    let Some(ptr) = NonNull::new(alloc(layout)) else {
        alloc::alloc::handle_alloc_error(layout)
    };
    (ptr, virt_to_phys(ptr.as_ptr()))
}

/// The physical address of kernel memory (identity mapped: the pointer value).
pub fn virt_to_phys<T>(ptr: *const T) -> u64 {
    ptr as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(start: u64, len: u64) -> MemoryRegion {
        MemoryRegion {
            start,
            len,
            kind: MemoryKind::Usable,
        }
    }

    #[test]
    fn heap_takes_the_largest_range_above_the_kernel_below_4g() {
        let map = [
            ram(0, 0x9fc00),
            ram(0x100000, 0x7ee0000),
            MemoryRegion {
                start: 0x7fe0000,
                len: 0x20000,
                kind: MemoryKind::Reserved,
            },
            ram(0x1_0000_0000, 0x4000_0000),
        ];
        let heap = choose_heap(&map, 0x123456, 4 << 30, None).unwrap();
        assert_eq!(
            heap,
            HeapRange {
                start: 0x124000,
                len: 0x7fe0000 - 0x124000
            }
        );
        let capped = choose_heap(&map, 0x123456, 4 << 30, Some(64 << 20)).unwrap();
        assert_eq!(capped.len, 64 << 20);
        assert!(choose_heap(&map[..1], 0x123456, 4 << 30, None).is_none());
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn dma_memory_is_zeroed_aligned_and_identity_addressed() {
        let (p, phys) = dma_alloc(4096, 4096);
        assert_eq!(p.as_ptr() as u64, phys);
        assert_eq!(phys % 4096, 0);
        // SAFETY: dma_alloc returned 4096 initialized (zeroed) bytes.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), 4096) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
