//! The analyser on oops and panic texts written from the kernel's message formats, as a
//! Debian 12 (6.1) kernel and an older 3.10-style kernel print them.

use super::*;

/// Prefixes every line with a printk timestamp, as dumps carry them.
fn stamped(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("[  {:4}.{:06}] {l}\n", 100 + i / 50, (i * 137) % 1_000_000))
        .collect()
}

const NULL_DEREF: &str = "\
nullmod: loading out-of-tree module taints kernel.
BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
PGD 0 P4D 0
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 2 PID: 1337 Comm: insmod Tainted: G           OE      6.1.0-18-amd64 #1  Debian 6.1.76-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:nullmod_init+0x15/0x30 [nullmod]
Code: 00 00 00 00 0f 1f 44 00 00 48 c7 c7 00 e0 5f c0 e8 1c 1a 2c dc 48 8b 04 25 08 00 00 00 <8b> 00
RSP: 0018:ffffb1c2c0a4fc70 EFLAGS: 00010246
RAX: 0000000000000000 RBX: ffffffffc05fd000 RCX: 0000000000000000
RDX: 0000000000000000 RSI: ffffffff9d5bd2a0 RDI: 00000000ffffffff
CR2: 0000000000000008 CR3: 0000000104e2a000 CR4: 00000000000006e0
Call Trace:
 <TASK>
 ? __die+0x23/0x70
 ? page_fault_oops+0x171/0x4e0
 ? exc_page_fault+0x77/0x170
 ? asm_exc_page_fault+0x26/0x30
 ? nullmod_init+0x15/0x30 [nullmod]
 do_one_initcall+0x5b/0x320
 do_init_module+0x60/0x240
 init_module_from_file+0x89/0xe0
 idempotent_init_module+0x11e/0x310
 __x64_sys_finit_module+0x5e/0xb0
 do_syscall_64+0x5b/0xc0
 entry_SYSCALL_64_after_hwframe+0x6e/0xd8
RIP: 0033:0x7f1a2b31e759
Code: 08 89 e8 5b 5d c3 66 2e 0f 1f 84 00 00 00 00 00 90 48 89 f8 48 89 f7 48 89 d6
RSP: 002b:00007ffd6b7e7c68 EFLAGS: 00000246 ORIG_RAX: 0000000000000139
 </TASK>
Modules linked in: nullmod(OE+) nls_ascii nls_cp437 vfat fat e1000 ext4 crc16 mbcache jbd2
CR2: 0000000000000008
---[ end trace 0000000000000000 ]---
Kernel panic - not syncing: Fatal exception
Kernel Offset: 0x1b000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
---[ end Kernel panic - not syncing: Fatal exception ]---
";

#[test]
fn null_dereference() {
    let a = analyse(&stamped(NULL_DEREF));
    assert_eq!(a.kind, CrashKind::NullDeref);
    assert_eq!(
        a.crash_line.as_deref(),
        Some("BUG: kernel NULL pointer dereference, address: 0000000000000008")
    );
    assert_eq!(a.crash_line_index, Some(1));
    let rip = a.rip.as_ref().unwrap();
    assert_eq!(rip.function, "nullmod_init");
    assert_eq!((rip.offset, rip.size), (Some(0x15), Some(0x30)));
    assert_eq!(rip.module.as_deref(), Some("nullmod"));
    assert_eq!(rip.to_string(), "nullmod_init+0x15/0x30 [nullmod]");
    let names: Vec<&str> = a.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names,
        [
            "do_one_initcall",
            "do_init_module",
            "init_module_from_file",
            "idempotent_init_module",
            "__x64_sys_finit_module",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe"
        ],
        "`?` frames are skipped, the user-space RIP does not end the trace"
    );
    assert_eq!(a.taint.as_deref(), Some("GOE"));
    assert_eq!(a.release.as_deref(), Some("6.1.0-18-amd64"));
    assert_eq!(
        a.hardware.as_deref(),
        Some("QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014")
    );
    assert_eq!(
        a.process,
        Some(Process {
            comm: "insmod".into(),
            pid: Some(1337),
            cpu: Some(2)
        })
    );
    assert_eq!(
        a.title,
        "null-deref: nullmod_init < do_one_initcall < do_init_module < init_module_from_file"
    );
    assert_eq!(a.signature.len(), 16);
}

