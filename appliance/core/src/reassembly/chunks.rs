//! Chunk storage: a fixed pool of 1 KiB slots, and per dump a table from packet_no to slot.
//!
//! The sender announces packet_count in every datagram, so a dump reserves its table (one
//! `u32` per packet) when it starts: finding a chunk is then one array access, with no hashing
//! on the per-packet path. Tables are carved from one index array by a bump pointer; when the
//! pointer reaches the end, live tables slide down (compaction moves 4-byte indices, never
//! chunks). Slots come from a free list, and slots never used yet from the pool's reserved
//! capacity: the pool is allocated once but filled (and, in the kernel, touched) only as
//! chunks arrive, so a large budget costs nothing at boot.
//!
//! Each slot also keeps a 64-bit XXH3 fingerprint of its 1024 bytes, so a later round's copy is
//! recognised (or found to differ, meaning a new dump under the same identity) by hashing the
//! received bytes, which are hot in cache, instead of reading the stored chunk back from memory.

use alloc::vec;
use alloc::vec::Vec;
use netoops_wire::DATA_LEN;

const NO_SLOT: u32 = u32::MAX;

/// The fingerprint of a chunk's 1024 bytes.
pub(crate) fn fingerprint(data: &[u8; DATA_LEN]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// Bytes a store with `slots` slots, `dumps` tables and `max_packets` per table allocates.
pub(crate) fn store_bytes(slots: usize, dumps: usize, max_packets: usize) -> usize {
    slots * (DATA_LEN + 2 + 8 + 4) + table_len(slots, max_packets) * 4 + dumps * (4 + 4 + 4)
}

/// Index array length: twice the slots (dumps reserve whole tables before their packets
/// arrive), and never less than one largest dump.
fn table_len(slots: usize, max_packets: usize) -> usize {
    2 * slots + max_packets
}

/// Slot storage for received chunks.
pub(crate) struct ChunkStore {
    /// Slots in use or freed; grows up to `slots` within its reserved capacity.
    data: Vec<[u8; DATA_LEN]>,
    slots: usize,
    /// Length of each slot's text once the sender's zero padding is cut off.
    text_len: Vec<u16>,
    fingerprint: Vec<u64>,
    free: Vec<u32>,
    /// Slot of each (table base + packet_no), or `NO_SLOT`.
    table: Vec<u32>,
    /// Per dump entry: where its table starts and how long it is (0 = no table).
    base: Vec<u32>,
    len: Vec<u32>,
    /// Next free position in `table`.
    top: usize,
    /// Sum of live table lengths.
    live: usize,
    /// Scratch for compaction, allocated once.
    order: Vec<u32>,
}

impl ChunkStore {
    pub(crate) fn new(slots: usize, dumps: usize, max_packets: usize) -> Self {
        ChunkStore {
            data: Vec::with_capacity(slots),
            slots,
            text_len: vec![0; slots],
            fingerprint: vec![0; slots],
            free: Vec::with_capacity(slots),
            table: vec![NO_SLOT; table_len(slots, max_packets)],
            base: vec![0; dumps],
            len: vec![0; dumps],
            top: 0,
            live: 0,
            order: Vec::with_capacity(dumps),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots
    }

    pub(crate) fn used(&self) -> usize {
        self.data.len() - self.free.len()
    }

    pub(crate) fn has_free_slot(&self) -> bool {
        !self.free.is_empty() || self.data.len() < self.slots
    }

    /// Whether a table of `count` entries can be reserved now.
    pub(crate) fn has_table_room(&self, count: u32) -> bool {
        self.table.len() - self.live >= count as usize
    }

    /// Reserves the packet table of `entry`. The caller checked [`Self::has_table_room`].
    pub(crate) fn reserve(&mut self, entry: u32, count: u32) -> bool {
        let n = count as usize;
        if !self.has_table_room(count) {
            return false;
        }
        if self.top + n > self.table.len() {
            self.compact();
        }
        let e = entry as usize;
        self.base[e] = self.top as u32;
        self.len[e] = count;
        self.table[self.top..self.top + n].fill(NO_SLOT);
        self.top += n;
        self.live += n;
        true
    }

    /// Slides every live table down to the start of the index array.
    fn compact(&mut self) {
        self.order.clear();
        self.order
            .extend((0..self.len.len() as u32).filter(|&e| self.len[e as usize] > 0));
        let base = &self.base;
        self.order.sort_unstable_by_key(|&e| base[e as usize]);
        let mut top = 0;
        for &e in &self.order {
            let (b, n) = (
                self.base[e as usize] as usize,
                self.len[e as usize] as usize,
            );
            self.table.copy_within(b..b + n, top);
            self.base[e as usize] = top as u32;
            top += n;
        }
        self.top = top;
    }

    fn position(&self, entry: u32, packet_no: u32) -> Option<usize> {
        let e = entry as usize;
        (packet_no < self.len[e]).then(|| (self.base[e] + packet_no) as usize)
    }

    fn slot(&self, entry: u32, packet_no: u32) -> Option<usize> {
        let s = self.table[self.position(entry, packet_no)?];
        (s != NO_SLOT).then_some(s as usize)
    }

    /// Stores `data` for (entry, packet_no) in a free slot; false when none is free.
    pub(crate) fn insert(
        &mut self,
        entry: u32,
        packet_no: u32,
        data: &[u8; DATA_LEN],
        fingerprint: u64,
    ) -> bool {
        let Some(pos) = self.position(entry, packet_no) else {
            return false;
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.data[slot as usize].copy_from_slice(data);
                slot
            }
            None if self.data.len() < self.slots => {
                // Within the reserved capacity: no allocation.
                self.data.push(*data);
                (self.data.len() - 1) as u32
            }
            None => return false,
        };
        let s = slot as usize;
        self.text_len[s] = netoops_wire::text::chunk_text(data).len() as u16;
        self.fingerprint[s] = fingerprint;
        self.table[pos] = slot;
        true
    }

    /// The fingerprint of the chunk held for (entry, packet_no).
    pub(crate) fn fingerprint_of(&self, entry: u32, packet_no: u32) -> Option<u64> {
        self.slot(entry, packet_no).map(|s| self.fingerprint[s])
    }

    /// The text (padding removed) held for (entry, packet_no).
    pub(crate) fn text(&self, entry: u32, packet_no: u32) -> Option<&[u8]> {
        self.slot(entry, packet_no)
            .map(|s| &self.data[s][..usize::from(self.text_len[s])])
    }

    /// Frees every chunk of `entry` and its table.
    pub(crate) fn release(&mut self, entry: u32) {
        let e = entry as usize;
        let (b, n) = (self.base[e] as usize, self.len[e] as usize);
        for pos in b..b + n {
            let s = self.table[pos];
            if s != NO_SLOT {
                self.free.push(s);
                self.table[pos] = NO_SLOT;
            }
        }
        self.len[e] = 0;
        self.live -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_padding_is_cut() {
        let mut store = ChunkStore::new(2, 4, 16);
        let mut a = [0u8; DATA_LEN];
        a[..5].copy_from_slice(b"hello");
        assert!(store.reserve(0, 8) && store.reserve(1, 1) && store.reserve(3, 2));
        assert!(store.insert(0, 7, &a, fingerprint(&a)));
        assert!(store.insert(1, 0, &[b'x'; DATA_LEN], 1));
        assert!(!store.has_free_slot());
        assert!(!store.insert(3, 0, &a, 2));
        assert_eq!(store.text(0, 7), Some(&b"hello"[..]));
        assert_eq!(store.fingerprint_of(0, 7), Some(fingerprint(&a)));
        assert_eq!(store.text(0, 8), None);
        assert_eq!(store.text(1, 0).map(<[u8]>::len), Some(DATA_LEN));
        store.release(0);
        assert_eq!(store.text(0, 7), None);
        assert_eq!(store.used(), 1);
        assert!(store.insert(3, 1, &[0; DATA_LEN], 3));
        assert_eq!(store.text(3, 1), Some(&b""[..]));
    }

    #[test]
    fn tables_are_compacted_when_the_bump_pointer_reaches_the_end() {
        // 4 slots -> 8 + 16 = 24 table entries.
        let mut store = ChunkStore::new(4, 4, 16);
        assert!(store.reserve(0, 10));
        assert!(store.reserve(1, 10));
        assert!(store.insert(1, 9, &[b'b'; DATA_LEN], 0));
        store.release(0);
        assert!(!store.has_table_room(15));
        assert!(store.has_table_room(14));
        // Only 4 entries left at the top: this reservation compacts table 1 down first.
        assert!(store.reserve(2, 14));
        assert_eq!(store.text(1, 9).map(<[u8]>::len), Some(DATA_LEN));
        assert!(store.insert(2, 13, &[b'c'; DATA_LEN], 0));
        assert_eq!(store.text(2, 13).map(|t| t[0]), Some(b'c'));
        assert!(!store.reserve(3, 1));
    }
}
