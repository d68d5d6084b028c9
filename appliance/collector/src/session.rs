//! One relay connection: `Hello` → `Welcome`, then records applied in order and acknowledged.
//!
//! Contract: a record is acknowledged only after [`Store::apply`] returned (it is on disk) and
//! [`Store::persist`] recorded the instance's progress. Acks are cumulative and sent once per
//! read from the socket (after every frame that read completed), so a burst costs one Ack and
//! one state write. Replays (seq at or below the instance's applied seq) are acknowledged
//! without writing. Anything malformed (bad length, undecodable header, a second `Hello`), a
//! missing `Hello` or an unknown protocol version ends this connection only: it is
//! logged to stderr and counted; other connections are unaffected.

use crate::store::{Applied, Origin, Store};
use crate::wallclock::now_ms;
use netoops_core::upstream::record::{
    decode_record, encode_reply_frame, FrameDecoder, MAX_FRAME_LEN,
};
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Collector-wide counters, shared by all connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections turned away because too many were open.
    pub rejected: AtomicU64,
    /// Sessions welcomed.
    pub sessions: AtomicU64,
    /// Records applied (written).
    pub applied: AtomicU64,
    /// Records acknowledged as replays without writing.
    pub replays: AtomicU64,
    /// Dumps stored (a new file or a newer revision).
    pub dumps_stored: AtomicU64,
    /// Crash notice lines appended.
    pub crashes_stored: AtomicU64,
    /// Connections closed for malformed or oversized frames.
    pub malformed: AtomicU64,
    /// Sessions refused (no Hello, wrong protocol version).
    pub refused: AtomicU64,
    /// Connections closed for idleness.
    pub timeouts: AtomicU64,
    /// Connections ended by I/O or storage errors.
    pub errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The relay closed the connection.
    Closed,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A protocol violation; the connection was closed (reason text).
    Protocol(String),
    /// A socket or storage error.
    Io(io::Error),
}

/// Serves one relay connection until it ends; never panics on input.
pub fn serve_connection(
    mut stream: TcpStream,
    store: &Store,
    counters: &Counters,
    idle_timeout: Duration,
) -> SessionEnd {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let end = run(&mut stream, store, counters, idle_timeout);
    match &end {
        SessionEnd::Closed => {}
        SessionEnd::Idle => {
            Counters::bump(&counters.timeouts);
            eprintln!("netoops-collect: {peer}: idle for {idle_timeout:?}, closing");
        }
        SessionEnd::Protocol(reason) => eprintln!("netoops-collect: {peer}: {reason}, closing"),
        SessionEnd::Io(e) => {
            Counters::bump(&counters.errors);
            eprintln!("netoops-collect: {peer}: {e}, closing");
        }
    }
    end
}

fn run(stream: &mut TcpStream, store: &Store, counters: &Counters, idle: Duration) -> SessionEnd {
    if let Err(e) = stream
        .set_read_timeout(Some(idle))
        .and_then(|()| stream.set_write_timeout(Some(idle)))
    {
        return SessionEnd::Io(e);
    }
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut origin: Option<Origin> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return SessionEnd::Closed,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return SessionEnd::Idle
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return SessionEnd::Io(e),
        };
        let mut input = &buf[..n];
        let mut ack = None;
        loop {
            let taken = decoder.push(input);
            input = &input[taken..];
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        Counters::bump(&counters.malformed);
                        return SessionEnd::Protocol(e.to_string());
                    }
                };
                let (header, payload) = match decode_record(frame) {
                    Ok(r) => r,
                    Err(e) => {
                        Counters::bump(&counters.malformed);
                        return SessionEnd::Protocol(e.to_string());
                    }
                };
                match (&origin, &header.record) {
                    (
                        None,
                        Record::Hello {
                            protocol,
                            relay,
                            instance,
                        },
                    ) => {
                        if *protocol != PROTOCOL_VERSION {
                            Counters::bump(&counters.refused);
                            let reason = format!(
                                "protocol {protocol} not supported (collector speaks {PROTOCOL_VERSION})"
                            );
                            let _ = send(
                                stream,
                                &Reply::Refused {
                                    reason: reason.clone(),
                                },
                            );
                            return SessionEnd::Protocol(reason);
                        }
                        let last_seq = store.last_applied(*instance);
                        if let Err(e) = send(
                            stream,
                            &Reply::Welcome {
                                protocol: PROTOCOL_VERSION,
                                last_seq,
                            },
                        ) {
                            return SessionEnd::Io(e);
                        }
                        Counters::bump(&counters.sessions);
                        origin = Some(Origin {
                            relay: relay.clone(),
                            instance: *instance,
                        });
                    }
                    (None, _) => {
                        Counters::bump(&counters.refused);
                        let reason = "expected Hello first".to_string();
                        let _ = send(
                            stream,
                            &Reply::Refused {
                                reason: reason.clone(),
                            },
                        );
                        return SessionEnd::Protocol(reason);
                    }
                    (Some(_), Record::Hello { .. }) => {
                        Counters::bump(&counters.malformed);
                        return SessionEnd::Protocol("second Hello".to_string());
                    }
                    (Some(o), _) => match store.apply(o, &header, payload, now_ms()) {
                        Ok(applied) => {
                            ack = Some(header.seq);
                            report(o, header.seq, &applied, &header.record, counters);
                        }
                        Err(e) => return SessionEnd::Io(e),
                    },
                }
            }
            if input.is_empty() {
                break;
            }
        }
        if let Some(seq) = ack {
            if let Some(o) = &origin {
                if let Err(e) = store.persist(o) {
                    return SessionEnd::Io(e);
                }
            }
            if let Err(e) = send(stream, &Reply::Ack { seq }) {
                return SessionEnd::Io(e);
            }
        }
    }
}

fn report(o: &Origin, seq: u64, applied: &Applied, record: &Record, counters: &Counters) {
    match applied {
        Applied::Replay => Counters::bump(&counters.replays),
        Applied::Crash { .. } => {
            Counters::bump(&counters.applied);
            Counters::bump(&counters.crashes_stored);
        }
        Applied::Dump {
            ip_dir,
            key,
            written,
        } => {
            Counters::bump(&counters.applied);
            if *written {
                Counters::bump(&counters.dumps_stored);
                if let Record::Dump(d) = record {
                    let state = if d.complete { "complete" } else { "partial" };
                    let line = format!(
                        "stored {ip_dir}/{key} rev {} {state} {}/{} packets, {} (relay {} seq {seq})",
                        d.revision, d.received, d.packet_count, d.kernel_version, o.relay
                    );
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }
    }
}

fn send(stream: &mut TcpStream, reply: &Reply) -> io::Result<()> {
    let frame = encode_reply_frame(reply).map_err(|e| io::Error::other(e.to_string()))?;
    stream.write_all(&frame)
}
