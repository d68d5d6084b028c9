//! [`UpstreamLink`]: the sans-IO delivery state machine between the spool and one TCP connection
//! at a time to an ordered list of collectors.
//!
//! The caller owns the sockets, the addresses and the clock; the link owns the spool and decides
//! what to do. A driver loop (kernel board, hosted relay, tests) looks like:
//!
//! ```text
//! loop {
//!     if let Some(i) = link.poll_connect(now) { start a TCP connect to upstream i }
//!     on connect success: link.handle_connected(now, i); on failure: link.handle_closed(now, i, ConnectFailed)
//!     on bytes read:      link.handle_input(now, bytes)   (an Err means: close, see poll_close)
//!     if let Some(i) = link.poll_close() { close the socket; link.handle_closed(now, i, ...) }
//!     n = link.poll_transmit(now, &mut buf[..socket_free_space]); write buf[..n] (all of it)
//!     while let Some(ev) = link.poll_event() { log/count }
//!     sleep until link.poll_timeout() or I/O; link.handle_timeout(now)
//! }
//! ```
//!
//! With [`LinkConfig::security`] set, every connection first runs the secure channel's
//! handshake ([`super::secure`]): the key id and handshake message 1 are the first bytes out,
//! and `Hello` and everything after it travel sealed once the collector has proved the key.
//! The handshake counts against the `Welcome` deadline; a channel failure closes the
//! connection with [`CloseReason::AuthFailed`]. A collector's `Refused` (its disk is full)
//! backs the link off by the streak of refusals, not by the backoff a `Welcome` resets.
//!
//! Session: `Hello`, then nothing until the collector's `Welcome` (so records it already applied
//! are never resent), then every spooled record above `Welcome.last_seq` in seq order, then new
//! records as they are enqueued: crash notices before dumps (the spool's two lanes), and a new
//! dump only while less than [`LinkConfig::dump_window`] bytes of dumps await acknowledgement,
//! so a crash notice is never queued behind more than that and the one frame being written (in
//! the socket's buffer and the collector's backlog) whatever the spool holds. Seqs are given
//! when a frame first starts, so they increase on the wire whatever overtook what. Records leave the spool only when acknowledged (or dropped by the
//! overflow policy, which is counted and reported). After a disconnect the next session resends
//! everything unacknowledged; the collector's `last_seq` makes that idempotent.
//!
//! Upstream choice: index 0 is preferred. Every upstream has its own capped exponential backoff;
//! [`UpstreamLink::poll_connect`] proposes the lowest index whose backoff has expired, so a failed
//! or stalled upstream 0 moves the link to 1 at once. While connected to a non-preferred upstream,
//! every `failback_interval` the link closes the session at a frame boundary (reason
//! [`CloseReason::Failback`]) if a preferred upstream is out of backoff, which makes the next
//! connect try it; if it does not accept, the link falls over again.
//!
//! `sent_at_ms` is stamped when a frame starts on the stream (see [`super::record`]).

use super::emit::SpoolRecord;
use super::record::{
    self, decode_reply, encode_spooled_prefix, DecodeError, FrameDecoder, FrameError, Record,
    RecordHeaderRef, RecordKind, Reply, MAX_FRAME_LEN, MAX_REPLY_LEN, PROTOCOL_VERSION,
    SPOOLED_PREFIX_MAX,
};
use super::secure::{ChannelRng, Initiator, SecureError, SessionKey};
use super::spool::{RoomError, Spool, SpoolWriter};
use crate::time::{Duration, Instant};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// How an [`UpstreamLink`] is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Length of the caller's ordered upstream list; index 0 is preferred.
    pub upstreams: usize,
    /// This relay's name, sent in `Hello`.
    pub relay: String,
    /// Unique per relay boot (random, or a persisted boot counter): the collector keys its
    /// replay protection on it, and seqs restart at 1 for every instance.
    pub instance: u64,
    /// Spool size in bytes, allocated at construction.
    pub spool_bytes: usize,
    /// Most records the spool holds, allocated at construction.
    pub spool_records: usize,
    /// Bytes of dump frames written and not yet acknowledged before another dump may start:
    /// bounds what a crash notice can find ahead of it on the wire. One dump always may go.
    pub dump_window: usize,
    /// Longest wait for a TCP connect.
    pub connect_timeout: Duration,
    /// Longest wait for `Welcome`, and for the next `Ack` while records are outstanding: a peer
    /// that is silent that long is stalled and the session is closed.
    pub ack_timeout: Duration,
    /// First backoff after a failure.
    pub backoff_min: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// How often to try preferred upstreams again while on a fallback.
    pub failback_interval: Duration,
    /// Events kept for [`UpstreamLink::poll_event`] before the oldest are dropped.
    pub event_capacity: usize,
    /// Authenticated, encrypted sessions ([`super::secure`]); `None` speaks the record
    /// protocol in clear (an explicit opt-out: collectors with keys refuse it).
    pub security: Option<LinkSecurity>,
}

/// The relay's session key and the secret seed its ephemeral keys are drawn from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSecurity {
    /// Key id and pre-shared key.
    pub key: SessionKey,
    /// Secret randomness, fresh on every start: handshake `n` draws its ephemeral from
    /// ChaCha20 under this seed and nonce `n`.
    pub seed: [u8; 32],
}

/// Plaintext bytes per sealed message the relay sends: small enough to keep a crash notice
/// close behind, large enough that the 18 bytes of overhead do not matter.
const SEAL_CHUNK: usize = 16 * 1024;

impl LinkConfig {
    /// Defaults for everything but the upstream count and the relay's identity: an 8 MiB spool
    /// of at most 16384 records, a 4 MiB dump window, 3 s connect timeout, 10 s ack timeout, backoff 100 ms to 30 s,
    /// failback every 60 s, 1024 events.
    pub fn new(upstreams: usize, relay: impl Into<String>, instance: u64) -> Self {
        LinkConfig {
            upstreams,
            relay: relay.into(),
            instance,
            spool_bytes: 8 * 1024 * 1024,
            spool_records: 16 * 1024,
            dump_window: 4 << 20,
            connect_timeout: Duration::from_secs(3),
            ack_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            failback_interval: Duration::from_secs(60),
            event_capacity: 1024,
            security: None,
        }
    }
}

/// Why a connection ended. The first group is reported by the caller, the rest decided by the
/// link (and then reported back in [`LinkEvent::Disconnected`] whatever the caller passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum CloseReason {
    /// The TCP connect failed (refused, unreachable).
    ConnectFailed,
    /// The peer closed the connection.
    PeerClosed,
    /// A socket error.
    IoError,
    /// The TCP connect took longer than `connect_timeout`.
    ConnectTimeout,
    /// No `Welcome` within `ack_timeout`.
    HandshakeTimeout,
    /// Records outstanding and no `Ack` within `ack_timeout`: a stalled peer.
    AckTimeout,
    /// The peer sent bytes that are not a valid reply frame.
    MalformedReply,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The peer sent `Refused`.
    Refused,
    /// A valid reply at the wrong time (`Ack` before `Welcome`, a second `Welcome`, an `Ack`
    /// for records never sent).
    UnexpectedReply,
    /// `Welcome.last_seq` is above anything this instance ever sent: the instance id was
    /// reused. The link keeps its records rather than trusting the peer.
    InstanceConflict,
    /// Closed on purpose to try a preferred upstream again.
    Failback,
    /// The secure channel failed: the collector did not prove the key (handshake), or a
    /// message did not decrypt.
    AuthFailed,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::ConnectFailed,
        CloseReason::PeerClosed,
        CloseReason::IoError,
        CloseReason::ConnectTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::AckTimeout,
        CloseReason::MalformedReply,
        CloseReason::VersionMismatch,
        CloseReason::Refused,
        CloseReason::UnexpectedReply,
        CloseReason::InstanceConflict,
        CloseReason::Failback,
        CloseReason::AuthFailed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What [`UpstreamLink::poll_event`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A collector acknowledged the record: it is durable there.
    Delivered {
        /// The id [`UpstreamLink::enqueue`] returned.
        id: u64,
        /// Record kind.
        kind: RecordKind,
    },
    /// A collector accepted a session (`Welcome`) on upstream `idx`.
    Connected {
        /// Upstream index.
        idx: usize,
    },
    /// A connection attempt or session on upstream `idx` ended.
    Disconnected {
        /// Upstream index.
        idx: usize,
        /// Why.
        reason: CloseReason,
    },
    /// A session was accepted on another upstream than the previous one (failover or
    /// failback).
    FailedOver {
        /// Upstream of the previous session.
        from: usize,
        /// Upstream of this session.
        to: usize,
    },
    /// The spool overflow policy dropped a record before it was ever sent: it is not stored.
    Dropped {
        /// The id [`UpstreamLink::enqueue`] returned.
        id: u64,
        /// Record kind.
        kind: RecordKind,
    },
}

