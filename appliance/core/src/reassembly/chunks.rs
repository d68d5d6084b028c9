//! Chunk storage: a fixed pool of 1 KiB slots, and per dump a table from packet_no to what is
//! held for it.
//!
//! The sender announces packet_count in every datagram, so a dump reserves its table once it
//! has a second packet: finding a chunk is then one array access, with no hashing on the
//! per-packet path. Until then (a one-packet claim, which is all a spoofed datagram makes) it
//! holds a one-entry table for the packet it has, so a claim of 4,096 packets costs one entry,
//! not 4,096: claims cannot exhaust the index array.
//! Tables are carved from one index array by a bump pointer; when the pointer reaches the end,
//! live tables slide down (compaction moves table entries, never chunks).
//!
//! A table entry holds the chunk's slot, its text length and a 64-bit fingerprint of its 1024
//! bytes, so a later round's copy is recognised (or found to differ, meaning a new dump under
//! the same identity) by hashing the received bytes and reading one table entry: the stored
//! chunk is never read back for it.
//!
//! Slots are handed out next-fit from a two-level free bitmap: consecutive chunks land in
//! consecutive slots even after a storm's dumps were freed in any order, which keeps the
//! copies sequential in memory (a LIFO free list scattered them 1 MiB apart, a TLB miss each).
//! Slots never used yet come from the pool's reserved capacity: the pool is allocated once
//! but filled (and, in the kernel, touched) only as chunks arrive, so a large budget costs
//! nothing at boot.

use super::slots::{ChunkSlots, NewSlots};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use netoops_wire::DATA_LEN;

const NO_SLOT: u32 = u32::MAX;

/// The fingerprint of a chunk's 1024 bytes: foldhash's quality variant, which hashes 64
/// bytes per four 64x128-bit multiplies with no SIMD. Every byte of every round goes through
/// it, and it measured faster than XXH3 on the host (XXH3 there uses SSE2) and needs no SSE,
/// which the kernel target lacks. Fingerprints never leave the process, so the fixed seed
/// only makes runs reproducible; a sender able to aim a collision could as well forge the
/// datagrams themselves (netoops is unauthenticated UDP).
pub(crate) fn fingerprint(data: &[u8; DATA_LEN]) -> u64 {
    use core::hash::BuildHasher;
    const SEED: u64 = 0x6e65_746f_6f70_7321;
    foldhash::quality::FixedState::with_seed(SEED).hash_one(data.as_slice())
}

/// What a dump's table holds for one packet_no.
#[derive(Clone, Copy)]
struct Held {
    slot: u32,
    text_len: u16,
    fingerprint: u64,
}

impl Held {
    const NONE: Held = Held {
        slot: NO_SLOT,
        text_len: 0,
        fingerprint: 0,
    };
}

/// Where one dump's table sits in the index array: entries for packets `first..first + len`.
#[derive(Clone, Copy, Default)]
struct Span {
    base: u32,
    len: u32,
    first: u32,
}

/// Bytes a store with `slots` slots, `dumps` tables and `max_packets` per table allocates
/// (its free-slot bitmaps, index tables and compaction scratch included).
pub(crate) fn store_bytes(slots: usize, dumps: usize, max_packets: usize) -> usize {
    let words = slots.div_ceil(64);
    slots * DATA_LEN
        + (words + words.div_ceil(64)) * 8
        + table_len(slots, max_packets) * core::mem::size_of::<Held>()
        + dumps * (core::mem::size_of::<Span>() + core::mem::size_of::<u32>())
}

/// Index array length: twice the slots (dumps reserve whole tables before their packets
/// arrive), and never less than one largest dump.
fn table_len(slots: usize, max_packets: usize) -> usize {
    2 * slots + max_packets
}

/// Free slots as a bitmap (bit set = free) with a summary word per 64 words, searched
/// next-fit from a cursor.
struct FreeSlots {
    bits: Vec<u64>,
    summary: Vec<u64>,
    slots: usize,
    free: usize,
    cursor: usize,
}

