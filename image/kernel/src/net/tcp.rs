//! What the relay's TCP tasks (the upstream link, the HTTP endpoint) share: their stack, the
//! relay and socket buffers allocated once at boot, and the way a connection ends.

use alloc::boxed::Box;
use alloc::vec;
use core::cell::RefCell;
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration};
use netoops_core::relay::Relay;

/// One TCP task's stack, relay and socket buffers.
pub struct TcpTask {
    stack: Stack<'static>,
    /// The relay.
    pub relay: &'static RefCell<Relay>,
    rx: &'static mut [u8],
    tx: &'static mut [u8],
}

impl TcpTask {
    /// A task on `stack` with socket buffers of `rx` and `tx` bytes, allocated for good.
    pub fn new(
        stack: Stack<'static>,
        relay: &'static RefCell<Relay>,
        rx: usize,
        tx: usize,
    ) -> Self {
        TcpTask {
            stack,
            relay,
            rx: Box::leak(vec![0u8; rx].into_boxed_slice()),
            tx: Box::leak(vec![0u8; tx].into_boxed_slice()),
        }
    }

    /// A new socket over the task's buffers (one connection at a time).
    pub fn socket(&mut self) -> TcpSocket<'_> {
        TcpSocket::new(self.stack, self.rx, self.tx)
    }
}

/// Ends a connection: FIN first; a peer that does not finish in time gets a reset.
pub async fn close(socket: &mut TcpSocket<'_>) {
    socket.close();
    if with_timeout(Duration::from_secs(1), socket.flush())
        .await
        .is_err()
    {
        socket.abort();
        let _ = with_timeout(Duration::from_millis(100), socket.flush()).await;
    }
}
