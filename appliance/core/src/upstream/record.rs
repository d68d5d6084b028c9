//! The record format spoken between a relay and a collector, over one TCP byte stream.
//!
//! Both directions are a sequence of frames: a `u32` little-endian length `len` (the number of
//! bytes that follow, at most [`MAX_FRAME_LEN`]; anything larger is a protocol error), then
//! `len` bytes.
//!
//! - Relay to collector: `postcard(RecordHeader)` followed by `payload_len` raw payload bytes
//!   (the text of a chunk or of a whole dump). The payload is kept out of postcard so the relay
//!   can stream text straight out of reassembly buffers: [`encode_frame_header`] writes the
//!   length prefix and header into a caller buffer and the caller appends exactly
//!   `payload_len` bytes after it.
//! - Collector to relay: `postcard(Reply)`.
//!
//! The session: the relay sends [`Record::Hello`] (seq 0), the collector answers
//! [`Reply::Welcome`] with the highest seq it has already applied for that relay instance, the
//! relay then sends every record above it in seq order and the collector answers with
//! cumulative [`Reply::Ack`]s once each record is durable.
//!
//! Time: every timestamp in a record (`seen_at_ms`, `first_seen_ms`, `completed_ms`,
//! `sent_at_ms`) is on the relay's monotonic clock in milliseconds, which has no relation to
//! wall time (the appliance has no RTC it trusts and no NTP). `sent_at_ms` is stamped when the
//! frame is written to the stream (the [`super::UpstreamLink`] stamps it at transmit time, so a
//! record that waited in the spool during an outage still carries a fresh `sent_at_ms`). The
//! collector converts with [`relay_to_wall_ms`]: `wall(t) = arrival_wall - (sent_at_ms - t)`,
//! which is exact up to the one-way network delay.
//!
//! Decoding never panics: [`FrameDecoder`] yields frames or a typed [`FrameError`], and
//! [`decode_record`] / [`decode_reply`] yield values or a typed [`DecodeError`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use serde::{Deserialize, Serialize};

/// The protocol version carried in `Hello` and `Welcome`; a peer speaking another is refused.
///
/// Version rule: any change to the encoding of a record or reply (a field added, removed or
/// reordered, a variant added) bumps it. 2 added [`ConsoleMeta`] to crash notices and dumps;
/// 3 added the evidence counts to dumps ([`DumpMeta::conflicts`],
/// [`DumpMeta::foreign_port_chunks`], [`DumpMeta::late_chunks`]).
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest frame body (bytes after the length prefix) either side accepts: 8 MiB.
pub const MAX_FRAME_LEN: u32 = 8 * 1024 * 1024;

/// Size of the little-endian `u32` length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// Largest reply frame a relay accepts (a `Refused` reason is the only variable part).
pub const MAX_REPLY_LEN: u32 = 4096;

/// The source address of a crashing machine's netoops datagrams.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceIp {
    /// IPv4 address octets.
    V4([u8; 4]),
    /// IPv6 address octets.
    V6([u8; 16]),
}

/// Source address and UDP port of a crashing machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// Sender IP address.
    pub ip: SourceIp,
    /// Sender UDP port.
    pub port: u16,
}

impl From<SocketAddr> for Source {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => SourceIp::V4(v4.octets()),
            IpAddr::V6(v6) => SourceIp::V6(v6.octets()),
        };
        Source {
            ip,
            port: addr.port(),
        }
    }
}

impl From<Source> for SocketAddr {
    fn from(source: Source) -> Self {
        let ip = match source.ip {
            SourceIp::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
            SourceIp::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
        };
        SocketAddr::new(ip, source.port)
    }
}

impl From<SourceIp> for IpAddr {
    fn from(ip: SourceIp) -> Self {
        match ip {
            SourceIp::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
            SourceIp::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
        }
    }
}

impl fmt::Display for SourceIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&IpAddr::from(*self), f)
    }
}

/// `1.2.3.4:2004` or `[::1]:2004`, as `SocketAddr` prints it.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&SocketAddr::from(*self), f)
    }
}

