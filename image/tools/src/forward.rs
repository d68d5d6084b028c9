//! The host side of `netoops-image appliance`'s ingress: owns the host UDP ports machines
//! send to, and hands every datagram to the guest NIC as an Ethernet/IPv4/UDP frame over a
//! QEMU `-netdev stream` connection, counting every datagram it could not hand on.
//!
//! Why not QEMU's user-mode networking (`hostfwd=udp:...`): slirp reads host UDP through a
//! small socket buffer and drops what the guest cannot take at once; a 400,000 datagrams/s
//! burst lost 72 % there, invisibly (issue 19). Here:
//!
//! - each port is a UDP socket of ours with a large kernel receive buffer
//!   (`SO_RCVBUFFORCE` when we may, else `SO_RCVBUF` up to `net.core.rmem_max`), read by its
//!   own thread with `recvmmsg` (the hosted relay's [`BatchSocket`]: 64 datagrams a call, so
//!   the reader keeps ahead of an unpaced sender on two shared cores) into one bounded
//!   in-memory queue of ready-made, length-prefixed frames;
//! - one writer thread writes that queue to the TCP connection QEMU makes to us
//!   (`-netdev stream,server=off`): TCP is reliable and flow-controlled, and QEMU stops
//!   reading it while the guest NIC has no free receive buffers, so nothing is lost between
//!   here and the guest; the queue absorbs bursts the TCG guest (about 20,000 datagrams/s)
//!   cannot take at once. `-netdev dgram` would be one UDP datagram per frame with no flow
//!   control: QEMU drops what the NIC cannot take, which is the loss we are removing.
//! - each frame keeps the sender's source address and port (loopback senders, 127.x.y.z,
//!   too: the relay does not filter sources), so the relay sees the real machines. Frames
//!   are addressed to the guest NIC's MAC, so the guest needs no ARP; what the guest sends
//!   on this NIC is read and discarded.
//!
//! Losses are counted where they happen, per port ([`PortStats`]): the kernel's receive
//! buffer (the socket's drop counter, `SO_MEMINFO`), a full queue, datagrams too large for
//! one 1500-byte frame (a real network would fragment them and the relay drops fragments),
//! and frames still queued when the guest stopped. Upstream traffic does not pass here.

use crate::frame::{FrameConfig, FrameWriter, MacAddr, HEADERS_LEN};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use netoops_relay::udp::{BatchSocket, KernelCounters};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest UDP payload that fits one standard Ethernet frame (1500-byte IP MTU).
pub const MAX_PAYLOAD: usize = 1500 - 20 - 8;
/// Receive buffer asked for each host socket (the kernel may grant less; see [`PortStats`]).
pub const DEFAULT_RECV_BUFFER: usize = 64 << 20;
/// Bytes of frames the queue holds before it drops (about 180,000 netoops datagrams, some
/// nine seconds of the TCG guest's rate).
pub const DEFAULT_QUEUE_LIMIT: usize = 256 << 20;
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// One host UDP port forwarded to a guest UDP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    /// A short name for reports (`netoops`, `netconsole`).
    pub name: String,
    /// Where the host socket is bound.
    pub host: SocketAddrV4,
    /// The guest's UDP port the frames are addressed to.
    pub guest_port: u16,
}

/// What [`Forwarder::start`] sets up.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// The ports, each with its own socket and reader.
    pub ports: Vec<PortForward>,
    /// The guest NIC's MAC (frames' destination).
    pub guest_mac: MacAddr,
    /// The guest's address (frames' destination).
    pub guest_ip: Ipv4Addr,
    /// Receive buffer to ask for on each host socket, in bytes.
    pub recv_buffer: usize,
    /// Most bytes of frames queued for QEMU before datagrams are dropped (and counted). The
    /// writer holds one more batch of up to this size while it writes, and TCP buffers some.
    pub queue_limit: usize,
}

