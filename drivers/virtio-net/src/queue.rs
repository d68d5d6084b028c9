//! The driver side of one split virtqueue (virtio 1.2, section 2.7).
//!
//! Owns the descriptor table, the available ring and the used ring in one DMA block laid
//! out the legacy way (used ring on the next 4 KiB boundary), so the same memory works for
//! modern PCI, modern MMIO and legacy MMIO (which only takes a page frame number).
//!
//! Contract: the queue only moves indices. It never reads a buffer, never allocates, and
//! never trusts the device: a used index that runs more than a ring ahead is counted and
//! ignored, and descriptor ids are handed up unchecked for the owner (which knows which
//! ids are outstanding) to validate. Entries added with [`SplitQueue::push_avail`] become
//! visible to the device only at [`SplitQueue::publish`], which is how the driver posts a
//! whole batch with one index store and at most one notification.

use core::sync::atomic::{fence, Ordering};
use netoops_driver_platform::DmaRegion;

/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Available-ring flag: do not interrupt when consuming (we poll).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not need a notification for new buffers.
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue this driver sets up; bounds the per-queue bookkeeping arrays.
pub const MAX_QUEUE_SIZE: u16 = 1024;

const DESC_SIZE: usize = 16;
const PAGE: usize = 4096;

/// Bus addresses of the three parts of a queue, as transports program them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    /// Descriptor table.
    pub desc: u64,
    /// Available ("driver") ring.
    pub avail: u64,
    /// Used ("device") ring.
    pub used: u64,
}

/// What a transport programs for one queue: which, how many entries, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// Queue index.
    pub queue: u16,
    /// Entries.
    pub size: u16,
    /// Where its parts are.
    pub addrs: QueueAddresses,
}

/// One completed buffer as the device reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor id (unvalidated).
    pub id: u32,
    /// Bytes the device wrote (unvalidated).
    pub len: u32,
}

/// Why a queue could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Size zero, not a power of two, or above [`MAX_QUEUE_SIZE`].
    BadSize,
    /// The DMA block is smaller than [`SplitQueue::memory_len`].
    MemoryTooSmall,
}

/// Driver state of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    mem: DmaRegion,
    size: u16,
    avail_off: usize,
    used_off: usize,
    /// Next available-ring slot to fill (free-running).
    next_avail: u16,
    /// Available index the device has been shown.
    published_avail: u16,
    /// Next used-ring slot to read (free-running).
    last_used: u16,
    /// Times the device's used index ran more than a ring ahead.
    bad_used_index: u64,
}

impl SplitQueue {
    /// Bytes of DMA memory (4 KiB aligned) a queue of `size` entries needs.
    pub const fn memory_len(size: u16) -> usize {
        let n = size as usize;
        let used_off = align_up(DESC_SIZE * n + 6 + 2 * n, PAGE);
        align_up(used_off + 6 + 8 * n, PAGE)
    }

