//! UDP output: every datagram from its machine's own address, to one target.
//!
//! One socket bound to the first machine's address and the fixed source port (6666 by default;
//! `SO_REUSEADDR`, so several generators can share it) sends every batch with one `sendmmsg`
//! call; the source address of each datagram is the machine's, set per message. Binding a
//! 127.x.y.z address rather than `0.0.0.0` keeps the port free on every other address, so a
//! receiver listening on port 6666 elsewhere is not disturbed. Source addresses must be local:
//! any 127.x.y.z when the target is on loopback.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::{mmsg, Batch, Output, MAX_BATCH};

/// See the module documentation.
pub struct UdpOutput {
    socket: UdpSocket,
    target: SocketAddrV4,
}

impl UdpOutput {
    /// A socket bound to `bind` (a local address; port 0 = any) sending to `target`.
    pub fn new(target: SocketAddrV4, bind: SocketAddrV4) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        // A deep send queue absorbs scheduling hiccups at high rates; the OS may cap it.
        let _ = socket.set_send_buffer_size(8 << 20);
        socket.bind(&SocketAddr::V4(bind).into())?;
        Ok(Self {
            socket: socket.into(),
            target,
        })
    }
}

impl Output for UdpOutput {
    fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
        let mut msgs: [(&[u8], Option<Ipv4Addr>); MAX_BATCH] = [(&[], None); MAX_BATCH];
        let n = batch.len().min(MAX_BATCH);
        for (i, (msg, item)) in msgs.iter_mut().zip(batch.items()).enumerate() {
            *msg = (batch.datagram(i), Some(*item.source.ip()));
        }
        mmsg::send_all(&self.socket, self.target, &msgs[..n])
    }

    fn describe(&self) -> String {
        format!("udp -> {}", self.target)
    }
}
