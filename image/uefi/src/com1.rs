//! COM1 written directly: the appliance's console, usable before and after ExitBootServices.
//!
//! Same settings as the kernel's console (`platform/serial.rs`: 115200 8N1, polled, bounded
//! waits), so the stub's lines and the kernel's share one stream. A missing UART (the
//! scratch register does not hold a value) turns every write into a no-op.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
static PRESENT: AtomicBool = AtomicBool::new(false);

/// # Safety
/// `port` must be one of COM1's registers or isa-debug-exit.
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller names a port the stub owns; `out` touches no memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// # Safety
/// As for [`outb`].
unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Programs COM1 (115200 8N1, FIFOs on, interrupts off) if a UART answers.
pub fn init() {
    // SAFETY: COM1's registers. The firmware's own serial console, when it has one, uses the
    // same settings, so reprogramming them does not disturb it.
    unsafe {
        outb(COM1 + 7, 0x5a);
        if inb(COM1 + 7) != 0x5a {
            return;
        }
        // Let the firmware's last characters leave before the FIFOs are reset.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x40 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }
    PRESENT.store(true, Ordering::Release);
}

fn write_byte(byte: u8) {
    for _ in 0..100_000 {
        // SAFETY: COM1's line status register.
        if unsafe { inb(COM1 + 5) } & 0x20 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: COM1's data register.
    unsafe { outb(COM1, byte) }
}

/// A `fmt::Write` onto COM1 (`\n` becomes `\r\n`).
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if PRESENT.load(Ordering::Acquire) {
            for b in s.bytes() {
                if b == b'\n' {
                    write_byte(b'\r');
                }
                write_byte(b);
            }
        }
        Ok(())
    }
}

/// Ends a QEMU guest through isa-debug-exit (port 0xf4, as the kernel does); on hardware
/// the port is unassigned and the write does nothing.
pub fn debug_exit(code: u32) {
    // SAFETY: port 0xf4 is isa-debug-exit under QEMU and unassigned on PC hardware.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") 0xf4u16, in("eax") code, options(nomem, nostack, preserves_flags))
    }
}
