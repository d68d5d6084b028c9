//! The last dumps' texts in a bounded RAM ring, for `/dumps` and `/dumps/<key>`.
//!
//! The relay stores every dump it emits here, at emission and whether or not a collector is
//! reachable, so an operator can read the last crashes from the appliance itself while the
//! collector is down. Texts share one byte ring of a fixed size (`http_dumps`, allocated
//! once); the index holds at most [`MAX_ENTRIES`] dumps. A new dump evicts the oldest until
//! it fits (counted); a text larger than the whole ring keeps its newest bytes (the end of
//! the log, where the crash is) and is marked truncated.
//!
//! Keys are made here from numbers and the source address only (`<seq>-<ip>-d<dump>.<gen>`
//! for netoops, `<seq>-<ip>-nc<boot>.<crash>` for netconsole; `:` of IPv6 written `_`), so a
//! key is always `[0-9A-Za-z._-]`; lookups compare the caller's key with them and never use
//! it for anything else.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::net::{IpAddr, SocketAddr};

use crate::time::Instant;

/// Dumps the index holds at most (the ring's bytes usually run out first).
pub const MAX_ENTRIES: usize = 64;
/// Longest key: a 20-digit sequence number, an IPv6 address and the dump's numbers.
pub const KEY_LEN: usize = 96;
/// Longest kernel release kept (the netoops header's field is 64 bytes).
pub const KERNEL_LEN: usize = 64;

/// A dump's key.
pub type DumpKey = heapless::String<KEY_LEN>;

/// Which protocol a dump came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpSource {
    /// Reassembled netoops datagrams.
    Netoops,
    /// A netconsole crash with its history.
    Netconsole,
}

impl DumpSource {
    /// `netoops` or `netconsole`.
    pub fn name(self) -> &'static str {
        match self {
            DumpSource::Netoops => "netoops",
            DumpSource::Netconsole => "netconsole",
        }
    }
}

/// What the index says about one dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpEntry {
    /// Store order, from 1.
    pub seq: u64,
    /// `/dumps/<key>`.
    pub key: DumpKey,
    /// Netoops or netconsole.
    pub kind: DumpSource,
    /// Sender.
    pub source: SocketAddr,
    /// Kernel release as sent, control characters left out.
    pub kernel: heapless::String<KERNEL_LEN>,
    /// Nothing missing.
    pub complete: bool,
    /// Packets (netoops) or records (netconsole) received.
    pub received: u32,
    /// Packets or records the dump should have had.
    pub packets: u32,
    /// Dump revision (netoops: a later round can complete a partial dump).
    pub revision: u32,
    /// Bytes of text the dump had.
    pub text_len: usize,
    /// Bytes kept (the newest `stored` of `text_len`).
    pub stored: usize,
    /// When the relay emitted it (its monotonic clock).
    pub emitted: Instant,
    start: u64,
}

/// The ring's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpRingStats {
    /// Dumps stored.
    pub stored: u64,
    /// Dumps evicted to make room.
    pub evicted: u64,
    /// Dumps kept only in part (larger than the ring).
    pub truncated: u64,
}

/// The metadata of a dump to store.
#[derive(Clone, Copy, Debug)]
pub struct NewDump<'a> {
    /// Netoops or netconsole.
    pub kind: DumpSource,
    /// Sender.
    pub source: SocketAddr,
    /// Netoops: dump id; netconsole: boot.
    pub major: u32,
    /// Netoops: generation; netconsole: crash number.
    pub minor: u32,
    /// Kernel release bytes as sent.
    pub kernel: &'a [u8],
    /// Nothing missing.
    pub complete: bool,
    /// Packets or records received.
    pub received: u32,
    /// Packets or records expected.
    pub packets: u32,
    /// Revision.
    pub revision: u32,
    /// When emitted.
    pub emitted: Instant,
}

/// The ring. See the module documentation.
pub struct DumpRing {
    buf: Vec<u8>,
    /// Bytes ever written: the next byte goes to `head % buf.len()`.
    head: u64,
    entries: VecDeque<DumpEntry>,
    next_seq: u64,
    stats: DumpRingStats,
}

impl DumpRing {
    /// Bytes [`Self::new`] allocates for a ring of `bytes`.
    pub fn footprint(bytes: usize) -> usize {
        if bytes == 0 {
            0
        } else {
            bytes + MAX_ENTRIES * core::mem::size_of::<DumpEntry>()
        }
    }

