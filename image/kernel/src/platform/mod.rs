//! The machine under the relay: boot, console, faults, memory, clock, ACPI and PCI.
//!
//! Entered through PVH, multiboot2 or the UEFI stub (see [`boot`]). [`init`] brings the
//! platform up in a fixed order (console, boot information, exception
//! handlers, clock, heap, ACPI, PCI, addresses for BARs the firmware left unassigned
//! ([`pci_bars`])) and keeps what it found for [`banner`], which the board prints after
//! `ready` (boot time under TCG is mostly translating code run once, and the banner's
//! formatting is such code); afterwards drivers use the free functions below, which are the
//! binding API between the kernel and its drivers:
//!
//! - [`dma_alloc`] / [`virt_to_phys`]: zeroed, never-freed DMA memory; physical == virtual
//!   ([`memory::dma_alloc_uninit`] for the drivers, which initialize what they read).
//! - [`boottime::stamp`]: marks the end of a boot phase for the `boot: phases` line.
//! - [`map_mmio`]: uncached identity mapping of any device range, above 4 GiB included.
//! - [`now_micros`], [`tsc`], [`tsc_hz`]: the calibrated monotonic clock.
//! - [`exit_qemu`]: ends the VM through isa-debug-exit (halts forever without it).
//! - [`pci_devices`]: the PCI functions enumerated at boot.
//! - [`idle::Idle`]: the board loop's halt on the local APIC timer when it has nothing to do.
//!
//! The kernel is single-core and identity-maps all memory it uses. Interrupts are enabled
//! only inside the idle halt's `sti; hlt; cli`, where the APIC timer is the one source left
//! unmasked.

pub mod acpi;
pub mod aml;
pub mod apic;
pub mod boot;
pub mod bootinfo;
pub mod boottime;
pub mod clock;
pub mod idle;
pub mod interrupts;
pub mod memory;
pub mod paging;
pub mod pci_bars;
pub mod physmem;
pub mod port;
pub mod rtc;
pub mod serial;

pub use bootinfo::{
    virtio_mmio_devices, BootInfo, BootProtocol, MemoryKind, MemoryRegion, VirtioMmioDevice,
};
pub use clock::{now_micros, tsc, tsc_hz};
pub use memory::{dma_alloc, virt_to_phys};
#[cfg(all(target_os = "none", not(test)))]
pub use paging::map_mmio;

use netoops_pci::PciDevice;

/// isa-debug-exit code for success; QEMU exits with status `(code << 1) | 1` = 33.
pub const EXIT_SUCCESS: u32 = 0x10;
/// isa-debug-exit code for a failed self-test (QEMU status 35).
pub const EXIT_FAILURE: u32 = 0x11;
/// isa-debug-exit code after a CPU exception report (QEMU status 37).
pub const EXIT_FAULT: u32 = 0x12;
/// isa-debug-exit code after a panic (QEMU status 39).
pub const EXIT_PANIC: u32 = 0x13;

/// The isa-debug-exit port the image tool configures (`iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the VM with `code` through isa-debug-exit; on a machine without that device (real
/// hardware, other VMMs) the write is ignored and the CPU halts for good.
pub fn exit_qemu(code: u32) -> ! {
    serial::flush();
    // SAFETY: port 0xf4 is isa-debug-exit under QEMU and unassigned on PC hardware; writing
    // it has no other effect.
    unsafe { port::outl(DEBUG_EXIT_PORT, code) };
    halt_forever()
}

/// Stops the CPU with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

static PCI_DEVICES: spin::Once<&'static [PciDevice]> = spin::Once::new();
static ACPI_VIRTIO_MMIO: spin::Once<&'static [VirtioMmioDevice]> = spin::Once::new();

/// The virtio-mmio devices the DSDT describes (QEMU's microvm with ACPI on, where the command
/// line has no `virtio_mmio.device=`); empty before [`init`] or without them.
pub fn acpi_virtio_mmio_devices() -> &'static [VirtioMmioDevice] {
    ACPI_VIRTIO_MMIO.get().copied().unwrap_or(&[])
}

