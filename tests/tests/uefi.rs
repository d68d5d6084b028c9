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
//!   (with the line) and stops before the kernel starts.
//!
//! Guests run one at a time (2-core machines). Needs `apt-get install -y qemu-system-x86 ovmf`.

use netoops_e2e::hosted::Process;
use netoops_image::build::{build_kernel, BuiltImage};
use netoops_image::disk::{self, CONF_PATH};
use netoops_image::qemu::{self, exit_code, Machine, Outcome, Ovmf, QemuCommand, RunOutput};
use netoops_image::uefi::{build_efi, BuiltEfi};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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
