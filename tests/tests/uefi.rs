//! The UEFI boot path end to end: the flashable disk image (`netoops-image disk`: GPT, FAT32
//! ESP with `EFI/BOOT/BOOTX64.EFI` and `relay.conf`) booted by real OVMF under QEMU (TCG; OVMF
//! fails under the build machines' nested KVM), q35 with 256 MiB.
//!
//! - a `selftest=exit` relay.conf (on virtio-blk, and on a USB stick): the stub hands over,
//!   the kernel reports `booted via UEFI`, finds ACPI and ECAM from the firmware's tables and
//!   maps the 64-bit BAR OVMF placed above 4 GiB, then exits with success;
//! - a relay relay.conf written like a Windows user would (CRLF, comments): the board runs
//!   with exactly those settings (`ready: listening ...`);
//! - relay.conf missing, and relay.conf with a bad value: the stub prints what is wrong
//!   (with the line) and stops before the kernel starts;
//! - 50 crashing machines' dumps through the relay booted this way, on each NIC it drives,
//!   stored by the real collector byte for byte as the reference model says (virtio-net;
//!   e1000/e1000e wait for the board to drive them, and their driver is shown to come up
//!   after ExitBootServices).
//!
//! Guests run one at a time (2-core machines). Needs `apt-get install -y qemu-system-x86 ovmf`.

use netoops_e2e::hosted::{fleet, wait_stored, Collector, Plan, Process, Rng, Want, PATIENCE};
use netoops_image::build::{build_kernel, BuiltImage};
use netoops_image::disk::{self, CONF_PATH};
use netoops_image::qemu::{self, exit_code, Machine, Outcome, Ovmf, QemuCommand, RunOutput};
use netoops_image::uefi::{build_efi, BuiltEfi};
use netoops_wire::encode::encode;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// OVMF under TCG takes 5-10 s to reach the stub on an idle machine; allow for a busy one.
const UEFI_TIMEOUT: Duration = Duration::from_secs(150);

struct Built {
    kernel: BuiltImage,
    efi: BuiltEfi,
    ovmf: Ovmf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        qemu::ensure_qemu(false).unwrap_or_else(|e| panic!("{e}"));
        let ovmf = Ovmf::find().unwrap_or_else(|e| panic!("{e}"));
        let kernel = build_kernel(true).unwrap_or_else(|e| panic!("building the kernel: {e}"));
        let efi = build_efi(&kernel, true).unwrap_or_else(|e| panic!("building the stub: {e}"));
        Built { kernel, efi, ovmf }
    })
}

/// One guest at a time.
fn slot() -> MutexGuard<'static, ()> {
    static SLOT: Mutex<()> = Mutex::new(());
    SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A disk image for one test (removed when dropped).
struct Disk(PathBuf);

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disk(name: &str, relay_conf: Option<&[u8]>) -> Disk {
    let efi = std::fs::read(&built().efi.path).expect("reading the stub");
    let path =
        netoops_image::image_dir().join(format!("uefi-test-{name}-{}.img", std::process::id()));
    disk::build_disk(&efi, relay_conf, disk::MIN_SIZE_MIB, &path)
        .unwrap_or_else(|e| panic!("building {}: {e}", path.display()));
    Disk(path)
}

fn uefi(disk: &Disk) -> QemuCommand {
    QemuCommand::new(Machine::Q35)
        .memory_mib(256)
        .uefi(&built().ovmf)
        .disk(&disk.0)
}

fn boot(cmd: QemuCommand) -> RunOutput {
    let _slot = slot();
    let out =
        qemu::run(&cmd, UEFI_TIMEOUT).unwrap_or_else(|e| panic!("spawning {}: {e}", cmd.display()));
    eprintln!("$ {}\n{}{}", cmd.display(), out.console(), out.stderr);
    out
}

fn line<'a>(out: &'a RunOutput, needle: &str) -> &'a qemu::ConsoleLine {
    out.line_with(needle)
        .unwrap_or_else(|| panic!("console lacks {needle:?}:\n{}", out.console()))
}

#[test]
fn uefi_disk_boots_the_kernel_which_finds_acpi_ecam_and_high_bars() {
    let built = built();
    assert!(built.kernel.summary.uefi_entry.is_some());
    let disk = disk("selftest", Some(b"# boot test\nselftest=exit\n"));
    let out = boot(uefi(&disk));

    let stub = line(&out, "UEFI stub: kernel image");
    line(&out, "relay.conf: self-test exit");
    line(&out, "exiting boot services");
    let handed = line(&out, "uefi: boot services exited");
    let banner = line(&out, " booted via UEFI in ");
    assert!(banner.text.contains(" MHz)"), "{}", banner.text);
    assert!(stub.at <= handed.at && handed.at <= banner.at);
    line(&out, "acpi: rsdp 0x");
    line(&out, "pci: ecam 0xb0000000");
    line(&out, "cmdline: selftest=exit");
    // OVMF assigns 64-bit BARs (here virtio-blk's) above 4 GiB; the kernel maps them.
    let bar = line(&out, "mapped uncached");
    let address = bar
        .text
        .split(" at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no address in {:?}", bar.text));
    assert!(address >= 1 << 32, "BAR at {address:#x}");
    line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
    eprintln!(
        "uefi: stub at {} ms, kernel banner at {} ms, exit at {} ms after QEMU start",
        stub.at.as_millis(),
        banner.at.as_millis(),
        out.elapsed.as_millis()
    );
}