/// x86 CPU identification sent by netoops v3.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Vendor code as the sender encodes it.
    pub vendor: u8,
    /// CPU family.
    pub family: u8,
    /// CPU model.
    pub model: u8,
    /// CPU stepping.
    pub stepping: u8,
}

/// Registers at the crash, by name, in the sender's `pt_regs` order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterSet {
    /// `"x86_64"`, `"i386"`, ...
    pub layout: String,
    /// `("ip", 0xffff...)`, ...
    pub names_values: Vec<(String, u64)>,
}

/// What identifies one dump: the same machine, boot and dump id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DumpIdentity {
    /// Where the datagrams came from.
    pub source: Source,
    /// netoops header version (2 or 3).
    pub version: u16,
    /// Userspace-set boot id (v3), 0 otherwise.
    pub boot_id: u32,
    /// Seconds since boot modulo 65536 at the time of the dump.
    pub dump_id: u16,
    /// netoops dump type (1 printk buffer, 3 soft dump, ...).
    pub dump_type: u16,
}

/// The first sign of a crash: sent as soon as any chunk of a new dump arrives.
/// Payload: that chunk's text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CrashSeen {
    /// Which dump.
    pub id: DumpIdentity,
    /// Greater than 0 when an oops and a panic share an identity.
    pub generation: u32,
    /// Kernel version string from the header.
    pub kernel_version: String,
    /// Packets in the whole dump.
    pub packet_count: u32,
    /// Which packet this chunk is (0 = newest text).
    pub packet_no: u32,
    /// CPU identification, when the header carries it.
    pub cpu: Option<Cpu>,
    /// Registers, when the header carries non-zero ones.
    pub registers: Option<RegisterSet>,
    /// Relay clock, ms.
    pub seen_at_ms: u64,
    /// Netconsole details; `None` for a netoops crash.
    pub netconsole: Option<ConsoleMeta>,
}

/// What a dump or crash notice is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpKind {
    /// netoops datagrams (vendor kernels).
    Netoops,
    /// netconsole records (every mainline kernel).
    Netconsole,
}

impl DumpKind {
    /// Netconsole when a record carries netconsole details, netoops otherwise.
    fn of(netconsole: Option<&ConsoleMeta>) -> Self {
        match netconsole {
            Some(_) => DumpKind::Netconsole,
            None => DumpKind::Netoops,
        }
    }

    /// `"netoops"` or `"netconsole"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DumpKind::Netoops => "netoops",
            DumpKind::Netconsole => "netconsole",
        }
    }
}

/// The netconsole side of a crash notice or dump. For netconsole, the [`DumpIdentity`] carries
/// version 0, `boot_id` = the source's boot as counted by the relay and `dump_id` = the crash
/// number within that boot; `packet_count` / `received` count records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConsoleMeta {
    /// Extended format (records with sequence numbers) rather than legacy text.
    pub extended: bool,
    /// The source's boot as counted by the relay (0 = the first it heard).
    pub boot: u32,
    /// Crash number within that boot.
    pub crash: u32,
    /// The line that started the crash.
    pub crash_line: String,
    /// The sender's kernel release (`r` prefix or `release=`), empty when unknown.
    pub release: String,
    /// Sequence ranges that never arrived, inclusive, ascending.
    pub missing_seq: Vec<(u64, u64)>,
    /// Records that arrived with some of their fragments lost.
    pub incomplete_seq: Vec<u64>,
    /// Lowest and highest sequence number in the dump (extended only).
    pub seq_range: Option<(u64, u64)>,
    /// Records in the dump.
    pub records: u32,
    /// Userdata and sysdata `key=value` pairs of the crash record.
    pub fields: Vec<(String, String)>,
    /// Older history was dropped for memory, or the crash window reached its cap.
    pub truncated: bool,
}

