//! The stub's run under UEFI: every firmware call, in order.
//!
//! 1. Disable the boot watchdog (a stopped stub must stay on screen, not reset after five
//!    minutes), program COM1, print the banner.
//! 2. Read `\relay.conf` from the partition this image was loaded from, check its form and
//!    its values (`netoops_uefi::conf`); any problem is printed and the machine stops here, while
//!    the firmware console (the screen) still works.
//! 3. Check the embedded kernel (`netoops_uefi::kernel`), claim its physical range (as
//!    LoaderCode, which firmware NX policies leave executable) and copy it there; claim the
//!    handoff pages below 4 GiB; find the ACPI RSDP in the configuration table.
//! 4. ExitBootServices, convert the final memory map and write the `hvm_start_info`
//!    (`netoops_uefi::handoff`), then jump to the kernel's 64-bit entry with its address in rdi.
//!    From here on only COM1 exists; the kernel replaces page tables, GDT, IDT and stack.

use crate::com1::{self, Com1};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use netoops_uefi::{conf, devpath, handoff, kernel};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap as _;
use uefi::proto::media::file::{File, FileAttribute, FileMode};
use uefi::runtime::{self, VariableVendor};
use uefi::system;
use uefi::table::cfg::ConfigTableEntry;
use uefi::{cstr16, Status};

/// The kernel ELF, embedded at build time (`netoops-image uefi` sets the path).
static KERNEL: &[u8] = include_bytes!(env!("NETOOPS_KERNEL_ELF"));

/// isa-debug-exit code when the stub cannot boot the kernel (the kernel's EXIT_FAILURE;
/// QEMU exits with status 35).
pub const EXIT_FAILURE: u32 = 0x11;
/// isa-debug-exit code after a panic in the stub (the kernel's EXIT_PANIC; status 39).
pub const EXIT_PANIC: u32 = 0x13;

/// Where the stub's messages go.
struct Console {
    /// Write COM1 directly as well (the firmware console has no serial port).
    mirror: bool,
}

/// Set just before ExitBootServices: from then on only COM1 exists.
static EXITED: AtomicBool = AtomicBool::new(false);

impl Console {
    fn line(&self, args: fmt::Arguments<'_>) {
        let exited = EXITED.load(Ordering::Relaxed);
        if !exited {
            system::with_stdout(|out| {
                let _ = out.write_fmt(args);
                let _ = out.write_str("\n");
            });
        }
        if self.mirror || exited {
            let _ = Com1.write_fmt(args);
            let _ = Com1.write_str("\n");
        }
    }
}

macro_rules! say {
    ($console:expr, $($arg:tt)*) => ($console.line(format_args!($($arg)*)));
}

/// Why the stub stops.
enum Fatal {
    Conf(conf::ConfError),
    Kernel(kernel::ElfError),
    FiveLevelPaging,
    KernelRangeBusy {
        start: u64,
        end: u64,
        status: Status,
    },
    NoHandoffMemory(Status),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Conf(e) => write!(f, "{e}"),
            Fatal::Kernel(e) => write!(f, "the embedded kernel is unusable: {e}"),
            Fatal::FiveLevelPaging => write!(
                f,
                "the firmware runs with 5-level paging, which the kernel's entry cannot leave"
            ),
            Fatal::KernelRangeBusy { start, end, status } => write!(
                f,
                "the kernel's memory {start:#x}..{end:#x} is in use by the firmware ({status:?}); \
                 this machine cannot load it"
            ),
            Fatal::NoHandoffMemory(status) => {
                write!(
                    f,
                    "no memory below 4 GiB for the boot information ({status:?})"
                )
            }
        }
    }
}

/// Everything prepared while boot services still run.
struct Prepared {
    cmdline: String,
    plan: kernel::LoadPlan,
    handoff: *mut u8,
    map: &'static mut handoff::MemoryMap,
    rsdp: Option<u64>,
}

/// The stub's `main`; returns only on a firmware that ignores the halt.
pub fn main() -> Status {
    com1::init();
    let console = Console {
        mirror: !firmware_console_on_serial(),
    };
    // Boot managers arm a 5-minute watchdog for every boot option; ExitBootServices
    // disarms it too, but a stub that stops on an error must not be reset under the user.
    let _ = boot::set_watchdog_timer(0, 0x1_0000, None);
    say!(
        console,
        "netoops-relay {} UEFI stub: kernel image {} KiB",
        env!("CARGO_PKG_VERSION"),
        KERNEL.len().div_ceil(1024)
    );
    match prepare(&console) {
        Ok(prepared) => launch(&console, prepared),
        Err(fatal) => stop(&console, &fatal),
    }
}

fn firmware_console_on_serial() -> bool {
    let mut buf = [0u8; 2048];
    match runtime::get_variable(
        cstr16!("ConOut"),
        &VariableVendor::GLOBAL_VARIABLE,
        &mut buf,
    ) {
        Ok((path, _)) => devpath::has_uart_node(path),
        Err(_) => false,
    }
}

fn five_level_paging() -> bool {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects at ring 0, where UEFI applications run.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags))
    };
    cr4 & (1 << 12) != 0
}

