//! The per-packet path never allocates: a counting global allocator watches the reassembler
//! take three rounds of many interleaved dumps, including memory pressure and evictions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler, ReassemblyConfig};
use netoops_core::time::Instant;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

struct Counting;

thread_local! {
    /// Counting is per thread: the test harness's own threads (output capture, the other
    /// test finishing) allocate at any time, and are not the code under test.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not freed while counting, and their peak.
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn add_live(bytes: isize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            add_live(layout.size() as isize);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            add_live(-(layout.size() as isize));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            add_live(new_size as isize - layout.size() as isize);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reads every byte of what it is given, as a delivery queue would, without allocating.
#[derive(Default)]
struct Reader {
    crashes: usize,
    dumps: usize,
    bytes: usize,
}

impl EventSink for Reader {
    fn crash_seen(&mut self, c: &CrashSeen<'_>) {
        self.crashes += 1;
        self.bytes += c.text().len();
    }
    fn dump(&mut self, d: &DumpView<'_>) {
        self.dumps += 1;
        d.write_text(|b| self.bytes += b.len());
        self.bytes += d.missing().count() + d.zeroed().count();
    }
}

#[test]
fn reassembly_does_not_allocate_per_packet() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    ALLOCATIONS.store(0, Ordering::SeqCst);
    const MACHINES: usize = 300;
    let logs: Vec<Vec<u8>> = (0..MACHINES)
        .map(|i| vec![b'a' + (i % 26) as u8; 20_000 + i * 37])
        .collect();
    let models: Vec<SenderModel<'_>> = logs
        .iter()
        .map(|l| SenderModel::new(&l[..l.len() / 3], &l[l.len() / 3..]))
        .collect();
    // Pre-encode everything so only the reassembler runs while counting.
    let mut packets: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for round in 0..3 {
        for p in 0..20u32 {
            for (i, m) in models.iter().enumerate() {
                if p >= m.packet_count() || (p + round + i as u32) % 7 == 0 {
                    continue;
                }
                let h = DumpHeader::new(Variant::ALL[i % 4], i as u16, "6.1");
                let mut buf = vec![0u8; 2048];
                let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
                buf.truncate(n);
                let src = SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8], 6666));
                packets.push((src, buf));
            }
        }
    }
    packets.push((SocketAddr::from(([127, 0, 0, 1], 1)), vec![0xff; 700]));

    // A pool of ~2000 chunks for ~6000 distinct chunks forces flushing and reclaiming.
    let probe = ReassemblyConfig {
        max_dumps: 128,
        ..ReassemblyConfig::default()
    };
    let config = ReassemblyConfig {
        memory_budget: probe.table_bytes() + 2000 * 1100,
        ..probe
    };
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Reader::default();
    set_counting(true);
    for (i, (src, bytes)) in packets.iter().enumerate() {
        let now = Instant::from_micros(i as u64 * 10);
        let _ = r.handle_datagram(now, *src, bytes, &mut sink);
        if i % 500 == 0 {
            r.handle_timeout(now, &mut sink);
        }
    }
    r.handle_timeout(Instant::from_millis(10_000_000), &mut sink);
    set_counting(false);

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0);
    let s = r.stats();
    assert!(s.flushed_for_memory > 0 || s.flushed_for_table > 0, "{s:?}");
    assert!(s.lingering_reclaimed > 0 || s.forgotten_early > 0, "{s:?}");
    assert_eq!(s.malformed_total(), 1);
    assert_eq!(sink.crashes as u64, s.dumps_started);
    assert!(sink.dumps >= MACHINES);
    assert!(r.footprint() <= config.memory_budget);
}

