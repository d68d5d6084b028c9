//! The upstream connection: runs the relay's [`UpstreamLink`] over an embassy-net TCP socket.
//!
//! One task, one connection at a time, exactly as the link asks:
//!
//! 1. Wait until `poll_connect(now)` names an upstream, then `TcpSocket::connect` to it.
//!    The connect races the link's own connect timeout (the link decides, through
//!    `poll_close`, when an attempt has taken too long). Success is `handle_connected`,
//!    failure `handle_closed(ConnectFailed)`.
//! 2. While connected, every turn: obey `poll_close()`; feed received bytes to `handle_input`
//!    straight from the socket's receive buffer; let `poll_transmit` write straight into the
//!    socket's free send space (never more than fits, so nothing written is lost); notice the
//!    peer closing (`PeerClosed`) or resetting the connection (`IoError`).
//! 3. Close the socket (FIN, then RST if the peer does not finish within a second), report
//!    `handle_closed`, and start over.
//!
//! The relay is shared with the fast path through a `RefCell`; a borrow never spans an
//! `.await`. The relay's own timers (`handle_timeout`) are run by the board loop.
//!
//! [`UpstreamLink`]: netoops_core::upstream::UpstreamLink

use super::executor::yield_now;
use super::tcp::{close, TcpTask};
use crate::platform;
use core::cell::RefCell;
use core::future::Future;
use core::net::SocketAddr;
use embassy_net::tcp::{State, TcpSocket};
use embassy_net::{IpAddress, IpEndpoint};
use netoops_core::relay::Relay;
use netoops_core::time::Instant;
use netoops_core::upstream::CloseReason;

/// Socket buffer sizes. The send buffer is what `poll_transmit` can fill per turn and bounds
/// the data in flight: at 32 KiB the link ran at about 7 MB/s (55 dumps/s) under TCG with user
/// networking, which overflowed the spool in the 10,000-machine storm. Replies
/// (acknowledgements) are tiny.
pub const TX_BUFFER: usize = 512 * 1024;
/// See [`TX_BUFFER`].
pub const RX_BUFFER: usize = 2 * 1024;

fn now() -> Instant {
    Instant::from_micros(platform::now_micros())
}

/// Everything the task needs, allocated once at boot.
pub struct Upstream {
    /// Stack, relay and socket buffers ([`RX_BUFFER`], [`TX_BUFFER`]).
    pub tcp: TcpTask,
    /// The collectors, in the configuration's order (IPv4 only, checked at boot).
    pub upstreams: &'static [SocketAddr],
}

impl Upstream {
    /// Runs connections forever.
    pub async fn run(self) -> ! {
        let Upstream { mut tcp, upstreams } = self;
        let relay = tcp.relay;
        loop {
            let idx = loop {
                if let Some(idx) = relay.borrow_mut().link().poll_connect(now()) {
                    break idx;
                }
                yield_now().await;
            };
            let mut socket = tcp.socket();
            socket.set_nagle_enabled(false);
            let reason = match upstreams.get(idx).copied() {
                Some(SocketAddr::V4(addr)) => {
                    let remote = IpEndpoint::new(IpAddress::Ipv4(*addr.ip()), addr.port());
                    session(&mut socket, relay, idx, remote).await
                }
                _ => CloseReason::ConnectFailed,
            };
            close(&mut socket).await;
            drop(socket);
            relay.borrow_mut().link().handle_closed(now(), idx, reason);
        }
    }
}

/// Whether the link has given up on connection `idx`.
fn link_wants_close(relay: &RefCell<Relay>, idx: usize) -> bool {
    relay.borrow_mut().link().poll_close() == Some(idx)
}

/// Connects and runs one session; returns why it ended (the link substitutes its own reason
/// when it asked for the close).
async fn session(
    socket: &mut TcpSocket<'_>,
    relay: &RefCell<Relay>,
    idx: usize,
    remote: IpEndpoint,
) -> CloseReason {
    if let Err(reason) = connect(socket, relay, idx, remote).await {
        return reason;
    }
    relay.borrow_mut().link().handle_connected(now(), idx);
    loop {
        if link_wants_close(relay, idx) {
            return CloseReason::IoError;
        }
        if socket.can_recv() {
            let at = now();
            // Complete without waiting: data is there.
            let _ = socket
                .read_with(|bytes| {
                    // A protocol error makes the link ask for a close (next turn).
                    let _ = relay.borrow_mut().link().handle_input(at, bytes);
                    (bytes.len(), ())
                })
                .await;
        } else if !socket.may_recv() {
            return match socket.state() {
                State::Closed => CloseReason::IoError,
                _ => CloseReason::PeerClosed,
            };
        }
        if socket.can_send() {
            let at = now();
            let _ = socket
                .write_with(|space| {
                    let n = relay.borrow_mut().link().poll_transmit(at, space);
                    (n, ())
                })
                .await;
        } else if !socket.may_send() {
            return CloseReason::IoError;
        }
        yield_now().await;
    }
}

/// Starts the TCP connection and waits until it is up, refused, or the link gives up.
async fn connect(
    socket: &mut TcpSocket<'_>,
    relay: &RefCell<Relay>,
    idx: usize,
    remote: IpEndpoint,
) -> Result<(), CloseReason> {
    let mut attempt = core::pin::pin!(socket.connect(remote));
    core::future::poll_fn(|cx| {
        if let core::task::Poll::Ready(r) = attempt.as_mut().poll(cx) {
            return core::task::Poll::Ready(r.map_err(|_| CloseReason::ConnectFailed));
        }
        if link_wants_close(relay, idx) {
            return core::task::Poll::Ready(Err(CloseReason::ConnectTimeout));
        }
        // Check the link's deadline again next turn.
        cx.waker().wake_by_ref();
        core::task::Poll::Pending
    })
    .await
}
