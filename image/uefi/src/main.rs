//! The `BOOTX64.EFI` binary: the firmware side of the UEFI boot path (see the library doc
//! in `lib.rs` for the design). `firmware` makes every UEFI call in order; `com1` is the
//! serial console that outlives boot services.
//!
//! Host builds compile to a stub that explains how to build the real thing, so workspace
//! commands (`cargo test`, `cargo clippy`) cover the library without a UEFI target.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(target_os = "uefi")]
extern crate alloc;

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