/// Why [`UpstreamLink::enqueue`] did not take a record. Nothing was spooled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// `Hello` is the link's own business.
    NotSpoolable,
    /// The frame would exceed the protocol's [`MAX_FRAME_LEN`] or the whole spool.
    TooLarge {
        /// Record body bytes (header and payload).
        len: usize,
    },
    /// Every record of this kind in the spool has been sent and awaits its acknowledgement
    /// (such records are never dropped: the collector may hold them); retry after an `Ack`.
    Busy,
    /// The fill closure wrote a different number of bytes than `payload_len`.
    PayloadLength {
        /// `payload_len` passed to `enqueue`.
        declared: u32,
        /// Bytes the closure wrote.
        written: usize,
    },
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnqueueError::NotSpoolable => f.write_str("Hello records are not spooled"),
            EnqueueError::TooLarge { len } => write!(f, "record of {len} bytes does not fit"),
            EnqueueError::Busy => {
                f.write_str("spool lane full of records awaiting acknowledgement")
            }
            EnqueueError::PayloadLength { declared, written } => {
                write!(f, "payload_len {declared} but {written} bytes written")
            }
        }
    }
}

/// Why [`UpstreamLink::handle_input`] gave up on the connection; it has asked the caller to
/// close it ([`UpstreamLink::poll_close`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The byte stream is not framed correctly.
    Frame(FrameError),
    /// A frame is not a valid reply.
    Decode(DecodeError),
    /// The collector speaks another protocol version.
    VersionMismatch {
        /// Its version.
        protocol: u16,
    },
    /// The collector refused the session.
    Refused {
        /// Its reason.
        reason: String,
    },
    /// A reply that makes no sense now.
    Unexpected(Reply),
    /// `Welcome.last_seq` is above anything this instance sent.
    InstanceConflict {
        /// The collector's `last_seq`.
        last_seq: u64,
    },
    /// The secure channel failed.
    Secure(SecureError),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Frame(e) => write!(f, "bad reply framing: {e}"),
            LinkError::Decode(e) => write!(f, "bad reply: {e}"),
            LinkError::VersionMismatch { protocol } => {
                write!(
                    f,
                    "collector speaks protocol {protocol}, not {PROTOCOL_VERSION}"
                )
            }
            LinkError::Refused { reason } => write!(f, "collector refused: {reason}"),
            LinkError::Unexpected(r) => write!(f, "unexpected reply {r:?}"),
            LinkError::InstanceConflict { last_seq } => write!(
                f,
                "collector has seq {last_seq} for this instance, above anything sent"
            ),
            LinkError::Secure(e) => write!(f, "secure channel: {e}"),
        }
    }
}

impl LinkError {
    fn reason(&self) -> CloseReason {
        match self {
            LinkError::Frame(_) | LinkError::Decode(_) => CloseReason::MalformedReply,
            LinkError::VersionMismatch { .. } => CloseReason::VersionMismatch,
            LinkError::Refused { .. } => CloseReason::Refused,
            LinkError::Unexpected(_) => CloseReason::UnexpectedReply,
            LinkError::InstanceConflict { .. } => CloseReason::InstanceConflict,
            LinkError::Secure(_) => CloseReason::AuthFailed,
        }
    }
}

/// Counters per record kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// `CrashSeen` records.
    pub crash_seen: u64,
    /// `Dump` records.
    pub dump: u64,
}

impl KindCounts {
    fn bump(&mut self, kind: RecordKind) {
        match kind {
            RecordKind::CrashSeen => self.crash_seen += 1,
            RecordKind::Dump => self.dump += 1,
        }
    }

    /// Both kinds together.
    pub fn total(&self) -> u64 {
        self.crash_seen + self.dump
    }
}

/// Disconnects counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisconnectCounts([u64; CloseReason::ALL.len()]);

impl DisconnectCounts {
    /// Disconnects for this reason.
    pub fn get(&self, reason: CloseReason) -> u64 {
        self.0[reason.index()]
    }

    /// All disconnects.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A snapshot of the link's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Records accepted into the spool.
    pub queued: KindCounts,
    /// Records acknowledged by a collector.
    pub delivered: KindCounts,
    /// Records written again on a later session.
    pub resent: KindCounts,
    /// Records dropped by the overflow policy.
    pub dropped: KindCounts,
    /// Records refused by `enqueue` (too large, busy, bad payload length).
    pub refused: KindCounts,
    /// Spool bytes held now.
    pub spool_bytes_used: usize,
    /// Most spool bytes ever held.
    pub spool_bytes_high_water: usize,
    /// Records held now.
    pub spool_records: usize,
    /// Connection attempts proposed by `poll_connect`.
    pub connects: u64,
    /// Sessions accepted with `Welcome`.
    pub sessions: u64,
    /// Sessions accepted on another upstream than the previous one.
    pub failovers: u64,
    /// Ended connections by reason.
    pub disconnects: DisconnectCounts,
    /// Reply frames that failed to frame or decode.
    pub malformed_replies: u64,
    /// `Refused` replies.
    pub refused_replies: u64,
    /// Events lost because nobody drained `poll_event`.
    pub events_dropped: u64,
    /// Secure-channel failures: a collector that did not prove the key, or a message that
    /// did not decrypt.
    pub auth_failures: u64,
}

/// The frame being written: its prefix (length, seq, sent_at) and how far we are.
#[derive(Clone, Copy, Debug)]
struct Partial {
    kind: RecordKind,
    id: u64,
    seq: u64,
    prefix: [u8; SPOOLED_PREFIX_MAX],
    prefix_len: usize,
    frame_len: usize,
    offset: usize,
}

#[derive(Debug)]
struct Session {
    idx: usize,
    hello_written: usize,
    welcomed: bool,
    /// Highest seq fully written (or known applied) on this session.
    sent_through: u64,
    /// Highest seq the collector has confirmed on this session (Welcome or Ack).
    acked_through: u64,
    /// Bytes of dump frames started on this session and not yet acknowledged.
    dump_bytes_unacked: usize,
    partial: Option<Partial>,
    handshake_deadline: Instant,
    ack_deadline: Option<Instant>,
    failback_at: Option<Instant>,
    failback_due: bool,
}

impl Session {
    fn outstanding(&self) -> bool {
        self.partial.is_some() || self.sent_through > self.acked_through
    }
}

#[derive(Debug)]
enum State {
    Idle,
    Connecting { idx: usize, deadline: Instant },
    Open(Session),
}

#[derive(Clone, Copy, Debug)]
struct Upstream {
    next_attempt: Instant,
    backoff: Duration,
    /// `Refused` closes since records last moved on this upstream: a collector that
    /// welcomes and then refuses (its disk is full) is backed off by this streak, not by the
    /// backoff a `Welcome` resets.
    refusals: u32,
}

/// The `Hello` frame for `config`; a relay name too long for a frame is a configuration
/// error, and the frame then carries an empty name.
fn hello_frame(config: &LinkConfig) -> Vec<u8> {
    let hello_record = Record::Hello {
        protocol: PROTOCOL_VERSION,
        relay: config.relay.clone(),
        instance: config.instance,
    };
    let header = RecordHeaderRef {
        seq: 0,
        sent_at_ms: 0,
        record: &hello_record,
        payload_len: 0,
    };
    record::encode_record_frame(&header, &[]).unwrap_or_else(|_| {
        let fallback = Record::Hello {
            protocol: PROTOCOL_VERSION,
            relay: String::new(),
            instance: config.instance,
        };
        let header = RecordHeaderRef {
            record: &fallback,
            ..header
        };
        record::encode_record_frame(&header, &[]).unwrap_or_default()
    })
}

/// The upstream delivery state machine (module doc).
#[derive(Debug)]
pub struct UpstreamLink {
    config: LinkConfig,
    spool: Spool,
    upstreams: Vec<Upstream>,
    state: State,
    /// Close requested by the link for the current connection, until `handle_closed`.
    closing: Option<CloseReason>,
    /// The `Hello` frame, encoded at the first connection (not at start-up: under TCG its
    /// encoder's first run was 0.5 ms of the appliance's boot, and nothing needs it earlier).
    hello: Vec<u8>,
    decoder: FrameDecoder,
    /// Id of the next enqueued record.
    next_id: u64,
    /// Seq of the next frame to start for the first time.
    next_seq: u64,
    /// Highest seq ever fully written on any session.
    max_written: u64,
    last_session_idx: Option<usize>,
    events: VecDeque<LinkEvent>,
    stats: LinkStats,
    /// The current connection's secure channel, when [`LinkConfig::security`] is set.
    secure: Option<Initiator>,
    /// Handshakes started: the nonce of the next one's ephemeral.
    handshakes: u64,
}

impl UpstreamLink {
    /// Bytes [`Self::new`] allocates for `config`, at most.
    pub fn footprint(config: &LinkConfig) -> usize {
        Spool::footprint(config.spool_bytes, config.spool_records)
            + config.upstreams * core::mem::size_of::<Upstream>()
            + config.event_capacity.max(1) * core::mem::size_of::<LinkEvent>()
            + FrameDecoder::footprint(MAX_REPLY_LEN)
    }

    /// Builds the link; the spool, event queue and reply buffer are allocated here and never
    /// grow.
    pub fn new(config: LinkConfig) -> Self {
        let upstream = Upstream {
            next_attempt: Instant::ZERO,
            backoff: config.backoff_min,
            refusals: 0,
        };
        UpstreamLink {
            spool: Spool::new(config.spool_bytes, config.spool_records),
            upstreams: vec![upstream; config.upstreams],
            state: State::Idle,
            closing: None,
            hello: Vec::new(),
            decoder: FrameDecoder::new(MAX_REPLY_LEN),
            next_id: 1,
            next_seq: 1,
            max_written: 0,
            last_session_idx: None,
            events: VecDeque::with_capacity(config.event_capacity.max(1)),
            stats: LinkStats::default(),
            secure: None,
            handshakes: 0,
            config,
        }
    }

