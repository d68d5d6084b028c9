//! `netoops-bench`: the benchmark suite in one command.
//!
//! - `suite` builds what it needs (relay, collector, the appliance image), runs the baseline
//!   receiver, the hosted relay and the image with virtio-net and e1000e, searches each one's
//!   lossless rate, measures latencies, memory and cycles per datagram, runs the crash storm,
//!   and writes `results.json`, `results.md`, `throughput.svg` and `latency.svg`.
//!   `--smoke` is the same suite, small (the test command runs it).
//! - `baseline` is the counting receiver the suite runs as its baseline.
//! - `collector` drives the collector alone over N connections with 64 KiB and 4 KiB dumps and
//!   reports stored dumps/s (median of runs) next to the disk's fsync time.
//! - `native` runs the image's receive path (virtio-net and e1000e drivers, fast path, relay,
//!   upstream link) natively over simulated NICs and prints cycles and ns per datagram per
//!   stage beside the 1 KiB copy baseline; writes `native.json` and `native.md`.
//! - `render` rewrites the Markdown and plots from a `results.json`.
//!
//! Exit status: 0 on success, 1 when the run failed, 2 on bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use netoops_bench::gen::SizeRange;
use netoops_bench::harness::target::{Kind, Programs};
use netoops_bench::harness::{baseline, report::Results, run_suite, write_outputs, SuiteConfig};

#[path = "../harness/collector.rs"]
mod collector_bench;

