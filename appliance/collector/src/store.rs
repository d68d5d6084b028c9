//! Durable storage of what relays send, and the replay protection that makes resends harmless.
//!
//! Layout under the storage directory:
//!
//! ```text
//! DIR/<ip>/<dump-key>.log     dump text exactly as received
//! DIR/<ip>/<dump-key>.json    dump metadata (source, ids, packets, missing ranges, times, relay, ...)
//! DIR/<ip>/crashes.jsonl      one JSON line per CrashSeen record (with relay_instance, seq, text)
//! DIR/.relays/<instance>      a seq of that relay instance below which everything is durable
//! ```
//!
//! `<ip>` is the source address without the port (IPv6 `:` become `_`); `<dump-key>` is
//! `b<boot_id>-d<dump_id>-t<type>-v<version>-g<generation>` for netoops and
//! `nc-b<boot>-c<crash>` for netconsole (metadata `"kind"` says which), with `-o<n>` appended when a
//! different occurrence (another relay instance or first-seen time) already holds that key, so
//! a machine that crashes again at the same uptime second after a reboot is not overwritten.
//!
//! # Group commit
//!
//! Records are stored in batches ([`Store::commit`]): everything that arrived while the previous
//! batch was being made durable. A batch costs two file system syncs, however many records it
//! holds, instead of four fsyncs per dump:
//!
//! 1. every new dump's `.log` is written in place (nothing refers to it yet), a newer revision
//!    of a stored dump (its `.log` and `.json`) to temporary files (hidden, `.part`) in its
//!    source directory, and the replay state of the *previous* batch to temporary files
//!    under `.relays`; no per-file sync. These writes run on a few threads, because creating
//!    the files is most of a batch's time: allocating an inode may read bitmaps and inode
//!    tables from disk, and on ext4 without a journal it steps over every inode freed in the
//!    last minute, in the kernel, on the CPU (measured: 85% of the collector's CPU under load
//!    on the build machine); threads keep both the cores and the disk busy;
//! 2. **sync 1** makes all of that data, and new source directories, durable;
//! 3. replaced `.log` files are renamed into place and synced (only in batches that replace a
//!    dump); then each crash notice line is appended to its `crashes.jsonl`, in program order
//!    (seq order per relay instance), and each dump's `.json` put in place, on the writer
//!    threads: a new dump's written at its name, a newer revision's temporary renamed over the
//!    stored one (a crash before the next sync has the relay resend, and re-applying a dump
//!    rewrites the same files, so their order does not matter); then the `.relays`
//!    temporaries are renamed;
//! 4. **sync 2** makes the `.json` files, renames and appended lines durable; only then is the
//!    batch reported durable, and acknowledged by the sessions.
//!
//! The sync is `syncfs(2)` on the storage directory ([`SyncFs`]): one call writes back every
//! dirty page and inode of the file system (and commits its journal, if it has one) once,
//! where an `fsync` per file would do that, and flush the disk cache, once per file. The
//! trade-off: `syncfs` also writes back other processes' dirty data on the same file system,
//! so a busy neighbour (a build, a copy) lengthens our syncs; put the storage directory on a
//! file system of its own to keep them short. The sync goes through the [`Syncer`] trait so
//! that a test can make it fail.
//!
//! Crash safety: a `.json` is written or renamed only after its `.log` is durable (sync 1, or
//! the sync after a replaced `.log`'s rename), so a `.json` never describes text that is not
//! there, on any file system, journaled or not (the build machine's ext4 has no journal). A
//! stored (acknowledged) `.json` is only ever replaced by a rename, so it is never torn. A new
//! dump's `.json` is written in place, so until sync 2 (and after a crash before it, until the
//! relay resends) it can be empty or cut short: readers take a `.json` that does not parse as
//! a dump not stored yet ([`crate::catalog`], [`crate::watch`], the web view and the index
//! skip it and look again later), and so does key resolution here. Writing it under a
//! temporary name and renaming it would cost every new dump a directory entry and a rename
//! more, which shows in a storm of new machines (`netoops-bench collector`, see the README).
//! A newer
//! revision of a dump replaces an older one, never the reverse (checked against the stored
//! `.json` and against dumps earlier in the same batch).
//!
//! # Replay protection
//!
//! Records of one relay instance are applied strictly in seq order. `DIR/.relays/<instance>`
//! holds a seq `P` such that every record up to `P` is durable: it is written with the seqs the
//! previous batch made durable, and renamed in the next batch's step 3 (or, when no batch
//! follows, by [`Store::persist`] once the queue is idle), so it never gets ahead of the
//! records. A record at or below the instance's applied seq is a replay: nothing is written.
//!
//! After a crash or power cut the relay resends everything above `Welcome.last_seq`. Re-applying
//! a dump rewrites the same files (idempotent). A crash notice line is not idempotent, and within
//! a batch a line of seq 10 can be durable while the dump of seq 9 is not, so the highest seq in
//! `crashes.jsonl` is *not* taken as applied: [`Store::open`] scans the crash logs (streaming)
//! and remembers which `(relay_instance, seq)` lines exist above `P`; a resent crash notice
//! found there is not appended again, while everything else above `P` is applied. A torn last
//! line (a crash mid-append, never acknowledged) is cut off, and the file system is synced once
//! before the first session, so that everything found on disk is durable before it is relied on.
//!
//! A failed batch (a failed sync, rename or append) acknowledges nothing: the in-memory applied
//! seqs fall back to the durable ones, temporary files are removed and appended lines are cut
//! off again, so a resend stores each record exactly once. If even that cut fails, the store
//! refuses every later batch with a clear error until the collector is restarted (its startup
//! scan then finds out what is there).

use crate::wallclock::rfc3339;
use netoops_core::upstream::record::{relay_to_wall_ms, RegisterSet};
use netoops_core::upstream::{
    ConsoleMeta, Cpu, CrashSeen, DumpIdentity, DumpMeta, Record, RecordHeader, Source, SourceIp,
};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Name of the per-source crash notice log.
pub const CRASHES_FILE: &str = "crashes.jsonl";
/// Directory of per-relay-instance replay state.
pub const RELAYS_DIR: &str = ".relays";
const TMP_PREFIX: &str = ".tmp-";

/// Makes everything written so far on the storage directory's file system durable.
pub trait Syncer: Send + Sync + fmt::Debug {
    /// Syncs the file system that holds `dir` (an open directory).
    fn sync(&self, dir: &File) -> io::Result<()>;
}

