//! Reassembler tests: every sender quirk, the oops-then-panic collision, memory pressure, and a
//! property test of loss, duplication and reordering against the wire crate's receiver model.

extern crate std;

use super::*;
use alloc::string::String;
use alloc::vec::Vec;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};
use netoops_wire::model::{expected, text_log};
use netoops_wire::text::Segment;
use netoops_wire::MAX_DATAGRAM_LEN;
use proptest::prelude::*;

/// What a test sink keeps of one emitted dump.
#[derive(Clone, PartialEq, Eq)]
struct Emitted {
    source: SocketAddr,
    dump_id: u16,
    generation: u32,
    packet_count: u32,
    received: u32,
    complete: bool,
    revision: u32,
    text: Vec<u8>,
    missing: Vec<(u32, u32)>,
    zeroed: Vec<u32>,
    conflicts: u32,
    foreign_port_chunks: u32,
    late_chunks: u32,
}

/// Everything but the text, which would bury a failure's message.
impl core::fmt::Debug for Emitted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} dump {} g{} r{} {}/{} complete {} missing {:?} conflicts {} foreign {} late {} \
             text {} bytes",
            self.source,
            self.dump_id,
            self.generation,
            self.revision,
            self.received,
            self.packet_count,
            self.complete,
            self.missing,
            self.conflicts,
            self.foreign_port_chunks,
            self.late_chunks,
            self.text.len()
        )
    }
}

#[derive(Default)]
struct Collect {
    crashes: Vec<(SocketAddr, u32, u32, Vec<u8>)>,
    dumps: Vec<Emitted>,
}

impl EventSink for Collect {
    fn crash_seen(&mut self, c: &CrashSeen<'_>) {
        self.crashes.push((
            c.source,
            c.generation,
            c.datagram.packet_no(),
            c.text().to_vec(),
        ));
    }
    fn dump(&mut self, d: &DumpView<'_>) {
        let mut text = Vec::new();
        d.write_text(|b| text.extend_from_slice(b));
        assert_eq!(text.len(), d.text_len());
        self.dumps.push(Emitted {
            source: d.source(),
            dump_id: d.dump_id(),
            generation: d.generation(),
            packet_count: d.packet_count(),
            received: d.received(),
            complete: d.complete(),
            revision: d.revision(),
            text,
            missing: d.missing().collect(),
            zeroed: d.zeroed().collect(),
            conflicts: d.conflicts(),
            foreign_port_chunks: d.foreign_port_chunks(),
            late_chunks: d.late_chunks(),
        });
    }
}

fn src(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 6666))
}

fn datagram(h: &DumpHeader, m: &SenderModel<'_>, packet_no: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = encode(
        h,
        m.packet_count(),
        packet_no,
        &m.chunk(packet_no),
        &mut buf,
    )
    .unwrap();
    buf[..n].to_vec()
}

fn small_config() -> ReassemblyConfig {
    ReassemblyConfig {
        memory_budget: 4 << 20,
        max_dumps: 64,
        max_dumps_per_source: 4,
        ..ReassemblyConfig::default()
    }
}

/// A reassembler on [`small_config`] and an empty sink.
fn small() -> (Reassembler, Collect) {
    (
        Reassembler::new(small_config()).unwrap(),
        Collect::default(),
    )
}

/// The budget that gives `slots` chunk slots with `max_dumps` table entries.
fn budget_for(max_dumps: usize, slots: usize) -> usize {
    let c = ReassemblyConfig {
        max_dumps,
        ..small_config()
    };
    c.table_bytes() + c.pool_bytes(slots)
}

/// Sends every (round, packet_no) of the sender's schedule accepted by `keep`.
fn send_all(
    r: &mut Reassembler,
    sink: &mut Collect,
    now: Instant,
    source: SocketAddr,
    h: &DumpHeader,
    m: &SenderModel<'_>,
    keep: impl Fn(u32, u32) -> bool,
) {
    for (round, p) in m.schedule() {
        if keep(round, p) {
            r.handle_datagram(now, source, &datagram(h, m, p), sink)
                .unwrap();
        }
    }
}

#[test]
fn three_rounds_give_one_crash_and_one_complete_dump() {
    for variant in Variant::ALL {
        let mut r = Reassembler::new(small_config()).unwrap();
        let mut sink = Collect::default();
        let (s1, s2) = (text_log(5000, 1), text_log(3000, 2));
        let m = SenderModel::new(&s1, &s2);
        let h = DumpHeader::new(variant, 77, "6.1.0-test");
        send_all(&mut r, &mut sink, Instant::ZERO, src(1), &h, &m, |_, _| {
            true
        });
        assert_eq!(sink.crashes.len(), 1, "{variant:?}");
        // The first packet is the newest 1024 bytes of s2.
        assert_eq!(sink.crashes[0].2, 0);
        assert_eq!(sink.crashes[0].3, &s2[2048..]);
        assert_eq!(sink.dumps.len(), 1);
        let d = &sink.dumps[0];
        let mut whole = s1.clone();
        whole.extend_from_slice(&s2);
        assert_eq!(d.text, whole);
        assert!(d.complete && d.missing.is_empty() && d.zeroed.is_empty());
        assert_eq!((d.revision, d.received, d.packet_count), (1, 8, 8));
        assert_eq!(r.stats().duplicates, 16);
    }
}

