//! Building the relay image and running it under QEMU.
//!
//! The `netoops-image` binary is a thin command-line front end; everything it does is here
//! so end-to-end tests call the same code: [`build`] compiles the kernel for
//! `x86_64-unknown-none` and writes the loadable image (debug sections dropped) to
//! `target/image/netoops-relay.elf`; [`qemu`] builds QEMU command lines ([`qemu::QemuCommand`])
//! and runs a guest with a timeout while timestamping its console lines; [`iso`] wraps the
//! image into a GRUB (multiboot2) ISO when grub-mkrescue and xorriso are installed;
//! [`uefi`] builds the UEFI stub (`BOOTX64.EFI`) around the same image and [`disk`] writes
//! the flashable GPT disk with its EFI system partition (no external tools); [`appliance`]
//! runs the image next to a collector, its netoops (and netconsole) ports fed by
//! [`forward`], which hands host datagrams to the guest as raw frames ([`frame`]); [`bundle`]
//! lays out a checksummed release of all of it with systemd units. Every command that boots
//! or packs the kernel also takes a prebuilt one (`--kernel`, `--efi`), so an installed
//! bundle needs no Rust toolchain.
//!
//! Nothing here needs root or the network (the forwarder only binds loopback ports by
//! default); the only processes started are cargo, rustup, grub-mkrescue, QEMU and the
//! collector, each waited for or killed on timeout.

pub mod appliance;
pub mod build;
pub mod bundle;
pub mod disk;
pub mod elf;
pub mod forward;
pub mod frame;
pub mod iso;
pub mod qemu;
pub mod uefi;

use std::path::PathBuf;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Where built images go: `<target>/image`.
pub fn image_dir() -> PathBuf {
    target_dir().join("image")
}

/// Where commands put the images they make on the way (the ISO or disk `run` boots, an
/// ISO without `--output`): [`image_dir`] when this program runs from the checkout's target
/// directory (`cargo run`), else `netoops-image` under the system's temporary directory, so
/// an installed tool with `--kernel`/`--efi` never needs (or writes into) a source tree.
pub fn scratch_dir() -> PathBuf {
    let from_checkout = std::env::current_exe()
        .ok()
        .and_then(|exe| std::fs::canonicalize(exe).ok())
        .zip(std::fs::canonicalize(target_dir()).ok())
        .is_some_and(|(exe, target)| exe.starts_with(target));
    if from_checkout {
        image_dir()
    } else {
        std::env::temp_dir().join("netoops-image")
    }
}

/// Reads a file the user named, the error saying which (`<what> <path>: <why>`).
pub fn read_named(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        ))
    })
}

/// Replaces `path` with `bytes` whole: written to a temporary file beside it, then renamed
/// over it, so a reader (QEMU booting the previous image, a watcher of a stats file) never
/// sees half a file.
pub fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `program` is on `PATH`.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Errors of the image tool, each with what to do about it.
#[derive(Debug)]
pub enum Error {
    /// A program the step needs is not installed.
    Missing {
        /// The program.
        program: &'static str,
        /// How to install it.
        install: &'static str,
    },
    /// A command ran and failed.
    Command {
        /// What was run.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The built kernel is not an image we can boot.
    BadElf(&'static str),
    /// File system or process I/O.
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Missing { program, install } => {
                write!(f, "{program} not found; install it with: {install}")
            }
            Error::Command { what, status } => write!(f, "{what} failed: {status}"),
            Error::BadElf(why) => write!(f, "kernel ELF: {why}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(image_dir().ends_with("image"));
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(have_program("sh"));
        assert!(!have_program("netoops-no-such-program"));
    }
}
