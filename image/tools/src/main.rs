//! `netoops-image`: build the relay image, boot it under QEMU, wrap it in a GRUB ISO or a
//! flashable UEFI disk.
//!
//! A thin front end over the `netoops_image` library, which the end-to-end tests use too.

use clap::{Parser, Subcommand};
use netoops_image::{appliance, build, bundle, disk, iso, qemu, uefi};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "netoops-image",
    about = "Build and run the netoops relay image"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel and write target/image/netoops-relay.elf.
    Build {
        /// Optimized build (what the appliance ships).
        #[arg(long)]
        release: bool,
    },
    /// Build, then boot the image under QEMU (TCG) with the console on this terminal.
    Run {
        /// Machine type: q35, pc or microvm.
        #[arg(long, default_value = "q35")]
        machine: qemu::Machine,
        /// A -machine option (repeatable), e.g. pcie=on for microvm.
        #[arg(long)]
        machine_option: Vec<String>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// A -netdev specification (repeatable); pair with --device.
        #[arg(long)]
        netdev: Vec<String>,
        /// A -device specification (repeatable).
        #[arg(long)]
        device: Vec<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 128)]
        memory: u32,
        /// BIOS for -kernel boots on pc/q35: qboot (fast; the default when installed) or
        /// seabios.
        #[arg(long, default_value = "qboot")]
        bios: qemu::Bios,
        /// Debug (unoptimized) kernel.
        #[arg(long)]
        debug: bool,
        /// Boot the GRUB ISO (multiboot2) instead of -kernel (PVH).
        #[arg(long)]
        iso: bool,
        /// Boot the UEFI disk under OVMF (q35); relay.conf is --conf, or --cmdline's text.
        #[arg(long, conflicts_with = "iso")]
        uefi: bool,
        /// relay.conf for --uefi.
        #[arg(long, requires = "uefi")]
        conf: Option<PathBuf>,
        /// Install QEMU with apt-get when it is missing.
        #[arg(long)]
        install: bool,
        /// Boot this prebuilt kernel image (e.g. a release bundle's netoops-relay.elf)
        /// instead of building one: no Rust toolchain needed.
        #[arg(long, value_name = "ELF", conflicts_with = "uefi")]
        kernel: Option<PathBuf>,
        /// With --uefi: the prebuilt UEFI stub (a release bundle's BOOTX64.EFI) to put on
        /// the disk instead of building one.
        #[arg(long, value_name = "EFI", requires = "uefi")]
        efi: Option<PathBuf>,
        /// Extra QEMU arguments.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Run the relay as an appliance: the image under QEMU and a collector storing in --dir.
    /// This tool owns host UDP --udp (and --netconsole-udp) and hands every datagram to the
    /// guest as a raw frame (-netdev stream: lossless up to a bounded queue, senders' source
    /// addresses kept); upstream goes over a second NIC on user-mode networking. Host-side
    /// losses are counted and printed next to the relay's counters. Ctrl-C stops everything.
    Appliance {
        /// Machine type: q35, pc or microvm.
        #[arg(long, default_value = "q35")]
        machine: qemu::Machine,
        /// Host UDP address where machines send netoops datagrams.
        #[arg(long, default_value = "127.0.0.1:2004")]
        udp: std::net::SocketAddrV4,
        /// Host UDP address where machines send netconsole, forwarded to the guest's port 6666.
        #[arg(long, default_value = "127.0.0.1:6666")]
        netconsole_udp: std::net::SocketAddrV4,
        /// Do not open --netconsole-udp.
        #[arg(long)]
        no_netconsole: bool,
        /// forward (this tool feeds the guest raw frames; lossless up to its queue) or slirp
        /// (QEMU's user-mode hostfwd, which loses bursts; for comparison).
        #[arg(long, default_value = "forward")]
        ingress: appliance::Ingress,
        /// Receive buffer asked for on each host UDP socket, in MiB.
        #[arg(long, default_value_t = 64)]
        recv_buffer_mib: usize,
        /// Most MiB of frames queued for the guest before datagrams are dropped (and counted).
        #[arg(long, default_value_t = 256)]
        queue_mib: usize,
        /// Seconds between the forwarder's counter lines (printed when they changed).
        #[arg(long, default_value_t = 5)]
        stats_every: u64,
        /// Keep FILE holding the forwarder's counters as one JSON line (rewritten every
        /// second and at exit): {"forwarder":{"connected":..,"ports":[{"name","received",
        /// "forwarded","host_drops","queue_drops","oversize","unsent","lost",..}]}}.
        #[arg(long, value_name = "FILE")]
        stats_json: Option<PathBuf>,
        /// Collector address (started here unless --no-collector).
        #[arg(long, default_value = "127.0.0.1:2005")]
        collector: std::net::SocketAddr,
        /// Collector storage directory.
        #[arg(long, default_value = "netoops-dumps")]
        dir: PathBuf,
        /// Use a collector that is already running at --collector.
        #[arg(long)]
        no_collector: bool,
        /// The netoops-collect binary [default: next to this program, else PATH].
        #[arg(long)]
        collector_bin: Option<PathBuf>,
        /// More kernel command-line keys for the relay, e.g. "name=lab memory=32M stats=10s".
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// BIOS for -kernel boots on pc/q35: qboot (fast; the default when installed) or
        /// seabios.
        #[arg(long, default_value = "qboot")]
        bios: qemu::Bios,
        /// Use KVM instead of TCG (opt-in: nested KVM is unreliable on some hosts).
        #[arg(long)]
        kvm: bool,
        /// Debug (unoptimized) kernel.
        #[arg(long)]
        debug: bool,
        /// Boot this prebuilt kernel image (e.g. a release bundle's netoops-relay.elf)
        /// instead of building one: no Rust toolchain needed.
        #[arg(long, value_name = "ELF")]
        kernel: Option<PathBuf>,
    },
    /// Build the UEFI stub (BOOTX64.EFI, the kernel inside) as target/image/netoops-relay.efi.
    Uefi {
        /// Debug (unoptimized) kernel and stub.
        #[arg(long)]
        debug: bool,
    },
    /// Build a disk image to flash with dd: GPT, one FAT32 EFI system partition holding
    /// EFI/BOOT/BOOTX64.EFI and relay.conf.
    Disk {
        /// The configuration to put on the ESP (kernel command-line keys, one or more per
        /// line, # comments); checked before anything is written.
        #[arg(long)]
        conf: PathBuf,
        /// Output file.
        #[arg(short, long, default_value = "target/image/netoops-relay.img")]
        output: PathBuf,
        /// Image size in MiB (40 and up; the ESP fills it).
        #[arg(long, default_value_t = disk::DEFAULT_SIZE_MIB)]
        size: u64,
        /// Write relay.conf even if the checks fail (to test the appliance's own message).
        #[arg(long)]
        no_check: bool,
        /// Debug (unoptimized) kernel and stub.
        #[arg(long)]
        debug: bool,
        /// Put this prebuilt UEFI stub (a release bundle's BOOTX64.EFI) on the disk instead
        /// of building one: no Rust toolchain needed.
        #[arg(long, value_name = "EFI")]
        efi: Option<PathBuf>,
    },
    /// Build the release bundle: kernel ELF, BOOTX64.EFI, a disk image, the GRUB ISO, the
    /// host programs, systemd units and configuration under root/, and SHA256SUMS.
    Bundle {
        /// The bundle's directory (replaced if it exists).
        #[arg(short, long, default_value = "target/netoops-relay-bundle")]
        output: PathBuf,
        /// Debug host programs (faster to build; for tests). The images are always release.
        #[arg(long)]
        debug_binaries: bool,
        /// Disk image size in MiB.
        #[arg(long, default_value_t = disk::MIN_SIZE_MIB)]
        disk_size: u64,
    },
    /// Build a GRUB rescue ISO that boots the image via multiboot2.
    Iso {
        /// Kernel command line (stored in grub.cfg).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Debug (unoptimized) kernel.
        #[arg(long)]
        debug: bool,
        /// Boot this prebuilt kernel image (e.g. a release bundle's netoops-relay.elf)
        /// instead of building one: no Rust toolchain needed.
        #[arg(long, value_name = "ELF")]
        kernel: Option<PathBuf>,
        /// Output file [default: netoops-relay.iso in target/image, or in the temporary
        /// directory when run outside a checkout].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netoops-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build_and_report(release: bool) -> Result<build::BuiltImage, netoops_image::Error> {
    let image = build::build_kernel(release)?;
    eprintln!(
        "netoops-image: {} ({} bytes, {} KiB; {} KiB in memory)",
        image.path.display(),
        image.size,
        image.size.div_ceil(1024),
        image.summary.load_mem_bytes.div_ceil(1024)
    );
    Ok(image)
}

