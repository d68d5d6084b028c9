//! Netconsole machines: what a Linux kernel's netconsole sends, and what a relay makes of it.
//!
//! A netconsole scenario has crashing machines (`0..machines`) and healthy ones
//! (`machines..machines + chatter`). [`NcMachine::of`] derives a machine from the seed alone:
//! its format (extended or legacy), release prefix, userdata, first `seq` and `usec`. Its
//! [`NcLog`] is the records it prints, oldest first: ordinary kernel-ish log lines (some with
//! bytes that get `\xNN`-escaped, some with `SUBSYSTEM=`/`DEVICE=` dictionaries, some longer
//! than one datagram), then for a crashing machine a crash burst (the crash line, registers,
//! the call trace and usually `Kernel panic - not syncing: Fatal exception`). The datagrams are
//! what the kernel sends for them: [`netconsole::encode_record`] per record (fragments with
//! `ncfrag` when longer than 1000 bytes) in extended mode, `[%5lu.%06lu] text\n` console text
//! in legacy mode (usually one line per datagram, sometimes several, sometimes a line split
//! across two).
//!
//! [`RelayView::of`] is the reference answer: given the datagrams in the order the channel
//! delivers them, the dump a relay must produce under the rules in its documentation.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use netoops_wire::netconsole::{
    self, encode_body, encode_record, is_crash_line, write_fragment_gap, write_gap, write_line,
    Body, Datagram, RecordSpec, MAX_PRINT_CHUNK,
};

use super::channel::MachinePlan;
use super::rng::{Rng, Stream};
use super::scenario::{NcMode, Scenario};

/// Source port of netconsole senders (the kernel's default `src-port`).
pub const SOURCE_PORT: u16 = 6665;

/// A crashing machine's history (encoded extended bodies, or legacy console bytes) stays
/// below this, so a relay keeping 64 KiB per source trims nothing.
pub const HISTORY_BUDGET: usize = 40 * 1024 - 1;

/// Crash lines (and every line of a crash burst) are shorter than this: never fragmented.
pub const MAX_CRASH_LINE: usize = 900;

/// The relay reports at most this many bytes of a crash line, and an extended record's text
/// is checked for a crash in its first this many (unescaped) bytes (netoops-core's
/// `CRASH_LINE_LEN`).
pub const CRASH_LINE_CAP: usize = 240;

/// The relay checks a legacy line for a crash in its first this many bytes only (the rest of
/// a longer line is not kept for detection; netoops-core's `LINE_LEN`).
pub const LEGACY_LINE_CAP: usize = 512;

/// Kernel releases machines run.
const RELEASES: [&str; 5] = [
    "6.1.0-18-amd64",
    "6.12.9+bpo-amd64",
    "5.15.0-91-generic",
    "6.6.15-cloud-amd64",
    "6.13.0-04048-g4f561a87745a",
];

/// Tasks that print.
const TASKS: [&str; 8] = [
    "swapper/0",
    "kworker/1:1",
    "systemd",
    "bash",
    "kswapd0",
    "irq/24-nvme0q1",
    "jbd2/sda1-8",
    "sshd",
];

/// Roles for the userdata `role=` key.
const ROLES: [&str; 4] = ["db", "web", "cache", "batch"];

/// Ordinary lines: a prefix and a message; numbers are filled in. None is a crash line (checked
/// in [`ordinary_line`] and by the tests).
const ORDINARY: [&str; 16] = [
    "e1000e 0000:00:19.0 eno1: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: None",
    "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "usb 1-1: new high-speed USB device number # using xhci_hcd",
    "nvme nvme0: # I/O queues",
    "systemd[1]: Started Journal Service.",
    "audit: type=1400 audit(#.#:#): apparmor=\"STATUS\" operation=\"profile_load\"",
    "TCP: request_sock_TCP: Possible SYN flooding on port #. Sending cookies.",
    "ata1.00: configured for UDMA/133",
    "i915 0000:00:02.0: [drm] GuC firmware i915/tgl_guc_70.bin version #.#",
    "mlx5_core 0000:3b:00.0: E-Switch: Total vports #, per vport: max uc(#) max mc(#)",
    "xfs (dm-2): Ending clean mount",
    "kvm: already loaded vendor module 'kvm_intel'",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "perf: interrupt took too long (# > #), lowering kernel.perf_event_max_sample_rate to #",
    "random: crng init done",
    "device-mapper: uevent: version 1.0.3",
];

/// Dictionaries of ordinary lines (`SUBSYSTEM=`, `DEVICE=`).
const DICTS: [(&str, &str); 4] = [
    ("pci", "+pci:0000:00:19.0"),
    ("net", "n2"),
    ("usb", "c189:1"),
    ("block", "b259:0"),
];

/// Bytes that the extended format escapes, spliced into some lines.
const ODD_BYTES: [&[u8]; 5] = [b"\t", b"\x1b[0m", b"\x7f", b"caf\xc3\xa9", b"C:\\temp"];

/// How a crash burst starts.
const CRASH_LINES: [&str; 8] = [
    "BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI",
    "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:1:40]",
    "Kernel panic - not syncing: sysrq triggered crash",
    "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
    "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
    "kernel BUG at mm/slub.c:4105!",
];

