//! A paced `netoops-gen` leaves the CPU to the receivers: at 20,000 datagrams/s for about
//! 1.5 s it holds the rate within a few percent and uses well under half a core (it used all
//! of one when pacing spun between sends). Alone in its file so nothing else runs while the
//! child is timed.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GEN: &str = env!("CARGO_BIN_EXE_netoops-gen");

/// A loopback receiver that drains and counts until stopped.
fn receiver() -> (
    SocketAddr,
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    std::thread::JoinHandle<()>,
) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = sock.set_recv_buffer_size(8 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (done, n) = (stop.clone(), count.clone());
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !done.load(Ordering::Acquire) {
            if sock.recv_from(&mut buf).is_ok() {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, stop, count, handle)
}

/// CPU time (user plus system) of this process's waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: rusage is plain integers, so all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage, ours.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// Runs the generator to completion; returns its JSON summary, wall time and CPU time. The
/// CPU time is the growth of `RUSAGE_CHILDREN` across the wait, which is the generator's own
/// because this file's one test starts no other child.
fn timed_gen(args: &[String]) -> (serde_json::Value, Duration, Duration) {
    let cpu_before = children_cpu();
    let start = Instant::now();
    let mut child = Command::new(GEN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let read = child.stdout.take().unwrap().read_to_string(&mut out);
    let status = child.wait().unwrap();
    let wall = start.elapsed();
    let cpu = children_cpu() - cpu_before;
    read.unwrap();
    assert!(status.success(), "netoops-gen: {status}");
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in {out:?}"));
    (serde_json::from_str(json).unwrap(), wall, cpu)
}

#[test]
fn paced_generator_holds_the_rate_and_sleeps() {
    const RATE: f64 = 20_000.0;
    let (addr, stop, count, handle) = receiver();
    // 64 KiB logs are 66 datagrams a round, 198 a machine: 150 machines, about 1.5 s.
    let args: Vec<String> = [
        "--target",
        &addr.to_string(),
        "--rate",
        "20000",
        "--machines",
        "150",
        "--log-size",
        "64K",
        "--source-port",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (summary, wall, cpu) = timed_gen(&args);
    // Let the receiver catch up, then stop it.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    handle.join().unwrap();

    let sent = summary["datagrams_sent"].as_u64().unwrap();
    let rate = summary["rate_pps"].as_f64().unwrap();
    let elapsed = summary["elapsed_s"].as_f64().unwrap();
    assert!(sent > 25_000 && elapsed > 1.2, "{summary}");
    assert!(
        (rate - RATE).abs() <= 0.03 * RATE,
        "achieved {rate:.0}/s against {RATE}/s: {summary}"
    );
    // The process's wall time includes start-up and writing the summary; the generator spun a
    // whole core before (CPU = wall), sleeping it needs a small share.
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "netoops-gen at {RATE}/s: {rate:.0}/s achieved, CPU {cpu:?} in {wall:?} ({:.0}%)",
        share * 100.0
    );
    assert!(
        share < 0.5,
        "CPU {cpu:?} in {wall:?} ({:.0}%)",
        share * 100.0
    );
    // Loopback may drop a few on a loaded machine; most arrive.
    let got = count.load(Ordering::Relaxed);
    assert!(got * 10 >= sent * 9, "received {got} of {sent}");
}
