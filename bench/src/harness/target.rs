//! The systems under test, started for real, and one trial against any of them.
//!
//! | target | receives | what runs |
//! |---|---|---|
//! | `baseline` | UDP on loopback | `netoops-bench baseline` (counts datagrams) |
//! | `hosted-relay` | UDP on loopback | `netoops-relay` -> `netoops-collect serve` |
//! | `image-virtio-net`, `image-e1000e` | raw frames, `-netdev dgram` | the appliance image in QEMU (TCG) -> `netoops-collect serve` |
//!
//! The image gets two NICs: the ingress one under test (frames from the generator, each
//! machine with its own source address and MAC) and a virtio-net upstream NIC on QEMU user
//! networking, through which the guest reaches the collector on host loopback as
//! `10.0.2.2:PORT`.
//!
//! A trial ([`Running::trial`]) sends one sequential fleet at one rate, then waits until every
//! dump is at the collector complete, or until nothing has changed for the relay's quiet
//! time plus a margin, and reports what arrived. Each trial uses its own source addresses, so
//! trials never see each other's dumps.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netoops_image::qemu::{Machine, QemuCommand};

use super::baseline::Counts;
use super::process::{number_after, number_after_in, number_before, Process};
use super::report::{DumpCounts, Trial};
use super::storage::Storage;
use crate::gen::output::frame::{FrameConfig, MacAddr};
use crate::gen::output::qemu::DgramOutput;
use crate::gen::output::udp::UdpOutput;
use crate::gen::{
    run, Expectation, Output, Progress, RunOptions, Scenario, Schedule, SendLog, SizeRange, Timed,
    Timing,
};
use netoops_core::console;

/// Which system a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Baseline,
    HostedRelay,
    Image(Nic),
}

/// The image's ingress NIC model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    VirtioNet,
    E1000e,
}

impl Kind {
    /// Every target, in the order a suite runs them (the baseline first: it sets the top rate).
    pub const ALL: [Kind; 4] = [
        Kind::Baseline,
        Kind::HostedRelay,
        Kind::Image(Nic::VirtioNet),
        Kind::Image(Nic::E1000e),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::HostedRelay => "hosted-relay",
            Kind::Image(Nic::VirtioNet) => "image-virtio-net",
            Kind::Image(Nic::E1000e) => "image-e1000e",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether dumps go to a collector (everything but the baseline).
    pub fn relays(self) -> bool {
        self != Kind::Baseline
    }

    pub fn description(self) -> &'static str {
        match self {
            Kind::Baseline => {
                "counts datagrams only, with the hosted relay's recvmmsg socket (64 per call, \
                 same receive buffer), UDP on loopback"
            }
            Kind::HostedRelay => {
                "netoops-relay (release build, default budgets) on Linux, UDP on loopback, \
                 forwarding to netoops-collect on loopback"
            }
            Kind::Image(Nic::VirtioNet) => {
                "the appliance image under QEMU TCG (q35, 1 vCPU), ingress virtio-net-pci fed \
                 raw frames through -netdev dgram, upstream over a second virtio-net on user \
                 networking"
            }
            Kind::Image(Nic::E1000e) => {
                "the appliance image under QEMU TCG (q35, 1 vCPU), ingress e1000e fed raw \
                 frames through -netdev dgram, upstream over a virtio-net on user networking"
            }
        }
    }
}

/// Programs and files a suite runs.
#[derive(Clone, Debug)]
pub struct Programs {
    pub relay: PathBuf,
    pub collector: PathBuf,
    /// `netoops-bench` itself (for the `baseline` subcommand).
    pub bench: PathBuf,
    /// The appliance image (a private copy).
    pub image: PathBuf,
}

/// Settings shared by every target of a run.
#[derive(Clone, Debug)]
pub struct TargetSettings {
    /// Machines per trial.
    pub machines: u32,
    /// Log size of each.
    pub log_size: SizeRange,
    /// Guest RAM, MiB.
    pub vm_memory_mib: u32,
    /// The relays' quiet time (a dump with no packet for this long is emitted partial).
    pub quiet_ms: u64,
    /// Receive buffer of the hosted relay and the baseline.
    pub recv_buffer: usize,
    /// Longest wait for QEMU to boot, connect, or drain.
    pub patience: Duration,
}

