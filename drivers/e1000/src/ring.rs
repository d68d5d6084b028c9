//! Receive and transmit descriptor rings: who owns which descriptor, and when the device
//! hears about it.
//!
//! Both rings are arrays of legacy descriptors in DMA memory, each descriptor pointing at its
//! own fixed [`BUFFER_LEN`]-byte buffer for the life of the driver, so the data path moves
//! indices and status bytes only. The device owns the descriptors from its head register up
//! to (not including) the tail register; the driver owns the rest. Head equal to tail means
//! the device owns none, so a ring of `n` descriptors has at most `n - 1` in the device's
//! hands.
//!
//! - [`RxRing`]: every descriptor but one starts posted. The driver takes completed ones in
//!   order (status `DD`), lends the buffer in place, clears the status and gives the
//!   descriptor back by moving the tail: once per batch, never once per frame.
//! - [`TxRing`]: the driver fills descriptors at its tail, publishes them with one tail write
//!   per batch, and reclaims them in order when the device has written `DD` back.
//!
//! Buffers are reached only through tokens that borrow their ring mutably, so misuse does
//! not compile: [`RxRing::next_frame`] returns an [`RxFrame`], the only way to read a
//! received buffer, which gives its descriptor back to the device when dropped (after that
//! no reference to the buffer can remain); [`TxRing::reserve`] returns a [`TxSlot`] only
//! when a descriptor is free, the only way to write a transmit buffer, so nothing writes a
//! buffer the device may still be reading, and a full ring refuses.
//!
//! Code here is safe but for the two buffer borrows the tokens justify: descriptor and
//! buffer memory is reached through [`DmaRegion`]'s bounds-checked accessors, registers
//! through [`Registers`]. Device input is not trusted: a completed descriptor with an
//! impossible length or error bits is counted and recycled, never handed up.

use crate::regs::{self, rx_desc, tx_desc, Registers};
use core::sync::atomic::{fence, Ordering};
use netoops_driver_platform::{DmaRegion, Platform};

/// Bytes per receive and transmit buffer; the receive control register is programmed to
/// match (`BSIZE` 2048), and every frame of a 1500-byte MTU fits one buffer.
pub const BUFFER_LEN: usize = 2048;
/// Smallest ring: descriptor memory comes in 128-byte units.
pub const MIN_RING_LEN: u16 = regs::RING_ALIGN_DESCRIPTORS;
/// Largest ring the driver accepts (8 MiB of buffers).
pub const MAX_RING_LEN: u16 = 4096;
/// An Ethernet header: anything shorter is not a frame.
pub const ETH_HEADER_LEN: usize = 14;

/// Why a ring could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The length is not a multiple of 8 between [`MIN_RING_LEN`] and [`MAX_RING_LEN`].
    BadLength(u16),
    /// The platform had no DMA memory for it.
    DmaExhausted,
}

/// Checks a ring length: a multiple of 8 descriptors (RDLEN/TDLEN are multiples of 128
/// bytes) within the driver's bounds.
pub fn check_ring_len(len: u16) -> Result<(), RingError> {
    if (MIN_RING_LEN..=MAX_RING_LEN).contains(&len) && len % regs::RING_ALIGN_DESCRIPTORS == 0 {
        Ok(())
    } else {
        Err(RingError::BadLength(len))
    }
}

/// The two DMA blocks of one ring: `len` descriptors of `desc_len` bytes, each pointing at
/// its buffer of [`BUFFER_LEN`] bytes in the buffer block.
#[derive(Debug)]
pub struct Blocks {
    descs: DmaRegion,
    buffers: DmaRegion,
    len: u16,
    desc_len: usize,
}

impl Blocks {
    fn new(
        platform: &impl Platform,
        len: u16,
        desc_len: usize,
        addr_offset: usize,
    ) -> Result<Self, RingError> {
        check_ring_len(len)?;
        let n = usize::from(len);
        let mut descs = platform
            .dma_alloc(n * desc_len, 4096)
            .ok_or(RingError::DmaExhausted)?;
        descs.zero();
        let buffers = platform
            .dma_alloc(n * BUFFER_LEN, 4096)
            .ok_or(RingError::DmaExhausted)?;
        for i in 0..n {
            descs.write_u64(i * desc_len + addr_offset, buffers.phys(i * BUFFER_LEN));
        }
        Ok(Blocks {
            descs,
            buffers,
            len,
            desc_len,
        })
    }

