//! A real Linux kernel in the test suite: Debian 12's packaged kernel with netconsole, booted
//! under QEMU (TCG) from a tiny initramfs that writes marker lines to `/dev/kmsg` and then
//! panics with sysrq, so tests see exactly what a crashing mainline machine sends.
//!
//! - [`kernel`] / [`LinuxKernel::fetch`] download the kernel and `busybox-static` packages with
//!   `apt-get download` (running `apt-get update` once when apt cannot resolve or download)
//!   into a cache outside the repository ([`cache_dir`]), keyed by package and version, and
//!   keep only `vmlinuz` (plus the `vmlinux` ELF inside it, for PVH boots), the kernel config,
//!   the modules the NICs and netconsole need (dependencies read from each module's
//!   `.modinfo`, built-ins from `modules.builtin`, `.ko.xz`/`.zst`/`.gz` decompressed) and
//!   the busybox binary. A second run downloads nothing. When a package cannot be fetched the
//!   error says `could not fetch the Linux kernel package: ...; run apt-get update` (tests
//!   fail, they do not skip). `NETOOPS_LINUX_PACKAGE` picks another kernel, e.g.
//!   `linux-image-6.12-amd64` (Debian 12's 6.12 backport, which knows the `r` option).
//! - [`initramfs`] writes a newc cpio archive (uncompressed: the kernel takes it as is) with
//!   busybox, the modules, the markers and [`INIT_SCRIPT`].
//! - [`LinuxSpec`] says how to boot: NIC model ([`Nic`]), netconsole format ([`Format`]),
//!   where the datagrams go ([`LinuxNet`]: user networking to a host port, or raw frames over
//!   `-netdev dgram`/`stream` straight to another VM such as the relay image), the markers.
//!   [`LinuxVm::boot`] starts QEMU; [`LinuxVm::wait`] waits for it to exit after the panic.
//! - [`UdpCapture`] is a loopback listener with a large receive buffer; [`parse_udp_frame`]
//!   unwraps raw frames; [`parse_extended`] and [`reassemble`] read extended-format datagrams
//!   back into records; [`encode_fixture`]/[`decode_fixture`] are the fixtures' format.
//!
//! Netconsole facts this relies on (Linux 6.1, `drivers/net/netconsole.c`, `net/core/netpoll.c`):
//! the target is an insmod parameter `[+][src-port]@[src-ip]/[dev],[tgt-port]@<tgt-ip>/[tgt-mac]`;
//! netconsole never ARPs, so the target MAC must be given (QEMU user networking's gateway is
//! [`SLIRP_GATEWAY_MAC`]); registering the console replays the whole log buffer (only records
//! whose level is numerically below the console log level, 7 by default: debug records leave
//! `seq` gaps); extended records
//! longer than 1000 bytes are sent as `ncfrag=<offset>/<total>` fragments. The `r` (release
//! prefix) option exists only from Linux 6.5: 6.1 refuses the parameter (`couldn't parse
//! config at 'r6665'`), so [`Format::ExtendedRelease`] needs a newer kernel package.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kernel package [`kernel`] fetches unless `NETOOPS_LINUX_PACKAGE` names another: Debian
/// 12's kernel meta-package (it depends on the current `linux-image-6.1.0-N-amd64`; the
/// harness takes that package's `-unsigned` twin when the archive has it).
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-amd64";
/// The static busybox package.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// QEMU user networking's gateway MAC (netconsole does not ARP, so it must be told).
pub const SLIRP_GATEWAY_MAC: &str = "52:55:0a:00:02:02";
/// QEMU user networking's gateway: UDP sent there reaches the host's loopback.
pub const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The Linux guest's address under user networking (QEMU's default DHCP lease address).
pub const LINUX_USER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The Linux guest's address on a raw-frame link to the relay VM (the relay is 10.0.2.15).
pub const LINUX_RAW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
/// The Linux guest NIC's MAC (distinct from the relay's `52:54:00:12:34:56`/`57`).
pub const LINUX_MAC: &str = "52:54:00:12:34:60";
/// netconsole's source port in every spec (its default is 6665).
pub const SOURCE_PORT: u16 = 6665;
/// How long [`LinuxVm::wait`] waits for QEMU to exit by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest line `/dev/kmsg` takes in one write on 6.1 (`LOG_LINE_MAX`, 1024 - 32),
/// newline included.
pub const KMSG_LINE_MAX: usize = 992;

/// Modules every boot loads (netconsole needs configfs for its dynamic targets).
const NETCONSOLE_MODULES: &[&str] = &["netconsole"];

/// The guest NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    /// `virtio-net-pci` (modules virtio_pci + virtio_net and their dependencies).
    Virtio,
    /// `e1000` (its link takes about 2 s to come up).
    E1000,
}

impl Nic {
    /// QEMU's device model.
    pub fn qemu_model(self) -> &'static str {
        match self {
            Nic::Virtio => "virtio-net-pci",
            Nic::E1000 => "e1000",
        }
    }

    /// The modules that drive it (dependencies are added from `.modinfo`).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Nic::Virtio => &["virtio_pci", "virtio_net"],
            Nic::E1000 => &["e1000"],
        }
    }
}

/// netconsole's output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plain console text (no `+`).
    Legacy,
    /// `+`: `<level>,<seq>,<usec>,<flags>[,ncfrag=<off>/<total>];<text>` records.
    Extended,
    /// `+r`: extended with `<release>,` first. Linux 6.5+ only; 6.1 refuses the parameter.
    ExtendedRelease,
}

impl Format {
    /// The option letters before the source port.
    pub fn prefix(self) -> &'static str {
        match self {
            Format::Legacy => "",
            Format::Extended => "+",
            Format::ExtendedRelease => "+r",
        }
    }
}