#[derive(Parser)]
#[command(
    name = "netoops-bench",
    version,
    about = "Benchmark the netoops relay: lossless rate, latency, memory, crash storm"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark suite.
    Suite {
        /// The short version (well under two minutes), as the test command runs it.
        #[arg(long)]
        smoke: bool,
        /// Where results.json, results.md and the SVG plots go [default: bench/results, or
        /// target/bench-smoke with --smoke].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Targets to run, in order [default: all: baseline, hosted-relay,
        /// image-virtio-net, image-e1000e].
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        /// Machines per search trial.
        #[arg(long)]
        machines: Option<u32>,
        /// Log size per machine in a search trial (e.g. 64K).
        #[arg(long)]
        log_size: Option<SizeRange>,
        /// Trials per target, at most.
        #[arg(long)]
        trials: Option<usize>,
        /// Machines in the crash storm (0: no storm).
        #[arg(long)]
        storm_machines: Option<u32>,
        /// Log size per storm machine.
        #[arg(long)]
        storm_log_size: Option<SizeRange>,
        /// The storm's crash window in milliseconds.
        #[arg(long)]
        storm_ms: Option<u64>,
        /// Keep the scratch directory (collector storage, console transcripts).
        #[arg(long)]
        keep_work: bool,
        /// Install QEMU with apt-get when it is missing.
        #[arg(long)]
        install: bool,
    },
    /// Netconsole next to netoops on the hosted relay, same run: datagrams/s and the relay's
    /// CPU per datagram for each, and their ratio. Writes ingest.json and ingest.md.
    Ingest {
        /// A few thousand datagrams of each (the test command's version).
        #[arg(long)]
        smoke: bool,
        /// Offered datagrams per second for both fleets [default: 80000, smoke 10000].
        #[arg(long)]
        rate: Option<u64>,
        /// Where ingest.json and ingest.md go [default: bench/results, or
        /// target/bench-smoke with --smoke].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The image's receive path natively on this host, stage by stage: TSC cycles and ns per
    /// datagram for virtio-net and e1000e beside the 1 KiB copy baseline; writes native.json
    /// and native.md.
    Native {
        /// A tiny storm (the test command's version): every stage runs, figures mean little.
        #[arg(long)]
        smoke: bool,
        /// Crashing machines [default: 1000, smoke 24].
        #[arg(long)]
        machines: Option<usize>,
        /// Log KiB per machine [default: 128, smoke 16].
        #[arg(long)]
        log_kib: Option<usize>,
        /// Rounds of the storm [default: 3].
        #[arg(long)]
        rounds: Option<usize>,
        /// Measured iterations, after one warm-up [default: 7, smoke 3].
        #[arg(long)]
        iterations: Option<usize>,
        /// Where native.json and native.md go [default: bench/results, or
        /// target/bench-smoke with --smoke].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The collector alone: N connections send dumps as fast as acknowledgements allow;
    /// prints stored dumps/s per dump size (median of runs) and the disk's fsync time, and
    /// writes collector.json and collector.md.
    Collector {
        /// One short run per size (a few seconds in all; the test command's version).
        #[arg(long)]
        smoke: bool,
        /// The netoops-collect binary [default: build it in this binary's profile].
        #[arg(long)]
        collector: Option<PathBuf>,
        /// Client connections (relay instances).
        #[arg(long)]
        connections: Option<usize>,
        /// Runs per dump size.
        #[arg(long)]
        runs: Option<usize>,
        /// Measured seconds per run.
        #[arg(long)]
        seconds: Option<f64>,
        /// Dump sizes in bytes [default: 65536,4096].
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Dumps per machine (source address); 1, the default, is a crash storm's shape: every
        /// dump also creates its machine's directory.
        #[arg(long)]
        per_machine: Option<u64>,
        /// Scratch directory for the storage (not tmpfs) [default: under the system temp
        /// directory].
        #[arg(long)]
        work: Option<PathBuf>,
        /// Where collector.json and collector.md go [default: none, print only].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep the scratch directory (the stored dumps, each run's collector stderr).
        #[arg(long)]
        keep_work: bool,
    },
    /// The baseline receiver: counts datagrams until SIGINT/SIGTERM.
    Baseline {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2004")]
        listen: std::net::SocketAddr,
        /// Receive buffer to ask for (the hosted relay's default).
        #[arg(long, default_value_t = 8 << 20)]
        recv_buffer: usize,
    },
    /// Rewrite results.md and the plots from a results.json.
    Render {
        /// The results.json.
        results: PathBuf,
        /// Output directory [default: the JSON's directory].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Baseline {
            listen,
            recv_buffer,
        } => {
            let stop = match baseline::stop_on_signals() {
                Ok(s) => s,
                Err(e) => return fail(format_args!("signal handlers: {e}")),
            };
            let mut out = std::io::stdout();
            match baseline::run(listen, recv_buffer, &stop, &mut out) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("baseline on {listen}: {e}")),
            }
        }
        Cmd::Ingest { smoke, rate, out } => ingest(smoke, rate, out),
        Cmd::Native {
            smoke,
            machines,
            log_kib,
            rounds,
            iterations,
            out,
        } => {
            use netoops_bench::native::{run_native, NativeSettings};
            let mut settings = if smoke {
                NativeSettings::smoke()
            } else {
                NativeSettings::full()
            };
            if let Some(m) = machines {
                settings.machines = m.max(1);
            }
            if let Some(k) = log_kib {
                settings.log_bytes = k.max(1) * 1024;
            }
            if let Some(r) = rounds {
                settings.rounds = r.max(1);
            }
            if let Some(i) = iterations {
                settings.iterations = i.max(1);
            }
            let out = out.unwrap_or_else(|| {
                if smoke {
                    netoops_image::target_dir().join("bench-smoke")
                } else {
                    workspace_root().join("bench/results")
                }
            });
            let report = run_native(&settings, |line| eprintln!("native: {line}"));
            let table = report.table();
            println!("{table}");
            let json = serde_json::to_string_pretty(&report).expect("serializable");
            let written = std::fs::create_dir_all(&out)
                .and_then(|()| std::fs::write(out.join("native.json"), json + "\n"))
                .and_then(|()| std::fs::write(out.join("native.md"), table));
            match written {
                Ok(()) => {
                    eprintln!("native: wrote {}", out.join("native.json").display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format_args!("writing {}: {e}", out.display())),
            }
        }
        Cmd::Collector {
            smoke,
            collector,
            connections,
            runs,
            seconds,
            sizes,
            per_machine,
            work,
            out,
            keep_work,
        } => {
            let collector = match collector {
                Some(c) => c,
                None => match build_collector() {
                    Ok(c) => c,
                    Err(e) => return fail(format_args!("{e}")),
                },
            };
            // The system temp directory by default: on this machine it is the repository's
            // own ext4 file system (not tmpfs; checked), while under /work every file creation
            // costs about 1 ms more (something watches that tree), which no deployment pays.
            let work = work.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("netoops-bench-collector-{}", std::process::id()))
            });
            let mut s = if smoke {
                collector_bench::BenchSettings::smoke(collector, work.clone())
            } else {
                collector_bench::BenchSettings::full(collector, work.clone())
            };
            if let Some(c) = connections {
                s.connections = c.max(1);
            }
            if let Some(r) = runs {
                s.runs = r.max(1);
            }
            if let Some(secs) = seconds {
                s.measure = Duration::from_secs_f64(secs.max(0.1));
            }
            if !sizes.is_empty() {
                s.sizes = sizes;
            }
            if let Some(p) = per_machine {
                s.per_machine = p.max(1);
            }
            let mut say = |line: &str| eprintln!("netoops-bench: {line}");
            let result = collector_bench::run_bench(&s, &mut say);
            if keep_work {
                eprintln!("netoops-bench: kept {}", work.display());
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            let bench = match result {
                Ok(b) => b,
                Err(e) => return fail(format_args!("{e}")),
            };
            if let Some(out) = out {
                let written = std::fs::create_dir_all(&out)
                    .and_then(|()| {
                        let json =
                            serde_json::to_string_pretty(&bench).map_err(std::io::Error::other)?;
                        std::fs::write(out.join("collector.json"), json + "\n")
                    })
                    .and_then(|()| std::fs::write(out.join("collector.md"), bench.markdown()));
                if let Err(e) = written {
                    return fail(format_args!("writing to {}: {e}", out.display()));
                }
            }
            print!("{}", bench.markdown());
            ExitCode::SUCCESS
        }
        Cmd::Render { results, out } => {
            let out =
                out.unwrap_or_else(|| results.parent().map(Path::to_path_buf).unwrap_or_default());
            let parsed = std::fs::read(&results)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Results>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => match write_outputs(&r, &out) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format_args!("writing to {}: {e}", out.display())),
                },
                Err(e) => fail(format_args!("reading {}: {e}", results.display())),
            }
        }
        Cmd::Suite {
            smoke,
            out,
            targets,
            machines,
            log_size,
            trials,
            storm_machines,
            storm_log_size,
            storm_ms,
            keep_work,
            install,
        } => {
            let root = workspace_root();
            let work = netoops_image::target_dir()
                .join("bench-work")
                .join(format!("run-{}", std::process::id()));
            let out = out.unwrap_or_else(|| {
                if smoke {
                    netoops_image::target_dir().join("bench-smoke")
                } else {
                    root.join("bench/results")
                }
            });
            let mut cfg = if smoke {
                SuiteConfig::smoke(out.clone(), work.clone())
            } else {
                SuiteConfig::full(out.clone(), work.clone())
            };
            if !targets.is_empty() {
                let mut kinds = Vec::new();
                for t in &targets {
                    match Kind::parse(t) {
                        Some(k) => kinds.push(k),
                        None => {
                            eprintln!("netoops-bench: unknown target {t:?}");
                            return ExitCode::from(2);
                        }
                    }
                }
                cfg.targets = kinds;
            }
            if let Some(m) = machines {
                cfg.target.machines = m.max(1);
            }
            if let Some(l) = log_size {
                cfg.target.log_size = l;
            }
            if let Some(t) = trials {
                cfg.trials = t.max(1);
            }
            if let Some(storm) = cfg.storm.as_mut() {
                if let Some(m) = storm_machines {
                    storm.machines = m;
                }
                if let Some(l) = storm_log_size {
                    storm.log_size = l;
                }
                if let Some(ms) = storm_ms {
                    storm.window = Duration::from_millis(ms);
                }
            }
            if cfg.storm.as_ref().is_some_and(|s| s.machines == 0) {
                cfg.storm = None;
            }
            cfg.keep_work = keep_work;
            cfg.command = std::iter::once(
                "cargo run --release -p netoops-bench --bin netoops-bench --".to_string(),
            )
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
            suite(&cfg, install)
        }
    }
}

