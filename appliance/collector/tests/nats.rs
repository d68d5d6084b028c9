//! The collector's NATS JetStream output against a real `nats-server` (Debian's package,
//! started here with JetStream on, a store directory of its own and a free loopback port;
//! killed with SIGKILL and started again on the same store and port). The collectors are the
//! built binary, fed through the relay's real link code (and, for a relay failing over, raw
//! sessions). What the stream holds is read back with a pull consumer (async-nats), and the
//! collectors' counters from their `/metrics`.
//!
//! Shown: two collectors publish into one stream and a consumer sees every dump and crash
//! notice exactly once, also those that reached both collectors (a relay failing over
//! resends what the first one stored); while nats-server is down nothing is acknowledged to
//! the relays (the records are on the collectors' disks, the relays keep them); after a
//! SIGKILL and restart, every record the relays had acknowledged is in the stream, none twice,
//! and the rest gets through.

mod common;

use common::raw::{frame, RawSession};
use common::*;
use futures_util::StreamExt;
use netoops_core::upstream::Record;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The collectors' and nats-server's logs under `dir`, for a failure's message.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .chain(fs::read_dir(dir.join("nats")).into_iter().flatten())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stderr" || x == "log"))
        .collect();
    paths.sort();
    for p in paths {
        let text = fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("--- {} (last lines)\n", p.display()));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// One nats-server with JetStream, its store in `dir/js`.
struct NatsServer {
    dir: PathBuf,
    port: u16,
    child: Option<Reaper>,
    starts: usize,
    /// More arguments (authentication).
    args: Vec<String>,
}

impl NatsServer {
    fn new(dir: &Path) -> NatsServer {
        fs::create_dir_all(dir).unwrap();
        NatsServer {
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
            starts: 0,
            args: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it accepts connections.
    fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = self.dir.join(format!("nats-server.{}.log", self.starts));
        let mut command = Command::new(debian_program("nats-server", "nats-server"));
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("js"))
            .args(&self.args)
            .stderr(File::create(&log).unwrap());
        let child = spawn_listening(&mut command, self.port, Duration::from_secs(20), &log);
        self.child = Some(Reaper(child));
    }

    /// SIGKILL: no shutdown of its own, whatever it was doing.
    fn kill(&mut self) {
        kill(&mut self.child.take().expect("running").0);
    }
}

/// The collector binary publishing to `nats` (with more `serve` arguments), with its
/// `/metrics` on `http`.
struct NatsCollector {
    collector: Collector,
    http: SocketAddr,
}

impl NatsCollector {
    fn spawn(dir: &Path, nats: &str, more: &[&str]) -> NatsCollector {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
        let mut args = vec!["--nats", nats, "--http", &http];
        args.extend_from_slice(more);
        NatsCollector {
            collector: Collector::spawn(dir, &args),
            http: http.parse().unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.collector.addr
    }

    /// The body of `/metrics`.
    fn metrics_text(&self) -> String {
        // The web view starts just after the `listening on` line: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(self.http) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => panic!("{}: {e}", self.http),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string())
    }

    /// `/metrics`, as name → value.
    fn metrics(&self) -> HashMap<String, u64> {
        self.metrics_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
            .collect()
    }

    fn metric(&self, name: &str) -> u64 {
        let m = self.metrics();
        *m.get(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics: {m:?}"))
    }
}

/// One message of the stream, as a consumer sees it.
struct Seen {
    subject: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("subject", &self.subject)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {self:?}"))
    }
}

/// Every message in stream `NETOOPS`, through a new pull consumer, and the stream's own
/// message count.
fn read_stream(url: &str) -> (u64, Vec<Seen>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("NETOOPS").await.unwrap();
        let total = stream.get_info().await.unwrap().state.messages;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (out.len() as u64) < total && Instant::now() < deadline {
            let mut batch = consumer
                .batch()
                .max_messages(total as usize - out.len())
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .unwrap();
            while let Some(m) = batch.next().await {
                let m = m.unwrap();
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|(k, v)| {
                        let v = v
                            .first()
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default();
                        (k.to_string(), v)
                    })
                    .collect();
                out.push(Seen {
                    subject: m.subject.to_string(),
                    headers,
                    payload: m.payload.to_vec(),
                });
                m.ack().await.unwrap();
            }
        }
        // Nothing more: a last fetch stays empty.
        let mut rest = consumer
            .batch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        if let Some(m) = rest.next().await {
            panic!(
                "a message beyond the stream's count: {:?}",
                m.map(|m| m.subject.clone())
            );
        }
        (total, out)
    })
}

