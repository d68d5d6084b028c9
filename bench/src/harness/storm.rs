//! The crash storm: many machines crash within a short window and all send at once, into the
//! appliance image ([`run_storm`]) and into the hosted relay ([`run_hosted_storm`]).
//!
//! Frames reach the guest over `-netdev stream` (QEMU connects to the generator): TCP carries
//! them without loss, and the generator keeps at most [`STORM_IN_FLIGHT`] bytes of frames
//! between itself and the guest's receive ring ([`crate::gen::output::inflight`]), so the
//! storm is offered as fast as the guest takes it, through no more buffering than a real
//! path has, and every dump that ends up partial was cut by the relay itself (its memory
//! budget), never by the host. Without the bound QEMU's stream netdev queues whatever it
//! reads, without limit, and a machine's first datagram waited seconds behind that queue. The questions answered: how
//! many dumps complete, how many partial, whether any stored dump lacks its newest chunk
//! (packet 0, which the relay must keep above all), and whether memory stayed within budget
//! (heap peak within the heap, reassembly chunks within the pool, the guest still running).
//!
//! Into the hosted relay the storm goes over loopback UDP, where nothing pushes back, so it is
//! paced at the relay's lossless rate: unpaced, the kernel's socket drops would decide what
//! arrives. Both storms report the two latencies, per machine: first datagram sent to its
//! crash line durable (the crash notice must not wait behind the storm's dumps), and
//! completing datagram sent to its complete dump durable; and the dumps stored per second.

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use super::process::{capacity_after_in, number_after, number_after_in, Process};
use super::report::StormResult;
use super::stats::Summary;
use super::storage::{Storage, StoredDump};
use super::target::{
    frame_config, ms_between, per_second, start_collector, start_hosted_relay, start_image, Nic,
    Programs, TargetSettings, INGRESS_IP, INGRESS_MAC,
};
use crate::gen::output::frame::MacAddr;
use crate::gen::output::inflight::InFlightBound;
use crate::gen::output::qemu::StreamOutput;
use crate::gen::output::udp::UdpOutput;
use crate::gen::{
    run, Output, Progress, RunOptions, RunReport, Scenario, Schedule, SendLog, SizeRange, Timed,
    Timing,
};

/// The most bytes of frames between the generator and the guest's receive ring in the image
/// storm: about a switch port's buffer (a few MB) plus a NIC's ring (256 descriptors of
/// 1.4 KiB frames) on a real path, where whatever does not fit is dropped; here the
/// generator waits instead, so the storm stays lossless.
pub const STORM_IN_FLIGHT: u64 = 4 << 20;

/// Bytes of frames between two of the bound's markers (16 markers per bound, fewer than the
/// markers it can tell apart).
const STORM_MARKER_EVERY: u64 = 256 << 10;

/// The in-flight bound of the image storm.
pub fn storm_bound() -> InFlightBound {
    InFlightBound {
        bytes: STORM_IN_FLIGHT,
        marker_every: STORM_MARKER_EVERY,
        guest_ip: INGRESS_IP,
        guest_mac: INGRESS_MAC.parse().unwrap_or(MacAddr::QEMU_DEFAULT),
        marker_base: Ipv4Addr::new(10, 0, 3, 128),
    }
}

/// What storm to run.
#[derive(Clone, Debug)]
pub struct StormSettings {
    pub machines: u32,
    pub log_size: SizeRange,
    pub window: Duration,
    pub nic: Nic,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The collector's key of machine `i`'s dump (generation 0).
pub fn dump_key(s: &Scenario, i: u32) -> String {
    let h = s.machine(i).header;
    format!(
        "b{}-d{}-t{}-v{}-g0",
        h.boot_id,
        h.dump_id,
        h.dump_type as u16,
        h.variant.version() as u16
    )
}

/// Every dump stored for source `ip` (a machine whose dump was flushed early and heard again
/// can have a second occurrence, `<key>-o1`).
fn stored_dumps(storage: &Storage, ip: &str) -> Vec<StoredDump> {
    let Ok(entries) = fs::read_dir(storage.dir().join(ip)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name.strip_suffix(".json")?;
            storage.dump(ip, key)
        })
        .collect()
}

