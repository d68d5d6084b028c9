//! Per-source log history: entries in chains of fixed blocks drawn from one pool.
//!
//! The pool is one allocation made at start ([`BlockPool::new`]); a source's history is a
//! chain of blocks holding a byte stream of entries, each a fixed [`EntryHeader`] followed by
//! the datagram's body. Entries may span blocks. History shrinks only from the front, a whole
//! block (and the entries that start in it) at a time: each block remembers where the first
//! entry starting in it begins, so a chain always starts at an entry boundary and trimming
//! touches no history bytes (a cold source's data stays out of the cache).

use alloc::vec::Vec;

/// Bytes per block.
pub const BLOCK: usize = 1024;
const NIL: u32 = u32::MAX;
const NO_ENTRY: u16 = u16::MAX;

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A whole extended record.
    Record,
    /// One fragment (`ncfrag`) of an extended record.
    Fragment,
    /// Legacy console text.
    Legacy,
}

/// Asks the CPU for the cache lines of some bytes about to be written, without waiting for
/// them. Safe code cannot issue a prefetch instruction, so the platform plugs one in
/// ([`super::ConsoleTracker::set_prefetch`]; the hosted relay and the kernel use
/// `netoops_streamed_slots::prefetch`); the default is [`read_lines`].
pub type Prefetch = fn(&[u8]);

/// The safe default [`Prefetch`]: reads a byte of each cache line. The loads start the
/// misses early, but unlike a prefetch they hold up retirement until the lines arrive.
pub fn read_lines(bytes: &[u8]) {
    let mut sum = 0u8;
    let mut at = 0;
    let skew = bytes.as_ptr() as usize % 64;
    while at < bytes.len() {
        sum ^= bytes[at];
        at = ((at + skew) | 63) + 1 - skew;
    }
    core::hint::black_box(sum);
}

/// The fixed part of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// Total entry length, header included.
    pub len: u32,
    /// What it is.
    pub kind: EntryKind,
    /// Record sequence number (legacy: arrival counter).
    pub seq: u64,
    /// Record timestamp, microseconds since the sender booted (legacy: 0).
    pub usec: u64,
    /// Fragment offset in the body (0 unless a fragment).
    pub frag_offset: u32,
    /// Whole body length (0 unless a fragment).
    pub frag_total: u32,
}

/// Encoded size of [`EntryHeader`].
pub const HEADER_LEN: usize = 32;

impl EntryHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4] = match self.kind {
            EntryKind::Record => 0,
            EntryKind::Fragment => 1,
            EntryKind::Legacy => 2,
        };
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.usec.to_le_bytes());
        b[24..28].copy_from_slice(&self.frag_offset.to_le_bytes());
        b[28..32].copy_from_slice(&self.frag_total.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> EntryHeader {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        EntryHeader {
            len: u32_at(0),
            kind: match b[4] {
                0 => EntryKind::Record,
                1 => EntryKind::Fragment,
                _ => EntryKind::Legacy,
            },
            seq: u64_at(8),
            usec: u64_at(16),
            frag_offset: u32_at(24),
            frag_total: u32_at(28),
        }
    }
}

/// One source's history: a chain of blocks and where its bytes start and end.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    head: u32,
    tail: u32,
    /// Offset of the first valid byte in the head block.
    head_off: u32,
    /// Bytes used in the tail block.
    tail_len: u16,
    /// Offset of the first entry that starts in the tail block, or [`NO_ENTRY`]: the pool's
    /// `first` entry for it, kept here too so an append reads no line outside the chain and
    /// the block (a cache miss per datagram with a thousand sources).
    tail_first: u16,
    /// Valid bytes in the chain.
    bytes: u32,
    /// Blocks in the chain.
    blocks: u32,
    /// Logical position of the first valid byte (grows for ever; entries are named by it).
    start: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: NIL,
            tail: NIL,
            head_off: 0,
            tail_len: 0,
            tail_first: NO_ENTRY,
            bytes: 0,
            blocks: 0,
            start: 0,
        }
    }
}

impl Chain {
    /// Valid bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.blocks as usize
    }

    /// Logical position of the first entry.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Logical position just past the last entry.
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.bytes)
    }
}

/// The shared pool of blocks.
///
/// Blocks are handed out in index order until every one has been used once; `data`, `next`
/// and `first` grow by one block each time (within the capacity reserved at start), so a
/// pool costs nothing to set up: filling them up front was 33,000 loop turns and 96 KiB of
/// first touches at boot for an 8 MiB budget, half the blocks `Relay::new` ran under TCG.
pub struct BlockPool {
    data: Vec<u8>,
    /// The next block of each block's chain (or of the free list), for blocks used so far.
    next: Vec<u32>,
    /// Offset of the first entry that starts in each block, or [`NO_ENTRY`].
    first: Vec<u16>,
    /// Blocks in the pool.
    blocks: usize,
    /// Released blocks, linked through `next`; blocks never used are not on it.
    free: u32,
    free_count: usize,
}

