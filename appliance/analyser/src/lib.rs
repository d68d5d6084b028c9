//! Crash analysis of Linux kernel log text (a netoops or netconsole dump as the collector
//! stores it): what crashed, where, in which process, on which kernel and hardware, and a
//! signature that groups the same crash across machines and kernel builds.
//!
//! The parser follows the kernel's own message formats (`lib/dump_stack.c`,
//! `arch/x86/kernel/dumpstack.c`, `arch/x86/mm/fault.c`, `kernel/panic.c`, `kernel/watchdog.c`,
//! `kernel/hung_task.c`, `kernel/rcu/tree_stall.h`, `mm/oom_kill.c`, `drivers/tty/sysrq.c`). It
//! never panics on any input: dump text is whatever arrived from a dying machine, possibly
//! cut, with `[netoops: packets A-B missing]` / `[netconsole: records A-B missing]` markers.

use std::fmt;

/// What kind of crash a dump shows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, strum::IntoStaticStr, strum::Display,
)]
#[strum(serialize_all = "kebab-case")]
pub enum CrashKind {
    /// `BUG: kernel NULL pointer dereference` (or the older `BUG: unable to handle kernel NULL pointer dereference`).
    NullDeref,
    /// `BUG: unable to handle page fault` / `unable to handle kernel paging request`.
    PageFault,
    /// `kernel BUG at file:line!` (BUG_ON / BUG()).
    Bug,
    /// `general protection fault`.
    Gpf,
    /// `watchdog: BUG: soft lockup`.
    SoftLockup,
    /// `Watchdog detected hard LOCKUP`.
    HardLockup,
    /// `INFO: task ... blocked for more than N seconds`.
    HungTask,
    /// `rcu: INFO: ... detected stall(s)`.
    RcuStall,
    /// `invoked oom-killer` / `Out of memory`.
    Oom,
    /// `sysrq: Trigger a crash` / `sysrq triggered crash`.
    SysrqCrash,
    /// `WARNING: CPU: N PID: N at file:line func+off/size`.
    Warning,
    /// Another `BUG:` line (`BUG: scheduling while atomic`, `BUG: KASAN: ...`).
    #[strum(serialize = "bug-other")]
    OtherBug,
    /// A `Kernel panic - not syncing:` with nothing more specific before it.
    Panic,
    /// An `Oops:` with nothing more specific.
    Oops,
    /// No crash marker found.
    Unknown,
}

impl CrashKind {
    /// Short stable name used in signatures, the index and the web view.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A code location `func+0x1f/0x40 [module]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Function name as printed.
    pub function: String,
    /// Offset into the function.
    pub offset: Option<u64>,
    /// Size of the function.
    pub size: Option<u64>,
    /// Module name, when not built in.
    pub module: Option<String>,
}

impl Frame {
    /// The function with compiler clone suffixes (`.isra.0`, `.constprop.3`, `.cold`, `.part.1`)
    /// removed: those differ between builds of the same source.
    pub fn stable_name(&self) -> &str {
        self.function.split('.').next().unwrap_or(&self.function)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.function)?;
        if let (Some(o), Some(s)) = (self.offset, self.size) {
            write!(f, "+{o:#x}/{s:#x}")?;
        }
        if let Some(m) = &self.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

/// The process that was running (`Comm:` of the `CPU: N PID: N Comm: X` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Command name.
    pub comm: String,
    /// Process id.
    pub pid: Option<u64>,
    /// CPU number.
    pub cpu: Option<u64>,
}

/// A range of lost text, from the relay's markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingMarker {
    /// Zero-based line index in the text.
    pub line: usize,
    /// First missing packet (netoops) or record (netconsole).
    pub first: u64,
    /// Last missing one.
    pub last: u64,
    /// `true` for netconsole records, `false` for netoops packets.
    pub records: bool,
}

