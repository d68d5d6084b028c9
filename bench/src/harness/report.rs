//! The results of a suite run: every figure in one serializable structure, written as
//! `results.json`, and the Markdown table (`results.md`) made from it.
//!
//! Rates are datagrams per second as the generator achieved them (not as requested), Gbit/s
//! counts netoops datagram bytes (UDP payload), latencies are milliseconds.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// Version of this structure.
pub const SCHEMA: u32 = 1;

/// Everything a run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub schema: u32,
    /// "full" or "smoke".
    pub mode: String,
    /// The command that produced this file.
    pub command: String,
    /// Start, UTC, RFC 3339.
    pub started: String,
    /// Wall time of the whole run.
    pub duration_s: f64,
    pub host: Host,
    pub settings: Settings,
    /// What the generator sent unthrottled into the baseline receiver.
    pub generator_max_pps: f64,
    pub targets: Vec<TargetResult>,
    /// The crash storm into the image.
    pub storm: Option<StormResult>,
    /// The same storm into the hosted relay over loopback UDP, paced at its lossless rate
    /// (absent in results from before it existed).
    #[serde(default)]
    pub hosted_storm: Option<StormResult>,
    /// Targets not run, with why.
    pub skipped: Vec<Skipped>,
}

/// The machine the run happened on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    pub qemu: String,
    pub rustc: String,
    pub git_commit: String,
    /// 1-minute load average when the run started and when it ended (other work on the
    /// machine competes with the targets: compare runs at similar load).
    pub load_at_start: f64,
    pub load_at_end: f64,
    /// How the guests were run ("tcg").
    pub accel: String,
}

/// The parameters of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Machines per search trial.
    pub trial_machines: u32,
    /// Log size per machine in a search trial.
    pub trial_log_bytes: usize,
    /// Trials per target, at most.
    pub trials: usize,
    /// Guest RAM of the image targets, MiB.
    pub vm_memory_mib: u32,
    /// The image targets' command line (the ingress/upstream parts vary).
    pub image_cmdline: String,
    /// The hosted relay's flags.
    pub relay_flags: String,
    /// What "lossless" means for each kind of target.
    pub lossless_rule: String,
    /// The latency run: machines crashing one at a time, evenly over the window.
    pub latency_machines: u32,
    pub latency_window_ms: u64,
}

/// A target not run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Skipped {
    pub target: String,
    pub reason: String,
}

/// Counts of dumps at the collector after one trial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpCounts {
    pub expected: u32,
    pub complete: u32,
    pub partial: u32,
    pub missing: u32,
    /// Complete dumps whose stored text differs from what was sent.
    pub wrong_text: u32,
}

impl DumpCounts {
    /// Every expected dump arrived complete with the right text.
    pub fn lossless(&self) -> bool {
        self.complete == self.expected && self.wrong_text == 0
    }
}

/// One trial at one offered rate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    /// Requested rate (0 = as fast as possible).
    pub offered_pps: u64,
    /// What the generator achieved.
    pub achieved_pps: f64,
    pub achieved_gbps: f64,
    /// Achieved within 2% of the requested rate (always true when unthrottled).
    pub rate_held: bool,
    pub datagrams_sent: u64,
    pub elapsed_s: f64,
    /// Datagrams the target counted (relay or fast-path counter, or the baseline's count).
    pub received_datagrams: Option<u64>,
    /// Received datagrams over the sending time.
    pub received_pps: Option<f64>,
    /// Dumps at the collector (relay targets).
    pub dumps: Option<DumpCounts>,
    /// CPU time of the receiving process per datagram it counted, ns (hosted targets).
    pub cpu_ns_per_datagram: Option<f64>,
    pub lossless: bool,
    /// Complete dumps stored per second, from the first datagram sent to the last dump
    /// durable (relay targets; bounded by the offered rate when the pipeline keeps up).
    #[serde(default)]
    pub stored_dumps_per_s: Option<f64>,
}