impl BlockPool {
    /// Bytes [`Self::new`] allocates for `blocks` blocks.
    pub fn footprint(blocks: usize) -> usize {
        let blocks = blocks.clamp(1, NIL as usize - 1);
        blocks * (BLOCK + core::mem::size_of::<u32>() + core::mem::size_of::<u16>())
    }

    /// A pool of `blocks` blocks, allocated now and filled as blocks are first used: zeroing
    /// 16 MiB up front was most of the appliance's boot time under TCG.
    pub fn new(blocks: usize) -> BlockPool {
        let blocks = blocks.clamp(1, NIL as usize - 1);
        BlockPool {
            data: Vec::with_capacity(blocks * BLOCK),
            next: Vec::with_capacity(blocks),
            first: Vec::with_capacity(blocks),
            blocks,
            free: NIL,
            free_count: blocks,
        }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.blocks
    }

    /// Blocks not in any chain.
    pub fn free_blocks(&self) -> usize {
        self.free_count
    }

    fn alloc(&mut self) -> Option<u32> {
        let b = if self.free != NIL {
            let b = self.free;
            self.free = self.next[b as usize];
            self.next[b as usize] = NIL;
            self.first[b as usize] = NO_ENTRY;
            b
        } else if self.next.len() < self.blocks {
            // The block just past those used so far: each vector grows by one block, within
            // its capacity (no allocation).
            let b = self.next.len();
            self.next.push(NIL);
            self.first.push(NO_ENTRY);
            self.data.resize((b + 1) * BLOCK, 0);
            b as u32
        } else {
            return None;
        };
        self.free_count -= 1;
        Some(b)
    }

    fn release(&mut self, b: u32) {
        self.next[b as usize] = self.free;
        self.free = b;
        self.free_count += 1;
    }

    /// Hands `prefetch` the bytes an entry of `len` bytes appended now would start to write
    /// (in the tail block), so that their cache misses overlap other work.
    pub fn touch_tail(&self, chain: &Chain, len: usize, prefetch: Prefetch) {
        if chain.tail == NIL {
            return;
        }
        let start = chain.tail as usize * BLOCK + chain.tail_len as usize;
        let end = (chain.tail as usize + 1) * BLOCK;
        let end = end.min(start + len).min(self.data.len());
        if start < end {
            prefetch(&self.data[start..end]);
        }
    }

    /// Bytes `bytes.len()` more would need this many new blocks in `chain`.
    pub fn blocks_needed(chain: &Chain, len: usize) -> usize {
        let room = if chain.tail == NIL {
            0
        } else {
            BLOCK - chain.tail_len as usize
        };
        len.saturating_sub(room).div_ceil(BLOCK)
    }

    /// Appends one entry. The caller has made sure [`BlockPool::blocks_needed`] blocks are
    /// free; returns false (and appends nothing) otherwise.
    pub fn append(&mut self, chain: &mut Chain, header: &EntryHeader, body: &[u8]) -> bool {
        let len = HEADER_LEN + body.len();
        if Self::blocks_needed(chain, len) > self.free_count {
            return false;
        }
        let h = header.encode();
        // Most entries fit in the tail block: two straight copies, the header's of fixed size.
        if chain.tail != NIL && chain.tail_len as usize + len <= BLOCK {
            let t = chain.tail as usize;
            let off = chain.tail_len as usize;
            if chain.tail_first == NO_ENTRY {
                chain.tail_first = off as u16;
                self.first[t] = off as u16;
            }
            let at = t * BLOCK + off;
            let dst = &mut self.data[at..at + len];
            let (head, rest) = dst.split_at_mut(HEADER_LEN);
            head.copy_from_slice(&h);
            rest.copy_from_slice(body);
            chain.tail_len += len as u16;
            chain.bytes += len as u32;
            return true;
        }
        // Where the entry starts: the tail, or a new block when the tail is full.
        if chain.tail != NIL && (chain.tail_len as usize) < BLOCK {
            let t = chain.tail as usize;
            if chain.tail_first == NO_ENTRY {
                chain.tail_first = chain.tail_len;
                self.first[t] = chain.tail_len;
            }
            self.write(chain, &h);
        } else {
            self.write(chain, &h[..1]);
            let t = chain.tail as usize;
            if chain.tail_first == NO_ENTRY {
                chain.tail_first = chain.tail_len - 1;
                self.first[t] = chain.tail_len - 1;
            }
            self.write(chain, &h[1..]);
        }
        self.write(chain, body);
        true
    }