/// The same crash on another build: other offsets, addresses, timestamps, release, taint,
/// a compiler clone suffix, and an unreliable frame more.
#[test]
fn signature_is_stable_across_builds_and_differs_across_crashes() {
    let other_build = NULL_DEREF
        .replace("nullmod_init+0x15/0x30", "nullmod_init+0x19/0x38")
        .replace("do_one_initcall+0x5b/0x320", "do_one_initcall+0x41/0x200")
        .replace(
            "do_init_module+0x60/0x240",
            "do_init_module.isra.0+0x4a/0x230",
        )
        .replace(
            " do_one_initcall",
            " ? kmem_cache_alloc+0x10/0x300\n do_one_initcall",
        )
        .replace(
            "6.1.0-18-amd64 #1  Debian 6.1.76-1",
            "6.1.0-21-amd64 #1  Debian 6.1.90-1",
        )
        .replace("Tainted: G           OE", "Tainted: G        W  OE");
    let a = analyse(&stamped(NULL_DEREF));
    let b = analyse(&other_build);
    assert_eq!(b.release.as_deref(), Some("6.1.0-21-amd64"));
    assert_eq!(b.taint.as_deref(), Some("GWOE"));
    assert_eq!(a.signature, b.signature);
    assert_eq!(a.title, b.title);
    // Another faulting function is another group; so is another caller.
    let c = analyse(&NULL_DEREF.replace("nullmod_init+", "nullmod_exit+"));
    assert_ne!(a.signature, c.signature);
    let d = analyse(&NULL_DEREF.replace("do_init_module+", "load_module+"));
    assert_ne!(a.signature, d.signature);
}

const BUG_ON: &str = "\
------------[ cut here ]------------
kernel BUG at fs/ext4/inode.c:2716!
invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 5150 Comm: kworker/u16:3 Not tainted 6.1.0-17-amd64 #1 Debian 6.1.69-1
Hardware name: Supermicro SYS-1029P-WTR/X11DDW-L, BIOS 3.4 10/25/2021
Workqueue: writeback wb_workfn (flush-8:0)
RIP: 0010:mpage_prepare_extent_to_map+0x4a7/0x4d0 [ext4]
Code: 8b 44 24 28 48 8b 54 24 30 e9 41 fe ff ff 0f 0b <0f> 0b 48 8b 7c 24 10
RSP: 0018:ffffa3f8c1e0f9d8 EFLAGS: 00010246
Call Trace:
 <TASK>
 ? __die_body.cold+0x1a/0x1f
 ? die+0x2a/0x50
 ? do_trap+0xc5/0x110
 ? mpage_prepare_extent_to_map+0x4a7/0x4d0 [ext4]
 ? do_error_trap+0x6a/0x90
 ? exc_invalid_op+0x4c/0x60
 ? asm_exc_invalid_op+0x16/0x20
 ext4_do_writepages+0x25f/0xd10 [ext4]
 ext4_writepages+0xad/0x180 [ext4]
 do_writepages+0xcf/0x1e0
 __writeback_single_inode+0x3d/0x360
 writeback_sb_inodes+0x1ed/0x4b0
 </TASK>
---[ end trace 0000000000000000 ]---
";