/// The hosted relay's flags (besides addresses).
pub fn relay_flags(s: &TargetSettings) -> Vec<String> {
    vec![
        "--stats".into(),
        "200ms".into(),
        "--quiet".into(),
        format!("{}ms", s.quiet_ms),
        "--recv-buffer".into(),
        s.recv_buffer.to_string(),
    ]
}

/// The image's command line (besides the collector's port).
pub fn image_cmdline(s: &TargetSettings, collector_port: u16) -> String {
    format!(
        "ip={INGRESS_IP}/24 nic={INGRESS_MAC} upstream_nic={UPSTREAM_MAC} \
         upstream_nic.ip=10.0.2.15/24 upstream_nic.gw=10.0.2.2 upstream=10.0.2.2:{collector_port} \
         stats=200ms quiet={}ms",
        s.quiet_ms
    )
}

/// The guest's ingress address and MACs.
pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);
pub const INGRESS_MAC: &str = "52:54:00:12:34:56";
pub const UPSTREAM_MAC: &str = "52:54:00:12:34:57";

/// A free UDP port on 127.0.0.1 (bound and released: good enough on a test host).
pub fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The address of the first line with `needle` that `parse` (one of `netoops_core::console`'s
/// readers) accepts, waiting up to `patience` for it; `listening on ` never takes the
/// `netconsole listening on ` line, whatever order they come in.
pub fn listening_addr(
    p: &mut Process,
    needle: &str,
    parse: fn(&str) -> Option<SocketAddr>,
    patience: Duration,
) -> io::Result<SocketAddr> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let seen = p.line_count();
        if let Some(addr) = p.lines_with(0, needle).iter().find_map(|l| parse(&l.text)) {
            return Ok(addr);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::other(format!("no address after {needle:?}")));
        }
        p.wait_for(seen, needle, left)?;
    }
}

/// The body of `GET /metrics` from a relay's HTTP endpoint (one request per connection, as
/// it serves; read it with `netoops_core::http::metrics::read`).
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_string()),
        _ => Err(io::Error::other(format!(
            "GET /metrics from {addr}: {text:.200}"
        ))),
    }
}

/// Starts a collector storing into `dir`.
pub fn start_collector(programs: &Programs, dir: &Path) -> io::Result<(Process, SocketAddr)> {
    let mut cmd = Command::new(&programs.collector);
    cmd.args([
        "serve",
        "--allow-plaintext",
        "--listen",
        "127.0.0.1:0",
        "--dir",
    ])
    .arg(dir);
    let mut p = Process::spawn("netoops-collect", cmd)?;
    let addr = listening_addr(
        &mut p,
        console::LISTENING,
        console::listening,
        Duration::from_secs(30),
    )?;
    Ok((p, addr))
}

/// Starts the hosted relay forwarding to the collector at `collector`; returns it and the
/// address it receives netoops datagrams on, once it is connected upstream.
pub fn start_hosted_relay(
    programs: &Programs,
    s: &TargetSettings,
    collector: SocketAddr,
) -> io::Result<(Process, SocketAddrV4)> {
    let mut cmd = Command::new(&programs.relay);
    cmd.args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(collector.to_string())
        .args(relay_flags(s));
    let mut p = Process::spawn("netoops-relay", cmd)?;
    let addr = v4(listening_addr(
        &mut p,
        console::LISTENING,
        console::listening,
        Duration::from_secs(30),
    )?)?;
    p.wait_for(0, "upstream 0 connected", Duration::from_secs(30))?;
    Ok((p, addr))
}

/// The one documented reason `image-e1000e` is skipped: the host's QEMU has no `e1000e`
/// device model (some distribution builds leave it out). The board drives the 82574L, so any
/// other failure to start it is a broken target, and `tests/tests/bench_smoke.rs` fails on it.
pub const E1000E_SKIP_REASON: &str = "qemu-system-x86_64 has no e1000e device model";

/// Whether this host's QEMU lists the device `model` in `-device help`.
pub fn qemu_has_device(model: &str) -> bool {
    Command::new(netoops_image::qemu::QEMU)
        .args(["-device", "help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(&format!("name \"{model}\"")))
        })
        .unwrap_or(false)
}