/// Where netconsole's datagrams go, and over which QEMU network backend.
#[derive(Clone, Debug)]
pub enum LinuxNet {
    /// QEMU user networking; netconsole sends to the gateway 10.0.2.2:`host_port` (MAC
    /// [`SLIRP_GATEWAY_MAC`]) and slirp hands them to 127.0.0.1:`host_port` on the host.
    User {
        /// The host UDP port on loopback.
        host_port: u16,
    },
    /// Raw Ethernet frames over `-netdev dgram`: QEMU sends the guest's frames to
    /// 127.0.0.1:`remote_port` and reads frames on 127.0.0.1:`local_port`.
    Dgram {
        /// QEMU's own UDP port.
        local_port: u16,
        /// The peer's UDP port (another VM's `-netdev dgram` local port).
        remote_port: u16,
        /// netconsole's target on that link.
        target: Target,
    },
    /// Raw Ethernet frames over `-netdev stream` (TCP, flow-controlled). With `server`, this
    /// QEMU listens on 127.0.0.1:`port` (frames sent before a peer connects are dropped);
    /// otherwise it connects there.
    Stream {
        /// The TCP port.
        port: u16,
        /// Whether this QEMU listens.
        server: bool,
        /// netconsole's target on that link.
        target: Target,
    },
}

/// A netconsole target on a raw-frame link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Destination IPv4 address.
    pub ip: Ipv4Addr,
    /// Destination MAC (`aa:bb:cc:dd:ee:ff`): netconsole sends every frame to it.
    pub mac: String,
    /// Destination UDP port.
    pub port: u16,
}

impl LinuxNet {
    /// The link to a relay VM booted with `appliance::Ingress::Dgram { port: relay_port }`
    /// (that QEMU reads on `relay_port` and writes to `relay_port + 1`): this QEMU reads on
    /// `relay_port + 1` and sends to `relay_port`; netconsole targets the relay's ingress
    /// address and MAC on `udp_port` (6666 for netconsole, 2004 for netoops).
    pub fn to_relay_dgram(relay_port: u16, udp_port: u16) -> LinuxNet {
        LinuxNet::Dgram {
            local_port: relay_port + 1,
            remote_port: relay_port,
            target: relay_target(udp_port),
        }
    }

    /// The link to a relay VM booted with `appliance::Ingress::Stream { port }` (that QEMU
    /// connects to 127.0.0.1:`port`): this QEMU listens there. Boot the Linux VM first; its
    /// frames before the relay connects are lost, so give the relay time to connect (the
    /// initramfs waits for the link and `settle` before loading netconsole).
    pub fn to_relay_stream(port: u16, udp_port: u16) -> LinuxNet {
        LinuxNet::Stream {
            port,
            server: true,
            target: relay_target(udp_port),
        }
    }

    /// The link to a relay VM booted with `appliance::Ingress::StreamListen { port }` (that
    /// QEMU listens on `port`): this QEMU connects there, so boot the relay first.
    pub fn to_listening_relay(port: u16, udp_port: u16) -> LinuxNet {
        LinuxNet::Stream {
            port,
            server: false,
            target: relay_target(udp_port),
        }
    }

    /// netconsole's target address, port and MAC.
    pub fn target(&self) -> Target {
        match self {
            LinuxNet::User { host_port } => Target {
                ip: SLIRP_GATEWAY,
                mac: SLIRP_GATEWAY_MAC.into(),
                port: *host_port,
            },
            LinuxNet::Dgram { target, .. } | LinuxNet::Stream { target, .. } => target.clone(),
        }
    }

    /// netconsole's source address on this link.
    pub fn source_ip(&self) -> Ipv4Addr {
        match self {
            LinuxNet::User { .. } => LINUX_USER_IP,
            _ => LINUX_RAW_IP,
        }
    }

    /// QEMU's `-netdev` value (id `n0`).
    pub fn netdev(&self) -> String {
        match self {
            LinuxNet::User { .. } => "user,id=n0".into(),
            LinuxNet::Dgram {
                local_port,
                remote_port,
                ..
            } => format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={local_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={remote_port}"
            ),
            LinuxNet::Stream { port, server, .. } => format!(
                "stream,id=n0,server={},addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
                if *server { "on" } else { "off" }
            ),
        }
    }
}

fn relay_target(udp_port: u16) -> Target {
    let m = crate::appliance::INGRESS_MAC;
    Target {
        ip: crate::appliance::GUEST_IP,
        mac: format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ),
        port: udp_port,
    }
}

/// How to boot the Linux guest.
#[derive(Clone, Debug)]
pub struct LinuxSpec {
    /// The NIC.
    pub nic: Nic,
    /// netconsole's format.
    pub format: Format,
    /// Where the datagrams go.
    pub net: LinuxNet,
    /// Lines written to `/dev/kmsg` (one write each, at most [`KMSG_LINE_MAX`] - 1 bytes; a
    /// leading `<N>` sets the level, otherwise the kernel's default, 4) after netconsole is
    /// up and before the panic.
    pub markers: Vec<String>,
    /// `loglevel=` on the command line (the console level, which netconsole obeys too);
    /// `None` keeps the kernel's default (7: everything but debug).
    pub loglevel: Option<u8>,
    /// Seconds the init script waits after the link is up before loading netconsole (for a
    /// raw-frame peer that has to connect first).
    pub settle_secs: u32,
    /// `-M` value.
    pub machine: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// How long [`LinuxVm::wait`] waits for QEMU to exit.
    pub timeout: Duration,
    /// Boot the uncompressed `vmlinux` through its PVH entry (the default when the kernel
    /// has one, [`LinuxKernel::vmlinux`]) rather than the packaged bzImage: same kernel
    /// code, but no firmware real-mode path and no xz decompression under TCG, which
    /// measured 5-6 s against 13-18 s from QEMU start to exit here.
    pub pvh: bool,
}

impl LinuxSpec {
    /// q35, 256 MiB, default log level, no markers.
    pub fn new(nic: Nic, format: Format, net: LinuxNet) -> LinuxSpec {
        LinuxSpec {
            nic,
            format,
            net,
            markers: Vec::new(),
            loglevel: None,
            settle_secs: 0,
            machine: "q35".into(),
            memory_mib: 256,
            timeout: DEFAULT_TIMEOUT,
            pvh: true,
        }
    }

