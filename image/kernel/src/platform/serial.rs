//! The COM1 16550 console: 115200 8N1, polled, FIFO on. `print!`/`println!` go here.
//!
//! Writers take a spin lock; the exception and panic paths use [`emergency_writer`] instead,
//! which writes without the lock (the CPU is about to stop, and the interrupted code may hold
//! it). A missing UART (the line status register floats to 0xff) is detected at init and
//! turns every write into a no-op rather than a hang.
//!
//! Deferred output ([`defer`], which the board turns on): a line goes into a 256 KiB ring at
//! once and the board loop moves it to the UART with [`pump`], only while the UART's transmit
//! FIFO is empty and at most a budget per loop turn. At 115200 baud a byte takes 87 us, so
//! writing a counters burst synchronously held the data path for tens of milliseconds on a
//! real box; under QEMU every byte is an exit to the emulator (about 5-10 us under TCG),
//! which was most of the time from kernel entry to `ready`. A line that does not fit the ring
//! is dropped whole and counted, and a `console: N lines dropped` line says so. Exits, panics
//! and exceptions flush the ring first ([`flush`]).

use super::port::{inb, outb};
use core::fmt::{self, Write};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
static DEFERRED: AtomicBool = AtomicBool::new(false);
static PENDING: spin::Mutex<Pending> = spin::Mutex::new(Pending::new(&raw mut RING_BYTES));

/// The ring's bytes, outside .bss: the trampoline clears .bss 4 bytes per `rep stosd` step,
/// and under TCG every step is a translated-block execution (64,000 for these 256 KiB, about
/// 0.1 ms of the boot). Nothing needs them cleared: only bytes `push` wrote are read.
#[cfg_attr(all(target_os = "none", not(test)), link_section = ".noinit")]
static mut RING_BYTES: [MaybeUninit<u8>; RING] = [MaybeUninit::uninit(); RING];

/// Bytes of console output held for [`pump`].
const RING: usize = 256 * 1024;
/// The 16550's transmit FIFO: this many bytes fit whenever the line status says it is empty.
const FIFO_DEPTH: usize = 16;
/// Bytes [`pump`] writes per call while the ring is at most half full; beyond that it writes
/// the excess too, so a console that cannot keep up slows the loop (as before) rather than
/// drop lines, wherever the UART is as fast as under QEMU.
pub const PUMP_BUDGET: usize = 512;

/// The deferred-output ring.
struct Pending {
    /// [`RING`] bytes, of which `[head, head + len)` (modulo `RING`) were written.
    buf: *mut [MaybeUninit<u8>; RING],
    head: usize,
    len: usize,
    dropped_lines: u64,
    /// The last byte held did not end a line: the next print continues it (no time). False
    /// at start, so the ring is all zeros and lives in .bss, not in the image file.
    mid_line: bool,
}

// SAFETY: the buffer is only reached through its `Pending`, which lives behind a lock.
unsafe impl Send for Pending {}

impl Pending {
    /// A ring over `buf`, which nothing else uses.
    const fn new(buf: *mut [MaybeUninit<u8>; RING]) -> Pending {
        Pending {
            buf,
            head: 0,
            len: 0,
            dropped_lines: 0,
            mid_line: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        if RING - self.len < bytes.len() {
            return false;
        }
        for &b in bytes {
            let at = (self.head + self.len) % RING;
            // SAFETY: `buf` is this ring's own ([`Pending::new`]) and `at` is below `RING`.
            unsafe { (*self.buf)[at] = MaybeUninit::new(b) };
            self.len += 1;
        }
        true
    }

    /// The byte at `at`, which `push` wrote (`at` is in `[head, head + len)` modulo `RING`).
    fn byte(&self, at: usize) -> u8 {
        // SAFETY: `buf` is this ring's own and `at` below `RING`; the caller's `at` was
        // written by `push`, so the byte is initialized.
        unsafe { (*self.buf)[at % RING].assume_init() }
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.byte(self.head);
        self.head = (self.head + 1) % RING;
        self.len -= 1;
        Some(b)
    }
}

/// Formats one print into the ring, all of it or (when it does not fit) none of it.
struct RingWriter<'a> {
    ring: &'a mut Pending,
    overflow: bool,
}

