//! netoops-kernel: the relay appliance as a bootable x86_64 image.
//!
//! `platform` owns the machine (boot via PVH or multiboot2, console, exceptions, memory,
//! clock, ACPI, PCI) and exports the API drivers build against; `board` wires drivers and
//! the relay core together and runs the poll loop. `kmain` is the only glue: bring the
//! platform up, run a self-test if the command line asks for one, hand over to the board.
//!
//! Host builds (`cargo test -p netoops-kernel`) compile only the parsers and their tests;
//! everything that touches the machine is limited to `target_os = "none"`.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

pub mod platform;

#[cfg(all(target_os = "none", not(test)))]
mod board;
mod net;
#[cfg(all(target_os = "none", not(test)))]
mod selftest;
mod selftest_e1000;
mod selftest_net;
#[cfg(all(target_os = "none", not(test)))]
mod virtio_hal;

/// Host builds exist only for the unit tests; the kernel runs on `x86_64-unknown-none`.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "netoops-kernel only runs as a boot image: build it with --target x86_64-unknown-none"
    );
    std::process::exit(2);
}

/// Entered from the boot trampoline in 64-bit mode with the protocol, the loader's
/// information address and the TSC the trampoline read as its first instruction.
#[cfg(all(target_os = "none", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn kmain(protocol: u32, info: u32, entry_tsc: u64) -> ! {
    let platform = platform::init(protocol, info, entry_tsc);
    let cmdline = platform.cmdline();
    if platform::bootinfo::cmdline_param(cmdline, "selftest").is_some() {
        // Self-tests print as they go: no board loop writes held lines for them. The board
        // prints the banner after `ready`.
        platform::serial::immediate();
        platform::banner();
    }
    if platform::bootinfo::cmdline_param(cmdline, "selftest") == Some("e1000-echo") {
        selftest_e1000::run(cmdline)
    }
    if platform::bootinfo::cmdline_param(cmdline, "selftest") == Some("virtio-echo") {
        selftest_net::run(cmdline)
    }
    if let Some(name) = platform::bootinfo::cmdline_param(cmdline, "selftest") {
        selftest::run(name);
    }
    board::run(platform, cmdline)
}

#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut w = platform::serial::emergency_writer();
    let _ = writeln!(w, "\n!!! PANIC: {info}");
    platform::exit_qemu(platform::EXIT_PANIC)
}