    /// A ring of `bytes` (0: keeps no dumps). Allocates everything it will ever use.
    pub fn new(bytes: usize) -> DumpRing {
        DumpRing {
            buf: alloc::vec![0u8; bytes],
            head: 0,
            entries: VecDeque::with_capacity(if bytes == 0 { 0 } else { MAX_ENTRIES }),
            next_seq: 1,
            stats: DumpRingStats::default(),
        }
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of text held now.
    pub fn used(&self) -> usize {
        self.entries.iter().map(|e| e.stored).sum()
    }

    /// Counters.
    pub fn stats(&self) -> &DumpRingStats {
        &self.stats
    }

    /// Dumps held, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &DumpEntry> + '_ {
        self.entries.iter()
    }

    /// The dump with this key.
    pub fn find(&self, key: &str) -> Option<&DumpEntry> {
        self.entries.iter().find(|e| e.key.as_str() == key)
    }

    /// The dump with this sequence number, if still held.
    pub fn get(&self, seq: u64) -> Option<&DumpEntry> {
        self.entries.iter().find(|e| e.seq == seq)
    }

    /// The bytes `offset..` of a held dump's text, as one or two slices (the ring wraps).
    pub fn text(&self, entry: &DumpEntry, offset: usize) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if offset >= entry.stored || cap == 0 {
            return (&[], &[]);
        }
        let len = entry.stored - offset;
        let at = ((entry.start + offset as u64) % cap as u64) as usize;
        let first = len.min(cap - at);
        (&self.buf[at..at + first], &self.buf[..len - first])
    }

    /// Stores a dump of `text_len` bytes that `fill` writes in pieces (in order, `text_len`
    /// in all). Never allocates.
    pub fn store(
        &mut self,
        d: &NewDump<'_>,
        text_len: usize,
        fill: impl FnOnce(&mut RingWriter<'_>),
    ) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        let stored = text_len.min(cap);
        if stored < text_len {
            self.stats.truncated += 1;
        }
        // Make room: the new text takes head..head+stored, which overwrites whatever started
        // before head+stored-cap.
        let oldest_kept = (self.head + stored as u64).saturating_sub(cap as u64);
        while let Some(front) = self.entries.front() {
            if front.start >= oldest_kept && self.entries.len() < MAX_ENTRIES {
                break;
            }
            self.entries.pop_front();
            self.stats.evicted += 1;
        }
        let start = self.head;
        let mut w = RingWriter {
            buf: &mut self.buf,
            pos: start,
            skip: text_len - stored,
            left: stored,
        };
        fill(&mut w);
        // A short fill leaves stale bytes in the tail; the entry still covers `stored`.
        self.head += stored as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut key = DumpKey::new();
        let _ = write!(key, "{seq}-");
        let _ = write_ip(&mut key, d.source.ip());
        let _ = match d.kind {
            DumpSource::Netoops => write!(key, "-d{}.{}", d.major, d.minor),
            DumpSource::Netconsole => write!(key, "-nc{}.{}", d.major, d.minor),
        };
        self.entries.push_back(DumpEntry {
            seq,
            key,
            kind: d.kind,
            source: d.source,
            kernel: printable(d.kernel),
            complete: d.complete,
            received: d.received,
            packets: d.packets,
            revision: d.revision,
            text_len,
            stored,
            emitted: d.emitted,
            start,
        });
        self.stats.stored += 1;
    }
}

/// Where [`DumpRing::store`]'s `fill` writes the text.
pub struct RingWriter<'a> {
    buf: &'a mut [u8],
    pos: u64,
    /// Leading bytes to leave out (the text is larger than the ring).
    skip: usize,
    left: usize,
}

impl RingWriter<'_> {
    /// Appends the next piece of the text.
    pub fn write(&mut self, mut bytes: &[u8]) {
        let drop = self.skip.min(bytes.len());
        self.skip -= drop;
        bytes = &bytes[drop..];
        let cap = self.buf.len();
        while !bytes.is_empty() && self.left > 0 {
            let at = (self.pos % cap as u64) as usize;
            let n = bytes.len().min(cap - at).min(self.left);
            self.buf[at..at + n].copy_from_slice(&bytes[..n]);
            self.pos += n as u64;
            self.left -= n;
            bytes = &bytes[n..];
        }
    }
}

/// An IP as a key part: IPv6's `:` written `_`.
fn write_ip(out: &mut DumpKey, ip: IpAddr) -> core::fmt::Result {
    match ip {
        IpAddr::V4(a) => write!(out, "{a}"),
        IpAddr::V6(a) => {
            let mut s: heapless::String<48> = heapless::String::new();
            write!(s, "{a}")?;
            for c in s.chars() {
                out.push(if c == ':' { '_' } else { c })
                    .map_err(|_| core::fmt::Error)?;
            }
            Ok(())
        }
    }
}

