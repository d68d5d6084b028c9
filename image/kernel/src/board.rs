//! The board: the whole appliance wired in one function, [`run`], and its loop.
//!
//! `run` reads the settings from the kernel command line (a bad or missing value stops the
//! appliance with [`EXIT_BAD_CONFIG`] and a line naming the key), brings up the NICs and
//! picks the ingress (and optional upstream) NIC,
//! builds the [`Relay`], starts one embassy-net stack per NIC (the ingress one with the
//! netoops fast path in its driver; the upstream one after `ready`), spawns the upstream
//! task, and then loops forever:
//! one executor turn (stacks, upstream connection, timers), then the relay's timers and the
//! console ([`Monitor`]), then, when several turns in a row found nothing to do, a halt of at
//! most `idle.halt=` on the local APIC timer ([`platform::idle`]) so the CPU (a vCPU thread
//! under QEMU) sleeps instead of spinning. A turn found work when a NIC moved a frame or the
//! relay ran a timer or reported an event; a halt never runs past the relay's next timeout or
//! the next counter line.
//!
//! Console lines, in order:
//! - `ready: listening on udp/<port> at <ip>` when the loop starts, then
//!   `boot: ready <N> ms after kernel entry (<M> ms in the board, reset to ready <R>)`,
//!   where `<R>` is `<n> ms` only under QEMU TCG, whose TSC is zero at reset, and `unknown`
//!   elsewhere ([`platform::boottime`]), and `boot: phases <name> <us> ...` (each boot
//!   phase's own time, from kernel entry, for finding where boot time goes);
//! - then what the platform found ([`platform::banner`]: `netoops-relay ... booted via`,
//!   memory, ACPI, PCI, `cmdline:`) and `config: key=value ...` (every key's effective value).
//!   They come after `ready` because formatting them is code run once, which under TCG is
//!   mostly its translation (about 2 ms of the boot); a stop before `ready` prints the
//!   platform's lines first;
//! - `nic N: ...` per NIC, then the ingress and upstream roles;
//! - `http: listening on tcp/<port> at <ip> (...)` with `http_port=` on ([`http`]);
//! - `idle: halt <P>..<M> us on the local APIC timer (<apic>)` or `idle: spin (<why>)`;
//! - `clock: tsc <N> kHz measured against the PIT over 250 ms (boot window <M> kHz)` once,
//!   when the TSC was calibrated on the PIT's short boot window ([`clock::PitRefiner`]);
//! - `first datagram accepted at <N> ms after kernel entry` once;
//! - the relay's events (`crash seen: ...`, `dump queued: ...`, `dump delivered: ...`);
//! - every `stats=` interval: the relay's `counters: ...` line, a `fastpath: ...` line with
//!   drops by reason and TSC cycles per datagram from the receive ring to the relay
//!   (`cycles/datagram interval <n> boot <n>`, `-` before the first),
//!   a `nic <role>: ...` line per NIC, `memory: heap used U peak P total T bytes` (the
//!   peak is the allocator's high-water mark, for the benchmark), and
//!   `loop: turns N per_second M halts H halted_percent P stray_interrupts S` (turns of
//!   the board loop, halts since boot and the share of the interval spent halted: its
//!   slack; the last three only when the idle halt is on).
//!
//! From the board's start the console is deferred ([`platform::serial`]): lines go into a
//! ring and each loop turn writes some of them, so printing never stalls the data path; a
//! line that finds the ring full is dropped whole and counted (`console: N lines dropped`).
//!
//! `ready` means the ingress NIC, its stack and fast path and the relay are up; `boot: ready`
//! and the end of the last of `boot: phases` (`stacks`) are that instant, taken before any
//! console line is formatted (the `ready:` line included). What receiving does not need comes
//! after it, before the loop's first turn: the upstream NIC's stack and task, the HTTP
//! endpoint, the idle halt's APIC timer and the console lines (under TCG, code run once is
//! mostly its translation, about 1 µs per instruction: each of these cost 0.3-1 ms of the
//! boot).

