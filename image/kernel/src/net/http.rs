//! The HTTP endpoint (`http_port=`): [`CONNECTIONS`] tasks, each listening with its own
//! embassy-net TCP socket on the relay's address and running one connection at a time for
//! the core's shared [`HttpServer`] (which parses, renders and keeps the deadlines).
//!
//! A task: accept, take a server slot, then every turn feed what the socket received to
//! `handle_input`, let `poll_transmit` write straight into the socket's free send space, run
//! the server's deadlines, and close (FIN; reset if the peer does not finish within a
//! second) when the server says so or the peer goes away. While every task is busy, no
//! socket listens and the stack answers a new connection with a reset: that is the
//! connection bound. `/metrics` adds the board's own counters ([`BoardMetrics`]: fast path,
//! NICs, heap, loop) to the relay's. No borrow of the relay or the server spans an `.await`.

use super::driver::NicReport;
use super::executor::yield_now;
use super::tcp::{close, TcpTask};
use crate::platform;
use core::cell::{Cell, RefCell};
use core::fmt;
use embassy_net::tcp::TcpSocket;
use netoops_core::http::metrics::{Kind, Metrics};
use netoops_core::http::{HttpServer, RelaySite, Transmit};
use netoops_core::relay::Relay;
use netoops_core::time::Instant;

/// Connections served at once (one task and one socket each).
pub const CONNECTIONS: usize = 2;
/// Socket receive buffer: a request head is at most 1 KiB.
pub const RX_BUFFER: usize = 2 * 1024;
/// Socket send buffer.
pub const TX_BUFFER: usize = 16 * 1024;

fn now() -> Instant {
    Instant::from_micros(platform::now_micros())
}

/// The board loop's counters, published every turn for `/metrics` (the `loop:` line).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopReport {
    /// Loop turns since boot.
    pub turns: u64,
    /// Idle halts since boot.
    pub halts: u64,
    /// Microseconds halted since boot.
    pub halted_us: u64,
    /// Interrupts other than the idle timer's.
    pub stray_interrupts: u64,
}

/// What the board prints beside the relay's counters line, for `/metrics`.
#[derive(Clone, Copy)]
pub struct BoardMetrics {
    /// The ingress NIC (and its fast path).
    pub ingress: &'static Cell<NicReport>,
    /// The upstream NIC in two-NIC mode.
    pub upstream: Option<&'static Cell<NicReport>>,
    /// The board loop.
    pub board_loop: &'static Cell<LoopReport>,
}

impl BoardMetrics {
    fn write(&self, m: &mut Metrics<'_>) -> fmt::Result {
        use Kind::{Counter, Gauge};
        let f = self.ingress.get().fast;
        m.counter(
            "netoops_fastpath_frames_total",
            "Frames taken from the ingress ring (console: fastpath frames).",
            f.frames,
        )?;
        m.counter(
            "netoops_fastpath_datagrams_total",
            "Datagrams the fast path handed to the relay (console: fastpath datagrams).",
            f.datagrams,
        )?;
        m.counter(
            "netoops_fastpath_accepted_total",
            "Of those, accepted by the relay (console: accepted).",
            f.accepted,
        )?;
        m.counter(
            "netoops_fastpath_relay_dropped_total",
            "Of those, dropped by the relay, counted there by reason (console: relay_dropped).",
            f.relay_dropped,
        )?;
        m.counter(
            "netoops_fastpath_to_stack_total",
            "Frames passed to the TCP/IP stack (console: to_stack).",
            f.to_stack,
        )?;
        m.labelled(
            "netoops_fastpath_dropped_total",
            Counter,
            "Frames the fast path dropped, by reason (console: fastpath dropped and its parts).",
            "reason",
            [
                ("ip_checksum", f.bad_ip_checksum),
                ("fragment", f.fragments),
                ("wrong_dst", f.wrong_dst),
                ("malformed", f.malformed),
                ("udp_checksum", f.bad_udp_checksum),
            ],
        )?;
        m.counter(
            "netoops_fastpath_cycles_total",
            "TSC cycles from receive ring to relay, summed over the measured datagrams \
             (console: cycles/datagram is this over the samples).",
            f.cycles,
        )?;
        m.counter(
            "netoops_fastpath_cycle_samples_total",
            "Datagrams measured in netoops_fastpath_cycles_total.",
            f.cycles_samples,
        )?;
        let nics = [("ingress", Some(self.ingress)), ("upstream", self.upstream)];
        let each = |get: fn(&NicReport) -> u64| {
            nics.into_iter()
                .filter_map(move |(role, r)| r.map(|r| (role, get(&r.get()))))
        };
        m.labelled(
            "netoops_nic_rx_frames_total",
            Counter,
            "Frames received, by NIC (console: nic rx).",
            "nic",
            each(|r| r.nic.rx_frames),
        )?;
        m.labelled(
            "netoops_nic_tx_frames_total",
            Counter,
            "Frames sent, by NIC (console: nic tx).",
            "nic",
            each(|r| r.nic.tx_frames),
        )?;
        m.labelled(
            "netoops_nic_rx_dropped_total",
            Counter,
            "Frames the device or driver dropped on receive, by NIC (console: rx_dropped).",
            "nic",
            each(|r| r.nic.rx_dropped),
        )?;
        m.labelled(
            "netoops_nic_tx_ring_full_total",
            Counter,
            "Transmits refused with the ring full, by NIC (console: tx_ring_full).",
            "nic",
            each(|r| r.nic.tx_ring_full),
        )?;
        let (used, free) = platform::memory::heap_usage();
        m.gauge(
            "netoops_heap_used_bytes",
            "Heap in use (console: memory heap used).",
            used as u64,
        )?;
        m.gauge(
            "netoops_heap_peak_bytes",
            "Most heap ever in use (console: peak).",
            platform::memory::heap_peak().max(used) as u64,
        )?;
        m.gauge(
            "netoops_heap_bytes",
            "Heap size (console: total).",
            (used + free) as u64,
        )?;
        let l = self.board_loop.get();
        m.counter(
            "netoops_loop_turns_total",
            "Turns of the board loop (console: loop turns).",
            l.turns,
        )?;
        m.counter(
            "netoops_loop_halts_total",
            "Idle halts on the local APIC timer (console: halts).",
            l.halts,
        )?;
        m.seconds(
            "netoops_loop_halted_seconds_total",
            Counter,
            "Time spent halted (console: halted_percent is its share of an interval).",
            l.halted_us,
        )?;
        m.family(
            "netoops_loop_stray_interrupts_total",
            Counter,
            "Interrupts other than the idle timer's (console: stray_interrupts).",
        )?;
        m.sample(
            "netoops_loop_stray_interrupts_total",
            &[],
            l.stray_interrupts,
        )?;
        m.counter(
            "netoops_console_lines_dropped_total",
            "Console lines dropped with the deferred console's ring full (console: lines dropped).",
            platform::serial::lines_dropped(),
        )?;
        m.seconds(
            "netoops_uptime_seconds",
            Gauge,
            "Time since the relay's clock started (boot).",
            platform::now_micros(),
        )
    }
}

