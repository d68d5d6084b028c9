//! The relay's HTTP endpoint, sans-IO: `/metrics` (Prometheus text format), `/healthz`,
//! `/dumps` (a JSON index of the last dumps) and `/dumps/<key>` (a dump's text).
//!
//! [`HttpServer`] owns a fixed number of connection slots, each with a fixed request buffer
//! ([`REQUEST_BUFFER`]) and a fixed response buffer ([`RESPONSE_BUFFER`]), allocated when the
//! server is built: serving a request allocates nothing. The driver (the hosted relay's
//! event loop, the kernel's TCP tasks) accepts a connection with [`HttpServer::accept`]
//! (no free slot: refuse it, counted), feeds what it reads to [`HttpServer::handle_input`],
//! writes what [`HttpServer::poll_transmit`] gives it and closes the connection when that
//! says [`Transmit::Close`]; [`HttpServer::handle_timeout`] enforces the deadlines.
//!
//! HTTP/1.1 subset, on purpose:
//! - One request per connection: every response says `Connection: close` and the server
//!   closes after it (no keep-alive, no pipelining; Prometheus opens one per scrape).
//! - `GET` and `HEAD` only (anything else: 405). The request head must fit
//!   [`REQUEST_BUFFER`] (else 431) and arrive within [`REQUEST_TIMEOUT`] of the accept,
//!   however slowly it trickles (else the connection is closed without a response, counted);
//!   the whole response must be taken within [`RESPONSE_TIMEOUT`]. Headers are not read;
//!   bytes after the head (a body) are read and ignored.
//! - Every response has a `Content-Length`. Bodies of `/metrics`, `/healthz` and `/dumps` are
//!   rendered into the slot's response buffer; a dump's text is streamed from the
//!   [`dumps::DumpRing`] in as many pieces as the driver's buffer takes (a text evicted
//!   mid-response ends the connection early, counted).

pub mod dumps;
pub mod metrics;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use netoops_wire::text::FmtBuf;

use crate::relay::Relay;
use crate::time::{Duration, Instant};
use dumps::{valid_key, DumpRing};
use metrics::{Kind, Metrics};

/// Bytes of request head a connection may send (request line and headers).
pub const REQUEST_BUFFER: usize = 1024;
/// Bytes of response head and rendered body a connection holds.
pub const RESPONSE_BUFFER: usize = 32 << 10;
/// The request head must be complete this long after the accept.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole response must be taken this long after the request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Room kept before the body in the response buffer for the head.
const HEAD_ROOM: usize = 256;

/// What the endpoint serves: the driver's view of the relay.
pub trait Site {
    /// Every metric, in the text format.
    fn write_metrics(&self, m: &mut Metrics<'_>) -> fmt::Result;
    /// The `/healthz` body after its first line, `ok`.
    fn write_health(&self, out: &mut dyn Write) -> fmt::Result;
    /// The last dumps.
    fn dumps(&self) -> &DumpRing;
    /// Now, for the `/dumps` index (`now_ms`: entries' `emitted_ms` are on the same clock).
    fn now(&self) -> Instant;
    /// UTC now in milliseconds since 1970, when the driver knows it: the index then gives
    /// each dump's `emitted_utc` too.
    fn wall_clock_ms(&self) -> Option<u64> {
        None
    }
}

/// A [`Site`] over a [`Relay`], with the driver's own metrics added by `extra` (sockets,
/// NICs, heap: what its console prints beside the relay's counters line).
pub struct RelaySite<'a, F> {
    /// The relay.
    pub relay: &'a Relay,
    /// Now.
    pub now: Instant,
    /// UTC now (milliseconds since 1970), if the driver has a wall clock.
    pub wall_ms: Option<u64>,
    /// The driver's metrics.
    pub extra: F,
}

