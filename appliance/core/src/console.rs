//! The console lines other programs read: their format, in one place, and the one parser for
//! them (the end-to-end tests and the benchmark harness use it; the relays print with the
//! markers defined here).
//!
//! Every line may start with anything (the hosted relay's UTC timestamp, a test's prefix);
//! readers look for the marker. The lines:
//!
//! | line | printed by |
//! |---|---|
//! | `listening on <ip>:<port> (...)` | hosted relay (netoops socket), collector |
//! | `netconsole listening on <ip>:<port>` | hosted relay |
//! | `http listening on <ip>:<port>` | hosted relay, with the HTTP endpoint on |
//! | `ready: listening on udp/<port> at <ip> (...)` | appliance, when its loop starts |
//! | `counters: format <N> \| <fields>` and `final counters: format <N> \| <fields>` | both relays ([`crate::relay::Counters`]) |
//! | `fastpath: <fields>`, `nic ingress: <fields>`, `memory: heap <fields>` | appliance |
//! | `boot: ready <N> ms after kernel entry (...)` ([`boot_ready_ms`]) | appliance |
//! | `netoops-relay <version> booted via <protocol> in <N> ms from kernel entry (reset to entry <M> ms, ...)` ([`reset_to_entry_ms`]) | appliance |
//! | `first datagram accepted at <N> ms after kernel entry` ([`first_accepted_ms`]) | appliance, once |
//!
//! Fields: `<key> <number>` pairs, in groups separated by ` | `; a value may be `<used>/<of>`
//! (the key's number is `used`) or be followed by a unit word (`bytes`); a word that is not
//! followed by a number labels what follows it (`dumps started 3 complete 2`,
//! `socket datagrams 7`). A key may repeat in another group: [`number_after_in`] reads it
//! after a label. The self-test lines use `<key>=<number>` pairs, which [`number_after`] reads
//! too. Counter names only ever get added; a reader asks for the ones it needs by name.
//!
//! Versioning: the counters line opens with `format <N>` ([`FORMAT`]). Within one format a
//! field keeps its name and meaning and fields are only added; renaming, removing or changing
//! the meaning of one is a new format. Readers take the line through [`counters`], which
//! refuses a line of another format, so a reader built for one format never misreads another.

use core::net::SocketAddr;

/// Marker of the hosted relay's netoops socket line (and the collector's).
pub const LISTENING: &str = "listening on ";
/// Marker of the hosted relay's netconsole socket line.
pub const NETCONSOLE_LISTENING: &str = "netconsole listening on ";
/// Marker of the hosted relay's HTTP endpoint line.
pub const HTTP_LISTENING: &str = "http listening on ";
/// Marker of the appliance's boot time line, `boot: ready <N> ms after kernel entry (...)`.
pub const BOOT_READY: &str = "boot: ready ";
/// Marker of the appliance's banner, `netoops-relay <version> booted via ...`.
pub const BOOTED: &str = " booted via ";
/// Marker of the appliance's line when its fast path first accepts a datagram.
pub const FIRST_ACCEPTED: &str = "first datagram accepted at ";
/// Marker of a counters line (the relays print `counters:` and, at exit, `final counters:`).
pub const COUNTERS: &str = "counters:";
/// The format of the counters line that this build prints and reads (see the module docs).
pub const FORMAT: u64 = 1;

/// A counters line that [`counters`] does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountersError {
    /// No `counters:` marker in the line.
    NotCounters,
    /// The line names no format (a relay older than the versioned format).
    NoFormat,
    /// The line is of another format than [`FORMAT`].
    OtherFormat(u64),
}

impl core::fmt::Display for CountersError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CountersError::NotCounters => write!(f, "not a counters line"),
            CountersError::NoFormat => write!(f, "counters line without a format"),
            CountersError::OtherFormat(n) => {
                write!(
                    f,
                    "counters line of format {n}, this reader knows format {FORMAT}"
                )
            }
        }
    }
}

