//! Records serialized straight from the relay's views, without building a [`Record`].
//!
//! The owned [`Record`] types hold `String`s and `Vec`s: right for the collector, which decodes
//! them, but the relay would allocate for every crash notice and dump it spools. The types here
//! borrow the reassembler's and the console tracker's views and write the same postcard bytes
//! field by field: strings that are not valid UTF-8 are written as the lossy conversion would
//! (U+FFFD per invalid sequence), sequences from iterators, the enum variant by its index in
//! [`Record`]. They are for postcard only (a `str` is written as its length and bytes, which is
//! what postcard makes of a `u8` sequence too); the tests hold every one of them against the
//! owned type's encoding.

use core::net::SocketAddr;

use netoops_wire::netoops::{CpuId, RegisterLayout, Registers};
use serde::ser::{SerializeSeq, SerializeStruct, SerializeTuple, Serializer};
use serde::Serialize;

use super::record::{Cpu, DumpIdentity, Record, RecordKind, Source};
use crate::netconsole::{ConsoleCrash, ConsoleDump};
use crate::reassembly::{CrashSeen, DumpView};

/// A record the spool can take: the owned [`Record`] or one of the borrowed forms here.
pub trait SpoolRecord: Serialize {
    /// The spool lane; `None` for what is never spooled (`Hello`).
    fn kind(&self) -> Option<RecordKind>;
}

impl SpoolRecord for Record {
    fn kind(&self) -> Option<RecordKind> {
        Record::kind(self)
    }
}

/// Variant indices of [`Record`] (its derive numbers them in declaration order).
const VARIANT_CRASH_SEEN: u32 = 1;
const VARIANT_DUMP: u32 = 2;

/// Bytes written as a string, lossily where they are not UTF-8.
#[derive(Clone, Copy, Debug)]
pub struct Lossy<'a>(pub &'a [u8]);

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

impl Serialize for Lossy<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Ok(text) = core::str::from_utf8(self.0) {
            return s.serialize_str(text);
        }
        let chunks = || self.0.utf8_chunks();
        let len = chunks()
            .map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 })
            .sum();
        let mut seq = s.serialize_seq(Some(len))?;
        for c in chunks() {
            for b in c.valid().bytes() {
                seq.serialize_element(&b)?;
            }
            if !c.invalid().is_empty() {
                for b in REPLACEMENT {
                    seq.serialize_element(b)?;
                }
            }
        }
        seq.end()
    }
}

/// A sequence from an iterator that can be walked twice (once to count: postcard writes the
/// length first).
struct SeqOf<F>(F);

impl<F, I> Serialize for SeqOf<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some((self.0)().count()))?;
        for item in (self.0)() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// A key and value pair of strings, as `(String, String)` is written.
struct Pair<'a>(&'a [u8], &'a [u8]);

impl Serialize for Pair<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Lossy(self.0))?;
        t.serialize_element(&Lossy(self.1))?;
        t.end()
    }
}

/// The registers as [`super::record::RegisterSet`] is written.
struct RegistersOut(Registers);

impl Serialize for RegistersOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RegisterSet", 2)?;
        st.serialize_field("layout", layout_name(self.0.layout))?;
        st.serialize_field("names_values", &SeqOf(|| self.0.iter()))?;
        st.end()
    }
}

/// The name the collector shows for a register layout.
pub fn layout_name(layout: RegisterLayout) -> &'static str {
    match layout {
        RegisterLayout::X86_64 => "x86_64",
        RegisterLayout::I386 => "i386",
        RegisterLayout::I386NoGs => "i386-no-gs",
        RegisterLayout::I386NoStack => "i386-no-stack",
    }
}

fn cpu(c: Option<CpuId>) -> Option<Cpu> {
    c.map(|c| Cpu {
        vendor: c.vendor,
        family: c.family,
        model: c.model,
        stepping: c.stepping,
    })
}

fn identity(
    source: SocketAddr,
    version: u16,
    boot_id: u32,
    dump_id: u16,
    dump_type: u16,
) -> DumpIdentity {
    DumpIdentity {
        source: Source::from(source),
        version,
        boot_id,
        dump_id,
        dump_type,
    }
}

