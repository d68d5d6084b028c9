//! Codec + reassembly throughput against the cost of copying 1 KiB, measured in the same run.
//!
//! Scenario (issue 2): 1,000 machines crash at once with 128 KiB logs and send three rounds of
//! 1412-byte v3 datagrams (user blob variant), interleaved packet by packet across machines.
//! Every iteration feeds the whole storm (387,000 datagrams) through `Datagram::parse` and the
//! `Reassembler`, which stores every chunk, verifies the duplicates of rounds two and three by
//! fingerprint, emits 1,000 complete dumps whose text the sink reads in full, and then forgets
//! them all at the linger timeout. One reassembler serves every iteration, warm, as in a
//! running relay.
//!
//! The baseline copies the same number of 1 KiB payloads out of the same datagram buffers into
//! a pool as large as the reassembler's, so both walk the same working set. Both loops
//! prefetch the next datagram while handling one, as the image's receive drivers do.
//!
//! Netconsole (issue 12), in the same run: 1,000 machines chatter in extended format (records
//! of 60-200 bytes, one in 25 long enough to be split into `ncfrag` fragments, userdata on
//! every record, one in ten at warning level and so scanned for crash lines) and 50 of them crash, 300 records each, interleaved record by record, through
//! `netconsole::Datagram::parse` and the `ConsoleTracker` with the appliance's default 16 MiB
//! history pool (so healthy machines' history is reclaimed all along), then the quiet timeout
//! renders the 50 dumps. Each iteration's machines have rebooted (their sequence numbers start
//! again), as a relay that runs for a long time sees.
//!
//! After criterion's own report, the harness prints the medians side by side:
//! packets/s, ns/packet and the ratio to the copy baseline, for netoops and netconsole.
//!
//! CPU per datagram, same run: then (or alone, with `NETOOPS_BENCH_CPU=<rounds>`) the harness
//! runs rounds of two netoops and then two netconsole iterations, each timed with the thread's
//! CPU clock (`CLOCK_THREAD_CPUTIME_ID`), so time spent descheduled on a busy machine is left
//! out and both sides see the same machine within seconds. It prints the medians of the
//! per-datagram CPU times and of the per-round ratios, warm (each side's second run), cold
//! (each side's first run, right after the other side's: netconsole after netoops' storm,
//! netoops after netconsole's chatter) and netconsole cold against netoops warm (the harshest
//! pairing).
//!
//! Instruction counts (repeatable where timings are not): with `NETOOPS_BENCH_ONCE=<n>` set
//! the harness skips criterion and runs each workload `n` more times, warm, through the
//! never-inlined `measured_storm` and `measured_chatter`, so that
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*'` counts
//! exactly those iterations (see the README's "Netconsole next to netoops").

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use netoops_bench::native::storm::Storm;
use netoops_core::netconsole::{
    ConsoleConfig, ConsoleCrash, ConsoleDump, ConsoleSink, ConsoleTracker,
};
use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler, ReassemblyConfig};
use netoops_core::time::Instant;
use netoops_wire::netconsole::{encode_record, RecordSpec};
use netoops_wire::DATA_LEN;

const MACHINES: usize = 1000;
const LOG_BYTES: usize = 128 * 1024;
const ROUNDS: usize = 3;

/// What a poll-mode driver does while frame `i` is handled: ask for the next frame's cache
/// lines, which the NIC wrote to memory (the image's virtio-net and e1000 drivers issue
/// PREFETCHT0 for the next filled buffer). Both the engine and the copy baseline do it.
fn prefetch_next(storm: &Storm, i: usize) {
    if i + 1 < storm.packets_per_round() {
        netoops_streamed_slots::prefetch(storm.datagram(i + 1));
    }
}

/// Reads every byte the reassembler hands out, as the delivery spool would.
#[derive(Default)]
struct Sink {
    crashes: usize,
    dumps: usize,
    complete: usize,
    bytes: usize,
}

impl EventSink for Sink {
    fn crash_seen(&mut self, c: &CrashSeen<'_>) {
        self.crashes += 1;
        self.bytes += c.text().len();
    }
    fn dump(&mut self, d: &DumpView<'_>) {
        self.dumps += 1;
        self.complete += usize::from(d.complete());
        d.write_text(|b| self.bytes += black_box(b).len());
    }
}

