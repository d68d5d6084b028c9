//! Helpers for the appliance end-to-end tests (`tests/tests/appliance.rs`): the relay image
//! booted under QEMU (TCG) with real virtio NICs, next to the real collector and generator.
//!
//! - [`image`] builds the release image once, with the same code as `netoops-image build`.
//! - [`Vm`] boots it with one of three ingresses ([`Ingress`]): QEMU user networking with a
//!   UDP host forward on the only NIC (how `netoops-image appliance` runs it), or raw frames
//!   on a second NIC through `-netdev stream` (QEMU connects to a listener of ours or the
//!   generator's: lossless, flow-controlled) or `-netdev dgram` (for rate measurements).
//!   The upstream connection always goes through user networking to a collector on host
//!   loopback (10.0.2.2 from the guest). Each NIC is virtio-net unless the spec names an
//!   Intel model ([`VmSpec::ingress_model`], [`VmSpec::upstream_model`]).
//! - [`read_expectations`] / [`check_expectation`] compare what the collector stored with the
//!   generator's `--expect` output.
//! - [`udp_frame`] builds Ethernet/IPv4/UDP frames (with `netoops_image::frame`), well-formed
//!   or deliberately broken;
//!   [`FrameLink`] sends them over the stream connection QEMU opened, and [`StreamProxy`]
//!   passes the generator's frames on while keeping that connection open.
//!
//! Every process sits in a [`Process`] guard that kills it on drop; [`vm_lock`] keeps to one
//! VM at a time (a polling guest keeps a core busy, and the machine has two).

use crate::hosted::{binaries, parse_counters, Counters, Process, PATIENCE};
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The relay's address on every test network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The ingress NIC's MAC (frames are addressed to it).
pub const INGRESS_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The upstream NIC's MAC in two-NIC setups.
pub const UPSTREAM_MAC: &str = "52:54:00:12:34:57";
/// QEMU status for the board's refused-configuration exit (`(0x14 << 1) | 1`).
pub const EXIT_BAD_CONFIG_STATUS: i32 = 41;

/// One VM at a time in this test binary.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `nic <n>` of an appliance `nic <n>: ...` line (which may start with the time).
pub fn nic_label(line: &str) -> &str {
    let from = line.find("nic ").unwrap_or(0);
    line[from..].split(':').next().unwrap_or_default()
}

/// The release image (`netoops-image build --release`), built once per test process.
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Ok(path) = std::env::var("NETOOPS_IMAGE") {
            return PathBuf::from(path);
        }
        netoops_image::build::build_kernel(true)
            .unwrap_or_else(|e| panic!("building the relay image: {e}"))
            .path
    })
}

/// Checks that QEMU is installed.
pub fn require_qemu() {
    assert!(
        netoops_image::have_program(netoops_image::qemu::QEMU),
        "{} not found: {}",
        netoops_image::qemu::QEMU,
        netoops_image::qemu::QEMU_INSTALL
    );
}

/// A free UDP port on 127.0.0.1 at the time of the call.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    s.local_addr().expect("probe address").port()
}

/// A free TCP port on 127.0.0.1 at the time of the call.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe listener");
    l.local_addr().expect("probe address").port()
}

/// Where the relay's netoops traffic comes from.
#[derive(Clone, Copy, Debug)]
pub enum Ingress {
    /// One NIC on user networking; host UDP 127.0.0.1:`udp_port` forwarded to the guest.
    User {
        /// Host port.
        udp_port: u16,
    },
    /// A second NIC whose frames come over TCP: QEMU connects to 127.0.0.1:`port`.
    Stream {
        /// The listener's port (ours or the generator's).
        port: u16,
    },
    /// A second NIC on `-netdev dgram`: QEMU reads frames on 127.0.0.1:`port` and sends the
    /// guest's frames to 127.0.0.1:`port + 1`.
    Dgram {
        /// QEMU's local port.
        port: u16,
    },
    /// A second NIC whose frames come over TCP, with QEMU listening on 127.0.0.1:`port` for
    /// the peer (a Linux guest's QEMU, `linux::LinuxNet::to_listening_relay`). Lossless: when
    /// the guest's receive ring is full QEMU stops reading, and TCP holds the peer back,
    /// where a datagram socket overflows once the host starves QEMU of CPU.
    StreamListen {
        /// QEMU's listening port.
        port: u16,
    },
}

