//! The spool: encoded records waiting for a collector's acknowledgement, in two lanes, one per
//! record kind: crash notices (small and urgent) and dumps (large). Each lane is one byte ring
//! allocated when the spool is built and filled as records arrive: bytes are first written when
//! the tail first reaches them, so a large spool costs no zeroing at boot (16 MiB of `memset`
//! took tens of milliseconds under TCG).
//!
//! Why two lanes: in one ring, a crash notice enqueued behind megabytes of dumps waited for all
//! of them (8.8 s median in the 10,000-machine storm). With a lane of its own, the link sends the
//! oldest unsent notice before any unsent dump ([`Spool::next_to_send`]), so a notice waits for
//! at most the frame being written and the dumps already on the wire (which the link bounds).
//! Why two rings and not one ring with two queues: notices are acknowledged long before the
//! dumps enqueued ahead of them, and removing an entry from the middle of a shared ring means
//! sliding the bytes behind it; separate rings are only ever trimmed at their heads.
//!
//! Budget: a quarter of the spool's bytes is the notice lane, the rest the dump lane, and each
//! lane holds at most half of the record limit. Dumps never evict notices: a notice is ~50 times
//! smaller than a 64 KiB dump, so a quarter of the budget keeps the notices of far more crashes
//! than the dump lane keeps dumps, and the notices are what a human sees first.
//!
//! Seqs: an entry gets its wire seq when its frame first starts on a stream ([`Spool::assign`]),
//! so seqs on the wire always increase although notices overtake dumps; the collector applies
//! records strictly in seq order. Entries are known to callers by an id given at enqueue time
//! (enqueue order). In each lane the assigned entries are a prefix, in seq order.
//!
//! Overflow policy ([`Spool::make_room`]): within the new record's lane, the oldest entry that
//! has never been sent is dropped. An entry that has been sent (wholly or partly, on any
//! session) is never dropped, since the collector may have stored it: a record counted as
//! dropped is never stored, so the relay's counters agree with the collector's files. When only
//! sent entries are left, the new record is refused ([`RoomError::Busy`]) and counted by the
//! caller; sent entries leave as soon as they are acknowledged.

use super::record::RecordKind;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// The seq of an entry that has never been sent: above every real seq, so the assigned prefix
/// and the unsent rest of a lane sort together.
const UNSENT: u64 = u64::MAX;

/// One spooled record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// The id given at enqueue time (enqueue order, unique per link).
    pub id: u64,
    /// Record kind: which lane holds it.
    pub kind: RecordKind,
    /// Body bytes in the ring.
    pub len: usize,
    seq: u64,
    start: usize,
}

impl SpoolEntry {
    /// The wire seq, once the entry's frame has started on a stream.
    pub fn seq(&self) -> Option<u64> {
        (self.seq != UNSENT).then_some(self.seq)
    }
}

/// Why [`Spool::make_room`] could not make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomError {
    /// The record is bigger than its whole lane.
    TooLarge,
    /// Every entry left in the lane has been sent and awaits its acknowledgement; retry once
    /// the collector acknowledges.
    Busy,
}

/// Bounded store of encoded records until acknowledged (module doc).
#[derive(Debug)]
pub struct Spool {
    notices: Lane,
    dumps: Lane,
    high_water: usize,
}

impl Spool {
    /// Bytes [`Self::new`] allocates for these arguments.
    pub fn footprint(bytes: usize, max_entries: usize) -> usize {
        let per_lane = (max_entries / 2).max(1);
        bytes + 2 * per_lane * core::mem::size_of::<SpoolEntry>()
    }

    /// A spool of `bytes` bytes holding at most `max_entries` records, split into the two lanes
    /// (module doc), all allocated now.
    pub fn new(bytes: usize, max_entries: usize) -> Self {
        let notice_bytes = bytes / 4;
        let per_lane = (max_entries / 2).max(1);
        Spool {
            notices: Lane::new(notice_bytes, per_lane),
            dumps: Lane::new(bytes - notice_bytes, per_lane),
            high_water: 0,
        }
    }

    fn lane(&self, kind: RecordKind) -> &Lane {
        match kind {
            RecordKind::CrashSeen => &self.notices,
            RecordKind::Dump => &self.dumps,
        }
    }

