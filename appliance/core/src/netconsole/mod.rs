//! Netconsole ingest: per-source log history, sequence tracking and crash detection.
//!
//! Healthy machines chatter: their records are absorbed into a bounded history per source and
//! counted. When a record of severity warning or more urgent (extended; see
//! [`CRASH_SEVERITY`]) or any line (legacy) says the kernel crashed (see
//! [`netoops_wire::netconsole::is_crash_line`]), the source turns crashing: a
//! [`ConsoleSink::crash_seen`] goes out at once with that line, and when the source goes quiet
//! (the `quiet` timeout) or reboots, its whole history (what came before the crash line and
//! everything after it) is rendered as one dump for [`ConsoleSink::dump`].
//!
//! Memory is fixed at start: a pool of blocks shared by all sources ([`history`]) and a table
//! of sources. A source keeps at most `history_bytes` while healthy and twice that while
//! crashing; a crashing source's blocks are never taken by others. When the pool runs dry, the
//! oldest entries of healthy sources are reclaimed (a clock sweep); when the table is full, a
//! healthy source that has not been heard from recently is forgotten. Every such loss is
//! counted.
//!
//! Extended records are kept as they arrive (fragments too) and put in sequence order when a
//! dump is rendered, so reordering costs nothing; gaps between received sequence numbers
//! become missing ranges and `[netconsole: records A-B missing]` lines, and a record with
//! lost fragments keeps what arrived with `[netconsole: bytes A-B missing]` in the holes. A
//! sequence number far below the newest, or a timestamp that goes back while the sequence
//! goes forward, or a repeated sequence number with another timestamp, starts a new boot.

pub mod history;

use alloc::vec;
use alloc::vec::Vec;
use core::hash::{BuildHasher, Hasher};
use core::net::SocketAddr;

use crate::hash_key::HashKey;
use hashbrown::HashMap;
use netoops_wire::netconsole::{
    crash_text, is_crash_line, unescape, write_fragment_gap, write_gap, write_line, Body, Datagram,
    Extended, NetconsoleError,
};

use crate::time::{Duration, Instant};
pub use history::Prefetch;
use history::{BlockPool, Chain, EntryHeader, EntryKind, BLOCK, HEADER_LEN};

/// Longest crash line kept.
pub const CRASH_LINE_LEN: usize = 240;
/// Longest release string kept.
const RELEASE_LEN: usize = 64;
/// Sequence numbers below the newest that are tracked for duplicates and reordering; further
/// back is a new boot.
const SEQ_WINDOW: u64 = 256;
/// Longest legacy partial line kept for crash detection.
const LINE_LEN: usize = 512;
/// Most userdata/sysdata keys reported with a dump.
pub const MAX_FIELDS: usize = 16;
/// Most missing ranges reported (the text still marks every gap).
pub const MAX_MISSING: usize = 256;
/// Least urgent severity a crash line is looked for in (warning).
pub const CRASH_SEVERITY: u8 = 4;
/// Fragment offsets of the record being split remembered per source.
const FRAG_TRACK: usize = 16;
/// Largest extended body (all fragments) assembled; bigger ones are cut.
const MAX_BODY: usize = 16 * 1024;

/// Sizes and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// History kept per healthy source (`netconsole_history`).
    pub history_bytes: usize,
    /// Bytes of history all sources share (`netconsole_memory`).
    pub memory_budget: usize,
    /// Sources tracked at once (`netconsole_sources`).
    pub max_sources: usize,
    /// A crashing source that sends nothing for this long has its dump emitted (`quiet`).
    pub quiet_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            history_bytes: 64 << 10,
            memory_budget: 16 << 20,
            max_sources: 4096,
            quiet_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Datagrams handled.
    pub datagrams: u64,
    /// Extended datagrams (records and fragments).
    pub extended: u64,
    /// Fragments among them.
    pub fragments: u64,
    /// Legacy datagrams.
    pub legacy: u64,
    /// Malformed datagrams by [`NetconsoleError::index`].
    pub malformed: [u64; NetconsoleError::ALL.len()],
    /// Malformed `\xNN` escapes met while rendering (kept as they were).
    pub bad_escapes: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Crashes detected.
    pub crashes: u64,
    /// Dumps emitted.
    pub dumps: u64,
    /// New boots detected.
    pub boots: u64,
    /// Sources forgotten to make room in the table.
    pub sources_evicted: u64,
    /// History blocks dropped (with the entries starting in them) to stay within a source's
    /// share or to free blocks for another source.
    pub blocks_trimmed: u64,
    /// Datagrams dropped for want of memory (every source crashing).
    pub dropped_no_memory: u64,
    /// Datagrams dropped because a crashing source reached its cap.
    pub dropped_crash_full: u64,
    /// Sources refused because the table is full of crashing sources.
    pub dropped_no_source: u64,
}

