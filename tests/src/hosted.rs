//! Helpers for the hosted end-to-end tests: the real `netoops-relay`, `netoops-collect` and
//! `netoops-gen` binaries run on loopback, a seeded fleet of crashing machines that send real
//! netoops datagrams from their own 127.x.y.z addresses (for tests that need to control
//! timing, e.g. half a fleet before a collector dies), and checks of what the collector stored
//! against [`netoops_wire::model::expected`] or the generator's `--expect` output.
//!
//! Every child process sits in a [`Process`] guard that kills it on drop. Waits poll a
//! condition until a generous deadline and fail with both programs' output; nothing asserts
//! on a fixed sleep.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netoops_core::console;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};
use netoops_wire::model::{expected, ExpectedDump};
use netoops_wire::netoops::{CpuId, DumpType};
use serde_json::Value;

/// Deadline for anything the tests wait for (a loaded 2-core machine is slow, never stuck).
pub const PATIENCE: Duration = Duration::from_secs(180);

/// The workspace root (one level above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Paths of the programs under test.
#[derive(Debug)]
pub struct Binaries {
    /// `netoops-relay`.
    pub relay: PathBuf,
    /// `netoops-collect`.
    pub collector: PathBuf,
    /// `netoops-gen`, the packet generator.
    pub generator: PathBuf,
}

/// Builds the relay, the collector and the generator once per test process (debug profile)
/// and returns their paths.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--bins",
                "-p",
                "netoops-relay",
                "-p",
                "netoops-collect",
                "-p",
                "netoops-bench",
            ])
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of the relay, collector and generator failed"
        );
        let bin = |name: &str| {
            let path = target_dir().join("debug").join(name);
            assert!(path.exists(), "{} was not built", path.display());
            path
        };
        Binaries {
            relay: bin("netoops-relay"),
            collector: bin("netoops-collect"),
            generator: bin("netoops-gen"),
        }
    })
}

type Lines = Arc<Mutex<Vec<String>>>;
/// When each stdout line was read, for timing measurements.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

fn collect_lines(
    stream: impl Read + Send + 'static,
    lines: Lines,
    arrivals: Option<Arrivals>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                    // Under the lines' lock, so both vectors stay the same length.
                    if let Some(arrivals) = &arrivals {
                        arrivals.lock().unwrap_or_else(|p| p.into_inner()).push(at);
                    }
                    lines.push(text);
                }
            }
        }
    })
}

