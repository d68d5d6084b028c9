use super::*;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use netoops_wire::netconsole::{encode_record, is_crash_line, RecordSpec};
use proptest::prelude::*;

/// Source, boot, crash number, line, release.
type Notice = (SocketAddr, u32, u32, Vec<u8>, Vec<u8>);

#[derive(Default)]
struct Collected {
    crashes: Vec<Notice>,
    dumps: Vec<OwnedDump>,
}

#[derive(Debug, Clone)]
struct OwnedDump {
    source: SocketAddr,
    boot: u32,
    crash: u32,
    line: Vec<u8>,
    release: Vec<u8>,
    text: Vec<u8>,
    missing: Vec<(u64, u64)>,
    incomplete: Vec<u64>,
    records: u32,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    complete: bool,
    extended: bool,
}

impl ConsoleSink for Collected {
    fn crash_seen(&mut self, c: &ConsoleCrash<'_>) {
        self.crashes.push((
            c.source,
            c.boot,
            c.crash,
            c.line.to_vec(),
            c.release.to_vec(),
        ));
    }
    fn dump(&mut self, d: &ConsoleDump<'_>) {
        self.dumps.push(OwnedDump {
            source: d.notice.source,
            boot: d.notice.boot,
            crash: d.notice.crash,
            line: d.notice.line.to_vec(),
            release: d.notice.release.to_vec(),
            text: d.text.to_vec(),
            missing: d.missing.to_vec(),
            incomplete: d.incomplete.to_vec(),
            records: d.records,
            fields: d
                .fields
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            complete: d.complete(),
            extended: d.notice.extended,
        });
    }
}

/// A tracker keeping `history_bytes` per source, `memory_budget` for all of its at most
/// `max_sources` sources, and an empty sink for what it emits.
fn tracker_sized(
    history_bytes: usize,
    memory_budget: usize,
    max_sources: usize,
) -> (ConsoleTracker, Collected) {
    let config = ConsoleConfig {
        history_bytes,
        memory_budget,
        max_sources,
        ..ConsoleConfig::default()
    };
    (ConsoleTracker::new(config), Collected::default())
}

/// The usual tracker (the default history, room for 64 sources), and an empty sink.
fn tracker_and_sink() -> (ConsoleTracker, Collected) {
    tracker_sized(ConsoleConfig::default().history_bytes, 4 << 20, 64)
}

fn src(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 6665))
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// The datagrams of one record.
fn record(release: Option<&str>, seq: u64, text: &str, fields: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let spec = RecordSpec {
        release,
        // Crash headers come at warning or above, as the kernel prints them.
        level: if is_crash_line(text.as_bytes()) { 0 } else { 6 },
        seq,
        usec: 1_000_000 + seq * 1000,
        text: text.as_bytes(),
        fields,
    };
    let mut scratch = [0u8; 8192];
    let mut out = Vec::new();
    encode_record(&spec, &mut scratch, |d| out.push(d.to_vec()));
    out
}

fn line(seq: u64, text: &str) -> String {
    let usec = 1_000_000 + seq * 1000;
    format!("[{:5}.{:06}] {text}\n", usec / 1_000_000, usec % 1_000_000)
}

fn feed(t: &mut ConsoleTracker, sink: &mut Collected, from: SocketAddr, ms: u64, d: &[u8]) {
    let _ = t.handle_datagram(at(ms), from, d, sink);
}