fn fail(why: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("netoops-bench: {why}");
    ExitCode::from(1)
}

/// The workspace root (this crate sits one level below it).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cargo build` for `packages`' binaries in this binary's own profile; returns the
/// directory the binaries land in.
fn cargo_build(packages: &[&str], what: &str) -> Result<PathBuf, String> {
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_root())
        .args(["build", "--bins"]);
    for p in packages {
        build.args(["-p", p]);
    }
    if release {
        build.arg("--release");
    }
    // Started from `cargo test`, the environment may carry flags meant for that build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        build.env_remove(var);
    }
    let status = build.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {what} failed"));
    }
    Ok(netoops_image::target_dir().join(if release { "release" } else { "debug" }))
}

/// Builds the collector in this binary's own profile; returns its path.
fn build_collector() -> Result<PathBuf, String> {
    Ok(cargo_build(&["netoops-collect"], "the collector")?.join("netoops-collect"))
}

/// Builds the relay and the collector in this binary's own profile, and the image.
fn programs(work: &Path, install: bool) -> Result<Programs, String> {
    netoops_image::qemu::ensure_qemu(install).map_err(|e| e.to_string())?;
    let bin_dir = cargo_build(
        &["netoops-relay", "netoops-collect"],
        "the relay and collector",
    )?;
    let image = netoops_image::build::build_kernel(true).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    // A private copy: other builds may replace the shared image while the suite runs.
    let private = work.join("netoops-relay.elf");
    std::fs::copy(&image.path, &private).map_err(|e| format!("copying the image: {e}"))?;
    Ok(Programs {
        relay: bin_dir.join("netoops-relay"),
        collector: bin_dir.join("netoops-collect"),
        bench: std::env::current_exe().map_err(|e| e.to_string())?,
        image: private,
    })
}

