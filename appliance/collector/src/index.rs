//! The dump index: every stored dump's crash signature, source, time and kernel in an embedded
//! SQLite database (`DIR/.index.sqlite3`), for `groups`, `list --signature` and the web view.
//!
//! The stored `.log`/`.json` files stay the truth; the index is derived from them and can be
//! deleted at any time. [`Index::sync`] brings it up to date incrementally: a dump whose files'
//! sizes and modification times are unchanged is not read again; a new or rewritten one is
//! analysed ([`netoops_analyser::analyse`]); rows of vanished dumps are removed. A missing
//! database is rebuilt from the files, and so is one that cannot be opened or has another
//! schema or analyser version. Bad files (unparsable `.json`, a missing `.log`) are counted, logged and
//! skipped: they never stop the index.

use crate::store::RELAYS_DIR;
use crate::wallclock::parse_rfc3339;
use netoops_analyser::analyse;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The database file inside a storage directory.
pub const INDEX_FILE: &str = ".index.sqlite3";
/// At most this much of a dump's text is analysed (dumps are far smaller).
pub const MAX_TEXT: u64 = 16 * 1024 * 1024;
/// `PRAGMA user_version`: the table layout and the analyser's rules; either changing
/// re-analyses every dump.
const SCHEMA_VERSION: i64 = 1000 + netoops_analyser::VERSION as i64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dumps (
    name TEXT PRIMARY KEY,
    ip_dir TEXT NOT NULL,
    key TEXT NOT NULL,
    dump_kind TEXT NOT NULL,
    source TEXT NOT NULL,
    relay TEXT NOT NULL,
    completed TEXT NOT NULL,
    completed_ms INTEGER NOT NULL,
    kernel TEXT NOT NULL,
    complete INTEGER NOT NULL,
    signature TEXT NOT NULL,
    title TEXT NOT NULL,
    crash_kind TEXT NOT NULL,
    crash_line TEXT NOT NULL,
    json_stamp TEXT NOT NULL,
    log_stamp TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dumps_signature ON dumps(signature, completed_ms);
CREATE INDEX IF NOT EXISTS dumps_completed ON dumps(completed_ms);
CREATE INDEX IF NOT EXISTS dumps_source ON dumps(ip_dir);
CREATE INDEX IF NOT EXISTS dumps_kernel ON dumps(kernel);
";

/// What one [`Index::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Dumps found on disk.
    pub scanned: u64,
    /// Newly indexed (or re-indexed after their files changed).
    pub indexed: u64,
    /// Rows removed because their files are gone.
    pub removed: u64,
    /// `.json` files that do not parse as a JSON object.
    pub bad_meta: u64,
    /// Dumps whose `.log` is missing.
    pub missing_log: u64,
    /// Files or directories that could not be read.
    pub unreadable: u64,
}

/// One indexed dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedDump {
    /// `<ip_dir>/<key>`.
    pub name: String,
    /// Source directory (the machine).
    pub ip_dir: String,
    /// Dump key.
    pub key: String,
    /// `netoops` or `netconsole`.
    pub dump_kind: String,
    /// Sender address as stored (`10.0.0.1:2004`).
    pub source: String,
    /// Relay name.
    pub relay: String,
    /// Completion time, RFC 3339.
    pub completed: String,
    /// The same in ms since the epoch (0 when unparsable).
    pub completed_ms: i64,
    /// Kernel release / version.
    pub kernel: String,
    /// Every packet or record arrived.
    pub complete: bool,
    /// Crash signature (16 hex digits).
    pub signature: String,
    /// What the signature covers.
    pub title: String,
    /// Crash type.
    pub crash_kind: String,
    /// The crash line.
    pub crash_line: String,
}

impl IndexedDump {
    /// As JSON (the web view's endpoints and `--json` outputs).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name, "machine": self.ip_dir, "key": self.key, "kind": self.dump_kind,
            "source": self.source, "relay": self.relay, "completed": self.completed,
            "kernel": self.kernel, "complete": self.complete, "signature": self.signature,
            "title": self.title, "crash_kind": self.crash_kind, "crash_line": self.crash_line,
        })
    }
}

/// One crash group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Signature.
    pub signature: String,
    /// What it covers.
    pub title: String,
    /// Crash type.
    pub crash_kind: String,
    /// Dumps in the group.
    pub count: u64,
    /// Distinct machines (source directories).
    pub machines: u64,
    /// Earliest and latest completion (RFC 3339).
    pub first_seen: String,
    /// Latest completion.
    pub last_seen: String,
    /// The same in ms.
    pub first_ms: i64,
    /// Latest, ms.
    pub last_ms: i64,
    /// Distinct kernels, sorted.
    pub kernels: Vec<String>,
}