/// Call trace entries.
const TRACE: [&str; 12] = [
    "sysrq_handle_crash+0x16/0x20",
    "__handle_sysrq+0x96/0x190",
    "write_sysrq_trigger+0x24/0x40",
    "proc_reg_write+0x56/0xa0",
    "vfs_write+0xc9/0x3f0",
    "ksys_write+0x6f/0xf0",
    "do_syscall_64+0x58/0xc0",
    "entry_SYSCALL_64_after_hwframe+0x64/0xce",
    "process_one_work+0x1c7/0x380",
    "worker_thread+0x4d/0x380",
    "kthread+0xd7/0x100",
    "ret_from_fork+0x2c/0x50",
];

/// One simulated netconsole machine: everything but its log.
#[derive(Clone, Debug)]
pub struct NcMachine {
    /// Position in the scenario; below `machines` it crashes.
    pub index: u32,
    pub source: SocketAddrV4,
    /// It ends with a crash burst.
    pub crashing: bool,
    pub mode: NcMode,
    /// The kernel release it runs.
    pub kernel: &'static str,
    /// The crash kind shared with other machines (`--crash-kinds`), or `None` for a burst
    /// drawn at random.
    pub kind: Option<u32>,
    /// Extended only: it prepends the release (`r`).
    pub release_prefix: bool,
    /// Extended only: it appends userdata and sysdata lines to every record.
    pub userdata: bool,
    /// Its userdata keys (empty without userdata).
    pub user_fields: Vec<(String, String)>,
    /// `seq` of its first record.
    pub first_seq: u64,
    /// When it starts sending, from the start of the run.
    pub crash_at: Duration,
    log_seed: u64,
    lines: u64,
    long_lines: f64,
}

/// One printk record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `facility << 3 | level`.
    pub level: u16,
    pub seq: u64,
    pub usec: u64,
    /// Unescaped message text (never a `\n`).
    pub text: Vec<u8>,
    /// Dictionary, userdata and sysdata, in the order they are appended.
    pub fields: Vec<(String, String)>,
    /// Part of the crash burst.
    pub crash: bool,
}

/// One datagram a machine sends, in sending order, and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NcDatagram {
    pub bytes: Vec<u8>,
    /// Extended: the record it carries (index into [`NcLog::records`]); legacy: `None`.
    pub record: Option<usize>,
}

/// A machine's records and the datagrams the kernel sends for them.
#[derive(Clone, Debug)]
pub struct NcLog {
    pub records: Vec<Record>,
    pub datagrams: Vec<NcDatagram>,
    /// Extended: encoded body bytes of all records; legacy: console bytes.
    pub history_bytes: usize,
}

impl NcMachine {
    /// Machine `i` of a validated netconsole scenario, from the seed alone.
    pub fn of(scenario: &Scenario, i: u32) -> Self {
        let nc = &scenario.netconsole;
        let mut rng = Rng::derive(scenario.seed, Stream::Content, u64::from(i));
        let mode = *rng.pick(&nc.modes).unwrap_or(&NcMode::Extended);
        let drawn = *rng.pick(&RELEASES).unwrap_or(&RELEASES[0]);
        let builds = (nc.kernels as usize).min(RELEASES.len());
        let kernel = if builds > 0 {
            RELEASES[i as usize % builds]
        } else {
            drawn
        };
        let kind = (nc.crash_kinds > 0)
            .then(|| (i / nc.kernels.max(1)) % nc.crash_kinds.min(CRASH_LINES.len() as u32));
        // Drawn whatever the mode, so later draws do not depend on it.
        let release = rng.chance(nc.release);
        let userdata = rng.chance(nc.userdata);
        let role = *rng.pick(&ROLES).unwrap_or(&ROLES[0]);
        let first_seq = if rng.chance(0.3) {
            0
        } else {
            rng.between(1, 5_000_000)
        };
        let lines = rng.between(u64::from(nc.chatter_lines / 2), u64::from(nc.chatter_lines));
        let log_seed = rng.next_u64();
        let extended = mode == NcMode::Extended;
        let user_fields = if extended && userdata {
            vec![
                ("host".to_string(), format!("node-{i:05}")),
                ("role".to_string(), role.to_string()),
            ]
        } else {
            Vec::new()
        };
        NcMachine {
            index: i,
            source: scenario
                .source_of(i)
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            crashing: i < scenario.machines,
            mode,
            kernel,
            release_prefix: extended && release,
            userdata: extended && userdata,
            user_fields,
            first_seq,
            crash_at: scenario.crash_at(i),
            log_seed,
            lines,
            long_lines: nc.long_lines,
            kind,
        }
    }