/// A reassembled (complete or given-up-on) dump. Payload: the full text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DumpMeta {
    /// Which dump.
    pub id: DumpIdentity,
    /// Greater than 0 when an oops and a panic share an identity.
    pub generation: u32,
    /// Kernel version string from the header.
    pub kernel_version: String,
    /// Packets in the whole dump.
    pub packet_count: u32,
    /// Distinct packets received.
    pub received: u32,
    /// Missing packet ranges, inclusive, ascending.
    pub missing: Vec<(u32, u32)>,
    /// Packets that arrived as all zeroes (the sender's exact-multiple bug).
    pub zeroed: Vec<u32>,
    /// Every packet arrived.
    pub complete: bool,
    /// 1 for the first version of this dump, higher when late packets improved it.
    pub revision: u32,
    /// Relay clock, ms.
    pub first_seen_ms: u64,
    /// Relay clock, ms.
    pub completed_ms: u64,
    /// CPU identification, when the header carries it.
    pub cpu: Option<Cpu>,
    /// Registers, when the header carries non-zero ones.
    pub registers: Option<RegisterSet>,
    /// The v3 128-byte user blob, when compiled into the sender.
    pub user_blob: Option<Vec<u8>>,
    /// Netconsole details; `None` for a netoops dump.
    pub netconsole: Option<ConsoleMeta>,
    /// Chunks that differed from the one held for their packet (each started a new
    /// generation): forged datagrams, or an oops and a panic in the same second. 0 for
    /// netconsole.
    pub conflicts: u32,
    /// Chunks of this dump's identity sent from another port of its address (kept apart as
    /// a dump of their own). 0 for netconsole.
    pub foreign_port_chunks: u32,
    /// Chunks that arrived after the dump was first sent: late packets, or forged hole fills
    /// from the sender's own address and port (indistinguishable). 0 for netconsole.
    pub late_chunks: u32,
}

impl DumpMeta {
    /// The first revision of the netoops dump `id`, with nothing else known: no packets, no
    /// CPU, registers or blob, no anomalies. A base for struct update syntax
    /// (`DumpMeta { packet_count: 4, ..DumpMeta::new(id) }`), so that a dump written out by
    /// hand names only what it is about.
    pub fn new(id: DumpIdentity) -> Self {
        DumpMeta {
            id,
            generation: 0,
            kernel_version: String::new(),
            packet_count: 0,
            received: 0,
            missing: Vec::new(),
            zeroed: Vec::new(),
            complete: false,
            revision: 1,
            first_seen_ms: 0,
            completed_ms: 0,
            cpu: None,
            registers: None,
            user_blob: None,
            netconsole: None,
            conflicts: 0,
            foreign_port_chunks: 0,
            late_chunks: 0,
        }
    }

    /// netoops or netconsole.
    pub fn kind(&self) -> DumpKind {
        DumpKind::of(self.netconsole.as_ref())
    }
}

impl CrashSeen {
    /// netoops or netconsole.
    pub fn kind(&self) -> DumpKind {
        DumpKind::of(self.netconsole.as_ref())
    }
}

/// One record from relay to collector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Opens a session; always seq 0, no payload.
    Hello {
        /// [`PROTOCOL_VERSION`] of the relay.
        protocol: u16,
        /// Relay name (configuration).
        relay: String,
        /// Unique per relay boot: seqs restart at 1 for every instance.
        instance: u64,
    },
    /// A crash was heard of.
    CrashSeen(CrashSeen),
    /// A dump was reassembled.
    Dump(DumpMeta),
}

/// The kinds of record the spool holds (a `Hello` is never spooled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`Record::CrashSeen`].
    CrashSeen,
    /// [`Record::Dump`].
    Dump,
}

impl Record {
    /// The spool kind of this record; `None` for `Hello`.
    pub fn kind(&self) -> Option<RecordKind> {
        match self {
            Record::Hello { .. } => None,
            Record::CrashSeen(_) => Some(RecordKind::CrashSeen),
            Record::Dump(_) => Some(RecordKind::Dump),
        }
    }
}

/// The postcard-encoded part of a relay-to-collector frame.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// 1, 2, ... per relay instance; 0 for `Hello`.
    pub seq: u64,
    /// Relay clock when the frame was written to the stream.
    pub sent_at_ms: u64,
    /// The record.
    pub record: Record,
    /// Raw payload bytes following the header in the same frame.
    pub payload_len: u32,
}

