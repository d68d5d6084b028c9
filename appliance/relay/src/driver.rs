//! The event loop: the one place where sockets, the clock and the core [`Relay`] meet.
//!
//! Each pass: receive UDP batches and hand every datagram to [`Relay::handle_datagram`], run
//! the relay's timers when due, drive the upstream connection ([`Upstream::drive`]), print
//! the relay's events, print counters every `stats` interval, then wait in `epoll` for
//! readiness or the next timer (at most [`MAX_WAIT`]). Work is capped per pass (UDP batches,
//! bytes written) so neither direction starves the other; leftover work makes the next wait
//! zero.
//!
//! With `http_port` on, the same pass runs the HTTP endpoint ([`HttpEndpoint::drive`]): it
//! serves `/metrics`, `/healthz` and `/dumps` from the relay as it is at that moment, plus
//! this driver's socket counters ([`socket_metrics`]).
//!
//! Shutdown (the flag set by SIGINT/SIGTERM): stop receiving, emit every dump still assembling
//! as partial ([`Relay::flush`]), keep delivering until everything is acknowledged or the
//! drain timeout passes, print the final counters. The connection closes when the driver is dropped.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use netoops_core::http::metrics::{Kind, Metrics};
use netoops_core::http::RelaySite;
use netoops_core::relay::Relay;
use netoops_core::time::{Duration, Instant};

use crate::console::Console;
use crate::http::HttpEndpoint;
use crate::udp::BatchSocket;
use crate::upstream::{self, Upstream};

/// Poll token of the UDP socket.
const UDP_TOKEN: Token = Token(0);
/// Poll token of the netconsole socket.
const NETCONSOLE_TOKEN: Token = Token(2);
/// Longest sleep in one wait, whatever the timers say.
pub const MAX_WAIT: StdDuration = StdDuration::from_millis(50);
/// UDP batches received per pass before the upstream and the timers get a turn.
const UDP_BATCHES_PER_PASS: usize = 16;
/// Passes over the sockets at shutdown for what they already hold (each up to
/// [`UDP_BATCHES_PER_PASS`] batches per socket).
const SHUTDOWN_READS: usize = 64;

/// The relay's monotonic clock: microseconds since the relay started, as the core wants it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn start() -> Self {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// Time since the origin.
    pub fn now(&self) -> Instant {
        let micros = self.start.elapsed().as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

/// How [`Driver::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every record was acknowledged before the drain timeout.
    Delivered,
    /// The drain timeout passed with records still in the spool.
    DrainTimedOut {
        /// Records not acknowledged.
        records: usize,
        /// Their spool bytes.
        bytes: usize,
    },
}

/// The hosted relay: core, sockets, clock and console. See the module documentation.
pub struct Driver<W: Write> {
    relay: Relay,
    udp: BatchSocket,
    netconsole: Option<BatchSocket>,
    http: Option<HttpEndpoint>,
    upstream: Upstream,
    poll: Poll,
    events: Events,
    console: Console<W>,
    clock: Clock,
    drain_timeout: Duration,
}

