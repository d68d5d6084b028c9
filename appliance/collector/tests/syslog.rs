//! The collector's syslog output against a real rsyslog (Debian's `rsyslogd`, started here
//! with a configuration of its own: `imtcp` on a free loopback port, `mmpstrucdata` to parse
//! the structured data, one JSON line per message into a file; no `imuxsock`, no system
//! configuration). The collector is the built binary (or, where its counters are read, the
//! library's `Server`), fed through the relay's real link code.
//!
//! Shown: every crash notice and stored dump arrives once, with its structured data, severity,
//! facility, APP-NAME and HOSTNAME; an older revision and a resent record send nothing; hostile
//! strings arrive escaped and on one line; an rsyslog that starts late, or stops and comes
//! back, loses nothing within the queue's bound, and what is beyond the bound is counted; a
//! stalled rsyslog (SIGSTOP) holds up no acknowledgement.

mod common;

use common::crashes::netconsole_record;
use common::*;
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::session::Counters;
use netoops_collect::syslog::{SyslogConfig, SyslogStats};
use netoops_core::upstream::Record;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One rsyslogd writing what it receives on `port` to `dir/messages.jsonl`.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Reaper>,
}

impl Rsyslog {
    fn new(dir: &Path, port: u16) -> Rsyslog {
        fs::create_dir_all(dir).unwrap();
        let out = dir.join("messages.jsonl");
        // One JSON object per message: the header fields, the raw structured data and the
        // message as received, and rsyslog's own parse of the structured data.
        let template = [
            r#"{\"msgid\":\"%msgid:::json%\""#,
            r#",\"app\":\"%app-name:::json%\""#,
            r#",\"host\":\"%hostname:::json%\""#,
            r#",\"procid\":\"%procid:::json%\""#,
            r#",\"facility\":%syslogfacility%"#,
            r#",\"severity\":%syslogseverity%"#,
            r#",\"time\":\"%timereported:::date-rfc3339%\""#,
            r#",\"sd_raw\":\"%structured-data:::json%\""#,
            r#",\"sd\":%$!rfc5424-sd%"#,
            r#",\"msg\":\"%msg:::json%\""#,
            r#",\"raw\":\"%rawmsg:::json%\"}\n"#,
        ]
        .concat();
        let conf = format!(
            r#"global(workDirectory="{dir}")
module(load="imtcp")
module(load="mmpstrucdata")
template(name="netoops_json" type="string" string="{template}")
ruleset(name="netoops") {{
  action(type="mmpstrucdata" sd_name.lowercase="off")
  action(type="omfile" file="{out}" template="netoops_json")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="netoops")
"#,
            dir = dir.display(),
            out = out.display(),
        );
        fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        Rsyslog {
            dir: dir.to_path_buf(),
            port,
            child: None,
        }
    }

    /// A new one on a free port, started.
    fn started(dir: &Path) -> Rsyslog {
        let mut rsyslog = Rsyslog::new(dir, free_port());
        rsyslog.start();
        rsyslog
    }

    /// Starts rsyslogd in the foreground and waits until it accepts connections.
    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = self.dir.join("rsyslogd.stderr");
        let mut command = Command::new(debian_program("rsyslogd", "rsyslog"));
        command
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stderr(File::create(&log).unwrap());
        let child = spawn_listening(&mut command, self.port, Duration::from_secs(15), &log);
        self.child = Some(Reaper(child));
    }

    /// Stops it as an operator would (SIGTERM) and waits for it to exit.
    fn stop(&mut self) {
        self.signal("TERM");
        self.child.take().expect("running").0.wait().unwrap();
    }

