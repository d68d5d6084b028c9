//! The `netoops-gen` binary end to end: its expectation files against what a real receiver
//! reassembles from what it really sent, over loopback UDP and through a real QEMU whose
//! `-netdev dgram` and `-netdev stream` backends are joined by a hub (no guest needed: QEMU
//! forwards every frame from one netdev to the other unchanged).

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netoops_bench::gen::output::frame::{parse_frame, MacAddr};
use netoops_bench::gen::{ExpectSummary, Expectation};
use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler, ReassemblyConfig};
use netoops_core::time::Instant as CoreInstant;

const GEN: &str = env!("CARGO_BIN_EXE_netoops-gen");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("netoops-gen-{tag}-{}", std::process::id()));
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

/// A child process killed on drop.
struct Killed(Child);

impl Killed {
    /// Panics with the child's stderr if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = self.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("QEMU exited ({status}): {err}");
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Dump text and missing runs per source address, as the reassembler reports them (by IP:
/// with `--source-port 0` the port is the OS's choice).
#[derive(Default)]
struct Dumps(HashMap<IpAddr, (Vec<u8>, Vec<[u32; 2]>)>);

impl EventSink for Dumps {
    fn crash_seen(&mut self, _: &CrashSeen<'_>) {}
    fn dump(&mut self, d: &DumpView<'_>) {
        let mut text = Vec::new();
        d.write_text(|b| text.extend_from_slice(b));
        self.0.insert(
            d.source().ip(),
            (text, d.missing().map(|(a, b)| [a, b]).collect()),
        );
    }
}

/// Feeds datagrams to a reassembler and checks every machine against its expectation files.
fn check_against_expectations(dir: &Path, datagrams: &[(SocketAddr, Vec<u8>)]) -> ExpectSummary {
    let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
    let mut dumps = Dumps::default();
    for (i, (src, bytes)) in datagrams.iter().enumerate() {
        r.handle_datagram(CoreInstant::from_micros(i as u64), *src, bytes, &mut dumps)
            .unwrap();
    }
    r.flush(CoreInstant::from_millis(60_000), &mut dumps);
    let summary: ExpectSummary =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let mut heard = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let e = Expectation::read(&path).unwrap();
        let ip: IpAddr = e.ip.parse().unwrap();
        match dumps.0.get(&ip) {
            Some((text, missing)) => {
                heard += 1;
                assert_eq!(text, &e.text, "{} text", e.ip);
                assert_eq!(missing, &e.missing, "{} missing", e.ip);
            }
            None => assert_eq!(e.received, 0, "{} sent nothing that arrived", e.ip),
        }
    }
    assert_eq!(heard, dumps.0.len(), "no dump from an unexpected source");
    assert_eq!(heard, (summary.complete + summary.partial) as usize);
    summary
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

/// Two free UDP ports and a free TCP port on 127.0.0.1, held at once so they differ.
fn free_ports() -> (u16, u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = |addr: std::io::Result<SocketAddr>| addr.unwrap().port();
    (
        port(a.local_addr()),
        port(b.local_addr()),
        port(t.local_addr()),
    )
}

/// The QEMU tests run one at a time: a free port found by one could be taken by the other's
/// QEMU before its own starts.
static QEMU_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A receiving socket on 127.0.0.1 with a deep queue.
fn deep_udp_socket() -> UdpSocket {
    let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = rx.set_recv_buffer_size(4 << 20);
    rx.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    rx.into()
}

/// Datagrams received on `sock` until it stays quiet for `quiet`.
fn receive_all(sock: &UdpSocket, quiet: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65_536];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        got.push((from, buf[..n].to_vec()));
    }
    got
}

/// UDP payloads of frames, checked for the addresses the generator was told to use.
fn unwrap_frames(frames: &[Vec<u8>], dst: &str) -> Vec<(SocketAddr, Vec<u8>)> {
    frames
        .iter()
        .map(|f| {
            let (dmac, smac, src, to, payload) = parse_frame(f).expect("valid frame");
            assert_eq!(dmac, "52:54:00:aa:bb:cc".parse::<MacAddr>().unwrap());
            assert_eq!(smac, MacAddr::for_ip(*src.ip()));
            assert_eq!(to.to_string(), dst);
            (SocketAddr::V4(src), payload.to_vec())
        })
        .collect()
}

#[test]
fn udp_cli_sends_what_its_expectations_describe() {
    let rx = deep_udp_socket();
    let target = rx.local_addr().unwrap().to_string();
    let dir = TempDir::new("udp");
    let expect = dir.0.to_str().unwrap();
    let receiver = std::thread::spawn(move || receive_all(&rx, Duration::from_millis(700)));
    let v = run_gen(&[
        "--target",
        &target,
        "--machines",
        "40",
        "--log-size",
        "1K-32K",
        "--loss",
        "0.25",
        "--dup",
        "0.02",
        "--reorder",
        "0.02",
        "--rate",
        "8000",
        "--seed",
        "9",
        "--source-base",
        "127.88.0.1",
        "--source-port",
        "0",
        "--expect",
        expect,
    ]);
    let got = receiver.join().unwrap();
    let sent = v["datagrams_sent"].as_u64().unwrap();
    assert_eq!(got.len() as u64, sent, "receiver lost datagrams");
    let summary = check_against_expectations(&dir.0, &got);
    assert_eq!(summary.datagrams_sent, sent);
    assert_eq!(
        summary.datagrams_lost,
        v["dropped_by_loss"].as_u64().unwrap()
    );
    assert!(summary.partial > 0 && summary.complete > 0);
    // Offered 8,000/s: never faster, and not far slower even on a loaded machine (a short
    // run cannot make up for long stalls; the pacing unit test checks the 2% target).
    let rate = v["rate_pps"].as_f64().unwrap();
    assert!((6_500.0..8_200.0).contains(&rate), "rate {rate}");
}

#[test]
fn dry_run_writes_the_same_expectations_and_sends_nothing() {
    let a = TempDir::new("dry-a");
    let b = TempDir::new("dry-b");
    let args = [
        "--machines",
        "7",
        "--log-size",
        "3K-9K",
        "--loss",
        "0.2",
        "--dry-run",
    ];
    let v = run_gen(&[&args[..], &["--expect", a.0.to_str().unwrap()]].concat());
    run_gen(&[&args[..], &["--expect", b.0.to_str().unwrap()]].concat());
    assert!(v.get("datagrams_sent").is_none());
    assert_eq!(v["expect"]["machines"], 7);
    for ip in ["127.1.0.1", "127.1.0.7"] {
        let ea = Expectation::read(&a.0.join(ip)).unwrap();
        assert_eq!(ea, Expectation::read(&b.0.join(ip)).unwrap());
    }
    for bad in [
        &["--loss", "1.5"][..],
        &["--variants", "v9"],
        &["--log-size", "0"],
    ] {
        let out = Command::new(GEN).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// QEMU's side of the stream netdev.
enum StreamEnd {
    /// QEMU listens on this port. QEMU 7.2 crashes if the hub hands this netdev a frame
    /// before a client connected, so only frames *into* it may flow before then.
    Server(u16),
    /// QEMU connects to this port, which must be listening already.
    Client(u16),
}

/// QEMU with a dgram netdev (`local` = where frames go in, `remote` = where they come out)
/// and a stream netdev on one hub.
fn qemu_hub(dgram_local: u16, dgram_remote: u16, stream: StreamEnd) -> Killed {
    let qemu = "qemu-system-x86_64";
    let stream = match stream {
        StreamEnd::Server(port) => {
            format!("stream,id=s,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
        }
        StreamEnd::Client(port) => {
            format!("stream,id=s,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
        }
    };
    let child = Command::new(qemu)
        .args(["-M", "none", "-nodefaults", "-display", "none"])
        .args(["-monitor", "none", "-serial", "none"])
        .arg("-netdev")
        .arg(format!(
            "dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port={dgram_local},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={dgram_remote}"
        ))
        .args(["-netdev", &stream])
        .args(["-netdev", "hubport,id=h1,hubid=0,netdev=d"])
        .args(["-netdev", "hubport,id=h2,hubid=0,netdev=s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{qemu} is needed (apt-get install -y qemu-system-x86): {e}"));
    Killed(child)
}

/// Length-prefixed frames read from `conn` until it stays quiet for `quiet`.
fn read_stream_frames(conn: &mut TcpStream, quiet: Duration) -> Vec<Vec<u8>> {
    conn.set_read_timeout(Some(quiet)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65_536];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 4 <= all.len() {
        let len = u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) as usize;
        frames.push(all[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    assert_eq!(at, all.len(), "stream ends on a frame boundary");
    frames
}

/// A frame no test sends otherwise (local experimental ethertype 0x88b5).
const PROBE: [u8; 60] = {
    let mut f = [0u8; 60];
    f[0] = 0xff;
    f[12] = 0x88;
    f[13] = 0xb5;
    f
};

/// Waits until QEMU forwards frames from its dgram netdev to the stream: until QEMU has
/// finished connecting, it drops what the hub hands the stream netdev. Probes until one comes
/// out, then drains the rest.
fn wait_for_path(dgram_local: u16, conn: &mut TcpStream, qemu: &mut Killed) {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        qemu.assert_running();
        assert!(
            Instant::now() < deadline,
            "QEMU never forwarded a probe frame"
        );
        probe.send_to(&PROBE, ("127.0.0.1", dgram_local)).unwrap();
        if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
            break;
        }
    }
    // Probes still in flight arrive within the quiet time; they are whole frames.
    let rest = read_stream_frames(conn, Duration::from_millis(300));
    assert!(rest.iter().all(|f| f[..] == PROBE[..]));
}

#[test]
fn dgram_output_frames_pass_through_a_real_qemu() {
    let _one = QEMU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let (local, remote, _) = free_ports();
    // QEMU is the stream client, so frames reaching its stream netdev early are harmless.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = listener.local_addr().unwrap().port();
    let mut qemu = qemu_hub(local, remote, StreamEnd::Client(stream));
    let (mut conn, _) = listener.accept().unwrap();
    wait_for_path(local, &mut conn, &mut qemu);
    let dir = TempDir::new("dgram");
    let v = run_gen(&[
        "--output",
        &format!("dgram:127.0.0.1:{local}"),
        "--machines",
        "20",
        "--log-size",
        "1K-16K",
        "--loss",
        "0.1",
        "--reorder",
        "0.05",
        "--rate",
        "4000",
        "--seed",
        "11",
        "--dst-mac",
        "52:54:00:aa:bb:cc",
        "--dst-ip",
        "10.9.0.2",
        "--dst-port",
        "2004",
        "--expect",
        dir.0.to_str().unwrap(),
    ]);
    let frames = read_stream_frames(&mut conn, Duration::from_millis(1500));
    let sent = v["datagrams_sent"].as_u64().unwrap();
    assert_eq!(frames.len() as u64, sent, "QEMU passed every frame");
    let datagrams = unwrap_frames(&frames, "10.9.0.2:2004");
    assert!(datagrams
        .iter()
        .all(|(src, _)| src.to_string().starts_with("10.1.0.")));
    check_against_expectations(&dir.0, &datagrams);
}

#[test]
fn stream_output_frames_pass_through_a_real_qemu() {
    let _one = QEMU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let rx = deep_udp_socket();
    let remote = rx.local_addr().unwrap().port();
    let (local, _, stream) = free_ports();
    // Frames only flow into the stream netdev here, so QEMU may be the server.
    let mut qemu = qemu_hub(local, remote, StreamEnd::Server(stream));
    qemu.assert_running();
    let dir = TempDir::new("stream");
    let receiver = std::thread::spawn(move || receive_all(&rx, Duration::from_millis(1500)));
    // The generator retries the connection while QEMU starts.
    let v = run_gen(&[
        "--output",
        &format!("stream:127.0.0.1:{stream}"),
        "--machines",
        "20",
        "--log-size",
        "1K-16K",
        "--loss",
        "0.1",
        "--dup",
        "0.05",
        "--storm-ms",
        "50",
        "--rate",
        "4000",
        "--seed",
        "12",
        "--dst-mac",
        "52:54:00:aa:bb:cc",
        "--dst-ip",
        "10.9.0.3",
        "--dst-port",
        "2005",
        "--expect",
        dir.0.to_str().unwrap(),
    ]);
    let frames: Vec<Vec<u8>> = receiver
        .join()
        .unwrap()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let sent = v["datagrams_sent"].as_u64().unwrap();
    assert_eq!(frames.len() as u64, sent, "QEMU passed every frame");
    let datagrams = unwrap_frames(&frames, "10.9.0.3:2005");
    check_against_expectations(&dir.0, &datagrams);
}

#[test]
fn stream_listen_output_serves_a_connecting_qemu() {
    let _one = QEMU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let rx = deep_udp_socket();
    let remote = rx.local_addr().unwrap().port();
    let (local, _, _) = free_ports();
    let dir = TempDir::new("listen");
    let mut gen = Command::new(GEN)
        .args([
            "--output",
            "stream-listen:127.0.0.1:0",
            "--machines",
            "10",
            "--log-size",
            "20K",
            "--variants",
            "v3-blob",
            "--loss-model",
            "gilbert:0.05,0.5",
            "--rate",
            "4000",
            "--json",
            "--expect",
            dir.0.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The generator says where it listens; QEMU connects there.
    let mut stderr = std::io::BufReader::new(gen.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("netoops-gen: listening on 127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let receiver = std::thread::spawn(move || receive_all(&rx, Duration::from_millis(1500)));
    let mut qemu = qemu_hub(local, remote, StreamEnd::Client(port));
    let out = gen.wait_with_output().unwrap();
    assert!(out.status.success());
    qemu.assert_running();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let frames: Vec<Vec<u8>> = receiver
        .join()
        .unwrap()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let sent = v["datagrams_sent"].as_u64().unwrap();
    assert_eq!(frames.len() as u64, sent, "QEMU passed every frame");
    assert!(frames.iter().all(|f| f.len() == 14 + 20 + 8 + 1412));
    let datagrams: Vec<(SocketAddr, Vec<u8>)> = frames
        .iter()
        .map(|f| {
            let (_, _, src, to, payload) = parse_frame(f).expect("valid frame");
            assert_eq!(to.to_string(), "10.0.2.15:2004");
            (SocketAddr::V4(src), payload.to_vec())
        })
        .collect();
    check_against_expectations(&dir.0, &datagrams);
}
