//! Boot self-tests chosen with `selftest=` on the command line, for the end-to-end tests.
//!
//! - `exit`: checks heap, DMA memory, the clock and an MMIO mapping above 4 GiB, prints
//!   `selftest: exit ok`, and ends QEMU with `EXIT_SUCCESS` (or `EXIT_FAILURE` naming the
//!   check that failed).
//! - `fault` (#UD) and `pagefault` (#PF on an unmapped address): prove that exceptions are
//!   reported on the console and end the machine with `EXIT_FAULT` instead of a triple fault.
//! - `panic`: proves the panic handler reports and exits with `EXIT_PANIC`.
//! - `stackoverflow` and `nullread`: prove the guard pages (below the stack, page 0) turn
//!   an overflow into a reported double fault and a null read into a reported page fault.
//! - `idle`: enables the local APIC and halts 200 times for 100 us on its timer; each halt
//!   must be woken by exactly one timer interrupt, take at least 100 us, and no other
//!   interrupt may arrive (`selftest: idle ok ...`, `EXIT_SUCCESS`). `idlefault` then raises
//!   #UD to prove faults are still reported with the APIC on.

use crate::platform::{self, EXIT_FAILURE, EXIT_SUCCESS};
use crate::println;
use alloc::vec::Vec;

/// Runs the self-test named by `name`; returns only for unknown names.
pub fn run(name: &str) {
    match name {
        "exit" => {
            let verdict = checks();
            match verdict {
                Ok(()) => {
                    println!("selftest: exit ok");
                    platform::exit_qemu(EXIT_SUCCESS)
                }
                Err(what) => {
                    println!("selftest: FAILED: {what}");
                    platform::exit_qemu(EXIT_FAILURE)
                }
            }
        }
        "fault" => {
            println!("selftest: raising #UD");
            // SAFETY: deliberately executes an invalid opcode; the #UD handler reports and
            // ends the machine, so nothing after it runs.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        "pagefault" => {
            println!("selftest: reading an unmapped address");
            let unmapped = 0x0000_7f00_0000_0000u64 as *const u64;
            // SAFETY: deliberately faults: nothing is mapped at 127 TiB; the #PF handler
            // reports and ends the machine.
            let value = unsafe { core::ptr::read_volatile(unmapped) };
            println!("selftest: FAILED: read {value:#x} from an unmapped address");
            platform::exit_qemu(EXIT_FAILURE)
        }
        "panic" => panic!("selftest panic"),
        "stackoverflow" => {
            println!("selftest: recursing until the stack guard page");
            let depth = recurse(0);
            println!("selftest: FAILED: recursion returned at depth {depth}");
            platform::exit_qemu(EXIT_FAILURE)
        }
        "nullread" => {
            println!("selftest: reading address 0");
            // SAFETY: deliberately faults: page 0 is unmapped after bring-up.
            let value = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            println!("selftest: FAILED: read {value:#x} at address 0");
            platform::exit_qemu(EXIT_FAILURE)
        }
        "idle" | "idlefault" => {
            match idle_halts() {
                Ok(()) if name == "idlefault" => {
                    println!("selftest: raising #UD with the APIC timer on");
                    // SAFETY: as for `fault`.
                    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
                }
                Ok(()) => platform::exit_qemu(EXIT_SUCCESS),
                Err(what) => {
                    println!("selftest: FAILED: {what}");
                    platform::exit_qemu(EXIT_FAILURE)
                }
            }
        }
        other => println!("selftest: unknown {other:?}, ignored"),
    }
}

fn checks() -> Result<(), &'static str> {
    let v: Vec<u64> = (0..10_000).collect();
    if v.iter().sum::<u64>() != 49_995_000 {
        return Err("heap vector contents");
    }
    let (ptr, phys) = platform::dma_alloc(8192, 4096);
    if phys % 4096 != 0 || phys != platform::virt_to_phys(ptr.as_ptr()) {
        return Err("dma_alloc alignment or address");
    }
    // SAFETY: dma_alloc returned 8192 zeroed bytes.
    let bytes = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), 8192) };
    if bytes.iter().any(|&b| b != 0) {
        return Err("dma_alloc memory not zeroed");
    }
    // The fastest of three: a host that preempts the vCPU only ever makes one look longer.
    let elapsed = (0..3)
        .map(|_| {
            let t0 = platform::now_micros();
            let start = platform::tsc();
            while platform::tsc() - start < platform::tsc_hz() / 1000 {
                core::hint::spin_loop();
            }
            platform::now_micros() - t0
        })
        .min()
        .unwrap_or(0);
    if !(900..=5_000).contains(&elapsed) {
        println!("selftest: 1 ms of TSC measured as {elapsed} us");
        return Err("clock");
    }
    // An address above 4 GiB where nothing is: QEMU reads unassigned memory as all ones
    // or zeros; the point is that mapping and touching it does not fault.
    let high = platform::map_mmio(0x40_0000_0000, 0x1000);
    // SAFETY: just mapped uncached; reading unassigned physical memory has no effect.
    let _ = unsafe { core::ptr::read_volatile(high.as_ptr().cast::<u32>()) };
    high_bars()?;
    println!(
        "selftest: heap, dma, clock ({elapsed} us per 1 ms), mmio above 4 GiB ok; {} PCI functions",
        platform::pci_devices().len()
    );
    Ok(())
}