impl Ingress {
    /// The `-netdev` of a raw-frame ingress NIC (every kind but `User`); such a VM reaches its
    /// upstream through a second NIC on user networking.
    fn raw_netdev(self) -> Option<String> {
        match self {
            Ingress::User { .. } => None,
            Ingress::Stream { port } => Some(format!(
                "stream,id=in,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
            )),
            Ingress::StreamListen { port } => Some(format!(
                "stream,id=in,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
            )),
            Ingress::Dgram { port } => Some(format!(
                "dgram,id=in,local.type=inet,local.host=127.0.0.1,local.port={port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                port + 1
            )),
        }
    }
}

/// How to boot the appliance.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// `-M` value, e.g. `q35`, `pc`, `microvm,acpi=off`.
    pub machine: String,
    /// Netoops ingress.
    pub ingress: Option<Ingress>,
    /// Collector port on host loopback (the guest's upstream is 10.0.2.2:port).
    pub collector_port: u16,
    /// More command-line keys.
    pub extra: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// A whole command line to use instead of [`VmSpec::cmdline`]'s.
    pub cmdline_override: Option<String>,
    /// QEMU device model of the ingress NIC on PCI machines: [`VIRTIO_NET`] (the default),
    /// `e1000` or `e1000e`. microvm always gets virtio-mmio.
    pub ingress_model: String,
    /// QEMU device model of the upstream NIC in two-NIC setups (as `ingress_model`).
    pub upstream_model: String,
    /// BIOS on pc/q35 (what `netoops-image appliance` uses by default: qboot).
    pub bios: netoops_image::qemu::Bios,
    /// Host TCP ports on 127.0.0.1 forwarded to guest ports, `(host, guest)`, on the
    /// [`Ingress::User`] NIC (e.g. the HTTP endpoint).
    pub tcp_forward: Vec<(u16, u16)>,
}

/// QEMU's virtio-net PCI device model.
pub const VIRTIO_NET: &str = "virtio-net-pci";