/// What the analyser found in one dump's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// Crash type.
    pub kind: CrashKind,
    /// The line that says what happened (without timestamp), if any.
    pub crash_line: Option<String>,
    /// Its zero-based line index in the text.
    pub crash_line_index: Option<usize>,
    /// The faulting location from `RIP:` (or `IP:` on older kernels, or a `WARNING: ... at` line).
    pub rip: Option<Frame>,
    /// Call trace frames after the crash, reliable ones only (`?` frames skipped).
    pub frames: Vec<Frame>,
    /// Taint flags, spaces removed (`"GOE"`); empty string for `Not tainted`.
    pub taint: Option<String>,
    /// Kernel release from the `CPU:` line or the `Linux version` banner.
    pub release: Option<String>,
    /// `Hardware name:` value.
    pub hardware: Option<String>,
    /// The running process.
    pub process: Option<Process>,
    /// Lost text ranges marked by the relay.
    pub missing: Vec<MissingMarker>,
    /// Stable group id: 16 hex digits over the kind and the top frames.
    pub signature: String,
    /// Human-readable form of what the signature covers (`null-deref: foo_bar < baz < qux`).
    pub title: String,
}

/// The analysis rules' version: bumped whenever signatures or fields would come out
/// differently for the same text, so stored indexes know to re-analyse.
pub const VERSION: u32 = 1;

/// How many frames (after the faulting function) the signature covers.
pub const SIGNATURE_FRAMES: usize = 3;

/// Frames that say how the kernel reported the crash rather than where it happened; they are
/// left out of signatures (they are the same for every crash of a kind).
const NOISE_FRAMES: &[&str] = &[
    "dump_stack",
    "dump_stack_lvl",
    "show_stack",
    "show_trace_log_lvl",
    "panic",
    "vpanic",
    "__warn",
    "warn_slowpath_fmt",
    "report_bug",
    "handle_bug",
    "die",
    "__die",
    "__die_body",
    "oops_end",
    "page_fault_oops",
    "no_context",
    "kernelmode_fixup_or_oops",
    "__bad_area_nosemaphore",
    "bad_area_nosemaphore",
    "do_user_addr_fault",
    "do_page_fault",
    "exc_page_fault",
    "asm_exc_page_fault",
    "page_fault",
    "do_trap",
    "do_error_trap",
    "exc_invalid_op",
    "asm_exc_invalid_op",
    "invalid_op",
    "do_invalid_op",
    "exc_general_protection",
    "asm_exc_general_protection",
    "general_protection",
    "do_general_protection",
    "nmi_cpu_backtrace",
    "nmi_trigger_cpumask_backtrace",
    "arch_trigger_cpumask_backtrace",
    "rcu_dump_cpu_stacks",
    "print_cpu_stall",
    "check_cpu_stall",
    "rcu_pending",
    "rcu_sched_clock_irq",
    "update_process_times",
    "tick_sched_handle",
    "tick_sched_timer",
    "tick_nohz_handler",
    "__hrtimer_run_queues",
    "hrtimer_interrupt",
    "__sysvec_apic_timer_interrupt",
    "sysvec_apic_timer_interrupt",
    "asm_sysvec_apic_timer_interrupt",
    "apic_timer_interrupt",
    "smp_apic_timer_interrupt",
    "watchdog_timer_fn",
    "dump_header",
    "oom_kill_process",
    "out_of_memory",
    "check_panic_on_oom",
    "entry_SYSCALL_64_after_hwframe",
    "do_syscall_64",
    "ret_from_fork",
    "ret_from_fork_asm",
    "die_addr",
    "__schedule",
    "schedule",
    "schedule_timeout",
    "io_schedule",
    "io_schedule_timeout",
    "schedule_preempt_disabled",
    "printk",
    "_printk",
];

