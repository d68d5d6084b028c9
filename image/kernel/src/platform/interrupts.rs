//! GDT with a TSS, and an IDT whose 32 exception handlers report and stop.
//!
//! The appliance polls and takes interrupts only in its idle halt ([`super::apic`]), so the
//! IDT exists mainly for one reason: a fault must print what happened on the serial console and end the machine, never triple
//! fault silently. Each vector has a small assembly stub that pushes a uniform frame
//! (a zero error code where the CPU pushes none, the vector, all general registers) and calls
//! [`exception_report`]. Double fault, NMI and machine check run on their own IST stack so a
//! kernel stack overflow still gets reported. Vectors 32..256 stay not-present (a stray one
//! raises #GP whose error code names it) until [`super::apic`] installs its entry stubs
//! through [`set_interrupt_gate`] for the idle halt's timer.

use super::serial::emergency_writer;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

/// The register state an exception stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Mnemonic of an exception vector.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved 15",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualization",
        "#CP control protection",
        "reserved 22",
        "reserved 23",
        "reserved 24",
        "reserved 25",
        "reserved 26",
        "reserved 27",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved 31",
    ];
    usize::try_from(vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .copied()
        .unwrap_or("unknown")
}

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static mut IST_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

/// 64-bit task state segment; only IST1 is used.
#[repr(C, packed(4))]
struct TaskStateSegment {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

static mut TSS: TaskStateSegment = TaskStateSegment {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: core::mem::size_of::<TaskStateSegment>() as u16,
};

const KERNEL_CODE: u16 = 0x08;
const TSS_SELECTOR: u16 = 0x18;

/// null, code 0x08, data 0x10, TSS 0x18 (two slots).
static mut GDT: [u64; 5] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0];

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: IdtEntry = IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt_gate(handler: u64, ist: u8) -> Self {
        IdtEntry {
            offset_low: handler as u16,
            selector: KERNEL_CODE,
            ist,
            type_attr: 0x8e, // present, ring 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([IdtEntry; 256]);

static mut IDT: Idt = Idt([IdtEntry::MISSING; 256]);

#[repr(C, packed(2))]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

#[cfg(all(target_os = "none", not(test)))]
unsafe extern "C" {
    /// Addresses of the 32 exception stubs, from the assembly below.
    static isr_stub_table: [u64; 32];
}

/// Loads the GDT with its TSS and the IDT. Call once, early, with interrupts off.
#[cfg(all(target_os = "none", not(test)))]
pub fn init() {
    // SAFETY: runs once on the only CPU before anything else reads these statics; the raw
    // pointers are taken without creating references to the `static mut`s.
    unsafe {
        let ist_top = (&raw mut IST_STACK).cast::<u8>().add(IST_STACK_SIZE) as u64;
        let tss = &raw mut TSS;
        (*tss).ist[0] = ist_top;
        let base = tss as u64;
        let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit available TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = &raw mut GDT;
        (*gdt)[3] = low;
        (*gdt)[4] = base >> 32;
        let gdt_ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        // Same code/data selectors as the boot GDT, so CS and the data segments stay valid.
        core::arch::asm!("lgdt [{}]", in(reg) &gdt_ptr, options(readonly, nostack, preserves_flags));
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nomem, nostack, preserves_flags));

        let idt = &raw mut IDT;
        let stubs = &raw const isr_stub_table;
        for vector in 0..32 {
            // Double fault, NMI and machine check switch to IST1.
            let ist = if matches!(vector, 2 | 8 | 18) { 1 } else { 0 };
            (*idt).0[vector] = IdtEntry::interrupt_gate((*stubs)[vector], ist);
        }
        let idt_ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &idt_ptr, options(readonly, nostack, preserves_flags));
    }
}

/// Points `vector` (32..=255) at `handler`, an interrupt gate on the current stack. Call with
/// interrupts off, after [`init`].
#[cfg(all(target_os = "none", not(test)))]
pub fn set_interrupt_gate(vector: u8, handler: u64) {
    if vector < 32 {
        return; // the exception reporter's
    }
    // SAFETY: single CPU with interrupts off (the caller's contract), so no interrupt can
    // read the entry while it is rewritten; the raw pointer avoids a `static mut` reference.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[usize::from(vector)] = IdtEntry::interrupt_gate(handler, 0);
    }
}

static REPORTING: AtomicBool = AtomicBool::new(false);

/// Called by every exception stub: prints the fault and the registers, then ends the machine
/// through isa-debug-exit with [`super::EXIT_FAULT`] (or halts when that device is absent).
#[unsafe(no_mangle)]
extern "C" fn exception_report(frame: &ExceptionFrame) -> ! {
    if REPORTING.swap(true, Ordering::AcqRel) {
        // A fault while reporting a fault: stop without touching anything else.
        super::exit_qemu(super::EXIT_FAULT);
    }
    let (cr2, cr3): (u64, u64);
    // SAFETY: reading control registers has no side effects at ring 0.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
    }
    let mut w = emergency_writer();
    let f = frame;
    let _ = writeln!(
        w,
        "\n!!! EXCEPTION {} ({}) error code {:#x}",
        f.vector,
        exception_name(f.vector),
        f.error_code
    );
    let _ = writeln!(
        w,
        "rip {:#018x} cs {:#06x} rflags {:#010x} rsp {:#018x} ss {:#06x}",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    );
    let _ = writeln!(w, "cr2 {cr2:#018x} cr3 {cr3:#018x}");
    let _ = writeln!(
        w,
        "rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        f.rax, f.rbx, f.rcx, f.rdx
    );
    let _ = writeln!(
        w,
        "rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        f.rsi, f.rdi, f.rbp, f.r8
    );
    let _ = writeln!(
        w,
        "r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        f.r9, f.r10, f.r11, f.r12
    );
    let _ = writeln!(
        w,
        "r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        f.r13, f.r14, f.r15
    );
    let _ = writeln!(w, "machine stopped");
    super::exit_qemu(super::EXIT_FAULT)
}

#[cfg(all(target_os = "none", not(test)))]
core::arch::global_asm!(
    r#"
.section .text.isr, "ax"
.irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_stub_\n:
    push 0
    push \n
    jmp isr_common
.endr
.irp n, 8,10,11,12,13,14,17,21,29,30
isr_stub_\n:
    push \n
    jmp isr_common
.endr

isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    and rsp, -16
    call exception_report
    ud2

.section .rodata.isr, "a"
.p2align 3
.global isr_stub_table
isr_stub_table:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_stub_\n
.endr
"#
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_the_stub_push_order() {
        // 15 registers, vector, error code, then the 5 words the CPU pushed.
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 17 * 8);
    }

    #[test]
    fn tss_and_idt_entries_have_architectural_sizes() {
        assert_eq!(core::mem::size_of::<TaskStateSegment>(), 104);
        assert_eq!(core::mem::size_of::<IdtEntry>(), 16);
    }

    #[test]
    fn names_cover_the_reported_vectors() {
        assert_eq!(exception_name(6), "#UD invalid opcode");
        assert_eq!(exception_name(14), "#PF page fault");
        assert_eq!(exception_name(99), "unknown");
    }
}