#[test]
fn chatter_then_a_crash_becomes_a_notice_and_then_a_dump() {
    let (mut t, mut sink) = tracker_and_sink();
    let mut expected = String::new();
    for seq in 0..20u64 {
        let text = if seq == 0 {
            "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP".to_string()
        } else {
            format!("chatter line {seq}")
        };
        for d in record(None, seq, &text, &[("SUBSYSTEM", "pci")]) {
            feed(&mut t, &mut sink, src(1), seq, &d);
        }
        expected.push_str(&line(seq, &text));
    }
    assert!(sink.crashes.is_empty());
    let crash = [
        "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        "Call Trace:",
        " <TASK>",
        " sysrq_handle_crash+0x16/0x20",
        "Kernel panic - not syncing: Fatal exception",
    ];
    for (i, text) in crash.iter().enumerate() {
        let seq = 20 + i as u64;
        let fields = [("cpu", "1"), ("taskname", "bash")];
        for d in record(Some("6.1.0-18-amd64"), seq, text, &fields) {
            feed(&mut t, &mut sink, src(1), 100, &d);
        }
        expected.push_str(&line(seq, text));
    }
    assert_eq!(sink.crashes.len(), 1, "one notice, at once");
    let (from, boot, n, l, rel) = &sink.crashes[0];
    assert_eq!((*from, *boot, *n), (src(1), 0, 0));
    assert_eq!(l.as_slice(), crash[0].as_bytes());
    assert_eq!(rel.as_slice(), b"6.1.0-18-amd64");
    assert!(sink.dumps.is_empty());
    // Not quiet yet.
    t.handle_timeout(at(3000), &mut sink);
    assert!(sink.dumps.is_empty());
    assert_eq!(t.poll_timeout(), Some(at(3100)));
    t.handle_timeout(at(3100), &mut sink);
    assert_eq!(sink.dumps.len(), 1);
    let d = &sink.dumps[0];
    assert_eq!(String::from_utf8_lossy(&d.text), expected);
    assert!(d.complete && d.extended);
    assert_eq!((d.source, d.boot, d.crash), (src(1), 0, 0));
    assert_eq!(d.records, 25);
    assert_eq!(d.line.as_slice(), crash[0].as_bytes());
    assert_eq!(d.release.as_slice(), b"6.1.0-18-amd64");
    assert_eq!(
        d.fields,
        [
            (b"cpu".to_vec(), b"1".to_vec()),
            (b"taskname".to_vec(), b"bash".to_vec())
        ]
    );
    assert_eq!(t.stats().dumps, 1);
    assert_eq!(t.crashing(), 0);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn healthy_chatter_never_becomes_a_dump_and_stays_within_its_share() {
    let (mut t, mut sink) = tracker_sized(4096, 1 << 20, 8);
    for seq in 0..2000u64 {
        for d in record(None, seq, &format!("all is well {seq}"), &[]) {
            feed(&mut t, &mut sink, src(2), seq, &d);
        }
    }
    t.flush(at(1_000_000), &mut sink);
    assert!(sink.crashes.is_empty() && sink.dumps.is_empty());
    assert!(t.stats().blocks_trimmed > 60);
    assert!(t.block_usage().0 <= 5, "{:?}", t.block_usage());
}

#[test]
fn loss_reordering_and_duplicates() {
    let (mut t, mut sink) = tracker_and_sink();
    // Sent 0..10, 3 and 4 lost, 7 arrives after 9, 5 twice.
    let order = [0u64, 1, 2, 5, 5, 6, 8, 9, 7];
    for &seq in &order {
        let text = if seq == 9 {
            "Kernel panic - not syncing: Attempted to kill init!".to_string()
        } else {
            format!("l{seq}")
        };
        for d in record(None, seq, &text, &[]) {
            feed(&mut t, &mut sink, src(3), 0, &d);
        }
    }
    t.flush(at(10), &mut sink);
    let d = &sink.dumps[0];
    let mut want = String::new();
    for seq in [0u64, 1, 2] {
        want.push_str(&line(seq, &format!("l{seq}")));
    }
    want.push_str("[netconsole: records 3-4 missing]\n");
    for seq in [5u64, 6, 7, 8] {
        want.push_str(&line(seq, &format!("l{seq}")));
    }
    want.push_str(&line(
        9,
        "Kernel panic - not syncing: Attempted to kill init!",
    ));
    assert_eq!(String::from_utf8_lossy(&d.text), want);
    assert_eq!(d.missing, [(3, 4)]);
    assert!(!d.complete);
    assert_eq!(t.stats().duplicates, 1);
}

#[test]
fn fragments_in_any_order_and_a_lost_one_is_marked() {
    let long: String = (0..2600).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let (mut t, mut sink) = tracker_and_sink();
    let mut frags = record(Some("6.6.0"), 1, &long, &[("k", "v")]);
    assert_eq!(frags.len(), 3);
    frags.reverse();
    for d in &frags {
        feed(&mut t, &mut sink, src(4), 0, d);
    }
    // The second record loses its middle fragment.
    let frags2 = record(Some("6.6.0"), 2, &long, &[]);
    feed(&mut t, &mut sink, src(4), 0, &frags2[0]);
    feed(&mut t, &mut sink, src(4), 0, &frags2[2]);
    feed(&mut t, &mut sink, src(4), 0, &frags2[2]); // duplicate fragment
    for d in record(Some("6.6.0"), 3, "Oops: 0002 [#1] SMP", &[]) {
        feed(&mut t, &mut sink, src(4), 0, &d);
    }
    t.flush(at(1), &mut sink);
    let d = &sink.dumps[0];
    let text = String::from_utf8_lossy(&d.text).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], line(1, &long).trim_end());
    // Fragment boundaries of the second record, as the sender cut it.
    let first_len = frags2[0]
        .iter()
        .position(|&b| b == b';')
        .map(|p| frags2[0].len() - p - 1);
    let first_len = first_len.unwrap();
    assert!(lines[1].contains(&format!("[netconsole: bytes {first_len}-")));
    assert!(lines[1].starts_with(&line(2, &long[..first_len])[..14 + first_len]));
    assert_eq!(d.incomplete, [2]);
    assert!(d.missing.is_empty());
    assert_eq!(t.stats().duplicates, 1);
    assert_eq!(t.stats().fragments, 6);
}