/// Starts QEMU with the image; `ingress_netdev` is the `-netdev` of the NIC under test
/// (`id=in`). Returns the process and the time to the `ready:` line. An e1000e target on a
/// QEMU without that model fails with [`E1000E_SKIP_REASON`].
pub fn start_image(
    programs: &Programs,
    s: &TargetSettings,
    nic: Nic,
    ingress_netdev: String,
    collector_port: u16,
) -> io::Result<(Process, Duration)> {
    let model = match nic {
        Nic::VirtioNet => "virtio-net-pci",
        Nic::E1000e => "e1000e",
    };
    if nic == Nic::E1000e && !qemu_has_device(model) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            E1000E_SKIP_REASON,
        ));
    }
    let cmd = QemuCommand::new(Machine::Q35)
        .memory_mib(s.vm_memory_mib)
        .kernel(&programs.image)
        .cmdline(image_cmdline(s, collector_port))
        .netdev(ingress_netdev)
        .device(format!("{model},romfile=,netdev=in,mac={INGRESS_MAC}"))
        .netdev("user,id=up")
        .device(format!(
            "virtio-net-pci,romfile=,netdev=up,mac={UPSTREAM_MAC}"
        ));
    let started = Instant::now();
    let mut p = Process::spawn("qemu", cmd.command())?;
    let ready = p.wait_for(0, "ready: listening on", s.patience)?;
    let boot = ready.at.saturating_duration_since(started);
    p.wait_for(0, "upstream 0 connected", s.patience)?;
    Ok((p, boot))
}

/// A started target.
pub struct Running {
    pub kind: Kind,
    settings: TargetSettings,
    /// The receiving process (baseline, relay or QEMU).
    receiver: Process,
    collector: Option<Process>,
    storage: Option<Storage>,
    output: Box<dyn Output>,
    /// From QEMU start to `ready:`.
    pub boot: Option<Duration>,
    /// The kernel's own figure: kernel entry to ready, ms (`boot: ready <N> ms after kernel
    /// entry`), without QEMU's start-up and the firmware.
    pub kernel_ready_ms: Option<f64>,
    trials: usize,
}

/// What a trial measured, besides the [`Trial`] record.
#[derive(Clone, Debug, Default)]
pub struct TrialDetail {
    /// Per complete dump: completing datagram sent -> dump durable, ms.
    pub durable_ms: Vec<f64>,
    /// Per dump with a crash line: first datagram sent -> crash line written, ms.
    pub crash_line_ms: Vec<f64>,
    /// Complete dumps stored per second, from the first datagram sent to the last complete
    /// dump durable.
    pub stored_dumps_per_s: Option<f64>,
}