/// The PCI functions found at boot (empty before [`init`] or on machines without PCI).
pub fn pci_devices() -> &'static [PciDevice] {
    PCI_DEVICES.get().copied().unwrap_or(&[])
}

/// How PCI configuration space was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciMechanism {
    /// ECAM window from ACPI MCFG.
    Ecam(acpi::EcamWindow),
    /// 0xCF8/0xCFC.
    LegacyPorts,
    /// No host bridge answered (e.g. microvm without PCIe).
    None,
}

/// The platform after boot; the board loop owns it.
pub struct Platform {
    boot: &'static BootInfo,
    /// The TSC at kernel entry, its rate and whether it also counts from reset: every boot
    /// time the kernel prints is taken from it.
    pub boot_clock: boottime::BootClock,
    /// TSC frequency and where it came from.
    pub tsc_source: clock::TscSource,
    /// The heap range.
    pub heap: Option<memory::HeapRange>,
    /// ACPI findings, or why there are none.
    pub acpi: Result<acpi::AcpiInfo, acpi::AcpiError>,
    /// How PCI was enumerated.
    pub pci: PciMechanism,
    /// Memory BARs the platform assigned because the firmware did not (qboot), if any.
    pub pci_bars: Option<pci_bars::Assignment>,
    /// The TSC when [`init`] was done (the banner's boot figure).
    init_done_tsc: u64,
    /// Whether the stack guard page is in place.
    guarded: bool,
}

impl Platform {
    /// What the loader handed over.
    pub fn boot_info(&self) -> &'static BootInfo {
        self.boot
    }
    /// The raw kernel command line (the relay's configuration source).
    pub fn cmdline(&self) -> &'static str {
        self.boot.cmdline()
    }
    /// The PCI functions found at boot.
    pub fn pci_devices(&self) -> &'static [PciDevice] {
        pci_devices()
    }
}

#[cfg(all(target_os = "none", not(test)))]
mod bring_up {
    use super::*;
    use crate::{print, println};
    use alloc::vec::Vec;
    use netoops_pci::{ConfigAccess, Ecam, LegacyPorts};
    use physmem::{IdentityMapped, PhysMemory};

    unsafe extern "C" {
        static __kernel_start: u8;
        static __kernel_end: u8;
    }

    static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();
    static PLATFORM: spin::Once<Platform> = spin::Once::new();
    static BANNER_PRINTED: core::sync::atomic::AtomicBool =
        core::sync::atomic::AtomicBool::new(false);
    static ECAM: spin::Once<Ecam> = spin::Once::new();
    // SAFETY: the kernel is single-core and this is the only user of 0xCF8/0xCFC.
    static LEGACY: LegacyPorts = unsafe { LegacyPorts::new() };

    /// Brings the platform up; `protocol`/`info` are the trampoline's arguments. Prints
    /// nothing: what it found waits for [`banner`], so formatting it (code run for the first
    /// time, which under TCG is mostly translation) is not on the way to `ready`.
    pub fn init(protocol: u32, info: u32, entry_tsc: u64) -> &'static Platform {
        boottime::stamp("trampoline");
        // The PIT window (when the TSC rate is not in CPUID) spans everything up to the end of
        // PCI below: nothing reads the clock before `finish`. Started first, so that as little
        // of it as possible is left to wait for.
        let calibrating = clock::calibrate_begin();
        boottime::stamp("clock");
        serial::init();
        // Boot lines wait for the board loop (or a self-test's `serial::immediate`).
        serial::defer();
        interrupts::init();
        boottime::stamp("console_idt");
        let boot = BOOT_INFO.call_once(|| read_boot_info(protocol, info));
        boottime::stamp("bootinfo");
        // The wall clock for console lines is read with the first line ([`rtc::reading`]).

        // A linker-script symbol: only its address is used.
        let kernel_end = &raw const __kernel_end as u64;
        let cap = bootinfo::cmdline_param(boot.cmdline(), "heap").and_then(memory::parse_size);
        let heap = memory::choose_heap(boot.memory(), kernel_end, paging::IDENTITY_MAPPED_END, cap);
        if let Some(range) = heap {
            memory::init_heap(range);
        }
        boottime::stamp("heap");