impl VmSpec {
    /// q35, 256 MiB, the given ingress and collector.
    pub fn new(ingress: Ingress, collector_port: u16) -> VmSpec {
        VmSpec {
            machine: "q35".into(),
            ingress: Some(ingress),
            collector_port,
            extra: String::new(),
            memory_mib: 256,
            cmdline_override: None,
            ingress_model: VIRTIO_NET.into(),
            upstream_model: VIRTIO_NET.into(),
            bios: netoops_image::qemu::Bios::default(),
            tcp_forward: Vec::new(),
        }
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        if let Some(line) = &self.cmdline_override {
            return line.clone();
        }
        let mut line = format!(
            "ip={GUEST_IP}/24 gw=10.0.2.2 upstream=10.0.2.2:{} stats=1s upstream_key={}",
            self.collector_port,
            crate::hosted::test_upstream_key()
        );
        if self.ingress.and_then(Ingress::raw_netdev).is_some() {
            line.push_str(&format!(" upstream_nic={UPSTREAM_MAC}"));
        }
        if !self.extra.is_empty() {
            line.push(' ');
            line.push_str(&self.extra);
        }
        line
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Vec<String> {
        let mmio = self.machine.starts_with("microvm");
        // `extra` is for virtio-net only (e1000 has no queue size); no model gets an option ROM.
        let nic = |model: &str, netdev: &str, mac: &str, extra: &str| {
            if mmio {
                format!("virtio-net-device,netdev={netdev},mac={mac}")
            } else if model == VIRTIO_NET {
                format!("{VIRTIO_NET},netdev={netdev},mac={mac},romfile={extra}")
            } else {
                format!("{model},netdev={netdev},mac={mac},romfile=")
            }
        };
        let ingress_model = self.ingress_model.as_str();
        let ingress_mac = format_mac(&INGRESS_MAC);
        let mut a: Vec<String> = [
            "-M",
            &netoops_image::qemu::with_ram_backend(&self.machine),
            "-accel",
            "tcg",
            "-m",
            &format!("{}M", self.memory_mib),
            "-object",
            &netoops_image::qemu::ram_backend(self.memory_mib),
            "-smp",
            "1",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-nic",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !mmio {
            a.extend(["-vga".into(), "none".into()]);
            if let Some(bios) = self.bios.file() {
                a.extend(["-bios".into(), bios.display().to_string()]);
            }
        }
        a.push("-kernel".into());
        a.push(image().display().to_string());
        a.extend(["-append".into(), self.cmdline()]);
        if let Some(Ingress::User { udp_port }) = self.ingress {
            let mut netdev = format!("user,id=n0,hostfwd=udp:127.0.0.1:{udp_port}-:2004");
            for (host, guest) in &self.tcp_forward {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            a.extend(["-netdev".into(), netdev, "-device".into()]);
            a.push(nic(ingress_model, "n0", &ingress_mac, ""));
        }
        // A raw-frame ingress NIC, with the upstream on user networking as the second NIC.
        if let Some(netdev) = self.ingress.and_then(Ingress::raw_netdev) {
            a.extend(["-netdev".into(), netdev, "-device".into()]);
            a.push(nic(
                ingress_model,
                "in",
                &ingress_mac,
                ",rx_queue_size=1024",
            ));
            a.extend(["-netdev".into(), "user,id=up".into(), "-device".into()]);
            a.push(nic(&self.upstream_model, "up", UPSTREAM_MAC, ""));
        }
        a
    }
}

fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A running appliance.
pub struct Vm {
    /// QEMU, console on stdout.
    pub process: Process,
    /// When QEMU was started.
    pub started: Instant,
}

impl Vm {
    /// Boots `spec` (the caller holds [`vm_lock`]).
    pub fn boot(spec: &VmSpec) -> Vm {
        require_qemu();
        let args = spec.args();
        let mut cmd = Command::new(netoops_image::qemu::QEMU);
        cmd.args(&args);
        let started = Instant::now();
        Vm {
            process: Process::spawn("relay VM", cmd),
            started,
        }
    }

    /// Waits for a console line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.process.wait_for_line(needle)
    }

    /// The last console line holding the marker `prefix` (lines may start with the time).
    pub fn last_line(&self, prefix: &str) -> Option<String> {
        self.process
            .stdout_lines()
            .into_iter()
            .rev()
            .find(|l| l.contains(prefix))
    }

    /// Counters from the last `prefix` line (`counters:`, `fastpath:`, `nic ingress:`).
    pub fn counters(&self, prefix: &str) -> Counters {
        self.last_line(prefix)
            .map(|l| parse_counters(&l))
            .unwrap_or_default()
    }

    /// Waits until the last `prefix` line satisfies `done`.
    pub fn wait_counters(&mut self, prefix: &str, what: &str, done: impl Fn(&Counters) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if done(&self.counters(prefix)) {
                return;
            }
            assert!(
                !self.process.has_exited(),
                "the VM exited while waiting for {what}\n{}",
                self.process.describe()
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.process.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `netoops-gen`, built once per test process (debug profile, like the other binaries).
pub fn generator() -> &'static Path {
    static GENERATOR: OnceLock<PathBuf> = OnceLock::new();
    GENERATOR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(crate::hosted::workspace_root())
            .args(["build", "-p", "netoops-bench", "--bin", "netoops-gen"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of netoops-gen failed");
        let path = binaries()
            .collector
            .with_file_name(format!("netoops-gen{}", std::env::consts::EXE_SUFFIX));
        assert!(path.exists(), "{} was not built", path.display());
        path
    })
}

/// Runs `netoops-gen` with `args` to completion; returns its stdout.
pub fn run_generator(args: &[String]) -> String {
    let out = Command::new(generator())
        .args(args)
        .output()
        .expect("running netoops-gen");
    assert!(
        out.status.success(),
        "netoops-gen {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Keeps a `-netdev stream` NIC connected while feeders (the generator's `stream:` output)
/// come and go: QEMU 7.2 dereferences a NULL channel (SIGSEGV) when its stream peer closes
/// while frames are still buffered, which is what a generator does right after writing its
/// last frame. QEMU connects to [`StreamProxy::qemu_port`] (`server=off`); each feeder
/// connects to [`StreamProxy::feed_port`] in turn and its bytes are copied through. The QEMU
/// connection closes only when the proxy is dropped (drop the VM first).
pub struct StreamProxy {
    qemu: TcpListener,
    feed: TcpListener,
    stop: Arc<AtomicBool>,
}

impl StreamProxy {
    /// Binds both ports on 127.0.0.1.
    pub fn start() -> StreamProxy {
        StreamProxy {
            qemu: TcpListener::bind("127.0.0.1:0").expect("binding the QEMU side"),
            feed: TcpListener::bind("127.0.0.1:0").expect("binding the feeder side"),
            stop: Arc::default(),
        }
    }

    /// Where QEMU connects.
    pub fn qemu_port(&self) -> u16 {
        self.qemu.local_addr().expect("address").port()
    }

    /// Where feeders connect (`netoops-gen --output stream:127.0.0.1:PORT`).
    pub fn feed_port(&self) -> u16 {
        self.feed.local_addr().expect("address").port()
    }

    /// Waits for QEMU, then copies every feeder's bytes to it until the proxy is dropped.
    /// Call after starting the VM.
    pub fn run(&self) {
        let mut link = FrameLink::accept(&self.qemu);
        let feed = self.feed.try_clone().expect("cloning the listener");
        feed.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::clone(&self.stop);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut feeder, _)) = feed.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = feeder.set_nonblocking(false);
                while let Ok(n @ 1..) = feeder.read(&mut buf) {
                    if link.stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
            // `link` (QEMU's connection) lives until here.
        });
    }
}

impl Drop for StreamProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One machine's line of the generator's `--expect` output.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// `expected.json`.
    pub json: Value,
    /// `expected.log`.
    pub text: Vec<u8>,
}

impl Expectation {
    /// The source address.
    pub fn ip(&self) -> &str {
        self.json["ip"].as_str().unwrap_or("")
    }