/// Record `i` of relay `r`: even a crash notice, odd the dump of that crash (its own dump id
/// per pair), from machine `10.9.<r>.<pair>`.
fn record(r: u64, i: u64) -> (Record, Vec<u8>) {
    let pair = i / 2;
    let src = format!("10.9.{r}.{}:2004", pair + 1);
    let seed = r * 10_000 + i;
    if i % 2 == 0 {
        (crash(&src, pair as u16, 0), text(seed, 300))
    } else {
        (
            dump(&src, pair as u16, 1, true),
            text(seed, 1_500 + (i as usize % 5) * 3_000),
        )
    }
}

/// Checks that the stream holds exactly `expected` (relay, record) pairs, each once, with
/// its text, subject and headers.
fn assert_exactly_once(url: &str, expected: &[(u64, u64)]) {
    let (total, seen) = read_stream(url);
    assert_eq!(
        seen.len() as u64,
        total,
        "the consumer got {} of the stream's {total} messages",
        seen.len()
    );
    let mut by_key: HashMap<(String, String), Vec<&Seen>> = HashMap::new();
    for s in &seen {
        let kind = s.header("Netoops-Kind").to_string();
        by_key
            .entry((kind, s.header("Netoops-Key").to_string()))
            .or_default()
            .push(s);
    }
    for &(r, i) in expected {
        let (rec, t) = record(r, i);
        let pair = i / 2;
        let ip = format!("10.9.{r}.{}", pair + 1);
        let kind = match rec {
            Record::Dump(_) => "dump",
            _ => "notice",
        };
        let key = format!("{ip}/b7-d{pair}-t1-v3-g0");
        let got = by_key
            .remove(&(kind.to_string(), key.clone()))
            .unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "{kind} {key} (relay {r} record {i}) {} times",
            got.len()
        );
        let m = got[0];
        assert_eq!(m.payload, t, "{kind} {key}: text");
        assert_eq!(
            m.subject,
            format!("netoops.{kind}.{}", ip.replace('.', "_"))
        );
        assert_eq!(m.header("Netoops-Source"), format!("{ip}:2004"));
        assert_eq!(m.header("Netoops-Kernel"), "6.1.0-13-amd64");
        assert!(!m.header("Nats-Msg-Id").is_empty());
        if kind == "dump" {
            assert_eq!(m.header("Netoops-Complete"), "true");
            assert_eq!(m.header("Netoops-Revision"), "1");
        }
    }
    assert!(by_key.is_empty(), "unexpected messages: {by_key:#?}");
    assert_eq!(total, expected.len() as u64, "messages in the stream");
}

/// A nats-server under `dir/nats`, started, and two collectors (`dir/a`, `dir/b`) publishing
/// to it.
fn two_collectors_publishing(dir: &Path) -> (NatsServer, NatsCollector, NatsCollector) {
    let mut nats = NatsServer::new(&dir.join("nats"));
    nats.start();
    let a = NatsCollector::spawn(&dir.join("a"), &nats.url(), &[]);
    let b = NatsCollector::spawn(&dir.join("b"), &nats.url(), &[]);
    (nats, a, b)
}