fn build_efi_and_report(release: bool) -> Result<uefi::BuiltEfi, netoops_image::Error> {
    let image = build_and_report(release)?;
    let efi = uefi::build_efi(&image, release)?;
    eprintln!(
        "netoops-image: {} ({} KiB)",
        efi.path.display(),
        efi.size.div_ceil(1024)
    );
    Ok(efi)
}

/// The image `--kernel` names (checked), or a fresh build, reported.
fn kernel_or_build(
    prebuilt: Option<&Path>,
    release: bool,
) -> Result<build::BuiltImage, netoops_image::Error> {
    match prebuilt {
        Some(path) => build::load_kernel(path),
        None => build_and_report(release),
    }
}

/// `name` in the scratch directory (created), for images made only to boot them.
fn scratch_file(name: &str) -> Result<PathBuf, netoops_image::Error> {
    let dir = netoops_image::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

/// Checks relay.conf the way the UEFI stub will at boot.
fn check_conf(path: &Path, text: &[u8]) -> Result<(), netoops_image::Error> {
    let checked = netoops_uefi::conf::to_cmdline(text)
        .and_then(|_| netoops_uefi::conf::check(text))
        .map_err(|e| {
            netoops_image::Error::Io(std::io::Error::other(format!(
                "{}: {e} (use --no-check to write it anyway)",
                path.display()
            )))
        })?;
    eprintln!(
        "netoops-image: {}: {}",
        path.display(),
        netoops_uefi::conf::summary(&checked)
    );
    Ok(())
}

fn build_disk_and_report(
    conf: &[u8],
    size: u64,
    output: &Path,
    efi: Option<&Path>,
    release: bool,
) -> Result<(), netoops_image::Error> {
    let efi = match efi {
        Some(path) => uefi::load_efi(path)?,
        None => build_efi_and_report(release)?,
    };
    let layout = disk::build_disk(&std::fs::read(&efi.path)?, Some(conf), size, output)?;
    eprintln!(
        "netoops-image: {} ({} MiB, EFI system partition at {} MiB, {} MiB)",
        output.display(),
        layout.size >> 20,
        layout.esp_offset >> 20,
        layout.esp_size >> 20
    );
    Ok(())
}

fn real_main(cli: Cli) -> Result<ExitCode, netoops_image::Error> {
    match cli.command {
        Cmd::Uefi { debug } => {
            build_efi_and_report(!debug)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Disk {
            conf,
            output,
            size,
            no_check,
            debug,
            efi,
        } => {
            let text = std::fs::read(&conf)?;
            if !no_check {
                check_conf(&conf, &text)?;
            }
            build_disk_and_report(&text, size, &output, efi.as_deref(), !debug)?;
            eprintln!(
                "netoops-image: flash it with: dd if={} of=/dev/sdX bs=4M conv=fsync",
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Appliance {
            machine,
            udp,
            netconsole_udp,
            no_netconsole,
            ingress,
            recv_buffer_mib,
            queue_mib,
            stats_every,
            stats_json,
            collector,
            dir,
            no_collector,
            collector_bin,
            cmdline,
            memory,
            bios,
            kvm,
            debug,
            kernel,
        } => {
            let code = appliance::run(&appliance::ApplianceOptions {
                machine,
                ingress,
                udp,
                netconsole_udp: (!no_netconsole).then_some(netconsole_udp),
                recv_buffer: recv_buffer_mib.saturating_mul(1 << 20),
                queue_limit: queue_mib.saturating_mul(1 << 20),
                stats_every: std::time::Duration::from_secs(stats_every),
                stats_json,
                collector,
                dir,
                start_collector: !no_collector,
                collector_bin,
                extra_cmdline: cmdline,
                memory_mib: memory,
                bios,
                kvm,
                release: !debug,
                kernel,
            })?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Bundle {
            output,
            debug_binaries,
            disk_size,
        } => {
            let made = bundle::build_bundle(&bundle::BundleOptions {
                output,
                release_binaries: !debug_binaries,
                disk_mib: disk_size,
            })?;
            eprintln!(
                "netoops-image: {} ({} files; check with: cd {} && sha256sum -c SHA256SUMS)",
                made.dir.display(),
                made.files.len(),
                made.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build { release } => {
            build_and_report(release)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Iso {
            cmdline,
            debug,
            kernel,
            output,
        } => {
            let image = kernel_or_build(kernel.as_deref(), !debug)?;
            let output =
                output.unwrap_or_else(|| netoops_image::scratch_dir().join("netoops-relay.iso"));
            if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let out = iso::build_iso(&image.path, &cmdline, &output)?;
            eprintln!("netoops-image: {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            machine,
            machine_option,
            cmdline,
            netdev,
            device,
            memory,
            bios,
            debug,
            iso: use_iso,
            uefi: use_uefi,
            conf,
            install,
            kernel,
            efi,
            extra,
        } => {
            qemu::ensure_qemu(install)?;
            let mut cmd = qemu::QemuCommand::new(machine)
                .memory_mib(memory)
                .bios(bios)
                .cmdline(cmdline.clone());
            cmd = if use_uefi {
                let text = match &conf {
                    Some(path) => std::fs::read(path)?,
                    None => format!("{cmdline}\n").into_bytes(),
                };
                let path = scratch_file("run-uefi.img")?;
                build_disk_and_report(&text, disk::MIN_SIZE_MIB, &path, efi.as_deref(), !debug)?;
                cmd.uefi(&qemu::Ovmf::find()?).disk(&path)
            } else if use_iso {
                let image = kernel_or_build(kernel.as_deref(), !debug)?;
                let path = scratch_file("netoops-relay.iso")?;
                cmd.iso(iso::build_iso(&image.path, &cmdline, &path)?)
            } else {
                cmd.kernel(&kernel_or_build(kernel.as_deref(), !debug)?.path)
            };
            for o in machine_option {
                cmd = cmd.machine_option(o);
            }
            for n in netdev {
                cmd = cmd.netdev(n);
            }
            for d in device {
                cmd = cmd.device(d);
            }
            cmd = cmd.args(extra);
            eprintln!("netoops-image: {}", cmd.display());
            let status = cmd.command().status()?;
            // Pass QEMU's status through (isa-debug-exit codes are odd statuses).
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
    }
}
