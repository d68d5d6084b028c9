//! The committer: one thread that stores what every session decoded, in batches, and tells each
//! session which of its records are durable.
//!
//! Why one thread: durability costs a file system sync (see [`crate::store`]), and one sync
//! covers any number of records. Sessions hand records over through a bounded queue
//! ([`Queue`], bounded in bytes, so a fast relay is slowed by TCP backpressure instead of
//! growing memory). The committer takes everything that is queued, stores it with
//! [`Store::commit`] and only then sends each session a [`Verdict`]: the highest seq of its
//! records in the batch, now durable. The window adapts by itself: a lone record at low load is
//! taken and synced at once (no timer, no waiting for company), and under load the next batch
//! grows while the current one is syncing.
//!
//! Once a batch is durable, what it stored is also handed to the syslog output, when there is
//! one ([`crate::syslog`]): a queue that never makes the committer wait. With the NATS output
//! ([`crate::nats`]) the verdicts wait instead: the batch and its verdicts go to the publisher,
//! which sends them once JetStream has acknowledged every record of the batch (the committer
//! waits only when the publisher's bounded hold is full).
//!
//! A batch that fails (a sync, rename or append) acknowledges nothing: each session with a
//! record in it is told [`Verdict::Failed`] and answers `Refused` and closes its connection (the
//! relay backs off further on each refusal, so a full disk is not hammered); the relay reconnects
//! and resends from `Welcome.last_seq`. Records a failed session had queued after the batch are
//! dropped unapplied.
//!
//! When the queue runs empty and some relay instance's durable seq is ahead of its
//! `.relays` file, the committer writes it after [`IDLE_PERSIST`] of quiet (under load each
//! batch carries the previous batch's state).

use crate::nats::{Batch, Confirmed, Message, Nats};
use crate::session::Counters;
use crate::store::{Applied, BatchTimes, Entry, Origin, Store};
use crate::syslog::Syslog;
use netoops_core::upstream::{Record, RecordHeader};
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// Queued bytes (payloads) at most; a record bigger than this is queued alone.
pub const QUEUE_BYTES: usize = 32 << 20;
/// Quiet time before the relay state is written on its own.
pub const IDLE_PERSIST: Duration = Duration::from_millis(20);
/// Wait before trying again after the relay state could not be written.
pub const PERSIST_RETRY: Duration = Duration::from_secs(1);

/// What the committer tells a session about its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record of the session up to this seq is durable: acknowledge it.
    Durable(u64),
    /// Storing failed; nothing more of this session will be stored. Close the connection.
    Failed(String),
}

/// A session as the committer sees it.
#[derive(Debug)]
pub struct SessionTie {
    /// Where verdicts go (the session's ack writer).
    pub verdicts: Mutex<Sender<Verdict>>,
    /// Set when a batch with this session's records failed.
    pub failed: AtomicBool,
    /// Why, for the session's end.
    pub failure: Mutex<Option<String>>,
}