/// End-to-end latencies of one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// The run's achieved rate (averaged over the run, pauses included).
    pub rate_pps: f64,
    /// Each machine's datagrams were sent at no more than this rate (0: no limit).
    pub offered_pps: u64,
    /// From the dump's completing datagram leaving the generator to its `.json` being
    /// durable at the collector.
    pub durable: Summary,
    /// From the dump's first datagram leaving the generator to its `crashes.jsonl` line.
    pub crash_line: Summary,
    /// CDF points (ms, share) of `durable`.
    pub durable_cdf: Vec<(f64, f64)>,
    /// CDF points (ms, share) of `crash_line`.
    pub crash_line_cdf: Vec<(f64, f64)>,
    /// Complete dumps stored per second over the run (first datagram sent to last dump
    /// durable).
    #[serde(default)]
    pub stored_dumps_per_s: Option<f64>,
}

/// One target's results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetResult {
    /// "baseline", "hosted-relay", "image-virtio-net", "image-e1000e".
    pub name: String,
    pub description: String,
    /// Highest rate with nothing lost (achieved rate of that trial).
    pub lossless_pps: Option<f64>,
    pub lossless_gbps: Option<f64>,
    /// `lossless_pps` over the baseline's.
    pub ratio_to_baseline: Option<f64>,
    /// "exact", "upper" (the baseline was generator-bound, so the true ratio is at most
    /// this), "lower" (this target was), or "undetermined" (both were; no ratio).
    pub ratio_bound: String,
    /// The generator could not offer more: the true limit is at least this.
    pub limited_by_generator: bool,
    pub trials: Vec<Trial>,
    /// Crashes one at a time (the latency run, relay targets).
    pub latency: Option<Latency>,
    /// At the highest lossless trial: dumps back to back at that rate, queueing included.
    pub latency_at_lossless_rate: Option<Latency>,
    /// A trial at half the lossless rate: dumps back to back with headroom, the latency a
    /// relay that is busy but not saturated gives.
    #[serde(default)]
    pub latency_at_half_rate: Option<Latency>,
    /// Memory high-water mark in bytes, and what it measures.
    pub memory_high_water_bytes: Option<u64>,
    pub memory_measure: String,
    /// TSC cycles per datagram in the guest's fast path, ring to relay (image targets).
    pub cycles_per_datagram: Option<u64>,
    /// CPU time per datagram of the receiving process in the unthrottled trial, ns (hosted
    /// targets): with one core each, the capacity ratio of two targets is the inverse ratio.
    pub cpu_ns_per_datagram: Option<f64>,
    /// From QEMU start to the guest's `ready:` line (image targets).
    pub boot_to_ready_ms: Option<f64>,
    /// From kernel entry to ready, as the kernel prints it (image targets): the above
    /// without QEMU's start-up and the firmware.
    pub kernel_entry_to_ready_ms: Option<f64>,
    pub notes: Vec<String>,
}

/// A crash storm into one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StormResult {
    pub target: String,
    /// Each datagram was offered at no more than this rate in all (0: as fast as the
    /// transport took them).
    #[serde(default)]
    pub offered_pps: u64,
    pub machines: u32,
    pub log_bytes: usize,
    /// All machines crash within this window.
    pub window_ms: u64,
    pub vm_memory_mib: u32,
    /// The relay's reassembly budget (`memory=`) and spool (`spool=`), bytes.
    pub reassembly_budget_bytes: u64,
    pub spool_bytes: u64,
    /// How frames reached the guest.
    pub transport: String,
    pub datagrams_sent: u64,
    /// From the first datagram to the last one leaving the generator.
    pub send_s: f64,
    pub achieved_pps: f64,
    /// Until the last dump was stored (or the wait gave up).
    pub elapsed_s: f64,
    pub dumps_complete: u32,
    pub dumps_partial: u32,
    pub dumps_missing: u32,
    /// Stored dumps that lack packet 0, the newest 1024 bytes of the log.
    pub newest_chunk_lost: u32,
    /// A few of them, `ip/key`.
    pub newest_chunk_lost_examples: Vec<String>,
    /// Guest heap in use at its highest (the guest's `memory: heap` line) and the heap's size;
    /// for the hosted relay the process's peak resident set and no size (`memory_measure`).
    pub heap_peak_bytes: Option<u64>,
    pub heap_total_bytes: Option<u64>,
    /// Reassembly chunks in use at their highest (sampled per counter line) and the pool.
    pub chunks_peak: Option<u64>,
    pub chunks_capacity: Option<u64>,
    pub within_budget: Option<bool>,
    /// The relay's last counter line.
    pub final_counters: String,
    /// Records (crash notices, dumps) the relay dropped because its spool was full, and
    /// datagrams it dropped for want of reassembly memory (from that line).
    pub relay_dropped_records: Option<u64>,
    pub relay_no_memory: Option<u64>,
    /// No machine's dump is missing and every stored dump has its newest chunk.
    pub every_dump_kept_newest_chunk: bool,
    /// First datagram sent to the machine's crash line durable.
    pub crash_line_latency: Option<Summary>,
    /// Completing datagram sent to the machine's complete dump durable.
    #[serde(default)]
    pub durable_latency: Option<Summary>,
    /// Stored dumps (complete or partial) per second, first datagram sent to last dump
    /// durable.
    #[serde(default)]
    pub stored_dumps_per_s: Option<f64>,
    /// What `heap_peak_bytes` measures.
    #[serde(default)]
    pub memory_measure: String,
}