impl<F: Fn(&mut Metrics<'_>) -> fmt::Result> Site for RelaySite<'_, F> {
    fn write_metrics(&self, m: &mut Metrics<'_>) -> fmt::Result {
        metrics::write_relay(self.relay, m)?;
        (self.extra)(m)
    }

    fn write_health(&self, out: &mut dyn Write) -> fmt::Result {
        let link = self.relay.upstream_link();
        let upstream = match link.current_upstream() {
            Some(i) if link.is_established() => i as i64,
            _ => -1,
        };
        write!(
            out,
            "upstream_connected {}\nupstream {upstream}\nspool_records {}\nspool_bytes {}\n\
             dumps_assembling {}\nuptime_ms {}\n",
            u8::from(link.is_established()),
            link.spool().len(),
            link.spool().used(),
            self.relay.reassembler().dumps_assembling(),
            self.now.total_millis(),
        )
    }

    fn dumps(&self) -> &DumpRing {
        self.relay.dumps()
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn wall_clock_ms(&self) -> Option<u64> {
        self.wall_ms
    }
}

/// What the driver does next with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Nothing to send now (the request is still arriving).
    Idle,
    /// Write the first `n` bytes of the buffer.
    Send(usize),
    /// Close the connection: the response is complete (or abandoned). The slot is free.
    Close,
}

/// Status codes the server answers with, in counter order.
pub const STATUS_CODES: [u16; 6] = [200, 400, 404, 405, 431, 500];

/// The server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused: every slot busy.
    pub refused: u64,
    /// Responses by status, in [`STATUS_CODES`] order.
    pub responses: [u64; STATUS_CODES.len()],
    /// Connections closed because the request head did not arrive in time.
    pub request_timeouts: u64,
    /// Connections closed because the client did not take the response in time.
    pub response_timeouts: u64,
    /// Connections that ended before their response was complete (peer gone, dump evicted).
    pub aborted: u64,
    /// Response bytes handed to the driver.
    pub bytes_sent: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Receiving the request head: `len` bytes so far.
    Reading {
        len: usize,
    },
    /// The head is in: render at the next [`HttpServer::poll_transmit`].
    Ready {
        head_end: usize,
        too_large: bool,
    },
    /// Sending `out[at..end]`, then the dump `stream` if any.
    Sending {
        at: usize,
        end: usize,
        stream: Option<Stream>,
    },
}

/// A dump's text still to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    seq: u64,
    offset: usize,
}

struct Slot {
    state: State,
    deadline: Instant,
    req: Box<[u8]>,
    out: Box<[u8]>,
}

/// The server. See the module documentation.
pub struct HttpServer {
    slots: Vec<Slot>,
    stats: HttpStats,
}

/// The route a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Metrics,
    Health,
    Index,
    Dump(&'a str),
}

/// What the request head says, or the status to answer it with.
fn parse(head: &[u8]) -> Result<(bool, Route<'_>), u16> {
    let line_end = head.iter().position(|&b| b == b'\n').ok_or(400u16)?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let line = core::str::from_utf8(line).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(400);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => return Err(405),
        _ => return Err(400),
    };
    if !target.starts_with('/') {
        return Err(400);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        "/dumps" | "/dumps/" => Route::Index,
        p => match p.strip_prefix("/dumps/") {
            Some(key) if valid_key(key) => Route::Dump(key),
            Some(_) => return Err(400),
            None => return Err(404),
        },
    };
    Ok((head_only, route))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// `fmt::Write` into a byte slice; refuses what does not fit.
type SliceWriter<'a> = FmtBuf<&'a mut [u8]>;