/// Strips a syslog level `<4>`, a timestamp `[   12.345678]` and a caller id `[ T123]` /
/// `[ C1]` from the start of a line.
pub fn strip_prefix(line: &str) -> &str {
    let mut s = line.trim_end_matches('\r');
    if let Some(rest) = s.strip_prefix('<') {
        if let Some(end) = rest.find('>') {
            if end <= 3 && rest[..end].bytes().all(|b| b.is_ascii_digit()) {
                s = &rest[end + 1..];
            }
        }
    }
    for _ in 0..2 {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix('[') {
            if let Some(end) = rest.find(']') {
                let inner = rest[..end].trim();
                let ts = !inner.is_empty()
                    && inner.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && inner.contains('.');
                let caller = inner.len() >= 2
                    && (inner.starts_with('T') || inner.starts_with('C'))
                    && inner[1..].bytes().all(|b| b.is_ascii_digit());
                if ts || caller {
                    s = rest[end + 1..]
                        .strip_prefix(' ')
                        .unwrap_or(&rest[end + 1..]);
                    continue;
                }
            }
        }
        break;
    }
    s
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

/// Parses `func+0x1f/0x40 [module]` (also with a leading `[<ffffffff81000000>]` address, as
/// older kernels print, or a `0010:` code segment as `RIP:` lines carry).
pub fn parse_frame(s: &str) -> Option<Frame> {
    let mut s = s.trim();
    // `0010:func+0x..`, the code segment selector in RIP lines.
    if let Some((seg, rest)) = s.split_once(':') {
        if seg.len() == 4 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
            s = rest;
        }
    }
    // `[<ffffffff8108b0ba>] func+...` (pre-4.x traces and RIP lines).
    while let Some(rest) = s.strip_prefix("[<") {
        let end = rest.find(">]")?;
        s = rest[end + 2..].trim_start();
    }
    let mut parts = s.split_whitespace();
    let sym = parts.next()?;
    let module = parts
        .next()
        .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string);
    let (function, offset, size) = match sym.split_once('+') {
        Some((f, off)) => {
            let (o, sz) = off.split_once('/')?;
            (f, Some(parse_hex(o)?), Some(parse_hex(sz)?))
        }
        None => (sym, None, None),
    };
    let valid = !function.is_empty()
        && function
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$')
        && !function.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid || offset.is_none() {
        return None;
    }
    Some(Frame {
        function: function.to_string(),
        offset,
        size,
        module,
    })
}

/// One line of a call trace: `Some(None)` for an unreliable `?` frame or a trace delimiter
/// (`<TASK>`, `<IRQ>`, ...), `Some(Some(frame))` for a reliable frame, `None` for a line that
/// is not part of a trace.
fn trace_line(line: &str) -> Option<Option<Frame>> {
    let t = line.trim();
    if t.starts_with('<') && t.ends_with('>') && !t.contains(' ') {
        return Some(None);
    }
    let mut body = t;
    while let Some(rest) = body.strip_prefix("[<") {
        let end = rest.find(">]")?;
        body = rest[end + 2..].trim_start();
    }
    if let Some(rest) = body.strip_prefix("? ") {
        return parse_frame(rest).map(|_| None);
    }
    // Only indented lines (or address-prefixed ones) belong to a trace.
    if !(line.starts_with(' ') || line.starts_with('\t') || t.starts_with("[<")) {
        return None;
    }
    parse_frame(body).map(Some)
}

fn kind_of(line: &str) -> Option<CrashKind> {
    let l = line;
    let has = |p: &str| l.contains(p);
    if has("NULL pointer dereference") {
        Some(CrashKind::NullDeref)
    } else if has("BUG: unable to handle page fault")
        || has("unable to handle kernel paging request")
    {
        Some(CrashKind::PageFault)
    } else if has("kernel BUG at ") {
        Some(CrashKind::Bug)
    } else if has("general protection fault") {
        Some(CrashKind::Gpf)
    } else if has("BUG: soft lockup") {
        Some(CrashKind::SoftLockup)
    } else if has("hard LOCKUP") {
        Some(CrashKind::HardLockup)
    } else if has("INFO: task ") && has(" blocked for more than ") {
        Some(CrashKind::HungTask)
    } else if (has("rcu") || has("INFO:")) && (has("detected stall") || has("self-detected stall"))
    {
        Some(CrashKind::RcuStall)
    } else if has("invoked oom-killer") || has("Out of memory") || has("deadlocked on memory") {
        Some(CrashKind::Oom)
    } else if has("sysrq: Trigger a crash")
        || has("SysRq : Trigger a crash")
        || has("sysrq triggered crash")
    {
        Some(CrashKind::SysrqCrash)
    } else if l.starts_with("WARNING: ") {
        Some(CrashKind::Warning)
    } else if l.starts_with("BUG: ") || has(" BUG: ") {
        Some(CrashKind::OtherBug)
    } else if has("Kernel panic - not syncing") {
        Some(CrashKind::Panic)
    } else if l.starts_with("Oops: ") || l.starts_with("Oops ") {
        Some(CrashKind::Oops)
    } else {
        None
    }
}

