//! The expected-output mode: what a correct receiver reports for every machine.
//!
//! [`Expectation::of`] replays one machine's plan (the same one the schedule sends) and asks
//! [`netoops_wire::model::expected`] for the text, missing ranges and zeroed packets given the
//! packets that actually left the generator. [`write_expectations`] writes, per machine,
//!
//! ```text
//! DIR/<ip>/expected.json   identity, counts, missing ranges, zeroed packets, complete, received
//! DIR/<ip>/expected.log    the dump text a receiver must produce
//! ```
//!
//! and `DIR/summary.json` with the scenario and totals. `<ip>` is the machine's source address,
//! as in the collector's storage layout; `key` is the collector's dump key. A machine with
//! `received == 0` lost every datagram: no receiver ever hears of it.
//!
//! A netconsole scenario writes [`NcExpectation`]s (`"kind": "netconsole"`) instead, from
//! [`RelayView`], for its crashing machines only (with `dump: false` and `received: 0` when no
//! crash line arrives); healthy machines appear only in `summary.json`'s `netconsole.senders`
//! with their datagram counts.

use std::fs;
use std::io;
use std::path::Path;

use netoops_wire::model::expected;
use netoops_wire::SenderModel;
use serde::{Deserialize, Serialize};

use super::channel::MachinePlan;
use super::netconsole::{NcMachine, RelayView};
use super::scenario::{NcMode, Protocol, Scenario, Timing};

/// One machine's expected dump, as written to `expected.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub machine: u32,
    /// Source address without the port (the collector's directory name).
    pub ip: String,
    /// Source address and port (port 0 when the generator let the OS choose).
    pub source: String,
    /// "v2", "v3", "v3-blob" or "v3-i386".
    pub variant: String,
    /// Header version, 2 or 3.
    pub version: u16,
    pub dump_id: u16,
    /// 0 for v2.
    pub boot_id: u32,
    /// 1 (oops/panic) or 3 (soft dump).
    #[serde(rename = "type")]
    pub dump_type: u16,
    /// Always 0: every machine sends one dump.
    pub generation: u32,
    /// The collector's dump key, `b<boot_id>-d<dump_id>-t<type>-v<version>-g<generation>`.
    pub key: String,
    /// Up to the first NUL.
    pub kernel_version: String,
    pub packet_count: u32,
    /// Log length, s1 (older piece) and s2 (newer piece) lengths.
    pub log_bytes: usize,
    pub s1_bytes: usize,
    pub s2_bytes: usize,
    /// Distinct packets that arrive.
    pub received: u32,
    /// Runs of packet numbers that never arrive, ascending, inclusive.
    pub missing: Vec<[u32; 2]>,
    /// Packets that arrive all zero (the sender's exact-multiple bug), ascending.
    pub zeroed: Vec<u32>,
    pub complete: bool,
    /// `packet_no` of the first datagram to arrive (the one a "crash seen" notice carries).
    pub first_packet_no: Option<u32>,
    /// Name of the text file next to this one.
    pub text_file: String,
    pub text_bytes: usize,
    /// Datagrams sent for this machine (duplicates included), lost, extra copies, held back.
    pub datagrams_sent: u32,
    pub datagrams_lost: u32,
    pub datagrams_duplicated: u32,
    pub datagrams_reordered: u32,
    /// Crash time from the start of the run (0 unless a storm).
    pub crash_at_us: u64,
    /// The expected text (in `expected.log`, not in the JSON).
    #[serde(skip)]
    pub text: Vec<u8>,
}

/// Name of the per-machine metadata file.
pub const EXPECTED_JSON: &str = "expected.json";
/// Name of the per-machine text file.
pub const EXPECTED_LOG: &str = "expected.log";
/// Name of the scenario summary file.
pub const SUMMARY_JSON: &str = "summary.json";

