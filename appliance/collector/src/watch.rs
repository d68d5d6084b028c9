//! `netoops-collect watch`: new crashes in a storage directory, one line each, as they land.
//!
//! It polls the directory (no inotify, so it also works over NFS and on a copy being synced):
//! each source's `crashes.jsonl` is read from where the last poll stopped, and a dump is new
//! when its `.json` appears and parses (its text is already on disk then, see
//! [`crate::store`]; a new dump's `.json` is written in place, so a poll can find it empty or
//! half written, and the next poll looks again). What was there when `watch` started is not
//! printed. Every field from the wire is escaped for the terminal
//! ([`crate::catalog::terminal_safe`]); `--json` prints the stored JSON as one line.

use crate::catalog::terminal_safe;
use crate::store::CRASHES_FILE;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes of one `crashes.jsonl` read per poll, so a huge backlog cannot stall the others.
const READ_MAX: u64 = 1 << 20;

/// What is new since the last poll.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A crash notice line (the stored JSON).
    Crash(Value),
    /// A stored dump: its `<ip>/<key>` and metadata.
    Dump(String, Value),
}

/// The watcher's memory of what it has seen.
#[derive(Debug)]
pub struct Watch {
    dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
    dumps: HashSet<String>,
}

impl Watch {
    /// Starts watching `dir`: everything already there counts as seen.
    pub fn new(dir: &Path) -> io::Result<Watch> {
        let mut w = Watch {
            dir: dir.to_path_buf(),
            offsets: HashMap::new(),
            dumps: HashSet::new(),
        };
        w.scan(false)?;
        Ok(w)
    }

    /// What is new since the last call, oldest crash lines first, then new dumps by name.
    pub fn poll(&mut self) -> io::Result<Vec<Event>> {
        self.scan(true)
    }

    fn scan(&mut self, report: bool) -> io::Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut new_dumps = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type()?.is_dir() {
                continue;
            }
            let sdir = entry.path();
            let crashes = sdir.join(CRASHES_FILE);
            if let Ok(meta) = fs::metadata(&crashes) {
                let len = meta.len();
                let from = *self.offsets.get(&crashes).unwrap_or(&0);
                let from = if len < from { 0 } else { from };
                let upto = if report {
                    len.min(from + READ_MAX)
                } else {
                    len
                };
                if report && upto > from {
                    let (lines, used) = read_lines(&crashes, from, upto)?;
                    events.extend(lines.into_iter().map(Event::Crash));
                    self.offsets.insert(crashes, from + used);
                } else {
                    self.offsets.insert(crashes, upto);
                }
            }
            for f in fs::read_dir(&sdir)?.flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                let Some(key) = fname.strip_suffix(".json") else {
                    continue;
                };
                if key.starts_with('.') {
                    continue;
                }
                let full = format!("{name}/{key}");
                if self.dumps.contains(&full) {
                    continue;
                }
                if !report {
                    // What is there at the start counts as seen, without reading it.
                    self.dumps.insert(full);
                    continue;
                }
                // Seen once it parses: until then it is being written (or was left torn by
                // a crash of the collector, until the relay resends it).
                let meta = fs::read(f.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                if let Some(meta) = meta {
                    self.dumps.insert(full.clone());
                    new_dumps.push((full, meta));
                }
            }
        }
        new_dumps.sort_by(|a, b| a.0.cmp(&b.0));
        events.extend(new_dumps.into_iter().map(|(n, m)| Event::Dump(n, m)));
        Ok(events)
    }
}

/// The whole lines between `from` and `upto`, parsed (a line that is not JSON is skipped), and
/// the bytes they took; a torn last line waits for the next poll.
fn read_lines(path: &Path, from: u64, upto: u64) -> io::Result<(Vec<Value>, u64)> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(upto - from).read_to_end(&mut buf)?;
    let used = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = buf[..used]
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((lines, used as u64))
}

/// One terminal line for an event.
pub fn format_line(event: &Event) -> String {
    let s = |v: &Value| {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        terminal_safe(&text, false).into_owned()
    };
    match event {
        Event::Crash(c) => format!(
            "{} crash   {} kernel {}: {}",
            s(&c["seen"]),
            s(&c["source"]),
            s(&c["kernel_version"]),
            s(&c["text"]).chars().take(160).collect::<String>()
        ),
        Event::Dump(name, m) => format!(
            "{} dump    {} {} {}/{} packets, kernel {}",
            s(&m["completed"]),
            terminal_safe(name, false),
            if m["complete"] == Value::Bool(true) {
                "complete"
            } else {
                "PARTIAL"
            },
            s(&m["received"]),
            s(&m["packet_count"]),
            s(&m["kernel_version"])
        ),
    }
}

/// One JSON line for an event.
pub fn format_json(event: &Event) -> String {
    let v = match event {
        Event::Crash(c) => serde_json::json!({ "event": "crash", "crash": c }),
        Event::Dump(name, m) => serde_json::json!({ "event": "dump", "name": name, "dump": m }),
    };
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_new_once_its_json_parses_and_only_once() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("10.0.0.1");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("old.json"), b"").unwrap();
        let mut w = Watch::new(tmp.path()).unwrap();
        // Being written: not reported yet, and not forgotten.
        fs::write(src.join("b1-d1-t1-v3-g0.log"), b"text").unwrap();
        fs::write(src.join("b1-d1-t1-v3-g0.json"), b"").unwrap();
        assert_eq!(w.poll().unwrap(), []);
        fs::write(src.join("b1-d1-t1-v3-g0.json"), br#"{"complete":tru"#).unwrap();
        assert_eq!(w.poll().unwrap(), []);
        fs::write(src.join("b1-d1-t1-v3-g0.json"), br#"{"complete":true}"#).unwrap();
        assert_eq!(
            w.poll().unwrap(),
            [Event::Dump(
                "10.0.0.1/b1-d1-t1-v3-g0".into(),
                serde_json::json!({"complete": true})
            )]
        );
        assert_eq!(w.poll().unwrap(), []);
        // What was there at the start stays seen, whatever it holds later.
        fs::write(src.join("old.json"), b"{}").unwrap();
        assert_eq!(w.poll().unwrap(), []);
    }
}