use crate::net::driver::{FastPath, NicReport, StackDriver};
use crate::net::executor::{spawn, Runtime};
use crate::net::fastpath::Identity;
use crate::net::http::{self, BoardMetrics, HttpTask, LoopReport};
use crate::net::nic::{self, FoundNic, Location};
use crate::net::settings::{self, Interface, NicIdentity, Settings};
use crate::net::tcp::TcpTask;
use crate::net::upstream::{self, Upstream};
use crate::platform::boottime::{stamp, stamp_at, BootClock, PhaseList};
use crate::platform::clock::{self, PitRefiner, TscSource};
use crate::platform::idle::{self, HaltSetting, Idle};
use crate::platform::{self, Platform};
use crate::println;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::net::SocketAddr;
use embassy_net::{Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use netoops_core::config::ConfigError;
use netoops_core::http::HttpServer;
use netoops_core::netconsole::ConsoleTracker;
use netoops_core::relay::Relay;
use netoops_core::time::Instant;
use netoops_nic::Device;

/// isa-debug-exit code for a refused configuration (QEMU status 41).
pub const EXIT_BAD_CONFIG: u32 = 0x14;
/// Heap kept free beyond the reassembly and spool budgets (event queues, stacks, buffers).
const HEAP_RESERVE: usize = 4 << 20;
/// Console events printed per loop turn, so a burst of crashes cannot stall the loop.
const EVENTS_PER_TURN: usize = 16;

/// Prints why the configuration is refused and stops the machine.
fn stop_misconfigured(e: &ConfigError) -> ! {
    platform::banner();
    println!("config error: {e}");
    println!("relay stopped: fix `{}` on the kernel command line", e.key);
    platform::exit_qemu(EXIT_BAD_CONFIG)
}

fn stop(why: core::fmt::Arguments<'_>) -> ! {
    platform::banner();
    println!("relay stopped: {why}");
    platform::exit_qemu(platform::EXIT_FAILURE)
}

fn leak<T>(value: T) -> &'static mut T {
    Box::leak(Box::new(value))
}