#[test]
fn two_collectors_one_stream_every_dump_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (nats, a, b) = two_collectors_publishing(tmp.path());

    // Relay 1 delivers to collector A, relay 2 to collector B.
    let mut expected = Vec::new();
    let mut relays = Vec::new();
    for (r, c) in [(1u64, &a), (2, &b)] {
        let mut d = Driver::new(link_config(0x100 + r), vec![c.addr()]);
        for i in 0..12 {
            let (rec, t) = record(r, i);
            d.enqueue(&rec, &t);
            expected.push((r, i));
        }
        relays.push(d);
    }
    for d in &mut relays {
        assert!(d.drain(Duration::from_secs(60)), "relay not acknowledged");
    }
    // Relay 3 stores its records at A, never sees the Acks and fails over to B, which gets
    // the same records (same instance and seqs) again.
    let frames: Vec<u8> = (0..8)
        .flat_map(|i| {
            let (rec, t) = record(3, i);
            expected.push((3, i));
            frame(i + 1, &rec, &t)
        })
        .collect();
    for c in [&a, &b] {
        let mut s = RawSession::open(c.addr(), "relay-3", 0x103).unwrap();
        assert_eq!(s.last_seq, 0);
        s.send(&frames).unwrap();
        assert_eq!(s.ack_through(8).unwrap(), 8);
    }

    assert_exactly_once(&nats.url(), &expected);
    // Both collectors stored relay 3's records; the stream stored them once and told the
    // second publisher they were duplicates.
    let stored = |c: &NatsCollector| c.metric("netoops_collect_dumps_stored_total");
    assert_eq!(stored(&a), 6 + 4);
    assert_eq!(stored(&b), 6 + 4);
    let published: u64 = [&a, &b]
        .iter()
        .map(|c| c.metric("netoops_collect_nats_published_total"))
        .sum();
    let duplicates: u64 = [&a, &b]
        .iter()
        .map(|c| c.metric("netoops_collect_nats_duplicates_total"))
        .sum();
    assert_eq!(published, 32, "new messages stored by the stream");
    assert_eq!(duplicates, 8, "relay 3's records, published by both");
    assert_eq!(b.metric("netoops_collect_nats_held"), 0);
    // The exposition is valid Prometheus text (promtool from Debian's prometheus package).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup installs it)");
    let text = a.metrics_text();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nats_server_killed_and_restarted_mid_run_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nats, a, b) = two_collectors_publishing(tmp.path());
    // Three relays, each preferring one collector and failing over to the other.
    let mut relays: Vec<(u64, Driver)> = [(1u64, [&a, &b]), (2, [&b, &a]), (3, [&a, &b])]
        .into_iter()
        .map(|(r, cs)| {
            let addrs = cs.iter().map(|c| c.addr()).collect();
            let mut config = link_config(0x200 + r);
            config.upstreams = 2;
            (r, Driver::new(config, addrs))
        })
        .collect();
    let mut next = HashMap::new();
    let mut expected = Vec::new();
    let mut enqueue = |relays: &mut Vec<(u64, Driver)>, n: u64| {
        for (r, d) in relays.iter_mut() {
            let from = *next.get(r).unwrap_or(&0);
            for i in from..from + n {
                let (rec, t) = record(*r, i);
                d.enqueue(&rec, &t);
                expected.push((*r, i));
            }
            next.insert(*r, from + n);
        }
    };
    let step_all = |relays: &mut Vec<(u64, Driver)>, dur: Duration| {
        let end = Instant::now() + dur;
        while Instant::now() < end {
            for (_, d) in relays.iter_mut() {
                d.step();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let drained = |relays: &Vec<(u64, Driver)>| {
        relays
            .iter()
            .all(|(_, d)| d.link.stats().spool_records == 0)
    };

    // A first round, all acknowledged.
    enqueue(&mut relays, 6);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !drained(&relays) && Instant::now() < deadline {
        step_all(&mut relays, Duration::from_millis(20));
    }
    assert!(drained(&relays), "acknowledged before the kill");

    // A second round in flight when nats-server dies: killed as soon as the first of it is
    // acknowledged.
    enqueue(&mut relays, 6);
    let deadline = Instant::now() + Duration::from_secs(30);
    while relays
        .iter()
        .all(|(_, d)| d.link.stats().spool_records == 6)
        && Instant::now() < deadline
    {
        step_all(&mut relays, Duration::from_millis(1));
    }
    nats.kill();
    // Records keep coming while it is down.
    enqueue(&mut relays, 8);
    // The collectors store everything on disk (10 dumps per relay so far) ...
    let dumps_on_disk = || {
        a.metric("netoops_collect_dumps_stored_total")
            + b.metric("netoops_collect_dumps_stored_total")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while dumps_on_disk() < 30 && Instant::now() < deadline {
        step_all(&mut relays, Duration::from_millis(50));
    }
    assert!(
        dumps_on_disk() >= 30,
        "records sent while NATS is down are stored on disk\n{}",
        logs(tmp.path())
    );
    // ... count the failed publishes (each waits up to its timeout) ...
    let failures = || {
        a.metric("netoops_collect_nats_failures_total")
            + b.metric("netoops_collect_nats_failures_total")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while failures() == 0 && Instant::now() < deadline {
        step_all(&mut relays, Duration::from_millis(100));
    }
    assert!(
        failures() > 0,
        "publish failures counted\n{}",
        logs(tmp.path())
    );
    // ... but acknowledge nothing while the stream cannot have it: every relay still holds at
    // least what it sent during the outage, and no more leaves its spool.
    let held: Vec<usize> = relays
        .iter()
        .map(|(_, d)| d.link.stats().spool_records)
        .collect();
    step_all(&mut relays, Duration::from_secs(2));
    for ((r, d), before) in relays.iter().zip(held) {
        let now = d.link.stats().spool_records;
        assert!(
            now >= 8 && now == before,
            "relay {r}: {before} then {now} records unacknowledged while nats-server was down\n{}",
            logs(tmp.path())
        );
    }
    assert!(a.metric("netoops_collect_nats_held") + b.metric("netoops_collect_nats_held") > 0);

    // Back on the same store and port: what was held gets through, and new records too.
    nats.start();
    enqueue(&mut relays, 10);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !drained(&relays) && Instant::now() < deadline {
        step_all(&mut relays, Duration::from_millis(20));
    }
    assert!(
        drained(&relays),
        "every record acknowledged after the restart\n{}",
        logs(tmp.path())
    );
    assert_exactly_once(&nats.url(), &expected);
    let retries: u64 = [&a, &b]
        .iter()
        .map(|c| c.metric("netoops_collect_nats_retries_total"))
        .sum();
    assert!(retries > 0, "publishing was retried");
    for (name, c) in [("a", &a), ("b", &b)] {
        let m = c.metrics();
        let mut nats: Vec<_> = m.iter().filter(|(k, _)| k.contains("_nats_")).collect();
        nats.sort();
        eprintln!("collector {name}: {nats:?}");
    }
}

#[test]
fn credentials_in_the_url_are_used() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    nats.args = ["--user", "netoops", "--pass", "s3cret"]
        .map(String::from)
        .to_vec();
    nats.start();
    let url = format!("nats://netoops:s3cret@127.0.0.1:{}", nats.port);
    let c = NatsCollector::spawn(&tmp.path().join("a"), &url, &[]);
    let mut d = Driver::new(link_config(0x301), vec![c.addr()]);
    for i in 0..2 {
        let (rec, t) = record(4, i);
        d.enqueue(&rec, &t);
    }
    // Acknowledged only once the stream has them, which needs the server to accept the
    // collector's user and password.
    assert!(
        d.drain(Duration::from_secs(30)),
        "not acknowledged\n{}",
        logs(tmp.path())
    );
    assert_eq!(c.metric("netoops_collect_nats_published_total"), 2);
}

#[test]
fn bad_nats_settings_stop_serve_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["--nats", "nats://127.0.0.1:4222", "--nats-stream", "A.B"][..],
            "stream name",
        ),
        (
            &[
                "--nats",
                "nats://127.0.0.1:4222",
                "--nats-subject-prefix",
                "netoops.>",
            ][..],
            "subject prefix",
        ),
        (
            &["--nats", "nats://127.0.0.1:4222", "--nats-hold", "1M"][..],
            "at least 8M",
        ),
        (&["--nats-stream", "X"][..], "--nats"),
    ] {
        let out = serve_command(tmp.path()).args(args).output().unwrap();
        assert_refused(&out, says);
    }
}

