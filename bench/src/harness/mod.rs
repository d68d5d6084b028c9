//! The benchmark harness: one run measures every target and writes the results.
//!
//! [`run_suite`] runs, in order: the baseline receiver (first unthrottled, which also measures
//! what the generator can offer), the hosted relay, and the appliance image with each ingress
//! NIC; for each it searches the highest lossless rate ([`search::RateSearch`]) with short
//! fixed-size trials, keeps the latencies of the best lossless trial, and reads the memory
//! high-water mark and the guest's cycles per datagram. Each relay target then runs one more
//! trial at half its lossless rate, and the latency run (crashes one at a time). Then the
//! crash storm into the image ([`storm::run_storm`]) and, when the hosted relay is among the
//! targets, into it at its lossless rate ([`storm::run_hosted_storm`]). A target that cannot
//! start (no driver for its NIC yet, QEMU
//! missing) is recorded as skipped with the reason; the run goes on.
//!
//! Outputs ([`write_outputs`]): `results.json` ([`report::Results`]), `results.md`,
//! `throughput.svg`, `latency.svg` and `latency_load.svg` in the output directory. Scratch files (collector
//! storage, transcripts) go to a work directory, removed afterwards unless kept.

pub mod baseline;
pub mod host;
pub mod ingest;
pub mod plot;
pub mod process;
pub mod report;
pub mod search;
pub mod stats;
pub mod storage;
pub mod storm;
pub mod target;
pub mod watch;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use report::{Latency, Results, Settings, Skipped, TargetResult, Trial, SCHEMA};
use search::RateSearch;
use stats::{cdf_points, sorted, Summary};
use storm::StormSettings;
use target::{Kind, Programs, Running, TargetSettings, TrialDetail};

/// Points kept per latency CDF.
const CDF_POINTS: usize = 200;

/// What a suite run does.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// "full" or "smoke".
    pub mode: String,
    /// Targets, in order (the baseline should come first: it sets the top rate).
    pub targets: Vec<Kind>,
    /// Trials per target, at most.
    pub trials: usize,
    pub target: TargetSettings,
    /// The latency run: machines crashing one at a time over the window (0: none).
    pub latency_machines: u32,
    pub latency_window: Duration,
    pub storm: Option<StormSettings>,
    /// The command line to print in the results.
    pub command: String,
    /// Where the results go.
    pub out: PathBuf,
    /// Scratch space.
    pub work: PathBuf,
    /// Keep `work` afterwards.
    pub keep_work: bool,
}

impl SuiteConfig {
    /// The full suite (about ten minutes on a loaded 2-core machine).
    pub fn full(out: PathBuf, work: PathBuf) -> Self {
        Self {
            mode: "full".into(),
            targets: Kind::ALL.to_vec(),
            trials: 8,
            latency_machines: 100,
            latency_window: Duration::from_secs(10),
            target: TargetSettings {
                machines: 300,
                log_size: "64K".parse().unwrap_or(gen_default_size()),
                vm_memory_mib: 256,
                quiet_ms: 1000,
                recv_buffer: 8 << 20,
                patience: Duration::from_secs(90),
            },
            storm: Some(StormSettings {
                machines: 10_000,
                log_size: "128K".parse().unwrap_or(gen_default_size()),
                window: Duration::from_secs(1),
                nic: target::Nic::VirtioNet,
                progress: true,
            }),
            command: "cargo run --release -p netoops-bench --bin netoops-bench -- suite".into(),
            out,
            work,
            keep_work: false,
        }
    }

    /// A short run of the same suite (well under two minutes), for the test command.
    pub fn smoke(out: PathBuf, work: PathBuf) -> Self {
        let mut c = Self::full(out, work);
        c.mode = "smoke".into();
        c.trials = 5;
        c.latency_machines = 10;
        c.latency_window = Duration::from_secs(1);
        c.target.machines = 20;
        c.target.log_size = "16K".parse().unwrap_or(gen_default_size());
        c.target.patience = Duration::from_secs(60);
        c.storm = Some(StormSettings {
            machines: 300,
            log_size: "32K".parse().unwrap_or(gen_default_size()),
            window: Duration::from_millis(100),
            nic: target::Nic::VirtioNet,
            progress: false,
        });
        c.command =
            "cargo run --release -p netoops-bench --bin netoops-bench -- suite --smoke".into();
        c
    }
}