impl Expectation {
    /// Machine `i` of a validated scenario.
    pub fn of(scenario: &Scenario, i: u32) -> Self {
        let m = scenario.machine(i);
        let plan = MachinePlan::new(scenario, &m);
        let log = m.log();
        let (s1, s2) = log.split_at(m.split.min(log.len()));
        let e = expected(&SenderModel::new(s1, s2), |p| plan.delivered(p));
        let h = &m.header;
        let kv_end = h.kernel_version.iter().position(|&b| b == 0).unwrap_or(64);
        let version = h.variant.version() as u16;
        let dump_type = h.dump_type as u16;
        Self {
            machine: i,
            ip: m.source.ip().to_string(),
            source: m.source.to_string(),
            variant: h.variant.name().to_string(),
            version,
            dump_id: h.dump_id,
            boot_id: h.boot_id,
            dump_type,
            generation: 0,
            key: format!("b{}-d{}-t{dump_type}-v{version}-g0", h.boot_id, h.dump_id),
            kernel_version: String::from_utf8_lossy(&h.kernel_version[..kv_end]).into_owned(),
            packet_count: plan.packet_count,
            log_bytes: m.log_len,
            s1_bytes: s1.len(),
            s2_bytes: s2.len(),
            received: e.received,
            missing: e.missing.iter().map(|&(a, b)| [a, b]).collect(),
            zeroed: e.zeroed,
            complete: e.complete,
            first_packet_no: plan.first_delivered(),
            text_file: EXPECTED_LOG.to_string(),
            text_bytes: e.text.len(),
            datagrams_sent: u32::try_from(plan.sends.len()).unwrap_or(u32::MAX),
            datagrams_lost: plan.lost,
            datagrams_duplicated: plan.duplicated,
            datagrams_reordered: plan.reordered,
            crash_at_us: u64::try_from(m.crash_at.as_micros()).unwrap_or(u64::MAX),
            text: e.text,
        }
    }

    /// Reads `DIR/<ip>/expected.json` and its text file.
    pub fn read(machine_dir: &Path) -> io::Result<Self> {
        let json = fs::read(machine_dir.join(EXPECTED_JSON))?;
        let mut e: Self = serde_json::from_slice(&json).map_err(io::Error::other)?;
        e.text = fs::read(machine_dir.join(&e.text_file))?;
        Ok(e)
    }
}

/// The scenario and totals, as written to `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpectSummary {
    pub machines: u32,
    pub seed: u64,
    pub log_size: String,
    pub variants: Vec<String>,
    pub loss_model: String,
    pub duplicate: f64,
    pub reorder: f64,
    pub storm_ms: Option<u64>,
    /// Machines whose dump arrives complete / partial / not at all.
    pub complete: u32,
    pub partial: u32,
    pub unheard: u32,
    /// Datagrams that leave the generator (duplicates included) and datagrams lost.
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    /// Netconsole scenarios only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconsole: Option<NcSummary>,
}

/// The netconsole part of `summary.json`. `complete`, `partial` and `unheard` above count the
/// crashing machines (unheard: no crash line arrived, so no dump); `datagrams_sent` and
/// `datagrams_lost` count every machine, healthy ones included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NcSummary {
    /// Crashing machines (`machines` above) and healthy ones.
    pub crashing: u32,
    pub chatter: u32,
    pub modes: Vec<String>,
    pub release: f64,
    pub userdata: f64,
    pub chatter_lines: u32,
    pub long_lines: f64,
    /// Dumps a relay must make (crashing machines whose crash line arrives).
    pub dumps: u32,
    /// Every machine's datagram counts.
    pub datagrams_duplicated: u64,
    pub datagrams_reordered: u64,
    /// Per machine, healthy ones included.
    pub senders: Vec<NcSenderCounts>,
}

/// One netconsole machine's datagrams in `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NcSenderCounts {
    pub machine: u32,
    pub ip: String,
    /// "crashing" or "healthy".
    pub role: String,
    /// "extended" or "legacy".
    pub mode: String,
    /// Distinct datagrams the kernel sent (before the channel).
    pub datagrams: u32,
    /// Datagrams that leave the generator (duplicates included), lost, extra copies, held back.
    pub sent: u32,
    pub lost: u32,
    pub duplicated: u32,
    pub reordered: u32,
}

