//! The listener: accepts relay connections and serves each on its own threads (a reader and an
//! ack writer), with one committer thread storing for all of them ([`crate::commit`]).
//!
//! Connections are bounded by `max_connections` (a connection beyond it is closed at once and
//! counted), and each connection times out when idle, so stalled relays cannot pile up.

use crate::commit::{self, Queue, QUEUE_BYTES};
use crate::keys::KeyTable;
use crate::session::{serve_connection, Counters};
use crate::store::{Store, Syncer};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    /// Relay keys: sessions must authenticate with one ([`crate::keys`]). `None` accepts
    /// plaintext sessions from anyone (the explicit `--allow-plaintext` opt-out).
    pub keys: Option<Arc<KeyTable>>,
}

impl ServerConfig {
    /// Defaults: 120 s idle timeout, 256 connections.
    pub fn new(listen: SocketAddr, dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            dir: dir.into(),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
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
        Ok(Server {
            listener,
            store,
            queue: Queue::new(QUEUE_BYTES),
            counters: Arc::new(Counters::default()),
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
        )?;
        let active = Arc::new(AtomicUsize::new(0));
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
            if active.fetch_add(1, Ordering::AcqRel) >= self.config.max_connections {
                active.fetch_sub(1, Ordering::AcqRel);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                eprintln!("netoops-collect: too many connections, closing a new one");
                continue;
            }
            let store = Arc::clone(&self.store);
            let queue = Arc::clone(&self.queue);
            let counters = Arc::clone(&self.counters);
            let active_here = Arc::clone(&active);
            let idle = self.config.idle_timeout;
            let keys = self.config.keys.clone();
            let spawned = thread::Builder::new()
                .name("netoops-conn".into())
                .spawn(move || {
                    serve_connection(stream, &store, &queue, &counters, idle, keys.as_deref());
                    active_here.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::AcqRel);
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
