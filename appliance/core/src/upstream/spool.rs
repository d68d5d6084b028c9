//! The spool: encoded records waiting for a collector's acknowledgement, in one byte ring
//! allocated when the spool is built and filled as records arrive: bytes are first written when
//! the tail first reaches them, so a large spool costs no zeroing at boot (16 MiB of `memset`
//! took tens of milliseconds under TCG).
//!
//! Entries sit back to back in seq order (the ring's used region is always contiguous, possibly
//! wrapping at the end of the buffer), so writing is an append at the tail and reading a frame is
//! at most two copies. Each entry holds a record body: the postcard `(record, payload_len)` part
//! of a [`super::record::RecordHeader`] followed by the payload; `seq` and `sent_at_ms` are
//! prepended at transmit time.
//!
//! Overflow policy ([`Spool::make_room`]): the oldest `Dump` entries go first (the text is lost
//! but the collector still has the `CrashSeen` record), then the oldest `CrashSeen` entries. An
//! entry in the middle of the ring is removed by sliding the shorter side of the ring over it.
//! The entry whose frame is partly written to the stream (`in_flight`) cannot vanish, because its
//! remaining bytes must still be sent to keep the stream framed: it is *doomed* instead (counted
//! as dropped by the caller, freed by [`Spool::remove`] once its frame is complete or by
//! [`Spool::remove_doomed`] when the connection closes).

use super::record::RecordKind;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// One spooled record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Record seq.
    pub seq: u64,
    /// Record kind (what the overflow policy looks at).
    pub kind: RecordKind,
    /// Body bytes in the ring.
    pub len: usize,
    /// Dropped while its frame was partly written; freed when the frame completes.
    pub doomed: bool,
    start: usize,
}

/// Why [`Spool::make_room`] could not make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomError {
    /// The record is bigger than the whole spool.
    TooLarge,
    /// Only doomed entries are left and they still occupy the space; retry once the partly
    /// written frame is finished or its connection is closed.
    Busy,
}

/// Bounded store of encoded records until acknowledged.
#[derive(Debug)]
pub struct Spool {
    /// The ring's bytes: its capacity is the ring size (`with_capacity` allocates exactly
    /// that), and its length grows up to it as the tail first reaches new positions (every
    /// position below the length has been written).
    ring: Vec<u8>,
    head: usize,
    used: usize,
    entries: VecDeque<SpoolEntry>,
    max_entries: usize,
    high_water: usize,
}

impl Spool {
    /// A spool of `bytes` bytes holding at most `max_entries` records, both allocated now.
    pub fn new(bytes: usize, max_entries: usize) -> Self {
        let max_entries = max_entries.max(1);
        Spool {
            ring: Vec::with_capacity(bytes),
            head: 0,
            used: 0,
            entries: VecDeque::with_capacity(max_entries),
            max_entries,
            high_water: 0,
        }
    }

    /// Size of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Bytes held by entries (doomed ones included).
    pub fn used(&self) -> usize {
        self.used
    }

