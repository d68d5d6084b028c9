//! One relay connection: with keys, the secure channel's handshake first (the peer proves a
//! relay key at its first message or is refused and counted, before anything else is read;
//! the session's relay is then its key id, whatever `Hello` claims); then `Hello` →
//! `Welcome`, records handed to the committer, and acknowledgements as the committer makes
//! them durable. A handshake and each frame have absolute deadlines; partial frames count
//! against the collector's frame memory budget ([`crate::server::Gate`]).
//!
//! Two threads per connection: this one reads and decodes frames and queues each record for
//! the committer ([`crate::commit`]), without waiting for storage, so that records keep
//! arriving while earlier ones are being synced (that is what lets batches grow under load);
//! an ack writer sends `Ack` for the highest seq the committer reported durable (cumulative,
//! and coalesced: one `Ack` for everything that became durable since the last one).
//!
//! Contract: a record is acknowledged only after the batch holding it was synced (and, with the
//! NATS output, after the stream acknowledged it; `Welcome` then reports no more than the
//! stream confirmed, see [`crate::nats`]). Replays (seq
//! at or below the instance's applied seq) are acknowledged without writing, after the batch
//! they fall in. When storing fails, the committer says so, the connection is closed and the
//! error counted; the relay resends from `Welcome.last_seq`. Anything malformed (bad length,
//! undecodable header, a second `Hello`), a missing `Hello` or an unknown protocol version ends
//! this connection only: it is logged to stderr and counted; other connections are unaffected.

use crate::commit::{Job, Queue, SessionTie, Verdict};
use crate::keys::{os_seed, replay_instance, KeyTable};
use crate::server::Admission;
use crate::store::{Origin, Store};
use crate::wallclock::now_ms;
use netoops_core::upstream::record::{
    decode_record, encode_reply_frame, FrameDecoder, MAX_FRAME_LEN,
};
use netoops_core::upstream::secure::{Received, Responder, SecureError, MAX_MESSAGE};
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Collector-wide counters, shared by all connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections turned away because too many were open (either budget).
    pub rejected: AtomicU64,
    /// Of those, turned away at accept: the unauthenticated budget (in total or for the
    /// peer's address) was full.
    pub rejected_pending: AtomicU64,
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
    /// Connections refused at the first handshake message (any reason below), nothing read
    /// past it and nothing stored.
    pub auth_refused: AtomicU64,
    /// Of those: a key id no key is configured for.
    pub auth_unknown_key: AtomicU64,
    /// Of those: message 1 did not authenticate under any key of its id (wrong key).
    pub auth_bad_key: AtomicU64,
    /// Of those: not a handshake at all (a plaintext client, garbage).
    pub auth_not_handshake: AtomicU64,
    /// Handshakes not finished by their deadline.
    pub handshake_timeouts: AtomicU64,
    /// Of `timeouts`: frames not complete by their deadline.
    pub frame_timeouts: AtomicU64,
    /// Connections closed because their partial frame would exceed the collector's budget
    /// for frames being received.
    pub memory_refused: AtomicU64,
}

impl Counters {
    /// Every counter by name, for the JSON stats.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("connections", v(&self.connections)),
            ("rejected", v(&self.rejected)),
            ("rejected_pending", v(&self.rejected_pending)),
            ("sessions", v(&self.sessions)),
            ("applied", v(&self.applied)),
            ("replays", v(&self.replays)),
            ("dumps_stored", v(&self.dumps_stored)),
            ("crashes_stored", v(&self.crashes_stored)),
            ("malformed", v(&self.malformed)),
            ("refused", v(&self.refused)),
            ("timeouts", v(&self.timeouts)),
            ("errors", v(&self.errors)),
            ("storage_errors", v(&self.storage_errors)),
            ("auth_refused", v(&self.auth_refused)),
            ("auth_unknown_key", v(&self.auth_unknown_key)),
            ("auth_bad_key", v(&self.auth_bad_key)),
            ("auth_not_handshake", v(&self.auth_not_handshake)),
            ("handshake_timeouts", v(&self.handshake_timeouts)),
            ("frame_timeouts", v(&self.frame_timeouts)),
            ("memory_refused", v(&self.memory_refused)),
        ]
    }

    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}

/// Longest a handshake may take from accept, whatever trickles in meanwhile.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Default for how long a frame may take from its first byte (or the end of the frame before
/// it) to its last: an absolute deadline, so a client dribbling a frame cannot hold its memory and slot
/// for long. An 8 MiB frame needs about 140 KB/s to make it.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(60);

/// The writing side of a connection: the socket and, once keyed, the channel that seals every
/// reply. One lock, so replies are sealed and written in nonce order.
struct Out {
    stream: TcpStream,
    secure: Option<Responder>,
}

impl Out {
    fn send(&mut self, reply: &Reply) -> io::Result<()> {
        let frame = encode_reply_frame(reply).map_err(|e| io::Error::other(e.to_string()))?;
        match &mut self.secure {
            None => self.stream.write_all(&frame),
            Some(r) => {
                let mut sealed = Vec::with_capacity(frame.len() + 32);
                r.seal(&frame, &mut sealed)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                self.stream.write_all(&sealed)
            }
        }
    }
}