/// The fields of a counters line after its `format` field, once the format is checked.
pub fn counters(line: &str) -> Result<impl Iterator<Item = (&str, u64)> + '_, CountersError> {
    let at = line.find(COUNTERS).ok_or(CountersError::NotCounters)?;
    let mut all = fields(&line[at + COUNTERS.len()..]);
    match all.next() {
        Some(("format", FORMAT)) => Ok(all),
        Some(("format", other)) => Err(CountersError::OtherFormat(other)),
        _ => Err(CountersError::NoFormat),
    }
}

/// The address of a `listening on` line. A `netconsole listening on` or `http listening on`
/// line is not one: ask for it with [`netconsole_listening`] or [`http_listening`].
pub fn listening(line: &str) -> Option<SocketAddr> {
    if line.contains(NETCONSOLE_LISTENING) || line.contains(HTTP_LISTENING) {
        return None;
    }
    word_after(line, LISTENING)?.parse().ok()
}

/// The address of a `netconsole listening on` line.
pub fn netconsole_listening(line: &str) -> Option<SocketAddr> {
    word_after(line, NETCONSOLE_LISTENING)?.parse().ok()
}

/// The address of an `http listening on` line.
pub fn http_listening(line: &str) -> Option<SocketAddr> {
    word_after(line, HTTP_LISTENING)?.parse().ok()
}

/// Milliseconds from kernel entry to `ready` in a [`BOOT_READY`] line. `None` for any other
/// line, and for the older form that counted from a TSC that is not zero at reset
/// (`boot: ready <N> ms after reset`).
pub fn boot_ready_ms(line: &str) -> Option<u64> {
    let (ms, _) = after(line, BOOT_READY)?.split_once(" ms after kernel entry")?;
    ms.parse().ok()
}

/// Milliseconds the firmware took from CPU reset to kernel entry, from a [`BOOTED`] banner.
/// `None` for any other line, and where the TSC does not count from reset (KVM, real
/// hardware: `reset to entry unknown`).
pub fn reset_to_entry_ms(line: &str) -> Option<u64> {
    after(line, BOOTED)?;
    let (ms, _) = after(line, "(reset to entry ")?.split_once(" ms")?;
    ms.parse().ok()
}

/// Milliseconds from kernel entry to the first datagram accepted, from a [`FIRST_ACCEPTED`]
/// line.
pub fn first_accepted_ms(line: &str) -> Option<u64> {
    let (ms, _) = after(line, FIRST_ACCEPTED)?.split_once(" ms after kernel entry")?;
    ms.parse().ok()
}

/// The word after the first `marker` in `line`.
pub fn word_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    after(line, marker)?.split_whitespace().next()
}

/// What follows the first `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    Some(&line[line.find(marker)? + marker.len()..])
}

/// The number that follows the field `key` (`"datagrams 12 chunks 3"` or `"rx=12"`): the first
/// occurrence of `key` as a whole word followed by a space or `=` and digits.
pub fn number_after(line: &str, key: &str) -> Option<u64> {
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        let before_ok = at == 0 || rest[..at].ends_with([' ', '(', '|', ':']);
        let after = &rest[at + key.len()..];
        if before_ok {
            if let Some(value) = after.strip_prefix(' ').or_else(|| after.strip_prefix('=')) {
                let end = value
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(value.len());
                if let Ok(n) = value[..end].parse() {
                    return Some(n);
                }
            }
        }
        rest = after;
    }
    None
}

/// The number that follows `key` after the first occurrence of `section` in `line` (for
/// fields whose name repeats: `"counters: datagrams 5 | socket datagrams 7"`).
pub fn number_after_in(line: &str, section: &str, key: &str) -> Option<u64> {
    number_after(after(line, section)?, key)
}

