//! Building the kernel image.
//!
//! `cargo build -p netoops-kernel --target x86_64-unknown-none [--profile kernel]` from the
//! workspace root (so the root `.cargo/config.toml` supplies the static relocation model),
//! then the loadable part of the ELF is written to `target/image/netoops-relay.elf`.

use crate::{elf, image_dir, target_dir, workspace_root, write_replacing, Error};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel's target triple.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// The cargo profile of release images (`[profile.kernel]` in the root Cargo.toml).
pub const KERNEL_PROFILE: &str = "kernel";
/// The image file name.
pub const IMAGE_NAME: &str = "netoops-relay.elf";

/// A built image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The bootable image (`target/image/netoops-relay.elf`).
    pub path: PathBuf,
    /// The unstripped kernel ELF cargo produced (symbols and debug info, for addr2line).
    pub kernel_elf: PathBuf,
    /// Size of the image file in bytes.
    pub size: u64,
    /// What the ELF headers say.
    pub summary: elf::ElfSummary,
}

/// Checks that the bare-metal target's standard library is installed, installing it with
/// rustup when it is missing (rustup fetches it from the Rust distribution server).
pub fn ensure_target() -> Result<(), Error> {
    ensure_rust_target(KERNEL_TARGET)
}

/// Checks that `target`'s standard library is installed (x86_64-unknown-none for the
/// kernel, x86_64-unknown-uefi for the UEFI stub), adding it with rustup when missing.
pub fn ensure_rust_target(target: &'static str) -> Result<(), Error> {
    let sysroot = Command::new(rustc())
        .args(["--print", "sysroot"])
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(target).is_dir() {
        return Ok(());
    }
    if !crate::have_program("rustup") {
        return Err(Error::Missing {
            program: target,
            install: "rustup target add x86_64-unknown-none x86_64-unknown-uefi",
        });
    }
    eprintln!("netoops-image: installing the {target} target");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status()?;
    if !status.success() {
        return Err(Error::Command {
            what: format!("rustup target add {target}"),
            status,
        });
    }
    Ok(())
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn rustc() -> std::ffi::OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// Runs `cargo build -p <package> --target <target>` (the kernel profile when `release`)
/// with `env` set, and returns the directory cargo put the artefacts in.
pub(crate) fn cargo_build(
    package: &str,
    target: &str,
    release: bool,
    env: &[(&str, &std::path::Path)],
) -> Result<PathBuf, Error> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args(["build", "-p", package, "--target", target]);
    if release {
        // The size-optimized profile (root Cargo.toml), for the kernel and the UEFI stub.
        cmd.args(["--profile", KERNEL_PROFILE]);
    }
    for (var, value) in env {
        cmd.env(var, value);
    }
    // A build started from inside `cargo test` inherits variables meant for the host build
    // of the test crate; these crates' flags come from .cargo/config.toml only.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(Error::Command {
            what: format!("cargo build -p {package}"),
            status,
        });
    }
    Ok(target_dir()
        .join(target)
        .join(if release { KERNEL_PROFILE } else { "debug" }))
}

/// Builds the kernel and writes the image.
pub fn build_kernel(release: bool) -> Result<BuiltImage, Error> {
    ensure_target()?;
    let kernel_elf =
        cargo_build("netoops-kernel", KERNEL_TARGET, release, &[])?.join("netoops-kernel");
    let bytes = std::fs::read(&kernel_elf)?;
    let image = elf::strip(&bytes)?;
    let summary = bootable(&image)?;
    std::fs::create_dir_all(image_dir())?;
    let path = image_dir().join(IMAGE_NAME);
    // An unchanged image is left alone: the UEFI stub embeds it, and a new mtime rebuilds that.
    if std::fs::read(&path).ok().as_deref() != Some(image.as_slice()) {
        write_replacing(&path, &image)?;
    }
    Ok(BuiltImage {
        path,
        kernel_elf,
        size: image.len() as u64,
        summary,
    })
}

/// A kernel image built elsewhere (a release bundle's `netoops-relay.elf`, or cargo's
/// unstripped kernel ELF), checked the way [`build_kernel`] checks its own: an x86_64 ELF with
/// the PVH entry note and the multiboot2 header. No cargo, no Rust toolchain.
pub fn load_kernel(path: &Path) -> Result<BuiltImage, Error> {
    let bytes = crate::read_named(path, "kernel")?;
    let summary = bootable(&bytes)?;
    Ok(BuiltImage {
        path: path.to_path_buf(),
        kernel_elf: path.to_path_buf(),
        size: bytes.len() as u64,
        summary,
    })
}

/// What the ELF headers of a kernel image say, once they show both entries the loaders use:
/// the PVH note (QEMU) and the multiboot2 header (GRUB).
fn bootable(image: &[u8]) -> Result<elf::ElfSummary, Error> {
    let summary = elf::inspect(image)?;
    if summary.pvh_entry.is_none() {
        return Err(Error::BadElf("no PVH (Xen type 18) note"));
    }
    if summary.multiboot2_offset.is_none() {
        return Err(Error::BadElf("no multiboot2 header in the first 32 KiB"));
    }
    Ok(summary)
}

/// The image `--kernel` names, or a fresh build: how every command that boots or packs the
/// kernel picks it.
pub fn kernel_or_build(prebuilt: Option<&Path>, release: bool) -> Result<BuiltImage, Error> {
    match prebuilt {
        Some(path) => load_kernel(path),
        None => build_kernel(release),
    }
}