/// `syncfs(2)`: one write-back and journal commit for the whole file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncFs;

impl Syncer for SyncFs {
    fn sync(&self, dir: &File) -> io::Result<()> {
        // SAFETY: `dir` is an open file descriptor for the duration of the call; syncfs reads
        // nothing from our memory.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Who sent a record: from the session's `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Relay name.
    pub relay: String,
    /// Relay instance (boot).
    pub instance: u64,
}

/// What storing one record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Seq already applied for this instance (or, after a restart, its crash notice line is
    /// already in the log): nothing written.
    Replay,
    /// A crash notice line was appended to `DIR/<ip_dir>/crashes.jsonl`.
    Crash {
        /// Source directory name.
        ip_dir: String,
    },
    /// A dump was stored as `DIR/<ip_dir>/<key>.{log,json}` (or kept, if a newer revision is
    /// already there).
    Dump {
        /// Source directory name.
        ip_dir: String,
        /// Dump key.
        key: String,
        /// False when a newer revision was already stored.
        written: bool,
    },
}

/// One record of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The session's origin.
    pub origin: &'a Origin,
    /// The record's header.
    pub header: &'a RecordHeader,
    /// Its payload.
    pub payload: &'a [u8],
    /// Collector wall clock at arrival, ms (for the relay-to-wall time conversion).
    pub arrival_wall_ms: u64,
}

/// Where one batch's time went (`NETOOPS_COLLECT_PROFILE` prints it per batch).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchTimes {
    /// Building metadata and choosing the files (part of `write`, on the committer alone).
    pub plan: Duration,
    /// Writing temporary files and building metadata.
    pub write: Duration,
    /// Sync 1.
    pub sync1: Duration,
    /// Renames and appends (with the extra sync of replaced `.log` files).
    pub publish: Duration,
    /// Sync 2.
    pub sync2: Duration,
}

/// Replay state of one relay instance.
#[derive(Debug, Default)]
struct Instance {
    relay: String,
    /// Highest seq applied (durable once the batch holding it is).
    applied: u64,
    /// Highest seq made durable by a finished batch.
    durable: u64,
    /// The seq in `.relays/<instance>` on disk.
    persisted: u64,
    /// Crash notice lines found in the logs above `persisted` at startup.
    present: BTreeSet<u64>,
}

#[derive(Debug)]
struct Inner {
    instances: HashMap<u64, Instance>,
    /// Source directories known to exist.
    sources: HashSet<String>,
    /// Set when a failed batch could not be undone.
    poisoned: Option<String>,
}

/// The collector's storage directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    root: File,
    syncer: Arc<dyn Syncer>,
    inner: Mutex<Inner>,
    /// Durable seq per instance, for `Welcome` (read without waiting for a batch).
    durable: Mutex<HashMap<u64, u64>>,
}

/// Unique temp file names within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A dump planned in a batch: its temporaries and final names.
struct PlannedDump {
    dir: PathBuf,
    key: String,
    /// The `.log`'s temporary when it replaces a stored one; `None` when it is new and was
    /// written in place (no `.json` refers to it before the batch's first sync made it durable).
    tmp_log: Option<PathBuf>,
    json: JsonWrite,
}

/// How step 3 puts a dump's `.json` in place.
enum JsonWrite {
    /// A new dump (no `.json` holds its key): written at its final name in step 3. No
    /// temporary and no rename: a file system operation less per dump, and the dearest part of
    /// a crash storm is the file system work per dump (see the module documentation).
    New(Vec<u8>),
    /// A newer revision of a stored dump: its temporary, renamed over the stored `.json` in
    /// step 3, so that a crash never leaves a stored dump's metadata torn.
    Replace(PathBuf),
}

impl PlannedDump {
    /// Removes what step 1 wrote under temporary names (a failed batch).
    fn remove_temporaries(&self) {
        if let Some(t) = &self.tmp_log {
            let _ = fs::remove_file(t);
        }
        if let JsonWrite::Replace(t) = &self.json {
            let _ = fs::remove_file(t);
        }
    }
}

/// What step 3 does for one entry.
enum Publish {
    Nothing,
    Dump(PlannedDump),
    Crash { path: PathBuf, line: Vec<u8> },
}

/// An earlier dump of the same batch, for key resolution.
struct PendingDump {
    instance: u64,
    first_seen_ms: u64,
    revision: u32,
}

impl Store {
    /// Opens (creating if needed) a storage directory with [`SyncFs`].
    pub fn open(dir: &Path) -> io::Result<Store> {
        Store::open_with(dir, Arc::new(SyncFs))
    }