fn config() -> ReassemblyConfig {
    ReassemblyConfig {
        memory_budget: 160 << 20,
        max_dumps: 2048,
        ..ReassemblyConfig::default()
    }
}

/// One storm at `now`, then the linger timeout that forgets every dump, so the next storm
/// finds the reassembler as a running relay would: empty tables, pool memory already touched.
fn run_storm(storm: &Storm, r: &mut Reassembler, now: Instant) -> Sink {
    let mut sink = Sink::default();
    for _ in 0..ROUNDS {
        for i in 0..storm.packets_per_round() {
            prefetch_next(storm, i);
            let _ = r.handle_datagram(now, storm.source(i), storm.datagram(i), &mut sink);
        }
    }
    let c = r.config();
    let later = now + c.linger + c.quiet_timeout;
    r.handle_timeout(later, &mut sink);
    sink
}

/// One warm netoops iteration, kept out of line for callgrind's `--toggle-collect`.
#[inline(never)]
fn measured_storm(storm: &Storm, r: &mut Reassembler, now: Instant) -> usize {
    run_storm(storm, r, now).bytes
}

fn copy_baseline(storm: &Storm, pool: &mut [[u8; DATA_LEN]]) -> usize {
    let n = storm.packets_per_round();
    let mut sum = 0;
    for round in 0..ROUNDS {
        for i in 0..n {
            prefetch_next(storm, i);
            let d = storm.datagram(i);
            let slot = &mut pool[(i + round * n) % pool.len()];
            slot.copy_from_slice(&d[d.len() - DATA_LEN..]);
            sum += usize::from(slot[0]);
        }
    }
    sum
}

const NC_MACHINES: usize = 1000;
const NC_CRASHING: usize = 50;
const NC_RECORDS: usize = 300;

/// The netconsole scenario, pre-encoded: datagrams back to back with their lengths.
struct Chatter {
    bytes: Vec<u8>,
    spans: Vec<(u32, u16)>,
    sources: Vec<SocketAddr>,
}