    /// Most bytes ever held at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Entries held (doomed ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in seq order.
    pub fn entries(&self) -> impl Iterator<Item = &SpoolEntry> + '_ {
        self.entries.iter()
    }

    /// The entry with this seq.
    pub fn get(&self, seq: u64) -> Option<&SpoolEntry> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.entries.get(i)
    }

    /// The first entry with a seq above `seq`.
    pub fn first_after(&self, seq: u64) -> Option<&SpoolEntry> {
        let i = self.entries.partition_point(|e| e.seq <= seq);
        self.entries.get(i)
    }

    /// Copies body bytes of `entry` from `offset` into `out`; returns the bytes copied.
    pub fn read(&self, entry: &SpoolEntry, offset: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(entry.len.saturating_sub(offset));
        if n == 0 {
            return 0;
        }
        let cap = self.ring.capacity();
        let pos = (entry.start + offset) % cap;
        let first = n.min(cap - pos);
        out[..first].copy_from_slice(&self.ring[pos..pos + first]);
        out[first..n].copy_from_slice(&self.ring[..n - first]);
        n
    }

    /// Frees space for a record of `len` bytes under the overflow policy (module doc), calling
    /// `on_drop` for every entry dropped or doomed. `in_flight` is the seq of the entry whose
    /// frame is partly written, if any.
    pub fn make_room(
        &mut self,
        len: usize,
        in_flight: Option<u64>,
        mut on_drop: impl FnMut(u64, RecordKind),
    ) -> Result<(), RoomError> {
        if len > self.ring.capacity() {
            return Err(RoomError::TooLarge);
        }
        while self.used + len > self.ring.capacity() || self.entries.len() >= self.max_entries {
            let Some((i, doom)) = self.pick_victim(in_flight) else {
                return Err(RoomError::Busy);
            };
            let e = self.entries[i];
            on_drop(e.seq, e.kind);
            if doom {
                self.entries[i].doomed = true;
            } else {
                self.remove_at(i);
            }
        }
        Ok(())
    }

    fn pick_victim(&self, in_flight: Option<u64>) -> Option<(usize, bool)> {
        let live = |kind: RecordKind| {
            move |e: &SpoolEntry| !e.doomed && e.kind == kind && Some(e.seq) != in_flight
        };
        let flight = in_flight
            .and_then(|s| self.entries.binary_search_by_key(&s, |e| e.seq).ok())
            .filter(|&i| !self.entries[i].doomed);
        let flight_of = |kind: RecordKind| flight.filter(|&i| self.entries[i].kind == kind);
        if let Some(i) = self.entries.iter().position(live(RecordKind::Dump)) {
            return Some((i, false));
        }
        if let Some(i) = flight_of(RecordKind::Dump) {
            return Some((i, true));
        }
        if let Some(i) = self.entries.iter().position(live(RecordKind::CrashSeen)) {
            return Some((i, false));
        }
        flight_of(RecordKind::CrashSeen).map(|i| (i, true))
    }

    /// A writer for a new entry of at most `len` bytes at the tail, if it fits now (call
    /// [`Spool::make_room`] first). Nothing is kept until [`Spool::commit`].
    pub fn writer(&mut self, len: usize) -> Option<SpoolWriter<'_>> {
        if self.used + len > self.ring.capacity() || self.entries.len() >= self.max_entries {
            return None;
        }
        let cap = self.ring.capacity();
        let pos = if cap == 0 {
            0
        } else {
            (self.head + self.used) % cap
        };
        Some(SpoolWriter {
            ring: &mut self.ring,
            pos,
            written: 0,
            attempted: 0,
            limit: len,
        })
    }

    /// Keeps the `len` bytes last written by a [`SpoolWriter`] as entry `seq`. The caller
    /// guarantees `len` bytes were written and fit, and that `seq` is above every held seq.
    pub fn commit(&mut self, seq: u64, kind: RecordKind, len: usize) {
        let cap = self.ring.capacity();
        let start = if cap == 0 {
            0
        } else {
            (self.head + self.used) % cap
        };
        if self.entries.is_empty() {
            self.head = start;
        }
        self.entries.push_back(SpoolEntry {
            seq,
            kind,
            len,
            doomed: false,
            start,
        });
        self.used += len;
        self.high_water = self.high_water.max(self.used);
    }

    /// Removes every entry with a seq up to `seq`, oldest first, calling `on_remove` for each.
    pub fn remove_through(&mut self, seq: u64, mut on_remove: impl FnMut(&SpoolEntry)) {
        while let Some(e) = self.entries.front() {
            if e.seq > seq {
                break;
            }
            on_remove(e);
            self.remove_at(0);
        }
    }

    /// Removes the entry with this seq.
    pub fn remove(&mut self, seq: u64) -> Option<SpoolEntry> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let e = self.entries[i];
        self.remove_at(i);
        Some(e)
    }

    /// Frees every doomed entry (their connection is gone, nobody needs their bytes).
    pub fn remove_doomed(&mut self) {
        while let Some(i) = self.entries.iter().position(|e| e.doomed) {
            self.remove_at(i);
        }
    }

    /// Removes entry `i` and slides the shorter side of the ring over its bytes.
    fn remove_at(&mut self, i: usize) {
        let Some(e) = self.entries.get(i).copied() else {
            return;
        };
        let cap = self.ring.capacity();
        let before = if cap == 0 {
            0
        } else {
            (e.start + cap - self.head) % cap
        };
        let after = self.used - before - e.len;
        if i == 0 {
            // Nothing to move: the head just advances.
        } else if i + 1 == self.entries.len() {
            // Nothing to move: the tail just retreats.
        } else if before <= after {
            ring_move(
                &mut self.ring,
                self.head,
                (self.head + e.len) % cap,
                before,
                true,
            );
            for p in self.entries.range_mut(..i) {
                p.start = (p.start + e.len) % cap;
            }
        } else {
            ring_move(
                &mut self.ring,
                (e.start + e.len) % cap,
                e.start,
                after,
                false,
            );
            for p in self.entries.range_mut(i + 1..) {
                p.start = (p.start + cap - e.len) % cap;
            }
        }
        self.entries.remove(i);
        self.used -= e.len;
        match self.entries.front() {
            Some(f) => self.head = f.start,
            None if cap > 0 => self.head = (self.head + before + e.len) % cap,
            None => self.head = 0,
        }
    }
}