impl ConsoleStats {
    /// Malformed datagrams of every reason.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// A crash just detected.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleCrash<'a> {
    /// Who.
    pub source: SocketAddr,
    /// Boot number of that source as counted here (0 for the first seen).
    pub boot: u32,
    /// Crash number within the boot.
    pub crash: u32,
    /// The line that says it crashed.
    pub line: &'a [u8],
    /// Sender's kernel release, when known.
    pub release: &'a [u8],
    /// Extended (true) or legacy.
    pub extended: bool,
    /// When.
    pub at: Instant,
}

/// A crash dump: the source's history around the crash, rendered.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleDump<'a> {
    /// The crash it is the dump of, as it was noticed (`at` its detection); its `release`
    /// here also falls back to a `release=` field or the kernel's boot line.
    pub notice: ConsoleCrash<'a>,
    /// The dump text.
    pub text: &'a [u8],
    /// Missing sequence ranges, inclusive, ascending (at most [`MAX_MISSING`]).
    pub missing: &'a [(u64, u64)],
    /// Sequence numbers of records with lost fragments.
    pub incomplete: &'a [u64],
    /// Records rendered.
    pub records: u32,
    /// Lowest and highest sequence number rendered (extended).
    pub seq_range: Option<(u64, u64)>,
    /// Userdata and sysdata `key=value` pairs of the crash record (dictionary keys left out).
    pub fields: &'a [(&'a [u8], &'a [u8])],
    /// Older history was dropped (memory) or the crash window was cut at its cap.
    pub truncated: bool,
    /// When the dump was emitted.
    pub emitted_at: Instant,
}

impl ConsoleDump<'_> {
    /// Nothing is missing.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.incomplete.is_empty() && !self.truncated
    }
}

/// Where crash notices and dumps go.
pub trait ConsoleSink {
    /// A crash was detected.
    fn crash_seen(&mut self, c: &ConsoleCrash<'_>);
    /// A dump is ready.
    fn dump(&mut self, d: &ConsoleDump<'_>);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unknown,
    Extended,
    Legacy,
}

/// The crash in progress (`truncated` first: `Option<Crash>`'s tag lives in it, near the
/// start of [`Source`]'s second cache line).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Crash {
    truncated: bool,
    number: u32,
    /// Logical history position of the crash entry: never trimmed while crashing.
    pos: u64,
    at: Instant,
}

/// A source's text buffers, kept apart from [`Source`] so the per-datagram state of a
/// thousand sources stays small and close together in the cache.
struct SourceText {
    /// Legacy: the line being received (for crash detection).
    line: [u8; LINE_LEN],
    line_len: u16,
    release: [u8; RELEASE_LEN],
    release_len: u8,
    /// The line that started the crash in progress.
    crash_line: [u8; CRASH_LINE_LEN],
    crash_line_len: u16,
}

impl SourceText {
    const EMPTY: SourceText = SourceText {
        line: [0; LINE_LEN],
        line_len: 0,
        release: [0; RELEASE_LEN],
        release_len: 0,
        crash_line: [0; CRASH_LINE_LEN],
        crash_line_len: 0,
    };

    fn set_release(&mut self, r: &[u8]) {
        let n = r.len().min(RELEASE_LEN);
        self.release[..n].copy_from_slice(&r[..n]);
        self.release_len = n as u8;
    }

    fn release(&self) -> &[u8] {
        &self.release[..self.release_len as usize]
    }

    fn crash_line(&self) -> &[u8] {
        &self.crash_line[..self.crash_line_len as usize]
    }
}

/// One sender. The fields every datagram reads come first, in the first two cache lines
/// (`repr(C)` keeps the order): with a thousand sources the state is rarely in the cache.
#[repr(C, align(64))]
struct Source {
    chain: Chain,
    /// Newest sequence number seen this boot, and its timestamp.
    max_seq: Option<u64>,
    max_usec: u64,
    last_heard: Instant,
    /// Bit `i` set: `max_seq - i` has an entry.
    seen: [u64; (SEQ_WINDOW / 64) as usize],
    mode: Mode,
    referenced: bool,
    trimmed: bool,
    frag_n: u8,
    crash: Option<Crash>,
    /// The split record being received: its seq, timestamp and the fragment offsets seen, so
    /// its later fragments need no search of the history.
    frag_seq: u64,
    frag_usec: u64,
    frag_offsets: [u32; FRAG_TRACK],
    /// Legacy: arrival counter and a hash of the last datagram (duplicates).
    legacy_count: u64,
    legacy_last: u64,
    boot: u32,
    crashes: u32,
    addr: SocketAddr,
}

impl Source {
    fn new(addr: SocketAddr, now: Instant) -> Source {
        Source {
            addr,
            chain: Chain::default(),
            mode: Mode::Unknown,
            boot: 0,
            crashes: 0,
            max_seq: None,
            max_usec: 0,
            seen: [0; (SEQ_WINDOW / 64) as usize],
            legacy_count: 0,
            legacy_last: 0,
            frag_seq: u64::MAX,
            frag_usec: 0,
            frag_offsets: [0; FRAG_TRACK],
            frag_n: 0,
            last_heard: now,
            referenced: true,
            trimmed: false,
            crash: None,
        }
    }