    /// Bus address of the descriptor array (RDBAL/RDBAH, TDBAL/TDBAH).
    pub fn base(&self) -> u64 {
        self.descs.phys(0)
    }

    /// Size of the descriptor array in bytes (RDLEN, TDLEN).
    pub fn bytes(&self) -> u32 {
        u32::from(self.len) * self.desc_len as u32
    }

    /// Descriptors in the ring.
    pub fn descriptors(&self) -> u16 {
        self.len
    }
}

/// Receive ring counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Frames handed to the caller.
    pub frames: u64,
    /// Bytes handed to the caller (Ethernet header included, FCS stripped).
    pub bytes: u64,
    /// Frames the device marked bad (CRC, symbol, sequence, carrier extension, RX data).
    pub errors: u64,
    /// Frames shorter than an Ethernet header.
    pub runts: u64,
    /// Frames spread over several buffers (longer than [`BUFFER_LEN`]).
    pub oversize: u64,
    /// Completed descriptors claiming more bytes than a buffer holds.
    pub device_errors: u64,
    /// Tail register writes (one per batch of reposted descriptors).
    pub tail_writes: u64,
}

/// The receive descriptor ring.
#[derive(Debug)]
pub struct RxRing {
    blocks: Blocks,
    /// Next descriptor the driver looks at.
    next: u16,
    /// Descriptors recycled since the last tail write.
    unposted: u16,
    batch: u16,
    /// Inside a frame that spans several descriptors: drop until its last one.
    in_oversize: bool,
    counters: RxCounters,
}

impl RxRing {
    /// Allocates `len` descriptors and buffers; `batch` recycled descriptors trigger a tail
    /// write without waiting for [`RxRing::flush`].
    pub fn new(platform: &impl Platform, len: u16, batch: u16) -> Result<Self, RingError> {
        let blocks = Blocks::new(platform, len, rx_desc::LEN, rx_desc::ADDR)?;
        Ok(Self {
            blocks,
            next: 0,
            unposted: 0,
            batch: batch.clamp(1, len),
            in_oversize: false,
            counters: RxCounters::default(),
        })
    }

    /// Its descriptor and buffer blocks.
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// The tail value that gives the device every descriptor the driver is done with: all
    /// but the one before the next descriptor to look at, which marks the end.
    pub fn tail(&self) -> u16 {
        (self.next + self.blocks.len - 1) % self.blocks.len
    }

    /// Counters so far.
    pub fn counters(&self) -> RxCounters {
        self.counters
    }

    /// The next descriptor the driver looks at and its status dword (diagnostics).
    pub fn position(&self) -> (u16, u32) {
        let off = usize::from(self.next) * rx_desc::LEN;
        (
            self.next,
            self.blocks.descs.read_u32(off + rx_desc::STATUS_WORD),
        )
    }

    /// Takes the next good frame the device completed. Bad frames on the way are counted
    /// and recycled. The descriptor stays the driver's while the [`RxFrame`] lives; dropping
    /// it gives the descriptor back (published with the batch).
    pub fn next_frame<'a, R: Registers>(&'a mut self, regs: &'a R) -> Option<RxFrame<'a, R>> {
        loop {
            let off = usize::from(self.next) * rx_desc::LEN;
            let word = self.blocks.descs.read_u32(off + rx_desc::STATUS_WORD);
            if word & rx_desc::STA_DD == 0 {
                return None;
            }
            // The length was written with the status; read it only after seeing DD.
            fence(Ordering::Acquire);
            let len = usize::from(self.blocks.descs.read_u16(off + rx_desc::LENGTH));
            let eop = word & rx_desc::STA_EOP != 0;
            if self.in_oversize || !eop {
                if !self.in_oversize {
                    self.counters.oversize += 1;
                }
                self.in_oversize = !eop;
            } else if word & rx_desc::FRAME_ERRORS != 0 {
                self.counters.errors += 1;
            } else if len > BUFFER_LEN {
                self.counters.device_errors += 1;
            } else if len < ETH_HEADER_LEN {
                self.counters.runts += 1;
            } else {
                self.counters.frames += 1;
                self.counters.bytes += len as u64;
                // The device fills descriptors in order: the next frame lands in the next
                // buffer, which the reassembler will read right after this one.
                let after = (usize::from(self.next) + 1) % usize::from(self.blocks.len);
                self.blocks.buffers.prefetch(after * BUFFER_LEN, BUFFER_LEN);
                return Some(RxFrame {
                    ring: self,
                    regs,
                    len,
                });
            }
            self.recycle(regs);
        }
    }