/// Renders a progress bar line for [`Progress`].
pub fn progress_line(p: &Progress) -> String {
    let total = p.machines.max(1);
    let done = p.schedule.machines_done.min(total);
    let share = f64::from(done) / f64::from(total);
    let width = 30;
    let filled = (share * width as f64).round() as usize;
    let secs = p.elapsed.as_secs_f64();
    let eta = if done > 0 && done < total {
        format!("{:.0} s", secs / share - secs)
    } else {
        "-".into()
    };
    format!(
        "[{}{}] {:>5.1}%  machines {done}/{total}  {} datagrams  {:.0}/s  ETA {eta}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        share * 100.0,
        p.schedule.datagrams,
        p.schedule.datagrams as f64 / secs.max(1e-9)
    )
}

/// A progress line on stderr: redrawn in place on a terminal, else one line every few
/// seconds (logs stay readable).
struct Bar {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Bar {
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        use std::io::IsTerminal;
        Self {
            tty: io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2Kstorm: {text}");
            let _ = io::stderr().flush();
            self.drawn = true;
        } else if self.last.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            eprintln!("storm: {text}");
            self.last = Some(Instant::now());
        }
    }

    fn done(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
        self.last = None;
    }
}

/// The highest `chunks X/Y` in the relay's counter lines, with the pool size.
fn chunks_peak(qemu: &Process, from: usize) -> (Option<u64>, Option<u64>) {
    let mut peak = None;
    let mut capacity = None;
    for line in qemu.lines_with(from, "counters:") {
        let Some(used) = number_after_in(&line.text, "held", "chunks") else {
            continue;
        };
        peak = Some(peak.map_or(used, |p: u64| p.max(used)));
        if let Some(cap) = capacity_after_in(&line.text, "held", "chunks") {
            capacity = Some(cap);
        }
    }
    (peak, capacity)
}

/// The storm's fleet, from `source_base` on.
fn storm_scenario(storm: &StormSettings, source_base: Ipv4Addr) -> io::Result<Scenario> {
    let scenario = Scenario {
        machines: storm.machines,
        log_size: storm.log_size,
        seed: 7,
        timing: Timing::Storm {
            window: storm.window,
        },
        source_base,
        ..Scenario::default()
    };
    scenario
        .validate()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(scenario)
}

/// Sends the whole storm through `output` at `rate` (0: as fast as it takes them), stamping
/// each machine's send times.
fn send_storm(
    output: &mut dyn Output,
    scenario: &Scenario,
    rate: u64,
    storm: &StormSettings,
    bar: &mut Bar,
) -> io::Result<(RunReport, SendLog)> {
    let mut log = SendLog::new(scenario.machines);
    let show = storm.progress;
    let report = {
        let mut timed = Timed::new(output, &mut log);
        run(
            &mut Schedule::new(scenario.clone()),
            &mut timed,
            RunOptions {
                rate,
                ..RunOptions::default()
            },
            &mut |p: &Progress| {
                if show {
                    bar.show(&progress_line(p));
                }
            },
        )?
    };
    bar.done();
    Ok((report, log))
}