impl<W: Write> Driver<W> {
    /// Wires a relay to its sockets. The relay's configured upstreams are the TCP targets.
    pub fn new(
        relay: Relay,
        udp: BatchSocket,
        netconsole: Option<BatchSocket>,
        mut http: Option<HttpEndpoint>,
        console: Console<W>,
        clock: Clock,
        drain_timeout: StdDuration,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&udp.raw_fd()), UDP_TOKEN, Interest::READABLE)?;
        if let Some(nc) = &netconsole {
            poll.registry().register(
                &mut SourceFd(&nc.raw_fd()),
                NETCONSOLE_TOKEN,
                Interest::READABLE,
            )?;
        }
        if let Some(h) = http.as_mut() {
            h.register(poll.registry())?;
        }
        let upstream = Upstream::new(relay.config().upstreams.clone());
        Ok(Driver {
            relay,
            udp,
            netconsole,
            http,
            upstream,
            poll,
            events: Events::with_capacity(64),
            console,
            clock,
            drain_timeout: drain_timeout.into(),
        })
    }

    /// Re-read the session key from `path` before every upstream connection.
    pub fn set_key_file(&mut self, path: Option<std::path::PathBuf>) {
        self.upstream.set_key_file(path);
    }

    /// The console (for the caller's own lines).
    pub fn console(&mut self) -> &mut Console<W> {
        &mut self.console
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Runs until `shutdown` is set and delivery is done or timed out.
    pub fn run(&mut self, shutdown: &AtomicBool) -> io::Result<Ending> {
        let stats_interval = self.relay.config().stats_interval;
        let mut next_stats = self.clock.now() + stats_interval;
        // Anything queued before registration produces no edge: look once.
        let mut udp_ready = true;
        let mut nc_ready = self.netconsole.is_some();
        let mut draining: Option<Instant> = None;
        loop {
            let mut now = self.clock.now();
            if draining.is_none() && shutdown.load(Ordering::Relaxed) {
                // Datagrams the kernel already holds arrived before the stop: take them in
                // first (bounded, so a flood cannot hold the shutdown), then flush.
                for _ in 0..SHUTDOWN_READS {
                    let (udp_more, t) = self.receive(now);
                    let (nc_more, t) = self.receive_netconsole(t);
                    now = t;
                    if !udp_more && !nc_more {
                        break;
                    }
                }
                self.relay.flush(now);
                draining = Some(now + self.drain_timeout);
                self.console.line(format_args!(
                    "shutting down: dumps still assembling emitted as partial, delivering for up \
                     to {} ms",
                    self.drain_timeout.total_millis()
                ));
            }

            let mut more = false;
            if udp_ready && draining.is_none() {
                (udp_ready, now) = self.receive(now);
                more |= udp_ready;
            }
            if nc_ready && draining.is_none() {
                (nc_ready, now) = self.receive_netconsole(now);
                more |= nc_ready;
            }
            if self.relay.poll_timeout().is_some_and(|t| t <= now) {
                self.relay.handle_timeout(now);
            }
            more |= self
                .upstream
                .drive(now, self.relay.link(), self.poll.registry());
            self.print_events();
            if let Some(http) = self.http.as_mut() {
                let (udp, nc) = (&self.udp, self.netconsole.as_ref());
                let site = RelaySite {
                    relay: &self.relay,
                    now,
                    wall_ms: Some(crate::console::wall_ms()),
                    extra: |m: &mut Metrics<'_>| socket_metrics(udp, nc, m),
                };
                more |= http.drive(now, self.poll.registry(), &site);
            }

            if now >= next_stats {
                self.print_counters("counters");
                next_stats = now + stats_interval;
            }
            if let Some(deadline) = draining {
                if self.relay.all_delivered() {
                    self.console.line("all records delivered");
                    self.print_counters("final counters");
                    return Ok(Ending::Delivered);
                }
                if now >= deadline {
                    let spool = self.relay.link().spool();
                    let (records, bytes) = (spool.len(), spool.used());
                    self.console.line(format_args!(
                        "drain timeout: {records} records ({bytes} bytes) NOT delivered"
                    ));
                    self.print_counters("final counters");
                    return Ok(Ending::DrainTimedOut { records, bytes });
                }
            }

            let wait = if more {
                StdDuration::ZERO
            } else {
                let deadlines = [
                    self.relay.poll_timeout(),
                    Some(next_stats),
                    draining,
                    self.http.as_ref().and_then(HttpEndpoint::poll_timeout),
                ];
                let until = deadlines
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| StdDuration::from(t.saturating_since(self.clock.now())));
                // A deadline already due was handled above; do not spin on it.
                until
                    .unwrap_or(MAX_WAIT)
                    .clamp(StdDuration::from_millis(1), MAX_WAIT)
            };
            self.wait(wait, &mut udp_ready, &mut nc_ready)?;
        }
    }

    /// Receives up to [`UDP_BATCHES_PER_PASS`] batches. Returns whether the socket may still
    /// hold datagrams, and the time after the last batch.
    fn receive(&mut self, mut now: Instant) -> (bool, Instant) {
        for _ in 0..UDP_BATCHES_PER_PASS {
            let relay = &mut self.relay;
            match self.udp.recv_batch(|source, bytes| {
                // Drops are counted by the relay and shown in the counters line.
                let _ = relay.handle_datagram(now, source, bytes);
            }) {
                Ok(0) => return (false, now),
                Ok(_) => {
                    self.print_events();
                    now = self.clock.now();
                }
                Err(e) => {
                    // Counted; the next readiness edge tries again.
                    self.console.line(format_args!("udp receive error: {e}"));
                    return (false, now);
                }
            }
        }
        (true, now)
    }

    /// [`Driver::receive`] for the netconsole socket.
    fn receive_netconsole(&mut self, mut now: Instant) -> (bool, Instant) {
        let Some(nc) = self.netconsole.as_mut() else {
            return (false, now);
        };
        for _ in 0..UDP_BATCHES_PER_PASS {
            let relay = &mut self.relay;
            match nc.recv_batch(|source, bytes| {
                // Malformed datagrams are counted by the relay (nc_malformed).
                let _ = relay.handle_netconsole(now, source, bytes);
            }) {
                Ok(0) => return (false, now),
                Ok(_) => {
                    while let Some(event) = self.relay.poll_event() {
                        self.console.line(event);
                    }
                    now = self.clock.now();
                }
                Err(e) => {
                    self.console
                        .line(format_args!("netconsole receive error: {e}"));
                    return (false, now);
                }
            }
        }
        (true, now)
    }

    fn wait(
        &mut self,
        timeout: StdDuration,
        udp_ready: &mut bool,
        nc_ready: &mut bool,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            match event.token() {
                UDP_TOKEN => *udp_ready = true,
                NETCONSOLE_TOKEN => *nc_ready = true,
                upstream::TOKEN => self.upstream.handle_event(event),
                token => {
                    if let Some(http) = self.http.as_mut() {
                        http.handle_event(token);
                    }
                }
            }
        }
        Ok(())
    }

    fn print_events(&mut self) {
        while let Some(event) = self.relay.poll_event() {
            self.console.line(event);
        }
    }

    /// The relay's counters plus the socket's and the link's.
    fn print_counters(&mut self, label: &str) {
        let s = self.udp.stats();
        let k = self.udp.kernel_counters().unwrap_or_default();
        let nk = self
            .netconsole
            .as_ref()
            .and_then(|n| n.kernel_counters().ok())
            .unwrap_or_default();
        let l = self.relay.link().stats();
        let r = self.relay.stats();
        let line = format!(
            "{label}{} | socket datagrams {} truncated {} kernel_drops {} queued {} | \
             upstream connects {} sessions {} failovers {} resent {} disconnects {} \
             malformed_replies {} auth_failures {} | spool_refused {} events_dropped {} \
             nc_kernel_drops {}",
            self.relay
                .counters()
                .to_string()
                .strip_prefix("counters")
                .unwrap_or_default(),
            s.datagrams,
            s.truncated,
            k.drops,
            k.queued,
            l.connects,
            l.sessions,
            l.failovers,
            l.resent.total(),
            l.disconnects.total(),
            l.malformed_replies,
            l.auth_failures,
            r.refused,
            r.events_dropped + l.events_dropped,
            nk.drops,
        );
        self.console.line(line);
    }
}