/// The whole `Relay`: netoops and netconsole datagrams in, crash notices and dumps encoded into
/// the spool, written to the stream, acknowledged, and their console lines formatted. The
/// replies the collector would send are encoded before counting starts.
#[test]
fn the_relay_does_not_allocate_per_packet_notice_or_dump() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use core::fmt::Write as _;
    use netoops_core::config::Config;
    use netoops_core::relay::Relay;
    use netoops_core::upstream::record::{encode_reply, Reply};
    use netoops_core::upstream::PROTOCOL_VERSION;
    use netoops_wire::netconsole::{encode_record, RecordSpec};

    const MACHINES: usize = 40;
    // The HTTP endpoint on: every dump is also kept in its RAM ring (small, so it evicts).
    let config = Config::parse(
        "upstream=127.0.0.1:2005 memory=8M max_dumps=64 spool=4M http_port=9100 http_dumps=128K",
    )
    .unwrap();
    let mut relay = Relay::new(config, 7).unwrap();

    // netoops: every machine's whole log, three rounds.
    let logs: Vec<Vec<u8>> = (0..MACHINES)
        .map(|i| {
            let mut l = format!("[    1.000000] machine {i}\n").into_bytes();
            l.resize(6_000 + i * 101, b'x');
            l.extend_from_slice(b"\n[    9.000000] Kernel panic - not syncing: Fatal exception\n");
            l
        })
        .collect();
    let mut netoops: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let m = SenderModel::new(&[], log);
        let h = DumpHeader::new(Variant::ALL[i % 4], i as u16, "6.1.0-\u{fffd}bad");
        for (_, p) in m.schedule() {
            let mut buf = vec![0u8; 2048];
            let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
            buf.truncate(n);
            netoops.push((SocketAddr::from(([10, 3, 0, i as u8], 6666)), buf));
        }
    }
    // netconsole: chatter, then a crash at warning level and more lines (a dump at quiet).
    let mut console: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut scratch = [0u8; 8192];
    for i in 0..MACHINES {
        for seq in 0..30u64 {
            let text = match seq {
                20 => "BUG: kernel NULL pointer dereference, address: 0000000000000008".to_string(),
                _ => format!("machine {i} line {seq} \u{7}bell"),
            };
            let spec = RecordSpec {
                release: Some("6.1.0-18-amd64"),
                level: if seq == 20 { 1 } else { 6 },
                seq,
                usec: 1_000_000 + seq * 1000,
                text: text.as_bytes(),
                fields: &[("cpu", "3"), ("taskname", "bash")],
            };
            let source = SocketAddr::from(([10, 4, 0, i as u8], 6665));
            encode_record(&spec, &mut scratch, |d| console.push((source, d.to_vec())));
        }
    }
    let mut welcome = vec![0u8; 64];
    let n = encode_reply(
        &Reply::Welcome {
            protocol: PROTOCOL_VERSION,
            last_seq: 0,
        },
        &mut welcome,
    )
    .unwrap();
    welcome.truncate(n);
    let acks: Vec<Vec<u8>> = (1..=4 * MACHINES as u64)
        .map(|seq| {
            let mut b = vec![0u8; 32];
            let n = encode_reply(&Reply::Ack { seq }, &mut b).unwrap();
            b.truncate(n);
            b
        })
        .collect();
    let mut wire = vec![0u8; 1 << 20];
    let mut line: heapless::String<512> = heapless::String::new();
    let mut lines = 0usize;
    let mut acked = 0usize;

    let now = Instant::from_millis(1000);
    let idx = relay.link().poll_connect(now).unwrap();
    relay.link().handle_connected(now, idx);
    let _ = relay.link().poll_transmit(now, &mut wire);

    ALLOCATIONS.store(0, Ordering::SeqCst);
    set_counting(true);
    relay.link().handle_input(now, &welcome).unwrap();
    let mut t = now;
    // Frames are counted as they complete on the "stream" (a u32 length prefix, then the
    // body); seqs are given in transmit order from 1, so frame k is acknowledged as seq k.
    let mut prefix = [0u8; 4];
    let mut prefix_have = 0usize;
    let mut body_left = 0usize;
    let mut frames = 0usize;
    let mut step = |relay: &mut Relay, t: Instant| {
        loop {
            let n = relay.link().poll_transmit(t, &mut wire);
            if n == 0 {
                break;
            }
            let mut rest = &wire[..n];
            while !rest.is_empty() {
                if prefix_have < 4 {
                    let k = (4 - prefix_have).min(rest.len());
                    prefix[prefix_have..prefix_have + k].copy_from_slice(&rest[..k]);
                    prefix_have += k;
                    rest = &rest[k..];
                    body_left = u32::from_le_bytes(prefix) as usize;
                    continue;
                }
                let k = body_left.min(rest.len());
                body_left -= k;
                rest = &rest[k..];
                if body_left == 0 {
                    prefix_have = 0;
                    frames += 1;
                }
            }
        }
        while acked < frames {
            relay.link().handle_input(t, &acks[acked]).unwrap();
            acked += 1;
        }
        while let Some(ev) = relay.poll_event() {
            line.clear();
            let _ = write!(line, "{ev}");
            lines += 1;
        }
    };
    for (i, (src, bytes)) in netoops.iter().enumerate() {
        t = now + netoops_core::time::Duration::from_micros(i as u64 * 20);
        let _ = relay.handle_datagram(t, *src, bytes);
        step(&mut relay, t);
    }
    for (i, (src, bytes)) in console.iter().enumerate() {
        t += netoops_core::time::Duration::from_micros(i as u64 % 7);
        let _ = relay.handle_netconsole(t, *src, bytes);
        step(&mut relay, t);
    }
    let later = t + netoops_core::time::Duration::from_secs(600);
    relay.handle_timeout(later);
    for _ in 0..50 {
        step(&mut relay, later);
    }
    set_counting(false);

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0);
    let r = relay.reassembler().stats();
    assert_eq!(r.dumps_complete as usize, MACHINES, "{r:?}");
    let nc = relay.console().stats();
    assert_eq!(
        (nc.crashes as usize, nc.dumps as usize),
        (MACHINES, MACHINES),
        "{nc:?}"
    );
    let l = relay.link().stats();
    assert_eq!(l.queued.crash_seen as usize, 2 * MACHINES);
    assert_eq!(l.queued.dump as usize, 2 * MACHINES);
    assert_eq!(l.delivered.total(), l.queued.total(), "{l:?}");
    assert!(lines >= 8 * MACHINES, "{lines} console lines");
}

