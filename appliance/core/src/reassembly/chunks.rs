//! Chunk storage: a fixed pool of 1 KiB slots and the index from (dump entry, packet_no) to slot.
//!
//! The pool and the index are allocated once, sized from the memory budget; storing or freeing
//! a chunk never allocates. The index is a `hashbrown` map created with room for twice the slot
//! count, so it rehashes in place (never grows) however entries come and go.

use alloc::vec;
use alloc::vec::Vec;
use hashbrown::HashMap;
use netoops_wire::DATA_LEN;

/// Slot storage for received chunks.
pub(crate) struct ChunkStore {
    data: Vec<[u8; DATA_LEN]>,
    /// Length of each slot's text once the sender's zero padding is cut off.
    text_len: Vec<u16>,
    free: Vec<u32>,
    index: HashMap<u64, u32>,
}

fn key(entry: u32, packet_no: u32) -> u64 {
    (u64::from(entry) << 32) | u64::from(packet_no)
}

impl ChunkStore {
    pub(crate) fn new(slots: usize) -> Self {
        ChunkStore {
            data: vec![[0u8; DATA_LEN]; slots],
            text_len: vec![0; slots],
            free: (0..slots as u32).rev().collect(),
            index: HashMap::with_capacity(super::map_capacity(slots)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn used(&self) -> usize {
        self.data.len() - self.free.len()
    }

    pub(crate) fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    /// Stores `data` for (entry, packet_no). The caller made sure a slot is free.
    pub(crate) fn insert(&mut self, entry: u32, packet_no: u32, data: &[u8; DATA_LEN]) -> bool {
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let s = slot as usize;
        self.data[s].copy_from_slice(data);
        self.text_len[s] = netoops_wire::text::chunk_text(data).len() as u16;
        self.index.insert(key(entry, packet_no), slot);
        true
    }

    /// The full 1024 bytes held for (entry, packet_no).
    pub(crate) fn get(&self, entry: u32, packet_no: u32) -> Option<&[u8; DATA_LEN]> {
        self.index
            .get(&key(entry, packet_no))
            .map(|&slot| &self.data[slot as usize])
    }

    /// The text (padding removed) held for (entry, packet_no).
    pub(crate) fn text(&self, entry: u32, packet_no: u32) -> Option<&[u8]> {
        self.index.get(&key(entry, packet_no)).map(|&slot| {
            let s = slot as usize;
            &self.data[s][..usize::from(self.text_len[s])]
        })
    }

    /// Frees the chunk held for (entry, packet_no), if any.
    pub(crate) fn remove(&mut self, entry: u32, packet_no: u32) {
        if let Some(slot) = self.index.remove(&key(entry, packet_no)) {
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_padding_is_cut() {
        let mut store = ChunkStore::new(2);
        let mut a = [0u8; DATA_LEN];
        a[..5].copy_from_slice(b"hello");
        assert!(store.insert(0, 7, &a));
        assert!(store.insert(1, 0, &[b'x'; DATA_LEN]));
        assert!(!store.has_free_slot());
        assert!(!store.insert(2, 0, &a));
        assert_eq!(store.text(0, 7), Some(&b"hello"[..]));
        assert_eq!(store.text(1, 0).map(<[u8]>::len), Some(DATA_LEN));
        store.remove(0, 7);
        assert_eq!(store.text(0, 7), None);
        assert_eq!(store.used(), 1);
        assert!(store.insert(3, 1, &[0; DATA_LEN]));
        assert_eq!(store.text(3, 1), Some(&b""[..]));
    }
}
