//! Boot tests: the real kernel image under real QEMU (TCG), on every machine type we ship for.
//!
//! Each test boots `target/image/netoops-relay.elf` (built once, release) with a
//! `selftest=` command line, reads the serial console with timestamps and checks how QEMU
//! ended (isa-debug-exit status). Runs are serialized so the boot-time figures printed with
//! `--nocapture` are not skewed by parallel guests. QEMU must be installed
//! (`apt-get install -y qemu-system-x86 ovmf`); the GRUB test also needs
//! `grub-pc-bin grub-common xorriso mtools`.

use netoops_image::build::{build_kernel, BuiltImage};
use netoops_image::qemu::{self, exit_code, Machine, Outcome, QemuCommand, RunOutput};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const GRUB_TIMEOUT: Duration = Duration::from_secs(180);

fn image() -> &'static BuiltImage {
    static IMAGE: OnceLock<BuiltImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        qemu::ensure_qemu(false).unwrap_or_else(|e| panic!("{e}"));
        build_kernel(true).unwrap_or_else(|e| panic!("building the kernel image: {e}"))
    })
}

/// One guest at a time (see the module doc).
static QEMU_SLOT: Mutex<()> = Mutex::new(());

fn boot(cmd: QemuCommand, timeout: Duration) -> RunOutput {
    let _slot = QEMU_SLOT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let out =
        qemu::run(&cmd, timeout).unwrap_or_else(|e| panic!("spawning {}: {e}", cmd.display()));
    eprintln!("$ {}\n{}{}", cmd.display(), out.console(), out.stderr);
    out
}

fn pvh(machine: Machine, cmdline: &str) -> QemuCommand {
    QemuCommand::new(machine)
        .kernel(&image().path)
        .cmdline(cmdline)
}

/// Asserts the banner and returns the time from QEMU start to it.
fn banner(out: &RunOutput, protocol: &str) -> Duration {
    let line = out
        .line_with("netoops-relay ")
        .unwrap_or_else(|| panic!("no boot banner; console:\n{}", out.console()));
    assert!(
        line.text.contains(&format!("booted via {protocol} in ")) && line.text.contains(" MHz)"),
        "banner: {}",
        line.text
    );
    line.at
}

fn assert_line(out: &RunOutput, needle: &str) {
    assert!(
        out.line_with(needle).is_some(),
        "console lacks {needle:?}:\n{}",
        out.console()
    );
}

#[test]
fn image_is_small_and_bootable_by_both_protocols() {
    let image = image();
    // The budget with netconsole, authenticated sessions and the HTTP endpoints in (issue 18).
    assert!(image.size <= 384 * 1024, "image is {} bytes", image.size);
    assert!(image.summary.pvh_entry.is_some(), "no PVH note");
    let mb2 = image
        .summary
        .multiboot2_offset
        .expect("no multiboot2 header");
    assert!(mb2 < 32 * 1024);
    eprintln!(
        "image: {} bytes on disk, {} KiB in memory",
        image.size,
        image.summary.load_mem_bytes / 1024
    );
}

#[test]
fn pvh_on_q35_finds_virtio_net_through_ecam_and_exits() {
    let cmd = pvh(Machine::Q35, "selftest=exit")
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-pci,romfile=,netdev=n0");
    let out = boot(cmd, BOOT_TIMEOUT);
    let at = banner(&out, "PVH");
    assert_line(&out, "pci: ecam 0xb0000000");
    assert_line(&out, " 1af4:1000 class 02.00.00");
    assert_line(&out, "acpi: rsdp");
    assert_line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
    eprintln!(
        "q35: banner {} ms after QEMU start, exit after {} ms",
        at.as_millis(),
        out.elapsed.as_millis()
    );
}

#[test]
fn pvh_on_pc_finds_virtio_net_through_legacy_ports_and_exits() {
    let cmd = pvh(Machine::Pc, "selftest=exit")
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-pci,romfile=,netdev=n0,disable-legacy=on");
    let out = boot(cmd, BOOT_TIMEOUT);
    let at = banner(&out, "PVH");
    assert_line(&out, "pci: ports 0xcf8/0xcfc");
    // A modern-only virtio-net: device id 0x1041, 64-bit memory BAR 4.
    assert_line(&out, " 1af4:1041 class 02.00.00");
    assert_line(&out, "bar4=mem64:");
    assert_line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
    eprintln!(
        "pc: banner {} ms after QEMU start, exit after {} ms",
        at.as_millis(),
        out.elapsed.as_millis()
    );
}

#[test]
fn pvh_on_microvm_boots_without_pci() {
    let out = boot(pvh(Machine::Microvm, "selftest=exit"), BOOT_TIMEOUT);
    let at = banner(&out, "PVH");
    assert_line(&out, "pci: no host bridge");
    assert_line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
    eprintln!(
        "microvm: banner {} ms after QEMU start, exit after {} ms",
        at.as_millis(),
        out.elapsed.as_millis()
    );
}

