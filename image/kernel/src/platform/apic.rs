//! The local APIC, used for one thing: a one-shot timer that wakes an idle `hlt`.
//!
//! Every device stays in poll mode with its interrupts off; the only interrupt the kernel
//! ever takes is this timer's, and only inside [`LocalApic::halt_until`]'s `sti; hlt` window.
//! [`init`] finds the APIC (CPUID, `IA32_APIC_BASE`), uses x2APIC MSRs when the firmware left
//! x2APIC on and the xAPIC page (mapped uncached) otherwise, masks the 8259 PICs and every
//! local vector table entry except LINT1 (NMI, which the exception reporter handles), and
//! picks the timer: TSC-deadline when CPUID offers it (no calibration), otherwise one-shot
//! count-down calibrated against the TSC.
//!
//! Vectors 32..=255 all get a 16-byte entry stub that counts the vector, sends EOI (not for
//! the spurious vector), and returns with IF clear, so one `hlt` window takes at most one
//! interrupt however many are pending. A stray vector (anything but the timer) is therefore
//! counted, never fatal; [`stray_interrupts`] reports them.

use core::sync::atomic::{AtomicU64, Ordering};

/// The timer's vector (high priority class, clear of the 8259s' vectors under any firmware).
pub const TIMER_VECTOR: u8 = 0xec;
/// The spurious-interrupt vector (low four bits set, as old APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Bytes between interrupt entry stubs (see the assembly below).
pub const STUB_STRIDE: u64 = 16;

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Register offsets in the xAPIC page; the x2APIC MSR is `0x800 + offset / 16`.
mod reg {
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xb0;
    pub const SPURIOUS: u32 = 0xf0;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
const SPURIOUS_APIC_ENABLE: u32 = 1 << 8;
/// Divide configuration 0b0011: the timer counts at the APIC clock / 16.
const DIVIDE_BY_16: u32 = 0b0011;

/// The x2APIC MSR for an xAPIC register offset.
pub const fn x2apic_msr(offset: u32) -> u32 {
    0x800 + (offset >> 4)
}

/// The LVT timer value: `vector`, unmasked, one-shot or TSC-deadline mode.
pub const fn lvt_timer(vector: u8, tsc_deadline: bool) -> u32 {
    vector as u32
        | if tsc_deadline {
            LVT_TIMER_TSC_DEADLINE
        } else {
            0
        }
}

/// The number of LVT entries beyond the first five, from the version register (bits 16..24
/// hold the index of the last entry): CMCI exists when it is 6 or more.
pub const fn has_cmci(version: u32) -> bool {
    (version >> 16) & 0xff >= 6
}

/// The one-shot timer's rate as a 32.32 fixed-point count per microsecond, from a
/// calibration that saw `counted` timer ticks over `tsc_ticks` TSC ticks at `tsc_hz`.
/// `None` when the result is implausible (below 1 MHz or above 10 GHz).
pub fn counts_per_micro(counted: u64, tsc_ticks: u64, tsc_hz: u64) -> Option<u64> {
    if tsc_ticks == 0 || tsc_hz == 0 {
        return None;
    }
    let hz = u128::from(counted) * u128::from(tsc_hz) / u128::from(tsc_ticks);
    if !(1_000_000..=10_000_000_000).contains(&hz) {
        return None;
    }
    u64::try_from((hz << 32) / 1_000_000).ok()
}

/// The initial count for a one-shot of `micros` at `per_micro` (32.32), at least 1 (a zero
/// count stops the timer) and at most `u32::MAX`.
pub fn one_shot_count(micros: u64, per_micro: u64) -> u32 {
    let count = (u128::from(micros) * u128::from(per_micro)) >> 32;
    u32::try_from(count).unwrap_or(u32::MAX).max(1)
}

/// How the APIC registers are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// x2APIC mode: MSRs.
    X2Apic,
    /// xAPIC mode: the register page at this (identity-mapped, uncached) address.
    Mmio(u64),
}

/// Which timer wakes the idle halt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// `IA32_TSC_DEADLINE`: an absolute TSC value.
    TscDeadline,
    /// One-shot count-down; the rate in counts per microsecond, 32.32 fixed point.
    OneShot {
        /// Counts per microsecond, 32.32.
        per_micro: u64,
    },
}

/// Why there is no APIC timer; the kernel then spins when idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID says there is no local APIC.
    Absent,
    /// The one-shot timer did not count plausibly against the TSC (the count seen).
    Calibration(u64),
}

