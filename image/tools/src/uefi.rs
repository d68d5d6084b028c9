//! Building the UEFI stub (`BOOTX64.EFI`) around a built kernel image.
//!
//! `cargo build -p netoops-uefi --target x86_64-unknown-uefi [--profile kernel]` with
//! `NETOOPS_KERNEL_ELF` naming the kernel image (`target/image/netoops-relay.elf`), which
//! the stub embeds; the result is copied to `target/image/netoops-relay.efi`.

use crate::build::BuiltImage;
use crate::{image_dir, target_dir, workspace_root, Error};
use std::path::PathBuf;
use std::process::Command;

/// The stub's target triple.
pub const UEFI_TARGET: &str = "x86_64-unknown-uefi";
/// The file name of the built stub.
pub const EFI_NAME: &str = "netoops-relay.efi";

/// A built stub.
#[derive(Clone, Debug)]
pub struct BuiltEfi {
    /// `target/image/netoops-relay.efi`.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Builds the stub around `kernel` (which must carry the UEFI entry note).
pub fn build_efi(kernel: &BuiltImage, release: bool) -> Result<BuiltEfi, Error> {
    if kernel.summary.uefi_entry.is_none() {
        return Err(Error::BadElf("no netoops UEFI entry note"));
    }
    crate::build::ensure_rust_target(UEFI_TARGET)?;
    let kernel_path = std::fs::canonicalize(&kernel.path)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "netoops-uefi", "--target", UEFI_TARGET])
        .env("NETOOPS_KERNEL_ELF", &kernel_path);
    if release {
        // The appliance's size-optimized profile, as for the kernel.
        cmd.args(["--profile", crate::build::KERNEL_PROFILE]);
    }
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(Error::Command {
            what: "cargo build -p netoops-uefi".into(),
            status,
        });
    }
    let built = target_dir()
        .join(UEFI_TARGET)
        .join(if release {
            crate::build::KERNEL_PROFILE
        } else {
            "debug"
        })
        .join("netoops-uefi.efi");
    let bytes = std::fs::read(&built)?;
    if bytes.get(..2) != Some(b"MZ".as_slice()) {
        return Err(Error::BadElf("the UEFI build is not a PE image"));
    }
    std::fs::create_dir_all(image_dir())?;
    let path = image_dir().join(EFI_NAME);
    let tmp = path.with_extension(format!("efi.{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(BuiltEfi {
        path,
        size: bytes.len() as u64,
    })
}