#[test]
fn bug_on() {
    let a = analyse(BUG_ON);
    assert_eq!(a.kind, CrashKind::Bug);
    assert_eq!(
        a.crash_line.as_deref(),
        Some("kernel BUG at fs/ext4/inode.c:2716!")
    );
    assert_eq!(
        a.rip.as_ref().unwrap().function,
        "mpage_prepare_extent_to_map"
    );
    assert_eq!(a.rip.as_ref().unwrap().module.as_deref(), Some("ext4"));
    assert_eq!(a.frames[0].function, "ext4_do_writepages");
    assert_eq!(a.frames.len(), 5);
    assert_eq!(a.taint.as_deref(), Some(""));
    assert_eq!(a.release.as_deref(), Some("6.1.0-17-amd64"));
    assert_eq!(a.process.as_ref().unwrap().comm, "kworker/u16:3");
    assert_eq!(
        a.title,
        "bug: mpage_prepare_extent_to_map < ext4_do_writepages < ext4_writepages < do_writepages"
    );
}

/// A 3.10-era kernel: `IP:` line, `[<address>]` frames, no `<TASK>` delimiters.
const GPF_OLD: &str = "\
general protection fault: 0000 [#1] SMP
Modules linked in: xt_CHECKSUM iptable_mangle ipt_MASQUERADE bridge stp llc
CPU: 7 PID: 23101 Comm: java Tainted: P           O   3.10.0-1160.el7.x86_64 #1
Hardware name: HP ProLiant DL380 Gen9/ProLiant DL380 Gen9, BIOS P89 10/21/2019
task: ffff8b4ad1a9e300 ti: ffff8b4a3c2b0000 task.ti: ffff8b4a3c2b0000
RIP: 0010:[<ffffffffa2a3c1d5>]  [<ffffffffa2a3c1d5>] __list_del_entry+0x35/0xd0
RSP: 0018:ffff8b4a3c2b3d28  EFLAGS: 00010046
Call Trace:
 [<ffffffffa2a3c27d>] list_del+0xd/0x30
 [<ffffffffa27d1e4a>] ? __wake_up_common+0x5a/0x90
 [<ffffffffa2912c5a>] free_pcppages_bulk+0x1ba/0x380
 [<ffffffffa29134a8>] free_hot_cold_page+0x138/0x160
 [<ffffffffa2913557>] __free_pages+0x27/0x30
Code: 48 8b 57 08 48 b9 00 01 10 00 00 00 ad de 48 39 c8 74 26
RIP  [<ffffffffa2a3c1d5>] __list_del_entry+0x35/0xd0
 RSP <ffff8b4a3c2b3d28>
";

#[test]
fn general_protection_fault_old_format() {
    let a = analyse(GPF_OLD);
    assert_eq!(a.kind, CrashKind::Gpf);
    assert_eq!(
        a.crash_line.as_deref(),
        Some("general protection fault: 0000 [#1] SMP")
    );
    assert_eq!(a.rip.as_ref().unwrap().function, "__list_del_entry");
    let names: Vec<&str> = a.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names,
        [
            "list_del",
            "free_pcppages_bulk",
            "free_hot_cold_page",
            "__free_pages"
        ]
    );
    assert_eq!(a.taint.as_deref(), Some("PO"));
    assert_eq!(a.release.as_deref(), Some("3.10.0-1160.el7.x86_64"));
    assert_eq!(a.process.as_ref().unwrap().comm, "java");
    assert_eq!(a.process.as_ref().unwrap().pid, Some(23101));
}

const GPF_NEW: &str = "\
general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI
CPU: 3 PID: 2211 Comm: kworker/3:1 Tainted: G        W          6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: Dell Inc. PowerEdge R640/0W23H8, BIOS 2.17.1 04/13/2023
Workqueue: events free_work
RIP: 0010:__list_del_entry_valid+0x25/0xc0
Call Trace:
 <TASK>
 ? die_addr+0x36/0x90
 ? exc_general_protection+0x1c5/0x440
 ? asm_exc_general_protection+0x22/0x30
 ? __list_del_entry_valid+0x25/0xc0
 mlx5e_free_rx_descs+0x8e/0x120 [mlx5_core]
 mlx5e_close_rq+0x2a/0x70 [mlx5_core]
 process_one_work+0x1c7/0x380
 worker_thread+0x4d/0x380
 kthread+0xd7/0x100
 ret_from_fork+0x1f/0x30
 </TASK>
