//! `netoops-gen`: simulates machines crashing and sending their kernel logs as netoops
//! datagrams, with loss, duplication, reordering, storm timing and rate pacing, and can write
//! what a correct receiver must report for every machine (`--expect DIR`).
//!
//! Exit status: 0 on success, 1 on an I/O error, 2 on bad arguments.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use netoops_bench::gen::output::frame::{FrameConfig, MacAddr};
use netoops_bench::gen::output::qemu::{DgramOutput, StreamOutput};
use netoops_bench::gen::output::tap::TapOutput;
use netoops_bench::gen::output::udp::UdpOutput;
use netoops_bench::gen::{
    netconsole, run, write_expectations, ExpectSummary, LossModel, NcMode, NetconsoleParams,
    Output, OutputSpec, Progress, Protocol, RunOptions, RunReport, Scenario, Schedule, SendLog,
    SizeRange, Timed, Timing,
};
use netoops_wire::Variant;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "netoops-gen",
    version,
    about = "Simulates machines crashing and sending netoops dumps or netconsole logs (UDP or raw frames)",
    long_about = "Simulates N machines crashing: each sends its kernel log the way the netoops \
                  sender does (three rounds, packet_no ascending), from its own source address, \
                  with configurable loss, duplication, reordering, storm timing and send rate. \
                  Everything derives from --seed: the same arguments send the same bytes. \
                  With --expect DIR it writes DIR/<ip>/expected.json and expected.log per \
                  machine: what a correct receiver reports, computed from what is actually sent. \
                  With --protocol netconsole, crashing machines send ordinary log lines then a \
                  crash burst over netconsole (extended or legacy), and --chatter healthy \
                  machines only log; expectations are written for the crashing ones."
)]
struct Args {
    /// Destination of UDP output [default: 127.0.0.1:2004, or 127.0.0.1:6666 for netconsole].
    #[arg(long)]
    target: Option<SocketAddrV4>,
    /// What machines send: netoops dumps, or netconsole logs ending in a crash.
    #[arg(long, default_value = "netoops")]
    protocol: Protocol,
    /// Number of crashing machines; each sends one dump (netconsole: its log then a crash).
    #[arg(long, default_value_t = 1)]
    machines: u32,
    /// Netconsole formats machines pick from (extended, legacy).
    #[arg(long, value_delimiter = ',', default_value = "extended,legacy")]
    nc_mode: Vec<NcMode>,
    /// Netconsole: share of extended machines that prepend the kernel release (`r`).
    #[arg(long, default_value_t = 0.3)]
    nc_release: f64,
    /// Netconsole: share of extended machines that append userdata (host=, role=) and sysdata
    /// (cpu=, taskname=, release=, msgid=) lines to every record.
    #[arg(long, default_value_t = 0.3)]
    nc_userdata: f64,
    /// Netconsole: crash kinds the crashing machines share (0: each burst drawn at random);
    /// machines of a kind crash with the same line, faulting function and call trace.
    #[arg(long, default_value_t = 0)]
    crash_kinds: u32,
    /// Netconsole: kernel builds machines run (0: drawn from all five); each build moves the
    /// functions' offsets.
    #[arg(long, default_value_t = 0)]
    kernels: u32,
    /// Netconsole: healthy machines that only log (after the crashing ones' addresses).
    #[arg(long, default_value_t = 0)]
    chatter: u32,
    /// Netconsole: ordinary log lines per machine, each drawing N/2 to N (a crashing machine
    /// stops early to keep its history under 40 KiB), before its crash burst.
    #[arg(long, default_value_t = 40)]
    chatter_lines: u32,
    /// Netconsole: share of ordinary lines longer than one datagram (1100-3000 bytes; extended
    /// machines fragment them with ncfrag).
    #[arg(long, default_value_t = 0.03)]
    long_lines: f64,
    /// Log size per machine, SIZE or MIN-MAX (uniform), e.g. 64K, 1K-256K, 1500.
    #[arg(long, default_value = "1K-256K")]
    log_size: SizeRange,
    /// Wire variants machines pick from (v2, v3, v3-blob, v3-i386).
    #[arg(long, value_delimiter = ',', default_value = "v2,v3,v3-blob,v3-i386")]
    variants: Vec<Variant>,
    /// Probability a datagram is lost (independent loss model).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// "independent" (uses --loss) or "gilbert:p,r[,h[,k]]": Gilbert-Elliott bursty loss,
    /// p = P(good->bad), r = P(bad->good), h / k = P(delivered) in bad / good (default 0 / 1).
    #[arg(long, default_value = "independent")]
    loss_model: String,
    /// Probability a delivered datagram arrives twice.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Probability a datagram is overtaken by later ones of the same machine.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// How many datagrams a reordered one may fall behind.
    #[arg(long, default_value_t = 8)]
    reorder_distance: u32,
    /// Datagrams per second, 0 = as fast as possible. A paced run sends about 1 ms of the
    /// rate per send call (at most --batch) and sleeps in between, so it leaves the CPU to
    /// the receivers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Address of the first machine; the others count up, skipping .0 and .255 [default:
    /// 127.1.0.1 for udp output, 10.1.0.1 for frame outputs].
    #[arg(long)]
    source_base: Option<Ipv4Addr>,
    /// Source port of every machine (0 = any) [default: 6666, or 6665 for netconsole].
    #[arg(long)]
    source_port: Option<u16>,
    /// All machines crash within this many milliseconds and send at 1 GbE line rate,
    /// interleaved [default: one machine after another].
    #[arg(long)]
    storm_ms: Option<u64>,
    /// Share of machines whose log pieces are exact multiples of 1024 bytes (the sender's
    /// all-zero tail chunk bug).
    #[arg(long, default_value_t = 0.02)]
    zeroed_tail: f64,
    /// Share of machines sending a soft dump (type 3) instead of an oops/panic (type 1).
    #[arg(long, default_value_t = 0.05)]
    soft_dump: f64,
    /// Write DIR/<ip>/expected.json and expected.log per machine, and DIR/summary.json.
    #[arg(long, value_name = "DIR")]
    expect: Option<PathBuf>,
    /// Write when each machine's first, completing (last new packet number) and last
    /// datagram left, as CSV: machine,ip,first_ns,complete_ns,last_ns,datagrams (ns since the
    /// Unix epoch).
    #[arg(long, value_name = "FILE")]
    send_log: Option<PathBuf>,
    /// Compute (and with --expect, write) everything but send nothing.
    #[arg(long)]
    dry_run: bool,
    /// udp (to --target); dgram:HOST:PORT (raw frames, one per UDP datagram, as QEMU
    /// -netdev dgram expects); stream:HOST:PORT (raw frames with a 4-byte big-endian length,
    /// to a QEMU -netdev stream server; retried for 10 s while QEMU starts); or
    /// stream-listen:HOST:PORT (the same, but QEMU connects with -netdev stream,server=off:
    /// prints "netoops-gen: listening on ADDR" on stderr, then waits up to 60 s). Prefer
    /// stream-listen with QEMU 7.2: its stream server crashes if the guest transmits before
    /// a client connects. tap:IFNAME transmits raw frames on a TAP interface (AF_PACKET; the
    /// interface must be up and in this network namespace: use `ip netns exec`), which a
    /// QEMU `-netdev tap,ifname=IFNAME,script=no,downscript=no` hands to its guest.
    #[arg(long, default_value = "udp")]
    output: OutputSpec,
    /// Local address of the frame socket (dgram: where QEMU's remote= points, so the guest's
    /// frames are drained).
    #[arg(long)]
    bind: Option<SocketAddrV4>,
    /// Destination MAC of frames (the guest NIC).
    #[arg(long, default_value = "52:54:00:12:34:56")]
    dst_mac: MacAddr,
    /// Source MAC of every frame [default: 02:00:<machine IPv4> per machine].
    #[arg(long)]
    src_mac: Option<MacAddr>,
    /// Destination IPv4 address of frames (the appliance).
    #[arg(long, default_value = "10.0.2.15")]
    dst_ip: Ipv4Addr,
    /// Destination UDP port of frames [default: 2004, or 6666 for netconsole].
    #[arg(long)]
    dst_port: Option<u16>,
    /// Send frames with UDP checksum 0 (none) instead of computing it.
    #[arg(long)]
    no_udp_checksum: bool,
    /// Most datagrams per send call (1-64).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Show progress on stderr.
    #[arg(long)]
    progress: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn scenario(args: &Args) -> Result<Scenario, String> {
    let loss = LossModel::parse(&args.loss_model, args.loss).map_err(|e| e.to_string())?;
    if matches!(loss, LossModel::GilbertElliott { .. }) && args.loss > 0.0 {
        return Err("--loss applies to the independent model; gilbert takes its own rates".into());
    }
    let default_base = if args.output.is_frames() {
        Ipv4Addr::new(10, 1, 0, 1)
    } else {
        Ipv4Addr::new(127, 1, 0, 1)
    };
    let netconsole = args.protocol == Protocol::Netconsole;
    if !netconsole && args.chatter > 0 {
        return Err("--chatter applies to --protocol netconsole".into());
    }
    let s = Scenario {
        machines: args.machines,
        log_size: args.log_size,
        variants: args.variants.clone(),
        seed: args.seed,
        loss,
        duplicate: args.dup,
        reorder: args.reorder,
        reorder_distance: args.reorder_distance,
        zeroed_tail: args.zeroed_tail,
        soft_dump: args.soft_dump,
        timing: match args.storm_ms {
            Some(ms) => Timing::Storm {
                window: Duration::from_millis(ms),
            },
            None => Timing::Sequential,
        },
        source_base: args.source_base.unwrap_or(default_base),
        source_port: args.source_port.unwrap_or(if netconsole {
            netconsole::SOURCE_PORT
        } else {
            6666
        }),
        protocol: args.protocol,
        netconsole: NetconsoleParams {
            modes: args.nc_mode.clone(),
            release: args.nc_release,
            userdata: args.nc_userdata,
            chatter: args.chatter,
            chatter_lines: args.chatter_lines,
            long_lines: args.long_lines,
            crash_kinds: args.crash_kinds,
            kernels: args.kernels,
        },
    };
    s.validate().map_err(|e| e.to_string())?;
    if args.loss < 0.0 || args.loss > 1.0 {
        return Err("loss must be a probability in [0, 1]".into());
    }
    Ok(s)
}

/// How long to keep trying a stream netdev that refuses connections (QEMU starting up).
const STREAM_PATIENCE: Duration = Duration::from_secs(10);
/// How long `stream-listen` waits for QEMU to connect.
const LISTEN_PATIENCE: Duration = Duration::from_secs(60);

/// The relay's port for the protocol.
fn default_port(args: &Args) -> u16 {
    match args.protocol {
        Protocol::Netoops => netoops_wire::DEFAULT_PORT,
        Protocol::Netconsole => netoops_wire::netconsole::DEFAULT_PORT,
    }
}

fn frame_config(args: &Args) -> FrameConfig {
    FrameConfig {
        dst_mac: args.dst_mac,
        src_mac: args.src_mac,
        dst: SocketAddrV4::new(args.dst_ip, args.dst_port.unwrap_or(default_port(args))),
        udp_checksum: !args.no_udp_checksum,
    }
}

fn open_output(args: &Args, s: &Scenario) -> Result<Box<dyn Output>, String> {
    match &args.output {
        OutputSpec::Udp => {
            let bind = s.source_of(0).ok_or("no source address")?;
            let target = args
                .target
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, default_port(args)));
            UdpOutput::new(target, bind)
                .map(|o| Box::new(o) as Box<dyn Output>)
                .map_err(|e| format!("udp socket on {bind}: {e}"))
        }
        OutputSpec::Dgram(remote) => DgramOutput::new(*remote, args.bind, frame_config(args))
            .map(|o| Box::new(o) as Box<dyn Output>)
            .map_err(|e| format!("dgram socket to {remote}: {e}")),
        OutputSpec::Stream(remote) => {
            StreamOutput::connect(*remote, frame_config(args), STREAM_PATIENCE)
                .map(|o| Box::new(o) as Box<dyn Output>)
                .map_err(|e| format!("connecting to the stream netdev at {remote}: {e}"))
        }
        OutputSpec::Tap(ifname) => TapOutput::new(ifname, frame_config(args))
            .map(|o| Box::new(o) as Box<dyn Output>)
            .map_err(|e| format!("tap {ifname}: {e}")),
        OutputSpec::StreamListen(local) => {
            let listener =
                TcpListener::bind(local).map_err(|e| format!("listening on {local}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            // A harness starts QEMU once it reads this line.
            eprintln!("netoops-gen: listening on {bound}");
            StreamOutput::accept(&listener, frame_config(args), LISTEN_PATIENCE)
                .map(|o| Box::new(o) as Box<dyn Output>)
                .map_err(|e| format!("waiting for a stream netdev on {bound}: {e}"))
        }
    }
}

fn print_progress(p: &Progress) {
    let s = &p.schedule;
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    eprint!(
        "\r{:>8.2} s  {:>10} datagrams  {:>9.0}/s  machines {}/{}   ",
        secs,
        s.datagrams,
        s.datagrams as f64 / secs,
        s.machines_done,
        p.machines
    );
    let _ = std::io::stderr().flush();
}

fn summary(
    args: &Args,
    s: &Scenario,
    report: Option<&RunReport>,
    expect: Option<&ExpectSummary>,
    output: &str,
    received: (u64, u64),
) {
    if args.json {
        let mut v = json!({
            "machines": s.machines,
            "protocol": s.protocol.name(),
            "senders": s.senders(),
            "seed": s.seed,
            "output": output,
            "loss_model": s.loss.to_string(),
            "expected_loss": s.loss.mean_loss(),
        });
        if let Some(r) = report {
            v["datagrams_sent"] = json!(r.schedule.datagrams);
            v["bytes_sent"] = json!(r.schedule.bytes);
            v["dropped_by_loss"] = json!(r.schedule.lost);
            v["duplicates"] = json!(r.schedule.duplicated);
            v["reordered"] = json!(r.schedule.reordered);
            v["batches"] = json!(r.batches);
            v["elapsed_s"] = json!(r.elapsed.as_secs_f64());
            v["rate_pps"] = json!(r.rate());
            v["rate_bps"] = json!(r.bits_per_second());
            v["frames_received"] = json!(received.0);
        }
        if let Some(e) = expect {
            v["expect"] = serde_json::to_value(e).unwrap_or_default();
        }
        println!("{v}");
        return;
    }
    let population = match s.protocol {
        Protocol::Netoops => format!(
            "{} machines, seed {}, log size {}",
            s.machines, s.seed, s.log_size
        ),
        Protocol::Netconsole => format!(
            "netconsole, {} crashing + {} healthy machines, seed {}, {} lines each",
            s.machines, s.netconsole.chatter, s.seed, s.netconsole.chatter_lines
        ),
    };
    println!(
        "netoops-gen: {population}, loss {}, dup {}, reorder {}, {}",
        s.loss,
        s.duplicate,
        s.reorder,
        match s.timing {
            Timing::Sequential => "one after another".to_string(),
            Timing::Storm { window } => format!("storm within {} ms", window.as_millis()),
        }
    );
    if let Some(r) = report {
        let st = &r.schedule;
        println!(
            "sent {} datagrams ({:.1} MB) in {} batches to {output}",
            st.datagrams,
            st.bytes as f64 / 1e6,
            r.batches
        );
        println!(
            "dropped by loss model {} ({:.2}%), duplicates {}, reordered {}",
            st.lost,
            100.0 * st.lost as f64 / (st.datagrams + st.lost - st.duplicated).max(1) as f64,
            st.duplicated,
            st.reordered
        );
        println!(
            "elapsed {:.3} s, achieved {:.0} datagrams/s ({:.1} Mbit/s of datagrams){}",
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.bits_per_second() / 1e6,
            if args.rate > 0 {
                format!(", offered rate {} /s", args.rate)
            } else {
                String::new()
            }
        );
        if received.0 > 0 {
            println!(
                "received {} frames ({} bytes) from the other side",
                received.0, received.1
            );
        }
    }
    if let Some(e) = expect {
        let unheard = match s.protocol {
            Protocol::Netoops => "never heard (all datagrams lost)",
            Protocol::Netconsole => "without a dump (no crash line arrived)",
        };
        println!(
            "expected: {} complete, {} partial, {} {unheard}",
            e.complete, e.partial, e.unheard
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let s = match scenario(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netoops-gen: {e}");
            return ExitCode::from(2);
        }
    };
    let expect = match &args.expect {
        Some(dir) => match write_expectations(&s, dir) {
            Ok(sum) => Some(sum),
            Err(e) => {
                eprintln!(
                    "netoops-gen: writing expectations to {}: {e}",
                    dir.display()
                );
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    if args.dry_run {
        summary(&args, &s, None, expect.as_ref(), "none (dry run)", (0, 0));
        return ExitCode::SUCCESS;
    }
    let mut output = match open_output(&args, &s) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netoops-gen: {e}");
            return ExitCode::from(1);
        }
    };
    let mut schedule = Schedule::new(s.clone());
    let options = RunOptions {
        rate: args.rate,
        batch: args.batch,
    };
    let show = args.progress;
    let mut send_log = SendLog::new(s.senders());
    let result = {
        let mut timed = Timed::new(output.as_mut(), &mut send_log);
        run(&mut schedule, &mut timed, options, &mut |p| {
            if show {
                print_progress(p);
            }
        })
    };
    if let Some(path) = &args.send_log {
        if let Err(e) = send_log.write_csv(&s, path) {
            eprintln!(
                "netoops-gen: writing the send log to {}: {e}",
                path.display()
            );
            return ExitCode::from(1);
        }
    }
    if show {
        eprintln!();
    }
    match result {
        Ok(report) => {
            summary(
                &args,
                &s,
                Some(&report),
                expect.as_ref(),
                &output.describe(),
                output.received(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netoops-gen: sending: {e}");
            ExitCode::from(1)
        }
    }
}