#[test]
fn the_kernel_assigns_the_bars_qboot_leaves_empty_and_keeps_seabios_ones() {
    for machine in [Machine::Q35, Machine::Pc] {
        let cmd = pvh(machine, "selftest=exit")
            .netdev("user,id=n0")
            .device("virtio-net-pci,netdev=n0,romfile=");
        let out = boot(cmd.clone(), BOOT_TIMEOUT);
        assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
        assert_line(&out, "pci: firmware left memory BARs unassigned");
        // virtio-net's modern registers live in BAR 4 (64-bit): above 4 GiB when assigned.
        let bar4 = out
            .line_with("bar4 assigned mem64:0x")
            .unwrap_or_else(|| panic!("virtio-net BAR 4 not assigned:\n{}", out.console()));
        let address = bar4
            .text
            .split("mem64:")
            .nth(1)
            .and_then(|a| a.split('+').next());
        let address = u64::from_str_radix(address.unwrap().trim_start_matches("0x"), 16).unwrap();
        assert!(address >= 1 << 32 && address % 0x4000 == 0, "{}", bar4.text);

        let out = boot(cmd.bios(qemu::Bios::SeaBios), BOOT_TIMEOUT);
        assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
        assert!(out.line_with("SeaBIOS").is_some(), "{}", out.console());
        assert!(out.line_with(" assigned ").is_none(), "{}", out.console());
        assert_line(&out, "1af4:1000 class 02.00.00");
    }
}

#[test]
fn a_64bit_bar_above_4g_is_mapped_uncached() {
    // Neither SeaBIOS nor the kernel (under qboot) can fit a 1 GiB BAR under 4 GiB on q35, so
    // it goes above; the memory backend is allocated lazily and only 4 KiB of it is touched.
    let cmd = pvh(Machine::Q35, "selftest=exit")
        .args(["-object", "memory-backend-ram,id=shm,size=1G"])
        .device("ivshmem-plain,memdev=shm");
    let out = boot(cmd, BOOT_TIMEOUT);
    assert_line(&out, "1af4:1110 class 05.00.00");
    let mapped = out
        .line_with("4 KiB pattern written and read back")
        .unwrap_or_else(|| panic!("ivshmem BAR not exercised:\n{}", out.console()));
    let address = mapped
        .text
        .split(" at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
    assert!(address >= 1 << 32, "BAR at {address:#x}");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
}

#[test]
fn invalid_opcode_is_reported_with_registers_and_ends_qemu() {
    let out = boot(pvh(Machine::Pc, "selftest=fault"), BOOT_TIMEOUT);
    assert_line(&out, "!!! EXCEPTION 6 (#UD invalid opcode) error code 0x0");
    assert_line(&out, "rip 0x");
    assert_line(&out, "r13 0x");
    assert_line(&out, "machine stopped");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}

#[test]
fn page_fault_is_reported_with_cr2_and_ends_qemu() {
    let out = boot(pvh(Machine::Q35, "selftest=pagefault"), BOOT_TIMEOUT);
    assert_line(&out, "!!! EXCEPTION 14 (#PF page fault)");
    assert_line(&out, "cr2 0x00007f0000000000");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}

#[test]
fn the_apic_timer_wakes_idle_halts_on_every_machine() {
    for machine in [Machine::Q35, Machine::Pc, Machine::Microvm] {
        let out = boot(pvh(machine, "selftest=idle"), BOOT_TIMEOUT);
        assert_line(&out, "selftest: xAPIC at 0xfee00000");
        assert_line(&out, "200 timer interrupts, 0 stray");
        assert_line(&out, "selftest: idle ok");
        assert_eq!(
            out.outcome,
            Outcome::DebugExit(exit_code::SUCCESS),
            "{machine:?}"
        );
    }
}

#[test]
fn a_fault_with_the_apic_timer_on_is_still_reported() {
    let out = boot(pvh(Machine::Q35, "selftest=idlefault"), BOOT_TIMEOUT);
    assert_line(&out, "selftest: idle ok");
    assert_line(&out, "!!! EXCEPTION 6 (#UD invalid opcode) error code 0x0");
    assert_line(&out, "machine stopped");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}

#[test]
fn panic_is_reported_and_ends_qemu() {
    let out = boot(pvh(Machine::Microvm, "selftest=panic"), BOOT_TIMEOUT);
    assert_line(&out, "!!! PANIC: panicked at");
    assert_line(&out, "selftest panic");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::PANIC));
}

