//! The listener: accepts relay connections and serves each on its own threads (a reader and an
//! ack writer), with one committer thread storing for all of them ([`crate::commit`]).
//!
//! Admission ([`Gate`]) has two budgets. Connections that have not authenticated yet are
//! bounded by `max_pending` in total and `max_pending_per_ip` per peer address, and each has
//! an absolute handshake deadline ([`crate::session::HANDSHAKE_DEADLINE`]); sessions (after the
//! handshake) are bounded by `max_connections`. A connection beyond a budget is closed at once
//! and counted. So clients without a key can hold at most the pending budget, for at most the
//! deadline, and never a session slot: they cannot lock real relays out. Sessions time out when
//! idle.

use crate::commit::{self, Outputs, Queue, QUEUE_BYTES};
use crate::keys::KeyTable;
use crate::nats::{Nats, NatsConfig, NatsStats};
use crate::session::{serve_connection, Counters};
use crate::store::{Store, Syncer};
use crate::syslog::{Syslog, SyslogConfig, SyslogStats};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// How to run a collector.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Storage directory.
    pub dir: PathBuf,
    /// A connection with nothing to read for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Also send crash notices and stored dumps to syslog ([`crate::syslog`]).
    pub syslog: Option<SyslogConfig>,
    /// Also publish crash notices and dumps to NATS JetStream, and acknowledge only what the
    /// stream has ([`crate::nats`]).
    pub nats: Option<NatsConfig>,
    /// Longest a frame may take to arrive (absolute, see [`crate::session::FRAME_DEADLINE`]).
    pub frame_deadline: Duration,
    /// Bytes of partly received frames all connections may hold together; a connection
    /// that would go over is closed (each also holds at most one frame, 8 MiB).
    pub max_frame_memory: usize,
    /// Connections not yet authenticated, in total.
    pub max_pending: usize,
    /// Connections not yet authenticated, per peer address.
    pub max_pending_per_ip: usize,
    /// Relay keys: sessions must authenticate with one ([`crate::keys`]). `None` accepts
    /// plaintext sessions from anyone (the explicit `--allow-plaintext` opt-out).
    pub keys: Option<Arc<KeyTable>>,
}

impl ServerConfig {
    /// Defaults: 120 s idle timeout, 256 sessions, 256 MiB of frames being received, 64
    /// unauthenticated connections (8 per address), no keys (plaintext), no syslog.
    pub fn new(listen: SocketAddr, dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            dir: dir.into(),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
            syslog: None,
            nats: None,
            frame_deadline: crate::session::FRAME_DEADLINE,
            max_frame_memory: 256 << 20,
            max_pending: 64,
            max_pending_per_ip: 8,
            keys: None,
        }
    }
}

/// A bound collector, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    store: Arc<Store>,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    syslog: Option<Arc<Syslog>>,
    nats: Option<Arc<Nats>>,
    config: ServerConfig,
}