    /// Opens a storage directory, recovers the replay state and syncs the file system once.
    pub fn open_with(dir: &Path, syncer: Arc<dyn Syncer>) -> io::Result<Store> {
        fs::create_dir_all(dir.join(RELAYS_DIR))?;
        let mut instances: HashMap<u64, Instance> = HashMap::new();
        for entry in fs::read_dir(dir.join(RELAYS_DIR))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(instance) = u64::from_str_radix(&name, 16) else {
                continue;
            };
            // A state file is a line the collector wrote; read no more than that much of one
            // (a larger file is not ours and does not parse).
            let mut bytes = Vec::new();
            File::open(entry.path())?
                .take(RELAY_STATE_MAX)
                .read_to_end(&mut bytes)?;
            let text = String::from_utf8_lossy(&bytes);
            if let Some(seq) = parse_relay_state(&text) {
                let i = instances.entry(instance).or_default();
                i.relay = parse_relay_name(&text);
                i.persisted = seq;
                i.durable = seq;
                i.applied = seq;
            }
        }
        let mut sources = HashSet::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_dir() || name.starts_with('.') {
                continue;
            }
            remove_temp_files(&entry.path())?;
            let crashes = entry.path().join(CRASHES_FILE);
            if crashes.exists() {
                scan_crash_log(&crashes, |instance, seq| {
                    let persisted = instances.get(&instance).map_or(0, |i| i.persisted);
                    if seq > persisted {
                        instances.entry(instance).or_default().present.insert(seq);
                    }
                })?;
            }
            sources.insert(name);
        }
        let root = File::open(dir)?;
        // What a killed collector left in the page cache is visible but maybe not durable:
        // make it durable before anything found here is relied on.
        syncer.sync(&root)?;
        let durable = instances.iter().map(|(&k, i)| (k, i.durable)).collect();
        Ok(Store {
            dir: dir.to_path_buf(),
            root,
            syncer,
            inner: Mutex::new(Inner {
                instances,
                sources,
                poisoned: None,
            }),
            durable: Mutex::new(durable),
        })
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest seq durably applied for a relay instance (0: none): what `Welcome` reports.
    pub fn last_applied(&self, instance: u64) -> u64 {
        let durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        durable.get(&instance).copied().unwrap_or(0)
    }

    /// Applies one record durably (a batch of one). Returns only once it is on disk.
    pub fn apply(
        &self,
        origin: &Origin,
        header: &RecordHeader,
        payload: &[u8],
        arrival_wall_ms: u64,
    ) -> io::Result<Applied> {
        let entry = Entry {
            origin,
            header,
            payload,
            arrival_wall_ms,
        };
        let (mut out, _) = self.commit(&[entry]);
        out.pop()
            .unwrap_or_else(|| Err("empty batch".to_string()))
            .map_err(io::Error::other)
    }

    /// Whether some instance's durable seq is ahead of its `.relays` file.
    pub fn state_behind(&self) -> bool {
        self.inner()
            .instances
            .values()
            .any(|i| i.durable > i.persisted)
    }

    /// Writes `.relays/<instance>` for every instance whose durable seq moved on since, with a
    /// sync before and after the renames (the idle path; under load the next batch carries the
    /// state). `_origin` is unused: every instance is persisted.
    pub fn persist(&self, _origin: &Origin) -> io::Result<()> {
        self.persist_state()
    }

    /// See [`Store::persist`].
    pub fn persist_state(&self) -> io::Result<()> {
        let mut inner = self.inner();
        if let Some(p) = &inner.poisoned {
            return Err(io::Error::other(p.clone()));
        }
        let state = self.write_state_temps(&inner)?;
        if state.is_empty() {
            return Ok(());
        }
        let result = self
            .syncer
            .sync(&self.root)
            .and_then(|()| self.rename_state(&state))
            .and_then(|()| self.syncer.sync(&self.root));
        if let Err(e) = result {
            for (_, tmp, _) in &state {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        mark_persisted(&mut inner, &state);
        Ok(())
    }

    /// Stores a batch: per entry what was done, or why it failed (nothing of a failed entry is
    /// acknowledged). Entries of one relay instance must come in the order they arrived.
    /// An entry fails alone (with the later entries of its instance) when its files cannot be
    /// written; the whole batch fails when a sync, rename or append fails.
    pub fn commit(&self, entries: &[Entry<'_>]) -> (Vec<Result<Applied, String>>, BatchTimes) {
        let mut times = BatchTimes::default();
        let mut inner = self.inner();
        if let Some(p) = &inner.poisoned {
            let p = p.clone();
            return (entries.iter().map(|_| Err(p.clone())).collect(), times);
        }
        let t = Instant::now();
        let mut out: Vec<Result<Applied, String>> = Vec::with_capacity(entries.len());
        let mut publish: Vec<Publish> = Vec::with_capacity(entries.len());
        let mut tasks: Vec<(usize, Task<'_>)> = Vec::new();
        let mut failed: HashMap<u64, String> = HashMap::new();
        let mut start: HashMap<u64, u64> = HashMap::new();
        let mut pending: HashMap<(String, String), PendingDump> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let instance = e.origin.instance;
            start
                .entry(instance)
                .or_insert_with(|| inner.instances.get(&instance).map_or(0, |i| i.applied));
            if let Some(why) = failed.get(&instance) {
                out.push(Err(why.clone()));
                publish.push(Publish::Nothing);
                continue;
            }
            match self.plan(&mut inner, e, &mut pending) {
                Ok((applied, p, task)) => {
                    out.push(Ok(applied));
                    publish.push(p);
                    if let Some(task) = task {
                        tasks.push((i, task));
                    }
                }
                Err(err) => {
                    let why = format!("storing seq {}: {err}", e.header.seq);
                    failed.insert(instance, why.clone());
                    out.push(Err(why));
                    publish.push(Publish::Nothing);
                }
            }
        }
        times.plan = t.elapsed();
        // The files, written in parallel: creating them is most of a batch's time (inode
        // allocation, see the module documentation).
        let results = run_tasks(&tasks);
        let mut task_error: HashMap<usize, io::Error> = HashMap::new();
        for ((i, task), r) in tasks.iter().zip(results) {
            match r {
                Ok(()) => {
                    if let Some(dir) = &task.mkdir {
                        if let Some(name) = dir.file_name() {
                            inner.sources.insert(name.to_string_lossy().into_owned());
                        }
                    }
                }
                Err(e) => {
                    task_error.insert(*i, e);
                }
            }
        }
        if !task_error.is_empty() {
            // An entry whose files could not be written fails with every later entry of its
            // relay instance (applied strictly in order); the rest of the batch goes on.
            let mut good = start.clone();
            let mut failed_now: HashMap<u64, String> = HashMap::new();
            for (i, e) in entries.iter().enumerate() {
                let instance = e.origin.instance;
                let why = match (failed_now.get(&instance), task_error.remove(&i)) {
                    (Some(why), _) => Some(why.clone()),
                    (None, Some(err)) => {
                        let why = format!("storing seq {}: {err}", e.header.seq);
                        failed_now.insert(instance, why.clone());
                        Some(why)
                    }
                    (None, None) => None,
                };
                match why {
                    Some(why) => {
                        if let Publish::Dump(d) =
                            std::mem::replace(&mut publish[i], Publish::Nothing)
                        {
                            d.remove_temporaries();
                        }
                        out[i] = Err(why);
                    }
                    None => {
                        if out[i].is_ok() {
                            let g = good.entry(instance).or_insert(0);
                            *g = (*g).max(e.header.seq);
                        }
                    }
                }
            }
            for k in failed_now.keys() {
                if let (Some(inst), Some(&g)) = (inner.instances.get_mut(k), good.get(k)) {
                    inst.applied = g;
                }
            }
        }
        let state = match self.write_state_temps(&inner) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("writing relay state: {e}");
                self.fail_batch(&mut inner, &publish, &[], &[], &why);
                return (entries.iter().map(|_| Err(why.clone())).collect(), times);
            }
        };
        times.write = t.elapsed();
        let t = Instant::now();
        if let Err(e) = self.syncer.sync(&self.root) {
            times.sync1 = t.elapsed();
            let why = format!("sync of the written files failed: {e}");
            self.fail_batch(&mut inner, &publish, &state, &[], &why);
            return (entries.iter().map(|_| Err(why.clone())).collect(), times);
        }
        times.sync1 = t.elapsed();
        let t = Instant::now();
        let mut appended: Vec<(PathBuf, u64)> = Vec::new();
        if let Err(e) = self.publish(&publish, &state, &mut appended) {
            times.publish = t.elapsed();
            let why = format!("publishing the batch failed: {e}");
            self.fail_batch(&mut inner, &publish, &state, &appended, &why);
            return (entries.iter().map(|_| Err(why.clone())).collect(), times);
        }
        times.publish = t.elapsed();
        let t = Instant::now();
        if let Err(e) = self.syncer.sync(&self.root) {
            times.sync2 = t.elapsed();
            let why = format!("sync of the batch failed: {e}");
            self.fail_batch(&mut inner, &[], &[], &appended, &why);
            return (entries.iter().map(|_| Err(why.clone())).collect(), times);
        }
        times.sync2 = t.elapsed();
        mark_persisted(&mut inner, &state);
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        for (&k, i) in inner.instances.iter_mut() {
            if i.applied > i.durable {
                i.durable = i.applied;
                durable.insert(k, i.durable);
            }
        }
        (out, times)
    }

    /// Step 1 for one entry: replay check, key resolution, temporary files.
    fn plan<'a>(
        &self,
        inner: &mut Inner,
        e: &Entry<'a>,
        pending: &mut HashMap<(String, String), PendingDump>,
    ) -> io::Result<(Applied, Publish, Option<Task<'a>>)> {
        let origin = e.origin;
        let seq = e.header.seq;
        let (applied, present) = {
            let inst = inner.instances.entry(origin.instance).or_default();
            if inst.relay != origin.relay {
                inst.relay.clone_from(&origin.relay);
            }
            (inst.applied, inst.present.contains(&seq))
        };
        if seq <= applied {
            return Ok((Applied::Replay, Publish::Nothing, None));
        }
        let wall = |t: u64| rfc3339(relay_to_wall_ms(e.arrival_wall_ms, e.header.sent_at_ms, t));
        let result = match &e.header.record {
            Record::Hello { .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "Hello is not a storable record",
                ))
            }
            Record::CrashSeen(c) => {
                if present {
                    // Its line survived a crash of the collector: not appended twice.
                    if let Some(inst) = inner.instances.get_mut(&origin.instance) {
                        inst.applied = seq;
                    }
                    return Ok((Applied::Replay, Publish::Nothing, None));
                }
                let ip_dir = ip_dir_name(&c.id.source.ip);
                let line = crash_line(origin, seq, c, e.payload, &wall);
                let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
                text.push(b'\n');
                let (dir, mkdir) = self.source_dir(inner, &ip_dir);
                (
                    Applied::Crash { ip_dir },
                    Publish::Crash {
                        path: dir.join(CRASHES_FILE),
                        line: text,
                    },
                    mkdir.map(|m| Task {
                        mkdir: Some(m),
                        files: Vec::new(),
                    }),
                )
            }
            Record::Dump(d) => {
                let ip_dir = ip_dir_name(&d.id.source.ip);
                let (dir, mkdir) = self.source_dir(inner, &ip_dir);
                // A directory not created yet holds no dump.
                let key = if mkdir.is_some() {
                    resolve_key(None, &ip_dir, d, origin, pending)?
                } else {
                    resolve_key(Some(&dir), &ip_dir, d, origin, pending)?
                };
                match key {
                    None => (
                        Applied::Dump {
                            ip_dir,
                            key: String::new(),
                            written: false,
                        },
                        Publish::Nothing,
                        mkdir.map(|m| Task {
                            mkdir: Some(m),
                            files: Vec::new(),
                        }),
                    ),
                    Some((key, replacing)) => {
                        let meta = dump_json(origin, seq, &key, d, e.payload, &wall);
                        let mut json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
                        json.push(b'\n');
                        let tmp_log = replacing.then(|| dir.join(temp_name(&format!("{key}.log"))));
                        let log_path = tmp_log
                            .clone()
                            .unwrap_or_else(|| dir.join(format!("{key}.log")));
                        pending.insert(
                            (ip_dir.clone(), key.clone()),
                            PendingDump {
                                instance: origin.instance,
                                first_seen_ms: d.first_seen_ms,
                                revision: d.revision,
                            },
                        );
                        let (json, files) = if replacing {
                            let tmp_json = dir.join(temp_name(&format!("{key}.json")));
                            let files = vec![
                                (log_path, Cow::Borrowed(e.payload), false),
                                (tmp_json.clone(), Cow::Owned(json), false),
                            ];
                            (JsonWrite::Replace(tmp_json), files)
                        } else {
                            let files = vec![(log_path, Cow::Borrowed(e.payload), true)];
                            (JsonWrite::New(json), files)
                        };
                        let task = Task { mkdir, files };
                        (
                            Applied::Dump {
                                ip_dir,
                                key: key.clone(),
                                written: true,
                            },
                            Publish::Dump(PlannedDump {
                                dir,
                                key,
                                tmp_log,
                                json,
                            }),
                            Some(task),
                        )
                    }
                }
            }
        };
        if let Some(inst) = inner.instances.get_mut(&origin.instance) {
            inst.applied = seq;
        }
        Ok(result)
    }

    /// Step 3: the crash notice lines (in program order: each file's lines in seq order), the
    /// `.json` renames, then the relay state renames.
    ///
    /// A `.log` that replaces a stored one (a newer revision) is renamed first and synced on
    /// its own before any `.json`: that ordering then holds on any file system, journaled or
    /// not, at the price of a third sync in batches that replace a dump. A new dump's `.log`
    /// was written in place and is durable since the first sync.
    fn publish(
        &self,
        publish: &[Publish],
        state: &[(u64, PathBuf, u64)],
        appended: &mut Vec<(PathBuf, u64)>,
    ) -> io::Result<()> {
        let mut replaced = false;
        for p in publish {
            if let Publish::Dump(PlannedDump {
                dir,
                key,
                tmp_log: Some(tmp),
                ..
            }) = p
            {
                fs::rename(tmp, dir.join(format!("{key}.log")))?;
                replaced = true;
            }
        }
        if replaced {
            self.syncer.sync(&self.root)?;
        }
        let mut open: HashMap<&Path, File> = HashMap::new();
        for p in publish {
            match p {
                Publish::Nothing | Publish::Dump(_) => {}
                Publish::Crash { path, line } => {
                    if !open.contains_key(path.as_path()) {
                        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
                        let len = f.seek(SeekFrom::End(0))?;
                        appended.push((path.clone(), len));
                        open.insert(path.as_path(), f);
                    }
                    if let Some(f) = open.get_mut(path.as_path()) {
                        f.write_all(line)?;
                    }
                }
            }
        }
        // The `.json` files go in place in parallel: each is one dump's and independent of the
        // others (the batch is acknowledged only after the sync that follows, and a crash
        // before it has the relay resend, which rewrites the same files). Writes and renames
        // to the same name (two revisions of one dump in this batch) stay in order, in one
        // group.
        let mut groups: Vec<Vec<(&JsonWrite, PathBuf)>> = Vec::new();
        let mut group_of: HashMap<PathBuf, usize> = HashMap::new();
        for p in publish {
            if let Publish::Dump(d) = p {
                let to = d.dir.join(format!("{}.json", d.key));
                let g = *group_of.entry(to.clone()).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                if let Some(group) = groups.get_mut(g) {
                    group.push((&d.json, to));
                }
            }
        }
        let placed = in_parallel(&groups, |group| {
            group.iter().try_for_each(|(json, to)| match json {
                JsonWrite::New(bytes) => fs::write(to, bytes),
                JsonWrite::Replace(tmp) => fs::rename(tmp, to),
            })
        });
        placed.into_iter().collect::<io::Result<()>>()?;
        self.rename_state(state)
    }

    /// Undoes what can be undone of a failed batch and forgets what it applied.
    fn fail_batch(
        &self,
        inner: &mut Inner,
        publish: &[Publish],
        state: &[(u64, PathBuf, u64)],
        appended: &[(PathBuf, u64)],
        why: &str,
    ) {
        for p in publish {
            if let Publish::Dump(d) = p {
                d.remove_temporaries();
            }
        }
        for (_, tmp, _) in state {
            let _ = fs::remove_file(tmp);
        }
        for (path, len) in appended {
            let cut = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(*len));
            if let Err(e) = cut {
                inner.poisoned = Some(format!(
                    "a failed batch ({why}) left lines in {} that could not be cut off ({e}); \
                     restart the collector",
                    path.display()
                ));
            }
        }
        for i in inner.instances.values_mut() {
            i.applied = i.durable;
        }
    }

    /// Temporaries for `.relays/<instance>` of every instance whose durable seq is ahead of
    /// the file: (instance, temp path, seq).
    fn write_state_temps(&self, inner: &Inner) -> io::Result<Vec<(u64, PathBuf, u64)>> {
        let dir = self.dir.join(RELAYS_DIR);
        let mut out = Vec::new();
        for (&k, i) in &inner.instances {
            if i.durable <= i.persisted {
                continue;
            }
            let text = format!(
                "last_seq {}\nrelay {}\n",
                i.durable,
                i.relay.replace(['\n', '\r'], " ")
            );
            let tmp = dir.join(temp_name(&format!("{k:016x}")));
            if let Err(e) = write_new(&tmp, text.as_bytes()) {
                let _ = fs::remove_file(&tmp);
                for (_, t, _) in &out {
                    let _ = fs::remove_file(t);
                }
                return Err(e);
            }
            out.push((k, tmp, i.durable));
        }
        Ok(out)
    }

    fn rename_state(&self, state: &[(u64, PathBuf, u64)]) -> io::Result<()> {
        let dir = self.dir.join(RELAYS_DIR);
        for (k, tmp, _) in state {
            fs::rename(tmp, dir.join(format!("{k:016x}")))?;
        }
        Ok(())
    }

    /// A source directory's path, and the path again when it must be created first (it is
    /// made durable by the batch's first sync, before anything is renamed into it).
    fn source_dir(&self, inner: &Inner, ip_dir: &str) -> (PathBuf, Option<PathBuf>) {
        let path = self.dir.join(ip_dir);
        let create = (!inner.sources.contains(ip_dir)).then(|| path.clone());
        (path, create)
    }
}

