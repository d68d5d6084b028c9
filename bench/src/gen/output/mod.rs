//! Where datagrams go: output back-ends behind one [`Output`] trait.
//!
//! The send loop fills a [`Batch`]: fixed slots, each with [`HEADROOM`] free bytes before the
//! datagram, so a frame back-end writes its Ethernet/IPv4/UDP headers (and a stream length
//! prefix) in place instead of copying the datagram. Back-ends:
//!
//! - [`udp::UdpOutput`]: real UDP datagrams from a distinct 127.x.y.z source per machine
//!   (one socket, source chosen per datagram with `IP_PKTINFO`, batched with `sendmmsg`).
//! - [`qemu::DgramOutput`]: raw Ethernet frames, one per UDP datagram, to a QEMU
//!   `-netdev dgram` socket.
//! - [`qemu::StreamOutput`]: raw frames over TCP with a 4-byte big-endian length prefix, to a
//!   QEMU `-netdev stream` server, or to QEMU connecting as a stream client.
//!
//! - [`tap::TapOutput`]: raw frames transmitted on a TAP interface (`AF_PACKET`), which a
//!   QEMU `-netdev tap` hands to its guest.

pub mod frame;
pub mod inflight;
pub(crate) mod mmsg;
pub mod qemu;
pub mod tap;
pub mod udp;

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::str::FromStr;

use netoops_wire::MAX_DATAGRAM_LEN;

use super::schedule::Scheduled;
use frame::{FrameWriter, ETHERNET_LEN, IPV4_LEN, UDP_LEN};

/// Stream length prefix.
pub const PREFIX_LEN: usize = 4;
/// Free bytes before each datagram: stream prefix, Ethernet, IPv4 and UDP headers.
pub const HEADROOM: usize = PREFIX_LEN + ETHERNET_LEN + IPV4_LEN + UDP_LEN;
/// Bytes per batch slot.
pub const SLOT_LEN: usize = HEADROOM + MAX_DATAGRAM_LEN;
/// Largest batch (one `sendmmsg` call).
pub const MAX_BATCH: usize = 64;

/// Datagrams about to be sent together, each in its own slot.
pub struct Batch {
    buf: Vec<u8>,
    items: Vec<Scheduled>,
    capacity: usize,
}

impl Batch {
    /// Room for `capacity` datagrams (clamped to 1..=[`MAX_BATCH`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BATCH);
        Self {
            buf: vec![0; capacity * SLOT_LEN],
            items: Vec::with_capacity(capacity),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() == self.capacity
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The datagram area of the next free slot ([`MAX_DATAGRAM_LEN`] bytes; empty when full).
    pub fn next_datagram_buf(&mut self) -> &mut [u8] {
        let at = self.items.len() * SLOT_LEN + HEADROOM;
        self.buf
            .get_mut(at..at + MAX_DATAGRAM_LEN)
            .unwrap_or_default()
    }

    /// Adds the datagram just written into [`Batch::next_datagram_buf`].
    pub fn commit(&mut self, item: Scheduled) {
        if !self.is_full() {
            self.items.push(item);
        }
    }

    /// What was scheduled into each slot.
    pub fn items(&self) -> &[Scheduled] {
        &self.items
    }

    /// Datagram `i`.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = self.items.get(i).map_or(0, |it| it.len);
        let at = i * SLOT_LEN + HEADROOM;
        self.buf.get(at..at + len).unwrap_or_default()
    }

    /// Slot `i` whole: headroom then the datagram.
    pub fn slot(&self, i: usize) -> &[u8] {
        self.buf
            .get(i * SLOT_LEN..(i + 1) * SLOT_LEN)
            .unwrap_or_default()
    }

    /// Slot `i` whole, writable.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        self.buf
            .get_mut(i * SLOT_LEN..(i + 1) * SLOT_LEN)
            .unwrap_or_default()
    }
}

/// A destination for batches of datagrams.
pub trait Output {
    /// Sends every datagram of the batch, in order (blocking until the OS took them all).
    fn send(&mut self, batch: &mut Batch) -> io::Result<()>;

    /// Counts of what the back-end received from the other side, if it listens (frames a
    /// QEMU guest transmitted): `(frames, bytes)`.
    fn received(&self) -> (u64, u64) {
        (0, 0)
    }

    /// What the output is, for the summary.
    fn describe(&self) -> String;
}

/// The `--output` choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// UDP datagrams to `--target`.
    Udp,
    /// Raw frames, one per UDP datagram, to a QEMU `-netdev dgram` socket.
    Dgram(SocketAddrV4),
    /// Raw frames, length-prefixed, to a QEMU `-netdev stream` server.
    Stream(SocketAddrV4),
    /// Raw frames, length-prefixed, to a QEMU `-netdev stream,server=off` client that
    /// connects to this address.
    StreamListen(SocketAddrV4),
    /// Raw frames transmitted on this TAP interface (QEMU `-netdev tap,ifname=...`).
    Tap(String),
}