impl Write for RingWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.overflow && !self.ring.push(s.as_bytes()) {
            self.overflow = true;
        }
        Ok(())
    }
}

/// Formats `args` into `ring` whole, or not at all (counted) when it does not fit. A print
/// that starts a line gets the wall time first (`2026-12-03T19:40:00.123Z `, as the hosted
/// relay's lines), when the RTC gave one.
fn hold(ring: &mut Pending, wall_ms: Option<u64>, args: fmt::Arguments<'_>) -> bool {
    let (start_len, start_line) = (ring.len, !ring.mid_line);
    let mut w = RingWriter {
        ring,
        overflow: false,
    };
    if let (true, Some(ms)) = (start_line, wall_ms) {
        let _ = write!(w, "{} ", super::rtc::Rfc3339(ms));
    }
    let _ = w.write_fmt(args);
    if w.overflow {
        // Take back what this print put in: lines are whole or absent.
        ring.len = start_len;
        ring.mid_line = !start_line;
        ring.dropped_lines += 1;
        LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if ring.len != start_len {
        let last = ring.byte(ring.head + ring.len - 1);
        ring.mid_line = last != b'\n';
    }
    true
}

/// Lines dropped with the ring full since boot (the `console: N lines dropped` lines add up
/// to it), for `/metrics`.
static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// See [`LINES_DROPPED`].
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Ordering::Relaxed)
}

/// The wall time for a line's stamp.
fn wall_ms() -> Option<u64> {
    #[cfg(all(target_os = "none", not(test)))]
    return super::rtc::wall_ms();
    #[cfg(not(all(target_os = "none", not(test))))]
    None
}

/// From now on, prints wait in the ring until [`pump`] or [`flush`] writes them.
pub fn defer() {
    DEFERRED.store(true, Ordering::Release);
}

/// Back to writing every print at once (self-tests, which run no board loop to [`pump`]),
/// after writing what is held.
pub fn immediate() {
    flush();
    DEFERRED.store(false, Ordering::Release);
}

/// Whether the UART can take [`FIFO_DEPTH`] bytes now.
fn fifo_empty() -> bool {
    // SAFETY: console ports, see `init`.
    unsafe { inb(COM1 + LINE_STATUS) & LINE_STATUS_THR_EMPTY != 0 }
}

/// Writes held output while the UART's FIFO is empty, up to [`PUMP_BUDGET`] bytes (more when
/// the ring is over half full). Never waits. Returns the bytes written.
pub fn pump() -> usize {
    let Some(mut ring) = PENDING.try_lock() else {
        return 0;
    };
    if !PRESENT.load(Ordering::Acquire) {
        ring.len = 0;
        return 0;
    }
    let budget = PUMP_BUDGET.max(ring.len.saturating_sub(RING / 2));
    let mut written = 0;
    while written < budget && (ring.len > 0 || ring.dropped_lines > 0) && fifo_empty() {
        if ring.len == 0 {
            let dropped = core::mem::take(&mut ring.dropped_lines);
            drop(ring);
            let _ = writeln!(RawWriter, "console: {dropped} lines dropped");
            return written;
        }
        let mut room = FIFO_DEPTH;
        while room > 0 {
            let Some(b) = ring.pop() else { break };
            if b == b'\n' {
                put(b'\r');
                room -= 1;
            }
            put(b);
            room = room.saturating_sub(1);
            written += 1;
        }
    }
    written
}