fn gen_default_size() -> crate::gen::SizeRange {
    crate::gen::SizeRange {
        min: 64 * 1024,
        max: 64 * 1024,
    }
}

/// Rate to start searching at when no baseline ran (above anything one loopback sender
/// reaches on the machines this was measured on).
const TOP_WITHOUT_BASELINE: u64 = 200_000;

/// Runs the suite; `say` gets one line per step.
pub fn run_suite(
    cfg: &SuiteConfig,
    programs: &Programs,
    say: &mut dyn FnMut(&str),
) -> io::Result<Results> {
    let started = Instant::now();
    fs::create_dir_all(&cfg.work)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut results = Results {
        schema: SCHEMA,
        mode: cfg.mode.clone(),
        command: cfg.command.clone(),
        started: rfc3339_now(),
        host: host::describe(root),
        settings: Settings {
            trial_machines: cfg.target.machines,
            trial_log_bytes: cfg.target.log_size.max,
            trials: cfg.trials,
            vm_memory_mib: cfg.target.vm_memory_mib,
            image_cmdline: target::image_cmdline(&cfg.target, 0).replace(":0 ", ":PORT "),
            relay_flags: target::relay_flags(&cfg.target).join(" "),
            latency_machines: cfg.latency_machines,
            latency_window_ms: u64::try_from(cfg.latency_window.as_millis()).unwrap_or(0),
            lossless_rule: "Lossless: for relay targets every dump is stored complete with \
                            exactly the text sent (the sender's three rounds may cover a lost \
                            datagram); for the baseline every datagram is counted."
                .into(),
        },
        ..Results::default()
    };
    let mut top: Option<u64> = None;
    for &kind in &cfg.targets {
        say(&format!("{}: starting", kind.name()));
        let mut running = match Running::start(kind, programs, &cfg.target, &cfg.work) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                // The guest's own refusal says most ("config error: ... no NIC matches").
                let first = reason
                    .lines()
                    .find(|l| l.contains("config error:"))
                    .or_else(|| reason.lines().next())
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                say(&format!("{}: not run: {first}", kind.name()));
                let _ = fs::write(cfg.work.join(format!("{}.error", kind.name())), &reason);
                results.skipped.push(Skipped {
                    target: kind.name().into(),
                    reason: first,
                });
                continue;
            }
        };
        let r = measure(&mut running, kind, cfg, &mut top, say);
        running.stop(&cfg.work);
        let mut r = r?;
        if kind == Kind::Baseline {
            results.generator_max_pps = r.trials.first().map_or(0.0, |t| t.achieved_pps);
        }
        r.description = kind.description().into();
        results.targets.push(r);
    }
    let baseline = results
        .targets
        .iter()
        .find(|t| t.name == Kind::Baseline.name())
        .and_then(|t| t.lossless_pps.map(|r| (r, t.limited_by_generator)));
    for t in &mut results.targets {
        (t.ratio_to_baseline, t.ratio_bound) = ratio(t, baseline);
    }
    if let Some(storm) = &cfg.storm {
        say(&format!(
            "storm: {} machines x {} KiB within {} ms",
            storm.machines,
            storm.log_size.max / 1024,
            storm.window.as_millis()
        ));
        match storm::run_storm(programs, &cfg.target, storm, &cfg.work) {
            Ok(s) => {
                say(&format!(
                    "storm: {} complete, {} partial, {} missing, {} without their newest chunk, \
                     within budget: {:?}",
                    s.dumps_complete,
                    s.dumps_partial,
                    s.dumps_missing,
                    s.newest_chunk_lost,
                    s.within_budget
                ));
                results.storm = Some(s);
            }
            Err(e) => {
                say(&format!("storm: not run: {e}"));
                results.skipped.push(Skipped {
                    target: "storm".into(),
                    reason: e.to_string().lines().next().unwrap_or_default().into(),
                });
            }
        }
        if cfg.targets.contains(&Kind::HostedRelay) {
            // Paced at the hosted relay's lossless rate: over loopback UDP nothing pushes
            // back, so unpaced the kernel's socket drops would decide; paced, what is late,
            // partial or dropped is the relay's and the collector's doing, as in the image
            // storm (TCP-fed).
            let rate = results
                .targets
                .iter()
                .find(|t| t.name == Kind::HostedRelay.name())
                .and_then(|t| t.lossless_pps)
                .map_or(0, |r| r.floor() as u64);
            say(&format!(
                "storm into hosted-relay: {} machines at {}",
                storm.machines,
                if rate > 0 {
                    format!("{rate}/s")
                } else {
                    "full speed".into()
                }
            ));
            match storm::run_hosted_storm(programs, &cfg.target, storm, rate, &cfg.work) {
                Ok(s) => {
                    say(&format!(
                        "storm into hosted-relay: {} complete, {} partial, {} missing; crash \
                         line p99 {} ms",
                        s.dumps_complete,
                        s.dumps_partial,
                        s.dumps_missing,
                        s.crash_line_latency
                            .as_ref()
                            .map_or("?".into(), |l| format!("{:.1}", l.p99_ms))
                    ));
                    results.hosted_storm = Some(s);
                }
                Err(e) => {
                    say(&format!("storm into hosted-relay: not run: {e}"));
                    results.skipped.push(Skipped {
                        target: "storm-hosted-relay".into(),
                        reason: e.to_string().lines().next().unwrap_or_default().into(),
                    });
                }
            }
        }
    }
    results.duration_s = started.elapsed().as_secs_f64();
    results.host.load_at_end = host::load_average();
    Ok(results)
}