    /// Returns the next descriptor (the one just looked at) to the driver's pool of free
    /// ones: clears its status and moves on; publishes when a batch is complete. Private:
    /// outside this module a descriptor is recycled by dropping its [`RxFrame`].
    fn recycle(&mut self, regs: &impl Registers) {
        let off = usize::from(self.next) * rx_desc::LEN;
        // Length, checksum, status, errors and special: the device rewrites them all.
        self.blocks.descs.write_u64(off + rx_desc::LENGTH, 0);
        self.next = (self.next + 1) % self.blocks.len;
        self.unposted += 1;
        if self.unposted >= self.batch {
            self.flush(regs);
        }
    }

    /// Gives every recycled descriptor to the device with one tail write.
    pub fn flush(&mut self, regs: &impl Registers) {
        if self.unposted == 0 {
            return;
        }
        // Cleared descriptors must be visible before the device may fetch them.
        fence(Ordering::Release);
        regs.write(regs::RDT, u32::from(self.tail()));
        self.unposted = 0;
        self.counters.tail_writes += 1;
    }
}

/// A received frame in its buffer, from [`RxRing::next_frame`]: the descriptor at the ring's
/// `next`, owned by the driver for as long as this lives. Dropping it recycles the
/// descriptor.
#[derive(Debug)]
pub struct RxFrame<'a, R: Registers> {
    ring: &'a mut RxRing,
    regs: &'a R,
    /// At most [`BUFFER_LEN`] (checked by `next_frame`).
    len: usize,
}

impl<R: Registers> RxFrame<'_, R> {
    /// The descriptor holding the frame.
    pub fn index(&self) -> u16 {
        self.ring.next
    }

    /// The frame's length (Ethernet header included, FCS stripped).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (never: runts are not handed up).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's bytes, in the receive buffer.
    pub fn bytes(&self) -> &[u8] {
        let index = usize::from(self.ring.next);
        // SAFETY: descriptor `next` completed (DD seen by `next_frame`) and is not recycled
        // until this frame drops: it lies outside the tail..head range the device owns, so
        // the device does not write its buffer while the returned borrow (tied to `&self`,
        // which the drop outlives) exists. `self.ring` is borrowed mutably by this frame, so
        // no other ring method runs meanwhile; `len <= BUFFER_LEN` keeps the range inside the
        // descriptor's own buffer.
        unsafe { self.ring.blocks.buffers.bytes(index * BUFFER_LEN, self.len) }
    }
}

impl<R: Registers> Drop for RxFrame<'_, R> {
    fn drop(&mut self) {
        self.ring.recycle(self.regs);
    }
}

/// Transmit ring counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCounters {
    /// Frames queued.
    pub frames: u64,
    /// Bytes queued.
    pub bytes: u64,
    /// Requests refused because every descriptor was in flight.
    pub ring_full: u64,
    /// Frames cut to [`BUFFER_LEN`] because the caller asked for more.
    pub truncated: u64,
    /// Tail register writes (one per published batch).
    pub tail_writes: u64,
}

/// The transmit descriptor ring.
#[derive(Debug)]
pub struct TxRing {
    blocks: Blocks,
    /// Next descriptor to fill.
    tail: u16,
    /// Last tail written to the device.
    published: u16,
    /// Oldest descriptor not yet seen done.
    clean: u16,
    batch: u16,
    counters: TxCounters,
}

