//! Crash texts as kernels print them, for the index, grouping and web view tests: six crash
//! kinds, each printable by three kernel builds (other releases, offsets, addresses), with
//! per-machine details (timestamps, PIDs, CPUs, addresses) that must not split a group.

use super::{registers, XEON};
use netoops_collect::store::{Applied, Origin, Store};
use netoops_core::upstream::record::ConsoleMeta;
use netoops_core::upstream::{DumpIdentity, DumpMeta, Record, RecordHeader, Source};
use std::net::SocketAddr;

/// The three kernel builds.
pub const BUILDS: [&str; 3] = ["6.1.0-18-amd64", "6.1.0-21-amd64", "6.1.0-25-amd64"];

/// The six crash kinds, with the analyser's name for each.
pub const KINDS: [&str; 6] = [
    "null-deref",
    "bug",
    "gpf",
    "soft-lockup",
    "oom",
    "sysrq-crash",
];

/// `frame+0xOFF/0xSIZE`, the offset shifted by the build.
fn f(name: &str, off: u32, size: u32, build: usize) -> String {
    format!(
        "{name}+{:#x}/{:#x}",
        off + 4 * build as u32,
        size + 8 * build as u32
    )
}

/// The crash text of `kind` (index into [`KINDS`]) as `build` prints it on machine `m`.
pub fn crash_text(kind: usize, build: usize, m: u32) -> String {
    let rel = BUILDS[build];
    let cpu = m % 8;
    let pid = 1000 + m * 7;
    let addr = format!("ffff{:04x}c0a4fc70", m & 0xffff);
    let hw = "Hardware name: Supermicro SYS-1029P-WTR/X11DDW-L, BIOS 3.4 10/25/2021";
    let mut lines: Vec<String> = vec![
        format!("Linux version {rel} (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian"),
        format!("Command line: BOOT_IMAGE=/boot/vmlinuz-{rel} root=/dev/sda1 ro netoops=2004@10.0.0.{m}/eth0"),
        "e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX".into(),
    ];
    let regs = format!("RSP: 0018:{addr} EFLAGS: 00010246\nRAX: 0000000000000000 RBX: {addr} RCX: 0000000000000000");
    match kind {
        0 => {
            lines.push("BUG: kernel NULL pointer dereference, address: 0000000000000008".into());
            lines.push("#PF: supervisor read access in kernel mode".into());
            lines.push("Oops: 0000 [#1] PREEMPT SMP NOPTI".into());
            lines.push(format!(
                "CPU: {cpu} PID: {pid} Comm: kworker/{cpu}:1 Not tainted {rel} #1 Debian"
            ));
            lines.push(hw.into());
            lines.push(format!(
                "RIP: 0010:{} [mlx5_core]",
                f("mlx5e_poll_rx_cq", 0x15, 0x30, build)
            ));
            lines.push(regs);
            lines.push("Call Trace:\n <TASK>".into());
            lines.push(format!(" ? {}", f("__die", 0x23, 0x70, build)));
            lines.push(format!(" ? {}", f("page_fault_oops", 0x171, 0x4e0, build)));
            lines.push(format!(
                " {} [mlx5_core]",
                f("mlx5e_napi_poll", 0x8d, 0x6a0, build)
            ));
            lines.push(format!(" {}", f("__napi_poll", 0x2b, 0x1c0, build)));
            lines.push(format!(" {}", f("net_rx_action", 0x2a5, 0x380, build)));
            lines.push(" </TASK>".into());
            lines.push("Kernel panic - not syncing: Fatal exception in interrupt".into());
        }
        1 => {
            lines.push("------------[ cut here ]------------".into());
            lines.push("kernel BUG at fs/ext4/inode.c:2716!".into());
            lines.push("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI".into());
            lines.push(format!("CPU: {cpu} PID: {pid} Comm: kworker/u16:3 Tainted: G        W          {rel} #1 Debian"));
            lines.push(hw.into());
            lines.push(format!(
                "RIP: 0010:{} [ext4]",
                f("mpage_prepare_extent_to_map", 0x4a7, 0x4d0, build)
            ));
            lines.push(regs);
            lines.push("Call Trace:\n <TASK>".into());
            lines.push(format!(" ? {}", f("do_trap", 0xc5, 0x110, build)));
            lines.push(format!(
                " {} [ext4]",
                f("ext4_do_writepages", 0x25f, 0xd10, build)
            ));
            lines.push(format!(
                " {} [ext4]",
                f("ext4_writepages", 0xad, 0x180, build)
            ));
            lines.push(format!(" {}", f("do_writepages", 0xcf, 0x1e0, build)));
            lines.push(" </TASK>".into());
        }
        2 => {
            lines.push(format!("general protection fault, probably for non-canonical address 0xdead{:012x}: 0000 [#1] PREEMPT SMP NOPTI", 0x122 + m));
            lines.push(format!(
                "CPU: {cpu} PID: {pid} Comm: nginx Not tainted {rel} #1 Debian"
            ));
            lines.push(hw.into());
            lines.push(format!(
                "RIP: 0010:{}",
                f("__list_del_entry_valid", 0x25, 0xc0, build)
            ));
            lines.push(regs);
            lines.push("Call Trace:\n <TASK>".into());
            lines.push(format!(" ? {}", f("die_addr", 0x36, 0x90, build)));
            lines.push(format!(
                " {}",
                f("tcp_write_queue_purge", 0x4e, 0x1b0, build)
            ));
            lines.push(format!(" {}", f("tcp_v4_destroy_sock", 0x5c, 0x1c0, build)));
            lines.push(format!(
                " {}",
                f("inet_csk_destroy_sock", 0x55, 0x110, build)
            ));
            lines.push(" </TASK>".into());
            lines.push("Kernel panic - not syncing: Fatal exception".into());
        }
        3 => {
            lines.push(format!(
                "watchdog: BUG: soft lockup - CPU#{cpu} stuck for {}s! [qemu-kvm:{pid}]",
                22 + m % 5
            ));
            lines.push(format!(
                "CPU: {cpu} PID: {pid} Comm: qemu-kvm Tainted: G             L     {rel} #1 Debian"
            ));
            lines.push(hw.into());
            lines.push(format!(
                "RIP: 0010:{}",
                f("native_queued_spin_lock_slowpath", 0x50, 0x2d0, build)
            ));
            lines.push(regs);
            lines.push("Call Trace:\n <IRQ>".into());
            lines.push(format!(
                " ? {}",
                f("watchdog_timer_fn", 0x1d1, 0x240, build)
            ));
            lines.push(" </IRQ>\n <TASK>".into());
            lines.push(format!(" {}", f("_raw_spin_lock", 0x25, 0x30, build)));
            lines.push(format!(
                " {} [kvm]",
                f("kvm_mmu_page_fault", 0x1b0, 0x860, build)
            ));
            lines.push(format!(
                " {} [kvm]",
                f("vcpu_enter_guest", 0x6f2, 0x11e0, build)
            ));
            lines.push(" </TASK>".into());
            lines.push("Kernel panic - not syncing: softlockup: hung tasks".into());
        }
        4 => {
            lines.push("java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0".into());
            lines.push(format!(
                "CPU: {cpu} PID: {pid} Comm: java Not tainted {rel} #1 Debian"
            ));
            lines.push(hw.into());
            lines.push("Call Trace:\n <TASK>".into());
            lines.push(format!(" {}", f("dump_stack_lvl", 0x44, 0x5c, build)));
            lines.push(format!(" {}", f("dump_header", 0x4a, 0x211, build)));
            lines.push(format!(" out_of_memory.cold+{:#x}/0x7e", 0xa + build));
            lines.push(format!(
                " {}",
                f("__alloc_pages_slowpath.constprop.0", 0xcaa, 0xde0, build)
            ));
            lines.push(format!(" {}", f("__alloc_pages", 0x305, 0x330, build)));
            lines.push(format!(" {}", f("folio_alloc", 0x17, 0x50, build)));
            lines.push(" </TASK>".into());
            lines.push(
                "Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled"
                    .into(),
            );
        }
        _ => {
            lines.push("sysrq: Trigger a crash".into());
            lines.push("Kernel panic - not syncing: sysrq triggered crash".into());
            lines.push(format!(
                "CPU: {cpu} PID: {pid} Comm: bash Not tainted {rel} #1 Debian"
            ));
            lines.push(hw.into());
            lines.push("Call Trace:\n <TASK>".into());
            lines.push(format!(" {}", f("dump_stack_lvl", 0x44, 0x5c, build)));
            lines.push(format!(" {}", f("panic", 0x118, 0x2ed, build)));
            lines.push(format!(" {}", f("sysrq_handle_crash", 0x16, 0x20, build)));
            lines.push(format!(" __handle_sysrq.cold+{:#x}/0x11b", 0x43 + build));
            lines.push(format!(" {}", f("write_sysrq_trigger", 0x24, 0x40, build)));
            lines.push(" </TASK>".into());
        }
    }
    let mut out = String::new();
    let mut t = 1000 + u64::from(m) * 3;
    for block in lines {
        for line in block.lines() {
            t += 17;
            out.push_str(&format!(
                "[{:5}.{:06}] {line}\n",
                t / 1000,
                (t % 1000) * 1000
            ));
        }
    }
    out
}

