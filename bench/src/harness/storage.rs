//! Reading what the collector stored, with the times it became durable.
//!
//! The collector (`netoops-collect serve --dir DIR`) stores in group-committed batches (see
//! its `store` module): a batch's `.log` files (and a newer revision's `.json` temporaries)
//! are written and the file system synced (sync 1), then each new dump's `.json` is written
//! (a newer revision's renamed over the stored one) and each crash notice line appended to
//! `DIR/<ip>/crashes.jsonl`, then the file system is synced again (sync 2) and the batch
//! acknowledged. Times come from the file system, at nanosecond resolution, on the same
//! `CLOCK_REALTIME` the generator stamps with:
//!
//! - a dump is durable at the `.json`'s ctime: its write (or `rename`) sets it, after sync 1
//!   made the text durable (only sync 2, for the `.json` itself, follows);
//! - a crash line at `crashes.jsonl`'s mtime: the append comes after sync 1 (each benchmark
//!   machine crashes once, so the file holds one line; only sync 2 follows).
//!
//! Both moments leave out sync 2, the same for every record of a batch.
//!
//! File times are coarse, though (up to a scheduler tick early, see [`super::watch`]), so a
//! storage made with [`Storage::watched`] takes both moments from inotify instead (a `.json`'s
//! last rename, or else its first write; a crash log's first write), and falls back to the
//! file times for a file it saw no event for.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::watch::FileWatch;

/// One dump as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDump {
    pub complete: bool,
    /// Runs of packet numbers the collector never got, inclusive.
    pub missing: Vec<[u32; 2]>,
    pub received: u32,
    pub packet_count: u32,
    pub text_bytes: u64,
    pub revision: u64,
    /// When the `.json` was renamed into place, ns since the Unix epoch.
    pub durable_ns: u64,
}

impl StoredDump {
    /// Whether packet 0, the newest 1024 bytes of the log, is in the dump.
    pub fn has_newest_chunk(&self) -> bool {
        !self.missing.iter().any(|&[first, _]| first == 0)
    }
}

fn ns(secs: i64, nanos: i64) -> u64 {
    u64::try_from(secs)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nanos).unwrap_or(0))
}

/// The collector's storage directory.
#[derive(Clone, Debug)]
pub struct Storage {
    dir: PathBuf,
    watch: Option<std::sync::Arc<FileWatch>>,
}

impl Storage {
    /// Times from file times only.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            watch: None,
        }
    }

    /// Times from inotify, for the source directories made with [`Storage::prepare`].
    pub fn watched(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let watch = FileWatch::new(&dir)?;
        Ok(Self {
            dir,
            watch: Some(std::sync::Arc::new(watch)),
        })
    }

    /// Creates and watches the directories of these sources before they send (nothing to do
    /// without a watch: the collector creates them).
    pub fn prepare<'a>(&self, ips: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        match &self.watch {
            Some(w) => w.watch_dirs(ips),
            None => Ok(()),
        }
    }

    /// Whether inotify lost events (some times then came from the file system).
    pub fn lost_events(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.overflowed())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn json_path(&self, ip: &str, key: &str) -> PathBuf {
        self.dir.join(ip).join(format!("{key}.json"))
    }

    /// The dump `key` from source `ip`, if its `.json` exists and parses.
    pub fn dump(&self, ip: &str, key: &str) -> Option<StoredDump> {
        let path = self.json_path(ip, key);
        let meta = fs::metadata(&path).ok()?;
        let v: Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        let u32_of = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
        let missing = v["missing"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let a = u32::try_from(r.get(0)?.as_u64()?).ok()?;
                let b = u32::try_from(r.get(1)?.as_u64()?).ok()?;
                Some([a, b])
            })
            .collect();
        Some(StoredDump {
            complete: v["complete"].as_bool()?,
            missing,
            received: u32_of("received")?,
            packet_count: u32_of("packet_count")?,
            text_bytes: v["text_bytes"].as_u64()?,
            revision: v["revision"].as_u64().unwrap_or(0),
            durable_ns: self
                .watch
                .as_ref()
                .and_then(|w| {
                    let name = format!("{key}.json");
                    // A newer revision is renamed over the first one, written in place.
                    w.renamed_ns(ip, &name)
                        .or_else(|| w.first_write_ns(ip, &name))
                })
                .unwrap_or_else(|| ns(meta.ctime(), meta.ctime_nsec())),
        })
    }

    /// Whether the stored text of dump `key` from `ip` is exactly `expected`.
    pub fn text_is(&self, ip: &str, key: &str, expected: &[u8]) -> io::Result<bool> {
        let text = fs::read(self.dir.join(ip).join(format!("{key}.log")))?;
        Ok(text == expected)
    }

    /// When `ip`'s crash notice line was written (its first write, or the mtime of its
    /// `crashes.jsonl`).
    pub fn crash_line_ns(&self, ip: &str) -> Option<u64> {
        let meta = fs::metadata(self.dir.join(ip).join("crashes.jsonl")).ok()?;
        if meta.len() == 0 {
            return None;
        }
        let watched = self
            .watch
            .as_ref()
            .and_then(|w| w.first_write_ns(ip, "crashes.jsonl"));
        Some(watched.unwrap_or_else(|| ns(meta.mtime(), meta.mtime_nsec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::sendlog::wall_ns;

    #[test]
    fn reads_dumps_times_and_text() {
        let dir =
            std::env::temp_dir().join(format!("netoops-bench-storage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("10.1.0.1")).unwrap();
        let before = wall_ns();
        fs::write(dir.join("10.1.0.1/b0-d7-t1-v2-g0.log"), b"text").unwrap();
        fs::write(
            dir.join("10.1.0.1/b0-d7-t1-v2-g0.json"),
            r#"{"complete": false, "missing": [[0, 0], [5, 9]], "received": 4,
                "packet_count": 10, "text_bytes": 4, "revision": 2}"#,
        )
        .unwrap();
        fs::write(dir.join("10.1.0.1/crashes.jsonl"), b"{}\n").unwrap();
        let after = wall_ns();
        let s = Storage::new(&dir);
        let d = s.dump("10.1.0.1", "b0-d7-t1-v2-g0").unwrap();
        assert_eq!(d.missing, vec![[0, 0], [5, 9]]);
        assert!(!d.complete && !d.has_newest_chunk());
        assert_eq!(
            (d.received, d.packet_count, d.text_bytes, d.revision),
            (4, 10, 4, 2)
        );
        // The file system's clock may be coarser than ours: allow one tick (10 ms).
        assert!(d.durable_ns + 10_000_000 >= before && d.durable_ns <= after + 10_000_000);
        assert!(s.crash_line_ns("10.1.0.1").is_some());
        assert!(s.crash_line_ns("10.1.0.2").is_none());
        assert!(s.dump("10.1.0.1", "b0-d8-t1-v2-g0").is_none());
        assert!(s.text_is("10.1.0.1", "b0-d7-t1-v2-g0", b"text").unwrap());
        assert!(!s.text_is("10.1.0.1", "b0-d7-t1-v2-g0", b"texT").unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