    fn write(&mut self, chain: &mut Chain, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if chain.tail == NIL || chain.tail_len as usize == BLOCK {
                let Some(b) = self.alloc() else {
                    return; // checked by the caller
                };
                if chain.tail == NIL {
                    chain.head = b;
                    chain.head_off = 0;
                } else {
                    self.next[chain.tail as usize] = b;
                }
                chain.tail = b;
                chain.tail_len = 0;
                chain.tail_first = NO_ENTRY;
                chain.blocks += 1;
            }
            let at = chain.tail as usize * BLOCK + chain.tail_len as usize;
            let take = bytes.len().min(BLOCK - chain.tail_len as usize);
            self.data[at..at + take].copy_from_slice(&bytes[..take]);
            chain.tail_len += take as u16;
            chain.bytes += take as u32;
            bytes = &bytes[take..];
        }
    }

    /// Copies `out.len()` bytes starting `offset` bytes into the chain.
    fn read(&self, chain: &Chain, offset: usize, out: &mut [u8]) {
        let mut block = chain.head;
        let mut skip = chain.head_off as usize + offset;
        while skip >= BLOCK && block != NIL {
            skip -= BLOCK;
            block = self.next[block as usize];
        }
        let mut done = 0;
        while done < out.len() && block != NIL {
            let take = (BLOCK - skip).min(out.len() - done);
            let at = block as usize * BLOCK + skip;
            out[done..done + take].copy_from_slice(&self.data[at..at + take]);
            done += take;
            skip = 0;
            block = self.next[block as usize];
        }
    }

    /// The header of the entry at logical position `pos` (which must be an entry start).
    pub fn header_at(&self, chain: &Chain, pos: u64) -> EntryHeader {
        let mut h = [0u8; HEADER_LEN];
        self.read(chain, (pos - chain.start) as usize, &mut h);
        EntryHeader::decode(&h)
    }

    /// Copies the body of the entry at `pos` into `out` (which must be long enough).
    pub fn body_at(&self, chain: &Chain, pos: u64, header: &EntryHeader, out: &mut [u8]) {
        let len = header.len as usize - HEADER_LEN;
        self.read(
            chain,
            (pos - chain.start) as usize + HEADER_LEN,
            &mut out[..len],
        );
    }

    /// Every entry's position and header, oldest first. Walks the chain once: each header is
    /// read from a cursor that moves forward block by block.
    pub fn entries<'a>(
        &'a self,
        chain: &'a Chain,
    ) -> impl Iterator<Item = (u64, EntryHeader)> + 'a {
        let mut pos = chain.start;
        let mut block = chain.head;
        let mut off = chain.head_off as usize;
        core::iter::from_fn(move || {
            if pos >= chain.end() || block == NIL {
                return None;
            }
            let mut h = [0u8; HEADER_LEN];
            let (mut b, mut o, mut done) = (block, off, 0);
            while done < HEADER_LEN && b != NIL {
                let take = (BLOCK - o).min(HEADER_LEN - done);
                let at = b as usize * BLOCK + o;
                h[done..done + take].copy_from_slice(&self.data[at..at + take]);
                done += take;
                o += take;
                if o == BLOCK {
                    b = self.next[b as usize];
                    o = 0;
                }
            }
            let header = EntryHeader::decode(&h);
            let at = pos;
            let len = header.len.max(HEADER_LEN as u32) as usize;
            pos += len as u64;
            off += len;
            while off >= BLOCK && block != NIL {
                off -= BLOCK;
                block = self.next[block as usize];
            }
            Some((at, header))
        })
    }

    /// Where the chain would start after dropping its head block (and any following blocks in
    /// which no entry starts): the new start position, or `None` when nothing would be left.
    pub fn after_head_block(&self, chain: &Chain) -> Option<u64> {
        if chain.head == NIL || chain.head == chain.tail {
            return None;
        }
        let mut dropped = (BLOCK - chain.head_off as usize) as u64;
        let mut b = self.next[chain.head as usize];
        loop {
            let f = self.first[b as usize];
            if f != NO_ENTRY && (b != chain.tail || f < chain.tail_len) {
                let pos = chain.start + dropped + u64::from(f);
                return (pos < chain.end()).then_some(pos);
            }
            if b == chain.tail {
                return None;
            }
            dropped += BLOCK as u64;
            b = self.next[b as usize];
        }
    }

    /// Drops the head block and the entries that start in it (and blocks they span into);
    /// returns the bytes dropped, or `None` when the chain is empty. A chain whose entries all
    /// start in its head block is emptied.
    pub fn pop_front(&mut self, chain: &mut Chain) -> Option<usize> {
        if chain.bytes == 0 {
            return None;
        }
        let Some(new_start) = self.after_head_block(chain) else {
            let n = chain.bytes as usize;
            self.clear(chain);
            return Some(n);
        };
        let dropped = (new_start - chain.start) as usize;
        let mut off = chain.head_off as usize + dropped;
        while off >= BLOCK {
            let b = chain.head;
            chain.head = self.next[b as usize];
            self.release(b);
            chain.blocks -= 1;
            off -= BLOCK;
        }
        chain.head_off = off as u32;
        chain.bytes -= dropped as u32;
        chain.start = new_start;
        Some(dropped)
    }

    /// Returns every block of the chain to the pool; the chain keeps its logical position.
    pub fn clear(&mut self, chain: &mut Chain) {
        let mut b = chain.head;
        while b != NIL {
            let n = self.next[b as usize];
            self.release(b);
            if b == chain.tail {
                break;
            }
            b = n;
        }
        let start = chain.end();
        *chain = Chain {
            start,
            ..Chain::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn blocks_come_in_index_order_then_released_ones_first_and_never_more_than_the_pool() {
        let mut pool = BlockPool::new(4);
        assert_eq!((pool.capacity(), pool.free_blocks()), (4, 4));
        assert_eq!(
            pool.next.len(),
            0,
            "nothing is filled before a block is used"
        );
        assert_eq!(pool.alloc(), Some(0));
        assert_eq!(pool.alloc(), Some(1));
        pool.release(0);
        assert_eq!(pool.free_blocks(), 3);
        assert_eq!(
            pool.alloc(),
            Some(0),
            "a released block is taken before a new one"
        );
        assert_eq!(pool.alloc(), Some(2));
        assert_eq!(pool.alloc(), Some(3));
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.free_blocks(), 0);
        assert_eq!((pool.next.len(), pool.first.len()), (4, 4));
        assert_eq!(pool.data.len(), 4 * BLOCK);
        pool.release(3);
        pool.release(1);
        assert_eq!(pool.alloc(), Some(1));
        assert_eq!(pool.alloc(), Some(3));
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.next.capacity(), 4, "never grown past the pool");
    }

    fn header(seq: u64, body: &[u8]) -> EntryHeader {
        EntryHeader {
            len: (HEADER_LEN + body.len()) as u32,
            kind: EntryKind::Record,
            seq,
            usec: seq * 10,
            frag_offset: 0,
            frag_total: 0,
        }
    }

    #[test]
    fn entries_span_blocks_and_come_back_in_order() {
        let mut pool = BlockPool::new(8);
        let mut chain = Chain::default();
        let mut bodies = Vec::new();
        for i in 0..10u64 {
            let body: Vec<u8> = (0..(i as usize * 97 % 600)).map(|j| j as u8).collect();
            assert!(pool.append(&mut chain, &header(i, &body), &body));
            bodies.push(body);
        }
        let got: Vec<_> = pool.entries(&chain).collect();
        assert_eq!(got.len(), 10);
        for (i, (pos, h)) in got.iter().enumerate() {
            assert_eq!(h.seq, i as u64);
            let mut out = vec![0u8; 1024];
            pool.body_at(&chain, *pos, h, &mut out);
            assert_eq!(&out[..bodies[i].len()], &bodies[i][..]);
        }
        // Dropping the head block frees it; the rest start at an entry and stay readable.
        let before = pool.free_blocks();
        let blocks = chain.blocks();
        pool.pop_front(&mut chain).unwrap();
        assert_eq!(pool.free_blocks(), before + (blocks - chain.blocks()));
        assert!(chain.blocks() < blocks);
        let seqs: Vec<u64> = pool.entries(&chain).map(|(_, h)| h.seq).collect();
        assert!(!seqs.is_empty() && seqs[0] > 0, "{seqs:?}");
        assert_eq!(*seqs.last().unwrap(), 9);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        for (pos, h) in pool.entries(&chain) {
            let mut out = vec![0u8; 1024];
            pool.body_at(&chain, pos, &h, &mut out);
            let b = &bodies[h.seq as usize];
            assert_eq!(&out[..b.len()], &b[..]);
        }
        pool.clear(&mut chain);
        assert_eq!(pool.free_blocks(), 8);
        assert_eq!(pool.entries(&chain).count(), 0);
    }

    #[test]
    fn a_full_pool_refuses_without_writing() {
        let mut pool = BlockPool::new(2);
        let mut chain = Chain::default();
        let body = [7u8; 1500];
        assert!(pool.append(&mut chain, &header(1, &body), &body));
        assert!(!pool.append(&mut chain, &header(2, &body), &body));
        assert_eq!(pool.entries(&chain).count(), 1);
        while pool.pop_front(&mut chain).is_some() {}
        assert_eq!(pool.free_blocks(), 2);
    }
}