fn storm_row(m: &mut String, st: &StormResult) {
    let _ = writeln!(
        m,
        "| {} | storm, {} machines | {:.0} | {} | {} | {} |",
        st.target,
        st.machines,
        st.achieved_pps,
        per_s(st.stored_dumps_per_s),
        opt_ms(st.durable_latency.as_ref()),
        opt_ms(st.crash_line_latency.as_ref())
    );
}

fn ratio_cell(t: &TargetResult) -> String {
    match (t.ratio_to_baseline, t.ratio_bound.as_str()) {
        (Some(r), "upper") => format!("≤ {r:.3}"),
        (Some(r), "lower") => format!("≥ {r:.3}"),
        (Some(r), _) => format!("{r:.3}"),
        (None, "undetermined") => "n/a: both generator-bound".into(),
        (None, _) => "-".into(),
    }
}

fn rate(pps: Option<f64>) -> String {
    pps.map_or_else(|| "none".into(), |r| format!("{:.0}", r))
}

fn ms(s: &Summary) -> String {
    format!("{:.1} / {:.1} / {:.1}", s.median_ms, s.p99_ms, s.max_ms)
}

fn bytes(b: Option<u64>) -> String {
    b.map_or_else(
        || "-".into(),
        |b| format!("{:.1} MiB", b as f64 / 1048576.0),
    )
}

/// The load conditions of [`Results::load_table`] and the load plot, in order.
pub const LOADS: [&str; 4] = [
    "one at a time",
    "50% of lossless",
    "100% of lossless",
    "storm",
];