fn read_relay_conf() -> Result<Vec<u8>, conf::ConfError> {
    let unreadable = |e: uefi::Error| conf::ConfError::Unreadable(e.status().0);
    let mut fs = boot::get_image_file_system(boot::image_handle()).map_err(unreadable)?;
    let mut root = fs.open_volume().map_err(unreadable)?;
    let handle = match root.open(
        cstr16!("relay.conf"),
        FileMode::Read,
        FileAttribute::empty(),
    ) {
        Ok(h) => h,
        Err(e) if e.status() == Status::NOT_FOUND => return Err(conf::ConfError::Missing),
        Err(e) => return Err(unreadable(e)),
    };
    let mut file = handle.into_regular_file().ok_or(conf::ConfError::Missing)?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read(&mut chunk).map_err(unreadable)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > conf::FILE_MAX {
            return Err(conf::ConfError::TooLarge {
                bytes: bytes.len() as u64,
            });
        }
    }
}

fn prepare(console: &Console) -> Result<Prepared, Fatal> {
    if five_level_paging() {
        return Err(Fatal::FiveLevelPaging);
    }
    let text = read_relay_conf().map_err(Fatal::Conf)?;
    let cmdline = conf::to_cmdline(&text).map_err(Fatal::Conf)?;
    let checked = conf::check(&text).map_err(Fatal::Conf)?;
    say!(console, "relay.conf: {}", conf::summary(&checked));

    let plan = kernel::plan(KERNEL).map_err(Fatal::Kernel)?;
    boot::allocate_pages(
        AllocateType::Address(plan.start),
        MemoryType::LOADER_CODE,
        plan.pages(),
    )
    .map_err(|e| Fatal::KernelRangeBusy {
        start: plan.start,
        end: plan.end,
        status: e.status(),
    })?;
    for segment in plan.segments() {
        let source = &KERNEL[segment.offset..segment.offset + segment.file_size];
        let target = segment.phys as *mut u8;
        // SAFETY: `plan` checked every segment against the ELF and against 4 GiB, and the
        // pages covering [plan.start, plan.end) were just allocated to us; UEFI identity
        // maps memory, so the physical address is the pointer.
        unsafe {
            core::ptr::copy_nonoverlapping(source.as_ptr(), target, source.len());
            core::ptr::write_bytes(
                target.add(source.len()),
                0,
                (segment.mem_size - source.len() as u64) as usize,
            );
        }
    }

    let handoff = boot::allocate_pages(
        AllocateType::MaxAddress(0xffff_ffff),
        MemoryType::LOADER_DATA,
        handoff::HANDOFF_PAGES,
    )
    .map_err(|e| Fatal::NoHandoffMemory(e.status()))?;
    let rsdp = system::with_config_table(|entries| {
        let find = |guid| {
            entries
                .iter()
                .find(|e| e.guid == guid)
                .map(|e| e.address as u64)
        };
        find(ConfigTableEntry::ACPI2_GUID).or_else(|| find(ConfigTableEntry::ACPI_GUID))
    });
    // Filled after ExitBootServices, when no allocation is possible: allocate it now and
    // never free it (the kernel reclaims loader memory as a whole).
    let map = Box::leak(Box::new(handoff::MemoryMap::default()));
    Ok(Prepared {
        cmdline,
        plan,
        handoff: handoff.as_ptr(),
        map,
        rsdp,
    })
}

fn launch(console: &Console, p: Prepared) -> ! {
    match p.rsdp {
        Some(rsdp) => say!(console, "acpi: rsdp {rsdp:#x}"),
        None => say!(console, "acpi: no RSDP in the configuration table"),
    }
    say!(
        console,
        "kernel: {:#x}..{:#x}, entry {:#x}; exiting boot services, console continues on COM1 \
         (115200 8N1)",
        p.plan.start,
        p.plan.end,
        p.plan.entry
    );
    EXITED.store(true, Ordering::Relaxed);
    // SAFETY: nothing borrowed from boot services is used after this call: the file system
    // and console protocols were dropped or are not touched again (`Console` checks), and
    // everything the jump needs was allocated above and is never freed.
    let uefi_map = unsafe { boot::exit_boot_services(None) };
    for d in uefi_map.entries() {
        p.map.push_uefi(d.ty.0, d.phys_start, d.page_count);
    }
    p.map.finish();
    // SAFETY: `handoff` points to HANDOFF_PAGES pages allocated for us above.
    let area = unsafe { core::slice::from_raw_parts_mut(p.handoff, handoff::HANDOFF_PAGES * 4096) };
    let base = p.handoff as u64;
    if let Err(e) = handoff::write(area, base, &p.cmdline, p.rsdp, p.map) {
        say!(
            console,
            "netoops-relay: cannot hand over to the kernel: {e:?}; stopped"
        );
        com1::debug_exit(EXIT_FAILURE);
        halt();
    }
    say!(
        console,
        "uefi: boot services exited, {} memory regions{}; entering the kernel",
        p.map.regions().len(),
        if p.map.dropped > 0 {
            " (map truncated)"
        } else {
            ""
        }
    );
    // SAFETY: the kernel was copied to its link address and its 64-bit entry expects
    // exactly this state: long mode, identity mapping (the firmware's, still loaded),
    // interrupts in any state (it clears IF), the hvm_start_info address in edi, below 4 GiB.
    unsafe {
        core::arch::asm!(
            "jmp {entry}",
            entry = in(reg) p.plan.entry,
            in("rdi") base,
            options(noreturn)
        )
    }
}

fn stop(console: &Console, fatal: &Fatal) -> ! {
    say!(console, "netoops-relay: {fatal}");
    say!(
        console,
        "netoops-relay: stopped. Fix the problem (relay.conf is on the EFI system partition) \
         and restart."
    );
    com1::debug_exit(EXIT_FAILURE);
    loop {
        boot::stall(core::time::Duration::from_secs(1));
    }
}

/// Stops the CPU for good (after ExitBootServices).
pub fn halt() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
