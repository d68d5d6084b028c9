//! The relay: the whole sans-IO data path from a received datagram to upstream records.
//!
//! [`Relay`] owns the source allowlist, the [`Reassembler`] and the [`UpstreamLink`], and
//! connects them: crash notices and dumps are encoded straight from the reassembler's buffers
//! into the link's spool. The kernel's board loop and the hosted relay are thin drivers of
//! this one type: they feed datagrams and time in, run the link's connection through their
//! TCP stack, and print [`RelayEvent`]s.

use alloc::collections::VecDeque;
use alloc::string::ToString;
use core::fmt;
use core::net::SocketAddr;

use crate::config::{Config, ConfigError};
use crate::hash_key::HashKey;
use crate::http::dumps::{DumpRing, DumpSource, NewDump};
use crate::netconsole::{ConsoleCrash, ConsoleDump, ConsoleSink, ConsoleStats, ConsoleTracker};
use crate::reassembly::{
    Accepted, CrashSeen, DropReason, DumpView, EventSink, NewSlots, PlainSlots, Reassembler,
    ReassemblyStats,
};
use crate::time::Instant;
use crate::upstream::{
    CloseReason, CrashOut, DumpOut, LinkConfig, LinkEvent, LinkStats, RecordKind, SpoolRecord,
    SpoolWriter, UpstreamLink,
};
use netoops_wire::netconsole::NetconsoleError;

/// The upstream link's configuration for the relay's.
fn link_config(config: &Config, instance: u64) -> LinkConfig {
    let mut link = LinkConfig::new(config.upstreams.len(), config.name.clone(), instance);
    link.spool_bytes = config.spool_bytes;
    // A record is at least a few hundred bytes; more entries than that cannot fit.
    link.spool_records = (config.spool_bytes / 256).clamp(64, 1 << 20);
    link
}

/// The netconsole tracker's configuration: the relay's, with the reassembly's quiet time.
fn console_config(config: &Config) -> crate::netconsole::ConsoleConfig {
    let mut console = config.netconsole;
    console.quiet_timeout = config.reassembly.quiet_timeout;
    console
}

/// The `/dumps` ring, kept only while the HTTP endpoint is on.
fn dump_ring_bytes(config: &Config) -> usize {
    if config.http_port != 0 {
        config.http_dumps
    } else {
        0
    }
}

/// Events kept for [`Relay::poll_event`] before the oldest are dropped (and counted).
const EVENT_CAPACITY: usize = 4096;
/// Longest headline kept from a crash's first chunk.
const HEADLINE_LEN: usize = 160;

/// A crash's headline for the console, bounded (no allocation per crash).
pub type Headline = heapless::String<HEADLINE_LEN>;
/// A kernel release for the console: the netoops header's 64 bytes, lossily decoded.
pub type KernelRelease = heapless::String<96>;

/// What a record in the spool is about, kept to report its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    /// Spool record id (enqueue order).
    pub id: u64,
    /// Crash notice or dump.
    pub kind: RecordKind,
    /// Sender.
    pub source: SocketAddr,
    /// Sender's dump id.
    pub dump_id: u16,
    /// Generation under the same identity (a dump id the sender reused), so every console
    /// line about a dump names it as `dump <id>.<generation>`, as `crash seen` does.
    pub generation: u32,
    /// Dump revision (0 for crash notices).
    pub revision: u32,
}

/// A line's worth of news for the console.
///
/// Inline strings (no allocation per crash) make `CrashSeen` the large variant; the event queue
/// is allocated once, so boxing it would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A machine crashed: the first packet of a new dump arrived.
    CrashSeen {
        /// Spool record id (enqueue order), or `None` if the spool refused it.
        id: Option<u64>,
        /// Sender.
        source: SocketAddr,
        /// Sender's dump id.
        dump_id: u16,
        /// Generation under the same identity.
        generation: u32,
        /// Kernel release.
        kernel: KernelRelease,
        /// Packets in the dump.
        packet_count: u32,
        /// The most telling line of the newest text.
        headline: Headline,
    },
    /// A dump was reassembled and queued for delivery.
    DumpQueued {
        /// Spool record id (enqueue order), or `None` if the spool refused it.
        id: Option<u64>,
        /// Sender.
        source: SocketAddr,
        /// Sender's dump id.
        dump_id: u16,
        /// Generation under the same identity.
        generation: u32,
        /// Every packet arrived.
        complete: bool,
        /// Packets received.
        received: u32,
        /// Packets in the dump.
        packet_count: u32,
        /// Revision.
        revision: u32,
        /// Text bytes.
        text_len: usize,
    },
    /// A collector acknowledged a record: it is durable there.
    Delivered(RecordSummary),
    /// The spool overflow policy dropped a record.
    Dropped(RecordSummary),
    /// A collector session started.
    Connected {
        /// Upstream index.
        upstream: usize,
    },
    /// A connection ended.
    Disconnected {
        /// Upstream index.
        upstream: usize,
        /// Why.
        reason: CloseReason,
    },
    /// Delivery moved to another upstream.
    FailedOver {
        /// Previous upstream.
        from: usize,
        /// New upstream.
        to: usize,
    },
}