/// Every machine's source address, as the collector names its directory.
fn source_ips(scenario: &Scenario) -> Vec<String> {
    (0..scenario.machines)
        .map(|i| {
            scenario
                .source_of(i)
                .map(|s| s.ip().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Waits for the collector: every machine stored complete, or nothing new for `settle`, or
/// `give_up` since `start`, or the relay gone (`alive` says false).
fn wait_stored(
    storage: &Storage,
    ips: &[String],
    settle: Duration,
    give_up: (Instant, Duration),
    alive: &mut dyn FnMut() -> bool,
    storm: &StormSettings,
    bar: &mut Bar,
) {
    let mut pending: Vec<usize> = (0..ips.len()).collect();
    let mut stored_partial = 0usize;
    let mut last_change = Instant::now();
    loop {
        let mut partial_now = 0;
        let before = pending.len();
        pending.retain(|&i| {
            let dumps = stored_dumps(storage, &ips[i]);
            if dumps.iter().any(|d| d.complete) {
                return false;
            }
            partial_now += usize::from(!dumps.is_empty());
            true
        });
        if pending.len() != before || partial_now != stored_partial {
            stored_partial = partial_now;
            last_change = Instant::now();
        }
        if pending.is_empty()
            || last_change.elapsed() >= settle
            || give_up.0.elapsed() >= give_up.1
            || !alive()
        {
            break;
        }
        if storm.progress {
            bar.show(&format!(
                "waiting for the collector: {} of {} machines stored complete",
                ips.len() - pending.len(),
                ips.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bar.done();
}

/// Counts what the collector stored for every machine, and the latencies: first datagram
/// sent to crash line durable, completing datagram sent to complete dump durable, and the
/// stored dumps per second (first datagram sent to last dump durable).
fn tally(
    storage: &Storage,
    scenario: &Scenario,
    ips: &[String],
    log: &SendLog,
    result: &mut StormResult,
) {
    let mut crash_ms = Vec::new();
    let mut durable_ms = Vec::new();
    let mut first_sent = None::<u64>;
    let mut last_durable = None::<u64>;
    let mut stored = 0usize;
    for i in 0..scenario.machines {
        let ip = &ips[i as usize];
        let times = log.machine(i);
        if let Some(t) = times.filter(|t| t.first_ns > 0) {
            first_sent = Some(first_sent.map_or(t.first_ns, |f| f.min(t.first_ns)));
        }
        let dumps = stored_dumps(storage, ip);
        if dumps.is_empty() {
            result.dumps_missing += 1;
            continue;
        }
        stored += 1;
        for d in &dumps {
            last_durable = Some(last_durable.map_or(d.durable_ns, |l| l.max(d.durable_ns)));
        }
        match dumps.iter().find(|d| d.complete) {
            Some(d) => {
                result.dumps_complete += 1;
                if let Some(t) = times {
                    durable_ms.push(ms_between(t.complete_ns, d.durable_ns));
                }
            }
            None => result.dumps_partial += 1,
        }
        if !dumps.iter().any(StoredDump::has_newest_chunk) {
            result.newest_chunk_lost += 1;
            if result.newest_chunk_lost_examples.len() < 5 {
                result
                    .newest_chunk_lost_examples
                    .push(format!("{ip}/{}", dump_key(scenario, i)));
            }
        }
        if let (Some(c), Some(t)) = (storage.crash_line_ns(ip), times) {
            crash_ms.push(ms_between(t.first_ns, c));
        }
    }
    result.crash_line_latency = Summary::of(&crash_ms);
    result.durable_latency = Summary::of(&durable_ms);
    result.stored_dumps_per_s = per_second(stored, first_sent, last_durable);
    result.every_dump_kept_newest_chunk =
        result.newest_chunk_lost == 0 && result.dumps_missing == 0;
}

/// The relay's counter lines from `mark` on (the guest's or the hosted relay's, which print
/// the same line): chunk pool peak and size, records dropped, datagrams without memory.
fn relay_counters(relay: &Process, mark: usize, result: &mut StormResult) {
    (result.chunks_peak, result.chunks_capacity) = chunks_peak(relay, mark);
    if let Some(l) = relay.last_line_with(mark, "counters:") {
        if let Err(e) = netoops_core::console::counters(&l.text) {
            eprintln!("storm: {e}; the counters below may be misread");
        }
        result.final_counters = l.text.trim().to_string();
        result.relay_dropped_records = number_after(&l.text, "dropped");
        result.relay_no_memory = number_after(&l.text, "no_memory");
    }
}

/// The result's fixed part.
fn storm_result(
    target: &str,
    scenario: &Scenario,
    storm: &StormSettings,
    report: &RunReport,
    rate: u64,
    transport: &str,
) -> StormResult {
    StormResult {
        target: target.into(),
        offered_pps: rate,
        machines: scenario.machines,
        log_bytes: storm.log_size.max,
        window_ms: u64::try_from(storm.window.as_millis()).unwrap_or(u64::MAX),
        transport: transport.into(),
        datagrams_sent: report.schedule.datagrams,
        send_s: report.elapsed.as_secs_f64(),
        achieved_pps: report.rate(),
        ..StormResult::default()
    }
}

/// What [`send_and_wait`] sent and where the collector stored it.
struct Sent {
    storage: Storage,
    ips: Vec<String>,
    report: RunReport,
    log: SendLog,
    /// From the first datagram to the collector's last store (or giving up).
    elapsed: Duration,
}

impl Sent {
    /// The storm's result for `target`: what was sent and what the collector stored.
    fn result(
        &self,
        target: &str,
        scenario: &Scenario,
        storm: &StormSettings,
        rate: u64,
        transport: &str,
    ) -> StormResult {
        let mut result = storm_result(target, scenario, storm, &self.report, rate, transport);
        result.elapsed_s = self.elapsed.as_secs_f64();
        tally(&self.storage, scenario, &self.ips, &self.log, &mut result);
        result
    }
}

/// Sends the storm through `output` at `rate` (0: as fast as it goes) and waits until the
/// collector in `dir` stored every machine, nothing new came for the quiet time and 5 s, or
/// the patience ran out; `alive` says whether the relay still runs.
fn send_and_wait(
    output: &mut dyn Output,
    scenario: &Scenario,
    dir: &Path,
    rate: u64,
    target: &TargetSettings,
    storm: &StormSettings,
    alive: &mut dyn FnMut() -> bool,
) -> io::Result<Sent> {
    let storage = Storage::watched(dir)?;
    let ips = source_ips(scenario);
    storage.prepare(ips.iter().map(String::as_str))?;
    let start = Instant::now();
    let mut bar = Bar::new();
    let (report, log) = send_storm(output, scenario, rate, storm, &mut bar)?;
    let settle = Duration::from_millis(target.quiet_ms) + Duration::from_secs(5);
    wait_stored(
        &storage,
        &ips,
        settle,
        (start, target.patience * 4),
        alive,
        storm,
        &mut bar,
    );
    Ok(Sent {
        storage,
        ips,
        report,
        log,
        elapsed: start.elapsed(),
    })
}

/// How the image storm's frames went, with what the in-flight bound did.
fn stream_transport(output: &StreamOutput) -> String {
    let base = "frames over -netdev stream (TCP, no loss on the host)";
    match output.in_flight() {
        Some(f) if f.is_off() => format!(
            "{base}; in-flight bound given up: the guest answered no ARP marker, so QEMU \
             queued without limit"
        ),
        Some(f) => format!(
            "{base}, at most {} KiB of frames between the generator and the guest's ring \
             (peak {} KiB; the generator waited {} times, {:.1} s in all)",
            f.bound().bytes >> 10,
            f.peak >> 10,
            f.waits,
            f.waited.as_secs_f64()
        ),
        None => format!("{base}; no in-flight bound"),
    }
}

/// Runs the storm against the image; transcripts go to `work`.
pub fn run_storm(
    programs: &Programs,
    target: &TargetSettings,
    storm: &StormSettings,
    work: &Path,
) -> io::Result<StormResult> {
    let dir = work.join("storm-collector");
    let (mut collector, caddr) = start_collector(programs, &dir)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let netdev =
        format!("stream,id=in,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    let (mut qemu, _boot) = start_image(programs, target, storm.nic, netdev, caddr.port())?;
    let mut output = StreamOutput::accept(&listener, frame_config(), Duration::from_secs(30))?;
    output.bound_in_flight(storm_bound())?;
    let scenario = storm_scenario(storm, Ipv4Addr::new(10, 100, 0, 1))?;
    let mark = qemu.line_count();
    let sent = send_and_wait(&mut output, &scenario, &dir, 0, target, storm, &mut || {
        qemu.running()
    })?;

    let mut result = sent.result(
        &format!(
            "image-{}",
            match storm.nic {
                Nic::VirtioNet => "virtio-net",
                Nic::E1000e => "e1000e",
            }
        ),
        &scenario,
        storm,
        0,
        &stream_transport(&output),
    );
    result.vm_memory_mib = target.vm_memory_mib;

    // Memory: the guest's own lines, read after one more counter interval.
    let alive = qemu.running();
    let _ = qemu.wait_for(qemu.line_count(), "memory: heap", Duration::from_secs(2));
    if let Some(l) = qemu.last_line_with(mark, "memory: heap") {
        result.heap_peak_bytes = number_after(&l.text, "peak");
        result.heap_total_bytes = number_after(&l.text, "total");
    }
    result.memory_measure = "guest heap peak and size (`memory: heap` line)".into();
    relay_counters(&qemu, mark, &mut result);
    if let Some(budget) = qemu
        .last_line_with(0, "config:")
        .and_then(|l| config_size(&l.text, "memory="))
    {
        result.reassembly_budget_bytes = budget;
    }
    if let Some(spool) = qemu
        .last_line_with(0, "config:")
        .and_then(|l| config_size(&l.text, "spool="))
    {
        result.spool_bytes = spool;
    }
    result.within_budget = match (
        result.heap_peak_bytes,
        result.heap_total_bytes,
        result.chunks_peak,
        result.chunks_capacity,
    ) {
        (Some(hp), Some(ht), Some(cp), Some(cc)) => Some(alive && hp <= ht && cp <= cc),
        _ => None,
    };

    qemu.stop(Duration::from_secs(3));
    collector.stop(Duration::from_secs(3));
    let _ = fs::write(work.join("storm-qemu.log"), qemu.transcript());
    let _ = fs::write(work.join("storm-collector.log"), collector.transcript());
    let _ = fs::write(work.join("storm-send-log.csv"), sent.log.to_csv(&scenario));
    Ok(result)
}

/// Runs the storm against the hosted relay over loopback UDP at `rate` datagrams/s (0: as
/// fast as the generator sends), each machine from its own 127.x address, with the relay's
/// default budgets and the suite's flags; transcripts go to `work`.
pub fn run_hosted_storm(
    programs: &Programs,
    target: &TargetSettings,
    storm: &StormSettings,
    rate: u64,
    work: &Path,
) -> io::Result<StormResult> {
    let dir = work.join("hosted-storm-collector");
    let (mut collector, caddr) = start_collector(programs, &dir)?;
    let (mut relay, addr) = start_hosted_relay(programs, target, caddr)?;
    let scenario = storm_scenario(storm, Ipv4Addr::new(127, 100, 0, 1))?;
    let bind = scenario
        .source_of(0)
        .ok_or_else(|| io::Error::other("no source address"))?;
    let mut output = UdpOutput::new(addr, bind)?;
    let mark = relay.line_count();
    let sent = send_and_wait(
        &mut output,
        &scenario,
        &dir,
        rate,
        target,
        storm,
        &mut || relay.running(),
    )?;

    let mut result = sent.result(
        "hosted-relay",
        &scenario,
        storm,
        rate,
        "UDP on loopback (the relay's receive buffer as in its trials)",
    );

    // One more counter interval, so the last line covers the whole storm.
    let alive = relay.running();
    let _ = relay.wait_for(relay.line_count(), "counters:", Duration::from_secs(2));
    relay_counters(&relay, mark, &mut result);
    result.spool_bytes = result
        .final_counters
        .split(" spool ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|f| f.split('/').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    result.heap_peak_bytes = relay.peak_rss_bytes();
    result.memory_measure = "peak resident set of the relay process (VmHWM)".into();
    result.within_budget = match (result.chunks_peak, result.chunks_capacity) {
        (Some(cp), Some(cc)) => Some(alive && cp <= cc),
        _ => None,
    };

    relay.stop(Duration::from_secs(3));
    collector.stop(Duration::from_secs(3));
    let _ = fs::write(work.join("hosted-storm-relay.log"), relay.transcript());
    let _ = fs::write(
        work.join("hosted-storm-collector.log"),
        collector.transcript(),
    );
    let _ = fs::write(
        work.join("hosted-storm-send-log.csv"),
        sent.log.to_csv(&scenario),
    );
    Ok(result)
}

/// A `key=SIZE` value of the guest's `config:` line, in bytes.
fn config_size(line: &str, key: &str) -> Option<u64> {
    let word = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
    let (digits, mult) = match word.chars().last()? {
        'K' => (&word[..word.len() - 1], 1u64 << 10),
        'M' => (&word[..word.len() - 1], 1 << 20),
        'G' => (&word[..word.len() - 1], 1 << 30),
        _ => (word, 1),
    };
    digits.parse::<u64>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_expectations() {
        let s = Scenario {
            machines: 20,
            log_size: "2K-8K".parse().unwrap(),
            ..Scenario::default()
        };
        for i in 0..s.machines {
            assert_eq!(dump_key(&s, i), crate::gen::Expectation::of(&s, i).key);
        }
    }

    #[test]
    fn config_sizes_and_progress() {
        let line = "config: ip=10.0.3.15/24 memory=64M spool=16M max_dumps=4096";
        assert_eq!(config_size(line, "memory="), Some(64 << 20));
        assert_eq!(config_size(line, "spool="), Some(16 << 20));
        assert_eq!(config_size(line, "max_dumps="), Some(4096));
        assert_eq!(config_size(line, "quiet="), None);
        let p = Progress {
            elapsed: Duration::from_secs(10),
            schedule: crate::gen::ScheduleStats {
                machines_done: 25,
                datagrams: 1000,
                ..Default::default()
            },
            machines: 100,
        };
        let line = progress_line(&p);
        assert!(
            line.starts_with("[########......................]  25.0%"),
            "{line}"
        );
        assert!(
            line.contains("ETA 30 s") && line.contains("100/s"),
            "{line}"
        );
    }
}