    /// Replaces the session key (or turns sessions plain with `None`): takes effect at the
    /// next connection, the current one is left alone. The spool is untouched, so a key
    /// rotation loses nothing.
    pub fn set_security(&mut self, security: Option<LinkSecurity>) {
        self.config.security = security;
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The spool, read-only (for inspection and metrics).
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Spools a record and returns its id (enqueue order; events name records by it). `payload_len` bytes of payload must be written
    /// through the [`SpoolWriter`] handed to `fill` (in as many pieces as convenient); the
    /// record is written straight into the spool, without an intermediate buffer. When the spool
    /// is full, older records are dropped by the overflow policy ([`Spool::make_room`]) and
    /// reported as [`LinkEvent::Dropped`]. `now` is accepted for symmetry with the other inputs;
    /// the frame's `sent_at_ms` is stamped when it is transmitted.
    pub fn enqueue<R: SpoolRecord + ?Sized>(
        &mut self,
        now: Instant,
        record: &R,
        payload_len: u32,
        fill: impl FnOnce(&mut SpoolWriter<'_>),
    ) -> Result<u64, EnqueueError> {
        let _ = now;
        let kind = record.kind().ok_or(EnqueueError::NotSpoolable)?;
        let refuse = |stats: &mut LinkStats, e: EnqueueError| {
            stats.refused.bump(kind);
            Err(e)
        };
        let body_header = (record, payload_len);
        let Ok(header_len) = record::serialized_size(&body_header) else {
            return refuse(&mut self.stats, EnqueueError::TooLarge { len: usize::MAX });
        };
        let len = header_len.saturating_add(payload_len as usize);
        if len.saturating_add(SPOOLED_PREFIX_MAX - record::LEN_PREFIX) > MAX_FRAME_LEN as usize {
            return refuse(&mut self.stats, EnqueueError::TooLarge { len });
        }
        let events = &mut self.events;
        let stats = &mut self.stats;
        let cap = self.config.event_capacity.max(1);
        let room = self.spool.make_room(kind, len, |e| {
            stats.dropped.bump(e.kind);
            let event = LinkEvent::Dropped {
                id: e.id,
                kind: e.kind,
            };
            push_event(events, cap, stats, event);
        });
        match room {
            Ok(()) => {}
            Err(RoomError::TooLarge) => {
                return refuse(&mut self.stats, EnqueueError::TooLarge { len })
            }
            Err(RoomError::Busy) => return refuse(&mut self.stats, EnqueueError::Busy),
        }
        let Some(mut writer) = self.spool.writer(kind, len) else {
            return refuse(&mut self.stats, EnqueueError::Busy);
        };
        if postcard::serialize_with_flavor(&body_header, &mut writer).is_err() {
            return refuse(&mut self.stats, EnqueueError::TooLarge { len });
        }
        fill(&mut writer);
        if writer.attempted() != len {
            let e = EnqueueError::PayloadLength {
                declared: payload_len,
                written: writer.attempted().saturating_sub(header_len),
            };
            return refuse(&mut self.stats, e);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.spool.commit(kind, id, len);
        self.stats.queued.bump(kind);
        Ok(id)
    }

    /// Which upstream to open a TCP connection to now, if any: the lowest index out of
    /// backoff, when no connection exists. Changes after `handle_closed` and with time.
    #[must_use]
    pub fn poll_connect(&mut self, now: Instant) -> Option<usize> {
        if !matches!(self.state, State::Idle) {
            return None;
        }
        let idx = self.upstreams.iter().position(|u| u.next_attempt <= now)?;
        self.state = State::Connecting {
            idx,
            deadline: now + self.config.connect_timeout,
        };
        self.stats.connects += 1;
        Some(idx)
    }

    /// The TCP connection to upstream `idx` proposed by `poll_connect` is up.
    pub fn handle_connected(&mut self, now: Instant, idx: usize) {
        if !matches!(self.state, State::Connecting { idx: i, .. } if i == idx) {
            return;
        }
        self.decoder.reset();
        self.secure = None;
        if let Some(sec) = &self.config.security {
            let rng = ChannelRng::new(&sec.seed, self.handshakes);
            self.handshakes += 1;
            let max_in = 16 * 1024;
            match Initiator::new(&sec.key, rng, SEAL_CHUNK, max_in) {
                Ok(chan) => self.secure = Some(chan),
                Err(_) => self.closing = Some(CloseReason::AuthFailed),
            }
        }
        if self.hello.is_empty() {
            self.hello = hello_frame(&self.config);
        }
        self.state = State::Open(Session {
            idx,
            hello_written: 0,
            welcomed: false,
            sent_through: 0,
            acked_through: 0,
            dump_bytes_unacked: 0,
            partial: None,
            handshake_deadline: now + self.config.ack_timeout,
            ack_deadline: None,
            failback_at: None,
            failback_due: false,
        });
    }

    /// The connection (or attempt) to upstream `idx` is gone, for `reason` unless the link
    /// itself asked for the close, in which case its own reason is reported.
    pub fn handle_closed(&mut self, now: Instant, idx: usize, reason: CloseReason) {
        let current = match &self.state {
            State::Idle => return,
            State::Connecting { idx, .. } => *idx,
            State::Open(s) => s.idx,
        };
        if current != idx {
            return;
        }
        let welcomed = matches!(&self.state, State::Open(s) if s.welcomed);
        let reason = self.closing.take().unwrap_or(reason);
        self.state = State::Idle;
        self.decoder.reset();
        self.secure = None;
        self.stats.disconnects.0[reason.index()] += 1;
        if let Some(u) = self.upstreams.get_mut(idx) {
            if welcomed && reason == CloseReason::Failback {
                // Not a failure: the lowest ready index (the preferred one) is tried next, and
                // this one stays ready to fall back to at once.
                u.next_attempt = now;
            } else if reason == CloseReason::Refused {
                u.refusals = u.refusals.saturating_add(1);
                let mut wait = self.config.backoff_min;
                for _ in 0..u.refusals.min(32) {
                    wait = wait.doubled_up_to(self.config.backoff_max);
                }
                u.next_attempt = now + wait.max(u.backoff);
                u.backoff = u.backoff.doubled_up_to(self.config.backoff_max);
            } else {
                u.next_attempt = now + u.backoff;
                u.backoff = u.backoff.doubled_up_to(self.config.backoff_max);
            }
        }
        self.push(LinkEvent::Disconnected { idx, reason });
    }

    /// Feeds bytes read from the current connection. On an error the link has asked for the
    /// connection to be closed ([`UpstreamLink::poll_close`]) and counted it; the spool is
    /// untouched. Bytes arriving when no session is open are ignored.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) -> Result<(), LinkError> {
        if !matches!(self.state, State::Open(_)) || self.closing.is_some() {
            return Ok(());
        }
        let Some(mut chan) = self.secure.take() else {
            return self.handle_plain_input(now, bytes);
        };
        let mut result = Ok(());
        while !bytes.is_empty() && result.is_ok() {
            match chan.read(bytes) {
                Ok((n, plain)) => {
                    bytes = &bytes[n..];
                    if let Some(plain) = plain {
                        result = self.handle_plain_input(now, plain);
                    }
                }
                Err(e) => {
                    self.stats.auth_failures += 1;
                    self.closing = Some(CloseReason::AuthFailed);
                    result = Err(LinkError::Secure(e));
                }
            }
        }
        self.secure = Some(chan);
        result
    }

    /// The record-layer stream (in clear, or opened by the secure channel).
    fn handle_plain_input(&mut self, now: Instant, mut bytes: &[u8]) -> Result<(), LinkError> {
        if self.closing.is_some() {
            return Ok(());
        }
        loop {
            let n = self.decoder.push(bytes);
            bytes = &bytes[n..];
            loop {
                let reply = match self.decoder.next_frame() {
                    Ok(None) => break,
                    Ok(Some(frame)) => decode_reply(frame).map_err(LinkError::Decode),
                    Err(e) => Err(LinkError::Frame(e)),
                };
                if let Err(e) = reply.and_then(|r| self.handle_reply(now, r)) {
                    match e {
                        LinkError::Frame(_) | LinkError::Decode(_) => {
                            self.stats.malformed_replies += 1;
                        }
                        LinkError::Refused { .. } => self.stats.refused_replies += 1,
                        _ => {}
                    }
                    self.closing = Some(e.reason());
                    return Err(e);
                }
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
    }

    fn handle_reply(&mut self, now: Instant, reply: Reply) -> Result<(), LinkError> {
        let State::Open(session) = &mut self.state else {
            return Ok(());
        };
        match reply {
            Reply::Welcome { protocol, last_seq } if !session.welcomed => {
                if protocol != PROTOCOL_VERSION {
                    return Err(LinkError::VersionMismatch { protocol });
                }
                if last_seq > self.max_written {
                    return Err(LinkError::InstanceConflict { last_seq });
                }
                session.welcomed = true;
                session.sent_through = last_seq;
                session.acked_through = last_seq;
                let idx = session.idx;
                if idx > 0 && self.config.upstreams > 1 {
                    session.failback_at = Some(now + self.config.failback_interval);
                }
                if let Some(u) = self.upstreams.get_mut(idx) {
                    u.backoff = self.config.backoff_min;
                }
                self.stats.sessions += 1;
                self.remove_delivered(last_seq);
                self.push(LinkEvent::Connected { idx });
                if let Some(from) = self.last_session_idx.filter(|&f| f != idx) {
                    self.stats.failovers += 1;
                    self.push(LinkEvent::FailedOver { from, to: idx });
                }
                self.last_session_idx = Some(idx);
                Ok(())
            }
            Reply::Ack { seq } if session.welcomed => {
                if seq > session.sent_through {
                    return Err(LinkError::Unexpected(Reply::Ack { seq }));
                }
                if seq > session.acked_through {
                    let idx = session.idx;
                    session.acked_through = seq;
                    if let Some(u) = self.upstreams.get_mut(idx) {
                        u.refusals = 0;
                    }
                    session.ack_deadline =
                        session.outstanding().then(|| now + self.config.ack_timeout);
                    self.remove_delivered(seq);
                }
                Ok(())
            }
            Reply::Refused { reason } => Err(LinkError::Refused { reason }),
            other => Err(LinkError::Unexpected(other)),
        }
    }

    fn remove_delivered(&mut self, through: u64) {
        let events = &mut self.events;
        let stats = &mut self.stats;
        let cap = self.config.event_capacity.max(1);
        let mut dump_bytes = 0usize;
        self.spool.remove_through(through, |e| {
            stats.delivered.bump(e.kind);
            if e.kind == RecordKind::Dump {
                dump_bytes += e.len;
            }
            let event = LinkEvent::Delivered {
                id: e.id,
                kind: e.kind,
            };
            push_event(events, cap, stats, event);
        });
        if let State::Open(s) = &mut self.state {
            // Welcome removes before anything is sent on the session; only Acks subtract.
            s.dump_bytes_unacked = s.dump_bytes_unacked.saturating_sub(dump_bytes);
        }
    }

    /// The upstream whose connection the caller should close now (the link gave up on it),
    /// repeated until [`UpstreamLink::handle_closed`]. Set by `handle_input` errors and
    /// `handle_timeout`.
    #[must_use]
    pub fn poll_close(&self) -> Option<usize> {
        self.closing?;
        match &self.state {
            State::Idle => None,
            State::Connecting { idx, .. } => Some(*idx),
            State::Open(s) => Some(s.idx),
        }
    }

    /// Fills `buf` with bytes to write to the current connection and returns how many; all of
    /// them are considered written. Pass at most the socket's free send space. Changes after
    /// `handle_connected`, `handle_input` (Welcome, Ack), `enqueue` and `handle_closed`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        if self.closing.is_some() {
            return 0;
        }
        let Some(mut chan) = self.secure.take() else {
            return self.poll_plain(now, buf);
        };
        let n = match chan.poll_transmit(buf, |plain| self.poll_plain(now, plain)) {
            Ok(n) => n,
            Err(_) => {
                self.closing = Some(CloseReason::AuthFailed);
                0
            }
        };
        self.secure = Some(chan);
        n
    }

    /// The record-layer stream: `Hello`, then spooled records.
    fn poll_plain(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        if self.closing.is_some() {
            return 0;
        }
        let State::Open(session) = &mut self.state else {
            return 0;
        };
        let mut n = 0;
        if session.hello_written < self.hello.len() {
            let k = (self.hello.len() - session.hello_written).min(buf.len());
            buf[..k].copy_from_slice(&self.hello[session.hello_written..session.hello_written + k]);
            session.hello_written += k;
            n += k;
        }
        if !session.welcomed {
            return n;
        }
        while n < buf.len() {
            let mut p = match session.partial {
                Some(p) => p,
                None => {
                    if session.failback_due {
                        self.closing = Some(CloseReason::Failback);
                        break;
                    }
                    let dumps_open = session.dump_bytes_unacked < self.config.dump_window;
                    let Some(&e) = self.spool.next_to_send(session.sent_through, dumps_open) else {
                        break;
                    };
                    let seq = match e.seq() {
                        Some(seq) => seq,
                        None => {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            self.spool.assign(e.kind, e.id, seq);
                            seq
                        }
                    };
                    let mut prefix = [0u8; SPOOLED_PREFIX_MAX];
                    let Ok(prefix_len) =
                        encode_spooled_prefix(seq, now.total_millis(), e.len, &mut prefix)
                    else {
                        // Cannot happen: enqueue checked the size. Skip rather than wedge.
                        session.sent_through = seq;
                        continue;
                    };
                    if seq <= self.max_written {
                        self.stats.resent.bump(e.kind);
                    }
                    if e.kind == RecordKind::Dump {
                        session.dump_bytes_unacked += e.len;
                    }
                    Partial {
                        kind: e.kind,
                        id: e.id,
                        seq,
                        prefix,
                        prefix_len,
                        frame_len: prefix_len + e.len,
                        offset: 0,
                    }
                }
            };
            if p.offset < p.prefix_len {
                let k = (p.prefix_len - p.offset).min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&p.prefix[p.offset..p.offset + k]);
                p.offset += k;
                n += k;
            }
            if p.offset >= p.prefix_len && n < buf.len() {
                if let Some(e) = self.spool.get(p.kind, p.id) {
                    let k = self.spool.read(e, p.offset - p.prefix_len, &mut buf[n..]);
                    p.offset += k;
                    n += k;
                }
            }
            if session.ack_deadline.is_none() {
                session.ack_deadline = Some(now + self.config.ack_timeout);
            }
            if p.offset >= p.frame_len {
                session.partial = None;
                session.sent_through = p.seq;
                self.max_written = self.max_written.max(p.seq);
            } else {
                session.partial = Some(p);
            }
        }
        if session.failback_due && session.partial.is_none() && self.closing.is_none() {
            self.closing = Some(CloseReason::Failback);
        }
        n
    }

    /// When [`UpstreamLink::handle_timeout`] should next be called, if anything is pending.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        match &self.state {
            State::Idle => self.upstreams.iter().map(|u| u.next_attempt).min(),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Open(s) => {
                let handshake = (!s.welcomed).then_some(s.handshake_deadline);
                let failback = if s.failback_due {
                    None
                } else {
                    s.failback_at.and_then(|at| {
                        let preferred = self.upstreams[..s.idx]
                            .iter()
                            .map(|u| u.next_attempt)
                            .min()?;
                        Some(at.max(preferred))
                    })
                };
                [handshake, s.ack_deadline, failback]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// Acts on expired timers: connect and handshake timeouts, a stalled peer, failback.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        match &mut self.state {
            State::Idle => {}
            State::Connecting { deadline, .. } => {
                if now >= *deadline {
                    self.closing = Some(CloseReason::ConnectTimeout);
                }
            }
            State::Open(s) => {
                if !s.welcomed && now >= s.handshake_deadline {
                    self.closing = Some(CloseReason::HandshakeTimeout);
                } else if s.ack_deadline.is_some_and(|d| now >= d) {
                    if s.outstanding() {
                        self.closing = Some(CloseReason::AckTimeout);
                    } else {
                        s.ack_deadline = None;
                    }
                } else if s.failback_at.is_some_and(|at| now >= at) {
                    // Only when a preferred upstream is out of backoff; otherwise poll_timeout
                    // already points at the moment one will be.
                    if self.upstreams[..s.idx]
                        .iter()
                        .any(|u| u.next_attempt <= now)
                    {
                        s.failback_due = true;
                        if s.partial.is_none() {
                            self.closing = Some(CloseReason::Failback);
                        }
                    }
                }
            }
        }
    }