impl Running {
    /// Starts `kind` with its collector (relay targets) under `work`.
    pub fn start(
        kind: Kind,
        programs: &Programs,
        settings: &TargetSettings,
        work: &Path,
    ) -> io::Result<Running> {
        let s = settings.clone();
        let first_source = trial_scenario(kind, &s, 0)
            .source_of(0)
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        match kind {
            Kind::Baseline => {
                let mut cmd = Command::new(&programs.bench);
                cmd.args(["baseline", "--listen", "127.0.0.1:0", "--recv-buffer"])
                    .arg(s.recv_buffer.to_string());
                let mut p = Process::spawn("baseline", cmd)?;
                let addr = v4(listening_addr(
                    &mut p,
                    "baseline: listening on ",
                    console::listening,
                    Duration::from_secs(30),
                )?)?;
                Ok(Running {
                    kind,
                    receiver: p,
                    collector: None,
                    storage: None,
                    output: Box::new(UdpOutput::new(addr, first_source)?),
                    boot: None,
                    kernel_ready_ms: None,
                    trials: 0,
                    settings: s,
                })
            }
            Kind::HostedRelay => {
                let dir = work.join("hosted-relay-collector");
                let (collector, caddr) = start_collector(programs, &dir)?;
                let (p, addr) = start_hosted_relay(programs, &s, caddr)?;
                Ok(Running {
                    kind,
                    receiver: p,
                    collector: Some(collector),
                    storage: Some(Storage::watched(dir)?),
                    output: Box::new(UdpOutput::new(addr, first_source)?),
                    boot: None,
                    kernel_ready_ms: None,
                    trials: 0,
                    settings: s,
                })
            }
            Kind::Image(nic) => {
                let dir = work.join(format!("{}-collector", kind.name()));
                let (collector, caddr) = start_collector(programs, &dir)?;
                let qemu_port = free_udp_port()?;
                let qemu_addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, qemu_port);
                let output = DgramOutput::new(qemu_addr, None, frame_config())?;
                let gen_port = output.local_addr()?.port();
                let netdev = format!(
                    "dgram,id=in,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},\
                     remote.type=inet,remote.host=127.0.0.1,remote.port={gen_port}"
                );
                let (p, boot) = start_image(programs, &s, nic, netdev, caddr.port())?;
                // Printed right after `ready:`, which start_image waited for.
                let kernel_ready_ms = p
                    .last_line_with(0, console::BOOT_READY)
                    .and_then(|l| console::boot_ready_ms(&l.text))
                    .map(|ms| ms as f64);
                Ok(Running {
                    kind,
                    receiver: p,
                    collector: Some(collector),
                    storage: Some(Storage::watched(dir)?),
                    output: Box::new(output),
                    boot: Some(boot),
                    kernel_ready_ms,
                    trials: 0,
                    settings: s,
                })
            }
        }
    }

    /// The receiving process.
    pub fn receiver(&self) -> &Process {
        &self.receiver
    }

    /// Datagrams the target has counted so far, from its latest report line.
    fn received_total(&self) -> Option<u64> {
        match self.kind {
            Kind::Baseline => self
                .receiver
                .last_line_with(0, "baseline: datagrams")
                .and_then(|l| Counts::parse(&l.text))
                .map(|c| c.datagrams),
            Kind::HostedRelay => self
                .receiver
                .last_line_with(0, "counters:")
                .and_then(|l| number_after_in(&l.text, "counters:", "datagrams")),
            Kind::Image(_) => self
                .receiver
                .last_line_with(0, "fastpath:")
                .and_then(|l| number_after(&l.text, "datagrams")),
        }
    }

    /// Waits for the next report line (after position `from`) and returns the total.
    fn received_after(&mut self, from: usize) -> Option<u64> {
        let needle = match self.kind {
            Kind::Baseline => "baseline: datagrams",
            Kind::HostedRelay => "counters:",
            Kind::Image(_) => "fastpath:",
        };
        // Report lines come every 100-200 ms; the baseline only prints on change.
        let _ = self.receiver.wait_for(from, needle, Duration::from_secs(2));
        self.received_total()
    }

    /// Memory high-water mark in bytes and what it is.
    pub fn memory_high_water(&self) -> (Option<u64>, String) {
        match self.kind {
            Kind::Baseline | Kind::HostedRelay => (
                self.receiver.peak_rss_bytes(),
                "peak resident set of the process (VmHWM)".into(),
            ),
            Kind::Image(_) => match self.receiver.last_line_with(0, "memory: heap") {
                Some(l) => (
                    number_after(&l.text, "peak"),
                    "guest heap peak from the guest's `memory: heap` counter line (the reassembly \
                     and spool budgets are allocated up front)"
                        .into(),
                ),
                None => (None, "guest heap: no memory line on the console".into()),
            },
        }
    }

    /// TSC cycles per datagram in the guest's fast path since boot (image targets).
    pub fn cycles_per_datagram(&self) -> Option<u64> {
        let line = self.receiver.last_line_with(0, "fastpath:")?;
        // `... cycles/datagram interval N boot N`, or the older `... N interval N boot`.
        number_after(&line.text, "boot").or_else(|| number_before(&line.text, "boot"))
    }

    /// Runs one search trial at `rate` datagrams/s (0: as fast as possible).
    pub fn trial(&mut self, rate: u64) -> io::Result<(Trial, TrialDetail)> {
        let scenario = trial_scenario(self.kind, &self.settings, self.trials);
        self.trials += 1;
        self.send_and_settle(&scenario, rate)
    }

    /// The latency run: `machines` crash one by one, spread evenly over `window`, each
    /// sending at no more than `rate` datagrams/s, so dumps mostly meet an idle pipeline.
    pub fn latency_run(
        &mut self,
        machines: u32,
        window: Duration,
        rate: u64,
    ) -> io::Result<(Trial, TrialDetail)> {
        let mut scenario = trial_scenario(self.kind, &self.settings, 0);
        scenario.machines = machines.max(1);
        scenario.seed = 99;
        scenario.timing = Timing::Storm { window };
        scenario.source_base = match self.kind {
            Kind::Image(_) => Ipv4Addr::new(10, 240, 0, 1),
            _ => Ipv4Addr::new(127, 240, 0, 1),
        };
        self.send_and_settle(&scenario, rate)
    }

    fn send_and_settle(
        &mut self,
        scenario: &Scenario,
        rate: u64,
    ) -> io::Result<(Trial, TrialDetail)> {
        // Expected texts are computed before sending, so the check costs no sending time.
        let expected: Vec<Expectation> = if self.kind.relays() {
            (0..scenario.machines)
                .map(|i| Expectation::of(scenario, i))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(storage) = &self.storage {
            storage.prepare(expected.iter().map(|e| e.ip.as_str()))?;
        }
        let mark = self.receiver.line_count();
        let before = self.received_total().unwrap_or(0);
        let cpu_before = self.receiver.cpu_ns();
        let mut log = SendLog::new(scenario.machines);
        let report = {
            let mut timed = Timed::new(self.output.as_mut(), &mut log);
            run(
                &mut Schedule::new(scenario.clone()),
                &mut timed,
                RunOptions { rate, batch: 64 },
                &mut |_: &Progress| {},
            )?
        };
        let sent = report.schedule.datagrams;
        let (dumps, detail) = match &self.storage {
            Some(storage) => {
                let patience = match self.kind {
                    Kind::Image(_) => self.settings.patience,
                    _ => Duration::from_secs(60),
                };
                let settle = Duration::from_millis(self.settings.quiet_ms) + Duration::from_secs(2);
                let (d, detail) = settle_dumps(storage, &expected, &log, settle, patience);
                (Some(d), detail)
            }
            None => {
                self.wait_for_count(before + sent, Duration::from_millis(600));
                (None, TrialDetail::default())
            }
        };
        let received = self
            .received_after(mark.max(self.receiver.line_count()))
            .map(|t| t.saturating_sub(before));
        let cpu = match (self.kind, cpu_before, self.receiver.cpu_ns(), received) {
            (Kind::Baseline | Kind::HostedRelay, Some(a), Some(b), Some(n)) if n > 0 => {
                Some(b.saturating_sub(a) as f64 / n as f64)
            }
            _ => None,
        };
        let elapsed = report.elapsed.as_secs_f64();
        let achieved = report.rate();
        let lossless = match dumps {
            Some(d) => d.lossless(),
            None => received == Some(sent),
        };
        let trial = Trial {
            offered_pps: rate,
            achieved_pps: achieved,
            achieved_gbps: report.bits_per_second() / 1e9,
            rate_held: rate == 0 || (achieved - rate as f64).abs() <= 0.02 * rate as f64,
            datagrams_sent: sent,
            elapsed_s: elapsed,
            received_datagrams: received,
            received_pps: received
                .filter(|_| elapsed > 0.0)
                .map(|r| r as f64 / elapsed),
            dumps,
            cpu_ns_per_datagram: cpu,
            lossless,
            stored_dumps_per_s: detail.stored_dumps_per_s,
        };
        Ok((trial, detail))
    }

    /// Waits until the baseline counted `total`, or its count stood still for `still`.
    fn wait_for_count(&mut self, total: u64, still: Duration) {
        let mut last = self.received_total();
        let mut since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let now = self.received_total();
            if now.is_some_and(|n| n >= total) {
                return;
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= still {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops everything and writes the transcripts into `work`.
    pub fn stop(mut self, work: &Path) {
        self.receiver.stop(Duration::from_secs(3));
        let _ = fs::write(
            work.join(format!("{}.log", self.kind.name())),
            self.receiver.transcript(),
        );
        if let Some(mut c) = self.collector.take() {
            c.stop(Duration::from_secs(3));
            let _ = fs::write(
                work.join(format!("{}-collector.log", self.kind.name())),
                c.transcript(),
            );
        }
    }
}

pub fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::other("expected an IPv4 address")),
    }
}