    /// The `netconsole=` module parameter, e.g.
    /// `+6665@10.0.2.15/eth0,40000@10.0.2.2/52:55:0a:00:02:02`.
    pub fn netconsole_param(&self) -> String {
        let t = self.net.target();
        format!(
            "{}{SOURCE_PORT}@{}/eth0,{}@{}/{}",
            self.format.prefix(),
            self.net.source_ip(),
            t.port,
            t.ip,
            t.mac
        )
    }

    /// The kernel command line: serial console, reboot 1 s after a panic (QEMU runs with
    /// `-no-reboot`, so it exits), oopses panic, and the init script's settings
    /// (`netoops_nc=` netconsole's parameter, `netoops_settle=` seconds).
    pub fn cmdline(&self) -> String {
        let mut line = format!(
            "console=ttyS0 panic=1 oops=panic netoops_nc={} netoops_settle={}",
            self.netconsole_param(),
            self.settle_secs
        );
        if let Some(level) = self.loglevel {
            let _ = write!(line, " loglevel={level}");
        }
        line
    }

    /// QEMU's arguments for `kernel` with `initrd`, the serial console going to `serial`.
    pub fn qemu_args(&self, kernel: &LinuxKernel, initrd: &Path, serial: &Path) -> Vec<String> {
        let device = format!(
            "{},netdev=n0,mac={LINUX_MAC},romfile=",
            self.nic.qemu_model()
        );
        [
            "-M",
            &self.machine,
            "-accel",
            "tcg",
            "-m",
            &format!("{}M", self.memory_mib),
            "-smp",
            "1",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            &kernel.boot_image(self.pvh).display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            &self.cmdline(),
            "-netdev",
            &self.net.netdev(),
            "-device",
            &device,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Fetching and caching the packages

/// Where fetched packages are kept: `$NETOOPS_LINUX_CACHE`, else
/// `/var/cache/netoops-tests/linux` when it can be created, else
/// `~/.cache/netoops-tests/linux`. Never inside the repository.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETOOPS_LINUX_CACHE") {
        return PathBuf::from(dir);
    }
    let system = PathBuf::from("/var/cache/netoops-tests/linux");
    if fs::create_dir_all(&system).is_ok() && writable(&system) {
        return system;
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/netoops-tests/linux")
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// One kernel module kept in the cache.
#[derive(Clone, Debug)]
pub struct Module {
    /// Its name (`_`, never `-`).
    pub name: String,
    /// The uncompressed `.ko`.
    pub path: PathBuf,
    /// The modules it needs loaded first (`depends=` in `.modinfo`).
    pub depends: Vec<String>,
}

/// A fetched kernel, its modules and busybox, ready to boot.
#[derive(Clone, Debug)]
pub struct LinuxKernel {
    /// The Debian package the files came from, e.g. `linux-image-6.1.0-57-amd64-unsigned`.
    pub package: String,
    /// Its version, e.g. `6.1.192-3`.
    pub version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The bzImage, as packaged.
    pub vmlinuz: PathBuf,
    /// The uncompressed kernel ELF taken out of the bzImage, when the kernel has a PVH entry
    /// (`CONFIG_PVH=y`, as Debian's has) so that QEMU's `-kernel` can boot it directly.
    pub vmlinux: Option<PathBuf>,
    /// The kept modules by name.
    pub modules: BTreeMap<String, Module>,
    /// Modules the kernel has built in (`modules.builtin`) among those wanted: nothing to
    /// load (6.12 builds virtio_pci in, 6.1 has it as a module).
    pub builtin: BTreeSet<String>,
    /// `busybox-static`'s version.
    pub busybox_version: String,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

/// Debian 12's kernel (or `$NETOOPS_LINUX_PACKAGE`), fetched once per test process.
pub fn kernel() -> Result<&'static LinuxKernel, String> {
    static KERNEL: OnceLock<Result<LinuxKernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let package = std::env::var("NETOOPS_LINUX_PACKAGE")
                .unwrap_or_else(|_| DEFAULT_KERNEL_PACKAGE.into());
            LinuxKernel::fetch(&package)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// What apt resolved a request to.
struct Resolved {
    package: String,
    version: String,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Field: value` of `apt-cache show --no-all-versions package`.
fn apt_field(package: &str, field: &str) -> Result<String, String> {
    let text = run(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let prefix = format!("{field}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("apt-cache show {package} has no {field} field"))
}

/// Resolves a kernel request: a meta-package (`linux-image-amd64`, `linux-image-6.12-amd64`)
/// becomes the image package it depends on; an image package is taken as is; the `-unsigned`
/// twin is preferred when the archive has it.
fn resolve_kernel(request: &str) -> Result<Resolved, String> {
    let mut package = request.to_string();
    if apt_field(&package, "Description")?.contains("meta-package") {
        let depends = apt_field(&package, "Depends")?;
        package = depends
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .ok_or_else(|| format!("{request} depends on no linux-image package: {depends}"))?
            .to_string();
    }
    if !package.ends_with("-unsigned") {
        let unsigned = format!("{package}-unsigned");
        if apt_field(&unsigned, "Version").is_ok() {
            package = unsigned;
        }
    }
    let version = apt_field(&package, "Version")?;
    Ok(Resolved { package, version })
}

fn resolve_plain(package: &str) -> Result<Resolved, String> {
    Ok(Resolved {
        package: package.into(),
        version: apt_field(package, "Version")?,
    })
}

/// Runs `resolve`; when it fails, runs `apt-get update` once and tries again.
fn with_apt_update<T>(what: &str, resolve: impl Fn() -> Result<T, String>) -> Result<T, String> {
    match resolve() {
        Ok(v) => Ok(v),
        Err(first) => {
            eprintln!("linux harness: {what}: {first}; running apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]))
                .map_err(|e| format!("{first}; then apt-get update failed: {e}"))?;
            resolve().map_err(|e| format!("{e} (also after apt-get update)"))
        }
    }
}

/// Downloads `package=version` into a fresh directory under `parent`; returns the `.deb`.
fn download(parent: &Path, r: &Resolved) -> Result<PathBuf, String> {
    let dir = parent.join(format!(".download-{}-{}", r.package, std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let spec = format!("{}={}", r.package, r.version);
    let attempt = || {
        run(Command::new("apt-get")
            .current_dir(&dir)
            .args(["download", "-q", &spec]))
    };
    if let Err(first) = attempt() {
        eprintln!("linux harness: apt-get download {spec}: {first}; running apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))
            .map_err(|e| format!("apt-get download {spec}: {first}; apt-get update: {e}"))?;
        attempt().map_err(|e| format!("apt-get download {spec} (after apt-get update): {e}"))?;
    }
    fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))
}

fn entry_dir(cache: &Path, package: &str, version: &str) -> PathBuf {
    cache.join(format!("{package}_{}", version.replace([':', '/'], "_")))
}

/// The newest complete cache entry whose name starts with `prefix` (for offline runs).
fn cached_entry(cache: &Path, prefix: &str) -> Option<PathBuf> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
                && p.join("ready").is_file()
        })
        .filter_map(|p| Some((fs::metadata(p.join("ready")).ok()?.modified().ok()?, p)))
        .collect();
    entries.sort();
    entries.pop().map(|(_, p)| p)
}

impl LinuxKernel {
    /// Fetches `request` (a Debian kernel image or meta-package) and `busybox-static` into
    /// [`cache_dir`], unless that version is already there. Errors start with `could not fetch
    /// the Linux kernel package` (or `... busybox-static package`) and end with
    /// `run apt-get update`.
    pub fn fetch(request: &str) -> Result<LinuxKernel, String> {
        let cache = cache_dir();
        fs::create_dir_all(&cache).map_err(|e| {
            format!("could not fetch the Linux kernel package: creating the cache {}: {e}; run apt-get update", cache.display())
        })?;
        let kernel_dir = match with_apt_update("resolving the kernel package", || {
            resolve_kernel(request)
        }) {
            Ok(r) => {
                let dir = entry_dir(&cache, &r.package, &r.version);
                if !dir.join("ready").is_file() {
                    fetch_kernel(&cache, &dir, &r).map_err(|e| {
                        format!("could not fetch the Linux kernel package {}={}: {e}; run apt-get update", r.package, r.version)
                    })?;
                }
                dir
            }
            Err(e) => match cached_entry(&cache, request) {
                Some(dir) => {
                    eprintln!("linux harness: {e}; using the cached {}", dir.display());
                    dir
                }
                None => {
                    return Err(format!(
                    "could not fetch the Linux kernel package ({request}): {e}; run apt-get update"
                ))
                }
            },
        };
        let busybox_dir = match with_apt_update("resolving busybox-static", || {
            resolve_plain(BUSYBOX_PACKAGE)
        }) {
            Ok(r) => {
                let dir = entry_dir(&cache, &r.package, &r.version);
                if !dir.join("ready").is_file() {
                    fetch_busybox(&cache, &dir, &r).map_err(|e| {
                        format!("could not fetch the {BUSYBOX_PACKAGE} package {}: {e}; run apt-get update", r.version)
                    })?;
                }
                dir
            }
            Err(e) => cached_entry(&cache, BUSYBOX_PACKAGE).ok_or_else(|| {
                format!("could not fetch the {BUSYBOX_PACKAGE} package: {e}; run apt-get update")
            })?,
        };
        LinuxKernel::load(&kernel_dir, &busybox_dir)
    }

    /// Reads a complete cache entry pair.
    fn load(kernel_dir: &Path, busybox_dir: &Path) -> Result<LinuxKernel, String> {
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("reading {}: {e}", p.display()))
        };
        let mut modules = BTreeMap::new();
        for line in read(kernel_dir.join("modules.txt"))?.lines() {
            let (name, deps) = line.split_once(':').unwrap_or((line, ""));
            let name = name.trim().to_string();
            modules.insert(
                name.clone(),
                Module {
                    path: kernel_dir.join("modules").join(format!("{name}.ko")),
                    depends: deps.split_whitespace().map(String::from).collect(),
                    name,
                },
            );
        }
        let builtin = fs::read_to_string(kernel_dir.join("builtin.txt"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        Ok(LinuxKernel {
            builtin,
            package: read(kernel_dir.join("package"))?,
            version: read(kernel_dir.join("version"))?,
            release: read(kernel_dir.join("release"))?,
            vmlinuz: kernel_dir.join("vmlinuz"),
            vmlinux: pvh_vmlinux(kernel_dir),
            modules,
            busybox_version: read(busybox_dir.join("version"))?,
            busybox: busybox_dir.join("busybox"),
        })
    }

    /// What `-kernel` boots: [`LinuxKernel::vmlinux`] when `pvh` and the kernel has one,
    /// else the bzImage.
    pub fn boot_image(&self, pvh: bool) -> &Path {
        match (&self.vmlinux, pvh) {
            (Some(v), true) => v,
            _ => &self.vmlinuz,
        }
    }

    /// `names` and everything they depend on, dependencies first.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<&Module>, String> {
        fn visit<'a>(
            k: &'a LinuxKernel,
            name: &str,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<&'a Module>,
        ) -> Result<(), String> {
            if !seen.insert(name.to_string()) || k.builtin.contains(name) {
                return Ok(());
            }
            let m = k
                .modules
                .get(name)
                .ok_or_else(|| format!("module {name} is not in {} {}", k.package, k.version))?;
            for d in &m.depends {
                visit(k, d, seen, out)?;
            }
            out.push(m);
            Ok(())
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for n in names {
            visit(self, n, &mut seen, &mut out)?;
        }
        Ok(out)
    }
}

/// Modules kept from the kernel package (with their dependencies).
const KEPT_MODULES: &[&str] = &["netconsole", "virtio_pci", "virtio_net", "e1000"];

fn fetch_kernel(cache: &Path, dir: &Path, r: &Resolved) -> Result<(), String> {
    eprintln!(
        "linux harness: fetching {}={} into {}",
        r.package,
        r.version,
        dir.display()
    );
    let deb = download(cache, r)?;
    let download_dir = deb.parent().map(Path::to_path_buf).unwrap_or_default();
    let tree = download_dir.join("tree");
    let result = (|| {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let modules_root = tree.join("lib/modules");
        let release = fs::read_dir(&modules_root)
            .map_err(|e| format!("reading {}: {e}", modules_root.display()))?
            .filter_map(Result::ok)
            .find(|e| e.path().join("kernel").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .ok_or_else(|| format!("no lib/modules/<release>/kernel in {}", deb.display()))?;
        let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(format!("{} has no boot/vmlinuz-{release}", deb.display()));
        }
        // Every module file by name.
        let mut files = BTreeMap::new();
        index_modules(&modules_root.join(&release).join("kernel"), &mut files)?;
        let staging = staging_dir(dir);
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(staging.join("modules"))
            .map_err(|e| format!("creating {}: {e}", staging.display()))?;
        let builtin: BTreeSet<String> =
            fs::read_to_string(modules_root.join(&release).join("modules.builtin"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
                .map(|n| n.replace('-', "_"))
                .collect();
        let mut wanted: Vec<String> = KEPT_MODULES.iter().map(|s| s.to_string()).collect();
        let mut done = BTreeMap::<String, Vec<String>>::new();
        let mut builtin_wanted = BTreeSet::new();
        while let Some(name) = wanted.pop() {
            if done.contains_key(&name) {
                continue;
            }
            if builtin.contains(&name) {
                builtin_wanted.insert(name);
                continue;
            }
            let file = files
                .get(&name)
                .ok_or_else(|| format!("{} has no module {name}", r.package))?;
            let bytes = read_module(file)?;
            let depends = modinfo_depends(&bytes);
            fs::write(staging.join("modules").join(format!("{name}.ko")), &bytes)
                .map_err(|e| format!("writing {name}.ko: {e}"))?;
            wanted.extend(depends.iter().cloned());
            done.insert(name, depends);
        }
        let mut list = String::new();
        for (name, deps) in &done {
            let _ = writeln!(list, "{name}: {}", deps.join(" "));
        }
        let write = |name: &str, text: &str| {
            fs::write(staging.join(name), text).map_err(|e| format!("writing {name}: {e}"))
        };
        write("modules.txt", &list)?;
        let builtin_list: Vec<String> = builtin_wanted.into_iter().collect();
        write("builtin.txt", &builtin_list.join("\n"))?;
        write("package", &r.package)?;
        write("version", &r.version)?;
        write("release", &release)?;
        fs::copy(&vmlinuz, staging.join("vmlinuz"))
            .map_err(|e| format!("copying {}: {e}", vmlinuz.display()))?;
        let config = tree.join(format!("boot/config-{release}"));
        if config.is_file() {
            fs::copy(&config, staging.join("config"))
                .map_err(|e| format!("copying {}: {e}", config.display()))?;
        }
        write("ready", "")?;
        publish(&staging, dir)
    })();
    let _ = fs::remove_dir_all(&download_dir);
    result
}

/// A staging directory next to `dir`, private to this process.
fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Moves a complete `staging` into place; another process that got there first wins.
fn publish(staging: &Path, dir: &Path) -> Result<(), String> {
    if dir.join("ready").is_file() {
        let _ = fs::remove_dir_all(staging);
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir);
    match fs::rename(staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join("ready").is_file() => {
            let _ = fs::remove_dir_all(staging);
            Ok(())
        }
        Err(e) => Err(format!("renaming into {}: {e}", dir.display())),
    }
}

fn fetch_busybox(cache: &Path, dir: &Path, r: &Resolved) -> Result<(), String> {
    eprintln!(
        "linux harness: fetching {}={} into {}",
        r.package,
        r.version,
        dir.display()
    );
    let deb = download(cache, r)?;
    let download_dir = deb.parent().map(Path::to_path_buf).unwrap_or_default();
    let tree = download_dir.join("tree");
    let result = (|| {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let binary = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| tree.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("no bin/busybox in {}", deb.display()))?;
        let staging = staging_dir(dir);
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
        fs::copy(&binary, staging.join("busybox")).map_err(|e| format!("copying busybox: {e}"))?;
        fs::write(staging.join("version"), &r.version).map_err(|e| e.to_string())?;
        fs::write(staging.join("ready"), "").map_err(|e| e.to_string())?;
        publish(&staging, dir)
    })();
    let _ = fs::remove_dir_all(&download_dir);
    result
}

/// The cache entry's `vmlinux` (extracted on first use) when its kernel config has
/// `CONFIG_PVH=y`; `None` (boot the bzImage) when it has not or extraction fails.
fn pvh_vmlinux(kernel_dir: &Path) -> Option<PathBuf> {
    let path = kernel_dir.join("vmlinux");
    if path.is_file() {
        return Some(path);
    }
    let config = fs::read_to_string(kernel_dir.join("config")).ok()?;
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return None;
    }
    match extract_vmlinux(&kernel_dir.join("vmlinuz")) {
        Ok(elf) => {
            let partial = kernel_dir.join(format!("vmlinux.partial-{}", std::process::id()));
            fs::write(&partial, elf).ok()?;
            fs::rename(&partial, &path).ok()?;
            Some(path)
        }
        Err(e) => {
            eprintln!("linux harness: no vmlinux, booting the bzImage: {e}");
            None
        }
    }
}

/// The kernel ELF inside a bzImage: the setup header's `payload_offset`/`payload_length`
/// (boot protocol 2.08+) locate the compressed payload, decompressed with `xz`, `zstd` or
/// `gzip` by its magic.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>, String> {
    let b = fs::read(bzimage).map_err(|e| format!("reading {}: {e}", bzimage.display()))?;
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS)".into());
    }
    let setup_sects = match b.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248).ok_or("short header")?;
    let len = u32_at(0x24c).ok_or("short header")?;
    let payload = b
        .get(start..start + len)
        .ok_or("payload outside the file")?;
    let tool: &[&str] = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        &["xz", "-dc", "--single-stream"]
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        &["zstd", "-dc"]
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        &["gzip", "-dc"]
    } else {
        return Err(format!(
            "unknown payload compression {:02x?}",
            &payload[..4.min(len)]
        ));
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {}: {e}", tool[0]))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The tool may stop reading at the end of the stream; a broken pipe is fine.
        let _ = stdin.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {}: {e}", tool[0]))?;
    let _ = writer.join();
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(format!("{} gave no ELF ({})", tool[0], out.status));
    }
    Ok(out.stdout)
}

