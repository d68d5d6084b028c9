//! NATS JetStream output (`serve --nats URL`): every crash notice and every dump the collector
//! stores is published to one JetStream stream, a subject per crashed machine, and a relay's
//! records are acknowledged only once the stream has acknowledged them too.
//!
//! ```text
//! netoops.notice.10_0_0_7     a crash notice from 10.0.0.7 (payload: the chunk's text)
//! netoops.dump.10_0_0_7       a dump of 10.0.0.7 (payload: the dump text, exactly as stored)
//! ```
//!
//! The prefix (`netoops`) and the stream (`NETOOPS`, subjects `<prefix>.>`, created when
//! absent, file storage, a duplicate window) are configurable. The subject token is the
//! source address with `.` and `:` as `_` (`fe80::1` is `fe80__1`): it is built from the
//! address's bytes, never from wire text, so it only ever holds `[0-9a-f_]`.
//!
//! # Exactly once, across collectors
//!
//! Every message carries `Nats-Msg-Id`, the record's identity: kind, source address and
//! port, dump key, relay instance, the relay's first-seen time, and the revision (dump) or
//! packet number (notice). A relay's resend (a lost `Ack`, a restart of the collector) and its
//! failover to another collector carry the same record, so they publish the same id, and
//! JetStream stores it once within the stream's duplicate window (default 24 h here, far
//! longer than any resend). Any number of collectors can thus publish into one stream.
//! The headers (`Netoops-*`, see [`Message`]) carry the metadata; wire text in them is
//! escaped ([`terminal_safe`]) and cut at [`MAX_VALUE`] bytes.
//!
//! # Acknowledgements
//!
//! The committer ([`crate::commit`]) makes a batch durable on disk, then hands it here with
//! its verdicts ([`Batch`]) instead of sending them: the verdicts (the relay's `Ack`s) go out
//! only when JetStream has acknowledged every message of the batch, in batch order. While the
//! stream cannot be reached, batches are held and republished until acknowledged (backoff
//! [`BACKOFF_MIN`] to [`BACKOFF_MAX`]); what is held is bounded in bytes
//! ([`NatsConfig::hold_bytes`]), and when it is full the committer waits, its queue fills and
//! the sessions stop reading: TCP backpressure on the relays, which keep their spools.
//!
//! `Welcome.last_seq` is the lower of the disk's durable seq and the seq JetStream confirmed
//! for that relay instance ([`Confirmed`], in memory: 0 after a collector restart). So a
//! relay that reconnects (its ack timeout, or a restarted collector) resends what the stream
//! has not confirmed; the store answers those as replays (nothing written), and they are
//! published again: a replay is published like a new record, and the stream's deduplication
//! drops what it already holds. Nothing the relay dropped from its spool is missing from the
//! stream.
//!
//! # Threads
//!
//! The client is `async-nats` (the NATS maintainers' own, kept up with the server); it needs
//! tokio, so the output runs one current-thread tokio runtime on a thread of its own, fed
//! through a bounded hand-over ([`Nats::submit`]). The rest of the collector stays
//! synchronous. Nothing here panics on what the server does; every error is counted
//! ([`NatsStats`]) and retried.
//!
//! A message bigger than the server's `max_payload` (1 MiB by default) is cut to fit and says
//! so in `Netoops-Truncated` (the original length); the full text stays in the collector's
//! storage. Raise `max_payload` on the server to carry large dumps whole.

use crate::catalog::terminal_safe;
use crate::commit::SessionTie;
use crate::store::{crash_key, dump_key, ip_dir_name};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use netoops_core::upstream::{Record, RecordHeader, Source};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