/// The collector key of a netconsole machine's first crash (boot 0, crash 0).
pub const NC_KEY: &str = "nc-b0-c0";

/// One crashing netconsole machine's expected dump, as written to `expected.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NcExpectation {
    /// Always "netconsole".
    pub kind: String,
    pub machine: u32,
    /// Source address without the port (the collector's directory name).
    pub ip: String,
    pub source: String,
    /// "extended" or "legacy".
    pub mode: String,
    /// The `r` prefix or `release=` value the relay reports; "" when the machine sends none.
    pub release: String,
    /// The machine prepends its release (`r`).
    pub release_prefix: bool,
    /// Its constant userdata keys (`host`, `role`), when it appends userdata; the sysdata
    /// (`cpu`, `taskname`, `release`, `msgid`) varies per record and is not listed.
    pub userdata: Vec<[String; 2]>,
    /// Extended: the crash record's userdata and sysdata lines as the relay reports them
    /// (dictionary keys left out), when that record arrived whole; empty otherwise.
    pub crash_fields: Vec<[String; 2]>,
    /// The collector's dump key.
    pub key: String,
    /// A crash line arrives, so the relay makes a dump.
    pub dump: bool,
    /// The crash line (extended: the record's unescaped text; legacy: the console line
    /// without its newline).
    pub crash_line: Option<String>,
    /// Records the machine printed, their seq range (extended only: legacy text carries no
    /// seq), and its history size (extended: encoded bodies; legacy: console bytes).
    pub records: u32,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub history_bytes: usize,
    /// Extended: distinct records received; legacy: datagrams kept. 0 without a dump.
    pub received: u32,
    /// Extended: lowest and highest seq received.
    pub received_seqs: Option<[u64; 2]>,
    /// Extended: seq runs shown as gap lines, ascending, inclusive.
    pub missing: Vec<[u64; 2]>,
    /// Extended: received records with missing fragments.
    pub incomplete: Vec<u64>,
    /// A dump with no missing ranges and no incomplete records.
    pub complete: bool,
    pub text_file: String,
    pub text_bytes: usize,
    /// Distinct datagrams the kernel sent.
    pub datagram_count: u32,
    /// Datagrams that leave the generator (duplicates included), lost, extra copies, held back.
    pub datagrams_sent: u32,
    pub datagrams_lost: u32,
    pub datagrams_duplicated: u32,
    pub datagrams_reordered: u32,
    /// When it starts sending, from the start of the run (0 unless a storm).
    pub crash_at_us: u64,
    /// The expected text (in `expected.log`, not in the JSON).
    #[serde(skip)]
    pub text: Vec<u8>,
}

/// A netconsole machine's expectation and its datagram counts (healthy machines too).
pub struct NcOutcome {
    pub expectation: NcExpectation,
    pub counts: NcSenderCounts,
    pub crashing: bool,
}