#[test]
fn a_dump_over_the_servers_max_payload_is_cut_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    let conf = tmp.path().join("nats").join("small.conf");
    fs::write(&conf, "max_payload: 8KB\n").unwrap();
    nats.args = vec!["-c".into(), conf.display().to_string()];
    nats.start();
    let c = NatsCollector::spawn(&tmp.path().join("a"), &nats.url(), &[]);
    let mut d = Driver::new(link_config(0x401), vec![c.addr()]);
    let notice = text(1, 300);
    let big = text(2, 30_000);
    d.enqueue(&crash("10.9.5.1:2004", 0, 0), &notice);
    d.enqueue(&dump("10.9.5.1:2004", 0, 1, true), &big);
    assert!(d.drain(Duration::from_secs(30)), "{}", logs(tmp.path()));
    let (total, seen) = read_stream(&nats.url());
    assert_eq!(total, 2);
    let by = |kind: &str| {
        seen.iter()
            .find(|m| m.header("Netoops-Kind") == kind)
            .unwrap()
    };
    let n = by("notice");
    assert_eq!(n.payload, notice);
    assert!(!n.headers.contains_key("Netoops-Truncated"));
    let m = by("dump");
    assert_eq!(m.header("Netoops-Truncated"), "30000");
    assert!(
        m.payload.len() > 4096 && m.payload.len() < 8192,
        "{}",
        m.payload.len()
    );
    assert_eq!(m.payload, big[..m.payload.len()]);
    assert_eq!(c.metric("netoops_collect_nats_truncated_total"), 1);
    // The collector's own copy is whole.
    let stored = fs::read(tmp.path().join("a/10.9.5.1/b7-d0-t1-v3-g0.log")).unwrap();
    assert_eq!(stored, big);
}