/// Default stream name.
pub const DEFAULT_STREAM: &str = "NETOOPS";
/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "netoops";
/// Default duplicate window of a stream the collector creates.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Default bound on what is held for publishing, bytes.
pub const DEFAULT_HOLD_BYTES: usize = 64 << 20;
/// How long a publish may wait for the stream's acknowledgement.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait after a failed publish round.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between publish rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Largest header value (wire text), bytes, before escaping grows it.
pub const MAX_VALUE: usize = 256;
/// Messages in flight at once (published, acknowledgement awaited).
const IN_FLIGHT: usize = 256;
/// Messages taken into one publish round.
const ROUND: usize = 1024;
/// Bytes counted per message on top of its payload (subject, headers).
const OVERHEAD: usize = 1024;

/// Where and how to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (`nats://host:4222`, `tls://...`, user and password
    /// in the URL if needed).
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Subject prefix: `<prefix>.notice.<source>`, `<prefix>.dump.<source>`.
    pub prefix: String,
    /// Replicas of a stream the collector creates (1, or 3 in a JetStream cluster).
    pub replicas: usize,
    /// Duplicate window of a stream the collector creates.
    pub duplicate_window: Duration,
    /// Bytes held for publishing at most; the committer waits beyond.
    pub hold_bytes: usize,
}

impl NatsConfig {
    /// Defaults: stream `NETOOPS`, prefix `netoops`, 1 replica, 24 h window, 64 MiB held.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            stream: DEFAULT_STREAM.into(),
            prefix: DEFAULT_PREFIX.into(),
            replicas: 1,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            hold_bytes: DEFAULT_HOLD_BYTES,
        }
    }

    /// Checks names the server would refuse (or that would change the subjects' meaning).
    pub fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("the NATS URL is empty".into());
        }
        for url in self.url.split(',') {
            url.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("NATS URL {url:?}: {e}"))?;
        }
        if !token_ok(&self.stream) || self.stream.len() > 64 {
            return Err(format!(
                "NATS stream name {:?} must be 1-64 characters of A-Z a-z 0-9 _ -",
                self.stream
            ));
        }
        if self.prefix.len() > 128 || !self.prefix.split('.').all(token_ok) {
            return Err(format!(
                "NATS subject prefix {:?} must be dot-separated tokens of A-Z a-z 0-9 _ - \
                 (no wildcards), 128 characters at most",
                self.prefix
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("NATS stream replicas must be 1-5".into());
        }
        if self.duplicate_window.is_zero() {
            return Err("the NATS duplicate window must be longer than 0".into());
        }
        if self.hold_bytes < 8 << 20 {
            return Err("the NATS hold must be at least 8M (one largest record)".into());
        }
        Ok(())
    }
}

/// A subject token or stream name: non-empty, `[A-Za-z0-9_-]` only.
fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The subject token of a source: its address with `.` and `:` as `_`.
pub fn source_token(source: &Source) -> String {
    ip_dir_name(&source.ip)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The output's counters (`/api/collector` under `nats`).
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Messages the stream stored.
    pub published: AtomicU64,
    /// Messages the stream acknowledged as duplicates (already stored, by this collector or
    /// another).
    pub duplicates: AtomicU64,
    /// Publish rounds that failed (no connection, a timeout, a stream error): each is tried
    /// again after a backoff.
    pub failures: AtomicU64,
    /// Messages published again after a failed round (not acknowledged in it).
    pub retries: AtomicU64,
    /// Client errors the connection reported (failed reconnection attempts, ...).
    pub client_errors: AtomicU64,
    /// Messages waiting for the stream now.
    pub held: AtomicU64,
    /// Their bytes (payloads plus [`OVERHEAD`] each).
    pub held_bytes: AtomicU64,
    /// Times the committer waited because the hold was full.
    pub hold_full: AtomicU64,
    /// Messages cut to the server's `max_payload`.
    pub truncated: AtomicU64,
    /// Connections made to the server (the first and every reconnection).
    pub connects: AtomicU64,
    /// Connections lost.
    pub disconnects: AtomicU64,
    /// Relay acknowledgements released after the stream confirmed their batch (to sessions
    /// still open).
    pub acks_released: AtomicU64,
}