impl Group {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "signature": self.signature, "title": self.title, "crash_kind": self.crash_kind,
            "count": self.count, "machines": self.machines, "first_seen": self.first_seen,
            "last_seen": self.last_seen, "kernels": self.kernels,
        })
    }
}

/// A machine within a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMachine {
    /// Source directory.
    pub ip_dir: String,
    /// Source address as stored.
    pub source: String,
    /// Its dumps in the group.
    pub count: u64,
    /// Its latest one.
    pub last_seen: String,
}

/// The open index of one storage directory.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
    dir: PathBuf,
    /// Bad files already reported (name, reason, stamp): a long-running view logs each once.
    reported: HashSet<(String, &'static str, String)>,
}

fn sql_err(e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("index database: {e}"))
}

fn stamp(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{}", meta.len(), mtime)
}

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        conn.execute_batch("DROP TABLE IF EXISTS dumps;")?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    // Touch the table so a corrupt file shows here rather than in a later query.
    conn.query_row("SELECT COUNT(*) FROM dumps", [], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

impl Index {
    /// Opens (or creates, or rebuilds when unusable) the index of `dir`. Call [`Index::sync`]
    /// before reading it.
    pub fn open(dir: &Path) -> io::Result<Index> {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no storage directory at {}", dir.display()),
            ));
        }
        let path = dir.join(INDEX_FILE);
        let conn = match open_db(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "netoops-collect: index {} unusable ({e}); rebuilding it from the stored dumps",
                    path.display()
                );
                for suffix in ["", "-journal", "-wal", "-shm"] {
                    let _ = fs::remove_file(dir.join(format!("{INDEX_FILE}{suffix}")));
                }
                open_db(&path).map_err(sql_err)?
            }
        };
        Ok(Index {
            conn,
            dir: dir.to_path_buf(),
            reported: HashSet::new(),
        })
    }

    /// Opens and syncs; the common case for the commands.
    pub fn open_synced(dir: &Path) -> io::Result<(Index, SyncStats)> {
        let mut index = Index::open(dir)?;
        let stats = index.sync()?;
        Ok((index, stats))
    }

    /// Brings the index up to date with the stored files.
    pub fn sync(&mut self) -> io::Result<SyncStats> {
        let mut stats = SyncStats::default();
        let mut known: std::collections::HashMap<String, (String, String)> = Default::default();
        {
            let mut q = self
                .conn
                .prepare("SELECT name, json_stamp, log_stamp FROM dumps")
                .map_err(sql_err)?;
            let rows = q
                .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
                .map_err(sql_err)?;
            for row in rows {
                let (name, stamps) = row.map_err(sql_err)?;
                known.insert(name, stamps);
            }
        }
        let mut seen = HashSet::new();
        let reported = &mut self.reported;
        let tx = self.conn.transaction().map_err(sql_err)?;
        let sources = fs::read_dir(&self.dir)?;
        for source in sources {
            let Ok(source) = source else {
                stats.unreadable += 1;
                continue;
            };
            let ip_dir = source.file_name().to_string_lossy().into_owned();
            if ip_dir.starts_with('.') || ip_dir == RELAYS_DIR || !source.path().is_dir() {
                continue;
            }
            let sdir = source.path();
            let Ok(files) = fs::read_dir(&sdir) else {
                stats.unreadable += 1;
                eprintln!("netoops-collect: index: cannot read {}", sdir.display());
                continue;
            };
            for file in files {
                let Ok(file) = file else {
                    stats.unreadable += 1;
                    continue;
                };
                let fname = file.file_name().to_string_lossy().into_owned();
                let Some(key) = fname.strip_suffix(".json") else {
                    continue;
                };
                if fname.starts_with('.') || key.is_empty() {
                    continue;
                }
                stats.scanned += 1;
                let name = format!("{ip_dir}/{key}");
                let json_path = sdir.join(&fname);
                let log_path = sdir.join(format!("{key}.log"));
                let (Ok(jm), lm) = (fs::metadata(&json_path), fs::metadata(&log_path)) else {
                    stats.unreadable += 1;
                    continue;
                };
                let Ok(lm) = lm else {
                    stats.missing_log += 1;
                    if reported.insert((name, "no-log", stamp(&jm))) {
                        eprintln!(
                            "netoops-collect: index: {} has no .log; skipped",
                            json_path.display()
                        );
                    }
                    continue;
                };
                let stamps = (stamp(&jm), stamp(&lm));
                seen.insert(name.clone());
                if known.get(&name) == Some(&stamps) {
                    continue;
                }
                match index_one(&json_path, &log_path, &ip_dir, key) {
                    Ok(d) => {
                        upsert(&tx, &d, &stamps).map_err(sql_err)?;
                        stats.indexed += 1;
                    }
                    Err(Skip::Writing) => {
                        seen.remove(&name);
                    }
                    Err(Skip::BadMeta) => {
                        seen.remove(&name);
                        stats.bad_meta += 1;
                        if reported.insert((name, "bad-meta", stamps.0)) {
                            eprintln!(
                                "netoops-collect: index: {} is not valid dump metadata; skipped",
                                json_path.display()
                            );
                        }
                    }
                    Err(Skip::Io(e)) => {
                        seen.remove(&name);
                        stats.unreadable += 1;
                        if reported.insert((name.clone(), "io", stamps.0)) {
                            eprintln!("netoops-collect: index: {name}: {e}; skipped");
                        }
                    }
                }
            }
        }
        for name in known.keys() {
            if !seen.contains(name) {
                tx.execute("DELETE FROM dumps WHERE name = ?1", params![name])
                    .map_err(sql_err)?;
                stats.removed += 1;
            }
        }
        tx.commit().map_err(sql_err)?;
        Ok(stats)
    }

    /// Crash groups, the most recently seen first.
    pub fn groups(&self) -> io::Result<Vec<Group>> {
        let mut q = self
            .conn
            .prepare(
                "SELECT signature, MAX(title), MAX(crash_kind), COUNT(*), COUNT(DISTINCT ip_dir),
                        MIN(completed), MAX(completed), MIN(completed_ms), MAX(completed_ms),
                        GROUP_CONCAT(DISTINCT kernel)
                 FROM dumps GROUP BY signature
                 ORDER BY MAX(completed_ms) DESC, signature",
            )
            .map_err(sql_err)?;
        let rows = q
            .query_map([], |r| {
                let kernels: Option<String> = r.get(9)?;
                let mut kernels: Vec<String> = kernels
                    .unwrap_or_default()
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect();
                kernels.sort();
                Ok(Group {
                    signature: r.get(0)?,
                    title: r.get(1)?,
                    crash_kind: r.get(2)?,
                    count: r.get::<_, i64>(3)? as u64,
                    machines: r.get::<_, i64>(4)? as u64,
                    first_seen: r.get(5)?,
                    last_seen: r.get(6)?,
                    first_ms: r.get(7)?,
                    last_ms: r.get(8)?,
                    kernels,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    /// One group by exact signature.
    pub fn group(&self, signature: &str) -> io::Result<Option<Group>> {
        Ok(self
            .groups()?
            .into_iter()
            .find(|g| g.signature == signature))
    }

    /// Dumps whose signature starts with `signature` (all dumps for `None`), newest first.
    pub fn dumps(&self, signature: Option<&str>) -> io::Result<Vec<IndexedDump>> {
        let mut q = self
            .conn
            .prepare(&format!(
                "SELECT {DUMP_COLUMNS} FROM dumps
                 WHERE ?1 IS NULL OR substr(signature, 1, length(?1)) = ?1
                 ORDER BY completed_ms DESC, name"
            ))
            .map_err(sql_err)?;
        let rows = q.query_map(params![signature], dump_row).map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    /// The machines of a group, the most recent first.
    pub fn group_machines(&self, signature: &str) -> io::Result<Vec<GroupMachine>> {
        let mut q = self
            .conn
            .prepare(
                "SELECT ip_dir, MAX(source), COUNT(*), MAX(completed) FROM dumps
                 WHERE signature = ?1 GROUP BY ip_dir ORDER BY MAX(completed_ms) DESC, ip_dir",
            )
            .map_err(sql_err)?;
        let rows = q
            .query_map(params![signature], |r| {
                Ok(GroupMachine {
                    ip_dir: r.get(0)?,
                    source: r.get(1)?,
                    count: r.get::<_, i64>(2)? as u64,
                    last_seen: r.get(3)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    /// Completion times (ms) of a group's dumps.
    pub fn group_times(&self, signature: &str) -> io::Result<Vec<i64>> {
        let mut q = self
            .conn
            .prepare("SELECT completed_ms FROM dumps WHERE signature = ?1")
            .map_err(sql_err)?;
        let rows = q
            .query_map(params![signature], |r| r.get(0))
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    /// One dump by name.
    pub fn dump(&self, name: &str) -> io::Result<Option<IndexedDump>> {
        self.conn
            .query_row(
                &format!("SELECT {DUMP_COLUMNS} FROM dumps WHERE name = ?1"),
                params![name],
                dump_row,
            )
            .optional()
            .map_err(sql_err)
    }
}

const DUMP_COLUMNS: &str = "name, ip_dir, key, dump_kind, source, relay, completed, completed_ms,
    kernel, complete, signature, title, crash_kind, crash_line";

fn dump_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedDump> {
    Ok(IndexedDump {
        name: r.get(0)?,
        ip_dir: r.get(1)?,
        key: r.get(2)?,
        dump_kind: r.get(3)?,
        source: r.get(4)?,
        relay: r.get(5)?,
        completed: r.get(6)?,
        completed_ms: r.get(7)?,
        kernel: r.get(8)?,
        complete: r.get(9)?,
        signature: r.get(10)?,
        title: r.get(11)?,
        crash_kind: r.get(12)?,
        crash_line: r.get(13)?,
    })
}

enum Skip {
    /// Empty: a new dump's `.json` is being written (or was left empty by a crash of the
    /// collector, until the relay resends it); looked at again next time, without a message.
    Writing,
    BadMeta,
    Io(io::Error),
}

/// Reads at most [`MAX_TEXT`] bytes of a dump's text.
pub fn read_text_capped(path: &Path) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    fs::File::open(path)?
        .take(MAX_TEXT)
        .read_to_end(&mut text)?;
    Ok(text)
}

fn index_one(
    json_path: &Path,
    log_path: &Path,
    ip_dir: &str,
    key: &str,
) -> Result<IndexedDump, Skip> {
    let bytes = fs::read(json_path).map_err(Skip::Io)?;
    if bytes.is_empty() {
        return Err(Skip::Writing);
    }
    let meta: Value = serde_json::from_slice(&bytes).map_err(|_| Skip::BadMeta)?;
    if !meta.is_object() {
        return Err(Skip::BadMeta);
    }
    let text = read_text_capped(log_path).map_err(Skip::Io)?;
    let a = analyse(&String::from_utf8_lossy(&text));
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let completed = s(&meta["completed"]);
    let completed_ms = parse_rfc3339(&completed).map_or(0, |ms| ms as i64);
    let nc = &meta["netconsole"];
    let kernel = [
        s(&meta["kernel_version"]),
        s(&nc["release"]),
        a.release.clone().unwrap_or_default(),
    ]
    .into_iter()
    .find(|k| !k.trim().is_empty())
    .unwrap_or_default();
    let crash_line = a
        .crash_line
        .clone()
        .or_else(|| nc["crash_line"].as_str().map(str::to_string))
        .unwrap_or_default();
    let dump_kind = match meta["kind"].as_str() {
        Some(k) => k.to_string(),
        None if nc.is_object() => "netconsole".into(),
        None => "netoops".into(),
    };
    Ok(IndexedDump {
        name: format!("{ip_dir}/{key}"),
        ip_dir: ip_dir.to_string(),
        key: key.to_string(),
        dump_kind,
        source: s(&meta["source"]),
        relay: s(&meta["relay"]),
        completed,
        completed_ms,
        kernel,
        complete: meta["complete"].as_bool().unwrap_or(false),
        signature: a.signature,
        title: a.title,
        crash_kind: a.kind.as_str().to_string(),
        crash_line,
    })
}

fn upsert(
    tx: &rusqlite::Transaction<'_>,
    d: &IndexedDump,
    stamps: &(String, String),
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO dumps (name, ip_dir, key, dump_kind, source, relay, completed,
             completed_ms, kernel, complete, signature, title, crash_kind, crash_line,
             json_stamp, log_stamp)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            d.name,
            d.ip_dir,
            d.key,
            d.dump_kind,
            d.source,
            d.relay,
            d.completed,
            d.completed_ms,
            d.kernel,
            d.complete,
            d.signature,
            d.title,
            d.crash_kind,
            d.crash_line,
            stamps.0,
            stamps.1
        ],
    )?;
    Ok(())
}

/// The `groups` table.
pub fn format_groups(groups: &[Group]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24}  {:<24}  {:>6}  {:>8}  {:<16}  TITLE",
        "LAST SEEN", "FIRST SEEN", "DUMPS", "MACHINES", "SIGNATURE"
    );
    for g in groups {
        let _ = writeln!(
            out,
            "{:<24}  {:<24}  {:>6}  {:>8}  {:<16}  {}",
            g.last_seen,
            g.first_seen,
            g.count,
            g.machines,
            crate::catalog::terminal_safe(&g.signature, false),
            crate::catalog::terminal_safe(&g.title, false)
        );
    }
    out
}

/// The `groups --json` array.
pub fn format_groups_json(groups: &[Group]) -> String {
    let v = Value::Array(groups.iter().map(Group::to_json).collect());
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, ip: &str, key: &str, meta: &str, text: Option<&str>) {
        let d = dir.join(ip);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{key}.json")), meta).unwrap();
        if let Some(t) = text {
            fs::write(d.join(format!("{key}.log")), t).unwrap();
        }
    }

    const OOPS: &str = "BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
        CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-18-amd64 #1\n\
        RIP: 0010:foo+0x1/0x2\nCall Trace:\n <TASK>\n bar+0x1/0x2\n baz+0x3/0x4\n </TASK>\n";

    #[test]
    fn an_empty_json_is_a_dump_being_written_and_is_indexed_once_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        put(dir, "10.0.0.1", "b1-d1-t1-v3-g0", "", Some(OOPS));
        let (mut index, stats) = Index::open_synced(dir).unwrap();
        assert_eq!((stats.scanned, stats.indexed, stats.bad_meta), (1, 0, 0));
        assert!(index.groups().unwrap().is_empty());
        let meta = r#"{"kind":"netoops","source":"10.0.0.1:2004","completed":"2024-05-01T12:00:00.000Z","complete":true}"#;
        put(dir, "10.0.0.1", "b1-d1-t1-v3-g0", meta, Some(OOPS));
        let stats = index.sync().unwrap();
        assert_eq!((stats.indexed, stats.bad_meta), (1, 0));
        assert_eq!(index.groups().unwrap().len(), 1);
    }

    #[test]
    fn bad_files_are_counted_and_skipped_and_the_index_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let meta = r#"{"kind":"netoops","source":"10.0.0.1:2004","completed":"2024-05-01T12:00:00.000Z","kernel_version":"6.1.0-18-amd64","complete":true}"#;
        put(dir, "10.0.0.1", "b1-d1-t1-v3-g0", meta, Some(OOPS));
        put(dir, "10.0.0.2", "b1-d2-t1-v3-g0", "{not json", Some(OOPS));
        put(dir, "10.0.0.3", "b1-d3-t1-v3-g0", meta, None);
        put(dir, "10.0.0.4", "b1-d4-t1-v3-g0", "[1,2]", Some(OOPS));
        let (index, stats) = Index::open_synced(dir).unwrap();
        assert_eq!(stats.scanned, 4);
        assert_eq!(stats.indexed, 1);
        assert_eq!(stats.bad_meta, 2);
        assert_eq!(stats.missing_log, 1);
        let groups = index.groups().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].title, "null-deref: foo < bar < baz");
        assert_eq!(groups[0].kernels, ["6.1.0-18-amd64"]);
        assert_eq!(groups[0].last_ms, 1_714_564_800_000);
        drop(index);

        // Unchanged files are not read again; a removed dump leaves the index.
        let (mut index, stats) = Index::open_synced(dir).unwrap();
        assert_eq!((stats.indexed, stats.removed), (0, 0));
        fs::remove_file(dir.join("10.0.0.1/b1-d1-t1-v3-g0.json")).unwrap();
        assert_eq!(index.sync().unwrap().removed, 1);
        assert!(index.groups().unwrap().is_empty());
        drop(index);

        // A corrupt database file is replaced and rebuilt.
        put(dir, "10.0.0.1", "b1-d1-t1-v3-g0", meta, Some(OOPS));
        fs::write(
            dir.join(INDEX_FILE),
            b"this is not an sqlite database at all, no",
        )
        .unwrap();
        let (index, stats) = Index::open_synced(dir).unwrap();
        assert_eq!(stats.indexed, 1);
        assert_eq!(index.dumps(Some("")).unwrap().len(), 1);
        let sig = &index.groups().unwrap()[0].signature;
        assert_eq!(index.dumps(Some(&sig[..6])).unwrap().len(), 1);
        assert_eq!(index.dumps(Some("zz")).unwrap().len(), 0);
        assert!(index.dump("10.0.0.1/b1-d1-t1-v3-g0").unwrap().is_some());
    }
}