/// Frames to the guest's ingress NIC.
pub fn frame_config() -> FrameConfig {
    FrameConfig {
        dst_mac: INGRESS_MAC.parse().unwrap_or(MacAddr::QEMU_DEFAULT),
        src_mac: None,
        dst: SocketAddrV4::new(INGRESS_IP, netoops_wire::DEFAULT_PORT),
        udp_checksum: true,
    }
}

/// The fleet of trial `index`: sequential machines, no loss, sources of their own.
pub fn trial_scenario(kind: Kind, s: &TargetSettings, index: usize) -> Scenario {
    // 127.x for loopback UDP (all of 127/8 is local), 10.x for frames; 4 /16s per trial.
    let second = 20 + 4 * (index % 50) as u8;
    let source_base = match kind {
        Kind::Baseline | Kind::HostedRelay => Ipv4Addr::new(127, second, 0, 1),
        Kind::Image(_) => Ipv4Addr::new(10, second, 0, 1),
    };
    Scenario {
        machines: s.machines,
        log_size: s.log_size,
        seed: 1000 + index as u64,
        timing: Timing::Sequential,
        source_base,
        ..Scenario::default()
    }
}

/// Watches the collector until every expected dump is complete, or nothing changed for
/// `settle`, or `patience` ran out; then counts.
pub fn settle_dumps(
    storage: &Storage,
    expected: &[Expectation],
    log: &SendLog,
    settle: Duration,
    patience: Duration,
) -> (DumpCounts, TrialDetail) {
    let start = Instant::now();
    let mut pending: Vec<usize> = (0..expected.len()).collect();
    let mut detail = TrialDetail::default();
    let mut counts = DumpCounts {
        expected: u32::try_from(expected.len()).unwrap_or(u32::MAX),
        ..DumpCounts::default()
    };
    let mut partial_seen = 0usize;
    let mut last_change = Instant::now();
    let first_sent = expected
        .iter()
        .filter_map(|e| log.machine(e.machine).map(|t| t.first_ns))
        .filter(|&ns| ns > 0)
        .min();
    let mut last_durable = None::<u64>;
    loop {
        let mut partial_now = 0usize;
        pending.retain(|&i| {
            let e = &expected[i];
            let Some(d) = storage.dump(&e.ip, &e.key) else {
                return true;
            };
            if !d.complete {
                partial_now += 1;
                return true;
            }
            last_change = Instant::now();
            counts.complete += 1;
            if !storage.text_is(&e.ip, &e.key, &e.text).unwrap_or(false) {
                counts.wrong_text += 1;
            }
            let times = log.machine(e.machine).cloned().unwrap_or_default();
            last_durable = Some(last_durable.map_or(d.durable_ns, |l| l.max(d.durable_ns)));
            detail
                .durable_ms
                .push(ms_between(times.complete_ns, d.durable_ns));
            if let Some(c) = storage.crash_line_ns(&e.ip) {
                detail.crash_line_ms.push(ms_between(times.first_ns, c));
            }
            false
        });
        if partial_now != partial_seen {
            partial_seen = partial_now;
            last_change = Instant::now();
        }
        if pending.is_empty() || last_change.elapsed() >= settle || start.elapsed() >= patience {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &i in &pending {
        let e = &expected[i];
        match storage.dump(&e.ip, &e.key) {
            Some(_) => counts.partial += 1,
            None => counts.missing += 1,
        }
    }
    detail.stored_dumps_per_s = per_second(counts.complete as usize, first_sent, last_durable);
    (counts, detail)
}

/// `count` events per second between `from_ns` and `to_ns` (`None` without both ends, or
/// when they are not in order).
pub fn per_second(count: usize, from_ns: Option<u64>, to_ns: Option<u64>) -> Option<f64> {
    let span = to_ns?.checked_sub(from_ns?).filter(|&d| d > 0)?;
    Some(count as f64 * 1e9 / span as f64)
}

/// Milliseconds from `from_ns` to `to_ns` (negative if the clock says so).
pub fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_trials_do_not_overlap() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("nope"), None);
        let s = TargetSettings {
            machines: 1000,
            log_size: "64K".parse().unwrap(),
            vm_memory_mib: 256,
            quiet_ms: 1000,
            recv_buffer: 8 << 20,
            patience: Duration::from_secs(60),
        };
        for kind in [Kind::HostedRelay, Kind::Image(Nic::VirtioNet)] {
            let a = trial_scenario(kind, &s, 0);
            let b = trial_scenario(kind, &s, 1);
            a.validate().unwrap();
            let last_a = a.source_of(a.machines - 1).unwrap();
            assert!(last_a.ip() < b.source_of(0).unwrap().ip());
            assert_ne!(a.seed, b.seed);
        }
        assert!(image_cmdline(&s, 4000).contains("upstream=10.0.2.2:4000"));
        assert_eq!(
            per_second(30, Some(1_000_000_000), Some(3_000_000_000)),
            Some(15.0)
        );
        assert_eq!(per_second(30, Some(3), Some(3)), None);
        assert_eq!(per_second(30, Some(5), Some(3)), None);
        assert_eq!(per_second(30, None, Some(3)), None);
        let f = frame_config();
        assert_eq!(f.dst.port(), 2004);
        assert_eq!(f.dst_mac.to_string(), INGRESS_MAC);
    }
}