#[test]
fn dump_is_emitted_as_soon_as_the_first_round_completes() {
    let (mut r, mut sink) = small();
    let s2 = text_log(2500, 3);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V2, 1, "5.10");
    send_all(
        &mut r,
        &mut sink,
        Instant::ZERO,
        src(1),
        &h,
        &m,
        |round, _| round == 0,
    );
    assert_eq!(sink.dumps.len(), 1);
    assert!(sink.dumps[0].complete);
}

#[test]
fn loss_gives_a_partial_dump_after_the_quiet_period_then_a_newer_revision() {
    let (mut r, mut sink) = small();
    let s2 = text_log(10 * 1024 - 100, 4);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V3X86_64, 9, "6.8");
    let t0 = Instant::from_millis(1000);
    send_all(&mut r, &mut sink, t0, src(2), &h, &m, |_, p| {
        !(3..=5).contains(&p) && p != 8
    });
    assert!(sink.dumps.is_empty());
    let quiet = r.poll_timeout().unwrap();
    assert_eq!(quiet, t0 + Duration::from_secs(3));
    r.handle_timeout(Instant::from_micros(quiet.total_micros() - 1), &mut sink);
    assert!(sink.dumps.is_empty());
    r.handle_timeout(quiet, &mut sink);
    assert_eq!(sink.dumps.len(), 1);
    let d = sink.dumps[0].clone();
    assert!(!d.complete);
    assert_eq!(d.missing, [(3, 5), (8, 8)]);
    assert_eq!(d.received, 6);
    let received = |p: u32| !(3..=5).contains(&p) && p != 8;
    assert_eq!(d.text, expected(&m, received).text);
    let text = String::from_utf8(d.text.clone()).unwrap();
    assert!(text.contains("\n[netoops: packets 8-8 missing]\n"));
    assert!(text.contains("\n[netoops: packets 3-5 missing]\n"));

    // Late packets: one fills a hole but not all, the last completes it.
    let t1 = quiet + Duration::from_secs(1);
    for p in [3, 4, 5] {
        r.handle_datagram(t1, src(2), &datagram(&h, &m, p), &mut sink)
            .unwrap();
    }
    assert_eq!(sink.dumps.len(), 1);
    r.handle_datagram(t1, src(2), &datagram(&h, &m, 8), &mut sink)
        .unwrap();
    assert_eq!(sink.dumps.len(), 2);
    let d2 = &sink.dumps[1];
    assert!(d2.complete);
    assert_eq!(d2.revision, 2);
    assert_eq!(d2.text, s2);
    assert_eq!(r.stats().revisions, 1);
    assert_eq!(sink.crashes.len(), 1);
}

#[test]
fn a_piece_that_is_a_multiple_of_1024_loses_its_first_chunk_to_the_sender_bug() {
    let (mut r, mut sink) = small();
    let (s1, s2) = (text_log(2048, 5), text_log(1500, 6));
    let m = SenderModel::new(&s1, &s2);
    assert!(m.is_zeroed(2));
    let h = DumpHeader::new(Variant::V3X86_64Blob, 3, "6.1");
    send_all(&mut r, &mut sink, Instant::ZERO, src(3), &h, &m, |_, _| {
        true
    });
    let d = &sink.dumps[0];
    assert!(d.complete);
    assert_eq!(d.zeroed, [2]);
    // s1's last 1024 bytes were never sent: the text is s1's first chunk, then s2.
    let mut want = s1[..1024].to_vec();
    want.extend_from_slice(&s2);
    assert_eq!(d.text, want);
}