fn ingest(smoke: bool, rate: Option<u64>, out: Option<PathBuf>) -> ExitCode {
    use netoops_bench::harness::ingest::{run_ingest, IngestSettings};
    let root = workspace_root();
    let out = out.unwrap_or_else(|| {
        if smoke {
            root.join("target/bench-smoke")
        } else {
            root.join("bench/results")
        }
    });
    let work = root.join("target/bench-work/ingest");
    let programs = match programs(&work, false) {
        Ok(p) => p,
        Err(e) => return fail(format_args!("{e}")),
    };
    let mut settings = if smoke {
        IngestSettings::smoke()
    } else {
        IngestSettings::full()
    };
    if let Some(r) = rate {
        settings.rate = r;
    }
    let mut say = |line: &str| eprintln!("netoops-bench: {line}");
    let result = run_ingest(&programs, &work, &settings, &mut say);
    let _ = std::fs::remove_dir_all(&work);
    let cmp = match result {
        Ok(c) => c,
        Err(e) => return fail(format_args!("{e}")),
    };
    let written = std::fs::create_dir_all(&out)
        .and_then(|()| {
            let json = serde_json::to_string_pretty(&cmp).map_err(std::io::Error::other)?;
            std::fs::write(out.join("ingest.json"), json + "\n")
        })
        .and_then(|()| std::fs::write(out.join("ingest.md"), cmp.markdown()));
    if let Err(e) = written {
        return fail(format_args!("writing to {}: {e}", out.display()));
    }
    print!("{}", cmp.markdown());
    ExitCode::SUCCESS
}

fn suite(cfg: &SuiteConfig, install: bool) -> ExitCode {
    let programs = match programs(&cfg.work, install) {
        Ok(p) => p,
        Err(e) => return fail(format_args!("{e}")),
    };
    let mut say = |line: &str| eprintln!("netoops-bench: {line}");
    let results = run_suite(cfg, &programs, &mut say);
    if !cfg.keep_work {
        let _ = std::fs::remove_dir_all(&cfg.work);
    } else {
        say(&format!("scratch files kept in {}", cfg.work.display()));
    }
    let results = match results {
        Ok(r) => r,
        Err(e) => return fail(format_args!("{e}")),
    };
    if let Err(e) = write_outputs(&results, &cfg.out) {
        return fail(format_args!(
            "writing results to {}: {e}",
            cfg.out.display()
        ));
    }
    print!("{}", results.markdown());
    say(&format!(
        "results in {} ({:.0} s)",
        cfg.out.display(),
        results.duration_s
    ));
    ExitCode::SUCCESS
}