    /// Every message written so far.
    fn messages(&self) -> Vec<Value> {
        let Ok(text) = fs::read_to_string(self.dir.join("messages.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until `n` messages are there, then a little longer for any extra one.
    fn expect(&self, n: usize) -> Vec<Value> {
        let arrived = wait_for(Duration::from_secs(60), || self.count() >= n);
        assert!(
            arrived,
            "{} of {n} messages: {:#?}",
            self.count(),
            self.messages()
        );
        std::thread::sleep(Duration::from_millis(500));
        self.messages()
    }

    /// Messages written so far, counted without parsing them.
    fn count(&self) -> usize {
        fs::read(self.dir.join("messages.jsonl"))
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    }

    /// Sends it a signal (`STOP`, `CONT`).
    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").0.id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The `netoops@32473` parameters as rsyslog parsed (and unescaped) them.
fn sd(m: &Value) -> &serde_json::Map<String, Value> {
    m["sd"]["netoops@32473"]
        .as_object()
        .unwrap_or_else(|| panic!("no netoops@32473 element: {m}"))
}

fn param<'a>(m: &'a Value, name: &str) -> &'a str {
    sd(m)
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {name}: {m}"))
}

fn with_kernel(mut r: Record, kernel: &str) -> Record {
    match &mut r {
        Record::CrashSeen(c) => c.kernel_version = kernel.into(),
        Record::Dump(d) => d.kernel_version = kernel.into(),
        Record::Hello { .. } => {}
    }
    r
}

#[test]
fn each_crash_notice_and_stored_dump_arrives_once_with_its_structured_data() {
    let tmp = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::started(&tmp.path().join("rsyslog"));
    let port = rsyslog.port;
    let target = format!("127.0.0.1:{port}");
    let collector = Collector::spawn(
        &tmp.path().join("store"),
        &[
            "--syslog",
            &target,
            "--syslog-facility",
            "local3",
            "--syslog-app-name",
            "netoops-test",
            "--syslog-hostname",
            "collector-a",
        ],
    );
    let hostile_kernel = "6.1\n]\"\\\u{1b}[31m";
    let hostile_relay = "rack]7\"\u{7}";
    let mut config = link_config(0x5157);
    config.relay = hostile_relay.into();
    let mut d = Driver::new(config, vec![collector.addr]);
    let first_crash = crash("10.6.0.1:2004", 1, 0);
    let first_text =
        b"<0>[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
          <4>[   12.345700] #PF: supervisor read access in kernel mode\n";
    let first_seq = d.enqueue(&first_crash, first_text);
    d.enqueue(&dump("10.6.0.1:2004", 1, 1, true), &text(1, 3000));
    d.enqueue(
        &with_kernel(crash("10.6.0.2:2004", 2, 3), hostile_kernel),
        b"[ 1.0] Kernel panic - not syncing: \"]\\ \x1b]0;pwned\x07\r\n[ 1.1] next line\n",
    );
    d.enqueue(
        &with_kernel(dump("10.6.0.2:2004", 2, 2, false), hostile_kernel),
        &text(2, 2000),
    );
    // An older revision of a stored dump: stored nowhere, so nothing is sent for it.
    d.enqueue(
        &with_kernel(dump("10.6.0.2:2004", 2, 1, true), hostile_kernel),
        &text(3, 2000),
    );
    d.enqueue(
        &netconsole_record(
            "10.6.0.3",
            "6.1.0-21-amd64",
            "BUG: unable to handle page fault for address: ffffc90000a3b000",
            &[(7, 8)],
            5_000,
        ),
        &text(4, 1500),
    );
    assert!(d.drain(Duration::from_secs(20)));
    // The relay resends a crash notice the collector already stored (it never saw the Ack):
    // acknowledged as a replay, nothing stored, nothing sent.
    let mut resend = raw::RawSession::open(collector.addr, hostile_relay, 0x5157).unwrap();
    resend
        .send(&raw::frame(first_seq, &first_crash, first_text))
        .unwrap();
    resend.ack_through(first_seq).unwrap();
    let msgs = rsyslog.expect(5);
    assert_eq!(msgs.len(), 5, "{msgs:#?}");

    for m in &msgs {
        assert_eq!(m["app"], "netoops-test");
        assert_eq!(m["host"], "collector-a");
        assert_eq!(m["facility"], 19, "local3: {m}");
        assert_eq!(m["procid"], collector.child.0.id().to_string());
        assert_eq!(param(m, "relay"), "rack]7\"\\x07");
        // Everything from the wire arrives on one line, control characters as text.
        let raw = m["raw"].as_str().unwrap();
        assert!(
            !raw.chars().any(|c| c.is_control()),
            "control character in {raw:?}"
        );
        assert!(raw.starts_with(&format!("<{}>1 ", 19 * 8 + m["severity"].as_u64().unwrap())));
    }
    let by = |msgid: &str, key: &str| -> &Value {
        let found: Vec<&Value> = msgs
            .iter()
            .filter(|m| m["msgid"] == msgid && param(m, "key") == key)
            .collect();
        assert_eq!(found.len(), 1, "{msgid} {key}: {msgs:#?}");
        found[0]
    };

    let c1 = by("CRASH", "10.6.0.1/b7-d1-t1-v3-g0");
    assert_eq!(c1["severity"], 2, "crit");
    assert_eq!(
        c1["msg"],
        "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    );
    assert_eq!(param(c1, "source"), "10.6.0.1:2004");
    assert_eq!(param(c1, "kernel"), "6.1.0-13-amd64");
    assert_eq!(param(c1, "kind"), "netoops");
    assert_eq!(param(c1, "packet"), "0");
    assert_eq!(param(c1, "total"), "12");
    assert!(sd(c1).get("complete").is_none() && sd(c1).get("truncated").is_none());

    let d1 = by("DUMP", "10.6.0.1/b7-d1-t1-v3-g0");
    assert_eq!(d1["severity"], 5, "notice");
    assert_eq!(param(d1, "complete"), "true");
    assert_eq!(param(d1, "received"), "12");
    assert_eq!(param(d1, "total"), "12");
    assert_eq!(param(d1, "rev"), "1");
    assert_eq!(
        d1["msg"],
        "dump 10.6.0.1/b7-d1-t1-v3-g0 stored: complete, 12/12 packets, rev 1"
    );

    // Hostile: escaped once for the terminal (as `watch` prints it), then for RFC 5424.
    let safe_kernel = "6.1\\x0a]\"\\\\x1b[31m";
    let c2 = by("CRASH", "10.6.0.2/b7-d2-t1-v3-g0");
    assert_eq!(param(c2, "kernel"), safe_kernel);
    assert_eq!(param(c2, "packet"), "3");
    assert_eq!(
        c2["msg"],
        "Kernel panic - not syncing: \"]\\ \\x1b]0;pwned\\x07"
    );
    assert!(
        c2["sd_raw"]
            .as_str()
            .unwrap()
            .contains(r#" kernel="6.1\\x0a\]\"\\\\x1b[31m" "#),
        "{c2}"
    );
    let d2 = by("DUMP", "10.6.0.2/b7-d2-t1-v3-g0");
    assert_eq!(d2["severity"], 4, "warning: partial");
    assert_eq!(param(d2, "kernel"), safe_kernel);
    assert_eq!(param(d2, "complete"), "false");
    assert_eq!(param(d2, "received"), "9");
    assert_eq!(param(d2, "rev"), "2");

    let nc = by("DUMP", "10.6.0.3/nc-b0-c1");
    assert_eq!(param(nc, "kind"), "netconsole");
    assert_eq!(param(nc, "kernel"), "6.1.0-21-amd64");
    assert_eq!(param(nc, "source"), "10.6.0.3:6666");
    assert_eq!(
        nc["msg"],
        "dump 10.6.0.3/nc-b0-c1 stored: PARTIAL, 58/60 records, rev 1: \
         BUG: unable to handle page fault for address: ffffc90000a3b000"
    );
}

/// `n` crash notices from distinct machines, numbered from `first`.
fn send_crashes(d: &mut Driver, first: u16, n: u16) {
    send_long_crashes(d, first, n, 0);
}

/// As [`send_crashes`], each crash line `pad` bytes longer.
fn send_long_crashes(d: &mut Driver, first: u16, n: u16, pad: usize) {
    for i in first..first + n {
        d.enqueue(
            &crash(&format!("10.7.{}.{}:2004", i / 200, i % 200 + 1), i, 0),
            format!(
                "[ 5.000] Kernel panic - not syncing: crash {i}{}\n",
                " x".repeat(pad / 2)
            )
            .as_bytes(),
        );
    }
    assert!(d.drain(Duration::from_secs(60)));
}

/// The crash numbers that arrived, sorted, and how often each did.
fn crash_numbers(msgs: &[Value]) -> (Vec<u32>, HashMap<u32, usize>) {
    let mut seen = HashMap::new();
    for m in msgs {
        let rest = m["msg"]
            .as_str()
            .unwrap()
            .strip_prefix("Kernel panic - not syncing: crash ")
            .unwrap_or_else(|| panic!("{m}"));
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u32 = rest[..digits].parse().unwrap();
        *seen.entry(n).or_insert(0) += 1;
    }
    let mut numbers: Vec<u32> = seen.keys().copied().collect();
    numbers.sort_unstable();
    (numbers, seen)
}

#[test]
fn rsyslog_started_late_or_restarted_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let collector = Collector::spawn(&tmp.path().join("store"), &["--syslog", &target]);
    let mut d = Driver::new(link_config(0x1a7e), vec![collector.addr]);
    // Stored while nothing listens for syslog: held in the queue.
    send_crashes(&mut d, 1, 30);
    std::thread::sleep(Duration::from_millis(300));
    let mut rsyslog = Rsyslog::new(&tmp.path().join("rsyslog"), port);
    rsyslog.start();
    let (numbers, _) = crash_numbers(&rsyslog.expect(30));
    assert_eq!(numbers, (1..=30).collect::<Vec<_>>());

    // Stopped mid-run, and crashes keep coming; then it is back on the same port.
    rsyslog.stop();
    send_crashes(&mut d, 31, 30);
    std::thread::sleep(Duration::from_millis(500));
    rsyslog.start();
    send_crashes(&mut d, 61, 10);
    let msgs = rsyslog.expect(70);
    let (numbers, seen) = crash_numbers(&msgs);
    assert_eq!(numbers, (1..=70).collect::<Vec<_>>());
    assert!(seen.values().all(|&n| n == 1), "sent twice: {seen:?}");
    let stderr = fs::read_to_string(tmp.path().join("store.stderr")).unwrap();
    assert!(
        stderr.contains("netoops-collect: syslog: connected to"),
        "{stderr}"
    );
}

/// An in-process collector storing under `dir/store` with syslog to `port` holding at most
/// `queue` messages: its address, syslog counters and collector counters.
fn serve_with_syslog(
    dir: &Path,
    port: u16,
    queue: usize,
) -> (SocketAddr, Arc<SyslogStats>, Arc<Counters>) {
    let mut syslog = SyslogConfig::new(format!("127.0.0.1:{port}"));
    syslog.queue = queue;
    let server = Server::bind(ServerConfig {
        syslog: Some(syslog),
        ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("store"))
    })
    .unwrap();
    let stats = server.syslog_stats().unwrap();
    let (addr, counters) = spawn_server(server);
    (addr, stats, counters)
}

#[test]
fn beyond_the_queue_bound_messages_are_dropped_and_counted_and_the_rest_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let (addr, stats, counters) = serve_with_syslog(tmp.path(), port, 5);
    let mut d = Driver::new(link_config(0xb0d), vec![addr]);
    send_crashes(&mut d, 1, 12);
    assert_eq!(counters.crashes_stored.load(Ordering::Relaxed), 12);
    // Every crash is stored and acknowledged; syslog holds five and drops seven.
    assert!(wait_for(Duration::from_secs(5), || stats
        .dropped
        .load(Ordering::Relaxed)
        == 7));
    assert_eq!(stats.queued.load(Ordering::Relaxed), 5);
    // The sender tries, and fails, to connect (it may not have tried yet).
    assert!(wait_for(Duration::from_secs(5), || stats
        .errors
        .load(Ordering::Relaxed)
        >= 1));
    assert_eq!(stats.sent.load(Ordering::Relaxed), 0);

    let mut rsyslog = Rsyslog::new(&tmp.path().join("rsyslog"), port);
    rsyslog.start();
    let (numbers, _) = crash_numbers(&rsyslog.expect(5));
    assert_eq!(numbers, [1, 2, 3, 4, 5], "the oldest are kept");
    assert!(wait_for(Duration::from_secs(5), || stats
        .sent
        .load(Ordering::Relaxed)
        == 5));
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    let json = stats.to_json();
    assert_eq!(json["dropped"], 7);
    assert_eq!(json["sent"], 5);

    // Room again: the next crash goes straight through.
    send_crashes(&mut d, 13, 1);
    let (numbers, _) = crash_numbers(&rsyslog.expect(6));
    assert_eq!(numbers, [1, 2, 3, 4, 5, 13]);
}

#[test]
fn a_burst_of_twenty_thousand_messages_arrives_whole_and_once() {
    use netoops_collect::syslog::{Notice, Syslog, What};
    const N: usize = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::started(&tmp.path().join("rsyslog"));
    let port = rsyslog.port;
    let mut config = SyslogConfig::new(format!("127.0.0.1:{port}"));
    config.queue = N;
    let syslog = Syslog::start(config).unwrap();
    let stats = syslog.stats();
    let started = Instant::now();
    for i in 0..N {
        syslog.notify(Notice {
            at_ms: 1_700_000_000_000 + i as u64,
            source: format!("10.8.{}.{}:2004", i / 250, i % 250),
            kernel: "6.1.0-13-amd64".into(),
            key: format!("10.8.{}.{}/b1-d{i}-t1-v3-g0", i / 250, i % 250),
            kind: "netoops",
            relay: "burst".into(),
            what: What::Crash {
                packet: 0,
                total: 12,
                line: String::new(),
                text: format!("[ 5.000] Kernel panic - not syncing: crash {i}\n").into_bytes(),
            },
        });
    }
    assert!(wait_for(Duration::from_secs(120), || stats
        .sent
        .load(Ordering::Relaxed)
        == N as u64));
    let sent = started.elapsed();
    let file = tmp.path().join("rsyslog").join("messages.jsonl");
    let lines = || fs::read(&file).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    assert!(
        wait_for(Duration::from_secs(120), || lines() >= N),
        "{} of {N}",
        lines()
    );
    let received = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let msgs = rsyslog.messages();
    assert_eq!(msgs.len(), N);
    let (numbers, seen) = crash_numbers(&msgs);
    assert_eq!(numbers.len(), N);
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    eprintln!(
        "syslog burst: {N} messages written in {sent:?} ({:.0}/s), all in rsyslog's file after {received:?} ({:.0}/s)",
        N as f64 / sent.as_secs_f64(),
        N as f64 / received.as_secs_f64()
    );
}

#[test]
fn bad_syslog_settings_stop_the_collector_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--syslog", "logs.example.net"][..], "is not HOST:PORT"),
        (
            &["--syslog", "127.0.0.1:514", "--syslog-facility", "local8"],
            "unknown syslog facility",
        ),
        (
            &[
                "--syslog",
                "127.0.0.1:514",
                "--syslog-app-name",
                "two words",
            ],
            "app name",
        ),
        (&["--syslog-queue", "10"], "--syslog <HOST:PORT>"),
    ] {
        let out = serve_command(tmp.path()).args(args).output().unwrap();
        assert_refused(&out, says);
    }
}

