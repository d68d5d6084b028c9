//! Netconsole next to netoops on the hosted relay, in one run.
//!
//! One relay process takes a netoops fleet (crashing machines, three rounds each) and then a
//! netconsole fleet (healthy machines chattering while some crash, extended and legacy,
//! fragments, userdata) at the same offered rate, from the generator's library over loopback
//! UDP. For each: datagrams sent and received by the relay (its `/metrics`), the rate
//! achieved, and the relay's CPU time per received datagram (`/proc/<pid>/task/*/schedstat`).
//! The ratio of the two CPU figures is the comparison that matters: same process, same run,
//! same machine noise.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::process::Process;
use super::target::{listening_addr, scrape, start_collector, Programs};
use crate::gen::output::udp::UdpOutput;
use crate::gen::run::{run, RunOptions};
use crate::gen::scenario::{NetconsoleParams, Protocol, Scenario, SizeRange, Timing};
use crate::gen::schedule::Schedule;
use netoops_core::console;

/// What [`run_ingest`] sends.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Offered datagrams per second for both fleets.
    pub rate: u64,
    /// Netoops: machines and their log size.
    pub netoops_machines: u32,
    pub netoops_log: SizeRange,
    /// Netconsole: crashing machines, healthy ones, and lines per machine.
    pub nc_crashing: u32,
    pub nc_chatter: u32,
    pub nc_lines: u32,
}

impl IngestSettings {
    /// About 50,000 datagrams of each protocol at 80,000 datagrams/s: both fleets reach that
    /// rate from the generator, and the relay's CPU then goes to datagrams rather than to
    /// waking up (at 40,000/s most of it is the event loop, and the figures scatter).
    pub fn full() -> Self {
        Self {
            rate: 80_000,
            netoops_machines: 300,
            netoops_log: SizeRange {
                min: 48 * 1024,
                max: 64 * 1024,
            },
            nc_crashing: 50,
            nc_chatter: 1000,
            nc_lines: 60,
        }
    }

    /// A few thousand datagrams of each, for the test command.
    pub fn smoke() -> Self {
        Self {
            rate: 10_000,
            netoops_machines: 20,
            netoops_log: SizeRange {
                min: 16 * 1024,
                max: 32 * 1024,
            },
            nc_crashing: 5,
            nc_chatter: 100,
            nc_lines: 20,
        }
    }
}

/// One protocol's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestResult {
    /// "netoops" or "netconsole".
    pub protocol: String,
    pub offered_pps: u64,
    pub achieved_pps: f64,
    pub sent: u64,
    pub received: u64,
    /// Relay CPU time per received datagram, ns.
    pub cpu_ns_per_datagram: Option<f64>,
    /// Mean datagram size, bytes.
    pub mean_bytes: f64,
}

/// Both protocols and their CPU ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestComparison {
    pub results: Vec<IngestResult>,
    /// netconsole CPU per datagram / netoops CPU per datagram.
    pub cpu_ratio: Option<f64>,
}

impl IngestComparison {
    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| protocol | offered/s | achieved/s | sent | received by the relay | mean bytes | relay CPU per datagram |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.results {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {:.0} | {} |\n",
                r.protocol,
                r.offered_pps,
                r.achieved_pps,
                r.sent,
                r.received,
                r.mean_bytes,
                r.cpu_ns_per_datagram
                    .map_or("-".into(), |c| format!("{:.2} µs", c / 1000.0)),
            ));
        }
        if let Some(ratio) = self.cpu_ratio {
            s.push_str(&format!(
                "\nnetconsole costs {ratio:.2}x the relay CPU of netoops per datagram.\n"
            ));
        }
        s
    }
}