fn lock(out: &Mutex<Out>) -> std::sync::MutexGuard<'_, Out> {
    out.lock().unwrap_or_else(|p| p.into_inner())
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
    /// Refused at the handshake: unauthenticated (the reason), nothing read past it.
    Unauthenticated(SecureError),
    /// The handshake did not finish by its deadline.
    HandshakeTimeout,
    /// Every session slot is taken.
    Busy,
    /// A frame did not complete by [`FRAME_DEADLINE`].
    FrameTimeout,
    /// Its partial frame would take the collector over its memory budget for frames.
    Memory,
}

/// Serves one relay connection until it ends; never panics on input.
pub fn serve_connection(
    stream: TcpStream,
    store: &Store,
    queue: &Queue,
    counters: &Counters,
    idle_timeout: Duration,
    keys: Option<&KeyTable>,
    admission: &mut Admission,
) -> SessionEnd {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let end = match stream.try_clone() {
        Ok(writer) => {
            let (tx, rx) = mpsc::channel();
            let tie = SessionTie::new(tx);
            let out = Mutex::new(Out {
                stream: writer,
                secure: keys.map(|_| Responder::new(MAX_MESSAGE)),
            });
            let out = &out;
            thread::scope(|scope| {
                let acks = thread::Builder::new()
                    .name("netoops-acks".into())
                    .spawn_scoped(scope, move || write_acks(out, &rx));
                if let Err(e) = acks {
                    return SessionEnd::Io(e);
                }
                let mut stream = stream;
                let end = run(
                    &mut stream,
                    out,
                    keys,
                    admission,
                    store,
                    queue,
                    &tie,
                    counters,
                    idle_timeout,
                );
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
        SessionEnd::Unauthenticated(why) => {
            Counters::bump(&counters.auth_refused);
            match why {
                SecureError::UnknownKey => Counters::bump(&counters.auth_unknown_key),
                SecureError::Handshake => Counters::bump(&counters.auth_bad_key),
                _ => Counters::bump(&counters.auth_not_handshake),
            }
            eprintln!("netoops-collect: {peer}: not authenticated ({why}), closing");
        }
        SessionEnd::FrameTimeout => {
            Counters::bump(&counters.timeouts);
            Counters::bump(&counters.frame_timeouts);
            eprintln!("netoops-collect: {peer}: frame not complete by its deadline, closing");
        }
        SessionEnd::Memory => {
            Counters::bump(&counters.memory_refused);
            eprintln!("netoops-collect: {peer}: frames in flight over the memory budget, closing");
        }
        SessionEnd::Busy => {
            Counters::bump(&counters.rejected);
            eprintln!("netoops-collect: {peer}: too many sessions, closing");
        }
        SessionEnd::HandshakeTimeout => {
            Counters::bump(&counters.handshake_timeouts);
            eprintln!(
                "netoops-collect: {peer}: no handshake within {HANDSHAKE_DEADLINE:?}, closing"
            );
        }
    }
    end
}

/// Sends an `Ack` per durable verdict (coalesced); on a failed one, closes the connection so
/// the reader stops too.
fn write_acks(out: &Mutex<Out>, verdicts: &mpsc::Receiver<Verdict>) {
    let mut alive = true;
    while let Ok(first) = verdicts.recv() {
        let mut latest = Some(first);
        let mut durable = None;
        while let Some(v) = latest.take() {
            match v {
                Verdict::Durable(seq) => durable = Some(durable.map_or(seq, |d: u64| d.max(seq))),
                Verdict::Failed(why) => {
                    // A refusal, not a bare close: the relay backs off further on each one
                    // (its disk-full case would otherwise reconnect many times a second).
                    let mut o = lock(out);
                    if alive {
                        let reason = format!("storage failed ({why}); try again later");
                        let _ = o.send(&Reply::Refused { reason });
                    }
                    let _ = o.stream.shutdown(Shutdown::Both);
                    alive = false;
                    durable = None;
                }
            }
            latest = verdicts.try_recv().ok();
        }
        if let (true, Some(seq)) = (alive, durable) {
            let mut o = lock(out);
            if o.send(&Reply::Ack { seq }).is_err() {
                let _ = o.stream.shutdown(Shutdown::Both);
                alive = false;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    stream: &mut TcpStream,
    out: &Mutex<Out>,
    keys: Option<&KeyTable>,
    admission: &mut Admission,
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
    let mut plain = Vec::new();
    // The authenticated key id, once the handshake is done (keys configured).
    let mut authenticated: Option<String> = None;
    let handshake_deadline = Instant::now() + HANDSHAKE_DEADLINE;
    if keys.is_none() && !admission.establish() {
        return SessionEnd::Busy;
    }
    // When the frame being received (if any) must be complete.
    let mut frame_deadline: Option<Instant> = None;
    loop {
        let handshaking = keys.is_some() && authenticated.is_none();
        // Absolute deadlines: bytes trickling in do not extend them.
        let deadline = if handshaking {
            Some(handshake_deadline)
        } else {
            frame_deadline
        };
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if handshaking {
                    SessionEnd::HandshakeTimeout
                } else {
                    SessionEnd::FrameTimeout
                };
            }
            if let Err(e) = stream.set_read_timeout(Some(left.min(idle))) {
                return SessionEnd::Io(e);
            }
        } else if let Err(e) = stream.set_read_timeout(Some(idle)) {
            return SessionEnd::Io(e);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return SessionEnd::Closed,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if handshaking {
                    return SessionEnd::HandshakeTimeout;
                }
                if frame_deadline.is_some_and(|d| Instant::now() >= d) {
                    return SessionEnd::FrameTimeout;
                }
                return SessionEnd::Idle;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return SessionEnd::Io(e),
        };
        if tie.failure().is_some() {
            return SessionEnd::Closed;
        }
        let arrival = now_ms();
        let mut input = &buf[..n];
        let mut completed = false;
        if let Some(keys) = keys {
            let was_authenticated = authenticated.is_some();
            match open(out, keys, input, &mut plain, &mut authenticated) {
                Ok(()) => {}
                Err(Opened::Io(e)) => return SessionEnd::Io(e),
                Err(Opened::Secure(e)) if authenticated.is_none() => {
                    return SessionEnd::Unauthenticated(e)
                }
                Err(Opened::Secure(e)) => {
                    Counters::bump(&counters.malformed);
                    return SessionEnd::Protocol(format!("secure channel: {e}"));
                }
            }
            if authenticated.is_some() && !was_authenticated {
                if !admission.establish() {
                    return SessionEnd::Busy;
                }
                if let Err(e) = stream.set_read_timeout(Some(idle)) {
                    return SessionEnd::Io(e);
                }
            }
            input = &plain;
        }
        loop {
            let taken = decoder.push(input);
            input = &input[taken..];
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => {
                        completed = true;
                        f
                    }
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
                            let _ = lock(out).send(&Reply::Refused {
                                reason: reason.clone(),
                            });
                            return SessionEnd::Protocol(reason);
                        }
                        // Authenticated: the relay is its key id, whatever Hello claims, and
                        // its replay state is its own (keys::replay_instance).
                        let (relay, instance) = match &authenticated {
                            Some(id) => (id.clone(), replay_instance(id, *instance)),
                            None => (relay.clone(), *instance),
                        };
                        let last_seq = queue.welcome_seq(instance, store.last_applied(instance));
                        if let Err(e) = lock(out).send(&Reply::Welcome {
                            protocol: PROTOCOL_VERSION,
                            last_seq,
                        }) {
                            return SessionEnd::Io(e);
                        }
                        Counters::bump(&counters.sessions);
                        origin = Some(Arc::new(Origin { relay, instance }));
                    }
                    (None, _) => {
                        Counters::bump(&counters.refused);
                        let reason = "expected Hello first".to_string();
                        let _ = lock(out).send(&Reply::Refused {
                            reason: reason.clone(),
                        });
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
        // Between frames, a large frame's buffer is given back (a partial one is counted).
        decoder.release_memory();
        let held = decoder.buffered();
        if !admission.hold_frame_bytes(held) {
            return SessionEnd::Memory;
        }
        frame_deadline = match held {
            0 => None,
            _ if completed || frame_deadline.is_none() => {
                Some(Instant::now() + admission.frame_deadline())
            }
            _ => frame_deadline,
        };
    }
}

/// Why [`open`] failed.
enum Opened {
    Secure(SecureError),
    Io(io::Error),
}

/// Runs bytes read through the secure channel: the handshake (answered at once), then
/// transport messages opened into `plain`. Sets `authenticated` when the handshake completes.
fn open(
    out: &Mutex<Out>,
    keys: &KeyTable,
    mut input: &[u8],
    plain: &mut Vec<u8>,
    authenticated: &mut Option<String>,
) -> Result<(), Opened> {
    plain.clear();
    let mut guard = lock(out);
    let Out { stream, secure } = &mut *guard;
    let Some(responder) = secure.as_mut() else {
        return Err(Opened::Secure(SecureError::Handshake));
    };
    let mut lookup = |id: &str| keys.lookup(id);
    while !input.is_empty() {
        // A fresh seed only matters for the handshake; read it only then.
        let seed = if responder.is_established() {
            [0u8; 32]
        } else {
            os_seed().map_err(Opened::Io)?
        };
        let (k, got) = responder
            .read(input, &mut lookup, &seed)
            .map_err(Opened::Secure)?;
        input = &input[k..];
        match got {
            Received::Nothing => {}
            Received::Established { reply, .. } => {
                *authenticated = responder.id().map(str::to_string);
                stream.write_all(&reply).map_err(Opened::Io)?;
            }
            Received::Plain(p) => plain.extend_from_slice(p),
        }
    }
    Ok(())
}