/// The search and the figures of one started target.
fn measure(
    running: &mut Running,
    kind: Kind,
    cfg: &SuiteConfig,
    top: &mut Option<u64>,
    say: &mut dyn FnMut(&str),
) -> io::Result<TargetResult> {
    let mut result = TargetResult {
        name: kind.name().into(),
        ..TargetResult::default()
    };
    let mut best: Option<(Trial, TrialDetail)> = None;
    let mut record = |trial: Trial,
                      detail: TrialDetail,
                      result: &mut TargetResult,
                      say: &mut dyn FnMut(&str)| {
        say(&format!(
            "{}: offered {} -> achieved {:.0}/s, received {}, dumps {}: {}",
            kind.name(),
            if trial.offered_pps == 0 {
                "max".to_string()
            } else {
                format!("{}/s", trial.offered_pps)
            },
            trial.achieved_pps,
            trial
                .received_datagrams
                .map_or("?".into(), |r| format!("{r}/{}", trial.datagrams_sent)),
            trial.dumps.map_or("-".into(), |d| format!(
                "{}/{} complete, {} partial, {} missing, {} wrong text",
                d.complete, d.expected, d.partial, d.missing, d.wrong_text
            )),
            if trial.lossless { "lossless" } else { "LOSS" }
        ));
        if trial.lossless
            && best
                .as_ref()
                .is_none_or(|(b, _)| trial.achieved_pps > b.achieved_pps)
        {
            best = Some((trial.clone(), detail));
        }
        result.trials.push(trial);
    };
    // Every target first gets all the generator can send, unthrottled; the baseline's rate
    // there is the top of every search.
    let (trial, detail) = running.trial(0)?;
    result.cpu_ns_per_datagram = trial.cpu_ns_per_datagram;
    let achieved = trial.achieved_pps.floor() as u64;
    let unthrottled_lossless = trial.lossless;
    record(trial, detail, &mut result, say);
    if kind == Kind::Baseline {
        *top = Some(achieved);
    }
    if unthrottled_lossless {
        result.limited_by_generator = true;
    } else {
        let max = top.unwrap_or(TOP_WITHOUT_BASELINE);
        let mut search = RateSearch::new(max, cfg.trials.saturating_sub(1), max / 200);
        let mut first = true;
        while let Some(rate) = search.next_rate() {
            let (trial, detail) = held_trial(running, rate, say)?;
            let lossless = trial.lossless;
            record(trial, detail, &mut result, say);
            if first && lossless {
                result.limited_by_generator = true;
            }
            first = false;
            search.record(rate, lossless);
        }
    }
    if let Some((trial, detail)) = best {
        result.lossless_pps = Some(trial.achieved_pps);
        result.lossless_gbps = Some(trial.achieved_gbps);
        if kind.relays() {
            result.latency_at_lossless_rate =
                latency(trial.achieved_pps, trial.offered_pps, &detail);
            // Half the lossless rate: how fast a busy relay with headroom is, which is what a
            // fleet sees most of the time. One more trial of the search fleet; it joins the
            // trials (the throughput plot), but cannot change the lossless rate.
            let half = (trial.achieved_pps / 2.0).floor() as u64;
            if half > 0 {
                let (t, d) = held_trial(running, half, say)?;
                say(&format!(
                    "{}: half the lossless rate, offered {half}/s -> achieved {:.0}/s, {}, \
                     {} dumps stored/s",
                    kind.name(),
                    t.achieved_pps,
                    if t.lossless { "lossless" } else { "LOSS" },
                    t.stored_dumps_per_s
                        .map_or("?".into(), |r| format!("{r:.0}"))
                ));
                result.latency_at_half_rate = latency(t.achieved_pps, half, &d);
                if !t.lossless {
                    result.notes.push(format!(
                        "The trial at half the lossless rate lost dumps ({:?}); its latencies \
                         cover the complete ones.",
                        t.dumps
                    ));
                }
                result.trials.push(t);
            }
        }
    }
    if kind.relays() && cfg.latency_machines > 0 {
        // Each crash at the rate the target takes (or a low one when none was lossless).
        let rate = result.lossless_pps.map_or(1000, |r| r.floor() as u64);
        let (trial, detail) =
            running.latency_run(cfg.latency_machines, cfg.latency_window, rate)?;
        say(&format!(
            "{}: latency run, {} machines over {} ms at up to {rate}/s: {}",
            kind.name(),
            cfg.latency_machines,
            cfg.latency_window.as_millis(),
            trial.dumps.map_or("-".into(), |d| format!(
                "{}/{} complete",
                d.complete, d.expected
            ))
        ));
        result.latency = latency(trial.achieved_pps, rate, &detail);
        if !trial.lossless {
            result.notes.push(format!(
                "The latency run lost dumps ({:?}); latencies cover the complete ones.",
                trial.dumps
            ));
        }
    }
    let (mem, what) = running.memory_high_water();
    result.memory_high_water_bytes = mem;
    result.memory_measure = what;
    if let Kind::Image(_) = kind {
        result.cycles_per_datagram = running.cycles_per_datagram();
        result.boot_to_ready_ms = running.boot.map(|b| b.as_secs_f64() * 1000.0);
        if let Some(b) = result.boot_to_ready_ms {
            result
                .notes
                .push(format!("QEMU start to `ready:` {b:.0} ms (TCG)."));
        }
        result.kernel_entry_to_ready_ms = running.kernel_ready_ms;
        if let Some(k) = running.kernel_ready_ms {
            result.notes.push(format!(
                "Kernel entry to ready {k:.0} ms (the kernel's figure)."
            ));
        }
    }
    if result.trials.iter().any(|t| !t.rate_held) {
        result.notes.push(
            "Some trials missed the requested rate by more than 2% (generator or machine \
             limit); rates shown are those achieved."
                .into(),
        );
    }
    Ok(result)
}