";

#[test]
fn general_protection_fault_new_format() {
    let a = analyse(GPF_NEW);
    assert_eq!(a.kind, CrashKind::Gpf);
    assert_eq!(a.taint.as_deref(), Some("GW"));
    assert_eq!(
        a.title,
        "gpf: __list_del_entry_valid < mlx5e_free_rx_descs < mlx5e_close_rq < process_one_work"
    );
    assert_eq!(a.frames[0].module.as_deref(), Some("mlx5_core"));
}

const SOFT_LOCKUP: &str = "\
watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [spin:4242]
Modules linked in: spinmod(OE) nls_ascii vfat fat
CPU: 1 PID: 4242 Comm: spin Tainted: G           OEL     6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:spin_forever+0x8/0x10 [spinmod]
Code: eb fe 66 90 <eb> fe
Call Trace:
 <IRQ>
 ? watchdog_timer_fn+0x1d1/0x240
 ? __hrtimer_run_queues+0x112/0x2b0
 hrtimer_interrupt+0xfc/0x210
 </IRQ>
 <TASK>
 ? asm_sysvec_apic_timer_interrupt+0x16/0x20
 ? spin_forever+0x8/0x10 [spinmod]
 spin_write+0x1a/0x30 [spinmod]
 vfs_write+0xb9/0x3f0
 ksys_write+0x5f/0xe0
 do_syscall_64+0x5b/0xc0
 </TASK>
Kernel panic - not syncing: softlockup: hung tasks
";

#[test]
fn soft_lockup() {
    let a = analyse(SOFT_LOCKUP);
    assert_eq!(a.kind, CrashKind::SoftLockup);
    assert_eq!(
        a.process,
        Some(Process {
            comm: "spin".into(),
            pid: Some(4242),
            cpu: None
        })
    );
    assert_eq!(a.taint.as_deref(), Some("GOEL"));
    assert_eq!(a.frames[0].function, "hrtimer_interrupt");
    // Interrupt frames stay out of the signature.
    assert_eq!(
        a.title,
        "soft-lockup: spin_forever < spin_write < vfs_write < ksys_write"
    );
}

const HUNG_TASK: &str = "\
INFO: task jbd2/sda1-8:312 blocked for more than 120 seconds.
      Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1
\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.
task:jbd2/sda1-8     state:D stack:0     pid:312   ppid:2      flags:0x00004000
Call Trace:
 <TASK>
 __schedule+0x34d/0x9e0
 schedule+0x5a/0xd0
 io_schedule+0x42/0x70
 bit_wait_io+0xd/0x60
 __wait_on_bit+0x4b/0x140
 out_of_line_wait_on_bit+0x91/0xb0
 jbd2_journal_commit_transaction+0x1563/0x1a80 [jbd2]
 kjournald2+0xab/0x280 [jbd2]
 kthread+0xd7/0x100
 ret_from_fork+0x1f/0x30
 </TASK>
Kernel panic - not syncing: hung_task: blocked tasks
CPU: 0 PID: 35 Comm: khungtaskd Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: Lenovo ThinkSystem SR650/7X06CTO1WW, BIOS IVE170M-3.10 07/27/2022
";

#[test]
fn hung_task() {
    let a = analyse(HUNG_TASK);
    assert_eq!(a.kind, CrashKind::HungTask);
    assert_eq!(a.process.as_ref().unwrap().comm, "jbd2/sda1-8");
    assert_eq!(a.process.as_ref().unwrap().pid, Some(312));
    assert_eq!(a.release.as_deref(), Some("6.1.0-18-amd64"));
    assert_eq!(a.taint.as_deref(), Some(""));
    assert_eq!(
        a.hardware.as_deref(),
        Some("Lenovo ThinkSystem SR650/7X06CTO1WW, BIOS IVE170M-3.10 07/27/2022")
    );
    assert!(a.rip.is_none());
    assert_eq!(
        a.title,
        "hung-task: bit_wait_io < __wait_on_bit < out_of_line_wait_on_bit < jbd2_journal_commit_transaction"
    );
}

