//! The COM1 16550 console: 115200 8N1, polled, FIFO on. `print!`/`println!` go here.
//!
//! Writers take a spin lock; the exception and panic paths use [`emergency_writer`] instead,
//! which writes without the lock (the CPU is about to stop, and the interrupted code may hold
//! it). A missing UART (the line status register floats to 0xff) is detected at init and
//! turns every write into a no-op rather than a hang.

use super::port::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;
const SCRATCH: u16 = 7;
const LINE_STATUS_THR_EMPTY: u8 = 0x20;

static PRESENT: AtomicBool = AtomicBool::new(false);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Programs COM1 for 115200 8N1 and checks that a UART answers.
pub fn init() {
    // SAFETY: COM1's eight ports belong to the console; nothing else in the kernel uses them.
    unsafe {
        outb(COM1 + SCRATCH, 0x5a);
        if inb(COM1 + SCRATCH) != 0x5a {
            return;
        }
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x80); // divisor latch
        outb(COM1 + DATA, 0x01); // 115200 / 1
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x03); // 8N1
        outb(COM1 + FIFO_CONTROL, 0xc7); // enable + clear FIFOs, 14-byte threshold
        outb(COM1 + MODEM_CONTROL, 0x03); // DTR + RTS, no OUT2: interrupts stay off
    }
    PRESENT.store(true, Ordering::Release);
}

fn write_byte(byte: u8) {
    // Bounded wait: a wedged UART must not wedge the kernel.
    for _ in 0..100_000 {
        // SAFETY: console ports, see `init`.
        if unsafe { inb(COM1 + LINE_STATUS) } & LINE_STATUS_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: console ports, see `init`.
    unsafe { outb(COM1 + DATA, byte) }
}

/// A `fmt::Write` onto the UART that does not lock; see the module doc.
pub struct RawWriter;

impl Write for RawWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !PRESENT.load(Ordering::Acquire) {
            return Ok(());
        }
        for b in s.bytes() {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
        Ok(())
    }
}

/// The lock-free writer for exception and panic reports.
pub fn emergency_writer() -> RawWriter {
    RawWriter
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = RawWriter.write_fmt(args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::platform::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::platform::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}