impl TxRing {
    /// Allocates `len` descriptors and buffers; `batch` queued frames trigger a tail write
    /// without waiting for [`TxRing::publish`].
    pub fn new(platform: &impl Platform, len: u16, batch: u16) -> Result<Self, RingError> {
        let blocks = Blocks::new(platform, len, tx_desc::LEN, tx_desc::ADDR)?;
        Ok(Self {
            blocks,
            tail: 0,
            published: 0,
            clean: 0,
            batch: batch.clamp(1, len - 1),
            counters: TxCounters::default(),
        })
    }

    /// Its descriptor and buffer blocks.
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// Counters so far.
    pub fn counters(&self) -> TxCounters {
        self.counters
    }

    /// Descriptors filled and not yet seen done (published or not).
    pub fn in_flight(&self) -> u16 {
        (self.tail + self.blocks.len - self.clean) % self.blocks.len
    }

    /// Whether a descriptor is free, reclaiming finished ones if none is.
    pub fn has_room(&mut self) -> bool {
        if self.in_flight() >= self.blocks.len - 1 {
            self.reclaim();
        }
        self.in_flight() < self.blocks.len - 1
    }

    /// The free descriptor at the tail, reclaiming finished ones if none is free; `None`
    /// when every descriptor is in flight (the caller counts it with [`Self::note_full`]).
    /// The only way to write a transmit buffer.
    pub fn reserve(&mut self) -> Option<TxSlot<'_>> {
        self.has_room().then_some(TxSlot { ring: self })
    }

    /// Counts a refused request.
    pub fn note_full(&mut self) {
        self.counters.ring_full += 1;
    }

    /// Takes back, in order, the published descriptors the device has finished.
    pub fn reclaim(&mut self) {
        while self.clean != self.published {
            let off = usize::from(self.clean) * tx_desc::LEN + tx_desc::STATUS_WORD;
            if self.blocks.descs.read_u32(off) & tx_desc::STA_DD == 0 {
                break;
            }
            self.blocks.descs.write_u32(off, 0);
            self.clean = (self.clean + 1) % self.blocks.len;
        }
    }

    /// Lets `f` write a frame of up to `len` bytes into the buffer at the tail and queues
    /// it; frames longer than a buffer are cut and counted. A zero-length frame is not
    /// queued. Private: [`TxSlot::send`] calls it, and a slot exists only while the tail
    /// descriptor is free.
    fn send<R>(&mut self, regs: &impl Registers, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        debug_assert!(
            self.in_flight() < self.blocks.len - 1,
            "send without a free descriptor"
        );
        if len > BUFFER_LEN {
            self.counters.truncated += 1;
        }
        let len = len.min(BUFFER_LEN);
        let index = usize::from(self.tail);
        // SAFETY: only `TxSlot::send` calls this, and a `TxSlot` is made only by `reserve`
        // when a descriptor is free; it borrows the ring mutably, so the tail cannot move
        // in between. The tail descriptor is therefore neither in flight nor published, so
        // the device does not read its buffer while `f` writes it; `len <= BUFFER_LEN`
        // keeps the range inside that descriptor's buffer.
        let r = f(unsafe { self.blocks.buffers.bytes_mut(index * BUFFER_LEN, len) });
        if len == 0 {
            return r;
        }
        let off = index * tx_desc::LEN;
        self.blocks.descs.write_u32(
            off + tx_desc::LENGTH_WORD,
            len as u32 | tx_desc::CMD_EOP | tx_desc::CMD_IFCS | tx_desc::CMD_RS,
        );
        self.blocks.descs.write_u32(off + tx_desc::STATUS_WORD, 0);
        self.tail = (self.tail + 1) % self.blocks.len;
        self.counters.frames += 1;
        self.counters.bytes += len as u64;
        if (self.tail + self.blocks.len - self.published) % self.blocks.len >= self.batch {
            self.publish(regs);
        }
        r
    }

    /// Hands every queued descriptor to the device with one tail write.
    pub fn publish(&mut self, regs: &impl Registers) {
        if self.tail == self.published {
            return;
        }
        // Descriptor and buffer contents must be visible before the device may fetch them.
        fence(Ordering::Release);
        regs.write(regs::TDT, u32::from(self.tail));
        self.published = self.tail;
        self.counters.tail_writes += 1;
    }
}