/// Runs both fleets through one hosted relay; scratch files under `work`.
pub fn run_ingest(
    programs: &Programs,
    work: &Path,
    s: &IngestSettings,
    say: &mut dyn FnMut(&str),
) -> io::Result<IngestComparison> {
    std::fs::create_dir_all(work)?;
    let (mut collector, collector_addr) = start_collector(programs, &work.join("store"))?;
    let mut cmd = Command::new(&programs.relay);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--netconsole-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--stats",
        "200ms",
        "--quiet",
        "1s",
        "--recv-buffer",
        "64M",
        "--memory",
        "256M",
        "--spool",
        "256M",
        "--upstream",
    ])
    .arg(collector_addr.to_string());
    let mut relay = Process::spawn("netoops-relay", cmd)?;
    let patience = Duration::from_secs(30);
    let netconsole = listening_addr(
        &mut relay,
        console::NETCONSOLE_LISTENING,
        console::netconsole_listening,
        patience,
    )?;
    let netoops = listening_addr(&mut relay, console::LISTENING, console::listening, patience)?;
    let http = listening_addr(
        &mut relay,
        console::HTTP_LISTENING,
        console::http_listening,
        patience,
    )?;
    let mut results = Vec::new();
    for protocol in [Protocol::Netoops, Protocol::Netconsole] {
        let (scenario, target, key) = match protocol {
            Protocol::Netoops => (
                Scenario {
                    machines: s.netoops_machines,
                    log_size: s.netoops_log,
                    timing: Timing::Sequential,
                    source_base: Ipv4Addr::new(127, 60, 0, 1),
                    seed: 7,
                    ..Scenario::default()
                },
                netoops,
                "netoops_datagrams_total",
            ),
            Protocol::Netconsole => (
                Scenario {
                    machines: s.nc_crashing,
                    protocol: Protocol::Netconsole,
                    source_base: Ipv4Addr::new(127, 64, 0, 1),
                    source_port: 6665,
                    seed: 8,
                    netconsole: NetconsoleParams {
                        chatter: s.nc_chatter,
                        chatter_lines: s.nc_lines,
                        ..NetconsoleParams::default()
                    },
                    ..Scenario::default()
                },
                netconsole,
                "netoops_netconsole_datagrams_total",
            ),
        };
        let SocketAddr::V4(target) = target else {
            return Err(io::Error::other("the relay listens on IPv6"));
        };
        let name = match protocol {
            Protocol::Netoops => "netoops",
            Protocol::Netconsole => "netconsole",
        };
        // The relay's own count, from its /metrics.
        let count = || {
            let text = scrape(http).ok()?;
            netoops_core::http::metrics::read(&text, key).map(|v| v as u64)
        };
        let before = count().unwrap_or(0);
        let cpu_before = relay.cpu_ns();
        let mut output = UdpOutput::new(target, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let report = run(
            &mut Schedule::new(scenario),
            &mut output,
            RunOptions {
                rate: s.rate,
                batch: 64,
            },
            &mut |_| {},
        )?;
        let sent = report.schedule.datagrams;
        // Wait until the relay's counters show every datagram, or stop moving.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = (count(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = count();
            if now.is_some_and(|n| n >= before + sent) || Instant::now() > deadline {
                break;
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let received = count().unwrap_or(before).saturating_sub(before);
        if received == 0 {
            return Err(io::Error::other(format!(
                "the relay counted no {name} datagram of {sent} sent to {target}:\n{}",
                relay.tail(15)
            )));
        }
        let cpu = match (cpu_before, relay.cpu_ns()) {
            (Some(a), Some(b)) if received > 0 => {
                Some(b.saturating_sub(a) as f64 / received as f64)
            }
            _ => None,
        };
        let mean_bytes = report.schedule.bytes as f64 / sent.max(1) as f64;
        say(&format!(
            "ingest {name}: {sent} sent at {:.0}/s, {received} received, CPU {} ns/datagram",
            report.rate(),
            cpu.map_or("-".into(), |c| format!("{c:.0}"))
        ));
        results.push(IngestResult {
            protocol: name.into(),
            offered_pps: s.rate,
            achieved_pps: report.rate(),
            sent,
            received,
            cpu_ns_per_datagram: cpu,
            mean_bytes,
        });
    }
    relay.stop(Duration::from_secs(10));
    collector.stop(Duration::from_secs(5));
    let cpu_ratio = match (
        results[0].cpu_ns_per_datagram,
        results[1].cpu_ns_per_datagram,
    ) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    };
    Ok(IngestComparison { results, cpu_ratio })
}