impl NcExpectation {
    /// Machine `i` of a validated netconsole scenario (crashing or healthy).
    pub fn of(scenario: &Scenario, i: u32) -> NcOutcome {
        let m = NcMachine::of(scenario, i);
        let log = m.log();
        let count = u32::try_from(log.datagrams.len()).unwrap_or(u32::MAX);
        let plan = MachinePlan::of_sender(scenario, i, count, 1);
        let view = RelayView::of(m.mode, &log, &plan);
        let sent = u32::try_from(plan.sends.len()).unwrap_or(u32::MAX);
        let counts = NcSenderCounts {
            machine: i,
            ip: m.source.ip().to_string(),
            role: if m.crashing { "crashing" } else { "healthy" }.to_string(),
            mode: m.mode.name().to_string(),
            datagrams: count,
            sent,
            lost: plan.lost,
            duplicated: plan.duplicated,
            reordered: plan.reordered,
        };
        let extended = m.mode == NcMode::Extended;
        let expectation = NcExpectation {
            kind: "netconsole".to_string(),
            machine: i,
            ip: m.source.ip().to_string(),
            source: m.source.to_string(),
            mode: m.mode.name().to_string(),
            release: m.reported_release().to_string(),
            release_prefix: m.release_prefix,
            userdata: m
                .user_fields
                .iter()
                .map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
            crash_fields: view
                .crash_fields
                .iter()
                .map(|(k, v)| {
                    [
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ]
                })
                .collect(),
            key: NC_KEY.to_string(),
            dump: view.dump,
            crash_line: view
                .crash_line
                .as_deref()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
            records: u32::try_from(log.records.len()).unwrap_or(u32::MAX),
            first_seq: log.records.first().filter(|_| extended).map(|r| r.seq),
            last_seq: log.records.last().filter(|_| extended).map(|r| r.seq),
            history_bytes: log.history_bytes,
            received: view.received,
            received_seqs: if extended { view.seq_range } else { None },
            missing: view.missing.clone(),
            incomplete: view.incomplete.clone(),
            complete: view.dump && view.missing.is_empty() && view.incomplete.is_empty(),
            text_file: EXPECTED_LOG.to_string(),
            text_bytes: view.text.len(),
            datagram_count: count,
            datagrams_sent: sent,
            datagrams_lost: plan.lost,
            datagrams_duplicated: plan.duplicated,
            datagrams_reordered: plan.reordered,
            crash_at_us: u64::try_from(m.crash_at.as_micros()).unwrap_or(u64::MAX),
            text: view.text,
        };
        NcOutcome {
            expectation,
            counts,
            crashing: m.crashing,
        }
    }

    /// Reads `DIR/<ip>/expected.json` and its text file.
    pub fn read(machine_dir: &Path) -> io::Result<Self> {
        let json = fs::read(machine_dir.join(EXPECTED_JSON))?;
        let mut e: Self = serde_json::from_slice(&json).map_err(io::Error::other)?;
        e.text = fs::read(machine_dir.join(&e.text_file))?;
        Ok(e)
    }
}

/// Writes one machine's `expected.json` (pretty, with a final newline) and text file.
fn write_machine<T: Serialize>(
    dir: &Path,
    ip: &str,
    text_file: &str,
    text: &[u8],
    e: &T,
) -> io::Result<()> {
    let mdir = dir.join(ip);
    fs::create_dir_all(&mdir)?;
    fs::write(mdir.join(text_file), text)?;
    let mut json = serde_json::to_vec_pretty(e).map_err(io::Error::other)?;
    json.push(b'\n');
    fs::write(mdir.join(EXPECTED_JSON), json)
}

/// The netconsole part of [`write_expectations`]: files for crashing machines only.
fn write_netconsole(
    scenario: &Scenario,
    dir: &Path,
    summary: &mut ExpectSummary,
) -> io::Result<()> {
    let p = &scenario.netconsole;
    let mut nc = NcSummary {
        crashing: scenario.machines,
        chatter: p.chatter,
        modes: p.modes.iter().map(|m| m.name().to_string()).collect(),
        release: p.release,
        userdata: p.userdata,
        chatter_lines: p.chatter_lines,
        long_lines: p.long_lines,
        ..NcSummary::default()
    };
    summary.log_size = String::new();
    summary.variants = Vec::new();
    for i in 0..scenario.senders() {
        let o = NcExpectation::of(scenario, i);
        summary.datagrams_sent += u64::from(o.counts.sent);
        summary.datagrams_lost += u64::from(o.counts.lost);
        nc.datagrams_duplicated += u64::from(o.counts.duplicated);
        nc.datagrams_reordered += u64::from(o.counts.reordered);
        nc.senders.push(o.counts);
        if !o.crashing {
            continue;
        }
        let e = o.expectation;
        write_machine(dir, &e.ip, &e.text_file, &e.text, &e)?;
        match (e.dump, e.complete) {
            (false, _) => summary.unheard += 1,
            (true, true) => summary.complete += 1,
            (true, false) => summary.partial += 1,
        }
        nc.dumps += u32::from(e.dump);
    }
    summary.netconsole = Some(nc);
    Ok(())
}