#[test]
fn a_stalled_rsyslog_holds_up_no_acknowledgement_and_what_overflows_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::started(&tmp.path().join("rsyslog"));
    let port = rsyslog.port;
    let (addr, stats, counters) = serve_with_syslog(tmp.path(), port, 100);
    let mut d = Driver::new(link_config(0x57a1), vec![addr]);
    send_crashes(&mut d, 1, 20);
    rsyslog.expect(20);

    // rsyslog stops reading (SIGSTOP): the sender fills the socket buffers and then waits in
    // a write, while crashes go on being stored and acknowledged. 2,000 messages of about
    // 7 KiB are more than the socket buffers (4 MiB at most to send, here) and the queue of
    // 100 hold.
    rsyslog.signal("STOP");
    for round in 0..5 {
        send_long_crashes(&mut d, 21 + round * 400, 400, 7000);
    }
    assert_eq!(counters.crashes_stored.load(Ordering::Relaxed), 2020);
    let dropped = stats.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "{}", stats.to_json());
    assert!(stats.sent.load(Ordering::Relaxed) < 2020 - dropped);
    rsyslog.signal("CONT");

    // Everything that was not dropped arrives, once.
    let expected = 2020 - dropped as usize;
    assert!(wait_for(Duration::from_secs(60), || stats
        .sent
        .load(Ordering::Relaxed)
        == expected as u64));
    let msgs = rsyslog.expect(expected);
    assert_eq!(msgs.len(), expected, "{}", stats.to_json());
    let (numbers, seen) = crash_numbers(&msgs);
    assert_eq!(numbers.len(), expected);
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    assert_eq!(stats.truncated.load(Ordering::Relaxed), 0);
    eprintln!(
        "stalled rsyslog: 2020 crashes stored and acknowledged, {} sent, {dropped} dropped",
        stats.sent.load(Ordering::Relaxed)
    );
}