/// A JSON string's contents.
fn json_str(out: &mut dyn Write, s: &str) -> fmt::Result {
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// The `/dumps` index, newest first, as many entries as fit (`"complete": false` if not all).
fn write_index(
    out: &mut SliceWriter<'_>,
    ring: &DumpRing,
    now: Instant,
    wall_ms: Option<u64>,
) -> fmt::Result {
    // Leave room for the closing part whatever happens to the entries.
    const TAIL: usize = 64;
    write!(
        out,
        "{{\"now_ms\":{},\"capacity_bytes\":{},\"used_bytes\":{},\"stored\":{},\"evicted\":{},\
         \"dumps\":[",
        now.total_millis(),
        ring.capacity(),
        ring.used(),
        ring.stats().stored,
        ring.stats().evicted,
    )?;
    let mut all = true;
    for (i, e) in ring.entries().rev().enumerate() {
        let mark = out.len();
        let wrote = (|| -> fmt::Result {
            if i > 0 {
                out.write_char(',')?;
            }
            write!(
                out,
                "{{\"key\":\"{}\",\"kind\":\"{}\",\"source\":\"{}\",\"kernel\":\"",
                e.key,
                e.kind.name(),
                e.source
            )?;
            json_str(out, &e.kernel)?;
            write!(
                out,
                "\",\"complete\":{},\"received\":{},\"packets\":{},\"revision\":{},\
                 \"bytes\":{},\"stored_bytes\":{},\"emitted_ms\":{}",
                e.complete,
                e.received,
                e.packets,
                e.revision,
                e.text_len,
                e.stored,
                e.emitted.total_millis()
            )?;
            if let Some(wall) = wall_ms {
                let age = now.saturating_since(e.emitted).total_millis();
                out.write_str(",\"emitted_utc\":\"")?;
                crate::time::write_utc(out, wall.saturating_sub(age))?;
                out.write_char('"')?;
            }
            out.write_char('}')?;
            if out.len() + TAIL > out.capacity() {
                return Err(fmt::Error);
            }
            Ok(())
        })();
        if wrote.is_err() {
            out.truncate(mark);
            all = false;
            break;
        }
    }
    writeln!(out, "],\"listed_all\":{all}}}")
}

impl HttpServer {
    /// A server for at most `connections` connections at once; allocates every buffer.
    pub fn new(connections: usize) -> HttpServer {
        let slots = (0..connections)
            .map(|_| Slot {
                state: State::Free,
                deadline: Instant::ZERO,
                req: alloc::vec![0u8; REQUEST_BUFFER].into_boxed_slice(),
                out: alloc::vec![0u8; RESPONSE_BUFFER].into_boxed_slice(),
            })
            .collect();
        HttpServer {
            slots,
            stats: HttpStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.state != State::Free).count()
    }

    /// Whether connection `id` is still open (a deadline closes it without a transmit).
    pub fn is_open(&self, id: usize) -> bool {
        self.slots.get(id).is_some_and(|s| s.state != State::Free)
    }

    /// Takes a new connection: its slot, or `None` when every slot is busy (the driver
    /// closes the connection at once; counted).
    pub fn accept(&mut self, now: Instant) -> Option<usize> {
        let Some(i) = self.slots.iter().position(|s| s.state == State::Free) else {
            self.stats.refused += 1;
            return None;
        };
        let slot = &mut self.slots[i];
        slot.state = State::Reading { len: 0 };
        slot.deadline = now + REQUEST_TIMEOUT;
        self.stats.accepted += 1;
        Some(i)
    }

    /// Bytes received on connection `id`. All of them are consumed: what does not fit the
    /// request buffer or comes after the head is dropped.
    pub fn handle_input(&mut self, id: usize, bytes: &[u8]) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let State::Reading { len } = slot.state else {
            return;
        };
        let take = bytes.len().min(REQUEST_BUFFER - len);
        slot.req[len..len + take].copy_from_slice(&bytes[..take]);
        let new_len = len + take;
        // The head ends at the first empty line; look from where the last call stopped.
        let from = len.saturating_sub(3);
        let window = &slot.req[from..new_len];
        let end = window
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4)
            .or_else(|| {
                window
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|p| from + p + 2)
            });
        slot.state = match end {
            Some(head_end) => State::Ready {
                head_end,
                too_large: false,
            },
            None if new_len == REQUEST_BUFFER => State::Ready {
                head_end: new_len,
                too_large: true,
            },
            None => State::Reading { len: new_len },
        };
    }

    /// The connection ended or failed on the driver's side; its slot is free again.
    pub fn release(&mut self, id: usize) {
        if let Some(slot) = self.slots.get_mut(id) {
            if slot.state != State::Free {
                self.stats.aborted += 1;
                slot.state = State::Free;
            }
        }
    }

    /// The next bytes to send on connection `id`, into `buf`. Renders the response the first
    /// time after the request head is in.
    pub fn poll_transmit(
        &mut self,
        id: usize,
        now: Instant,
        site: &dyn Site,
        buf: &mut [u8],
    ) -> Transmit {
        let active = self.active();
        let stats = &mut self.stats;
        let Some(slot) = self.slots.get_mut(id) else {
            return Transmit::Close;
        };
        loop {
            match slot.state {
                State::Free => return Transmit::Close,
                State::Reading { .. } => return Transmit::Idle,
                State::Ready {
                    head_end,
                    too_large,
                } => {
                    slot.state = render(slot, head_end, too_large, site, stats, active);
                    slot.deadline = now + RESPONSE_TIMEOUT;
                }
                State::Sending { at, end, stream } if at < end => {
                    let n = buf.len().min(end - at);
                    buf[..n].copy_from_slice(&slot.out[at..at + n]);
                    slot.state = State::Sending {
                        at: at + n,
                        end,
                        stream,
                    };
                    stats.bytes_sent += n as u64;
                    return Transmit::Send(n);
                }
                State::Sending {
                    stream: Some(s), ..
                } => {
                    let ring = site.dumps();
                    let Some(entry) = ring.get(s.seq) else {
                        // Evicted while being sent: the client sees a short body.
                        stats.aborted += 1;
                        slot.state = State::Free;
                        return Transmit::Close;
                    };
                    let (a, b) = ring.text(entry, s.offset);
                    if a.is_empty() {
                        slot.state = State::Free;
                        return Transmit::Close;
                    }
                    let n = buf.len().min(a.len() + b.len());
                    let first = n.min(a.len());
                    buf[..first].copy_from_slice(&a[..first]);
                    buf[first..n].copy_from_slice(&b[..n - first]);
                    slot.state = State::Sending {
                        at: 0,
                        end: 0,
                        stream: Some(Stream {
                            seq: s.seq,
                            offset: s.offset + n,
                        }),
                    };
                    stats.bytes_sent += n as u64;
                    return Transmit::Send(n);
                }
                State::Sending { stream: None, .. } => {
                    slot.state = State::Free;
                    return Transmit::Close;
                }
            }
        }
    }

    /// Closes what is past its deadline: the driver sees [`Transmit::Close`] at its next
    /// [`HttpServer::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.state == State::Free || now < slot.deadline {
                continue;
            }
            match slot.state {
                State::Reading { .. } => self.stats.request_timeouts += 1,
                _ => self.stats.response_timeouts += 1,
            }
            slot.state = State::Free;
        }
    }

    /// The earliest deadline of an open connection.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.state != State::Free)
            .map(|s| s.deadline)
            .min()
    }

    /// The server's own metrics (connections, responses by status, timeouts).
    pub fn write_metrics(&self, m: &mut Metrics<'_>) -> fmt::Result {
        write_server_metrics(&self.stats, self.active(), m)
    }
}