/// A free transmit descriptor at the tail, from [`TxRing::reserve`].
#[derive(Debug)]
pub struct TxSlot<'a> {
    ring: &'a mut TxRing,
}

impl TxSlot<'_> {
    /// Lets `f` write a frame of up to `len` bytes into the slot's buffer and queues it;
    /// frames longer than a buffer are cut and counted; a zero-length frame is not queued.
    /// Publishes when a batch is complete.
    pub fn send<R>(self, regs: &impl Registers, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.ring.send(regs, len, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostPlatform, RecordingRegisters};

    extern crate std;
    use std::vec::Vec;

    /// Device side of a receive ring for these tests: completes descriptor `i` in place,
    /// through raw addresses as a device would.
    fn complete_rx(ring: &RxRing, i: u16, frame: &[u8], status: u32) {
        let desc = ring.blocks.base() + u64::from(i) * rx_desc::LEN as u64;
        let addr = ring.blocks.descs.read_u64(usize::from(i) * rx_desc::LEN);
        // SAFETY: HostPlatform identity-maps, so `addr` and `desc` are host addresses of
        // the ring's own buffer and descriptor; no Rust reference to them is alive.
        unsafe {
            core::ptr::copy_nonoverlapping(frame.as_ptr(), addr as *mut u8, frame.len());
            set_length(desc, frame.len() as u16);
            ((desc as usize + rx_desc::STATUS_WORD) as *mut u32).write_volatile(status);
        }
    }

    /// Writes a receive descriptor's length field.
    ///
    /// # Safety
    /// `desc` is the host address of a live receive descriptor no reference covers.
    unsafe fn set_length(desc: u64, len: u16) {
        // SAFETY: per the function's contract.
        unsafe { ((desc as usize + rx_desc::LENGTH) as *mut u16).write_volatile(len) }
    }

    #[test]
    fn ring_lengths_are_multiples_of_eight_within_bounds() {
        assert!(check_ring_len(8).is_ok());
        assert!(check_ring_len(256).is_ok());
        assert!(check_ring_len(4096).is_ok());
        for bad in [0, 4, 12, 4104, 65535] {
            assert_eq!(check_ring_len(bad), Err(RingError::BadLength(bad)));
        }
        assert!(RxRing::new(&HostPlatform, 100, 8).is_err());
    }

    #[test]
    fn descriptors_point_at_their_own_buffers() {
        let rx = RxRing::new(&HostPlatform, 16, 4).unwrap();
        let tx = TxRing::new(&HostPlatform, 16, 4).unwrap();
        for i in 0..16 {
            let a = rx.blocks.descs.read_u64(i * 16);
            assert_eq!(a, rx.blocks.buffers.phys(i * BUFFER_LEN));
            assert_eq!(
                tx.blocks.descs.read_u64(i * 16),
                tx.blocks.buffers.phys(i * BUFFER_LEN)
            );
        }
        assert_eq!(rx.blocks.bytes(), 256);
        assert_eq!(rx.tail(), 15, "all but one descriptor posted at start");
    }

    #[test]
    fn receive_takes_frames_in_order_and_reposts_in_batches() {
        let regs = RecordingRegisters::default();
        let mut rx = RxRing::new(&HostPlatform, 16, 4).unwrap();
        for i in 0..6u16 {
            let f: Vec<u8> = (0..60).map(|b| b as u8 ^ i as u8).collect();
            complete_rx(&rx, i, &f, rx_desc::STA_DD | rx_desc::STA_EOP);
        }
        for i in 0..6u16 {
            let frame = rx.next_frame(&regs).unwrap();
            assert_eq!((frame.index(), frame.len()), (i, 60));
            assert_eq!(frame.bytes()[1], 1 ^ i as u8);
            // Dropping the frame recycles its descriptor.
        }
        assert!(rx.next_frame(&regs).is_none());
        assert_eq!(regs.writes_to(regs::RDT), [3], "one write after 4 recycled");
        rx.flush(&regs);
        assert_eq!(regs.writes_to(regs::RDT), [3, 5]);
        rx.flush(&regs);
        assert_eq!(regs.writes_to(regs::RDT).len(), 2, "nothing new, no write");
        // Statuses were cleared: the same slots do not show up again.
        assert!(rx.next_frame(&regs).is_none());
        assert_eq!(rx.counters().frames, 6);
        assert_eq!(rx.counters().tail_writes, 2);
    }

    #[test]
    fn receive_wraps_around_the_ring() {
        let regs = RecordingRegisters::default();
        let mut rx = RxRing::new(&HostPlatform, 8, 1).unwrap();
        for round in 0..5u16 {
            for _ in 0..7 {
                let i = rx.next;
                complete_rx(
                    &rx,
                    i,
                    &[round as u8; 64],
                    rx_desc::STA_DD | rx_desc::STA_EOP,
                );
                let frame = rx.next_frame(&regs).unwrap();
                assert_eq!(frame.bytes()[0], round as u8);
            }
        }
        assert_eq!(rx.counters().frames, 35);
        assert_eq!(
            *regs.writes_to(regs::RDT).last().unwrap(),
            u32::from(rx.tail())
        );
    }

    #[test]
    fn bad_receive_descriptors_are_counted_and_recycled() {
        let regs = RecordingRegisters::default();
        let mut rx = RxRing::new(&HostPlatform, 16, 64).unwrap();
        let ok = rx_desc::STA_DD | rx_desc::STA_EOP;
        complete_rx(&rx, 0, &[1; 10], ok); // runt
        complete_rx(&rx, 1, &[2; 100], ok | (1 << 8)); // CRC error
        complete_rx(&rx, 2, &[3; 100], rx_desc::STA_DD); // first of three
        complete_rx(&rx, 3, &[4; 100], rx_desc::STA_DD);
        complete_rx(&rx, 4, &[5; 100], ok); // last of the oversize frame
        complete_rx(&rx, 5, &[6; 100], ok | (1 << 13)); // TCPE only: still good
        let frame = rx.next_frame(&regs).unwrap();
        assert_eq!((frame.index(), frame.len()), (5, 100));
        drop(frame);
        // A length beyond the buffer, written by a broken device.
        complete_rx(&rx, 6, &[7; 20], ok);
        // SAFETY: descriptor 6 of the live ring; the test plays the device.
        unsafe { set_length(rx.blocks.base() + 6 * 16, 4000) };
        assert!(rx.next_frame(&regs).is_none());
        let c = rx.counters();
        assert_eq!(
            (c.frames, c.runts, c.errors, c.oversize, c.device_errors),
            (1, 1, 1, 1, 1)
        );
        rx.flush(&regs);
        assert_eq!(
            regs.writes_to(regs::RDT),
            [6],
            "all seven back in one write"
        );
    }

    #[test]
    fn transmit_fills_publishes_in_batches_and_reclaims_in_order() {
        let regs = RecordingRegisters::default();
        let mut tx = TxRing::new(&HostPlatform, 8, 3).unwrap();
        for i in 0..7u8 {
            assert!(tx.has_room());
            tx.reserve().unwrap().send(&regs, 60, |b| b.fill(i));
        }
        assert!(!tx.has_room(), "n - 1 in flight");
        assert!(tx.reserve().is_none(), "a full ring gives no slot");
        assert_eq!(regs.writes_to(regs::TDT), [3, 6]);
        tx.publish(&regs);
        assert_eq!(regs.writes_to(regs::TDT), [3, 6, 7]);
        // Descriptor 2 holds frame 2 with EOP | IFCS | RS.
        let w = tx.blocks.descs.read_u32(2 * 16 + tx_desc::LENGTH_WORD);
        assert_eq!(w & 0xffff, 60);
        assert_eq!(w >> 24, 0b1011);
        // SAFETY: the buffer is not borrowed elsewhere.
        let frame = unsafe { tx.blocks.buffers.bytes(2 * BUFFER_LEN, 60) };
        assert_eq!(frame[59], 2);

        // The device finishes 0 and 2 but not 1: only 0 comes back.
        for i in [0usize, 2] {
            tx.blocks
                .descs
                .write_u32(i * 16 + tx_desc::STATUS_WORD, tx_desc::STA_DD);
        }
        tx.reclaim();
        assert_eq!(tx.in_flight(), 6);
        tx.blocks
            .descs
            .write_u32(16 + tx_desc::STATUS_WORD, tx_desc::STA_DD);
        assert!(tx.has_room());
        assert_eq!(tx.in_flight(), 6, "room left: no reclaim needed yet");
        tx.reclaim();
        assert_eq!(tx.in_flight(), 4);
        // Wrap: fill to the end and beyond.
        for _ in 0..3 {
            tx.reserve().unwrap().send(&regs, 100, |b| b.fill(9));
        }
        assert_eq!(tx.tail, 2);
        assert!(!tx.has_room());
    }

    #[test]
    fn unpublished_descriptors_are_never_reclaimed() {
        let regs = RecordingRegisters::default();
        let mut tx = TxRing::new(&HostPlatform, 8, 8).unwrap();
        tx.reserve().unwrap().send(&regs, 60, |b| b.fill(1));
        // A stale DD on an unpublished descriptor must not free it.
        tx.blocks
            .descs
            .write_u32(tx_desc::STATUS_WORD, tx_desc::STA_DD);
        tx.reclaim();
        assert_eq!(tx.in_flight(), 1);
        assert!(regs.writes_to(regs::TDT).is_empty());
    }

    #[test]
    fn oversized_and_empty_transmits() {
        let regs = RecordingRegisters::default();
        let mut tx = TxRing::new(&HostPlatform, 8, 1).unwrap();
        let n = tx.reserve().unwrap().send(&regs, 5000, |b| b.len());
        assert_eq!(n, BUFFER_LEN);
        assert_eq!(tx.counters().truncated, 1);
        let n = tx.reserve().unwrap().send(&regs, 0, |b| b.len());
        assert_eq!(n, 0);
        assert_eq!(tx.counters().frames, 1, "an empty frame is not queued");
        assert_eq!(tx.in_flight(), 1);
    }

    /// The device still reads every published, unfinished descriptor's buffer: a full ring
    /// refuses to hand out a slot, so no send can overwrite one, and the buffers keep
    /// their frames until the device reports them done.
    #[test]
    fn send_on_a_full_ring_is_refused() {
        let regs = RecordingRegisters::default();
        let mut tx = TxRing::new(&HostPlatform, 8, 1).unwrap();
        for i in 0..7u8 {
            tx.reserve().unwrap().send(&regs, 60, |b| b.fill(i));
        }
        assert_eq!(tx.in_flight(), 7);
        for _ in 0..3 {
            assert!(tx.reserve().is_none(), "full: no slot to send into");
        }
        for i in 0..7usize {
            // SAFETY: the buffers are not borrowed elsewhere; the test plays the device.
            let b = unsafe { tx.blocks.buffers.bytes(i * BUFFER_LEN, 60) };
            assert!(b.iter().all(|&x| usize::from(x) == i), "buffer {i} intact");
        }
        assert_eq!(tx.counters().frames, 7);
        // Once the device finishes the oldest, exactly one slot comes back.
        tx.blocks
            .descs
            .write_u32(tx_desc::STATUS_WORD, tx_desc::STA_DD);
        tx.reserve().unwrap().send(&regs, 60, |b| b.fill(7));
        assert!(tx.reserve().is_none());
    }

    #[test]
    fn a_received_frame_keeps_its_descriptor_until_dropped() {
        let regs = RecordingRegisters::default();
        let mut rx = RxRing::new(&HostPlatform, 8, 1).unwrap();
        complete_rx(&rx, 0, &[5; 60], rx_desc::STA_DD | rx_desc::STA_EOP);
        let frame = rx.next_frame(&regs).unwrap();
        assert_eq!(frame.bytes(), &[5; 60][..]);
        drop(frame);
        assert_eq!(regs.writes_to(regs::RDT), [0], "given back on drop");
        assert!(rx.next_frame(&regs).is_none());
    }
}