    /// The next event, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> LinkStats {
        let mut s = self.stats;
        s.spool_bytes_used = self.spool.used();
        s.spool_bytes_high_water = self.spool.high_water();
        s.spool_records = self.spool.len();
        s
    }

    /// Id the next enqueued record will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The upstream of the current connection or attempt.
    pub fn current_upstream(&self) -> Option<usize> {
        match &self.state {
            State::Idle => None,
            State::Connecting { idx, .. } => Some(*idx),
            State::Open(s) => Some(s.idx),
        }
    }

    /// A session is open and accepted.
    pub fn is_established(&self) -> bool {
        matches!(&self.state, State::Open(s) if s.welcomed) && self.closing.is_none()
    }

    fn push(&mut self, event: LinkEvent) {
        let cap = self.config.event_capacity.max(1);
        push_event(&mut self.events, cap, &mut self.stats, event);
    }
}

fn push_event(
    events: &mut VecDeque<LinkEvent>,
    cap: usize,
    stats: &mut LinkStats,
    event: LinkEvent,
) {
    if events.len() >= cap {
        events.pop_front();
        stats.events_dropped += 1;
    }
    events.push_back(event);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upstream::record::{
        decode_record, encode_reply_frame, CrashSeen, DumpIdentity, DumpMeta, Source, SourceIp,
    };
    use alloc::string::ToString;
    use proptest::prelude::*;

    /// A collector made of the real protocol code: durable `applied` survives reconnects.
    /// Also the relay's tests' collector.
    pub(crate) struct Collector {
        decoder: FrameDecoder,
        applied: u64,
        /// Each record stored: its seq, kind, payload and the record itself.
        pub(crate) stored: Vec<(u64, RecordKind, Vec<u8>, Record)>,
        replies: Vec<u8>,
        /// Answer with Acks (false: a stalled or lossy peer).
        acking: bool,
        hello_seen: bool,
    }

    impl Collector {
        pub(crate) fn new() -> Self {
            Collector {
                decoder: FrameDecoder::new(MAX_FRAME_LEN),
                applied: 0,
                stored: Vec::new(),
                replies: Vec::new(),
                acking: true,
                hello_seen: false,
            }
        }

        /// A new connection: the byte stream starts over.
        fn reconnect(&mut self) {
            self.decoder.reset();
            self.replies.clear();
            self.hello_seen = false;
        }

        fn receive(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                let n = self.decoder.push(bytes);
                bytes = &bytes[n..];
                while let Some(frame) = self.decoder.next_frame().unwrap() {
                    let (h, payload) = decode_record(frame).unwrap();
                    let reply = match h.record {
                        Record::Hello { protocol, .. } => {
                            assert_eq!(protocol, PROTOCOL_VERSION);
                            assert!(!self.hello_seen);
                            self.hello_seen = true;
                            Reply::Welcome {
                                protocol: PROTOCOL_VERSION,
                                last_seq: self.applied,
                            }
                        }
                        r => {
                            assert!(self.hello_seen);
                            if h.seq > self.applied {
                                let kind = r.kind().unwrap();
                                self.stored.push((h.seq, kind, payload.to_vec(), r));
                                self.applied = h.seq;
                            }
                            Reply::Ack { seq: h.seq }
                        }
                    };
                    if self.acking || matches!(reply, Reply::Welcome { .. }) {
                        self.replies
                            .extend_from_slice(&encode_reply_frame(&reply).unwrap());
                    }
                }
            }
        }
    }

    fn crash(n: u16) -> Record {
        Record::CrashSeen(CrashSeen {
            id: identity(n),
            generation: 0,
            kernel_version: "6.1.0".to_string(),
            packet_count: 4,
            packet_no: 0,
            cpu: None,
            registers: None,
            seen_at_ms: 5,
            netconsole: None,
        })
    }

    fn dump(n: u16) -> Record {
        Record::Dump(DumpMeta {
            kernel_version: "6.1.0".to_string(),
            packet_count: 4,
            received: 4,
            complete: true,
            first_seen_ms: 5,
            completed_ms: 9,
            ..DumpMeta::new(identity(n))
        })
    }

    fn identity(n: u16) -> DumpIdentity {
        DumpIdentity {
            source: Source {
                ip: SourceIp::V4([10, 0, 0, 1]),
                port: 2004,
            },
            version: 3,
            boot_id: 0,
            dump_id: n,
            dump_type: 1,
        }
    }

    fn config(upstreams: usize) -> LinkConfig {
        LinkConfig {
            spool_bytes: 64 * 1024,
            spool_records: 256,
            connect_timeout: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            failback_interval: Duration::from_secs(10),
            ..LinkConfig::new(upstreams, "relay-a", 77)
        }
    }

    fn put(link: &mut UpstreamLink, now: Instant, record: &Record, text: &[u8]) -> u64 {
        link.enqueue(now, record, text.len() as u32, |w| {
            // Two pieces, as the relay streams text out of two reassembly segments.
            let (a, b) = text.split_at(text.len() / 2);
            w.write(a);
            w.write(b);
        })
        .unwrap()
    }

    /// Moves bytes both ways in `chunk`-sized writes until nothing moves.
    pub(crate) fn pump(link: &mut UpstreamLink, c: &mut Collector, now: Instant, chunk: usize) {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = link.poll_transmit(now, &mut buf);
            c.receive(&buf[..n]);
            let replies = core::mem::take(&mut c.replies);
            if !replies.is_empty() {
                link.handle_input(now, &replies).unwrap();
            }
            if n == 0 && replies.is_empty() {
                break;
            }
        }
    }

    /// A link on `config(1)` and a collector for it.
    fn link_and_collector() -> (UpstreamLink, Collector) {
        (UpstreamLink::new(config(1)), Collector::new())
    }

    /// A link with `config` and `records` (with their texts) enqueued at `t`, connected to a
    /// new test collector.
    fn connected(
        config: LinkConfig,
        t: Instant,
        records: impl IntoIterator<Item = (Record, &'static [u8])>,
    ) -> (UpstreamLink, Collector) {
        let mut link = UpstreamLink::new(config);
        let mut c = Collector::new();
        for (record, text) in records {
            put(&mut link, t, &record, text);
        }
        connect(&mut link, &mut c, t);
        (link, c)
    }

    /// After [`connect`]: `Hello` out, `Welcome` back, nothing more.
    fn handshake(link: &mut UpstreamLink, c: &mut Collector, now: Instant) {
        let mut buf = [0u8; 4096];
        let n = link.poll_transmit(now, &mut buf);
        c.receive(&buf[..n]);
        link.handle_input(now, &core::mem::take(&mut c.replies))
            .unwrap();
    }

    pub(crate) fn connect(link: &mut UpstreamLink, c: &mut Collector, now: Instant) -> usize {
        let idx = link.poll_connect(now).expect("an upstream to connect to");
        link.handle_connected(now, idx);
        c.reconnect();
        idx
    }

    fn events(link: &mut UpstreamLink) -> Vec<LinkEvent> {
        core::iter::from_fn(|| link.poll_event()).collect()
    }

    fn stored_seqs(c: &Collector) -> Vec<u64> {
        c.stored.iter().map(|s| s.0).collect()
    }

    /// Drives a secure link against the test collector behind a [`Responder`] until nothing
    /// moves. Returns the responder's error, if any.
    fn pump_secure(
        link: &mut UpstreamLink,
        c: &mut Collector,
        resp: &mut crate::upstream::secure::Responder,
        psk: &crate::upstream::secure::Psk,
        now: Instant,
    ) -> Result<(), SecureError> {
        let mut buf = vec![0u8; 333];
        let mut keys = |id: &str| {
            if id == "relay-a" {
                vec![psk.clone()]
            } else {
                Vec::new()
            }
        };
        loop {
            let n = link.poll_transmit(now, &mut buf);
            let mut back = Vec::new();
            resp.read_all(&buf[..n], n, &mut keys, &[8; 32], &mut back, |p| {
                c.receive(p)
            })?;
            let replies = core::mem::take(&mut c.replies);
            if !replies.is_empty() {
                resp.seal(&replies, &mut back).unwrap();
            }
            if !back.is_empty() {
                link.handle_input(now, &back).unwrap();
            }
            if n == 0 && back.is_empty() {
                return Ok(());
            }
        }
    }

    fn secure_config(psk: u8) -> LinkConfig {
        use crate::upstream::secure::Psk;
        LinkConfig {
            security: Some(LinkSecurity {
                key: SessionKey {
                    id: "relay-a".into(),
                    psk: Psk([psk; 32]),
                },
                seed: [3; 32],
            }),
            ..config(1)
        }
    }

    #[test]
    fn secure_sessions_handshake_before_hello_and_deliver() {
        use crate::upstream::secure::{key_id_prefix, Psk, Responder, HANDSHAKE_LEN};
        let t = Instant::from_millis(1000);
        let (mut link, mut c) = connected(
            secure_config(7),
            t,
            [
                (crash(1), &b"Oops: 0002"[..]),
                (dump(1), b"full text of the oops"),
            ],
        );
        // Before the handshake: the clear key id and message 1, and no Hello.
        let mut buf = [0u8; 4096];
        let n = link.poll_transmit(t, &mut buf);
        let prefix = key_id_prefix("relay-a");
        assert_eq!(n, prefix.len() + 2 + HANDSHAKE_LEN);
        assert_eq!(&buf[..prefix.len()], &prefix[..]);
        assert_eq!(link.poll_transmit(t, &mut buf), 0);
        let mut resp = Responder::new(crate::upstream::secure::MAX_MESSAGE);
        let mut lookup = |_: &str| vec![Psk([7; 32])];
        let (_, out) = resp.read(&buf[..n], &mut lookup, &[8; 32]).unwrap();
        let crate::upstream::secure::Received::Established { reply, .. } = out else {
            panic!("handshake failed");
        };
        link.handle_input(t, &reply).unwrap();
        pump_secure(&mut link, &mut c, &mut resp, &Psk([7; 32]), t).unwrap();
        assert_eq!(stored_seqs(&c), vec![1, 2]);
        assert_eq!(c.stored[1].2, b"full text of the oops");
        assert_eq!(link.stats().delivered.total(), 2);
        // A session after a reconnect handshakes again and resumes.
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        put(&mut link, t, &crash(2), b"later");
        let t2 = t + Duration::from_secs(1);
        connect(&mut link, &mut c, t2);
        let mut resp = Responder::new(crate::upstream::secure::MAX_MESSAGE);
        pump_secure(&mut link, &mut c, &mut resp, &Psk([7; 32]), t2).unwrap();
        assert_eq!(stored_seqs(&c), vec![1, 2, 3]);
    }

    #[test]
    fn a_collector_without_the_key_gets_nothing_and_a_forged_reply_closes() {
        use crate::upstream::secure::{Psk, Responder};
        let t = Instant::from_millis(1000);
        let (mut link, mut c) = connected(secure_config(7), t, [(dump(1), &b"secret text"[..])]);
        let mut resp = Responder::new(crate::upstream::secure::MAX_MESSAGE);
        assert_eq!(
            pump_secure(&mut link, &mut c, &mut resp, &Psk([8; 32]), t),
            Err(SecureError::Handshake)
        );
        assert!(c.stored.is_empty());
        // A reply that is not handshake message 2 for our ephemeral.
        let forged = [0u8, 48]
            .iter()
            .chain([0u8; 48].iter())
            .copied()
            .collect::<Vec<_>>();
        assert!(matches!(
            link.handle_input(t, &forged),
            Err(LinkError::Secure(SecureError::Handshake))
        ));
        assert_eq!(link.poll_close(), Some(0));
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        assert_eq!(link.stats().disconnects.get(CloseReason::AuthFailed), 1);
        assert_eq!(link.stats().auth_failures, 1);
        assert_eq!(link.stats().spool_records, 1);
    }

    /// A collector that welcomes and then refuses (its disk is full) is tried again later
    /// each time, although every `Welcome` resets the ordinary backoff; an `Ack` that moves
    /// records ends the streak.
    #[test]
    fn refusals_after_welcome_back_off_further_each_time() {
        let (mut link, mut c) = link_and_collector();
        let mut t = Instant::from_millis(1000);
        put(&mut link, t, &dump(1), b"no room");
        let mut waits = Vec::new();
        for _ in 0..5 {
            connect(&mut link, &mut c, t);
            let mut buf = [0u8; 4096];
            let n = link.poll_transmit(t, &mut buf);
            c.receive(&buf[..n]);
            let mut replies = core::mem::take(&mut c.replies);
            let refused = Reply::Refused {
                reason: "storage failed".to_string(),
            };
            replies.extend_from_slice(&encode_reply_frame(&refused).unwrap());
            assert!(matches!(
                link.handle_input(t, &replies),
                Err(LinkError::Refused { .. })
            ));
            link.handle_closed(t, 0, CloseReason::PeerClosed);
            let next = link.poll_timeout().unwrap();
            waits.push((next - t).total_millis());
            t = next;
        }
        // backoff_min 100 ms doubled per refusal, up to backoff_max 1 s.
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        assert_eq!(link.stats().disconnects.get(CloseReason::Refused), 5);
        // The disk has room again: delivered, and the next refusal starts from the bottom.
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        assert_eq!(link.stats().delivered.total(), 1);
    }

    #[test]
    fn records_flow_after_welcome_and_are_acknowledged() {
        let (mut link, mut c) = link_and_collector();
        let t = Instant::from_millis(1000);
        assert_eq!(put(&mut link, t, &crash(1), b"Oops: 0002"), 1);
        assert_eq!(put(&mut link, t, &dump(1), b"full text of the oops"), 2);
        connect(&mut link, &mut c, t);
        // Nothing but Hello before Welcome.
        let mut buf = [0u8; 4096];
        let n = link.poll_transmit(t, &mut buf);
        assert_eq!(n, link.hello.len());
        c.receive(&buf[..n]);
        pump(&mut link, &mut c, t, 7);
        assert_eq!(stored_seqs(&c), vec![1, 2]);
        assert_eq!(c.stored[1].2, b"full text of the oops");
        assert_eq!(
            events(&mut link),
            vec![
                LinkEvent::Connected { idx: 0 },
                LinkEvent::Delivered {
                    id: 1,
                    kind: RecordKind::CrashSeen
                },
                LinkEvent::Delivered {
                    id: 2,
                    kind: RecordKind::Dump
                },
            ]
        );
        let s = link.stats();
        assert_eq!((s.delivered.crash_seen, s.delivered.dump), (1, 1));
        assert_eq!(s.spool_records, 0);
        assert_eq!(s.spool_bytes_used, 0);
        assert!(s.spool_bytes_high_water > 0);
        // A record enqueued while established flows at once.
        put(&mut link, t, &crash(2), b"later");
        pump(&mut link, &mut c, t, 4096);
        assert_eq!(stored_seqs(&c), vec![1, 2, 3]);
        assert_eq!(link.poll_timeout(), None);
    }

    #[test]
    fn unacknowledged_records_are_resent_after_reconnect() {
        let mut t = Instant::from_millis(1000);
        let (mut link, mut c) = connected(config(1), t, (0..3).map(|i| (crash(i), &b"text"[..])));
        handshake(&mut link, &mut c, t);
        let mut buf = [0u8; 4096];
        // The records go out but the connection dies before the collector reads them.
        let n = link.poll_transmit(t, &mut buf);
        assert!(n > 0);
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        assert!(c.stored.is_empty());
        assert_eq!(link.poll_connect(t), None, "backoff");
        t += Duration::from_millis(100);
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 100);
        assert_eq!(stored_seqs(&c), vec![1, 2, 3]);
        assert_eq!(link.stats().resent.crash_seen, 3);
        assert_eq!(link.stats().delivered.crash_seen, 3);
    }

    #[test]
    fn welcome_last_seq_prevents_duplicates_when_acks_were_lost() {
        let mut t = Instant::from_millis(1000);
        let (mut link, mut c) = connected(config(1), t, (0..3).map(|i| (dump(i), &b"text"[..])));
        pump(&mut link, &mut c, t, 4096);
        c.acking = false;
        put(&mut link, t, &dump(9), b"text");
        pump(&mut link, &mut c, t, 4096);
        assert_eq!(stored_seqs(&c), vec![1, 2, 3, 4]);
        assert_eq!(link.stats().spool_records, 1, "seq 4 applied but not acked");
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        c.acking = true;
        t += Duration::from_millis(100);
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        assert_eq!(stored_seqs(&c), vec![1, 2, 3, 4]);
        assert_eq!(link.stats().resent.dump, 0);
        assert_eq!(link.stats().delivered.dump, 4);
        assert_eq!(link.stats().spool_records, 0);
    }

    /// Fills `kind`'s lane with records of `text` until the spool drops one; returns the ids
    /// enqueued and the drop events.
    fn fill_until_drop(
        link: &mut UpstreamLink,
        t: Instant,
        record: &Record,
        text: &[u8],
    ) -> (Vec<u64>, Vec<LinkEvent>) {
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(put(link, t, record, text));
            let ev = events(link);
            if !ev.is_empty() {
                return (ids, ev);
            }
        }
        panic!("the lane never filled");
    }

    #[test]
    fn overflow_drops_the_oldest_unsent_dump_and_dumps_never_evict_notices() {
        let mut cfg = config(1);
        cfg.spool_bytes = 2400;
        let mut link = UpstreamLink::new(cfg);
        let t = Instant::from_millis(1);
        let text = [b'x'; 100];
        let c1 = put(&mut link, t, &crash(1), &text);
        let c2 = put(&mut link, t, &crash(2), &text);
        let (dumps, ev) = fill_until_drop(&mut link, t, &dump(1), &text);
        assert_eq!(
            ev,
            vec![LinkEvent::Dropped {
                id: dumps[0],
                kind: RecordKind::Dump
            }]
        );
        let notices: Vec<u64> = link
            .spool()
            .entries(RecordKind::CrashSeen)
            .map(|e| e.id)
            .collect();
        assert_eq!(notices, vec![c1, c2], "dumps never take a notice's room");
        let (more, ev) = fill_until_drop(&mut link, t, &crash(3), &text);
        assert_eq!(
            ev,
            vec![LinkEvent::Dropped {
                id: c1,
                kind: RecordKind::CrashSeen
            }]
        );
        assert!(more.len() >= 2);
        let s = link.stats();
        assert_eq!((s.dropped.dump, s.dropped.crash_seen), (1, 1));
        assert!(matches!(
            link.enqueue(t, &dump(7), 2000, |_| {}),
            Err(EnqueueError::TooLarge { .. })
        ));
        assert_eq!(link.stats().refused.dump, 1);
        assert_eq!(
            link.enqueue(t, &dump(8), 10, |w| w.write(b"short")),
            Err(EnqueueError::PayloadLength {
                declared: 10,
                written: 5
            })
        );
        let hello = Record::Hello {
            protocol: 1,
            relay: "x".to_string(),
            instance: 1,
        };
        assert_eq!(
            link.enqueue(t, &hello, 0, |_| {}),
            Err(EnqueueError::NotSpoolable)
        );
    }

    #[test]
    fn a_sent_record_is_never_counted_dropped() {
        let mut cfg = config(1);
        cfg.spool_bytes = 1000;
        let mut link = UpstreamLink::new(cfg);
        let mut c = Collector::new();
        let t = Instant::from_millis(1);
        let d1 = put(&mut link, t, &dump(1), &[b'a'; 400]);
        connect(&mut link, &mut c, t);
        let mut buf = [0u8; 200];
        let n = link.poll_transmit(t, &mut buf);
        c.receive(&buf[..n]);
        link.handle_input(t, &core::mem::take(&mut c.replies))
            .unwrap();
        c.acking = false;
        let n = link.poll_transmit(t, &mut buf[..50]);
        assert_eq!(n, 50);
        c.receive(&buf[..n]);
        // The dump is half on the wire (the collector may store it): a new dump that needs its
        // room is refused instead of dropping it.
        assert_eq!(
            link.enqueue(t, &dump(2), 400, |w| w.write(&[b'c'; 400])),
            Err(EnqueueError::Busy)
        );
        assert_eq!(link.stats().dropped.total(), 0);
        // The frame is completed and acknowledged: it was delivered, as counted.
        c.acking = true;
        pump(&mut link, &mut c, t, 64);
        assert_eq!(stored_seqs(&c), vec![1]);
        assert!(events(&mut link).contains(&LinkEvent::Delivered {
            id: d1,
            kind: RecordKind::Dump
        }));
        let d2 = put(&mut link, t, &dump(2), &[b'c'; 400]);
        pump(&mut link, &mut c, t, 64);
        assert_eq!(stored_seqs(&c), vec![1, 2]);
        assert_eq!(d2, 2, "a refused record takes no id");
        let s = link.stats();
        assert_eq!(
            (s.delivered.total(), s.dropped.total(), s.refused.dump),
            (2, 0, 1)
        );
    }

    #[test]
    fn a_crash_notice_overtakes_queued_dumps_and_the_dump_window() {
        let mut cfg = config(1);
        cfg.spool_bytes = 1 << 20;
        cfg.dump_window = 3000;
        let mut link = UpstreamLink::new(cfg);
        let mut c = Collector::new();
        let t = Instant::from_millis(1);
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        c.acking = false;
        let dumps: Vec<u64> = (0..10)
            .map(|i| put(&mut link, t, &dump(i), &[b'd'; 1000]))
            .collect();
        // Three dumps fill the window; the rest wait in the spool, not in the socket.
        pump(&mut link, &mut c, t, 1 << 16);
        assert_eq!(stored_seqs(&c), vec![1, 2, 3]);
        let notice = put(&mut link, t, &crash(1), b"BUG: unable to handle page fault");
        pump(&mut link, &mut c, t, 1 << 16);
        // The notice went next, with the next seq, ahead of seven older dumps.
        assert_eq!(stored_seqs(&c), vec![1, 2, 3, 4]);
        assert_eq!(c.stored[3].1, RecordKind::CrashSeen);
        // Acks open the window again; the dumps follow in their order.
        c.acking = true;
        let (h, _) = (c.applied, ());
        link.handle_input(t, &encode_reply_frame(&Reply::Ack { seq: h }).unwrap())
            .unwrap();
        pump(&mut link, &mut c, t, 1 << 16);
        assert_eq!(stored_seqs(&c), (1..=11).collect::<Vec<_>>());
        let delivered: Vec<u64> = events(&mut link)
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::Delivered { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        let mut want = vec![dumps[0], dumps[1], dumps[2], notice];
        want.extend(&dumps[3..]);
        assert_eq!(delivered, want);
    }

    #[test]
    fn a_notice_waits_for_at_most_the_frame_being_written() {
        let mut cfg = config(1);
        cfg.spool_bytes = 1 << 20;
        let mut link = UpstreamLink::new(cfg);
        let mut c = Collector::new();
        let t = Instant::from_millis(1);
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        put(&mut link, t, &dump(1), &[b'd'; 50_000]);
        put(&mut link, t, &dump(2), &[b'd'; 50_000]);
        let mut buf = [0u8; 1000];
        let n = link.poll_transmit(t, &mut buf);
        c.receive(&buf[..n]);
        put(&mut link, t, &crash(1), b"Kernel panic");
        // The first dump's frame is finished, then the notice, then the second dump.
        pump(&mut link, &mut c, t, 1000);
        let kinds: Vec<RecordKind> = c.stored.iter().map(|s| s.1).collect();
        assert_eq!(
            kinds,
            vec![RecordKind::Dump, RecordKind::CrashSeen, RecordKind::Dump]
        );
    }

    /// Checks that the link's next timer is `secs` from `t`, fires it and expects it to
    /// close connection `idx` (closed as `reason`); returns when it fired.
    fn timer_closes(
        link: &mut UpstreamLink,
        t: Instant,
        secs: u64,
        idx: usize,
        reason: CloseReason,
    ) -> Instant {
        let t = t + Duration::from_secs(secs);
        assert_eq!(link.poll_timeout(), Some(t));
        link.handle_timeout(t);
        assert_eq!(link.poll_close(), Some(idx));
        link.handle_closed(t, idx, reason);
        t
    }

    #[test]
    fn failover_when_upstream_0_stalls_then_failback() {
        let mut link = UpstreamLink::new(config(2));
        let mut c0 = Collector::new();
        let mut c1 = Collector::new();
        let mut t = Instant::from_millis(1000);
        assert_eq!(connect(&mut link, &mut c0, t), 0);
        pump(&mut link, &mut c0, t, 4096);
        assert!(link.is_established());
        // Upstream 0 stops acknowledging.
        c0.acking = false;
        put(&mut link, t, &crash(1), b"stalled");
        pump(&mut link, &mut c0, t, 4096);
        t = timer_closes(&mut link, t, 2, 0, CloseReason::IoError);
        assert_eq!(connect(&mut link, &mut c1, t), 1);
        pump(&mut link, &mut c1, t, 4096);
        assert_eq!(stored_seqs(&c1), vec![1]);
        let ev = events(&mut link);
        assert!(ev.contains(&LinkEvent::Disconnected {
            idx: 0,
            reason: CloseReason::AckTimeout
        }));
        assert!(ev.contains(&LinkEvent::FailedOver { from: 0, to: 1 }));
        assert_eq!(link.stats().disconnects.get(CloseReason::AckTimeout), 1);
        // Failback after the interval, at a frame boundary.
        put(&mut link, t, &crash(2), b"on one");
        pump(&mut link, &mut c1, t, 4096);
        t = timer_closes(&mut link, t, 10, 1, CloseReason::PeerClosed);
        c0.acking = true;
        assert_eq!(connect(&mut link, &mut c0, t), 0);
        put(&mut link, t, &crash(3), b"back on zero");
        pump(&mut link, &mut c0, t, 4096);
        assert_eq!(stored_seqs(&c0), vec![1, 3]);
        let ev = events(&mut link);
        assert!(ev.contains(&LinkEvent::Disconnected {
            idx: 1,
            reason: CloseReason::Failback
        }));
        assert!(ev.contains(&LinkEvent::FailedOver { from: 1, to: 0 }));
        assert_eq!(link.stats().failovers, 2);
        // No failback timer on the preferred upstream.
        assert_eq!(link.poll_timeout(), None);
    }

    #[test]
    fn failback_waits_when_preferred_still_fails() {
        let mut link = UpstreamLink::new(config(2));
        let mut c1 = Collector::new();
        let mut t = Instant::from_millis(1000);
        assert_eq!(link.poll_connect(t), Some(0));
        link.handle_closed(t, 0, CloseReason::ConnectFailed);
        assert_eq!(connect(&mut link, &mut c1, t), 1);
        pump(&mut link, &mut c1, t, 4096);
        t += Duration::from_secs(10);
        link.handle_timeout(t);
        assert_eq!(link.poll_close(), Some(1));
        link.handle_closed(t, 1, CloseReason::PeerClosed);
        assert_eq!(link.poll_connect(t), Some(0));
        link.handle_closed(t, 0, CloseReason::ConnectFailed);
        // Back to 1 right away; 0 is in (doubled) backoff.
        assert_eq!(connect(&mut link, &mut c1, t), 1);
        pump(&mut link, &mut c1, t, 4096);
        assert!(link.is_established());
    }

    #[test]
    fn garbage_replies_close_only_that_connection() {
        let (mut link, mut c) = link_and_collector();
        let mut t = Instant::from_millis(1000);
        put(&mut link, t, &crash(1), b"keep me");
        connect(&mut link, &mut c, t);
        let mut buf = [0u8; 64];
        let _ = link.poll_transmit(t, &mut buf);
        let err = link.handle_input(t, &[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(err, Err(LinkError::Decode(_))));
        assert_eq!(link.poll_close(), Some(0));
        assert_eq!(link.poll_transmit(t, &mut buf), 0);
        // More bytes on the doomed connection are ignored.
        assert_eq!(link.handle_input(t, &[1, 2, 3]), Ok(()));
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        assert_eq!(link.stats().malformed_replies, 1);
        assert_eq!(link.stats().disconnects.get(CloseReason::MalformedReply), 1);
        assert_eq!(link.stats().spool_records, 1);
        // An oversized length prefix is malformed too.
        t += Duration::from_millis(100);
        connect(&mut link, &mut c, t);
        assert!(matches!(
            link.handle_input(t, &u32::MAX.to_le_bytes()),
            Err(LinkError::Frame(_))
        ));
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        t += Duration::from_millis(200);
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        assert_eq!(stored_seqs(&c), vec![1]);
        assert_eq!(link.stats().malformed_replies, 2);
    }

    #[test]
    fn protocol_violations_are_typed_and_counted() {
        let t = Instant::from_millis(1000);
        let cases: [(Reply, CloseReason); 4] = [
            (
                Reply::Welcome {
                    protocol: 9,
                    last_seq: 0,
                },
                CloseReason::VersionMismatch,
            ),
            (
                Reply::Refused {
                    reason: "go away".to_string(),
                },
                CloseReason::Refused,
            ),
            (Reply::Ack { seq: 1 }, CloseReason::UnexpectedReply),
            (
                Reply::Welcome {
                    protocol: PROTOCOL_VERSION,
                    last_seq: 5,
                },
                CloseReason::InstanceConflict,
            ),
        ];
        for (reply, reason) in cases {
            let mut link = UpstreamLink::new(config(1));
            let idx = link.poll_connect(t).unwrap();
            link.handle_connected(t, idx);
            let frame = encode_reply_frame(&reply).unwrap();
            assert!(link.handle_input(t, &frame).is_err());
            link.handle_closed(t, idx, CloseReason::PeerClosed);
            assert_eq!(link.stats().disconnects.get(reason), 1, "{reply:?}");
        }
    }

    #[test]
    fn timeouts_connect_and_handshake() {
        let mut link = UpstreamLink::new(config(1));
        let mut t = Instant::from_millis(1000);
        assert_eq!(link.poll_connect(t), Some(0));
        assert_eq!(link.poll_timeout(), Some(t + Duration::from_secs(1)));
        t += Duration::from_secs(1);
        link.handle_timeout(t);
        assert_eq!(link.poll_close(), Some(0));
        link.handle_closed(t, 0, CloseReason::IoError);
        assert_eq!(link.stats().disconnects.get(CloseReason::ConnectTimeout), 1);
        t += Duration::from_millis(100);
        assert_eq!(link.poll_connect(t), Some(0));
        link.handle_connected(t, 0);
        t += Duration::from_secs(2);
        link.handle_timeout(t);
        assert_eq!(link.poll_close(), Some(0));
        link.handle_closed(t, 0, CloseReason::IoError);
        assert_eq!(
            link.stats().disconnects.get(CloseReason::HandshakeTimeout),
            1
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut link = UpstreamLink::new(config(1));
        let mut t = Instant::from_millis(1000);
        let mut gaps = Vec::new();
        for _ in 0..8 {
            assert_eq!(link.poll_connect(t), Some(0));
            link.handle_closed(t, 0, CloseReason::ConnectFailed);
            let next = link.poll_timeout().unwrap();
            assert_eq!(
                link.poll_connect(Instant::from_micros(next.total_micros() - 1)),
                None
            );
            gaps.push((next - t).total_millis());
            t = next;
        }
        assert_eq!(gaps, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        // A session resets it.
        let mut c = Collector::new();
        connect(&mut link, &mut c, t);
        pump(&mut link, &mut c, t, 4096);
        link.handle_closed(t, 0, CloseReason::PeerClosed);
        assert_eq!(link.poll_timeout(), Some(t + Duration::from_millis(100)));
    }

    #[test]
    fn sent_at_is_stamped_at_transmit_time() {
        let (mut link, mut c) = link_and_collector();
        put(&mut link, Instant::from_millis(5), &crash(1), b"x");
        let t = Instant::from_millis(777_000);
        connect(&mut link, &mut c, t);
        let mut raw = Vec::new();
        handshake(&mut link, &mut c, t);
        let mut buf = [0u8; 4096];
        let n = link.poll_transmit(t, &mut buf);
        raw.extend_from_slice(&buf[..n]);
        let (h, _) = decode_record(&raw[4..]).unwrap();
        assert_eq!(h.sent_at_ms, 777_000);
        assert_eq!(h.seq, 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Enqueue { dump: bool, len: usize },
        Transmit { chunk: usize, deliver: bool },
        Replies,
        Disconnect,
        Tick { ms: u64 },
        SetAcking(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<bool>(), 0usize..300).prop_map(|(dump, len)| Op::Enqueue { dump, len }),
            4 => (1usize..200, prop::bool::weighted(0.9))
                .prop_map(|(chunk, deliver)| Op::Transmit { chunk, deliver }),
            3 => Just(Op::Replies),
            1 => Just(Op::Disconnect),
            1 => (0u64..3000).prop_map(|ms| Op::Tick { ms }),
            1 => any::<bool>().prop_map(Op::SetAcking),
        ]
    }

    proptest! {
        /// Random outages, partial writes, lost bytes and ack stalls: once the network heals,
        /// every record enqueued and not counted as dropped is stored exactly once, in order.
        #[test]
        fn every_record_delivered_once_in_order(ops in prop::collection::vec(op(), 1..120)) {
            let mut cfg = config(2);
            cfg.spool_bytes = 2000;
            cfg.spool_records = 12;
            let mut link = UpstreamLink::new(cfg);
            // Two upstreams share one store, like two collectors on one disk.
            let mut c = Collector::new();
            let mut t = Instant::from_millis(1000);
            let mut enqueued = Vec::new();
            let mut dropped = Vec::new();
            let mut delivered = Vec::new();
            let mut in_transit: Vec<u8> = Vec::new();
            let drain = |link: &mut UpstreamLink, dropped: &mut Vec<u64>, delivered: &mut Vec<u64>| {
                while let Some(ev) = link.poll_event() {
                    match ev {
                        LinkEvent::Dropped { id, .. } => dropped.push(id),
                        LinkEvent::Delivered { id, .. } => delivered.push(id),
                        _ => {}
                    }
                }
            };
            let step = |link: &mut UpstreamLink, c: &mut Collector, t: Instant| {
                if let Some(i) = link.poll_close() {
                    link.handle_closed(t, i, CloseReason::PeerClosed);
                }
                if let Some(i) = link.poll_connect(t) {
                    link.handle_connected(t, i);
                    c.reconnect();
                }
            };
            for op in ops {
                step(&mut link, &mut c, t);
                match op {
                    Op::Enqueue { dump: d, len } => {
                        // The payload starts with the id the record will get, so what the
                        // collector stored can be told apart from what the link reported.
                        let mut text = link.next_id().to_le_bytes().to_vec();
                        text.extend((0..len).map(|i| (i % 251) as u8));
                        let rec = if d { dump(1) } else { crash(1) };
                        if let Ok(id) = link.enqueue(t, &rec, text.len() as u32, |w| w.write(&text)) {
                            enqueued.push(id);
                        }
                    }
                    Op::Transmit { chunk, deliver } => {
                        let mut buf = vec![0u8; chunk];
                        let n = link.poll_transmit(t, &mut buf);
                        if deliver {
                            c.receive(&buf[..n]);
                        } else if n > 0 {
                            // Bytes lost with the connection.
                            if let Some(i) = link.current_upstream() {
                                link.handle_closed(t, i, CloseReason::IoError);
                            }
                        }
                    }
                    Op::Replies => {
                        in_transit.extend(core::mem::take(&mut c.replies));
                        let _ = link.handle_input(t, &in_transit);
                        in_transit.clear();
                    }
                    Op::Disconnect => {
                        c.replies.clear();
                        if let Some(i) = link.current_upstream() {
                            link.handle_closed(t, i, CloseReason::PeerClosed);
                        }
                    }
                    Op::Tick { ms } => {
                        t += Duration::from_millis(ms);
                        link.handle_timeout(t);
                    }
                    Op::SetAcking(a) => c.acking = a,
                }
                drain(&mut link, &mut dropped, &mut delivered);
            }
            // Heal: acks flow, time passes, everything drains.
            c.acking = true;
            for _ in 0..200 {
                step(&mut link, &mut c, t);
                pump_lenient(&mut link, &mut c, t);
                drain(&mut link, &mut dropped, &mut delivered);
                if link.stats().spool_records == 0 {
                    break;
                }
                t += Duration::from_millis(500);
                link.handle_timeout(t);
            }
            prop_assert_eq!(link.stats().spool_records, 0);
            let seqs = stored_seqs(&c);
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&sorted, &seqs, "in seq order, no duplicates");
            let stored: Vec<u64> = c
                .stored
                .iter()
                .map(|s| u64::from_le_bytes(s.2[..8].try_into().unwrap()))
                .collect();
            for id in &enqueued {
                // Truthful accounting: each record is stored or dropped, never both.
                prop_assert!(stored.contains(id) != dropped.contains(id), "id {}", id);
            }
            let mut unique = stored.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), stored.len(), "a record stored twice");
            for id in &delivered {
                prop_assert!(stored.contains(id));
            }
            let s = link.stats();
            prop_assert_eq!(s.queued.total(), enqueued.len() as u64);
            prop_assert_eq!(s.delivered.total() + s.dropped.total(), enqueued.len() as u64);
        }
    }

    fn pump_lenient(link: &mut UpstreamLink, c: &mut Collector, now: Instant) {
        let mut buf = vec![0u8; 333];
        for _ in 0..10_000 {
            let n = link.poll_transmit(now, &mut buf);
            c.receive(&buf[..n]);
            let replies = core::mem::take(&mut c.replies);
            if !replies.is_empty() {
                let _ = link.handle_input(now, &replies);
            }
            if n == 0 && replies.is_empty() {
                break;
            }
        }
    }
}
