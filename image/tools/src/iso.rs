//! A GRUB rescue ISO that boots the image through multiboot2 (the bare-metal path for
//! older boxes that boot GRUB).
//!
//! grub-mkrescue lays out El Torito for BIOS (i386-pc modules from grub-pc-bin) and writes
//! the ISO with xorriso (mformat from mtools for the EFI image when grub-efi is present).
//! The kernel command line goes into grub.cfg, since `-append` does not reach a CD boot.
//! GRUB's console is the serial port, so the menu and the kernel share one stream.

use crate::{have_program, Error};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the ISO needs.
pub const GRUB_PACKAGES: &str = "grub-pc-bin grub-common xorriso mtools";

/// Whether the tools are installed (grub-mkrescue, xorriso and GRUB's BIOS modules).
pub fn tools_available() -> bool {
    have_program("grub-mkrescue")
        && have_program("xorriso")
        && Path::new("/usr/lib/grub/i386-pc").is_dir()
}

/// The grub.cfg for an image at `/boot/netoops-relay.elf` with `cmdline`.
///
/// Each word of the command line is its own single-quoted argument: GRUB joins the
/// arguments with spaces but wraps any argument that contains a space in double quotes, so
/// quoting the whole line would hand the kernel `"ip=... upstream=..."`, quotes included.
/// Single quotes keep `$`, `;` and the like literal; the appliance's settings contain no
/// quotes, and any are dropped.
pub fn grub_cfg(cmdline: &str) -> String {
    let args: Vec<String> = cmdline
        .split_whitespace()
        .map(|word| format!("'{}'", word.replace('\'', "")))
        .collect();
    format!(
        "set timeout=0\n\
         set default=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         menuentry \"netoops-relay\" {{\n\
         \x20   multiboot2 /boot/netoops-relay.elf {}\n\
         \x20   boot\n\
         }}\n",
        args.join(" ")
    )
}

/// Builds `output` from `image` with `cmdline` in grub.cfg.
pub fn build_iso(image: &Path, cmdline: &str, output: &Path) -> Result<PathBuf, Error> {
    if !tools_available() {
        return Err(Error::Missing {
            program: "grub-mkrescue (with grub-pc-bin) and xorriso",
            install: "apt-get install -y grub-pc-bin grub-common xorriso mtools",
        });
    }
    let staging = output.with_extension(format!("iso.d.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("boot/grub"))?;
    std::fs::copy(image, staging.join("boot/netoops-relay.elf"))?;
    std::fs::write(staging.join("boot/grub/grub.cfg"), grub_cfg(cmdline))?;
    let output_tmp = output.with_extension(format!("iso.{}", std::process::id()));
    let result = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&output_tmp)
        .arg(&staging)
        // Only the BIOS platform: the appliance's UEFI path is a separate boot stub.
        .args(["-d", "/usr/lib/grub/i386-pc"])
        .output();
    let _ = std::fs::remove_dir_all(&staging);
    let out = result?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return Err(Error::Command {
            what: "grub-mkrescue".into(),
            status: out.status,
        });
    }
    std::fs::rename(&output_tmp, output)?;
    Ok(output.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_boots_multiboot2_on_serial() {
        let cfg = grub_cfg("selftest=exit  heap=64M");
        assert!(cfg.contains("multiboot2 /boot/netoops-relay.elf 'selftest=exit' 'heap=64M'\n"));
        assert!(cfg.contains("terminal_output serial"));
        assert!(cfg.contains("set timeout=0"));
        assert!(!grub_cfg("a'b").contains("a'b"));
    }
}
