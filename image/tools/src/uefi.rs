//! Building the UEFI stub (`BOOTX64.EFI`) around a built kernel image.
//!
//! `cargo build -p netoops-uefi --target x86_64-unknown-uefi [--profile kernel]` with
//! `NETOOPS_KERNEL_ELF` naming the kernel image (`target/image/netoops-relay.elf`), which
//! the stub embeds; the result is copied to `target/image/netoops-relay.efi`.

use crate::build::BuiltImage;
use crate::{image_dir, Error};
use std::path::{Path, PathBuf};

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
    let built = crate::build::cargo_build(
        "netoops-uefi",
        UEFI_TARGET,
        release,
        &[("NETOOPS_KERNEL_ELF", &kernel_path)],
    )?
    .join("netoops-uefi.efi");
    let bytes = std::fs::read(&built)?;
    check_pe(&bytes)?;
    std::fs::create_dir_all(image_dir())?;
    let path = image_dir().join(EFI_NAME);
    crate::write_replacing(&path, &bytes)?;
    Ok(BuiltEfi {
        path,
        size: bytes.len() as u64,
    })
}

/// A stub built elsewhere (a release bundle's `BOOTX64.EFI`), checked to be a PE image.
pub fn load_efi(path: &Path) -> Result<BuiltEfi, Error> {
    let bytes = crate::read_named(path, "EFI stub")?;
    check_pe(&bytes)?;
    Ok(BuiltEfi {
        path: path.to_path_buf(),
        size: bytes.len() as u64,
    })
}

/// A PE/COFF image: the `MZ` header whose `e_lfanew` points at a `PE\0\0` signature.
fn check_pe(bytes: &[u8]) -> Result<(), Error> {
    let pe_offset = bytes
        .get(0x3c..0x40)
        .filter(|_| bytes.starts_with(b"MZ"))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match pe_offset.and_then(|at| bytes.get(at..at.checked_add(4)?)) {
        Some(b"PE\0\0") => Ok(()),
        _ => Err(Error::BadElf("not a PE (EFI) image")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pe_images_pass() {
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        assert!(check_pe(&pe).is_ok());
        let mut bad = pe.clone();
        bad[0x80] = b'X';
        assert!(check_pe(&bad).is_err());
        bad = pe.clone();
        bad[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_pe(&bad).is_err());
        assert!(check_pe(b"MZ").is_err());
        assert!(check_pe(b"\x7fELF").is_err());
    }
}