/// Runs the appliance; never returns.
pub fn run(machine: &Platform, cmdline: &str) -> ! {
    let boot_clock = machine.boot_clock;
    let board_start = platform::tsc();
    let mut settings = settings::parse(cmdline).unwrap_or_else(|e| stop_misconfigured(&e));
    // The idle halt's setting is checked with the rest; its APIC timer is calibrated after
    // `ready` (the loop can spin meanwhile: halting only saves host CPU).
    let halt = idle_setting(cmdline);
    stamp("settings");

    let found = nic::discover(cmdline, |msg| println!("nic: {msg}"));
    let mut ids = Vec::with_capacity(found.len());
    // What the `nic N: ...` lines say, printed after `ready` (formatting is translation
    // under TCG, 1 ms of the boot) or before a stop.
    let mut lines = Vec::with_capacity(found.len());
    for f in &found {
        let caps = f.nic.capabilities();
        lines.push(NicLine {
            kind: f.nic.kind(),
            location: f.location,
            mac: f.nic.hardware_address(),
            rx_ring: caps.rx_ring_len,
            tx_ring: caps.tx_ring_len,
        });
        ids.push(NicIdentity {
            pci: match f.location {
                Location::Pci(a) => Some((a.bus, a.dev, a.func)),
                Location::Mmio(_) => None,
            },
            mac: f.nic.hardware_address().0,
        });
    }
    let (ingress_idx, upstream_idx) =
        settings::select_nics(&ids, &settings.config).unwrap_or_else(|e| {
            print_nics(&lines);
            stop_misconfigured(&e)
        });
    check_memory(&settings).unwrap_or_else(|e| {
        print_nics(&lines);
        stop_misconfigured(&e)
    });

    stamp("nics");
    let mac = ids.get(ingress_idx).map_or([0; 6], |n| n.mac);
    let nonce = boot_nonce(mac);
    // The relay owns the configuration until `ready`, and the board takes a copy back after
    // it: a clone is code run once, 0.2 ms of translation under TCG.
    // The hash tables' key: a second draw, never sent anywhere (the instance id is).
    let key = netoops_core::hash_key::HashKey::new(boot_nonce(mac));
    let mut relay = Relay::keyed(
        core::mem::take(&mut settings.config),
        nonce,
        netoops_core::reassembly::slots::PlainSlots::boxed,
        key,
    )
    .unwrap_or_else(|e| stop_misconfigured(&e));
    let (listen_port, netconsole_port) =
        (relay.config().listen_port, relay.config().netconsole_port);
    // Netconsole history tails are asked for before the datagram is parsed.
    relay.set_prefetch(netoops_streamed_slots::prefetch);
    if let Some(sec) = relay.link().config().security.clone() {
        // The session's ephemeral keys are drawn from this seed (upstream/secure.rs).
        let seed = session_seed(mac);
        relay
            .link()
            .set_security(Some(netoops_core::upstream::LinkSecurity {
                key: sec.key,
                seed,
            }));
    }
    let relay: &'static RefCell<Relay> = leak(RefCell::new(relay));
    stamp("relay");

    let mut nics: Vec<Option<FoundNic>> = found.into_iter().map(Some).collect();
    let mut take = |i: usize| {
        nics.get_mut(i)
            .and_then(Option::take)
            .unwrap_or_else(|| stop(format_args!("NIC {i} vanished")))
    };
    let runtime = Runtime::new();
    let spawner = runtime.spawner();

    let ingress = take(ingress_idx);
    let ingress_report: &'static Cell<NicReport> = leak(Cell::new(NicReport::default()));
    let identity = Identity::new(settings.ingress.ip, settings.ingress.prefix, listen_port)
        .with_netconsole(netconsole_port);
    let fast = FastPath::new(identity, relay);
    let ingress_stack = start_stack(
        spawner,
        StackDriver::new(ingress.nic, Some(fast), ingress_report),
        &settings.ingress,
        nonce,
    );
    let upstream_report: Option<&'static Cell<NicReport>> =
        upstream_idx.map(|_| &*leak(Cell::new(NicReport::default())));
    let board_loop: &'static Cell<LoopReport> = leak(Cell::new(LoopReport::default()));
    // `ready`: the ingress NIC, its stack and fast path and the relay are up. The instant is
    // taken before anything is formatted, the `ready:` line included (code run once is
    // mostly translation under TCG; the line reaches the serial port at the loop's first
    // turn either way).
    let ready = platform::tsc();
    stamp_at("stacks", ready);
    settings.config = relay.borrow().config().clone();
    let reports = (ingress_report, upstream_report);
    let refiner = (machine.tsc_source == TscSource::Pit).then(|| PitRefiner::new(boot_clock.hz));
    let mut monitor = Monitor::new(relay, reports, &settings, boot_clock, board_loop, refiner);
    println!(
        "ready: listening on udp/{} at {}",
        settings.config.listen_port, settings.ingress.ip
    );
    println!(
        "boot: ready {} ms after kernel entry ({} ms in the board, reset to ready {})",
        boot_clock.entry_to_us(ready) / 1000,
        (boot_clock.entry_to_us(ready) - boot_clock.entry_to_us(board_start)) / 1000,
        boot_clock.reset_to(ready)
    );
    println!("boot: phases {}", PhaseList(&boot_clock));
    print_nics(&lines);
    println!(
        "nic {ingress_idx}: ingress {} (fast path on udp/{}, netconsole udp/{})",
        settings.ingress, settings.config.listen_port, settings.config.netconsole_port
    );
    if let Some(i) = upstream_idx {
        println!("nic {i}: upstream {}", settings.upstream);
    }
    // What boot found and the effective configuration, after `ready`: formatting them is
    // code run once, which under TCG costs its translation (about 2 ms of the boot).
    platform::banner();
    let mut line = alloc::string::String::from("config:");
    for (key, value) in settings::effective(&settings) {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&value);
    }
    println!("{line}");
    // Not needed to receive and reassemble, so after `ready` (nothing runs before the loop
    // anyway): the upstream NIC's stack, the upstream task (its 512 KiB send buffer is
    // zeroed) and the HTTP endpoint.
    let upstream_stack = match (upstream_idx, upstream_report) {
        (Some(i), Some(report)) => start_stack(
            spawner,
            StackDriver::new(take(i).nic, None, report),
            &settings.upstream,
            nonce.rotate_left(17) ^ 0x5eed,
        ),
        _ => ingress_stack,
    };
    let upstreams: &'static [SocketAddr] =
        Box::leak(settings.config.upstreams.clone().into_boxed_slice());
    let link = Upstream {
        tcp: TcpTask::new(
            upstream_stack,
            relay,
            upstream::RX_BUFFER,
            upstream::TX_BUFFER,
        ),
        upstreams,
    };
    if spawn(spawner, link.run()).is_err() {
        stop(format_args!("cannot start the upstream task"));
    }
    let http_port = settings.config.http_port;
    if http_port != 0 {
        let server: &'static RefCell<HttpServer> =
            leak(RefCell::new(HttpServer::new(http::CONNECTIONS)));
        let board = BoardMetrics {
            ingress: ingress_report,
            upstream: upstream_report,
            board_loop,
        };
        for _ in 0..http::CONNECTIONS {
            let task = HttpTask {
                tcp: TcpTask::new(ingress_stack, relay, http::RX_BUFFER, http::TX_BUFFER),
                server,
                board,
                port: http_port,
            };
            if spawn(spawner, task.run()).is_err() {
                stop(format_args!("cannot start the HTTP tasks"));
            }
        }
        println!(
            "http: listening on tcp/{http_port} at {} (/metrics /healthz /dumps, dump texts {} bytes)",
            settings.ingress.ip,
            relay.borrow().dumps().capacity()
        );
    }

    monitor.idle = start_idle(halt);
    loop {
        runtime.turn();
        monitor.tick();
    }
}

