//! Entry from the loader: the multiboot2 header, the PVH ELF note and the 32-bit trampoline
//! into long mode, plus the 64-bit entry the UEFI stub (`image/uefi`) jumps to.
//!
//! Both boot protocols enter in 32-bit protected mode with paging off and flat segments:
//! PVH (QEMU `-kernel`, microvm, other PVH VMMs) at the address in the Xen note with the
//! `hvm_start_info` address in ebx; multiboot2 (GRUB) at the ELF entry with 0x36d76289 in eax
//! and the boot information address in ebx. The trampoline records which one it was, zeroes
//! .bss (not the stack, which has a section of its own), identity-maps the first 4 GiB with
//! 2 MiB pages (the tables are in .bss and [`super::paging`] extends them), enables PAE +
//! long mode + paging, loads a 64-bit GDT and calls `kmain(protocol, info, entry_tsc)` on a
//! 256 KiB boot stack. Every entry reads the TSC first, so boot times are measured from a
//! point the kernel knows ([`super::boottime`]). The page below the stack is a guard page
//! that [`super::paging::install_guards`] unmaps once the platform is up.
//!
//! The UEFI stub copies this same ELF to its link address after ExitBootServices and enters
//! at the address in a second note (owner "netoops", type [`NOTE_UEFI64_ENTRY`]) in 64-bit
//! mode with the firmware's identity-mapped page tables still loaded and an `hvm_start_info`
//! (the PVH format, so one parser serves both) below 4 GiB in edi. That entry records it,
//! zeroes .bss, switches to the boot stack, builds the same 4 GiB identity map, loads CR3 and
//! the boot GDT, and joins the long-mode path; firmware page tables, GDT and stack are never
//! used again.
//!
//! QEMU 7.2 reads the PVH note's descriptor as a pointer-sized value for an ELF64 file, and
//! finds it at `12 + align_up(namesz, p_align)`: the note is 4-aligned with an 8-byte entry.

/// `protocol` argument of `kmain`: entered through the PVH note.
pub const PROTOCOL_PVH: u32 = 1;
/// `protocol` argument of `kmain`: entered by a multiboot2 loader.
pub const PROTOCOL_MULTIBOOT2: u32 = 2;
/// `protocol` argument of `kmain`: entered from the UEFI stub through the 64-bit entry.
pub const PROTOCOL_UEFI: u32 = 3;
/// Type of the "netoops" ELF note whose 8-byte descriptor is the 64-bit UEFI-stub entry.
pub const NOTE_UEFI64_ENTRY: u32 = 1;

/// Size of the boot stack (also the kernel's only stack).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

#[cfg(all(target_os = "none", not(test)))]
core::arch::global_asm!(
    r#"
/* The boot identity map of the first 4 GiB, built by both entries into the zeroed .bss tables:
   PML4[0] -> PDPT, PDPT[0..4] -> the four page directories, and 2048 2 MiB pages (present,
   writable, page size). The same instructions serve 32-bit and 64-bit mode: the tables lie
   below 4 GiB (the kernel is linked at 1 MiB), so 32-bit absolute addresses reach them and
   writing the low dword of each entry is enough (the high dwords are zero); `index` is the
   loop register of the mode, ecx or rcx. */
.macro identity_map_4g index
    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 16], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 24], eax
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + \index * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 2b
.endm

.section .multiboot2, "a"
.p2align 3
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))
    /* end tag */
    .short 0
    .short 0
    .long 8
mb2_header_end:

.section .note.Xen, "a", @note
.p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .quad _start_pvh

.section .note.netoops, "a", @note
.p2align 2
    .long 8
    .long 8
    .long {uefi_note}
    .asciz "netoops"
    .quad _start_uefi64

.section .text.boot, "ax"
.code32
.global _start_pvh
_start_pvh:
    rdtsc
    mov dword ptr [boot_entry_tsc], eax
    mov dword ptr [boot_entry_tsc + 4], edx
    mov dword ptr [boot_protocol], {pvh}
    mov dword ptr [boot_info_addr], ebx
    jmp .Lcommon32

