//! The heap and DMA memory.
//!
//! The heap is one `linked_list_allocator` region (behind a spin lock) over the largest
//! usable RAM range the loader reported between the end of the kernel image and 4 GiB, so
//! all of it is inside the identity map: physical == virtual, and DMA memory is simply
//! zeroed heap memory that is never freed. A `heap=` command-line size (e.g. `heap=64M`)
//! caps it; otherwise it takes the whole range. The allocator keeps the heap's high-water
//! mark ([`heap_peak`]).
//!
//! The range is split in two zones ([`split_heap`]): blocks under 1 MiB pack into the first
//! few MiB, and the large ones (the reassembly slots, the netconsole pool, the spool rings,
//! reserved at boot and written as traffic comes) come from the rest through an
//! [`ExtentHeap`], whose bookkeeping lives outside the memory it hands out: a large block
//! costs nothing until it is written. Under a hypervisor that backs guest RAM with 2 MiB
//! pages on first touch (QEMU does), the one linked-list heap's hole headers, one after
//! every block, touched 12 such pages by `ready`, each fault zeroing 2 MiB; the zones touch
//! 5 (the kernel's and the small zone's 4, and one large block written at start-up), which
//! took 2 ms off the relay's start-up under TCG on the build machine.

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

/// Bytes of the small zone (rounded up to end on a 2 MiB boundary): the relay's blocks under
/// [`LARGE_BLOCK`] take about 4 MiB with the default configuration.
pub const SMALL_ZONE: u64 = 6 << 20;
/// Blocks of at least this size go to the large zone.
pub const LARGE_BLOCK: usize = 1 << 20;
const HUGE_PAGE: u64 = 2 << 20;

/// Splits the heap into its small zone and, when room is left, its large zone (starting on
/// a 2 MiB boundary).
pub fn split_heap(range: HeapRange) -> (HeapRange, Option<HeapRange>) {
    let end = range.start + range.len;
    let split = (range.start + SMALL_ZONE).next_multiple_of(HUGE_PAGE);
    if split >= end {
        return (range, None);
    }
    let small = HeapRange {
        start: range.start,
        len: split - range.start,
    };
    let large = HeapRange {
        start: split,
        len: end - split,
    };
    (small, Some(large))
}

/// Free extents an [`ExtentHeap`] tracks; beyond them a freed block is kept as used.
const MAX_EXTENTS: usize = 64;
const PAGE: u64 = 4096;

/// A first-fit allocator over a range whose free list is a bounded table of extents kept
/// outside the range, so that handing out a block writes nothing into it. Blocks are whole
/// pages (large blocks only come here); freed blocks merge with their free neighbours.
#[derive(Debug)]
pub struct ExtentHeap {
    /// Free `(start, end)` page-aligned extents, sorted by address, not touching.
    free: [(u64, u64); MAX_EXTENTS],
    extents: usize,
    /// Bytes handed out (whole pages).
    used: u64,
    /// Bytes of freed blocks the full table could not take back (kept as used).
    stranded: u64,
}

impl ExtentHeap {
    /// A heap with no memory (every allocation fails).
    pub const fn empty() -> ExtentHeap {
        ExtentHeap {
            free: [(0, 0); MAX_EXTENTS],
            extents: 0,
            used: 0,
            stranded: 0,
        }
    }

    /// Gives it `range` (trimmed to whole pages).
    pub fn init(&mut self, range: HeapRange) {
        let start = range.start.next_multiple_of(PAGE);
        let end = (range.start + range.len) & !(PAGE - 1);
        if end > start {
            self.free[0] = (start, end);
            self.extents = 1;
        }
    }