    fn lane_mut(&mut self, kind: RecordKind) -> &mut Lane {
        match kind {
            RecordKind::CrashSeen => &mut self.notices,
            RecordKind::Dump => &mut self.dumps,
        }
    }

    /// Size of both rings in bytes.
    pub fn capacity(&self) -> usize {
        self.notices.ring.capacity() + self.dumps.ring.capacity()
    }

    /// Size of one lane's ring in bytes.
    pub fn lane_capacity(&self, kind: RecordKind) -> usize {
        self.lane(kind).ring.capacity()
    }

    /// Bytes held by entries.
    pub fn used(&self) -> usize {
        self.notices.used + self.dumps.used
    }

    /// Most bytes ever held at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.notices.entries.len() + self.dumps.entries.len()
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries of one lane, oldest first.
    pub fn entries(&self, kind: RecordKind) -> impl Iterator<Item = &SpoolEntry> + '_ {
        self.lane(kind).entries.iter()
    }

    /// The entry with this id.
    pub fn get(&self, kind: RecordKind, id: u64) -> Option<&SpoolEntry> {
        let lane = self.lane(kind);
        let i = lane.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        lane.entries.get(i)
    }

    /// What to write next on a stream that has sent every seq up to `sent_through`: an entry
    /// that already has a seq above it goes first (a resend after reconnecting, in seq order);
    /// otherwise the oldest unsent notice, otherwise the oldest unsent dump if `dumps_open`.
    pub fn next_to_send(&self, sent_through: u64, dumps_open: bool) -> Option<&SpoolEntry> {
        let n = self.notices.first_after(sent_through);
        let d = self.dumps.first_after(sent_through);
        match (n, d) {
            (Some(n), Some(d)) if n.seq != UNSENT || d.seq != UNSENT => {
                Some(if n.seq < d.seq { n } else { d })
            }
            (Some(n), _) => Some(n),
            (None, Some(d)) if d.seq != UNSENT || dumps_open => Some(d),
            _ => None,
        }
    }

    /// Gives the unsent entry `id` its wire seq (above every seq assigned before).
    pub fn assign(&mut self, kind: RecordKind, id: u64, seq: u64) {
        let lane = self.lane_mut(kind);
        if let Ok(i) = lane.entries.binary_search_by_key(&id, |e| e.id) {
            debug_assert_eq!(lane.entries[i].seq, UNSENT);
            lane.entries[i].seq = seq;
        }
    }

    /// Copies body bytes of `entry` from `offset` into `out`; returns the bytes copied.
    pub fn read(&self, entry: &SpoolEntry, offset: usize, out: &mut [u8]) -> usize {
        self.lane(entry.kind).read(entry, offset, out)
    }

    /// Frees space in `kind`'s lane for a record of `len` bytes under the overflow policy
    /// (module doc), calling `on_drop` for every entry dropped.
    pub fn make_room(
        &mut self,
        kind: RecordKind,
        len: usize,
        mut on_drop: impl FnMut(&SpoolEntry),
    ) -> Result<(), RoomError> {
        let lane = self.lane_mut(kind);
        if len > lane.ring.capacity() {
            return Err(RoomError::TooLarge);
        }
        let full = |lane: &Lane| {
            lane.used + len > lane.ring.capacity() || lane.entries.len() >= lane.max_entries
        };
        if !full(lane) {
            return Ok(());
        }
        // The unsent entries follow the sent ones: the first unsent is the oldest. Drop nothing
        // unless dropping every unsent entry would make room.
        let first_unsent = lane.entries.partition_point(|e| e.seq != UNSENT);
        let sent_bytes: usize = lane.entries.range(..first_unsent).map(|e| e.len).sum();
        if sent_bytes + len > lane.ring.capacity() || first_unsent >= lane.max_entries {
            return Err(RoomError::Busy);
        }
        while full(lane) {
            let Some(e) = lane.entries.get(first_unsent).copied() else {
                return Err(RoomError::Busy);
            };
            on_drop(&e);
            lane.remove_at(first_unsent);
        }
        Ok(())
    }

    /// A writer for a new entry of at most `len` bytes at the tail of `kind`'s lane, if it fits
    /// now (call [`Spool::make_room`] first). Nothing is kept until [`Spool::commit`].
    pub fn writer(&mut self, kind: RecordKind, len: usize) -> Option<SpoolWriter<'_>> {
        self.lane_mut(kind).writer(len)
    }

    /// Keeps the `len` bytes last written by a [`SpoolWriter`] as unsent entry `id`. The caller
    /// guarantees `len` bytes were written and fit, and that `id` is above every held id.
    pub fn commit(&mut self, kind: RecordKind, id: u64, len: usize) {
        self.lane_mut(kind).commit(id, kind, len);
        self.high_water = self.high_water.max(self.used());
    }

    /// Removes every entry with a seq up to `seq` from both lanes, in seq order, calling
    /// `on_remove` for each.
    pub fn remove_through(&mut self, seq: u64, mut on_remove: impl FnMut(&SpoolEntry)) {
        loop {
            let n = self.notices.entries.front().map_or(UNSENT, |e| e.seq);
            let d = self.dumps.entries.front().map_or(UNSENT, |e| e.seq);
            let lane = if n < d {
                &mut self.notices
            } else {
                &mut self.dumps
            };
            match lane.entries.front() {
                Some(e) if e.seq <= seq => {
                    on_remove(e);
                    lane.remove_at(0);
                }
                _ => return,
            }
        }
    }
}

