//! Memory the relay writes once and reads much later: the reassembly pool's chunk slots.
//!
//! In a storm every chunk is written once, when its first copy arrives, and read once, when
//! its dump is emitted. Copied with ordinary stores, each chunk first reads its destination
//! lines from memory (read-for-ownership) and then pushes out of the cache what every
//! packet needs: the key index, the dump entries and the packet tables. Non-temporal stores
//! do neither. They are weakly ordered, so [`StreamedSlots`] fences before anything touches
//! memory it streamed to: a read fences whenever stores are pending, and a write fences when
//! its slot lies in the range of slots written since the last fence. The pool hands out
//! slots next-fit, so that range grows upwards and a write meets it only when the cursor
//! wraps or a slot is reused at once: fences are rare.
//!
//! Where SSE2 is not enabled (the kernel's soft-float target) the slots are plain memory
//! written with ordinary copies, and nothing needs a fence.
//!
//! The relay core's chunk pool takes any [`ChunkSlots`] store; this crate is the one that
//! streams, and holds the unsafe code that needs (the core has none). Plug it in with
//! [`netoops_core::relay::Relay::with_slots`]`(config, instance, `[`boxed`]`)`.
//!
//! The crate also holds [`prefetch`], which the netconsole tracker uses for history tails
//! (safe code cannot issue a prefetch): plug it in with
//! [`netoops_core::relay::Relay::set_prefetch`].

#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::Cell;
use netoops_core::reassembly::ChunkSlots;
use netoops_wire::DATA_LEN;

#[repr(C, align(64))]
struct Slot<const N: usize>([u8; N]);

/// A fixed number of `N`-byte slots, written with non-temporal stores where the CPU target
/// has them. Memory is reserved up front; a slot is touched the first time it is written.
pub struct StreamedSlots<const N: usize> {
    slots: Vec<Slot<N>>,
    capacity: usize,
    /// Every slot written with non-temporal stores since the last fence lies in
    /// `unfenced.0..unfenced.1`; empty when nothing is pending. A `Cell` so that reads,
    /// which take `&self`, can fence and clear it.
    unfenced: Cell<(usize, usize)>,
}

impl<const N: usize> StreamedSlots<N> {
    /// Reserves `capacity` slots; no allocation happens after this.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        const { assert!(N % 16 == 0, "slots are written in 16-byte pieces") };
        StreamedSlots {
            slots: Vec::with_capacity(capacity),
            capacity,
            unfenced: Cell::new((0, 0)),
        }
    }

    /// Slots reserved.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots written at least once: slot `len()` is the next one that may be written for
    /// the first time.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True before the first write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Stores `data` in slot `i`. Slots are first written in order: `i` must be below
    /// `len()`, or equal to it while below the capacity. False (nothing written) otherwise.
    pub fn put(&mut self, i: usize, data: &[u8; N]) -> bool {
        if i < self.slots.len() {
            self.stream(i, data);
            true
        } else if i == self.slots.len() && i < self.capacity {
            // First touch of this slot's pages; within the reserved capacity, so no
            // allocation and no move of the slots already written.
            self.slots.push(Slot(*data));
            true
        } else {
            false
        }
    }

    /// The contents of slot `i`, once every pending store has landed.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<&[u8; N]> {
        self.fence();
        self.slots.get(i).map(|s| &s.0)
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    fn stream(&mut self, i: usize, data: &[u8; N]) {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let (lo, hi) = self.unfenced.get();
        if (lo..hi).contains(&i) {
            self.fence();
        }
        let dst = self.slots[i].0.as_mut_ptr().cast::<__m128i>();
        let src = data.as_ptr().cast::<__m128i>();
        for k in 0..N / 16 {
            // SAFETY: `dst` points into a slot we hold `&mut` to, 64-byte aligned by `Slot`'s
            // repr, and N is a multiple of 16, so every target is an aligned 16-byte piece of
            // it; `src` reads 16 bytes inside `data` with an unaligned load. The slot joins
            // `unfenced` below, and every later access of it fences first.
            unsafe { _mm_stream_si128(dst.add(k), _mm_loadu_si128(src.add(k))) };
        }
        let (lo, hi) = self.unfenced.get();
        self.unfenced.set(if lo == hi {
            (i, i + 1)
        } else {
            (lo.min(i), hi.max(i + 1))
        });
    }

    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    fn stream(&mut self, i: usize, data: &[u8; N]) {
        self.slots[i].0.copy_from_slice(data);
    }

    /// Waits until every non-temporal store issued so far is globally visible, if any is
    /// pending; after it, the slots are ordinary memory again.
    fn fence(&self) {
        let (lo, hi) = self.unfenced.get();
        if lo == hi {
            return;
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        // SAFETY: SFENCE only orders stores; SSE2 (hence SSE) is enabled for this build.
        unsafe {
            core::arch::x86_64::_mm_sfence()
        };
        self.unfenced.set((0, 0));
    }
}