    /// The release a relay reports for this machine: the `r` prefix or the `release=` sysdata
    /// value, else none.
    pub fn reported_release(&self) -> &'static str {
        if self.release_prefix || self.userdata {
            self.kernel
        } else {
            ""
        }
    }

    /// Time between two of its datagrams at 1 GbE (the longest datagram, framing included).
    pub fn line_gap(&self) -> Duration {
        Duration::from_nanos((MAX_PRINT_CHUNK as u64 + 66) * 8)
    }

    /// Its records and datagrams.
    pub fn log(&self) -> NcLog {
        let mut rng = Rng::new(self.log_seed);
        let burst = if self.crashing {
            crash_burst(&mut rng, self)
        } else {
            Vec::new()
        };
        // Room the burst needs: an upper bound of each record's size. Extended: escaped text,
        // its newline and the userdata and sysdata lines (under 120 bytes). Legacy: the raw
        // text, a `[sssssss.uuuuuu] ` stamp of at most 17 bytes and the newline.
        let reserve: usize = burst
            .iter()
            .map(|(_, t)| match self.mode {
                NcMode::Extended => escaped_len(t) + 1 + 160,
                NcMode::Legacy => t.len() + 24,
            })
            .sum();
        let budget = if self.crashing {
            HISTORY_BUDGET.saturating_sub(reserve)
        } else {
            usize::MAX
        };
        let mut usec = rng.between(2_000_000, 400_000_000_000);
        let mut seq = self.first_seq;
        let mut msgid = rng.between(1, 1000);
        let mut records = Vec::new();
        let mut used = 0usize;
        for line_no in 0..self.lines {
            let (level, text, dict) = ordinary_line(&mut rng, self.long_lines, line_no);
            let fields = self.fields(&mut rng, dict, msgid);
            let rec = Record {
                level,
                seq,
                usec,
                text,
                fields,
                crash: false,
            };
            let size = self.history_size(&rec);
            if used + size > budget {
                break;
            }
            used += size;
            records.push(rec);
            seq += 1;
            msgid += 1;
            usec += rng.between(50, 3_000_000);
        }
        for (level, text) in burst {
            let fields = self.fields(&mut rng, None, msgid);
            let rec = Record {
                level,
                seq,
                usec,
                text,
                fields,
                crash: true,
            };
            used += self.history_size(&rec);
            records.push(rec);
            seq += 1;
            msgid += 1;
            usec += rng.between(5, 400);
        }
        let datagrams = match self.mode {
            NcMode::Extended => self.extended_datagrams(&records),
            NcMode::Legacy => legacy_datagrams(&mut rng, &records),
        };
        NcLog {
            records,
            datagrams,
            history_bytes: used,
        }
    }

    /// Dictionary, then userdata, then sysdata.
    fn fields(
        &self,
        rng: &mut Rng,
        dict: Option<(&str, &str)>,
        msgid: u64,
    ) -> Vec<(String, String)> {
        let mut f = Vec::new();
        if let Some((subsystem, device)) = dict {
            f.push(("SUBSYSTEM".to_string(), subsystem.to_string()));
            f.push(("DEVICE".to_string(), device.to_string()));
        }
        // Drawn always, so the log does not depend on the userdata choice.
        let cpu = rng.below(8);
        let task = *rng.pick(&TASKS).unwrap_or(&TASKS[0]);
        if self.userdata {
            f.extend(self.user_fields.iter().cloned());
            f.push(("cpu".to_string(), cpu.to_string()));
            f.push(("taskname".to_string(), task.to_string()));
            f.push(("release".to_string(), self.kernel.to_string()));
            f.push(("msgid".to_string(), msgid.to_string()));
        }
        if self.mode == NcMode::Legacy {
            f.clear();
        }
        f
    }

    /// Bytes a record adds to the history: its encoded body (extended) or console line.
    fn history_size(&self, rec: &Record) -> usize {
        match self.mode {
            NcMode::Extended => encoded_body(rec).len(),
            NcMode::Legacy => console_line(rec).len(),
        }
    }

    fn extended_datagrams(&self, records: &[Record]) -> Vec<NcDatagram> {
        let release = self.release_prefix.then_some(self.kernel);
        let mut scratch = [0u8; 8192];
        let mut out = Vec::new();
        for (at, rec) in records.iter().enumerate() {
            let fields: Vec<(&str, &str)> = rec
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let spec = RecordSpec {
                release,
                level: rec.level,
                seq: rec.seq,
                usec: rec.usec,
                text: &rec.text,
                fields: &fields,
            };
            encode_record(&spec, &mut scratch, |d| {
                out.push(NcDatagram {
                    bytes: d.to_vec(),
                    record: Some(at),
                })
            });
        }
        out
    }
}

/// A record's body as the kernel encodes it.
pub fn encoded_body(rec: &Record) -> Vec<u8> {
    let fields: Vec<(&str, &str)> = rec
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let spec = RecordSpec {
        release: None,
        level: rec.level,
        seq: rec.seq,
        usec: rec.usec,
        text: &rec.text,
        fields: &fields,
    };
    let mut body = Vec::new();
    encode_body(&spec, &mut |b: &[u8]| body.extend_from_slice(b));
    body
}

/// A record as the legacy console prints it: `[%5lu.%06lu] text\n`.
pub fn console_line(rec: &Record) -> Vec<u8> {
    let mut line =
        format!("[{:5}.{:06}] ", rec.usec / 1_000_000, rec.usec % 1_000_000).into_bytes();
    line.extend_from_slice(&rec.text);
    line.push(b'\n');
    line
}

fn escaped_len(text: &[u8]) -> usize {
    let mut n = 0;
    netconsole::escape(text, |b| n += b.len());
    n
}