/// The `of` of a `<key> <used>/<of>` field after the first `section` in `line` (the size of
/// what `used` counts: `"held 0 chunks 12/65536"`, section `held`, key `chunks` gives 65536).
pub fn capacity_after_in(line: &str, section: &str, key: &str) -> Option<u64> {
    let mut words = after(line, section)?.split_whitespace();
    while let Some(word) = words.next() {
        if word == key {
            let (_, of) = words.next()?.split_once('/')?;
            return of.parse().ok();
        }
    }
    None
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

/// Every `<key> <number>` (or `<key>=<number>`) field of a line, in order, repeats included.
pub fn fields(line: &str) -> impl Iterator<Item = (&str, u64)> + '_ {
    let mut words = line.split_whitespace().peekable();
    core::iter::from_fn(move || loop {
        let word = words.next()?;
        if let Some((k, v)) = word.split_once('=') {
            if let Ok(n) = v.parse() {
                return Some((k, n));
            }
            continue;
        }
        let number = words.peek().and_then(|next| {
            let used = next.split_once('/').map_or(*next, |(u, _)| u);
            used.parse::<u64>().ok()
        });
        if let Some(n) = number {
            words.next();
            return Some((word, n));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    const HOSTED: &str =
        "2026-01-01T00:00:00.000Z final counters: format 1 | datagrams 3889 chunks 1300 \
        dup 2589 malformed 0 not_allowed 0 no_memory 0 late 0 | dumps started 20 complete 20 \
        partial 0 held 0 chunks 1300/65536 | delivered 40 dropped 0 spool 0/16777216 bytes | \
        socket datagrams 4000 kernel_drops 11";

    #[test]
    fn counters_read_by_name_and_by_section() {
        assert_eq!(number_after(HOSTED, "datagrams"), Some(3889));
        assert_eq!(number_after(HOSTED, "dup"), Some(2589));
        assert_eq!(number_after(HOSTED, "complete"), Some(20));
        assert_eq!(number_after(HOSTED, "kernel_drops"), Some(11));
        assert_eq!(number_after(HOSTED, "drops"), None);
        assert_eq!(number_after(HOSTED, "missing"), None);
        assert_eq!(number_after_in(HOSTED, "socket", "datagrams"), Some(4000));
        assert_eq!(number_after_in(HOSTED, "held", "chunks"), Some(1300));
        assert_eq!(capacity_after_in(HOSTED, "held", "chunks"), Some(65536));
        assert_eq!(capacity_after_in(HOSTED, "held", "missing"), None);
        assert_eq!(capacity_after_in(HOSTED, "socket", "spool"), None);
        assert_eq!(
            capacity_after_in(HOSTED, "delivered", "spool"),
            Some(16777216)
        );
        assert_eq!(number_after_in(HOSTED, COUNTERS, "delivered"), Some(40));
        let f: Vec<(&str, u64)> = counters(HOSTED).unwrap().collect();
        assert_eq!(f[0], ("datagrams", 3889));
        assert!(f.contains(&("started", 20)));
        assert!(f.contains(&("spool", 0)));
        assert_eq!(f.iter().filter(|(k, _)| *k == "datagrams").count(), 2);
    }

    #[test]
    fn the_banner_gives_the_firmware_time_and_the_first_datagram_line_its_time() {
        let tcg = "netoops-relay 0.1.0 booted via pvh in 9 ms from kernel entry (reset to entry \
                   21 ms, tsc 2200 MHz)";
        assert_eq!(reset_to_entry_ms(tcg), Some(21));
        let kvm = "netoops-relay 0.1.0 booted via multiboot2 in 4 ms from kernel entry (reset to \
                   entry unknown, tsc 2200 MHz)";
        assert_eq!(reset_to_entry_ms(kvm), None);
        assert_eq!(reset_to_entry_ms("something (reset to entry 5 ms)"), None);
        assert_eq!(
            first_accepted_ms("first datagram accepted at 131 ms after kernel entry"),
            Some(131)
        );
        assert_eq!(first_accepted_ms("first datagram accepted at soon"), None);
        assert_eq!(first_accepted_ms(tcg), None);
    }

    #[test]
    fn the_boot_line_gives_kernel_entry_to_ready() {
        let tcg = "boot: ready 51 ms after kernel entry (33 ms in the board, reset to ready \
                   59 ms)";
        assert_eq!(boot_ready_ms(tcg), Some(51));
        let kvm = "[ 0.010] boot: ready 7 ms after kernel entry (5 ms in the board, reset to \
                   ready unknown)";
        assert_eq!(boot_ready_ms(kvm), Some(7));
        // The old form counted from a TSC that is not zero at reset: not this figure.
        assert_eq!(
            boot_ready_ms("boot: ready 1406201 ms after reset (12 ms in the board)"),
            None
        );
        assert_eq!(
            boot_ready_ms("ready: listening on udp/2004 at 10.0.2.15"),
            None
        );
    }

    #[test]
    fn counters_lines_of_another_format_are_refused() {
        assert_eq!(
            counters("counters: format 2 | datagrams 5").err(),
            Some(CountersError::OtherFormat(2))
        );
        assert_eq!(
            counters("final counters: datagrams 5").err(),
            Some(CountersError::NoFormat)
        );
        assert_eq!(
            counters("fastpath: frames 5").err(),
            Some(CountersError::NotCounters)
        );
        let ok: Vec<(&str, u64)> = counters("x counters: format 1 | datagrams 5 dup 1")
            .unwrap()
            .collect();
        assert_eq!(ok, [("datagrams", 5), ("dup", 1)]);
    }

    #[test]
    fn fast_path_and_self_test_lines() {
        let fast = "fastpath: frames 5 datagrams 5 accepted 5 dropped 0 (ip_checksum 0) \
                    cycles/datagram - interval 40117 boot";
        assert_eq!(number_after(fast, "ip_checksum"), Some(0));
        assert_eq!(number_before(fast, "boot"), Some(40117));
        assert_eq!(number_before(fast, "interval"), None);
        assert_eq!(number_after(fast, "cycles/datagram"), None);
        let both = "cycles/datagram 812 interval 790 boot";
        assert_eq!(number_before(both, "interval"), Some(812));
        assert_eq!(number_before(both, "boot"), Some(790));
        let echo = "virtio-echo: t_us=1500 rx=12 echo=10 discard=2";
        assert_eq!(number_after(echo, "rx"), Some(12));
        assert_eq!(number_after(echo, "t_us"), Some(1500));
        let f: Vec<(&str, u64)> = fields(echo).collect();
        assert_eq!(
            f,
            [("t_us", 1500), ("rx", 12), ("echo", 10), ("discard", 2)]
        );
    }

    /// The relay's own counters line is what this module documents: every field the tests
    /// and the benchmark read is there by name.
    #[test]
    fn the_relays_counters_line_reads_by_name() {
        let config = crate::config::Config::parse("upstream=127.0.0.1:2005 memory=8M").unwrap();
        let relay = crate::relay::Relay::new(config, 1).unwrap();
        let line = format!("{}", relay.counters());
        assert!(line.starts_with(COUNTERS), "{line}");
        assert!(counters(&line).is_ok(), "{line}");
        for key in [
            "datagrams",
            "chunks",
            "dup",
            "malformed",
            "not_allowed",
            "no_memory",
            "late",
            "started",
            "complete",
            "partial",
            "held",
            "delivered",
            "dropped",
            "spool",
            "nc_datagrams",
            "nc_malformed",
            "nc_crashes",
            "nc_dumps",
            "nc_sources",
        ] {
            assert_eq!(number_after(&line, key), Some(0), "{key} in {line}");
        }
        assert_eq!(number_after_in(&line, "held", "chunks"), Some(0));
    }

    #[test]
    fn listening_lines_name_their_socket() {
        let netoops = format!(
            "2026-01-01T00:00:00.000Z {LISTENING}127.0.0.1:40001 (receive buffer 8388608 bytes)"
        );
        let netconsole = format!("2026-01-01T00:00:00.000Z {NETCONSOLE_LISTENING}127.0.0.1:40002");
        assert_eq!(
            listening(&netoops),
            Some("127.0.0.1:40001".parse().unwrap())
        );
        assert_eq!(listening(&netconsole), None);
        assert_eq!(
            netconsole_listening(&netconsole),
            Some("127.0.0.1:40002".parse().unwrap())
        );
        assert_eq!(netconsole_listening(&netoops), None);
        let http = format!("2026-01-01T00:00:00.000Z {HTTP_LISTENING}127.0.0.1:40003");
        assert_eq!(listening(&http), None);
        assert_eq!(
            http_listening(&http),
            Some("127.0.0.1:40003".parse().unwrap())
        );
        assert_eq!(http_listening(&netoops), None);
        assert_eq!(listening("ready: listening on udp/2004 at 10.0.2.15"), None);
    }
}