/// Counters of one port, since the forwarder started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// The port's name.
    pub name: String,
    /// The host socket's address.
    pub host: Option<SocketAddrV4>,
    /// The guest port.
    pub guest_port: u16,
    /// The receive buffer the kernel granted (`SO_MEMINFO`: twice the request, as the kernel
    /// accounts it).
    pub recv_buffer: u64,
    /// Datagrams read from the socket.
    pub received: u64,
    /// Frames written to QEMU's connection (from there TCP and QEMU's flow control carry
    /// them to the guest NIC; only QEMU ending can lose them).
    pub forwarded: u64,
    /// Datagrams dropped by the kernel because the socket's receive buffer was full
    /// (`SO_MEMINFO`'s drop counter; `None` until it could be read).
    pub host_drops: Option<u64>,
    /// Bytes waiting in the socket's receive buffer when read.
    pub host_queued: Option<u64>,
    /// Datagrams dropped because the queue to QEMU was full.
    pub queue_drops: u64,
    /// Datagrams larger than one Ethernet frame's payload ([`MAX_PAYLOAD`]), dropped.
    pub oversize: u64,
    /// Frames waiting in the queue for QEMU now.
    pub queued: u64,
    /// Frames still queued when the forwarder stopped (the guest was gone).
    pub unsent: u64,
}

impl PortStats {
    /// Every datagram lost on the host side, wherever it was lost.
    pub fn lost(&self) -> u64 {
        self.host_drops.unwrap_or(0) + self.queue_drops + self.oversize + self.unsent
    }

    /// One human line, e.g. `forwarder netoops 127.0.0.1:2004 -> guest 2004: received 6891
    /// forwarded 6891 host_drops 0 queue_drops 0 oversize 0 unsent 0`.
    pub fn line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        format!(
            "forwarder {} {} -> guest {}: received {} forwarded {} host_drops {} queue_drops {} \
             oversize {} queued {} unsent {} host_queued {} recv_buffer {}",
            self.name,
            self.host.map_or_else(|| "?".to_string(), |h| h.to_string()),
            self.guest_port,
            self.received,
            self.forwarded,
            opt(self.host_drops),
            self.queue_drops,
            self.oversize,
            self.queued,
            self.unsent,
            opt(self.host_queued),
            self.recv_buffer
        )
    }

    /// The same counters as a JSON object (absent kernel figures are `null`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "host": self.host.map(|h| h.to_string()),
            "guest_port": self.guest_port,
            "recv_buffer": self.recv_buffer,
            "received": self.received,
            "forwarded": self.forwarded,
            "host_drops": self.host_drops,
            "host_queued": self.host_queued,
            "queue_drops": self.queue_drops,
            "oversize": self.oversize,
            "queued": self.queued,
            "unsent": self.unsent,
            "lost": self.lost(),
        })
    }
}

/// The forwarder's counters: one entry per port, plus whether QEMU is connected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Whether QEMU has connected its stream NIC.
    pub connected: bool,
    /// Per port, in configuration order.
    pub ports: Vec<PortStats>,
}

impl ForwarderStats {
    /// `{"forwarder": {"connected": .., "ports": [..]}}`: the machine-readable form, one line.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "forwarder": {
                "connected": self.connected,
                "ports": self.ports.iter().map(PortStats::json).collect::<Vec<_>>(),
            }
        })
    }
}

/// Binds `addr` with a `recv_buffer` receive buffer; the error names the address.
fn bind_udp(addr: SocketAddrV4, recv_buffer: usize) -> io::Result<BatchSocket> {
    BatchSocket::bind(SocketAddr::V4(addr), recv_buffer)
        .map_err(|e| io::Error::new(e.kind(), format!("binding udp {addr}: {e}")))
}

/// Binds `host` and registers it for readiness: the socket, its poll and the bound address.
fn open_port(
    host: SocketAddrV4,
    recv_buffer: usize,
    index: usize,
) -> io::Result<(BatchSocket, Poll, SocketAddrV4)> {
    let socket = bind_udp(host, recv_buffer)?;
    let bound = match socket.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => host,
    };
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&socket.raw_fd()),
        Token(index),
        Interest::READABLE,
    )?;
    Ok((socket, poll, bound))
}

/// Per-port counters shared by reader and writer; the kernel's figures are copied in by
/// the reader, which owns the socket (`None` until the first read of them succeeds).
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    queue_drops: AtomicU64,
    oversize: AtomicU64,
    kernel_known: AtomicBool,
    host_drops: AtomicU64,
    host_queued: AtomicU64,
    recv_buffer: AtomicU64,
}

impl Counters {
    fn set_kernel(&self, k: KernelCounters) {
        self.host_drops.store(u64::from(k.drops), Ordering::Relaxed);
        self.host_queued
            .store(u64::from(k.queued), Ordering::Relaxed);
        self.recv_buffer
            .store(u64::from(k.rcvbuf), Ordering::Relaxed);
        self.kernel_known.store(true, Ordering::Relaxed);
    }