/// [`HttpServer::write_metrics`] from its parts (a response renders them mid-borrow).
fn write_server_metrics(s: &HttpStats, active: usize, m: &mut Metrics<'_>) -> fmt::Result {
    {
        m.counter(
            "netoops_http_connections_total",
            "HTTP connections accepted.",
            s.accepted,
        )?;
        m.counter(
            "netoops_http_connections_refused_total",
            "HTTP connections refused because every connection slot was busy.",
            s.refused,
        )?;
        m.gauge(
            "netoops_http_connections",
            "HTTP connections open now.",
            active as u64,
        )?;
        m.family(
            "netoops_http_responses_total",
            Kind::Counter,
            "HTTP responses, by status code.",
        )?;
        for (code, n) in STATUS_CODES.iter().zip(s.responses) {
            let mut text: heapless::String<3> = heapless::String::new();
            let _ = write!(text, "{code}");
            m.sample("netoops_http_responses_total", &[("code", &text)], n)?;
        }
        m.labelled(
            "netoops_http_timeouts_total",
            Kind::Counter,
            "HTTP connections closed at a deadline: the request head did not arrive in time \
             (request) or the response was not taken in time (response).",
            "phase",
            [
                ("request", s.request_timeouts),
                ("response", s.response_timeouts),
            ],
        )?;
        m.counter(
            "netoops_http_aborted_total",
            "HTTP connections that ended before their response was complete.",
            s.aborted,
        )?;
        m.counter(
            "netoops_http_sent_bytes_total",
            "HTTP response bytes sent.",
            s.bytes_sent,
        )
    }
}