/// `record N`, or `NOT SPOOLED` when the spool refused it.
struct SpoolId(Option<u64>);

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "record {id}"),
            None => f.write_str("NOT SPOOLED"),
        }
    }
}

/// One line each; a dump is named `<dump id>.<generation>` everywhere.
impl fmt::Display for RelayEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = |s: &Option<u64>| SpoolId(*s);
        match self {
            RelayEvent::CrashSeen {
                id: s,
                source,
                dump_id,
                generation,
                kernel,
                packet_count,
                headline,
            } => write!(
                f,
                "crash seen: {source} dump {dump_id}.{generation} kernel {kernel} \
                 ({packet_count} packets, {}): {headline}",
                id(s)
            ),
            RelayEvent::DumpQueued {
                id: s,
                source,
                dump_id,
                generation,
                complete,
                received,
                packet_count,
                revision,
                text_len,
            } => write!(
                f,
                "dump queued: {source} dump {dump_id}.{generation} {} {received}/{packet_count} packets, \
                 {text_len} bytes, revision {revision} ({})",
                if *complete { "complete" } else { "PARTIAL" },
                id(s)
            ),
            RelayEvent::Delivered(r) => write!(
                f,
                "{} delivered: {} dump {}.{} revision {} (record {})",
                kind_name(r.kind),
                r.source,
                r.dump_id,
                r.generation,
                r.revision,
                r.id
            ),
            RelayEvent::Dropped(r) => write!(
                f,
                "{} DROPPED (spool full): {} dump {}.{} (record {})",
                kind_name(r.kind),
                r.source,
                r.dump_id,
                r.generation,
                r.id
            ),
            RelayEvent::Connected { upstream } => write!(f, "upstream {upstream} connected"),
            RelayEvent::Disconnected { upstream, reason } => {
                write!(f, "upstream {upstream} disconnected: {reason}")
            }
            RelayEvent::FailedOver { from, to } => {
                write!(f, "delivery moved from upstream {from} to upstream {to}")
            }
        }
    }
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::CrashSeen => "crash notice",
        RecordKind::Dump => "dump",
    }
}

/// Counters of the relay's own (the reassembler and the link keep theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams from sources outside the allowlist.
    pub not_allowed: u64,
    /// Records the spool refused outright (larger than the whole spool).
    pub refused: u64,
    /// Console events dropped because nobody polled them.
    pub events_dropped: u64,
}

/// Why [`Relay::handle_datagram`] dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayDrop {
    /// The source is not in the allowlist.
    NotAllowed,
    /// The reassembler dropped it.
    Reassembly(DropReason),
    /// A malformed netconsole datagram.
    Netconsole(NetconsoleError),
}

/// The sink that encodes what the reassembler and the netconsole tracker emit into this
/// relay's spool. A macro rather than a method: it borrows the delivery fields only, so the
/// reassembler and the tracker stay free to be borrowed beside it.
macro_rules! delivery {
    ($relay:ident, $now:expr) => {
        Delivery {
            now: $now,
            link: &mut $relay.link,
            events: &mut $relay.events,
            pending: &mut $relay.pending,
            stats: &mut $relay.stats,
            dumps: &mut $relay.dumps,
        }
    };
}

/// The relay. See the module documentation.
pub struct Relay {
    config: Config,
    reassembler: Reassembler,
    console: ConsoleTracker,
    link: UpstreamLink,
    events: VecDeque<RelayEvent>,
    pending: VecDeque<RecordSummary>,
    stats: RelayStats,
    dumps: DumpRing,
}