#[test]
fn an_oops_then_a_panic_in_the_same_second_are_two_dumps() {
    let (mut r, mut sink) = small();
    let h = DumpHeader::new(Variant::V3X86_64, 500, "6.1");
    let oops = text_log(3000, 7);
    // The panic log grew within the same chunk count: only the newest chunk differs.
    let mut panic_log = oops.clone();
    panic_log.truncate(2900);
    panic_log.extend_from_slice(b"Kernel panic - not syncing\n");
    let m1 = SenderModel::new(&[], &oops);
    let m2 = SenderModel::new(&[], &panic_log);
    assert_eq!(m1.packet_count(), m2.packet_count());
    send_all(&mut r, &mut sink, Instant::ZERO, src(4), &h, &m1, |_, _| {
        true
    });
    send_all(&mut r, &mut sink, Instant::ZERO, src(4), &h, &m2, |_, _| {
        true
    });
    // And a third with more packets.
    let bigger = text_log(9000, 8);
    let m3 = SenderModel::new(&[], &bigger);
    send_all(&mut r, &mut sink, Instant::ZERO, src(4), &h, &m3, |_, _| {
        true
    });
    assert_eq!(sink.crashes.len(), 3);
    assert_eq!(sink.dumps.len(), 3);
    assert_eq!(
        sink.dumps.iter().map(|d| d.generation).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(sink.dumps[0].text, oops);
    assert_eq!(sink.dumps[1].text, panic_log);
    assert_eq!(sink.dumps[2].text, bigger);
    assert!(sink.dumps.iter().all(|d| d.complete));
    assert_eq!(r.stats().generations, 2);
}

#[test]
fn malformed_datagrams_are_counted_and_harm_nothing() {
    let (mut r, mut sink) = small();
    let s2 = text_log(4000, 9);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V2, 2, "4.19");
    let good = datagram(&h, &m, 1);
    let mut bad_version = good.clone();
    bad_version[0] = 9;
    let mut bad_no = good.clone();
    bad_no[14..18].copy_from_slice(&99u32.to_le_bytes());
    for junk in [
        &b""[..],
        &good[..100],
        &bad_version,
        &bad_no,
        &[0xff; 1500][..],
    ] {
        assert!(matches!(
            r.handle_datagram(Instant::ZERO, src(5), junk, &mut sink),
            Err(DropReason::Malformed(_))
        ));
    }
    assert_eq!(r.stats().malformed_total(), 5);
    send_all(&mut r, &mut sink, Instant::ZERO, src(5), &h, &m, |_, _| {
        true
    });
    assert_eq!(sink.dumps.len(), 1);
    assert_eq!(sink.dumps[0].text, s2);
}

#[test]
fn memory_pressure_flushes_the_oldest_dump_and_keeps_newest_chunks() {
    let config = ReassemblyConfig {
        max_dumps: 16,
        memory_budget: budget_for(16, 100),
        max_dumps_per_source: 16,
        ..small_config()
    };
    let mut r = Reassembler::new(config).unwrap();
    let slots = r.chunk_usage().1;
    assert!((100..110).contains(&slots), "{slots}");
    let mut sink = Collect::default();
    // Eight machines with 40-packet logs, interleaved round by round: 320 chunks for ~100 slots.
    let logs: Vec<Vec<u8>> = (0..8).map(|i| text_log(40 * 1024 - 10, i)).collect();
    let models: Vec<SenderModel<'_>> = logs.iter().map(|l| SenderModel::new(&[], l)).collect();
    let headers: Vec<DumpHeader> = (0..8)
        .map(|i| DumpHeader::new(Variant::V3X86_64, i, "6.1"))
        .collect();
    for p in 0..40 {
        for i in 0..8u8 {
            let d = datagram(&headers[i as usize], &models[i as usize], p);
            let _ = r.handle_datagram(Instant::ZERO, src(10 + i), &d, &mut sink);
        }
    }
    r.flush(Instant::ZERO, &mut sink);
    assert!(r.stats().flushed_for_memory > 0);
    assert!(r.chunk_usage().0 <= slots);
    // Every machine's dump was emitted, and every dump kept its newest text: whatever is
    // missing is a single run that ends at the oldest packet.
    for i in 0..8u8 {
        let first = sink.dumps.iter().find(|d| d.source == src(10 + i)).unwrap();
        assert!(first.received > 0);
        match first.missing.as_slice() {
            [] => {}
            [(lo, hi)] => assert_eq!((*lo, *hi), (first.received, 39)),
            other => panic!("newest chunks lost: {other:?}"),
        }
        assert_eq!(
            first.text.len(),
            expected(&models[i as usize], |p| p < first.received)
                .text
                .len()
        );
    }
    assert_eq!(sink.crashes.len(), 8);
}

#[test]
fn one_dump_larger_than_the_pool_keeps_its_newest_chunks() {
    let config = ReassemblyConfig {
        max_dumps: 4,
        memory_budget: budget_for(4, 64),
        ..small_config()
    };
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Collect::default();
    let s2 = text_log(100 * 1024, 1);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V2, 4, "6.1");
    for (_, p) in m.schedule() {
        let _ = r.handle_datagram(Instant::ZERO, src(20), &datagram(&h, &m, p), &mut sink);
    }
    r.flush(Instant::ZERO, &mut sink);
    let d = &sink.dumps[0];
    assert_eq!(d.received, 64);
    assert_eq!(d.missing, [(64, 99)]);
    assert_eq!(r.stats().dropped_no_memory, 3 * 36);
}

#[test]
fn one_source_cannot_take_the_table() {
    let (mut r, mut sink) = small();
    let s2 = text_log(3000, 2);
    let m = SenderModel::new(&[], &s2);
    // A sender spraying dump ids: each starts a dump that never completes. Claims just
    // opened are held; past the hold (375 ms), the least recently active one gives way.
    for id in 0..50u16 {
        let h = DumpHeader::new(Variant::V2, id, "x");
        let _ = r.handle_datagram(Instant::ZERO, src(30), &datagram(&h, &m, 0), &mut sink);
    }
    assert_eq!(r.dumps_held(), 4);
    assert_eq!(r.stats().refused_source_cap, 46);
    let t = Instant::from_millis(375);
    for id in 50..60u16 {
        let h = DumpHeader::new(Variant::V2, id, "x");
        let _ = r.handle_datagram(t, src(30), &datagram(&h, &m, 0), &mut sink);
    }
    assert_eq!(r.dumps_held(), 4);
    assert_eq!(r.stats().flushed_for_source_cap, 4);
    assert_eq!(r.stats().refused_source_cap, 46 + 6);
    // Another machine is unaffected.
    let h = DumpHeader::new(Variant::V2, 1, "y");
    send_all(&mut r, &mut sink, Instant::ZERO, src(31), &h, &m, |_, _| {
        true
    });
    assert!(sink.dumps.iter().any(|d| d.source == src(31) && d.complete));
}