/// The enabled local APIC and its timer.
#[derive(Clone, Copy, Debug)]
pub struct LocalApic {
    /// Register access.
    pub access: Access,
    /// Timer mode.
    pub timer: TimerMode,
}

impl core::fmt::Display for LocalApic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.access {
            Access::X2Apic => f.write_str("x2APIC")?,
            Access::Mmio(base) => write!(f, "xAPIC at {base:#x}")?,
        }
        match self.timer {
            TimerMode::TscDeadline => f.write_str(", TSC-deadline timer"),
            TimerMode::OneShot { per_micro } => {
                let khz = (u128::from(per_micro) * 1000) >> 32;
                write!(f, ", one-shot timer at {khz} kHz")
            }
        }
    }
}

/// Interrupts taken, by vector (written by the entry stubs).
static IRQ_COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Address of the xAPIC EOI register, or 0 in x2APIC mode (read by the entry stubs).
static EOI_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// Interrupts taken on `vector` since boot.
pub fn interrupts_on(vector: u8) -> u64 {
    IRQ_COUNTS[usize::from(vector)].load(Ordering::Relaxed)
}

/// Interrupts taken on vectors other than the timer's since boot (spurious included).
pub fn stray_interrupts() -> u64 {
    IRQ_COUNTS
        .iter()
        .enumerate()
        .filter(|&(v, _)| v != usize::from(TIMER_VECTOR))
        .map(|(_, c)| c.load(Ordering::Relaxed))
        .sum()
}

#[cfg(all(target_os = "none", not(test)))]
mod machine {
    use super::*;
    use crate::platform::{clock, interrupts, paging, port};