impl Relay {
    /// Bytes [`Self::new`] takes from the heap for `config`, at most: the reassembly budget
    /// (with its bookkeeping), the spool, the netconsole tracker, the `/dumps` ring and the
    /// event queues. The appliance checks its heap against it before building the relay, so
    /// that a configuration that does not fit is refused by name instead of ending in an
    /// allocation failure.
    pub fn footprint(config: &Config) -> usize {
        use core::mem::size_of;
        config.reassembly.heap_bytes()
            + UpstreamLink::footprint(&link_config(config, 0))
            + ConsoleTracker::footprint(&console_config(config))
            + DumpRing::footprint(dump_ring_bytes(config))
            + EVENT_CAPACITY * (size_of::<RelayEvent>() + size_of::<RecordSummary>())
    }

    /// The budget key whose memory is the largest part of [`Self::footprint`]: the one to
    /// name when the relay does not fit its machine.
    pub fn largest_budget(config: &Config) -> &'static str {
        let console = console_config(config);
        let netconsole = ConsoleTracker::footprint(&console);
        let pool = ConsoleTracker::pool_footprint(&console);
        [
            ("memory", config.reassembly.memory_budget),
            ("spool", config.spool_bytes),
            ("netconsole_memory", pool),
            ("netconsole_sources", netconsole - pool),
            ("http_dumps", dump_ring_bytes(config)),
        ]
        .into_iter()
        .max_by_key(|&(_, bytes)| bytes)
        .map_or("memory", |(key, _)| key)
    }

    /// Builds the relay from a validated configuration. `instance` must differ on every boot
    /// (collectors key replay protection on it). Its hash tables have a fixed key: a relay
    /// that faces real senders is built with [`Self::keyed`].
    pub fn new(config: Config, instance: u64) -> Result<Relay, ConfigError> {
        Self::with_slots(config, instance, PlainSlots::boxed)
    }

    /// Like [`Self::new`], with reassembled chunks in the store `new_slots` builds (see
    /// [`crate::reassembly::slots`]; the hosted relay plugs in non-temporal stores).
    pub fn with_slots(
        config: Config,
        instance: u64,
        new_slots: NewSlots,
    ) -> Result<Relay, ConfigError> {
        Self::keyed(config, instance, new_slots, HashKey::fixed())
    }

    /// Like [`Self::with_slots`], with the hash tables of everything keyed by what senders
    /// send (dumps, sources, netconsole senders) keyed by `key`, a secret drawn per start
    /// ([`crate::hash_key`]): what the image and the hosted relay build.
    pub fn keyed(
        config: Config,
        instance: u64,
        new_slots: NewSlots,
        key: HashKey,
    ) -> Result<Relay, ConfigError> {
        config.validate()?;
        let reassembler =
            Reassembler::keyed(config.reassembly, new_slots, key.clone()).map_err(|e| {
                ConfigError {
                    key: "memory".to_string(),
                    problem: e.to_string(),
                }
            })?;
        let mut link_config = link_config(&config, instance);
        // The instance is only a stand-in seed: drivers replace it with fresh randomness
        // (`link().set_security`) so the ephemeral keys stay secret.
        link_config.security = config.upstream_key.clone().map(|key| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&instance.to_le_bytes());
            crate::upstream::LinkSecurity { key, seed }
        });
        let link = UpstreamLink::new(link_config);
        let console = ConsoleTracker::keyed(console_config(&config), key);
        let ring_bytes = dump_ring_bytes(&config);
        Ok(Relay {
            dumps: DumpRing::new(ring_bytes),
            config,
            reassembler,
            console,
            link,
            events: VecDeque::with_capacity(EVENT_CAPACITY),
            pending: VecDeque::with_capacity(EVENT_CAPACITY),
            stats: RelayStats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The reassembler (for its counters and usage).
    pub fn reassembler(&self) -> &Reassembler {
        &self.reassembler
    }

    /// The netconsole tracker (for its counters and usage).
    pub fn console(&self) -> &ConsoleTracker {
        &self.console
    }

    /// Plugs in the platform's prefetch for netconsole history tails (see
    /// [`crate::netconsole::Prefetch`]).
    pub fn set_prefetch(&mut self, prefetch: crate::netconsole::Prefetch) {
        self.console.set_prefetch(prefetch);
    }

    /// The upstream link: the caller runs its TCP connection (connect, transmit, input, close).
    pub fn link(&mut self) -> &mut UpstreamLink {
        &mut self.link
    }

    /// The upstream link, to read (its counters, spool, state).
    pub fn upstream_link(&self) -> &UpstreamLink {
        &self.link
    }

    /// The last dumps' texts, as `/dumps` serves them (empty while `http_port` is off).
    pub fn dumps(&self) -> &DumpRing {
        &self.dumps
    }

    /// Relay counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Handles one datagram received on the netoops port.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<Accepted, RelayDrop> {
        self.admit(source)?;
        let mut sink = delivery!(self, now);
        self.reassembler
            .handle_datagram(now, source, bytes, &mut sink)
            .map_err(RelayDrop::Reassembly)
    }

    /// Refuses (and counts) a sender outside the allowlist.
    #[inline]
    fn admit(&mut self, source: SocketAddr) -> Result<(), RelayDrop> {
        if self.config.allows(source.ip()) {
            Ok(())
        } else {
            self.stats.not_allowed += 1;
            Err(RelayDrop::NotAllowed)
        }
    }

    /// Handles one datagram received on the netconsole port.
    pub fn handle_netconsole(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), RelayDrop> {
        self.admit(source)?;
        let mut sink = delivery!(self, now);
        self.console
            .handle_datagram(now, source, bytes, &mut sink)
            .map_err(RelayDrop::Netconsole)
    }

    /// Runs the timers: quiet dumps become partial, quiet netconsole crashes are dumped, the
    /// link reconnects and detects stalls.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut sink = delivery!(self, now);
        self.reassembler.handle_timeout(now, &mut sink);
        self.console.handle_timeout(now, &mut sink);
        self.link.handle_timeout(now);
    }

    /// Emits every dump still assembling as partial (shutdown).
    pub fn flush(&mut self, now: Instant) {
        let mut sink = delivery!(self, now);
        self.reassembler.flush(now, &mut sink);
        self.console.flush(now, &mut sink);
    }

    /// When [`Relay::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.reassembler.poll_timeout(),
            self.console.poll_timeout(),
            self.link.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next console event, including the link's (deliveries, connections).
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        while let Some(ev) = self.link.poll_event() {
            let mapped = match ev {
                LinkEvent::Delivered { id, .. } => self.take_pending(id).map(RelayEvent::Delivered),
                LinkEvent::Dropped { id, .. } => self.take_pending(id).map(RelayEvent::Dropped),
                LinkEvent::Connected { idx } => Some(RelayEvent::Connected { upstream: idx }),
                LinkEvent::Disconnected { idx, reason } => Some(RelayEvent::Disconnected {
                    upstream: idx,
                    reason,
                }),
                LinkEvent::FailedOver { from, to } => Some(RelayEvent::FailedOver { from, to }),
            };
            if let Some(ev) = mapped {
                push_bounded(&mut self.events, &mut self.stats, ev);
            }
        }
        self.events.pop_front()
    }

    /// Whether every record queued so far has been acknowledged.
    pub fn all_delivered(&self) -> bool {
        self.link.spool().is_empty()
    }

    fn take_pending(&mut self, id: u64) -> Option<RecordSummary> {
        // Notices and dumps are acknowledged in about enqueue order, so the match is almost always at the front.
        let pos = self.pending.iter().position(|p| p.id == id)?;
        self.pending.remove(pos)
    }

    /// One line of counters for the console.
    pub fn counters(&self) -> Counters<'_> {
        Counters {
            r: self.reassembler.stats(),
            nc: self.console.stats(),
            nc_sources: self.console.sources(),
            l: self.link.stats(),
            relay: &self.stats,
            chunks: self.reassembler.chunk_usage(),
            dumps: self.reassembler.dumps_held(),
            spool: (self.link.spool().used(), self.link.spool().capacity()),
        }
    }
}

