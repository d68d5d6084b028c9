//! `netoops-bench collector`: the collector alone, driven as hard as its acknowledgements allow.
//!
//! Why alone: in the suite the collector sits behind a relay, so its own ceiling never shows
//! (the relay's spool overflows first, issue 13). Here `N` client connections, each a relay
//! instance of its own, send `Dump` records of one size back to back, with up to
//! [`BenchSettings::window_bytes`] unacknowledged per connection (the relay pipelines the same
//! way), into the real `netoops-collect serve` storing on a real file system. The figure is
//! stored dumps per second: dumps acknowledged (the collector acknowledges only what is
//! durable) during the measured seconds, the median of several runs, each on a fresh storage
//! directory. Every dump comes from its own machine (source address), as in a crash storm, so
//! each one also creates its source directory.
//!
//! The disk sets the ceiling, so each run also measures it: the median time of a 4 KiB write +
//! `fdatasync` in the same directory, right before the run, reported next to the throughput.
//! On a shared machine the wall clock scatters with the neighbours' load, so each run also
//! reports the collector's own CPU time (user + system, from `/proc/PID/stat` just before it
//! is stopped) per dump acknowledged in the run.
//!
//! The storage directory must not be on tmpfs (syncs would cost nothing there; refused). The
//! `netoops-bench` default is the system temp directory, which on the build machine is the
//! repository's own ext4 file system; the report names the file system type and whether it is
//! the repository's device.
//!
//! The `netoops-bench` binary includes this file as a module of its own (the harness's module
//! list is shared with the suite and left alone); it uses the library's `stats` only.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netoops_core::upstream::record::{
    decode_reply, encode_frame_header, encode_record_frame, FrameDecoder, RecordHeaderRef,
    MAX_REPLY_LEN,
};
use netoops_core::upstream::{DumpIdentity, DumpMeta, Record, Reply, Source, PROTOCOL_VERSION};
use serde::Serialize;

use netoops_bench::harness::stats::{percentile, sorted};

/// What one `collector` benchmark does.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// The `netoops-collect` binary.
    pub collector: PathBuf,
    /// Scratch space for the storage directories (not tmpfs).
    pub work: PathBuf,
    /// Client connections (relay instances) at once.
    pub connections: usize,
    /// Dump text sizes, one series each.
    pub sizes: Vec<usize>,
    /// Runs per size (the median is reported).
    pub runs: usize,
    /// Warm-up before the measured window.
    pub warmup: Duration,
    /// The measured window of each run.
    pub measure: Duration,
    /// Unacknowledged bytes per connection, at most.
    pub window_bytes: usize,
    /// Dumps per machine (1: every dump from a machine of its own, as in a crash storm).
    pub per_machine: u64,
}

impl BenchSettings {
    /// The full benchmark: 64 KiB and 4 KiB dumps, 4 connections, 5 runs of 4 s each.
    pub fn full(collector: PathBuf, work: PathBuf) -> Self {
        BenchSettings {
            collector,
            work,
            connections: 4,
            sizes: vec![64 * 1024, 4 * 1024],
            runs: 5,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(4),
            window_bytes: 4 << 20,
            per_machine: 1,
        }
    }

    /// A few seconds in all (the test command's version).
    pub fn smoke(collector: PathBuf, work: PathBuf) -> Self {
        BenchSettings {
            runs: 1,
            warmup: Duration::from_millis(200),
            measure: Duration::from_millis(800),
            ..Self::full(collector, work)
        }
    }
}

/// One run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Dumps acknowledged in the measured window, per second.
    pub dumps_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Dumps acknowledged in the whole run.
    pub acked: u64,
    /// `.json` files found in the storage directory afterwards.
    pub stored_files: u64,
    /// Median 4 KiB write + fdatasync in the storage directory before the run, ms.
    pub fsync_ms: f64,
    /// Creating an empty file in a new directory beside the storage, before the run, µs
    /// (mean of [`CREATE_PROBE_FILES`]): the file system's state. On ext4 without a journal,
    /// allocating an inode steps over every inode freed in the last minutes, so a run after a
    /// mass deletion (a previous run's cleanup) creates files several times slower.
    pub create_us: f64,
    /// The collector's CPU time (user + system) over the whole run, ms; `None` when
    /// `/proc` could not be read.
    pub cpu_ms: Option<f64>,
    /// `cpu_ms` per dump acknowledged in the run, µs.
    pub cpu_us_per_dump: Option<f64>,
}

