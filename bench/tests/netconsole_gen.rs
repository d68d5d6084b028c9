//! `netoops-gen --protocol netconsole` end to end: what it sends, decoded by a small netconsole
//! reassembler written here from the relay's rules (independent of the generator's own
//! `RelayView`), and by the relay core's own `ConsoleTracker`, must be what its expectation
//! files say; healthy machines never crash; the same seed sends the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netoops_bench::gen::expect::{NcExpectation, NC_KEY};
use netoops_bench::gen::{
    ExpectSummary, LossModel, NetconsoleParams, Protocol, Scenario, Schedule, Timing,
};
use netoops_core::netconsole::{
    ConsoleConfig, ConsoleCrash, ConsoleDump, ConsoleSink, ConsoleTracker,
};
use netoops_core::time::Instant;
use netoops_wire::netconsole::is_crash_line;

const GEN: &str = env!("CARGO_BIN_EXE_netoops-gen");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("netoops-gen-nc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_gen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(GEN).args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "netoops-gen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One parsed extended datagram.
struct Ext {
    level: u64,
    seq: u64,
    usec: u64,
    /// (offset, total) for a fragment.
    frag: Option<(usize, usize)>,
    release: Option<String>,
    body: Vec<u8>,
}

/// Parses `[release,]level,seq,usec,flags[,k=v...];body` by hand; `None` for legacy text.
fn parse_ext(d: &[u8]) -> Option<Ext> {
    let semi = d.iter().position(|&b| b == b';')?;
    if d[..semi].contains(&b'\n') {
        return None;
    }
    let header = std::str::from_utf8(&d[..semi]).ok()?;
    let fields: Vec<&str> = header.split(',').collect();
    let flags = fields.iter().position(|f| *f == "-" || *f == "c")?;
    if !(3..=4).contains(&flags) {
        return None;
    }
    let num = |s: &str| s.parse::<u64>().ok();
    let (level, seq, usec) = (
        num(fields[flags - 3])?,
        num(fields[flags - 2])?,
        num(fields[flags - 1])?,
    );
    let release = (flags == 4).then(|| fields[0].to_string());
    let mut frag = None;
    for f in &fields[flags + 1..] {
        if let Some(v) = f.strip_prefix("ncfrag=") {
            let (o, t) = v.split_once('/')?;
            frag = Some((o.parse().ok()?, t.parse().ok()?));
        }
    }
    Some(Ext {
        level,
        seq,
        usec,
        frag,
        release,
        body: d[semi + 1..].to_vec(),
    })
}

/// `\xNN` decoded; anything else kept.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if s[i] == b'\\' && i + 4 <= s.len() && s[i + 1] == b'x' {
            if let (Some(hi), Some(lo)) = (hex(s[i + 2]), hex(s[i + 3])) {
                out.push((hi * 16 + lo) as u8);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// What the test's own reassembler makes of one source's datagrams, in arrival order.
#[derive(Debug, Default)]
struct Dump {
    crash_line: Option<Vec<u8>>,
    text: Vec<u8>,
    missing: Vec<[u64; 2]>,
    incomplete: Vec<u64>,
    release: Option<String>,
}

fn reassemble_extended(datagrams: &[&[u8]]) -> Dump {
    // seq -> (usec, body bytes, which bytes arrived)
    let mut recs: BTreeMap<u64, (u64, Vec<u8>, Vec<bool>)> = BTreeMap::new();
    let mut dump = Dump::default();
    for d in datagrams {
        let e = parse_ext(d).expect("an extended machine sends extended datagrams");
        if dump.release.is_none() {
            dump.release = e.release.clone();
        }
        let (off, total) = e.frag.unwrap_or((0, e.body.len()));
        let r = recs
            .entry(e.seq)
            .or_insert_with(|| (e.usec, vec![0; total], vec![false; total]));
        if r.2[off] {
            continue;
        }
        r.1[off..off + e.body.len()].copy_from_slice(&e.body);
        r.2[off..off + e.body.len()].fill(true);
        // The relay checks the text of records at warning or above (in the part holding the
        // text's start) and reports the crash line cut to 240 bytes.
        if off == 0 && dump.crash_line.is_none() && e.level & 7 <= 4 {
            let nl = e
                .body
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(e.body.len());
            let mut text = unescape(&e.body[..nl]);
            if is_crash_line(&text) {
                text.truncate(240);
                dump.crash_line = Some(text);
            }
        }
    }
    if dump.crash_line.is_none() {
        return dump;
    }
    let mut prev: Option<u64> = None;
    for (&seq, (usec, body, have)) in &recs {
        if let Some(p) = prev.filter(|&p| seq > p + 1) {
            dump.text.extend_from_slice(
                format!("[netconsole: records {}-{} missing]\n", p + 1, seq - 1).as_bytes(),
            );
            dump.missing.push([p + 1, seq - 1]);
        }
        prev = Some(seq);
        let mut assembled = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if have[i] {
                assembled.push(body[i]);
                i += 1;
            } else {
                let start = i;
                while i < body.len() && !have[i] {
                    i += 1;
                }
                assembled.extend_from_slice(
                    format!("[netconsole: bytes {}-{} missing]", start, i - 1).as_bytes(),
                );
            }
        }
        if have.iter().any(|h| !h) {
            dump.incomplete.push(seq);
        }
        let nl = assembled
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(assembled.len());
        dump.text.extend_from_slice(
            format!("[{:5}.{:06}] ", usec / 1_000_000, usec % 1_000_000).as_bytes(),
        );
        dump.text.extend_from_slice(&unescape(&assembled[..nl]));
        dump.text.push(b'\n');
    }
    dump
}

fn reassemble_legacy(datagrams: &[&[u8]]) -> Dump {
    let mut dump = Dump::default();
    let mut last: Option<&[u8]> = None;
    for d in datagrams {
        assert!(
            parse_ext(d).is_none(),
            "a legacy machine sends console text"
        );
        if last != Some(*d) {
            dump.text.extend_from_slice(d);
        }
        last = Some(*d);
    }
    // The relay keeps a line's first 512 bytes for crash detection and reports 240.
    let mut line = Vec::new();
    for &b in &dump.text {
        if b == b'\n' {
            if is_crash_line(&line) {
                line.truncate(240);
                dump.crash_line = Some(line);
                break;
            }
            line.clear();
        } else if line.len() < 512 {
            line.push(b);
        }
    }
    if dump.crash_line.is_none() {
        dump.text.clear();
    }
    dump
}

/// Checks every source's datagrams against the expectation files (crashing machines) or for
/// the absence of any crash (healthy machines). Returns (dumps, healthy sources seen).
fn check(dir: &Path, datagrams: &[(IpAddr, Vec<u8>)]) -> (u32, u32) {
    let summary: ExpectSummary =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let nc = summary.netconsole.expect("a netconsole summary");
    let mut by_ip: HashMap<IpAddr, Vec<&[u8]>> = HashMap::new();
    for (ip, d) in datagrams {
        by_ip.entry(*ip).or_default().push(d);
    }
    let (mut dumps, mut healthy) = (0, 0);
    for c in &nc.senders {
        let ip: IpAddr = c.ip.parse().unwrap();
        let got = by_ip.remove(&ip).unwrap_or_default();
        assert_eq!(got.len() as u32, c.sent, "{} datagrams", c.ip);
        let dump = match c.mode.as_str() {
            "extended" => reassemble_extended(&got),
            "legacy" => reassemble_legacy(&got),
            m => panic!("mode {m}"),
        };
        if c.role == "healthy" {
            healthy += 1;
            assert!(dump.crash_line.is_none(), "healthy {} crashed", c.ip);
            assert!(!dir.join(&c.ip).exists());
            continue;
        }
        let e = NcExpectation::read(&dir.join(&c.ip)).unwrap();
        assert_eq!(e.mode, c.mode);
        assert_eq!(
            dump.crash_line
                .as_deref()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
            e.crash_line,
            "{} crash line",
            c.ip
        );
        assert_eq!(e.dump, dump.crash_line.is_some());
        assert_eq!(dump.text, e.text, "{} text", c.ip);
        assert_eq!(dump.missing, e.missing, "{} missing", c.ip);
        assert_eq!(dump.incomplete, e.incomplete, "{} incomplete", c.ip);
        if e.dump && e.release_prefix {
            assert_eq!(dump.release.as_deref(), Some(e.release.as_str()));
        }
        dumps += u32::from(e.dump);
    }
    assert!(by_ip.is_empty(), "datagrams from unknown sources");
    assert_eq!(dumps, nc.dumps);
    (dumps, healthy)
}

#[test]
fn netconsole_udp_cli_matches_an_independent_reassembler() {
    let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = rx.set_recv_buffer_size(4 << 20);
    rx.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let rx: UdpSocket = rx.into();
    let target = rx.local_addr().unwrap().to_string();
    let dir = TempDir::new("udp");
    let receiver = std::thread::spawn(move || {
        // The generator writes its expectations before it sends: wait for the first datagram.
        rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = rx.recv_from(&mut buf) {
            got.push((from, buf[..n].to_vec()));
            rx.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
        }
        got
    });
    let v = run_gen(&[
        "--protocol",
        "netconsole",
        "--target",
        &target,
        "--machines",
        "30",
        "--chatter",
        "60",
        "--chatter-lines",
        "30",
        "--long-lines",
        "0.1",
        "--nc-release",
        "0.5",
        "--nc-userdata",
        "0.5",
        "--loss",
        "0.1",
        "--dup",
        "0.05",
        "--reorder",
        "0.05",
        "--rate",
        "3000",
        "--seed",
        "5",
        "--source-base",
        "127.89.0.1",
        "--source-port",
        "0",
        "--expect",
        dir.0.to_str().unwrap(),
    ]);
    let got = receiver.join().unwrap();
    assert_eq!(v["protocol"], "netconsole");
    assert_eq!(v["senders"], 90);
    let sent = v["datagrams_sent"].as_u64().unwrap();
    assert_eq!(got.len() as u64, sent, "receiver lost datagrams");
    let ports: std::collections::HashSet<u16> = got.iter().map(|(a, _)| a.port()).collect();
    assert_eq!(ports.len(), 1, "every machine sends from one port");
    let datagrams: Vec<(IpAddr, Vec<u8>)> = got.into_iter().map(|(a, d)| (a.ip(), d)).collect();
    let (dumps, healthy) = check(&dir.0, &datagrams);
    assert_eq!(healthy, 60);
    assert!(dumps >= 20, "{dumps} dumps");
    let summary: ExpectSummary =
        serde_json::from_slice(&std::fs::read(dir.0.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.datagrams_sent, sent);
    assert_eq!(
        summary.datagrams_lost,
        v["dropped_by_loss"].as_u64().unwrap()
    );
    assert!(summary.partial > 0 && summary.complete > 0);
    // Paced like netoops: never faster than offered. A debug build makes each machine's
    // datagrams when it starts (a few ms each, more on a loaded machine), so only a loose
    // lower bound; the pacing unit test checks the 2% target.
    let rate = v["rate_pps"].as_f64().unwrap();
    assert!((1_000.0..3_100.0).contains(&rate), "rate {rate}");
}

#[test]
fn netconsole_schedule_under_heavy_loss_matches_an_independent_reassembler() {
    let dir = TempDir::new("heavy");
    let s = Scenario {
        machines: 60,
        protocol: Protocol::Netconsole,
        netconsole: NetconsoleParams {
            chatter: 100,
            chatter_lines: 80,
            long_lines: 0.15,
            release: 0.5,
            userdata: 0.5,
            ..NetconsoleParams::default()
        },
        loss: LossModel::GilbertElliott {
            p: 0.05,
            r: 0.3,
            h: 0.1,
            k: 0.98,
        },
        duplicate: 0.15,
        reorder: 0.2,
        reorder_distance: 12,
        timing: Timing::Storm {
            window: Duration::from_millis(20),
        },
        seed: 77,
        ..Scenario::default()
    };
    s.validate().unwrap();
    netoops_bench::gen::write_expectations(&s, &dir.0).unwrap();
    let mut sched = Schedule::new(s.clone());
    let mut buf = [0u8; netoops_wire::MAX_DATAGRAM_LEN];
    let mut datagrams = Vec::new();
    while let Some(item) = sched.next_into(&mut buf).unwrap() {
        datagrams.push((IpAddr::V4(*item.source.ip()), buf[..item.len].to_vec()));
    }
    let (dumps, healthy) = check(&dir.0, &datagrams);
    assert_eq!(healthy, 100);
    let summary: ExpectSummary =
        serde_json::from_slice(&std::fs::read(dir.0.join("summary.json")).unwrap()).unwrap();
    // Heavy loss: some records gone, some fragments gone, some crash lines never arrive.
    let mut incomplete = 0;
    for i in 0..s.machines {
        let e = NcExpectation::read(&dir.0.join(s.source_of(i).unwrap().ip().to_string())).unwrap();
        incomplete += e.incomplete.len();
    }
    assert!(summary.partial > 0 && dumps > 30, "{summary:?}");
    assert!(incomplete > 0, "some fragmented records lose a fragment");
}

#[test]
fn netconsole_same_seed_same_bytes_and_expectations() {
    let dirs: Vec<TempDir> = ["a", "b", "c"].iter().map(|t| TempDir::new(t)).collect();
    let args = |seed: &str, dir: &TempDir| {
        run_gen(&[
            "--protocol",
            "netconsole",
            "--machines",
            "8",
            "--chatter",
            "8",
            "--loss",
            "0.2",
            "--dup",
            "0.1",
            "--seed",
            seed,
            "--dry-run",
            "--expect",
            dir.0.to_str().unwrap(),
        ])
    };
    args("3", &dirs[0]);
    args("3", &dirs[1]);
    args("4", &dirs[2]);
    let read = |d: &TempDir, ip: &str| {
        (
            std::fs::read(d.0.join(ip).join("expected.json")).unwrap(),
            std::fs::read(d.0.join(ip).join("expected.log")).unwrap(),
        )
    };
    let mut differ = 0;
    for i in 1..=8 {
        let ip = format!("127.1.0.{i}");
        assert_eq!(read(&dirs[0], &ip), read(&dirs[1], &ip));
        differ += usize::from(read(&dirs[0], &ip) != read(&dirs[2], &ip));
    }
    assert_eq!(differ, 8);
    assert_eq!(
        std::fs::read(dirs[0].0.join("summary.json")).unwrap(),
        std::fs::read(dirs[1].0.join("summary.json")).unwrap()
    );
    for bad in [
        &["--protocol", "netconsole", "--nc-mode", "fancy"][..],
        &["--protocol", "netconsole", "--nc-release", "2"],
        &["--protocol", "netoops", "--chatter", "3"],
        &["--protocol", "netconsole", "--machines", "0"],
    ] {
        let out = Command::new(GEN)
            .args(bad)
            .arg("--dry-run")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn netconsole_frames_use_netconsole_ports() {
    // Frames to a plain UDP socket (what QEMU's -netdev dgram would receive).
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let remote = rx.local_addr().unwrap().to_string();
    let dir = TempDir::new("frames");
    let receiver = std::thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
            rx.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
        }
        got
    });
    let v = run_gen(&[
        "--protocol",
        "netconsole",
        "--output",
        &format!("dgram:{remote}"),
        "--machines",
        "6",
        "--chatter",
        "6",
        "--long-lines",
        "0.2",
        "--loss",
        "0.1",
        "--rate",
        "2000",
        "--expect",
        dir.0.to_str().unwrap(),
    ]);
    let frames = receiver.join().unwrap();
    assert_eq!(frames.len() as u64, v["datagrams_sent"].as_u64().unwrap());
    let datagrams: Vec<(IpAddr, Vec<u8>)> = frames
        .iter()
        .map(|f| {
            let (_, _, src, dst, payload) =
                netoops_bench::gen::output::frame::parse_frame(f).expect("a valid frame");
            assert_eq!((src.port(), dst.port()), (6665, 6666));
            assert!(src.ip().to_string().starts_with("10.1.0."));
            (IpAddr::V4(*src.ip()), payload.to_vec())
        })
        .collect();
    let (_, healthy) = check(&dir.0, &datagrams);
    assert_eq!(healthy, 6);
}

/// One dump as the relay core rendered it.
struct CoreDump {
    key: String,
    line: Vec<u8>,
    release: Vec<u8>,
    text: Vec<u8>,
    missing: Vec<[u64; 2]>,
    incomplete: Vec<u64>,
    complete: bool,
    fields: Vec<[String; 2]>,
}

/// The relay core's dumps by source (the first of each), and crash notices.
#[derive(Default)]
struct CoreDumps {
    dumps: HashMap<SocketAddr, CoreDump>,
    crashes: HashMap<SocketAddr, Vec<u8>>,
}

impl ConsoleSink for CoreDumps {
    fn crash_seen(&mut self, c: &ConsoleCrash<'_>) {
        self.crashes
            .entry(c.source)
            .or_insert_with(|| c.line.to_vec());
    }
    fn dump(&mut self, d: &ConsoleDump<'_>) {
        self.dumps
            .entry(d.notice.source)
            .or_insert_with(|| CoreDump {
                key: format!("nc-b{}-c{}", d.notice.boot, d.notice.crash),
                line: d.notice.line.to_vec(),
                release: d.notice.release.to_vec(),
                text: d.text.to_vec(),
                missing: d.missing.iter().map(|&(a, b)| [a, b]).collect(),
                incomplete: d.incomplete.to_vec(),
                complete: d.complete(),
                fields: d
                    .fields
                    .iter()
                    .map(|(k, v)| {
                        [
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ]
                    })
                    .collect(),
            });
    }
}

/// The generator's expectations are what the relay core (netoops-core's ConsoleTracker with
/// its default budgets) makes of the datagrams the schedule sends: same dumps, same key, crash
/// line, release, text, missing ranges and incomplete records; no dump for healthy machines.
#[test]
fn expectations_are_what_the_relay_core_dumps() {
    for s in [
        Scenario {
            machines: 50,
            protocol: Protocol::Netconsole,
            netconsole: NetconsoleParams {
                chatter: 400,
                ..NetconsoleParams::default()
            },
            loss: LossModel::Independent { p: 0.1 },
            seed: 1,
            timing: Timing::Storm {
                window: Duration::from_millis(200),
            },
            ..Scenario::default()
        },
        Scenario {
            machines: 40,
            protocol: Protocol::Netconsole,
            netconsole: NetconsoleParams {
                chatter: 40,
                chatter_lines: 200,
                long_lines: 0.15,
                release: 0.5,
                userdata: 0.5,
                ..NetconsoleParams::default()
            },
            loss: LossModel::GilbertElliott {
                p: 0.05,
                r: 0.3,
                h: 0.1,
                k: 0.98,
            },
            duplicate: 0.15,
            reorder: 0.2,
            reorder_distance: 12,
            seed: 77,
            timing: Timing::Storm {
                window: Duration::from_millis(20),
            },
            ..Scenario::default()
        },
    ] {
        s.validate().unwrap();
        let mut tracker = ConsoleTracker::new(ConsoleConfig::default());
        let mut core = CoreDumps::default();
        let mut sched = Schedule::new(s.clone());
        let mut buf = [0u8; netoops_wire::MAX_DATAGRAM_LEN];
        let mut n = 0;
        while let Some(item) = sched.next_into(&mut buf).unwrap() {
            n += 1;
            tracker
                .handle_datagram(
                    Instant::from_micros(n),
                    item.source.into(),
                    &buf[..item.len],
                    &mut core,
                )
                .unwrap();
        }
        tracker.flush(Instant::from_millis(1 << 30), &mut core);
        let (mut dumps, mut with_fields) = (0, 0);
        for i in 0..s.senders() {
            let o = NcExpectation::of(&s, i);
            let e = &o.expectation;
            let source: SocketAddr = e.source.parse().unwrap();
            let got = core.dumps.get(&source);
            if !o.crashing || !e.dump {
                assert!(got.is_none(), "{} dumped (crashing {})", e.ip, o.crashing);
                assert!(!core.crashes.contains_key(&source), "{} crashed", e.ip);
                continue;
            }
            dumps += 1;
            let got = got.unwrap_or_else(|| panic!("{} ({}) made no dump", e.ip, e.mode));
            assert_eq!(got.key, NC_KEY);
            let line = String::from_utf8_lossy(&got.line).into_owned();
            assert_eq!(Some(line), e.crash_line, "{} crash line", e.ip);
            assert_eq!(core.crashes.get(&source), Some(&got.line));
            assert_eq!(String::from_utf8_lossy(&got.release), e.release, "{}", e.ip);
            assert!(got.text == e.text, "{} ({}) text differs", e.ip, e.mode);
            assert_eq!(got.missing, e.missing, "{} missing", e.ip);
            assert_eq!(got.incomplete, e.incomplete, "{} incomplete", e.ip);
            assert_eq!(got.complete, e.complete, "{} complete", e.ip);
            assert_eq!(got.fields, e.crash_fields, "{} fields", e.ip);
            with_fields += usize::from(!e.crash_fields.is_empty());
        }
        assert_eq!(core.dumps.len(), dumps);
        assert!(dumps > 30);
        assert!(with_fields > 3, "some crash records carry userdata");
        assert_eq!(tracker.stats().dumps as usize, dumps);
    }
}