/// Counters formatted as one console line.
pub struct Counters<'a> {
    r: &'a ReassemblyStats,
    nc: &'a ConsoleStats,
    nc_sources: usize,
    l: LinkStats,
    relay: &'a RelayStats,
    chunks: (usize, usize),
    dumps: usize,
    spool: (usize, usize),
}

impl fmt::Display for Counters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.r;
        write!(
            f,
            "counters: format {} | datagrams {} chunks {} dup {} malformed {} not_allowed {} \
             no_memory {} late {} refused {} conflicts {} foreign_port {} | dumps started {} \
             complete {} partial {} held {} \
             chunks {}/{} | delivered {} dropped {} spool {}/{} bytes | nc_datagrams {} \
             nc_malformed {} nc_dup {} nc_crashes {} nc_dumps {} nc_sources {} nc_boots {} \
             nc_trimmed {} nc_no_memory {}",
            crate::console::FORMAT,
            r.datagrams,
            r.chunks_stored,
            r.duplicates + r.duplicates_unverified,
            r.malformed_total(),
            self.relay.not_allowed,
            r.dropped_no_memory,
            r.dropped_late,
            r.refused_total(),
            r.conflicts,
            r.foreign_port_chunks,
            r.dumps_started,
            r.dumps_complete,
            r.dumps_partial,
            self.dumps,
            self.chunks.0,
            self.chunks.1,
            self.l.delivered.total(),
            self.l.dropped.total(),
            self.spool.0,
            self.spool.1,
            self.nc.datagrams,
            self.nc.malformed_total(),
            self.nc.duplicates,
            self.nc.crashes,
            self.nc.dumps,
            self.nc_sources,
            self.nc.boots,
            self.nc.blocks_trimmed,
            self.nc.dropped_no_memory + self.nc.dropped_crash_full + self.nc.dropped_no_source,
        )
    }
}

