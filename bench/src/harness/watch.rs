//! Precise times of the collector's writes, from inotify.
//!
//! File times cannot time a pipeline that takes a few milliseconds: Linux stamps a file
//! whose times nobody has read since its last change with the coarse clock (multigrain
//! timestamps, 6.13+), which lags by up to a scheduler tick, 4 ms at HZ=250. Measured on the
//! build machine, a file created, fsynced and renamed carried a ctime 4 ms *before* the moment
//! the program started creating it (median), and the suite's fastest dumps came out
//! "durable" before their last datagram was sent.
//!
//! [`FileWatch`] watches the collector's per-source directories and stamps, on the same wall
//! clock as the generator, when each `.json` was renamed into place (`IN_MOVED_TO`: a newer
//! revision; its text was synced before) and when each file was first written (`IN_MODIFY`:
//! a new dump's `.json`, written after its text was synced, or a crash line's append). A
//! thread blocks on the inotify descriptor and stamps each batch of events as it reads them,
//! so a stamp is never early and is late only by the wake-up of that thread.
//! inotify does not recurse, so the harness creates a machine's directory and watches it
//! before sending ([`FileWatch::watch_dirs`]); the collector stores into an existing directory
//! as into one it made. A file with no event (a queue overflow, an unwatched directory) falls
//! back to its file time in [`super::storage::Storage`].

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::gen::sendlog::wall_ns;

/// What the reader thread learned, by (directory name, file name).
#[derive(Default)]
struct State {
    /// Watch descriptor -> directory name (relative to the root).
    dirs: HashMap<i32, String>,
    /// Last rename into place.
    renamed: HashMap<(String, String), u64>,
    /// First write.
    first_write: HashMap<(String, String), u64>,
    /// The kernel's queue overflowed: some events are missing.
    overflowed: bool,
}

struct Shared {
    fd: OwnedFd,
    state: Mutex<State>,
    stop: AtomicBool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// See the module documentation.
pub struct FileWatch {
    root: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("root", &self.root)
            .finish()
    }
}

/// How long the reader waits for events before it looks at the stop flag, ms.
const POLL_MS: i32 = 100;

impl FileWatch {
    /// Starts watching under `root` (created if missing); no directory is watched yet.
    pub fn new(root: &Path) -> io::Result<FileWatch> {
        fs::create_dir_all(root)?;
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let shared = Arc::new(Shared {
            fd,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let reader = shared.clone();
        let thread = std::thread::Builder::new()
            .name("file-watch".into())
            .spawn(move || read_events(&reader))?;
        Ok(FileWatch {
            root: root.to_path_buf(),
            shared,
            thread: Some(thread),
        })
    }

    /// Creates `root/<name>` for each name and watches it (a directory already watched is
    /// watched once).
    pub fn watch_dirs<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        for name in names {
            let dir = self.root.join(name);
            fs::create_dir_all(&dir)?;
            let path = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("NUL in a path"))?;
            // SAFETY: a valid descriptor, a NUL-terminated path that outlives the call, and
            // a plain event mask.
            let wd = unsafe {
                libc::inotify_add_watch(
                    self.shared.fd.as_raw_fd(),
                    path.as_ptr(),
                    libc::IN_MOVED_TO | libc::IN_MODIFY,
                )
            };
            if wd < 0 {
                return Err(io::Error::last_os_error());
            }
            lock(&self.shared.state).dirs.insert(wd, name.to_string());
        }
        Ok(())
    }

    /// When `dir/name` was last renamed into place, ns since the Unix epoch.
    pub fn renamed_ns(&self, dir: &str, name: &str) -> Option<u64> {
        lock(&self.shared.state)
            .renamed
            .get(&(dir.to_string(), name.to_string()))
            .copied()
    }

    /// When `dir/name` was first written, ns since the Unix epoch.
    pub fn first_write_ns(&self, dir: &str, name: &str) -> Option<u64> {
        lock(&self.shared.state)
            .first_write
            .get(&(dir.to_string(), name.to_string()))
            .copied()
    }

