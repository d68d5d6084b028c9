//! The HTTP endpoint's sockets: a non-blocking TCP listener and at most
//! [`MAX_CONNECTIONS`] connections, run for the core's [`HttpServer`] (which parses, renders
//! and keeps the deadlines).
//!
//! Readiness is edge-triggered: a connection that got an event, or that still has bytes to
//! write, is serviced on the next pass (read until `WouldBlock`, write until `WouldBlock` or
//! the response is out, both capped per pass). A connection beyond the limit is accepted and
//! closed at once (counted by the server). Every buffer is allocated when the endpoint is
//! built.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use netoops_core::http::{HttpServer, Site, Transmit};
use netoops_core::time::Instant;

/// Poll token of the listener.
pub const LISTENER: Token = Token(3);
/// Poll token of connection slot 0; slot `i` is `CONNECTION_BASE + i`.
pub const CONNECTION_BASE: usize = 1000;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Bytes handed to the socket per write call.
const WRITE_CHUNK: usize = 16 << 10;
/// New connections accepted per pass.
const ACCEPTS_PER_PASS: usize = 16;
/// Read or write calls per connection per pass.
const CALLS_PER_PASS: usize = 16;

struct Conn {
    stream: TcpStream,
    /// Bytes the server gave and the socket has not taken yet: `out[at..end]`.
    at: usize,
    end: usize,
    /// Serviced on the next pass (an event arrived, or work was left).
    dirty: bool,
    /// The peer will send nothing more.
    eof: bool,
}

/// The endpoint. See the module documentation.
pub struct HttpEndpoint {
    listener: TcpListener,
    server: HttpServer,
    conns: Vec<Option<Conn>>,
    out: Vec<Vec<u8>>,
    rbuf: Vec<u8>,
    accept_ready: bool,
}

impl HttpEndpoint {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> io::Result<HttpEndpoint> {
        let listener = TcpListener::bind(addr)?;
        Ok(HttpEndpoint {
            listener,
            server: HttpServer::new(MAX_CONNECTIONS),
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            out: (0..MAX_CONNECTIONS)
                .map(|_| vec![0u8; WRITE_CHUNK])
                .collect(),
            rbuf: vec![0u8; 4096],
            accept_ready: true,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Registers the listener.
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    /// The core server (its counters, for `/metrics`).
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// Notes readiness for one of this endpoint's tokens; false if the token is not ours.
    pub fn handle_event(&mut self, token: Token) -> bool {
        if token == LISTENER {
            self.accept_ready = true;
            return true;
        }
        match token.0.checked_sub(CONNECTION_BASE) {
            Some(i) if i < MAX_CONNECTIONS => {
                if let Some(c) = self.conns[i].as_mut() {
                    c.dirty = true;
                }
                true
            }
            _ => false,
        }
    }

    /// When [`HttpEndpoint::drive`] must run again at the latest (a deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    /// Accepts, reads, writes and closes. Returns whether work is left for the next pass.
    pub fn drive(&mut self, now: Instant, registry: &Registry, site: &dyn Site) -> bool {
        let mut more = false;
        if self.accept_ready {
            more |= self.accept(now, registry);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
            // The expired connections close at their next transmit.
            for c in self.conns.iter_mut().flatten() {
                c.dirty = true;
            }
        }
        for i in 0..MAX_CONNECTIONS {
            if self.conns[i].as_ref().is_some_and(|c| c.dirty) {
                more |= self.service(i, now, registry, site);
            }
        }
        more
    }

    fn accept(&mut self, now: Instant, registry: &Registry) -> bool {
        for _ in 0..ACCEPTS_PER_PASS {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return false;
                }
                // A connection that failed before we took it (reset): try the next.
                Err(_) => continue,
            };
            let Some(id) = self.server.accept(now) else {
                // Every slot busy: closed at once (counted as refused).
                drop(stream);
                continue;
            };
            let token = Token(CONNECTION_BASE + id);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                self.server.release(id);
                continue;
            }
            self.conns[id] = Some(Conn {
                stream,
                at: 0,
                end: 0,
                dirty: true,
                eof: false,
            });
        }
        true
    }

    /// One pass over connection `i`. Returns whether it has work left.
    fn service(&mut self, i: usize, now: Instant, registry: &Registry, site: &dyn Site) -> bool {
        let Some(c) = self.conns[i].as_mut() else {
            return false;
        };
        c.dirty = false;
        // Read everything there is (a request head, or bytes to discard while answering).
        let mut read_blocked = c.eof;
        for _ in 0..CALLS_PER_PASS {
            if c.eof {
                break;
            }
            match c.stream.read(&mut self.rbuf) {
                Ok(0) => c.eof = true,
                Ok(n) => self.server.handle_input(i, &self.rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    read_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(i, registry, true),
            }
        }
        let out = &mut self.out[i];
        for _ in 0..CALLS_PER_PASS {
            if c.at == c.end {
                match self.server.poll_transmit(i, now, site, out) {
                    Transmit::Send(n) => (c.at, c.end) = (0, n),
                    Transmit::Close => return self.close(i, registry, false),
                    Transmit::Idle if c.eof => {
                        // The peer stopped sending before its request was complete.
                        return self.close(i, registry, true);
                    }
                    Transmit::Idle if read_blocked => return false,
                    Transmit::Idle => {
                        // Reads were capped with more waiting: no new edge will come.
                        c.dirty = true;
                        return true;
                    }
                }
            }
            match c.stream.write(&out[c.at..c.end]) {
                Ok(n) => c.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(i, registry, true),
            }
        }
        // Capped: come back next pass.
        c.dirty = true;
        true
    }

    /// Closes connection `i`: after a complete response, by a FIN once what the peer sent is
    /// read (so no reset destroys the response in flight); else at once.
    fn close(&mut self, i: usize, registry: &Registry, aborted: bool) -> bool {
        if let Some(mut c) = self.conns[i].take() {
            if aborted {
                self.server.release(i);
            } else {
                for _ in 0..CALLS_PER_PASS {
                    match c.stream.read(&mut self.rbuf) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                let _ = c.stream.flush();
                let _ = c.stream.shutdown(Shutdown::Write);
            }
            let _ = registry.deregister(&mut c.stream);
        }
        false
    }
}