fn push_bounded(events: &mut VecDeque<RelayEvent>, stats: &mut RelayStats, ev: RelayEvent) {
    if events.len() >= EVENT_CAPACITY {
        events.pop_front();
        stats.events_dropped += 1;
    }
    events.push_back(ev);
}

/// The reassembler's sink: encodes records into the link's spool.
struct Delivery<'a> {
    now: Instant,
    link: &'a mut UpstreamLink,
    events: &'a mut VecDeque<RelayEvent>,
    pending: &'a mut VecDeque<RecordSummary>,
    stats: &'a mut RelayStats,
    dumps: &'a mut DumpRing,
}

/// Console text: lossy UTF-8 without control characters (a sender's bytes must not move the
/// operator's cursor), cut at the capacity.
fn console_text<const N: usize>(bytes: &[u8]) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for chunk in bytes.utf8_chunks() {
        let replacement = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
        for c in chunk.valid().chars().chain(replacement) {
            if c.is_control() {
                continue;
            }
            if out.push(c).is_err() {
                return out;
            }
        }
    }
    out
}

/// The line of the newest text most likely to say what happened.
fn headline(text: &[u8]) -> Headline {
    const MARKERS: [&[u8]; 6] = [
        b"Kernel panic",
        b"BUG:",
        b"Oops",
        b"general protection fault",
        b"RIP:",
        b"WARNING:",
    ];
    let lines = || text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let pick = MARKERS
        .iter()
        .find_map(|m| lines().find(|l| l.windows(m.len()).any(|w| w == *m)))
        .or_else(|| lines().next_back())
        .unwrap_or(b"");
    console_text(&pick[..pick.len().min(HEADLINE_LEN)])
}

impl Delivery<'_> {
    /// Spools `record` with the `len` bytes of text `fill` writes; `None` when the spool
    /// refuses it (which [`Self::queued`] counts).
    fn spool<R: SpoolRecord + ?Sized>(
        &mut self,
        record: &R,
        len: usize,
        fill: impl FnOnce(&mut SpoolWriter<'_>),
    ) -> Option<u64> {
        self.link.enqueue(self.now, record, len as u32, fill).ok()
    }

    /// Reports `event`. For a crash notice or dump it also remembers what the record is about,
    /// to report its delivery later, or counts it refused when the spool did not take it.
    fn queued(&mut self, event: RelayEvent) {
        let spooled = match event {
            RelayEvent::CrashSeen {
                id,
                source,
                dump_id,
                generation,
                ..
            } => Some((id, RecordKind::CrashSeen, source, dump_id, generation, 0)),
            RelayEvent::DumpQueued {
                id,
                source,
                dump_id,
                generation,
                revision,
                ..
            } => Some((id, RecordKind::Dump, source, dump_id, generation, revision)),
            _ => None,
        };
        match spooled {
            Some((Some(id), kind, source, dump_id, generation, revision)) => {
                if self.pending.len() >= self.pending.capacity() {
                    // The spool holds far fewer records than this; keep the newest summaries.
                    self.pending.pop_front();
                }
                self.pending.push_back(RecordSummary {
                    id,
                    kind,
                    source,
                    dump_id,
                    generation,
                    revision,
                });
            }
            Some((None, ..)) => self.stats.refused += 1,
            None => {}
        }
        push_bounded(self.events, self.stats, event);
    }
}