/// Moves `len` bytes from ring position `src` to `dst` (both physical, wrapping). The regions
/// may overlap; `dst_ahead` says whether `dst` lies ahead of `src` in ring order (by less than
/// the ring size minus `len`) or behind it.
///
/// `ring` is the filled part of the spool's ring: until the tail first wraps, the used region
/// lies below the filled length and never wraps, so positions computed modulo the full ring
/// size are the same as modulo the filled length.
fn ring_move(ring: &mut [u8], src: usize, dst: usize, len: usize, dst_ahead: bool) {
    let cap = ring.len();
    if len == 0 || cap == 0 || src == dst {
        return;
    }
    if dst_ahead {
        // Copy from the end backwards so bytes not yet read are never overwritten.
        let mut remaining = len;
        while remaining > 0 {
            let s_end = match (src + remaining) % cap {
                0 => cap,
                e => e,
            };
            let d_end = match (dst + remaining) % cap {
                0 => cap,
                e => e,
            };
            let k = remaining.min(s_end).min(d_end);
            ring.copy_within(s_end - k..s_end, d_end - k);
            remaining -= k;
        }
    } else {
        // Copy from the start forwards.
        let mut done = 0;
        while done < len {
            let s = (src + done) % cap;
            let d = (dst + done) % cap;
            let k = (len - done).min(cap - s).min(cap - d);
            ring.copy_within(s..s + k, d);
            done += k;
        }
    }
}

/// Appends one entry's bytes at the spool's tail; also a postcard output flavor, so the record
/// header is serialized straight into the ring.
#[derive(Debug)]
pub struct SpoolWriter<'a> {
    ring: &'a mut Vec<u8>,
    pos: usize,
    written: usize,
    attempted: usize,
    limit: usize,
}