impl ChunkSlots for StreamedSlots<DATA_LEN> {
    fn capacity(&self) -> usize {
        StreamedSlots::capacity(self)
    }

    fn len(&self) -> usize {
        StreamedSlots::len(self)
    }

    fn put(&mut self, i: usize, data: &[u8; DATA_LEN]) -> bool {
        StreamedSlots::put(self, i, data)
    }

    fn get(&self, i: usize) -> Option<&[u8; DATA_LEN]> {
        StreamedSlots::get(self, i)
    }
}

/// A boxed store of `capacity` streamed chunk slots: a [`netoops_core::reassembly::NewSlots`].
#[must_use]
pub fn boxed(capacity: usize) -> Box<dyn ChunkSlots> {
    Box::new(StreamedSlots::<DATA_LEN>::with_capacity(capacity))
}

/// Asks the CPU for every cache line of `bytes` without waiting for them: a
/// [`netoops_core::netconsole::Prefetch`], for the netconsole history tail a datagram is about
/// to be appended to. `prefetcht0` needs no SSE state, so the soft-float kernel uses it too.
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = bytes.as_ptr() as usize;
        let mut line = start & !63;
        while line < start + bytes.len() {
            // SAFETY: a prefetch is a hint: it never faults, writes nothing and reads no
            // register but its address; `line` lies within a cache line of `bytes`.
            unsafe {
                core::arch::asm!("prefetcht0 [{}]", in(reg) line, options(nostack, preserves_flags, readonly));
            }
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    netoops_core::netconsole::history::read_lines(bytes);
}

impl<const N: usize> Drop for StreamedSlots<N> {
    /// The allocator may hand the memory out again at once: let the stores land first.
    fn drop(&mut self) {
        self.fence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8) -> [u8; 64] {
        core::array::from_fn(|k| seed.wrapping_mul(31).wrapping_add(k as u8))
    }

    #[test]
    fn slots_are_first_written_in_order_and_never_beyond_capacity() {
        let mut s = StreamedSlots::<64>::with_capacity(3);
        assert!(s.is_empty());
        assert!(!s.put(1, &chunk(1)), "slot 1 before slot 0");
        assert!(s.put(0, &chunk(0)));
        assert!(s.put(1, &chunk(1)));
        assert!(s.put(2, &chunk(2)));
        assert!(!s.put(3, &chunk(3)), "beyond capacity");
        assert_eq!((s.len(), s.capacity()), (3, 3));
        assert_eq!(s.get(3), None);
        for i in 0..3 {
            assert_eq!(s.get(i), Some(&chunk(i as u8)));
        }
    }

    #[test]
    fn rewrites_read_back_the_newest_contents() {
        // Rewrites of the same slot and of slots on either side of the unfenced range, with
        // reads in between and without: each read sees the last write.
        let mut s = StreamedSlots::<64>::with_capacity(8);
        for i in 0..8 {
            assert!(s.put(i, &[0; 64]));
        }
        for round in 0..100u8 {
            let i = usize::from(round % 8);
            assert!(s.put(i, &chunk(round)));
            assert!(s.put(7 - i, &chunk(round ^ 0x55)));
            assert!(s.put(i, &chunk(round.wrapping_add(1))));
            if round % 3 == 0 {
                assert_eq!(s.get(i), Some(&chunk(round.wrapping_add(1))));
            }
        }
        assert_eq!(s.get(3), Some(&chunk(100)), "round 99 wrote slot 3 last");
    }

    #[test]
    fn the_chunk_store_keeps_the_core_contract() {
        netoops_core::reassembly::slots::check_contract(boxed);
    }

    #[test]
    fn a_relay_runs_on_streamed_slots() {
        let config = netoops_core::config::Config {
            upstreams: alloc::vec!["127.0.0.1:2005".parse().unwrap()],
            ..Default::default()
        };
        assert!(netoops_core::relay::Relay::with_slots(config, 1, boxed).is_ok());
    }

    #[test]
    fn slots_are_cache_line_aligned() {
        let mut s = StreamedSlots::<1024>::with_capacity(4);
        for i in 0..4 {
            assert!(s.put(i, &[i as u8; 1024]));
            let p = s.get(i).map(|b| b.as_ptr() as usize);
            assert_eq!(p.map(|p| p % 64), Some(0));
        }
    }
}