impl NatsStats {
    /// Every counter: name, help text, value, and whether it is a gauge.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "published",
                "Messages the stream stored.",
                g(&self.published),
                false,
            ),
            (
                "duplicates",
                "Messages the stream acknowledged as duplicates.",
                g(&self.duplicates),
                false,
            ),
            (
                "failures",
                "Publish rounds that failed and were tried again.",
                g(&self.failures),
                false,
            ),
            (
                "retries",
                "Messages published again after a failed round.",
                g(&self.retries),
                false,
            ),
            (
                "client_errors",
                "Errors the NATS connection reported.",
                g(&self.client_errors),
                false,
            ),
            (
                "held",
                "Messages waiting for the stream's acknowledgement.",
                g(&self.held),
                true,
            ),
            (
                "held_bytes",
                "Bytes waiting for the stream's acknowledgement.",
                g(&self.held_bytes),
                true,
            ),
            (
                "hold_full",
                "Times the committer waited for room in the hold.",
                g(&self.hold_full),
                false,
            ),
            (
                "truncated",
                "Messages cut to the server's max_payload.",
                g(&self.truncated),
                false,
            ),
            (
                "connects",
                "Connections made to the NATS server.",
                g(&self.connects),
                false,
            ),
            (
                "disconnects",
                "Connections to the NATS server lost.",
                g(&self.disconnects),
                false,
            ),
            (
                "acks_released",
                "Relay acknowledgements released after the stream confirmed.",
                g(&self.acks_released),
                false,
            ),
        ]
    }

    /// The counters as JSON (the names of [`NatsStats::snapshot`]).
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .snapshot()
            .into_iter()
            .map(|(k, _, v, _)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// Per relay instance, the highest seq whose records the stream acknowledged (module doc).
#[derive(Debug, Default)]
pub struct Confirmed {
    seqs: Mutex<HashMap<u64, u64>>,
}

impl Confirmed {
    /// The confirmed seq of `instance` (0: none yet).
    pub fn get(&self, instance: u64) -> u64 {
        lock(&self.seqs).get(&instance).copied().unwrap_or(0)
    }

    fn raise(&self, instance: u64, seq: u64) {
        let mut s = lock(&self.seqs);
        let e = s.entry(instance).or_insert(0);
        *e = (*e).max(seq);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One message, built from a stored record (owned, bounded but for the payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `notice` or `dump`.
    pub kind: &'static str,
    /// The source's subject token ([`source_token`]).
    pub token: String,
    /// `Nats-Msg-Id`.
    pub id: String,
    /// `Netoops-*` headers, values already safe.
    pub headers: Vec<(&'static str, String)>,
    /// The text, as received.
    pub payload: Bytes,
}

impl Message {
    /// The message for a stored (or replayed) record; `None` for anything but a crash notice
    /// or a dump.
    pub fn from_record(
        relay: &str,
        instance: u64,
        header: &RecordHeader,
        payload: &[u8],
    ) -> Option<Message> {
        let value = |s: &str| {
            let mut end = s.len().min(MAX_VALUE);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            terminal_safe(&s[..end], false).into_owned()
        };
        let (kind, id, kernel, nc) = match &header.record {
            Record::CrashSeen(c) => ("notice", &c.id, &c.kernel_version, c.netconsole.as_ref()),
            Record::Dump(d) => ("dump", &d.id, &d.kernel_version, d.netconsole.as_ref()),
            Record::Hello { .. } => return None,
        };
        // Its key, the time and version that tell this message from others of the same key,
        // and the headers of its own kind.
        let (key, at, version, own) = match &header.record {
            Record::CrashSeen(c) => (
                crash_key(c),
                c.seen_at_ms,
                c.packet_no.to_string(),
                vec![
                    ("Netoops-Packet", c.packet_no.to_string()),
                    ("Netoops-Total", c.packet_count.to_string()),
                ],
            ),
            Record::Dump(d) => (
                dump_key(d),
                d.first_seen_ms,
                format!("r{}", d.revision),
                vec![
                    ("Netoops-Complete", d.complete.to_string()),
                    ("Netoops-Received", d.received.to_string()),
                    ("Netoops-Total", d.packet_count.to_string()),
                    ("Netoops-Revision", d.revision.to_string()),
                ],
            ),
            Record::Hello { .. } => return None,
        };
        let source = id.source;
        let id = format!(
            "{kind}.{}.{}.{key}.{instance:016x}.{at}.{version}",
            source.ip, source.port
        );
        let kernel = match nc {
            Some(n) if kernel.is_empty() => n.release.as_str(),
            _ => kernel,
        };
        let mut headers = vec![
            ("Netoops-Kind", kind.to_string()),
            ("Netoops-Source", source.to_string()),
            ("Netoops-Key", format!("{}/{key}", ip_dir_name(&source.ip))),
            (
                "Netoops-Format",
                if nc.is_some() {
                    "netconsole"
                } else {
                    "netoops"
                }
                .to_string(),
            ),
            ("Netoops-Kernel", value(kernel)),
            ("Netoops-Relay", value(relay)),
            ("Netoops-Relay-Instance", format!("{instance:016x}")),
            ("Netoops-Seq", header.seq.to_string()),
        ];
        if let Some(n) = nc.filter(|n| !n.crash_line.is_empty()) {
            headers.push(("Netoops-Crash-Line", value(&n.crash_line)));
        }
        headers.extend(own);
        Some(Message {
            kind,
            token: source_token(&source),
            id,
            headers,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn cost(&self) -> usize {
        self.payload.len() + OVERHEAD
    }
}

/// A durable batch's messages and the acknowledgements that wait for them.
#[derive(Debug, Default)]
pub struct Batch {
    /// What to publish.
    pub messages: Vec<Message>,
    /// Per session: its tie, its relay instance and the seq to acknowledge. The tie is held
    /// weakly: a session that ended while its records waited here (its relay reconnects and
    /// resends them) frees its connection slot at once instead of at the stream's return.
    pub acks: Vec<(Weak<SessionTie>, u64, u64)>,
}

impl Batch {
    fn cost(&self) -> usize {
        self.messages.iter().map(Message::cost).sum::<usize>() + 1
    }
}

#[derive(Debug, Default)]
struct Hold {
    batches: VecDeque<Batch>,
    /// Bytes of the batches queued and being published.
    bytes: usize,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    hold: Mutex<Hold>,
    room: Condvar,
    ready: tokio::sync::Notify,
    config: NatsConfig,
    stats: Arc<NatsStats>,
    confirmed: Arc<Confirmed>,
}

/// The NATS output: the hold and its publisher thread. Dropping it stops the publisher
/// (what is held is not acknowledged, so the relays send it again).
#[derive(Debug)]
pub struct Nats {
    shared: Arc<Shared>,
}

impl Nats {
    /// Checks the configuration and starts the publisher thread (it connects in the
    /// background and keeps reconnecting; the stream is created on the first connection).
    pub fn start(config: NatsConfig) -> io::Result<Nats> {
        config.validate().map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            hold: Mutex::new(Hold::default()),
            room: Condvar::new(),
            ready: tokio::sync::Notify::new(),
            config,
            stats: Arc::new(NatsStats::default()),
            confirmed: Arc::new(Confirmed::default()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let for_thread = Arc::clone(&shared);
        thread::Builder::new()
            .name("netoops-nats".into())
            .spawn(move || runtime.block_on(publisher(for_thread)))?;
        Ok(Nats { shared })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<NatsStats> {
        Arc::clone(&self.shared.stats)
    }

    /// What the stream has confirmed, per relay instance.
    pub fn confirmed(&self) -> Arc<Confirmed> {
        Arc::clone(&self.shared.confirmed)
    }

    /// The configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.config
    }

    /// Hands a durable batch over; waits while the hold is full (one batch always fits when
    /// nothing is held). Its acknowledgements are sent once the stream has every message.
    pub fn submit(&self, batch: Batch) {
        let cost = batch.cost();
        let messages = batch.messages.len() as u64;
        let mut h = lock(&self.shared.hold);
        let mut waited = false;
        while !h.closed && h.bytes > 0 && h.bytes + cost > self.shared.config.hold_bytes {
            if !waited {
                waited = true;
                self.shared.stats.hold_full.fetch_add(1, Ordering::Relaxed);
            }
            h = self.shared.room.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        if h.closed {
            return;
        }
        h.bytes += cost;
        h.batches.push_back(batch);
        drop(h);
        let st = &self.shared.stats;
        st.held.fetch_add(messages, Ordering::Relaxed);
        st.held_bytes.fetch_add(cost as u64, Ordering::Relaxed);
        self.shared.ready.notify_one();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        lock(&self.shared.hold).closed = true;
        self.shared.room.notify_all();
        self.shared.ready.notify_one();
    }
}

/// Waits for batches; takes whole batches up to [`ROUND`] messages (at least one batch).
async fn take_round(shared: &Shared) -> Option<Vec<Batch>> {
    loop {
        {
            let mut h = lock(&shared.hold);
            if h.closed {
                return None;
            }
            if !h.batches.is_empty() {
                let mut round = Vec::new();
                let mut n = 0;
                while let Some(b) = h.batches.front() {
                    if !round.is_empty() && n + b.messages.len() > ROUND {
                        break;
                    }
                    n += b.messages.len();
                    round.extend(h.batches.pop_front());
                }
                return Some(round);
            }
        }
        shared.ready.notified().await;
    }
}

async fn connect(shared: &Arc<Shared>) -> async_nats::Client {
    let mut backoff = BACKOFF_MIN;
    loop {
        let stats = Arc::clone(&shared.stats);
        let url = shared.config.url.clone();
        // The next client error is reported (the first after each disconnection).
        let report = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = async_nats::ConnectOptions::new()
            .name(format!(
                "netoops-collect {}",
                crate::syslog::system_hostname()
            ))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempt| {
                let ms = 50u64.saturating_mul(1 << attempt.min(16));
                Duration::from_millis(ms).min(RECONNECT_MAX)
            })
            .event_callback(move |event| {
                let stats = Arc::clone(&stats);
                let url = url.clone();
                let reported = Arc::clone(&report);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            stats.connects.fetch_add(1, Ordering::Relaxed);
                            eprintln!("netoops-collect: nats: connected to {url}");
                        }
                        async_nats::Event::Disconnected => {
                            reported.store(true, Ordering::Relaxed);
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            eprintln!(
                                "netoops-collect: nats: disconnected from {url}, reconnecting"
                            );
                        }
                        // Reported on stderr once per connection lost; counted always.
                        async_nats::Event::ClientError(e) => {
                            let n = stats.client_errors.fetch_add(1, Ordering::Relaxed);
                            if n == 0 || reported.swap(false, Ordering::Relaxed) {
                                eprintln!("netoops-collect: nats: {e}");
                            }
                        }
                        other => eprintln!("netoops-collect: nats: {other}"),
                    }
                }
            });
        let urls: Vec<async_nats::ServerAddr> = shared
            .config
            .url
            .split(',')
            .filter_map(|u| u.trim().parse().ok())
            .collect();
        // The client does not take credentials from the URL by itself: `user:password@` is a
        // user and password, `token@` a token (as the NATS tools read such URLs).
        let options = match urls
            .iter()
            .find_map(|a| a.username().map(|u| (u, a.password())))
        {
            Some((user, Some(pass))) => options.user_and_password(user.into(), pass.into()),
            Some((token, None)) => options.token(token.into()),
            None => options,
        };
        match options.connect(urls).await {
            Ok(c) => return c,
            Err(e) => {
                shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "netoops-collect: nats: {}: {e}; retrying",
                    shared.config.url
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The publisher: connects, then publishes round after round, releasing acknowledgements in
/// batch order.
async fn publisher(shared: Arc<Shared>) {
    let client = connect(&shared).await;
    let js = jetstream::ContextBuilder::new()
        .timeout(PUBLISH_TIMEOUT)
        .max_ack_inflight(IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let config = &shared.config;
    let stats = &shared.stats;
    // The stream is made (or found) now, so that a server without JetStream, or a stream that
    // cannot be created, is reported at start; publishing tries again if it fails here.
    let mut stream_ready = match ensure_stream(&js, config).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("netoops-collect: nats: {}; will try again", e.why);
            false
        }
    };
    let mut down_reported = false;
    while let Some(round) = take_round(&shared).await {
        let messages: Vec<&Message> = round.iter().flat_map(|b| &b.messages).collect();
        let mut done = vec![false; messages.len()];
        let mut backoff = BACKOFF_MIN;
        loop {
            let result = match stream_ready {
                true => Ok(()),
                false => ensure_stream(&js, config).await,
            };
            let result = match result {
                Ok(()) => {
                    stream_ready = true;
                    publish(&js, &client, config, stats, &messages, &mut done).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    if e.stream_missing {
                        stream_ready = false;
                    }
                    if !down_reported {
                        down_reported = true;
                        let left = done.iter().filter(|d| !**d).count();
                        eprintln!(
                            "netoops-collect: nats: {}: {}; {left} messages held, relays not acknowledged, retrying",
                            config.url, e.why
                        );
                    }
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let again = done.iter().filter(|d| !**d).count() as u64;
                    stats.retries.fetch_add(again, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if lock(&shared.hold).closed {
                        return;
                    }
                }
            }
        }
        if down_reported {
            down_reported = false;
            eprintln!(
                "netoops-collect: nats: stream {} acknowledging again",
                config.stream
            );
        }
        release(&shared, round);
    }
}

/// A failed publish round.
struct Failure {
    why: String,
    /// The stream is gone (deleted, or not created yet on a new server): create it again.
    stream_missing: bool,
}

async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig) -> Result<(), Failure> {
    let want = stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.prefix)],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    };
    match js.get_or_create_stream(want).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure {
            why: format!("stream {}: {e}", config.stream),
            stream_missing: true,
        }),
    }
}

/// Publishes what is not `done` yet, [`IN_FLIGHT`] at a time, marking what the stream
/// acknowledged; the first failure ends the round (what was acknowledged stays done).
async fn publish(
    js: &jetstream::Context,
    client: &async_nats::Client,
    config: &NatsConfig,
    stats: &NatsStats,
    messages: &[&Message],
    done: &mut [bool],
) -> Result<(), Failure> {
    let max_payload = client.server_info().max_payload;
    let todo: Vec<usize> = (0..messages.len()).filter(|&i| !done[i]).collect();
    for chunk in todo.chunks(IN_FLIGHT) {
        let mut failure = None;
        let mut waiting = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let m = messages[i];
            let subject = format!("{}.{}.{}", config.prefix, m.kind, m.token);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.id.as_str());
            headers.insert("Nats-Expected-Stream", config.stream.as_str());
            for (k, v) in &m.headers {
                headers.insert(*k, v.as_str());
            }
            let payload = fit(m, &mut headers, max_payload, &config.stream, stats);
            let msg = jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(payload);
            match js.send_publish(subject, msg).await {
                Ok(ack) => waiting.push((i, ack)),
                Err(e) => {
                    failure = Some(Failure {
                        why: format!("publishing: {e}"),
                        stream_missing: false,
                    });
                    break;
                }
            }
        }
        // Awaited together: each waits up to the publish timeout from now, not one after
        // the other.
        let (indices, acks): (Vec<usize>, Vec<_>) = waiting.into_iter().unzip();
        let acks = futures_util::future::join_all(
            acks.into_iter().map(std::future::IntoFuture::into_future),
        )
        .await;
        for (i, ack) in indices.into_iter().zip(acks) {
            match ack {
                Ok(a) if a.stream == config.stream => {
                    done[i] = true;
                    let c = if a.duplicate {
                        &stats.duplicates
                    } else {
                        &stats.published
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(a) => {
                    failure.get_or_insert(Failure {
                        why: format!(
                            "acknowledged by stream {:?}, not {:?}",
                            a.stream, config.stream
                        ),
                        stream_missing: false,
                    });
                }
                Err(e) => {
                    let missing = matches!(
                        e.kind(),
                        jetstream::context::PublishErrorKind::StreamNotFound
                    );
                    failure.get_or_insert(Failure {
                        why: format!("waiting for the stream's acknowledgement: {e}"),
                        stream_missing: missing,
                    });
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
    }
    Ok(())
}

/// The payload, cut to what the server takes (`max_payload` counts headers too), with
/// `Netoops-Truncated` saying the original length.
fn fit(
    m: &Message,
    headers: &mut HeaderMap,
    max_payload: usize,
    stream: &str,
    stats: &NatsStats,
) -> Bytes {
    // Headers as the protocol writes them (`NATS/1.0\r\n`, `Name: value\r\n`, `\r\n`), with
    // room for the truncation header.
    let line = |k: &str, v: &str| k.len() + v.len() + 4;
    let head: usize = 12
        + 64
        + line("Nats-Msg-Id", &m.id)
        + line("Nats-Expected-Stream", stream)
        + m.headers.iter().map(|(k, v)| line(k, v)).sum::<usize>();
    let room = max_payload.saturating_sub(head);
    if m.payload.len() <= room || max_payload == 0 {
        return m.payload.clone();
    }
    stats.truncated.fetch_add(1, Ordering::Relaxed);
    headers.insert("Netoops-Truncated", m.payload.len().to_string());
    m.payload.slice(..room)
}

/// Sends the acknowledgements of a confirmed round, in batch order.
fn release(shared: &Shared, round: Vec<Batch>) {
    let mut cost = 0;
    let mut messages = 0u64;
    for b in round {
        cost += b.cost();
        messages += b.messages.len() as u64;
        for (tie, instance, seq) in b.acks {
            shared.confirmed.raise(instance, seq);
            if let Some(tie) = tie.upgrade() {
                tie.durable(seq);
                shared.stats.acks_released.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let st = &shared.stats;
    st.held.fetch_sub(messages, Ordering::Relaxed);
    st.held_bytes.fetch_sub(cost as u64, Ordering::Relaxed);
    let mut h = lock(&shared.hold);
    h.bytes = h.bytes.saturating_sub(cost);
    drop(h);
    shared.room.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use netoops_core::upstream::{CrashSeen, DumpIdentity, DumpMeta, SourceIp};

    fn identity(ip: SourceIp) -> DumpIdentity {
        DumpIdentity {
            source: Source { ip, port: 2004 },
            version: 3,
            boot_id: 7,
            dump_id: 9,
            dump_type: 1,
        }
    }

    fn dump(revision: u32) -> RecordHeader {
        RecordHeader {
            seq: 4,
            sent_at_ms: 0,
            payload_len: 0,
            record: Record::Dump(DumpMeta {
                generation: 0,
                kernel_version: "6.1\r\nX-Evil: 1".into(),
                packet_count: 3,
                received: 3,
                missing: vec![],
                zeroed: vec![],
                complete: true,
                revision,
                first_seen_ms: 100,
                completed_ms: 200,
                ..DumpMeta::new(identity(SourceIp::V4([10, 0, 0, 7])))
            }),
        }
    }

    #[test]
    fn ids_are_the_records_identity_and_values_are_safe() {
        let a = Message::from_record("rack\n7", 0xab, &dump(1), b"text").unwrap();
        assert_eq!(a.kind, "dump");
        assert_eq!(a.token, "10_0_0_7");
        assert_eq!(
            a.id,
            "dump.10.0.0.7.2004.b7-d9-t1-v3-g0.00000000000000ab.100.r1"
        );
        // The same record again (a resend, another collector): the same id.
        let mut h = dump(1);
        h.seq = 99;
        assert_eq!(
            Message::from_record("other", 0xab, &h, b"").unwrap().id,
            a.id
        );
        // Another revision or relay instance: another message.
        assert_ne!(
            Message::from_record("r", 0xab, &dump(2), b"").unwrap().id,
            a.id
        );
        assert_ne!(
            Message::from_record("r", 0xac, &dump(1), b"").unwrap().id,
            a.id
        );
        for (k, v) in &a.headers {
            assert!(!v.chars().any(|c| c.is_control()), "{k}: {v:?}");
        }
        let get = |k: &str| a.headers.iter().find(|h| h.0 == k).map(|h| h.1.as_str());
        assert_eq!(get("Netoops-Kernel"), Some("6.1\\x0d\\x0aX-Evil: 1"));
        assert_eq!(get("Netoops-Relay"), Some("rack\\x0a7"));
        assert_eq!(get("Netoops-Key"), Some("10.0.0.7/b7-d9-t1-v3-g0"));
        assert_eq!(get("Netoops-Kind"), Some("dump"));
        assert_eq!(a.payload.as_ref(), b"text");
    }

    #[test]
    fn notices_and_v6_sources() {
        let h = RecordHeader {
            seq: 1,
            sent_at_ms: 0,
            payload_len: 0,
            record: Record::CrashSeen(CrashSeen {
                id: identity(SourceIp::V6([
                    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                ])),
                generation: 1,
                kernel_version: "k".repeat(1000),
                packet_count: 12,
                packet_no: 3,
                cpu: None,
                registers: None,
                seen_at_ms: 55,
                netconsole: None,
            }),
        };
        let m = Message::from_record("r", 1, &h, b"BUG").unwrap();
        assert_eq!(m.kind, "notice");
        assert_eq!(m.token, "fe80__1");
        assert!(token_ok(&m.token));
        assert_eq!(
            m.id,
            "notice.fe80::1.2004.b7-d9-t1-v3-g1.0000000000000001.55.3"
        );
        let kernel = &m
            .headers
            .iter()
            .find(|h| h.0 == "Netoops-Kernel")
            .unwrap()
            .1;
        assert_eq!(kernel.len(), MAX_VALUE);
        let hello = RecordHeader {
            seq: 0,
            sent_at_ms: 0,
            payload_len: 0,
            record: Record::Hello {
                protocol: 3,
                relay: "r".into(),
                instance: 1,
            },
        };
        assert!(Message::from_record("r", 1, &hello, b"").is_none());
    }

    #[test]
    fn config_is_checked() {
        assert!(NatsConfig::new("nats://127.0.0.1:4222").validate().is_ok());
        assert!(NatsConfig::new("127.0.0.1:4222,nats://b:4222")
            .validate()
            .is_ok());
        let bad = [
            NatsConfig::new(""),
            NatsConfig {
                stream: "A.B".into(),
                ..NatsConfig::new("nats://h:1")
            },
            NatsConfig {
                prefix: "netoops.*".into(),
                ..NatsConfig::new("nats://h:1")
            },
            NatsConfig {
                prefix: "a..b".into(),
                ..NatsConfig::new("nats://h:1")
            },
            NatsConfig {
                replicas: 0,
                ..NatsConfig::new("nats://h:1")
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