/// Module name (`-` as `_`) → file, for `.ko`, `.ko.xz`, `.ko.zst` and `.ko.gz`.
fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), String> {
    for e in fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let path = e.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            index_modules(&path, out)?;
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
            if let Some(stem) = name.strip_suffix(ext) {
                out.insert(stem.replace('-', "_"), path.clone());
                break;
            }
        }
    }
    Ok(())
}

/// A module's bytes, decompressed (`xz`, `zstd` or `gzip` for compressed modules).
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| format!("running {tool} -dc {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!("{tool} -dc {} failed", path.display()));
    }
    Ok(out.stdout)
}

/// `depends=` from a module's `.modinfo` strings (NUL-separated `key=value`).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The initramfs

/// The guest's `/init` (busybox `sh`). It reads `netoops_nc=` (netconsole's parameter) and
/// `netoops_settle=` from `/proc/cmdline`, loads the modules listed in `/etc/netoops/modules`
/// (dependencies first), brings `eth0` up and waits for its carrier, loads netconsole, writes
/// each line of `/etc/netoops/markers` to `/dev/kmsg` (one write per line) and panics with
/// sysrq `c`. Progress goes to the serial console as `netoops-init:` lines.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "netoops-init: $*" > /dev/ttyS0; }
NC=
SETTLE=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    netoops_nc=*) NC="${w#netoops_nc=}" ;;
    netoops_settle=*) SETTLE="${w#netoops_settle=}" ;;
  esac