/// Halts on the APIC timer and checks what woke each halt and how long it took.
fn idle_halts() -> Result<(), &'static str> {
    use platform::apic::{self, TIMER_VECTOR};
    const HALTS: u64 = 200;
    const MICROS: u64 = 100;
    let lapic = apic::init().map_err(|e| {
        println!("selftest: no APIC timer: {e:?}");
        "APIC init"
    })?;
    println!("selftest: {lapic}");
    let (timer0, stray0) = (apic::interrupts_on(TIMER_VECTOR), apic::stray_interrupts());
    let mut shortest = u64::MAX;
    let start = platform::now_micros();
    for _ in 0..HALTS {
        let t0 = platform::now_micros();
        let ticks = MICROS * platform::tsc_hz() / 1_000_000;
        lapic.halt_until(MICROS, platform::tsc() + ticks);
        shortest = shortest.min(platform::now_micros() - t0);
    }
    let total = platform::now_micros() - start;
    let timer = apic::interrupts_on(TIMER_VECTOR) - timer0;
    let stray = apic::stray_interrupts() - stray0;
    println!(
        "selftest: idle: {HALTS} halts of {MICROS} us: {timer} timer interrupts, {stray} \
         stray, shortest {shortest} us, {} us on average",
        total / HALTS
    );
    if timer != HALTS {
        return Err("one timer interrupt per halt");
    }
    if stray != 0 {
        return Err("stray interrupts");
    }
    if shortest < MICROS * 9 / 10 {
        return Err("a halt ended before its timer");
    }
    println!("selftest: idle ok");
    Ok(())
}

/// Maps every memory BAR the firmware placed above 4 GiB. An ivshmem device's BAR 2 is
/// plain shared RAM, so there a pattern is written and read back through the uncached
/// mapping: the end-to-end proof that `map_mmio` reaches 64-bit BARs.
fn high_bars() -> Result<(), &'static str> {
    const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);
    for device in platform::pci_devices() {
        for (index, bar) in device.bars.iter().enumerate() {
            let Some((address, size)) = bar.memory_range() else {
                continue;
            };
            if address < 1 << 32 {
                continue;
            }
            device.enable_bus_master();
            let len = size.min(1 << 21) as usize;
            let base = platform::map_mmio(address, len).as_ptr().cast::<u32>();
            let is_ram = (device.vendor_id, device.device_id) == IVSHMEM && index == 2;
            if is_ram {
                for i in 0..1024usize {
                    // SAFETY: `base` maps at least 2 MiB (or the whole BAR) of shared RAM;
                    // i * 4 < 4096 stays inside it.
                    unsafe { core::ptr::write_volatile(base.add(i), 0x5eed_0000 ^ i as u32) };
                }
                for i in 0..1024usize {
                    // SAFETY: as above.
                    if unsafe { core::ptr::read_volatile(base.add(i)) } != 0x5eed_0000 ^ i as u32 {
                        return Err("ivshmem BAR above 4 GiB: pattern mismatch");
                    }
                }
            } else {
                // SAFETY: mapped above; reading dword 0 of a memory BAR is side-effect free
                // for the devices QEMU offers with 64-bit BARs (memory, not FIFOs).
                let _ = unsafe { core::ptr::read_volatile(base) };
            }
            println!(
                "selftest: {} bar{index} at {address:#x} mapped uncached{}",
                device.address,
                if is_ram {
                    ", 4 KiB pattern written and read back"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Recurses with 4 KiB frames until the stack runs into its guard page.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth as u8; 4096]);
    if depth > 1_000_000 {
        return depth;
    }
    recurse(depth + 1) + u64::from(frame[usize::try_from(depth % 4096).unwrap_or(0)])
}
