//! The upstream TCP connection: runs the core's [`UpstreamLink`] over a non-blocking socket.
//!
//! [`Upstream`] owns at most one `mio` TCP stream and decides nothing itself: it opens a
//! connection when [`UpstreamLink::poll_connect`] proposes one, reports the outcome
//! (`handle_connected` / `handle_closed`), feeds every byte read to `handle_input`, closes
//! when `poll_close` says so, and writes what `poll_transmit` produces. Bytes `poll_transmit`
//! returned count as written for the link, so the ones the socket did not take yet wait in an
//! [`OutBuffer`]; they are discarded with the connection, and the link resends every
//! unacknowledged record on the next session.
//!
//! Readiness is edge-triggered: the driver passes events in with [`Upstream::handle_event`],
//! and this type remembers a readable/writable flag until a read or write would block.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use netoops_core::time::Instant;
use netoops_core::upstream::{CloseReason, LinkSecurity, UpstreamLink};

/// The poll token of the upstream connection.
pub const TOKEN: Token = Token(1);
/// Bytes asked of `poll_transmit` at a time.
pub const OUT_BUFFER_LEN: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_BUFFER_LEN: usize = 16 * 1024;
/// Most bytes written per [`Upstream::drive`], so a fast collector cannot starve UDP receive.
const WRITE_BUDGET: usize = 1024 * 1024;
/// Most reads per [`Upstream::drive`].
const READ_BUDGET: usize = 16;

/// Bytes produced for the connection and not yet taken by the socket.
pub struct OutBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// How [`OutBuffer::pump`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pump {
    /// The source has nothing more and everything was written.
    Drained,
    /// The socket would block; bytes may be waiting in the buffer.
    Blocked,
    /// The byte budget for this pass is used up.
    Budget,
}