/// Lossy UTF-8 without control characters, cut at the capacity.
fn printable<const N: usize>(bytes: &[u8]) -> heapless::String<N> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut out = heapless::String::new();
    for chunk in bytes[..end].utf8_chunks() {
        let bad = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
        for c in chunk.valid().chars().chain(bad) {
            if !c.is_control() && out.push(c).is_err() {
                return out;
            }
        }
    }
    out
}

/// Whether `key` could be one of ours: 1-[`KEY_LEN`] characters of `[0-9A-Za-z._-]`.
pub fn valid_key(key: &str) -> bool {
    crate::is_token(key, KEY_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn dump(ip: &str, major: u32) -> NewDump<'static> {
        NewDump {
            kind: DumpSource::Netoops,
            source: SocketAddr::new(ip.parse().unwrap(), 6666),
            major,
            minor: 0,
            kernel: b"6.1.0\x1b[2J\0junk",
            complete: true,
            received: 3,
            packets: 3,
            revision: 1,
            emitted: Instant::from_millis(5),
        }
    }

    fn text(ring: &DumpRing, e: &DumpEntry) -> Vec<u8> {
        let (a, b) = ring.text(e, 0);
        [a, b].concat()
    }

    fn put(ring: &mut DumpRing, d: &NewDump<'_>, t: &[u8]) {
        ring.store(d, t.len(), |w| {
            for piece in t.chunks(7) {
                w.write(piece)
            }
        });
    }

    #[test]
    fn oldest_dumps_make_room_and_texts_survive_the_wrap() {
        let mut ring = DumpRing::new(100);
        let a: Vec<u8> = (0..40).collect();
        let b: Vec<u8> = (100..140).collect();
        let c: Vec<u8> = (200..250).collect();
        put(&mut ring, &dump("10.0.0.1", 1), &a);
        put(&mut ring, &dump("10.0.0.2", 2), &b);
        assert_eq!(ring.entries().count(), 2);
        put(&mut ring, &dump("fd00::1", 3), &c);
        // c wraps over a's bytes: a is gone, b and c are intact.
        let keys: Vec<&str> = ring.entries().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["2-10.0.0.2-d2.0", "3-fd00__1-d3.0"]);
        assert_eq!(ring.stats().evicted, 1);
        assert_eq!(text(&ring, ring.find("2-10.0.0.2-d2.0").unwrap()), b);
        let e = ring.find("3-fd00__1-d3.0").unwrap();
        assert_eq!(text(&ring, e), c);
        let (x, y) = ring.text(e, 45);
        assert_eq!([x, y].concat(), &c[45..]);
        assert_eq!(e.kernel.as_str(), "6.1.0[2J");
        assert!(ring.find("1-10.0.0.1-d1.0").is_none());
        assert!(valid_key(&e.key));
    }

    #[test]
    fn a_text_larger_than_the_ring_keeps_its_end() {
        let mut ring = DumpRing::new(64);
        put(&mut ring, &dump("10.0.0.1", 1), &[1; 30]);
        let big: Vec<u8> = (0..=255).collect();
        put(&mut ring, &dump("10.0.0.1", 2), &big);
        assert_eq!(ring.entries().count(), 1);
        let e = ring.entries().next().unwrap();
        assert_eq!((e.stored, e.text_len), (64, 256));
        assert_eq!(text(&ring, e), &big[192..]);
        assert_eq!(ring.stats().truncated, 1);
        assert_eq!(ring.used(), 64);
    }

    #[test]
    fn the_index_is_bounded_and_an_empty_ring_keeps_nothing() {
        let mut ring = DumpRing::new(1 << 20);
        for i in 0..(MAX_ENTRIES as u32 + 5) {
            put(&mut ring, &dump("10.0.0.1", i), b"x");
        }
        assert_eq!(ring.entries().count(), MAX_ENTRIES);
        assert_eq!(ring.stats().evicted, 5);
        let mut none = DumpRing::new(0);
        put(&mut none, &dump("10.0.0.1", 1), b"x");
        assert_eq!(none.entries().count(), 0);
    }

    #[test]
    fn keys_are_checked_before_any_lookup() {
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "a b",
            "%2e",
            "é",
            &"x".repeat(KEY_LEN + 1),
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        assert!(valid_key("12-10.0.0.1-d7.0"));
    }
}