/// The files one entry writes before the first sync.
struct Task<'a> {
    /// Create this directory first (idempotent: another task may create it too).
    mkdir: Option<PathBuf>,
    /// (path, bytes, in place): a temporary is created new; a new dump's `.log` is written in
    /// place (created, or truncated when an earlier unacknowledged attempt left one).
    files: Vec<(PathBuf, Cow<'a, [u8]>, bool)>,
}

/// Threads for a batch's file work, its writes and its renames (with the committer's own):
/// twice the CPUs, from 2 to 8. More threads than that only wait: every new source directory
/// is created under the storage directory's lock, and on the 2-CPU build machine eight
/// writers spent a twentieth of all CPU time spinning on it. A few per CPU keep the disk busy
/// while others wait for inode tables to be read.
fn writers() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get().saturating_mul(2))
            .clamp(2, 8)
    })
}

fn run_task(task: &Task<'_>) -> io::Result<()> {
    if let Some(dir) = &task.mkdir {
        fs::create_dir_all(dir)?;
    }
    for (path, bytes, in_place) in &task.files {
        let written = if *in_place {
            fs::write(path, bytes)
        } else {
            write_new(path, bytes)
        };
        if let Err(e) = written {
            for (p, _, in_place) in &task.files {
                if !in_place {
                    let _ = fs::remove_file(p);
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Runs every task, on up to [`writers`] scoped threads plus this one; results in task order.
fn run_tasks(tasks: &[(usize, Task<'_>)]) -> Vec<io::Result<()>> {
    in_parallel(tasks, |(_, t)| run_task(t))
}

/// Calls `f` on every item, on up to [`writers`] scoped threads plus this one; results in
/// item order.
fn in_parallel<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> io::Result<()> + Sync,
) -> Vec<io::Result<()>> {
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<io::Result<()>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else {
            return;
        };
        let r = f(item);
        if let Some(slot) = results.get(i) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..writers().min(items.len()) {
            // A thread that cannot be started leaves its share to the others.
            let _ = std::thread::Builder::new()
                .name("netoops-write".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(io::Error::other("a write task did not run")))
        })
        .collect()
}

fn mark_persisted(inner: &mut Inner, state: &[(u64, PathBuf, u64)]) {
    for (k, _, seq) in state {
        if let Some(i) = inner.instances.get_mut(k) {
            i.persisted = i.persisted.max(*seq);
            let keep = i.present.split_off(&(i.persisted + 1));
            i.present = keep;
        }
    }
}

/// The key a dump is stored under and whether it replaces a stored revision (on disk or
/// earlier in this batch), or `None` when a newer revision of the same occurrence is already
/// stored.
fn resolve_key(
    dir: Option<&Path>,
    ip_dir: &str,
    d: &DumpMeta,
    origin: &Origin,
    pending: &HashMap<(String, String), PendingDump>,
) -> io::Result<Option<(String, bool)>> {
    let base = dump_key(d);
    let mut n = 0u32;
    loop {
        let key = if n == 0 {
            base.clone()
        } else {
            format!("{base}-o{n}")
        };
        let held = match pending.get(&(ip_dir.to_string(), key.clone())) {
            Some(p) => Some((p.instance, p.first_seen_ms, u64::from(p.revision))),
            None => match dir {
                Some(dir) => read_json(&dir.join(format!("{key}.json")))?,
                None => None,
            }
            .map(|v| {
                (
                    v["relay_instance"].as_u64().unwrap_or(u64::MAX),
                    v["first_seen_relay_ms"].as_u64().unwrap_or(u64::MAX),
                    v["revision"].as_u64().unwrap_or(0),
                )
            }),
        };
        match held {
            None => return Ok(Some((key, false))),
            Some((instance, first_seen, revision)) => {
                if instance == origin.instance && first_seen == d.first_seen_ms {
                    if revision > u64::from(d.revision) {
                        return Ok(None);
                    }
                    return Ok(Some((key, true)));
                }
            }
        }
        n += 1;
    }
}

fn parse_relay_state(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("last_seq "))
        .and_then(|s| s.trim().parse().ok())
}

fn parse_relay_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("relay "))
        .unwrap_or("")
        .to_string()
}

/// The part of a crash line replay recovery needs.
#[derive(serde::Deserialize)]
struct LineKey {
    relay_instance: Option<u64>,
    seq: Option<u64>,
}

/// Longest crash-log line parsed at startup. The collector writes lines far shorter; a
/// longer one (a damaged or planted file) is skipped without being held in memory.
const MAX_CRASH_LINE: usize = 1 << 20;

/// Most bytes of a relay state file read at startup (they hold one short line).
const RELAY_STATE_MAX: u64 = 64 << 10;

/// Calls `found(instance, seq)` for every line of a crash log, reading it as a stream in
/// bounded memory whatever the file holds, after cutting off a torn last line.
fn scan_crash_log(path: &Path, mut found: impl FnMut(u64, u64)) -> io::Result<()> {
    let f = File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, f);
    let mut line = Vec::new();
    let mut complete = 0u64;
    loop {
        line.clear();
        let n =
            io::Read::take(&mut reader, MAX_CRASH_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let mut ended = line.last() == Some(&b'\n');
        let mut len = n as u64;
        if !ended && n > MAX_CRASH_LINE {
            let (skipped, newline) = skip_line(&mut reader)?;
            len += skipped;
            ended = newline;
            line.clear();
        }
        if !ended {
            // A torn last line: never acknowledged, cut off.
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(complete)?;
            break;
        }
        complete += len;
        if let Ok(LineKey {
            relay_instance: Some(i),
            seq: Some(s),
        }) = serde_json::from_slice::<LineKey>(&line)
        {
            found(i, s);
        }
    }
    Ok(())
}

/// Consumes up to and including the next newline without keeping what it reads: the bytes
/// consumed, and whether a newline ended them (else the file ended).
fn skip_line(reader: &mut impl BufRead) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((total, false));
        }
        if let Some(at) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(at + 1);
            return Ok((total + at as u64 + 1, true));
        }
        let len = buf.len();
        reader.consume(len);
        total += len as u64;
    }
}