/// `t`'s lossless rate over the baseline's, and what kind of bound that is. A rate measured
/// while the generator could offer no more is only a lower bound of the true one: over a
/// generator-bound baseline a target's ratio is an upper bound, a generator-bound target's a
/// lower bound, and with both bound it says nothing.
pub fn ratio(t: &TargetResult, baseline: Option<(f64, bool)>) -> (Option<f64>, String) {
    let (Some(rate), Some((base, base_bound))) = (t.lossless_pps, baseline) else {
        return (None, String::new());
    };
    if base <= 0.0 {
        return (None, String::new());
    }
    if t.name == Kind::Baseline.name() {
        return (Some(1.0), "exact".into());
    }
    let bound = match (t.limited_by_generator, base_bound) {
        (false, false) => "exact",
        (false, true) => "upper",
        (true, false) => "lower",
        (true, true) => return (None, "undetermined".into()),
    };
    (Some(rate / base), bound.into())
}

/// A trial at `rate`, run once more when it was lossless but the generator fell more than 5%
/// short of the rate (a loaded machine): it says nothing about the rate asked. A lossy trial
/// stands, since the target lost at a lower rate than asked.
fn held_trial(
    running: &mut Running,
    rate: u64,
    say: &mut dyn FnMut(&str),
) -> io::Result<(Trial, TrialDetail)> {
    let short = |t: &Trial| rate > 0 && t.lossless && t.achieved_pps < 0.95 * rate as f64;
    let first = running.trial(rate)?;
    if !short(&first.0) {
        return Ok(first);
    }
    say(&format!(
        "{}: offered {rate}/s but sent {:.0}/s; once more",
        running.kind.name(),
        first.0.achieved_pps
    ));
    let second = running.trial(rate)?;
    Ok(if second.0.achieved_pps > first.0.achieved_pps {
        second
    } else {
        first
    })
}

