//! `netoops-image appliance`: the relay as someone tries it on a workstation: the image
//! under QEMU, a collector next to it, and the host side of its network, all started and
//! stopped together.
//!
//! Ingress ([`Ingress::Forward`], the default): this tool owns host UDP `--udp` (default
//! 127.0.0.1:2004) and `--netconsole-udp` (default 127.0.0.1:6666) and hands every datagram
//! to the guest's ingress NIC as a raw frame over `-netdev stream` ([`crate::forward`]):
//! lossless up to a bounded queue, each sender's source address kept, every host-side loss
//! counted and reported next to the relay's own counters (stderr, and `--stats-json FILE`).
//! The relay runs in two-NIC mode (`upstream_nic`): its second NIC is on QEMU's user-mode
//! networking (slirp) and carries only the upstream TCP connection. [`Ingress::Slirp`] is
//! the old single-NIC path (`hostfwd=udp:...`), kept for comparison: slirp loses most of a
//! fast burst (issue 19) and counts nothing.
//!
//! Addressing: the guest has 10.0.2.15/24 and gateway 10.0.2.2, which slirp maps to the
//! host's loopback, so a collector listening on host 127.0.0.1:2005 is
//! `upstream=10.0.2.2:2005` for the guest. A collector elsewhere is reached through slirp's
//! NAT at its own address.
//!
//! A real deployment does none of this: the relay gets a bridged or passed-through NIC on
//! the management network and machines send to it directly.
//!
//! TCG always; `--kvm` opts in to KVM (nested KVM on the build machines mis-executes the
//! firmware, so it is never the default). Ctrl-C or SIGTERM stops QEMU and the collector;
//! when either exits by itself, the other is stopped too.

use crate::forward::{self, ForwarderConfig, ForwarderStats, PortForward};
use crate::frame::MacAddr;
use crate::qemu::{self, Machine, QemuCommand};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The guest's address on slirp's network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// slirp's gateway, which is the host's loopback as seen from the guest.
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The netoops port inside the guest.
pub const GUEST_PORT: u16 = 2004;
/// The netconsole port inside the guest (the kernel's default target port).
pub const GUEST_NETCONSOLE_PORT: u16 = 6666;
/// The guest NIC's MAC (QEMU's default for the first NIC); the ingress NIC.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The upstream NIC's MAC when the ingress comes through the forwarder (two-NIC mode).
pub const UPSTREAM_MAC: &str = "52:54:00:12:34:57";

/// How host datagrams reach the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ingress {
    /// This tool's forwarder over `-netdev stream` on the ingress NIC; upstream on a second
    /// NIC with user-mode networking.
    #[default]
    Forward,
    /// One NIC on user-mode networking with `hostfwd` (loses bursts; for comparison).
    Slirp,
}

impl std::str::FromStr for Ingress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forward" => Ok(Ingress::Forward),
            "slirp" => Ok(Ingress::Slirp),
            _ => Err(format!("unknown ingress {s:?}: forward or slirp")),
        }
    }
}

/// What `netoops-image appliance` runs.
#[derive(Clone, Debug)]
pub struct ApplianceOptions {
    /// Machine type.
    pub machine: Machine,
    /// How host datagrams reach the guest.
    pub ingress: Ingress,
    /// Host UDP address forwarded to the guest's netoops port.
    pub udp: SocketAddrV4,
    /// Host UDP address forwarded to the guest's netconsole port (forwarder only; `None`: off).
    pub netconsole_udp: Option<SocketAddrV4>,
    /// Receive buffer asked for on each host socket.
    pub recv_buffer: usize,
    /// Most bytes of frames the forwarder queues for the guest.
    pub queue_limit: usize,
    /// How often the forwarder's counters are printed (when they changed).
    pub stats_every: Duration,
    /// A file rewritten every second (and at exit) with the forwarder's counters as JSON.
    pub stats_json: Option<PathBuf>,
    /// Collector address (where it listens, as the host sees it).
    pub collector: SocketAddr,
    /// Collector storage directory.
    pub dir: PathBuf,
    /// Start the collector (false: one is already running at `collector`).
    pub start_collector: bool,
    /// The `netoops-collect` binary; found next to this program or on PATH when `None`.
    pub collector_bin: Option<PathBuf>,
    /// Extra kernel command-line keys (e.g. `memory=32M name=lab`), after the network keys.
    pub extra_cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// BIOS for pc/q35.
    pub bios: qemu::Bios,
    /// Use KVM instead of TCG.
    pub kvm: bool,
    /// Optimized image.
    pub release: bool,
    /// A prebuilt kernel image to boot instead of building one (no Rust toolchain needed).
    pub kernel: Option<PathBuf>,
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        Self {
            machine: Machine::Q35,
            ingress: Ingress::Forward,
            udp: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2004),
            netconsole_udp: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6666)),
            recv_buffer: forward::DEFAULT_RECV_BUFFER,
            queue_limit: forward::DEFAULT_QUEUE_LIMIT,
            stats_every: Duration::from_secs(5),
            stats_json: None,
            collector: SocketAddr::from((Ipv4Addr::LOCALHOST, 2005)),
            dir: PathBuf::from("netoops-dumps"),
            start_collector: true,
            collector_bin: None,
            extra_cmdline: String::new(),
            memory_mib: 256,
            bios: qemu::Bios::default(),
            kvm: false,
            release: true,
            kernel: None,
        }
    }
}