/// Serving HTTP: every route, errors, a 431, a dump's text in pieces and a slow request
/// closed at its deadline, with the relay's ring and metrics behind it.
#[test]
fn serving_http_does_not_allocate_per_request() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use netoops_core::config::Config;
    use netoops_core::http::metrics::Metrics;
    use netoops_core::http::{HttpServer, RelaySite, Transmit, REQUEST_TIMEOUT};
    use netoops_core::relay::Relay;

    let config = Config::parse("upstream=127.0.0.1:2005 memory=8M http_port=9100").unwrap();
    let mut relay = Relay::new(config, 7).unwrap();
    for i in 0..5u16 {
        let log = vec![b'a' + i as u8; 30_000];
        let m = SenderModel::new(&[], &log);
        let h = DumpHeader::new(Variant::V3X86_64, i, "6.1.0");
        for (_, p) in m.schedule() {
            let mut buf = [0u8; 2048];
            let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
            let _ = relay.handle_datagram(
                Instant::from_millis(1),
                SocketAddr::from(([10, 5, 0, 1], 6666)),
                &buf[..n],
            );
        }
    }
    let key = relay.dumps().entries().last().unwrap().key.clone();
    let dump_request = format!("GET /dumps/{key} HTTP/1.1\r\n\r\n");
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.resize(3000, b'y');
    let requests: Vec<&[u8]> = vec![
        b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /dumps HTTP/1.1\r\n\r\n",
        dump_request.as_bytes(),
        b"HEAD /metrics HTTP/1.1\r\n\r\n",
        b"GET /dumps/nope HTTP/1.1\r\n\r\n",
        b"GET /dumps/a%20b HTTP/1.1\r\n\r\n",
        b"DELETE /dumps HTTP/1.1\r\n\r\n",
        &long,
    ];
    let mut server = HttpServer::new(4);
    let mut buf = vec![0u8; 1460];
    let extra = |m: &mut Metrics<'_>| m.counter("netoops_x_total", "Extra.", 1);
    let mut sent = 0usize;

    ALLOCATIONS.store(0, Ordering::SeqCst);
    set_counting(true);
    let mut now = Instant::from_millis(10);
    for round in 0..20 {
        for req in &requests {
            let site = RelaySite {
                relay: &relay,
                now,
                wall_ms: Some(1_700_000_000_000),
                extra,
            };
            let id = server.accept(now).unwrap();
            for piece in req.chunks(100) {
                server.handle_input(id, piece);
            }
            while let Transmit::Send(n) = server.poll_transmit(id, now, &site, &mut buf) {
                sent += n;
            }
        }
        // A request that never completes.
        let id = server.accept(now).unwrap();
        server.handle_input(id, b"GET /metr");
        now += REQUEST_TIMEOUT;
        server.handle_timeout(now);
        let site = RelaySite {
            relay: &relay,
            now,
            wall_ms: None,
            extra,
        };
        assert_eq!(
            server.poll_transmit(id, now, &site, &mut buf),
            Transmit::Close,
            "{round}"
        );
    }
    set_counting(false);

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0);
    let s = server.stats();
    assert_eq!(s.responses, [100, 20, 20, 20, 20, 0], "{s:?}");
    assert_eq!(s.request_timeouts, 20);
    assert!(sent > 20 * 30_000, "{sent}");
}