    fn seen_bit(&self, seq: u64) -> Option<(usize, u64)> {
        let max = self.max_seq?;
        let back = max.checked_sub(seq)?;
        (back < SEQ_WINDOW).then_some(((back / 64) as usize, 1u64 << (back % 64)))
    }

    fn is_seen(&self, seq: u64) -> bool {
        self.seen_bit(seq)
            .is_some_and(|(w, b)| self.seen[w] & b != 0)
    }

    fn mark_seen(&mut self, seq: u64, usec: u64) {
        match self.max_seq {
            Some(max) if seq <= max => {}
            Some(max) => {
                let shift = seq - max;
                if shift == 1 {
                    // The usual case: the next record.
                    let mut carry = 0;
                    for w in &mut self.seen {
                        let next = *w >> 63;
                        *w = *w << 1 | carry;
                        carry = next;
                    }
                } else if shift >= SEQ_WINDOW {
                    self.seen = [0; (SEQ_WINDOW / 64) as usize];
                } else {
                    // Shift the whole bitmap left by `shift` bits (towards older).
                    let words = (shift / 64) as usize;
                    let bits = (shift % 64) as u32;
                    let n = self.seen.len();
                    for i in (0..n).rev() {
                        let src = i.checked_sub(words);
                        let lo = src.map_or(0, |s| self.seen[s]);
                        let carry = match src.and_then(|s| s.checked_sub(1)) {
                            Some(s) if bits > 0 => self.seen[s] >> (64 - bits),
                            _ => 0,
                        };
                        self.seen[i] = if bits == 0 { lo } else { lo << bits | carry };
                    }
                }
                self.max_seq = Some(seq);
                self.max_usec = usec;
            }
            None => {
                self.max_seq = Some(seq);
                self.max_usec = usec;
            }
        }
        if let Some((w, b)) = self.seen_bit(seq) {
            self.seen[w] |= b;
        }
    }

    fn crashing(&self) -> bool {
        self.crash.is_some()
    }

    /// Answers [`ConsoleTracker::find_seq`] from the split record being received, when it is
    /// that one.
    fn recent_fragment(&self, e: &Extended<'_>) -> Option<Lookup> {
        let f = e.fragment?;
        if e.seq != self.frag_seq || self.frag_n as usize >= FRAG_TRACK {
            return None;
        }
        if e.usec != self.frag_usec {
            return Some(Lookup::OtherBoot);
        }
        let seen = self.frag_offsets[..self.frag_n as usize].contains(&f.offset);
        Some(if seen {
            Lookup::Duplicate
        } else {
            Lookup::NewPart
        })
    }

    fn note_fragment(&mut self, seq: u64, usec: u64, offset: u32) {
        if seq != self.frag_seq || usec != self.frag_usec {
            self.frag_seq = seq;
            self.frag_usec = usec;
            self.frag_n = 0;
        }
        if (self.frag_n as usize) < FRAG_TRACK {
            self.frag_offsets[self.frag_n as usize] = offset;
            self.frag_n += 1;
        }
    }
}

/// Scratch space for rendering a dump, allocated once.
struct Render {
    index: Vec<(u64, u32, u64)>,
    text: Vec<u8>,
    body: Vec<u8>,
    entry: Vec<u8>,
    missing: Vec<(u64, u64)>,
    incomplete: Vec<u64>,
    fields: Vec<(u16, u16, u16, u16)>,
    field_bytes: Vec<u8>,
    /// The release from a `Linux version <release> ...` boot line, for senders without `r`.
    boot_release: [u8; RELEASE_LEN],
    boot_release_len: usize,
}

/// The netconsole tracker. See the module documentation.
pub struct ConsoleTracker {
    config: ConsoleConfig,
    pool: BlockPool,
    sources: Vec<Source>,
    texts: Vec<SourceText>,
    by_addr: HashMap<(u128, u16), u32, HashKey>,
    crashing: Vec<u32>,
    hand: usize,
    render: Render,
    stats: ConsoleStats,
    prefetch: Prefetch,
}

/// A source address as a table key: IPv4 as its mapped IPv6 form, so hashing and comparing
/// are two plain integers.
fn key(addr: SocketAddr) -> (u128, u16) {
    let ip = match addr.ip() {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        core::net::IpAddr::V6(v6) => v6,
    };
    (u128::from(ip), addr.port())
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x6e63).build_hasher();
    h.write(b);
    h.finish()
}

/// The sizes [`ConsoleTracker::new`] allocates by, in one place so that
/// [`ConsoleTracker::footprint`] follows them.
#[derive(Clone, Copy)]
struct Capacities {
    /// Blocks in the shared pool.
    blocks: usize,
    max_sources: usize,
    /// The longest entry a source's history can hand the renderer.
    cap: usize,
}

