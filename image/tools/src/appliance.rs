//! `netoops-image appliance`: the relay as someone tries it on a workstation: the image
//! under QEMU with user-mode networking, and a collector next to it, both started and
//! stopped together.
//!
//! Networking (QEMU's user-mode stack, slirp): host UDP `--udp` (default 127.0.0.1:2004) is
//! forwarded (`hostfwd`) to the guest's netoops port 2004; the guest has 10.0.2.15/24 and
//! gateway 10.0.2.2, which slirp maps to the host's loopback, so a collector listening on
//! host 127.0.0.1:2005 is `upstream=10.0.2.2:2005` for the guest. A collector elsewhere is
//! reached through slirp's NAT at its own address. Forwarded datagrams keep their source
//! address, except that host loopback 127.0.0.1 appears as 10.0.2.2.
//!
//! TCG always; `--kvm` opts in to KVM (nested KVM on the build machines mis-executes the
//! firmware, so it is never the default). Ctrl-C or SIGTERM stops QEMU and the collector;
//! when either exits by itself, the other is stopped too.

use crate::qemu::{self, Machine, QemuCommand};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The guest's address on slirp's network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// slirp's gateway, which is the host's loopback as seen from the guest.
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The netoops port inside the guest.
pub const GUEST_PORT: u16 = 2004;
/// The guest NIC's MAC (QEMU's default for the first NIC).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// What `netoops-image appliance` runs.
#[derive(Clone, Debug)]
pub struct ApplianceOptions {
    /// Machine type.
    pub machine: Machine,
    /// Host UDP address forwarded to the guest's netoops port.
    pub udp: SocketAddrV4,
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
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        Self {
            machine: Machine::Q35,
            udp: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2004),
            collector: SocketAddr::from((Ipv4Addr::LOCALHOST, 2005)),
            dir: PathBuf::from("netoops-dumps"),
            start_collector: true,
            collector_bin: None,
            extra_cmdline: String::new(),
            memory_mib: 256,
            bios: qemu::Bios::default(),
            kvm: false,
            release: true,
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
    if !o.extra_cmdline.trim().is_empty() {
        line.push(' ');
        line.push_str(o.extra_cmdline.trim());
    }
    line
}

/// The QEMU invocation for `image`.
pub fn qemu_command(o: &ApplianceOptions, image: &Path) -> QemuCommand {
    let mut cmd = QemuCommand::new(o.machine)
        .memory_mib(o.memory_mib)
        .bios(o.bios)
        .kernel(image)
        .cmdline(guest_cmdline(o))
        .netdev(format!(
            "user,id=n0,hostfwd=udp:{}:{}-:{GUEST_PORT}",
            o.udp.ip(),
            o.udp.port()
        ));
    cmd = match o.machine {
        // microvm lists virtio-mmio devices on the command line only without ACPI.
        Machine::Microvm => cmd
            .machine_option("acpi=off")
            .device(format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}")),
        Machine::Q35 | Machine::Pc => {
            cmd.device(format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile="))
        }
    };
    cmd
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

/// Starts the collector with its output prefixed on stderr.
fn start_collector(o: &ApplianceOptions) -> Result<Child, crate::Error> {
    std::fs::create_dir_all(&o.dir)?;
    let bin = collector_binary(o);
    let mut child = Command::new(&bin)
        .arg("serve")
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

/// Builds the image, starts the collector and QEMU, and supervises both until one ends or
/// the user interrupts. Returns QEMU's exit status code (isa-debug-exit codes are odd).
pub fn run(o: &ApplianceOptions) -> Result<i32, crate::Error> {
    qemu::ensure_qemu(false)?;
    let image = crate::build::build_kernel(o.release)?;
    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop_requested))?;
    }
    let mut collector = if o.start_collector {
        Some(start_collector(o)?)
    } else {
        None
    };
    let cmd = qemu_command(o, &image.path);
    let args = qemu_args(&cmd, o.kvm);
    eprintln!(
        "netoops-image: relay on udp {} -> guest {GUEST_IP}:{GUEST_PORT}; collector {} storing in {}",
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
        std::thread::sleep(Duration::from_millis(50));
    };
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
            "ip=10.0.2.15/24 gw=10.0.2.2 port=2004 upstream=10.0.2.2:2005 name=lab memory=32M"
        );
        let cmd = qemu_command(&o, Path::new("/tmp/relay.elf"));
        let tcg = qemu_args(&cmd, false).join(" ");
        assert!(tcg.contains("-accel tcg"), "{tcg}");
        assert!(tcg.contains("-netdev user,id=n0,hostfwd=udp:127.0.0.1:2004-:2004"));
        assert!(tcg.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="));
        assert!(tcg.contains("-m 256M"));
        let kvm = qemu_args(&cmd, true).join(" ");
        assert!(kvm.contains("-accel kvm") && !kvm.contains("tcg"), "{kvm}");
        let micro = ApplianceOptions {
            machine: Machine::Microvm,
            ..ApplianceOptions::default()
        };
        let args = qemu_args(&qemu_command(&micro, Path::new("k")), false).join(" ");
        assert!(args.contains("-machine microvm,acpi=off"), "{args}");
        assert!(
            args.contains("-device virtio-net-device,netdev=n0"),
            "{args}"
        );
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