/// Netconsole sources come and go: far more machines than the source table holds chatter in
/// turn, so healthy sources are forgotten and their slots (and table entries) reused. The
/// table must never grow: hashbrown rehashes in place only while at most half full.
#[test]
fn netconsole_source_churn_does_not_allocate() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use netoops_core::netconsole::{
        ConsoleConfig, ConsoleCrash, ConsoleDump, ConsoleSink, ConsoleTracker,
    };
    use netoops_core::time::Duration;
    use netoops_wire::netconsole::{encode_record, RecordSpec};

    struct Count(usize);
    impl ConsoleSink for Count {
        fn crash_seen(&mut self, _: &ConsoleCrash<'_>) {
            self.0 += 1;
        }
        fn dump(&mut self, _: &ConsoleDump<'_>) {
            self.0 += 1;
        }
    }
    for max_sources in [1usize, 7, 64, 100] {
        let mut t = ConsoleTracker::new(ConsoleConfig {
            history_bytes: 4 << 10,
            memory_budget: 1 << 20,
            max_sources,
            ..ConsoleConfig::default()
        });
        let mut scratch = [0u8; 8192];
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        for seq in 0..3u64 {
            let spec = RecordSpec {
                release: None,
                level: 6,
                seq,
                usec: 1_000_000 + seq,
                text: b"eth0: link up",
                fields: &[],
            };
            encode_record(&spec, &mut scratch, |d| datagrams.push(d.to_vec()));
        }
        let mut sink = Count(0);
        let mut now = Instant::from_millis(1);
        // Fill the table once before counting.
        for m in 0..max_sources as u32 {
            let src = SocketAddr::from((m.to_be_bytes(), 6665));
            let _ = t.handle_datagram(now, src, &datagrams[0], &mut sink);
        }
        ALLOCATIONS.store(0, Ordering::SeqCst);
        set_counting(true);
        for round in 0..40u32 {
            now += Duration::from_secs(1);
            for m in 0..(3 * max_sources as u32 + 5) {
                let src = SocketAddr::from(((1000 + round * 977 + m).to_be_bytes(), 6665));
                for d in &datagrams {
                    let _ = t.handle_datagram(now, src, d, &mut sink);
                }
            }
        }
        set_counting(false);
        assert_eq!(
            ALLOCATIONS.load(Ordering::SeqCst),
            0,
            "max_sources {max_sources}: {:?}",
            t.stats()
        );
        assert!(t.sources() <= max_sources);
        assert!(t.stats().datagrams > 0);
    }
}

/// `Relay::footprint` bounds what `Relay::new` takes from the heap (the appliance refuses a
/// configuration whose footprint does not fit its heap, so an underestimate would end in an
/// allocation failure at boot), and does not overstate it much.
#[test]
fn relay_footprint_bounds_what_the_relay_allocates() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let configs: &[&[(&str, &str)]] = &[
        &[],
        &[("memory", "8M"), ("spool", "2M")],
        &[
            ("memory", "2M"),
            ("max_dumps", "256"),
            ("spool", "64K"),
            ("netconsole_memory", "64K"),
        ],
        &[
            ("netconsole_sources", "100000"),
            ("netconsole_history", "1M"),
        ],
        &[
            ("http_port", "8080"),
            ("http_dumps", "8M"),
            ("spool", "64M"),
        ],
        &[
            ("upstream", "10.0.0.1:2005,10.0.0.2:2005,10.0.0.3:2005"),
            ("netconsole_port", "0"),
        ],
    ];
    for keys in configs {
        let mut config = netoops_core::config::Config::default();
        config.set("upstream", "10.0.0.9:2005").unwrap();
        for (k, v) in keys.iter() {
            config.set(k, v).unwrap();
        }
        let footprint = netoops_core::relay::Relay::footprint(&config);
        LIVE.store(0, Ordering::Relaxed);
        PEAK.store(0, Ordering::Relaxed);
        set_counting(true);
        let relay = netoops_core::relay::Relay::new(config, 1);
        set_counting(false);
        let peak = PEAK.load(Ordering::Relaxed) as usize;
        drop(relay.unwrap());
        assert!(
            peak <= footprint,
            "{keys:?}: allocated {peak}, footprint {footprint}"
        );
        assert!(
            footprint <= peak + peak / 4 + (1 << 20),
            "{keys:?}: footprint {footprint} overstates the {peak} allocated"
        );
    }
}
