//! Reassembly: netoops datagrams in, crash notifications and dumps out, within a fixed budget.
//!
//! The [`Reassembler`] owns every received chunk until its dump is emitted and for a while
//! after, so the sender's second and third rounds are recognised as duplicates instead of
//! producing the dump again. It is sans-IO: [`Reassembler::handle_datagram`] and
//! [`Reassembler::handle_timeout`] take `now` and report through an [`EventSink`].
//!
//! A dump is identified by its [`DumpKey`] (source, version, boot_id, dump_id, type). A packet
//! with that key but a different packet_count, or a payload that differs from the copy held
//! for its packet_no, starts a new *generation*: an oops followed by a panic in the same
//! second shares the key.
//!
//! Dumps move between lists ordered by last activity:
//! claim (one packet) -> assembling (two or more) -> (complete, or partial after
//! `quiet_timeout`) -> lingering with chunks (one-packet dumps on a list of their own) ->
//! lingering bare (chunks reclaimed under memory pressure) -> free after `linger`. A late
//! packet that fills a hole in a partial dump still holding its chunks sends it back to
//! assembling, and it is emitted again as a newer revision.
//!
//! Memory: everything is allocated in [`Reassembler::new`] from [`ReassemblyConfig`]; the
//! per-packet path never allocates. Netoops is unauthenticated UDP, so room is given by
//! evidence: a dump with [`ESTABLISHED`] packets or more is never displaced by a new dump
//! (which has one), and between one-packet claims the more recently active one stays for a
//! hold (1/8 of `quiet_timeout`), time enough for a real sender's second packet. A claim holds
//! one packet-table entry whatever packet count it announces; its whole table comes with its
//! second packet. When the table or a source's quota is full, a new dump takes the place of a
//! lingering one-packet dump, then of the least recently active claim past its hold, then of
//! a lingering dump (for the quota, one quiet for as long); when the chunk pool is full,
//! lingering chunks go first, then claims the same way. Otherwise the new dump is refused and
//! counted. A chunk for a dump in progress may flush any claim, and the least recently active
//! established dump with no more packets than its own, as partial. A dump only loses packets
//! (highest packet_no first, since they arrive last) when nothing with less evidence is left
//! to take room from. Every drop and refusal is counted in [`ReassemblyStats`].
//!
//! Conflicts: a chunk that differs from the one held for its packet_no still starts a new
//! generation, and both dumps count it in their metadata (`conflicts`); a dump identity sent
//! from two ports of one address is two dumps, and each counts the chunks the other port sent
//! (`foreign_port_chunks`). A dump already emitted whose counts change while it still holds
//! its chunks goes back to assembling and is emitted again as a newer revision, once.

mod chunks;
mod entry;
mod lists;
pub mod slots;
mod view;

use crate::hash_key::HashKey;
use alloc::vec;
use alloc::vec::Vec;
use core::hash::BuildHasher;
use core::net::{IpAddr, SocketAddr};
use hashbrown::{HashMap, HashTable};
use netoops_wire::netoops::{Datagram, Limits, WireErrorKind};
use netoops_wire::DATA_LEN;

pub use entry::DumpKey;
pub use slots::{ChunkSlots, NewSlots, PlainSlots};
pub use view::{CrashSeen, DumpView, EventSink};

use crate::time::{Duration, Instant};
use chunks::ChunkStore;
use entry::{DumpEntry, HeaderInfo, PortlessIdentity};
use lists::{IndexLists, ListId};

/// Sizes and timeouts of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Bytes the reassembler may allocate in total (tables and chunk pool).
    pub memory_budget: usize,
    /// Dumps held at once (assembling and lingering).
    pub max_dumps: usize,
    /// Dumps one source address may hold at once, so one sender cannot take the table.
    pub max_dumps_per_source: usize,
    /// Largest packet_count accepted (4096 = a 4 MiB log).
    pub max_packet_count: u32,
    /// A dump with no packet for this long is emitted as partial.
    pub quiet_timeout: Duration,
    /// How long an emitted dump is remembered after its last packet, to absorb later rounds.
    pub linger: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            memory_budget: 64 << 20,
            max_dumps: 4096,
            max_dumps_per_source: 8,
            max_packet_count: Limits::default().max_packet_count,
            quiet_timeout: Duration::from_secs(3),
            linger: Duration::from_secs(30),
        }
    }
}

/// Why a [`ReassemblyConfig`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReassemblyConfigError {
    /// The budget does not cover the tables plus a minimal chunk pool.
    BudgetTooSmall {
        /// Bytes needed at least.
        needed: usize,
        /// Bytes configured.
        budget: usize,
    },
    /// A count that must be at least one is zero.
    Zero(&'static str),
}

impl core::fmt::Display for ReassemblyConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BudgetTooSmall { needed, budget } => write!(
                f,
                "memory budget of {budget} bytes is too small: the dump table alone needs {needed}"
            ),
            Self::Zero(what) => write!(f, "{what} must be at least 1"),
        }
    }
}

/// Packets a dump must have received before a new dump may no longer displace it. A spoofed
/// datagram opens a dump with one; a real sender's second packet follows within
/// microseconds.
pub const ESTABLISHED: u32 = 2;