impl SpoolWriter<'_> {
    /// Appends `bytes`; whatever goes beyond the reserved length is discarded and remembered.
    pub fn write(&mut self, bytes: &[u8]) {
        let room = self.limit - self.written;
        self.attempted = self.attempted.saturating_add(bytes.len());
        let mut rest = &bytes[..bytes.len().min(room)];
        let cap = self.ring.capacity();
        while !rest.is_empty() {
            let k = rest.len().min(cap - self.pos);
            // Below the filled length the ring is overwritten; at it, the ring grows within its
            // capacity (the tail never skips ahead of the filled length, so `pos <= len`).
            let held = self.ring.len().saturating_sub(self.pos).min(k);
            self.ring[self.pos..self.pos + held].copy_from_slice(&rest[..held]);
            self.ring.extend_from_slice(&rest[held..k]);
            self.pos = (self.pos + k) % cap;
            rest = &rest[k..];
            self.written += k;
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Bytes offered so far, including any that did not fit.
    pub fn attempted(&self) -> usize {
        self.attempted
    }
}

impl postcard::ser_flavors::Flavor for &mut SpoolWriter<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.limit - self.written {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.write(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn put(spool: &mut Spool, seq: u64, kind: RecordKind, bytes: &[u8]) -> Vec<u64> {
        let mut dropped = Vec::new();
        spool
            .make_room(bytes.len(), None, |s, _| dropped.push(s))
            .unwrap();
        let mut w = spool.writer(bytes.len()).unwrap();
        w.write(bytes);
        assert_eq!(w.written(), bytes.len());
        spool.commit(seq, kind, bytes.len());
        dropped
    }

    fn body(spool: &Spool, seq: u64) -> Vec<u8> {
        let e = *spool.get(seq).unwrap();
        let mut out = vec![0; e.len];
        assert_eq!(spool.read(&e, 0, &mut out), e.len);
        out
    }

    #[test]
    fn dumps_are_dropped_before_crash_notices() {
        use RecordKind::*;
        let mut s = Spool::new(100, 100);
        put(&mut s, 1, CrashSeen, &[1; 20]);
        put(&mut s, 2, Dump, &[2; 30]);
        put(&mut s, 3, CrashSeen, &[3; 20]);
        put(&mut s, 4, Dump, &[4; 30]);
        // 100 used; 25 more: the oldest dump (2) goes, from the middle of the ring.
        assert_eq!(put(&mut s, 5, CrashSeen, &[5; 25]), vec![2]);
        assert_eq!(body(&s, 3), vec![3; 20]);
        assert_eq!(body(&s, 4), vec![4; 30]);
        assert_eq!(body(&s, 5), vec![5; 25]);
        // 95 used; 60 more: dump 4 goes, then the oldest crash notices.
        assert_eq!(put(&mut s, 6, CrashSeen, &[6; 60]), vec![4, 1, 3]);
        assert_eq!(s.entries().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(body(&s, 5), vec![5; 25]);
        assert_eq!(body(&s, 6), vec![6; 60]);
        assert_eq!(s.make_room(101, None, |_, _| {}), Err(RoomError::TooLarge));
        assert_eq!(s.high_water(), 100);
    }

    #[test]
    fn the_in_flight_entry_is_doomed_not_freed() {
        use RecordKind::*;
        let mut s = Spool::new(100, 100);
        put(&mut s, 1, Dump, &[1; 60]);
        put(&mut s, 2, CrashSeen, &[2; 20]);
        let mut dropped = vec![];
        // Entry 1 is being written: it is doomed, then crash notice 2 goes, then no room.
        assert_eq!(
            s.make_room(50, Some(1), |seq, _| dropped.push(seq)),
            Err(RoomError::Busy)
        );
        assert_eq!(dropped, vec![1, 2]);
        assert!(s.get(1).unwrap().doomed);
        assert_eq!(body(&s, 1), vec![1; 60]);
        s.remove(1);
        assert_eq!(s.make_room(50, None, |_, _| panic!()), Ok(()));
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn entry_count_is_bounded_too() {
        let mut s = Spool::new(1000, 2);
        put(&mut s, 1, RecordKind::CrashSeen, &[1]);
        put(&mut s, 2, RecordKind::Dump, &[2]);
        assert_eq!(put(&mut s, 3, RecordKind::Dump, &[3]), vec![2]);
    }

    #[test]
    fn the_ring_is_filled_as_the_tail_first_reaches_it() {
        let mut s = Spool::new(100, 8);
        assert_eq!((s.capacity(), s.ring.len()), (100, 0));
        put(&mut s, 1, RecordKind::Dump, &[1; 30]);
        put(&mut s, 2, RecordKind::Dump, &[2; 30]);
        assert_eq!(s.ring.len(), 60);
        // Removing the middle of three entries slides bytes within the filled part.
        put(&mut s, 3, RecordKind::CrashSeen, &[3; 20]);
        assert_eq!(s.remove(2).map(|e| e.len), Some(30));
        assert_eq!((body(&s, 1), body(&s, 3)), (vec![1; 30], vec![3; 20]));
        assert_eq!(s.ring.len(), 80);
        // Entry 3 slid back over 2's bytes, so the tail is at 50: the next entry fills the
        // ring to its end, and the one after wraps into the space entry 1 leaves.
        put(&mut s, 4, RecordKind::Dump, &[4; 50]);
        assert_eq!(s.ring.len(), 100);
        assert_eq!(s.remove(1).map(|e| e.len), Some(30));
        put(&mut s, 5, RecordKind::Dump, &[5; 25]);
        assert_eq!(s.ring.len(), 100);
        assert_eq!((body(&s, 4), body(&s, 5)), (vec![4; 50], vec![5; 25]));
        assert_eq!(s.ring.capacity(), 100, "no reallocation");
    }

    #[test]
    fn ring_move_handles_wrap_and_overlap() {
        for cap in 1..12usize {
            for len in 0..cap {
                for src in 0..cap {
                    for shift in 1..=(cap - len) {
                        for forward in [true, false] {
                            if shift == cap {
                                continue;
                            }
                            let mut ring: Vec<u8> = (0..cap as u8).collect();
                            let expect: Vec<u8> = (0..len).map(|i| ring[(src + i) % cap]).collect();
                            let dst = if forward {
                                (src + shift) % cap
                            } else {
                                (src + cap - shift) % cap
                            };
                            ring_move(&mut ring, src, dst, len, forward);
                            let got: Vec<u8> = (0..len).map(|i| ring[(dst + i) % cap]).collect();
                            assert_eq!(got, expect, "cap {cap} len {len} src {src} dst {dst}");
                        }
                    }
                }
            }
        }
    }

    proptest! {
        /// Random appends, removals and acknowledgements against a model: every held entry
        /// always reads back exactly what was written, whatever wrapping and sliding happened.
        #[test]
        fn spool_matches_model(ops in proptest::collection::vec((0u8..4, 1usize..40, any::<bool>()), 1..200)) {
            let mut s = Spool::new(97, 8);
            let mut model: VecDeque<(u64, RecordKind, Vec<u8>)> = VecDeque::new();
            let mut next = 1u64;
            for (op, n, flag) in ops {
                match op {
                    0 | 1 => {
                        let kind = if flag { RecordKind::Dump } else { RecordKind::CrashSeen };
                        let bytes: Vec<u8> = (0..n).map(|i| (next as usize * 31 + i) as u8).collect();
                        let mut dropped = vec![];
                        s.make_room(n, None, |seq, _| dropped.push(seq)).unwrap();
                        for d in dropped {
                            let i = model.iter().position(|m| m.0 == d).unwrap();
                            model.remove(i);
                        }
                        let mut w = s.writer(n).unwrap();
                        w.write(&bytes);
                        s.commit(next, kind, n);
                        model.push_back((next, kind, bytes));
                        next += 1;
                    }
                    2 => {
                        if let Some(&(seq, _, _)) = model.get(n % (model.len() + 1)) {
                            s.remove(seq).unwrap();
                            model.retain(|m| m.0 != seq);
                        }
                    }
                    _ => {
                        let through = next.saturating_sub(n as u64 % 4);
                        s.remove_through(through, |_| {});
                        model.retain(|m| m.0 > through);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.used(), model.iter().map(|m| m.2.len()).sum::<usize>());
                for (seq, kind, bytes) in &model {
                    let e = *s.get(*seq).unwrap();
                    prop_assert_eq!(e.kind, *kind);
                    let mut out = vec![0; e.len];
                    s.read(&e, 0, &mut out);
                    prop_assert_eq!(&out, bytes);
                }
            }
        }
    }
}