    /// The collector's dump key.
    pub fn key(&self) -> &str {
        self.json["key"].as_str().unwrap_or("")
    }

    /// Whether any datagram reached the relay.
    pub fn heard(&self) -> bool {
        self.json["received"].as_u64().unwrap_or(0) > 0
    }
}

/// Every machine's expectation under `dir` (the generator's `--expect DIR`), by machine.
pub fn read_expectations(dir: &Path) -> Vec<Expectation> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("reading the expectations") {
        let path = entry.expect("directory entry").path();
        let meta = path.join("expected.json");
        if !meta.is_file() {
            continue;
        }
        let json: Value = serde_json::from_slice(&fs::read(&meta).expect("expected.json"))
            .expect("expected.json parses");
        let text_file = json["text_file"].as_str().unwrap_or("expected.log");
        let text = fs::read(path.join(text_file)).expect("expected text");
        out.push(Expectation { json, text });
    }
    out.sort_by_key(|e| e.json["machine"].as_u64());
    out
}

/// Fields a stored dump's metadata must share with the expectation.
const CHECKED_FIELDS: [&str; 11] = [
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
];

/// Checks the collector store `store` against one expectation. `ip_dir` overrides the
/// directory (user networking shows a sender on host 127.0.0.1 as 10.0.2.2). A machine never heard must
/// have nothing stored; otherwise its dump must match field by field and byte by byte, and
/// exactly one crash notice line must name it.
pub fn check_expectation(
    store: &Path,
    e: &Expectation,
    ip_dir: Option<&str>,
) -> Result<(), String> {
    let dir = store.join(ip_dir.unwrap_or(e.ip()));
    let key = e.key();
    let meta_path = dir.join(format!("{key}.json"));
    if !e.heard() {
        return match meta_path.exists() {
            true => Err(format!(
                "{}: stored although every datagram was lost",
                e.ip()
            )),
            false => Ok(()),
        };
    }
    let meta: Value = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{} {key}: not stored (yet)", e.ip()))?;
    for field in CHECKED_FIELDS {
        if meta[field] != e.json[field] {
            return Err(format!(
                "{} {key}: {field} is {}, want {}",
                e.ip(),
                meta[field],
                e.json[field]
            ));
        }
    }
    let text = fs::read(dir.join(format!("{key}.log")))
        .map_err(|err| format!("{} {key}: text: {err}", e.ip()))?;
    if text != e.text {
        let at = text
            .iter()
            .zip(&e.text)
            .position(|(a, b)| a != b)
            .unwrap_or(text.len().min(e.text.len()));
        return Err(format!(
            "{} {key}: text differs at byte {at} ({} stored, {} expected)",
            e.ip(),
            text.len(),
            e.text.len()
        ));
    }
    let crashes = fs::read_to_string(dir.join("crashes.jsonl")).unwrap_or_default();
    let notices = crashes
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|c| c["dump_id"] == e.json["dump_id"] && c["boot_id"] == e.json["boot_id"])
        .count();
    if notices != 1 {
        return Err(format!("{} {key}: {notices} crash notices, want 1", e.ip()));
    }
    Ok(())
}

