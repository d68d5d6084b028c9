//! Durable storage of what relays send, and the replay protection that makes resends harmless.
//!
//! Layout under the storage directory:
//!
//! ```text
//! DIR/<ip>/<dump-key>.log     dump text exactly as received
//! DIR/<ip>/<dump-key>.json    dump metadata (source, ids, packets, missing ranges, times, relay, ...)
//! DIR/<ip>/crashes.jsonl      one JSON line per CrashSeen record (with relay_instance, seq, text)
//! DIR/.relays/<instance>      highest seq applied for that relay instance (16 hex digits)
//! ```
//!
//! `<ip>` is the source address without the port (IPv6 `:` become `_`); `<dump-key>` is
//! `b<boot_id>-d<dump_id>-t<type>-v<version>-g<generation>` for netoops and
//! `nc-b<boot>-c<crash>` for netconsole (metadata `"kind"` says which), with `-o<n>` appended when a
//! different occurrence (another relay instance or first-seen time) already holds that key, so
//! a machine that crashes again at the same uptime second after a reboot is not overwritten.
//!
//! Writes are crash-safe: each file is written to a temporary file in the same directory,
//! fsynced, renamed into place, and the directory fsynced; `.log` goes before `.json`, so a
//! `.json` never describes text that is not there. A newer revision of a dump replaces an older
//! one, never the reverse. `crashes.jsonl` lines are appended and fsynced before the record is
//! acknowledged.
//!
//! Replay protection: records of one relay instance are applied strictly in seq order under one
//! lock, and `DIR/.relays/<instance>` is updated (fsynced) once per batch, before the batch is
//! acknowledged ([`Store::persist`]). If the collector dies between applying a record and
//! updating that file, the record may come again: re-applying a dump
//! rewrites the same files (idempotent), and for crash lines every line carries its
//! `(relay_instance, seq)`, so [`Store::open`] scans the `crashes.jsonl` files once and takes
//! the highest seq found per instance as applied too (sound because application is in seq
//! order: a line with seq `s` means everything up to `s` was applied). That costs one read of
//! the crash notices at startup instead of an extra fsynced intent record per write. A torn
//! last line (a crash mid-append, never acknowledged) is cut off at startup.

use crate::wallclock::rfc3339;
use netoops_core::upstream::record::{relay_to_wall_ms, RegisterSet};
use netoops_core::upstream::{
    ConsoleMeta, Cpu, CrashSeen, DumpMeta, Record, RecordHeader, Source, SourceIp,
};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Name of the per-source crash notice log.
pub const CRASHES_FILE: &str = "crashes.jsonl";
/// Directory of per-relay-instance replay state.
pub const RELAYS_DIR: &str = ".relays";
const TMP_PREFIX: &str = ".tmp-";

/// Who sent a record: from the session's `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Relay name.
    pub relay: String,
    /// Relay instance (boot).
    pub instance: u64,
}

/// What [`Store::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Seq already applied for this instance: nothing written.
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

/// The collector's storage directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    last: Mutex<HashMap<u64, u64>>,
}