impl TargetResult {
    /// This target's latencies per load condition of [`LOADS`] but the storm.
    pub fn loads(&self) -> [(&'static str, Option<&Latency>); 3] {
        [
            (LOADS[0], self.latency.as_ref()),
            (LOADS[1], self.latency_at_half_rate.as_ref()),
            (LOADS[2], self.latency_at_lossless_rate.as_ref()),
        ]
    }
}

fn opt_ms(s: Option<&Summary>) -> String {
    s.map_or_else(|| "-".into(), ms)
}

fn per_s(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
}

/// One storm's paragraph and table.
fn storm_section(m: &mut String, st: &StormResult) {
    let _ = writeln!(m, "\n### Into `{}`\n", st.target);
    let budget = |b: u64| if b == 0 { "-".into() } else { bytes(Some(b)) };
    let _ = writeln!(
        m,
        "{} machines with {} KiB logs crashing within {} ms into `{}` ({}reassembly budget {}, \
         spool {}), {}{}: {} datagrams in {:.1} s ({:.0}/s), all stored or given up after \
         {:.1} s; {} dumps stored per second.\n",
        st.machines,
        st.log_bytes / 1024,
        st.window_ms,
        st.target,
        if st.vm_memory_mib > 0 {
            format!("{} MiB VM, ", st.vm_memory_mib)
        } else {
            String::new()
        },
        budget(st.reassembly_budget_bytes),
        budget(st.spool_bytes),
        st.transport,
        if st.offered_pps > 0 {
            format!(", paced at {}/s", st.offered_pps)
        } else {
            String::new()
        },
        st.datagrams_sent,
        st.send_s,
        st.achieved_pps,
        st.elapsed_s,
        per_s(st.stored_dumps_per_s),
    );
    let _ = writeln!(m, "| complete | partial | missing | stored without newest chunk | every dump kept its newest chunk | records dropped (spool full) | memory peak / size | chunks peak / pool | within budget |");
    let _ = writeln!(m, "|---:|---:|---:|---:|---|---:|---|---|---|");
    let _ = writeln!(
        m,
        "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
        st.dumps_complete,
        st.dumps_partial,
        st.dumps_missing,
        st.newest_chunk_lost,
        if st.every_dump_kept_newest_chunk {
            "yes"
        } else {
            "NO"
        },
        st.relay_dropped_records
            .map_or_else(|| "-".into(), |d| d.to_string()),
        bytes(st.heap_peak_bytes),
        bytes(st.heap_total_bytes),
        st.chunks_peak.map_or_else(|| "-".into(), |c| c.to_string()),
        st.chunks_capacity
            .map_or_else(|| "-".into(), |c| c.to_string()),
        st.within_budget
            .map_or("unknown", |w| if w { "yes" } else { "NO" }),
    );
    let _ = writeln!(
        m,
        "\nDuring the storm, ms (median / p99 / max): first packet to crash line {}; last \
         packet to complete dump durable {}.",
        opt_ms(st.crash_line_latency.as_ref()),
        opt_ms(st.durable_latency.as_ref())
    );
    if !st.memory_measure.is_empty() {
        let _ = writeln!(m, "Memory: {}.", st.memory_measure);
    }
    let _ = writeln!(m, "\nFinal relay counters: `{}`", st.final_counters);
}

impl Results {
    /// The storms run: into the image, then into the hosted relay.
    pub fn storms(&self) -> impl Iterator<Item = &StormResult> {
        self.storm.iter().chain(&self.hosted_storm)
    }

    /// The latency table: every relay target one at a time, at half and all of its lossless
    /// rate, and during its storm, with the dumps stored per second in each.
    fn load_table(&self, m: &mut String) {
        let _ = writeln!(
            m,
            "Latency under load: \"50%\" and \"100% of lossless\" are trials of the search \
             fleet at half and all of the target's lossless rate (dumps back to back, queueing \
             in the relay and the collector's fsyncs included); \"storm\" is the crash storm \
             below. Stored dumps/s runs from the first datagram sent to the last dump \
             durable.\n"
        );
        let _ = writeln!(
            m,
            "| target | load | rate (datagrams/s) | stored dumps/s | last packet to durable, ms \
             (median / p99 / max) | first packet to crash line, ms (median / p99 / max) |"
        );
        let _ = writeln!(m, "|---|---|---:|---:|---|---|");
        let mut storms: Vec<&StormResult> = self.storms().collect();
        for t in &self.targets {
            for (load, l) in t.loads() {
                let Some(l) = l else { continue };
                let _ = writeln!(
                    m,
                    "| {} | {load} | {:.0} | {} | {} | {} |",
                    t.name,
                    l.rate_pps,
                    per_s(l.stored_dumps_per_s),
                    ms(&l.durable),
                    ms(&l.crash_line)
                );
            }
            storms.retain(|st| {
                if st.target != t.name {
                    return true;
                }
                storm_row(m, st);
                false
            });
        }
        for st in storms {
            storm_row(m, st);
        }
        let _ = writeln!(m);
    }