/// The identity a netoops datagram's header gives its dump.
fn datagram_identity(source: SocketAddr, d: &netoops_wire::netoops::Datagram<'_>) -> DumpIdentity {
    identity(
        source,
        d.version() as u16,
        d.boot_id(),
        d.dump_id(),
        d.dump_type() as u16,
    )
}

/// A netconsole identity: version 0, the relay-counted boot, the crash number.
pub fn console_identity(source: SocketAddr, boot: u32, crash: u32) -> DumpIdentity {
    identity(source, 0, boot, crash as u16, 0)
}

/// The netconsole side, as [`super::record::ConsoleMeta`] is written.
struct ConsoleMetaOut<'a> {
    extended: bool,
    boot: u32,
    crash: u32,
    crash_line: &'a [u8],
    release: &'a [u8],
    missing_seq: &'a [(u64, u64)],
    incomplete_seq: &'a [u64],
    seq_range: Option<(u64, u64)>,
    records: u32,
    fields: &'a [(&'a [u8], &'a [u8])],
    truncated: bool,
}

impl Serialize for ConsoleMetaOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ConsoleMeta", 11)?;
        st.serialize_field("extended", &self.extended)?;
        st.serialize_field("boot", &self.boot)?;
        st.serialize_field("crash", &self.crash)?;
        st.serialize_field("crash_line", &Lossy(self.crash_line))?;
        st.serialize_field("release", &Lossy(self.release))?;
        st.serialize_field("missing_seq", self.missing_seq)?;
        st.serialize_field("incomplete_seq", self.incomplete_seq)?;
        st.serialize_field("seq_range", &self.seq_range)?;
        st.serialize_field("records", &self.records)?;
        st.serialize_field(
            "fields",
            &SeqOf(|| self.fields.iter().map(|(k, v)| Pair(k, v))),
        )?;
        st.serialize_field("truncated", &self.truncated)?;
        st.end()
    }
}

/// The fields of a `CrashSeen` record, in [`super::record::CrashSeen`]'s order.
struct CrashFields<'a> {
    id: DumpIdentity,
    generation: u32,
    kernel_version: &'a [u8],
    packet_count: u32,
    packet_no: u32,
    cpu: Option<CpuId>,
    registers: Option<Registers>,
    seen_at_ms: u64,
    netconsole: Option<ConsoleMetaOut<'a>>,
}

impl Serialize for CrashFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CrashSeen", 9)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("kernel_version", &Lossy(self.kernel_version))?;
        st.serialize_field("packet_count", &self.packet_count)?;
        st.serialize_field("packet_no", &self.packet_no)?;
        st.serialize_field("cpu", &cpu(self.cpu))?;
        st.serialize_field("registers", &self.registers.map(RegistersOut))?;
        st.serialize_field("seen_at_ms", &self.seen_at_ms)?;
        st.serialize_field("netconsole", &self.netconsole)?;
        st.end()
    }
}

/// A crash notice, serialized from the netoops reassembler's view or the console tracker's.
pub struct CrashOut<'a>(CrashFields<'a>);

impl<'a> CrashOut<'a> {
    /// From the first chunk of a new netoops dump.
    pub fn netoops(c: &CrashSeen<'a>) -> Self {
        let d = &c.datagram;
        CrashOut(CrashFields {
            id: datagram_identity(c.source, d),
            generation: c.generation,
            kernel_version: d.kernel_version(),
            packet_count: d.packet_count(),
            packet_no: d.packet_no(),
            cpu: d.cpu(),
            registers: d.registers(),
            seen_at_ms: c.at.total_millis(),
            netconsole: None,
        })
    }

    /// From a netconsole crash line.
    pub fn netconsole(c: &ConsoleCrash<'a>) -> Self {
        CrashOut(CrashFields {
            id: console_identity(c.source, c.boot, c.crash),
            generation: 0,
            kernel_version: c.release,
            packet_count: 0,
            packet_no: 0,
            cpu: None,
            registers: None,
            seen_at_ms: c.at.total_millis(),
            netconsole: Some(ConsoleMetaOut {
                extended: c.extended,
                boot: c.boot,
                crash: c.crash,
                crash_line: c.line,
                release: c.release,
                missing_seq: &[],
                incomplete_seq: &[],
                seq_range: None,
                records: 0,
                fields: &[],
                truncated: false,
            }),
        })
    }
}