        let acpi = match boot
            .rsdp()
            .or_else(|| acpi::find_rsdp_in_bios(&IdentityMapped))
        {
            Some(rsdp) => acpi::parse(&IdentityMapped, rsdp),
            None => Err(acpi::AcpiError::NoRsdp),
        };
        // Only a hardware-reduced machine (microvm) describes virtio-mmio devices in its
        // DSDT; a PC's NICs are on PCI, and scanning q35's 8 KiB of AML would be 0.3 ms of
        // its boot under TCG (the scan's code run once, translated).
        if let (
            Ok(acpi::AcpiInfo {
                dsdt: Some(dsdt),
                hardware_reduced: true,
                ..
            }),
            Some(_),
        ) = (&acpi, heap)
        {
            let devices = acpi::virtio_mmio_in_dsdt(&IdentityMapped, *dsdt);
            ACPI_VIRTIO_MMIO.call_once(|| devices.leak());
        }
        boottime::stamp("acpi");
        let (pci, access) = pci_access(&acpi, heap.is_some());
        let mut assigned_bars = None;
        if let Some(access) = access {
            // Room for a typical machine's functions up front: growing the list is code run
            // only here before `ready` (under TCG, its translation); a larger bus still fits.
            let mut devices = Vec::with_capacity(32);
            netoops_pci::enumerate(access, |d| devices.push(d));
            let ecam = acpi.as_ref().ok().and_then(|a| a.ecam);
            assigned_bars = pci_bars::assign(&mut devices, boot.memory(), ecam);
            PCI_DEVICES.call_once(|| devices.leak());
        }