/// The sockets' counters for `/metrics`: what the console's counters line prints after
/// `socket` (and `nc_kernel_drops`), by socket.
pub fn socket_metrics(
    udp: &BatchSocket,
    netconsole: Option<&BatchSocket>,
    m: &mut Metrics<'_>,
) -> fmt::Result {
    let sockets = [("netoops", Some(udp)), ("netconsole", netconsole)];
    let each = |f: fn(&BatchSocket) -> u64| {
        sockets
            .into_iter()
            .filter_map(move |(name, s)| s.map(|s| (name, f(s))))
    };
    m.labelled(
        "netoops_socket_datagrams_total",
        Kind::Counter,
        "Datagrams read from the relay's UDP sockets, by socket (console: socket datagrams).",
        "socket",
        each(|s| s.stats().datagrams),
    )?;
    m.labelled(
        "netoops_socket_truncated_total",
        Kind::Counter,
        "Datagrams too long for the receive buffers, dropped (console: truncated).",
        "socket",
        each(|s| s.stats().truncated),
    )?;
    m.labelled(
        "netoops_socket_kernel_drops_total",
        Kind::Counter,
        "Datagrams the kernel dropped with the socket's buffer full (console: kernel_drops, \
         nc_kernel_drops).",
        "socket",
        each(|s| u64::from(s.kernel_counters().unwrap_or_default().drops)),
    )?;
    m.labelled(
        "netoops_socket_queued_bytes",
        Kind::Gauge,
        "Bytes waiting in the socket's receive buffer (console: queued).",
        "socket",
        each(|s| u64::from(s.kernel_counters().unwrap_or_default().queued)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netoops_collect::catalog;
    use netoops_collect::server::{Server, ServerConfig};
    use netoops_core::config::Config;
    use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};
    use netoops_wire::model::expected;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    fn log(lines: usize, tag: &str) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("[{i:5}.000000] {tag} line {i}\n").into_bytes())
            .collect()
    }

    /// Sends every packet of every round for which `keep(packet_no)` holds.
    fn send(to: SocketAddr, from: &str, dump_id: u16, log: &[u8], keep: impl Fn(u32) -> bool) {
        let socket = UdpSocket::bind(from).unwrap();
        let m = SenderModel::new(&[], log);
        let h = DumpHeader::new(Variant::V3X86_64, dump_id, "6.1.0-driver");
        let mut buf = [0u8; 2048];
        for (_, p) in m.schedule().filter(|&(_, p)| keep(p)) {
            let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
            socket.send_to(&buf[..n], to).unwrap();
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(StdDuration::from_millis(20));
        }
    }

    /// A driver for `config` on a UDP socket of its own on loopback (no netconsole, no
    /// HTTP, the console kept in memory), and that socket's address.
    fn test_driver(
        config: &str,
        recv_buffer: usize,
        drain_timeout: StdDuration,
    ) -> (Driver<Vec<u8>>, SocketAddr) {
        let relay = Relay::new(Config::parse(config).unwrap(), 0x5eed).unwrap();
        let udp = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), recv_buffer).unwrap();
        let to = udp.local_addr().unwrap();
        let console = Console::new(Vec::new());
        let driver = Driver::new(
            relay,
            udp,
            None,
            None,
            console,
            Clock::start(),
            drain_timeout,
        );
        (driver.unwrap(), to)
    }

    /// A relay driver on its own thread (config `upstream=<collector> stats=1s` and `extra`)
    /// delivering to a real collector that stores in a temporary directory.
    struct Harness {
        dir: tempfile::TempDir,
        to: SocketAddr,
        shutdown: Arc<AtomicBool>,
        relay: Option<std::thread::JoinHandle<DriverOutcome>>,
    }

    /// How the driver ended, its console output and its reassembly stats.
    type DriverOutcome = (Ending, String, netoops_core::reassembly::ReassemblyStats);

    impl Harness {
        fn start(extra: &str, recv_buffer: usize) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let server = Server::bind(ServerConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                dir.path(),
            ))
            .unwrap();
            let collector = server.local_addr().unwrap();
            server.spawn();
            let (addr_tx, addr_rx) = std::sync::mpsc::channel();
            let shutdown = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&shutdown);
            let text = format!("upstream={collector} stats=1s {extra}");
            let relay = std::thread::spawn(move || {
                let (mut driver, to) = test_driver(&text, recv_buffer, StdDuration::from_secs(20));
                addr_tx.send(to).unwrap();
                let ending = driver.run(&flag).unwrap();
                let output = String::from_utf8(driver.console().get_ref().clone()).unwrap();
                (ending, output, *driver.relay.reassembler().stats())
            });
            let to = addr_rx.recv().unwrap();
            Harness {
                dir,
                to,
                shutdown,
                relay: Some(relay),
            }
        }

        /// The dumps stored for `ip`.
        fn stored(&self, ip: &str) -> Vec<catalog::StoredDump> {
            catalog::list(self.dir.path())
                .map(|l| l.into_iter().filter(|d| d.ip_dir == ip).collect::<Vec<_>>())
                .unwrap_or_default()
        }

        /// Asks the driver to shut down and waits for it (the collector's files stay).
        fn stop(&mut self) -> DriverOutcome {
            self.shutdown.store(true, Ordering::Relaxed);
            self.relay.take().expect("stopped once").join().unwrap()
        }
    }

    /// Datagrams already in the socket when the stop comes are read before the relay shuts
    /// down: the stop is set before the loop even starts, and all three are counted.
    #[test]
    fn what_the_sockets_hold_at_shutdown_is_read() {
        let (mut driver, to) = test_driver(
            "upstream=127.0.0.1:9 stats=3600s",
            1 << 20,
            StdDuration::from_millis(1),
        );
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for bad in [&b"not netoops"[..], b"\x00\x01", b"x"] {
            sock.send_to(bad, to).unwrap();
        }
        let stop = AtomicBool::new(true);
        driver.run(&stop).unwrap();
        let output = String::from_utf8(driver.console().get_ref().clone()).unwrap();
        let last = output
            .lines()
            .rev()
            .find(|l| l.contains("final counters"))
            .unwrap();
        assert_eq!(
            netoops_core::console::number_after(last, "datagrams"),
            Some(3),
            "{output}"
        );
    }

    /// The whole loop on loopback against the real collector: a complete dump is delivered
    /// while running, a dump still missing packets is flushed as partial at shutdown and
    /// delivered before the driver returns.
    #[test]
    fn delivers_to_a_real_collector_and_drains_at_shutdown() {
        // Packets 3 and 4 of the second dump never arrive; quiet=60s keeps it assembling
        // until shutdown.
        let mut h = Harness::start("quiet=60s", 1 << 20);
        let to = h.to;
        let complete = log(300, "complete");
        send(to, "127.0.0.21:0", 7, &complete, |_| true);
        wait_for("the complete dump", || !h.stored("127.0.0.21").is_empty());
        let d = &h.stored("127.0.0.21")[0];
        assert_eq!(catalog::read_text(d).unwrap(), complete);
        assert_eq!(d.meta["complete"], true);

        let partial = log(200, "partial");
        send(to, "127.0.0.22:0", 8, &partial, |p| p != 3 && p != 4);
        // Shutdown must come after the relay has read those datagrams: wait for its crash
        // notice to reach the collector (the notice is sent at the first packet).
        wait_for("the partial dump's crash notice", || {
            h.dir
                .path()
                .join("127.0.0.22")
                .join("crashes.jsonl")
                .exists()
        });
        let (ending, output, _) = h.stop();
        assert_eq!(ending, Ending::Delivered, "{output}");
        let d = &h.stored("127.0.0.22")[0];
        let m = SenderModel::new(&[], &partial);
        let want = expected(&m, |p| p != 3 && p != 4);
        assert_eq!(catalog::read_text(d).unwrap(), want.text);
        assert_eq!(d.meta["complete"], false);
        let missing: Vec<[u32; 2]> = want.missing.iter().map(|&(a, b)| [a, b]).collect();
        assert_eq!(d.meta["missing"], serde_json::json!(missing));

        for needle in [
            "crash seen: 127.0.0.21:",
            "dump delivered: 127.0.0.21:",
            "shutting down",
            "dump queued: 127.0.0.22:",
            "PARTIAL",
            "dump delivered: 127.0.0.22:",
            "all records delivered",
            "final counters: format 1 | datagrams",
        ] {
            assert!(output.contains(needle), "no {needle:?} in:\n{output}");
        }
    }

    /// Issue 14's spoofed quota, over real sockets: while a machine sends its dump, datagrams
    /// from its own address (another port) open a new dump each, several between two of its
    /// packets, far past the per-source cap. Its dump is stored once, complete; the spoofed
    /// ones are refused or stored apart as the one-packet dumps they are.
    #[test]
    fn a_dump_survives_spoofed_dumps_from_its_own_address() {
        let mut relay = Harness::start("quiet=1s", 4 << 20);
        let to = relay.to;

        let real = UdpSocket::bind("127.0.0.23:0").unwrap();
        let spoofer = UdpSocket::bind("127.0.0.23:0").unwrap();
        let text = log(800, "real");
        let m = SenderModel::new(&[], &text);
        let h = DumpHeader::new(Variant::V3X86_64, 7, "6.1.0-driver");
        let mut buf = [0u8; 2048];
        let mut spoofed = 0u16;
        for (_, p) in m.schedule() {
            let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
            real.send_to(&buf[..n], to).unwrap();
            for _ in 0..12 {
                let fake = DumpHeader::new(Variant::V3X86_64, 1000 + spoofed, "6.1.0-driver");
                let n = encode(&fake, 4096, 0, &[b'X'; netoops_wire::DATA_LEN], &mut buf).unwrap();
                spoofer.send_to(&buf[..n], to).unwrap();
                spoofed += 1;
            }
            std::thread::sleep(StdDuration::from_millis(2));
        }
        // One socket, read in order: once a later dump is stored, every datagram above was read.
        send(to, "127.0.0.24:0", 9, &log(10, "marker"), |_| true);
        wait_for("the marker dump", || !relay.stored("127.0.0.24").is_empty());
        let (ending, output, stats) = relay.stop();
        assert_eq!(ending, Ending::Delivered, "{output}");

        let source = real.local_addr().unwrap().to_string();
        let mine: Vec<_> = relay
            .stored("127.0.0.23")
            .into_iter()
            .filter(|d| d.meta["source"] == source.as_str())
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "{:?}",
            mine.iter().map(|d| &d.meta).collect::<Vec<_>>()
        );
        assert_eq!(mine[0].meta["complete"], true);
        assert_eq!(mine[0].meta["revision"], 1);
        assert_eq!(catalog::read_text(&mine[0]).unwrap(), text);
        assert_eq!(mine[0].meta["conflicts"], 0);
        assert!(stats.refused_source_cap > 0, "{stats:?}");
    }

    #[test]
    fn the_clock_is_monotonic_microseconds() {
        let c = Clock::start();
        let a = c.now();
        std::thread::sleep(StdDuration::from_millis(5));
        let b = c.now();
        assert!(b.saturating_since(a) >= Duration::from_millis(5));
        assert!(a.total_micros() < 1_000_000);
    }
}