impl Server {
    /// Opens the store (recovering replay state) and binds the listener.
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        let store = Arc::new(Store::open(&config.dir)?);
        Server::bind_store(config, store)
    }

    /// As [`Server::bind`], with the store's syncs made by `syncer` (tests inject failures).
    pub fn bind_with(config: ServerConfig, syncer: Arc<dyn Syncer>) -> io::Result<Server> {
        let store = Arc::new(Store::open_with(&config.dir, syncer)?);
        Server::bind_store(config, store)
    }

    fn bind_store(config: ServerConfig, store: Arc<Store>) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen)?;
        let syslog = match &config.syslog {
            Some(c) => Some(Arc::new(Syslog::start(c.clone())?)),
            None => None,
        };
        let nats = match &config.nats {
            Some(c) => Some(Arc::new(Nats::start(c.clone())?)),
            None => None,
        };
        let queue = match &nats {
            Some(n) => Queue::with_confirmed(QUEUE_BYTES, n.confirmed()),
            None => Queue::new(QUEUE_BYTES),
        };
        Ok(Server {
            listener,
            store,
            queue,
            counters: Arc::new(Counters::default()),
            syslog,
            nats,
            config,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Counters shared with the connection threads.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The syslog output's counters, when it is on.
    pub fn syslog_stats(&self) -> Option<Arc<SyslogStats>> {
        self.syslog.as_ref().map(|s| s.stats())
    }

    /// The NATS output's counters, when it is on.
    pub fn nats_stats(&self) -> Option<Arc<NatsStats>> {
        self.nats.as_ref().map(|n| n.stats())
    }

    /// The store.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Starts the committer and accepts connections forever.
    pub fn run(self) -> io::Result<()> {
        commit::spawn(
            Arc::clone(&self.store),
            Arc::clone(&self.queue),
            Arc::clone(&self.counters),
            Outputs {
                syslog: self.syslog.clone(),
                nats: self.nats.clone(),
            },
        )?;
        let gate = Arc::new(Gate::new(&self.config));
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("netoops-collect: accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            let ip = stream
                .peer_addr()
                .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            let Some(mut admission) = Gate::admit(&gate, ip) else {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .rejected_pending
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // Plaintext: nothing to authenticate, a session slot at once (as before keys).
            if self.config.keys.is_none() && !admission.establish() {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                eprintln!("netoops-collect: too many connections, closing a new one");
                continue;
            }
            let store = Arc::clone(&self.store);
            let queue = Arc::clone(&self.queue);
            let counters = Arc::clone(&self.counters);
            let idle = self.config.idle_timeout;
            let keys = self.config.keys.clone();
            let spawned = thread::Builder::new()
                .name("netoops-conn".into())
                .spawn(move || {
                    serve_connection(
                        stream,
                        &store,
                        &queue,
                        &counters,
                        idle,
                        keys.as_deref(),
                        &mut admission,
                    );
                });
            if let Err(e) = spawned {
                eprintln!("netoops-collect: cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }

    /// Runs the accept loop on a background thread (tests, embedding).
    pub fn spawn(self) -> thread::JoinHandle<io::Result<()>> {
        thread::spawn(move || self.run())
    }
}

/// The collector's admission budgets (module doc).
#[derive(Debug)]
pub struct Gate {
    frame_deadline: Duration,
    max_frame_memory: usize,
    frame_memory: std::sync::atomic::AtomicUsize,
    max_sessions: usize,
    max_pending: usize,
    max_pending_per_ip: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    sessions: usize,
    pending: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One connection's place in the [`Gate`]: pending until [`Admission::establish`], released
/// when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    ip: IpAddr,
    established: Option<bool>,
    /// Bytes of partial frames this connection holds, as counted in the gate.
    frame_bytes: usize,
}

impl Gate {
    /// The budgets of `config`.
    pub fn new(config: &ServerConfig) -> Gate {
        Gate {
            frame_deadline: config.frame_deadline,
            max_frame_memory: config.max_frame_memory,
            frame_memory: std::sync::atomic::AtomicUsize::new(0),
            max_sessions: config.max_connections,
            max_pending: config.max_pending.max(1),
            max_pending_per_ip: config.max_pending_per_ip.max(1),
            state: Mutex::new(GateState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection from `ip`, if the pending budgets have room.
    pub fn admit(gate: &Arc<Gate>, ip: IpAddr) -> Option<Admission> {
        let mut s = gate.lock();
        let here = s.per_ip.get(&ip).copied().unwrap_or(0);
        if s.pending >= gate.max_pending || here >= gate.max_pending_per_ip {
            return None;
        }
        s.pending += 1;
        s.per_ip.insert(ip, here + 1);
        Some(Admission {
            gate: Arc::clone(gate),
            ip,
            established: Some(false),
            frame_bytes: 0,
        })
    }

    fn release_pending(s: &mut GateState, ip: IpAddr) {
        s.pending = s.pending.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_ip.remove(&ip);
            }
        }
    }
}

impl Admission {
    /// The connection authenticated (or needs none): moves it from the pending budget to a
    /// session slot. False when every session slot is taken (the connection is closed).
    pub fn establish(&mut self) -> bool {
        if self.established != Some(false) {
            return self.established == Some(true);
        }
        let mut s = self.gate.lock();
        Gate::release_pending(&mut s, self.ip);
        if s.sessions >= self.gate.max_sessions {
            self.established = None;
            return false;
        }
        s.sessions += 1;
        self.established = Some(true);
        true
    }
}

impl Admission {
    /// The collector's frame deadline.
    pub fn frame_deadline(&self) -> Duration {
        self.gate.frame_deadline
    }

    /// This connection now holds `bytes` of partly received frames. False when that would
    /// take every connection together over the collector's budget (nothing is counted then;
    /// the caller closes the connection).
    pub fn hold_frame_bytes(&mut self, bytes: usize) -> bool {
        let used = &self.gate.frame_memory;
        if bytes > self.frame_bytes {
            let more = bytes - self.frame_bytes;
            let before = used.fetch_add(more, Ordering::AcqRel);
            if before + more > self.gate.max_frame_memory {
                used.fetch_sub(more, Ordering::AcqRel);
                return false;
            }
        } else {
            used.fetch_sub(self.frame_bytes - bytes, Ordering::AcqRel);
        }
        self.frame_bytes = bytes;
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hold_frame_bytes(0);
        let mut s = self.gate.lock();
        match self.established {
            Some(false) => Gate::release_pending(&mut s, self.ip),
            Some(true) => s.sessions = s.sessions.saturating_sub(1),
            None => {}
        }
    }
}