.global _start_multiboot2
_start_multiboot2:
    mov esi, eax            /* the loader's magic, kept across rdtsc */
    rdtsc
    mov dword ptr [boot_entry_tsc], eax
    mov dword ptr [boot_entry_tsc + 4], edx
    mov dword ptr [boot_protocol], {mb2}
    mov dword ptr [boot_info_addr], ebx
    cmp esi, 0x36d76289
    je .Lcommon32
    mov dword ptr [boot_protocol], 0

.Lcommon32:
    cli
    cld
    /* A CPU without long mode cannot run us: say so on COM1 and stop, not triple fault. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lno_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 0x20000000
    jz .Lno_long_mode
    /* zero .bss (page tables and stack included) */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd
    mov esp, offset boot_stack_top

    identity_map_4g ecx
    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20            /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080     /* EFER */
    rdmsr
    or eax, 0x100           /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001      /* PG | WP | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    push 0x08
    mov eax, offset .Llong_mode
    push eax
    retf

.Lno_long_mode:
    mov esi, offset no_long_mode_msg
.Lno_long_mode_char:
    mov al, byte ptr [esi]
    test al, al
    jz .Lno_long_mode_halt
    mov dx, 0x3f8
    out dx, al
    inc esi
    jmp .Lno_long_mode_char
.Lno_long_mode_halt:
    mov dx, 0xf4            /* isa-debug-exit, when present: end the VM with EXIT_FAULT */
    mov eax, {fault}
    out dx, eax
    cli
    hlt
    jmp .Lno_long_mode_halt

.code64
/* From the UEFI stub: long mode on the firmware's page tables, edi = hvm_start_info. */
.global _start_uefi64
_start_uefi64:
    cli
    cld
    rdtsc
    mov dword ptr [rip + boot_entry_tsc], eax
    mov dword ptr [rip + boot_entry_tsc + 4], edx
    mov dword ptr [rip + boot_protocol], {uefi}
    mov dword ptr [rip + boot_info_addr], edi
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    rep stosq
    lea rsp, [rip + boot_stack_top]

    identity_map_4g rcx
    lea rax, [rip + boot_pml4]
    mov cr3, rax
    /* Clearing PGE (and PCIDE, allowed now that CR3's low bits are 0) flushes every firmware
       translation, global ones included; ours are all non-global. */
    mov rax, cr4
    and rax, ~0x20080
    mov cr4, rax
    mov rax, cr0
    or rax, 0x10000         /* WP, as on the 32-bit path */
    mov cr0, rax

    lgdt [rip + boot_gdt_ptr64]
    push 0x08
    lea rax, [rip + .Llong_mode]
    push rax
    retfq

.Llong_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    xor ebp, ebp
    mov edi, dword ptr [boot_protocol]
    mov esi, dword ptr [boot_info_addr]
    mov rdx, qword ptr [boot_entry_tsc]
    call kmain
    ud2

.section .rodata.boot, "a"
.p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
.p2align 3
boot_gdt_ptr64:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

no_long_mode_msg:
    .asciz "netoops-relay: this CPU has no 64-bit long mode; stopped\r\n"

.section .data.boot, "aw"
.p2align 3
/* In .data, not .bss: it is written before .bss is zeroed. */
boot_entry_tsc:
    .quad 0
boot_protocol:
    .long 0
boot_info_addr:
    .long 0

.section .bss.boot, "aw", @nobits
.p2align 12
.global boot_pml4
boot_pml4:
    .zero 4096
.global boot_pdpt
boot_pdpt:
    .zero 4096
.global boot_pd
boot_pd:
    .zero 16384

/* The stack is not zeroed with .bss (linker.ld places this section after __bss_end): nothing
   reads a stack slot before writing it, and clearing its 260 KiB a word at a time was a
   quarter of the trampoline's time under TCG (QEMU runs one iteration of `rep stos` per
   executed block). */
.section .boot_stack, "aw", @nobits
.p2align 12
.global boot_stack_guard
boot_stack_guard:
    .zero 4096
.global boot_stack_bottom
boot_stack_bottom:
    .zero {stack}
.global boot_stack_top
boot_stack_top:
"#,
    pvh = const PROTOCOL_PVH,
    mb2 = const PROTOCOL_MULTIBOOT2,
    uefi = const PROTOCOL_UEFI,
    uefi_note = const NOTE_UEFI64_ENTRY,
    stack = const BOOT_STACK_SIZE,
    fault = const super::EXIT_FAULT,
);
