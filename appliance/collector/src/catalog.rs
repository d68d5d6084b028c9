//! Reading a storage directory back: the `list` and `show` commands.
//!
//! Works on the files alone (no running collector needed) and never trusts them: a dump whose
//! `.json` does not parse is reported, not fatal to the listing.

use crate::store::RELAYS_DIR;
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One stored dump.
#[derive(Clone, Debug)]
pub struct StoredDump {
    /// Source directory name (`10.0.0.1`, `fe80__1`).
    pub ip_dir: String,
    /// Dump key.
    pub key: String,
    /// The `.json` metadata.
    pub meta: Value,
    /// Path of the `.log` text.
    pub log_path: PathBuf,
}

impl StoredDump {
    /// `<ip_dir>/<key>`, the name `show` accepts.
    pub fn name(&self) -> String {
        format!("{}/{}", self.ip_dir, self.key)
    }

    fn completed(&self) -> &str {
        self.meta["completed"].as_str().unwrap_or("")
    }
}

/// Why a catalog command failed.
#[derive(Debug)]
pub enum CatalogError {
    /// The storage directory does not exist.
    NoDir(PathBuf),
    /// No dump by that name.
    NoDump(String),
    /// A metadata file is not valid JSON.
    BadMeta(PathBuf),
    /// Reading failed.
    Io(PathBuf, io::Error),
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::NoDir(p) => write!(f, "no storage directory at {}", p.display()),
            CatalogError::NoDump(d) => write!(f, "no dump named {d}"),
            CatalogError::BadMeta(p) => write!(f, "unreadable dump metadata {}", p.display()),
            CatalogError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for CatalogError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError + '_ {
    move |e| CatalogError::Io(path.to_path_buf(), e)
}

