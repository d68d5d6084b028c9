//! The Prometheus text exposition format (version 0.0.4), and the relay's metrics in it.
//!
//! Every number the console's `counters:` line prints is here, by name, with `# HELP` and
//! `# TYPE`: counters end in `_total`, gauges do not, all names start with `netoops_`. Label
//! values and help texts are escaped as the format says (`\\`, `\"`, `\n`), so a relay name
//! or anything else from configuration cannot break a line. The drivers add their own
//! (socket, NIC, fast path, heap) through the same [`Metrics`] writer.

use core::fmt::{self, Write};

use netoops_wire::netconsole::NetconsoleError;
use netoops_wire::netoops::WireErrorKind;

use crate::relay::Relay;
use crate::upstream::link::KindCounts;
use crate::upstream::CloseReason;

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at restart); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Writes metric families in the text format.
pub struct Metrics<'a> {
    out: &'a mut dyn Write,
}

impl<'a> Metrics<'a> {
    /// Writes to `out`.
    pub fn new(out: &'a mut dyn Write) -> Self {
        Metrics { out }
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow with
    /// [`Metrics::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> fmt::Result {
        write!(self.out, "# HELP {name} ")?;
        for c in help.chars() {
            match c {
                '\\' => self.out.write_str("\\\\")?,
                '\n' => self.out.write_str("\\n")?,
                c => self.out.write_char(c)?,
            }
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        write!(self.out, "\n# TYPE {name} {kind}\n")
    }

    /// One sample of the current family; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> fmt::Result {
        self.out.write_str(name)?;
        if !labels.is_empty() {
            self.out.write_char('{')?;
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.write_char(',')?;
                }
                write!(self.out, "{k}=\"")?;
                for c in v.chars() {
                    match c {
                        '\\' => self.out.write_str("\\\\")?,
                        '"' => self.out.write_str("\\\"")?,
                        '\n' => self.out.write_str("\\n")?,
                        c => self.out.write_char(c)?,
                    }
                }
                self.out.write_char('"')?;
            }
            self.out.write_char('}')?;
        }
        writeln!(self.out, " {value}")
    }

    /// A counter family with one sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, Kind::Counter, help)?;
        self.sample(name, &[], value)
    }

    /// A gauge family with one sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, Kind::Gauge, help)?;
        self.sample(name, &[], value)
    }

    /// A family with one sample of a time given in microseconds, written in seconds (the
    /// base unit Prometheus expects) without floating point.
    pub fn seconds(&mut self, name: &str, kind: Kind, help: &str, micros: u64) -> fmt::Result {
        self.family(name, kind, help)?;
        writeln!(
            self.out,
            "{name} {}.{:06}",
            micros / 1_000_000,
            micros % 1_000_000
        )
    }

    /// A family with one sample per `(label value, value)` under label `label`.
    pub fn labelled<'v>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> fmt::Result {
        self.family(name, kind, help)?;
        for (v, n) in values {
            self.sample(name, &[(label, v)], n)?;
        }
        Ok(())
    }
}

