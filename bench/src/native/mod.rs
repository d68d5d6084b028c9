//! `netoops-bench native`: the image's receive path run natively on the host, stage by stage.
//!
//! The code measured is the code the kernel runs: the virtio-net and e1000e drivers
//! (`netoops-virtio-net`, `netoops-e1000`) over the host platform double, the fast path and
//! its burst loop (`netoops-fastpath`: classification, the hand-off to the relay), and the
//! core's `Relay` (reassembly, the spool) with its upstream link. Only the machine is
//! simulated: a device that fills the receive ring as the hardware does ([`nics`]), and the
//! collector at the far end of the link ([`peer`]).
//!
//! Traffic: the crash storm of issue 2 ([`storm`]: by default 1,000 machines, 128 KiB logs,
//! three interleaved rounds of 1412-byte datagrams), pre-built as Ethernet/IPv4/UDP frames
//! with UDP checksums. Per burst of [`BURST`] frames (the kernel's), the device fills the ring
//! and the driver drains it through the path; the device's work is timed apart and left out.
//!
//! Stage attribution: four variants, run interleaved in every iteration, each a full storm
//! through the same NIC:
//!
//! 1. `driver`: receive every frame (the token lends the DMA slot), drop it, `poll` per burst;
//! 2. `+ fast path`: also [`netoops_fastpath::classify`] each frame in place;
//! 3. `+ engine`: also the datagram into a `Reassembler` (the relay's configuration, plain
//!    slots as in the image) whose sink only counts events;
//! 4. the whole path: the kernel's own [`receive_burst`] with a [`FastPath`] into a `Relay`
//!    (allowlist, reassembly, crash notices and dumps encoded into the spool), and after
//!    every burst a turn of the upstream link: it writes what it may into a 512 KiB buffer
//!    (the image's TCP send buffer) and takes the collector's `Ack` (the collector's decoding
//!    is not timed); whatever is left after the storm is written then, timed. The bursts and
//!    the link's turns are timed apart (`rdtsc` around each, per burst).
//!
//! `driver`, `fast path` and `engine` are each their variant minus the one before; `spool` is
//! the whole path's bursts minus the engine variant; `link` is the whole path's link turns.
//! All in the same iteration; the table shows medians over iterations (so the stages'
//! medians need not add up to the whole path's). Cycles are the TSC's (`rdtsc`), its
//! frequency measured against `std::time::Instant`; the 1 KiB copy baseline of `benches/reassembly.rs` runs in the same
//! iterations over the same frames.
//!
//! Every run checks its outcome (all frames received, every machine's dump complete, at the
//! collector for the relay variants) and the report carries the counts.

pub mod nics;
pub mod peer;
pub mod storm;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;

use netoops_core::config::Config;
use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler};
use netoops_core::relay::Relay;
use netoops_core::time::{Duration, Instant};
use netoops_fastpath::{classify, receive_burst, Classified, Cycles, FastPath, Identity, BURST};
use netoops_nic::{Device, RxToken};
use netoops_wire::DATA_LEN;
use serde::Serialize;

use nics::{SimE1000, SimNic, SimVirtio};
use peer::Peer;
use storm::{FrameStorm, Receiver, Storm};

/// Bytes the upstream link may write per burst: the image's TCP send buffer
/// (`image/kernel/src/net/upstream.rs`, `TX_BUFFER`).
const LINK_CHUNK: usize = 512 * 1024;
/// The goal of issue 18: 10 GbE line rate of 1412-byte datagrams on one 2.2 GHz core.
pub const GOAL_CYCLES: f64 = 2600.0;

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct NativeSettings {
    /// Crashing machines.
    pub machines: usize,
    /// Log bytes per machine.
    pub log_bytes: usize,
    /// Rounds of the storm (every machine sends its log this many times, interleaved).
    pub rounds: usize,
    /// Iterations; figures are medians over them.
    pub iterations: usize,
}

impl NativeSettings {
    /// Issue 2's storm, seven iterations.
    pub fn full() -> Self {
        Self {
            machines: 1000,
            log_bytes: 128 * 1024,
            rounds: 3,
            iterations: 7,
        }
    }