impl SessionTie {
    /// A tie that sends verdicts to `verdicts`.
    pub fn new(verdicts: Sender<Verdict>) -> Arc<SessionTie> {
        Arc::new(SessionTie {
            verdicts: Mutex::new(verdicts),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failure).clone()
    }

    fn fail(&self, why: &str) {
        *lock(&self.failure) = Some(why.to_string());
        self.failed.store(true, Ordering::Release);
        let _ = lock(&self.verdicts).send(Verdict::Failed(why.to_string()));
    }

    pub(crate) fn durable(&self, seq: u64) {
        let _ = lock(&self.verdicts).send(Verdict::Durable(seq));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One decoded record on its way to storage.
#[derive(Debug)]
pub struct Job {
    /// The session it came from.
    pub session: Arc<SessionTie>,
    /// The session's origin.
    pub origin: Arc<Origin>,
    /// The record.
    pub header: RecordHeader,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Collector wall clock at arrival, ms.
    pub arrival_wall_ms: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    jobs: Vec<Job>,
    bytes: usize,
    closed: bool,
}

/// The bounded hand-over from sessions to the committer.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    room: Condvar,
    cap: usize,
    /// With the NATS output: what the stream confirmed, which bounds `Welcome`.
    confirmed: Option<Arc<Confirmed>>,
}

impl Queue {
    /// A queue holding at most `cap` payload bytes (one bigger record alone).
    pub fn new(cap: usize) -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            cap,
            confirmed: None,
        })
    }

    /// As [`Queue::new`], for a committer whose acknowledgements also wait for NATS: the
    /// seq a `Welcome` reports is bounded by what the stream confirmed ([`crate::nats`]).
    pub fn with_confirmed(cap: usize, confirmed: Arc<Confirmed>) -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            cap,
            confirmed: Some(confirmed),
        })
    }

    /// The seq `Welcome` reports for a relay instance whose durable seq is `durable`: that,
    /// or less when the NATS stream has not confirmed as much (the relay resends the rest;
    /// the store answers it as replays and it is published again).
    pub fn welcome_seq(&self, instance: u64, durable: u64) -> u64 {
        match &self.confirmed {
            Some(c) => durable.min(c.get(instance)),
            None => durable,
        }
    }

    /// Queues a job, waiting for room; gives it back if the committer is gone.
    pub fn push(&self, job: Job) -> Result<(), Box<Job>> {
        let len = job.payload.len();
        let mut s = lock(&self.state);
        while !s.closed && s.bytes > 0 && s.bytes + len > self.cap {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.closed {
            return Err(Box::new(job));
        }
        s.bytes += len;
        s.jobs.push(job);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Everything queued; waits up to `wait` for the first job (forever with `None`).
    fn take(&self, wait: Option<Duration>) -> (Vec<Job>, bool) {
        let mut s = lock(&self.state);
        while s.jobs.is_empty() && !s.closed {
            match wait {
                None => s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(w) => {
                    let (g, timeout) = self
                        .ready
                        .wait_timeout(s, w)
                        .unwrap_or_else(|p| p.into_inner());
                    s = g;
                    if timeout.timed_out() {
                        break;
                    }
                }
            }
        }
        let jobs = std::mem::take(&mut s.jobs);
        s.bytes = 0;
        let closed = s.closed;
        drop(s);
        self.room.notify_all();
        (jobs, closed)
    }

    /// Stops the committer once the queue is drained; later pushes fail.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

/// Where durable records go besides the disk.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Every stored record is also queued for syslog (after the batch is durable, never
    /// waiting for the sender).
    pub syslog: Option<Arc<Syslog>>,
    /// Every stored (or replayed) record is published to NATS JetStream, and the batch's
    /// verdicts wait for the stream's acknowledgements.
    pub nats: Option<Arc<Nats>>,
}

/// Starts the committer thread.
pub fn spawn(
    store: Arc<Store>,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    outputs: Outputs,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("netoops-commit".into())
        .spawn(move || run(&store, &queue, &counters, &outputs))
}

/// The committer loop; returns when the queue is closed and drained.
pub fn run(store: &Store, queue: &Queue, counters: &Counters, outputs: &Outputs) {
    let mut out = Vec::<u8>::with_capacity(64 * 1024);
    // After a failed state write, wait longer before the next try (no busy error loop).
    let mut idle = IDLE_PERSIST;
    loop {
        let wait = store.state_behind().then_some(idle);
        let (jobs, closed) = queue.take(wait);
        if jobs.is_empty() {
            if closed {
                return;
            }
            match store.persist_state() {
                Ok(()) => idle = IDLE_PERSIST,
                Err(e) => {
                    Counters::bump(&counters.errors);
                    eprintln!("netoops-collect: writing relay state: {e}");
                    idle = PERSIST_RETRY;
                }
            }
            continue;
        }
        commit_batch(store, jobs, counters, outputs, &mut out);
        if !out.is_empty() {
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
            out.clear();
        }
    }
}

/// Stores one batch and sends every session its verdict (through NATS, when it is on). Lines
/// for stdout go to `out`; what was stored is queued for syslog once the batch is durable.
pub fn commit_batch(
    store: &Store,
    jobs: Vec<Job>,
    counters: &Counters,
    outputs: &Outputs,
    out: &mut Vec<u8>,
) {
    let syslog = outputs.syslog.as_deref();
    let mut published = outputs.nats.as_ref().map(|_| Batch::default());
    // Records a failed session queued after its failure are not stored.
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| !j.session.failed.load(Ordering::Acquire))
        .collect();
    if jobs.is_empty() {
        return;
    }
    let entries: Vec<Entry<'_>> = jobs
        .iter()
        .map(|j| Entry {
            origin: &j.origin,
            header: &j.header,
            payload: &j.payload,
            arrival_wall_ms: j.arrival_wall_ms,
        })
        .collect();
    let (results, times) = store.commit(&entries);
    // `commit` returns once the batch is durable (or failed): from here on, what it stored
    // may be told.
    let durable_at = syslog.map(|_| crate::wallclock::now_ms());
    // Per session (by address of its tie): highest durable seq, or the first failure.
    // (A session has one origin: its instance goes with the verdict, for NATS.)
    let mut verdicts: HashMap<*const SessionTie, Pending<'_>> = HashMap::new();
    let mut failures = 0usize;
    for (job, result) in jobs.iter().zip(&results) {
        let v = verdicts.entry(Arc::as_ptr(&job.session)).or_insert((
            &job.session,
            job.origin.instance,
            Ok(0),
        ));
        match (result, &mut v.2) {
            (Ok(applied), Ok(seq)) => {
                *seq = (*seq).max(job.header.seq);
                count(job, applied, counters, out);
                if let (Some(s), Some(at)) = (syslog, durable_at) {
                    s.stored(&job.origin, &job.header, &job.payload, applied, at);
                }
                // Replays too: the stream may not have them (module doc of `nats`).
                if let Some(b) = &mut published {
                    let o = &job.origin;
                    b.messages.extend(Message::from_record(
                        &o.relay,
                        o.instance,
                        &job.header,
                        &job.payload,
                    ));
                }
            }
            (Err(why), slot @ Ok(_)) => {
                failures += 1;
                *slot = Err(why.clone());
            }
            (_, Err(_)) => {}
        }
    }
    for (tie, instance, v) in verdicts.into_values() {
        match (v, &mut published) {
            (Ok(seq), None) => tie.durable(seq),
            (Ok(seq), Some(b)) => b.acks.push((Arc::downgrade(tie), instance, seq)),
            (Err(why), _) => tie.fail(&why),
        }
    }
    if let (Some(b), Some(nats)) = (published, &outputs.nats) {
        if !b.messages.is_empty() || !b.acks.is_empty() {
            nats.submit(b);
        }
    }
    if failures > 0 {
        eprintln!(
            "netoops-collect: a batch of {} records failed for {failures} sessions",
            jobs.len()
        );
    }
    note_profile(&times, jobs.len());
}

