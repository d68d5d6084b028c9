//! QEMU command lines and guest runs.
//!
//! [`QemuCommand`] builds the argument list for booting the image: `-kernel` (PVH), a GRUB
//! ISO (multiboot2) or the UEFI disk under OVMF ([`Ovmf`]), always `-accel tcg` (the build machines' nested KVM mis-executes
//! 16/32-bit code), `-nographic -serial stdio -monitor none`, `-no-reboot` (a triple fault
//! ends QEMU instead of looping), `-vga none -nic none` (headless; devices are explicit) and
//! isa-debug-exit at 0xf4 so the kernel can end the run
//! with a status. [`run`] starts it, timestamps every console line against the spawn time,
//! and kills it when a deadline passes, so a hung guest can never hang a test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// How to install QEMU and the firmware on the build machines (Debian 12).
pub const QEMU_INSTALL: &str = "apt-get install -y qemu-system-x86 ovmf";

/// The kernel's isa-debug-exit codes (see `platform::EXIT_*` in the kernel).
pub mod exit_code {
    /// Self-test passed.
    pub const SUCCESS: u32 = 0x10;
    /// Self-test failed.
    pub const FAILURE: u32 = 0x11;
    /// CPU exception reported.
    pub const FAULT: u32 = 0x12;
    /// Kernel panic reported.
    pub const PANIC: u32 = 0x13;
}

/// The QEMU machine type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// PCI Express chipset (ECAM via ACPI MCFG).
    Q35,
    /// i440FX (legacy PCI ports only).
    Pc,
    /// Minimal machine: no PCI unless asked, virtio-mmio devices.
    Microvm,
}

impl Machine {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
            Machine::Microvm => "microvm",
        }
    }
}

impl std::str::FromStr for Machine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q35" => Ok(Machine::Q35),
            "pc" | "i440fx" => Ok(Machine::Pc),
            "microvm" => Ok(Machine::Microvm),
            other => Err(format!("unknown machine {other:?} (q35, pc, microvm)")),
        }
    }
}

/// What to boot.
#[derive(Clone, Debug)]
enum BootMedium {
    /// `-kernel` (PVH note) with an optional `-append`.
    Kernel(PathBuf),
    /// A bootable ISO (GRUB, multiboot2); the command line lives in its grub.cfg.
    Iso(PathBuf),
    /// A raw disk image (the UEFI disk; relay.conf on its ESP is the configuration).
    Disk(PathBuf),
}

/// The OVMF firmware (Debian's `ovmf` package): code and the variable-store template.
///
/// The variable store is attached with `snapshot=on`, so every guest starts from the
/// pristine template and writes go to a temporary overlay QEMU deletes on exit: no copies
/// to manage, no state carried from one boot to the next. OVMF works under TCG only here
/// (it fails under the build machines' nested KVM), which is what [`QemuCommand`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// Firmware code (read-only pflash).
    pub code: PathBuf,
    /// Variable store template.
    pub vars: PathBuf,
}

impl Ovmf {
    /// Candidate (code, vars) pairs, preferred first.
    pub const CANDIDATES: [(&'static str, &'static str); 2] = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ];

    /// The installed OVMF, or how to install it.
    pub fn find() -> Result<Ovmf, crate::Error> {
        Self::CANDIDATES
            .iter()
            .map(|(code, vars)| Ovmf {
                code: PathBuf::from(code),
                vars: PathBuf::from(vars),
            })
            .find(|o| o.code.is_file() && o.vars.is_file())
            .ok_or(crate::Error::Missing {
                program: "OVMF (UEFI firmware for QEMU)",
                install: "apt-get install -y ovmf",
            })
    }
}

/// The id of the guest RAM's backend object ([`ram_backend`], [`with_ram_backend`]).
const RAM_BACKEND_ID: &str = "ram";

/// The `-machine` value `machine` with its RAM taken from [`ram_backend`]'s object.
pub fn with_ram_backend(machine: &str) -> String {
    format!("{machine},memory-backend={RAM_BACKEND_ID}")
}

