//! The firmware build embeds the kernel ELF named by `NETOOPS_KERNEL_ELF` (set by
//! `netoops-image uefi`); rebuild when that variable changes. `include_bytes!` already makes
//! cargo rebuild when the file itself changes.
fn main() {
    println!("cargo:rerun-if-env-changed=NETOOPS_KERNEL_ELF");
}