const RCU_STALL: &str = "\
rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: \t1-....: (5249 ticks this GP) idle=b2c4/1/0x4000000000000000 softirq=8841/8841 fqs=2586
\t(t=5250 jiffies g=12345 q=678 ncpus=4)
NMI backtrace for cpu 1
CPU: 1 PID: 4321 Comm: stuck Tainted: G           O       6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
Call Trace:
 <IRQ>
 dump_stack_lvl+0x44/0x5c
 nmi_cpu_backtrace.cold+0x30/0x70
 nmi_trigger_cpumask_backtrace+0xe8/0xf0
 rcu_dump_cpu_stacks+0xc2/0xf0
 rcu_sched_clock_irq.cold+0x60/0x2f9
 update_process_times+0x8c/0xc0
 </IRQ>
 <TASK>
 asm_sysvec_apic_timer_interrupt+0x16/0x20
RIP: 0010:stuck_loop+0x12/0x20 [stuckmod]
Code: 0f 1f 44 00 00 eb fe
RSP: 0018:ffffb1c2c0a4fc70 EFLAGS: 00000246
 stuck_init+0x20/0x40 [stuckmod]
 do_one_initcall+0x5b/0x320
 do_init_module+0x60/0x240
 </TASK>
";

#[test]
fn rcu_stall() {
    let a = analyse(RCU_STALL);
    assert_eq!(a.kind, CrashKind::RcuStall);
    assert_eq!(
        a.crash_line.as_deref(),
        Some("rcu: INFO: rcu_preempt self-detected stall on CPU")
    );
    assert_eq!(a.rip.as_ref().unwrap().function, "stuck_loop");
    assert_eq!(a.frames.len(), 10, "{:?}", a.frames);
    assert_eq!(
        a.title,
        "rcu-stall: stuck_loop < stuck_init < do_one_initcall < do_init_module"
    );
    assert_eq!(a.process.as_ref().unwrap().comm, "stuck");
}

const OOM: &str = "\
stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
CPU: 1 PID: 3001 Comm: stress Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 dump_header+0x4a/0x211
 out_of_memory.cold+0xa/0x7e
 __alloc_pages_slowpath.constprop.0+0xcaa/0xde0
 __alloc_pages+0x305/0x330
 folio_alloc+0x17/0x50
 __filemap_get_folio+0x155/0x340
 filemap_fault+0x139/0x910
 </TASK>
Mem-Info:
active_anon:1961 inactive_anon:240018 isolated_anon:0
Out of memory and no killable processes...
Kernel panic - not syncing: System is deadlocked on memory
";

#[test]
fn out_of_memory() {
    let a = analyse(OOM);
    assert_eq!(a.kind, CrashKind::Oom);
    assert!(a
        .crash_line
        .as_deref()
        .unwrap()
        .starts_with("stress invoked oom-killer"));
    assert_eq!(a.process.as_ref().unwrap().comm, "stress");
    assert_eq!(
        a.title,
        "oom: __alloc_pages_slowpath < __alloc_pages < folio_alloc < __filemap_get_folio"
    );
}

const SYSRQ: &str = "\
sysrq: Trigger a crash
Kernel panic - not syncing: sysrq triggered crash
CPU: 0 PID: 812 Comm: bash Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 ? _printk+0x58/0x73
 sysrq_handle_crash+0x16/0x20
 __handle_sysrq.cold+0x43/0x11b
 write_sysrq_trigger+0x24/0x40
 proc_reg_write+0x59/0x90
 vfs_write+0xb9/0x3f0
 </TASK>
Kernel Offset: 0x1b000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
---[ end Kernel panic - not syncing: sysrq triggered crash ]---
";