/// Smallest chunk pool worth running with.
const MIN_SLOTS: usize = 64;

/// Bytes a `hashbrown` map allocates when created with `with_capacity(capacity)`
/// (bucket count rounded up to a power of two at 7/8 load, one control byte per bucket).
pub(crate) fn map_bytes<K, V>(capacity: usize) -> usize {
    let buckets = if capacity < 4 {
        4
    } else if capacity < 8 {
        8
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (core::mem::size_of::<(K, V)>() + 1) + 16
}

/// Capacity the lookup maps are created with: twice the items they hold, so `hashbrown`
/// always rehashes in place and never allocates after construction.
pub(crate) fn map_capacity(items: usize) -> usize {
    2 * items + 2
}

impl ReassemblyConfig {
    fn words_per_dump(&self) -> usize {
        (self.max_packet_count as usize).div_ceil(64)
    }

    /// Bytes the dump table takes, independent of the chunk pool.
    pub fn table_bytes(&self) -> usize {
        let n = self.max_dumps;
        let per_dump = core::mem::size_of::<DumpEntry>()
            + core::mem::size_of::<HeaderInfo>()
            + self.words_per_dump() * 8
            + 12;
        // 4 more per dump: the per-source chain.
        n * (per_dump + 4)
            + 2 * map_bytes::<u32, ()>(map_capacity(n))
            + map_bytes::<IpAddr, SourceDumps>(map_capacity(n))
    }

    /// Bytes a [`Reassembler`] built from this configuration takes from the heap, at most:
    /// the budget and the chunk store's bookkeeping, which the budget leaves out.
    pub fn heap_bytes(&self) -> usize {
        self.memory_budget + chunks::BOOKKEEPING_BYTES
    }

    /// Bytes the chunk pool takes with `slots` slots.
    pub fn pool_bytes(&self, slots: usize) -> usize {
        chunks::store_bytes(slots, self.max_dumps, self.max_packet_count as usize)
    }

    /// Number of 1 KiB chunk slots the budget leaves after the tables.
    pub fn chunk_slots(&self) -> Result<usize, ReassemblyConfigError> {
        if self.max_dumps == 0 {
            return Err(ReassemblyConfigError::Zero("max_dumps"));
        }
        if self.max_dumps_per_source == 0 {
            return Err(ReassemblyConfigError::Zero("max_dumps_per_source"));
        }
        if self.max_packet_count == 0 {
            return Err(ReassemblyConfigError::Zero("max_packet_count"));
        }
        let needed = self
            .table_bytes()
            .saturating_add(self.pool_bytes(MIN_SLOTS));
        if self.memory_budget < needed {
            return Err(ReassemblyConfigError::BudgetTooSmall {
                needed,
                budget: self.memory_budget,
            });
        }
        // The largest pool that fits (pool_bytes is monotonic).
        let room = self.memory_budget - self.table_bytes();
        let (mut lo, mut hi) = (MIN_SLOTS, room / DATA_LEN + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.pool_bytes(mid) <= room {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// How an accepted datagram was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// It started a new dump (a [`CrashSeen`] was emitted).
    NewDump,
    /// It added a chunk to a dump in progress.
    NewChunk,
    /// A copy of a chunk already held (later rounds).
    Duplicate,
}

/// Why a datagram was dropped. Each reason has a counter in [`ReassemblyStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a valid netoops datagram.
    Malformed(WireErrorKind),
    /// Its dump alone fills the chunk pool; the newest text it already has is kept.
    NoMemory,
    /// A packet for a dump already emitted whose chunks were reclaimed.
    LateAfterEviction,
    /// A new dump refused: every table entry holds a dump with more evidence.
    TableFull,
    /// A new dump refused: the chunk pool is taken by dumps with more evidence.
    PoolFull,
    /// A new dump refused: its source address holds its quota of dumps in progress.
    SourceCap,
}

/// Counters since the reassembler was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Datagrams handed in.
    pub datagrams: u64,
    /// Chunks stored.
    pub chunks_stored: u64,
    /// Copies of chunks already held, verified byte for byte.
    pub duplicates: u64,
    /// Packets for a dump whose chunks were reclaimed, taken as duplicates by packet number.
    pub duplicates_unverified: u64,
    /// Malformed datagrams by [`WireErrorKind::index`].
    pub malformed: [u64; WireErrorKind::COUNT],
    /// Packets dropped because their dump alone filled the pool.
    pub dropped_no_memory: u64,
    /// Packets dropped because their dump's chunks were already reclaimed.
    pub dropped_late: u64,
    /// Dumps started (each emitted a crash notification).
    pub dumps_started: u64,
    /// New generations under an existing identity (oops then panic in the same second).
    pub generations: u64,
    /// Complete dumps emitted.
    pub dumps_complete: u64,
    /// Partial dumps emitted.
    pub dumps_partial: u64,
    /// Emissions with revision above 1.
    pub revisions: u64,
    /// Dumps flushed as partial to free chunk slots.
    pub flushed_for_memory: u64,
    /// Dumps flushed as partial to free table entries.
    pub flushed_for_table: u64,
    /// One-packet claims flushed because their source held too many.
    pub flushed_for_source_cap: u64,
    /// New dumps refused: every table entry held an established dump.
    pub refused_table_full: u64,
    /// New dumps refused: the chunk pool was taken by established dumps.
    pub refused_pool_full: u64,
    /// New dumps refused: their source address held its quota of dumps in progress.
    pub refused_source_cap: u64,
    /// Chunks that differed from the chunk held for their packet_no (each started a new
    /// generation): a forgery, or an oops and a panic in the same second.
    pub conflicts: u64,
    /// Chunks stored for a dump identity that another port of the same address also holds.
    pub foreign_port_chunks: u64,
    /// Chunks stored in a dump already emitted (a late packet, or a forged hole fill).
    pub late_chunks: u64,
    /// Lingering dumps whose chunks were reclaimed.
    pub lingering_reclaimed: u64,
    /// Emitted dumps forgotten before their linger time ran out.
    pub forgotten_early: u64,
    /// Most chunk slots in use at once.
    pub chunks_high_water: usize,
    /// Most dumps held at once.
    pub dumps_high_water: usize,
}

impl ReassemblyStats {
    /// Malformed datagrams of every kind.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// Every datagram dropped, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.malformed_total() + self.dropped_no_memory + self.dropped_late + self.refused_total()
    }

    /// New dumps refused, whatever the reason.
    pub fn refused_total(&self) -> u64 {
        self.refused_table_full + self.refused_pool_full + self.refused_source_cap
    }
}

/// End of a per-source chain.
const NIL: u32 = u32::MAX;

/// How many entries a source address holds, and the first of its chain.
#[derive(Clone, Copy, Debug)]
struct SourceDumps {
    count: u32,
    head: u32,
}

/// The list an assembling dump with `received` packets belongs on.
fn assembling_list(received: u32) -> ListId {
    if received >= ESTABLISHED {
        ListId::Assembling
    } else {
        ListId::Claim
    }
}

/// Sends an emitted dump that still holds its chunks back to assembling when a count its last
/// emission carried as zero (`already` false) just changed, so it is emitted again with it:
/// at most once per count, so a spoofer cannot make a dump resend its text over and over.
fn reopen_if_new_flag(
    lists: &mut IndexLists,
    e: &mut DumpEntry,
    idx: u32,
    now: Instant,
    already: bool,
) {
    let emitted_with_chunks =
        matches!(lists.list_of(idx), ListId::LingerFull | ListId::LingerClaim);
    if !already && emitted_with_chunks {
        e.last_packet = now;
        lists.move_to_back(idx, assembling_list(e.received));
    }
}

/// The reassembly engine. See the module documentation.
pub struct Reassembler {
    config: ReassemblyConfig,
    limits: Limits,
    words_per_dump: usize,
    entries: Vec<DumpEntry>,
    headers: Vec<HeaderInfo>,
    bits: Vec<u64>,
    lists: IndexLists,
    /// Entry index by [`DumpKey`]; the keys live in the entries, so a bucket is 4 bytes and
    /// the whole index stays in cache.
    by_key: HashTable<u32>,
    /// Every held entry by its identity without the port ([`entry::PortlessIdentity`]): read
    /// when a dump starts, and per chunk only for dumps flagged `shared`.
    by_identity: HashTable<u32>,
    hasher: HashKey,
    per_source: HashMap<IpAddr, SourceDumps, HashKey>,
    /// Next entry of the same source address (a chain per address, from `per_source`), so the
    /// per-source cap finds a victim among at most `max_dumps_per_source` entries.
    src_next: Vec<u32>,
    chunks: ChunkStore,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// Builds a reassembler, allocating everything it will ever use; chunks go to
    /// [`PlainSlots`]. Its tables have a fixed key ([`Self::keyed`] takes a secret one).
    pub fn new(config: ReassemblyConfig) -> Result<Self, ReassemblyConfigError> {
        Self::with_slots(config, PlainSlots::boxed)
    }

    /// Like [`Self::new`], with chunks in the store `new_slots` builds ([`slots`]).
    pub fn with_slots(
        config: ReassemblyConfig,
        new_slots: NewSlots,
    ) -> Result<Self, ReassemblyConfigError> {
        Self::keyed(config, new_slots, HashKey::fixed())
    }

    /// Like [`Self::with_slots`], with its tables keyed by `key`: a secret per start where
    /// senders are hostile ([`crate::hash_key`]).
    pub fn keyed(
        config: ReassemblyConfig,
        new_slots: NewSlots,
        key: HashKey,
    ) -> Result<Self, ReassemblyConfigError> {
        let slots = config.chunk_slots()?;
        let words_per_dump = config.words_per_dump();
        let n = config.max_dumps;
        Ok(Reassembler {
            config,
            limits: Limits {
                max_packet_count: config.max_packet_count,
            },
            words_per_dump,
            entries: Vec::with_capacity(n),
            bits: Vec::with_capacity(n * words_per_dump),
            lists: IndexLists::new(n),
            headers: Vec::with_capacity(n),
            by_key: HashTable::with_capacity(map_capacity(n)),
            by_identity: HashTable::with_capacity(map_capacity(n)),
            per_source: HashMap::with_capacity_and_hasher(map_capacity(n), key.clone()),
            hasher: key,
            src_next: vec![NIL; n],
            chunks: ChunkStore::new(slots, n, config.max_packet_count as usize, new_slots),
            stats: ReassemblyStats::default(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ReassemblyConfig {
        &self.config
    }

    /// Counters since it was built.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Dumps currently held (assembling or lingering).
    pub fn dumps_held(&self) -> usize {
        self.config.max_dumps - self.lists.len(ListId::Free)
    }

    /// Dumps still assembling (claims included).
    pub fn dumps_assembling(&self) -> usize {
        self.lists.len(ListId::Assembling) + self.lists.len(ListId::Claim)
    }

    /// Chunk slots in use and in total.
    pub fn chunk_usage(&self) -> (usize, usize) {
        (self.chunks.used(), self.chunks.capacity())
    }

    /// Bytes allocated for tables and chunks (at most the configured budget).
    pub fn footprint(&self) -> usize {
        self.config.table_bytes() + self.config.pool_bytes(self.chunks.capacity())
    }

    /// Entries, bitmaps and headers are filled up to the highest entry used so far, within
    /// the capacity reserved in [`Reassembler::new`]: a large `max_dumps` costs no writing at
    /// boot (4096 vacant entries were 1 ms of the appliance's boot under TCG, and megabytes
    /// of `memset` tens of milliseconds) and no allocation later. Only entries on the free
    /// list lie beyond them, and those are never read.
    fn fill_storage(&mut self, idx: u32) {
        if self.entries.len() <= idx as usize {
            self.entries.resize(idx as usize + 1, DumpEntry::VACANT);
        }
        let need = (idx as usize + 1) * self.words_per_dump;
        if self.bits.len() < need {
            self.bits.resize(need, 0);
        }
        if self.headers.len() <= idx as usize {
            self.headers.resize(idx as usize + 1, HeaderInfo::EMPTY);
        }
    }

    /// An entry's received bitmap (empty for an entry never used, which has none set).
    fn bits_of(&self, idx: u32) -> &[u64] {
        let start = idx as usize * self.words_per_dump;
        self.bits
            .get(start..start + self.words_per_dump)
            .unwrap_or(&[])
    }

    fn has(&self, idx: u32, packet_no: u32) -> bool {
        view::has_bit(self.bits_of(idx), packet_no)
    }

    fn set(&mut self, idx: u32, packet_no: u32) {
        let w = idx as usize * self.words_per_dump + (packet_no / 64) as usize;
        if let Some(word) = self.bits.get_mut(w) {
            *word |= 1u64 << (packet_no % 64);
        }
    }

    /// Handles one received datagram from `source`.
    ///
    /// Emits [`EventSink::crash_seen`] for the first packet of a dump and [`EventSink::dump`]
    /// when a dump completes, or when memory pressure flushes another dump as partial.
    pub fn handle_datagram<S: EventSink>(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        sink: &mut S,
    ) -> Result<Accepted, DropReason> {
        self.stats.datagrams += 1;
        let d = match Datagram::parse(bytes, &self.limits) {
            Ok(d) => d,
            Err(e) => {
                let kind = e.kind();
                self.stats.malformed[kind.index()] += 1;
                return Err(DropReason::Malformed(kind));
            }
        };
        let key = DumpKey::of(source, &d);
        let packet_no = d.packet_no();
        // Computed at most once per packet: a chunk that differs from the held copy starts
        // the new generation with the fingerprint already in hand.
        let mut fingerprint = None;
        let generation = match self.lookup(&key) {
            None => 0,
            Some(idx) => {
                let e = &self.entries[idx as usize];
                if e.packet_count == d.packet_count() {
                    // A held chunk answers from its table entry alone; the received bitmap
                    // is only read for packets without one.
                    match self.chunks.fingerprint_of(idx, packet_no) {
                        Some(held) => {
                            let fp = chunks::fingerprint(d.data());
                            if held == fp {
                                self.stats.duplicates += 1;
                                self.touch(now, idx);
                                return Ok(Accepted::Duplicate);
                            }
                            fingerprint = Some(fp);
                        }
                        None if !self.has(idx, packet_no) => {
                            return self.add_chunk(now, idx, &d, None, sink);
                        }
                        None => {
                            self.stats.duplicates_unverified += 1;
                            self.touch(now, idx);
                            return Ok(Accepted::Duplicate);
                        }
                    }
                }
                let next = e.generation + 1;
                if fingerprint.is_some() {
                    // Forged, or an oops and a panic in the same second: recorded on both.
                    self.stats.conflicts += 1;
                    let e = &mut self.entries[idx as usize];
                    e.conflicts = e.conflicts.saturating_add(1);
                    let already = e.emitted_conflicts;
                    reopen_if_new_flag(&mut self.lists, e, idx, now, already);
                }
                self.stats.generations += 1;
                next
            }
        };
        let idx = self.start_dump(now, key, generation, &d, fingerprint.is_some(), sink)?;
        self.add_chunk(now, idx, &d, fingerprint, sink)?;
        Ok(Accepted::NewDump)
    }

    /// Emits dumps that went quiet and forgets emitted dumps whose linger time is over.
    pub fn handle_timeout<S: EventSink>(&mut self, now: Instant, sink: &mut S) {
        for list in [ListId::Claim, ListId::Assembling] {
            while let Some(idx) = self.lists.front(list) {
                if self.entries[idx as usize].last_packet + self.config.quiet_timeout > now {
                    break;
                }
                self.emit(now, idx, sink);
            }
        }
        for list in [ListId::LingerClaim, ListId::LingerFull, ListId::LingerBare] {
            while let Some(idx) = self.lists.front(list) {
                if self.entries[idx as usize].last_packet + self.config.linger > now {
                    break;
                }
                self.free_entry(idx);
            }
        }
    }

    /// When [`Reassembler::handle_timeout`] next has work, if ever. Changes after every
    /// `handle_datagram` and `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let at = |list, wait| {
            self.lists
                .front(list)
                .map(|i| self.entries[i as usize].last_packet + wait)
        };
        [
            at(ListId::Claim, self.config.quiet_timeout),
            at(ListId::Assembling, self.config.quiet_timeout),
            at(ListId::LingerClaim, self.config.linger),
            at(ListId::LingerFull, self.config.linger),
            at(ListId::LingerBare, self.config.linger),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Emits every dump still assembling as partial (for a clean shutdown).
    pub fn flush<S: EventSink>(&mut self, now: Instant, sink: &mut S) {
        for list in [ListId::Claim, ListId::Assembling] {
            while let Some(idx) = self.lists.front(list) {
                self.emit(now, idx, sink);
            }
        }
    }

    /// The entry `key` maps to.
    fn lookup(&self, key: &DumpKey) -> Option<u32> {
        let entries = &self.entries;
        self.by_key
            .find(self.hasher.hash_one(key), |&i| {
                entries[i as usize].key == *key
            })
            .copied()
    }

    /// Maps `key` to `idx` (whose entry already holds `key`); returns the entry it mapped to
    /// before.
    fn index(&mut self, key: DumpKey, idx: u32) -> Option<u32> {
        let (entries, hasher) = (&self.entries, &self.hasher);
        let hash = hasher.hash_one(key);
        match self
            .by_key
            .find_mut(hash, |&i| i != idx && entries[i as usize].key == key)
        {
            Some(old) => Some(core::mem::replace(old, idx)),
            None => {
                // Capacity is twice the entries, so this never grows (no allocation).
                self.by_key
                    .insert_unique(hash, idx, |&i| hasher.hash_one(entries[i as usize].key));
                None
            }
        }
    }

    /// Removes `key` from the index.
    fn unindex(&mut self, key: &DumpKey) {
        let entries = &self.entries;
        if let Ok(found) = self.by_key.find_entry(self.hasher.hash_one(key), |&i| {
            entries[i as usize].key == *key
        }) {
            found.remove();
        }
    }

    /// Records activity on a dump without changing its state.
    fn touch(&mut self, now: Instant, idx: u32) {
        self.entries[idx as usize].last_packet = now;
        let list = self.lists.list_of(idx);
        self.lists.move_to_back(idx, list);
    }

    /// Claims an entry for dump `key` (a new generation when `conflict`: its first chunk
    /// differs from the one held) and announces the crash; returns the entry, to which the
    /// caller adds the packet's chunk.
    fn start_dump<S: EventSink>(
        &mut self,
        now: Instant,
        key: DumpKey,
        generation: u32,
        d: &Datagram<'_>,
        conflict: bool,
        sink: &mut S,
    ) -> Result<u32, DropReason> {
        let ip = key.source.ip();
        if !self.shed_source(now, ip, sink) {
            self.stats.refused_source_cap += 1;
            return Err(DropReason::SourceCap);
        }
        let Some(idx) = self.alloc_entry(now, sink) else {
            self.stats.refused_table_full += 1;
            return Err(DropReason::TableFull);
        };
        self.fill_storage(idx);
        self.entries[idx as usize] = DumpEntry {
            key,
            generation,
            packet_count: d.packet_count(),
            received: 0,
            revision: 0,
            complete: false,
            has_chunks: false,
            indexed: true,
            // A new generation started by a chunk that differs from the one held.
            conflicts: u32::from(conflict),
            foreign_port_chunks: 0,
            late_chunks: 0,
            shared: false,
            emitted_conflicts: false,
            emitted_foreign: false,
            first_seen: now,
            last_packet: now,
        };
        self.headers[idx as usize] = HeaderInfo::of(d);
        self.lists.move_to_back(idx, ListId::Claim);
        // A one-entry table and its first chunk's slot, before anything goes upstream: a
        // dump that cannot be held is refused, not announced. The whole table comes with
        // its second packet (`add_chunk`).
        if !self.make_room(now, idx, sink, 1, true)
            || !self.chunks.reserve_claim(idx, d.packet_no())
        {
            self.stats.refused_pool_full += 1;
            self.entries[idx as usize] = DumpEntry::VACANT;
            self.lists.move_to_back(idx, ListId::Free);
            return Err(DropReason::PoolFull);
        }
        self.entries[idx as usize].has_chunks = true;
        if let Some(old) = self.index(key, idx) {
            self.entries[old as usize].indexed = false;
        }
        self.source_link(idx, ip);
        self.identity_link(idx);
        self.stats.dumps_started += 1;
        self.stats.dumps_high_water = self.stats.dumps_high_water.max(self.dumps_held());
        sink.crash_seen(&CrashSeen {
            at: now,
            source: key.source,
            generation,
            datagram: *d,
        });
        Ok(idx)
    }

    /// Stores the packet's chunk; `fingerprint` is the chunk's, when the caller already has it.
    fn add_chunk<S: EventSink>(
        &mut self,
        now: Instant,
        idx: u32,
        d: &Datagram<'_>,
        fingerprint: Option<u64>,
        sink: &mut S,
    ) -> Result<Accepted, DropReason> {
        if !self.entries[idx as usize].has_chunks {
            self.stats.dropped_late += 1;
            self.touch(now, idx);
            return Err(DropReason::LateAfterEviction);
        }
        // Back to assembling first, so reclaiming memory cannot pick this dump as its victim.
        let e = &mut self.entries[idx as usize];
        e.last_packet = now;
        let (received, count) = (e.received, e.packet_count);
        self.lists.move_to_back(idx, assembling_list(received));
        // A claim's second packet brings its whole table.
        let table = if received == 1 { count } else { 0 };
        if !self.make_room(now, idx, sink, table, true)
            || (table > 0 && !self.chunks.grow(idx, table))
        {
            self.stats.dropped_no_memory += 1;
            return Err(DropReason::NoMemory);
        }
        let packet_no = d.packet_no();
        let fingerprint = fingerprint.unwrap_or_else(|| chunks::fingerprint(d.data()));
        self.chunks.insert(idx, packet_no, d.data(), fingerprint);
        self.set(idx, packet_no);
        self.stats.chunks_stored += 1;
        self.stats.chunks_high_water = self.stats.chunks_high_water.max(self.chunks.used());
        let e = &mut self.entries[idx as usize];
        e.received += 1;
        if e.revision > 0 {
            e.late_chunks = e.late_chunks.saturating_add(1);
            self.stats.late_chunks += 1;
        }
        let (received, complete, shared) = (e.received, e.received == e.packet_count, e.shared);
        if received == ESTABLISHED {
            self.lists.move_to_back(idx, ListId::Assembling);
        }
        if shared {
            self.credit_siblings(now, idx);
        }
        if complete {
            self.emit(now, idx, sink);
        }
        Ok(Accepted::NewChunk)
    }

    /// How long a one-packet claim is safe from a newcomer: far longer than a real sender
    /// takes between its first two packets (microseconds on a LAN, tens of milliseconds
    /// through a loaded relay), short against the quiet timeout, so spoofed claims turn over
    /// while a real dump gets the time to become established.
    fn claim_hold(&self) -> Duration {
        Duration::from_micros(self.config.quiet_timeout.total_micros() / 8)
    }

    /// The claim a dump `idx` with `evidence` packets may flush: the least recently active one,
    /// if it is not `idx` and either `idx` has more evidence or the claim has been held for
    /// [`Self::claim_hold`] (between equals, the one more recently active stays).
    fn displaceable_claim(&self, now: Instant, idx: u32, evidence: u32) -> Option<u32> {
        let v = self.lists.front(ListId::Claim)?;
        let e = &self.entries[v as usize];
        (v != idx && (evidence >= ESTABLISHED || e.last_packet + self.claim_hold() <= now))
            .then_some(v)
    }

    /// Frees a chunk slot (`slot`) and room for a packet table of `table` entries for `idx`.
    /// Takes lingering chunks first (claims' first), then flushes a claim
    /// ([`Self::displaceable_claim`]), then the least recently active established dump if it
    /// has no more packets than `idx`; false when nothing with less evidence is left.
    fn make_room<S: EventSink>(
        &mut self,
        now: Instant,
        idx: u32,
        sink: &mut S,
        table: u32,
        slot: bool,
    ) -> bool {
        let evidence = self.entries[idx as usize].received;
        loop {
            if (!slot || self.chunks.has_free_slot()) && self.chunks.has_table_room(table) {
                return true;
            }
            // Chunks only: the entry stays to take its dump's later packets as late, rather
            // than have each of them report the dump again.
            if let Some(victim) = self
                .lists
                .front(ListId::LingerClaim)
                .or_else(|| self.lists.front(ListId::LingerFull))
            {
                self.reclaim_chunks(victim);
                self.stats.lingering_reclaimed += 1;
                continue;
            }
            // `idx` is at the back of its list: at the front, it is alone there.
            let victim = self.displaceable_claim(now, idx, evidence).or_else(|| {
                self.lists
                    .front(ListId::Assembling)
                    .filter(|&v| v != idx && self.entries[v as usize].received <= evidence)
            });
            match victim {
                Some(v) => {
                    self.stats.flushed_for_memory += 1;
                    self.emit(now, v, sink);
                }
                None => return false,
            }
        }
    }

    /// A free entry for a new dump: forgets a lingering claim, flushes a claim held for
    /// [`Self::claim_hold`], forgets a lingering dump, in that order; `None` when every entry
    /// holds an established dump in progress or a claim still held.
    fn alloc_entry<S: EventSink>(&mut self, now: Instant, sink: &mut S) -> Option<u32> {
        loop {
            if let Some(idx) = self.lists.front(ListId::Free) {
                return Some(idx);
            }
            if let Some(idx) = self.lists.front(ListId::LingerClaim) {
                self.stats.forgotten_early += 1;
                self.free_entry(idx);
                continue;
            }
            if let Some(claim) = self.displaceable_claim(now, NIL, 0) {
                self.stats.flushed_for_table += 1;
                // Emitted, it becomes a lingering claim: the next turn forgets it.
                self.emit(now, claim, sink);
                continue;
            }
            // A new crash outranks absorbing the later rounds of one already emitted (which,
            // forgotten, may be reported again): an honest storm larger than the table gets a
            // notice for every machine.
            let idx = self
                .lists
                .front(ListId::LingerBare)
                .or_else(|| self.lists.front(ListId::LingerFull))?;
            self.stats.forgotten_early += 1;
            self.free_entry(idx);
        }
    }

    /// Makes room under the per-source cap for a new dump from `ip`: forgets the source's
    /// lingering claim, else flushes its claim held longest past [`Self::claim_hold`], else
    /// forgets its emitted dump with the fewest packets quiet for as long (a completed dump
    /// outlives a spoofer's leftovers); false when the source holds only established dumps in
    /// progress, claims still held and dumps still receiving their later rounds. Walks the
    /// source's chain, at most `max_dumps_per_source` entries.
    fn shed_source<S: EventSink>(&mut self, now: Instant, ip: IpAddr, sink: &mut S) -> bool {
        let Some(src) = self.per_source.get(&ip) else {
            return true;
        };
        if (src.count as usize) < self.config.max_dumps_per_source {
            return true;
        }
        let hold = self.claim_hold();
        // (class, fewest packets, least recently active, entry): the lowest goes.
        let mut best: Option<(u8, u32, Instant, u32)> = None;
        let mut cur = src.head;
        while cur != NIL {
            let e = &self.entries[cur as usize];
            let class = match self.lists.list_of(cur) {
                ListId::LingerClaim => Some(0),
                ListId::Claim if e.last_packet + hold <= now => Some(1),
                ListId::LingerFull | ListId::LingerBare if e.last_packet + hold <= now => Some(2),
                _ => None,
            };
            if let Some(class) = class {
                let rank = (class, e.received, e.last_packet, cur);
                if best.is_none_or(|b| rank < b) {
                    best = Some(rank);
                }
            }
            cur = self.src_next[cur as usize];
        }
        let Some((class, _, _, victim)) = best else {
            return false;
        };
        if class == 1 {
            self.stats.flushed_for_source_cap += 1;
            self.emit(now, victim, sink);
        } else {
            self.stats.forgotten_early += 1;
        }
        self.free_entry(victim);
        true
    }

    /// Puts `idx` at the head of its source address's chain.
    fn source_link(&mut self, idx: u32, ip: IpAddr) {
        let src = self.per_source.entry(ip).or_insert(SourceDumps {
            count: 0,
            head: NIL,
        });
        self.src_next[idx as usize] = src.head;
        src.head = idx;
        src.count += 1;
    }

    /// Takes `idx` out of its source address's chain.
    fn source_unlink(&mut self, idx: u32, ip: IpAddr) {
        let Some(src) = self.per_source.get_mut(&ip) else {
            return;
        };
        let next = self.src_next[idx as usize];
        if src.head == idx {
            src.head = next;
        } else {
            let mut cur = src.head;
            while cur != NIL {
                let after = self.src_next[cur as usize];
                if after == idx {
                    self.src_next[cur as usize] = next;
                    break;
                }
                cur = after;
            }
        }
        src.count -= 1;
        if src.count == 0 {
            self.per_source.remove(&ip);
        }
        self.src_next[idx as usize] = NIL;
    }

    /// Adds `idx` to the identity index; if another port of its address holds the same
    /// identity, flags both as shared and starts `idx`'s count with the chunks the others hold.
    fn identity_link(&mut self, idx: u32) {
        let (entries, hasher) = (&mut self.entries, &self.hasher);
        let key = entries[idx as usize].key;
        let hash = hasher.hash_one(PortlessIdentity(&key));
        let mut held: Option<u32> = None;
        for &s in self.by_identity.iter_hash(hash) {
            let e = &mut entries[s as usize];
            if e.key.same_identity_other_port(&key) {
                e.shared = true;
                held = Some(held.unwrap_or(0).saturating_add(e.received));
            }
        }
        if let Some(held) = held {
            let e = &mut entries[idx as usize];
            e.shared = true;
            e.foreign_port_chunks = held;
        }
        // Capacity is twice the entries, so this never grows (no allocation).
        self.by_identity.insert_unique(hash, idx, |&i| {
            hasher.hash_one(PortlessIdentity(&entries[i as usize].key))
        });
    }

    /// A chunk was stored for the shared dump `idx`: every dump of the same identity from
    /// another port of its address counts it as foreign.
    fn credit_siblings(&mut self, now: Instant, idx: u32) {
        let key = self.entries[idx as usize].key;
        let hash = self.hasher.hash_one(PortlessIdentity(&key));
        let mut any = false;
        for &s in self.by_identity.iter_hash(hash) {
            let e = &mut self.entries[s as usize];
            if !e.key.same_identity_other_port(&key) {
                continue;
            }
            any = true;
            e.foreign_port_chunks = e.foreign_port_chunks.saturating_add(1);
            let already = e.emitted_foreign;
            reopen_if_new_flag(&mut self.lists, e, s, now, already);
        }
        if any {
            self.stats.foreign_port_chunks += 1;
        } else {
            // The others are gone: back to the honest path.
            self.entries[idx as usize].shared = false;
        }
    }

    /// Hands a dump to the sink and moves it to the lingering list.
    fn emit<S: EventSink>(&mut self, now: Instant, idx: u32, sink: &mut S) {
        let e = &mut self.entries[idx as usize];
        e.revision += 1;
        e.complete = e.received == e.packet_count;
        e.emitted_conflicts = e.conflicts > 0;
        e.emitted_foreign = e.foreign_port_chunks > 0;
        if e.complete {
            self.stats.dumps_complete += 1;
        } else {
            self.stats.dumps_partial += 1;
        }
        if e.revision > 1 {
            self.stats.revisions += 1;
        }
        let view = DumpView {
            at: now,
            idx,
            entry: &self.entries[idx as usize],
            header: self.headers.get(idx as usize).unwrap_or(&HeaderInfo::EMPTY),
            bits: self.bits_of(idx),
            chunks: &self.chunks,
        };
        sink.dump(&view);
        let list = if self.entries[idx as usize].received < ESTABLISHED {
            ListId::LingerClaim
        } else {
            ListId::LingerFull
        };
        self.lists.move_to_back(idx, list);
    }

    fn release_chunks(&mut self, idx: u32) {
        if self.entries[idx as usize].has_chunks {
            self.chunks.release(idx);
            self.entries[idx as usize].has_chunks = false;
        }
    }

    /// Drops a lingering dump's chunks but remembers which packets it had.
    fn reclaim_chunks(&mut self, idx: u32) {
        self.release_chunks(idx);
        self.lists.move_to_back(idx, ListId::LingerBare);
    }

    fn free_entry(&mut self, idx: u32) {
        self.release_chunks(idx);
        let start = idx as usize * self.words_per_dump;
        if let Some(bits) = self.bits.get_mut(start..start + self.words_per_dump) {
            bits.fill(0);
        }
        let e = self.entries[idx as usize];
        if e.indexed {
            self.unindex(&e.key);
        }
        if let Ok(found) = self
            .by_identity
            .find_entry(self.hasher.hash_one(PortlessIdentity(&e.key)), |&i| {
                i == idx
            })
        {
            found.remove();
        }
        self.source_unlink(idx, e.key.source.ip());
        self.entries[idx as usize] = DumpEntry::VACANT;
        self.lists.move_to_back(idx, ListId::Free);
    }
}

impl Reassembler {
    /// Panics unless every index agrees with the entries (tests only): each held entry is on
    /// its source's chain and in the identity index once, the chains' counts are right, no
    /// source is over its cap, every dump in progress is on the list its evidence says.
    #[cfg(test)]
    fn check_consistency(&self) {
        let mut held = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let idx = i as u32;
            let list = self.lists.list_of(idx);
            if list == ListId::Free {
                continue;
            }
            held += 1;
            if matches!(list, ListId::Claim | ListId::Assembling) {
                assert_eq!(list, assembling_list(e.received), "entry {idx}: {e:?}");
            }
            if list == ListId::LingerClaim {
                assert!(
                    e.received < ESTABLISHED && e.has_chunks,
                    "entry {idx}: {e:?}"
                );
            }
            let hash = self.hasher.hash_one(PortlessIdentity(&e.key));
            let found = self
                .by_identity
                .iter_hash(hash)
                .filter(|&&j| j == idx)
                .count();
            assert_eq!(found, 1, "entry {idx} in the identity index");
            if e.indexed {
                assert_eq!(self.lookup(&e.key), Some(idx));
            }
        }
        assert_eq!(held, self.dumps_held());
        assert!(self.entries.len() <= self.config.max_dumps);
        assert_eq!(self.by_identity.len(), held);
        let mut chained = 0;
        for (ip, src) in &self.per_source {
            let mut n = 0;
            let mut cur = src.head;
            while cur != NIL {
                assert_eq!(self.entries[cur as usize].key.source.ip(), *ip);
                assert_ne!(self.lists.list_of(cur), ListId::Free);
                n += 1;
                cur = self.src_next[cur as usize];
            }
            assert_eq!(n, src.count);
            assert!(n as usize <= self.config.max_dumps_per_source);
            chained += n as usize;
        }
        assert_eq!(chained, held);
        assert!(self.footprint() <= self.config.memory_budget);
    }
}

#[cfg(test)]
mod tests;