/// Renders the response for a complete request head into the slot's buffer.
fn render(
    slot: &mut Slot,
    head_end: usize,
    too_large: bool,
    site: &dyn Site,
    stats: &mut HttpStats,
    active: usize,
) -> State {
    let parsed = if too_large {
        Err(431)
    } else {
        parse(&slot.req[..head_end])
    };
    let (head_only, route) = match parsed {
        Ok((head_only, route)) => (head_only, Ok(route)),
        Err(code) => (false, Err(code)),
    };
    let head_room = HEAD_ROOM;
    let mut body = SliceWriter::new(&mut slot.out[HEAD_ROOM..]);
    let mut stream = None;
    let mut stream_len = 0;
    let (code, content_type) = match route {
        Ok(Route::Metrics) => {
            let mut m = Metrics::new(&mut body);
            // The server's own counters as of this response.
            let mut snapshot = *stats;
            snapshot.responses[0] += 1;
            match site
                .write_metrics(&mut m)
                .and_then(|()| write_server_metrics(&snapshot, active, &mut m))
            {
                Ok(()) => (200, "text/plain; version=0.0.4; charset=utf-8"),
                Err(_) => (500, "text/plain; charset=utf-8"),
            }
        }
        Ok(Route::Health) => match body
            .write_str("ok\n")
            .and_then(|()| site.write_health(&mut body))
        {
            Ok(()) => (200, "text/plain; charset=utf-8"),
            Err(_) => (500, "text/plain; charset=utf-8"),
        },
        Ok(Route::Index) => {
            match write_index(&mut body, site.dumps(), site.now(), site.wall_clock_ms()) {
                Ok(()) => (200, "application/json"),
                Err(_) => (500, "text/plain; charset=utf-8"),
            }
        }
        Ok(Route::Dump(key)) => match site.dumps().find(key) {
            Some(e) => {
                stream = Some(Stream {
                    seq: e.seq,
                    offset: 0,
                });
                stream_len = e.stored;
                (200, "text/plain; charset=utf-8")
            }
            None => (404, "text/plain; charset=utf-8"),
        },
        Err(code) => (code, "text/plain; charset=utf-8"),
    };
    if code != 200 {
        body.truncate(0);
        let _ = writeln!(body, "{code} {}", reason(code));
        if code == 404 {
            let _ = body.write_str("endpoints: /metrics /healthz /dumps /dumps/<key>\n");
        }
    }
    let rendered = body.len();
    let body_len = if stream.is_some() {
        stream_len
    } else {
        rendered
    };
    let mut head_buf = [0u8; HEAD_ROOM];
    let mut head = SliceWriter::new(&mut head_buf);
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    // HEAD_ROOM holds the longest head (its parts are bounded).
    let _ = write!(
        head,
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code)
    );
    let head_len = head.len();
    let start = head_room - head_len;
    slot.out[start..head_room].copy_from_slice(&head_buf[..head_len]);
    let index = STATUS_CODES.iter().position(|&c| c == code).unwrap_or(5);
    stats.responses[index] += 1;
    let end = if head_only || stream.is_some() {
        head_room
    } else {
        head_room + rendered
    };
    State::Sending {
        at: start,
        end,
        stream: if head_only { None } else { stream },
    }
}

#[cfg(test)]
mod tests;