/// The value of one series in a text-format body: `series` is a metric name, or a name
/// with its labels exactly as the relays write them (`netoops_malformed_total{reason="late"}`).
/// The one reader of `/metrics` for the tests and the benchmark harness.
pub fn read(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The relay's own metrics: reassembly, netconsole, spool and upstream link (the numbers of
/// the `counters:` line, and the hosted relay's upstream fields).
pub fn write_relay(relay: &Relay, m: &mut Metrics<'_>) -> fmt::Result {
    use Kind::{Counter, Gauge};
    let cfg = relay.config();
    m.family(
        "netoops_relay_info",
        Gauge,
        "The relay's name as reported to collectors and the core's version (always 1).",
    )?;
    m.sample(
        "netoops_relay_info",
        &[("name", &cfg.name), ("version", env!("CARGO_PKG_VERSION"))],
        1,
    )?;

    let r = relay.reassembler().stats();
    m.counter(
        "netoops_datagrams_total",
        "Netoops datagrams handed to the reassembler (console: datagrams).",
        r.datagrams,
    )?;
    m.counter(
        "netoops_chunks_stored_total",
        "Netoops chunks stored, first copies (console: chunks).",
        r.chunks_stored,
    )?;
    m.counter(
        "netoops_duplicates_total",
        "Netoops chunks received again in a later round (console: dup).",
        r.duplicates + r.duplicates_unverified,
    )?;
    m.labelled(
        "netoops_malformed_total",
        Counter,
        "Netoops datagrams dropped as malformed, by reason (console: malformed, the sum).",
        "reason",
        WireErrorKind::ALL
            .iter()
            .map(|k| (k.name(), r.malformed[k.index()])),
    )?;
    m.counter(
        "netoops_not_allowed_total",
        "Datagrams from sources outside the allowlist (console: not_allowed).",
        relay.stats().not_allowed,
    )?;
    m.labelled(
        "netoops_reassembly_dropped_total",
        Counter,
        "Netoops datagrams dropped by the reassembler: its dump alone filled the pool \
         (no_memory) or its chunks were already reclaimed (late).",
        "reason",
        [("no_memory", r.dropped_no_memory), ("late", r.dropped_late)],
    )?;
    m.counter(
        "netoops_dumps_started_total",
        "Netoops dumps started, each with a crash notice (console: dumps started).",
        r.dumps_started,
    )?;
    m.counter(
        "netoops_dumps_complete_total",
        "Netoops dumps emitted complete (console: complete).",
        r.dumps_complete,
    )?;
    m.counter(
        "netoops_dumps_partial_total",
        "Netoops dumps emitted with packets missing (console: partial).",
        r.dumps_partial,
    )?;
    m.gauge(
        "netoops_dumps_held",
        "Netoops dumps assembling or lingering now (console: held).",
        relay.reassembler().dumps_held() as u64,
    )?;
    let (chunks_used, chunks) = relay.reassembler().chunk_usage();
    m.gauge(
        "netoops_chunk_slots_used",
        "Chunk slots of the reassembly pool in use (console: chunks used/of).",
        chunks_used as u64,
    )?;
    m.gauge(
        "netoops_chunk_slots",
        "Chunk slots of the reassembly pool.",
        chunks as u64,
    )?;

    let link = relay.upstream_link();
    let l = link.stats();
    m.labelled(
        "netoops_records_delivered_total",
        Counter,
        "Records a collector acknowledged, by kind (console: delivered, the sum).",
        "kind",
        by_kind(&l.delivered),
    )?;
    m.labelled(
        "netoops_records_dropped_total",
        Counter,
        "Records the full spool dropped, by kind (console: dropped, the sum).",
        "kind",
        by_kind(&l.dropped),
    )?;
    m.labelled(
        "netoops_records_resent_total",
        Counter,
        "Records written again on a later session, by kind (console: resent, the sum).",
        "kind",
        by_kind(&l.resent),
    )?;
    m.counter(
        "netoops_records_refused_total",
        "Records the spool refused outright, larger than the whole spool (console: spool_refused).",
        relay.stats().refused,
    )?;
    m.gauge(
        "netoops_spool_bytes",
        "Bytes held in the delivery spool (console: spool used/of).",
        link.spool().used() as u64,
    )?;
    m.gauge(
        "netoops_spool_capacity_bytes",
        "Bytes the delivery spool may hold.",
        link.spool().capacity() as u64,
    )?;
    m.gauge(
        "netoops_spool_records",
        "Records waiting in the delivery spool.",
        link.spool().len() as u64,
    )?;
    m.gauge(
        "netoops_upstream_connected",
        "1 while a collector session is established.",
        u64::from(link.is_established()),
    )?;
    m.counter(
        "netoops_upstream_connects_total",
        "Connection attempts to collectors (console: upstream connects).",
        l.connects,
    )?;
    m.counter(
        "netoops_upstream_sessions_total",
        "Collector sessions established (console: sessions).",
        l.sessions,
    )?;
    m.counter(
        "netoops_upstream_failovers_total",
        "Sessions established on another collector than the previous one (console: failovers).",
        l.failovers,
    )?;
    m.labelled(
        "netoops_upstream_disconnects_total",
        Counter,
        "Collector connections ended, by reason (console: disconnects, the sum).",
        "reason",
        CloseReason::ALL
            .iter()
            .map(|c| (c.as_str(), l.disconnects.get(*c))),
    )?;
    m.counter(
        "netoops_upstream_malformed_replies_total",
        "Collector replies that failed to frame or decode (console: malformed_replies).",
        l.malformed_replies,
    )?;
    m.counter(
        "netoops_events_dropped_total",
        "Console events dropped because they were not printed in time (console: events_dropped).",
        relay.stats().events_dropped + l.events_dropped,
    )?;

    let nc = relay.console().stats();
    m.counter(
        "netoops_netconsole_datagrams_total",
        "Netconsole datagrams handled (console: nc_datagrams).",
        nc.datagrams,
    )?;
    m.labelled(
        "netoops_netconsole_malformed_total",
        Counter,
        "Netconsole datagrams dropped as malformed, by reason (console: nc_malformed, the sum).",
        "reason",
        NetconsoleError::ALL
            .iter()
            .map(|e| (e.reason(), nc.malformed[e.index()])),
    )?;
    m.counter(
        "netoops_netconsole_duplicates_total",
        "Netconsole records received twice (console: nc_dup).",
        nc.duplicates,
    )?;
    m.counter(
        "netoops_netconsole_crashes_total",
        "Netconsole crashes detected (console: nc_crashes).",
        nc.crashes,
    )?;
    m.counter(
        "netoops_netconsole_dumps_total",
        "Netconsole dumps emitted (console: nc_dumps).",
        nc.dumps,
    )?;
    m.gauge(
        "netoops_netconsole_sources",
        "Netconsole sources tracked now (console: nc_sources).",
        relay.console().sources() as u64,
    )?;
    m.counter(
        "netoops_netconsole_boots_total",
        "Netconsole sources seen booting again (console: nc_boots).",
        nc.boots,
    )?;
    m.counter(
        "netoops_netconsole_blocks_trimmed_total",
        "Netconsole history blocks dropped to stay within budget (console: nc_trimmed).",
        nc.blocks_trimmed,
    )?;
    m.labelled(
        "netoops_netconsole_dropped_total",
        Counter,
        "Netconsole datagrams or sources dropped for want of room, by reason (console: \
         nc_no_memory, the sum).",
        "reason",
        [
            ("no_memory", nc.dropped_no_memory),
            ("crash_full", nc.dropped_crash_full),
            ("no_source", nc.dropped_no_source),
        ],
    )?;

    let ring = relay.dumps();
    m.counter(
        "netoops_http_dumps_stored_total",
        "Dumps stored in the RAM ring that /dumps serves.",
        ring.stats().stored,
    )?;
    m.counter(
        "netoops_http_dumps_evicted_total",
        "Dumps evicted from the RAM ring to make room for newer ones.",
        ring.stats().evicted,
    )?;
    m.counter(
        "netoops_http_dumps_truncated_total",
        "Dumps larger than the whole RAM ring, kept only in part (their newest bytes).",
        ring.stats().truncated,
    )?;
    m.gauge(
        "netoops_http_dump_ring_bytes",
        "Bytes of dump text held in the RAM ring.",
        ring.used() as u64,
    )?;
    m.gauge(
        "netoops_http_dump_ring_capacity_bytes",
        "Size of the RAM ring (http_dumps).",
        ring.capacity() as u64,
    )
}

/// The `kind` label values of a per-kind record counter.
fn by_kind(c: &KindCounts) -> [(&'static str, u64); 2] {
    [("crash_notice", c.crash_seen), ("dump", c.dump)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn families_have_help_and_type_and_labels_are_escaped() {
        let mut s = String::new();
        let mut m = Metrics::new(&mut s);
        m.counter("netoops_x_total", "A \\ thing\nover lines.", 3)
            .unwrap();
        m.family("netoops_y", Kind::Gauge, "Y.").unwrap();
        m.sample("netoops_y", &[("a", "q\"b\\c\nd"), ("b", "")], 7)
            .unwrap();
        m.seconds("netoops_t_seconds", Kind::Gauge, "T.", 12_000_345)
            .unwrap();
        assert_eq!(
            s,
            "# HELP netoops_x_total A \\\\ thing\\nover lines.\n\
             # TYPE netoops_x_total counter\nnetoops_x_total 3\n\
             # HELP netoops_y Y.\n# TYPE netoops_y gauge\n\
             netoops_y{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 7\n\
             # HELP netoops_t_seconds T.\n# TYPE netoops_t_seconds gauge\n\
             netoops_t_seconds 12.000345\n"
        );
        assert_eq!(read(&s, "netoops_x_total"), Some(3.0));
        assert_eq!(read(&s, "netoops_t_seconds"), Some(12.000345));
        assert_eq!(
            read(&s, "netoops_y{a=\"q\\\"b\\\\c\\nd\",b=\"\"}"),
            Some(7.0)
        );
        assert_eq!(read(&s, "netoops_y"), None);
        assert_eq!(read(&s, "netoops_x"), None);
    }
}