#[test]
fn a_collector_started_before_nats_server_holds_a_bounded_amount_then_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    // Not started yet.
    let c = NatsCollector::spawn(&tmp.path().join("a"), &nats.url(), &["--nats-hold", "8M"]);
    let mut config = link_config(0x501);
    config.spool_bytes = 48 << 20;
    config.dump_window = 48 << 20;
    let mut d = Driver::new(config, vec![c.addr()]);
    // 30 dumps of 700 KB: 21 MB, well over the 8 MiB hold.
    let texts: Vec<Vec<u8>> = (0..30).map(|i| text(600 + i, 700_000)).collect();
    for (i, t) in texts.iter().enumerate() {
        d.enqueue(
            &dump(&format!("10.9.6.{}:2004", i + 1), i as u16, 1, true),
            t,
        );
    }
    // The hold fills and the committer waits: nothing is acknowledged, what is held stays
    // within its bound.
    let full = d.run_until(Duration::from_secs(60), |_| {
        c.metric("netoops_collect_nats_hold_full_total") > 0
    });
    assert!(full, "the hold never filled\n{}", logs(tmp.path()));
    d.run_until(Duration::from_secs(1), |_| false);
    let held = c.metric("netoops_collect_nats_held_bytes");
    assert!(held <= 8 << 20, "{held} bytes held");
    assert_eq!(
        d.link.stats().spool_records,
        30,
        "acknowledged without the stream"
    );
    nats.start();
    assert!(
        d.drain(Duration::from_secs(120)),
        "not delivered once nats-server is up\n{}",
        logs(tmp.path())
    );
    let (total, seen) = read_stream(&nats.url());
    assert_eq!(total, 30);
    for (i, t) in texts.iter().enumerate() {
        let key = format!("10.9.6.{}/b7-d{i}-t1-v3-g0", i + 1);
        let m: Vec<&Seen> = seen
            .iter()
            .filter(|m| m.header("Netoops-Key") == key)
            .collect();
        assert_eq!(m.len(), 1, "{key}");
        assert_eq!(&m[0].payload, t, "{key}");
    }
    assert_eq!(c.metric("netoops_collect_nats_held_bytes"), 0);
}

#[test]
fn sessions_that_end_while_the_stream_is_away_free_their_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    // Not started yet: nothing can be acknowledged.
    let c = NatsCollector::spawn(
        &tmp.path().join("a"),
        &nats.url(),
        &["--max-connections", "1"],
    );
    let (rec, t) = record(7, 1);
    let one = frame(1, &rec, &t);
    // A relay that gives up waiting for its Ack and reconnects, again and again, to the one
    // session slot: each time it is welcomed (nothing confirmed) and resends.
    for k in 1..=4 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match RawSession::open(c.addr(), "relay-7", 0x701) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("session {k}: {e}\n{}", logs(tmp.path())),
            }
        };
        assert_eq!(s.last_seq, 0, "session {k}");
        s.send(&one).unwrap();
        let seen = wait_for(Duration::from_secs(10), || {
            c.metric("netoops_collect_applied_total") + c.metric("netoops_collect_replays_total")
                >= k
        });
        assert!(seen, "session {k}: record not stored");
    }
    // The stream comes; the relay's last resend is acknowledged and published once.
    nats.start();
    let mut s = loop {
        if let Ok(s) = RawSession::open(c.addr(), "relay-7", 0x701) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if s.last_seq < 1 {
        s.send(&one).unwrap();
        assert_eq!(s.ack_through(1).unwrap(), 1);
    }
    let (total, seen) = read_stream(&nats.url());
    assert_eq!(total, 1, "{seen:?}");
    assert_eq!(seen[0].payload, t);
}

