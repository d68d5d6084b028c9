//! Shared test pieces: a relay-side driver that runs the real `UpstreamLink` over real std
//! TCP sockets (the same thin loop the hosted relay runs), and record builders.
#![allow(dead_code)]

pub mod crashes;
pub mod raw;

use netoops_collect::server::Server;
use netoops_collect::session::Counters;
use netoops_core::time::Instant;
use netoops_core::upstream::record::RegisterSet;
use netoops_core::upstream::{
    CloseReason, Cpu, CrashSeen, DumpIdentity, DumpMeta, LinkConfig, LinkEvent, Record, Source,
    UpstreamLink,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Drives an `UpstreamLink` over nonblocking std sockets.
pub struct Driver {
    pub link: UpstreamLink,
    /// Upstream addresses by index; tests may change them (a restarted collector).
    pub addrs: Vec<SocketAddr>,
    stream: Option<(usize, TcpStream)>,
    pending: Vec<u8>,
    start: std::time::Instant,
    pub events: Vec<LinkEvent>,
    /// False: replies are left unread (the relay looks like it never got the collector's
    /// Acks, though the collector stored and acknowledged).
    pub reading: bool,
}

impl Driver {
    pub fn new(config: LinkConfig, addrs: Vec<SocketAddr>) -> Self {
        Driver {
            link: UpstreamLink::new(config),
            addrs,
            stream: None,
            pending: Vec::new(),
            start: std::time::Instant::now(),
            events: Vec::new(),
            reading: true,
        }
    }

    /// The relay clock: starts at 60 s, so record times like 100 ms lie in its past.
    pub fn now(&self) -> Instant {
        Instant::from_micros(60_000_000 + self.start.elapsed().as_micros() as u64)
    }

    pub fn enqueue(&mut self, record: &Record, text: &[u8]) -> u64 {
        let now = self.now();
        self.link
            .enqueue(now, record, text.len() as u32, |w| {
                for piece in text.chunks(1000) {
                    w.write(piece);
                }
            })
            .expect("enqueue")
    }

    /// One pass of the relay loop.
    pub fn step(&mut self) {
        let now = self.now();
        let link = &mut self.link;
        if self.stream.is_none() {
            if let Some(i) = link.poll_connect(now) {
                match TcpStream::connect_timeout(&self.addrs[i], Duration::from_millis(500)) {
                    Ok(s) => {
                        s.set_nonblocking(true).unwrap();
                        s.set_nodelay(true).unwrap();
                        self.stream = Some((i, s));
                        self.pending.clear();
                        link.handle_connected(now, i);
                    }
                    Err(_) => link.handle_closed(now, i, CloseReason::ConnectFailed),
                }
            }
        }
        if let Some((i, s)) = &mut self.stream {
            let i = *i;
            let mut closed = None;
            let mut buf = [0u8; 4096];
            // Not reading: replies stay in the socket.
            let reading = self.reading;
            loop {
                if !reading {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed = Some(CloseReason::PeerClosed);
                        break;
                    }
                    Ok(n) => {
                        let _ = link.handle_input(now, &buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = Some(CloseReason::IoError);
                        break;
                    }
                }
            }
            let mut out = vec![0u8; 64 * 1024];
            while closed.is_none() {
                if self.pending.is_empty() {
                    let n = link.poll_transmit(now, &mut out);
                    if n == 0 {
                        break;
                    }
                    self.pending.extend_from_slice(&out[..n]);
                }
                match s.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => closed = Some(CloseReason::IoError),
                }
            }
            if let Some(reason) = closed {
                self.stream = None;
                link.handle_closed(now, i, reason);
            }
        }
        if let Some(i) = link.poll_close() {
            self.stream = None;
            link.handle_closed(now, i, CloseReason::PeerClosed);
        }
        if link.poll_timeout().is_some_and(|t| t <= now) {
            link.handle_timeout(now);
        }
        while let Some(ev) = link.poll_event() {
            self.events.push(ev);
        }
    }

    /// Steps until `done` or the timeout; returns whether `done` became true.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Driver) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            self.step();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }

    /// Steps until every spooled record is acknowledged.
    pub fn drain(&mut self, timeout: Duration) -> bool {
        self.run_until(timeout, |d| d.link.stats().spool_records == 0)
    }
}

pub fn link_config(instance: u64) -> LinkConfig {
    LinkConfig {
        spool_bytes: 16 * 1024 * 1024,
        spool_records: 4096,
        connect_timeout: netoops_core::time::Duration::from_secs(1),
        ack_timeout: netoops_core::time::Duration::from_secs(3),
        backoff_min: netoops_core::time::Duration::from_millis(20),
        backoff_max: netoops_core::time::Duration::from_millis(300),
        ..LinkConfig::new(1, "test-relay", instance)
    }
}

pub fn identity(source: &str, dump_id: u16) -> DumpIdentity {
    DumpIdentity {
        source: Source::from(source.parse::<SocketAddr>().unwrap()),
        version: 3,
        boot_id: 7,
        dump_id,
        dump_type: 1,
    }
}