/// The deployment path in the README: the same image `dd`'d to a USB stick, found by the
/// firmware through its USB mass-storage driver (xHCI) rather than virtio.
#[test]
fn uefi_disk_boots_from_a_usb_stick() {
    let disk = disk("usb", Some(b"selftest=exit\n"));
    let cmd = QemuCommand::new(Machine::Q35)
        .memory_mib(256)
        .uefi(&built().ovmf)
        .device("qemu-xhci")
        .args([
            "-drive".to_string(),
            format!("if=none,format=raw,id=stick,file={}", disk.0.display()),
            "-device".to_string(),
            "usb-storage,drive=stick,bootindex=1".to_string(),
        ]);
    let out = boot(cmd);
    line(&out, " booted via UEFI in ");
    line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
}

#[test]
fn uefi_disk_runs_the_relay_with_the_settings_from_relay_conf() {
    let conf = b"# netoops relay, rack 7 (saved by a Windows editor)\r\n\
                 ip=10.0.2.15/24   gw=10.0.2.2\r\n\
                 upstream=10.0.2.2:2005   # the collector\r\n\
                 name=uefi-rack-7\r\n";
    let disk = disk("relay", Some(conf));
    let cmd = uefi(&disk)
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-pci,romfile=,netdev=n0");
    let _slot = slot();
    let mut guest = Process::spawn("qemu (uefi relay)", cmd.command());
    guest.wait_for_line("relay.conf: ip 10.0.2.15/24 gw 10.0.2.2 port 2004 upstream 10.0.2.2:2005");
    let banner = guest.wait_for_line("booted via UEFI in ");
    let config = guest.wait_for_line("config: ");
    for setting in [
        "ip=10.0.2.15/24",
        "gw=10.0.2.2",
        "upstream=10.0.2.2:2005",
        "name=uefi-rack-7",
    ] {
        assert!(config.contains(setting), "{setting} not in {config}");
    }
    guest.wait_for_line("ready: listening on udp/2004 at 10.0.2.15");
    eprintln!("{banner}\n{}", guest.describe());
}

#[test]
fn missing_relay_conf_is_reported_and_the_machine_stops() {
    let disk = disk("noconf", None);
    let out = boot(uefi(&disk));
    line(
        &out,
        "netoops-relay: relay.conf not found in the root of the EFI system partition",
    );
    line(&out, "netoops-relay: stopped.");
    assert!(out.line_with("booted via").is_none(), "the kernel ran");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAILURE));
}

#[test]
fn broken_relay_conf_is_reported_with_its_line_and_the_machine_stops() {
    // Flashed with a good file, then edited on the ESP (as after mounting the stick).
    let disk = disk(
        "badconf",
        Some(b"ip=10.0.2.15/24\nupstream=10.0.2.2:2005\n"),
    );
    disk::esp_write(
        &disk.0,
        CONF_PATH,
        Some(b"ip=10.0.2.15/24\nupstream=10.0.2.2\n"),
    )
    .expect("editing relay.conf");
    let out = boot(uefi(&disk));
    line(
        &out,
        "netoops-relay: relay.conf line 2: configuration key `upstream`: bad value `10.0.2.2`",
    );
    line(&out, "netoops-relay: stopped.");
    assert!(out.line_with("booted via").is_none(), "the kernel ran");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAILURE));
}

fn free_udp_port() -> u16 {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    probe.local_addr().expect("probe address").port()
}

/// Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port` (QEMU's
/// forwarding socket), from /proc/net/udp.
fn udp_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// Sends every machine's plan to `to` interleaved datagram by datagram (a storm), from each
/// machine's own 127.x address. QEMU's forwarding socket has the default receive buffer
/// (about 200 KiB), which a sender outruns a TCG guest into within a few hundred datagrams;
/// the sender waits while 64 KiB are queued there, so nothing is lost before the guest.
fn send_paced(to: SocketAddr, machines: &[netoops_e2e::hosted::Machine], plans: &[Plan]) {
    let sockets: Vec<UdpSocket> = machines
        .iter()
        .map(|m| UdpSocket::bind((m.ip, 0)).unwrap_or_else(|e| panic!("binding {}: {e}", m.ip)))
        .collect();
    let mut next = vec![0usize; machines.len()];
    let mut buf = [0u8; 2048];
    let mut chunk = [0u8; netoops_wire::DATA_LEN];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut any = false;
        for (i, m) in machines.iter().enumerate() {
            let Some(&p) = plans[i].packets.get(next[i]) else {
                continue;
            };
            next[i] += 1;
            any = true;
            while udp_queue(to.port()).is_some_and(|q| q > 64 << 10) {
                assert!(Instant::now() < deadline, "QEMU stopped reading its socket");
                std::thread::sleep(Duration::from_micros(200));
            }
            let sender = m.sender();
            sender.chunk_into(p, &mut chunk);
            let n = encode(&m.header, sender.packet_count(), p, &chunk, &mut buf)
                .expect("2048 bytes hold any datagram");
            sockets[i]
                .send_to(&buf[..n], to)
                .expect("sending on loopback");
        }
        if !any {
            return;
        }
    }
}