    /// Whether the kernel dropped events (their files fall back to file times).
    pub fn overflowed(&self) -> bool {
        lock(&self.shared.state).overflowed
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reader thread: waits for events, stamps each read, records them.
fn read_events(shared: &Shared) {
    // Room for hundreds of events per read (each is 16 bytes plus its name).
    let mut buf = vec![0u8; 64 * 1024];
    let fd = shared.fd.as_raw_fd();
    while !shared.stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, ours, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let now = wall_ns();
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        record(&mut lock(&shared.state), &buf[..n], now);
    }
}

/// Size of `struct inotify_event` before its name.
const EVENT_HEADER: usize = 16;

/// Records the events in `bytes` (whole `struct inotify_event`s), all seen at `now`.
fn record(state: &mut State, bytes: &[u8], now: u64) {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + EVENT_HEADER) {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&header[i..i + 4]);
            w
        };
        let wd = i32::from_ne_bytes(word(0));
        let mask = u32::from_ne_bytes(word(4));
        let len = u32::from_ne_bytes(word(12)) as usize;
        let name_bytes = bytes
            .get(at + EVENT_HEADER..at + EVENT_HEADER + len)
            .unwrap_or_default();
        at += EVENT_HEADER + len;
        if mask & libc::IN_Q_OVERFLOW != 0 {
            state.overflowed = true;
            continue;
        }
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(len);
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        let Some(dir) = state.dirs.get(&wd).cloned() else {
            continue;
        };
        if mask & libc::IN_MOVED_TO != 0 {
            state.renamed.insert((dir.clone(), name.clone()), now);
        }
        if mask & libc::IN_MODIFY != 0 {
            state.first_write.entry((dir, name)).or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn renames_and_first_writes_are_stamped_never_early() {
        let root = tempfile::tempdir().unwrap();
        let w = FileWatch::new(root.path()).unwrap();
        w.watch_dirs(["10.1.0.1", "10.1.0.2"]).unwrap();
        w.watch_dirs(["10.1.0.1"]).unwrap();
        let dir = root.path().join("10.1.0.1");

        let before_crash = wall_ns();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("crashes.jsonl"))
            .unwrap();
        f.write_all(b"{}\n").unwrap();
        f.sync_data().unwrap();
        assert!(wait_for(|| w
            .first_write_ns("10.1.0.1", "crashes.jsonl")
            .is_some()));
        let crash = w.first_write_ns("10.1.0.1", "crashes.jsonl").unwrap();
        // A second line does not move the first write.
        f.write_all(b"{}\n").unwrap();

        let before_dump = wall_ns();
        fs::write(dir.join("k.json.part"), b"{}").unwrap();
        fs::rename(dir.join("k.json.part"), dir.join("k.json")).unwrap();
        assert!(wait_for(|| w.renamed_ns("10.1.0.1", "k.json").is_some()));
        let renamed = w.renamed_ns("10.1.0.1", "k.json").unwrap();
        let after = wall_ns();

        assert!(
            before_crash <= crash && crash <= before_dump,
            "crash line stamp"
        );
        assert!(before_dump <= renamed && renamed <= after, "rename stamp");

        // A new dump's `.json` is written in place: its first write is the moment.
        let before_new = wall_ns();
        fs::write(dir.join("n.json"), b"{}").unwrap();
        assert!(wait_for(|| w
            .first_write_ns("10.1.0.1", "n.json")
            .is_some()));
        let written = w.first_write_ns("10.1.0.1", "n.json").unwrap();
        assert!(before_new <= written && written <= wall_ns(), "write stamp");
        assert_eq!(w.renamed_ns("10.1.0.1", "n.json"), None);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.first_write_ns("10.1.0.1", "crashes.jsonl"), Some(crash));
        assert_eq!(w.renamed_ns("10.1.0.1", "k.json.part"), None);
        assert_eq!(w.renamed_ns("10.1.0.2", "k.json"), None);
        assert!(!w.overflowed());
    }

    #[test]
    fn events_parse_with_padded_names() {
        let mut st = State::default();
        st.dirs.insert(3, "d".into());
        let mut bytes = Vec::new();
        for (wd, mask, name) in [
            (3, libc::IN_MOVED_TO, &b"a.json\0\0\0\0"[..]),
            (3, libc::IN_MODIFY, &b"crashes.jsonl\0\0\0"[..]),
            (9, libc::IN_MOVED_TO, &b"other\0\0\0"[..]),
            (-1, libc::IN_Q_OVERFLOW, &b""[..]),
        ] {
            bytes.extend_from_slice(&i32::to_ne_bytes(wd));
            bytes.extend_from_slice(&u32::to_ne_bytes(mask));
            bytes.extend_from_slice(&u32::to_ne_bytes(0));
            bytes.extend_from_slice(&u32::to_ne_bytes(name.len() as u32));
            bytes.extend_from_slice(name);
        }
        record(&mut st, &bytes, 42);
        assert_eq!(st.renamed.get(&("d".into(), "a.json".into())), Some(&42));
        assert_eq!(
            st.first_write.get(&("d".into(), "crashes.jsonl".into())),
            Some(&42)
        );
        assert_eq!(st.renamed.len(), 1);
        assert!(st.overflowed);
    }
}