#[test]
fn lingering_dumps_absorb_later_rounds_then_are_forgotten() {
    let (mut r, mut sink) = small();
    let s2 = text_log(2000, 3);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V2, 8, "x");
    send_all(
        &mut r,
        &mut sink,
        Instant::ZERO,
        src(40),
        &h,
        &m,
        |round, _| round == 0,
    );
    let t = Instant::from_millis(10_000);
    send_all(&mut r, &mut sink, t, src(40), &h, &m, |round, _| round == 1);
    assert_eq!(sink.dumps.len(), 1);
    assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(30)));
    r.handle_timeout(t + Duration::from_secs(30), &mut sink);
    assert_eq!(r.dumps_held(), 0);
    assert_eq!(r.chunk_usage().0, 0);
    // The same dump sent again much later is a new crash report.
    send_all(
        &mut r,
        &mut sink,
        t + Duration::from_secs(60),
        src(40),
        &h,
        &m,
        |_, _| true,
    );
    assert_eq!(sink.dumps.len(), 2);
}

#[test]
fn segments_put_gaps_between_text_in_log_order() {
    let (mut r, mut sink) = small();
    let s2 = text_log(5 * 1024, 3);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V2, 8, "x");
    send_all(&mut r, &mut sink, Instant::ZERO, src(41), &h, &m, |_, p| {
        p == 1 || p == 2
    });
    struct Segs(Vec<String>);
    impl EventSink for Segs {
        fn crash_seen(&mut self, _: &CrashSeen<'_>) {}
        fn dump(&mut self, d: &DumpView<'_>) {
            for s in d.segments() {
                self.0.push(match s {
                    Segment::Text(t) => alloc::format!("text {}", t.len()),
                    Segment::Gap { first, last } => alloc::format!("gap {first}-{last}"),
                });
            }
        }
    }
    let mut segs = Segs(Vec::new());
    r.flush(Instant::ZERO, &mut segs);
    assert_eq!(segs.0, ["gap 3-4", "text 1024", "text 1024", "gap 0-0"]);
}

// Spoofed traffic (issue 14): netoops is unauthenticated UDP, so a spoofer can open dumps and
// send chunks under any address. These hold what the reassembler promises against it.

/// A real machine's address and its 59-packet dump.
const REAL: ([u8; 4], u16) = ([10, 0, 0, 5], 6666);

fn real_source() -> SocketAddr {
    SocketAddr::from(REAL)
}

/// A spoofed datagram: packet 0 of a dump `dump_id` that claims `count` packets.
fn spoofed(count: u32, dump_id: u16) -> Vec<u8> {
    let h = DumpHeader::new(Variant::V3X86_64, dump_id, "6.1");
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = encode(&h, count, 0, &[b'X'; DATA_LEN], &mut buf).unwrap();
    buf[..n].to_vec()
}

/// What reached the sink about the real machine, and the counters.
struct StormResult {
    sink: Collect,
    stats: ReassemblyStats,
    log: Vec<u8>,
}

impl StormResult {
    fn real_dumps(&self) -> Vec<&Emitted> {
        self.sink
            .dumps
            .iter()
            .filter(|d| d.source == real_source())
            .collect()
    }
}

/// The real machine sends its 59-packet dump, three rounds, one packet every `gap_us`; between
/// two of its packets `per_gap` spoofed datagrams arrive, the i-th from the address and with the
/// dump id `spoof(i)` gives, each opening a dump of its own that claims 4,096 packets.
fn storm_against_a_real_dump(
    config: ReassemblyConfig,
    gap_us: u64,
    per_gap: usize,
    spoof: impl Fn(usize) -> (SocketAddr, u16),
) -> StormResult {
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Collect::default();
    let log = text_log(59 * 1024 - 300, 11);
    let m = SenderModel::new(&[], &log);
    assert_eq!(m.packet_count(), 59);
    let h = DumpHeader::new(Variant::V3X86_64, 777, "6.1.0-real");
    let mut t = 1_000_000u64;
    let mut i = 0usize;
    let mut fake = (u16::MAX, Vec::new());
    for (_, p) in m.schedule() {
        // A packet that would open the dump may be refused while the spoofer's claims are
        // held; a later one, or a later round, gets in.
        let _ = r.handle_datagram(
            Instant::from_micros(t),
            real_source(),
            &datagram(&h, &m, p),
            &mut sink,
        );
        for k in 0..per_gap {
            let at = Instant::from_micros(t + (k as u64 + 1) * gap_us / (per_gap as u64 + 1));
            let (source, dump_id) = spoof(i);
            if fake.0 != dump_id {
                fake = (dump_id, spoofed(4096, dump_id));
            }
            let _ = r.handle_datagram(at, source, &fake.1, &mut sink);
            i += 1;
        }
        t += gap_us;
        r.handle_timeout(Instant::from_micros(t), &mut sink);
    }
    r.handle_timeout(Instant::from_micros(t) + Duration::from_secs(4), &mut sink);
    StormResult {
        sink,
        stats: *r.stats(),
        log,
    }
}

