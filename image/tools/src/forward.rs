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
//!   own thread into one bounded in-memory queue of ready-made, length-prefixed frames;
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
//! buffer (the socket's `drops` in `/proc/net/udp`), a full queue, datagrams too large for
//! one 1500-byte frame (a real network would fragment them and the relay drops fragments),
//! and frames still queued when the guest stopped. Upstream traffic does not pass here.

use crate::frame::{FrameConfig, FrameWriter, MacAddr, HEADERS_LEN};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
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
    /// Most bytes of frames queued for QEMU before datagrams are dropped (and counted).
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
    /// The receive buffer the kernel granted (as `SO_RCVBUF` reports it: twice the request).
    pub recv_buffer: u64,
    /// Datagrams read from the socket.
    pub received: u64,
    /// Frames written to QEMU.
    pub forwarded: u64,
    /// Datagrams dropped by the kernel because the socket's receive buffer was full
    /// (`/proc/net/udp`; `None` where that file cannot be read).
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

/// A `/proc/net/udp` row's receive-queue bytes and drop count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcUdp {
    /// `rx_queue`: bytes in the receive buffer (hex in the file).
    pub rx_queue: u64,
    /// `drops`: datagrams the kernel dropped for this socket.
    pub drops: u64,
}

/// The row of `/proc/net/udp` (or `udp6`) text `table` for the socket with `inode`.
/// Columns: `sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref
/// pointer drops`. Anything that does not parse is `None`.
pub fn parse_proc_udp(table: &str, inode: u64) -> Option<ProcUdp> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 || f[9].parse::<u64>().ok()? != inode {
            return None;
        }
        let (_, rx) = f[4].split_once(':')?;
        Some(ProcUdp {
            rx_queue: u64::from_str_radix(rx, 16).ok()?,
            drops: f[12].parse().ok()?,
        })
    })
}

/// The inode number in a `/proc/self/fd/N` socket link (`socket:[12345]`).
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// What the kernel reports for `socket`, from `/proc/net/udp`.
fn proc_udp(socket: &UdpSocket) -> Option<ProcUdp> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let inode = parse_socket_link(link.to_str()?)?;
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    parse_proc_udp(&table, inode)
}

/// Asks for a `bytes` receive buffer: `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN, ignores
/// `net.core.rmem_max`), else `SO_RCVBUF` (capped at rmem_max). Returns what was granted.
fn grow_recv_buffer(socket: &Socket, bytes: usize) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from `&value`, which lives
    // for the call; the descriptor is a socket we own. Failure is reported, not undefined.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.recv_buffer_size()
}

/// Binds `addr` with a large receive buffer and a read timeout (so readers see the stop flag).
fn bind_udp(addr: SocketAddrV4, recv_buffer: usize) -> io::Result<(UdpSocket, usize)> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Grow the buffer before binding so no datagram meets the default one.
    let granted = grow_recv_buffer(&socket, recv_buffer)?;
    socket
        .bind(&SocketAddr::V4(addr).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding udp {addr}: {e}")))?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(POLL))?;
    Ok((socket, granted))
}

/// Per-port counters shared by reader and writer.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    queue_drops: AtomicU64,
    oversize: AtomicU64,
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

    /// Queues one length-prefixed frame from `port`, or counts it dropped when full.
    fn push(&self, port: usize, frame: &[u8]) {
        let mut q = self.lock();
        if q.bytes.len() + frame.len() > self.limit {
            drop(q);
            self.counters[port]
                .queue_drops
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = q.bytes.is_empty();
        q.bytes.extend_from_slice(frame);
        q.frames[port] += 1;
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
    }
}

