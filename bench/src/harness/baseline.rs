//! The baseline receiver: counts datagrams and does nothing else.
//!
//! It receives exactly as the hosted relay does (the relay's own [`BatchSocket`]: one
//! `recvmmsg` of up to 64 datagrams per call, the same receive buffer size, woken by `epoll`),
//! so the gap between its lossless rate and the relay's is the relay's own work. Every
//! [`REPORT_EVERY`] it prints
//!
//! ```text
//! baseline: datagrams N bytes B kernel_drops D
//! ```
//!
//! and the harness reads the totals from the last such line.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use netoops_relay::udp::BatchSocket;

/// How often the counts are printed.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Totals so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub datagrams: u64,
    pub bytes: u64,
    /// Datagrams the kernel dropped on the socket (buffer full).
    pub kernel_drops: u64,
}

impl Counts {
    /// The report line.
    pub fn line(&self) -> String {
        format!(
            "baseline: datagrams {} bytes {} kernel_drops {}",
            self.datagrams, self.bytes, self.kernel_drops
        )
    }

    /// Reads a report line back.
    pub fn parse(line: &str) -> Option<Counts> {
        use super::process::number_after;
        let at = line.find("baseline:")?;
        let line = &line[at..];
        Some(Counts {
            datagrams: number_after(line, "datagrams")?,
            bytes: number_after(line, "bytes")?,
            kernel_drops: number_after(line, "kernel_drops")?,
        })
    }
}

/// Receives on `listen` until `stop` is set, printing counts to `out`. Prints the bound
/// address first (`baseline: listening on ADDR`).
pub fn run(
    listen: SocketAddr,
    recv_buffer: usize,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> io::Result<Counts> {
    let mut socket = BatchSocket::bind(listen, recv_buffer)?;
    writeln!(out, "baseline: listening on {}", socket.local_addr()?)?;
    out.flush()?;
    let mut poll = Poll::new()?;
    let fd = socket.raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    let mut counts = Counts::default();
    let mut printed = counts;
    let mut next_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(REPORT_EVERY)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // Edge-triggered: drain until the socket is empty.
        loop {
            let mut bytes = 0u64;
            let n = socket.recv_batch(|_, d| bytes += d.len() as u64)?;
            counts.datagrams += n as u64;
            counts.bytes += bytes;
            if n == 0 {
                break;
            }
        }
        let now = Instant::now();
        if now >= next_report {
            next_report = now + REPORT_EVERY;
            counts.kernel_drops = socket
                .kernel_counters()
                .map(|k| u64::from(k.drops))
                .unwrap_or(0);
            if counts != printed {
                writeln!(out, "{}", counts.line())?;
                out.flush()?;
                printed = counts;
            }
        }
    }
    writeln!(out, "{}", counts.line())?;
    out.flush()?;
    Ok(counts)
}

/// Sets a flag on SIGINT/SIGTERM, for the `baseline` subcommand.
pub fn stop_on_signals() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::Mutex;

    /// A writer the test can read while the receiver runs.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn counts_every_datagram_and_reports_it() {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Shared::default();
        let (s, mut o) = (Arc::clone(&stop), out.clone());
        let receiver =
            std::thread::spawn(move || run("127.0.0.1:0".parse().unwrap(), 1 << 20, &s, &mut o));
        let addr = loop {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if let Some(a) = text
                .lines()
                .find_map(|l| l.strip_prefix("baseline: listening on "))
            {
                break a.parse::<SocketAddr>().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..500u32 {
            tx.send_to(&[7u8; 1241][..1000 + (i as usize % 200)], addr)
                .unwrap();
        }
        // Reports come every 100 ms; wait for the one that has everything.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if text
                .lines()
                .filter_map(Counts::parse)
                .any(|c| c.datagrams == 500)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let counts = receiver.join().unwrap().unwrap();
        assert_eq!(counts.datagrams, 500);
        let bytes: u64 = (0..500u64).map(|i| 1000 + i % 200).sum();
        assert_eq!(counts.bytes, bytes);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(Counts::parse(last), Some(counts));
    }
}