impl OutputSpec {
    /// Whether the output carries whole Ethernet frames (so source addresses need not be
    /// local to this host).
    pub fn is_frames(&self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// An `--output` that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadOutputSpec(pub String);

impl fmt::Display for BadOutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad output {:?}: expected udp, dgram:HOST:PORT, stream:HOST:PORT, \
             stream-listen:HOST:PORT (IPv4) or tap:IFNAME",
            self.0
        )
    }
}

impl std::error::Error for BadOutputSpec {}

fn resolve_v4(s: &str) -> Option<SocketAddrV4> {
    s.to_socket_addrs().ok()?.find_map(|a| match a {
        SocketAddr::V4(v4) => Some(v4),
        SocketAddr::V6(_) => None,
    })
}

impl FromStr for OutputSpec {
    type Err = BadOutputSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadOutputSpec(s.to_string());
        if s == "udp" {
            return Ok(Self::Udp);
        }
        let (kind, addr) = s.split_once(':').ok_or_else(bad)?;
        if kind == "tap" {
            let ok = !addr.is_empty()
                && addr.len() <= 15
                && !addr.starts_with('.')
                && !addr.contains(['/', ':', ' ']);
            return if ok {
                Ok(Self::Tap(addr.to_string()))
            } else {
                Err(bad())
            };
        }
        let addr = resolve_v4(addr).ok_or_else(bad)?;
        match kind {
            "dgram" => Ok(Self::Dgram(addr)),
            "stream" => Ok(Self::Stream(addr)),
            "stream-listen" => Ok(Self::StreamListen(addr)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp => f.write_str("udp"),
            Self::Dgram(a) => write!(f, "dgram:{a}"),
            Self::Stream(a) => write!(f, "stream:{a}"),
            Self::StreamListen(a) => write!(f, "stream-listen:{a}"),
            Self::Tap(name) => write!(f, "tap:{name}"),
        }
    }
}

/// Writes the frame headers of every datagram in the batch; returns the frame lengths.
pub(crate) fn write_frames(
    frames: &mut FrameWriter,
    batch: &mut Batch,
) -> io::Result<[usize; MAX_BATCH]> {
    let mut lens = [0usize; MAX_BATCH];
    let items: [_; MAX_BATCH] = std::array::from_fn(|i| batch.items().get(i).copied());
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item else { break };
        let slot = batch.slot_mut(i);
        // Headers go right before the datagram, which sits at HEADROOM.
        let frame = slot.get_mut(PREFIX_LEN..).unwrap_or_default();
        lens[i] = frames.write(frame, item.source, item.len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too large for a frame",
            )
        })?;
    }
    Ok(lens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs_parse() {
        assert_eq!("udp".parse(), Ok(OutputSpec::Udp));
        assert_eq!(
            "dgram:127.0.0.1:5555".parse(),
            Ok(OutputSpec::Dgram("127.0.0.1:5555".parse().unwrap()))
        );
        assert_eq!(
            "stream:localhost:6000"
                .parse::<OutputSpec>()
                .map(|o| o.is_frames()),
            Ok(true)
        );
        for bad in [
            "tcp:1.2.3.4:5",
            "dgram:",
            "dgram:1.2.3.4",
            "stream:[::1]:5",
            "x",
        ] {
            assert!(bad.parse::<OutputSpec>().is_err(), "{bad}");
        }
        assert_eq!("tap:nbtap0".parse(), Ok(OutputSpec::Tap("nbtap0".into())));
        for bad in ["tap:", "tap:a/b", "tap:..", "tap:sixteen-chars-xx"] {
            assert!(bad.parse::<OutputSpec>().is_err(), "{bad}");
        }
        for s in [
            "stream:127.0.0.1:7",
            "stream-listen:127.0.0.1:8",
            "dgram:127.0.0.1:9",
            "tap:nbtap0",
        ] {
            let spec: OutputSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn batch_slots_keep_headroom() {
        let b = Batch::new(1000);
        assert_eq!(b.capacity(), MAX_BATCH);
        let mut b = Batch::new(2);
        b.next_datagram_buf()[..3].copy_from_slice(b"abc");
        let item = Scheduled {
            machine: 0,
            source: "127.1.0.1:6666".parse().unwrap(),
            packet_no: 0,
            round: 0,
            duplicate: false,
            not_before: std::time::Duration::ZERO,
            len: 3,
        };
        b.commit(item);
        assert_eq!(b.datagram(0), b"abc");
        assert_eq!(&b.slot(0)[HEADROOM..HEADROOM + 3], b"abc");
        b.commit(item);
        assert!(b.is_full());
        assert!(b.next_datagram_buf().is_empty());
        b.commit(item);
        assert_eq!(b.len(), 2);
        b.clear();
        assert!(b.is_empty());
    }
}