/// The CPU every test dump and crash notice reports (family 6 model 85: Skylake-SP).
pub const XEON: Cpu = Cpu {
    vendor: 1,
    family: 6,
    model: 85,
    stepping: 4,
};

/// An x86_64 register set of `(name, value)` pairs, in order.
pub fn registers(names_values: &[(&str, u64)]) -> RegisterSet {
    RegisterSet {
        layout: "x86_64".into(),
        names_values: names_values
            .iter()
            .map(|&(name, value)| (name.into(), value))
            .collect(),
    }
}

pub fn crash(source: &str, dump_id: u16, packet_no: u32) -> Record {
    Record::CrashSeen(CrashSeen {
        id: identity(source, dump_id),
        generation: 0,
        kernel_version: "6.1.0-13-amd64".into(),
        packet_count: 12,
        packet_no,
        cpu: Some(XEON),
        registers: Some(registers(&[("ip", 0xffff_ffff_8100_1234), ("sp", 0x10)])),
        seen_at_ms: 100,
        netconsole: None,
    })
}

pub fn dump(source: &str, dump_id: u16, revision: u32, complete: bool) -> Record {
    Record::Dump(DumpMeta {
        kernel_version: "6.1.0-13-amd64".into(),
        packet_count: 12,
        received: if complete { 12 } else { 9 },
        missing: if complete {
            vec![]
        } else {
            vec![(3, 4), (9, 9)]
        },
        zeroed: vec![11],
        complete,
        revision,
        first_seen_ms: 100,
        completed_ms: 1100,
        cpu: Some(XEON),
        registers: Some(registers(&[("ip", 0xffff_ffff_8100_1234)])),
        user_blob: Some(vec![0xa5; 128]),
        ..DumpMeta::new(identity(source, dump_id))
    })
}

/// Deterministic dump text of `len` bytes, distinct per `seed`.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("<0>[{seed}] Kernel panic - not syncing: test {seed}\n").into_bytes();
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(b' ' + (x >> 58) as u8);
    }
    out.truncate(len);
    out
}

/// Writes `bytes` and reads until the peer closes (or 5 s pass); returns what was read.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// The built collector binary serving `dir`, its stdout drained on a thread; returns it with
/// the address from its `listening on` line.
pub fn spawn_collector(dir: &std::path::Path) -> (std::process::Child, SocketAddr) {
    spawn_collector_with(dir, &[], std::process::Stdio::null())
}

/// As [`spawn_collector`], with more `serve` arguments and its stderr going to `stderr`.
pub fn spawn_collector_with(
    dir: &std::path::Path,
    args: &[&str],
    stderr: std::process::Stdio,
) -> (std::process::Child, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = serve_command(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = netoops_core::console::listening(&first).unwrap();
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// The built collector's `serve` over `dir` on a free loopback port, in clear; add arguments
/// and run it.
pub fn serve_command(dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netoops-collect"));
    command
        .args([
            "serve",
            "--allow-plaintext",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir);
    command
}

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asks `done` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A program from a Debian package (in `/usr/sbin` or on `PATH`), or a clear failure naming
/// the package (never a skip).
pub fn debian_program(name: &str, package: &str) -> PathBuf {
    let mut candidates = vec![Path::new("/usr/sbin").join(name)];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: this test needs Debian's {package} package (scripts/setup installs it)")
        })
}

/// Spawns `command` and waits (up to `timeout`) until it accepts TCP connections on loopback
/// `port`; if it exits or does not listen in time, fails with the text of `log`.
pub fn spawn_listening(command: &mut Command, port: u16, timeout: Duration, log: &Path) -> Child {
    let what = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ready = wait_for(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            || child.try_wait().unwrap().is_some()
    });
    let exited = child.try_wait().unwrap();
    if !ready || exited.is_some() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not start ({exited:?}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    child
}

/// Kills (SIGKILL) and reaps `child`: no shutdown of its own, whatever it was doing.
pub fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A child process of ours, killed and reaped when dropped (also by a failed assertion).
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The built collector binary serving `dir` with more `serve` arguments, its stderr in
/// `dir.stderr`; killed when dropped.
pub struct Collector {
    pub child: Reaper,
    pub addr: SocketAddr,
}

impl Collector {
    pub fn spawn(dir: &Path, args: &[&str]) -> Collector {
        let stderr = std::fs::File::create(dir.with_extension("stderr")).unwrap();
        let (child, addr) = spawn_collector_with(dir, args, Stdio::from(stderr));
        Collector {
            child: Reaper(child),
            addr,
        }
    }
}

/// Spawns a bound in-process collector; returns its address and counters.
pub fn spawn_server(server: Server) -> (SocketAddr, Arc<Counters>) {
    let addr = server.local_addr().unwrap();
    let counters = server.counters();
    server.spawn();
    (addr, counters)
}

/// Asserts that a command failed and said `says` on stderr.
pub fn assert_refused(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {out:?}");
    assert!(stderr.contains(says), "wanted {says:?}: {stderr}");
}