/// A borrowed [`RecordHeader`]: encodes to the same bytes without cloning the record.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct RecordHeaderRef<'a> {
    /// See [`RecordHeader::seq`].
    pub seq: u64,
    /// See [`RecordHeader::sent_at_ms`].
    pub sent_at_ms: u64,
    /// See [`RecordHeader::record`].
    pub record: &'a Record,
    /// See [`RecordHeader::payload_len`].
    pub payload_len: u32,
}

impl RecordHeader {
    /// The borrowed form, for encoding.
    pub fn as_ref(&self) -> RecordHeaderRef<'_> {
        RecordHeaderRef {
            seq: self.seq,
            sent_at_ms: self.sent_at_ms,
            record: &self.record,
            payload_len: self.payload_len,
        }
    }
}

/// One frame from collector to relay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer to `Hello`.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the collector.
        protocol: u16,
        /// Highest seq already applied for this relay instance (0: none).
        last_seq: u64,
    },
    /// Every record up to and including `seq` is durable.
    Ack {
        /// Cumulative.
        seq: u64,
    },
    /// The collector will not take this session; it closes the connection.
    Refused {
        /// Human-readable reason.
        reason: String,
    },
}

/// Encoding failed; nothing useful was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer cannot hold the frame header.
    BufferTooSmall,
    /// The frame body would exceed [`MAX_FRAME_LEN`].
    FrameTooLarge {
        /// Body length the frame would have had.
        len: u64,
    },
    /// postcard refused the value (does not happen for these types).
    Serialize,
    /// The payload given is not `payload_len` bytes long.
    PayloadLength {
        /// `payload_len` in the header.
        declared: u32,
        /// Bytes given.
        actual: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall => f.write_str("output buffer too small"),
            EncodeError::FrameTooLarge { len } => {
                write!(f, "frame of {len} bytes exceeds {MAX_FRAME_LEN}")
            }
            EncodeError::Serialize => f.write_str("serialization failed"),
            EncodeError::PayloadLength { declared, actual } => {
                write!(f, "payload_len {declared} but {actual} payload bytes")
            }
        }
    }
}

/// A frame body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The postcard part is not a valid value of the expected type.
    Malformed(postcard::Error),
    /// The bytes after a record header are not `payload_len` long.
    PayloadLength {
        /// `payload_len` in the header.
        declared: u32,
        /// Bytes actually left in the frame.
        actual: usize,
    },
    /// A reply frame has bytes after the reply.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "malformed frame: {e}"),
            DecodeError::PayloadLength { declared, actual } => {
                write!(f, "payload_len {declared} but {actual} payload bytes")
            }
            DecodeError::TrailingBytes => f.write_str("trailing bytes after reply"),
        }
    }
}

/// The byte stream cannot be split into frames any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix above the decoder's maximum.
    TooLong {
        /// The offending length.
        len: u32,
        /// The decoder's maximum.
        max: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "frame length {len} exceeds maximum {max}")
            }
        }
    }
}

/// Encoded size of the postcard header (without length prefix or payload).
pub fn header_len(header: &RecordHeaderRef<'_>) -> Result<usize, EncodeError> {
    serialized_size(header)
}

/// Writes the length prefix and the postcard header of a record frame into `out` and returns
/// the bytes written. The caller must then send exactly `header.payload_len` payload bytes to
/// complete the frame.
pub fn encode_frame_header(
    header: &RecordHeaderRef<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let body = out
        .get_mut(LEN_PREFIX..)
        .ok_or(EncodeError::BufferTooSmall)?;
    let used = match postcard::to_slice(header, body) {
        Ok(used) => used.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(EncodeError::BufferTooSmall),
        Err(_) => return Err(EncodeError::Serialize),
    };
    let len = used as u64 + u64::from(header.payload_len);
    let len32 = frame_len(len)?;
    out[..LEN_PREFIX].copy_from_slice(&len32.to_le_bytes());
    Ok(LEN_PREFIX + used)
}