/// One dump size.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub size: usize,
    pub runs: Vec<Run>,
    pub median_dumps_per_s: f64,
    pub median_fsync_ms: f64,
    pub median_create_us: f64,
    /// Median over the runs that have it.
    pub median_cpu_us_per_dump: Option<f64>,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct CollectorBench {
    pub collector: String,
    pub filesystem: String,
    pub connections: usize,
    pub window_bytes: usize,
    pub per_machine: u64,
    pub measure_s: f64,
    pub series: Vec<Series>,
}

impl CollectorBench {
    /// The Markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Collector alone: `{}` on {}, {} connections, {} KiB unacknowledged each, {} dump(s) per machine, {:.1} s per run\n\n\
             | dump size | stored dumps/s (median) | runs | MB/s | fsync (4 KiB, median) | file create (median; runs) | collector CPU per dump (median; runs) |\n\
             |---|---|---|---|---|---|---|\n",
            self.collector,
            self.filesystem,
            self.connections,
            self.window_bytes / 1024,
            self.per_machine,
            self.measure_s
        );
        for series in &self.series {
            let runs: Vec<String> = series
                .runs
                .iter()
                .map(|r| format!("{:.0}", r.dumps_per_s))
                .collect();
            let mb = series.median_dumps_per_s * series.size as f64 / 1e6;
            let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            let cpu: Vec<String> = series.runs.iter().map(|r| us(r.cpu_us_per_dump)).collect();
            let create: Vec<String> = series
                .runs
                .iter()
                .map(|r| format!("{:.0}", r.create_us))
                .collect();
            s.push_str(&format!(
                "| {} KiB | {:.0} | {} | {:.0} | {:.2} ms | {:.0} µs; {} | {} µs; {} |\n",
                series.size / 1024,
                series.median_dumps_per_s,
                runs.join(", "),
                mb,
                series.median_fsync_ms,
                series.median_create_us,
                create.join(", "),
                us(series.median_cpu_us_per_dump),
                cpu.join(", ")
            ));
        }
        s
    }
}

/// Runs every size `runs` times; `say` gets progress lines.
pub fn run_bench(s: &BenchSettings, say: &mut dyn FnMut(&str)) -> Result<CollectorBench, String> {
    fs::create_dir_all(&s.work).map_err(|e| format!("creating {}: {e}", s.work.display()))?;
    let mut filesystem = filesystem_of(&s.work)?;
    if let Some(same) = same_device(&s.work, Path::new(env!("CARGO_MANIFEST_DIR"))) {
        filesystem.push_str(if same {
            " (the repository's file system)"
        } else {
            " (not the repository's file system)"
        });
    }
    let mut series = Vec::new();
    for &size in &s.sizes {
        let mut runs = Vec::new();
        for i in 0..s.runs.max(1) {
            // Storage directories are removed only at the end: on ext4 without a journal,
            // inode allocation skips inodes deleted in the last few seconds one by one, so
            // deleting one run's ten thousand files would slow the next run's file creation.
            let dir = s.work.join(format!("run-{size}-{i}"));
            let run = one_run(s, size, &dir)?;
            say(&format!(
                "{} KiB run {}: {:.0} dumps/s ({:.0} MB/s), fsync {:.2} ms, file create {:.0} µs, collector CPU {} µs per dump",
                size / 1024,
                i + 1,
                run.dumps_per_s,
                run.mb_per_s,
                run.fsync_ms,
                run.create_us,
                run.cpu_us_per_dump
                    .map_or("unknown".to_string(), |v| format!("{v:.0}"))
            ));
            runs.push(run);
        }
        let median = |f: fn(&Run) -> f64| {
            percentile(&sorted(&runs.iter().map(f).collect::<Vec<_>>()), 50.0).unwrap_or(0.0)
        };
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us_per_dump).collect();
        series.push(Series {
            size,
            median_dumps_per_s: median(|r| r.dumps_per_s),
            median_fsync_ms: median(|r| r.fsync_ms),
            median_create_us: median(|r| r.create_us),
            median_cpu_us_per_dump: percentile(&sorted(&cpu), 50.0),
            runs,
        });
    }
    Ok(CollectorBench {
        collector: s.collector.display().to_string(),
        filesystem,
        connections: s.connections,
        window_bytes: s.window_bytes,
        per_machine: s.per_machine,
        measure_s: s.measure.as_secs_f64(),
        series,
    })
}