/// Writes everything held, waiting for the UART as synchronous prints do. Lock-free callers
/// (panics, exceptions) may find the ring locked by the code they interrupted: then what it
/// holds is lost, not waited for.
pub fn flush() {
    let Some(mut ring) = PENDING.try_lock() else {
        return;
    };
    let present = PRESENT.load(Ordering::Acquire);
    while let Some(b) = ring.pop() {
        if present {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
    }
    let dropped = core::mem::take(&mut ring.dropped_lines);
    drop(ring);
    if dropped > 0 {
        let _ = writeln!(RawWriter, "console: {dropped} lines dropped");
    }
}

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

/// One byte into the FIFO, which the caller saw empty.
fn put(byte: u8) {
    // SAFETY: console ports, see `init`.
    unsafe { outb(COM1 + DATA, byte) }
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

/// The lock-free writer for exception and panic reports (held output is flushed first).
pub fn emergency_writer() -> RawWriter {
    flush();
    RawWriter
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    if DEFERRED.load(Ordering::Acquire) {
        hold(&mut PENDING.lock(), wall_ms(), args);
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// A ring over a buffer of its own.
    fn ring() -> Box<Pending> {
        let buf = Box::leak(Box::new([MaybeUninit::uninit(); RING]));
        Box::new(Pending::new(buf))
    }

    fn drain(ring: &mut Pending) -> Vec<u8> {
        core::iter::from_fn(|| ring.pop()).collect()
    }

    #[test]
    fn held_lines_come_out_in_order_across_the_wrap() {
        let mut ring = ring();
        let line = [b'x'; 1000];
        let text = core::str::from_utf8(&line).unwrap();
        let mut out = Vec::new();
        for i in 0..1000 {
            assert!(hold(&mut ring, None, format_args!("{i} {text}\n")));
            if i % 3 == 0 {
                out.extend(drain(&mut ring));
            }
        }
        out.extend(drain(&mut ring));
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 1000);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.starts_with(alloc::format!("{i} x").as_bytes()));
            assert_eq!(l.len(), alloc::format!("{i} ").len() + 1000);
        }
        assert_eq!(ring.dropped_lines, 0);
    }

    #[test]
    fn a_line_that_does_not_fit_is_dropped_whole_and_counted() {
        let mut ring = ring();
        let chunk = [b'a'; 1000];
        let chunk = core::str::from_utf8(&chunk).unwrap();
        let mut held = 0;
        while hold(&mut ring, None, format_args!("{chunk}\n")) {
            held += 1;
        }
        assert_eq!(held, RING / 1001);
        assert_eq!(ring.dropped_lines, 1);
        // A print of several pieces that overflows in its middle leaves nothing behind.
        let before = ring.len;
        assert!(!hold(
            &mut ring,
            None,
            format_args!("{}{chunk}{chunk}\n", "b")
        ));
        assert_eq!(ring.len, before);
        assert_eq!(ring.dropped_lines, 2);
        // What fits still fits.
        assert!(hold(&mut ring, None, format_args!("ok\n")));
        let out = drain(&mut ring);
        assert!(out.ends_with(b"ok\n"));
        assert_eq!(out.iter().filter(|&&b| b == b'b').count(), 0);
    }

    #[test]
    fn a_line_gets_the_wall_time_once_at_its_start() {
        let mut ring = ring();
        let t = Some(1_798_761_539_123);
        assert!(hold(&mut ring, t, format_args!("counters: a 1")));
        assert!(hold(&mut ring, t, format_args!(" b 2\n")));
        assert!(hold(&mut ring, t, format_args!("next\n")));
        assert!(hold(&mut ring, None, format_args!("untimed\n")));
        let out = drain(&mut ring);
        assert_eq!(
            core::str::from_utf8(&out).unwrap(),
            "2026-12-31T23:58:59.123Z counters: a 1 b 2\n\
             2026-12-31T23:58:59.123Z next\nuntimed\n"
        );
        // A dropped line leaves the next one starting a line.
        let big = [b'z'; RING];
        let big = core::str::from_utf8(&big).unwrap();
        assert!(hold(&mut ring, t, format_args!("half")));
        assert!(!hold(&mut ring, t, format_args!("{big}")));
        assert!(ring.mid_line);
    }
}