#[test]
fn multiboot2_through_a_grub_iso() {
    use netoops_image::iso;
    if !iso::tools_available() {
        if std::env::var_os("NETOOPS_ALLOW_NO_GRUB").is_some() {
            eprintln!("GRUB tools missing; skipped because NETOOPS_ALLOW_NO_GRUB is set");
            return;
        }
        panic!(
            "GRUB tools missing: apt-get install -y {}",
            iso::GRUB_PACKAGES
        );
    }
    let path = netoops_image::image_dir().join("boot-test.iso");
    iso::build_iso(&image().path, "selftest=exit", &path).expect("grub-mkrescue");
    let out = boot(QemuCommand::new(Machine::Pc).iso(&path), GRUB_TIMEOUT);
    let at = banner(&out, "multiboot2");
    assert_line(&out, "cmdline: selftest=exit");
    assert_line(&out, "memory: ");
    assert_line(&out, "selftest: exit ok");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
    eprintln!("grub: banner {} ms after QEMU start", at.as_millis());
}

/// The BIOS-only boxes' path with the real board: GRUB passes the relay settings from
/// grub.cfg and the relay comes up on a virtio-net NIC.
#[test]
fn grub_iso_runs_the_relay_with_the_settings_from_grub_cfg() {
    use netoops_e2e::hosted::Process;
    use netoops_image::iso;
    if !iso::tools_available() {
        if std::env::var_os("NETOOPS_ALLOW_NO_GRUB").is_some() {
            eprintln!("GRUB tools missing; skipped because NETOOPS_ALLOW_NO_GRUB is set");
            return;
        }
        panic!(
            "GRUB tools missing: apt-get install -y {}",
            iso::GRUB_PACKAGES
        );
    }
    let path = netoops_image::image_dir().join("board-test.iso");
    iso::build_iso(
        &image().path,
        "ip=10.0.2.15/24 gw=10.0.2.2 upstream=10.0.2.2:2005 name=grub-rack",
        &path,
    )
    .expect("grub-mkrescue");
    let cmd = QemuCommand::new(Machine::Pc)
        .memory_mib(256)
        .iso(&path)
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-pci,romfile=,netdev=n0");
    let _slot = QEMU_SLOT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut guest = Process::spawn("qemu (grub relay)", cmd.command());
    let banner = guest.wait_for_line(" booted via multiboot2 in ");
    let config = guest.wait_for_line("config: ");
    assert!(
        config.contains("ip=10.0.2.15/24") && config.contains("name=grub-rack"),
        "{config}"
    );
    guest.wait_for_line("ready: listening on udp/2004 at 10.0.2.15");
    eprintln!("{banner}");
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported_as_a_double_fault() {
    let out = boot(pvh(Machine::Pc, "selftest=stackoverflow"), BOOT_TIMEOUT);
    assert_line(&out, "!!! EXCEPTION 8 (#DF double fault)");
    assert_line(&out, "machine stopped");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}

#[test]
fn null_pointer_read_faults() {
    let out = boot(pvh(Machine::Microvm, "selftest=nullread"), BOOT_TIMEOUT);
    assert_line(&out, "!!! EXCEPTION 14 (#PF page fault)");
    assert_line(&out, "cr2 0x0000000000000000");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}

#[test]
fn microvm_without_acpi_announces_virtio_mmio_devices_on_the_command_line() {
    let cmd = pvh(Machine::Microvm, "selftest=exit")
        .machine_option("acpi=off")
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-device,netdev=n0");
    let out = boot(cmd, BOOT_TIMEOUT);
    banner(&out, "PVH");
    assert_line(&out, "virtio-mmio: 0xfeb00e00+0x200 irq 12");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
}

/// With ACPI on (microvm's default) the command line lists nothing: the DSDT does.
#[test]
fn microvm_with_acpi_describes_virtio_mmio_devices_in_the_dsdt() {
    let cmd = pvh(Machine::Microvm, "selftest=exit")
        .netdev("user,id=n0,restrict=on")
        .device("virtio-net-device,netdev=n0");
    let out = boot(cmd, BOOT_TIMEOUT);
    banner(&out, "PVH");
    assert!(
        !out.console().contains("virtio_mmio.device="),
        "{}",
        out.console()
    );
    assert_line(&out, "virtio-mmio: 0xfeb02e00+0x200 irq 47 (acpi dsdt)");
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::SUCCESS));
}

#[test]
fn a_cpu_without_long_mode_is_told_so_and_stopped() {
    let out = boot(
        pvh(Machine::Pc, "selftest=exit").args(["-cpu", "qemu32"]),
        BOOT_TIMEOUT,
    );
    assert_line(
        &out,
        "netoops-relay: this CPU has no 64-bit long mode; stopped",
    );
    assert_eq!(out.outcome, Outcome::DebugExit(exit_code::FAULT));
}