/// The UEFI image as deployed: relay.conf on the ESP, one NIC (`nic`, a QEMU device model)
/// on QEMU's user network with the netoops port forwarded from the host, the collector on
/// the host. 50 machines crash at once (every wire variant, 1-24 KiB logs, all three
/// rounds, no loss); every dump must be stored exactly once, as the reference model says.
fn fifty_dumps_through_the_uefi_relay(nic: &str, kind: &str) {
    let store = tempfile::tempdir().expect("store directory");
    let collector = Collector::start(store.path(), "127.0.0.1:0".parse().unwrap());
    let udp = free_udp_port();
    let conf = format!(
        "# {nic}: 50 crashing machines forwarded from the host\n\
         ip=10.0.2.15/24 gw=10.0.2.2\n\
         upstream=10.0.2.2:{}\n\
         quiet=2s stats=1s name=uefi-{nic}\n",
        collector.addr.port()
    );
    let disk = disk(nic, Some(conf.as_bytes()));
    let cmd = uefi(&disk)
        .netdev(format!("user,id=n0,hostfwd=udp:127.0.0.1:{udp}-:2004"))
        .device(format!("{nic},romfile=,netdev=n0"));
    let _slot = slot();
    let mut guest = Process::spawn(&format!("qemu (uefi relay, {nic})"), cmd.command());
    guest.wait_for_line(" booted via UEFI in ");
    let nic_line = guest.wait_for_line("nic 0: ");
    assert!(nic_line.contains(kind), "{nic_line}");
    guest.wait_for_line("ready: listening on udp/2004 at 10.0.2.15");

    let machines = fleet(0x0e_f1, 31, 50, 1024, 24 * 1024);
    let mut rng = Rng::new(0x0e_f1);
    let plans: Vec<Plan> = machines
        .iter()
        .map(|m| Plan::new(m, 0.0, &mut rng))
        .collect();
    let wants: Vec<Want> = plans
        .iter()
        .zip(&machines)
        .map(|(p, m)| p.want(m))
        .collect();
    let started = Instant::now();
    send_paced(
        SocketAddr::from((Ipv4Addr::LOCALHOST, udp)),
        &machines,
        &plans,
    );
    let sent = started.elapsed();
    wait_stored(store.path(), &wants, || {
        format!("{}{}", guest.describe(), collector.process.describe())
    });
    let stored = started.elapsed();
    // Every datagram reached the relay (the later rounds are duplicates it counts).
    let total: usize = plans.iter().map(|p| p.packets.len()).sum();
    let counters = guest.wait_for_line(&format!("counters: datagrams {total} "));
    assert!(
        counters.contains("complete 50 partial 0") && counters.contains("malformed 0"),
        "{counters}"
    );
    eprintln!(
        "{nic}: {total} datagrams sent in {} ms, all 50 dumps stored after {} ms\n{counters}",
        sent.as_millis(),
        stored.as_millis()
    );
}

#[test]
fn fifty_dumps_through_the_uefi_relay_on_virtio_net() {
    fifty_dumps_through_the_uefi_relay("virtio-net-pci", "virtio-net");
}

/// The Intel NICs after OVMF: with no option ROM (`romfile=`) the firmware has no driver for
/// them, and the kernel's e1000 driver brings both models up from the state ExitBootServices
/// leaves (`selftest=e1000-echo` prints its ready line once the link is up).
#[test]
fn e1000_and_e1000e_come_up_after_exit_boot_services() {
    for (nic, model) in [("e1000", "model=82540em"), ("e1000e", "model=82574l")] {
        let disk = disk(&format!("echo-{nic}"), Some(b"selftest=e1000-echo\n"));
        let cmd = uefi(&disk)
            .netdev("user,id=n0,restrict=on")
            .device(format!("{nic},romfile=,netdev=n0"));
        let _slot = slot();
        let mut guest = Process::spawn(&format!("qemu (uefi, {nic})"), cmd.command());
        guest.wait_for_line(" booted via UEFI in ");
        let ready = guest.wait_for_line("e1000-echo: ready ");
        assert!(
            ready.contains(model) && ready.contains("link=up"),
            "{ready}"
        );
        eprintln!("{nic}: {ready}");
    }
}

#[test]
#[ignore = "the board does not drive e1000 yet (image/kernel/src/net/nic.rs)"]
fn fifty_dumps_through_the_uefi_relay_on_e1000() {
    fifty_dumps_through_the_uefi_relay("e1000", "e1000");
}

#[test]
#[ignore = "the board does not drive e1000e yet (image/kernel/src/net/nic.rs)"]
fn fifty_dumps_through_the_uefi_relay_on_e1000e() {
    fifty_dumps_through_the_uefi_relay("e1000e", "e1000");
}
