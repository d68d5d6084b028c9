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

/// The crash kinds as build 0 prints them, in the order of [`KINDS`]. Placeholders: `{rel}`
/// the build's release, `{cpu}` and `{pid}` the machine's, `{hw}` the hardware line, `{regs}`
/// the register lines, `{gpf}` a per-machine non-canonical address, `{stuck}` a per-machine
/// lockup time. Other builds move the functions (see [`shift`]).
const TEXTS: [&str; 6] = [
    "BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: {cpu} PID: {pid} Comm: kworker/{cpu}:1 Not tainted {rel} #1 Debian
{hw}
RIP: 0010:mlx5e_poll_rx_cq+0x15/0x30 [mlx5_core]
{regs}
Call Trace:
 <TASK>
 ? __die+0x23/0x70
 ? page_fault_oops+0x171/0x4e0
 mlx5e_napi_poll+0x8d/0x6a0 [mlx5_core]
 __napi_poll+0x2b/0x1c0
 net_rx_action+0x2a5/0x380
 </TASK>
Kernel panic - not syncing: Fatal exception in interrupt",
    "------------[ cut here ]------------
kernel BUG at fs/ext4/inode.c:2716!
invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
CPU: {cpu} PID: {pid} Comm: kworker/u16:3 Tainted: G        W          {rel} #1 Debian
{hw}
RIP: 0010:mpage_prepare_extent_to_map+0x4a7/0x4d0 [ext4]
{regs}
Call Trace:
 <TASK>
 ? do_trap+0xc5/0x110
 ext4_do_writepages+0x25f/0xd10 [ext4]
 ext4_writepages+0xad/0x180 [ext4]
 do_writepages+0xcf/0x1e0
 </TASK>",
    "general protection fault, probably for non-canonical address 0xdead{gpf}: 0000 [#1] PREEMPT SMP NOPTI
CPU: {cpu} PID: {pid} Comm: nginx Not tainted {rel} #1 Debian
{hw}
RIP: 0010:__list_del_entry_valid+0x25/0xc0
{regs}
Call Trace:
 <TASK>
 ? die_addr+0x36/0x90
 tcp_write_queue_purge+0x4e/0x1b0
 tcp_v4_destroy_sock+0x5c/0x1c0
 inet_csk_destroy_sock+0x55/0x110
 </TASK>
Kernel panic - not syncing: Fatal exception",
    "watchdog: BUG: soft lockup - CPU#{cpu} stuck for {stuck}s! [qemu-kvm:{pid}]
CPU: {cpu} PID: {pid} Comm: qemu-kvm Tainted: G             L     {rel} #1 Debian
{hw}
RIP: 0010:native_queued_spin_lock_slowpath+0x50/0x2d0
{regs}
Call Trace:
 <IRQ>
 ? watchdog_timer_fn+0x1d1/0x240
 </IRQ>
 <TASK>
 _raw_spin_lock+0x25/0x30
 kvm_mmu_page_fault+0x1b0/0x860 [kvm]
 vcpu_enter_guest+0x6f2/0x11e0 [kvm]
 </TASK>
Kernel panic - not syncing: softlockup: hung tasks",
    "java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
CPU: {cpu} PID: {pid} Comm: java Not tainted {rel} #1 Debian
{hw}
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 dump_header+0x4a/0x211
 oom_kill_process.cold+0xb/0x10
 out_of_memory+0x1fd/0x4e0
 __alloc_pages_slowpath.constprop.0+0xcaa/0xde0
 __alloc_pages+0x305/0x330
 __folio_alloc+0x16/0x50
 vma_alloc_folio+0xa5/0x3a0
 do_anonymous_page+0x6e/0x3b0
 __handle_mm_fault+0x4f4/0x6d0
 </TASK>
Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled",
    "sysrq: Trigger a crash
Kernel panic - not syncing: sysrq triggered crash
CPU: {cpu} PID: {pid} Comm: bash Not tainted {rel} #1 Debian
{hw}
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 sysrq_handle_crash+0x16/0x20
 __handle_sysrq.cold+0x43/0x11b
 write_sysrq_trigger+0x24/0x40
 </TASK>",
];

/// `line` as `build` prints it: each `function+0xOFF/0xSIZE` moves by 4 bytes and grows by 8
/// per build, a `.cold` part moves by 1 and keeps its size.
fn shift(line: &str, build: usize) -> String {
    let Some((name, rest)) = line.split_once("+0x") else {
        return line.to_string();
    };
    let (off, rest) = rest.split_once("/0x").unwrap();
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    let (size, rest) = rest.split_at(end);
    let (off, size) = (
        u32::from_str_radix(off, 16).unwrap(),
        u32::from_str_radix(size, 16).unwrap(),
    );
    let build = build as u32;
    let (off, size) = if name.ends_with(".cold") {
        (off + build, size)
    } else {
        (off + 4 * build, size + 8 * build)
    };
    format!("{name}+{off:#x}/{size:#x}{rest}")
}

/// The crash text of `kind` (index into [`KINDS`]) as `build` prints it on machine `m`.
pub fn crash_text(kind: usize, build: usize, m: u32) -> String {
    let rel = BUILDS[build];
    let addr = format!("ffff{:04x}c0a4fc70", m & 0xffff);
    let boot = format!(
        "Linux version {rel} (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian
Command line: BOOT_IMAGE=/boot/vmlinuz-{rel} root=/dev/sda1 ro netoops=2004@10.0.0.{m}/eth0
e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX"
    );
    let crash = TEXTS[kind.min(5)]
        .replace("{rel}", rel)
        .replace("{cpu}", &(m % 8).to_string())
        .replace("{pid}", &(1000 + m * 7).to_string())
        .replace(
            "{hw}",
            "Hardware name: Supermicro SYS-1029P-WTR/X11DDW-L, BIOS 3.4 10/25/2021",
        )
        .replace(
            "{regs}",
            &format!("RSP: 0018:{addr} EFLAGS: 00010246\nRAX: 0000000000000000 RBX: {addr} RCX: 0000000000000000"),
        )
        .replace("{gpf}", &format!("{:012x}", 0x122 + m))
        .replace("{stuck}", &(22 + m % 5).to_string());
    let mut out = String::new();
    let mut t = 1000 + u64::from(m) * 3;
    for line in boot.lines().chain(crash.lines()) {
        t += 17;
        out.push_str(&format!(
            "[{:5}.{:06}] {}\n",
            t / 1000,
            (t % 1000) * 1000,
            shift(line, build)
        ));
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