    /// Reads an MSR.
    ///
    /// # Safety
    /// `msr` must exist on this CPU.
    unsafe fn rdmsr(msr: u32) -> u64 {
        let (low, high): (u32, u32);
        // SAFETY: the caller guarantees the MSR exists; rdmsr only reads it.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high,
                options(nomem, nostack, preserves_flags));
        }
        u64::from(high) << 32 | u64::from(low)
    }

    /// Writes an MSR.
    ///
    /// # Safety
    /// `msr` must exist and `value` must be valid for it; the write has its architectural
    /// effect.
    unsafe fn wrmsr(msr: u32, value: u64) {
        // SAFETY: per the caller.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
                in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
        }
    }

    impl LocalApic {
        fn read(&self, offset: u32) -> u32 {
            match self.access {
                // SAFETY: x2APIC mode is on (checked at init), so its register MSRs exist.
                Access::X2Apic => unsafe { rdmsr(x2apic_msr(offset)) as u32 },
                // SAFETY: the register page is mapped uncached and `offset` is a register in it.
                Access::Mmio(base) => unsafe {
                    core::ptr::read_volatile((base + u64::from(offset)) as *const u32)
                },
            }
        }

        fn write(&self, offset: u32, value: u32) {
            match self.access {
                // SAFETY: as in `read`; every caller writes a value valid for the register.
                Access::X2Apic => unsafe { wrmsr(x2apic_msr(offset), u64::from(value)) },
                // SAFETY: as in `read`.
                Access::Mmio(base) => unsafe {
                    core::ptr::write_volatile((base + u64::from(offset)) as *mut u32, value)
                },
            }
        }

        /// Arms the timer for `micros` (TSC `deadline_tsc` in deadline mode), enables
        /// interrupts and halts until the timer (or anything else) interrupts; returns with
        /// interrupts off. The timer is one-shot: a wake by something else leaves it armed,
        /// and it then ends the next halt early, which costs one short spin.
        pub fn halt_until(&self, micros: u64, deadline_tsc: u64) {
            match self.timer {
                // SAFETY: CPUID reported TSC-deadline and the LVT timer is in that mode.
                TimerMode::TscDeadline => unsafe { wrmsr(IA32_TSC_DEADLINE, deadline_tsc) },
                TimerMode::OneShot { per_micro } => {
                    self.write(reg::TIMER_INITIAL, one_shot_count(micros, per_micro));
                }
            }
            // SAFETY: `sti` takes effect after `hlt` (the interrupt shadow), so an interrupt
            // already pending wakes the `hlt` rather than being taken before it. Every vector
            // has an entry stub that returns with IF clear, and `cli` covers a wake by NMI.
            // The stubs push onto this stack (so the asm is not `nostack`), touch only their
            // counters and the EOI register, and preserve every register.
            unsafe { core::arch::asm!("sti", "hlt", "cli") };
        }
    }

    /// Masks both 8259 PICs (every IRQ line). On machines without them the writes go nowhere.
    fn mask_pics() {
        // SAFETY: 0x21/0xa1 are the 8259 data ports; with no initialization command pending
        // a write sets the interrupt mask. Nothing else in the kernel uses the PICs.
        unsafe {
            port::outb(0x21, 0xff);
            port::outb(0xa1, 0xff);
        }
    }

    /// Finds and enables the local APIC, masks every other interrupt source, installs the
    /// entry stubs and picks and calibrates the timer. Call once at boot, interrupts off,
    /// after the clock is calibrated and the heap is up.
    pub fn init() -> Result<LocalApic, ApicError> {
        mask_pics();
        let leaf1 = core::arch::x86_64::__cpuid(1);
        if leaf1.edx & (1 << 9) == 0 {
            return Err(ApicError::Absent);
        }
        let tsc_deadline = leaf1.ecx & (1 << 24) != 0;
        // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (CPUID.1:EDX.APIC).
        let mut base = unsafe { rdmsr(IA32_APIC_BASE) };
        if base & APIC_BASE_ENABLE == 0 {
            base |= APIC_BASE_ENABLE;
            // SAFETY: setting the global enable bit keeps the base address and mode.
            unsafe { wrmsr(IA32_APIC_BASE, base) };
        }
        let access = if base & APIC_BASE_X2APIC != 0 {
            Access::X2Apic
        } else {
            let page = base & APIC_BASE_ADDRESS;
            Access::Mmio(paging::map_mmio(page, 4096).as_ptr() as u64)
        };
        let eoi = match access {
            Access::X2Apic => 0,
            Access::Mmio(page) => page + u64::from(reg::EOI),
        };
        EOI_ADDRESS.store(eoi, Ordering::Relaxed);
        install_stubs();

        let mut apic = LocalApic {
            access,
            timer: TimerMode::TscDeadline,
        };
        // Everything masked but LINT1 (NMI): no PIC through LINT0, no error, perf or
        // thermal interrupts. The timer stays masked until it is set up below.
        for lvt in [
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT0,
            reg::LVT_ERROR,
        ] {
            apic.write(lvt, LVT_MASKED);
        }
        if has_cmci(apic.read(reg::VERSION)) {
            apic.write(reg::LVT_CMCI, LVT_MASKED);
        }
        apic.write(reg::TPR, 0);
        apic.write(
            reg::SPURIOUS,
            SPURIOUS_APIC_ENABLE | u32::from(SPURIOUS_VECTOR),
        );

        if tsc_deadline {
            apic.write(reg::LVT_TIMER, lvt_timer(TIMER_VECTOR, true));
        } else {
            apic.timer = TimerMode::OneShot {
                per_micro: calibrate(&apic)?,
            };
            apic.write(reg::LVT_TIMER, lvt_timer(TIMER_VECTOR, false));
        }
        Ok(apic)
    }

    /// Counts the masked one-shot timer against the TSC for 100 us (thousands of counts at
    /// any APIC clock: plenty for halts that need no precision).
    fn calibrate(apic: &LocalApic) -> Result<u64, ApicError> {
        const WINDOW_US: u64 = 100;
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_16);
        let window = clock::tsc_hz() * WINDOW_US / 1_000_000;
        let start = clock::tsc();
        apic.write(reg::TIMER_INITIAL, u32::MAX);
        while clock::tsc().wrapping_sub(start) < window {
            core::hint::spin_loop();
        }
        let current = apic.read(reg::TIMER_CURRENT);
        let elapsed = clock::tsc().wrapping_sub(start);
        apic.write(reg::TIMER_INITIAL, 0);
        let counted = u64::from(u32::MAX - current);
        counts_per_micro(counted, elapsed, clock::tsc_hz()).ok_or(ApicError::Calibration(counted))
    }

    unsafe extern "C" {
        /// The first of the 224 entry stubs (vectors 32..=255), [`STUB_STRIDE`] bytes apart.
        static apic_entry_stubs: u8;
    }

    fn install_stubs() {
        let first = &raw const apic_entry_stubs as u64;
        for vector in 32..=255u8 {
            let stub = first + u64::from(vector - 32) * STUB_STRIDE;
            interrupts::set_interrupt_gate(vector, stub);
        }
    }

    // Entry: [rsp] = vector (pushed by the stub), then the CPU's rip, cs, rflags, rsp, ss.
    // After saving rax, rcx and rdx the saved rflags is at [rsp + 48].
    core::arch::global_asm!(
        r#"
.section .text.apic_entry, "ax"
.p2align 4
.global apic_entry_stubs
apic_entry_stubs:
.set apic_vector, 32
.rept 224
    .p2align 4
    push apic_vector
    jmp apic_entry_common
    .set apic_vector, apic_vector + 1
.endr

apic_entry_common:
    push rax
    push rcx
    push rdx
    mov rax, [rsp + 24]
    lea rcx, [rip + {counts}]
    inc qword ptr [rcx + rax * 8]
    cmp eax, {spurious}
    je 2f
    mov rax, [rip + {eoi}]
    test rax, rax
    jz 1f
    mov dword ptr [rax], 0
    jmp 2f
1:
    mov ecx, {x2apic_eoi}
    xor eax, eax
    xor edx, edx
    wrmsr
2:
    and qword ptr [rsp + 48], -513
    pop rdx
    pop rcx
    pop rax
    add rsp, 8
    iretq
"#,
        counts = sym IRQ_COUNTS,
        eoi = sym EOI_ADDRESS,
        spurious = const SPURIOUS_VECTOR,
        x2apic_eoi = const x2apic_msr(reg::EOI),
    );
}

