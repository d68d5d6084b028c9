//! What the reassembler hands to its [`EventSink`]: borrowed views, so a dump's text goes from
//! the chunk pool straight into the delivery spool without an intermediate copy.

use core::net::SocketAddr;
use netoops_wire::netoops::{CpuId, Datagram, DumpType, Registers, Version};
use netoops_wire::text::{self, Segment};

use super::chunks::ChunkStore;
use super::entry::{DumpEntry, HeaderInfo};
use crate::time::Instant;

/// Receives the reassembler's output synchronously, while the data it points to is still held.
pub trait EventSink {
    /// The first packet of a new dump arrived: the machine crashed. Its chunk is the newest
    /// text of the log, usually holding the panic line.
    fn crash_seen(&mut self, crash: &CrashSeen<'_>);
    /// A dump is complete, or partial after a quiet period or under memory pressure.
    fn dump(&mut self, dump: &DumpView<'_>);
}

/// The first packet of a new dump.
#[derive(Clone, Copy, Debug)]
pub struct CrashSeen<'a> {
    /// When it arrived.
    pub at: Instant,
    /// Sender address.
    pub source: SocketAddr,
    /// 0, or more when a dump with the same identity came before (an oops, then a panic).
    pub generation: u32,
    /// The packet itself, in the receive buffer.
    pub datagram: Datagram<'a>,
}

impl<'a> CrashSeen<'a> {
    /// The chunk's text with the sender's zero padding removed.
    pub fn text(&self) -> &'a [u8] {
        text::chunk_text(self.datagram.data())
    }
}

/// A reassembled dump, complete or partial, borrowed from the reassembler.
pub struct DumpView<'a> {
    pub(crate) at: Instant,
    pub(crate) idx: u32,
    pub(crate) entry: &'a DumpEntry,
    pub(crate) header: &'a HeaderInfo,
    pub(crate) bits: &'a [u64],
    pub(crate) chunks: &'a ChunkStore,
}

/// Whether bit `packet_no` is set in one dump's received bitmap.
pub(crate) fn has_bit(bits: &[u64], packet_no: u32) -> bool {
    bits.get((packet_no / 64) as usize)
        .is_some_and(|w| w & (1u64 << (packet_no % 64)) != 0)
}

impl<'a> DumpView<'a> {
    fn has(&self, packet_no: u32) -> bool {
        has_bit(self.bits, packet_no)
    }

    /// When the dump was emitted (completion or partial flush).
    pub fn emitted_at(&self) -> Instant {
        self.at
    }
    /// Sender address.
    pub fn source(&self) -> SocketAddr {
        self.entry.key.source
    }
    /// Wire version.
    pub fn version(&self) -> Version {
        self.entry.key.version
    }
    /// Boot identifier (0 for v2).
    pub fn boot_id(&self) -> u32 {
        self.entry.key.boot_id
    }
    /// The sender's dump id (seconds since boot, modulo 65536).
    pub fn dump_id(&self) -> u16 {
        self.entry.key.dump_id
    }
    /// Printk buffer or soft dump.
    pub fn dump_type(&self) -> DumpType {
        self.entry.key.dump_type
    }
    /// 0, or more when earlier dumps shared this identity.
    pub fn generation(&self) -> u32 {
        self.entry.generation
    }
    /// The sender's kernel release string.
    pub fn kernel_version(&self) -> &'a [u8] {
        self.header.kernel_version()
    }
    /// CPU identification (v3).
    pub fn cpu(&self) -> Option<CpuId> {
        self.header.cpu
    }
    /// Registers at the crash (v3, when the dump had them).
    pub fn registers(&self) -> Option<Registers> {
        self.header.registers
    }
    /// The user blob (v3 blob variant).
    pub fn user_blob(&self) -> Option<&'a [u8; 128]> {
        self.header.user_blob.as_ref()
    }
    /// Packets in the dump.
    pub fn packet_count(&self) -> u32 {
        self.entry.packet_count
    }
    /// Distinct packets received.
    pub fn received(&self) -> u32 {
        self.entry.received
    }
    /// Whether every packet arrived.
    pub fn complete(&self) -> bool {
        self.entry.received == self.entry.packet_count
    }
    /// 1 for the first emission; higher when late packets improved a partial dump.
    pub fn revision(&self) -> u32 {
        self.entry.revision
    }
    /// When the first packet arrived.
    pub fn first_seen(&self) -> Instant {
        self.entry.first_seen
    }
    /// Chunks that differed from the chunk held for their packet_no (each started a new
    /// generation; a generation started that way counts its first chunk). Non-zero means
    /// forged datagrams, or an oops and a panic in the same second.
    pub fn conflicts(&self) -> u32 {
        self.entry.conflicts
    }
    /// Chunks for this dump's identity that came from another source port of its address
    /// (they are kept as a dump of their own, never mixed into this one).
    pub fn foreign_port_chunks(&self) -> u32 {
        self.entry.foreign_port_chunks
    }
    /// Chunks stored after the dump was first emitted: late packets that filled holes, or
    /// forged ones from the sender's own address and port (which cannot be told apart).
    pub fn late_chunks(&self) -> u32 {
        self.entry.late_chunks
    }

    /// Missing packet numbers as inclusive ranges, ascending.
    pub fn missing(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let bits = self.bits;
        let count = self.entry.packet_count;
        let has = move |p: u32| has_bit(bits, p);
        let mut p = 0u32;
        core::iter::from_fn(move || {
            while p < count && has(p) {
                p += 1;
            }
            if p >= count {
                return None;
            }
            let first = p;
            while p < count && !has(p) {
                p += 1;
            }
            Some((first, p - 1))
        })
    }

    /// Received packets whose chunk the sender zeroed (its text is lost), ascending.
    pub fn zeroed(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.entry.packet_count)
            .filter(|&p| self.has(p) && self.chunks.text(self.idx, p).is_some_and(|t| t.is_empty()))
    }

    /// The dump's text in log order (highest packet_no first), gaps as [`Segment::Gap`].
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + 'a {
        let bits = self.bits;
        let chunks = self.chunks;
        let idx = self.idx;
        let has = move |p: u32| has_bit(bits, p);
        // Next packet number to look at, plus one (0 = done).
        let mut next = self.entry.packet_count;
        core::iter::from_fn(move || loop {
            if next == 0 {
                return None;
            }
            let p = next - 1;
            if has(p) {
                next = p;
                match chunks.text(idx, p) {
                    Some(t) if !t.is_empty() => return Some(Segment::Text(t)),
                    _ => continue,
                }
            }
            let last = p;
            let mut first = p;
            while first > 0 && !has(first - 1) {
                first -= 1;
            }
            next = first;
            return Some(Segment::Gap { first, last });
        })
    }

    /// Renders the text (padding removed, one line per gap) into `out`, slice by slice.
    pub fn write_text(&self, out: impl FnMut(&[u8])) {
        text::render(self.segments(), out);
    }

    /// Length in bytes of the rendered text.
    pub fn text_len(&self) -> usize {
        let mut n = 0;
        self.write_text(|b| n += b.len());
        n
    }
}

impl core::fmt::Debug for DumpView<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DumpView")
            .field("key", &self.entry.key)
            .field("generation", &self.entry.generation)
            .field("packet_count", &self.entry.packet_count)
            .field("received", &self.entry.received)
            .field("revision", &self.entry.revision)
            .field("conflicts", &self.entry.conflicts)
            .field("foreign_port_chunks", &self.entry.foreign_port_chunks)
            .field("late_chunks", &self.entry.late_chunks)
            .finish()
    }
}