/// Unique temp file names within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) a storage directory and recovers the replay state.
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir.join(RELAYS_DIR))?;
        let mut last = HashMap::new();
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
            let text = fs::read_to_string(entry.path())?;
            if let Some(seq) = parse_relay_state(&text) {
                last.insert(instance, seq);
            }
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() || entry.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            remove_temp_files(&entry.path())?;
            let crashes = entry.path().join(CRASHES_FILE);
            if crashes.exists() {
                for (instance, seq) in scan_crash_log(&crashes)? {
                    let e = last.entry(instance).or_insert(0);
                    *e = (*e).max(seq);
                }
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            last: Mutex::new(last),
        })
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Highest seq applied for a relay instance (0: none).
    pub fn last_applied(&self, instance: u64) -> u64 {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(&instance).copied().unwrap_or(0)
    }

    /// Applies one record durably (or recognises a replay). Returns only once everything it
    /// wrote is on disk; then the record may be acknowledged.
    pub fn apply(
        &self,
        origin: &Origin,
        header: &RecordHeader,
        payload: &[u8],
        arrival_wall_ms: u64,
    ) -> io::Result<Applied> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let applied = last.get(&origin.instance).copied().unwrap_or(0);
        if header.seq <= applied {
            return Ok(Applied::Replay);
        }
        let wall = |t: u64| rfc3339(relay_to_wall_ms(arrival_wall_ms, header.sent_at_ms, t));
        let result = match &header.record {
            Record::Hello { .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "Hello is not a storable record",
                ))
            }
            Record::CrashSeen(c) => {
                let line = crash_line(origin, header.seq, c, payload, &wall);
                let ip_dir = ip_dir_name(&c.id.source.ip);
                self.append_crash(&ip_dir, &line)?;
                Applied::Crash { ip_dir }
            }
            Record::Dump(d) => {
                let ip_dir = ip_dir_name(&d.id.source.ip);
                let meta = |key: &str| dump_json(origin, header.seq, key, d, payload, &wall);
                let (key, written) = self.write_dump(&ip_dir, d, origin, payload, meta)?;
                Applied::Dump {
                    ip_dir,
                    key,
                    written,
                }
            }
        };
        last.insert(origin.instance, header.seq);
        Ok(result)
    }

    /// Makes the instance's applied seq durable in `DIR/.relays/<instance>`. Called once per
    /// batch, before the batch is acknowledged.
    pub fn persist(&self, origin: &Origin) -> io::Result<()> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let seq = last.get(&origin.instance).copied().unwrap_or(0);
        self.write_relay_state(origin, seq)
    }

    fn source_dir(&self, ip_dir: &str) -> io::Result<PathBuf> {
        let path = self.dir.join(ip_dir);
        if !path.is_dir() {
            fs::create_dir_all(&path)?;
            sync_dir(&self.dir)?;
        }
        Ok(path)
    }

    fn append_crash(&self, ip_dir: &str, line: &Value) -> io::Result<()> {
        let dir = self.source_dir(ip_dir)?;
        let path = dir.join(CRASHES_FILE);
        let created = !path.exists();
        let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
        text.push('\n');
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_data()) {
            // Leave no partial line behind for the next append to run into.
            let _ = f.set_len(before);
            return Err(e);
        }
        if created {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    fn write_dump(
        &self,
        ip_dir: &str,
        d: &DumpMeta,
        origin: &Origin,
        payload: &[u8],
        meta: impl Fn(&str) -> Value,
    ) -> io::Result<(String, bool)> {
        let dir = self.source_dir(ip_dir)?;
        let base = dump_key(d);
        let mut n = 0u32;
        let key = loop {
            let key = if n == 0 {
                base.clone()
            } else {
                format!("{base}-o{n}")
            };
            match read_json(&dir.join(format!("{key}.json")))? {
                None => break key,
                Some(existing) => {
                    let same_occurrence = existing["relay_instance"].as_u64()
                        == Some(origin.instance)
                        && existing["first_seen_relay_ms"].as_u64() == Some(d.first_seen_ms);
                    if same_occurrence {
                        let stored = existing["revision"].as_u64().unwrap_or(0);
                        if stored > u64::from(d.revision) {
                            return Ok((key, false));
                        }
                        break key;
                    }
                }
            }
            n += 1;
        };
        write_atomically(&dir, &format!("{key}.log"), payload)?;
        let mut json = serde_json::to_vec_pretty(&meta(&key)).map_err(io::Error::other)?;
        json.push(b'\n');
        write_atomically(&dir, &format!("{key}.json"), &json)?;
        Ok((key, true))
    }

    fn write_relay_state(&self, origin: &Origin, seq: u64) -> io::Result<()> {
        let text = format!(
            "last_seq {seq}\nrelay {}\n",
            origin.relay.replace(['\n', '\r'], " ")
        );
        write_atomically(
            &self.dir.join(RELAYS_DIR),
            &format!("{:016x}", origin.instance),
            text.as_bytes(),
        )
    }
}