        boottime::stamp("pci");
        let (hz, tsc_source) = calibrating.finish();
        boottime::stamp("clock_wait");
        let guarded = paging::install_guards();
        let platform = PLATFORM.call_once(|| Platform {
            boot,
            boot_clock: boottime::BootClock {
                entry_tsc,
                hz,
                origin: boottime::TscOrigin::detect(),
            },
            tsc_source,
            heap,
            acpi,
            pci,
            pci_bars: assigned_bars,
            init_done_tsc: tsc(),
            guarded,
        });
        boottime::stamp("platform");
        platform
    }

    /// Prints what [`init`] found (the `booted via` line, memory, ACPI, PCI, the command
    /// line), once: the board after `ready`, self-tests at once, and the board's stop paths
    /// before their reason.
    pub fn banner() {
        let Some(p) = PLATFORM.get() else { return };
        if BANNER_PRINTED.swap(true, core::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // Linker-script symbols: only their addresses are used.
        let (kernel_start, kernel_end) = (
            &raw const __kernel_start as u64,
            &raw const __kernel_end as u64,
        );
        print_banner(p, kernel_start, kernel_end);
        match rtc::reading() {
            Some(ms) => println!(
                "clock: rtc {} (read as UTC, to the second)",
                rtc::Rfc3339(ms)
            ),
            None => println!("clock: no readable rtc: lines carry no time"),
        }
        if !p.guarded {
            println!("paging: no guard pages (stack not in the first 2 MiB)");
        }
    }

    fn read_boot_info(protocol: u32, info: u32) -> BootInfo {
        let mut boot = BootInfo::new(match protocol {
            boot::PROTOCOL_PVH => BootProtocol::Pvh,
            boot::PROTOCOL_MULTIBOOT2 => BootProtocol::Multiboot2,
            boot::PROTOCOL_UEFI => BootProtocol::Uefi,
            _ => BootProtocol::Unknown,
        });
        let result = match boot.protocol() {
            BootProtocol::Pvh | BootProtocol::Uefi => {
                boot.parse_pvh(&IdentityMapped, u64::from(info))
            }
            BootProtocol::Multiboot2 => boot.parse_multiboot2(&IdentityMapped, u64::from(info)),
            BootProtocol::Unknown => Ok(()),
        };
        if let Err(e) = result {
            println!("boot: boot information at {info:#x} incomplete: {e:?}");
            let mut raw = [0u8; 56];
            if IdentityMapped.read(u64::from(info), &mut raw) {
                println!("boot: raw {raw:02x?}");
            }
        }
        boot
    }

    fn pci_access(
        acpi: &Result<acpi::AcpiInfo, acpi::AcpiError>,
        have_heap: bool,
    ) -> (PciMechanism, Option<&'static dyn ConfigAccess>) {
        if let (
            Ok(acpi::AcpiInfo {
                ecam: Some(window), ..
            }),
            true,
        ) = (acpi, have_heap)
        {
            let base = map_mmio(window.start_address(), window.size() as usize);
            let ecam = ECAM.call_once(|| {
                // SAFETY: map_mmio mapped the whole window uncached; it is never unmapped.
                unsafe { Ecam::new(base.as_ptr(), window.start_bus, window.end_bus) }
            });
            // The MCFG window indexes from start_bus; bus numbers below it read as absent.
            return (PciMechanism::Ecam(*window), Some(ecam));
        }
        if LEGACY.probe() {
            return (PciMechanism::LegacyPorts, Some(&LEGACY));
        }
        (PciMechanism::None, None)
    }

    fn print_banner(p: &Platform, kernel_start: u64, kernel_end: u64) {
        let now = p.init_done_tsc;
        let c = &p.boot_clock;
        println!(
            "netoops-relay {} booted via {} in {} ms from kernel entry (reset to entry {}, \
             tsc {} MHz)",
            env!("CARGO_PKG_VERSION"),
            p.boot.protocol().name(),
            c.entry_to_us(now) / 1000,
            c.reset_to(c.entry_tsc),
            c.hz / 1_000_000
        );
        println!(
            "platform: init {} us, tsc source {:?}, tsc {}, kernel {:#x}..{:#x} ({} KiB)",
            c.entry_to_us(now),
            p.tsc_source,
            c.origin,
            kernel_start,
            kernel_end,
            (kernel_end - kernel_start) / 1024
        );
        let usable: u64 = p
            .boot
            .memory()
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .map(|r| r.len)
            .sum();
        println!(
            "memory: {} MiB usable in {} regions{}, heap {}",
            usable >> 20,
            p.boot.memory().len(),
            if p.boot.memory_dropped > 0 {
                " (map truncated)"
            } else {
                ""
            },
            match p.heap {
                Some(h) => alloc::format!("{:#x}+{} MiB", h.start, h.len >> 20),
                None => alloc::string::String::from("none"),
            }
        );
        match &p.acpi {
            Ok(a) => {
                print!("acpi: rsdp {:#x} rev {} tables", a.rsdp, a.revision);
                for name in a.table_names() {
                    print!(" {name}");
                }
                if a.bad_tables > 0 {
                    print!(" ({} bad)", a.bad_tables);
                }
                println!();
            }
            Err(e) => println!("acpi: unavailable ({e:?})"),
        }
        match p.pci {
            PciMechanism::Ecam(w) => println!(
                "pci: ecam {:#x} buses {}..={}, {} functions",
                w.base,
                w.start_bus,
                w.end_bus,
                pci_devices().len()
            ),
            PciMechanism::LegacyPorts => {
                println!("pci: ports 0xcf8/0xcfc, {} functions", pci_devices().len())
            }
            PciMechanism::None => println!("pci: no host bridge"),
        }
        for d in pci_devices() {
            println!("pci: {d}");
        }
        if let Some(a) = &p.pci_bars {
            let w = &a.windows;
            print!(
                "pci: firmware left memory BARs unassigned; windows {:#x}..{:#x}",
                w.below_4g.start, w.below_4g.end
            );
            match &w.above_4g {
                Some(high) => println!(" and {:#x}..{:#x}", high.start, high.end),
                None => println!(),
            }
            for r in &a.reports {
                println!("pci: {r}");
            }
        }
        for d in virtio_mmio_devices(p.boot.cmdline()) {
            println!("virtio-mmio: {:#x}+{:#x} irq {}", d.base, d.size, d.irq);
        }
        for d in acpi_virtio_mmio_devices() {
            println!(
                "virtio-mmio: {:#x}+{:#x} irq {} (acpi dsdt)",
                d.base, d.size, d.irq
            );
        }
        println!("cmdline: {}", p.boot.cmdline());
    }
}

#[cfg(all(target_os = "none", not(test)))]
pub use bring_up::{banner, init};