/// Every stored dump under `dir`, newest first (by completion time), then by name. A `.json`
/// that does not parse is a dump not stored yet (see [`crate::store`]) and is left out.
pub fn list(dir: &Path) -> Result<Vec<StoredDump>, CatalogError> {
    if !dir.is_dir() {
        return Err(CatalogError::NoDir(dir.to_path_buf()));
    }
    let mut dumps = Vec::new();
    for source in fs::read_dir(dir).map_err(io_err(dir))? {
        let source = source.map_err(io_err(dir))?;
        let ip_dir = source.file_name().to_string_lossy().into_owned();
        if ip_dir.starts_with('.') || ip_dir == RELAYS_DIR || !source.path().is_dir() {
            continue;
        }
        let sdir = source.path();
        for file in fs::read_dir(&sdir).map_err(io_err(&sdir))? {
            let file = file.map_err(io_err(&sdir))?;
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(key) = name.strip_suffix(".json") {
                match load(&sdir, &ip_dir, key) {
                    Ok(d) => dumps.push(d),
                    // Not stored yet: a new dump's `.json` is written in place, so it can be
                    // empty or half written for a moment (see `crate::store`).
                    Err(CatalogError::BadMeta(_)) => {}
                    // Gone between the listing and the read (replaced or removed).
                    Err(CatalogError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    dumps.sort_by(|a, b| {
        b.completed()
            .cmp(a.completed())
            .then_with(|| a.name().cmp(&b.name()))
    });
    Ok(dumps)
}

fn load(sdir: &Path, ip_dir: &str, key: &str) -> Result<StoredDump, CatalogError> {
    let path = sdir.join(format!("{key}.json"));
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let meta = serde_json::from_slice(&bytes).map_err(|_| CatalogError::BadMeta(path.clone()))?;
    Ok(StoredDump {
        ip_dir: ip_dir.to_string(),
        key: key.to_string(),
        meta,
        log_path: sdir.join(format!("{key}.log")),
    })
}

/// Finds a dump by `<ip_dir>/<key>` (relative to `dir`) or by a path to its `.json`/`.log`
/// (or the path without extension).
pub fn find(dir: &Path, spec: &str) -> Result<StoredDump, CatalogError> {
    if !dir.is_dir() {
        return Err(CatalogError::NoDir(dir.to_path_buf()));
    }
    let trimmed = spec
        .strip_suffix(".json")
        .or_else(|| spec.strip_suffix(".log"))
        .unwrap_or(spec);
    let candidates = [PathBuf::from(trimmed), dir.join(trimmed)];
    for base in candidates {
        let (Some(parent), Some(key)) = (base.parent(), base.file_name()) else {
            continue;
        };
        let key = key.to_string_lossy();
        if parent.join(format!("{key}.json")).is_file() {
            let ip_dir = parent
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return load(parent, &ip_dir, &key);
        }
    }
    Err(CatalogError::NoDump(spec.to_string()))
}

fn num(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "?".to_string(), |n| n.to_string())
}

fn state(meta: &Value) -> &'static str {
    if meta["complete"].as_bool() == Some(true) {
        "complete"
    } else {
        "partial"
    }
}

/// Text from the wire made safe for a terminal: control characters (escape sequences, carriage
/// returns, bells; C0, DEL and C1) become `\xNN` / `\u{NN}` escapes, so a sender's kernel
/// version or log cannot move the cursor, retitle the window or hide a line. With `lines`,
/// newlines and tabs are kept (a dump's text); otherwise they are escaped too (a table cell).
pub fn terminal_safe(text: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && !(lines && (c == '\n' || c == '\t'));
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !bad(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A metadata string for a terminal (see [`terminal_safe`]).
fn cell(v: &Value) -> String {
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
    terminal_safe(&text, false).into_owned()
}

/// The `list` table.
pub fn format_table(dumps: &[StoredDump]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24}  {:<28}  {:<30}  {:<24}  {:>9}  {:<8}  REV",
        "COMPLETED", "SOURCE", "DUMP", "KERNEL", "PACKETS", "STATE"
    );
    for d in dumps {
        let m = &d.meta;
        let packets = format!("{}/{}", num(&m["received"]), num(&m["packet_count"]));
        let _ = writeln!(
            out,
            "{:<24}  {:<28}  {:<30}  {:<24}  {:>9}  {:<8}  {}",
            d.completed(),
            cell(&m["source"]),
            terminal_safe(&d.name(), false),
            cell(&m["kernel_version"]),
            packets,
            state(m),
            num(&m["revision"]),
        );
    }
    out
}

/// The `list --json` array: each dump's metadata plus `name`.
pub fn format_json(dumps: &[StoredDump]) -> String {
    let items: Vec<Value> = dumps
        .iter()
        .map(|d| {
            let mut m = d.meta.clone();
            if let Value::Object(o) = &mut m {
                o.insert("name".into(), Value::String(d.name()));
            }
            m
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&Value::Array(items)).unwrap_or_default();
    s.push('\n');
    s
}

/// The `show` summary (metadata lines; the text follows it).
pub fn format_summary(d: &StoredDump) -> String {
    let m = &d.meta;
    let mut out = String::new();
    let s = cell;
    let _ = writeln!(out, "dump:      {}", terminal_safe(&d.name(), false));
    let _ = writeln!(out, "source:    {}", s(&m["source"]));
    let _ = writeln!(
        out,
        "ids:       boot {} dump {} type {} version {} generation {}",
        num(&m["boot_id"]),
        num(&m["dump_id"]),
        num(&m["type"]),
        num(&m["version"]),
        num(&m["generation"])
    );
    let _ = writeln!(out, "kernel:    {}", s(&m["kernel_version"]));
    let _ = writeln!(
        out,
        "packets:   {}/{} {}, revision {}",
        num(&m["received"]),
        num(&m["packet_count"]),
        state(m),
        num(&m["revision"])
    );
    let _ = writeln!(out, "missing:   {}", m["missing"]);
    let _ = writeln!(out, "zeroed:    {}", m["zeroed"]);
    // Metadata stored before protocol 3 has no evidence counts: nothing to show.
    let count = |k: &str| m[k].as_u64().unwrap_or(0);
    let (conflicts, foreign, late) = (
        count("conflicts"),
        count("foreign_port_chunks"),
        count("late_chunks"),
    );
    if conflicts + foreign + late > 0 {
        let _ = writeln!(
            out,
            "evidence:  conflicts {conflicts} foreign_port_chunks {foreign} late_chunks {late}"
        );
    }
    let _ = writeln!(out, "first:     {}", s(&m["first_seen"]));
    let _ = writeln!(out, "completed: {}", s(&m["completed"]));
    let _ = writeln!(
        out,
        "relay:     {} instance {} seq {}",
        s(&m["relay"]),
        num(&m["relay_instance"]),
        num(&m["seq"])
    );
    if !m["cpu"].is_null() {
        let _ = writeln!(out, "cpu:       {}", m["cpu"]);
    }
    if let Value::Object(regs) = &m["registers"] {
        let regs: Vec<String> = regs.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
        let _ = writeln!(out, "registers: {}", regs.join(" "));
    }
    if !m["user_blob"].is_null() {
        let _ = writeln!(out, "user_blob: {}", s(&m["user_blob"]));
    }
    out
}

/// The dump's text.
pub fn read_text(d: &StoredDump) -> Result<Vec<u8>, CatalogError> {
    fs::read(&d.log_path).map_err(io_err(&d.log_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(meta: Value) -> StoredDump {
        StoredDump {
            ip_dir: "10.0.0.5".into(),
            key: "b0-d1-t1-v2-g0".into(),
            meta,
            log_path: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn evidence_counts_show_when_present_and_older_metadata_still_reads() {
        let older = stored(serde_json::json!({"revision": 1, "received": 3, "packet_count": 3}));
        assert!(!format_summary(&older).contains("evidence:"));
        let flagged = stored(serde_json::json!({
            "revision": 2, "conflicts": 1, "foreign_port_chunks": 0, "late_chunks": 4
        }));
        assert!(format_summary(&flagged)
            .contains("evidence:  conflicts 1 foreign_port_chunks 0 late_chunks 4\n"));
    }
}