/// Writes a whole reply frame into `out` and returns the bytes written.
pub fn encode_reply(reply: &Reply, out: &mut [u8]) -> Result<usize, EncodeError> {
    let body = out
        .get_mut(LEN_PREFIX..)
        .ok_or(EncodeError::BufferTooSmall)?;
    let used = match postcard::to_slice(reply, body) {
        Ok(used) => used.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(EncodeError::BufferTooSmall),
        Err(_) => return Err(EncodeError::Serialize),
    };
    let len32 = frame_len(used as u64)?;
    out[..LEN_PREFIX].copy_from_slice(&len32.to_le_bytes());
    Ok(LEN_PREFIX + used)
}

/// A whole record frame as a new vector (collector tests and tools; the relay streams).
pub fn encode_record_frame(
    header: &RecordHeaderRef<'_>,
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    if payload.len() as u64 != u64::from(header.payload_len) {
        return Err(EncodeError::PayloadLength {
            declared: header.payload_len,
            actual: payload.len(),
        });
    }
    let hlen = header_len(header)?;
    frame_len(hlen as u64 + payload.len() as u64)?;
    let mut out = alloc::vec![0u8; LEN_PREFIX + hlen];
    let n = encode_frame_header(header, &mut out)?;
    out.truncate(n);
    out.extend_from_slice(payload);
    Ok(out)
}

/// A whole reply frame as a new vector.
pub fn encode_reply_frame(reply: &Reply) -> Result<Vec<u8>, EncodeError> {
    let len = serialized_size(reply)?;
    let mut out = alloc::vec![0u8; LEN_PREFIX + len];
    let n = encode_reply(reply, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// postcard's encoded size of `value`, computed without writing it anywhere.
pub(crate) fn serialized_size<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|_| EncodeError::Serialize)
}

fn frame_len(len: u64) -> Result<u32, EncodeError> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_FRAME_LEN => Ok(l),
        _ => Err(EncodeError::FrameTooLarge { len }),
    }
}

/// Splits a frame body into its record header and payload.
pub fn decode_record(frame: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    let (header, rest): (RecordHeader, &[u8]) =
        postcard::take_from_bytes(frame).map_err(DecodeError::Malformed)?;
    if rest.len() as u64 != u64::from(header.payload_len) {
        return Err(DecodeError::PayloadLength {
            declared: header.payload_len,
            actual: rest.len(),
        });
    }
    Ok((header, rest))
}

/// Decodes a reply frame body.
pub fn decode_reply(frame: &[u8]) -> Result<Reply, DecodeError> {
    let (reply, rest): (Reply, &[u8]) =
        postcard::take_from_bytes(frame).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(reply)
}

/// Converts a relay-clock timestamp `t_ms` from a record to wall-clock ms: the record was
/// written at relay time `sent_at_ms` and arrived at wall time `arrival_wall_ms`, so
/// `wall(t) = arrival_wall_ms - (sent_at_ms - t_ms)`. Saturates rather than going negative or
/// into the future (a `t_ms` after `sent_at_ms` maps to the arrival time).
pub fn relay_to_wall_ms(arrival_wall_ms: u64, sent_at_ms: u64, t_ms: u64) -> u64 {
    arrival_wall_ms.saturating_sub(sent_at_ms.saturating_sub(t_ms))
}