/// What a `nic N: ...` console line says about a NIC found at boot, kept until it is printed.
struct NicLine {
    kind: nic::Kind,
    location: Location,
    mac: netoops_nic::MacAddress,
    rx_ring: usize,
    tx_ring: usize,
}

/// `nic N: <kind> at <location> mac <mac> rx_ring <n> tx_ring <n>` per NIC found, N its place.
fn print_nics(lines: &[NicLine]) {
    for (i, l) in lines.iter().enumerate() {
        println!(
            "nic {i}: {} at {} mac {} rx_ring {} tx_ring {}",
            l.kind, l.location, l.mac, l.rx_ring, l.tx_ring
        );
    }
}

/// What `idle.halt=` asks for (a bad value stops the appliance).
fn idle_setting(cmdline: &str) -> HaltSetting {
    let value = platform::bootinfo::cmdline_param(cmdline, idle::KEY);
    idle::parse_setting(value).unwrap_or_else(|problem| {
        stop_misconfigured(&ConfigError {
            key: idle::KEY.into(),
            problem: problem.into(),
        })
    })
}

/// The idle halt `setting` asks for, or `None` (spin) when it is off or there is no usable
/// APIC timer.
fn start_idle(setting: HaltSetting) -> Option<Idle> {
    let HaltSetting::Micros(period) = setting else {
        println!("idle: spin ({}=off)", idle::KEY);
        return None;
    };
    match Idle::start(period) {
        Ok(idle) => {
            println!(
                "idle: halt {period}..{} us on the local APIC timer ({})",
                period * idle::BACKOFF,
                idle.apic()
            );
            Some(idle)
        }
        Err(e) => {
            println!("idle: spin (no APIC timer: {e:?})");
            None
        }
    }
}