impl FreeSlots {
    fn new(slots: usize) -> Self {
        let words = slots.div_ceil(64);
        let mut bits = vec![u64::MAX; words];
        if slots % 64 != 0 {
            if let Some(last) = bits.last_mut() {
                *last = (1u64 << (slots % 64)) - 1;
            }
        }
        let mut summary = vec![u64::MAX; words.div_ceil(64)];
        if words % 64 != 0 {
            if let Some(last) = summary.last_mut() {
                *last = (1u64 << (words % 64)) - 1;
            }
        }
        FreeSlots {
            bits,
            summary,
            slots,
            free: slots,
            cursor: 0,
        }
    }

    /// Takes the first free slot at or after the cursor, wrapping around.
    fn take(&mut self) -> Option<usize> {
        if self.free == 0 {
            return None;
        }
        let start = self.cursor.min(self.slots - 1);
        let w = start / 64;
        let here = self.bits[w] & (u64::MAX << (start % 64));
        let word = if here != 0 {
            w
        } else {
            self.next_word(w + 1)
                .or_else(|| self.next_word(0))
                .unwrap_or(w)
        };
        let bit = self.bits[word].trailing_zeros() as usize;
        if bit == 64 {
            return None;
        }
        self.bits[word] &= !(1u64 << bit);
        if self.bits[word] == 0 {
            self.summary[word / 64] &= !(1u64 << (word % 64));
        }
        self.free -= 1;
        let slot = word * 64 + bit;
        self.cursor = slot + 1;
        Some(slot)
    }

    /// The first word at or after `from` with a free slot.
    fn next_word(&self, from: usize) -> Option<usize> {
        let mut s = from / 64;
        let mut mask = u64::MAX << (from % 64);
        while s < self.summary.len() {
            let hits = self.summary[s] & mask;
            if hits != 0 {
                return Some(s * 64 + hits.trailing_zeros() as usize);
            }
            s += 1;
            mask = u64::MAX;
        }
        None
    }

    fn put(&mut self, slot: usize) {
        let word = slot / 64;
        self.bits[word] |= 1u64 << (slot % 64);
        self.summary[word / 64] |= 1u64 << (word % 64);
        self.free += 1;
    }
}

/// Slot storage for received chunks.
pub(crate) struct ChunkStore {
    /// The chunks, in the store the platform plugged in ([`super::slots`]): written once
    /// and read once, at emission, so a store may send them around the cache rather than
    /// evict the tables every packet reads.
    data: Box<dyn ChunkSlots>,
    free: FreeSlots,
    /// What is held for each (table base + packet_no). Its capacity is the index array's
    /// size; its length grows to the highest position reserved so far.
    table: Vec<Held>,
    /// Per dump entry: where its table starts and how long it is (0 = no table), side by
    /// side so a lookup reads one cache line for both.
    tables: Vec<Span>,
    /// Next free position in `table`.
    top: usize,
    /// Sum of live table lengths.
    live: usize,
    /// Scratch for compaction, allocated once.
    order: Vec<u32>,
}

/// Heap a chunk store takes beyond [`store_bytes`], which the budget counts: the boxed slot
/// store's own struct (a vector and a length or two, for every store we have; the slots'
/// memory is in the budget).
pub(crate) const BOOKKEEPING_BYTES: usize = 64;