    /// The first free place for `size` bytes at `align` (a power of two), or `None`.
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        let size = (size as u64).max(1).next_multiple_of(PAGE);
        let align = (align as u64).max(PAGE);
        let (i, at) = self.free[..self.extents]
            .iter()
            .enumerate()
            .find_map(|(i, &(s, e))| {
                let at = s.checked_next_multiple_of(align)?;
                (at.checked_add(size)? <= e).then_some((i, at))
            })?;
        let (start, end) = self.free[i];
        match (at > start, at + size < end) {
            (false, false) => self.remove(i),
            (false, true) => self.free[i].0 = at + size,
            (true, false) => self.free[i].1 = at,
            (true, true) => {
                if self.extents == MAX_EXTENTS {
                    return None;
                }
                self.free[i].1 = at;
                self.insert(i + 1, (at + size, end));
            }
        }
        self.used += size;
        Some(at)
    }

    /// Takes back the block at `at` that [`Self::alloc`] handed out for `size` bytes.
    pub fn dealloc(&mut self, at: u64, size: usize) {
        let size = (size as u64).max(1).next_multiple_of(PAGE);
        let end = at + size;
        let i = self.free[..self.extents].partition_point(|&(s, _)| s < at);
        let joins_prev = i > 0 && self.free[i - 1].1 == at;
        let joins_next = i < self.extents && self.free[i].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.remove(i);
            }
            (true, false) => self.free[i - 1].1 = end,
            (false, true) => self.free[i].0 = at,
            (false, false) if self.extents < MAX_EXTENTS => self.insert(i, (at, end)),
            (false, false) => {
                self.stranded += size;
                return;
            }
        }
        self.used -= size;
    }

    /// Bytes handed out and not taken back, stranded blocks included.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes free.
    pub fn free(&self) -> u64 {
        self.free[..self.extents].iter().map(|(s, e)| e - s).sum()
    }

    fn remove(&mut self, i: usize) {
        self.free.copy_within(i + 1..self.extents, i);
        self.extents -= 1;
    }

    fn insert(&mut self, i: usize, extent: (u64, u64)) {
        self.free.copy_within(i..self.extents, i + 1);
        self.free[i] = extent;
        self.extents += 1;
    }
}

/// Parses a size like `64M`, `512K`, `1G` or plain bytes: the core's parser (the relay's
/// budgets are written the same way), widened to a physical size.
pub fn parse_size(text: &str) -> Option<u64> {
    netoops_core::config::parse_size(text).map(|bytes| bytes as u64)
}

/// The heap allocator: a `linked_list_allocator` heap for the small zone and an
/// [`ExtentHeap`] for the large one (see the module doc). It records the highest use it has
/// ever reached on each allocation, so the peak is exact without anyone sampling it
/// (allocation is not on the per-packet path).
#[cfg(all(target_os = "none", not(test)))]
struct PeakHeap {
    small: linked_list_allocator::LockedHeap,
    large: spin::Mutex<ExtentHeap>,
    /// First address of the large zone (0 until [`init_heap`]).
    large_start: core::sync::atomic::AtomicUsize,
    peak: core::sync::atomic::AtomicUsize,
}

#[cfg(all(target_os = "none", not(test)))]
impl PeakHeap {
    /// Bytes in use in both zones (takes each zone's lock in turn).
    fn used(&self) -> usize {
        self.small.lock().used() + self.large.lock().used() as usize
    }
}

// SAFETY: each zone hands out disjoint blocks of its own range under its own lock (the
// small one through linked_list_allocator, the large one through ExtentHeap, which never
// hands out a byte twice); a block is freed to the zone whose range holds it, the one that
// handed it out (the zones do not overlap). Only the peak bookkeeping is added.
#[cfg(all(target_os = "none", not(test)))]
unsafe impl core::alloc::GlobalAlloc for PeakHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let small = || self.small.lock().allocate_first_fit(layout).ok();
        let large = || {
            let at = self.large.lock().alloc(layout.size(), layout.align())?;
            NonNull::new(at as *mut u8)
        };
        let block = if layout.size() >= LARGE_BLOCK {
            large().or_else(small)
        } else {
            small().or_else(large)
        };
        match block {
            Some(block) => {
                self.peak
                    .fetch_max(self.used(), core::sync::atomic::Ordering::Relaxed);
                block.as_ptr()
            }
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        let large_start = self.large_start.load(core::sync::atomic::Ordering::Relaxed);
        if large_start != 0 && ptr as usize >= large_start {
            self.large.lock().dealloc(ptr as u64, layout.size());
            return;
        }
        // SAFETY: `ptr` came from `alloc` with this `layout` (GlobalAlloc's contract) and lies
        // below the large zone, so the small zone's heap handed it out.
        unsafe {
            self.small
                .lock()
                .deallocate(NonNull::new_unchecked(ptr), layout)
        }
    }
}

#[cfg(all(target_os = "none", not(test)))]
#[global_allocator]
static ALLOCATOR: PeakHeap = PeakHeap {
    small: linked_list_allocator::LockedHeap::empty(),
    large: spin::Mutex::new(ExtentHeap::empty()),
    large_start: core::sync::atomic::AtomicUsize::new(0),
    peak: core::sync::atomic::AtomicUsize::new(0),
};