impl Serialize for CrashOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Record", VARIANT_CRASH_SEEN, "CrashSeen", &self.0)
    }
}

impl SpoolRecord for CrashOut<'_> {
    fn kind(&self) -> Option<RecordKind> {
        Some(RecordKind::CrashSeen)
    }
}

/// A dump, serialized from a netoops [`DumpView`] or a netconsole [`ConsoleDump`].
pub enum DumpOut<'a, 'b> {
    /// A reassembled netoops dump.
    Netoops(&'b DumpView<'a>),
    /// A netconsole crash with its history.
    Netconsole(&'b ConsoleDump<'a>),
}

impl DumpOut<'_, '_> {
    /// Records (netconsole) or packets (netoops) the dump should have had.
    pub fn packet_count(&self) -> u32 {
        match self {
            DumpOut::Netoops(d) => d.packet_count(),
            DumpOut::Netconsole(d) => {
                let missing: u64 = d.missing.iter().map(|(a, b)| b - a + 1).sum();
                d.records
                    .saturating_add(missing.min(u64::from(u32::MAX)) as u32)
            }
        }
    }
}

impl Serialize for DumpOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Record", VARIANT_DUMP, "Dump", &DumpFields(self))
    }
}

impl SpoolRecord for DumpOut<'_, '_> {
    fn kind(&self) -> Option<RecordKind> {
        Some(RecordKind::Dump)
    }
}

/// The fields of a dump, in [`super::record::DumpMeta`]'s order.
struct DumpFields<'x, 'a, 'b>(&'x DumpOut<'a, 'b>);