    /// A tiny storm for the test command: every stage runs, the figures mean little.
    pub fn smoke() -> Self {
        Self {
            machines: 24,
            log_bytes: 16 * 1024,
            rounds: 3,
            iterations: 3,
        }
    }
}

/// The stages, in the order of the cumulative variants.
pub const STAGES: [&str; 5] = ["driver", "fast path", "engine", "spool", "link"];

/// One figure per datagram.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figure {
    /// TSC cycles per datagram.
    pub cycles_per_datagram: f64,
    /// Nanoseconds per datagram.
    pub ns_per_datagram: f64,
}

/// One stage of one NIC.
#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    /// The stage's name ([`STAGES`]).
    pub stage: &'static str,
    /// Median over iterations of this stage's share (see the module documentation).
    #[serde(flatten)]
    pub figure: Figure,
    /// Median over iterations of everything up to and including this stage.
    pub cumulative: Figure,
}

/// The outcome checks of one NIC's last iteration.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Checks {
    /// Frames the driver handed out in the `driver` variant.
    pub driver_frames: u64,
    /// Complete dumps the engine emitted in the `engine` variant.
    pub engine_dumps_complete: u64,
    /// Datagrams the fast path handed to the relay and the relay accepted (whole path).
    pub relay_accepted: u64,
    /// Frames the fast path dropped or passed to the stack (whole path).
    pub fast_path_rejected: u64,
    /// Crash notices the collector received (whole path).
    pub collector_crashes: u64,
    /// Complete dumps the collector received (whole path).
    pub collector_dumps_complete: u64,
    /// Dump text bytes the collector received (whole path).
    pub collector_dump_bytes: u64,
}

/// One NIC's results.
#[derive(Clone, Debug, Serialize)]
pub struct NicResult {
    /// `virtio-net` or `e1000e`.
    pub nic: &'static str,
    /// The whole path: ring to collector acknowledgement.
    pub whole: Figure,
    /// Per stage.
    pub stages: Vec<StageResult>,
    /// The fast path's own accounting in the whole path (`FastPathStats::cycles` per sample:
    /// from taking a frame to the relay's return, what the image's `fastpath:` line reports).
    pub fast_path_counter: Figure,
    /// The simulated device's own work per datagram (DMA on real hardware): not in any figure.
    pub device_fill: Figure,
    /// What the last iteration delivered.
    pub checks: Checks,
}

/// The report written as `native.json`.
#[derive(Clone, Debug, Serialize)]
pub struct NativeReport {
    /// How stages are attributed.
    pub method: &'static str,
    /// The run's settings.
    pub settings: NativeSettings,
    /// Datagrams through the path per iteration (every round).
    pub datagrams_per_iteration: u64,
    /// The TSC's frequency, measured against the monotonic clock.
    pub tsc_hz: f64,
    /// Frames per burst (the kernel's).
    pub burst: usize,
    /// The goal for the whole path.
    pub goal_cycles_per_datagram: f64,
    /// Copying each datagram's 1 KiB out of the same frames into a pool, same iterations.
    pub copy_baseline: Figure,
    /// Per NIC.
    pub nics: Vec<NicResult>,
}

/// Reads the cycle counter.
#[inline]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter; it has no memory effects and cannot fault in user
        // mode on Linux (CR4.TSD is clear).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// [`tsc`] for the fast path's own accounting.
struct Tsc;

impl Cycles for Tsc {
    #[inline]
    fn read() -> u64 {
        tsc()
    }
}

/// Cycles per second of [`tsc`], against `std::time::Instant` over `ms` milliseconds.
pub fn measure_tsc_hz(ms: u64) -> f64 {
    let start = std::time::Instant::now();
    let c0 = tsc();
    while start.elapsed() < std::time::Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
    let c1 = tsc();
    (c1 - c0) as f64 / start.elapsed().as_secs_f64()
}

/// The cumulative variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Driver,
    FastPath,
    Engine,
    /// The whole path; its link turns are timed apart.
    Path,
}

const VARIANTS: [Variant; 4] = [
    Variant::Driver,
    Variant::FastPath,
    Variant::Engine,
    Variant::Path,
];