fn parse_relay_state(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("last_seq "))
        .and_then(|s| s.trim().parse().ok())
}

/// Highest seq per relay instance in a crash log, after cutting off a torn last line.
fn scan_crash_log(path: &Path) -> io::Result<HashMap<u64, u64>> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        f.set_len(keep as u64)?;
        f.seek(SeekFrom::End(0))?;
        f.sync_all()?;
        bytes.truncate(keep);
    }
    let mut max = HashMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if let (Some(i), Some(s)) = (v["relay_instance"].as_u64(), v["seq"].as_u64()) {
            let e = max.entry(i).or_insert(0);
            *e = s.max(*e);
        }
    }
    Ok(max)
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

/// Temp file in the same directory, write, fsync, rename over `name`, fsync the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(temp_name(name));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directory name for a source address: the IP without port, `:` replaced by `_`.
pub fn ip_dir_name(ip: &SourceIp) -> String {
    IpAddr::from(*ip).to_string().replace(':', "_")
}

/// `b<boot_id>-d<dump_id>-t<type>-v<version>-g<generation>` for netoops;
/// `nc-b<boot>-c<crash>` for netconsole.
pub fn dump_key(d: &DumpMeta) -> String {
    if let Some(nc) = &d.netconsole {
        return format!("nc-b{}-c{}", nc.boot, nc.crash);
    }
    format!(
        "b{}-d{}-t{}-v{}-g{}",
        d.id.boot_id, d.id.dump_id, d.id.dump_type, d.id.version, d.generation
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
    use netoops_core::upstream::DumpIdentity;

    fn dump(revision: u32, first_seen_ms: u64) -> DumpMeta {
        DumpMeta {
            id: DumpIdentity {
                source: Source::from("[fe80::2]:2004".parse::<std::net::SocketAddr>().unwrap()),
                version: 3,
                boot_id: 1,
                dump_id: 77,
                dump_type: 1,
            },
            generation: 0,
            kernel_version: "6.1".into(),
            packet_count: 2,
            received: 2,
            missing: vec![],
            zeroed: vec![],
            complete: true,
            revision,
            first_seen_ms,
            completed_ms: first_seen_ms + 5,
            cpu: None,
            registers: None,
            user_blob: None,
            netconsole: None,
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
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn temp_files_never_look_like_dumps() {
        for name in ["b1-d1-t1-v3-g0.json", "nc-b0-c0.log", "crashes.jsonl"] {
            let t = temp_name(name);
            assert!(t.starts_with(TMP_PREFIX), "{t}");
            assert!(!t.ends_with(".json") && !t.ends_with(".log"), "{t}");
        }
    }

    #[test]
    fn crash_lines_recover_replay_state_and_torn_tails_are_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Origin {
            relay: "r".into(),
            instance: 9,
        };
        let crash = CrashSeen {
            id: dump(1, 0).id,
            generation: 0,
            kernel_version: "6.1".into(),
            packet_count: 2,
            packet_no: 0,
            cpu: None,
            registers: None,
            seen_at_ms: 400,
            netconsole: None,
        };
        {
            let store = Store::open(tmp.path()).unwrap();
            store
                .apply(
                    &o,
                    &header(4, Record::CrashSeen(crash.clone()), b"t"),
                    b"t",
                    5000,
                )
                .unwrap();
        }
        // Simulate a crash after the line was written but before the state file was updated,
        // plus a torn line from an unacknowledged append.
        let log = tmp.path().join("fe80__2").join(CRASHES_FILE);
        let mut text = fs::read_to_string(&log).unwrap();
        text = text.replace("\"seq\":4", "\"seq\":6");
        text.push_str("{\"relay_instance\":9,\"se");
        fs::write(&log, text).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.last_applied(9), 6);
        let line = fs::read_to_string(&log).unwrap();
        assert!(line.ends_with('\n') && line.lines().count() == 1);
        let v: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["seen"], "1970-01-01T00:00:04.400Z");
        assert_eq!(v["source"], "[fe80::2]:2004");
    }
}