/// Writes every machine's expectation under `dir` (created if missing) and the summary.
pub fn write_expectations(scenario: &Scenario, dir: &Path) -> io::Result<ExpectSummary> {
    fs::create_dir_all(dir)?;
    let mut summary = ExpectSummary {
        machines: scenario.machines,
        seed: scenario.seed,
        log_size: scenario.log_size.to_string(),
        variants: scenario
            .variants
            .iter()
            .map(|v| v.name().to_string())
            .collect(),
        loss_model: scenario.loss.to_string(),
        duplicate: scenario.duplicate,
        reorder: scenario.reorder,
        storm_ms: match scenario.timing {
            Timing::Sequential => None,
            Timing::Storm { window } => Some(u64::try_from(window.as_millis()).unwrap_or(0)),
        },
        ..ExpectSummary::default()
    };
    if scenario.protocol == Protocol::Netconsole {
        write_netconsole(scenario, dir, &mut summary)?;
        let mut json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other)?;
        json.push(b'\n');
        fs::write(dir.join(SUMMARY_JSON), json)?;
        return Ok(summary);
    }
    for i in 0..scenario.machines {
        let e = Expectation::of(scenario, i);
        write_machine(dir, &e.ip, &e.text_file, &e.text, &e)?;
        match (e.complete, e.received) {
            (true, _) => summary.complete += 1,
            (false, 0) => summary.unheard += 1,
            (false, _) => summary.partial += 1,
        }
        summary.datagrams_sent += u64::from(e.datagrams_sent);
        summary.datagrams_lost += u64::from(e.datagrams_lost);
    }
    let mut json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other)?;
    json.push(b'\n');
    fs::write(dir.join(SUMMARY_JSON), json)?;
    Ok(summary)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gen::channel::LossModel;
    use crate::gen::schedule::Schedule;
    use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler, ReassemblyConfig};
    use netoops_core::time::Instant;
    use netoops_wire::MAX_DATAGRAM_LEN;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    /// One dump as the reassembler reported it.
    pub(crate) struct Got {
        pub text: Vec<u8>,
        pub missing: Vec<[u32; 2]>,
        pub zeroed: Vec<u32>,
        pub received: u32,
        pub complete: bool,
        pub dump_id: u16,
    }

    /// What the reassembler reported per source (the last dump of each).
    #[derive(Default)]
    pub(crate) struct Collected {
        pub dumps: HashMap<SocketAddr, Got>,
        pub first: HashMap<SocketAddr, u32>,
    }

    impl EventSink for Collected {
        fn crash_seen(&mut self, crash: &CrashSeen<'_>) {
            self.first.insert(crash.source, crash.datagram.packet_no());
        }
        fn dump(&mut self, d: &DumpView<'_>) {
            let mut text = Vec::new();
            d.write_text(|b| text.extend_from_slice(b));
            let got = Got {
                text,
                missing: d.missing().map(|(a, b)| [a, b]).collect(),
                zeroed: d.zeroed().collect(),
                received: d.received(),
                complete: d.complete(),
                dump_id: d.dump_id(),
            };
            self.dumps.insert(d.source(), got);
        }
    }

    #[test]
    fn reassembling_the_schedule_gives_the_expectations() {
        let s = Scenario {
            machines: 40,
            log_size: "1-40K".parse().unwrap(),
            loss: LossModel::Independent { p: 0.2 },
            duplicate: 0.05,
            reorder: 0.05,
            zeroed_tail: 0.2,
            timing: Timing::Storm {
                window: std::time::Duration::from_millis(2),
            },
            ..Scenario::default()
        };
        s.validate().unwrap();
        let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
        let mut sink = Collected::default();
        let mut sched = Schedule::new(s.clone());
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while let Some(item) = sched.next_into(&mut buf).unwrap() {
            let now = Instant::from_micros(item.not_before.as_micros() as u64);
            r.handle_datagram(now, item.source.into(), &buf[..item.len], &mut sink)
                .unwrap();
        }
        r.flush(Instant::from_millis(10_000), &mut sink);
        let mut partial = 0;
        for i in 0..s.machines {
            let e = Expectation::of(&s, i);
            let source: SocketAddr = e.source.parse().unwrap();
            let Some(got) = sink.dumps.get(&source) else {
                assert_eq!(e.received, 0, "machine {i} expected a dump");
                continue;
            };
            assert_eq!(got.text, e.text, "machine {i} text");
            assert_eq!(got.missing, e.missing, "machine {i}");
            assert_eq!(got.zeroed, e.zeroed, "machine {i}");
            assert_eq!(
                (got.received, got.complete, got.dump_id),
                (e.received, e.complete, e.dump_id)
            );
            assert_eq!(sink.first.get(&source).copied(), e.first_packet_no);
            assert_eq!(e.text_bytes, e.text.len());
            partial += u32::from(!e.complete);
        }
        assert!(partial > 0, "with 20% loss some small dumps stay partial");
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("netoops-gen-expect-{}", std::process::id()));
        let s = Scenario {
            machines: 5,
            log_size: "1K-8K".parse().unwrap(),
            loss: LossModel::Independent { p: 0.3 },
            ..Scenario::default()
        };
        let summary = write_expectations(&s, &dir).unwrap();
        assert_eq!(summary.complete + summary.partial + summary.unheard, 5);
        for i in 0..5 {
            let want = Expectation::of(&s, i);
            let got = Expectation::read(&dir.join(&want.ip)).unwrap();
            assert_eq!(got, want);
            assert!(got
                .key
                .starts_with(&format!("b{}-d{}-t", got.boot_id, got.dump_id)));
        }
        let back: ExpectSummary =
            serde_json::from_slice(&fs::read(dir.join(SUMMARY_JSON)).unwrap()).unwrap();
        assert_eq!(back, summary);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netconsole_files_round_trip_and_count_every_sender() {
        let dir =
            std::env::temp_dir().join(format!("netoops-gen-nc-expect-{}", std::process::id()));
        let s = Scenario {
            machines: 12,
            protocol: Protocol::Netconsole,
            netconsole: crate::gen::NetconsoleParams {
                chatter: 20,
                ..Default::default()
            },
            loss: LossModel::Independent { p: 0.2 },
            duplicate: 0.05,
            reorder: 0.05,
            ..Scenario::default()
        };
        s.validate().unwrap();
        let summary = write_expectations(&s, &dir).unwrap();
        assert_eq!(summary.complete + summary.partial + summary.unheard, 12);
        let nc = summary.netconsole.clone().unwrap();
        assert_eq!(nc.senders.len(), 32);
        assert_eq!(nc.dumps, summary.complete + summary.partial);
        // The schedule sends exactly what the summary counts.
        let mut sched = Schedule::new(s.clone());
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while sched.next_into(&mut buf).unwrap().is_some() {}
        let st = sched.stats();
        assert_eq!(st.datagrams, summary.datagrams_sent);
        assert_eq!(st.lost, summary.datagrams_lost);
        assert_eq!(st.duplicated, nc.datagrams_duplicated);
        assert_eq!(st.reordered, nc.datagrams_reordered);
        let mut files = 0;
        for c in &nc.senders {
            let path = dir.join(&c.ip);
            if c.role == "healthy" {
                assert!(!path.exists(), "no files for healthy {}", c.ip);
                continue;
            }
            files += 1;
            let got = NcExpectation::read(&path).unwrap();
            let want = NcExpectation::of(&s, c.machine).expectation;
            assert_eq!(got, want);
            assert_eq!(got.kind, "netconsole");
            assert_eq!(got.key, "nc-b0-c0");
            assert_eq!(got.text_bytes, got.text.len());
            assert_eq!(got.dump, got.crash_line.is_some());
            if !got.dump {
                assert_eq!((got.received, got.text_bytes), (0, 0));
            }
            assert_eq!((got.datagrams_sent, got.datagrams_lost), (c.sent, c.lost));
        }
        assert_eq!(files, 12);
        let back: ExpectSummary =
            serde_json::from_slice(&fs::read(dir.join(SUMMARY_JSON)).unwrap()).unwrap();
        assert_eq!(back, summary);
        fs::remove_dir_all(&dir).unwrap();
    }
}