/// Hands `range` to the global allocator, in its two zones. Call once.
#[cfg(all(target_os = "none", not(test)))]
pub fn init_heap(range: HeapRange) {
    let (small, large) = split_heap(range);
    // SAFETY: `choose_heap` picked usable RAM above the kernel image inside the identity map;
    // nothing else uses it (boot information was copied out before), this runs once, and
    // the two zones `split_heap` makes do not overlap.
    unsafe {
        ALLOCATOR
            .small
            .lock()
            .init(small.start as *mut u8, small.len as usize);
        if let Some(large) = large {
            ALLOCATOR.large.lock().init(large);
            ALLOCATOR
                .large_start
                .store(large.start as usize, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Bytes of heap in use and free.
#[cfg(all(target_os = "none", not(test)))]
pub fn heap_usage() -> (usize, usize) {
    let (small, large) = (ALLOCATOR.small.lock(), ALLOCATOR.large.lock());
    (
        small.used() + large.used() as usize,
        small.free() + large.free() as usize,
    )
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
    fn the_large_zone_starts_on_a_2m_boundary_past_the_small_one() {
        let heap = HeapRange {
            start: 0x124000,
            len: 64 << 20,
        };
        let (small, large) = split_heap(heap);
        let large = large.unwrap();
        assert_eq!(small.start, heap.start);
        assert_eq!(
            large.start, 0x800000,
            "6 MiB past 0x124000, rounded up to 2 MiB"
        );
        assert_eq!(small.start + small.len, large.start);
        assert_eq!(large.start + large.len, heap.start + heap.len);
        let tiny = HeapRange {
            start: 0x124000,
            len: 5 << 20,
        };
        assert_eq!(
            split_heap(tiny),
            (tiny, None),
            "too small to split: one zone"
        );
    }

    #[test]
    fn extent_heap_hands_out_disjoint_pages_and_merges_what_returns() {
        let mut heap = ExtentHeap::empty();
        heap.init(HeapRange {
            start: 0x600000,
            len: 1 << 20,
        });
        let a = heap.alloc(100 << 10, 8).unwrap();
        let b = heap.alloc(5000, 64).unwrap();
        assert_eq!((a, b), (0x600000, 0x600000 + (100 << 10)));
        assert_eq!(heap.used(), (100 << 10) + 8192, "whole pages");
        let c = heap.alloc(4096, 64 << 10).unwrap();
        assert_eq!(c % (64 << 10), 0, "aligned");
        assert!(c >= b + 8192);
        assert_eq!(heap.alloc(1 << 20, 8), None, "no room left for 1 MiB");
        heap.dealloc(b, 5000);
        heap.dealloc(a, 100 << 10);
        heap.dealloc(c, 4096);
        assert_eq!((heap.used(), heap.free(), heap.extents), (0, 1 << 20, 1));
        assert_eq!(
            heap.alloc(1 << 20, 4096),
            Some(0x600000),
            "merged back whole"
        );
    }

    #[test]
    fn extent_heap_keeps_what_its_full_table_cannot_take_back() {
        let mut heap = ExtentHeap::empty();
        heap.init(HeapRange {
            start: 0,
            len: 4096 * 2 * (MAX_EXTENTS as u64 + 2),
        });
        let blocks: Vec<u64> = (0..2 * (MAX_EXTENTS + 2))
            .map(|_| heap.alloc(4096, 1).unwrap())
            .collect();
        // Every other block freed: each is an extent of its own, until the table is full.
        for &b in blocks.iter().step_by(2) {
            heap.dealloc(b, 4096);
        }
        assert_eq!(heap.extents, MAX_EXTENTS);
        assert_eq!(heap.stranded, 2 * 4096);
        assert_eq!(
            heap.used() + heap.free(),
            4096 * 2 * (MAX_EXTENTS as u64 + 2)
        );
        // Its neighbours coming back merge extents; nothing is handed out twice.
        for &b in blocks.iter().skip(1).step_by(2) {
            heap.dealloc(b, 4096);
        }
        assert_eq!(heap.used(), heap.stranded);
        let stranded = [blocks[2 * MAX_EXTENTS], blocks[2 * MAX_EXTENTS + 2]];
        let again: Vec<u64> = core::iter::from_fn(|| heap.alloc(4096, 1)).collect();
        assert_eq!(again.len(), blocks.len() - 2);
        assert!(again.iter().all(|b| !stranded.contains(b)));
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
