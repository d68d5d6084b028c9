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
    }
}
