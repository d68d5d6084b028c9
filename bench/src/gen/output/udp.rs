//! UDP output: every datagram from its machine's own address, to one target.
//!
//! One socket bound to `0.0.0.0:<source port>` (with `SO_REUSEADDR`, so several generators can
//! share the sender's fixed port 6666) sends every batch with one `sendmmsg` call; the source
//! address of each datagram is the machine's, set per message. Source addresses must be local:
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
    /// A socket on `source_port` (0 = any) sending to `target`.
    pub fn new(target: SocketAddrV4, source_port: u16) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        // A deep send queue absorbs scheduling hiccups at high rates; the OS may cap it.
        let _ = socket.set_send_buffer_size(8 << 20);
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, source_port)).into())?;
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