fn missing_marker(line: &str, index: usize) -> Option<MissingMarker> {
    const NETOOPS: &str = "[netoops: packets ";
    const NETCONSOLE: &str = "[netconsole: records ";
    let (body, records) = if let Some(i) = line.find(NETOOPS) {
        (&line[i + NETOOPS.len()..], false)
    } else if let Some(i) = line.find(NETCONSOLE) {
        (&line[i + NETCONSOLE.len()..], true)
    } else {
        return None;
    };
    let range = &body[..body.find(" missing]")?];
    let (a, b) = range.split_once('-')?;
    Some(MissingMarker {
        line: index,
        first: a.trim().parse().ok()?,
        last: b.trim().parse().ok()?,
        records,
    })
}

/// `CPU: 1 PID: 42 Comm: bash Tainted: G   OE   6.1.0-18-amd64 #1 Debian ...` (also with
/// `UID: 0` after the CPU, and `Not tainted`).
fn cpu_line(line: &str) -> Option<(Process, Option<String>, Option<String>)> {
    let rest = line.strip_prefix("CPU: ")?;
    let (cpu_s, rest) = rest.split_once(' ')?;
    let cpu = cpu_s.parse().ok();
    let pid_at = rest.find("PID: ")?;
    let after_pid = &rest[pid_at + 5..];
    let (pid_s, rest) = after_pid.split_once(' ')?;
    let pid = pid_s.parse().ok();
    let rest = rest.trim_start().strip_prefix("Comm: ")?;
    Some(comm_taint_release(rest, pid, cpu))
}

/// `Pid: 2347, comm: bash Not tainted 2.6.32-431.el6.x86_64 #1 ...` (2.6.x kernels).
fn old_pid_line(line: &str) -> Option<(Process, Option<String>, Option<String>)> {
    let rest = line.strip_prefix("Pid: ")?;
    let (pid_s, rest) = rest.split_once(", comm: ")?;
    Some(comm_taint_release(rest, pid_s.trim().parse().ok(), None))
}

/// The rest of a `CPU:` or `Pid:` line from the comm on: `bash Tainted: G   OE   6.1.0 #1 ...`.
/// The comm may contain spaces; it ends before ` Tainted: ` / ` Not tainted`.
fn comm_taint_release(
    rest: &str,
    pid: Option<u64>,
    cpu: Option<u64>,
) -> (Process, Option<String>, Option<String>) {
    let i = rest
        .find(" Not tainted")
        .or_else(|| rest.find(" Tainted: "))
        .unwrap_or(rest.len());
    let (comm, tail) = rest.split_at(i);
    let (taint, release) = match taint_release(tail) {
        Some((f, r)) => (Some(f), r),
        None => (None, None),
    };
    let process = Process {
        comm: comm.trim().to_string(),
        pid,
        cpu,
    };
    (process, taint, release)
}

/// `... [comm:pid]` at the end of a soft lockup line.
fn lockup_process(line: &str) -> Option<Process> {
    let open = line.rfind('[')?;
    comm_pid(line[open + 1..].strip_suffix(']')?)
}

/// `INFO: task jbd2/sda1-8:123 blocked for more than 120 seconds.`
fn hung_process(line: &str) -> Option<Process> {
    let after = &line[line.find("INFO: task ")? + "INFO: task ".len()..];
    comm_pid(&after[..after.find(" blocked")?])
}

/// `comm:pid`, split at the last colon (a comm may contain colons); no CPU.
fn comm_pid(s: &str) -> Option<Process> {
    let (comm, pid) = s.rsplit_once(':')?;
    Some(Process {
        comm: comm.to_string(),
        pid: Some(pid.parse().ok()?),
        cpu: None,
    })
}