#[test]
fn a_reboot_ends_the_crash_and_starts_a_new_boot() {
    let (mut t, mut sink) = tracker_and_sink();
    for seq in 1000..1010u64 {
        for d in record(None, seq, &format!("old {seq}"), &[]) {
            feed(&mut t, &mut sink, src(5), 0, &d);
        }
    }
    for d in record(None, 1010, "Kernel panic - not syncing: x", &[]) {
        feed(&mut t, &mut sink, src(5), 0, &d);
    }
    assert!(sink.dumps.is_empty());
    // The machine reboots: seq starts again from 0.
    for seq in 0..3u64 {
        for d in record(None, seq, &format!("new {seq}"), &[]) {
            feed(&mut t, &mut sink, src(5), 1, &d);
        }
    }
    assert_eq!(sink.dumps.len(), 1, "the reboot emits the dump");
    assert_eq!(sink.dumps[0].records, 11);
    assert_eq!(t.stats().boots, 1);
    for d in record(None, 3, "BUG: soft lockup - CPU#0 stuck for 22s!", &[]) {
        feed(&mut t, &mut sink, src(5), 2, &d);
    }
    t.flush(at(3), &mut sink);
    let d = &sink.dumps[1];
    assert_eq!((d.boot, d.crash), (1, 0));
    assert_eq!(d.records, 4);
    // A repeated seq with another timestamp is a new boot too (seq restarted below the window).
    let (mut t, mut sink) = tracker_and_sink();
    for seq in 0..5u64 {
        for d in record(None, seq, "a", &[]) {
            feed(&mut t, &mut sink, src(6), 0, &d);
        }
    }
    let again = b"6,2,5,-;booted again\n";
    feed(&mut t, &mut sink, src(6), 0, again);
    assert_eq!(t.stats().boots, 1);
    assert_eq!(t.stats().duplicates, 0);
}

#[test]
fn legacy_lines_split_across_datagrams() {
    let (mut t, mut sink) = tracker_and_sink();
    let parts: [&[u8]; 6] = [
        b"[    1.000000] hello\n[    1.100000] e1000: eth0 NIC Link is Up\n",
        b"[    2.000000] BUG: unable to handle page fault for add",
        b"ress: ffffffffc0000000\n[    2.000100] #PF: supervisor write access\n",
        b"[    2.000100] #PF: supervisor write access\n",
        b"[    2.000100] #PF: supervisor write access\n", // identical to the previous: dropped
        b"[    2.100000] Kernel panic - not syncing: Fatal exception\n",
    ];
    for p in parts {
        feed(&mut t, &mut sink, src(7), 0, p);
    }
    assert_eq!(sink.crashes.len(), 1);
    assert_eq!(
        sink.crashes[0].3.as_slice(),
        &b"[    2.000000] BUG: unable to handle page fault for address: ffffffffc0000000"[..]
    );
    t.handle_timeout(at(5000), &mut sink);
    let d = &sink.dumps[0];
    let mut want = Vec::new();
    for p in &parts[..4] {
        want.extend_from_slice(p);
    }
    want.extend_from_slice(parts[5]);
    assert_eq!(d.text, want);
    assert!(!d.extended && d.complete);
    assert_eq!(t.stats().duplicates, 1);
    assert_eq!(t.stats().legacy, 6);
}