/// The collector's address as the guest reaches it: host loopback (or any-address) is
/// slirp's gateway; anything else is reached through slirp's NAT unchanged.
pub fn guest_upstream(collector: SocketAddr) -> SocketAddr {
    let ip = collector.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        SocketAddr::from((GUEST_GATEWAY, collector.port()))
    } else {
        collector
    }
}

/// The kernel command line: addressing, the listen port, the upstream, then `extra`.
pub fn guest_cmdline(o: &ApplianceOptions) -> String {
    let mut line = format!(
        "ip={GUEST_IP}/24 gw={GUEST_GATEWAY} port={GUEST_PORT} upstream={}",
        guest_upstream(o.collector)
    );
    if o.ingress == Ingress::Forward {
        line.push_str(&format!(" upstream_nic={UPSTREAM_MAC}"));
    }
    if !o.extra_cmdline.trim().is_empty() {
        line.push(' ');
        line.push_str(o.extra_cmdline.trim());
    }
    line
}

/// The QEMU invocation for `image`. With [`Ingress::Forward`], `ingress_netdev` is the
/// forwarder's `-netdev` value (see [`forward::Forwarder::netdev`], id `in`).
pub fn qemu_command(o: &ApplianceOptions, image: &Path, ingress_netdev: &str) -> QemuCommand {
    let cmd = QemuCommand::new(o.machine)
        .memory_mib(o.memory_mib)
        .bios(o.bios)
        .kernel(image)
        .cmdline(guest_cmdline(o));
    let nic = |netdev: &str, mac: &str, extra: &str| match o.machine {
        Machine::Microvm => format!("virtio-net-device,netdev={netdev},mac={mac}"),
        Machine::Q35 | Machine::Pc => {
            format!("virtio-net-pci,netdev={netdev},mac={mac},romfile={extra}")
        }
    };
    match o.ingress {
        Ingress::Slirp => cmd
            .netdev(format!(
                "user,id=n0,hostfwd=udp:{}:{}-:{GUEST_PORT}",
                o.udp.ip(),
                o.udp.port()
            ))
            .device(nic("n0", GUEST_MAC, "")),
        // The ingress NIC comes first, so it is the first NIC the kernel finds (`nic`'s
        // default); a larger receive ring takes more of a burst per guest poll.
        Ingress::Forward => cmd
            .netdev(ingress_netdev)
            .device(nic("in", GUEST_MAC, ",rx_queue_size=1024"))
            .netdev("user,id=up")
            .device(nic("up", UPSTREAM_MAC, "")),
    }
}

/// `cmd`'s arguments, with KVM instead of TCG when asked.
pub fn qemu_args(cmd: &QemuCommand, kvm: bool) -> Vec<String> {
    let mut args = cmd.to_args();
    if kvm {
        if let Some(i) = args.iter().position(|a| a == "-accel") {
            if let Some(accel) = args.get_mut(i + 1) {
                *accel = "kvm".into();
            }
        }
    }
    args
}

/// The collector binary: the one given, else `netoops-collect` next to this program (what
/// `cargo build` produces side by side), else whatever PATH has.
pub fn collector_binary(o: &ApplianceOptions) -> PathBuf {
    if let Some(p) = &o.collector_bin {
        return p.clone();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("netoops-collect")));
    match sibling {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("netoops-collect"),
    }
}