/// `WARNING: CPU: 0 PID: 1 at drivers/foo.c:12 foo_probe+0x10/0x20 [foo]`.
fn warning_frame(line: &str) -> Option<Frame> {
    let at = line.find(" at ")?;
    let after = line[at + 4..].trim();
    let (_, sym) = after.split_once(' ')?;
    parse_frame(sym)
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The signature of a crash: its kind, the faulting function and the top reliable frames
/// (noise frames of the reporting path left out), names only, so builds with other offsets,
/// addresses or compiler clone suffixes group together.
pub fn signature(kind: CrashKind, rip: Option<&Frame>, frames: &[Frame]) -> (String, String) {
    let mut names: Vec<&str> = Vec::new();
    if let Some(r) = rip {
        names.push(r.stable_name());
    }
    for f in frames {
        if names.len() > SIGNATURE_FRAMES {
            break;
        }
        let n = f.stable_name();
        if NOISE_FRAMES.contains(&n) || names.last() == Some(&n) {
            continue;
        }
        names.push(n);
    }
    let mut key = String::from(kind.as_str());
    for n in &names {
        key.push('\n');
        key.push_str(n);
    }
    let title = if names.is_empty() {
        kind.as_str().to_string()
    } else {
        format!("{}: {}", kind.as_str(), names.join(" < "))
    };
    (format!("{:016x}", fnv1a(key.as_bytes())), title)
}

/// How much a crash marker says about why the machine went down: 2 for faults that kill the
/// task or the machine (null dereference, page fault, BUG, GPF, sysrq crash), 1 for reports
/// that are fatal only when configured so (lockups, hung tasks, RCU stalls, OOM), 0 for
/// generic lines (warnings, other `BUG:`, `Oops`, a bare panic).
fn tier(kind: CrashKind) -> u8 {
    match kind {
        CrashKind::NullDeref
        | CrashKind::PageFault
        | CrashKind::Bug
        | CrashKind::Gpf
        | CrashKind::SysrqCrash => 2,
        CrashKind::SoftLockup
        | CrashKind::HardLockup
        | CrashKind::HungTask
        | CrashKind::RcuStall
        | CrashKind::Oom => 1,
        _ => 0,
    }
}

/// `Not tainted 6.1.0 #1 ...` or `Tainted: G   OE   6.1.0 #1 ...`: flags and release.
fn taint_release(s: &str) -> Option<(String, Option<String>)> {
    let s = s.trim_start();
    let (flags, tail) = if let Some(rest) = s.strip_prefix("Not tainted") {
        (String::new(), rest)
    } else if let Some(after) = s.strip_prefix("Tainted: ") {
        // One column per taint flag, a letter or a space (`G           OE     `); the release
        // follows and starts with a digit.
        let end = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == ' '))
            .unwrap_or(after.len());
        let flags: String = after[..end].chars().filter(|c| *c != ' ').collect();
        let pos = end;
        (flags, &after[pos..])
    } else {
        return None;
    };
    let release = tail
        .split_whitespace()
        .next()
        .filter(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string);
    Some((flags, release))
}