impl OutBuffer {
    /// An empty buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        OutBuffer {
            buf: vec![0u8; capacity.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Forgets waiting bytes (the connection they were for is gone).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Writes waiting bytes to `sink`, refilling from `source` whenever the buffer is empty,
    /// until the source has nothing, the sink would block, or `budget` bytes were written.
    /// `source` fills the slice it is given and returns how many bytes it wrote (0: nothing
    /// to send). A sink error is returned as is; `Ok(0)` from the sink is a `WriteZero` error.
    pub fn pump(
        &mut self,
        budget: usize,
        mut source: impl FnMut(&mut [u8]) -> usize,
        sink: &mut impl Write,
    ) -> io::Result<Pump> {
        let mut written = 0;
        loop {
            if self.is_empty() {
                self.start = 0;
                self.end = source(&mut self.buf).min(self.buf.len());
                if self.end == 0 {
                    return Ok(Pump::Drained);
                }
            }
            if written >= budget {
                return Ok(Pump::Budget);
            }
            match sink.write(self.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let n = n.min(self.end - self.start);
                    self.start += n;
                    written += n;
                    if self.is_empty() {
                        self.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pump::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

enum Phase {
    Connecting,
    Connected,
}

struct Connection {
    idx: usize,
    stream: TcpStream,
    phase: Phase,
    readable: bool,
    writable: bool,
}

/// The relay's side of the upstream TCP connection. See the module documentation.
pub struct Upstream {
    addrs: Vec<SocketAddr>,
    /// Re-read before every connection: the session key ([`Upstream::set_key_file`]).
    key_file: Option<std::path::PathBuf>,
    /// Key reloads that failed (the previous key stays in use).
    pub key_reload_errors: u64,
    conn: Option<Connection>,
    out: OutBuffer,
    input: Box<[u8]>,
}

impl Upstream {
    /// `addrs[i]` is the link's upstream `i`.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Upstream {
            addrs,
            key_file: None,
            key_reload_errors: 0,
            conn: None,
            out: OutBuffer::new(OUT_BUFFER_LEN),
            input: vec![0u8; READ_BUFFER_LEN].into_boxed_slice(),
        }
    }

    /// Re-reads the session key from `path` before every connection (a rotation then needs
    /// no restart, and the spool is kept).
    pub fn set_key_file(&mut self, path: Option<std::path::PathBuf>) {
        self.key_file = path;
    }

    fn reload_key(&mut self, link: &mut UpstreamLink) {
        let Some(path) = &self.key_file else { return };
        let Some(current) = link.config().security.clone() else {
            return;
        };
        match crate::settings::read_key_file(path) {
            Ok(key) if key != current.key => link.set_security(Some(LinkSecurity {
                key,
                seed: current.seed,
            })),
            Ok(_) => {}
            Err(e) => {
                self.key_reload_errors += 1;
                eprintln!("netoops-relay: {e}; keeping the previous key");
            }
        }
    }

    /// The upstream index of the current connection or attempt.
    pub fn current(&self) -> Option<usize> {
        self.conn.as_ref().map(|c| c.idx)
    }

    /// Notes readiness reported for [`TOKEN`].
    pub fn handle_event(&mut self, event: &Event) {
        if let Some(c) = &mut self.conn {
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                c.readable = true;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                c.writable = true;
            }
        }
    }

    /// One pass: connect if the link wants to, finish a pending connect, read replies, obey
    /// the link's close requests and write what it has to send. Returns true when work is
    /// left over for another pass right away (a budget ran out, or a connection just closed
    /// and the link may want the next one at once).
    pub fn drive(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) -> bool {
        let mut more = false;
        if self.conn.is_none() {
            self.connect(now, link, registry);
        }
        self.finish_connect(now, link, registry);
        more |= self.read(now, link, registry);
        more |= self.obey_close(now, link, registry);
        more |= self.write(now, link, registry);
        more |= self.obey_close(now, link, registry);
        more
    }

    fn connect(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) {
        // A refused connect is reported at once and the link may propose the next upstream.
        for _ in 0..=self.addrs.len() {
            let Some(idx) = link.poll_connect(now) else {
                return;
            };
            let Some(&addr) = self.addrs.get(idx) else {
                link.handle_closed(now, idx, CloseReason::ConnectFailed);
                continue;
            };
            let started = TcpStream::connect(addr).and_then(|mut stream| {
                registry.register(&mut stream, TOKEN, Interest::READABLE | Interest::WRITABLE)?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    self.conn = Some(Connection {
                        idx,
                        stream,
                        phase: Phase::Connecting,
                        readable: false,
                        writable: false,
                    });
                    return;
                }
                Err(_) => link.handle_closed(now, idx, CloseReason::ConnectFailed),
            }
        }
    }

    fn finish_connect(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) {
        let Some(c) = &mut self.conn else { return };
        if !matches!(c.phase, Phase::Connecting) || !(c.readable || c.writable) {
            return;
        }
        // mio's recipe: an event arrived; an error means the connect failed, a peer address
        // means it succeeded, NotConnected means the event was spurious.
        let failed = match c.stream.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    c.readable = false;
                    c.writable = false;
                    return;
                }
                Err(_) => true,
            },
        };
        if failed {
            self.close(now, link, registry, CloseReason::ConnectFailed);
            return;
        }
        let _ = c.stream.set_nodelay(true);
        c.phase = Phase::Connected;
        c.writable = true;
        let idx = c.idx;
        self.reload_key(link);
        link.handle_connected(now, idx);
    }

