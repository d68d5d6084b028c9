//! The relay's output: one line per event, each prefixed with a UTC timestamp and flushed at
//! once, so a pipe or a log collector sees every line as it happens.
//!
//! Write errors (a closed pipe) are ignored: the relay's job is delivery, not its log.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A line-oriented, timestamped writer.
pub struct Console<W: Write> {
    out: W,
    line: String,
}

impl<W: Write> Console<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Console {
            out,
            line: String::with_capacity(256),
        }
    }

    /// Writes `<timestamp> <text>\n` and flushes.
    pub fn line(&mut self, text: impl fmt::Display) {
        self.line.clear();
        let _ = write_utc(&mut self.line, wall_ms());
        let _ = write!(self.line, " {text}");
        self.line.push('\n');
        let _ = self.out.write_all(self.line.as_bytes());
        let _ = self.out.flush();
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

/// UTC now, in milliseconds since 1970.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub use netoops_core::time::write_utc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_stamped_and_terminated() {
        let mut c = Console::new(Vec::new());
        c.line("one");
        c.line(format_args!("two {}", 2));
        let text = String::from_utf8(c.get_ref().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("Z one"), "{}", lines[0]);
        assert!(lines[1].ends_with("Z two 2"), "{}", lines[1]);
        assert_eq!(lines[0].find('T'), Some(10));
    }
}
