//! One relay connection: `Hello` → `Welcome`, then records handed to the committer, and
//! acknowledgements as the committer makes them durable.
//!
//! Two threads per connection: this one reads and decodes frames and queues each record for
//! the committer ([`crate::commit`]), without waiting for storage, so that records keep
//! arriving while earlier ones are being synced (that is what lets batches grow under load);
//! an ack writer sends `Ack` for the highest seq the committer reported durable (cumulative,
//! and coalesced: one `Ack` for everything that became durable since the last one).
//!
//! Contract: a record is acknowledged only after the batch holding it was synced. Replays (seq
//! at or below the instance's applied seq) are acknowledged without writing, after the batch
//! they fall in. When storing fails, the committer says so, the connection is closed and the
//! error counted; the relay resends from `Welcome.last_seq`. Anything malformed (bad length,
//! undecodable header, a second `Hello`), a missing `Hello` or an unknown protocol version ends
//! this connection only: it is logged to stderr and counted; other connections are unaffected.

use crate::commit::{Job, Queue, SessionTie, Verdict};
use crate::store::{Origin, Store};
use crate::wallclock::now_ms;
use netoops_core::upstream::record::{
    decode_record, encode_reply_frame, FrameDecoder, MAX_FRAME_LEN,
};
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
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
    /// Connections ended by I/O or storage errors (and failed relay state writes).
    pub errors: AtomicU64,
    /// Of those, sessions closed because storing their records failed.
    pub storage_errors: AtomicU64,
}

impl Counters {
    /// Adds one.
    pub fn bump(counter: &AtomicU64) {
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
    /// A socket error.
    Io(io::Error),
    /// Storing this session's records failed (the committer's reason).
    Storage(String),
}

/// Serves one relay connection until it ends; never panics on input.
pub fn serve_connection(
    stream: TcpStream,
    store: &Store,
    queue: &Queue,
    counters: &Counters,
    idle_timeout: Duration,
) -> SessionEnd {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let end = match stream.try_clone() {
        Ok(writer) => {
            let (tx, rx) = mpsc::channel();
            let tie = SessionTie::new(tx);
            thread::scope(|scope| {
                let acks = thread::Builder::new()
                    .name("netoops-acks".into())
                    .spawn_scoped(scope, move || write_acks(writer, &rx));
                if let Err(e) = acks {
                    return SessionEnd::Io(e);
                }
                let mut stream = stream;
                let end = run(&mut stream, store, queue, &tie, counters, idle_timeout);
                let end = match (end, tie.failure()) {
                    (SessionEnd::Closed | SessionEnd::Io(_), Some(why)) => SessionEnd::Storage(why),
                    (end, _) => end,
                };
                if !matches!(end, SessionEnd::Closed) {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                // The ack writer ends once the committer has answered for every queued record
                // (it holds the other ends of the verdict channel).
                drop(tie);
                end
            })
        }
        Err(e) => SessionEnd::Io(e),
    };
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
        SessionEnd::Storage(why) => {
            Counters::bump(&counters.errors);
            Counters::bump(&counters.storage_errors);
            eprintln!("netoops-collect: {peer}: {why}; nothing of it acknowledged, closing");
        }
    }
    end
}

/// Sends an `Ack` per durable verdict (coalesced); on a failed one, closes the connection so
/// the reader stops too.
fn write_acks(mut stream: TcpStream, verdicts: &mpsc::Receiver<Verdict>) {
    let mut alive = true;
    while let Ok(first) = verdicts.recv() {
        let mut latest = Some(first);
        let mut durable = None;
        while let Some(v) = latest.take() {
            match v {
                Verdict::Durable(seq) => durable = Some(durable.map_or(seq, |d: u64| d.max(seq))),
                Verdict::Failed(_) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    alive = false;
                    durable = None;
                }
            }
            latest = verdicts.try_recv().ok();
        }
        if let (true, Some(seq)) = (alive, durable) {
            if send(&mut stream, &Reply::Ack { seq }).is_err() {
                let _ = stream.shutdown(Shutdown::Both);
                alive = false;
            }
        }
    }
}

fn run(
    stream: &mut TcpStream,
    store: &Store,
    queue: &Queue,
    tie: &Arc<SessionTie>,
    counters: &Counters,
    idle: Duration,
) -> SessionEnd {
    if let Err(e) = stream
        .set_read_timeout(Some(idle))
        .and_then(|()| stream.set_write_timeout(Some(idle)))
    {
        return SessionEnd::Io(e);
    }
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut origin: Option<Arc<Origin>> = None;
    let mut buf = vec![0u8; 256 * 1024];
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
        if tie.failure().is_some() {
            return SessionEnd::Closed;
        }
        let arrival = now_ms();
        let mut input = &buf[..n];
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
                        origin = Some(Arc::new(Origin {
                            relay: relay.clone(),
                            instance: *instance,
                        }));
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
                    (Some(o), _) => {
                        let job = Job {
                            session: Arc::clone(tie),
                            origin: Arc::clone(o),
                            payload: payload.to_vec(),
                            header,
                            arrival_wall_ms: arrival,
                        };
                        if queue.push(job).is_err() {
                            return SessionEnd::Io(io::Error::other(
                                "the collector is shutting down",
                            ));
                        }
                    }
                }
            }
            if input.is_empty() {
                break;
            }
        }
    }
}

fn send(stream: &mut TcpStream, reply: &Reply) -> io::Result<()> {
    let frame = encode_reply_frame(reply).map_err(|e| io::Error::other(e.to_string()))?;
    stream.write_all(&frame)
}