/// Sends SIGTERM (lets QEMU restore the terminal and the collector finish its batch).
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops `child` (SIGTERM, then SIGKILL after `grace`) and returns its status.
fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    terminate(child);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Key id of the key `run` makes for the collector it starts and the guest.
pub const DEMO_KEY_ID: &str = "netoops-image";
/// Where in the collector's directory that key is written (a file; the collector's store
/// only looks at directories).
pub const DEMO_KEYS_FILE: &str = ".netoops-image-keys";

/// 32 random bytes as hex.
fn demo_key() -> Result<String, crate::Error> {
    use std::io::Read;
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
    Ok(k.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the collector (sessions keyed by `keys`) with its output prefixed on stderr.
fn start_collector(o: &ApplianceOptions, keys: &Path) -> Result<Child, crate::Error> {
    std::fs::create_dir_all(&o.dir)?;
    let bin = collector_binary(o);
    let mut child = Command::new(&bin)
        .arg("serve")
        .arg("--keys")
        .arg(keys)
        .arg("--listen")
        .arg(o.collector.to_string())
        .arg("--dir")
        .arg(&o.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            crate::Error::Io(std::io::Error::other(format!(
                "starting {} (build it with: cargo build --release -p netoops-collect): {e}",
                bin.display()
            )))
        })?;
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("collector: {line}");
            }
        });
    }
    Ok(child)
}

/// The forwarder's ports: netoops always, netconsole unless turned off.
pub fn forwarded_ports(o: &ApplianceOptions) -> Vec<PortForward> {
    let mut ports = vec![PortForward {
        name: "netoops".into(),
        host: o.udp,
        guest_port: GUEST_PORT,
    }];
    if let Some(host) = o.netconsole_udp {
        ports.push(PortForward {
            name: "netconsole".into(),
            host,
            guest_port: GUEST_NETCONSOLE_PORT,
        });
    }
    ports
}

/// Starts the forwarder for `o` (binds the host ports now, before QEMU starts).
fn start_forwarder(o: &ApplianceOptions) -> Result<forward::Forwarder, crate::Error> {
    let guest_mac: MacAddr = GUEST_MAC
        .parse()
        .map_err(|e| crate::Error::Io(std::io::Error::other(format!("{e}"))))?;
    Ok(forward::Forwarder::start(&ForwarderConfig {
        ports: forwarded_ports(o),
        guest_mac,
        guest_ip: GUEST_IP,
        recv_buffer: o.recv_buffer,
        queue_limit: o.queue_limit,
    })?)
}

/// Writes `stats` as one JSON line to `path`, replacing it whole ([`crate::write_replacing`]),
/// so a reader never sees half a file.
pub fn write_stats_json(path: &Path, stats: &ForwarderStats) -> std::io::Result<()> {
    crate::write_replacing(path, format!("{}\n", stats.json()).as_bytes())
}

/// Prints the forwarder's counters and refreshes the JSON file; what failed is said once.
struct StatsReporter {
    json: Option<PathBuf>,
    last_printed: Option<ForwarderStats>,
    json_failed: bool,
}

impl StatsReporter {
    fn report(&mut self, stats: &ForwarderStats, print: bool) {
        if let Some(path) = &self.json {
            if let Err(e) = write_stats_json(path, stats) {
                if !self.json_failed {
                    eprintln!("netoops-image: writing {}: {e}", path.display());
                }
                self.json_failed = true;
            }
        }
        if print && self.last_printed.as_ref() != Some(stats) {
            for port in &stats.ports {
                eprintln!("netoops-image: {}", port.line());
            }
            self.last_printed = Some(stats.clone());
        }
    }
}

/// The one-line verdict printed after the forwarder stopped.
fn final_verdict(stats: &ForwarderStats) -> String {
    let lost: u64 = stats.ports.iter().map(|p| p.lost()).sum();
    let received: u64 = stats.ports.iter().map(|p| p.received).sum();
    if lost == 0 {
        format!("netoops-image: host side: {received} datagrams received, none lost")
    } else {
        format!(
            "netoops-image: host side: {received} datagrams received, {lost} LOST before the \
             relay (see the forwarder lines above for where)"
        )
    }
}

