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

/// The console field readers: one parser for the relays' documented lines
/// (`netoops_core::console`).
pub use netoops_core::console::{capacity_after_in, number_after, number_after_in, number_before};

#[cfg(test)]
mod tests {
    use super::*;

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