done
for m in $(cat /etc/netoops/modules); do
  insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done
ip link set eth0 up || say "eth0 did not come up"
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 200 ]; do
  sleep 0.05
  i=$((i + 1))
done
say "carrier after $i polls of 50 ms"
[ "$SETTLE" -gt 0 ] && sleep "$SETTLE"
if insmod /lib/modules/netconsole.ko "netconsole=$NC"; then
  say "netconsole loaded: $NC"
else
  say "netconsole refused: $NC"
fi
while IFS= read -r line; do
  echo "$line" > /dev/kmsg
done < /etc/netoops/markers
say "markers written"
echo 1 > /proc/sys/kernel/sysrq
echo c > /proc/sysrq-trigger
say "still alive after sysrq c"
sleep 2
poweroff -f
"#;

/// A newc (`070701`) cpio archive writer.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            size as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            let _ = write!(HexSink(&mut self.out), "{f:08x}");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0, (0, 0));
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, 0o100000 | mode, data.len(), (0, 0));
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.header(name, 0o020600, 0, (major, minor));
    }

    /// The trailer and the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        self.out
    }
}

struct HexSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HexSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The initramfs for `spec`: busybox, the NIC's and netconsole's modules, the markers and
/// [`INIT_SCRIPT`].
pub fn initramfs(kernel: &LinuxKernel, spec: &LinuxSpec) -> Result<Vec<u8>, String> {
    for m in &spec.markers {
        if m.len() + 1 > KMSG_LINE_MAX || m.contains('\n') {
            return Err(format!(
                "marker of {} bytes: /dev/kmsg takes one line of at most {} bytes",
                m.len(),
                KMSG_LINE_MAX - 1
            ));
        }
    }
    let nic = kernel.load_order(spec.nic.modules())?;
    let all = kernel.load_order(&[spec.nic.modules(), NETCONSOLE_MODULES].concat())?;
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "etc",
        "etc/netoops",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    let busybox = fs::read(&kernel.busybox)
        .map_err(|e| format!("reading {}: {e}", kernel.busybox.display()))?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    for m in &all {
        let bytes = fs::read(&m.path).map_err(|e| format!("reading {}: {e}", m.path.display()))?;
        cpio.file(&format!("lib/modules/{}.ko", m.name), 0o644, &bytes);
    }
    // netconsole (and configfs, its dependency) are loaded by the script itself, with the
    // parameter; the list holds the NIC's modules and netconsole's dependencies.
    let mut list: Vec<&str> = nic.iter().map(|m| m.name.as_str()).collect();
    for m in &all {
        if m.name != "netconsole" && !list.contains(&m.name.as_str()) {
            list.push(&m.name);
        }
    }
    cpio.file("etc/netoops/modules", 0o644, list.join("\n").as_bytes());
    let mut markers = spec.markers.join("\n");
    markers.push('\n');
    cpio.file("etc/netoops/markers", 0o644, markers.as_bytes());
    Ok(cpio.finish())
}

