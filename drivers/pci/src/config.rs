//! Configuration-space access mechanisms.
//!
//! [`ConfigAccess`] is the only thing the rest of the crate needs from the machine. The two
//! implementations are the legacy x86 port pair (0xCF8 address, 0xCFC data: 256 bytes per
//! function, works on every PC chipset) and ECAM (PCI Express enhanced configuration: a
//! memory window from ACPI MCFG, 4 KiB per function). Sub-dword accesses use the natural
//! width of each mechanism, so writing a 16-bit register never rewrites its neighbour
//! (the status register's bits are write-one-to-clear).

use crate::PciAddress;

/// Reads and writes configuration registers of one PCI segment.
///
/// Offsets are byte offsets into the function's configuration space. Accesses must be
/// naturally aligned; implementations mask the low bits rather than fault. A function that
/// does not exist reads as all ones.
pub trait ConfigAccess: Send + Sync {
    /// Reads the dword at `offset & !3`.
    fn read_u32(&self, addr: PciAddress, offset: u16) -> u32;
    /// Writes the dword at `offset & !3`.
    fn write_u32(&self, addr: PciAddress, offset: u16, value: u32);

    /// Reads the word at `offset & !1`.
    fn read_u16(&self, addr: PciAddress, offset: u16) -> u16 {
        let shift = u32::from(offset & 2) * 8;
        (self.read_u32(addr, offset) >> shift) as u16
    }
    /// Reads the byte at `offset`.
    fn read_u8(&self, addr: PciAddress, offset: u16) -> u8 {
        let shift = u32::from(offset & 3) * 8;
        (self.read_u32(addr, offset) >> shift) as u8
    }
    /// Writes the word at `offset & !1`. The default does a read-modify-write of the dword;
    /// mechanisms that can issue narrow writes override it.
    fn write_u16(&self, addr: PciAddress, offset: u16, value: u16) {
        let shift = u32::from(offset & 2) * 8;
        let old = self.read_u32(addr, offset) & !(0xffff << shift);
        self.write_u32(addr, offset, old | (u32::from(value) << shift));
    }
    /// Writes the byte at `offset`, read-modify-write by default like [`Self::write_u16`].
    fn write_u8(&self, addr: PciAddress, offset: u16, value: u8) {
        let shift = u32::from(offset & 3) * 8;
        let old = self.read_u32(addr, offset) & !(0xff << shift);
        self.write_u32(addr, offset, old | (u32::from(value) << shift));
    }
    /// Highest bus number this mechanism reaches.
    fn max_bus(&self) -> u8 {
        255
    }
}

/// [`ConfigAccess`] for a mechanism through its generic `read` and `write`, which serve every
/// width alike; `$extra` holds the trait's other methods the mechanism overrides.
macro_rules! config_access_by_width {
    ($mechanism:ty { $($extra:tt)* }) => {
        impl ConfigAccess for $mechanism {
            fn read_u32(&self, addr: PciAddress, offset: u16) -> u32 {
                self.read(addr, offset)
            }
            fn write_u32(&self, addr: PciAddress, offset: u16, value: u32) {
                self.write(addr, offset, value)
            }
            fn read_u16(&self, addr: PciAddress, offset: u16) -> u16 {
                self.read(addr, offset)
            }
            fn read_u8(&self, addr: PciAddress, offset: u16) -> u8 {
                self.read(addr, offset)
            }
            fn write_u16(&self, addr: PciAddress, offset: u16, value: u16) {
                self.write(addr, offset, value)
            }
            fn write_u8(&self, addr: PciAddress, offset: u16, value: u8) {
                self.write(addr, offset, value)
            }
            $($extra)*
        }
    };
}

/// Configuration mechanism #1: the 0xCF8/0xCFC port pair (first 256 bytes only).
///
/// The two port accesses are not atomic as a pair; the kernel is single-threaded and runs
/// with interrupts off, so no other access can come between them.
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyPorts {
    _private: (),
}

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

impl LegacyPorts {
    /// Claims the port pair.
    ///
    /// # Safety
    /// The caller must be running at I/O privilege on an x86 machine where 0xCF8/0xCFC are
    /// the PCI configuration ports (true of every PC chipset), and no other code may use the
    /// ports concurrently.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }

    /// Whether a host bridge answers on the ports: the address register must read back.
    pub fn probe(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `new` made the caller promise exclusive use of the ports; reading and
            // restoring CONFIG_ADDRESS has no other effect.
            unsafe {
                let old = u32::read_port(CONFIG_ADDRESS);
                u32::write_port(CONFIG_ADDRESS, 0x8000_0000);
                let back = u32::read_port(CONFIG_ADDRESS);
                u32::write_port(CONFIG_ADDRESS, old);
                back == 0x8000_0000
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn address(addr: PciAddress, offset: u16) -> u32 {
        0x8000_0000
            | (u32::from(addr.bus) << 16)
            | (u32::from(addr.dev & 0x1f) << 11)
            | (u32::from(addr.func & 7) << 8)
            | u32::from(offset & 0xfc)
    }
}

#[cfg(target_arch = "x86_64")]
impl LegacyPorts {
    /// Reads the `T` at `offset` (aligned down to `T`): selects the dword, then reads its part
    /// of the data window 0xCFC..0xD00, which takes dword, word and byte accesses.
    fn read<T: Width>(&self, addr: PciAddress, offset: u16) -> T {
        if offset >= 0x100 {
            return T::ONES;
        }
        // SAFETY: exclusive port use promised to `LegacyPorts::new`; the address selects a
        // configuration dword, which reads without side effects on conforming devices.
        unsafe {
            u32::write_port(CONFIG_ADDRESS, Self::address(addr, offset));
            T::read_port(CONFIG_DATA + (offset & 3 & !T::ALIGN_MASK))
        }
    }

    /// Writes the `T` at `offset` (aligned down to `T`); a narrow write leaves the rest of
    /// the dword untouched.
    fn write<T: Width>(&self, addr: PciAddress, offset: u16, value: T) {
        if offset >= 0x100 {
            return;
        }
        // SAFETY: as in `read`; the caller chose the register and value.
        unsafe {
            u32::write_port(CONFIG_ADDRESS, Self::address(addr, offset));
            T::write_port(CONFIG_DATA + (offset & 3 & !T::ALIGN_MASK), value);
        }
    }
}

#[cfg(target_arch = "x86_64")]
config_access_by_width!(LegacyPorts {});

/// PCI Express enhanced configuration access through a memory window (ACPI MCFG).
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: *mut u8,
    start_bus: u8,
    end_bus: u8,
}

// SAFETY: `Ecam` only holds the window address; every access is a single volatile MMIO
// operation, and configuration registers tolerate access from any CPU.
unsafe impl Send for Ecam {}
// SAFETY: as for Send: no interior state besides the immutable window address.
unsafe impl Sync for Ecam {}

impl Ecam {
    /// An ECAM window whose first byte (bus `start_bus`, device 0, function 0) is at `base`.
    ///
    /// # Safety
    /// `base` must point to the mapped (uncached) ECAM window covering buses
    /// `start_bus..=end_bus`, i.e. `(end_bus - start_bus + 1) << 20` bytes, valid for
    /// `'static` for every copy of this value.
    pub const unsafe fn new(base: *mut u8, start_bus: u8, end_bus: u8) -> Self {
        Self {
            base,
            start_bus,
            end_bus,
        }
    }

    /// The register's address, or `None` outside the window.
    fn register(&self, addr: PciAddress, offset: u16) -> Option<*mut u8> {
        if addr.bus < self.start_bus || addr.bus > self.end_bus || offset >= 0x1000 {
            return None;
        }
        let index = (usize::from(addr.bus - self.start_bus) << 20)
            | (usize::from(addr.dev & 0x1f) << 15)
            | (usize::from(addr.func & 7) << 12)
            | usize::from(offset);
        // The offset stays inside the window promised to `new`, so this is in bounds.
        Some(self.base.wrapping_add(index))
    }
}

impl Ecam {
    /// Reads the `T` at `offset` (aligned down to `T`), all ones outside the window.
    fn read<T: Width>(&self, addr: PciAddress, offset: u16) -> T {
        match self.register(addr, offset & !T::ALIGN_MASK) {
            // SAFETY: `register` returns an address inside the mapped window, aligned for `T`
            // because the window is and the offset is.
            Some(p) => unsafe { core::ptr::read_volatile(p.cast::<T>()) },
            None => T::ONES,
        }
    }

    /// Writes the `T` at `offset` (aligned down to `T`); nothing outside the window.
    fn write<T: Width>(&self, addr: PciAddress, offset: u16, value: T) {
        if let Some(p) = self.register(addr, offset & !T::ALIGN_MASK) {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile(p.cast::<T>(), value) }
        }
    }
}