/// A running forwarder. Start QEMU with [`Forwarder::netdev`]; stop the forwarder after QEMU
/// has exited ([`Forwarder::stop`]), so QEMU's connection never closes under it (QEMU 7.2
/// crashes when its stream peer closes while frames are buffered).
pub struct Forwarder {
    shared: Arc<Shared>,
    sockets: Vec<(PortForward, UdpSocket, usize)>,
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
        let mut sockets = Vec::new();
        for port in &config.ports {
            let (socket, granted) = bind_udp(port.host, config.recv_buffer)?;
            sockets.push((port.clone(), socket, granted));
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Batch::new(sockets.len())),
            ready: Condvar::new(),
            limit: config.queue_limit,
            stop: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            counters: sockets.iter().map(|_| Counters::default()).collect(),
        });
        let mut threads = Vec::new();
        for (index, (port, socket, _)) in sockets.iter().enumerate() {
            let socket = socket.try_clone()?;
            let shared = Arc::clone(&shared);
            let writer = FrameWriter::new(FrameConfig {
                dst_mac: config.guest_mac,
                src_mac: None,
                dst: SocketAddrV4::new(config.guest_ip, port.guest_port),
                udp_checksum: true,
            });
            threads.push(std::thread::spawn(move || {
                read_port(&shared, index, &socket, writer)
            }));
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
            sockets,
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
            .sockets
            .iter()
            .enumerate()
            .map(|(i, (port, socket, granted))| {
                let c = &self.shared.counters[i];
                let kernel = proc_udp(socket);
                let waiting = queued.get(i).copied().unwrap_or(0);
                PortStats {
                    name: port.name.clone(),
                    host: socket.local_addr().ok().and_then(|a| match a {
                        SocketAddr::V4(a) => Some(a),
                        SocketAddr::V6(_) => None,
                    }),
                    guest_port: port.guest_port,
                    recv_buffer: *granted as u64,
                    received: c.received.load(Ordering::Relaxed),
                    forwarded: c.forwarded.load(Ordering::Relaxed),
                    host_drops: kernel.map(|k| k.drops),
                    host_queued: kernel.map(|k| k.rx_queue),
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

/// Reader thread of port `index`: datagram -> frame -> queue, until stopped.
fn read_port(shared: &Shared, index: usize, socket: &UdpSocket, mut writer: FrameWriter) {
    // 4-byte length prefix, headers, then the datagram received in place; one byte more
    // than the largest payload we forward, so truncation shows as oversize.
    let mut buf = vec![0u8; 4 + HEADERS_LEN + MAX_PAYLOAD + 1];
    let counters = &shared.counters[index];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf[4 + HEADERS_LEN..]) {
            Ok((n, SocketAddr::V4(src))) => (n, src),
            Ok((_, SocketAddr::V6(_))) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("netoops-image: forwarder: reading udp: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        if n > MAX_PAYLOAD {
            counters.oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(len) = writer.write(&mut buf[4..], src, n) else {
            counters.oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        shared.push(index, &buf[..4 + len]);
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
    use std::time::Instant;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:07D4 00000000:0000 07 00000000:00000A80 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:1A0A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
";

    #[test]
    fn proc_udp_rows_are_found_by_inode() {
        assert_eq!(
            parse_proc_udp(TABLE, 4242),
            Some(ProcUdp {
                rx_queue: 0xa80,
                drops: 17
            })
        );
        assert_eq!(parse_proc_udp(TABLE, 4243).map(|r| r.drops), Some(0));
        assert_eq!(parse_proc_udp(TABLE, 9), None);
        // Garbage and short rows never panic.
        for bad in [
            "",
            "header only",
            "h\n1: a b c d e f g h 4242",
            "h\n 1: a b c d:zz e f g h 4242 j k 3",
        ] {
            assert_eq!(parse_proc_udp(bad, 4242), None, "{bad:?}");
        }
        assert_eq!(parse_socket_link("socket:[4242]"), Some(4242));
        for bad in ["pipe:[1]", "socket:[]", "socket:[x]", "socket:[1", ""] {
            assert_eq!(parse_socket_link(bad), None, "{bad:?}");
        }
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
