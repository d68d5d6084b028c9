//! The chunk pool's memory, behind a boundary of its own.
//!
//! The reassembler keeps every received chunk in one of a fixed number of
//! [`DATA_LEN`]-byte slots ([`ChunkSlots`]). The default, [`PlainSlots`], is ordinary safe
//! memory. A platform that can do better plugs in its own store through
//! [`super::Reassembler::with_slots`] (and [`crate::relay::Relay::with_slots`]): the hosted
//! relay and the benches use `netoops-streamed-slots`, which writes chunks with non-temporal
//! stores so a storm's chunks, written once and read once, do not evict the tables every
//! packet reads. That crate holds the unsafe code such stores need; this crate has none.
//!
//! The kernel keeps [`PlainSlots`]: its soft-float target has no SSE2, so it has no
//! non-temporal stores to use.

use alloc::boxed::Box;
use alloc::vec::Vec;
use netoops_wire::DATA_LEN;

/// A fixed number of [`DATA_LEN`]-byte chunk slots, reserved when built; nothing may
/// allocate after that.
///
/// Contract, which the reassembler relies on and [`PlainSlots`] shows:
/// - slots are first written in order: `put(i, ..)` succeeds for `i < len()`, and for
///   `i == len()` while `i < capacity()` (then `len()` grows by one); anything else
///   returns false and writes nothing;
/// - `get(i)` returns the bytes last `put` in slot `i`, `None` for `i >= len()`.
pub trait ChunkSlots: Send {
    /// Slots reserved.
    fn capacity(&self) -> usize;
    /// Slots written at least once.
    fn len(&self) -> usize;
    /// True before the first write.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Stores `data` in slot `i` (see the trait's contract); false when `i` is out of order.
    fn put(&mut self, i: usize, data: &[u8; DATA_LEN]) -> bool;
    /// The contents of slot `i`.
    fn get(&self, i: usize) -> Option<&[u8; DATA_LEN]>;
}

/// Builds a chunk store of `capacity` slots.
pub type NewSlots = fn(capacity: usize) -> Box<dyn ChunkSlots>;

/// The default store: slots in ordinary memory, written with ordinary copies.
pub struct PlainSlots {
    slots: Vec<[u8; DATA_LEN]>,
    capacity: usize,
}

impl PlainSlots {
    /// Reserves `capacity` slots; the memory is touched only as slots are first written.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        PlainSlots {
            slots: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// A boxed store of `capacity` slots: the default [`NewSlots`].
    #[must_use]
    pub fn boxed(capacity: usize) -> Box<dyn ChunkSlots> {
        Box::new(PlainSlots::with_capacity(capacity))
    }
}

impl ChunkSlots for PlainSlots {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn put(&mut self, i: usize, data: &[u8; DATA_LEN]) -> bool {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.copy_from_slice(data);
            true
        } else if i == self.slots.len() && i < self.capacity {
            // Within the reserved capacity: no allocation, no move.
            self.slots.push(*data);
            true
        } else {
            false
        }
    }

    fn get(&self, i: usize) -> Option<&[u8; DATA_LEN]> {
        self.slots.get(i)
    }
}

/// Checks a [`ChunkSlots`] implementation against the trait's contract (for the tests of
/// this crate and of every store plugged in). Panics on a violation.
pub fn check_contract(new: NewSlots) {
    let chunk = |seed: u8| -> [u8; DATA_LEN] {
        core::array::from_fn(|k| seed.wrapping_mul(31).wrapping_add(k as u8))
    };
    let mut s = new(3);
    assert!(s.is_empty());
    assert_eq!(s.capacity(), 3);
    assert!(!s.put(1, &chunk(1)), "slot 1 before slot 0");
    assert!(s.put(0, &chunk(0)));
    assert!(s.put(1, &chunk(1)));
    assert!(s.put(2, &chunk(2)));
    assert!(!s.put(3, &chunk(3)), "beyond capacity");
    assert_eq!(s.len(), 3);
    assert_eq!(s.get(3), None);
    for i in 0..3 {
        assert_eq!(s.get(i), Some(&chunk(i as u8)));
    }
    for round in 0..50u8 {
        let i = usize::from(round % 3);
        assert!(s.put(i, &chunk(round)));
        assert!(s.put(2 - i, &chunk(round ^ 0x55)));
        assert!(s.put(i, &chunk(round.wrapping_add(1))));
        assert_eq!(s.get(i), Some(&chunk(round.wrapping_add(1))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_slots_keep_the_contract() {
        check_contract(PlainSlots::boxed);
    }
}