/// Waits until every expectation holds; panics with the first failures and `context()`.
pub fn wait_expectations(
    store: &Path,
    exps: &[Expectation],
    ip_dir: Option<&str>,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let failures: Vec<String> = exps
            .iter()
            .filter_map(|e| check_expectation(store, e, ip_dir).err())
            .collect();
        if failures.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} machines not stored as expected, e.g.:\n{}\n{}",
            failures.len(),
            exps.len(),
            failures[..failures.len().min(10)].join("\n"),
            context()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What to get wrong in a frame built by [`udp_frame`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Corrupt the IPv4 header checksum.
    pub ip_checksum: bool,
    /// Mark the packet as a first fragment (more-fragments set).
    pub fragment: bool,
    /// Corrupt the UDP checksum.
    pub udp_checksum: bool,
    /// Claim a UDP length beyond the packet.
    pub udp_length: bool,
}

/// An Ethernet/IPv4/UDP frame from `src` to `dst` carrying `payload`, addressed to the
/// ingress NIC, with valid checksums unless `damage` says otherwise. Built by the image
/// tool's frame writer (what `netoops-image appliance` feeds the guest), then damaged.
pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], damage: Damage) -> Vec<u8> {
    use netoops_image::frame::{
        internet_checksum, udp_checksum, FrameConfig, FrameWriter, MacAddr,
    };
    const IP: usize = 14;
    const UDP: usize = IP + 20;
    let mut writer = FrameWriter::new(FrameConfig {
        dst_mac: MacAddr(INGRESS_MAC),
        src_mac: None,
        dst,
        udp_checksum: true,
    });
    let mut f = vec![0u8; UDP + 8 + payload.len()];
    f[UDP + 8..].copy_from_slice(payload);
    let len = writer
        .write(&mut f, src, payload.len())
        .expect("the payload fits one IPv4 packet");
    f.truncate(len);
    let refill_ip_checksum = |f: &mut Vec<u8>| {
        f[IP + 10..IP + 12].fill(0);
        let c = internet_checksum(&f[IP..UDP]);
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    };
    if damage.fragment {
        // More fragments, no DF: a first fragment, with a valid header checksum.
        f[IP + 6..IP + 8].copy_from_slice(&0x2000u16.to_be_bytes());
        refill_ip_checksum(&mut f);
    }
    if damage.udp_length {
        // Claims 64 bytes more than there are; the checksum covers the claim.
        let claimed = (len - UDP + 64) as u16;
        f[UDP + 4..UDP + 6].copy_from_slice(&claimed.to_be_bytes());
        f[UDP + 6..UDP + 8].fill(0);
        let c = udp_checksum(*src.ip(), *dst.ip(), &f[UDP..]);
        f[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
    }
    if damage.ip_checksum {
        f[IP + 10] ^= 0x5a;
        f[IP + 11] ^= 0x5a;
    }
    if damage.udp_checksum {
        f[UDP + 7] ^= 0xff;
    }
    f
}

/// The connection a `-netdev stream,server=off` NIC made to us: frames go in length-prefixed;
/// what the guest sends back is read and discarded on a side thread. Keep it until the VM
/// is gone (see [`StreamProxy`]).
pub struct FrameLink {
    stream: TcpStream,
}

impl FrameLink {
    /// Waits for QEMU to connect to `listener`.
    pub fn accept(listener: &TcpListener) -> FrameLink {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let deadline = Instant::now() + PATIENCE;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "QEMU never connected its stream NIC"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accepting QEMU's stream connection: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        let mut reader = stream.try_clone().expect("cloning the stream");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        FrameLink { stream }
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &[u8]) {
        self.stream
            .write_all(&(frame.len() as u32).to_be_bytes())
            .and_then(|()| self.stream.write_all(frame))
            .expect("writing a frame to QEMU");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_unless_damaged() {
        use netoops_image::frame::{internet_checksum, parse_frame};
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 7), 6666);
        let dst = SocketAddrV4::new(GUEST_IP, 2004);
        let f = udp_frame(src, dst, b"hello", Damage::default());
        assert_eq!(f.len(), 14 + 20 + 8 + 5);
        let (dmac, _, s, d, p) = parse_frame(&f).expect("a valid frame");
        assert_eq!((dmac.0, s, d, p), (INGRESS_MAC, src, dst, &b"hello"[..]));
        let damaged = |d: Damage| udp_frame(src, dst, b"hello", d);
        let ip_bad = damaged(Damage {
            ip_checksum: true,
            ..Damage::default()
        });
        assert_ne!(internet_checksum(&ip_bad[14..34]), 0);
        let fragment = damaged(Damage {
            fragment: true,
            ..Damage::default()
        });
        assert_eq!(
            internet_checksum(&fragment[14..34]),
            0,
            "header still valid"
        );
        assert_eq!(fragment[20] & 0x20, 0x20, "more fragments");
        let udp_bad = damaged(Damage {
            udp_checksum: true,
            ..Damage::default()
        });
        assert!(parse_frame(&udp_bad).is_none());
        let long = damaged(Damage {
            udp_length: true,
            ..Damage::default()
        });
        assert_eq!(u16::from_be_bytes([long[38], long[39]]), 8 + 5 + 64);
    }

    #[test]
    fn intel_models_replace_virtio_net_per_role() {
        let mut spec = VmSpec::new(Ingress::Dgram { port: 7000 }, 7001);
        spec.ingress_model = "e1000e".into();
        let args = spec.args();
        let has = |a: &str| args.iter().any(|x| x == a);
        assert!(
            has("e1000e,netdev=in,mac=52:54:00:12:34:56,romfile="),
            "{args:?}"
        );
        assert!(
            has("virtio-net-pci,netdev=up,mac=52:54:00:12:34:57,romfile="),
            "{args:?}"
        );
        spec.upstream_model = "e1000".into();
        spec.ingress = Some(Ingress::User { udp_port: 7002 });
        let args = spec.args();
        assert!(args.iter().any(|x| x.starts_with("e1000e,netdev=n0,")));
        assert!(!args.iter().any(|x| x.contains("netdev=up")), "one NIC");
    }

    #[test]
    fn two_nic_specs_select_the_upstream_nic() {
        let spec = VmSpec::new(Ingress::Stream { port: 7000 }, 7001);
        let line = spec.cmdline();
        assert!(line.contains("upstream=10.0.2.2:7001"), "{line}");
        assert!(line.contains("upstream_nic=52:54:00:12:34:57"), "{line}");
        let user = VmSpec::new(Ingress::User { udp_port: 7002 }, 7001);
        assert!(!user.cmdline().contains("upstream_nic"));
    }
}