/// Starts an embassy-net stack on `driver` with a static address and spawns its runner.
fn start_stack(
    spawner: embassy_executor::Spawner,
    driver: StackDriver,
    iface: &Interface,
    seed: u64,
) -> Stack<'static> {
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(iface.ip, iface.prefix),
        gateway: iface.gateway,
        dns_servers: Default::default(),
    });
    // The upstream connection and the HTTP endpoint's sockets.
    let resources = leak(StackResources::<{ 1 + http::CONNECTIONS }>::new());
    let (stack, mut runner) = embassy_net::new(driver, config, resources, seed);
    if spawn(spawner, async move { runner.run().await }).is_err() {
        stop(format_args!("cannot start the network stack"));
    }
    stack
}

/// Refuses budgets the heap cannot hold, before anything is allocated for them.
fn check_memory(s: &Settings) -> Result<(), ConfigError> {
    let (used, free) = platform::memory::heap_usage();
    let http = if s.config.http_port != 0 {
        http::CONNECTIONS
            * (netoops_core::http::REQUEST_BUFFER
                + netoops_core::http::RESPONSE_BUFFER
                + http::RX_BUFFER
                + http::TX_BUFFER)
    } else {
        0
    };
    // What the relay takes (its budgets, the netconsole tracker, the /dumps ring, queues).
    let relay = Relay::footprint(&s.config);
    let needed = relay + http + HEAP_RESERVE;
    if needed <= free {
        return Ok(());
    }
    let netconsole = ConsoleTracker::footprint(&s.config.netconsole);
    Err(ConfigError {
        key: Relay::largest_budget(&s.config).into(),
        problem: alloc::format!(
            "the relay needs {} MiB (reassembly {} MiB, spool {} MiB, netconsole {} MiB: its \
             pool and source table) + {} MiB reserve, more than the heap has ({} MiB free of {} \
             MiB); lower that budget, or give the machine more RAM",
            relay.div_ceil(1 << 20),
            s.config.reassembly.memory_budget >> 20,
            s.config.spool_bytes >> 20,
            netconsole.div_ceil(1 << 20),
            (http + HEAP_RESERVE).div_ceil(1 << 20),
            free >> 20,
            (used + free) >> 20
        ),
    })
}

/// A value that differs on every boot: the relay's instance id (collectors key replay
/// protection on it) and the stack's random seed (TCP sequence numbers, ports).
fn boot_nonce(mac: [u8; 6]) -> u64 {
    let mut x = platform::tsc();
    if let Some(r) = rdrand() {
        x ^= r;
    }
    x ^= cmos_clock().rotate_left(24);
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(&mac);
    x ^= u64::from_le_bytes(m).rotate_left(40);
    // splitmix64 finalizer: spreads every input bit over the result.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let x = x ^ (x >> 31);
    x.max(1)
}

/// 32 bytes for the session key generator's seed: four boot nonces, each taken at a later
/// TSC reading (and RDRAND value where the CPU has it). Without RDRAND this is only as
/// unpredictable as the TSC and the clock: sessions stay authenticated and confidential by
/// the pre-shared key, but forward secrecy then rests on that (README, upstream sessions).
fn session_seed(mac: [u8; 6]) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, part) in seed.chunks_mut(8).enumerate() {
        let x = boot_nonce(mac) ^ (i as u64).rotate_left(56);
        part.copy_from_slice(&x.to_le_bytes());
    }
    seed
}

fn rdrand() -> Option<u64> {
    let has_rdrand = core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0;
    if !has_rdrand {
        return None;
    }
    #[target_feature(enable = "rdrand")]
    fn step() -> Option<u64> {
        let mut value = 0u64;
        (core::arch::x86_64::_rdrand64_step(&mut value) == 1).then_some(value)
    }
    // SAFETY: CPUID leaf 1 reports RDRAND, which is the only feature `step` enables.
    unsafe { step() }
}