impl Chatter {
    fn new() -> Self {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        let mut sources = Vec::new();
        let mut scratch = [0u8; 8192];
        let long: String = (0..1500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        for r in 0..NC_RECORDS {
            for m in 0..NC_MACHINES {
                let crash_at = NC_RECORDS - 20;
                let text = if m < NC_CRASHING && r == crash_at {
                    "BUG: kernel NULL pointer dereference, address: 0000000000000008".to_string()
                } else if m < NC_CRASHING && r > crash_at {
                    format!(" ? do_thing+0x{r:x}/0x40 [module_{m}]")
                } else if (r + m) % 25 == 0 {
                    format!("machine {m} record {r} {long}")
                } else {
                    let pad = "x".repeat((r * 7 + m) % 140);
                    format!("machine {m} record {r}: eth0: link up, 1000 Mbps {pad}")
                };
                // Crash headers at alert, one record in ten a warning (scanned for crash
                // lines), the rest info.
                let level = if m < NC_CRASHING && r == crash_at {
                    1
                } else if (r + 3 * m) % 10 == 0 {
                    4
                } else {
                    6
                };
                let spec = RecordSpec {
                    release: None,
                    level,
                    seq: r as u64,
                    usec: 1_000_000 + r as u64 * 1000,
                    text: text.as_bytes(),
                    fields: &[("cpu", "3"), ("taskname", "kworker/3:1")],
                };
                let source = SocketAddr::from(([10, 2, (m / 256) as u8, (m % 256) as u8], 6665));
                encode_record(&spec, &mut scratch, |d| {
                    spans.push((bytes.len() as u32, d.len() as u16));
                    bytes.extend_from_slice(d);
                    sources.push(source);
                });
            }
        }
        Chatter {
            bytes,
            spans,
            sources,
        }
    }

    fn datagram(&self, i: usize) -> &[u8] {
        let (at, len) = self.spans[i];
        &self.bytes[at as usize..at as usize + len as usize]
    }
}

#[derive(Default)]
struct ConsoleCount {
    crashes: usize,
    dumps: usize,
    bytes: usize,
}

impl ConsoleSink for ConsoleCount {
    fn crash_seen(&mut self, c: &ConsoleCrash<'_>) {
        self.crashes += 1;
        self.bytes += black_box(c.line).len();
    }
    fn dump(&mut self, d: &ConsoleDump<'_>) {
        self.dumps += 1;
        self.bytes += black_box(d.text).len();
    }
}

fn run_chatter(chatter: &Chatter, t: &mut ConsoleTracker, now: Instant) -> ConsoleCount {
    let mut sink = ConsoleCount::default();
    let n = chatter.spans.len();
    for i in 0..n {
        // As the drivers do (and the netoops loop above): the next buffer's lines are asked
        // for while this datagram is handled.
        if i + 1 < n {
            netoops_streamed_slots::prefetch(chatter.datagram(i + 1));
        }
        let _ = t.handle_datagram(now, chatter.sources[i], chatter.datagram(i), &mut sink);
    }
    t.handle_timeout(now + t.config().quiet_timeout, &mut sink);
    sink
}

/// One warm netconsole iteration, kept out of line for callgrind's `--toggle-collect`.
#[inline(never)]
fn measured_chatter(chatter: &Chatter, t: &mut ConsoleTracker, now: Instant) -> usize {
    run_chatter(chatter, t, now).bytes
}

/// CPU time this thread has run.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of two netoops storms and then two netconsole iterations, each timed by the
/// thread's CPU clock; prints the medians per datagram and of the per-round ratios, warm (the
/// second run of each side, as criterion's back-to-back iterations and a relay's steady state)
/// and cold (the first: netconsole right after netoops' 128 MiB of dumps swept the caches,
/// netoops right after netconsole's chatter).
fn cpu_rounds(
    rounds: usize,
    storm: &Storm,
    r: &mut Reassembler,
    chatter: &Chatter,
    t: &mut ConsoleTracker,
) {
    let packets = (storm.packets_per_round() * ROUNDS) as f64;
    let datagrams = chatter.spans.len() as f64;
    let mut v: [Vec<f64>; 7] = Default::default();
    let mut now = Instant::from_millis(1) + netoops_core::time::Duration::from_secs(1 << 20);
    let mut timed = |f: &mut dyn FnMut(Instant) -> usize| {
        now += netoops_core::time::Duration::from_secs(60);
        let a = thread_cpu();
        black_box(f(now));
        (thread_cpu() - a).as_nanos() as f64
    };
    for _ in 0..rounds {
        let no_cold = timed(&mut |now| measured_storm(storm, r, now)) / packets;
        let no_warm = timed(&mut |now| measured_storm(storm, r, now)) / packets;
        let nc_cold = timed(&mut |now| measured_chatter(chatter, t, now)) / datagrams;
        let nc_warm = timed(&mut |now| measured_chatter(chatter, t, now)) / datagrams;
        for (i, x) in [
            no_warm,
            nc_warm,
            nc_warm / no_warm,
            no_cold,
            nc_cold,
            nc_cold / no_cold,
            nc_cold / no_warm,
        ]
        .into_iter()
        .enumerate()
        {
            v[i].push(x);
        }
    }
    let [a, b, c, d, e, f, g] = v.each_mut().map(|x| median(x));
    println!("\nCPU time per datagram (thread CPU clock), medians of {rounds} interleaved rounds:");
    println!("  warm: netoops {a:>6.1} ns  netconsole {b:>6.1} ns  netconsole / netoops {c:.2}x");
    println!("  cold: netoops {d:>6.1} ns  netconsole {e:>6.1} ns  netconsole / netoops {f:.2}x");
    println!("  netconsole cold / netoops warm {g:.2}x");
}

/// The netconsole tracker as the hosted relay sets it up (history tails prefetched).
fn tracker() -> ConsoleTracker {
    let mut t = ConsoleTracker::new(ConsoleConfig::default());
    t.set_prefetch(netoops_streamed_slots::prefetch);
    t
}

fn main() {
    let storm = Storm::new(MACHINES, LOG_BYTES);
    let packets = (storm.packets_per_round() * ROUNDS) as u64;

    // One checked run: every machine's dump complete, nothing dropped.
    // The hosted relay's store: chunks written with non-temporal stores.
    let mut r =
        Reassembler::with_slots(config(), netoops_streamed_slots::boxed).expect("budget fits");
    let sink = run_storm(&storm, &mut r, Instant::from_millis(1));
    assert_eq!(sink.complete, MACHINES, "{:?}", r.stats());
    assert_eq!(sink.crashes, MACHINES);
    assert_eq!(r.stats().dropped_total(), 0);
    assert_eq!(r.dumps_held(), 0);

    let once: Option<u64> = std::env::var("NETOOPS_BENCH_ONCE")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(rounds) = std::env::var("NETOOPS_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let chatter = Chatter::new();
        let mut t = tracker();
        run_chatter(&chatter, &mut t, Instant::from_millis(1));
        cpu_rounds(rounds, &storm, &mut r, &chatter, &mut t);
        return;
    }
    if let Some(n) = once {
        let chatter = Chatter::new();
        let mut t = tracker();
        let checked = run_chatter(&chatter, &mut t, Instant::from_millis(1));
        assert_eq!(checked.dumps, NC_CRASHING, "{:?}", t.stats());
        let mut now = Instant::from_millis(1);
        for _ in 0..n {
            now += netoops_core::time::Duration::from_secs(60);
            black_box(measured_storm(&storm, &mut r, now));
            black_box(measured_chatter(&chatter, &mut t, now));
        }
        println!(
            "{n} iterations each: netoops {packets} datagrams, netconsole {} datagrams",
            chatter.spans.len()
        );
        return;
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(12))
        .configure_from_args();
    let mut g = c.benchmark_group("storm_1000x128KiB");
    g.throughput(Throughput::Elements(packets));
    let mut pool = vec![[0u8; DATA_LEN]; config().chunk_slots().expect("budget fits")];
    g.bench_function("copy_1KiB_baseline", |b| {
        b.iter(|| black_box(copy_baseline(&storm, &mut pool)))
    });
    g.bench_function("codec_and_reassembly", |b| {
        // The reassembler from the checked run, warm; each storm starts a minute later.
        let mut now = Instant::from_millis(1);
        b.iter(|| {
            now += netoops_core::time::Duration::from_secs(60);
            black_box(run_storm(&storm, &mut r, now).bytes)
        })
    });
    g.finish();

    let chatter = Chatter::new();
    let nc_datagrams = chatter.spans.len() as u64;
    let mut t = tracker();
    let checked = run_chatter(&chatter, &mut t, Instant::from_millis(1));
    assert_eq!(checked.crashes, NC_CRASHING, "{:?}", t.stats());
    assert_eq!(checked.dumps, NC_CRASHING, "{:?}", t.stats());
    assert_eq!(t.stats().malformed_total(), 0);
    let mut g = c.benchmark_group("netconsole_1000_chattering");
    g.throughput(Throughput::Elements(nc_datagrams));
    g.bench_function("netconsole_ingest", |b| {
        let mut now = Instant::from_millis(1);
        b.iter(|| {
            now += netoops_core::time::Duration::from_secs(60);
            black_box(run_chatter(&chatter, &mut t, now).bytes)
        })
    });
    g.finish();
    c.final_summary();

    let median = |name: &str| -> Option<f64> {
        // Where criterion writes: CARGO_TARGET_DIR when set, else the workspace's target.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = target.join(format!("criterion/{name}/new/estimates.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    if let (Some(copy), Some(engine)) = (
        median("storm_1000x128KiB/copy_1KiB_baseline"),
        median("storm_1000x128KiB/codec_and_reassembly"),
    ) {
        let per = |ns: f64| ns / packets as f64;
        println!("\nmedians over {packets} packets per iteration:");
        println!(
            "  copy 1 KiB baseline   {:>12.0} packets/s  {:>7.1} ns/packet",
            packets as f64 / (copy / 1e9),
            per(copy)
        );
        println!(
            "  codec + reassembly    {:>12.0} packets/s  {:>7.1} ns/packet",
            packets as f64 / (engine / 1e9),
            per(engine)
        );
        println!("  ratio to baseline     {:>12.2}x", engine / copy);
        if let Some(nc) = median("netconsole_1000_chattering/netconsole_ingest") {
            let nc_per = nc / nc_datagrams as f64;
            println!(
                "  netconsole ingest     {:>12.0} datagrams/s {:>6.1} ns/datagram \
                 ({nc_datagrams} datagrams per iteration; {:.2}x netoops per datagram)",
                nc_datagrams as f64 / (nc / 1e9),
                nc_per,
                nc_per / per(engine)
            );
        }
    }
    cpu_rounds(21, &storm, &mut r, &chatter, &mut t);
}
