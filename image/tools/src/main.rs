//! `netoops-image`: build the relay image, boot it under QEMU, wrap it in a GRUB ISO.
//!
//! A thin front end over the `netoops_image` library, which the end-to-end tests use too.

use clap::{Parser, Subcommand};
use netoops_image::{build, iso, qemu};
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
        /// A -machine option (repeatable), e.g. acpi=off for microvm virtio-mmio devices.
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
        /// Debug (unoptimized) kernel.
        #[arg(long)]
        debug: bool,
        /// Boot the GRUB ISO (multiboot2) instead of -kernel (PVH).
        #[arg(long)]
        iso: bool,
        /// Install QEMU with apt-get when it is missing.
        #[arg(long)]
        install: bool,
        /// Extra QEMU arguments.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Build a GRUB rescue ISO that boots the image via multiboot2.
    Iso {
        /// Kernel command line (stored in grub.cfg).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Debug (unoptimized) kernel.
        #[arg(long)]
        debug: bool,
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

fn real_main(cli: Cli) -> Result<ExitCode, netoops_image::Error> {
    match cli.command {
        Cmd::Build { release } => {
            build_and_report(release)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Iso { cmdline, debug } => {
            let image = build_and_report(!debug)?;
            let out = iso::build_iso(
                &image.path,
                &cmdline,
                &netoops_image::image_dir().join("netoops-relay.iso"),
            )?;
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
            debug,
            iso: use_iso,
            install,
            extra,
        } => {
            qemu::ensure_qemu(install)?;
            let image = build_and_report(!debug)?;
            let mut cmd = qemu::QemuCommand::new(machine)
                .memory_mib(memory)
                .cmdline(cmdline.clone());
            cmd = if use_iso {
                let path = netoops_image::image_dir().join("netoops-relay.iso");
                cmd.iso(iso::build_iso(&image.path, &cmdline, &path)?)
            } else {
                cmd.kernel(&image.path)
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