/// The CMOS real-time clock's seconds..year registers packed together (entropy only: no
/// update-in-progress check, no BCD decoding). All ones where there is no RTC.
fn cmos_clock() -> u64 {
    let mut v = 0u64;
    for reg in [0x00u8, 0x02, 0x04, 0x07, 0x08, 0x09] {
        // SAFETY: ports 0x70/0x71 are the CMOS index/data pair, used by nothing else in the
        // kernel; selecting a clock register and reading it has no side effect (bit 7 of the
        // index, NMI disable, is left clear as firmware leaves it).
        let byte = unsafe {
            platform::port::outb(0x70, reg);
            platform::port::inb(0x71)
        };
        v = (v << 8) | u64::from(byte);
    }
    v
}

/// The board loop's synchronous half: relay timers, console events and counters.
struct Monitor {
    relay: &'static RefCell<Relay>,
    ingress: &'static Cell<NicReport>,
    upstream: Option<&'static Cell<NicReport>>,
    interval_us: u64,
    next_stats_us: u64,
    /// Fast-path (cycles, samples) at the previous counter line.
    last_cycles: (u64, u64),
    first_reported: bool,
    /// Loop turns since boot and at the previous counter line (how much slack the loop has).
    turns: (u64, u64),
    /// The idle halt, when on.
    idle: Option<Idle>,
    /// Frames the NICs had moved at the previous turn (a change means the turn did work).
    frames: u64,
    /// Microseconds halted at the previous counter line.
    halted_us: u64,
    /// Where boot times are measured from (the first datagram's time).
    boot_clock: BootClock,
    /// The loop's counters, published for `/metrics`.
    board_loop: &'static Cell<LoopReport>,
    /// The background TSC measurement, while the boot calibration was the PIT's short window.
    refiner: Option<PitRefiner>,
}

impl Monitor {
    fn new(
        relay: &'static RefCell<Relay>,
        (ingress, upstream): (&'static Cell<NicReport>, Option<&'static Cell<NicReport>>),
        s: &Settings,
        boot_clock: BootClock,
        board_loop: &'static Cell<LoopReport>,
        refiner: Option<PitRefiner>,
    ) -> Self {
        let interval_us = s.config.stats_interval.total_micros().max(1);
        Self {
            relay,
            ingress,
            upstream,
            interval_us,
            next_stats_us: platform::now_micros() + interval_us,
            last_cycles: (0, 0),
            first_reported: false,
            turns: (0, 0),
            idle: None,
            frames: 0,
            halted_us: 0,
            boot_clock,
            board_loop,
            refiner,
        }
    }

    fn tick(&mut self) {
        self.turns.0 += 1;
        if let Some(refiner) = self.refiner.as_mut() {
            if let Some(hz) = clock::refine_on_pit(refiner) {
                println!(
                    "clock: tsc {} kHz measured against the PIT over {} ms (boot window {} kHz)",
                    hz / 1000,
                    (clock::REFINE_PIT_TICKS * 1000 + clock::PIT_HZ / 2) / clock::PIT_HZ,
                    self.boot_clock.hz / 1000
                );
            }
            if refiner.done() {
                self.refiner = None;
            }
        }
        let now_us = platform::now_micros();
        let now = Instant::from_micros(now_us);
        let mut worked = false;
        let mut deadline_us = self.next_stats_us;
        if let Ok(mut relay) = self.relay.try_borrow_mut() {
            if relay.poll_timeout().is_some_and(|t| t <= now) {
                relay.handle_timeout(now);
                worked = true;
            }
            for _ in 0..EVENTS_PER_TURN {
                match relay.poll_event() {
                    Some(ev) => {
                        println!("{ev}");
                        worked = true;
                    }
                    None => break,
                }
            }
            if let Some(t) = relay.poll_timeout() {
                deadline_us = deadline_us.min(t.total_micros());
            }
        }
        if !self.first_reported {
            let first = self.ingress.get().fast.first_accept_tsc;
            if first != 0 {
                self.first_reported = true;
                println!(
                    "first datagram accepted at {} ms after kernel entry",
                    self.boot_clock.entry_to_us(first) / 1000
                );
            }
        }
        if now_us >= self.next_stats_us {
            self.next_stats_us = now_us + self.interval_us;
            self.print_counters();
        }
        worked |= platform::serial::pump() > 0;
        let idle = self.idle.as_ref().map(Idle::report).unwrap_or_default();
        self.board_loop.set(LoopReport {
            turns: self.turns.0,
            halts: idle.halts,
            halted_us: idle.halted_us,
            stray_interrupts: idle.stray_interrupts,
        });
        if self.idle.is_some() {
            let frames = self.frames_moved();
            worked |= frames != self.frames;
            self.frames = frames;
            if let Some(idle) = self.idle.as_mut() {
                idle.after_turn(worked, now_us, Some(deadline_us));
            }
        }
    }

