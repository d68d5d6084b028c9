//! One dump being reassembled (or lingering after emission): its identity and bookkeeping,
//! which every packet reads, and the header fields copied from its first packet, which only
//! emission reads. The reassembler keeps the two in separate arrays so that a packet's lookup
//! touches a small entry (the headers are 300 bytes each), and the received-packet bitmaps in
//! a third.

use core::hash::{Hash, Hasher};
use core::net::{IpAddr, SocketAddr};
use netoops_wire::netoops::{CpuId, Datagram, DumpType, Registers, Version};

use crate::time::Instant;

/// What makes two datagrams belong to the same dump (before generation splitting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpKey {
    /// Sender address and port.
    pub source: SocketAddr,
    /// Wire version.
    pub version: Version,
    /// Boot identifier (v3; 0 for v2).
    pub boot_id: u32,
    /// Seconds since boot modulo 65536 when the dump started.
    pub dump_id: u16,
    /// Printk buffer or soft dump.
    pub dump_type: DumpType,
}

/// Every packet hashes its key, so the fields go in as two packed words (three for IPv6)
/// rather than the derived impl's eight writes, which cost more than the table probe.
impl Hash for DumpKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let ip = self.hash_ip(state);
        state.write_u64(ip ^ (u64::from(self.source.port()) << 32));
        state.write_u64(self.identity_word());
    }
}

/// A dump's identity without the sender's port: what two ports of one address must not both
/// be sending. Hashed for the reassembler's identity index.
#[derive(Clone, Copy)]
pub(crate) struct PortlessIdentity<'a>(pub(crate) &'a DumpKey);

impl Hash for PortlessIdentity<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let ip = self.0.hash_ip(state);
        state.write_u64(ip);
        state.write_u64(self.0.identity_word());
    }
}

impl DumpKey {
    /// Writes the upper half of an IPv6 source address to `state`; returns the rest of the
    /// address (an IPv4 one whole), for the caller to pack with what it writes next.
    #[inline(always)]
    fn hash_ip<H: Hasher>(&self, state: &mut H) -> u64 {
        match self.source.ip() {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                state.write_u64((v >> 64) as u64);
                v as u64
            }
        }
    }

    /// Boot id, dump id, version and type in one word.
    #[inline(always)]
    fn identity_word(&self) -> u64 {
        u64::from(self.boot_id)
            | u64::from(self.dump_id) << 32
            | (self.version as u64) << 48
            | (self.dump_type as u64) << 56
    }

    /// Same address and dump identity, another port.
    pub(crate) fn same_identity_other_port(&self, other: &DumpKey) -> bool {
        self.source.ip() == other.source.ip()
            && self.source.port() != other.source.port()
            && self.version == other.version
            && self.boot_id == other.boot_id
            && self.dump_id == other.dump_id
            && self.dump_type == other.dump_type
    }

    pub(crate) fn of(source: SocketAddr, d: &Datagram<'_>) -> Self {
        DumpKey {
            source,
            version: d.version(),
            boot_id: d.boot_id(),
            dump_id: d.dump_id(),
            dump_type: d.dump_type(),
        }
    }
}

/// Header fields that are constant across a dump, copied from its first packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderInfo {
    pub(crate) kernel_version: [u8; 64],
    pub(crate) kernel_version_len: u8,
    pub(crate) cpu: Option<CpuId>,
    pub(crate) registers: Option<Registers>,
    pub(crate) user_blob: Option<[u8; 128]>,
}

impl HeaderInfo {
    pub(crate) const EMPTY: HeaderInfo = HeaderInfo {
        kernel_version: [0; 64],
        kernel_version_len: 0,
        cpu: None,
        registers: None,
        user_blob: None,
    };

    pub(crate) fn of(d: &Datagram<'_>) -> Self {
        let kv = d.kernel_version();
        let n = kv.len().min(64);
        let mut kernel_version = [0u8; 64];
        kernel_version[..n].copy_from_slice(&kv[..n]);
        HeaderInfo {
            kernel_version,
            kernel_version_len: n as u8,
            cpu: d.cpu(),
            registers: d.registers(),
            user_blob: d.user_blob().copied(),
        }
    }

    pub(crate) fn kernel_version(&self) -> &[u8] {
        &self.kernel_version[..usize::from(self.kernel_version_len)]
    }
}

/// Bookkeeping for one dump.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DumpEntry {
    pub(crate) key: DumpKey,
    /// 0 for the first dump under a key; counts up when an oops and a panic share one.
    pub(crate) generation: u32,
    pub(crate) packet_count: u32,
    /// Distinct packet numbers received.
    pub(crate) received: u32,
    /// Times this dump was handed to the sink.
    pub(crate) revision: u32,
    /// True once every packet arrived and the complete dump was emitted.
    pub(crate) complete: bool,
    /// Whether the chunks are still held (false after eviction of a lingering dump).
    pub(crate) has_chunks: bool,
    /// Whether `key` maps to this entry in the lookup table (false for older generations).
    pub(crate) indexed: bool,
    /// Chunks received that differed from the chunk held for their packet_no (each started
    /// a new generation); a new generation started that way counts the chunk too.
    pub(crate) conflicts: u32,
    /// Chunks for this dump's identity (address, boot, dump id, type) that came from another
    /// source port of the same address while this dump was held.
    pub(crate) foreign_port_chunks: u32,
    /// Chunks stored after the dump was first emitted (a late packet filling a hole, or a
    /// forgery from the sender's own address and port: the two cannot be told apart).
    pub(crate) late_chunks: u32,
    /// Another port of the same address holds (or held) this identity: every chunk stored
    /// looks the others up in the identity index. False for every honest dump.
    pub(crate) shared: bool,
    /// The last emission already carried conflicts, so a new one does not send the dump
    /// again (at most one extra revision per dump for them).
    pub(crate) emitted_conflicts: bool,
    /// Likewise for foreign-port chunks.
    pub(crate) emitted_foreign: bool,
    pub(crate) first_seen: Instant,
    pub(crate) last_packet: Instant,
}

impl DumpEntry {
    pub(crate) const VACANT: DumpEntry = DumpEntry {
        key: DumpKey {
            source: SocketAddr::V4(core::net::SocketAddrV4::new(
                core::net::Ipv4Addr::UNSPECIFIED,
                0,
            )),
            version: Version::V2,
            boot_id: 0,
            dump_id: 0,
            dump_type: DumpType::PrintkBuffer,
        },
        generation: 0,
        packet_count: 0,
        received: 0,
        revision: 0,
        complete: false,
        has_chunks: false,
        indexed: false,
        conflicts: 0,
        foreign_port_chunks: 0,
        late_chunks: 0,
        shared: false,
        emitted_conflicts: false,
        emitted_foreign: false,
        first_seen: Instant::ZERO,
        last_packet: Instant::ZERO,
    };
}