/// Incremental splitter of a byte stream into frame bodies.
///
/// Feed bytes with [`FrameDecoder::push`] (which takes at most what fits in its bounded
/// buffer, `4 + max_frame_len` bytes) and take frames with [`FrameDecoder::next_frame`] until
/// it returns `Ok(None)`. A length above the maximum is a sticky error: the stream cannot be
/// resynchronised and the connection must be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame_len: u32,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// Buffer space reserved up front; bigger frames grow the buffer on demand.
    const PREALLOCATE_MAX: usize = 64 * 1024;

    /// Bytes [`Self::new`] allocates for `max_frame_len` (a larger frame grows the buffer
    /// as it arrives).
    pub fn footprint(max_frame_len: u32) -> usize {
        LEN_PREFIX + (max_frame_len as usize).min(Self::PREALLOCATE_MAX)
    }

    /// A decoder that accepts frame bodies of at most `max_frame_len` bytes.
    pub fn new(max_frame_len: u32) -> Self {
        let cap = Self::footprint(max_frame_len);
        FrameDecoder {
            buf: Vec::with_capacity(cap),
            start: 0,
            max_frame_len,
            failed: None,
        }
    }

    /// Buffers as much of `input` as fits and returns how many bytes were taken. Returns 0
    /// only when a complete frame is waiting to be taken or the decoder has failed.
    pub fn push(&mut self, input: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let limit = LEN_PREFIX + self.max_frame_len as usize;
        let room = limit.saturating_sub(self.buf.len());
        let take = room.min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        take
    }

    /// The next complete frame body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let avail = &self.buf[self.start..];
        let Some(prefix) = avail.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len > self.max_frame_len {
            let e = FrameError::TooLong {
                len,
                max: self.max_frame_len,
            };
            self.failed = Some(e);
            return Err(e);
        }
        let end = LEN_PREFIX + len as usize;
        if avail.len() < end {
            return Ok(None);
        }
        let body_start = self.start + LEN_PREFIX;
        self.start += end;
        Ok(Some(&self.buf[body_start..self.start]))
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Gives back buffer space beyond the preallocation once no frame is partly buffered: a
    /// collector calls it so that one large frame does not pin its size per connection.
    pub fn release_memory(&mut self) {
        if self.buffered() == 0 && self.buf.capacity() > LEN_PREFIX + Self::PREALLOCATE_MAX {
            self.buf.clear();
            self.start = 0;
            self.buf.shrink_to(LEN_PREFIX + Self::PREALLOCATE_MAX);
        }
    }

    /// Bytes the buffer holds allocated.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets everything (a new connection), keeping the allocation.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.failed = None;
    }
}

/// The frame prefix the link writes in front of a spooled record body: length prefix plus the
/// `seq` and `sent_at_ms` varints, which postcard encodes first in a [`RecordHeader`].
/// Returns the bytes used in `out`.
pub(crate) fn encode_spooled_prefix(
    seq: u64,
    sent_at_ms: u64,
    body_len: usize,
    out: &mut [u8; SPOOLED_PREFIX_MAX],
) -> Result<usize, EncodeError> {
    let used = postcard::to_slice(&(seq, sent_at_ms), &mut out[LEN_PREFIX..])
        .map_err(|_| EncodeError::Serialize)?
        .len();
    let len32 = frame_len(used as u64 + body_len as u64)?;
    out[..LEN_PREFIX].copy_from_slice(&len32.to_le_bytes());
    Ok(LEN_PREFIX + used)
}