/// Builds the image, starts the collector, the forwarder and QEMU, and supervises them until
/// QEMU or the collector ends or the user interrupts. Returns QEMU's exit status code
/// (isa-debug-exit codes are odd).
pub fn run(o: &ApplianceOptions) -> Result<i32, crate::Error> {
    qemu::ensure_qemu(false)?;
    let image = crate::build::kernel_or_build(o.kernel.as_deref(), o.release)?;
    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop_requested))?;
    }
    let forwarder = match o.ingress {
        Ingress::Forward => Some(start_forwarder(o)?),
        Ingress::Slirp => None,
    };
    let mut reporter = StatsReporter {
        json: o.stats_json.clone(),
        last_printed: None,
        json_failed: false,
    };
    if let Some(f) = &forwarder {
        reporter.report(&f.stats(), false);
    }
    // The collector started here gets a fresh key for this run, and the guest its
    // `upstream_key`: the demo's session is authenticated like a deployment's.
    let mut keyed = o.clone();
    let mut collector = if o.start_collector {
        let key = demo_key()?;
        let keys = o.dir.join(DEMO_KEYS_FILE);
        std::fs::create_dir_all(&o.dir)?;
        std::fs::write(&keys, format!("{DEMO_KEY_ID} {key}\n"))?;
        keyed.extra_cmdline = format!("upstream_key={DEMO_KEY_ID}:{key} {}", o.extra_cmdline);
        Some(start_collector(o, &keys)?)
    } else {
        None
    };
    let netdev = forwarder
        .as_ref()
        .map(|f| f.netdev("in"))
        .unwrap_or_default();
    let cmd = qemu_command(&keyed, &image.path, &netdev);
    let args = qemu_args(&cmd, o.kvm);
    let via = match o.ingress {
        Ingress::Forward => "forwarded as frames",
        Ingress::Slirp => "user-mode networking",
    };
    let netconsole = match (o.ingress, o.netconsole_udp) {
        (Ingress::Forward, Some(n)) => format!(", netconsole udp {n} -> :{GUEST_NETCONSOLE_PORT}"),
        _ => String::new(),
    };
    eprintln!(
        "netoops-image: relay on udp {} -> guest {GUEST_IP}:{GUEST_PORT} ({via}){netconsole}; \
         collector {} storing in {}",
        o.udp,
        o.collector,
        o.dir.display()
    );
    eprintln!(
        "netoops-image: {QEMU} {}",
        args.join(" "),
        QEMU = qemu::QEMU
    );
    let mut vm = match Command::new(qemu::QEMU).args(&args).spawn() {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(c) = collector.as_mut() {
                stop(c, Duration::from_secs(5));
            }
            return Err(e.into());
        }
    };
    let mut last_json = Instant::now();
    let mut last_print = Instant::now();
    let code = loop {
        if let Ok(Some(status)) = vm.try_wait() {
            break status.code().unwrap_or(1);
        }
        if let Some(c) = collector.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!("netoops-image: the collector exited ({status}); stopping the relay");
                collector = None;
                let status = stop(&mut vm, Duration::from_secs(5));
                break status.and_then(|s| s.code()).unwrap_or(1);
            }
        }
        if stop_requested.load(Ordering::Relaxed) {
            eprintln!("netoops-image: stopping");
            let status = stop(&mut vm, Duration::from_secs(5));
            break status.and_then(|s| s.code()).unwrap_or(1);
        }
        if let Some(f) = &forwarder {
            if last_json.elapsed() >= Duration::from_secs(1) {
                let print = last_print.elapsed() >= o.stats_every;
                reporter.report(&f.stats(), print);
                last_json = Instant::now();
                if print {
                    last_print = Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // QEMU has exited: its stream connection can close now.
    if let Some(f) = forwarder {
        let stats = f.stop();
        reporter.last_printed = None;
        reporter.report(&stats, true);
        eprintln!("{}", final_verdict(&stats));
    }
    if let Some(c) = collector.as_mut() {
        stop(c, Duration::from_secs(10));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_reaches_a_loopback_collector_through_the_gateway() {
        let loopback: SocketAddr = "127.0.0.1:2005".parse().unwrap();
        assert_eq!(guest_upstream(loopback), "10.0.2.2:2005".parse().unwrap());
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(guest_upstream(any), "10.0.2.2:7000".parse().unwrap());
        let remote: SocketAddr = "192.0.2.9:2005".parse().unwrap();
        assert_eq!(guest_upstream(remote), remote);
        assert_eq!(
            guest_upstream(SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 9)),
            "10.0.2.2:9".parse().unwrap()
        );
    }

    #[test]
    fn command_line_and_qemu_arguments() {
        let o = ApplianceOptions {
            extra_cmdline: " name=lab memory=32M ".into(),
            ..ApplianceOptions::default()
        };
        assert_eq!(
            guest_cmdline(&o),
            "ip=10.0.2.15/24 gw=10.0.2.2 port=2004 upstream=10.0.2.2:2005 \
             upstream_nic=52:54:00:12:34:57 name=lab memory=32M"
        );
        let netdev = forward::stream_netdev("in", 4321);
        let cmd = qemu_command(&o, Path::new("/tmp/relay.elf"), &netdev);
        let tcg = qemu_args(&cmd, false).join(" ");
        assert!(tcg.contains("-accel tcg"), "{tcg}");
        assert!(tcg.contains(
            "-netdev stream,id=in,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=4321"
        ));
        assert!(tcg.contains(
            "-device virtio-net-pci,netdev=in,mac=52:54:00:12:34:56,romfile=,rx_queue_size=1024"
        ));
        assert!(tcg.contains("-netdev user,id=up "), "{tcg}");
        assert!(tcg.contains("-device virtio-net-pci,netdev=up,mac=52:54:00:12:34:57,romfile="));
        assert!(!tcg.contains("hostfwd"), "{tcg}");
        assert!(tcg.contains("-m 256M"));
        let kvm = qemu_args(&cmd, true).join(" ");
        assert!(kvm.contains("-accel kvm") && !kvm.contains("tcg"), "{kvm}");

        let slirp = ApplianceOptions {
            ingress: Ingress::Slirp,
            ..ApplianceOptions::default()
        };
        assert!(!guest_cmdline(&slirp).contains("upstream_nic"));
        let args = qemu_args(&qemu_command(&slirp, Path::new("k"), ""), false).join(" ");
        assert!(args.contains("-netdev user,id=n0,hostfwd=udp:127.0.0.1:2004-:2004"));
        assert!(args.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="));
        assert!(!args.contains("netdev=up"), "{args}");

        let micro = ApplianceOptions {
            machine: Machine::Microvm,
            ..ApplianceOptions::default()
        };
        let args = qemu_args(&qemu_command(&micro, Path::new("k"), &netdev), false).join(" ");
        // The kernel finds microvm's virtio-mmio NICs in the DSDT: ACPI stays on.
        assert!(!args.contains("acpi=off"), "{args}");
        assert!(args.contains("-device virtio-net-device,netdev=in,mac=52:54:00:12:34:56"));
        assert!(args.contains("-device virtio-net-device,netdev=up,mac=52:54:00:12:34:57"));
    }

    #[test]
    fn netconsole_is_a_second_forwarded_port_unless_off() {
        let o = ApplianceOptions::default();
        let ports = forwarded_ports(&o);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].host, "127.0.0.1:2004".parse().unwrap());
        assert_eq!(ports[0].guest_port, 2004);
        assert_eq!(ports[1].host, "127.0.0.1:6666".parse().unwrap());
        assert_eq!(ports[1].guest_port, 6666);
        let off = ApplianceOptions {
            netconsole_udp: None,
            ..o
        };
        assert_eq!(forwarded_ports(&off).len(), 1);
        assert_eq!("forward".parse(), Ok(Ingress::Forward));
        assert_eq!("slirp".parse(), Ok(Ingress::Slirp));
        assert!("tap".parse::<Ingress>().is_err());
    }

    #[test]
    fn stats_file_is_one_json_line_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("netoops-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("forwarder.json");
        let stats = ForwarderStats {
            connected: true,
            ports: vec![forward::PortStats {
                name: "netoops".into(),
                received: 7,
                forwarded: 5,
                queue_drops: 2,
                host_drops: Some(1),
                ..Default::default()
            }],
        };
        write_stats_json(&path, &stats).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["forwarder"]["ports"][0]["lost"], 3);
        // No temporary file left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["forwarder.json"]);
        assert!(final_verdict(&stats).contains("3 LOST"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn collector_binary_prefers_the_explicit_path() {
        let o = ApplianceOptions {
            collector_bin: Some(PathBuf::from("/opt/netoops-collect")),
            ..ApplianceOptions::default()
        };
        assert_eq!(collector_binary(&o), PathBuf::from("/opt/netoops-collect"));
    }

    #[test]
    fn stop_ends_a_process_that_ignores_nothing() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let status = stop(&mut child, Duration::from_secs(5)).expect("stopped");
        assert!(!status.success());
    }
}