/// A temp file's name: hidden, and ending in `.part` so that nothing listing `*.json` or
/// `*.log` (the catalog, the index, a user's shell glob) sees a file that is still being written.
fn temp_name(name: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{}-{n}-{name}.part", std::process::id())
}

fn remove_temp_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> io::Result<Option<Value>> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` (it must not exist) and writes `bytes`; no sync (the batch syncs).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)
}

/// Directory name for a source address: the IP without port, `:` replaced by `_`.
pub fn ip_dir_name(ip: &SourceIp) -> String {
    IpAddr::from(*ip).to_string().replace(':', "_")
}

/// `b<boot_id>-d<dump_id>-t<type>-v<version>-g<generation>` for netoops;
/// `nc-b<boot>-c<crash>` for netconsole.
pub fn dump_key(d: &DumpMeta) -> String {
    key_of(&d.id, d.generation, d.netconsole.as_ref())
}

/// The key the dump of a crash notice is stored under (before any `-o<n>` occurrence suffix).
pub fn crash_key(c: &CrashSeen) -> String {
    key_of(&c.id, c.generation, c.netconsole.as_ref())
}

fn key_of(id: &DumpIdentity, generation: u32, netconsole: Option<&ConsoleMeta>) -> String {
    if let Some(nc) = netconsole {
        return format!("nc-b{}-c{}", nc.boot, nc.crash);
    }
    format!(
        "b{}-d{}-t{}-v{}-g{}",
        id.boot_id, id.dump_id, id.dump_type, id.version, generation
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cpu_json(cpu: &Cpu) -> Value {
    json!({ "vendor": cpu.vendor, "family": cpu.family, "model": cpu.model, "stepping": cpu.stepping })
}

fn registers_json(regs: &RegisterSet) -> Value {
    let mut m = Map::new();
    for (name, value) in &regs.names_values {
        m.insert(name.clone(), Value::String(format!("{value:#018x}")));
    }
    Value::Object(m)
}

/// The netconsole part of a crash line or dump's metadata.
fn console_json(obj: &mut Map<String, Value>, nc: &ConsoleMeta) {
    let fields: Map<String, Value> = nc
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    obj.insert(
        "netconsole".into(),
        json!({
            "format": if nc.extended { "extended" } else { "legacy" },
            "boot": nc.boot,
            "crash": nc.crash,
            "crash_line": nc.crash_line,
            "release": nc.release,
            "missing_seq": nc.missing_seq.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
            "incomplete_seq": nc.incomplete_seq,
            "seq_range": nc.seq_range.map(|(a, b)| [a, b]),
            "records": nc.records,
            "fields": fields,
            "truncated": nc.truncated,
        }),
    );
}

fn common(
    obj: &mut Map<String, Value>,
    source: &Source,
    cpu: &Option<Cpu>,
    regs: &Option<RegisterSet>,
) {
    obj.insert("source".into(), Value::String(source.to_string()));
    if let Some(cpu) = cpu {
        obj.insert("cpu".into(), cpu_json(cpu));
    }
    if let Some(regs) = regs {
        obj.insert("register_layout".into(), Value::String(regs.layout.clone()));
        obj.insert("registers".into(), registers_json(regs));
    }
}

fn crash_line(
    origin: &Origin,
    seq: u64,
    c: &CrashSeen,
    payload: &[u8],
    wall: &dyn Fn(u64) -> String,
) -> Value {
    let mut v = json!({
        "dump_id": c.id.dump_id,
        "boot_id": c.id.boot_id,
        "version": c.id.version,
        "type": c.id.dump_type,
        "generation": c.generation,
        "kernel_version": c.kernel_version,
        "packet_count": c.packet_count,
        "packet_no": c.packet_no,
        "seen": wall(c.seen_at_ms),
        "seen_relay_ms": c.seen_at_ms,
        "relay": origin.relay,
        "relay_instance": origin.instance,
        "seq": seq,
        "text": String::from_utf8_lossy(payload),
    });
    if let Value::Object(obj) = &mut v {
        common(obj, &c.id.source, &c.cpu, &c.registers);
        obj.insert("kind".into(), Value::String(c.kind().as_str().into()));
        if let Some(nc) = &c.netconsole {
            console_json(obj, nc);
        }
    }
    v
}

fn dump_json(
    origin: &Origin,
    seq: u64,
    key: &str,
    d: &DumpMeta,
    payload: &[u8],
    wall: &dyn Fn(u64) -> String,
) -> Value {
    let mut v = json!({
        "key": key,
        "dump_id": d.id.dump_id,
        "boot_id": d.id.boot_id,
        "version": d.id.version,
        "type": d.id.dump_type,
        "generation": d.generation,
        "kernel_version": d.kernel_version,
        "packet_count": d.packet_count,
        "received": d.received,
        "missing": d.missing.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
        "zeroed": d.zeroed,
        "complete": d.complete,
        "revision": d.revision,
        "conflicts": d.conflicts,
        "foreign_port_chunks": d.foreign_port_chunks,
        "late_chunks": d.late_chunks,
        "first_seen": wall(d.first_seen_ms),
        "completed": wall(d.completed_ms),
        "first_seen_relay_ms": d.first_seen_ms,
        "completed_relay_ms": d.completed_ms,
        "relay": origin.relay,
        "relay_instance": origin.instance,
        "seq": seq,
        "text_bytes": payload.len(),
    });
    if let Value::Object(obj) = &mut v {
        common(obj, &d.id.source, &d.cpu, &d.registers);
        if let Some(blob) = &d.user_blob {
            obj.insert("user_blob".into(), Value::String(hex(blob)));
        }
        obj.insert("kind".into(), Value::String(d.kind().as_str().into()));
        if let Some(nc) = &d.netconsole {
            console_json(obj, nc);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(revision: u32, first_seen_ms: u64) -> DumpMeta {
        DumpMeta {
            kernel_version: "6.1".into(),
            packet_count: 2,
            received: 2,
            complete: true,
            revision,
            first_seen_ms,
            completed_ms: first_seen_ms + 5,
            ..DumpMeta::new(DumpIdentity {
                source: Source::from("[fe80::2]:2004".parse::<std::net::SocketAddr>().unwrap()),
                version: 3,
                boot_id: 1,
                dump_id: 77,
                dump_type: 1,
            })
        }
    }

    fn header(seq: u64, record: Record, payload: &[u8]) -> RecordHeader {
        RecordHeader {
            seq,
            sent_at_ms: 1000,
            record,
            payload_len: payload.len() as u32,
        }
    }

    fn assert_no_temporaries(dir: &Path) {
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn revisions_only_move_forward_and_occurrences_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let o = Origin {
            relay: "r".into(),
            instance: 5,
        };
        let put = |seq, d: DumpMeta, text: &[u8]| {
            store
                .apply(&o, &header(seq, Record::Dump(d), text), text, 10_000)
                .unwrap()
        };
        assert!(matches!(
            put(1, dump(2, 100), b"rev two"),
            Applied::Dump { written: true, .. }
        ));
        assert!(matches!(
            put(2, dump(1, 100), b"rev one"),
            Applied::Dump { written: false, .. }
        ));
        let dir = tmp.path().join("fe80__2");
        assert_eq!(
            fs::read(dir.join("b1-d77-t1-v3-g0.log")).unwrap(),
            b"rev two"
        );
        // Same key, another occurrence (a later boot crashing at the same uptime second).
        let Applied::Dump { key, .. } = put(3, dump(1, 900), b"other") else {
            panic!()
        };
        assert_eq!(key, "b1-d77-t1-v3-g0-o1");
        assert_eq!(put(3, dump(9, 100), b"x"), Applied::Replay);
        assert_eq!(store.last_applied(5), 3);
        store.persist(&o).unwrap();
        assert_eq!(Store::open(tmp.path()).unwrap().last_applied(5), 3);
        assert_no_temporaries(&dir);
    }

    #[test]
    fn a_json_left_torn_by_a_crash_is_rewritten_by_the_resend() {
        // A new dump's `.json` is written in place after the first sync; a crash before the
        // second can leave it empty or cut short, never acknowledged. The resend must not take
        // it for a stored dump (another occurrence), and must leave a whole `.json`.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fe80__2");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("b1-d77-t1-v3-g0.log"), b"half").unwrap();
        fs::write(dir.join("b1-d77-t1-v3-g0.json"), b"").unwrap();
        fs::write(dir.join("b1-d77-t1-v3-g1.json"), br#"{"key":"b1-d77"#).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let o = Origin {
            relay: "r".into(),
            instance: 5,
        };
        let Applied::Dump { key, written, .. } = store
            .apply(
                &o,
                &header(1, Record::Dump(dump(1, 100)), b"whole"),
                b"whole",
                10_000,
            )
            .unwrap()
        else {
            panic!("not stored as a dump")
        };
        assert_eq!((key.as_str(), written), ("b1-d77-t1-v3-g0", true));
        assert_eq!(fs::read(dir.join("b1-d77-t1-v3-g0.log")).unwrap(), b"whole");
        let meta: Value =
            serde_json::from_slice(&fs::read(dir.join("b1-d77-t1-v3-g0.json")).unwrap()).unwrap();
        assert_eq!(
            (meta["seq"].as_u64(), meta["text_bytes"].as_u64()),
            (Some(1), Some(5))
        );
        // A torn `.json` is a dump not stored yet to the readers too.
        let listed = crate::catalog::list(tmp.path()).unwrap();
        assert_eq!(listed.len(), 1, "only the whole one is listed");
        assert_eq!(listed[0].key, "b1-d77-t1-v3-g0");
        assert_no_temporaries(&dir);
    }

    #[test]
    fn overlong_crash_log_lines_are_skipped_and_an_overlong_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CRASHES_FILE);
        let good = |seq: u64| format!("{{\"relay_instance\":7,\"seq\":{seq}}}\n");
        let long = "y".repeat(MAX_CRASH_LINE + 10);
        let kept = format!("{}{long}\n{}", good(1), good(2));
        fs::write(&path, format!("{kept}{long}")).unwrap();
        let mut seen = Vec::new();
        scan_crash_log(&path, |i, s| seen.push((i, s))).unwrap();
        assert_eq!(seen, [(7, 1), (7, 2)]);
        assert_eq!(fs::read_to_string(&path).unwrap(), kept);
    }

    #[test]
    fn temp_files_never_look_like_dumps() {
        for name in ["b1-d1-t1-v3-g0.json", "nc-b0-c0.log", "crashes.jsonl"] {
            let t = temp_name(name);
            assert!(t.starts_with(TMP_PREFIX), "{t}");
            assert!(!t.ends_with(".json") && !t.ends_with(".log"), "{t}");
        }
    }

    fn crash(seen_at_ms: u64) -> CrashSeen {
        CrashSeen {
            id: dump(1, 0).id,
            generation: 0,
            kernel_version: "6.1".into(),
            packet_count: 2,
            packet_no: 0,
            cpu: None,
            registers: None,
            seen_at_ms,
            netconsole: None,
        }
    }

    #[test]
    fn crash_lines_above_the_persisted_state_are_not_appended_twice_and_torn_tails_are_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Origin {
            relay: "r".into(),
            instance: 9,
        };
        let put = |store: &Store, seq, record: Record| {
            store
                .apply(&o, &header(seq, record, b"t"), b"t", 5000)
                .unwrap()
        };
        {
            let store = Store::open(tmp.path()).unwrap();
            put(&store, 1, Record::CrashSeen(crash(300)));
            store.persist(&o).unwrap();
            put(&store, 2, Record::CrashSeen(crash(400)));
        }
        assert_eq!(
            parse_relay_state(
                &fs::read_to_string(tmp.path().join(RELAYS_DIR).join(format!("{:016x}", 9)))
                    .unwrap()
            ),
            Some(1)
        );
        // A power cut in a batch: the line of seq 4 is there, the dump of seq 3 is not; plus a
        // torn line from an unacknowledged append.
        let log = tmp.path().join("fe80__2").join(CRASHES_FILE);
        let mut text = fs::read_to_string(&log).unwrap();
        let second = text
            .lines()
            .nth(1)
            .unwrap()
            .replace("\"seq\":2", "\"seq\":4");
        text.push_str(&second);
        text.push('\n');
        text.push_str("{\"relay_instance\":9,\"se");
        fs::write(&log, text).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        // Not the highest line: only the persisted state counts as applied.
        assert_eq!(store.last_applied(9), 1);
        let lines = |log: &Path| fs::read_to_string(log).unwrap();
        assert!(lines(&log).ends_with('\n') && lines(&log).lines().count() == 3);
        // The relay resends 2, 3 and 4: 2 and 4 are there already, 3 is stored.
        assert_eq!(
            put(&store, 2, Record::CrashSeen(crash(400))),
            Applied::Replay
        );
        assert!(matches!(
            put(&store, 3, Record::Dump(dump(1, 100))),
            Applied::Dump { written: true, .. }
        ));
        assert_eq!(
            put(&store, 4, Record::CrashSeen(crash(500))),
            Applied::Replay
        );
        assert!(matches!(
            put(&store, 5, Record::CrashSeen(crash(600))),
            Applied::Crash { .. }
        ));
        assert_eq!(store.last_applied(9), 5);
        let seqs: Vec<u64> = lines(&log)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 2, 4, 5]);
        let v: Value = serde_json::from_str(lines(&log).lines().next().unwrap()).unwrap();
        assert_eq!(v["seen"], "1970-01-01T00:00:04.300Z");
        assert_eq!(v["source"], "[fe80::2]:2004");
    }

    #[test]
    fn one_batch_orders_revisions_and_occurrences() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let o = Origin {
            relay: "r".into(),
            instance: 3,
        };
        let h: Vec<RecordHeader> = vec![
            header(1, Record::Dump(dump(1, 100)), b"one"),
            header(2, Record::Dump(dump(3, 100)), b"three"),
            header(3, Record::Dump(dump(2, 100)), b"two"),
            header(4, Record::Dump(dump(1, 900)), b"other"),
        ];
        let texts: [&[u8]; 4] = [b"one", b"three", b"two", b"other"];
        let entries: Vec<Entry<'_>> = h
            .iter()
            .zip(texts)
            .map(|(header, payload)| Entry {
                origin: &o,
                header,
                payload,
                arrival_wall_ms: 10_000,
            })
            .collect();
        let (out, _) = store.commit(&entries);
        let out: Vec<Applied> = out.into_iter().map(Result::unwrap).collect();
        assert!(
            matches!(&out[2], Applied::Dump { written: false, .. }),
            "{out:?}"
        );
        assert!(matches!(&out[3], Applied::Dump { key, .. } if key == "b1-d77-t1-v3-g0-o1"));
        let dir = tmp.path().join("fe80__2");
        assert_eq!(fs::read(dir.join("b1-d77-t1-v3-g0.log")).unwrap(), b"three");
        assert_eq!(
            fs::read(dir.join("b1-d77-t1-v3-g0-o1.log")).unwrap(),
            b"other"
        );
        let meta: Value =
            serde_json::from_slice(&fs::read(dir.join("b1-d77-t1-v3-g0.json")).unwrap()).unwrap();
        assert_eq!(meta["revision"], 3);
        assert_eq!(store.last_applied(3), 4);
    }
}