config_access_by_width!(Ecam {
    fn max_bus(&self) -> u8 {
        self.end_bus
    }
});

/// A configuration register width (dword, word, byte): what both mechanisms need to access
/// one generically. The three differ only in their size and, for the x86 `in`/`out`
/// instructions, in the register that carries the value.
trait Width: Copy {
    /// All ones: what a missing function or a register outside the space reads as.
    const ONES: Self;
    /// Low offset bits that the width's alignment clears.
    const ALIGN_MASK: u16;
    /// Reads the port.
    ///
    /// # Safety
    /// The caller owns the port (see [`LegacyPorts::new`]); the read may have side effects.
    #[cfg(target_arch = "x86_64")]
    unsafe fn read_port(port: u16) -> Self;
    /// Writes the port.
    ///
    /// # Safety
    /// As for [`Width::read_port`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn write_port(port: u16, value: Self);
}

/// [`Width`] for one unsigned integer type; `$reg` is the `in`/`out` register of its size.
macro_rules! width {
    ($ty:ty, $reg:tt) => {
        impl Width for $ty {
            const ONES: Self = <$ty>::MAX;
            const ALIGN_MASK: u16 = core::mem::size_of::<$ty>() as u16 - 1;
            #[cfg(target_arch = "x86_64")]
            unsafe fn read_port(port: u16) -> Self {
                let value: $ty;
                // SAFETY: the caller owns the port; `in` touches no memory.
                unsafe {
                    core::arch::asm!(
                        concat!("in ", $reg, ", dx"),
                        out($reg) value,
                        in("dx") port,
                        options(nomem, nostack, preserves_flags)
                    )
                }
                value
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn write_port(port: u16, value: Self) {
                // SAFETY: the caller owns the port; `out` touches no memory.
                unsafe {
                    core::arch::asm!(
                        concat!("out dx, ", $reg),
                        in("dx") port,
                        in($reg) value,
                        options(nomem, nostack, preserves_flags)
                    )
                }
            }
        }
    };
}

width!(u32, "eax");
width!(u16, "ax");
width!(u8, "al");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Function, MemConfig};
    use std::vec;

    #[test]
    fn legacy_address_encodes_bus_device_function_and_dword() {
        let a = LegacyPorts::address(PciAddress::new(3, 31, 7), 0x3f);
        assert_eq!(a, 0x8000_0000 | (3 << 16) | (31 << 11) | (7 << 8) | 0x3c);
    }

    #[test]
    fn ecam_reads_the_right_register_and_rejects_out_of_window() {
        // Two buses (1..=2) of 1 MiB each.
        let mut window = vec![0u8; 2 << 20];
        let off = (1 << 20) | (5 << 15) | (2 << 12) | 0x40;
        window[off..off + 4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        // SAFETY: the window covers buses 1..=2 and outlives the accesses below.
        let ecam = unsafe { Ecam::new(window.as_mut_ptr(), 1, 2) };
        let a = PciAddress::new(2, 5, 2);
        assert_eq!(ecam.read_u32(a, 0x40), 0xdead_beef);
        assert_eq!(ecam.read_u16(a, 0x42), 0xdead);
        assert_eq!(ecam.read_u8(a, 0x41), 0xbe);
        ecam.write_u16(a, 0x40, 0x1234);
        assert_eq!(ecam.read_u32(a, 0x40), 0xdead_1234);
        assert_eq!(ecam.read_u32(PciAddress::new(0, 0, 0), 0), u32::MAX);
        assert_eq!(ecam.read_u32(PciAddress::new(3, 0, 0), 0), u32::MAX);
        assert_eq!(ecam.read_u32(a, 0x1000), u32::MAX);
        assert_eq!(ecam.max_bus(), 2);
    }

    #[test]
    fn default_narrow_writes_preserve_neighbours() {
        let cfg = MemConfig::default();
        let a = PciAddress::new(0, 1, 0);
        cfg.add(a, Function::new(0x1af4, 0x1041, 2, 0));
        cfg.write_u16(a, 0x04, 0x0007);
        cfg.write_u8(a, 0x3c, 0x0b);
        assert_eq!(cfg.read_u16(a, 0), 0x1af4);
        assert_eq!(cfg.read_u16(a, 2), 0x1041);
        assert_eq!(cfg.read_u16(a, 4), 0x0007);
        assert_eq!(cfg.read_u8(a, 0x3c), 0x0b);
        assert_eq!(cfg.read_u8(a, 0x3d), 0);
    }
}