/// The file system type under `path`; tmpfs is refused (syncs would measure nothing).
pub fn filesystem_of(path: &Path) -> Result<String, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs buffer; statfs
    // writes only into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statfs {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    let name = match st.f_type as i64 {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => {
            return Err(format!(
                "{} is on tmpfs: syncs cost nothing there; give --work on a disk",
                path.display()
            ))
        }
        0x794C_7630 => "overlayfs",
        _ => "other",
    };
    Ok(name.to_string())
}

/// Whether two paths are on the same device (`None` when one cannot be read).
fn same_device(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    Some(fs::metadata(a).ok()?.dev() == fs::metadata(b).ok()?.dev())
}

/// Median of `n` 4 KiB write + fdatasync pairs in `dir`, ms.
pub fn fsync_ms(dir: &Path, n: usize) -> io::Result<f64> {
    let path = dir.join(".bench-fsync");
    let block = vec![0x5au8; 4096];
    let mut times = Vec::with_capacity(n);
    let mut f = File::create(&path)?;
    f.sync_all()?;
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    fs::remove_file(&path)?;
    Ok(percentile(&sorted(&times), 50.0).unwrap_or(0.0))
}

/// Files [`create_us`] creates before each run.
pub const CREATE_PROBE_FILES: usize = 2000;

/// Mean time to create (and close) an empty file in `dir`, a new directory, µs. The files
/// stay until the whole work directory goes: deleting them would slow the run that follows.
pub fn create_us(dir: &Path, n: usize) -> io::Result<f64> {
    fs::create_dir_all(dir)?;
    let t = Instant::now();
    for i in 0..n {
        File::create(dir.join(format!("f{i}")))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64)
}

/// The collector child: killed and reaped on drop.
struct Collector {
    child: Child,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector(bin: &Path, dir: &Path) -> Result<(Collector, SocketAddr), String> {
    let log = File::create(dir.with_extension("stderr"))
        .map_err(|e| format!("creating the collector's stderr file: {e}"))?;
    let child = Command::new(bin)
        .args([
            "serve",
            "--allow-plaintext",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut c = Collector { child };
    let Some(out) = c.child.stdout.take() else {
        return Err("the collector has no stdout".into());
    };
    let mut out = BufReader::new(out);
    let mut first = String::new();
    out.read_line(&mut first)
        .map_err(|e| format!("reading the collector's first line: {e}"))?;
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the collector said {first:?}, not `listening on ADDR`"))?;
    // Its per-dump lines are read and thrown away in big chunks: cheap for this process, and
    // the collector pays for writing them as it would in service.
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
    });
    Ok((c, addr))
}

fn one_run(s: &BenchSettings, size: usize, dir: &Path) -> Result<Run, String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let fsync = fsync_ms(dir, 20).map_err(|e| format!("measuring fsync: {e}"))?;
    let create_us = create_us(&dir.with_extension("create-probe"), CREATE_PROBE_FILES)
        .map_err(|e| format!("measuring file creation: {e}"))?;
    let (collector, addr) = start_collector(&s.collector, dir)?;
    let acked: Vec<Arc<AtomicU64>> = (0..s.connections)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let text = dump_text(size);
    let mut clients = Vec::new();
    for (i, a) in acked.iter().enumerate() {
        let a = Arc::clone(a);
        let stop = Arc::clone(&stop);
        let text = Arc::clone(&text);
        let window = s.window_bytes;
        let per_machine = s.per_machine;
        clients.push(thread::spawn(move || {
            client(addr, i as u32, &text, (window, per_machine), &a, &stop)
        }));
    }
    let total =
        |acked: &[Arc<AtomicU64>]| -> u64 { acked.iter().map(|a| a.load(Ordering::Relaxed)).sum() };
    thread::sleep(s.warmup);
    let (t0, n0) = (Instant::now(), total(&acked));
    thread::sleep(s.measure);
    let (secs, n1) = (t0.elapsed().as_secs_f64(), total(&acked));
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for c in clients {
        match c.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a client thread panicked".into()),
        }
    }
    let cpu_ms = cpu_ms_of(collector.child.id());
    drop(collector);
    if let Some(e) = failure {
        return Err(e);
    }
    let all = total(&acked);
    let stored_files = count_json(dir);
    if stored_files < all {
        return Err(format!(
            "{all} dumps acknowledged but only {stored_files} stored in {}",
            dir.display()
        ));
    }
    let dumps_per_s = (n1 - n0) as f64 / secs;
    Ok(Run {
        dumps_per_s,
        mb_per_s: dumps_per_s * size as f64 / 1e6,
        acked: all,
        stored_files,
        fsync_ms: fsync,
        create_us,
        cpu_ms,
        cpu_us_per_dump: cpu_ms.filter(|_| all > 0).map(|ms| ms * 1e3 / all as f64),
    })
}