impl Serialize for DumpFields<'_, '_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("DumpMeta", 18)?;
        let packet_count = self.0.packet_count();
        match self.0 {
            DumpOut::Netoops(d) => {
                let id = identity(
                    d.source(),
                    d.version() as u16,
                    d.boot_id(),
                    d.dump_id(),
                    d.dump_type() as u16,
                );
                st.serialize_field("id", &id)?;
                st.serialize_field("generation", &d.generation())?;
                st.serialize_field("kernel_version", &Lossy(d.kernel_version()))?;
                st.serialize_field("packet_count", &packet_count)?;
                st.serialize_field("received", &d.received())?;
                st.serialize_field("missing", &SeqOf(|| d.missing()))?;
                st.serialize_field("zeroed", &SeqOf(|| d.zeroed()))?;
                st.serialize_field("complete", &d.complete())?;
                st.serialize_field("revision", &d.revision())?;
                st.serialize_field("first_seen_ms", &d.first_seen().total_millis())?;
                st.serialize_field("completed_ms", &d.emitted_at().total_millis())?;
                st.serialize_field("cpu", &cpu(d.cpu()))?;
                st.serialize_field("registers", &d.registers().map(RegistersOut))?;
                st.serialize_field("user_blob", &d.user_blob().map(|b| &b[..]))?;
                st.serialize_field("netconsole", &None::<()>)?;
                st.serialize_field("conflicts", &d.conflicts())?;
                st.serialize_field("foreign_port_chunks", &d.foreign_port_chunks())?;
                st.serialize_field("late_chunks", &d.late_chunks())?;
            }
            DumpOut::Netconsole(d) => {
                st.serialize_field(
                    "id",
                    &console_identity(d.notice.source, d.notice.boot, d.notice.crash),
                )?;
                st.serialize_field("generation", &0u32)?;
                st.serialize_field("kernel_version", &Lossy(d.notice.release))?;
                st.serialize_field("packet_count", &packet_count)?;
                st.serialize_field("received", &d.records)?;
                st.serialize_field("missing", &[] as &[(u32, u32)])?;
                st.serialize_field("zeroed", &[] as &[u32])?;
                st.serialize_field("complete", &d.complete())?;
                st.serialize_field("revision", &1u32)?;
                st.serialize_field("first_seen_ms", &d.notice.at.total_millis())?;
                st.serialize_field("completed_ms", &d.emitted_at.total_millis())?;
                st.serialize_field("cpu", &None::<Cpu>)?;
                st.serialize_field("registers", &None::<()>)?;
                st.serialize_field("user_blob", &None::<()>)?;
                let meta = ConsoleMetaOut {
                    extended: d.notice.extended,
                    boot: d.notice.boot,
                    crash: d.notice.crash,
                    crash_line: d.notice.line,
                    release: d.notice.release,
                    missing_seq: d.missing,
                    incomplete_seq: d.incomplete,
                    seq_range: d.seq_range,
                    records: d.records,
                    fields: d.fields,
                    truncated: d.truncated,
                };
                st.serialize_field("netconsole", &Some(meta))?;
                st.serialize_field("conflicts", &0u32)?;
                st.serialize_field("foreign_port_chunks", &0u32)?;
                st.serialize_field("late_chunks", &0u32)?;
            }
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::{EventSink, Reassembler, ReassemblyConfig};
    use crate::time::Instant;
    use crate::upstream::record::{ConsoleMeta, CrashSeen as OwnedCrash, DumpMeta, RegisterSet};
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;
    use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

    fn lossy(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// The bytes the spool holds for a record: postcard of `(record, payload_len)`.
    fn bytes<R: Serialize + ?Sized>(r: &R) -> Vec<u8> {
        let mut out = alloc::vec![0u8; 1 << 16];
        let n = postcard::to_slice(&(r, 77u32), &mut out).unwrap().len();
        out.truncate(n);
        out
    }

    fn owned_registers(r: Option<Registers>) -> Option<RegisterSet> {
        r.map(|r| RegisterSet {
            layout: layout_name(r.layout).to_string(),
            names_values: r.iter().map(|(n, v)| (n.to_string(), v)).collect(),
        })
    }

    fn console_meta(d: &ConsoleDump<'_>) -> ConsoleMeta {
        ConsoleMeta {
            extended: d.notice.extended,
            boot: d.notice.boot,
            crash: d.notice.crash,
            crash_line: lossy(d.notice.line),
            release: lossy(d.notice.release),
            missing_seq: d.missing.to_vec(),
            incomplete_seq: d.incomplete.to_vec(),
            seq_range: d.seq_range,
            records: d.records,
            fields: d.fields.iter().map(|(k, v)| (lossy(k), lossy(v))).collect(),
            truncated: d.truncated,
        }
    }

    #[test]
    fn netconsole_records_encode_as_the_owned_ones() {
        let fields: [(&[u8], &[u8]); 2] = [(b"cpu", b"3"), (b"task\xffname", b"ba\xc3sh")];
        let d = ConsoleDump {
            notice: ConsoleCrash {
                source: "10.1.2.3:6665".parse().unwrap(),
                boot: 2,
                crash: 5,
                line: b"BUG: bad \xe2\x28\xa1 page",
                release: b"6.1.0-18-amd64",
                extended: true,
                at: Instant::from_millis(1234),
            },
            text: b"text",
            missing: &[(3, 9), (12, 12)],
            incomplete: &[40, 41],
            records: 300,
            seq_range: Some((1, 310)),
            fields: &fields,
            truncated: true,
            emitted_at: Instant::from_millis(9876),
        };
        // Netconsole has no packets, header extras or anomalies: the rest stays as `new` has it.
        let owned = Record::Dump(DumpMeta {
            kernel_version: lossy(d.notice.release),
            packet_count: 300 + 8,
            received: 300,
            complete: d.complete(),
            first_seen_ms: 1234,
            completed_ms: 9876,
            netconsole: Some(console_meta(&d)),
            ..DumpMeta::new(console_identity(
                d.notice.source,
                d.notice.boot,
                d.notice.crash,
            ))
        });
        assert_eq!(bytes(&DumpOut::Netconsole(&d)), bytes(&owned));

        let c = ConsoleCrash {
            source: d.notice.source,
            boot: 2,
            crash: 5,
            line: d.notice.line,
            release: b"\xff6.1",
            extended: false,
            at: Instant::from_millis(55),
        };
        let owned = Record::CrashSeen(OwnedCrash {
            id: console_identity(c.source, c.boot, c.crash),
            generation: 0,
            kernel_version: lossy(c.release),
            packet_count: 0,
            packet_no: 0,
            cpu: None,
            registers: None,
            seen_at_ms: 55,
            netconsole: Some(ConsoleMeta {
                extended: false,
                boot: 2,
                crash: 5,
                crash_line: lossy(c.line),
                release: lossy(c.release),
                missing_seq: Vec::new(),
                incomplete_seq: Vec::new(),
                seq_range: None,
                records: 0,
                fields: Vec::new(),
                truncated: false,
            }),
        });
        assert_eq!(bytes(&CrashOut::netconsole(&c)), bytes(&owned));
    }

    /// Compares every crash notice and dump the reassembler emits, serialized both ways.
    #[derive(Default)]
    struct Compare {
        crashes: usize,
        dumps: usize,
    }

    impl EventSink for Compare {
        fn crash_seen(&mut self, c: &CrashSeen<'_>) {
            let d = &c.datagram;
            let owned = Record::CrashSeen(OwnedCrash {
                id: datagram_identity(c.source, d),
                generation: c.generation,
                kernel_version: lossy(d.kernel_version()),
                packet_count: d.packet_count(),
                packet_no: d.packet_no(),
                cpu: cpu(d.cpu()),
                registers: owned_registers(d.registers()),
                seen_at_ms: c.at.total_millis(),
                netconsole: None,
            });
            assert_eq!(bytes(&CrashOut::netoops(c)), bytes(&owned));
            self.crashes += 1;
        }

        fn dump(&mut self, d: &DumpView<'_>) {
            let owned = Record::Dump(DumpMeta {
                id: identity(
                    d.source(),
                    d.version() as u16,
                    d.boot_id(),
                    d.dump_id(),
                    d.dump_type() as u16,
                ),
                generation: d.generation(),
                kernel_version: lossy(d.kernel_version()),
                packet_count: d.packet_count(),
                received: d.received(),
                missing: d.missing().collect(),
                zeroed: d.zeroed().collect(),
                complete: d.complete(),
                revision: d.revision(),
                first_seen_ms: d.first_seen().total_millis(),
                completed_ms: d.emitted_at().total_millis(),
                cpu: cpu(d.cpu()),
                registers: owned_registers(d.registers()),
                user_blob: d.user_blob().map(|b| Vec::from(&b[..])),
                netconsole: None,
                conflicts: d.conflicts(),
                foreign_port_chunks: d.foreign_port_chunks(),
                late_chunks: d.late_chunks(),
            });
            assert_eq!(bytes(&DumpOut::Netoops(d)), bytes(&owned));
            self.dumps += 1;
        }
    }

    #[test]
    fn netoops_records_encode_as_the_owned_ones() {
        let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
        let mut sink = Compare::default();
        for (i, variant) in Variant::ALL.iter().enumerate() {
            let log: Vec<u8> = (0..9000u32).map(|n| b'a' + (n % 26) as u8).collect();
            let m = SenderModel::new(b"older", &log);
            let mut h = DumpHeader::new(*variant, 40 + i as u16, "6.1.0-\u{fffd}x");
            h.registers[0] = 0xdead_beef;
            let source = SocketAddr::from(([10, 9, 0, i as u8], 6666));
            for (_, p) in m.schedule() {
                // Every third packet lost in one dump: missing ranges in the record.
                if i == 1 && p % 3 == 1 {
                    continue;
                }
                let mut buf = [0u8; 2048];
                let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
                let _ = r.handle_datagram(Instant::from_millis(1), source, &buf[..n], &mut sink);
            }
        }
        // A conflicting chunk for the third dump, from its own port and from another: every
        // evidence count non-zero in some record.
        let log: Vec<u8> = (0..9000u32).map(|n| b'a' + (n % 26) as u8).collect();
        let count = SenderModel::new(b"older", &log).packet_count();
        let h = DumpHeader::new(Variant::ALL[2], 42, "6.1.0-\u{fffd}x");
        let mut buf = [0u8; 2048];
        let n = encode(&h, count, 1, &[b'!'; netoops_wire::DATA_LEN], &mut buf).unwrap();
        for port in [6666, 7777] {
            let source = SocketAddr::from(([10, 9, 0, 2], port));
            let _ = r.handle_datagram(Instant::from_millis(2), source, &buf[..n], &mut sink);
        }
        r.flush(Instant::from_millis(100_000), &mut sink);
        assert_eq!((sink.crashes, sink.dumps), (6, 7));
    }
}
