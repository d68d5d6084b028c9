//! netoops-uefi: the relay's UEFI boot path, built as `EFI/BOOT/BOOTX64.EFI`.
//!
//! A stub, not a second kernel: it carries the same kernel ELF that PVH and GRUB boot
//! (embedded at build time), reads `relay.conf` from the EFI system partition as the
//! command line, takes the memory map and the ACPI RSDP from the firmware, exits boot
//! services, places the kernel at its link address and enters its 64-bit entry with an
//! `hvm_start_info`. The kernel then builds its own page tables, GDT and IDT exactly as on
//! the other paths and runs the same relay, so there is one image to test.
//!
//! - [`conf`]: relay.conf to command line, checked with the relay's own parser.
//! - [`kernel`]: the embedded ELF's load plan and entry note.
//! - [`handoff`]: the UEFI memory map in E820 terms and the `hvm_start_info` layout.
//! - [`devpath`]: whether the firmware console already reaches a serial port.
//! - `firmware` / `com1` (UEFI builds only): the firmware calls and the raw console.
//!
//! Host builds (`cargo test -p netoops-uefi`) compile the pure modules and their tests;
//! the firmware part needs `--target x86_64-unknown-uefi` and `NETOOPS_KERNEL_ELF`.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]
#![cfg_attr(not(target_os = "uefi"), allow(dead_code))]

extern crate alloc;

pub mod conf;
pub mod devpath;
pub mod handoff;
pub mod kernel;

#[cfg(target_os = "uefi")]
mod com1;
#[cfg(target_os = "uefi")]
mod firmware;

/// Host builds exist only for the unit tests.
#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("netoops-uefi runs as BOOTX64.EFI; build it with `netoops-image uefi`");
    std::process::exit(2);
}

#[cfg(target_os = "uefi")]
#[uefi::entry]
fn main() -> uefi::Status {
    firmware::main()
}

#[cfg(target_os = "uefi")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let _ = writeln!(com1::Com1, "\n!!! PANIC in the UEFI stub: {info}");
    com1::debug_exit(firmware::EXIT_PANIC);
    firmware::halt()
}
