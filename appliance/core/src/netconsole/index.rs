//! [`SourceIndex`]: which source slot an address has, in a table small enough to stay in the
//! cache.
//!
//! A general hash map stores each key beside its value, so a lookup touches the map's control
//! bytes and a bucket, two lines far from the source state it leads to: two cache misses per
//! datagram with a thousand senders. Here a slot is 8 bytes (32 bits of the key's hash and the
//! source's index), 8 to a cache line, and the key itself is compared in the source's own hot
//! line, which the datagram needs next anyway. Open addressing with linear probing; removal
//! shifts the following entries back, so no tombstones pile up as sources are evicted. The
//! hash is seeded per process, so senders cannot pick addresses that collide.

use alloc::vec;
use alloc::vec::Vec;
use core::hash::BuildHasher;

/// An empty slot.
const EMPTY: u64 = 0;

/// Source slots by address hash (module doc).
#[derive(Debug)]
pub struct SourceIndex {
    slots: Vec<u64>,
    mask: usize,
    hasher: foldhash::fast::RandomState,
}

impl SourceIndex {
    /// An index for up to `max` sources, at most half full.
    pub fn new(max: usize) -> Self {
        let cap = (2 * max).next_power_of_two().max(16);
        SourceIndex {
            slots: vec![EMPTY; cap],
            mask: cap - 1,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The 32-bit hash the index files a key under.
    pub fn hash<K: core::hash::Hash>(&self, key: &K) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    fn slot(hash: u32, idx: u32) -> u64 {
        u64::from(hash) << 32 | u64::from(idx + 1)
    }

    fn home(&self, slot: u64) -> usize {
        (slot >> 32) as usize & self.mask
    }

    /// The source filed under `hash` for which `is` (a comparison of the full key) holds.
    pub fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if (s >> 32) as u32 == hash {
                let idx = (s as u32) - 1;
                if is(idx) {
                    return Some(idx);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Files source `idx` under `hash`. The caller keeps at most `max` sources filed.
    pub fn insert(&mut self, hash: u32, idx: u32) {
        let mut i = hash as usize & self.mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Self::slot(hash, idx);
    }

    /// Removes source `idx` filed under `hash`, if it is there.
    pub fn remove(&mut self, hash: u32, idx: u32) {
        let want = Self::slot(hash, idx);
        let mut i = hash as usize & self.mask;
        loop {
            match self.slots[i] {
                EMPTY => return,
                s if s == want => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        // Backward shift: move later entries of the run into the hole when their home slot
        // does not lie (cyclically) between the hole and them.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let home = self.home(s);
            let between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !between {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
    }

    /// Sources filed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|&&s| s != EMPTY).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Inserts and removes against a model, with hashes forced into few home slots so
        /// runs wrap and shift: every filed source is found, every removed one is not.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0u32..24, 0u32..4), 1..300)) {
            let mut index = SourceIndex::new(16);
            let mut model: Vec<(u32, u32)> = Vec::new();
            for (insert, idx, h) in ops {
                // Hashes near the table's end wrap around it.
                let hash = (h * 7 + 29) & 31 | 0xabc0_0000;
                let filed = model.iter().any(|&(i, _)| i == idx);
                if insert && !filed && model.len() < 16 {
                    index.insert(hash, idx);
                    model.push((idx, hash));
                } else if !insert && filed {
                    let k = model.iter().position(|&(i, _)| i == idx).unwrap();
                    let (_, hash) = model.remove(k);
                    index.remove(hash, idx);
                }
                prop_assert_eq!(index.len(), model.len());
                for &(i, hash) in &model {
                    prop_assert_eq!(index.find(hash, |x| x == i), Some(i));
                }
                prop_assert_eq!(index.find(hash, |x| x == 99), None);
            }
        }
    }
}