/// One lane: a byte ring of entries in enqueue order, the sent ones first.
#[derive(Debug)]
struct Lane {
    /// The ring's bytes: its capacity is the ring size (`with_capacity` allocates exactly
    /// that), and its length grows up to it as the tail first reaches new positions (every
    /// position below the length has been written).
    ring: Vec<u8>,
    head: usize,
    used: usize,
    entries: VecDeque<SpoolEntry>,
    max_entries: usize,
}

impl Lane {
    fn new(bytes: usize, max_entries: usize) -> Self {
        Lane {
            ring: Vec::with_capacity(bytes),
            head: 0,
            used: 0,
            entries: VecDeque::with_capacity(max_entries),
            max_entries,
        }
    }

    /// The first entry not yet sent on a stream that has sent every seq up to `seq`.
    fn first_after(&self, seq: u64) -> Option<&SpoolEntry> {
        let i = self.entries.partition_point(|e| e.seq <= seq);
        self.entries.get(i)
    }

    fn read(&self, entry: &SpoolEntry, offset: usize, out: &mut [u8]) -> usize {
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

    fn writer(&mut self, len: usize) -> Option<SpoolWriter<'_>> {
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

    fn commit(&mut self, id: u64, kind: RecordKind, len: usize) {
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
            id,
            kind,
            len,
            seq: UNSENT,
            start,
        });
        self.used += len;
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
    use RecordKind::*;

    fn put(
        spool: &mut Spool,
        id: u64,
        kind: RecordKind,
        bytes: &[u8],
    ) -> Result<Vec<u64>, RoomError> {
        let mut dropped = Vec::new();
        spool.make_room(kind, bytes.len(), |e| dropped.push(e.id))?;
        let mut w = spool.writer(kind, bytes.len()).unwrap();
        w.write(bytes);
        assert_eq!(w.written(), bytes.len());
        spool.commit(kind, id, bytes.len());
        Ok(dropped)
    }

    fn body(spool: &Spool, kind: RecordKind, id: u64) -> Vec<u8> {
        let e = *spool.get(kind, id).unwrap();
        let mut out = vec![0; e.len];
        assert_eq!(spool.read(&e, 0, &mut out), e.len);
        out
    }

    fn ids(spool: &Spool, kind: RecordKind) -> Vec<u64> {
        spool.entries(kind).map(|e| e.id).collect()
    }