    /// Lays a queue of `size` entries out in `mem`, zeroing it and asking the device not to
    /// interrupt.
    pub fn new(mut mem: DmaRegion, size: u16) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize);
        }
        if mem.len() < Self::memory_len(size) {
            return Err(QueueError::MemoryTooSmall);
        }
        let n = usize::from(size);
        mem.zero();
        let avail_off = DESC_SIZE * n;
        let used_off = align_up(avail_off + 6 + 2 * n, PAGE);
        mem.write_u16(avail_off, AVAIL_F_NO_INTERRUPT);
        Ok(Self {
            mem,
            size,
            avail_off,
            used_off,
            next_avail: 0,
            published_avail: 0,
            last_used: 0,
            bad_used_index: 0,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the parts of the queue live, for the transport.
    pub fn addresses(&self) -> QueueAddresses {
        QueueAddresses {
            desc: self.mem.phys(0),
            avail: self.mem.phys(self.avail_off),
            used: self.mem.phys(self.used_off),
        }
    }

    /// Writes descriptor `id` as a single buffer (no chaining; ids wrap modulo the size).
    pub fn set_descriptor(&mut self, id: u16, addr: u64, len: u32, flags: u16) {
        let off = DESC_SIZE * usize::from(id & (self.size - 1));
        self.mem.write_u64(off, addr);
        self.mem.write_u32(off + 8, len);
        self.mem.write_u16(off + 12, flags);
        self.mem.write_u16(off + 14, 0);
    }

    /// Changes only the length of descriptor `id`.
    pub fn set_descriptor_len(&mut self, id: u16, len: u32) {
        let off = DESC_SIZE * usize::from(id & (self.size - 1));
        self.mem.write_u32(off + 8, len);
    }

    /// Queues descriptor `id` for the device without showing it yet. The caller keeps at
    /// most `size` ids outstanding, so no slot the device has not consumed is overwritten.
    pub fn push_avail(&mut self, id: u16) {
        let slot = usize::from(self.next_avail & (self.size - 1));
        self.mem.write_u16(self.avail_off + 4 + 2 * slot, id);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Entries pushed but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.next_avail.wrapping_sub(self.published_avail)
    }

    /// Shows every pushed entry to the device with one index store. Returns whether
    /// anything new was published.
    pub fn publish(&mut self) -> bool {
        if self.next_avail == self.published_avail {
            return false;
        }
        // Ring entries must be visible before the index that covers them.
        fence(Ordering::Release);
        self.mem.write_u16(self.avail_off + 2, self.next_avail);
        self.published_avail = self.next_avail;
        true
    }

    /// Whether the device asked to be notified about new buffers. Call after
    /// [`publish`](Self::publish): the full fence orders the index store before this load,
    /// so a device that goes idle concurrently is not missed.
    pub fn device_wants_notification(&self) -> bool {
        fence(Ordering::SeqCst);
        self.mem.read_u16(self.used_off) & USED_F_NO_NOTIFY == 0
    }

    /// Completed entries waiting to be read.
    pub fn used_pending(&mut self) -> u16 {
        let used_idx = self.mem.read_u16(self.used_off + 2);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.size {
            // A device that claims more than a ring of completions is broken; read nothing
            // rather than walk stale entries.
            self.bad_used_index += 1;
            return 0;
        }
        pending
    }

    /// Takes the next completed entry, if any.
    pub fn pop_used(&mut self) -> Option<UsedElem> {
        if self.used_pending() == 0 {
            return None;
        }
        // The entry must be read after the index that covers it.
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used & (self.size - 1));
        let off = self.used_off + 4 + 8 * slot;
        let elem = UsedElem {
            id: self.mem.read_u32(off),
            len: self.mem.read_u32(off + 4),
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(elem)
    }

    /// The buffer id of the next used entry, if the device has published one, without
    /// taking it.
    pub fn peek_used_id(&mut self) -> Option<u32> {
        if self.used_pending() == 0 {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used & (self.size - 1));
        Some(self.mem.read_u32(self.used_off + 4 + 8 * slot))
    }

    /// Times the device's used index was implausible.
    pub fn bad_used_index(&self) -> u64 {
        self.bad_used_index
    }
}

const fn align_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

#[cfg(any(test, feature = "model"))]
pub mod model {
    //! The device side of a split ring, written from the spec, for host tests and the native
    //! benchmark (feature `model`).
    //!
    //! Like a device, the model trusts the addresses the driver published: it reads and writes
    //! host memory at the queue's bus addresses and at the buffer addresses in descriptors,
    //! which [`netoops_driver_platform::host::HostPlatform`] makes host addresses. Use it only
    //! over queues and buffers a driver laid out in that platform's memory.
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A device's view of one queue in host memory (bus address == host address).
    pub struct RingModel {
        addrs: QueueAddresses,
        size: u16,
        last_avail: u16,
        used_idx: u16,
    }

    /// One descriptor as the device reads it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Desc {
        pub addr: u64,
        pub len: u32,
        pub flags: u16,
    }

    fn read<T: Copy>(addr: u64) -> T {
        // SAFETY: callers (tests, the benchmark) only pass addresses inside live, leaked host
        // allocations that the queue under test laid out (see the module documentation).
        unsafe { (addr as *const T).read_volatile() }
    }

    fn write<T: Copy>(addr: u64, v: T) {
        // SAFETY: as in `read`.
        unsafe { (addr as *mut T).write_volatile(v) }
    }

    impl RingModel {
        pub fn new(addrs: QueueAddresses, size: u16) -> Self {
            Self {
                addrs,
                size,
                last_avail: 0,
                used_idx: 0,
            }
        }

        /// Buffers the driver has published and the device has not taken.
        pub fn avail_pending(&self) -> u16 {
            read::<u16>(self.addrs.avail + 2).wrapping_sub(self.last_avail)
        }

        /// Takes the next available head and its descriptor.
        pub fn pop_avail(&mut self) -> Option<(u16, Desc)> {
            if self.avail_pending() == 0 {
                return None;
            }
            let slot = u64::from(self.last_avail & (self.size - 1));
            let id: u16 = read(self.addrs.avail + 4 + 2 * slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            let d = self.addrs.desc + 16 * u64::from(id);
            Some((
                id,
                Desc {
                    addr: read(d),
                    len: read(d + 8),
                    flags: read(d + 12),
                },
            ))
        }

        /// Completes `id` with `len` bytes written.
        pub fn push_used(&mut self, id: u32, len: u32) {
            let slot = u64::from(self.used_idx & (self.size - 1));
            write(self.addrs.used + 4 + 8 * slot, id);
            write(self.addrs.used + 8 + 8 * slot, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            write(self.addrs.used + 2, self.used_idx);
        }

        /// Forces the used index (to model a misbehaving device).
        pub fn set_used_idx(&mut self, idx: u16) {
            self.used_idx = idx;
            write(self.addrs.used + 2, idx);
        }

        pub fn set_no_notify(&self, on: bool) {
            write::<u16>(self.addrs.used, u16::from(on));
        }

        pub fn avail_flags(&self) -> u16 {
            read(self.addrs.avail)
        }

        /// Writes `bytes` at bus address `addr` (a buffer of the driver's, as the device
        /// would by DMA).
        pub fn write_buffer(addr: u64, bytes: &[u8]) {
            // SAFETY: as in `read`: `addr` is inside a live, leaked buffer the driver posted,
            // at least `bytes.len()` long, and no Rust reference covers it while it is posted.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) }
        }

        pub fn read_buffer(addr: u64, len: usize) -> Vec<u8> {
            (0..len).map(|i| read(addr + i as u64)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::RingModel;
    use super::*;
    use netoops_driver_platform::host::HostPlatform;
    use netoops_driver_platform::Platform;

    fn queue(size: u16) -> SplitQueue {
        let mem = HostPlatform
            .dma_alloc(SplitQueue::memory_len(size), 4096)
            .unwrap();
        SplitQueue::new(mem, size).unwrap()
    }

    #[test]
    fn layout_matches_the_legacy_formula() {
        // virtio 0.9.5: used ring at ALIGN(16*N + 6 + 2*N, 4096).
        assert_eq!(SplitQueue::memory_len(256), 8192 + 4096);
        assert_eq!(SplitQueue::memory_len(1024), 20480 + 12288);
        let q = queue(256);
        let a = q.addresses();
        assert_eq!(a.avail - a.desc, 4096);
        assert_eq!(a.used - a.desc, 8192);
        assert_eq!(a.desc % 4096, 0);
    }

    #[test]
    fn rejects_bad_sizes_and_short_memory() {
        let mem = HostPlatform.dma_alloc(8192, 4096).unwrap();
        assert_eq!(SplitQueue::new(mem, 100).unwrap_err(), QueueError::BadSize);
        let mem = HostPlatform.dma_alloc(4096, 4096).unwrap();
        assert_eq!(
            SplitQueue::new(mem, 256).unwrap_err(),
            QueueError::MemoryTooSmall
        );
        let mem = HostPlatform.dma_alloc(65536, 4096).unwrap();
        assert_eq!(SplitQueue::new(mem, 2048).unwrap_err(), QueueError::BadSize);
    }

    #[test]
    fn pushed_entries_stay_hidden_until_published() {
        let mut q = queue(8);
        let mut dev = RingModel::new(q.addresses(), 8);
        assert_eq!(dev.avail_flags(), 1, "driver asks for no interrupts");
        for id in 0..5 {
            q.set_descriptor(id, 0x1000 * u64::from(id), 2048, DESC_F_WRITE);
            q.push_avail(id);
        }
        assert_eq!(q.unpublished(), 5);
        assert_eq!(dev.avail_pending(), 0);
        assert!(q.publish());
        assert!(!q.publish(), "nothing new to publish");
        assert_eq!(dev.avail_pending(), 5);
        let (id, d) = dev.pop_avail().unwrap();
        assert_eq!(id, 0);
        assert_eq!(d.len, 2048);
        assert_eq!(d.flags, DESC_F_WRITE);
        let (id, d) = dev.pop_avail().unwrap();
        assert_eq!((id, d.addr), (1, 0x1000));
    }

    #[test]
    fn used_entries_come_back_in_order_across_index_wrap() {
        let mut q = queue(4);
        let mut dev = RingModel::new(q.addresses(), 4);
        // Run the free-running indices past u16::MAX to cover wrap-around.
        for round in 0u32..(70_000 / 3) {
            for id in 0..3u16 {
                q.push_avail(id);
            }
            q.publish();
            for _ in 0..3 {
                let (id, _) = dev.pop_avail().unwrap();
                dev.push_used(u32::from(id), round);
            }
            assert_eq!(q.used_pending(), 3);
            for id in 0..3u32 {
                assert_eq!(q.pop_used(), Some(UsedElem { id, len: round }));
            }
            assert_eq!(q.pop_used(), None);
        }
        assert_eq!(q.bad_used_index(), 0);
    }

    #[test]
    fn notification_follows_the_device_flag() {
        let q = queue(4);
        let dev = RingModel::new(q.addresses(), 4);
        assert!(q.device_wants_notification());
        dev.set_no_notify(true);
        assert!(!q.device_wants_notification());
    }

    #[test]
    fn runaway_used_index_is_counted_not_walked() {
        let mut q = queue(4);
        let mut dev = RingModel::new(q.addresses(), 4);
        dev.set_used_idx(9);
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.bad_used_index(), 1);
    }
}