#[test]
fn a_collector_killed_with_records_on_disk_but_not_in_the_stream_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    // nats-server not started: the records reach the collector's disk, not the stream.
    let dir = tmp.path().join("a");
    let first = NatsCollector::spawn(&dir, &nats.url(), &[]);
    let mut d = Driver::new(link_config(0x801), vec![first.addr()]);
    let mut expected = Vec::new();
    for i in 0..8 {
        let (rec, t) = record(8, i);
        d.enqueue(&rec, &t);
        expected.push((8, i));
    }
    let stored = d.run_until(Duration::from_secs(30), |_| {
        first.metric("netoops_collect_dumps_stored_total") == 4
            && first.metric("netoops_collect_crashes_stored_total") == 4
    });
    assert!(stored, "records not stored\n{}", logs(tmp.path()));
    assert_eq!(
        d.link.stats().spool_records,
        8,
        "acknowledged without the stream"
    );
    // Time for the collector to write its relay state (20 ms after its queue runs idle): on
    // restart its disk says the relay's records up to 8 are durable.
    d.run_until(Duration::from_millis(500), |_| false);
    // The collector dies holding them; nats-server comes up; the collector starts again on
    // the same directory. It welcomes the relay at 0 (the stream confirmed nothing), the
    // relay resends, the store finds the records already there, and they are published now.
    drop(first);
    nats.start();
    let second = NatsCollector::spawn(&dir, &nats.url(), &[]);
    d.addrs[0] = second.addr();
    assert!(
        d.drain(Duration::from_secs(60)),
        "not acknowledged after the restart\n{}",
        logs(tmp.path())
    );
    assert_exactly_once(&nats.url(), &expected);
    // And on disk each crash notice once (a resent dump rewrites the same files).
    let lines: usize = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.unwrap().path().join("crashes.jsonl")).ok())
        .map(|t| t.lines().count())
        .sum();
    assert_eq!(lines, 4);
}

/// What waiting for the stream costs: 3,000 records (crash notices of 300 bytes and
/// dumps of 1.5-13.5 KB, alternating) through a collector without and with `--nats`, timed
/// from the first enqueue to the relay's last acknowledgement, twice each, alternating (the
/// first run also warms the file system). Prints the figures; asserts
/// only that everything arrived.
/// `cargo test -p netoops-collect --test nats measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_acknowledgement_throughput_with_and_without_nats() {
    const RECORDS: u64 = 3_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&tmp.path().join("nats"));
    nats.start();
    for (run, with_nats) in [false, true, false, true].into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{run}"));
        let url = nats.url();
        let args: Vec<&str> = if with_nats {
            vec!["--nats", &url]
        } else {
            vec![]
        };
        // Killed when this run ends, also by a failed assertion.
        let collector = Collector::spawn(&dir, &args);
        let addr = collector.addr;
        let mut config = link_config(0x900 + run as u64);
        config.spool_records = 2 * RECORDS as usize;
        config.spool_bytes = 64 << 20;
        let mut d = Driver::new(config, vec![addr]);
        let start = Instant::now();
        for i in 0..RECORDS {
            let pair = i / 2;
            let src = format!("10.{}.{}.{}:2004", 9 + run, pair / 200, pair % 200 + 1);
            let (rec, t) = match i % 2 {
                0 => (crash(&src, pair as u16, 0), text(i, 300)),
                _ => (
                    dump(&src, pair as u16, 1, true),
                    text(i, 1_500 + (i as usize % 5) * 3_000),
                ),
            };
            d.enqueue(&rec, &t);
        }
        assert!(d.drain(Duration::from_secs(300)));
        let took = start.elapsed();
        eprintln!(
            "{} --nats: {RECORDS} records acknowledged in {:.2} s ({:.0} records/s)",
            if with_nats { "with" } else { "without" },
            took.as_secs_f64(),
            RECORDS as f64 / took.as_secs_f64()
        );
    }
}