/// A child process whose output is collected line by line; killed on drop.
pub struct Process {
    name: String,
    child: Child,
    stdout: Lines,
    stdout_arrivals: Arrivals,
    stderr: Lines,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` with piped output.
    pub fn spawn(name: &str, mut cmd: Command) -> Process {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = Lines::default();
        let stderr = Lines::default();
        let stdout_arrivals = Arrivals::default();
        if let Some(out) = child.stdout.take() {
            collect_lines(out, Arc::clone(&stdout), Some(Arc::clone(&stdout_arrivals)));
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, Arc::clone(&stderr), None);
        }
        Process {
            name: name.to_string(),
            child,
            stdout,
            stdout_arrivals,
            stderr,
            exit: None,
        }
    }

    /// Lines written to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When the first stdout line containing `needle` was read from the pipe.
    pub fn stdout_arrival(&self, needle: &str) -> Option<Instant> {
        let lines = self.stdout.lock().unwrap_or_else(|p| p.into_inner());
        let i = lines.iter().position(|l| l.contains(needle))?;
        let arrivals = self
            .stdout_arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        arrivals.get(i).copied()
    }

    /// Lines written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many stdout lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Both outputs, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}\n",
            self.name,
            tail(&self.stdout_lines()),
            self.name,
            tail(&self.stderr_lines())
        )
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit.is_some()
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(l) = self.stdout_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                !self.has_exited(),
                "{} exited before printing {needle:?}\n{}",
                self.name,
                self.describe()
            );
            assert!(
                Instant::now() < deadline,
                "{} never printed {needle:?}\n{}",
                self.name,
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.name);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        while !self.has_exited() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit\n{}",
                self.name,
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Give the reader threads a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.exit.expect("exited")
    }

    /// SIGKILL, as a crash: no chance to flush or close anything.
    pub fn kill_hard(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
        }
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(lines: &[String]) -> String {
    let skip = lines.len().saturating_sub(60);
    let mut s = String::new();
    if skip > 0 {
        s.push_str(&format!("[{skip} earlier lines]\n"));
    }
    for l in &lines[skip..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// The key id the end-to-end relays and appliances authenticate with.
pub const TEST_KEY_ID: &str = "e2e-relay";
/// Its pre-shared key (a test value, public: never use it anywhere else).
pub const TEST_KEY_HEX: &str = "6e65746f6f7073206532652074657374206b65792c207075626c696321212121";

/// The test key as `upstream_key` takes it (`ID:KEY`).
pub fn test_upstream_key() -> String {
    format!("{TEST_KEY_ID}:{TEST_KEY_HEX}")
}

/// The collector's keys file line for the test key.
pub fn test_keys_line() -> String {
    format!("{TEST_KEY_ID} {TEST_KEY_HEX}\n")
}

/// A running `netoops-collect serve`.
pub struct Collector {
    /// The process.
    pub process: Process,
    /// Its TCP address.
    pub addr: SocketAddr,
    /// Its storage directory.
    pub dir: PathBuf,
}

impl Collector {
    /// Serves `dir` on `listen` (port 0: any free port) with the test key
    /// ([`test_keys_line`]), and waits until it listens.
    pub fn start(dir: &Path, listen: SocketAddr) -> Collector {
        Collector::start_with_keys(dir, listen, Some(&test_keys_line()))
    }

    /// As [`Collector::start`] with this keys file text (written next to `dir`), or in
    /// plaintext (`--allow-plaintext`) with `None`.
    pub fn start_with_keys(dir: &Path, listen: SocketAddr, keys: Option<&str>) -> Collector {
        let mut cmd = Command::new(&binaries().collector);
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--dir")
            .arg(dir);
        match keys {
            Some(text) => {
                let path = dir.with_extension("keys");
                std::fs::write(&path, text).expect("writing the collector's keys file");
                cmd.arg("--keys").arg(path);
            }
            None => {
                cmd.arg("--allow-plaintext");
            }
        }
        let mut process = Process::spawn("netoops-collect", cmd);
        let line = process.wait_for_line(console::LISTENING);
        let addr = console::listening(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
        Collector {
            process,
            addr,
            dir: dir.to_path_buf(),
        }
    }
}

/// A free TCP port on 127.0.0.1 at the time of the call (for a collector started later).
pub fn free_tcp_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe listener");
    l.local_addr().expect("probe address")
}

/// A running `netoops-relay`.
pub struct Relay {
    /// The process.
    pub process: Process,
    /// Its UDP address.
    pub udp: SocketAddr,
    /// Its netconsole UDP address.
    pub netconsole: Option<SocketAddr>,
}

/// Counters from a relay's counters line, by name (first occurrence of `name <number>`).
pub type Counters = HashMap<String, u64>;

impl Relay {
    /// Starts a relay on 127.0.0.1 (any port) for `upstreams`, with test-friendly settings
    /// (1 s counters, 2 s quiet, room for every test dump) followed by `extra` flags.
    pub fn start(upstreams: &[SocketAddr], extra: &[&str]) -> Relay {
        let mut cmd = Command::new(&binaries().relay);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--stats",
            "1s",
            "--quiet",
            "2s",
            "--memory",
            "256M",
            "--spool",
            "256M",
            "--recv-buffer",
            "16M",
            "--drain-timeout",
            "20s",
        ]);
        for u in upstreams {
            cmd.arg("--upstream").arg(u.to_string());
        }
        // Authenticated with the test key unless the test says otherwise.
        if !extra.iter().any(|a| a.starts_with("--upstream-key")) {
            cmd.arg("--upstream-key").arg(test_upstream_key());
        }
        cmd.args(extra);
        let mut process = Process::spawn("netoops-relay", cmd);
        let line = process.wait_for_line(console::LISTENING);
        let udp = console::listening(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
        let line = process.wait_for_line("netconsole ");
        let netconsole = console::netconsole_listening(&line);
        Relay {
            process,
            udp,
            netconsole,
        }
    }

    /// SIGTERM, then the exit status and the final counters.
    pub fn shutdown(&mut self) -> (ExitStatus, Counters) {
        self.process.signal("TERM");
        let status = self.process.wait_exit();
        let line = self
            .process
            .stdout_lines()
            .into_iter()
            .rev()
            .find(|l| l.contains("final counters:"))
            .unwrap_or_else(|| panic!("no final counters\n{}", self.process.describe()));
        (status, parse_counters(&line))
    }
}

/// The fields of a console line by name (the first occurrence of a name wins), read with the
/// one console parser: a `counters:` line through `netoops_core::console::counters`, which
/// checks its format version (a line of another format fails the test, it is never
/// misread), any other line (`fastpath:`, `nic ingress:`) through `console::fields`.
pub fn parse_counters(line: &str) -> Counters {
    let mut out = Counters::new();
    let fields: Box<dyn Iterator<Item = (&str, u64)>> = if line.contains(console::COUNTERS) {
        match console::counters(line) {
            Ok(f) => Box::new(f),
            Err(e) => panic!("{e}: {line:?}"),
        }
    } else {
        Box::new(console::fields(line))
    };
    for (key, n) in fields {
        out.entry(key.to_string()).or_insert(n);
    }
    out
}

/// SplitMix64: a small seeded generator, so every run sends the same fleet.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One crashing machine: its address, its dump's header and its log in the kernel's two
/// pieces.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Source address (the collector's directory name).
    pub ip: Ipv4Addr,
    /// Everything constant across the dump's datagrams.
    pub header: DumpHeader,
    /// Older piece of the log ring.
    pub s1: Vec<u8>,
    /// Newer piece.
    pub s2: Vec<u8>,
}

impl Machine {
    /// The exact sender for this log.
    pub fn sender(&self) -> SenderModel<'_> {
        SenderModel::new(&self.s1, &self.s2)
    }

    /// The collector's dump key for it.
    pub fn key(&self) -> String {
        let h = &self.header;
        format!(
            "b{}-d{}-t{}-v{}-g0",
            self.boot_id(),
            h.dump_id,
            h.dump_type as u16,
            h.variant.version() as u16
        )
    }

    /// The boot id the wire carries (v2 has none).
    pub fn boot_id(&self) -> u32 {
        if self.header.variant == Variant::V2 {
            0
        } else {
            self.header.boot_id
        }
    }

    /// The kernel version as sent.
    pub fn kernel_version(&self) -> String {
        let kv = &self.header.kernel_version;
        let end = kv.iter().position(|&b| b == 0).unwrap_or(kv.len());
        String::from_utf8_lossy(&kv[..end]).into_owned()
    }
}

/// A seeded fleet of `count` machines at 127.`net`.x.y, each with one dump of the given
/// variants in turn and a log of `min_log..=max_log` bytes. Every tenth log is a multiple of
/// 1024 bytes (the sender then zeroes a chunk); about half the logs are split in two pieces.
pub fn fleet(seed: u64, net: u8, count: usize, min_log: usize, max_log: usize) -> Vec<Machine> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let ip = Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250 + 1) as u8);
            let variant = Variant::ALL[rng.range(0, 3) as usize];
            let kernel = format!("6.1.{}-e2e-{}", rng.range(0, 200), variant.name());
            let mut header = DumpHeader::new(variant, rng.range(0, 65535) as u16, &kernel);
            if rng.range(0, 9) == 0 {
                header.dump_type = DumpType::SoftDump;
            }
            if variant != Variant::V2 {
                header.boot_id = rng.next_u64() as u32;
                header.cpu = CpuId {
                    vendor: 1,
                    family: 6,
                    model: rng.range(0, 255) as u8,
                    stepping: rng.range(0, 15) as u8,
                };
                for r in header.registers.iter_mut() {
                    *r = rng.next_u64();
                }
                for b in header.user_blob.iter_mut() {
                    *b = rng.next_u64() as u8;
                }
            }
            let mut len = rng.range(min_log as u64, max_log as u64) as usize;
            if i % 10 == 3 {
                len = (len / 1024).max(1) * 1024;
            }
            let log = log_text(&mut rng, ip, len);
            let split = if rng.range(0, 1) == 0 {
                0
            } else {
                rng.range(0, len as u64) as usize
            };
            Machine {
                ip,
                header,
                s1: log[..split].to_vec(),
                s2: log[split..].to_vec(),
            }
        })
        .collect()
}

/// `len` bytes of kernel-log-like text ending in a panic line.
fn log_text(rng: &mut Rng, ip: Ipv4Addr, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "eth0",
        "link",
        "up",
        "audit:",
        "systemd[1]:",
        "EXT4-fs",
        "mounted",
        "usb",
        "device",
        "nvme0n1:",
        "CPU",
        "irq",
    ];
    let tail = format!("Kernel panic - not syncing: Fatal exception on {ip}\n");
    let mut log = Vec::with_capacity(len + 128);
    let mut t = 0u64;
    while log.len() + tail.len() < len {
        t += rng.range(1, 900_000);
        let mut line = format!("[{:5}.{:06}] {ip}", t / 1_000_000, t % 1_000_000);
        for _ in 0..rng.range(2, 12) {
            line.push(' ');
            line.push_str(WORDS[rng.range(0, 11) as usize]);
        }
        line.push('\n');
        log.extend_from_slice(line.as_bytes());
    }
    log.extend_from_slice(tail.as_bytes());
    // Keep the newest bytes, exactly `len` of them.
    log.split_off(log.len() - len.min(log.len()))
}

/// What one machine sends: packet numbers in send order, after loss.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Packets sent, in order (all three rounds).
    pub packets: Vec<u32>,
    /// Whether each packet_no arrived at least once.
    pub received: Vec<bool>,
}

impl Plan {
    /// The sender's three rounds with each datagram lost with probability `loss`.
    pub fn new(machine: &Machine, loss: f64, rng: &mut Rng) -> Plan {
        let sender = machine.sender();
        let mut received = vec![false; sender.packet_count() as usize];
        let mut packets = Vec::new();
        for (_, p) in sender.schedule() {
            if rng.unit() >= loss {
                packets.push(p);
                received[p as usize] = true;
            }
        }
        Plan { packets, received }
    }

    /// What a correct receiver stores for this machine.
    pub fn want(&self, machine: &Machine) -> Want {
        Want::of(machine, &self.expected(machine))
    }

    /// What the reference model says a correct receiver reports.
    pub fn expected(&self, machine: &Machine) -> ExpectedDump {
        expected(&machine.sender(), |p| {
            self.received.get(p as usize).copied().unwrap_or(false)
        })
    }
}

/// Bytes queued on the UDP socket bound to 127.0.0.1:`port` (from /proc/net/udp).
fn udp_queue(port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) {
            return None;
        }
        let rx = f.get(4)?.split(':').nth(1)?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Sends every machine's plan to `to`, the machines interleaved datagram by datagram as in a
/// storm. The sender backs off while more than 2 MiB wait in the relay's socket, so the only
/// loss is the planned loss.
pub fn send_storm(to: SocketAddr, machines: &[Machine], plans: &[Plan]) {
    let sockets: Vec<UdpSocket> = machines
        .iter()
        .map(|m| UdpSocket::bind((m.ip, 0)).unwrap_or_else(|e| panic!("binding {}: {e}", m.ip)))
        .collect();
    let mut next = vec![0usize; machines.len()];
    let mut buf = [0u8; 2048];
    let mut chunk = [0u8; netoops_wire::DATA_LEN];
    let mut sent = 0u64;
    loop {
        let mut any = false;
        for (i, m) in machines.iter().enumerate() {
            let Some(&p) = plans[i].packets.get(next[i]) else {
                continue;
            };
            next[i] += 1;
            any = true;
            let sender = m.sender();
            sender.chunk_into(p, &mut chunk);
            let n = encode(&m.header, sender.packet_count(), p, &chunk, &mut buf)
                .expect("2048 bytes hold any datagram");
            sockets[i]
                .send_to(&buf[..n], to)
                .expect("sending on loopback");
            sent += 1;
            if sent % 32 == 0 {
                wait_for_room(to.port());
            }
        }
        if !any {
            return;
        }
    }
}

fn wait_for_room(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while udp_queue(port).is_some_and(|q| q > 2 << 20) {
        assert!(
            Instant::now() < deadline,
            "the relay stopped reading its socket"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends raw datagrams from `from`.
pub fn send_raw(to: SocketAddr, from: Ipv4Addr, datagrams: &[Vec<u8>]) {
    let s = UdpSocket::bind((from, 0)).expect("binding a garbage sender");
    for d in datagrams {
        s.send_to(d, to).expect("sending on loopback");
    }
}

/// Name of a source's directory in the store.
pub fn ip_dir(dir: &Path, ip: Ipv4Addr) -> PathBuf {
    dir.join(ip.to_string())
}

/// The crash notice lines stored for `ip`.
pub fn crash_lines(dir: &Path, ip: Ipv4Addr) -> Vec<Value> {
    let Ok(text) = fs::read_to_string(ip_dir(dir, ip).join("crashes.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

/// A dump's stored metadata: its `.json` at `path`, once it parses (a new dump's `.json` is
/// written in place, so for a moment it can be empty).
pub fn stored_meta(path: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Names of the dump metadata files stored for `ip`: those that parse ([`stored_meta`]).
pub fn dump_files(dir: &Path, ip: Ipv4Addr) -> Vec<String> {
    let Ok(entries) = fs::read_dir(ip_dir(dir, ip)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            // Hidden names are the collector's files in flight, not stored dumps.
            let stored = n.ends_with(".json") && !n.starts_with('.');
            (stored && stored_meta(&e.path()).is_some()).then_some(n)
        })
        .collect();
    names.sort();
    names
}

/// What the collector must hold for one machine.
#[derive(Clone, Debug)]
pub struct Want {
    /// Source address (the store's directory name).
    pub ip: Ipv4Addr,
    /// The collector's dump key.
    pub key: String,
    /// The sender's dump id (crash notice lines carry it).
    pub dump_id: u16,
    /// Metadata fields and the values they must have.
    pub fields: Vec<(String, Value)>,
    /// The dump text.
    pub text: Vec<u8>,
    /// Every datagram was lost: nothing at all may be stored.
    pub unheard: bool,
}

impl Want {
    /// From the reference model, for a machine this crate sent.
    pub fn of(machine: &Machine, want: &ExpectedDump) -> Want {
        let h = &machine.header;
        let missing: Vec<[u32; 2]> = want.missing.iter().map(|&(a, b)| [a, b]).collect();
        let fields = [
            ("complete", Value::from(want.complete)),
            ("received", Value::from(want.received)),
            ("packet_count", Value::from(machine.sender().packet_count())),
            ("missing", serde_json::json!(missing)),
            ("zeroed", serde_json::json!(want.zeroed)),
            ("kernel_version", Value::from(machine.kernel_version())),
            ("version", Value::from(h.variant.version() as u16)),
            ("dump_id", Value::from(h.dump_id)),
            ("boot_id", Value::from(machine.boot_id())),
            ("type", Value::from(h.dump_type as u16)),
            ("generation", Value::from(0)),
        ];
        Want {
            ip: machine.ip,
            key: machine.key(),
            dump_id: h.dump_id,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            text: want.text.clone(),
            unheard: want.received == 0,
        }
    }

    /// From `netoops-gen --expect`: `machine_dir` holds `expected.json` and its text file.
    pub fn from_generator(machine_dir: &Path) -> Want {
        let path = machine_dir.join("expected.json");
        let meta: Value = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| panic!("unreadable {}", path.display()));
        let text_file = meta["text_file"].as_str().unwrap_or("expected.log");
        let text = fs::read(machine_dir.join(text_file))
            .unwrap_or_else(|e| panic!("{}: {e}", machine_dir.display()));
        let fields = [
            "complete",
            "received",
            "packet_count",
            "missing",
            "zeroed",
            "kernel_version",
            "version",
            "dump_id",
            "boot_id",
            "type",
            "generation",
        ]
        .into_iter()
        .map(|k| (k.to_string(), meta[k].clone()))
        .collect();
        Want {
            ip: meta["ip"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no ip in {}", path.display())),
            key: meta["key"].as_str().unwrap_or_default().to_string(),
            dump_id: meta["dump_id"].as_u64().unwrap_or(0) as u16,
            fields,
            text,
            unheard: meta["received"] == 0,
        }
    }
}

impl Want {
    /// Whether every packet arrived.
    pub fn is_complete(&self) -> bool {
        self.fields
            .iter()
            .any(|(k, v)| k == "complete" && *v == Value::Bool(true))
    }
}

/// Every machine's expectation written by `netoops-gen --expect dir`.
pub fn generator_wants(dir: &Path) -> Vec<Want> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| Want::from_generator(d)).collect()
}

/// Checks what `dir` holds for one machine: exactly one dump, under the expected key, with
/// the expected metadata and text, and exactly one crash notice line (or nothing at all for
/// a machine nobody heard).
pub fn check_stored(dir: &Path, want: &Want) -> Result<(), String> {
    let ip = want.ip;
    let files = dump_files(dir, ip);
    let crashes = crash_lines(dir, ip);
    if want.unheard {
        if files.is_empty() && crashes.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "{ip}: nothing was received, yet {files:?} is stored"
        ));
    }
    let key = &want.key;
    if files != [format!("{key}.json")] {
        return Err(format!("{ip}: dump files {files:?}, want [{key}.json]"));
    }
    let base = ip_dir(dir, ip);
    let meta: Value = fs::read(base.join(format!("{key}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{ip}: unreadable {key}.json"))?;
    for (field, value) in &want.fields {
        if meta[field] != *value {
            return Err(format!("{ip}: {field} is {}, want {value}", meta[field]));
        }
    }
    let text = fs::read(base.join(format!("{key}.log")))
        .map_err(|e| format!("{ip}: reading {key}.log: {e}"))?;
    if text != want.text {
        let at = text
            .iter()
            .zip(&want.text)
            .position(|(a, b)| a != b)
            .unwrap_or(text.len().min(want.text.len()));
        return Err(format!(
            "{ip}: text differs at byte {at} ({} bytes stored, {} expected)",
            text.len(),
            want.text.len()
        ));
    }
    let notices = crashes
        .iter()
        .filter(|c| c["dump_id"] == want.dump_id)
        .count();
    if crashes.len() != 1 || notices != 1 {
        return Err(format!(
            "{ip}: {} crash notice lines ({notices} for dump {}), want exactly 1",
            crashes.len(),
            want.dump_id
        ));
    }
    Ok(())
}

/// Waits until [`check_stored`] passes for every want, then returns; on timeout panics with
/// the first failures and `context()` (the programs' output).
pub fn wait_stored(dir: &Path, wants: &[Want], context: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    let mut pending: Vec<&Want> = wants.iter().collect();
    loop {
        let mut failures = Vec::new();
        pending.retain(|w| match check_stored(dir, w) {
            Ok(()) => false,
            Err(e) => {
                failures.push(e);
                true
            }
        });
        if pending.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {} machines not stored as expected, e.g.:\n{}\n{}",
                pending.len(),
                wants.len(),
                failures[..failures.len().min(10)].join("\n"),
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `done()` holds; on timeout panics naming `what`, with `context()`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_lines_parse_by_name() {
        let c = parse_counters(
            "2026-01-01T00:00:00.000Z final counters: format 1 | datagrams 12 chunks 3 dup 4 malformed 5 \
             | dumps started 2 chunks 1/100 | socket datagrams 99 truncated 1",
        );
        assert_eq!(c["datagrams"], 12);
        assert_eq!(c["chunks"], 3);
        assert_eq!(c["malformed"], 5);
        assert_eq!(c["started"], 2);
        assert_eq!(c["truncated"], 1);
    }

    #[test]
    fn fleets_are_reproducible_and_varied() {
        let a = fleet(7, 9, 40, 1024, 64 * 1024);
        let b = fleet(7, 9, 40, 1024, 64 * 1024);
        assert_eq!(a.len(), 40);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.ip, &x.s1, &x.s2, &x.header),
                (y.ip, &y.s1, &y.s2, &y.header)
            );
            let len = x.s1.len() + x.s2.len();
            assert!((1024..=64 * 1024).contains(&len));
            assert!(x.s2.ends_with(b"\n") && !x.s2.contains(&0));
        }
        for v in Variant::ALL {
            assert!(a.iter().any(|m| m.header.variant == v), "{v} missing");
        }
        assert!(a.iter().any(|m| m.s1.is_empty()) && a.iter().any(|m| !m.s1.is_empty()));
        assert!(a[3].s1.len() + a[3].s2.len() == (a[3].s1.len() + a[3].s2.len()) / 1024 * 1024);
        assert_eq!(a[0].ip, Ipv4Addr::new(127, 9, 0, 1));
    }

    #[test]
    fn plans_lose_about_the_asked_share() {
        let m = &fleet(1, 9, 1, 200 * 1024, 200 * 1024)[0];
        let plan = Plan::new(m, 0.1, &mut Rng::new(3));
        let total = 3 * m.sender().packet_count() as usize;
        let lost = total - plan.packets.len();
        assert!((total / 20..total / 5).contains(&lost), "{lost} of {total}");
        let want = plan.expected(m);
        assert_eq!(
            want.received as usize,
            plan.received.iter().filter(|&&r| r).count()
        );
    }
}