/// Counts the engine's events without reading their text (reading it is the spool's work).
#[derive(Default)]
struct CountSink {
    crashes: u64,
    complete: u64,
}

impl EventSink for CountSink {
    fn crash_seen(&mut self, _: &CrashSeen<'_>) {
        self.crashes += 1;
    }
    fn dump(&mut self, d: &DumpView<'_>) {
        self.complete += u64::from(d.complete());
    }
}

/// Everything the variants share.
struct Bench<'a> {
    frames: &'a FrameStorm,
    rounds: usize,
    identity: Identity,
    reassembler: Reassembler,
    relay: RefCell<Relay>,
    peer: Peer,
    link_buf: Vec<u8>,
    pool: Vec<[u8; DATA_LEN]>,
    now: Instant,
    /// Time between two runs' clocks.
    step: Duration,
    /// After a run, the time by which the reassembler has forgotten every dump.
    forget: Duration,
}

/// One timed run.
#[derive(Clone, Copy, Default)]
struct Run {
    /// Bursts: device ring to relay (the whole path: to the spool).
    cycles: u64,
    /// The whole path's link turns.
    link_cycles: u64,
    fill_cycles: u64,
    /// The whole path's in-path accounting (`FastPathStats::cycles`, what the image's
    /// `fastpath:` console line reports): cycles and datagrams.
    counter: (u64, u64),
    checks: Checks,
}

impl Bench<'_> {
    fn datagrams(&self) -> u64 {
        (self.frames.per_round() * self.rounds) as u64
    }

    /// Runs the whole storm through `nic` as `variant`; returns its timings and checks.
    fn run<N: SimNic>(&mut self, nic: &mut N, variant: Variant) -> Run {
        self.now += self.step;
        let now = self.now;
        let per_round = self.frames.per_round();
        let frames = self.frames;
        let identity = self.identity;
        let mut run = Run::default();
        let mut sink = CountSink::default();
        let rx_before = nic.driver().stats().rx_frames;
        let received_before = self.peer.received();
        let relay = &self.relay;
        let mut fast = FastPath::<Tsc>::new(identity, relay);
        let mut stack = 0u64;
        for _ in 0..self.rounds {
            let mut i = 0;
            while i < per_round {
                let f0 = tsc();
                let k = nic.fill((i..(i + BURST).min(per_round)).map(|j| frames.frame(j)));
                let t0 = tsc();
                run.fill_cycles += t0 - f0;
                assert!(k > 0, "{}: no free receive buffer", nic.name());
                let d = nic.driver();
                match variant {
                    Variant::Driver => {
                        for _ in 0..BURST {
                            let Some((rx, tx)) = d.receive() else { break };
                            drop(tx);
                            black_box(rx.consume(|f| f.len()));
                        }
                    }
                    Variant::FastPath => {
                        for _ in 0..BURST {
                            let Some((rx, tx)) = d.receive() else { break };
                            drop(tx);
                            rx.consume(|f| black_box(classify(f, &identity)));
                        }
                    }
                    Variant::Engine => {
                        let r = &mut self.reassembler;
                        for _ in 0..BURST {
                            let Some((rx, tx)) = d.receive() else { break };
                            drop(tx);
                            rx.consume(|f| {
                                if let Classified::Netoops { source, payload } =
                                    classify(f, &identity)
                                {
                                    let bytes = f.get(payload).unwrap_or(&[]);
                                    let _ = r.handle_datagram(
                                        now,
                                        SocketAddr::V4(source),
                                        bytes,
                                        &mut sink,
                                    );
                                }
                            });
                        }
                    }
                    Variant::Path => {
                        receive_burst(d, Some(&mut fast), now, BURST, |_| stack += 1);
                    }
                }
                d.poll();
                run.cycles += tsc() - t0;
                i += k;
                if variant == Variant::Path {
                    run.link_cycles +=
                        link_turn(&self.relay, &mut self.peer, &mut self.link_buf, now).0;
                }
            }
        }
        if variant == Variant::Path {
            // What the link could not write during the storm, timed: it is the path's work.
            loop {
                let (c, wrote) = link_turn(&self.relay, &mut self.peer, &mut self.link_buf, now);
                run.link_cycles += c;
                if !wrote {
                    break;
                }
            }
        }
        let fast_stats = *fast.stats();
        run.counter = (fast_stats.cycles, fast_stats.cycles_samples);
        // Untimed: deliver what is left, then let every dump be forgotten.
        if variant == Variant::Path {
            while link_turn(&self.relay, &mut self.peer, &mut self.link_buf, now).1 {}
            let later = now + self.forget;
            let mut relay = self.relay.borrow_mut();
            relay.handle_timeout(later);
            while relay.poll_event().is_some() {}
            assert!(relay.all_delivered(), "the spool empties");
        }
        if variant == Variant::Engine {
            let later = now + self.forget;
            self.reassembler.handle_timeout(later, &mut sink);
        }
        nic.settle();
        let received = self.peer.received();
        run.checks = Checks {
            driver_frames: nic.driver().stats().rx_frames - rx_before,
            engine_dumps_complete: sink.complete,
            relay_accepted: fast_stats.accepted,
            fast_path_rejected: fast_stats.drops() + fast_stats.to_stack + stack,
            collector_crashes: received.crashes - received_before.crashes,
            collector_dumps_complete: received.complete - received_before.complete,
            collector_dump_bytes: received.dump_bytes - received_before.dump_bytes,
        };
        run
    }

    /// The 1 KiB copy of `benches/reassembly.rs` over the same frames: cycles for the storm.
    fn copy_baseline(&mut self) -> u64 {
        let n = self.frames.per_round();
        let frames = self.frames;
        let pool = &mut self.pool;
        let slots = pool.len();
        let t0 = tsc();
        let mut sum = 0usize;
        for round in 0..self.rounds {
            for i in 0..n {
                if i + 1 < n {
                    netoops_streamed_slots::prefetch(frames.frame(i + 1));
                }
                let f = frames.frame(i);
                let slot = &mut pool[(i + round * n) % slots];
                slot.copy_from_slice(&f[f.len() - DATA_LEN..]);
                sum += usize::from(slot[0]);
            }
        }
        black_box(sum);
        tsc() - t0
    }
}