/// A netoops dump record from `ip` (port 2004) with `text`, optionally missing packets.
pub fn dump_record(
    ip: &str,
    dump_id: u16,
    kernel: &str,
    missing: &[(u32, u32)],
    completed_ms: u64,
) -> Record {
    let source: SocketAddr = format!("{ip}:2004").parse().unwrap();
    let packet_count = 8;
    let lost: u32 = missing.iter().map(|(a, b)| b - a + 1).sum();
    Record::Dump(DumpMeta {
        kernel_version: kernel.into(),
        packet_count,
        received: packet_count - lost,
        missing: missing.to_vec(),
        complete: missing.is_empty(),
        first_seen_ms: completed_ms.saturating_sub(40),
        completed_ms,
        cpu: Some(XEON),
        registers: Some(registers(&[
            ("ip", 0xffff_ffff_c0a1_2315),
            ("sp", 0xffff_b1c2_c0a4_fc70),
            ("ax", 0),
            ("flags", 0x10246),
        ])),
        ..DumpMeta::new(DumpIdentity {
            source: Source::from(source),
            version: 3,
            boot_id: 0,
            dump_id,
            dump_type: 1,
        })
    })
}

/// A netconsole dump record from `ip` (port 6666): extended format, `release` from the
/// sender, the given sequence ranges missing.
pub fn netconsole_record(
    ip: &str,
    release: &str,
    crash_line: &str,
    missing_seq: &[(u64, u64)],
    completed_ms: u64,
) -> Record {
    let source: SocketAddr = format!("{ip}:6666").parse().unwrap();
    Record::Dump(DumpMeta {
        packet_count: 60,
        received: 58,
        complete: missing_seq.is_empty(),
        first_seen_ms: completed_ms.saturating_sub(400),
        completed_ms,
        netconsole: Some(ConsoleMeta {
            extended: true,
            boot: 0,
            crash: 1,
            crash_line: crash_line.into(),
            release: release.into(),
            missing_seq: missing_seq.to_vec(),
            incomplete_seq: vec![],
            seq_range: Some((1, 60)),
            records: 58,
            fields: vec![("taskname".into(), "qemu-kvm".into())],
            truncated: false,
        }),
        ..DumpMeta::new(DumpIdentity {
            source: Source::from(source),
            version: 0,
            boot_id: 0,
            dump_id: 0,
            dump_type: 0,
        })
    })
}