impl EventSink for Delivery<'_> {
    fn crash_seen(&mut self, c: &CrashSeen<'_>) {
        let d = &c.datagram;
        let text = c.text();
        let id = self.spool(&CrashOut::netoops(c), text.len(), |w| w.write(text));
        let event = RelayEvent::CrashSeen {
            id,
            source: c.source,
            dump_id: d.dump_id(),
            generation: c.generation,
            kernel: console_text(d.kernel_version()),
            packet_count: d.packet_count(),
            headline: headline(text),
        };
        self.queued(event);
    }

    fn dump(&mut self, d: &DumpView<'_>) {
        let text_len = d.text_len();
        let id = self.spool(&DumpOut::Netoops(d), text_len, |w| {
            d.write_text(|b| w.write(b))
        });
        let event = RelayEvent::DumpQueued {
            id,
            source: d.source(),
            dump_id: d.dump_id(),
            generation: d.generation(),
            complete: d.complete(),
            received: d.received(),
            packet_count: d.packet_count(),
            revision: d.revision(),
            text_len,
        };
        self.queued(event);
        let meta = NewDump {
            kind: DumpSource::Netoops,
            source: d.source(),
            major: u32::from(d.dump_id()),
            minor: d.generation(),
            kernel: d.kernel_version(),
            complete: d.complete(),
            received: d.received(),
            packets: d.packet_count(),
            revision: d.revision(),
            emitted: d.emitted_at(),
        };
        self.dumps
            .store(&meta, text_len, |w| d.write_text(|b| w.write(b)));
    }
}