impl Capacities {
    fn of(config: &ConsoleConfig) -> Capacities {
        Capacities {
            blocks: (config.memory_budget / BLOCK).max(4),
            max_sources: config.max_sources.max(1),
            cap: 2 * config.history_bytes + 2 * BLOCK,
        }
    }

    fn index(&self) -> usize {
        self.cap / HEADER_LEN + 1
    }

    fn text(&self) -> usize {
        self.cap * 5 / 2 + 4096
    }
}

impl ConsoleTracker {
    /// The part of [`Self::footprint`] that is the history pool (`netconsole_memory`); the
    /// rest grows with the sources (`netconsole_sources`) and the history per source.
    pub fn pool_footprint(config: &ConsoleConfig) -> usize {
        BlockPool::footprint(Capacities::of(config).blocks)
    }

    /// Bytes [`Self::new`] takes from the heap for `config`, at most (the appliance checks
    /// its heap against it before building the relay).
    pub fn footprint(config: &ConsoleConfig) -> usize {
        use core::mem::size_of;
        let c = Capacities::of(config);
        let per_source = size_of::<Source>() + size_of::<SourceText>() + size_of::<u32>();
        BlockPool::footprint(c.blocks)
            + c.max_sources * per_source
            + crate::reassembly::map_bytes::<(u128, u16), u32>(2 * c.max_sources)
            + c.index() * size_of::<(u64, u32, u64)>()
            + c.text()
            + MAX_BODY
            + c.cap
            + MAX_MISSING * (size_of::<(u64, u64)>() + size_of::<u64>())
            + MAX_FIELDS * (size_of::<(u16, u16, u16, u16)>() + 256)
    }

    /// Allocates the pool and the source table.
    pub fn new(config: ConsoleConfig) -> ConsoleTracker {
        Self::keyed(config, HashKey::fixed())
    }

    /// Like [`Self::new`], with the source table keyed by `key`: a secret per start where
    /// senders are hostile ([`crate::hash_key`]).
    pub fn keyed(config: ConsoleConfig, key: HashKey) -> ConsoleTracker {
        let sizes = Capacities::of(&config);
        let Capacities {
            blocks,
            max_sources,
            cap,
        } = sizes;
        ConsoleTracker {
            config,
            pool: BlockPool::new(blocks),
            sources: Vec::with_capacity(max_sources),
            texts: Vec::with_capacity(max_sources),
            // Twice the sources: forgetting a source leaves a tombstone, and hashbrown clears
            // tombstones in place only while the table is at most half full; fuller, it
            // would grow, an allocation in the per-datagram path.
            by_addr: HashMap::with_capacity_and_hasher(2 * max_sources, key),
            crashing: Vec::with_capacity(max_sources),
            hand: 0,
            render: Render {
                index: Vec::with_capacity(sizes.index()),
                text: Vec::with_capacity(sizes.text()),
                body: vec![0u8; MAX_BODY],
                entry: vec![0u8; cap],
                missing: Vec::with_capacity(MAX_MISSING),
                incomplete: Vec::with_capacity(MAX_MISSING),
                fields: Vec::with_capacity(MAX_FIELDS),
                field_bytes: Vec::with_capacity(MAX_FIELDS * 256),
                boot_release: [0; RELEASE_LEN],
                boot_release_len: 0,
            },
            stats: ConsoleStats::default(),
            prefetch: history::read_lines,
        }
    }

    /// Uses `prefetch` to ask for a source's history tail before its datagram is parsed
    /// (the default, [`history::read_lines`], reads the lines instead; see [`Prefetch`]).
    pub fn set_prefetch(&mut self, prefetch: Prefetch) {
        self.prefetch = prefetch;
    }