#[cfg(all(target_os = "none", not(test)))]
pub use machine::init;

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn x2apic_msrs_follow_the_register_offsets() {
        assert_eq!(x2apic_msr(reg::EOI), 0x80b);
        assert_eq!(x2apic_msr(reg::LVT_TIMER), 0x832);
        assert_eq!(x2apic_msr(reg::TIMER_INITIAL), 0x838);
        assert_eq!(x2apic_msr(reg::SPURIOUS), 0x80f);
    }

    #[test]
    fn lvt_timer_values_select_the_mode_and_stay_unmasked() {
        assert_eq!(lvt_timer(0xec, false), 0xec);
        assert_eq!(lvt_timer(0xec, true), 0x4_00ec);
        assert_eq!(lvt_timer(0xec, true) & LVT_MASKED, 0);
    }

    #[test]
    fn cmci_only_with_seven_lvt_entries() {
        // QEMU's APIC: version 0x14, last LVT index 5 (no CMCI).
        assert!(!has_cmci(0x0005_0014));
        assert!(has_cmci(0x0006_0015));
    }

    #[test]
    fn calibration_gives_counts_per_microsecond() {
        // QEMU: 1 GHz APIC clock / 16 = 62.5 MHz, seen over 500 us of a 2.5 GHz TSC.
        let per = counts_per_micro(31_250, 1_250_000, 2_500_000_000).unwrap();
        assert_eq!(per, 62_500u64 * (1 << 32) / 1000);
        assert_eq!(one_shot_count(100, per), 6250);
        assert_eq!(one_shot_count(0, per), 1, "a zero count would never fire");
        assert_eq!(one_shot_count(u64::MAX / 2, per), u32::MAX);
    }

    #[test]
    fn implausible_calibrations_are_refused() {
        assert_eq!(counts_per_micro(0, 1_250_000, 2_500_000_000), None);
        assert_eq!(counts_per_micro(100, 0, 2_500_000_000), None);
        assert_eq!(counts_per_micro(u64::MAX, 1, 2_500_000_000), None);
    }

    #[test]
    fn the_console_names_mode_and_rate() {
        let apic = LocalApic {
            access: Access::Mmio(0xfee0_0000),
            timer: TimerMode::OneShot {
                per_micro: 62_500u64 * (1 << 32) / 1000,
            },
        };
        assert_eq!(
            apic.to_string(),
            "xAPIC at 0xfee00000, one-shot timer at 62500 kHz"
        );
        let apic = LocalApic {
            access: Access::X2Apic,
            timer: TimerMode::TscDeadline,
        };
        assert_eq!(apic.to_string(), "x2APIC, TSC-deadline timer");
    }

    #[test]
    fn stray_counts_leave_the_timer_out() {
        let before = stray_interrupts();
        IRQ_COUNTS[usize::from(TIMER_VECTOR)].fetch_add(3, Ordering::Relaxed);
        IRQ_COUNTS[0x27].fetch_add(2, Ordering::Relaxed);
        assert_eq!(stray_interrupts() - before, 2);
        assert!(interrupts_on(TIMER_VECTOR) >= 3);
    }
}