    #[test]
    fn dumps_never_evict_crash_notices() {
        // 400 bytes: notices get 100, dumps 300.
        let mut s = Spool::new(400, 100);
        assert_eq!(
            (s.lane_capacity(CrashSeen), s.lane_capacity(Dump)),
            (100, 300)
        );
        put(&mut s, 1, CrashSeen, &[1; 40]).unwrap();
        put(&mut s, 2, Dump, &[2; 150]).unwrap();
        put(&mut s, 3, CrashSeen, &[3; 40]).unwrap();
        put(&mut s, 4, Dump, &[4; 150]).unwrap();
        // The dump lane is full: the oldest dump goes, the notices stay.
        assert_eq!(put(&mut s, 5, Dump, &[5; 100]), Ok(vec![2]));
        assert_eq!(ids(&s, CrashSeen), vec![1, 3]);
        assert_eq!(ids(&s, Dump), vec![4, 5]);
        // The notice lane is full: its oldest notice goes.
        assert_eq!(put(&mut s, 6, CrashSeen, &[6; 40]), Ok(vec![1]));
        assert_eq!(
            (body(&s, CrashSeen, 3), body(&s, CrashSeen, 6)),
            (vec![3; 40], vec![6; 40])
        );
        assert_eq!(
            (body(&s, Dump, 4), body(&s, Dump, 5)),
            (vec![4; 150], vec![5; 100])
        );
        assert_eq!(s.make_room(Dump, 301, |_| {}), Err(RoomError::TooLarge));
        assert_eq!(
            s.make_room(CrashSeen, 101, |_| {}),
            Err(RoomError::TooLarge)
        );
        assert_eq!(s.high_water(), 380);
    }

    #[test]
    fn notices_go_first_and_seqs_follow_the_order_sent() {
        let mut s = Spool::new(4000, 100);
        put(&mut s, 1, Dump, &[1; 100]).unwrap();
        put(&mut s, 2, Dump, &[2; 100]).unwrap();
        put(&mut s, 3, CrashSeen, &[3; 10]).unwrap();
        // The notice enqueued after two dumps leaves first.
        let e = *s.next_to_send(0, true).unwrap();
        assert_eq!((e.id, e.seq()), (3, None));
        s.assign(CrashSeen, 3, 1);
        assert_eq!(s.next_to_send(1, true).unwrap().id, 1);
        // With the dump window closed, nothing unsent of the dump lane goes.
        assert_eq!(s.next_to_send(1, false), None);
        s.assign(Dump, 1, 2);
        // Reconnected with nothing acknowledged: the assigned entries go again in seq order,
        // before a notice enqueued since.
        put(&mut s, 4, CrashSeen, &[4; 10]).unwrap();
        assert_eq!(s.next_to_send(0, false).unwrap().id, 3);
        assert_eq!(s.next_to_send(1, false).unwrap().id, 1);
        assert_eq!(s.next_to_send(2, false).unwrap().id, 4);
        // An acknowledgement of seq 2 frees both lanes' entries up to it.
        let mut freed = vec![];
        s.remove_through(2, |e| freed.push(e.id));
        assert_eq!(freed, vec![3, 1]);
        assert_eq!((ids(&s, CrashSeen), ids(&s, Dump)), (vec![4], vec![2]));
    }

    #[test]
    fn sent_entries_are_never_dropped() {
        let mut s = Spool::new(400, 100);
        put(&mut s, 1, Dump, &[1; 150]).unwrap();
        put(&mut s, 2, Dump, &[2; 100]).unwrap();
        s.assign(Dump, 1, 1);
        // Dump 1 is on the wire (maybe stored): the unsent dump 2 goes instead.
        assert_eq!(put(&mut s, 3, Dump, &[3; 100]), Ok(vec![2]));
        s.assign(Dump, 3, 2);
        // Only sent dumps are left: the newcomer is refused, nothing is dropped.
        let mut dropped = vec![];
        assert_eq!(
            s.make_room(Dump, 100, |e| dropped.push(e.id)),
            Err(RoomError::Busy)
        );
        assert!(dropped.is_empty());
        s.remove_through(1, |_| {});
        assert_eq!(put(&mut s, 4, Dump, &[4; 100]), Ok(vec![]));
    }

    #[test]
    fn entry_count_is_bounded_too() {
        let mut s = Spool::new(4000, 4);
        put(&mut s, 1, CrashSeen, &[1]).unwrap();
        put(&mut s, 2, Dump, &[2]).unwrap();
        put(&mut s, 3, Dump, &[3]).unwrap();
        assert_eq!(put(&mut s, 4, Dump, &[4]), Ok(vec![2]));
        assert_eq!(put(&mut s, 5, CrashSeen, &[5]), Ok(vec![]));
    }