#[test]
fn sysrq_crash() {
    let a = analyse(&stamped(SYSRQ));
    assert_eq!(a.kind, CrashKind::SysrqCrash);
    assert_eq!(a.crash_line.as_deref(), Some("sysrq: Trigger a crash"));
    assert_eq!(a.process.as_ref().unwrap().comm, "bash");
    assert_eq!(
        a.title,
        "sysrq-crash: sysrq_handle_crash < __handle_sysrq < write_sysrq_trigger < proc_reg_write"
    );
}

#[test]
fn every_kind_has_its_own_signature() {
    let sigs: std::collections::HashSet<String> = [
        NULL_DEREF,
        BUG_ON,
        GPF_OLD,
        GPF_NEW,
        SOFT_LOCKUP,
        HUNG_TASK,
        RCU_STALL,
        OOM,
        SYSRQ,
    ]
    .iter()
    .map(|t| analyse(t).signature)
    .collect();
    assert_eq!(sigs.len(), 9);
}

#[test]
fn warning_before_an_oops_does_not_hide_it() {
    let text = format!(
        "WARNING: CPU: 0 PID: 1 at drivers/net/foo.c:12 foo_probe+0x10/0x20 [foo]\n{NULL_DEREF}"
    );
    let a = analyse(&text);
    assert_eq!(a.kind, CrashKind::NullDeref);
    let w = analyse("WARNING: CPU: 0 PID: 1 at drivers/net/foo.c:12 foo_probe+0x10/0x20 [foo]\n");
    assert_eq!(w.kind, CrashKind::Warning);
    assert_eq!(w.rip.unwrap().function, "foo_probe");
}

#[test]
fn missing_markers_and_cut_text() {
    let text = format!(
        "{}[netoops: packets 3-5 missing]\n{}",
        &NULL_DEREF[..600],
        &NULL_DEREF[900..]
    );
    let a = analyse(&text);
    assert_eq!(a.kind, CrashKind::NullDeref);
    assert_eq!(a.missing.len(), 1);
    assert_eq!((a.missing[0].first, a.missing[0].last), (3, 5));
    assert!(!a.missing[0].records);
    let line = text.lines().nth(a.missing[0].line).unwrap();
    assert!(line.ends_with("[netoops: packets 3-5 missing]"), "{line}");
    let nc = analyse("[    1.000000] x\n[netconsole: records 13-14 missing]\n");
    assert!(nc.missing[0].records);
    assert_eq!(nc.kind, CrashKind::Unknown);
    assert_eq!(nc.title, "unknown");
}

#[test]
fn hostile_and_odd_input_never_panics() {
    let mut inputs: Vec<String> = vec![
        String::new(),
        "\n\n\n".into(),
        "RIP: 0010:".into(),
        "RIP: +0x/0x".into(),
        "CPU: PID: Comm:".into(),
        "CPU: 1 PID: x Comm: a Tainted: ".into(),
        "Call Trace:\n [<ffff\n ? \n <TASK>\n".into(),
        "INFO: task : blocked for more than".into(),
        "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [:]".into(),
        "[netoops: packets 9-x missing]".into(),
        "<99999>[ 1.0][ T1] é BUG: kernel NULL pointer dereference \u{0} <script>".into(),
    ];
    // Every cut of a real text, at every char boundary, in steps.
    for i in (0..NULL_DEREF.len()).step_by(7) {
        if NULL_DEREF.is_char_boundary(i) {
            inputs.push(NULL_DEREF[..i].to_string());
            inputs.push(NULL_DEREF[i..].to_string());
        }
    }
    for t in &inputs {
        let a = analyse(t);
        assert_eq!(a.signature.len(), 16);
    }
}

#[test]
fn prefixes_are_stripped() {
    assert_eq!(strip_prefix("<4>[   12.345678] Oops: 0000"), "Oops: 0000");
    assert_eq!(
        strip_prefix("[    5.000300][ T1234] Call Trace:"),
        "Call Trace:"
    );
    assert_eq!(strip_prefix("[not a stamp] x"), "[not a stamp] x");
}

