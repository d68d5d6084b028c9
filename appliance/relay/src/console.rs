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

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn write_utc(out: &mut impl fmt::Write, ms: u64) -> fmt::Result {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(ms: u64) -> String {
        let mut s = String::new();
        write_utc(&mut s, ms).unwrap();
        s
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

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