/// One link turn: the link writes what it may, the collector reads it (untimed) and
/// acknowledges. Returns the relay's cycles and whether anything was written.
fn link_turn(relay: &RefCell<Relay>, peer: &mut Peer, buf: &mut [u8], now: Instant) -> (u64, bool) {
    let t0 = tsc();
    let n = relay.borrow_mut().link().poll_transmit(now, buf);
    let t1 = tsc();
    if n == 0 {
        return (t1 - t0, false);
    }
    let ack = peer.take(&buf[..n]);
    let t2 = tsc();
    if let Some(ack) = ack {
        relay
            .borrow_mut()
            .link()
            .handle_input(now, &ack)
            .expect("the link takes the collector's ack");
    }
    (t1 - t0 + tsc() - t2, true)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark; `say` gets progress lines.
pub fn run_native(settings: &NativeSettings, mut say: impl FnMut(&str)) -> NativeReport {
    let receiver = Receiver::default_relay();
    say(&format!(
        "building the storm: {} machines x {} KiB, {} rounds",
        settings.machines,
        settings.log_bytes / 1024,
        settings.rounds
    ));
    let storm = Storm::new(settings.machines, settings.log_bytes);
    let frames = FrameStorm::new(&storm, receiver);
    drop(storm);
    let tsc_hz = measure_tsc_hz(200);

    // The image's relay, sized for the storm: the reassembly budget as in the criterion
    // bench (1.25x the logs), a spool that holds every dump (the `spool` variant drains only
    // after the storm).
    let logs = settings.machines * settings.log_bytes;
    let memory_mib = (logs + logs / 4 + (8 << 20)) >> 20;
    let spool_mib = (logs + logs / 2 + (8 << 20)) >> 20;
    let max_dumps = (2 * settings.machines).max(64);
    let config = Config::parse(&format!(
        "upstream=10.0.2.2:2005 memory={memory_mib}M spool={spool_mib}M max_dumps={max_dumps}"
    ))
    .expect("a valid relay configuration");
    let reassembler = Reassembler::new(config.reassembly).expect("the budget fits");
    let slots = config.reassembly.chunk_slots().expect("the budget fits");
    let forget =
        config.reassembly.linger + config.reassembly.quiet_timeout + Duration::from_secs(1);
    let step = forget + Duration::from_secs(60);
    let mut relay = Relay::new(config, 0x5eed).expect("the relay comes up");
    relay.set_prefetch(netoops_streamed_slots::prefetch);
    let mut peer = Peer::new();
    let start = Instant::from_millis(1);
    peer.connect(&mut relay, start);
    let mut bench = Bench {
        frames: &frames,
        rounds: settings.rounds,
        identity: Identity::new(*receiver.addr.ip(), 24, receiver.addr.port()),
        reassembler,
        relay: RefCell::new(relay),
        peer,
        link_buf: vec![0; LINK_CHUNK],
        pool: vec![[0u8; DATA_LEN]; slots],
        now: start,
        step,
        forget,
    };
    let datagrams = bench.datagrams();

    let mut virtio = SimVirtio::new();
    let mut e1000 = SimE1000::new();
    // [nic][stage] cumulative cycles per datagram per iteration: driver, + fast path,
    // + engine, the whole path's bursts, + its link turns. Fill per iteration.
    let mut cum = vec![vec![Vec::new(); STAGES.len()]; 2];
    let mut fill = vec![Vec::new(); 2];
    let mut counter = vec![Vec::new(); 2];
    let mut copy = Vec::new();
    let mut checks = [Checks::default(); 2];
    let per = |c: u64| c as f64 / datagrams as f64;
    // A warm-up iteration first (pools touched, caches and branch predictors trained).
    for it in 0..=settings.iterations {
        let warm = it == 0;
        say(&format!(
            "{} {}/{}",
            if warm { "warm-up" } else { "iteration" },
            it,
            settings.iterations
        ));
        let c = bench.copy_baseline();
        for (n, name) in ["virtio-net", "e1000e"].into_iter().enumerate() {
            let mut fills = 0;
            for (v, variant) in VARIANTS.into_iter().enumerate() {
                let r = if n == 0 {
                    bench.run(&mut virtio, variant)
                } else {
                    bench.run(&mut e1000, variant)
                };
                check(
                    name,
                    variant,
                    &r.checks,
                    datagrams,
                    settings.machines as u64,
                );
                merge(&mut checks[n], variant, r.checks);
                fills += r.fill_cycles;
                if !warm {
                    cum[n][v].push(per(r.cycles));
                    if variant == Variant::Path {
                        cum[n][v + 1].push(per(r.cycles + r.link_cycles));
                        counter[n].push(r.counter.0 as f64 / r.counter.1.max(1) as f64);
                    }
                }
            }
            if !warm {
                fill[n].push(per(fills) / VARIANTS.len() as f64);
            }
        }
        if !warm {
            copy.push(per(c));
        }
    }

    let figure = |cycles: f64| Figure {
        cycles_per_datagram: cycles,
        ns_per_datagram: cycles / tsc_hz * 1e9,
    };
    let nics = ["virtio-net", "e1000e"]
        .into_iter()
        .enumerate()
        .map(|(n, name)| {
            let stages = STAGES
                .iter()
                .enumerate()
                .map(|(v, stage)| {
                    let diffs: Vec<f64> = (0..settings.iterations)
                        .map(|i| cum[n][v][i] - if v == 0 { 0.0 } else { cum[n][v - 1][i] })
                        .collect();
                    StageResult {
                        stage,
                        figure: figure(median(diffs)),
                        cumulative: figure(median(cum[n][v].clone())),
                    }
                })
                .collect::<Vec<_>>();
            NicResult {
                nic: name,
                whole: stages[STAGES.len() - 1].cumulative,
                stages,
                fast_path_counter: figure(median(counter[n].clone())),
                device_fill: figure(median(fill[n].clone())),
                checks: checks[n],
            }
        })
        .collect();
    NativeReport {
        method: "cumulative variants run interleaved each iteration (driver; + fast path; + \
                 engine; the whole path, its bursts and link turns timed apart by rdtsc per \
                 burst): each stage is its cumulative figure minus the one before in the same \
                 iteration; medians over iterations; device fill and collector decoding not \
                 timed",
        settings: settings.clone(),
        datagrams_per_iteration: datagrams,
        tsc_hz,
        burst: BURST,
        goal_cycles_per_datagram: GOAL_CYCLES,
        copy_baseline: figure(median(copy)),
        nics,
    }
}

/// Panics unless a run delivered what the storm holds.
fn check(nic: &str, variant: Variant, c: &Checks, datagrams: u64, machines: u64) {
    let ok = match variant {
        Variant::Driver | Variant::FastPath => c.driver_frames == datagrams,
        Variant::Engine => c.driver_frames == datagrams && c.engine_dumps_complete == machines,
        Variant::Path => {
            c.driver_frames == datagrams
                && c.relay_accepted == datagrams
                && c.fast_path_rejected == 0
                && c.collector_crashes == machines
                && c.collector_dumps_complete == machines
        }
    };
    assert!(ok, "{nic} {variant:?}: the storm was not delivered: {c:?}");
}

/// Keeps each check from the variant that measures it.
fn merge(into: &mut Checks, variant: Variant, c: Checks) {
    match variant {
        Variant::Driver => into.driver_frames = c.driver_frames,
        Variant::Engine => into.engine_dumps_complete = c.engine_dumps_complete,
        Variant::Path => {
            into.relay_accepted = c.relay_accepted;
            into.fast_path_rejected = c.fast_path_rejected;
            into.collector_crashes = c.collector_crashes;
            into.collector_dumps_complete = c.collector_dumps_complete;
            into.collector_dump_bytes = c.collector_dump_bytes;
        }
        Variant::FastPath => {}
    }
}

impl NativeReport {
    /// The table printed after a run (and written as `native.md`).
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "native receive path: {} machines x {} KiB, {} rounds = {} datagrams per iteration; \
             medians of {} iterations; TSC {:.3} GHz; burst {}",
            s.machines,
            s.log_bytes / 1024,
            s.rounds,
            self.datagrams_per_iteration,
            s.iterations,
            self.tsc_hz / 1e9,
            self.burst
        );
        let _ = writeln!(
            out,
            "stages: cumulative variants (driver; + fast path; + engine; whole path with its \
             link turns timed apart), each minus the one before in the same iteration\n"
        );
        let _ = write!(out, "| stage |");
        for n in &self.nics {
            let _ = write!(out, " {} cycles | {} ns |", n.nic, n.nic);
        }
        let _ = writeln!(out);
        let _ = write!(out, "|---|");
        for _ in &self.nics {
            let _ = write!(out, "---:|---:|");
        }
        let _ = writeln!(out);
        let row = |out: &mut String, name: &str, figs: Vec<Figure>| {
            let _ = write!(out, "| {name} |");
            for f in figs {
                let _ = write!(
                    out,
                    " {:.0} | {:.1} |",
                    f.cycles_per_datagram, f.ns_per_datagram
                );
            }
            let _ = writeln!(out);
        };
        for (k, stage) in STAGES.iter().enumerate() {
            row(
                &mut out,
                stage,
                self.nics.iter().map(|n| n.stages[k].figure).collect(),
            );
        }
        row(
            &mut out,
            "**whole path**",
            self.nics.iter().map(|n| n.whole).collect(),
        );
        row(
            &mut out,
            "copy 1 KiB baseline",
            self.nics.iter().map(|_| self.copy_baseline).collect(),
        );
        row(
            &mut out,
            "(the image's fastpath counter)",
            self.nics.iter().map(|n| n.fast_path_counter).collect(),
        );
        row(
            &mut out,
            "(device fill, not counted)",
            self.nics.iter().map(|n| n.device_fill).collect(),
        );
        let _ = writeln!(
            out,
            "\ngoal: {:.0} cycles per datagram for the whole path; whole path / copy baseline: {}",
            self.goal_cycles_per_datagram,
            self.nics
                .iter()
                .map(|n| format!(
                    "{} {:.2}x",
                    n.nic,
                    n.whole.cycles_per_datagram / self.copy_baseline.cycles_per_datagram
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out
    }
}
