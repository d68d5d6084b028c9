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
//!   stored by the real collector byte for byte as the reference model says: virtio-net
//!   without loss; e1000 and e1000e (issue 5) with 10 % loss, so missing ranges and partial
//!   dumps are checked too; and two e1000e, ingress and upstream on separate networks
//!   (the generator's raw frames in, the collector behind the second NIC). The e1000 driver
//!   is also shown to come up from the state ExitBootServices leaves.
//!
//! Guests run one at a time (2-core machines). Needs `apt-get install -y qemu-system-x86 ovmf`.

use netoops_e2e::appliance::{
    nic_label, read_expectations, run_generator, wait_expectations, StreamProxy, UPSTREAM_MAC,
};
use netoops_e2e::forward::LossyFleet;
use netoops_e2e::hosted::{parse_counters, wait_stored, wait_until, Collector, Counters, Process};
use netoops_image::build::{build_kernel, BuiltImage};
use netoops_image::disk::{self, CONF_PATH};
use netoops_image::qemu::{self, exit_code, Machine, Outcome, Ovmf, QemuCommand, RunOutput};
use netoops_image::uefi::{build_efi, BuiltEfi};
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
    assert!(
        out.line_with(netoops_core::console::BOOTED).is_none(),
        "the kernel ran"
    );
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
    assert!(
        out.line_with(netoops_core::console::BOOTED).is_none(),
        "the kernel ran"
    );
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAILURE));
}

fn free_udp_port() -> u16 {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    probe.local_addr().expect("probe address").port()
}

/// The UEFI image as deployed: relay.conf on the ESP, one NIC (`nic`, a QEMU device model)
/// on QEMU's user network with the netoops port forwarded from the host, the collector on
/// the host. 50 machines crash at once (every wire variant, all three rounds, `fleet`'s
/// planned loss and no other); every heard dump must be stored exactly once, text and
/// missing ranges as the reference model says.
fn fifty_dumps_through_the_uefi_relay(
    nic: &str,
    kind: &str,
    fleet: &LossyFleet,
    max_rate: Option<u32>,
) {
    let store = tempfile::tempdir().expect("store directory");
    let collector = Collector::start(store.path(), "127.0.0.1:0".parse().unwrap());
    let udp = free_udp_port();
    let conf = format!(
        "# {nic}: 50 crashing machines forwarded from the host\n\
         ip=10.0.2.15/24 gw=10.0.2.2\n\
         upstream=10.0.2.2:{}\n\
         upstream_key={}\n\
         quiet=2s stats=1s name=uefi-{nic}\n",
        collector.addr.port(),
        netoops_e2e::hosted::test_upstream_key()
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

    let started = Instant::now();
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, udp));
    fleet.send_paced(to, max_rate, || {
        guest.wait_for_line(netoops_core::console::FIRST_ACCEPTED);
    });
    let sent = started.elapsed();
    wait_stored(store.path(), &fleet.wants, || {
        format!("{}{}", guest.describe(), collector.process.describe())
    });
    let stored = started.elapsed();
    // Every datagram sent reached the relay (the later rounds are duplicates it counts), and
    // each dump finished as planned.
    wait_until(
        "the relay's counters",
        || {
            guest
                .stdout_lines()
                .iter()
                .any(|l| fleet.counters_show_all(l))
        },
        || guest.describe(),
    );
    let last = |prefix: &str| {
        let lines = guest.stdout_lines();
        lines.into_iter().rev().find(|l| l.contains(prefix))
    };
    let nic_counters = last("nic ingress: ").map(|l| parse_counters(&l));
    assert_eq!(
        nic_counters.as_ref().and_then(|c| c.get("rx_dropped")),
        Some(&0),
        "the NIC dropped frames: {nic_counters:?}"
    );
    let counters = last("counters: ").unwrap_or_default();
    eprintln!(
        "{nic}: {} datagrams sent in {} ms, all 50 dumps ({} partial) stored after {} ms\n{counters}",
        fleet.datagrams(),
        sent.as_millis(),
        fleet.partial(),
        stored.as_millis()
    );
}