fn latency(rate: f64, offered: u64, d: &TrialDetail) -> Option<Latency> {
    let durable = sorted(&d.durable_ms);
    let crash = sorted(&d.crash_line_ms);
    Some(Latency {
        rate_pps: rate,
        offered_pps: offered,
        durable: Summary::of(&durable)?,
        crash_line: Summary::of(&crash)?,
        durable_cdf: cdf_points(&durable, CDF_POINTS),
        crash_line_cdf: cdf_points(&crash, CDF_POINTS),
        stored_dumps_per_s: d.stored_dumps_per_s,
    })
}

/// Writes `results.json`, `results.md`, `throughput.svg`, `latency.svg` and
/// `latency_load.svg` into `out`.
pub fn write_outputs(results: &Results, out: &Path) -> io::Result<()> {
    fs::create_dir_all(out)?;
    let mut json = serde_json::to_vec_pretty(results).map_err(io::Error::other)?;
    json.push(b'\n');
    fs::write(out.join("results.json"), json)?;
    fs::write(out.join("results.md"), results.markdown())?;
    fs::write(out.join("throughput.svg"), plot::throughput(results))?;
    fs::write(out.join("latency.svg"), plot::latency(results))?;
    fs::write(out.join("latency_load.svg"), plot::latency_load(results))?;
    Ok(())
}

/// Now as RFC 3339 UTC (seconds): core's formatter, without its milliseconds.
fn rfc3339_now() -> String {
    let mut s = String::new();
    let ms = crate::gen::sendlog::wall_ns() / 1_000_000;
    let _ = netoops_core::time::write_utc(&mut s, ms);
    s.truncate("YYYY-MM-DDTHH:MM:SS".len());
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_rfc3339() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'));
        assert_eq!(&now[10..11], "T");
    }

    #[test]
    fn latency_needs_samples() {
        let d = TrialDetail {
            durable_ms: vec![3.0, 1.0, 2.0],
            crash_line_ms: vec![0.5],
            stored_dumps_per_s: Some(12.0),
        };
        let l = latency(1000.0, 0, &d).unwrap();
        assert_eq!(l.durable.median_ms, 2.0);
        assert_eq!(l.stored_dumps_per_s, Some(12.0));
        assert_eq!(l.durable_cdf.len(), 3);
        assert!(latency(1.0, 0, &TrialDetail::default()).is_none());
    }

    #[test]
    fn ratios_know_their_bounds() {
        let t = |name: &str, rate, bound| TargetResult {
            name: name.into(),
            lossless_pps: Some(rate),
            limited_by_generator: bound,
            ..TargetResult::default()
        };
        let vm = t("image-virtio-net", 10_000.0, false);
        let hosted = t("hosted-relay", 150_000.0, true);
        assert_eq!(
            ratio(&vm, Some((100_000.0, true))),
            (Some(0.1), "upper".into())
        );
        assert_eq!(
            ratio(&vm, Some((100_000.0, false))),
            (Some(0.1), "exact".into())
        );
        assert_eq!(
            ratio(&hosted, Some((100_000.0, false))),
            (Some(1.5), "lower".into())
        );
        assert_eq!(
            ratio(&hosted, Some((100_000.0, true))),
            (None, "undetermined".into())
        );
        let base = t("baseline", 100_000.0, true);
        assert_eq!(
            ratio(&base, Some((100_000.0, true))),
            (Some(1.0), "exact".into())
        );
        assert_eq!(ratio(&vm, None), (None, String::new()));
        let none = TargetResult::default();
        assert_eq!(ratio(&none, Some((1.0, false))), (None, String::new()));
    }

    #[test]
    fn smoke_is_smaller_than_full() {
        let f = SuiteConfig::full("o".into(), "w".into());
        let s = SuiteConfig::smoke("o".into(), "w".into());
        assert!(s.target.machines < f.target.machines && s.trials < f.trials);
        assert_eq!(f.storm.as_ref().unwrap().machines, 10_000);
        assert_eq!(f.storm.as_ref().unwrap().log_size.max, 128 * 1024);
        assert_eq!(f.target.vm_memory_mib, 256);
    }
}