/// The real dump went upstream once, complete, with its own text and nothing flagged.
fn assert_real_dump_intact(res: &StormResult, what: &str) {
    let real = res.real_dumps();
    assert_eq!(real.len(), 1, "{what}: {real:?}");
    let d = real[0];
    assert!(d.complete, "{what}: {d:?}");
    assert_eq!(d.text, res.log, "{what}");
    assert_eq!((d.revision, d.conflicts, d.foreign_port_chunks), (1, 0, 0));
    let crashes = res
        .sink
        .crashes
        .iter()
        .filter(|c| c.0 == real_source())
        .count();
    assert_eq!(crashes, 1, "{what}");
}

#[test]
fn a_spoofed_storm_of_4096_packet_claims_cannot_evict_a_dump_in_progress() {
    // The measured attack: ~2,000 datagrams/s from spoofed addresses, each a new dump claiming
    // 4,096 packets, while a real machine sends a 59-packet dump a packet every 20 ms. Then
    // 5,000/s. The relay's default budget: 64 MiB, 4,096 dumps. (Above 4,096 new dumps
    // per claim hold, ~11,000/s, the table holds only claims too young to give way: new dumps
    // are refused, and a completed dump may be forgotten before its later rounds, which then
    // report it again; README, what a spoofer can still do.)
    for per_gap in [40, 100] {
        let res = storm_against_a_real_dump(ReassemblyConfig::default(), 20_000, per_gap, |i| {
            let ip = [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
            (SocketAddr::from((ip, 6666)), 1000)
        });
        let what = alloc::format!("{} spoofed datagrams/s", per_gap * 50);
        assert_real_dump_intact(&res, &what);
        // The storm did fill the table: claims displaced one another.
        assert!(res.stats.flushed_for_table > 0, "{what}: {:?}", res.stats);
        assert_eq!(res.stats.dropped_late, 0, "{what}");
    }
}

#[test]
fn a_spoofed_quota_from_the_same_address_does_not_shred_a_dump_in_progress() {
    // 200 datagrams/s from the real machine's address, another port, each a new dump: the
    // per-source cap (8) is reached all along. Then 2,000/s.
    for per_gap in [4, 40] {
        let res = storm_against_a_real_dump(ReassemblyConfig::default(), 20_000, per_gap, |i| {
            (SocketAddr::from((REAL.0, 7777)), 1000 + i as u16)
        });
        let what = alloc::format!("{} spoofed datagrams/s", per_gap * 50);
        assert_real_dump_intact(&res, &what);
        assert!(
            res.stats.flushed_for_source_cap > 0,
            "{what}: {:?}",
            res.stats
        );
        assert_eq!(res.stats.dropped_late, 0, "{what}");
    }
}

#[test]
fn a_source_at_its_cap_is_refused_a_new_dump_but_reclaims_its_emitted_ones() {
    let (mut r, mut sink) = small();
    let s2 = text_log(5 * 1024 - 10, 4);
    let m = SenderModel::new(&[], &s2);
    let t = Instant::ZERO;
    // Four dumps in progress from one address (the cap), two packets each.
    for id in 0..4u16 {
        let h = DumpHeader::new(Variant::V2, id, "x");
        for p in [0, 1] {
            r.handle_datagram(t, src(70), &datagram(&h, &m, p), &mut sink)
                .unwrap();
        }
    }
    let fifth = DumpHeader::new(Variant::V2, 9, "x");
    assert_eq!(
        r.handle_datagram(t, src(70), &datagram(&fifth, &m, 0), &mut sink),
        Err(DropReason::SourceCap)
    );
    assert_eq!(r.stats().refused_source_cap, 1);
    assert!(sink.dumps.is_empty() && sink.crashes.len() == 4);
    // The first completes (an oops): emitted, it lingers, and once its rounds are over
    // (quiet for 375 ms) it gives its place to the panic.
    let h0 = DumpHeader::new(Variant::V2, 0, "x");
    send_all(&mut r, &mut sink, t, src(70), &h0, &m, |_, p| p >= 2);
    assert_eq!(sink.dumps.len(), 1);
    assert_eq!(
        r.handle_datagram(t, src(70), &datagram(&fifth, &m, 0), &mut sink),
        Err(DropReason::SourceCap)
    );
    let later = t + Duration::from_millis(375);
    assert_eq!(
        r.handle_datagram(later, src(70), &datagram(&fifth, &m, 0), &mut sink),
        Ok(Accepted::NewDump)
    );
    assert_eq!(r.dumps_held(), 4);
    assert_eq!(r.stats().forgotten_early, 1);
    assert_eq!(r.stats().refused_source_cap, 2);
}

#[test]
fn a_dump_in_progress_is_not_displaced_when_the_table_is_full_of_dumps_in_progress() {
    let config = ReassemblyConfig {
        max_dumps: 4,
        max_dumps_per_source: 4,
        ..small_config()
    };
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Collect::default();
    let s2 = text_log(5 * 1024 - 10, 5);
    let m = SenderModel::new(&[], &s2);
    for i in 0..4u8 {
        let h = DumpHeader::new(Variant::V2, 1, "x");
        for p in [0, 1] {
            r.handle_datagram(Instant::ZERO, src(80 + i), &datagram(&h, &m, p), &mut sink)
                .unwrap();
        }
    }
    let h = DumpHeader::new(Variant::V2, 1, "x");
    assert_eq!(
        r.handle_datagram(Instant::ZERO, src(90), &datagram(&h, &m, 0), &mut sink),
        Err(DropReason::TableFull)
    );
    assert_eq!(r.stats().refused_table_full, 1);
    for i in 0..4u8 {
        send_all(
            &mut r,
            &mut sink,
            Instant::ZERO,
            src(80 + i),
            &h,
            &m,
            |_, p| p >= 2,
        );
    }
    assert_eq!(sink.dumps.len(), 4);
    assert!(sink.dumps.iter().all(|d| d.complete && d.text == s2));
}

/// An honest storm, as the bench's (1,000 machines x 128 KiB, three rounds interleaved packet
/// by packet) at a third of the scale: 300 machines x 40 KiB. Returns the emitted dumps.
fn honest_storm(config: ReassemblyConfig) -> (Collect, ReassemblyStats) {
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Collect::default();
    let logs: Vec<Vec<u8>> = (0..300u32).map(|m| text_log(40 * 1024, m as u8)).collect();
    let models: Vec<SenderModel<'_>> = logs
        .iter()
        .enumerate()
        .map(|(m, l)| {
            let split = (m * 7919) % l.len();
            SenderModel::new(&l[..split], &l[split..])
        })
        .collect();
    let mut t = 0;
    for _round in 0..3 {
        for p in 0..42 {
            for (m, model) in models.iter().enumerate() {
                if p >= model.packet_count() {
                    continue;
                }
                let mut h = DumpHeader::new(Variant::V3X86_64Blob, m as u16, "6.1.0-storm");
                h.boot_id = m as u32;
                let source = SocketAddr::from(([10, 0, (m / 250) as u8, (m % 250) as u8], 6666));
                let now = Instant::from_micros(t);
                let _ = r.handle_datagram(now, source, &datagram(&h, model, p), &mut sink);
                t += 1;
            }
        }
    }
    r.handle_timeout(Instant::from_micros(t) + Duration::from_secs(4), &mut sink);
    (sink, *r.stats())
}

#[test]
fn an_honest_storm_is_reported_once_per_machine_within_budget_or_not() {
    // Room for every chunk: every dump complete.
    let (sink, stats) = honest_storm(ReassemblyConfig {
        max_dumps: 512,
        memory_budget: budget_for(512, 300 * 42),
        ..small_config()
    });
    assert_eq!(sink.dumps.len(), 300);
    assert!(sink.dumps.iter().all(|d| d.complete), "{stats:?}");
    // A pool for a quarter of it (an index too small for every table): dumps are flushed as
    // partial for memory, but nothing is refused and no machine is reported twice (claims that
    // could not grow, and emitted claims, keep their entries and take their later packets as
    // late).
    let (sink, stats) = honest_storm(ReassemblyConfig {
        max_dumps: 512,
        memory_budget: budget_for(512, 300 * 42 / 4),
        ..small_config()
    });
    assert!(stats.flushed_for_memory > 0, "{stats:?}");
    assert_eq!(stats.refused_total(), 0, "{stats:?}");
    assert_eq!(
        (sink.crashes.len(), sink.dumps.len()),
        (300, 300),
        "{stats:?}"
    );
    assert!(sink.dumps.iter().any(|d| d.complete));
}

/// A chunk of `h`'s dump with forged text.
fn forged(h: &DumpHeader, count: u32, packet_no: u32) -> Vec<u8> {
    let mut chunk = [0u8; DATA_LEN];
    chunk[..17].copy_from_slice(b"forged: all well\n");
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = encode(h, count, packet_no, &chunk, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn holds_forged_text(d: &Emitted) -> bool {
    d.text.windows(6).any(|w| w == b"forged")
}

#[test]
fn a_forged_chunk_sent_ahead_of_the_real_one_is_flagged() {
    let (mut r, mut sink) = small();
    let s2 = text_log(8 * 1024 - 50, 12);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V3X86_64, 5, "6.1");
    let t = Instant::from_millis(1000);
    // The oldest chunk (sent last in each round) forged and sent first: the real round 1
    // completes the dump around it.
    r.handle_datagram(t, src(90), &forged(&h, 8, 7), &mut sink)
        .unwrap();
    send_all(&mut r, &mut sink, t, src(90), &h, &m, |_, _| true);
    r.handle_timeout(t + Duration::from_secs(4), &mut sink);

    let forged_dumps: Vec<&Emitted> = sink.dumps.iter().filter(|d| holds_forged_text(d)).collect();
    assert!(!forged_dumps.is_empty());
    // Its first emission could not know; the newest revision, the one the collector keeps,
    // carries the conflict.
    let last = forged_dumps.iter().max_by_key(|d| d.revision).unwrap();
    assert_eq!((last.generation, last.revision), (0, 2));
    assert!(last.complete);
    assert_eq!(last.conflicts, 1);
    // The real chunk started a generation of its own, which the later rounds completed.
    let real: Vec<&Emitted> = sink.dumps.iter().filter(|d| d.generation == 1).collect();
    assert_eq!(real.len(), 1);
    assert!(real[0].complete);
    assert_eq!(real[0].text, s2);
    assert_eq!(real[0].conflicts, 1);
    assert_eq!(r.stats().conflicts, 1);
}

#[test]
fn forged_hole_fills_are_flagged() {
    let (mut r, mut sink) = small();
    let s2 = text_log(8 * 1024 - 50, 13);
    let m = SenderModel::new(&[], &s2);
    let h = DumpHeader::new(Variant::V3X86_64, 6, "6.1");
    let lost = |p: u32| p == 3 || p == 4;
    let t0 = Instant::from_millis(1000);
    send_all(&mut r, &mut sink, t0, src(91), &h, &m, |_, p| !lost(p));
    let t1 = t0 + Duration::from_secs(4);
    r.handle_timeout(t1, &mut sink);
    assert_eq!(sink.dumps.len(), 1);
    assert_eq!(sink.dumps[0].missing, [(3, 4)]);

    // From another port of the machine's address: kept apart, and both dumps say so.
    r.handle_datagram(
        t1,
        SocketAddr::from(([127, 0, 0, 91], 7777)),
        &forged(&h, 8, 3),
        &mut sink,
    )
    .unwrap();
    r.handle_datagram(
        t1,
        SocketAddr::from(([127, 0, 0, 91], 7777)),
        &forged(&h, 8, 4),
        &mut sink,
    )
    .unwrap();
    let t2 = t1 + Duration::from_secs(4);
    r.handle_timeout(t2, &mut sink);
    let real: Vec<&Emitted> = sink.dumps.iter().filter(|d| d.source == src(91)).collect();
    assert_eq!(real.len(), 2, "{real:?}");
    assert!(real.iter().all(|d| !d.complete && !holds_forged_text(d)));
    assert_eq!((real[1].revision, real[1].foreign_port_chunks), (2, 2));
    let other: Vec<&Emitted> = sink
        .dumps
        .iter()
        .filter(|d| d.source.port() == 7777)
        .collect();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].foreign_port_chunks, 6);
    assert_eq!(r.stats().foreign_port_chunks, 2);

    // From the machine's own address and port: indistinguishable from late packets, so the
    // dump completes, and says it was completed after it went upstream.
    for p in [3, 4] {
        r.handle_datagram(t2, src(91), &forged(&h, 8, p), &mut sink)
            .unwrap();
    }
    let filled = sink.dumps.last().unwrap();
    assert!(filled.complete && holds_forged_text(filled));
    assert_eq!((filled.revision, filled.late_chunks), (3, 2));
    // A real copy of a filled packet arriving after that is a conflict, and the dump holding
    // the forgery goes upstream once more with it.
    r.handle_datagram(t2, src(91), &datagram(&h, &m, 3), &mut sink)
        .unwrap();
    r.handle_timeout(t2 + Duration::from_secs(4), &mut sink);
    let last = sink
        .dumps
        .iter()
        .filter(|d| d.source == src(91) && d.generation == 0)
        .max_by_key(|d| d.revision)
        .unwrap();
    assert_eq!((last.revision, last.conflicts), (4, 1));
    assert!(holds_forged_text(last));
}