impl ConsoleSink for Delivery<'_> {
    fn crash_seen(&mut self, c: &ConsoleCrash<'_>) {
        let id = self.spool(&CrashOut::netconsole(c), c.line.len(), |w| w.write(c.line));
        let event = RelayEvent::CrashSeen {
            id,
            source: c.source,
            dump_id: c.crash as u16,
            generation: 0,
            kernel: console_text(c.release),
            packet_count: 0,
            headline: console_text(&c.line[..c.line.len().min(HEADLINE_LEN)]),
        };
        self.queued(event);
    }

    fn dump(&mut self, d: &ConsoleDump<'_>) {
        let out = DumpOut::Netconsole(d);
        let id = self.spool(&out, d.text.len(), |w| w.write(d.text));
        let event = RelayEvent::DumpQueued {
            id,
            source: d.notice.source,
            dump_id: d.notice.crash as u16,
            generation: 0,
            complete: d.complete(),
            received: d.records,
            packet_count: out.packet_count(),
            revision: 1,
            text_len: d.text.len(),
        };
        self.queued(event);
        let meta = NewDump {
            kind: DumpSource::Netconsole,
            source: d.notice.source,
            major: d.notice.boot,
            minor: d.notice.crash,
            kernel: d.notice.release,
            complete: d.complete(),
            received: d.records,
            packets: out.packet_count(),
            revision: 1,
            emitted: d.emitted_at,
        };
        self.dumps.store(&meta, d.text.len(), |w| w.write(d.text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Record, Source};
    use alloc::string::String;
    use alloc::vec::Vec;
    use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

    fn relay(extra: &str) -> Relay {
        let config = Config::parse(&alloc::format!(
            "upstream=127.0.0.1:2005 memory=8M max_dumps=64 {extra}"
        ))
        .unwrap();
        Relay::new(config, 7).unwrap()
    }

    #[test]
    fn the_largest_budget_is_the_one_named() {
        let largest = |line: &str| {
            let config = Config::parse(&alloc::format!("upstream=127.0.0.1:2005 {line}")).unwrap();
            Relay::largest_budget(&config)
        };
        assert_eq!(
            largest(""),
            "memory",
            "64M of reassembly, 16M of the rest each"
        );
        assert_eq!(largest("memory=8M spool=1G"), "spool");
        assert_eq!(
            largest("memory=8M netconsole_memory=1G"),
            "netconsole_memory"
        );
        assert_eq!(
            largest("memory=8M netconsole_sources=1048576"),
            "netconsole_sources"
        );
        assert_eq!(
            largest("memory=8M http_port=80 http_dumps=1G"),
            "http_dumps"
        );
        assert_eq!(
            largest("memory=32M http_dumps=1G"),
            "memory",
            "no endpoint, no ring"
        );
    }

    fn send(relay: &mut Relay, from: SocketAddr, log: &[u8]) {
        let m = SenderModel::new(&[], log);
        let mut h = DumpHeader::new(Variant::V3X86_64, 11, "6.1.0-relay");
        h.registers[16] = 0xffff_ffff_8100_0000;
        for (_, p) in m.schedule() {
            let mut buf = [0u8; 2048];
            let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
            let _ = relay.handle_datagram(Instant::from_millis(5), from, &buf[..n]);
        }
    }

    /// Runs the link against an in-memory collector that acknowledges everything, and
    /// returns the decoded records with their payloads.
    fn deliver(relay: &mut Relay) -> Vec<(Record, Vec<u8>)> {
        use crate::upstream::link::tests::{connect, pump, Collector};
        let now = Instant::from_millis(10);
        let mut c = Collector::new();
        connect(relay.link(), &mut c, now);
        pump(relay.link(), &mut c, now, 4096);
        c.stored.into_iter().map(|(_, _, p, r)| (r, p)).collect()
    }

    #[test]
    fn a_crash_becomes_a_notice_and_a_dump_on_the_wire() {
        let mut r = relay("");
        let from = SocketAddr::from(([10, 0, 0, 5], 6666));
        let mut log = Vec::new();
        for i in 0..60 {
            log.extend_from_slice(alloc::format!("[{i:5}.000000] line {i}\n").as_bytes());
        }
        log.extend_from_slice(b"[   61.000000] Kernel panic - not syncing: Fatal exception\n");
        send(&mut r, from, &log);
        let records = deliver(&mut r);
        assert_eq!(records.len(), 2);
        match &records[0] {
            (Record::CrashSeen(c), text) => {
                assert_eq!(c.id.source, Source::from(from));
                assert_eq!(c.kernel_version, "6.1.0-relay");
                assert_eq!(c.packet_no, 0);
                let regs = c.registers.as_ref().unwrap();
                assert!(regs
                    .names_values
                    .contains(&("ip".to_string(), 0xffff_ffff_8100_0000)));
                assert!(log.ends_with(text));
            }
            other => panic!("{other:?}"),
        }
        match &records[1] {
            (Record::Dump(d), text) => {
                assert!(d.complete);
                assert_eq!(d.revision, 1);
                assert_eq!(text, &log);
            }
            other => panic!("{other:?}"),
        }
        let lines: Vec<String> = core::iter::from_fn(|| r.poll_event())
            .map(|e| e.to_string())
            .collect();
        assert!(lines[0].starts_with("crash seen: 10.0.0.5:6666 dump 11.0 kernel 6.1.0-relay"));
        assert!(
            lines[0].ends_with("Kernel panic - not syncing: Fatal exception"),
            "{}",
            lines[0]
        );
        assert!(lines
            .iter()
            .any(|l| l.starts_with("dump queued: 10.0.0.5:6666 dump 11.0 complete")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("dump delivered: 10.0.0.5:6666 dump 11.0 revision 1")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("crash notice delivered: 10.0.0.5:6666 dump 11.0 ")));
        assert!(r.all_delivered());
    }

    #[test]
    fn every_line_about_a_reused_dump_id_names_its_generation() {
        let mut r = relay("");
        let from = SocketAddr::from(([10, 0, 0, 6], 6666));
        let oops: Vec<u8> = (0..40)
            .flat_map(|i| alloc::format!("[{i:5}.000000] oops line {i}\n").into_bytes())
            .collect();
        // The panic in the same second: same dump id and packet count, a new newest chunk.
        let mut panic = oops.clone();
        panic.truncate(oops.len() - 40);
        panic.extend_from_slice(b"Kernel panic - not syncing: again\n");
        send(&mut r, from, &oops);
        send(&mut r, from, &panic);
        assert_eq!(deliver(&mut r).len(), 4);
        let lines: Vec<String> = core::iter::from_fn(|| r.poll_event())
            .map(|e| e.to_string())
            .collect();
        for (prefix, generation) in [
            ("crash seen: 10.0.0.6:6666 dump 11.", "0 "),
            ("crash seen: 10.0.0.6:6666 dump 11.", "1 "),
            ("dump queued: 10.0.0.6:6666 dump 11.", "0 complete"),
            ("dump queued: 10.0.0.6:6666 dump 11.", "1 complete"),
            ("crash notice delivered: 10.0.0.6:6666 dump 11.", "0 "),
            ("crash notice delivered: 10.0.0.6:6666 dump 11.", "1 "),
            ("dump delivered: 10.0.0.6:6666 dump 11.", "0 "),
            ("dump delivered: 10.0.0.6:6666 dump 11.", "1 "),
        ] {
            let want = alloc::format!("{prefix}{generation}");
            assert_eq!(
                lines.iter().filter(|l| l.starts_with(&want)).count(),
                1,
                "{want:?} in {lines:#?}"
            );
        }
    }

    #[test]
    fn a_netconsole_crash_becomes_a_notice_and_a_dump_on_the_wire() {
        let mut r = relay("");
        let from = SocketAddr::from(([10, 0, 0, 9], 6665));
        let lines = [
            "6,10,5000000,-;marker one\n",
            "6,11,5000100,-;marker two\n SUBSYSTEM=net\n",
            "0,12,5000200,-;Kernel panic - not syncing: sysrq triggered crash\n cpu=0\n",
            "4,14,5000300,-;Call Trace:\n",
        ];
        for l in lines {
            r.handle_netconsole(Instant::from_millis(1), from, l.as_bytes())
                .unwrap();
        }
        assert_eq!(
            r.handle_netconsole(Instant::from_millis(1), from, b"6,1,x,-;bad"),
            Err(RelayDrop::Netconsole(NetconsoleError::Usec))
        );
        assert_eq!(r.console().poll_timeout(), Some(Instant::from_millis(3001)));
        r.handle_timeout(Instant::from_millis(3001));
        let records = deliver(&mut r);
        assert_eq!(records.len(), 2);
        match &records[0] {
            (Record::CrashSeen(c), text) => {
                assert_eq!(c.kind(), crate::upstream::DumpKind::Netconsole);
                assert_eq!(c.id.source, Source::from(from));
                assert_eq!(text, b"Kernel panic - not syncing: sysrq triggered crash");
            }
            other => panic!("{other:?}"),
        }
        match &records[1] {
            (Record::Dump(d), text) => {
                let nc = d.netconsole.as_ref().unwrap();
                assert_eq!(nc.missing_seq, [(13, 13)]);
                assert_eq!(nc.fields, [("cpu".to_string(), "0".to_string())]);
                assert_eq!(nc.records, 4);
                assert!(!d.complete);
                assert_eq!(
                    String::from_utf8_lossy(text),
                    "[    5.000000] marker one\n[    5.000100] marker two\n\
                     [    5.000200] Kernel panic - not syncing: sysrq triggered crash\n\
                     [netconsole: records 13-13 missing]\n[    5.000300] Call Trace:\n"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(r
            .counters()
            .to_string()
            .contains("nc_datagrams 5 nc_malformed 1"));
        assert!(r.all_delivered());
    }

    #[test]
    fn sources_outside_the_allowlist_are_counted_and_ignored() {
        let mut r = relay("allow=10.1.0.0/16");
        send(&mut r, SocketAddr::from(([10, 2, 0, 1], 1)), b"hello\n");
        assert_eq!(r.stats().not_allowed, 3);
        assert_eq!(r.reassembler().stats().datagrams, 0);
        send(&mut r, SocketAddr::from(([10, 1, 0, 1], 1)), b"hello\n");
        assert_eq!(r.reassembler().stats().dumps_complete, 1);
    }

    #[test]
    fn headline_prefers_the_panic_line() {
        assert_eq!(
            headline(b"a\nBUG: unable to handle\nKernel panic - x\nzz\n"),
            "Kernel panic - x"
        );
        assert_eq!(headline(b"one\ntwo\n"), "two");
        assert_eq!(headline(b""), "");
    }
}