    /// The configuration.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &ConsoleStats {
        &self.stats
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.by_addr.len()
    }

    /// Sources crashing now.
    pub fn crashing(&self) -> usize {
        self.crashing.len()
    }

    /// History blocks in use and in the pool.
    pub fn block_usage(&self) -> (usize, usize) {
        (
            self.pool.capacity() - self.pool.free_blocks(),
            self.pool.capacity(),
        )
    }

    /// Handles one datagram received on the netconsole port.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        sink: &mut impl ConsoleSink,
    ) -> Result<(), NetconsoleError> {
        self.stats.datagrams += 1;
        // A known source's history tail is rarely in the cache: ask for its lines before
        // parsing, so the misses overlap the parse instead of stalling the copy after it.
        let known = self.by_addr.get(&key(source)).copied();
        if let Some(i) = known {
            let s = &self.sources[i as usize];
            self.pool
                .touch_tail(&s.chain, HEADER_LEN + bytes.len(), self.prefetch);
        }
        let dgram = match Datagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed[e.index()] += 1;
                return Err(e);
            }
        };
        let found = match known {
            Some(i) => Some(i as usize),
            None => self.source_index(now, source),
        };
        let Some(idx) = found else {
            self.stats.dropped_no_source += 1;
            return Ok(());
        };
        let s = &mut self.sources[idx];
        s.last_heard = now;
        s.referenced = true;
        match &dgram {
            Datagram::Extended(e) => {
                self.stats.extended += 1;
                if e.fragment.is_some() {
                    self.stats.fragments += 1;
                }
                self.extended(now, idx, e, sink);
            }
            Datagram::Legacy(text) => {
                self.stats.legacy += 1;
                self.legacy(now, idx, text, sink);
            }
        }
        Ok(())
    }

    fn source_index(&mut self, now: Instant, addr: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&key(addr)) {
            return Some(i as usize);
        }
        let max = self.config.max_sources.max(1);
        if self.sources.len() < max {
            self.sources.push(Source::new(addr, now));
            self.texts.push(SourceText::EMPTY);
            let i = self.sources.len() - 1;
            self.by_addr.insert(key(addr), i as u32);
            return Some(i);
        }
        // Full: forget a healthy source not heard from since the hand last passed (clock).
        let n = self.sources.len();
        for _ in 0..2 * n {
            let i = self.hand % n;
            self.hand = (self.hand + 1) % n;
            let s = &mut self.sources[i];
            if s.crashing() {
                continue;
            }
            if s.referenced {
                s.referenced = false;
                continue;
            }
            self.stats.sources_evicted += 1;
            self.pool.clear(&mut self.sources[i].chain);
            let old = self.sources[i].addr;
            self.by_addr.remove(&key(old));
            self.sources[i] = Source::new(addr, now);
            self.texts[i] = SourceText::EMPTY;
            self.by_addr.insert(key(addr), i as u32);
            return Some(i);
        }
        None
    }

    fn new_boot(&mut self, now: Instant, idx: usize, sink: &mut impl ConsoleSink) {
        if self.sources[idx].crashing() {
            self.emit(now, idx, sink);
        }
        self.stats.boots += 1;
        let s = &mut self.sources[idx];
        self.pool.clear(&mut s.chain);
        s.boot = s.boot.wrapping_add(1);
        s.crashes = 0;
        s.max_seq = None;
        s.max_usec = 0;
        s.seen = [0; (SEQ_WINDOW / 64) as usize];
        s.legacy_last = 0;
        s.trimmed = false;
        self.texts[idx].line_len = 0;
        s.frag_seq = u64::MAX;
        s.frag_n = 0;
    }

    fn extended(
        &mut self,
        now: Instant,
        idx: usize,
        e: &Extended<'_>,
        sink: &mut impl ConsoleSink,
    ) {
        let s = &self.sources[idx];
        if s.mode == Mode::Legacy && s.chain.bytes() > 0 {
            self.new_boot(now, idx, sink);
        }
        self.sources[idx].mode = Mode::Extended;
        let (max_seq, max_usec) = (self.sources[idx].max_seq, self.sources[idx].max_usec);
        if let Some(max) = max_seq {
            let went_back = e.seq.saturating_add(SEQ_WINDOW) <= max;
            let clock_back = e.seq > max && e.usec.saturating_add(1_000_000) < max_usec;
            if went_back || clock_back {
                self.new_boot(now, idx, sink);
            } else if self.sources[idx].is_seen(e.seq) {
                match self.sources[idx]
                    .recent_fragment(e)
                    .unwrap_or_else(|| self.find_seq(idx, e))
                {
                    Lookup::Duplicate => {
                        self.stats.duplicates += 1;
                        return;
                    }
                    Lookup::OtherBoot => self.new_boot(now, idx, sink),
                    Lookup::NewPart => {}
                }
            }
        }
        if let Some(r) = e.release {
            self.texts[idx].set_release(r);
        }
        let (kind, offset, total) = match e.fragment {
            Some(f) => (EntryKind::Fragment, f.offset, f.total),
            None => (EntryKind::Record, 0, 0),
        };
        let header = EntryHeader {
            len: (HEADER_LEN + e.body.len()) as u32,
            kind,
            seq: e.seq,
            usec: e.usec,
            frag_offset: offset,
            frag_total: total,
        };
        if !self.store(idx, &header, e.body) {
            return;
        }
        let s = &mut self.sources[idx];
        s.mark_seen(e.seq, e.usec);
        if let Some(f) = e.fragment {
            s.note_fragment(e.seq, e.usec, f.offset);
        }
        // Crash detection on the message text (the first fragment holds its start). The
        // kernel prints every crash header at warning (4) or more urgent: `Oops` and GPFs at
        // the default level 4, hung tasks and RCU stalls at 3, `BUG:` at 1, panics at 0, so
        // the info and debug chatter that makes up most traffic is not scanned.
        if offset == 0 && e.severity() <= CRASH_SEVERITY && !self.sources[idx].crashing() {
            if let Some(text) = crash_text(e.body) {
                let mut line = [0u8; CRASH_LINE_LEN];
                let mut n = 0;
                unescape(text, |b| {
                    let take = b.len().min(CRASH_LINE_LEN - n);
                    line[n..n + take].copy_from_slice(&b[..take]);
                    n += take;
                });
                let pos = self.sources[idx].chain.end() - u64::from(header.len);
                self.start_crash(now, idx, pos, &line[..n], sink);
            }
        }
    }

    fn find_seq(&self, idx: usize, e: &Extended<'_>) -> Lookup {
        let s = &self.sources[idx];
        let offset = e.fragment.map(|f| f.offset);
        let mut found = false;
        for (_, h) in self.pool.entries(&s.chain) {
            if h.seq != e.seq || h.kind == EntryKind::Legacy {
                continue;
            }
            if h.usec != e.usec {
                return Lookup::OtherBoot;
            }
            let same_part = match (h.kind, offset) {
                (EntryKind::Record, None) => true,
                (EntryKind::Fragment, Some(o)) => h.frag_offset == o,
                _ => false,
            };
            found |= same_part;
        }
        if found {
            Lookup::Duplicate
        } else {
            Lookup::NewPart
        }
    }

    fn legacy(&mut self, now: Instant, idx: usize, text: &[u8], sink: &mut impl ConsoleSink) {
        if self.sources[idx].mode == Mode::Extended && self.sources[idx].chain.bytes() > 0 {
            self.new_boot(now, idx, sink);
        }
        let s = &mut self.sources[idx];
        s.mode = Mode::Legacy;
        let h = hash_bytes(text) | 1;
        if s.legacy_last == h {
            self.stats.duplicates += 1;
            return;
        }
        s.legacy_last = h;
        s.legacy_count += 1;
        let header = EntryHeader {
            len: (HEADER_LEN + text.len()) as u32,
            kind: EntryKind::Legacy,
            seq: s.legacy_count,
            usec: 0,
            frag_offset: 0,
            frag_total: 0,
        };
        if !self.store(idx, &header, text) {
            return;
        }
        let pos = self.sources[idx].chain.end() - u64::from(header.len);
        // Crash detection line by line, across datagrams.
        let mut rest = text;
        while !rest.is_empty() {
            let t = &mut self.texts[idx];
            let (part, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => (&rest[..nl], true),
                None => (rest, false),
            };
            let have = t.line_len as usize;
            let take = part.len().min(LINE_LEN - have);
            t.line[have..have + take].copy_from_slice(&part[..take]);
            t.line_len = (have + take) as u16;
            rest = if done { &rest[part.len() + 1..] } else { &[] };
            if done {
                let n = t.line_len as usize;
                t.line_len = 0;
                if !self.sources[idx].crashing() && is_crash_line(&t.line[..n]) {
                    let line = t.line;
                    self.start_crash(now, idx, pos, &line[..n], sink);
                }
            }
        }
    }

    fn start_crash(
        &mut self,
        now: Instant,
        idx: usize,
        pos: u64,
        line: &[u8],
        sink: &mut impl ConsoleSink,
    ) {
        self.stats.crashes += 1;
        let s = &mut self.sources[idx];
        let number = s.crashes;
        s.crashes = s.crashes.wrapping_add(1);
        // Strip a trailing carriage return a legacy sender may add.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        s.crash = Some(Crash {
            pos,
            at: now,
            number,
            truncated: false,
        });
        let t = &mut self.texts[idx];
        let n = line.len().min(CRASH_LINE_LEN);
        t.crash_line[..n].copy_from_slice(&line[..n]);
        t.crash_line_len = n as u16;
        self.crashing.push(idx as u32);
        let s = &self.sources[idx];
        let t = &self.texts[idx];
        sink.crash_seen(&ConsoleCrash {
            source: s.addr,
            boot: s.boot,
            crash: number,
            line: t.crash_line(),
            release: t.release(),
            extended: s.mode == Mode::Extended,
            at: now,
        });
    }

    /// Appends an entry within the source's cap, reclaiming memory as needed.
    fn store(&mut self, idx: usize, header: &EntryHeader, body: &[u8]) -> bool {
        let len = header.len as usize;
        let cap = if self.sources[idx].crashing() {
            2 * self.config.history_bytes
        } else {
            self.config.history_bytes
        };
        if len > cap {
            self.stats.dropped_no_memory += 1;
            return false;
        }
        // Stay within the source's share: drop its oldest entries (never the crash's).
        while self.sources[idx].chain.bytes() + len > cap {
            if !self.trim_one(idx) {
                if let Some(c) = self.sources[idx].crash.as_mut() {
                    c.truncated = true;
                }
                self.stats.dropped_crash_full += 1;
                return false;
            }
        }
        // Free enough blocks in the pool.
        let need = BlockPool::blocks_needed(&self.sources[idx].chain, len);
        while self.pool.free_blocks() < need {
            if !self.reclaim(idx) && !self.trim_one(idx) {
                self.stats.dropped_no_memory += 1;
                return false;
            }
        }
        let s = &mut self.sources[idx];
        self.pool.append(&mut s.chain, header, body)
    }

    /// Drops a source's oldest block of history unless that would reach its crash line.
    fn trim_one(&mut self, idx: usize) -> bool {
        let s = &mut self.sources[idx];
        if let Some(c) = &s.crash {
            match self.pool.after_head_block(&s.chain) {
                Some(start) if start <= c.pos => {}
                _ => return false,
            }
        }
        if self.pool.pop_front(&mut s.chain).is_some() {
            s.trimmed = true;
            self.stats.blocks_trimmed += 1;
            true
        } else {
            false
        }
    }

    /// Takes blocks from healthy sources other than `idx` until at least one block is free.
    fn reclaim(&mut self, idx: usize) -> bool {
        let n = self.sources.len();
        for _ in 0..n {
            let i = self.hand % n;
            self.hand = (self.hand + 1) % n;
            if i == idx || self.sources[i].crashing() || self.sources[i].chain.blocks() == 0 {
                continue;
            }
            let before = self.pool.free_blocks();
            while self.pool.free_blocks() == before && self.trim_one(i) {}
            if self.pool.free_blocks() > before {
                return true;
            }
        }
        false
    }

    /// Emits the dumps of crashing sources that went quiet.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut impl ConsoleSink) {
        let quiet = self.config.quiet_timeout;
        let mut i = 0;
        while i < self.crashing.len() {
            let idx = self.crashing[i] as usize;
            if self.sources[idx].last_heard + quiet <= now {
                self.emit(now, idx, sink);
            } else {
                i += 1;
            }
        }
    }

    /// Emits every crash in progress (shutdown).
    pub fn flush(&mut self, now: Instant, sink: &mut impl ConsoleSink) {
        while let Some(&idx) = self.crashing.first() {
            self.emit(now, idx as usize, sink);
        }
    }

    /// When [`ConsoleTracker::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.crashing
            .iter()
            .map(|&i| self.sources[i as usize].last_heard + self.config.quiet_timeout)
            .min()
    }

    /// Renders and hands out the dump of a crashing source, and ends its crash.
    fn emit(&mut self, now: Instant, idx: usize, sink: &mut impl ConsoleSink) {
        let Some(crash) = self.sources[idx].crash.take() else {
            return;
        };
        self.crashing.retain(|&i| i as usize != idx);
        self.stats.dumps += 1;
        let s = &self.sources[idx];
        let crash_seq = (s.mode == Mode::Extended && s.chain.start() <= crash.pos)
            .then(|| self.pool.header_at(&s.chain, crash.pos).seq);
        let r = &mut self.render;
        let (records, seq_range) = render(&self.pool, s, crash_seq, r, &mut self.stats);
        let mut fields: [(&[u8], &[u8]); MAX_FIELDS] = [(&[], &[]); MAX_FIELDS];
        for (slot, &(ks, kl, vs, vl)) in fields.iter_mut().zip(&r.fields) {
            let (ks, kl, vs, vl) = (ks as usize, kl as usize, vs as usize, vl as usize);
            *slot = (&r.field_bytes[ks..ks + kl], &r.field_bytes[vs..vs + vl]);
        }
        sink.dump(&ConsoleDump {
            notice: ConsoleCrash {
                source: s.addr,
                boot: s.boot,
                crash: crash.number,
                line: self.texts[idx].crash_line(),
                // The `r` prefix, else a `release=` field, else the kernel's own boot line.
                release: if self.texts[idx].release_len > 0 {
                    self.texts[idx].release()
                } else {
                    fields[..r.fields.len()]
                        .iter()
                        .find(|(k, _)| *k == b"release")
                        .map_or(&r.boot_release[..r.boot_release_len], |(_, v)| v)
                },
                extended: s.mode == Mode::Extended,
                at: crash.at,
            },
            text: &r.text,
            missing: &r.missing,
            incomplete: &r.incomplete,
            records,
            seq_range,
            fields: &fields[..r.fields.len()],
            truncated: crash.truncated || s.trimmed,
            emitted_at: now,
        });
    }
}