    /// Frames received and sent by every NIC since boot.
    fn frames_moved(&self) -> u64 {
        let mut n = self.ingress.get().nic;
        if let Some(up) = self.upstream {
            let u = up.get().nic;
            n.rx_frames += u.rx_frames;
            n.tx_frames += u.tx_frames;
        }
        n.rx_frames.wrapping_add(n.tx_frames)
    }

    fn print_counters(&mut self) {
        if let Ok(relay) = self.relay.try_borrow() {
            println!("{}", relay.counters());
        }
        let rep = self.ingress.get();
        let f = rep.fast;
        let (c0, s0) = self.last_cycles;
        self.last_cycles = (f.cycles, f.cycles_samples);
        let per = |cycles: u64, samples: u64| match samples {
            0 => alloc::string::String::from("-"),
            n => alloc::format!("{}", cycles / n),
        };
        println!(
            "fastpath: frames {} datagrams {} accepted {} relay_dropped {} to_stack {} \
             dropped {} ip_checksum {} fragment {} wrong_dst {} malformed {} udp_checksum {} \
             | cycles/datagram interval {} boot {}",
            f.frames,
            f.datagrams,
            f.accepted,
            f.relay_dropped,
            f.to_stack,
            f.drops(),
            f.bad_ip_checksum,
            f.fragments,
            f.wrong_dst,
            f.malformed,
            f.bad_udp_checksum,
            per(f.cycles.wrapping_sub(c0), f.cycles_samples - s0),
            per(f.cycles, f.cycles_samples),
        );
        let (used, free) = platform::memory::heap_usage();
        println!(
            "memory: heap used {used} peak {} total {} bytes",
            platform::memory::heap_peak().max(used),
            used + free
        );
        let per_second = (self.turns.0 - self.turns.1).saturating_mul(1_000_000) / self.interval_us;
        self.turns.1 = self.turns.0;
        match self.idle.as_ref().map(Idle::report) {
            Some(r) => {
                let percent = (r.halted_us - self.halted_us).saturating_mul(100) / self.interval_us;
                self.halted_us = r.halted_us;
                println!(
                    "loop: turns {} per_second {per_second} halts {} halted_percent {percent} \
                     stray_interrupts {}",
                    self.turns.0, r.halts, r.stray_interrupts
                );
            }
            None => println!("loop: turns {} per_second {per_second}", self.turns.0),
        }
        let nics = [("ingress", Some(self.ingress)), ("upstream", self.upstream)];
        for (role, report) in nics {
            if let Some(r) = report {
                let n = r.get().nic;
                println!(
                    "nic {role}: rx {} tx {} rx_dropped {} tx_ring_full {}",
                    n.rx_frames, n.tx_frames, n.rx_dropped, n.tx_ring_full
                );
            }
        }
    }
}