/// A network event applied to the sender's schedule.
#[derive(Clone, Debug)]
struct Net {
    loss: Vec<bool>,
    dup: Vec<bool>,
    swaps: Vec<(usize, usize)>,
}

fn arb_case() -> impl Strategy<Value = (Vec<u8>, usize, Variant, Net)> {
    (1usize..20_000, any::<u8>(), 0usize..4).prop_flat_map(|(len, seed, v)| {
        let sends = 3 * len.div_ceil(1024) + 6;
        (
            Just(text_log(len, seed)),
            0..=len,
            Just(Variant::ALL[v]),
            (
                proptest::collection::vec(proptest::bool::weighted(0.4), sends),
                proptest::collection::vec(proptest::bool::weighted(0.1), sends),
                proptest::collection::vec((0..sends, 0..sends), 0..20),
            )
                .prop_map(|(loss, dup, swaps)| Net { loss, dup, swaps }),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any log, split anywhere, sent with the exact pattern through loss, duplication and
    /// reordering: the emitted text and missing ranges are exactly what the model predicts.
    #[test]
    fn reassembly_matches_the_receiver_model((whole, split, variant, net) in arb_case()) {
        let (s1, s2) = whole.split_at(split);
        let m = SenderModel::new(s1, s2);
        let h = DumpHeader::new(variant, 42, "6.1.0-prop");
        let mut order: Vec<u32> = Vec::new();
        for (i, (_, p)) in m.schedule().enumerate() {
            if !net.loss[i] {
                order.push(p);
                if net.dup[i] {
                    order.push(p);
                }
            }
        }
        for &(a, b) in &net.swaps {
            if a < order.len() && b < order.len() {
                order.swap(a, b);
            }
        }
        let mut r = Reassembler::new(small_config()).unwrap();
        let mut sink = Collect::default();
        for &p in &order {
            r.handle_datagram(Instant::ZERO, src(50), &datagram(&h, &m, p), &mut sink).unwrap();
        }
        r.flush(Instant::ZERO, &mut sink);
        let got: std::collections::BTreeSet<u32> = order.iter().copied().collect();
        if got.is_empty() {
            prop_assert!(sink.dumps.is_empty());
            prop_assert!(sink.crashes.is_empty());
        } else {
            let want = expected(&m, |p| got.contains(&p));
            prop_assert_eq!(sink.crashes.len(), 1);
            prop_assert_eq!(sink.dumps.len(), 1);
            let d = &sink.dumps[0];
            prop_assert_eq!(&d.text, &want.text);
            prop_assert_eq!(&d.missing, &want.missing);
            prop_assert_eq!(&d.zeroed, &want.zeroed);
            prop_assert_eq!(d.received, want.received);
            prop_assert_eq!(d.complete, want.complete);
        }
    }

    /// Random bytes never panic and are always counted.
    #[test]
    fn garbage_is_counted(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut r = Reassembler::new(small_config()).unwrap();
        let mut sink = Collect::default();
        let result = r.handle_datagram(Instant::ZERO, src(60), &bytes, &mut sink);
        prop_assert_eq!(result.is_err(), r.stats().malformed_total() == 1);
    }
}

/// One step of a hostile mix: a real or forged datagram from one of a few addresses and
/// ports, or time passing.
#[derive(Clone, Debug)]
enum Step {
    Datagram {
        ip: u8,
        port: u8,
        dump: u8,
        packet: u8,
        forged: bool,
    },
    Wait(u16),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..3, 0u8..2, 0u8..3, any::<u8>(), proptest::bool::weighted(0.03)).prop_map(
            |(ip, port, dump, packet, forged)| Step::Datagram {
                ip,
                port,
                dump,
                packet,
                forged
            }
        ),
        1 => (0u16..2000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any mix of real, forged and spoofed datagrams under a tight table (6), pool (64 chunks)
    /// and per-source cap (3): every index stays consistent with the entries, every crash
    /// notice is a started dump, and every started dump is emitted by the end.
    #[test]
    fn hostile_mixes_keep_every_index_consistent(
        one_address in any::<bool>(),
        steps in proptest::collection::vec(arb_step(), 1..800),
    ) {
        let config = ReassemblyConfig {
            max_dumps: 6,
            max_dumps_per_source: 3,
            memory_budget: budget_for(6, 64),
            quiet_timeout: Duration::from_millis(800),
            linger: Duration::from_secs(3),
            ..small_config()
        };
        let mut r = Reassembler::new(config).unwrap();
        let mut sink = Collect::default();
        let logs: Vec<Vec<u8>> = (0..3u8).map(|i| text_log(usize::from(i) * 40_000 + 900, i)).collect();
        let mut now = Instant::from_millis(1);
        for step in steps {
            match step {
                Step::Datagram { ip, port, dump, packet, forged: fake } => {
                    let log = &logs[usize::from(dump)];
                    let m = SenderModel::new(&[], log);
                    let h = DumpHeader::new(Variant::V3X86_64, u16::from(dump), "6.1");
                    let p = u32::from(packet) % m.packet_count();
                    let bytes = if fake {
                        forged(&h, m.packet_count(), p)
                    } else {
                        datagram(&h, &m, p)
                    };
                    // From one sender, the pool runs short; from three addresses, the table.
                    let (ip, port) = if one_address { (0, 0) } else { (ip, port) };
                    let source = SocketAddr::from(([127, 0, 0, ip], 6000 + u16::from(port)));
                    let _ = r.handle_datagram(now, source, &bytes, &mut sink);
                }
                Step::Wait(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    r.handle_timeout(now, &mut sink);
                }
            }
            r.check_consistency();
        }
        r.flush(now, &mut sink);
        r.check_consistency();
        let s = r.stats();
        prop_assert_eq!(sink.crashes.len() as u64, s.dumps_started);
        prop_assert_eq!(s.dumps_complete + s.dumps_partial, sink.dumps.len() as u64);
        prop_assert_eq!(r.dumps_assembling(), 0);
    }
}