    #[test]
    fn the_ring_is_filled_as_the_tail_first_reaches_it() {
        let mut s = Spool::new(133, 16);
        let lane = |s: &Spool| (s.dumps.ring.capacity(), s.dumps.ring.len());
        assert_eq!(lane(&s), (100, 0));
        put(&mut s, 1, Dump, &[1; 30]).unwrap();
        put(&mut s, 2, Dump, &[2; 30]).unwrap();
        assert_eq!(lane(&s).1, 60);
        // Dropping the middle of three entries slides bytes within the filled part.
        put(&mut s, 3, Dump, &[3; 20]).unwrap();
        s.assign(Dump, 1, 1);
        assert_eq!(put(&mut s, 4, Dump, &[4; 40]), Ok(vec![2]));
        assert_eq!(
            (body(&s, Dump, 1), body(&s, Dump, 3), body(&s, Dump, 4)),
            (vec![1; 30], vec![3; 20], vec![4; 40])
        );
        assert_eq!(lane(&s).1, 90);
        // The next entry wraps into the space entry 1 leaves.
        s.remove_through(1, |_| {});
        put(&mut s, 5, Dump, &[5; 35]).unwrap();
        assert_eq!(lane(&s).1, 100);
        assert_eq!(body(&s, Dump, 5), vec![5; 35]);
        assert_eq!(s.dumps.ring.capacity(), 100, "no reallocation");
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
        /// Random appends, sends and acknowledgements against a model: every held entry always
        /// reads back exactly what was written, whatever wrapping and sliding happened, and only
        /// unsent entries are ever dropped.
        #[test]
        fn spool_matches_model(ops in proptest::collection::vec((0u8..4, 1usize..40, any::<bool>()), 1..200)) {
            let mut s = Spool::new(130, 16);
            let mut model: Vec<(u64, RecordKind, Vec<u8>, Option<u64>)> = Vec::new();
            let mut next = 1u64;
            let mut next_seq = 1u64;
            let mut acked = 0u64;
            for (op, n, flag) in ops {
                match op {
                    0 | 1 => {
                        let kind = if flag { Dump } else { CrashSeen };
                        let bytes: Vec<u8> = (0..n).map(|i| (next as usize * 31 + i) as u8).collect();
                        match put(&mut s, next, kind, &bytes) {
                            Ok(dropped) => {
                                for d in dropped {
                                    let i = model.iter().position(|m| m.0 == d).unwrap();
                                    prop_assert_eq!(model[i].3, None, "a sent entry was dropped");
                                    model.remove(i);
                                }
                                model.push((next, kind, bytes, None));
                            }
                            Err(RoomError::Busy) => {
                                let sent: usize = model.iter().filter(|m| m.1 == kind && m.3.is_some()).map(|m| m.2.len()).sum();
                                prop_assert!(sent + n > s.lane_capacity(kind) || model.iter().filter(|m| m.1 == kind && m.3.is_some()).count() >= 8);
                            }
                            Err(RoomError::TooLarge) => prop_assert!(n > s.lane_capacity(kind)),
                        }
                        next += 1;
                    }
                    2 => {
                        if let Some(e) = s.next_to_send(next_seq - 1, flag).copied() {
                            prop_assert_eq!(e.seq(), None);
                            s.assign(e.kind, e.id, next_seq);
                            model.iter_mut().find(|m| m.0 == e.id).unwrap().3 = Some(next_seq);
                            next_seq += 1;
                        }
                    }
                    _ => {
                        let through = (acked + n as u64 % 4).min(next_seq - 1);
                        s.remove_through(through, |_| {});
                        model.retain(|m| m.3.is_none_or(|q| q > through));
                        acked = through;
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.used(), model.iter().map(|m| m.2.len()).sum::<usize>());
                for (id, kind, bytes, seq) in &model {
                    let e = *s.get(*kind, *id).unwrap();
                    prop_assert_eq!(e.seq(), *seq);
                    let mut out = vec![0; e.len];
                    s.read(&e, 0, &mut out);
                    prop_assert_eq!(&out, bytes);
                }
            }
        }
    }
}
