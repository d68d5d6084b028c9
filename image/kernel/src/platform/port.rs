//! x86 I/O port instructions, the only way to reach the UART, the PIT and isa-debug-exit.

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device the caller owns; the write may have device side effects.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the port; `out` touches no memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a dword to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller owns the port; `out` touches no memory.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reads can have side effects (e.g. latch or FIFO registers).
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the port; `in` touches no memory.
    unsafe {
        core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}