/// CPU time (user + system) a process has used so far, ms, from `/proc/PID/stat`.
fn cpu_ms_of(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is the
    // 3rd field of the line, utime the 14th, stime the 15th.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads its argument.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 * 1e3 / ticks as f64)
}

fn count_json(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && !e.file_name().to_string_lossy().starts_with('.')
        {
            if let Ok(files) = fs::read_dir(e.path()) {
                n += files
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
                    .count() as u64;
            }
        }
    }
    n
}

fn dump_text(size: usize) -> Arc<Vec<u8>> {
    let line =
        b"<4>[ 1234.567890] CPU: 3 PID: 4242 Comm: kworker/3:1 Not tainted 6.1.0-18-amd64 #1\n";
    Arc::new(line.iter().copied().cycle().take(size).collect())
}

/// Dump `n` of connection `conn`: machine `n / per_machine` of that connection (a distinct
/// source address, so a distinct directory), with a dump id of its own on that machine.
fn dump_record(conn: u32, n: u64, size: usize, per_machine: u64) -> Record {
    let host = (n / per_machine.max(1)) as u32;
    let ip = std::net::Ipv4Addr::new(10, (100 + conn) as u8, (host >> 8) as u8, host as u8);
    Record::Dump(DumpMeta {
        id: DumpIdentity {
            source: Source::from(SocketAddr::from((ip, 2004))),
            version: 3,
            boot_id: (n >> 16) as u32 + 1,
            dump_id: n as u16,
            dump_type: 1,
        },
        generation: 0,
        kernel_version: "6.1.0-18-amd64".into(),
        packet_count: size.div_ceil(1024) as u32,
        received: size.div_ceil(1024) as u32,
        missing: vec![],
        zeroed: vec![],
        complete: true,
        revision: 1,
        first_seen_ms: 1000 + n,
        completed_ms: 1010 + n,
        cpu: None,
        registers: None,
        user_blob: None,
        conflicts: 0,
        foreign_port_chunks: 0,
        late_chunks: 0,
        netconsole: None,
    })
}

/// Unacknowledged records of one connection, with a wakeup when acks free room.
#[derive(Default)]
struct Window {
    /// Every unacknowledged (seq, payload bytes), oldest first, and their byte total.
    inflight: Mutex<(std::collections::VecDeque<(u64, u64)>, u64)>,
    freed: Condvar,
}

impl Window {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<(u64, u64)>, u64)> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything up to `seq`; returns how many records that was.
    fn ack(&self, seq: u64) -> u64 {
        let mut g = self.lock();
        let mut n = 0;
        while let Some(&(s, len)) = g.0.front() {
            if s > seq {
                break;
            }
            g.0.pop_front();
            g.1 -= len;
            n += 1;
        }
        self.freed.notify_all();
        n
    }
}