// ---------------------------------------------------------------------------------------
// Booting

/// A running Linux guest; QEMU is killed and its scratch directory removed on drop (kept
/// when the thread is panicking, so a failing test leaves the serial log behind, or when
/// `NETOOPS_KEEP_LINUX` is set).
pub struct LinuxVm {
    child: Child,
    /// The serial console's log (diagnostics only).
    pub serial: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
    /// The QEMU command line, for messages.
    pub command: String,
    dir: PathBuf,
    timeout: Duration,
    exit: Option<ExitStatus>,
}

/// How a guest ended.
#[derive(Clone, Debug)]
pub struct LinuxExit {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// QEMU start to exit.
    pub elapsed: Duration,
    /// Whether the serial log has `Kernel panic - not syncing`.
    pub panicked: bool,
}

impl LinuxVm {
    /// Fetches the kernel ([`kernel`]), writes the initramfs and starts QEMU for `spec`.
    pub fn boot(spec: &LinuxSpec) -> Result<LinuxVm, String> {
        LinuxVm::boot_with(kernel()?, spec)
    }

    /// As [`LinuxVm::boot`] with a given kernel.
    pub fn boot_with(kernel: &LinuxKernel, spec: &LinuxSpec) -> Result<LinuxVm, String> {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netoops-linux-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let initrd = dir.join("initramfs.cpio");
        fs::write(&initrd, initramfs(kernel, spec)?)
            .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
        let serial = dir.join("serial.log");
        let args = spec.qemu_args(kernel, &initrd, &serial);
        let qemu = netoops_image::qemu::QEMU;
        if !netoops_image::have_program(qemu) {
            return Err(format!(
                "{qemu} not found: {}",
                netoops_image::qemu::QEMU_INSTALL
            ));
        }
        let command = format!("{qemu} {}", args.join(" "));
        let started = Instant::now();
        let child = Command::new(qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("qemu.stderr")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting {qemu}: {e}"))?;
        Ok(LinuxVm {
            child,
            serial,
            started,
            command,
            dir,
            timeout: spec.timeout,
            exit: None,
        })
    }

    /// Waits for QEMU to exit (it does after the panic: `panic=1` and `-no-reboot`); kills it
    /// after the spec's timeout and returns an error with the end of the serial log.
    pub fn wait(&mut self) -> Result<LinuxExit, String> {
        let deadline = self.started + self.timeout;
        let status = loop {
            if let Some(status) = self.exit {
                break status;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    break status;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
                return Err(format!(
                    "the Linux guest did not exit within {:?}; killed\n{}",
                    self.timeout,
                    self.describe()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        Ok(LinuxExit {
            status,
            elapsed,
            panicked: self.serial_log().contains("Kernel panic - not syncing"),
        })
    }

    /// The serial log so far (lossy UTF-8).
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// The command line, QEMU's stderr and the serial log's last 80 lines, for messages.
    pub fn describe(&self) -> String {
        let log = self.serial_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let stderr = fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default();
        format!(
            "--- {} ---\n--- QEMU stderr ---\n{stderr}\n--- serial ({}) ---\n{tail}\n",
            self.command,
            self.serial.display()
        )
    }
}

impl Drop for LinuxVm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("NETOOPS_KEEP_LINUX").is_some() {
            eprintln!("linux harness: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Receiving

/// One received datagram.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// When it was read.
    pub at: Instant,
    /// Its sender.
    pub from: SocketAddr,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A UDP listener on 127.0.0.1 (any port) with a large receive buffer, read by a thread.
pub struct UdpCapture {
    port: u16,
    received: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// The receive buffer the kernel granted (`SO_RCVBUF` as read back).
    pub recv_buffer: usize,
}

impl UdpCapture {
    /// Binds 127.0.0.1:0 and asks for `recv_buffer` bytes of receive buffer
    /// (`SO_RCVBUFFORCE`, else `SO_RCVBUF`).
    pub fn bind(recv_buffer: usize) -> io::Result<UdpCapture> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let granted = set_recv_buffer(&socket, recv_buffer)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let port = socket.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader =
            {
                let received = Arc::clone(&received);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        match socket.recv_from(&mut buf) {
                            Ok((n, from)) => received
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Datagram {
                                    at: Instant::now(),
                                    from,
                                    bytes: buf[..n].to_vec(),
                                }),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                })
            };
        Ok(UdpCapture {
            port,
            received,
            stop,
            reader: Some(reader),
            recv_buffer: granted,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams so far.
    pub fn datagrams(&self) -> Vec<Datagram> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads what is still queued (until 200 ms pass with nothing new) and returns everything.
    pub fn finish(mut self) -> Vec<Datagram> {
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let n = self.received.lock().map_or(0, |r| r.len());
            if n == last {
                break;
            }
            last = n;
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for UdpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn set_recv_buffer(socket: &UdpSocket, bytes: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `fd` is an open socket for the duration of the call; the option value is
        // a c_int whose address and size are passed together.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    };
    if !set(libc::SO_RCVBUFFORCE) && !set(libc::SO_RCVBUF) {
        return Err(io::Error::last_os_error());
    }
    let mut granted: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `granted` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of_mut!(granted).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(granted).unwrap_or(0))
}

/// An IPv4/UDP frame as a raw-frame netdev carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Parses an Ethernet II / IPv4 / UDP frame (unfragmented); `None` for anything else (ARP,
/// IPv6 neighbour discovery, ...).
pub fn parse_udp_frame(f: &[u8]) -> Option<UdpFrame> {
    let mac = |o: usize| -> Option<[u8; 6]> { f.get(o..o + 6)?.try_into().ok() };
    if f.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = f.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let udp = ip.get(ihl..total)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let addr = |o: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(
            *ip.get(o)?,
            *ip.get(o + 1)?,
            *ip.get(o + 2)?,
            *ip.get(o + 3)?,
        ))
    };
    Some(UdpFrame {
        dst_mac: mac(0)?,
        src_mac: mac(6)?,
        src_ip: addr(12)?,
        dst_ip: addr(16)?,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp.get(8..len)?.to_vec(),
    })
}

// ---------------------------------------------------------------------------------------
// Reading extended records back (a small independent reader for the tests)

/// One extended-format datagram, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtDatagram {
    /// `<release>,` when the `r` option is on.
    pub release: Option<String>,
    /// Facility and level (`facility * 8 + level`).
    pub prefix: u32,
    /// The record's sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// `-` or `c` (continuation).
    pub flags: String,
    /// `ncfrag=<offset>/<total>`.
    pub frag: Option<(usize, usize)>,
    /// Everything after the `;`: the text (or this fragment of text and dictionary).
    pub body: Vec<u8>,
}

/// Parses one extended datagram; `release` says whether a `<release>,` comes first.
pub fn parse_extended(d: &[u8], release: bool) -> Option<ExtDatagram> {
    let semi = d.iter().position(|&b| b == b';')?;
    let header = std::str::from_utf8(&d[..semi]).ok()?;
    let mut fields = header.split(',');
    let release = if release {
        Some(fields.next()?.to_string())
    } else {
        None
    };
    let prefix = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    let flags = fields.next()?.to_string();
    let mut frag = None;
    for f in fields {
        let (off, total) = f.strip_prefix("ncfrag=")?.split_once('/')?;
        frag = Some((off.parse().ok()?, total.parse().ok()?));
    }
    Some(ExtDatagram {
        release,
        prefix,
        seq,
        usec,
        flags,
        frag,
        body: d[semi + 1..].to_vec(),
    })
}

/// One whole record (fragments joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtRecord {
    /// Facility and level.
    pub prefix: u32,
    /// Sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The message text (before the first `\n`), `\xNN` escapes left as sent.
    pub text: String,
    /// Dictionary lines (`KEY=VALUE`, the leading space removed).
    pub dict: Vec<String>,
    /// How many datagrams made it.
    pub datagrams: usize,
    /// Whether every fragment's bytes arrived.
    pub complete: bool,
}

/// Joins the extended datagrams in `all` into records by `seq` (fragments by offset), in
/// `seq` order. Datagrams that do not parse are skipped (count them with [`parse_extended`]).
pub fn reassemble(all: &[Vec<u8>], release: bool) -> Vec<ExtRecord> {
    let mut by_seq: BTreeMap<u64, Vec<ExtDatagram>> = BTreeMap::new();
    for d in all {
        if let Some(p) = parse_extended(d, release) {
            by_seq.entry(p.seq).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    for (seq, mut parts) in by_seq {
        parts.sort_by_key(|p| p.frag.map_or(0, |f| f.0));
        parts.dedup_by_key(|p| p.frag.map_or(0, |f| f.0));
        let (body, complete) = match parts[0].frag {
            None => (parts[0].body.clone(), true),
            Some((_, total)) => {
                let mut body = vec![0u8; total];
                let mut have = 0usize;
                for p in &parts {
                    if let Some((off, _)) = p.frag {
                        let end = (off + p.body.len()).min(total);
                        if off < end {
                            body[off..end].copy_from_slice(&p.body[..end - off]);
                            have += end - off;
                        }
                    }
                }
                (body, have == total)
            }
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut lines = text.split('\n');
        let first = lines.next().unwrap_or("").to_string();
        let dict = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.strip_prefix(' ').unwrap_or(l).to_string())
            .collect();
        out.push(ExtRecord {
            prefix: parts[0].prefix,
            seq,
            usec: parts[0].usec,
            text: first,
            dict,
            datagrams: parts.len(),
            complete,
        });
    }
    out
}

/// Writes datagrams as `[u16 LE length][bytes]`, repeated (the fixture format).
pub fn encode_fixture(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        out.extend_from_slice(&(d.len() as u16).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// Reads a fixture written by [`encode_fixture`].
pub fn decode_fixture(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        out.push(bytes.get(2..2 + len)?.to_vec());
        bytes = &bytes[2 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        // ino 1, mode 100755, ..., filesize 3, ..., namesize 5 ("init\0").
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081ed");
        assert_eq!(&a[54..62], b"00000003");
        assert_eq!(&a[94..102], b"00000005");
        assert_eq!(&a[110..115], b"init\0");
        // Header + name padded to 4 (116), data padded to 4 (120), then the trailer.
        assert_eq!(&a[116..119], b"abc");
        assert_eq!(&a[120..126], b"070701");
        assert_eq!(&a[230..241], b"TRAILER!!!\0");
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn modinfo_depends_reads_the_list() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net-failover\0name=x\0";
        assert_eq!(
            modinfo_depends(ko),
            vec!["virtio_ring", "virtio", "net_failover"]
        );
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        assert!(modinfo_depends(b"nothing").is_empty());
    }

    #[test]
    fn extended_headers_parse() {
        let p = parse_extended(b"12,351,3609798,-,ncfrag=970/992;defg", false).expect("frag");
        assert_eq!((p.prefix, p.seq, p.usec), (12, 351, 3609798));
        assert_eq!(p.frag, Some((970, 992)));
        assert_eq!(p.body, b"defg");
        let r = parse_extended(b"6.12.118+deb12-amd64,0,357,5487228,-;Kernel panic", true)
            .expect("release");
        assert_eq!(r.release.as_deref(), Some("6.12.118+deb12-amd64"));
        assert_eq!(r.seq, 357);
        assert!(parse_extended(b"[    4.05] Kernel panic", false).is_none());
    }

    #[test]
    fn fragments_reassemble_in_any_order() {
        let all = vec![
            b"4,7,10,-,ncfrag=3/6;def\n".to_vec(),
            b"4,7,10,-,ncfrag=0/6;abc".to_vec(),
            b"4,6,9,-;x\n SUBSYSTEM=acpi\n".to_vec(),
        ];
        let r = reassemble(&all, false);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].seq, r[0].text.as_str()), (6, "x"));
        assert_eq!(r[0].dict, vec!["SUBSYSTEM=acpi"]);
        assert_eq!(
            (r[1].text.as_str(), r[1].datagrams, r[1].complete),
            ("abcdef", 2, true)
        );
        let partial = reassemble(&all[1..], false);
        assert!(!partial[1].complete);
    }

    #[test]
    fn fixture_format_round_trips() {
        let d = vec![b"a".to_vec(), Vec::new(), vec![7u8; 1000]];
        assert_eq!(decode_fixture(&encode_fixture(&d)), Some(d));
        assert_eq!(decode_fixture(&[5, 0, 1]), None);
    }

    #[test]
    fn netconsole_parameters() {
        let spec = LinuxSpec::new(
            Nic::E1000,
            Format::Extended,
            LinuxNet::User { host_port: 4000 },
        );
        assert_eq!(
            spec.netconsole_param(),
            "+6665@10.0.2.15/eth0,4000@10.0.2.2/52:55:0a:00:02:02"
        );
        let raw = LinuxSpec::new(
            Nic::Virtio,
            Format::Legacy,
            LinuxNet::to_relay_dgram(5000, 6666),
        );
        assert_eq!(
            raw.netconsole_param(),
            "6665@10.0.2.20/eth0,6666@10.0.2.15/52:54:00:12:34:56"
        );
        assert!(raw.net.netdev().contains("local.port=5001"));
        assert!(raw.net.netdev().contains("remote.port=5000"));
    }
}