    fn kernel(&self, v: &AtomicU64) -> Option<u64> {
        self.kernel_known
            .load(Ordering::Relaxed)
            .then(|| v.load(Ordering::Relaxed))
    }
}

/// Length-prefixed frames waiting for QEMU, and how many of them came from each port.
struct Batch {
    bytes: Vec<u8>,
    frames: Vec<u64>,
}

impl Batch {
    fn new(ports: usize) -> Batch {
        Batch {
            bytes: Vec::new(),
            frames: vec![0; ports],
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.frames.fill(0);
    }
}

/// State shared by the threads.
struct Shared {
    queue: Mutex<Batch>,
    ready: Condvar,
    limit: usize,
    stop: AtomicBool,
    connected: AtomicBool,
    counters: Vec<Counters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the length-prefixed frames in `frames` from `port`; those that do not fit
    /// under the limit are counted dropped.
    fn push(&self, port: usize, frames: &[u8]) {
        let mut dropped = 0;
        let mut q = self.lock();
        let was_empty = q.bytes.is_empty();
        let mut rest = frames;
        while let Some(len) = rest.get(..4) {
            let len = 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(frame) = rest.get(..len) else {
                break;
            };
            rest = &rest[len..];
            if q.bytes.len() + frame.len() > self.limit {
                dropped += 1;
                continue;
            }
            q.bytes.extend_from_slice(frame);
            q.frames[port] += 1;
        }
        let filled = !q.bytes.is_empty();
        drop(q);
        if dropped > 0 {
            self.counters[port]
                .queue_drops
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if was_empty && filled {
            self.ready.notify_one();
        }
    }
}

/// A running forwarder. Start QEMU with [`Forwarder::netdev`]; stop the forwarder after QEMU
/// has exited ([`Forwarder::stop`]), so QEMU's connection never closes under it (QEMU 7.2
/// crashes when its stream peer closes while frames are buffered).
pub struct Forwarder {
    shared: Arc<Shared>,
    ports: Vec<(PortForward, SocketAddrV4)>,
    qemu_port: u16,
    connection: Arc<Mutex<Option<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds every port and the listener QEMU connects to, and starts the threads. Datagrams
    /// that arrive before QEMU connects wait in the queue.
    pub fn start(config: &ForwarderConfig) -> io::Result<Forwarder> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let qemu_port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Batch::new(config.ports.len())),
            ready: Condvar::new(),
            limit: config.queue_limit,
            stop: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            counters: config.ports.iter().map(|_| Counters::default()).collect(),
        });
        // Each reader binds its own socket (a BatchSocket holds raw pointers into its batch
        // and stays on one thread) and reports the bound address or the error back here,
        // so a busy port fails the start, before QEMU runs.
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for (index, port) in config.ports.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let shared_for_reader = Arc::clone(&shared);
            let (host, recv_buffer) = (port.host, config.recv_buffer);
            let writer = FrameWriter::new(FrameConfig {
                dst_mac: config.guest_mac,
                src_mac: None,
                dst: SocketAddrV4::new(config.guest_ip, port.guest_port),
                udp_checksum: true,
            });
            threads.push(std::thread::spawn(move || {
                match open_port(host, recv_buffer, index) {
                    Ok((socket, poll, bound)) => {
                        if let Ok(k) = socket.kernel_counters() {
                            shared_for_reader.counters[index].set_kernel(k);
                        }
                        let _ = tx.send(Ok(bound));
                        read_port(&shared_for_reader, index, socket, poll, writer);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }));
            let opened = rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("forwarder reader ended")));
            match opened {
                Ok(bound) => ports.push((port.clone(), bound)),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        let connection = Arc::new(Mutex::new(None));
        {
            let shared = Arc::clone(&shared);
            let connection = Arc::clone(&connection);
            threads.push(std::thread::spawn(move || {
                write_to_qemu(&shared, &listener, &connection)
            }));
        }
        Ok(Forwarder {
            shared,
            ports,
            qemu_port,
            connection,
            threads,
        })
    }

    /// Where QEMU connects (127.0.0.1).
    pub fn qemu_port(&self) -> u16 {
        self.qemu_port
    }

    /// The `-netdev` value for QEMU: a stream client of our listener, with id `id`.
    pub fn netdev(&self, id: &str) -> String {
        stream_netdev(id, self.qemu_port)
    }

    /// The counters now, with the kernel's figures for each socket.
    pub fn stats(&self) -> ForwarderStats {
        let queued = self.shared.lock().frames.clone();
        self.collect(&queued, false)
    }

    /// The counters, with `queued` frames per port waiting (or, once `stopped`, unsent).
    fn collect(&self, queued: &[u64], stopped: bool) -> ForwarderStats {
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (port, bound))| {
                let c = &self.shared.counters[i];
                let waiting = queued.get(i).copied().unwrap_or(0);
                PortStats {
                    name: port.name.clone(),
                    host: Some(*bound),
                    guest_port: port.guest_port,
                    recv_buffer: c.recv_buffer.load(Ordering::Relaxed),
                    received: c.received.load(Ordering::Relaxed),
                    forwarded: c.forwarded.load(Ordering::Relaxed),
                    host_drops: c.kernel(&c.host_drops),
                    host_queued: c.kernel(&c.host_queued),
                    queue_drops: c.queue_drops.load(Ordering::Relaxed),
                    oversize: c.oversize.load(Ordering::Relaxed),
                    queued: if stopped { 0 } else { waiting },
                    unsent: if stopped { waiting } else { 0 },
                }
            })
            .collect();
        ForwarderStats {
            connected: self.shared.connected.load(Ordering::Relaxed),
            ports,
        }
    }

    /// Stops the threads and returns the final counters; frames still queued count as
    /// `unsent`. Call after QEMU has exited.
    pub fn stop(mut self) -> ForwarderStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        if let Some(stream) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            // Unblocks a writer stuck on a peer that no longer reads.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let unsent = self.shared.lock().frames.clone();
        self.collect(&unsent, true)
    }
}