/// Fills `#` in a template with numbers.
fn fill(rng: &mut Rng, template: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 16);
    for c in template.bytes() {
        if c == b'#' {
            out.extend_from_slice(rng.between(1, 99_999).to_string().as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

/// One ordinary line: level, text and maybe a dictionary. Never a crash line.
fn ordinary_line(
    rng: &mut Rng,
    long_lines: f64,
    line_no: u64,
) -> (u16, Vec<u8>, Option<(&'static str, &'static str)>) {
    const LEVELS: [u16; 7] = [6, 6, 6, 4, 3, 5, 14];
    let level = *rng.pick(&LEVELS).unwrap_or(&6);
    let template = *rng.pick(&ORDINARY).unwrap_or(&ORDINARY[0]);
    let mut text = fill(rng, template);
    if rng.chance(0.08) {
        let odd = *rng.pick(&ODD_BYTES).unwrap_or(&ODD_BYTES[0]);
        let at = rng.below(text.len() as u64) as usize;
        text.splice(at..at, odd.iter().copied());
    }
    if rng.chance(long_lines) {
        // A long line: a hex dump such as drivers print, 1100 to 3000 bytes.
        let want = rng.between(1100, 3000) as usize;
        text.extend_from_slice(format!(" dump #{line_no}:").as_bytes());
        while text.len() < want {
            text.extend_from_slice(format!(" {:016x}", rng.next_u64()).as_bytes());
        }
        text.truncate(want);
    }
    let dict = if rng.chance(0.2) {
        rng.pick(&DICTS).copied()
    } else {
        None
    };
    debug_assert!(!is_crash_line(&text));
    if is_crash_line(&text) {
        // Not reachable with these templates; a healthy machine must never crash.
        return (level, b"ordinary line".to_vec(), dict);
    }
    (level, text, dict)
}

/// A crash burst: (level, text) per record, every text shorter than [`MAX_CRASH_LINE`].
/// A call-trace frame as kernel build `build` has it: the same function, its offset moved.
fn in_build(frame: &str, build: usize) -> String {
    match frame.split_once("+0x") {
        Some((name, rest)) => {
            let (off, size) = rest.split_once('/').unwrap_or((rest, "0x100"));
            let off = u64::from_str_radix(off, 16).unwrap_or(0) + 4 * build as u64;
            format!("{name}+0x{off:x}/{size}")
        }
        None => frame.to_string(),
    }
}

fn crash_burst(rng: &mut Rng, m: &NcMachine) -> Vec<(u16, Vec<u8>)> {
    let drawn = *rng.pick(&CRASH_LINES).unwrap_or(&CRASH_LINES[0]);
    let first = m.kind.map_or(drawn, |k| CRASH_LINES[k as usize]);
    let build = RELEASES.iter().position(|r| *r == m.kernel).unwrap_or(0);
    let mut lines: Vec<(u16, String)> = vec![(1, first.to_string())];
    let task = *rng.pick(&TASKS).unwrap_or(&TASKS[0]);
    let pid = rng.between(1, 40_000);
    let cpu = rng.below(8);
    if first.starts_with("BUG: kernel NULL") {
        lines.push((1, "#PF: supervisor write access in kernel mode".into()));
        lines.push((1, "#PF: error_code(0x0002) - not-present page".into()));
        lines.push((6, "PGD 0 P4D 0 ".into()));
        lines.push((4, "Oops: 0002 [#1] PREEMPT SMP NOPTI".into()));
    }
    lines.push((
        4,
        format!(
            "CPU: {cpu} PID: {pid} Comm: {task} Not tainted {} #1 Debian",
            m.kernel
        ),
    ));
    lines.push((
        4,
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014"
            .into(),
    ));
    let drawn_rip = *rng.pick(&TRACE).unwrap_or(&TRACE[0]);
    let rip = match m.kind {
        Some(k) => in_build(TRACE[(2 * k as usize) % TRACE.len()], build),
        None => drawn_rip.to_string(),
    };
    lines.push((4, format!("RIP: 0010:{rip}")));
    let mut code = String::from("Code:");
    for k in 0..42 {
        let b = rng.below(256);
        if k == 21 {
            code.push_str(&format!(" <{b:02x}>"));
        } else {
            code.push_str(&format!(" {b:02x}"));
        }
    }
    lines.push((4, code));
    let reg = |rng: &mut Rng| 0xffff_0000_0000_0000 | (rng.next_u64() >> 16);
    lines.push((
        4,
        format!(
            "RSP: 0018:{:016x} EFLAGS: 00010246",
            0xffff_b4c0_c000_0000u64 | (rng.next_u64() & 0xff_ffff)
        ),
    ));
    for names in [
        ["RAX", "RBX", "RCX"],
        ["RDX", "RSI", "RDI"],
        ["RBP", "R08", "R09"],
        ["R10", "R11", "R12"],
        ["R13", "R14", "R15"],
    ] {
        let (a, b, c) = (reg(rng), reg(rng), reg(rng));
        lines.push((
            4,
            format!(
                "{}: {a:016x} {}: {b:016x} {}: {c:016x}",
                names[0], names[1], names[2]
            ),
        ));
    }
    lines.push((
        4,
        format!(
            "FS:  00007f{:010x}(0000) GS:ffff9a3c3fc{cpu}0000(0000) knlGS:0000000000000000",
            rng.next_u64() >> 24
        ),
    ));
    lines.push((
        4,
        "CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033".into(),
    ));
    lines.push((4, "Call Trace:".into()));
    lines.push((4, " <TASK>".into()));
    let mut depth = rng.between(4, 10) as usize;
    let mut start = rng.below((TRACE.len() - 3) as u64) as usize;
    if let Some(k) = m.kind {
        // A kind's trace: fixed frames after its faulting function; unreliable `?` frames
        // still come and go, as they do.
        depth = 6;
        start = 2 * k as usize + 1;
    }
    for k in 0..depth {
        let f = in_build(TRACE[(start + k) % TRACE.len()], build);
        let maybe = if rng.chance(0.3) { "? " } else { "" };
        if m.kind.is_some() && !maybe.is_empty() {
            // An extra unreliable frame beside the real one, as stack scans print them.
            lines.push((
                4,
                format!(
                    " ? {}",
                    in_build(TRACE[(start + k + 5) % TRACE.len()], build)
                ),
            ));
        }
        let maybe = if m.kind.is_some() { "" } else { maybe };
        lines.push((4, format!(" {maybe}{f}")));
    }
    lines.push((4, " </TASK>".into()));
    lines.push((
        4,
        "Modules linked in: netconsole e1000 virtio_net net_failover failover ext4 crc16 mbcache jbd2"
            .into(),
    ));
    lines.push((4, "---[ end trace 0000000000000000 ]---".into()));
    // A panic that started the burst ends it the same way; anything else usually panics.
    let panicking = first.strip_prefix("Kernel panic - not syncing: ");
    if panicking.is_some() || rng.chance(0.85) {
        let why = panicking.unwrap_or("Fatal exception");
        if panicking.is_none() {
            lines.push((0, format!("Kernel panic - not syncing: {why}")));
        }
        lines.push((
            0,
            format!(
                "Kernel Offset: 0x{:x} from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)",
                (rng.below(0x3f) + 1) << 24
            ),
        ));
        lines.push((
            0,
            format!("---[ end Kernel panic - not syncing: {why} ]---"),
        ));
    }
    lines
        .into_iter()
        .map(|(l, t)| {
            debug_assert!(t.len() < MAX_CRASH_LINE);
            (l, t.into_bytes())
        })
        .collect()
}

/// Console text in datagrams: usually one line each, sometimes several lines in one (up to
/// [`MAX_PRINT_CHUNK`] bytes), sometimes a line split across two; a line longer than a
/// datagram goes out in [`MAX_PRINT_CHUNK`]-byte pieces, as the kernel's `write_msg` does.
fn legacy_datagrams(rng: &mut Rng, records: &[Record]) -> Vec<NcDatagram> {
    let mut out = Vec::new();
    let mut open: Vec<u8> = Vec::new();
    let flush = |open: &mut Vec<u8>, out: &mut Vec<NcDatagram>| {
        if !open.is_empty() {
            out.push(NcDatagram {
                bytes: std::mem::take(open),
                record: None,
            });
        }
    };
    for rec in records {
        let line = console_line(rec);
        if line.len() > MAX_PRINT_CHUNK {
            flush(&mut open, &mut out);
            for piece in line.chunks(MAX_PRINT_CHUNK) {
                open.extend_from_slice(piece);
                flush(&mut open, &mut out);
            }
            continue;
        }
        if rng.chance(0.08) {
            flush(&mut open, &mut out);
            let at = rng.between(1, line.len() as u64 - 1) as usize;
            open.extend_from_slice(&line[..at]);
            flush(&mut open, &mut out);
            open.extend_from_slice(&line[at..]);
            flush(&mut open, &mut out);
            continue;
        }
        if open.len() + line.len() > MAX_PRINT_CHUNK {
            flush(&mut open, &mut out);
        }
        open.extend_from_slice(&line);
        // Several lines per datagram now and then (a burst of console output).
        if !rng.chance(0.2) {
            flush(&mut open, &mut out);
        }
    }
    flush(&mut open, &mut out);
    out
}

/// What a relay must make of the datagrams that arrive from one machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayView {
    /// A crash line arrived: the relay makes a dump.
    pub dump: bool,
    /// The crash line (unescaped; legacy: the whole console line without its `\n`).
    pub crash_line: Option<Vec<u8>>,
    /// The dump text (empty without a dump).
    pub text: Vec<u8>,
    /// Extended: records received (distinct seq); legacy: datagrams kept.
    pub received: u32,
    /// Extended: seq runs shown as gap lines, `[first, last]`.
    pub missing: Vec<[u64; 2]>,
    /// Extended: seqs of received records with missing fragments.
    pub incomplete: Vec<u64>,
    /// Lowest and highest seq received (extended).
    pub seq_range: Option<[u64; 2]>,
    /// Extended: the crash record's `key=value` lines (userdata and sysdata; dictionary keys
    /// `SUBSYSTEM`/`DEVICE` left out, first value of a repeated key kept), when that record
    /// is whole.
    pub crash_fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A record as the relay holds it: the body bytes that arrived.
struct Held {
    usec: u64,
    body: Vec<u8>,
    have: Vec<bool>,
}

impl RelayView {
    /// The relay's view of `log` when the datagrams arrive in `plan`'s order.
    pub fn of(mode: NcMode, log: &NcLog, plan: &MachinePlan) -> Self {
        let arrivals = plan
            .sends
            .iter()
            .filter_map(|s| log.datagrams.get(s.packet_no as usize))
            .map(|d| d.bytes.as_slice());
        match mode {
            NcMode::Extended => Self::extended(arrivals),
            NcMode::Legacy => Self::legacy(arrivals),
        }
    }

    /// Extended rules: records kept by seq (a duplicate record or fragment is dropped), the
    /// crash is the first arriving record of severity warning or above whose text (in the part
    /// holding its start) is a crash line, reported cut to [`CRASH_LINE_CAP`] bytes; the dump is every
    /// received record in seq order with gap lines between, missing fragment bytes replaced
    /// by a marker.
    pub fn extended<'a>(arrivals: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut held: BTreeMap<u64, Held> = BTreeMap::new();
        let mut crash_line: Option<Vec<u8>> = None;
        let mut crash_seq = None;
        for bytes in arrivals {
            let Ok(Datagram::Extended(e)) = Datagram::parse(bytes) else {
                continue;
            };
            let (offset, total) = match e.fragment {
                Some(f) => (f.offset as usize, f.total as usize),
                None => (0, e.body.len()),
            };
            let h = held.entry(e.seq).or_insert_with(|| Held {
                usec: e.usec,
                body: vec![0; total],
                have: vec![false; total],
            });
            if h.have.get(offset).copied().unwrap_or(true) {
                continue; // a duplicate (fragment)
            }
            let end = (offset + e.body.len()).min(h.body.len());
            h.body[offset..end].copy_from_slice(&e.body[..end - offset]);
            h.have[offset..end].iter_mut().for_each(|b| *b = true);
            // The part that holds the start of the text (a whole record, or the fragment at
            // offset 0) of a record at warning or above is checked when it first arrives; the
            // crash line reported is its text cut to CRASH_LINE_CAP bytes.
            if offset == 0 && crash_line.is_none() && e.severity() <= 4 {
                if let Some(escaped) = netconsole::crash_text(e.body) {
                    let mut text = Vec::new();
                    netconsole::unescape(escaped, |b| text.extend_from_slice(b));
                    text.truncate(CRASH_LINE_CAP);
                    crash_line = Some(text);
                    crash_seq = Some(e.seq);
                }
            }
        }
        let Some(crash_line) = crash_line else {
            return Self::default();
        };
        let mut v = Self {
            dump: true,
            crash_line: Some(crash_line),
            received: u32::try_from(held.len()).unwrap_or(u32::MAX),
            seq_range: held
                .keys()
                .next()
                .zip(held.keys().next_back())
                .map(|(&a, &b)| [a, b]),
            ..Self::default()
        };
        let mut prev: Option<u64> = None;
        for (&seq, h) in &held {
            if let Some(p) = prev {
                if seq > p + 1 {
                    write_gap(p + 1, seq - 1, |b| v.text.extend_from_slice(b));
                    v.missing.push([p + 1, seq - 1]);
                }
            }
            prev = Some(seq);
            let body = if h.have.iter().all(|&b| b) {
                h.body.clone()
            } else {
                v.incomplete.push(seq);
                let mut body = Vec::new();
                let mut at = 0;
                while at < h.body.len() {
                    let run = h.have[at..]
                        .iter()
                        .take_while(|&&b| b == h.have[at])
                        .count();
                    if h.have[at] {
                        body.extend_from_slice(&h.body[at..at + run]);
                    } else {
                        write_fragment_gap(at as u32, (at + run - 1) as u32, |b| {
                            body.extend_from_slice(b)
                        });
                    }
                    at += run;
                }
                body
            };
            let split = Body::split(&body);
            write_line(h.usec, split.text, |b| v.text.extend_from_slice(b));
            if Some(seq) == crash_seq && !v.incomplete.contains(&seq) {
                for (k, val) in split.pairs() {
                    let dict = k == b"SUBSYSTEM" || k == b"DEVICE";
                    if !dict && !v.crash_fields.iter().any(|(have, _)| have == k) {
                        v.crash_fields.push((k.to_vec(), val.to_vec()));
                    }
                }
            }
        }
        v
    }

    /// Legacy rules: every arriving datagram's bytes in arrival order, except one
    /// byte-identical to the datagram that arrived just before it; the crash is the first
    /// complete line of that text whose first [`LEGACY_LINE_CAP`] bytes are a crash line.
    pub fn legacy<'a>(arrivals: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut text = Vec::new();
        let mut prev: Option<&[u8]> = None;
        let mut kept = 0u32;
        for bytes in arrivals {
            if prev != Some(bytes) {
                text.extend_from_slice(bytes);
                kept += 1;
            }
            prev = Some(bytes);
        }
        let crash_line = first_crash_line(&text);
        match crash_line {
            None => Self::default(),
            Some(line) => Self {
                dump: true,
                crash_line: Some(line),
                text,
                received: kept,
                ..Self::default()
            },
        }
    }
}

/// The first `\n`-terminated line of `text` whose first [`LEGACY_LINE_CAP`] bytes are a crash
/// line: those bytes cut to [`CRASH_LINE_CAP`], without the `\n`.
pub fn first_crash_line(text: &[u8]) -> Option<Vec<u8>> {
    text.split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| &l[..(l.len() - 1).min(LEGACY_LINE_CAP)])
        .find(|l| is_crash_line(l))
        .map(|l| l[..l.len().min(CRASH_LINE_CAP)].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::channel::LossModel;
    use crate::gen::scenario::{NetconsoleParams, Protocol};

    pub(crate) fn scenario(machines: u32, chatter: u32) -> Scenario {
        Scenario {
            machines,
            protocol: Protocol::Netconsole,
            source_port: SOURCE_PORT,
            netconsole: NetconsoleParams {
                chatter,
                chatter_lines: 60,
                long_lines: 0.1,
                release: 0.5,
                userdata: 0.5,
                ..NetconsoleParams::default()
            },
            ..Scenario::default()
        }
    }

    #[test]
    fn machines_are_deterministic_and_varied() {
        let s = scenario(40, 40);
        s.validate().unwrap();
        let mut modes = std::collections::HashSet::new();
        let (mut prefixed, mut userdata, mut fragmented) = (0, 0, 0);
        for i in 0..s.senders() {
            let m = NcMachine::of(&s, i);
            let log = m.log();
            assert_eq!(log.records, NcMachine::of(&s, i).log().records);
            assert_eq!(log.datagrams, m.log().datagrams);
            assert_eq!(m.crashing, i < 40);
            modes.insert(m.mode);
            prefixed += u32::from(m.release_prefix);
            userdata += u32::from(m.userdata);
            for (k, r) in log.records.iter().enumerate() {
                assert_eq!(r.seq, m.first_seq + k as u64);
                assert!(!r.text.contains(&b'\n'));
            }
            assert!(log.records.windows(2).all(|w| w[0].usec < w[1].usec));
            for d in &log.datagrams {
                assert!(d.bytes.len() <= MAX_PRINT_CHUNK);
                let parsed = Datagram::parse(&d.bytes).unwrap();
                match (m.mode, parsed) {
                    (NcMode::Extended, Datagram::Extended(e)) => {
                        let rec = &log.records[d.record.unwrap()];
                        assert_eq!((e.seq, e.usec, e.level), (rec.seq, rec.usec, rec.level));
                        assert_eq!(e.release, m.release_prefix.then_some(m.kernel.as_bytes()));
                        fragmented += u32::from(e.fragment.is_some());
                    }
                    (NcMode::Legacy, Datagram::Legacy(_)) => {}
                    (mode, other) => panic!("machine {i} {mode:?}: {other:?}"),
                }
            }
            if m.crashing {
                assert!(log.history_bytes <= HISTORY_BUDGET, "machine {i}");
                let burst: Vec<&Record> = log.records.iter().filter(|r| r.crash).collect();
                assert!(is_crash_line(&burst[0].text));
                assert!(burst.iter().all(|r| r.text.len() < MAX_CRASH_LINE));
                assert!(log
                    .records
                    .iter()
                    .filter(|r| !r.crash)
                    .all(|r| !is_crash_line(&r.text)));
            } else {
                assert!(log
                    .records
                    .iter()
                    .all(|r| !r.crash && !is_crash_line(&r.text)));
            }
        }
        assert_eq!(modes.len(), 2);
        assert!(prefixed > 5 && userdata > 5 && fragmented > 5);
        let other = Scenario {
            seed: 7,
            ..s.clone()
        };
        assert_ne!(
            NcMachine::of(&other, 0).log().datagrams,
            NcMachine::of(&s, 0).log().datagrams
        );
    }

    #[test]
    fn long_logs_stay_within_the_history_budget_and_crash_records_are_whole() {
        let mut s = scenario(60, 0);
        s.netconsole.chatter_lines = 3000;
        for i in 0..s.machines {
            let m = NcMachine::of(&s, i);
            let log = m.log();
            let actual: usize = log.records.iter().map(|r| m.history_size(r)).sum();
            assert_eq!(actual, log.history_bytes);
            assert!(
                log.history_bytes <= HISTORY_BUDGET,
                "machine {i}: {}",
                log.history_bytes
            );
            assert!(
                log.history_bytes > HISTORY_BUDGET * 3 / 4,
                "machine {i} fills its budget: {}",
                log.history_bytes
            );
            for d in &log.datagrams {
                if let Some(r) = d.record.filter(|&r| log.records[r].crash) {
                    let Ok(Datagram::Extended(e)) = Datagram::parse(&d.bytes) else {
                        panic!("machine {i}");
                    };
                    assert_eq!(e.fragment, None, "crash record {r} of machine {i}");
                }
            }
        }
    }

    #[test]
    fn without_loss_the_dump_is_the_log_rerendered() {
        let s = scenario(30, 0);
        for i in 0..s.machines {
            let m = NcMachine::of(&s, i);
            let log = m.log();
            let plan = MachinePlan::of_sender(&s, i, log.datagrams.len() as u32, 1);
            let v = RelayView::of(m.mode, &log, &plan);
            assert!(v.dump && v.missing.is_empty() && v.incomplete.is_empty());
            let first_crash = log.records.iter().find(|r| r.crash).unwrap();
            let mut want = Vec::new();
            for r in &log.records {
                match m.mode {
                    NcMode::Extended => {
                        let mut esc = Vec::new();
                        netconsole::escape(&r.text, |b| esc.extend_from_slice(b));
                        write_line(r.usec, &esc, |b| want.extend_from_slice(b));
                    }
                    NcMode::Legacy => want.extend_from_slice(&console_line(r)),
                }
            }
            assert_eq!(v.text, want, "machine {i}");
            let crash = v.crash_line.unwrap();
            match m.mode {
                NcMode::Extended => assert_eq!(crash, first_crash.text),
                NcMode::Legacy => {
                    let line = console_line(first_crash);
                    assert_eq!(crash, &line[..line.len() - 1]);
                }
            }
        }
    }

    #[test]
    fn fragment_gaps_and_record_gaps_are_marked() {
        // Record 5 unfragmented, record 7 in three fragments of which the middle one is lost.
        let text: Vec<u8> = (0..2500).map(|i| b'a' + (i % 26) as u8).collect();
        let mut dgrams: Vec<Vec<u8>> = Vec::new();
        let mut scratch = [0u8; 8192];
        for (seq, t) in [
            (5u64, &b"Oops: 0002 [#1] SMP"[..]),
            (7, &text[..]),
            (8, b"after"),
        ] {
            let spec = RecordSpec {
                release: None,
                level: 4,
                seq,
                usec: seq * 1_000_000,
                text: t,
                fields: &[],
            };
            encode_record(&spec, &mut scratch, |d| dgrams.push(d.to_vec()));
        }
        assert_eq!(dgrams.len(), 5);
        let arrivals = [&dgrams[4], &dgrams[3], &dgrams[1], &dgrams[0], &dgrams[0]];
        let v = RelayView::extended(arrivals.iter().map(|d| d.as_slice()));
        assert_eq!(v.crash_line.as_deref(), Some(&b"Oops: 0002 [#1] SMP"[..]));
        assert_eq!(v.missing, [[6, 6]]);
        assert_eq!(v.incomplete, [7]);
        assert_eq!(v.received, 3);
        let Datagram::Extended(mid) = Datagram::parse(&dgrams[2]).unwrap() else {
            unreachable!()
        };
        let f = mid.fragment.unwrap();
        let gap = format!(
            "[netconsole: bytes {}-{} missing]",
            f.offset,
            f.offset as usize + mid.body.len() - 1
        );
        let s = String::from_utf8(v.text).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "[    5.000000] Oops: 0002 [#1] SMP");
        assert_eq!(lines[1], "[netconsole: records 6-6 missing]");
        assert!(lines[2].starts_with("[    7.000000] abc"));
        assert!(lines[2].contains(&gap));
        assert_eq!(lines[2].len(), 15 + 2500 - mid.body.len() + gap.len());
        assert_eq!(lines[3], "[    8.000000] after");
    }

    #[test]
    fn legacy_drops_only_back_to_back_copies() {
        let a = b"[    1.000000] hello\n[    1.5".to_vec();
        let b = b"00000] BUG: x\n".to_vec();
        let v = RelayView::legacy([&a[..], &a, &b, &a].into_iter());
        assert_eq!(v.received, 3);
        assert_eq!(v.crash_line.as_deref(), Some(&b"[    1.500000] BUG: x"[..]));
        assert_eq!(v.text, [&a[..], &b, &a].concat());
        assert_eq!(
            RelayView::legacy([&a[..]].into_iter()),
            RelayView::default()
        );
    }

    #[test]
    fn legacy_crash_lines_are_found_in_a_lines_first_512_bytes_and_cut_to_240() {
        let filler = vec![b'x'; 600];
        // A torn long line runs into a crash line past byte 512: not seen; the next one is.
        let late = [&filler[..], b"BUG: late\n[ 2.000000] Oops: 0002 [#1]\n"].concat();
        let v = RelayView::legacy([&late[..]].into_iter());
        assert_eq!(
            v.crash_line.as_deref(),
            Some(&b"[ 2.000000] Oops: 0002 [#1]"[..])
        );
        let early = [b"BUG: early ", &filler[..], b"\n"].concat();
        let v = RelayView::legacy([&early[..]].into_iter());
        assert_eq!(v.crash_line.as_deref(), Some(&early[..CRASH_LINE_CAP]));
    }

    #[test]
    fn healthy_machines_never_crash_even_when_lines_are_torn() {
        let mut s = scenario(0, 200);
        s.loss = LossModel::Independent { p: 0.3 };
        s.duplicate = 0.1;
        s.reorder = 0.1;
        for i in 0..s.senders() {
            let m = NcMachine::of(&s, i);
            let log = m.log();
            let plan = MachinePlan::of_sender(&s, i, log.datagrams.len() as u32, 1);
            assert!(!RelayView::of(m.mode, &log, &plan).dump, "machine {i}");
        }
    }
}