/// Length prefix plus two maximal u64 varints.
pub(crate) const SPOOLED_PREFIX_MAX: usize = LEN_PREFIX + 10 + 10;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn a_large_frames_buffer_is_given_back_between_frames() {
        let mut d = FrameDecoder::new(MAX_FRAME_LEN);
        let mut frame = (1u32 << 20).to_le_bytes().to_vec();
        frame.extend_from_slice(&vec![7u8; 1 << 20]);
        assert_eq!(d.push(&frame[..4096]), 4096);
        d.release_memory(); // partial: kept
        assert_eq!(d.buffered(), 4096);
        assert_eq!(d.push(&frame[4096..]), frame.len() - 4096);
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(1 << 20));
        assert!(d.capacity() >= 1 << 20);
        d.release_memory();
        assert!(d.capacity() <= LEN_PREFIX + FrameDecoder::PREALLOCATE_MAX);
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn spooled_prefix_matches_header_encoding() {
        // Multi-byte varints for both prefix fields; the record itself is only body bytes.
        let owned = RecordHeader {
            seq: 300,
            sent_at_ms: 1 << 40,
            ..hello(10)
        };
        let header = owned.as_ref();
        let mut whole = vec![0u8; 1024];
        let n = encode_frame_header(&header, &mut whole).unwrap();
        let body = postcard::to_extend(&(&owned.record, 10u32), Vec::new()).unwrap();
        let mut prefix = [0u8; SPOOLED_PREFIX_MAX];
        let p = encode_spooled_prefix(300, 1 << 40, body.len() + 10, &mut prefix).unwrap();
        let mut joined = prefix[..p].to_vec();
        joined.extend_from_slice(&body);
        assert_eq!(joined, whole[..n]);
    }

    #[test]
    fn replies_round_trip_and_reject_trailing_bytes() {
        for reply in [
            Reply::Welcome {
                protocol: PROTOCOL_VERSION,
                last_seq: 99,
            },
            Reply::Ack { seq: u64::MAX },
            Reply::Refused {
                reason: "no".to_string(),
            },
        ] {
            let frame = encode_reply_frame(&reply).unwrap();
            assert_eq!(decode_reply(&frame[LEN_PREFIX..]).unwrap(), reply);
            let mut longer = frame[LEN_PREFIX..].to_vec();
            longer.push(0);
            assert_eq!(decode_reply(&longer), Err(DecodeError::TrailingBytes));
        }
    }

    #[test]
    fn oversized_length_is_a_sticky_error() {
        let mut dec = FrameDecoder::new(16);
        assert_eq!(dec.push(&17u32.to_le_bytes()), 4);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLong { len: 17, max: 16 })
        );
        assert_eq!(dec.push(&[0; 4]), 0);
        assert!(dec.next_frame().is_err());
        dec.reset();
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn push_is_bounded_by_one_maximal_frame() {
        let mut dec = FrameDecoder::new(8);
        let mut stream = vec![];
        for i in 0..4u8 {
            stream.extend_from_slice(&8u32.to_le_bytes());
            stream.extend_from_slice(&[i; 8]);
        }
        let mut input = &stream[..];
        let mut frames = vec![];
        while !input.is_empty() {
            let n = dec.push(input);
            assert!(dec.buffered() <= 12);
            input = &input[n..];
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f.to_vec());
            }
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[3], vec![3u8; 8]);
    }

    /// A `Hello` header (seq 0) that announces a payload of `payload_len` bytes.
    fn hello(payload_len: u32) -> RecordHeader {
        RecordHeader {
            seq: 0,
            sent_at_ms: 0,
            record: Record::Hello {
                protocol: 1,
                relay: "r".to_string(),
                instance: 1,
            },
            payload_len,
        }
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(
            decode_record(&[0xff; 3]),
            Err(DecodeError::Malformed(_))
        ));
        let owned = hello(3);
        let header = owned.as_ref();
        let frame = encode_record_frame(&header, b"abc").unwrap();
        assert!(matches!(
            decode_record(&frame[LEN_PREFIX..frame.len() - 1]),
            Err(DecodeError::PayloadLength {
                declared: 3,
                actual: 2
            })
        ));
        assert!(encode_frame_header(&header, &mut [0u8; 6]).is_err());
    }

    #[test]
    fn frames_above_the_limit_are_not_encoded() {
        let owned = hello(MAX_FRAME_LEN);
        let header = owned.as_ref();
        assert!(matches!(
            encode_frame_header(&header, &mut [0u8; 64]),
            Err(EncodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn source_converts_and_displays() {
        let a: SocketAddr = "1.2.3.4:2004".parse().unwrap();
        let s = Source::from(a);
        assert_eq!(s.to_string(), "1.2.3.4:2004");
        assert_eq!(SocketAddr::from(s), a);
        let b: SocketAddr = "[fe80::1]:2004".parse().unwrap();
        assert_eq!(Source::from(b).to_string(), "[fe80::1]:2004");
        assert_eq!(Source::from(b).ip.to_string(), "fe80::1");
    }

    #[test]
    fn wall_clock_conversion() {
        // Sent at relay 10_000 ms, arrived at wall 1_700_000_000_000: t = 9_000 was 1 s earlier.
        assert_eq!(
            relay_to_wall_ms(1_700_000_000_000, 10_000, 9_000),
            1_699_999_999_000
        );
        assert_eq!(relay_to_wall_ms(5, 10_000, 0), 0);
        assert_eq!(relay_to_wall_ms(5, 10, 20), 5);
    }
}
