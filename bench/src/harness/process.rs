//! Child processes of a benchmark (relay, collector, QEMU, baseline receiver) with their
//! output captured line by line, and the counter lines they print.
//!
//! A [`Process`] kills its child on drop, so a failed run leaves nothing behind. Lines are
//! read on two threads (stdout, stderr) into one shared list with their arrival time; callers
//! wait for a line with [`Process::wait_for`] and read numbers out of counter lines with
//! [`number_after`].

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One captured line.
#[derive(Clone, Debug)]
pub struct Line {
    /// When it was read.
    pub at: Instant,
    /// Its text, without the line end.
    pub text: String,
}

type Lines = Arc<Mutex<Vec<Line>>>;

fn lock(lines: &Lines) -> MutexGuard<'_, Vec<Line>> {
    lines.lock().unwrap_or_else(|p| p.into_inner())
}

fn capture(stream: impl Read + Send + 'static, lines: Lines) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                    lock(&lines).push(Line {
                        at: Instant::now(),
                        text,
                    });
                }
            }
        }
    })
}

/// A running child whose output is captured; killed on drop.
pub struct Process {
    name: String,
    child: Child,
    lines: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<Process> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {name}: {e}")))?;
        let lines: Lines = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(capture(out, Arc::clone(&lines)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(capture(err, Arc::clone(&lines)));
        }
        Ok(Process {
            name: name.to_string(),
            child,
            lines,
            readers,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Number of lines captured so far (a position for [`Process::wait_for`]).
    pub fn line_count(&self) -> usize {
        lock(&self.lines).len()
    }

    /// The last line at or after `from` that contains `needle`.
    pub fn last_line_with(&self, from: usize, needle: &str) -> Option<Line> {
        let lines = lock(&self.lines);
        lines
            .get(from..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|l| l.text.contains(needle))
            .cloned()
    }

    /// Every line at or after `from` that contains `needle`.
    pub fn lines_with(&self, from: usize, needle: &str) -> Vec<Line> {
        let lines = lock(&self.lines);
        lines
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|l| l.text.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until a line at or after `from` contains `needle`; fails when the child exits or
    /// `timeout` passes, with the end of its output.
    pub fn wait_for(&mut self, from: usize, needle: &str, timeout: Duration) -> io::Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.last_line_with(from, needle) {
                return Ok(line);
            }
            if !self.running() {
                // Let the readers finish so the error shows the last words.
                thread::sleep(Duration::from_millis(50));
                return Err(io::Error::other(format!(
                    "{} exited before printing {needle:?}:\n{}",
                    self.name,
                    self.tail(20)
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not print {needle:?} within {:?}:\n{}",
                        self.name,
                        timeout,
                        self.tail(20)
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let lines = lock(&self.lines);
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every line captured, joined (for a log file).
    pub fn transcript(&self) -> String {
        let lines = lock(&self.lines);
        let mut out = String::new();
        for l in lines.iter() {
            out.push_str(&l.text);
            out.push('\n');
        }
        out
    }

    /// Peak resident set size of the child (`VmHWM` in `/proc/<pid>/status`), if readable.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find_map(|l| {
            let kib = l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim();
            kib.parse::<u64>().ok().map(|k| k * 1024)
        })
    }

    /// CPU time the child's threads have run, in ns (`/proc/<pid>/task/*/schedstat`, first
    /// field), if readable.
    pub fn cpu_ns(&self) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        let mut total = 0u64;
        for task in tasks.filter_map(Result::ok) {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }

    /// Sends SIGTERM and waits up to `grace` for the child to exit, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if self.running() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) and a
            // plain signal number; it touches no memory.
            let _ = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number that follows the word `key` in `line` (`"datagrams 12 chunks 3"`, key
/// `datagrams` gives 12): the first occurrence of `key` followed by a space and digits.
pub fn number_after(line: &str, key: &str) -> Option<u64> {
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        let before_ok = at == 0 || rest[..at].ends_with([' ', '(', '|', ':']);
        let after = &rest[at + key.len()..];
        if before_ok {
            if let Some(value) = after.strip_prefix(' ') {
                let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse() {
                    return Some(n);
                }
            }
        }
        rest = after;
    }
    None
}

/// The number that follows `key` after the first occurrence of `section` in `line` (for lines
/// where a word repeats: `"counters: datagrams 5 | socket datagrams 7"`).
pub fn number_after_in(line: &str, section: &str, key: &str) -> Option<u64> {
    let at = line.find(section)?;
    number_after(&line[at + section.len()..], key)
}

/// The number right before the word `key` (`"cycles/datagram 80 interval 75 boot"`, key
/// `boot` gives 75); `None` when a `-` (no samples) or anything else stands there.
pub fn number_before(line: &str, key: &str) -> Option<u64> {
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        let after = &rest[at + key.len()..];
        let whole = after.is_empty() || after.starts_with([' ', ')', '|', ',']);
        if whole {
            if let Some(before) = rest[..at].strip_suffix(' ') {
                let digits = before.rsplit(' ').next().unwrap_or_default();
                if let Ok(n) = digits.parse() {
                    return Some(n);
                }
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_whole_words() {
        let line = "2026-01-01T00:00:00Z counters: datagrams 3889 chunks 1300 dup 2589 | \
                    dumps started 20 complete 20 partial 0 held 20 chunks 1300/59160 | \
                    socket datagrams 4000 truncated 0 kernel_drops 11";
        assert_eq!(number_after(line, "datagrams"), Some(3889));
        assert_eq!(number_after(line, "dup"), Some(2589));
        assert_eq!(number_after(line, "complete"), Some(20));
        assert_eq!(number_after(line, "kernel_drops"), Some(11));
        assert_eq!(number_after(line, "drops"), None);
        assert_eq!(number_after_in(line, "socket", "datagrams"), Some(4000));
        assert_eq!(number_after_in(line, "held", "chunks"), Some(1300));
        assert_eq!(number_after(line, "missing"), None);
        let fast = "fastpath: frames 5 datagrams 5 accepted 5 dropped 0 (ip_checksum 0) \
                    cycles/datagram - interval 40117 boot";
        assert_eq!(number_after(fast, "ip_checksum"), Some(0));
        assert_eq!(number_before(fast, "boot"), Some(40117));
        assert_eq!(number_before(fast, "interval"), None);
        assert_eq!(number_after(fast, "cycles/datagram"), None);
        let both = "cycles/datagram 812 interval 790 boot";
        assert_eq!(number_before(both, "interval"), Some(812));
        assert_eq!(number_before(both, "boot"), Some(790));
    }

    #[test]
    fn lines_are_captured_and_waited_for() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo 'two 2' >&2; sleep 0.2; echo three 3"]);
        let mut p = Process::spawn("sh", cmd).unwrap();
        let line = p.wait_for(0, "three", Duration::from_secs(10)).unwrap();
        assert_eq!(number_after(&line.text, "three"), Some(3));
        assert!(p.last_line_with(0, "two").is_some());
        assert_eq!(p.lines_with(0, "o").len(), 2);
        p.stop(Duration::from_secs(1));
        assert!(!p.running());
        assert_eq!(p.line_count(), 3);
        let err = p.wait_for(3, "four", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }

    #[test]
    fn cpu_time_is_read_while_running() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30",
        ]);
        let mut p = Process::spawn("busy", cmd).unwrap();
        let first = p.cpu_ns().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(p.cpu_ns().unwrap() >= first);
        assert!(p.peak_rss_bytes().unwrap() > 0);
        p.stop(Duration::from_secs(1));
        assert!(p.cpu_ns().is_none());
    }
}