#[test]
fn malformed_datagrams_are_counted_by_reason() {
    let (mut t, mut sink) = tracker_and_sink();
    for d in [
        &b""[..],
        b"6,1,x,-;a",
        b"6,1,1,-,ncfrag=9/3;abc",
        b"6,1,2,zz;a",
    ] {
        assert!(t.handle_datagram(at(0), src(8), d, &mut sink).is_err());
    }
    let s = t.stats();
    assert_eq!(s.malformed_total(), 4);
    assert_eq!(s.malformed[NetconsoleError::Usec.index()], 1);
    assert_eq!(s.malformed[NetconsoleError::Fragment.index()], 1);
    assert_eq!(s.malformed[NetconsoleError::Header.index()], 1);
    assert_eq!(s.malformed[NetconsoleError::Empty.index()], 1);
}

#[test]
fn chattering_crowds_do_not_starve_a_crashing_machine() {
    // 64 KiB of pool, 8 KiB history each: a crash first, then 200 chatty machines.
    let (mut t, mut sink) = tracker_sized(8 << 10, 64 << 10, 128);
    let crasher = SocketAddr::from(([10, 9, 9, 9], 6665));
    let mut want = String::new();
    for seq in 0..40u64 {
        let text = format!("before the crash {seq}");
        for d in record(None, seq, &text, &[]) {
            feed(&mut t, &mut sink, crasher, 0, &d);
        }
        want.push_str(&line(seq, &text));
    }
    for d in record(None, 40, "general protection fault: 0000 [#1] SMP", &[]) {
        feed(&mut t, &mut sink, crasher, 0, &d);
    }
    want.push_str(&line(40, "general protection fault: 0000 [#1] SMP"));
    for round in 0..50u64 {
        for m in 0..200u32 {
            let from = SocketAddr::from(([10, 1, (m >> 8) as u8, m as u8], 6665));
            for d in record(None, round, &format!("chatter {round} from {m}"), &[]) {
                feed(&mut t, &mut sink, from, 1, &d);
            }
        }
    }
    for d in record(None, 41, "Kernel panic - not syncing: Fatal exception", &[]) {
        feed(&mut t, &mut sink, crasher, 2, &d);
    }
    want.push_str(&line(41, "Kernel panic - not syncing: Fatal exception"));
    t.handle_timeout(at(10_000), &mut sink);
    assert_eq!(sink.dumps.len(), 1);
    assert_eq!(String::from_utf8_lossy(&sink.dumps[0].text), want);
    assert!(sink.dumps[0].complete);
    assert!(t.stats().sources_evicted > 0);
    assert!(t.stats().blocks_trimmed > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any bytes from any source: no panic, and the memory accounting holds.
    #[test]
    fn arbitrary_datagrams_never_panic(
        dgrams in proptest::collection::vec(
            (0u8..4, proptest::collection::vec(any::<u8>(), 0..1400)), 0..200),
    ) {
        let (mut t, mut sink) = tracker_sized(2048, 16 << 10, 3);
        for (i, (s, mut d)) in dgrams.into_iter().enumerate() {
            // Half of them get a plausible header.
            if i % 2 == 0 {
                let mut h = format!("6,{},{},-;", i % 7, i * 10).into_bytes();
                h.append(&mut d);
                d = h;
            }
            feed(&mut t, &mut sink, src(s), i as u64, &d);
        }
        t.flush(at(1 << 30), &mut sink);
        prop_assert_eq!(t.block_usage().0 <= t.block_usage().1, true);
        prop_assert_eq!(t.crashing(), 0);
    }

    /// Records delivered with loss, duplication and reordering render exactly as the model
    /// says: every received record once, in seq order, gaps marked.
    #[test]
    fn rendering_matches_the_model(
        n in 2u64..60,
        lost in proptest::collection::vec(any::<bool>(), 60),
        swaps in proptest::collection::vec((0usize..60, 0usize..60), 0..20),
        dups in proptest::collection::vec(0usize..60, 0..10),
    ) {
        let (mut t, mut sink) = tracker_and_sink();
        // The crash line is the last record and always arrives.
        let text = |seq: u64| if seq == n - 1 {
            "Kernel panic - not syncing: end".to_string()
        } else {
            format!("record {seq}")
        };
        let mut order: Vec<u64> = (0..n).filter(|&s| s == n - 1 || !lost[s as usize]).collect();
        let len = order.len();
        for (a, b) in swaps {
            order.swap(a % len, b % len);
        }
        for d in dups {
            let s = order[d % len];
            order.push(s);
        }
        for &seq in &order {
            for d in record(None, seq, &text(seq), &[]) {
                feed(&mut t, &mut sink, src(9), 0, &d);
            }
        }
        t.flush(at(1), &mut sink);
        let mut got: Vec<u64> = order.clone();
        got.sort_unstable();
        got.dedup();
        let mut want = String::new();
        let mut missing = Vec::new();
        let mut prev: Option<u64> = None;
        for &s in &got {
            if let Some(p) = prev {
                if s > p + 1 {
                    want.push_str(&format!("[netconsole: records {}-{} missing]\n", p + 1, s - 1));
                    missing.push((p + 1, s - 1));
                }
            }
            want.push_str(&line(s, &text(s)));
            prev = Some(s);
        }
        prop_assert_eq!(sink.dumps.len(), 1);
        prop_assert_eq!(String::from_utf8_lossy(&sink.dumps[0].text).into_owned(), want);
        prop_assert_eq!(&sink.dumps[0].missing, &missing);
    }
}

#[test]
fn the_release_comes_from_the_boot_line_without_a_prefix() {
    let (mut t, mut sink) = tracker_and_sink();
    let lines = [
        "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP",
        "Command line: console=ttyS0",
        "Kernel panic - not syncing: sysrq triggered crash",
    ];
    for (seq, text) in lines.iter().enumerate() {
        for d in record(None, seq as u64, text, &[]) {
            feed(&mut t, &mut sink, src(11), 0, &d);
        }
    }
    t.flush(at(1), &mut sink);
    assert_eq!(sink.dumps[0].release.as_slice(), b"6.1.0-57-amd64");
    assert!(sink.dumps[0].complete);
}

/// Bytes handed to the test's prefetch, and how many calls (a `fn` pointer cannot capture).
static PREFETCHED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static PREFETCH_CALLS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

fn counting_prefetch(bytes: &[u8]) {
    use core::sync::atomic::Ordering::Relaxed;
    PREFETCHED.fetch_add(bytes.len(), Relaxed);
    PREFETCH_CALLS.fetch_add(1, Relaxed);
    history::read_lines(bytes);
}

#[test]
fn the_plugged_prefetch_is_asked_for_known_sources_tails_only() {
    use core::sync::atomic::Ordering::Relaxed;
    let (mut t, mut sink) = tracker_and_sink();
    t.set_prefetch(counting_prefetch);
    let mut sent = 0;
    for seq in 0..10u64 {
        for d in record(None, seq, &format!("line {seq}"), &[]) {
            feed(&mut t, &mut sink, src(1), seq, &d);
            sent += d.len();
        }
    }
    // The first datagram came from an unknown source: nothing to prefetch. Each later one
    // asked for at most its own length (plus the entry header) at the tail.
    let calls = PREFETCH_CALLS.load(Relaxed);
    assert_eq!(calls, 9);
    let bytes = PREFETCHED.load(Relaxed);
    assert!(
        bytes > 0 && bytes <= sent + 9 * history::HEADER_LEN,
        "{bytes} of {sent}"
    );
}

#[test]
fn reading_lines_stays_within_any_slice() {
    let data = [7u8; 300];
    for start in 0..70 {
        for end in start..data.len() {
            history::read_lines(&data[start..end]);
        }
    }
}