fn client(
    addr: SocketAddr,
    conn: u32,
    text: &[u8],
    (window, per_machine): (usize, u64),
    acked: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("client {conn}: {what}: {e}");
    let stream = TcpStream::connect(addr).map_err(|e| err("connect", &e))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| err("socket", &e))?;
    let instance = 0xbe9c_0000_0000 + u64::from(conn) + (u64::from(std::process::id()) << 8);
    let hello = Record::Hello {
        protocol: PROTOCOL_VERSION,
        relay: format!("bench-{conn}"),
        instance,
    };
    let frame = encode_record_frame(
        &RecordHeaderRef {
            seq: 0,
            sent_at_ms: 0,
            record: &hello,
            payload_len: 0,
        },
        &[],
    )
    .map_err(|e| err("encoding Hello", &e))?;
    let mut w =
        BufWriter::with_capacity(1 << 20, stream.try_clone().map_err(|e| err("socket", &e))?);
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(|e| err("sending Hello", &e))?;
    let mut replies = Replies::new(stream);
    match replies.next().map_err(|e| err("waiting for Welcome", &e))? {
        Reply::Welcome { .. } => {}
        other => return Err(format!("client {conn}: {other:?} instead of Welcome")),
    }
    let win = Window::default();
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        let reader = scope.spawn(|| -> Result<(), String> {
            loop {
                match replies.next() {
                    Ok(Reply::Ack { seq }) => {
                        acked.fetch_add(win.ack(seq), Ordering::Relaxed);
                    }
                    Ok(other) => return Err(format!("client {conn}: unexpected {other:?}")),
                    Err(_) if done.load(Ordering::Relaxed) => return Ok(()),
                    Err(e) => return Err(err("reading acks", &e)),
                }
            }
        });
        let sent = send_loop(conn, text, (window, per_machine), &mut w, &win, stop);
        // Let the last acks arrive, then stop the reader.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = win.lock();
        while !g.0.is_empty() && Instant::now() < deadline {
            g = win
                .freed
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(g);
        done.store(true, Ordering::Relaxed);
        let _ = w.get_ref().shutdown(std::net::Shutdown::Both);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(format!("client {conn}: the ack reader panicked")));
        sent.and(read)
    })
}

fn send_loop(
    conn: u32,
    text: &[u8],
    (window, per_machine): (usize, u64),
    w: &mut BufWriter<TcpStream>,
    win: &Window,
    stop: &AtomicBool,
) -> Result<(), String> {
    let fail = |e: io::Error| format!("client {conn}: send: {e}");
    let len = text.len() as u64;
    let mut seq = 0u64;
    let mut head = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if win.lock().1 + len > window as u64 {
            w.flush().map_err(fail)?;
            let mut g = win.lock();
            while g.1 > 0 && g.1 + len > window as u64 && !stop.load(Ordering::Relaxed) {
                g = win
                    .freed
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            continue;
        }
        seq += 1;
        let record = dump_record(conn, seq, text.len(), per_machine);
        let header = RecordHeaderRef {
            seq,
            sent_at_ms: 1000 + seq,
            record: &record,
            payload_len: text.len() as u32,
        };
        let n = encode_frame_header(&header, &mut head)
            .map_err(|e| format!("client {conn}: encoding a dump: {e}"))?;
        {
            let mut g = win.lock();
            g.0.push_back((seq, len));
            g.1 += len;
        }
        w.write_all(&head[..n])
            .and_then(|()| w.write_all(text))
            .map_err(fail)?;
    }
    w.flush().map_err(fail)
}

/// Reply frames from the collector.
struct Replies {
    stream: TcpStream,
    decoder: FrameDecoder,
    ready: std::collections::VecDeque<Reply>,
    buf: Vec<u8>,
}

impl Replies {
    fn new(stream: TcpStream) -> Self {
        Replies {
            stream,
            decoder: FrameDecoder::new(MAX_REPLY_LEN),
            ready: std::collections::VecDeque::new(),
            buf: vec![0u8; 4096],
        }
    }

    fn next(&mut self) -> io::Result<Reply> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(r);
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the collector closed the connection",
                ));
            }
            let mut input = &self.buf[..n];
            loop {
                let taken = self.decoder.push(input);
                input = &input[taken..];
                while let Some(frame) = self
                    .decoder
                    .next_frame()
                    .map_err(|e| io::Error::other(e.to_string()))?
                {
                    self.ready.push_back(
                        decode_reply(frame).map_err(|e| io::Error::other(e.to_string()))?,
                    );
                }
                if input.is_empty() {
                    break;
                }
            }
        }
    }
}