impl ChunkStore {
    pub(crate) fn new(slots: usize, dumps: usize, max_packets: usize, new_slots: NewSlots) -> Self {
        ChunkStore {
            data: new_slots(slots),
            free: FreeSlots::new(slots),
            table: Vec::with_capacity(table_len(slots, max_packets)),
            tables: vec![Span::default(); dumps],
            top: 0,
            live: 0,
            order: Vec::with_capacity(dumps),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.free.slots
    }

    pub(crate) fn used(&self) -> usize {
        self.free.slots - self.free.free
    }

    pub(crate) fn has_free_slot(&self) -> bool {
        self.free.free > 0
    }

    /// Whether a table of `count` entries can be reserved now.
    pub(crate) fn has_table_room(&self, count: u32) -> bool {
        self.table.capacity() - self.live >= count as usize
    }

    /// Reserves the packet table of `entry` (dumps reserve claims and grow them).
    #[cfg(test)]
    pub(crate) fn reserve(&mut self, entry: u32, count: u32) -> bool {
        self.reserve_from(entry, 0, count)
    }

    /// Reserves a one-entry table for packet `packet_no` of a new dump (a claim).
    pub(crate) fn reserve_claim(&mut self, entry: u32, packet_no: u32) -> bool {
        self.reserve_from(entry, packet_no, 1)
    }

    /// Replaces a claim's one-entry table by a whole table of `count` entries, keeping what
    /// it holds; false (and nothing changed) when there is no room.
    pub(crate) fn grow(&mut self, entry: u32, count: u32) -> bool {
        let e = entry as usize;
        let old = self.tables[e];
        if old.first == 0 && old.len >= count {
            return true;
        }
        debug_assert!(old.len <= 1, "only claims grow");
        let held = if old.len == 1 {
            self.table[old.base as usize]
        } else {
            Held::NONE
        };
        // Handed back first, so the room check counts it and compaction drops it.
        self.tables[e].len = 0;
        self.live -= old.len as usize;
        if !self.reserve_from(entry, 0, count) {
            self.tables[e] = old;
            self.live += old.len as usize;
            return false;
        }
        if old.len == 1 {
            if let Some(pos) = self.position(entry, old.first) {
                self.table[pos] = held;
            }
        }
        true
    }

    fn reserve_from(&mut self, entry: u32, first: u32, count: u32) -> bool {
        let n = count as usize;
        if !self.has_table_room(count) {
            return false;
        }
        if self.top + n > self.table.capacity() {
            self.compact();
        }
        let e = entry as usize;
        self.tables[e] = Span {
            base: self.top as u32,
            len: count,
            first,
        };
        // The index array is filled as the bump pointer first reaches each position (within
        // its reserved capacity): at boot it costs nothing, and it never reallocates.
        if self.table.len() < self.top + n {
            self.table.resize(self.top + n, Held::NONE);
        }
        self.table[self.top..self.top + n].fill(Held::NONE);
        self.top += n;
        self.live += n;
        true
    }

    /// Slides every live table down to the start of the index array.
    fn compact(&mut self) {
        self.order.clear();
        self.order
            .extend((0..self.tables.len() as u32).filter(|&e| self.tables[e as usize].len > 0));
        let tables = &self.tables;
        self.order
            .sort_unstable_by_key(|&e| tables[e as usize].base);
        let mut top = 0;
        for &e in &self.order {
            let span = &mut self.tables[e as usize];
            let (b, n) = (span.base as usize, span.len as usize);
            self.table.copy_within(b..b + n, top);
            span.base = top as u32;
            top += n;
        }
        self.top = top;
    }

    fn position(&self, entry: u32, packet_no: u32) -> Option<usize> {
        let e = entry as usize;
        let span = self.tables[e];
        let i = packet_no.wrapping_sub(span.first);
        (i < span.len).then(|| (span.base + i) as usize)
    }

    fn held(&self, entry: u32, packet_no: u32) -> Option<&Held> {
        let h = &self.table[self.position(entry, packet_no)?];
        (h.slot != NO_SLOT).then_some(h)
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
        let Some(slot) = self.free.take() else {
            return false;
        };
        // Slots are taken in order the first time round, so a slot never written is the
        // next one, within the reserved capacity: no allocation.
        if !self.data.put(slot, data) {
            debug_assert!(false, "slot {slot} beyond the {} written", self.data.len());
            self.free.put(slot);
            return false;
        }
        self.table[pos] = Held {
            slot: slot as u32,
            text_len: netoops_wire::text::chunk_text(data).len() as u16,
            fingerprint,
        };
        true
    }

    /// The fingerprint of the chunk held for (entry, packet_no).
    pub(crate) fn fingerprint_of(&self, entry: u32, packet_no: u32) -> Option<u64> {
        self.held(entry, packet_no).map(|h| h.fingerprint)
    }

    /// The text (padding removed) held for (entry, packet_no).
    pub(crate) fn text(&self, entry: u32, packet_no: u32) -> Option<&[u8]> {
        self.held(entry, packet_no).and_then(|h| {
            self.data
                .get(h.slot as usize)?
                .get(..usize::from(h.text_len))
        })
    }

    /// Frees every chunk of `entry` and its table.
    pub(crate) fn release(&mut self, entry: u32) {
        let e = entry as usize;
        let (b, n) = (self.tables[e].base as usize, self.tables[e].len as usize);
        for pos in b..b + n {
            let s = self.table[pos].slot;
            if s != NO_SLOT {
                self.free.put(s as usize);
                self.table[pos] = Held::NONE;
            }
        }
        self.tables[e].len = 0;
        self.live -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::slots::PlainSlots;

    #[test]
    fn slots_are_reused_and_padding_is_cut() {
        let mut store = ChunkStore::new(2, 4, 16, PlainSlots::boxed);
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
    fn slots_are_handed_out_next_fit_in_address_order() {
        // 4100 slots: more than one summary word (64 x 64 slots) and a partial last word.
        let n = 4100;
        let mut free = FreeSlots::new(n);
        assert_eq!(
            (0..n).map(|_| free.take()).collect::<Vec<_>>(),
            (0..n).map(Some).collect::<Vec<_>>()
        );
        assert_eq!(free.take(), None);
        // Freed in a scattered order, as a storm's interleaved dumps free them.
        let freed: Vec<usize> = (0..n).filter(|s| s % 7 == 3 || s % 64 == 0).collect();
        for &s in freed.iter().rev() {
            free.put(s);
        }
        assert_eq!(free.free, freed.len());
        // The cursor is at the end, so the search wraps and then walks up in address order.
        let taken: Vec<usize> = (0..freed.len()).filter_map(|_| free.take()).collect();
        assert_eq!(taken, freed);
        assert_eq!(free.take(), None);
        // From a cursor in the middle: the slots above it first, then the ones below.
        free.put(10);
        free.put(4000);
        free.put(2000);
        free.cursor = 1500;
        assert_eq!(
            (free.take(), free.take(), free.take(), free.take()),
            (Some(2000), Some(4000), Some(10), None)
        );
    }

    #[test]
    fn a_claim_holds_one_entry_until_it_grows_into_a_whole_table() {
        // 4 slots -> 8 + 16 = 24 table entries.
        let mut store = ChunkStore::new(4, 8, 16, PlainSlots::boxed);
        for e in 0..6 {
            assert!(store.reserve_claim(e, 15));
        }
        assert!(store.insert(0, 15, &[b'a'; DATA_LEN], 9));
        assert_eq!(store.fingerprint_of(0, 15), Some(9));
        assert_eq!(store.text(0, 14), None);
        assert!(
            !store.insert(0, 3, &[b'b'; DATA_LEN], 1),
            "outside its one entry"
        );
        // 18 left: a whole table of 16 fits, keeping the chunk held.
        assert!(store.has_table_room(16));
        assert!(store.grow(0, 16));
        assert_eq!(store.fingerprint_of(0, 15), Some(9));
        assert!(store.insert(0, 3, &[b'b'; DATA_LEN], 1));
        assert_eq!(store.text(0, 3).map(|t| t[0]), Some(b'b'));
        // 24 - 16 - 5 = 3 left: another claim cannot grow, and keeps what it had.
        assert!(store.insert(1, 15, &[b'c'; DATA_LEN], 4));
        assert!(!store.grow(1, 16));
        assert_eq!(store.fingerprint_of(1, 15), Some(4));
        store.release(0);
        assert!(store.grow(1, 16));
        assert_eq!(store.text(1, 15).map(|t| t[0]), Some(b'c'));
    }

    #[test]
    fn tables_are_compacted_when_the_bump_pointer_reaches_the_end() {
        // 4 slots -> 8 + 16 = 24 table entries.
        let mut store = ChunkStore::new(4, 4, 16, PlainSlots::boxed);
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
