//! Wall-clock time for storage: milliseconds since the Unix epoch and their RFC 3339 form.
//!
//! Records carry relay-clock times; the session converts them with
//! [`netoops_core::upstream::record::relay_to_wall_ms`] against the arrival time taken here.
//! The string form is fixed-width UTC with milliseconds (`2024-05-01T12:00:00.000Z`), so
//! lexical order is time order (the `list` command sorts on it).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let mut s = String::with_capacity(24);
    // Writing into a String cannot fail.
    let _ = netoops_core::time::write_utc(&mut s, ms);
    s
}

/// Parses the form [`rfc3339`] writes (`2024-05-01T12:00:00.000Z`; the milliseconds are
/// optional) back to ms since the epoch. Anything else is `None`.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match b.get(19) {
        Some(b'.') if b.len() >= 24 && b[23] == b'Z' => num(20..23)?,
        Some(b'Z') => 0,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for y >= 1970.
    let (y, m) = if mo <= 2 {
        (y.checked_sub(1)?, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert!(now_ms() > 1_700_000_000_000);
        for ms in [0, 951_782_400_000, 1_700_000_000_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        for bad in [
            "",
            "x",
            "2023-13-14T22:13:20.123Z",
            "2023-11-14 22:13:20.123Z",
            "2023-11-14T22:13:20.1",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
