//! netoops-uefi: the relay's UEFI boot path, built as `EFI/BOOT/BOOTX64.EFI`.
//!
//! A stub, not a second kernel: it carries the same kernel ELF that PVH and GRUB boot
//! (embedded at build time), reads `relay.conf` from the EFI system partition as the
//! command line, takes the memory map and the ACPI RSDP from the firmware, exits boot
//! services, places the kernel at its link address and enters its 64-bit entry with an
//! `hvm_start_info`. The kernel then builds its own page tables, GDT and IDT exactly as on
//! the other paths and runs the same relay, so there is one image to test.
//!
//! This library is the firmware-independent part (no_std, no unsafe, unit-tested on the
//! host, and used by `netoops-image disk` to check relay.conf before it is written):
//!
//! - [`conf`]: relay.conf to command line, checked with the relay's own parser.
//! - [`kernel`]: the embedded ELF's load plan and entry note.
//! - [`handoff`]: the UEFI memory map in E820 terms and the `hvm_start_info` layout.
//! - [`devpath`]: whether the firmware console already reaches a serial port.
//!
//! The binary (`src/main.rs`, `--target x86_64-unknown-uefi` with `NETOOPS_KERNEL_ELF`)
//! adds the firmware calls and the raw COM1 console.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod conf;
pub mod devpath;
pub mod handoff;
pub mod kernel;