/// A session's verdict being gathered: its tie, its relay instance, the highest durable seq
/// or the first failure.
type Pending<'a> = (&'a Arc<SessionTie>, u64, Result<u64, String>);

/// Counters, and the stdout line of a stored dump (buffered per batch).
fn count(job: &Job, applied: &Applied, counters: &Counters, out: &mut Vec<u8>) {
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
            if !*written {
                return;
            }
            Counters::bump(&counters.dumps_stored);
            if let Record::Dump(d) = &job.header.record {
                let state = if d.complete { "complete" } else { "partial" };
                let _ = writeln!(
                    out,
                    "stored {ip_dir}/{key} rev {} {state} {}/{} packets, {} (relay {} seq {})",
                    d.revision,
                    d.received,
                    d.packet_count,
                    crate::catalog::terminal_safe(&d.kernel_version, false),
                    crate::catalog::terminal_safe(&job.origin.relay, false),
                    job.header.seq
                );
            }
        }
    }
}

/// With `NETOOPS_COLLECT_PROFILE` set, where each batch's time went, on stderr.
fn note_profile(times: &BatchTimes, records: usize) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("NETOOPS_COLLECT_PROFILE").is_some()) {
        eprintln!(
            "netoops-collect: batch {records} records: write {:?} (plan {:?}) sync1 {:?} \
             publish {:?} sync2 {:?}",
            times.write, times.plan, times.sync1, times.publish, times.sync2
        );
    }
}