/// The `-object` that backs guest RAM (`-machine memory-backend=ram`): a memfd, so the host
/// maps it with 4 KiB pages. QEMU asks for transparent huge pages on anonymous guest RAM, and
/// the first write to each 2 MiB of it then zeroes all 2 MiB in the host: 0.3-0.5 ms each on
/// the build machine, and tens of ms when the host must compact memory first. The relay
/// touches its memory sparsely (a page of each buffer at boot, the rest as the first burst of
/// traffic fills it), so those faults were a quarter of the kernel's boot and a stall in its
/// first burst. Shared memory gets huge pages only where the host asks for them
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`, `never` by default). README,
/// "Kernel entry to `ready`, fourth round".
pub fn ram_backend(memory_mib: u32) -> String {
    format!("memory-backend-memfd,id={RAM_BACKEND_ID},size={memory_mib}M")
}

/// Where Debian's qemu-system-data installs qboot.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The legacy BIOS for `-kernel` (PVH) boots on pc and q35.
///
/// qboot, QEMU's minimal firmware, hands over to a PVH kernel about 15 ms after reset where
/// SeaBIOS takes 60-110 ms under TCG: most of the appliance's boot budget. It assigns no PCI
/// BARs, so the kernel assigns those it finds unassigned (real machines' firmware always
/// assigns them). SeaBIOS stays for ISO boots (qboot boots no disks) and on request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bios {
    /// qboot when installed ([`QBOOT`]), otherwise SeaBIOS.
    #[default]
    Qboot,
    /// QEMU's default, SeaBIOS.
    SeaBios,
}

impl Bios {
    /// The `-bios` file this choice means for a `-kernel` boot, or `None` for QEMU's default.
    pub fn file(self) -> Option<PathBuf> {
        match self {
            Bios::Qboot => Some(PathBuf::from(QBOOT)).filter(|p| p.is_file()),
            Bios::SeaBios => None,
        }
    }

    /// The firmware's name as boot logs should report it.
    pub fn effective_name(self) -> &'static str {
        match self.file() {
            Some(_) => "qboot",
            None => "SeaBIOS",
        }
    }
}

impl std::str::FromStr for Bios {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qboot" => Ok(Bios::Qboot),
            "seabios" => Ok(Bios::SeaBios),
            other => Err(format!("unknown BIOS {other:?} (qboot, seabios)")),
        }
    }
}

/// A QEMU invocation under construction.
#[derive(Clone, Debug)]
pub struct QemuCommand {
    binary: String,
    machine: Machine,
    machine_options: Vec<String>,
    memory_mib: u32,
    medium: Option<BootMedium>,
    cmdline: String,
    devices: Vec<String>,
    netdevs: Vec<String>,
    extra: Vec<String>,
    debug_exit: bool,
    firmware: Option<Ovmf>,
    bios: Bios,
}

impl QemuCommand {
    /// A command for `machine` with 128 MiB, TCG, serial on stdio and isa-debug-exit.
    pub fn new(machine: Machine) -> Self {
        Self {
            binary: QEMU.into(),
            machine,
            machine_options: Vec::new(),
            memory_mib: 128,
            medium: None,
            cmdline: String::new(),
            devices: Vec::new(),
            netdevs: Vec::new(),
            extra: Vec::new(),
            debug_exit: true,
            firmware: None,
            bios: Bios::default(),
        }
    }

    /// Boots `image` through `-kernel` (PVH).
    pub fn kernel(mut self, image: impl AsRef<Path>) -> Self {
        self.medium = Some(BootMedium::Kernel(image.as_ref().to_path_buf()));
        self
    }

    /// Boots a CD image (GRUB ISO) instead of `-kernel`.
    pub fn iso(mut self, iso: impl AsRef<Path>) -> Self {
        self.medium = Some(BootMedium::Iso(iso.as_ref().to_path_buf()));
        self
    }

    /// Boots a raw disk image (virtio-blk, first in the firmware's boot order); with
    /// [`QemuCommand::uefi`] this is the UEFI disk.
    pub fn disk(mut self, image: impl AsRef<Path>) -> Self {
        self.medium = Some(BootMedium::Disk(image.as_ref().to_path_buf()));
        self
    }

    /// Runs OVMF instead of SeaBIOS (q35 is the machine it is tested on).
    pub fn uefi(mut self, ovmf: &Ovmf) -> Self {
        self.firmware = Some(ovmf.clone());
        self
    }

    /// The BIOS for a `-kernel` boot on pc or q35 (default: [`Bios::Qboot`]); ISO boots always
    /// get SeaBIOS, UEFI boots OVMF, microvm its own qboot build.
    pub fn bios(mut self, bios: Bios) -> Self {
        self.bios = bios;
        self
    }

    /// Kernel command line (`-append`; ignored for ISO and disk boots, which carry their
    /// own: grub.cfg, relay.conf).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds a `-machine` option (e.g. `pcie=on` for microvm).
    pub fn machine_option(mut self, option: impl Into<String>) -> Self {
        self.machine_options.push(option.into());
        self
    }

    /// Adds a `-device` (e.g. `virtio-net-pci,romfile=,netdev=n0`).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.devices.push(device.into());
        self
    }

    /// Adds a `-netdev` (e.g. `dgram,id=n0,local.type=inet,...`).
    pub fn netdev(mut self, netdev: impl Into<String>) -> Self {
        self.netdevs.push(netdev.into());
        self
    }

    /// Adds raw arguments at the end.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Leaves out isa-debug-exit (the guest then cannot end QEMU itself).
    pub fn without_debug_exit(mut self) -> Self {
        self.debug_exit = false;
        self
    }

    /// Uses another QEMU binary.
    pub fn binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = binary.into();
        self
    }

    /// The argument list (without the binary).
    pub fn to_args(&self) -> Vec<String> {
        let mut machine = String::from(self.machine.name());
        for option in &self.machine_options {
            machine.push(',');
            machine.push_str(option);
        }
        let mut a: Vec<String> = vec![
            "-machine".into(),
            with_ram_backend(&machine),
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-object".into(),
            ram_backend(self.memory_mib),
            "-nographic".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            // Headless appliance: no VGA (its option ROM slows SeaBIOS) and no default NIC
            // (explicit -netdev/-device pairs are unaffected).
            "-vga".into(),
            "none".into(),
            "-nic".into(),
            "none".into(),
        ];
        if self.debug_exit {
            a.extend([
                "-device".into(),
                "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            ]);
        }
        if let Some(ovmf) = &self.firmware {
            a.extend([
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    ovmf.code.display()
                ),
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=1,snapshot=on,file={}",
                    ovmf.vars.display()
                ),
            ]);
        }
        match &self.medium {
            Some(BootMedium::Disk(path)) => {
                a.extend([
                    "-drive".into(),
                    format!("if=none,format=raw,id=boot,file={}", path.display()),
                    "-device".into(),
                    "virtio-blk-pci,drive=boot,bootindex=1".into(),
                ]);
            }
            Some(BootMedium::Kernel(path)) => {
                let legacy_pci = matches!(self.machine, Machine::Pc | Machine::Q35);
                if let (true, None, Some(bios)) = (legacy_pci, &self.firmware, self.bios.file()) {
                    a.extend(["-bios".into(), bios.display().to_string()]);
                }
                a.extend(["-kernel".into(), path.display().to_string()]);
                if !self.cmdline.is_empty() {
                    a.extend(["-append".into(), self.cmdline.clone()]);
                }
            }
            Some(BootMedium::Iso(path)) => {
                a.extend([
                    "-cdrom".into(),
                    path.display().to_string(),
                    "-boot".into(),
                    "d".into(),
                ]);
            }
            None => {}
        }
        for netdev in &self.netdevs {
            a.extend(["-netdev".into(), netdev.clone()]);
        }
        for device in &self.devices {
            a.extend(["-device".into(), device.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// A `std::process::Command` ready to spawn.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(self.to_args());
        c
    }

    /// The command as a shell-like line, for logs.
    pub fn display(&self) -> String {
        let mut line = self.binary.clone();
        for a in self.to_args() {
            line.push(' ');
            if a.is_empty() || a.contains(' ') {
                line.push_str(&format!("'{a}'"));
            } else {
                line.push_str(&a);
            }
        }
        line
    }
}

/// How a guest run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote `code` to isa-debug-exit (QEMU status `code * 2 + 1`).
    DebugExit(u32),
    /// QEMU exited by itself with this status (0: e.g. a triple fault under -no-reboot).
    Exited(i32),
    /// Killed by a signal.
    Signalled,
    /// Still running at the deadline; killed.
    TimedOut,
}

impl Outcome {
    /// Decodes QEMU's exit status: odd statuses come from isa-debug-exit.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        match status.code() {
            Some(code) if code % 2 == 1 => Outcome::DebugExit((code as u32) >> 1),
            Some(code) => Outcome::Exited(code),
            None => Outcome::Signalled,
        }
    }
}

/// One console line with its arrival time after QEMU was spawned.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    /// Time since spawn.
    pub at: Duration,
    /// The line, without the line ending and with terminal escapes left as they are.
    pub text: String,
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// How it ended.
    pub outcome: Outcome,
    /// Every console line, in order.
    pub lines: Vec<ConsoleLine>,
    /// QEMU's stderr.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl RunOutput {
    /// The first line containing `needle`.
    pub fn line_with(&self, needle: &str) -> Option<&ConsoleLine> {
        self.lines.iter().find(|l| l.text.contains(needle))
    }

    /// The whole console output.
    pub fn console(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }
}

/// Checks that QEMU is installed; with `install`, runs apt-get when it is not.
pub fn ensure_qemu(install: bool) -> Result<(), crate::Error> {
    if crate::have_program(QEMU) {
        return Ok(());
    }
    if !install {
        return Err(crate::Error::Missing {
            program: QEMU,
            install: QEMU_INSTALL,
        });
    }
    for args in [
        &["update"][..],
        &["install", "-y", "qemu-system-x86", "ovmf"][..],
    ] {
        let status = Command::new("apt-get").args(args).status()?;
        if !status.success() {
            return Err(crate::Error::Command {
                what: format!("apt-get {}", args.join(" ")),
                status,
            });
        }
    }
    Ok(())
}

/// Runs `cmd` until it exits or `timeout` passes, collecting timestamped console lines.
pub fn run(cmd: &QemuCommand, timeout: Duration) -> std::io::Result<RunOutput> {
    run_command(cmd.command(), timeout)
}

/// [`run`] for any command (stdout is the console).
pub fn run_command(mut command: Command, timeout: Duration) -> std::io::Result<RunOutput> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx
                        .send(ConsoleLine {
                            at: start.elapsed(),
                            text,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = start + timeout;
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break Outcome::from_status(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let lines = rx.try_iter().collect();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(RunOutput {
        outcome,
        lines,
        stderr,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_command_line_has_the_fixed_arguments() {
        let cmd = QemuCommand::new(Machine::Q35)
            .kernel("/tmp/k.elf")
            .cmdline("selftest=exit")
            .netdev("user,id=n0")
            .device("virtio-net-pci,romfile=,netdev=n0")
            .args(["-smp", "1"]);
        let a = cmd.to_args();
        let joined = a.join(" ");
        assert!(joined.starts_with(
            "-machine q35,memory-backend=ram -accel tcg -m 128M \
             -object memory-backend-memfd,id=ram,size=128M -nographic -serial stdio"
        ));
        assert!(joined.contains(
            "-no-reboot -vga none -nic none -device isa-debug-exit,iobase=0xf4,iosize=0x04"
        ));
        assert!(joined.contains("-kernel /tmp/k.elf -append selftest=exit"));
        assert!(
            joined.ends_with("-netdev user,id=n0 -device virtio-net-pci,romfile=,netdev=n0 -smp 1")
        );
        assert!(cmd.display().contains("-append selftest=exit"));
        let spaced = QemuCommand::new(Machine::Pc).kernel("k").cmdline("a b");
        assert!(spaced.display().contains("-append 'a b'"));
    }

    #[test]
    fn iso_and_machine_options() {
        let a = QemuCommand::new(Machine::Microvm)
            .machine_option("pit=on")
            .iso("/tmp/r.iso")
            .cmdline("ignored")
            .without_debug_exit()
            .memory_mib(256)
            .to_args();
        let joined = a.join(" ");
        assert!(joined.starts_with(
            "-machine microvm,pit=on,memory-backend=ram -accel tcg -m 256M \
             -object memory-backend-memfd,id=ram,size=256M"
        ));
        assert!(joined.contains("-cdrom /tmp/r.iso -boot d"));
        assert!(!joined.contains("isa-debug-exit"));
        assert!(!joined.contains("-append"));
    }

    #[test]
    fn uefi_disk_boot_uses_pflash_and_a_snapshot_vars_store() {
        let ovmf = Ovmf {
            code: "/fw/CODE.fd".into(),
            vars: "/fw/VARS.fd".into(),
        };
        let joined = QemuCommand::new(Machine::Q35)
            .uefi(&ovmf)
            .disk("/tmp/relay.img")
            .cmdline("ignored")
            .to_args()
            .join(" ");
        assert!(joined.contains(
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd \
             -drive if=pflash,format=raw,unit=1,snapshot=on,file=/fw/VARS.fd"
        ));
        assert!(joined.contains(
            "-drive if=none,format=raw,id=boot,file=/tmp/relay.img \
             -device virtio-blk-pci,drive=boot,bootindex=1"
        ));
        assert!(!joined.contains("-append"));
        assert!(!joined.contains("-kernel"));
    }

    #[test]
    fn kernel_boots_on_pc_and_q35_use_qboot_unless_seabios_is_asked_for() {
        assert!(
            Path::new(QBOOT).is_file(),
            "{QBOOT} missing: {QEMU_INSTALL} (qemu-system-data ships it)"
        );
        let args = |cmd: QemuCommand| cmd.to_args().join(" ");
        let qboot = format!("-bios {QBOOT} -kernel k");
        assert!(args(QemuCommand::new(Machine::Q35).kernel("k")).contains(&qboot));
        assert!(args(QemuCommand::new(Machine::Pc).kernel("k")).contains(&qboot));
        for other in [
            QemuCommand::new(Machine::Q35)
                .kernel("k")
                .bios(Bios::SeaBios),
            QemuCommand::new(Machine::Microvm).kernel("k"),
            QemuCommand::new(Machine::Pc).iso("r.iso"),
        ] {
            assert!(!args(other).contains("-bios"));
        }
        assert_eq!("seabios".parse::<Bios>(), Ok(Bios::SeaBios));
        assert_eq!(Bios::Qboot.effective_name(), "qboot");
        assert!("ovmf".parse::<Bios>().is_err());
    }

    #[test]
    fn machines_parse() {
        assert_eq!("q35".parse::<Machine>(), Ok(Machine::Q35));
        assert_eq!("i440fx".parse::<Machine>(), Ok(Machine::Pc));
        assert!("virt".parse::<Machine>().is_err());
    }

    #[test]
    fn run_collects_timestamped_lines_and_decodes_status() {
        // `sh` stands in for QEMU: the runner is what is under test.
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let out = run_command(sh("echo one; echo two; exit 33"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.outcome, Outcome::DebugExit(0x10));
        assert_eq!(out.lines.len(), 2);
        assert_eq!(out.line_with("two").unwrap().text, "two");
        assert!(out.lines[0].at <= out.lines[1].at);
        let slow = run_command(sh("echo start; exec sleep 5"), Duration::from_millis(300)).unwrap();
        assert_eq!(slow.outcome, Outcome::TimedOut);
        assert_eq!(slow.console(), "start\n");
        let plain = run_command(sh("exit 0"), Duration::from_secs(5)).unwrap();
        assert_eq!(plain.outcome, Outcome::Exited(0));
    }
}