/// Stores one record through the collector's own record API.
pub fn store_record(store: &Store, relay: &str, seq: u64, record: Record, text: &[u8]) {
    let origin = Origin {
        relay: relay.into(),
        instance: 0x5eed,
    };
    let header = RecordHeader {
        seq,
        sent_at_ms: 10_000_000,
        record,
        payload_len: text.len() as u32,
    };
    let applied = store
        .apply(&origin, &header, text, 1_764_000_000_000)
        .unwrap();
    assert!(
        matches!(applied, Applied::Dump { written: true, .. }),
        "seq {seq}: {applied:?}"
    );
}

/// A fleet: `machines` machines, machine `m` crashing with kind `m % 6` on build `(m / 6) % 3`,
/// at relay time `m * 1000` ms. Returns, per kind, how many machines have it.
pub fn store_fleet(store: &Store, machines: u32) -> [u32; 6] {
    let mut per_kind = [0u32; 6];
    for m in 0..machines {
        let kind = (m % 6) as usize;
        let build = ((m / 6) % 3) as usize;
        per_kind[kind] += 1;
        let ip = format!("10.{}.{}.{}", 1 + m / 65536, (m / 256) % 256, m % 256);
        let text = crash_text(kind, build, m);
        let record = dump_record(
            &ip,
            (m % 65536) as u16,
            BUILDS[build],
            &[],
            u64::from(m) * 1000,
        );
        store_record(store, "rack-7", u64::from(m) + 1, record, text.as_bytes());
    }
    per_kind
}