    /// The Markdown report: machine, the table of targets, the storm, notes.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let h = &self.host;
        let _ = writeln!(m, "# netoops relay benchmark ({})\n", self.mode);
        let _ = writeln!(
            m,
            "Run {} on `{}`: {} ({} cores, {:.0} GiB), {}, Linux {}, {}, guests under {}; \
             load average {:.2} at start, {:.2} at the end; commit `{}`; {:.0} s in all. \
             Reproduce with \
             `{}`.\n",
            self.started,
            h.hostname,
            h.cpu,
            h.cores,
            h.memory_gib,
            h.os,
            h.kernel,
            h.qemu,
            h.accel,
            h.load_at_start,
            h.load_at_end,
            h.git_commit,
            self.duration_s,
            self.command
        );
        let s = &self.settings;
        let _ = writeln!(
            m,
            "Each trial: {} machines with {} KiB logs, one after another, three rounds each; \
             up to {} trials per target. {} The generator's unthrottled rate into the \
             baseline was {:.0} datagrams/s.\n",
            s.trial_machines,
            s.trial_log_bytes / 1024,
            s.trials,
            s.lossless_rule,
            self.generator_max_pps
        );
        let _ = writeln!(
            m,
            "| target | lossless rate (datagrams/s) | Gbit/s | vs baseline | \
             last packet to durable, ms (median / p99 / max) | first packet to crash line, ms \
             (median / p99 / max) | memory high-water | cycles/datagram |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---|---|---:|---:|");
        for t in &self.targets {
            let _ = writeln!(
                m,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} |",
                t.name,
                rate(t.lossless_pps),
                if t.limited_by_generator {
                    " (≥, generator-bound)"
                } else {
                    ""
                },
                t.lossless_gbps
                    .map_or_else(|| "-".into(), |g| format!("{g:.3}")),
                ratio_cell(t),
                t.latency
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| ms(&l.durable)),
                t.latency
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| ms(&l.crash_line)),
                bytes(t.memory_high_water_bytes),
                t.cycles_per_datagram
                    .map_or_else(|| "-".into(), |c| c.to_string()),
            );
        }
        for sk in &self.skipped {
            let _ = writeln!(m, "| {} | not run: {} | | | | | | |", sk.target, sk.reason);
        }
        let _ = writeln!(m);
        let _ = writeln!(
            m,
            "A rate marked \"generator-bound\" was lossless at everything one generator core \
             offered, so the true limit is higher: a ratio over a generator-bound baseline is an \
             upper bound (≤), a generator-bound target's a lower bound (≥), and with both bound \
             there is no ratio.\n"
        );
        let base_cpu = self
            .targets
            .iter()
            .find(|t| t.name == "baseline")
            .and_then(|t| t.cpu_ns_per_datagram);
        if let Some(b) = base_cpu {
            let _ = writeln!(
                m,
                "- baseline: {b:.0} ns of CPU per datagram received (unthrottled trial)."
            );
        }
        for t in self.targets.iter().filter(|t| t.name != "baseline") {
            if let (Some(c), Some(b)) = (t.cpu_ns_per_datagram, base_cpu) {
                let _ = writeln!(
                    m,
                    "- {}: {:.0} ns of CPU per datagram received (unthrottled trial); one core \
                     would take about {:.0} datagrams/s, {:.3} of the baseline's by CPU time.",
                    t.name,
                    c,
                    1e9 / c,
                    b / c
                );
            }
        }
        if base_cpu.is_some() {
            let _ = writeln!(m);
        }
        let _ = writeln!(
            m,
            "Latencies above: {} machines crashing one at a time over {} s, each sending at \
             the target's lossless rate.\n",
            s.latency_machines,
            s.latency_window_ms as f64 / 1000.0
        );
        self.load_table(&mut m);
        for t in &self.targets {
            let _ = writeln!(
                m,
                "- **{}**: {}; memory: {}.",
                t.name, t.description, t.memory_measure
            );
            for n in &t.notes {
                let _ = writeln!(m, "  {n}");
            }
        }
        let storms: Vec<&StormResult> = self.storms().collect();
        if !storms.is_empty() {
            let _ = writeln!(m, "\n## Crash storm");
        }
        for st in storms {
            storm_section(&mut m, st);
        }
        let _ = writeln!(
            m,
            "\nPlots: [throughput against offered load](throughput.svg), \
             [latency CDF, one at a time](latency.svg), [latency under load and in the \
             storm](latency_load.svg). All figures: [results.json](results.json)."
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_a_row_per_target_and_the_storm() {
        let mut r = Results {
            schema: SCHEMA,
            mode: "smoke".into(),
            ..Results::default()
        };
        r.targets.push(TargetResult {
            name: "baseline".into(),
            lossless_pps: Some(120_000.0),
            ratio_to_baseline: Some(1.0),
            limited_by_generator: true,
            ..TargetResult::default()
        });
        let lat = Summary {
            count: 3,
            min_ms: 1.0,
            median_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
        };
        r.targets.push(TargetResult {
            name: "hosted-relay".into(),
            lossless_pps: Some(60_000.0),
            ratio_to_baseline: Some(0.5),
            ratio_bound: "upper".into(),
            latency: Some(Latency {
                durable: lat.clone(),
                crash_line: lat.clone(),
                ..Latency::default()
            }),
            latency_at_half_rate: Some(Latency {
                rate_pps: 30_000.0,
                durable: lat.clone(),
                crash_line: lat.clone(),
                stored_dumps_per_s: Some(151.0),
                ..Latency::default()
            }),
            memory_high_water_bytes: Some(3 << 20),
            ..TargetResult::default()
        });
        r.skipped.push(Skipped {
            target: "image-e1000e".into(),
            reason: "no driver".into(),
        });
        r.storm = Some(StormResult {
            target: "image-virtio-net".into(),
            machines: 10,
            within_budget: Some(true),
            ..StormResult::default()
        });
        r.hosted_storm = Some(StormResult {
            target: "hosted-relay".into(),
            machines: 10,
            offered_pps: 60_000,
            achieved_pps: 59_900.0,
            crash_line_latency: Some(lat.clone()),
            stored_dumps_per_s: Some(42.0),
            ..StormResult::default()
        });
        let md = r.markdown();
        assert!(
            md.contains("| baseline | 120000 (≥, generator-bound) |"),
            "{md}"
        );
        assert!(
            md.contains("| hosted-relay | 60000 | - | ≤ 0.500 | 2.0 / 3.0 / 4.0 |"),
            "{md}"
        );
        assert!(md.contains("3.0 MiB"));
        assert!(md.contains("| image-e1000e | not run: no driver |"));
        assert!(md.contains("## Crash storm"));
        assert!(md.contains("| yes |") && md.contains("| NO |"));
        // The load table: the hosted relay's rows in order, its storm row right after them.
        let one = md
            .find("| hosted-relay | one at a time | 0 | - | 2.0 / 3.0 / 4.0 | 2.0 / 3.0 / 4.0 |")
            .expect(&md);
        let half = md
            .find("| hosted-relay | 50% of lossless | 30000 | 151 | 2.0 / 3.0 / 4.0 |")
            .expect(&md);
        let storm = md
            .find("| hosted-relay | storm, 10 machines | 59900 | 42 | - | 2.0 / 3.0 / 4.0 |")
            .expect(&md);
        assert!(one < half && half < storm, "{md}");
        assert!(
            md.contains("| image-virtio-net | storm, 10 machines |"),
            "{md}"
        );
        assert!(md.contains("### Into `hosted-relay`") && md.contains("paced at 60000/s"));
        assert!(md.contains("### Into `image-virtio-net`"));
        let json = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(back.targets.len(), 2);
        assert_eq!(back.hosted_storm.unwrap().stored_dumps_per_s, Some(42.0));
    }

    #[test]
    fn results_from_before_the_load_figures_still_read() {
        // The committed results.json of earlier runs has none of the new fields.
        let old = r#"{"schema": 1, "mode": "full", "command": "", "started": "", "duration_s": 1.0,
            "host": {"hostname": "", "cpu": "", "cores": 2, "memory_gib": 1.0, "os": "",
                "kernel": "", "qemu": "", "rustc": "", "git_commit": "", "load_at_start": 0.0,
                "load_at_end": 0.0, "accel": ""},
            "settings": {"trial_machines": 1, "trial_log_bytes": 1, "trials": 1,
                "vm_memory_mib": 1, "image_cmdline": "", "relay_flags": "", "lossless_rule": "",
                "latency_machines": 1, "latency_window_ms": 1},
            "generator_max_pps": 1.0, "targets": [], "storm": null, "skipped": []}"#;
        let r: Results = serde_json::from_str(old).unwrap();
        assert!(r.hosted_storm.is_none());
    }
}