/// `-netdev stream` as a client of 127.0.0.1:`port` (`server=off`: QEMU 7.2's stream server
/// crashes when the guest transmits before a client connects).
pub fn stream_netdev(id: &str, port: u16) -> String {
    format!("stream,id={id},server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
}

/// Reader thread of port `index`: datagrams -> frames -> queue, a `recvmmsg` batch at a
/// time, until stopped; the kernel's counters are copied out after every wake-up.
fn read_port(
    shared: &Shared,
    index: usize,
    mut socket: BatchSocket,
    mut poll: Poll,
    mut writer: FrameWriter,
) {
    let counters = &shared.counters[index];
    let mut events = Events::with_capacity(4);
    let mut frames: Vec<u8> = Vec::new();
    let mut failed = false;
    while !shared.stop.load(Ordering::Relaxed) {
        // mio is edge-triggered: drain the socket before waiting again.
        loop {
            frames.clear();
            let mut oversize = 0;
            let mut handed = 0;
            let got = socket.recv_batch(|src, datagram| {
                handed += 1;
                let SocketAddr::V4(src) = src else {
                    oversize += 1;
                    return;
                };
                if datagram.len() > MAX_PAYLOAD {
                    oversize += 1;
                    return;
                }
                let start = frames.len();
                frames.resize(start + 4 + HEADERS_LEN + datagram.len(), 0);
                frames[start + 4 + HEADERS_LEN..].copy_from_slice(datagram);
                match writer.write(&mut frames[start + 4..], src, datagram.len()) {
                    Some(len) => {
                        frames[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes())
                    }
                    None => {
                        frames.truncate(start);
                        oversize += 1;
                    }
                }
            });
            let n = match got {
                Ok(n) => n as u64,
                Err(e) => {
                    if !failed {
                        eprintln!("netoops-image: forwarder: reading udp: {e}");
                    }
                    failed = true;
                    std::thread::sleep(POLL);
                    0
                }
            };
            if n == 0 {
                break;
            }
            // Datagrams the batch received but did not hand over were longer than its buffers.
            oversize += n.saturating_sub(handed);
            counters.received.fetch_add(n, Ordering::Relaxed);
            if oversize > 0 {
                counters.oversize.fetch_add(oversize, Ordering::Relaxed);
            }
            shared.push(index, &frames);
        }
        if let Ok(k) = socket.kernel_counters() {
            counters.set_kernel(k);
        }
        if let Err(e) = poll.poll(&mut events, Some(POLL)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("netoops-image: forwarder: waiting for udp: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    if let Ok(k) = socket.kernel_counters() {
        counters.set_kernel(k);
    }
}

/// Writer thread: waits for QEMU, then writes queued frames to it until stopped or QEMU
/// goes away. What the guest sends on this NIC is drained on a side thread.
fn write_to_qemu(shared: &Shared, listener: &TcpListener, connection: &Mutex<Option<TcpStream>>) {
    let Some(mut stream) = accept(shared, listener) else {
        return;
    };
    if let Ok(mut reader) = stream.try_clone() {
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        });
    }
    if let Ok(clone) = stream.try_clone() {
        *connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
    }
    shared.connected.store(true, Ordering::Relaxed);
    let mut batch = Batch::new(shared.counters.len());
    loop {
        {
            let mut q = shared.lock();
            while q.bytes.is_empty() && !shared.stop.load(Ordering::Relaxed) {
                q = shared
                    .ready
                    .wait_timeout(q, POLL)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if q.bytes.is_empty() {
                return;
            }
            std::mem::swap(&mut *q, &mut batch);
        }
        if stream.write_all(&batch.bytes).is_err() {
            // QEMU is gone: what this batch held was not sent; put it back to be counted.
            let mut q = shared.lock();
            for (i, n) in batch.frames.iter().enumerate() {
                q.frames[i] += n;
            }
            return;
        }
        for (c, n) in shared.counters.iter().zip(&batch.frames) {
            c.forwarded.fetch_add(*n, Ordering::Relaxed);
        }
        batch.clear();
    }
}

/// Waits for QEMU's connection, looking at the stop flag.
fn accept(shared: &Shared, listener: &TcpListener) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL / 10),
            Err(e) => {
                eprintln!("netoops-image: forwarder: accepting QEMU's connection: {e}");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse_frame;
    use std::net::UdpSocket;
    use std::time::Instant;

    fn shared(limit: usize) -> Shared {
        Shared {
            queue: Mutex::new(Batch::new(2)),
            ready: Condvar::new(),
            limit,
            stop: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            counters: vec![Counters::default(), Counters::default()],
        }
    }

    fn prefixed(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lens {
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend(std::iter::repeat_n(len as u8, len));
        }
        out
    }

    #[test]
    fn the_queue_takes_what_fits_and_counts_the_rest() {
        let s = shared(3 * 104);
        s.push(0, &prefixed(&[100, 100]));
        s.push(1, &prefixed(&[100, 100, 50]));
        let q = s.lock();
        assert_eq!(q.frames, [2, 1]);
        assert_eq!(q.bytes.len(), 3 * 104);
        assert_eq!(&q.bytes[..4], &100u32.to_be_bytes());
        drop(q);
        assert_eq!(s.counters[1].queue_drops.load(Ordering::Relaxed), 2);
        assert_eq!(s.counters[0].queue_drops.load(Ordering::Relaxed), 0);
        // A cut-off or lying prefix never panics; only whole frames are queued.
        let s = shared(1 << 20);
        let mut broken = prefixed(&[10]);
        broken.extend_from_slice(&u32::MAX.to_be_bytes());
        broken.extend_from_slice(&[1, 2, 3]);
        s.push(0, &broken);
        s.push(0, &[0, 0]);
        assert_eq!(s.lock().frames, [1, 0]);
    }

    #[test]
    fn counters_read_as_json_and_lines() {
        let p = PortStats {
            name: "netoops".into(),
            host: Some("127.0.0.1:2004".parse().unwrap()),
            guest_port: 2004,
            received: 10,
            forwarded: 6,
            host_drops: Some(1),
            queue_drops: 2,
            oversize: 1,
            unsent: 1,
            ..PortStats::default()
        };
        assert_eq!(p.lost(), 5);
        let line = p.line();
        assert!(line.starts_with("forwarder netoops 127.0.0.1:2004 -> guest 2004: received 10"));
        assert!(
            line.contains("host_drops 1 queue_drops 2 oversize 1"),
            "{line}"
        );
        let v = ForwarderStats {
            connected: false,
            ports: vec![p],
        }
        .json();
        assert_eq!(v["forwarder"]["ports"][0]["lost"], 5);
        assert_eq!(v["forwarder"]["ports"][0]["host"], "127.0.0.1:2004");
        assert!(PortStats::default().line().contains("host_drops ?"));
    }

    fn config(ports: Vec<PortForward>, queue_limit: usize) -> ForwarderConfig {
        ForwarderConfig {
            ports,
            guest_mac: MacAddr::QEMU_DEFAULT,
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            recv_buffer: 1 << 20,
            queue_limit,
        }
    }

    fn port(name: &str, guest_port: u16) -> PortForward {
        PortForward {
            name: name.into(),
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            guest_port,
        }
    }

    fn wait(what: &str, f: &Forwarder, done: impl Fn(&ForwarderStats) -> bool) -> ForwarderStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = f.stats();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Real sockets end to end: datagrams from two loopback senders to two ports come out
    /// of the stream as length-prefixed frames to the guest, sources kept.
    #[test]
    fn datagrams_become_frames_with_their_senders() {
        let f = Forwarder::start(&config(
            vec![port("netoops", 2004), port("netconsole", 6666)],
            1 << 20,
        ))
        .unwrap();
        let stats = f.stats();
        let hosts: Vec<SocketAddrV4> = stats.ports.iter().map(|p| p.host.unwrap()).collect();
        assert!(stats.ports[0].recv_buffer >= 1 << 20, "{stats:?}");
        // Sent before QEMU (here: us) connects: queued, not lost.
        let a = UdpSocket::bind("127.3.0.7:0").unwrap();
        let b = UdpSocket::bind("127.3.0.8:0").unwrap();
        for i in 0..50u8 {
            a.send_to(&[i; 1412], hosts[0]).unwrap();
        }
        b.send_to(b"<6>netconsole line", hosts[1]).unwrap();
        b.send_to(&[0u8; MAX_PAYLOAD + 1], hosts[0]).unwrap();
        wait("all read", &f, |s| {
            s.ports[0].received == 51 && s.ports[1].received == 1
        });
        let mut qemu = TcpStream::connect(("127.0.0.1", f.qemu_port())).unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut frames = Vec::new();
        for _ in 0..51 {
            let mut len = [0u8; 4];
            qemu.read_exact(&mut len).unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            qemu.read_exact(&mut frame).unwrap();
            frames.push(frame);
        }
        let parsed: Vec<_> = frames.iter().map(|f| parse_frame(f).unwrap()).collect();
        let to_netoops: Vec<_> = parsed.iter().filter(|p| p.3.port() == 2004).collect();
        assert_eq!(to_netoops.len(), 50);
        for (i, (dmac, _, src, dst, payload)) in to_netoops.iter().enumerate() {
            assert_eq!(*dmac, MacAddr::QEMU_DEFAULT);
            assert_eq!(
                *src,
                SocketAddrV4::new(Ipv4Addr::new(127, 3, 0, 7), a.local_addr().unwrap().port())
            );
            assert_eq!(*dst, "10.0.2.15:2004".parse().unwrap());
            assert_eq!(*payload, &[i as u8; 1412][..], "in order");
        }
        let nc = parsed.iter().find(|p| p.3.port() == 6666).unwrap();
        assert_eq!(*nc.2.ip(), Ipv4Addr::new(127, 3, 0, 8));
        assert_eq!(nc.4, b"<6>netconsole line");
        let s = wait("forwarded", &f, |s| s.ports[0].forwarded == 50);
        assert!(s.connected);
        assert_eq!(s.ports[0].oversize, 1);
        assert_eq!(s.ports[1].forwarded, 1);
        assert_eq!(s.ports[0].host_drops, Some(0));
        let end = f.stop();
        assert_eq!(end.ports[0].lost(), 1, "{end:?}");
        assert_eq!(end.ports[1].lost(), 0, "{end:?}");
    }

    /// With nobody reading, a full queue drops and counts; what is queued at stop is unsent.
    #[test]
    fn a_full_queue_and_a_stop_are_counted_not_silent() {
        let frame = 4 + HEADERS_LEN + 1000;
        let f = Forwarder::start(&config(vec![port("netoops", 2004)], 10 * frame)).unwrap();
        let host = f.stats().ports[0].host.unwrap();
        let s = UdpSocket::bind("127.3.0.9:0").unwrap();
        for _ in 0..25 {
            s.send_to(&[7u8; 1000], host).unwrap();
        }
        let stats = wait("all read", &f, |s| s.ports[0].received == 25);
        assert_eq!(stats.ports[0].queue_drops, 15);
        assert_eq!(stats.ports[0].queued, 10);
        let end = f.stop();
        let p = &end.ports[0];
        assert_eq!((p.forwarded, p.unsent, p.queued), (0, 10, 0));
        assert_eq!(p.lost(), 25);
    }

    #[test]
    fn a_busy_port_is_an_error_naming_it() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = match taken.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let mut p = port("netoops", 2004);
        p.host = addr;
        let err = Forwarder::start(&config(vec![p], 1 << 20)).err().unwrap();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