/// One connection task's share, allocated at boot.
pub struct HttpTask {
    /// The ingress NIC's stack (the relay's address), the relay and socket buffers
    /// ([`RX_BUFFER`], [`TX_BUFFER`]).
    pub tcp: TcpTask,
    /// The server every task shares.
    pub server: &'static RefCell<HttpServer>,
    /// The board's counters.
    pub board: BoardMetrics,
    /// `http_port`.
    pub port: u16,
}

impl HttpTask {
    /// Serves connections forever.
    pub async fn run(self) -> ! {
        let HttpTask {
            mut tcp,
            server,
            board,
            port,
        } = self;
        let relay = tcp.relay;
        loop {
            let mut socket = tcp.socket();
            if socket.accept(port).await.is_err() {
                continue;
            }
            socket.set_nagle_enabled(false);
            let slot = server.borrow_mut().accept(now());
            if let Some(id) = slot {
                serve(&mut socket, relay, server, board, id).await;
            }
            close(&mut socket).await;
        }
    }
}

/// Runs connection `id` until the server closes it or the peer goes away.
async fn serve(
    socket: &mut TcpSocket<'_>,
    relay: &RefCell<Relay>,
    server: &RefCell<HttpServer>,
    board: BoardMetrics,
    id: usize,
) {
    loop {
        if socket.can_recv() {
            let _ = socket
                .read_with(|bytes| {
                    server.borrow_mut().handle_input(id, bytes);
                    (bytes.len(), ())
                })
                .await;
        }
        let peer_done = !socket.may_recv() && !socket.can_recv();
        let at = now();
        {
            let mut s = server.borrow_mut();
            if s.poll_timeout().is_some_and(|t| t <= at) {
                s.handle_timeout(at);
            }
            if !s.is_open(id) {
                // Past a deadline (a client that sends or reads too slowly).
                return;
            }
        }
        let mut next = Transmit::Idle;
        if socket.can_send() {
            let _ = socket
                .write_with(|space| {
                    let Ok(relay) = relay.try_borrow() else {
                        return (0, ());
                    };
                    let site = RelaySite {
                        relay: &relay,
                        now: at,
                        // The CMOS RTC's time, when the machine has one.
                        wall_ms: platform::rtc::wall_ms(),
                        extra: |m: &mut Metrics<'_>| board.write(m),
                    };
                    next = server.borrow_mut().poll_transmit(id, at, &site, space);
                    match next {
                        Transmit::Send(n) => (n, ()),
                        _ => (0, ()),
                    }
                })
                .await;
        } else if !socket.may_send() {
            // Reset by the peer.
            server.borrow_mut().release(id);
            return;
        }
        match next {
            Transmit::Close => return,
            Transmit::Idle if peer_done => {
                // The peer stopped sending before its request was complete.
                server.borrow_mut().release(id);
                return;
            }
            _ => {}
        }
        yield_now().await;
    }
}