/// Analyses one dump's text.
pub fn analyse(text: &str) -> Analysis {
    let lines: Vec<&str> = text.lines().map(strip_prefix).collect();
    let mut a = Analysis {
        kind: CrashKind::Unknown,
        crash_line: None,
        crash_line_index: None,
        rip: None,
        frames: Vec::new(),
        taint: None,
        release: None,
        hardware: None,
        process: None,
        missing: Vec::new(),
        signature: String::new(),
        title: String::new(),
    };
    // The crash line: the first line of the most telling tier (see `tier`). So a warning, an
    // OOM kill or a hung task report earlier in the log does not hide the oops after it, and
    // the `Kernel panic` that follows an oops does not replace it.
    let mut banner_release = None;
    let mut best: [Option<(usize, CrashKind)>; 3] = [None; 3];
    for (i, line) in lines.iter().enumerate() {
        if let Some(m) = missing_marker(line, i) {
            a.missing.push(m);
            continue;
        }
        if banner_release.is_none() {
            if let Some(rest) = line.strip_prefix("Linux version ") {
                banner_release = rest.split_whitespace().next().map(str::to_string);
            }
        }
        if let Some(k) = kind_of(line) {
            let t = usize::from(tier(k));
            if best[t].is_none() {
                best[t] = Some((i, k));
            }
        }
    }
    if let Some((i, k)) = best.iter().rev().flatten().next() {
        a.kind = *k;
        a.crash_line_index = Some(*i);
    }
    // With no fault, a panic that names its reason (`hung_task: blocked tasks`, `softlockup`,
    // `Out of memory`) picks the last report of that kind before it, not an older one.
    if best[2].is_none() {
        let panic = lines.iter().enumerate().find_map(|(i, l)| {
            let reason = l.split_once("Kernel panic - not syncing:")?.1;
            let kind = if reason.contains("hung_task") {
                CrashKind::HungTask
            } else if reason.contains("softlockup") {
                CrashKind::SoftLockup
            } else if reason.contains("LOCKUP") {
                CrashKind::HardLockup
            } else if reason.contains("RCU") {
                CrashKind::RcuStall
            } else {
                kind_of(reason).filter(|k| tier(*k) == 1)?
            };
            Some((i, kind))
        });
        if let Some((p, kind)) = panic {
            // An OOM episode starts at `invoked oom-killer`; its `Out of memory` lines follow.
            let starts = |i: usize| {
                kind_of(lines[i]) == Some(kind)
                    && (kind != CrashKind::Oom || lines[i].contains("invoked oom-killer"))
            };
            let report = (0..=p)
                .rev()
                .find(|&i| starts(i))
                .or_else(|| (0..=p).rev().find(|&i| kind_of(lines[i]) == Some(kind)));
            a.kind = kind;
            a.crash_line_index = Some(report.unwrap_or(p));
        }
    }
    if let Some(i) = a.crash_line_index {
        a.crash_line = Some(lines[i].trim().to_string());
    }
    let start = a.crash_line_index.unwrap_or(0);
    let crash = a.crash_line.clone().unwrap_or_default();
    match a.kind {
        CrashKind::SoftLockup => a.process = lockup_process(&crash),
        CrashKind::HungTask => a.process = hung_process(&crash),
        CrashKind::Warning => a.rip = warning_frame(&crash),
        _ => {}
    }
    // Header lines, RIP and the first call trace after the crash line.
    let mut in_trace = false;
    let mut trace_done = false;
    let mut saw_task = false;
    let mut in_irq = false;
    let mut task_frames = Vec::new();
    for line in lines.iter().skip(start) {
        if missing_marker(line, 0).is_some() {
            continue;
        }
        if let Some((proc_, taint, release)) = cpu_line(line).or_else(|| old_pid_line(line)) {
            if a.process.is_none() {
                a.process = Some(proc_);
            }
            if a.taint.is_none() {
                a.taint = taint;
            }
            if a.release.is_none() {
                a.release = release;
            }
            continue;
        }
        if let Some((flags, release)) = taint_release(line) {
            // The hung task report's indented `Not tainted 6.1.0 #1` line.
            if a.taint.is_none() {
                a.taint = Some(flags);
            }
            if a.release.is_none() {
                a.release = release;
            }
            continue;
        }
        if a.hardware.is_none() {
            if let Some(h) = line.strip_prefix("Hardware name: ") {
                a.hardware = Some(h.trim().to_string());
                continue;
            }
        }
        let t = line.trim();
        if a.rip.is_none() {
            if let Some(r) = t.strip_prefix("RIP: ").or_else(|| t.strip_prefix("IP: ")) {
                a.rip = parse_frame(r);
                continue;
            }
        }
        if trace_done {
            continue;
        }
        if t.starts_with("Call Trace:") || t == "Call trace:" {
            in_trace = true;
            continue;
        }
        if !in_trace {
            continue;
        }
        match t {
            "<TASK>" => {
                saw_task = true;
                in_irq = false;
                continue;
            }
            "</TASK>" => {
                trace_done = !a.frames.is_empty();
                continue;
            }
            "<IRQ>" | "<NMI>" | "<SOFTIRQ>" | "<#DF>" => {
                in_irq = true;
                continue;
            }
            "</IRQ>" | "</NMI>" | "</SOFTIRQ>" | "</#DF>" => {
                in_irq = false;
                continue;
            }
            _ => {}
        }
        if t.starts_with("---[ end trace") || t.starts_with("Modules linked in:") {
            trace_done = !a.frames.is_empty();
            continue;
        }
        match trace_line(line) {
            Some(Some(f)) => {
                if !in_irq {
                    task_frames.push(f.clone());
                }
                a.frames.push(f);
            }
            Some(None) => {}
            // Register lines inside `<TASK>` (an interrupted context) do not end the trace;
            // without the delimiters (older kernels) the first other line does.
            None => trace_done = !saw_task && !a.frames.is_empty(),
        }
    }
    if a.release.is_none() {
        a.release = banner_release;
    }
    let sig_frames = if task_frames.is_empty() {
        &a.frames
    } else {
        &task_frames
    };
    let (sig, title) = signature(a.kind, a.rip.as_ref(), sig_frames);
    a.signature = sig;
    a.title = title;
    a
}

#[cfg(test)]
mod tests;