    fn read(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) -> bool {
        let Some(c) = &mut self.conn else {
            return false;
        };
        if !matches!(c.phase, Phase::Connected) || !c.readable {
            return false;
        }
        for _ in 0..READ_BUDGET {
            match c.stream.read(&mut self.input) {
                Ok(0) => {
                    self.close(now, link, registry, CloseReason::PeerClosed);
                    return true;
                }
                Ok(n) => {
                    // An error has already made the link ask for the close (poll_close) and
                    // been counted there; its Disconnected event names the reason.
                    let _ = link.handle_input(now, &self.input[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(now, link, registry, CloseReason::IoError);
                    return true;
                }
            }
        }
        true
    }

    fn write(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) -> bool {
        let Some(c) = &mut self.conn else {
            return false;
        };
        if !matches!(c.phase, Phase::Connected) || !c.writable {
            return false;
        }
        let result = self.out.pump(
            WRITE_BUDGET,
            |buf| link.poll_transmit(now, buf),
            &mut c.stream,
        );
        match result {
            Ok(Pump::Drained) => false,
            Ok(Pump::Blocked) => {
                c.writable = false;
                false
            }
            Ok(Pump::Budget) => true,
            Err(_) => {
                self.close(now, link, registry, CloseReason::IoError);
                true
            }
        }
    }

    fn obey_close(&mut self, now: Instant, link: &mut UpstreamLink, registry: &Registry) -> bool {
        let Some(idx) = link.poll_close() else {
            return false;
        };
        if self.current() == Some(idx) {
            // The link reports its own reason; this one is ignored.
            self.close(now, link, registry, CloseReason::IoError);
        } else {
            // The link thinks a connection exists that this side does not hold.
            link.handle_closed(now, idx, CloseReason::IoError);
        }
        true
    }

    fn close(
        &mut self,
        now: Instant,
        link: &mut UpstreamLink,
        registry: &Registry,
        reason: CloseReason,
    ) {
        if let Some(mut c) = self.conn.take() {
            let _ = registry.deregister(&mut c.stream);
            let _ = c.stream.shutdown(Shutdown::Both);
            self.out.clear();
            link.handle_closed(now, c.idx, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in that takes at most `chunk` bytes per call and blocks every
    /// `block_every`-th call.
    struct Throttled {
        got: Vec<u8>,
        chunk: usize,
        calls: usize,
        block_every: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A byte source like `poll_transmit`: fills what it is given from a fixed stream.
    fn source(stream: &[u8], at: &mut usize, buf: &mut [u8]) -> usize {
        let n = buf.len().min(stream.len() - *at).min(7000);
        buf[..n].copy_from_slice(&stream[*at..*at + n]);
        *at += n;
        n
    }

    #[test]
    fn every_produced_byte_reaches_the_socket_once_and_in_order() {
        let stream: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for (chunk, block_every, cap, budget) in [
            (1, 2, 16, 100),
            (1000, 3, 4096, 10_000),
            (65536, 5, OUT_BUFFER_LEN, usize::MAX),
            (333, 1000, 1, 50_000),
        ] {
            let mut out = OutBuffer::new(cap);
            let mut sink = Throttled {
                got: Vec::new(),
                chunk,
                calls: 0,
                block_every,
            };
            let mut at = 0;
            let mut passes = 0;
            loop {
                passes += 1;
                assert!(passes < 10_000_000);
                match out
                    .pump(budget, |b| source(&stream, &mut at, b), &mut sink)
                    .unwrap()
                {
                    Pump::Drained => break,
                    Pump::Blocked | Pump::Budget => {}
                }
            }
            assert!(out.is_empty());
            assert_eq!(
                sink.got, stream,
                "chunk {chunk} block_every {block_every} cap {cap}"
            );
        }
    }

    #[test]
    fn the_source_is_asked_only_when_the_buffer_is_empty() {
        let mut out = OutBuffer::new(100);
        let mut sink = Throttled {
            got: Vec::new(),
            chunk: 30,
            calls: 0,
            block_every: 2,
        };
        let mut asked = 0;
        let r = out.pump(
            usize::MAX,
            |b| {
                asked += 1;
                b.fill(9);
                b.len()
            },
            &mut sink,
        );
        assert_eq!(r.unwrap(), Pump::Blocked);
        assert_eq!((asked, out.pending().len()), (1, 70));
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn write_errors_and_zero_writes_are_errors() {
        struct Broken(io::ErrorKind);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                if self.0 == io::ErrorKind::WriteZero {
                    Ok(0)
                } else {
                    Err(self.0.into())
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::WriteZero] {
            let mut out = OutBuffer::new(10);
            let err = out.pump(100, |b| b.len(), &mut Broken(kind)).unwrap_err();
            assert_eq!(err.kind(), kind);
        }
    }
}