enum Lookup {
    Duplicate,
    OtherBoot,
    NewPart,
}

/// Renders a source's history into `r.text` (and the metadata lists); returns the records
/// rendered and the sequence range.
fn render(
    pool: &BlockPool,
    s: &Source,
    crash_seq: Option<u64>,
    r: &mut Render,
    stats: &mut ConsoleStats,
) -> (u32, Option<(u64, u64)>) {
    r.text.clear();
    r.missing.clear();
    r.incomplete.clear();
    r.fields.clear();
    r.field_bytes.clear();
    r.index.clear();
    r.boot_release_len = 0;
    let text_cap = r.text.capacity();
    let push = |text: &mut Vec<u8>, b: &[u8]| {
        let take = b.len().min(text_cap - text.len());
        text.extend_from_slice(&b[..take]);
    };
    if s.mode == Mode::Legacy {
        let mut n = 0;
        for (pos, h) in pool.entries(&s.chain) {
            let len = h.len as usize - HEADER_LEN;
            pool.body_at(&s.chain, pos, &h, &mut r.entry[..len]);
            push(&mut r.text, &r.entry[..len]);
            n += 1;
        }
        return (n, None);
    }
    for (pos, h) in pool.entries(&s.chain) {
        if r.index.len() < r.index.capacity() {
            r.index.push((h.seq, h.frag_offset, pos));
        }
    }
    r.index.sort_unstable();
    let mut records = 0u32;
    let mut prev: Option<u64> = None;
    let mut first: Option<u64> = None;
    let mut i = 0;
    while i < r.index.len() {
        let seq = r.index[i].0;
        let mut j = i;
        while j < r.index.len() && r.index[j].0 == seq {
            j += 1;
        }
        if let Some(p) = prev {
            if seq > p + 1 {
                if r.missing.len() < MAX_MISSING {
                    r.missing.push((p + 1, seq - 1));
                }
                write_gap(p + 1, seq - 1, |b| push(&mut r.text, b));
            }
        }
        first.get_or_insert(seq);
        prev = Some(seq);
        records += 1;
        // Assemble the body: a whole record, or the fragments with holes marked.
        let mut body_len = 0usize;
        let mut usec = 0;
        let mut whole = false;
        let mut covered = 0u32; // fragments: body bytes known up to here
        let mut total = 0u32;
        let mut holes = false;
        for k in i..j {
            let pos = r.index[k].2;
            let h = pool.header_at(&s.chain, pos);
            usec = h.usec;
            let len = h.len as usize - HEADER_LEN;
            if h.kind == EntryKind::Record {
                let n = len.min(MAX_BODY);
                pool.body_at(&s.chain, pos, &h, &mut r.entry[..len]);
                r.body[..n].copy_from_slice(&r.entry[..n]);
                body_len = n;
                whole = true;
                break;
            }
            total = h.frag_total;
            let (off, end) = (h.frag_offset, h.frag_offset + len as u32);
            if end <= covered {
                continue; // overlaps what is there already
            }
            pool.body_at(&s.chain, pos, &h, &mut r.entry[..len]);
            if off > covered {
                append_fragment_gap(&mut r.body, &mut body_len, covered, off - 1);
                holes = true;
                covered = off;
            }
            let skip = (covered - off) as usize;
            append(&mut r.body, &mut body_len, &r.entry[skip..len]);
            covered = end;
        }
        if !whole && covered < total {
            append_fragment_gap(&mut r.body, &mut body_len, covered, total - 1);
            holes = true;
        }
        let incomplete = !whole && holes;
        if incomplete && r.incomplete.len() < MAX_MISSING {
            r.incomplete.push(seq);
        }
        let body = Body::split(&r.body[..body_len]);
        if r.boot_release_len == 0 {
            if let Some(rest) = body.text.strip_prefix(b"Linux version ") {
                let release = rest.split(|&b| b == b' ').next().unwrap_or(&[]);
                let n = release.len().min(RELEASE_LEN);
                r.boot_release[..n].copy_from_slice(&release[..n]);
                r.boot_release_len = n;
            }
        }
        stats.bad_escapes += u64::from(write_line(usec, body.text, |b| push(&mut r.text, b)));
        if !incomplete && Some(seq) == crash_seq {
            for (k, v) in body.pairs() {
                if k == b"SUBSYSTEM" || k == b"DEVICE" {
                    continue;
                }
                keep_field(&mut r.fields, &mut r.field_bytes, k, v);
            }
        }
        i = j;
    }
    (records, first.zip(prev))
}

/// Appends the marker for body bytes `first..=last` of a split record that never arrived.
fn append_fragment_gap(buf: &mut [u8], len: &mut usize, first: u32, last: u32) {
    write_fragment_gap(first, last, |b| append(buf, len, b));
}

fn append(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
    let take = bytes.len().min(buf.len() - *len);
    buf[*len..*len + take].copy_from_slice(&bytes[..take]);
    *len += take;
}

/// Records the crash record's `key=value` pairs (the first value of a repeated key wins).
fn keep_field(fields: &mut Vec<(u16, u16, u16, u16)>, bytes: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    let k = &k[..k.len().min(64)];
    let v = &v[..v.len().min(190)];
    let full = fields.len() == MAX_FIELDS || bytes.len() + k.len() + v.len() > bytes.capacity();
    let existing = fields
        .iter()
        .any(|&(ks, kl, _, _)| &bytes[ks as usize..ks as usize + kl as usize] == k);
    if full || existing {
        return;
    }
    let ks = bytes.len();
    bytes.extend_from_slice(k);
    let vs = bytes.len();
    bytes.extend_from_slice(v);
    fields.push((ks as u16, k.len() as u16, vs as u16, v.len() as u16));
}

#[cfg(test)]
mod tests;