#[test]
fn fifty_dumps_through_the_uefi_relay_on_virtio_net() {
    let fleet = LossyFleet::new(0x0e_f1, 31, 50, 1024..=24 * 1024, 0.0);
    fifty_dumps_through_the_uefi_relay("virtio-net-pci", "virtio-net", &fleet, None);
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

/// Seed of the Intel NIC fleets: 50 machines with 1-16 KiB logs at 10 % loss, of which 4
/// lose a packet in all three rounds (their dumps are stored partial, with missing ranges).
const INTEL_SEED: u64 = 14;

/// Seed of the generator's fleet in the two-NIC test (1-16 KiB logs, 10 % loss): 2 of its 50
/// dumps end partial.
const GENERATOR_SEED: u64 = 28;
/// The ingress NIC's MAC: where the generator addresses its frames (`--dst-mac` default).
const INGRESS: &str = "52:54:00:12:34:56";

fn intel_fleet() -> LossyFleet {
    let fleet = LossyFleet::new(INTEL_SEED, 31, 50, 1024..=16 * 1024, 0.1);
    assert!(
        fleet.partial() > 0 && fleet.complete() > 0,
        "the seed must leave some dumps partial"
    );
    fleet
}

/// Datagrams per second into the single-NIC Intel relays. QEMU's 82540EM model drops what
/// its receive ring cannot hold when the guest falls behind (see `send_paced`), and a TCG
/// guest on a loaded machine stalls for tens of milliseconds at times (up to 200 ms on its
/// first datagrams); the e1000e run gets the same traffic.
const INTEL_RATE: u32 = 1000;

#[test]
fn fifty_dumps_with_loss_through_the_uefi_relay_on_e1000() {
    let fleet = intel_fleet();
    fifty_dumps_through_the_uefi_relay("e1000", "e1000/82540em", &fleet, Some(INTEL_RATE));
}

#[test]
fn fifty_dumps_with_loss_through_the_uefi_relay_on_e1000e() {
    let fleet = intel_fleet();
    fifty_dumps_through_the_uefi_relay("e1000e", "e1000/82574l", &fleet, Some(INTEL_RATE));
}

/// Two NICs, both e1000e, as on a relay box with a management port and an uplink: netoops
/// frames arrive on the ingress NIC (raw frames over `-netdev stream`, flow-controlled, so
/// the generator's 10 % loss is the only loss) addressed to `ip=`, and the collector is
/// reached through the other NIC (`upstream_nic=` by MAC, with its own
/// `upstream_nic.ip=`/`upstream_nic.gw=`) on QEMU's user network. The ingress network has no
/// route to the collector, so a delivered dump proves the upstream NIC carried it.
#[test]
fn fifty_dumps_with_loss_through_the_uefi_relay_on_two_e1000e() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (expect_dir, store) = (tmp.path().join("expect"), tmp.path().join("store"));
    let collector = Collector::start(&store, "127.0.0.1:0".parse().unwrap());
    let conf = format!(
        "# ingress on the first e1000e, collector behind the second\n\
         ip=192.168.77.2/24\n\
         upstream_nic={UPSTREAM_MAC} upstream_nic.ip=10.0.2.15/24 upstream_nic.gw=10.0.2.2\n\
         upstream=10.0.2.2:{}\n\
         upstream_key={}\n\
         quiet=2s stats=1s name=uefi-two-e1000e\n",
        collector.addr.port(),
        netoops_e2e::hosted::test_upstream_key()
    );
    let disk = disk("two-e1000e", Some(conf.as_bytes()));
    let proxy = StreamProxy::start();
    let cmd = uefi(&disk)
        .netdev(format!(
            "stream,id=in,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={}",
            proxy.qemu_port()
        ))
        .device(format!("e1000e,netdev=in,mac={INGRESS},romfile="))
        .netdev("user,id=up")
        .device(format!("e1000e,netdev=up,mac={UPSTREAM_MAC},romfile="));
    let _slot = slot();
    let mut guest = Process::spawn("qemu (uefi relay, two e1000e)", cmd.command());
    proxy.run();
    guest.wait_for_line(" booted via UEFI in ");
    let ingress = guest
        .wait_for_line(": ingress 192.168.77.2/24 (fast path on udp/2004, netconsole udp/6666)");
    let upstream = guest.wait_for_line(": upstream 10.0.2.15/24 via 10.0.2.2");
    for (role, line) in [("ingress", &ingress), ("upstream", &upstream)] {
        let index = nic_label(line);
        let nic = guest.wait_for_line(&format!("{index}: e1000/82574l at pci "));
        assert!(
            nic.contains(if role == "ingress" {
                INGRESS
            } else {
                UPSTREAM_MAC
            }),
            "{nic}"
        );
    }
    guest.wait_for_line("ready: listening on udp/2004 at 192.168.77.2");
    run_generator(&[
        "--output".into(),
        format!("stream:127.0.0.1:{}", proxy.feed_port()),
        "--dst-ip".into(),
        "192.168.77.2".into(),
        "--machines".into(),
        "50".into(),
        "--loss".into(),
        "0.1".into(),
        "--seed".into(),
        GENERATOR_SEED.to_string(),
        "--log-size".into(),
        "1K-16K".into(),
        "--expect".into(),
        expect_dir.display().to_string(),
    ]);
    let exps = read_expectations(&expect_dir);
    assert_eq!(exps.len(), 50);
    assert!(
        exps.iter()
            .any(|e| e.heard() && e.json["complete"] == false),
        "seed {GENERATOR_SEED} must leave some dumps partial"
    );
    wait_expectations(&store, &exps, None, || {
        format!("{}{}", guest.describe(), collector.process.describe())
    });
    // The ingress NIC dropped nothing; the upstream NIC carried traffic.
    wait_until(
        "both NICs' counters",
        || {
            let lines = guest.stdout_lines();
            let last = |p: &str| lines.iter().rev().find(|l| l.contains(p)).cloned();
            let ingress = last("nic ingress: ").map(|l| parse_counters(&l));
            let upstream = last("nic upstream: ").map(|l| parse_counters(&l));
            let positive = |c: &Counters, k: &str| c.get(k).is_some_and(|&n| n > 0);
            ingress.is_some_and(|c| c.get("rx_dropped") == Some(&0) && positive(&c, "rx"))
                && upstream.is_some_and(|c| positive(&c, "tx") && positive(&c, "rx"))
        },
        || guest.describe(),
    );
    eprintln!(
        "{}\n{}",
        guest.wait_for_line("nic ingress: "),
        guest.wait_for_line("nic upstream: ")
    );
}