#[test]
fn earlier_reports_do_not_hide_a_fatal_oops() {
    let history =
        "Out of memory: Killed process 4242 (java) total-vm:8123456kB, anon-rss:4012345kB\n\
        java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0\n\
        INFO: task jbd2/sda1-8:312 blocked for more than 120 seconds.\n";
    let a = analyse(&format!("{history}{NULL_DEREF}"));
    assert_eq!(a.kind, CrashKind::NullDeref);
    assert_eq!(a.signature, analyse(NULL_DEREF).signature);
    // Without a fault, the report the panic names is the crash, not an older one.
    let b = analyse(&format!("{history}{HUNG_TASK}"));
    assert_eq!(b.kind, CrashKind::HungTask);
    assert_eq!(b.signature, analyse(HUNG_TASK).signature);
    let c = analyse(&format!("{history}{OOM}"));
    assert_eq!(c.kind, CrashKind::Oom);
    assert!(c
        .crash_line
        .unwrap()
        .starts_with("stress invoked oom-killer"));
    assert_eq!(c.signature, analyse(OOM).signature);
    assert_eq!(analyse(HUNG_TASK).kind, CrashKind::HungTask);
}

/// A 2.6.32-era sysrq crash, the kernels netoops ships in: `SysRq :`, `IP:` and `[<address>]`.
const SYSRQ_OLD: &str = "\
SysRq : Trigger a crash
BUG: unable to handle kernel NULL pointer dereference at (null)
IP: [<ffffffff8132ad86>] sysrq_handle_crash+0x16/0x20
PGD 1b8a7b067 PUD 1b5e6a067 PMD 0
Oops: 0002 [#1] SMP
last sysfs file: /sys/devices/system/cpu/cpu1/cache/index2/shared_cpu_map
CPU 1
Modules linked in: netoops nfs lockd fscache auth_rpcgss nfs_acl sunrpc ipv6 e1000
Pid: 2347, comm: bash Not tainted 2.6.32-431.el6.x86_64 #1 Red Hat KVM
RIP: 0010:[<ffffffff8132ad86>]  [<ffffffff8132ad86>] sysrq_handle_crash+0x16/0x20
Process bash (pid: 2347, threadinfo ffff8801b8c3c000, task ffff8801b8e8c040)
Call Trace:
 [<ffffffff8132b042>] __handle_sysrq+0x132/0x1a0
 [<ffffffff8132b0fe>] write_sysrq_trigger+0x4e/0x50
 [<ffffffff811f060e>] proc_reg_write+0x7e/0xc0
 [<ffffffff81188c38>] vfs_write+0xb8/0x1a0
 [<ffffffff81189531>] sys_write+0x51/0x90
Code: d0 88 81 a3 d0 bf 81 c9 c3 0f 1f 80 00 00 00 00 55 48 89 e5 0f 1f 44 00 00 c7 05 <c6> 04 25
RIP  [<ffffffff8132ad86>] sysrq_handle_crash+0x16/0x20
 RSP <ffff8801b8c3de88>
CR2: 0000000000000000
";

#[test]
fn sysrq_crash_on_an_old_kernel() {
    let a = analyse(SYSRQ_OLD);
    assert_eq!(a.kind, CrashKind::SysrqCrash);
    assert_eq!(a.crash_line.as_deref(), Some("SysRq : Trigger a crash"));
    assert_eq!(a.rip.as_ref().unwrap().function, "sysrq_handle_crash");
    assert_eq!(a.frames.len(), 5);
    assert_eq!(a.process.as_ref().unwrap().comm, "bash");
    assert_eq!(a.process.as_ref().unwrap().pid, Some(2347));
    assert_eq!(a.release.as_deref(), Some("2.6.32-431.el6.x86_64"));
    assert_eq!(a.taint.as_deref(), Some(""));
    assert_eq!(
        a.title,
        "sysrq-crash: sysrq_handle_crash < __handle_sysrq < write_sysrq_trigger < proc_reg_write"
    );
    // The same crash as a 6.1 kernel reports it groups with it.
    assert_eq!(a.signature, analyse(SYSRQ).signature);
}
