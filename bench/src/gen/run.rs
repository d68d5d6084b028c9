//! The send loop: schedule -> batch -> output, paced.
//!
//! Each pass waits until the head of the schedule may leave (storm timing), takes tokens from
//! the [`TokenBucket`] (rate), fills a [`Batch`] with the datagrams that are due, and hands it to
//! the [`Output`].
//!
//! A paced run (`rate` > 0) sends in ticks: the bucket lets about 1 ms of the rate accrue
//! (at most one batch), the run sends that many in one output call (one `sendmmsg`), and
//! sleeps until the next tick's worth is due. It never spins, so a paced generator takes
//! only the CPU its sends cost and leaves the rest of a small machine to the receivers it
//! measures; the rate still holds over any stretch longer than a few ticks. Storm timing in a
//! paced run waits by sleeping too (a few tens of microseconds late at worst, which the rate
//! absorbs). An unthrottled run (`rate` = 0) sends full batches back to back and keeps the
//! precise, partly spinning wait for storm timing, since there the timing is the load.

use std::io;
use std::time::{Duration, Instant};

use super::output::{Batch, Output, MAX_BATCH};
use super::pacing::{sleep_until, tighten_timer_slack, wait_until, TokenBucket};
use super::schedule::{Schedule, ScheduleStats};

/// How to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Datagrams per second; 0 sends as fast as the output takes them.
    pub rate: u64,
    /// Most datagrams per output call (1 to 64).
    pub batch: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            rate: 0,
            batch: MAX_BATCH,
        }
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunReport {
    /// Schedule counts at the end (datagrams, bytes, lost, duplicated, reordered, machines).
    pub schedule: ScheduleStats,
    /// Output calls made.
    pub batches: u64,
    /// From the start to the return of the last output call.
    pub elapsed: Duration,
}

impl RunReport {
    /// Datagrams per second over the run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.schedule.datagrams as f64 / secs
        } else {
            0.0
        }
    }

    /// Datagram payload bits per second over the run.
    pub fn bits_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.schedule.bytes as f64 * 8.0 / secs
        } else {
            0.0
        }
    }
}

/// Progress, reported about four times a second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    pub schedule: ScheduleStats,
    pub machines: u32,
}

/// How often `progress` is called.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Sends the whole schedule. `progress` is called every [`PROGRESS_EVERY`] and once at the end.
pub fn run(
    schedule: &mut Schedule,
    output: &mut dyn Output,
    options: RunOptions,
    progress: &mut dyn FnMut(&Progress),
) -> io::Result<RunReport> {
    tighten_timer_slack();
    let machines = schedule.scenario().senders();
    let mut batch = Batch::new(options.batch);
    let start = Instant::now();
    let mut bucket = TokenBucket::new(options.rate, batch.capacity(), start);
    let mut batches = 0u64;
    let mut next_progress = start + PROGRESS_EVERY;
    let mut last_send = start;
    let paced = options.rate > 0;
    while let Some(at) = schedule.peek_not_before() {
        if paced {
            sleep_until(start + at);
        } else {
            wait_until(start + at);
        }
        let granted = bucket.take(batch.capacity());
        let now = Instant::now().saturating_duration_since(start);
        batch.clear();
        while batch.len() < granted {
            match schedule.peek_not_before() {
                Some(t) if t <= now || batch.is_empty() => {}
                _ => break,
            }
            let Ok(Some(item)) = schedule.next_into(batch.next_datagram_buf()) else {
                break;
            };
            batch.commit(item);
        }
        bucket.refund(granted - batch.len());
        if batch.is_empty() {
            continue;
        }
        output.send(&mut batch)?;
        batches += 1;
        last_send = Instant::now();
        if last_send >= next_progress {
            next_progress = last_send + PROGRESS_EVERY;
            progress(&Progress {
                elapsed: last_send - start,
                schedule: *schedule.stats(),
                machines,
            });
        }
    }
    let report = RunReport {
        schedule: *schedule.stats(),
        batches,
        elapsed: last_send - start,
    };
    progress(&Progress {
        elapsed: report.elapsed,
        schedule: report.schedule,
        machines,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::channel::LossModel;
    use crate::gen::expect::tests::Collected;
    use crate::gen::expect::Expectation;
    use crate::gen::output::udp::UdpOutput;
    use crate::gen::scenario::{Scenario, Timing};
    use netoops_core::reassembly::{Reassembler, ReassemblyConfig};
    use netoops_core::time::Instant as CoreInstant;
    use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A receiver on 127.0.0.1 with a deep queue, collecting datagrams until stopped.
    type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

    fn receiver() -> (
        SocketAddrV4,
        Arc<AtomicBool>,
        std::thread::JoinHandle<Datagrams>,
    ) {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let _ = sock.set_recv_buffer_size(4 << 20);
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let sock: UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = match sock.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => got.push((from, buf[..n].to_vec())),
                    // Timed out: finished once the sender said so and the queue is empty.
                    Err(_) if done.load(Ordering::Acquire) => return got,
                    Err(_) => {}
                }
            }
        });
        (addr, stop, handle)
    }

    #[test]
    fn udp_run_reassembles_to_the_expectations() {
        let s = Scenario {
            machines: 24,
            log_size: "1-24K".parse().unwrap(),
            loss: LossModel::Independent { p: 0.1 },
            duplicate: 0.02,
            reorder: 0.05,
            zeroed_tail: 0.2,
            timing: Timing::Storm {
                window: Duration::from_millis(20),
            },
            source_base: "127.77.0.250".parse().unwrap(),
            // Any port: parallel tests must not depend on 6666 being free.
            source_port: 0,
            ..Scenario::default()
        };
        s.validate().unwrap();
        // The kernel may drop datagrams when this loaded machine deschedules the receiver
        // (its buffer is capped by rmem_max): the run is repeated until one arrives whole.
        let mut attempts = 0;
        let (report, got, calls) = loop {
            attempts += 1;
            let (target, stop, handle) = receiver();
            let mut out = UdpOutput::new(target, s.source_of(0).unwrap()).unwrap();
            let mut schedule = Schedule::new(s.clone());
            let mut calls = 0;
            let report = run(
                &mut schedule,
                &mut out,
                RunOptions {
                    rate: 10_000,
                    batch: 16,
                },
                &mut |_| calls += 1,
            )
            .unwrap();
            stop.store(true, Ordering::Release);
            let got = handle.join().unwrap();
            if got.len() as u64 == report.schedule.datagrams || attempts == 3 {
                break (report, got, calls);
            }
        };
        assert!(calls >= 1);
        assert_eq!(
            got.len() as u64,
            report.schedule.datagrams,
            "the receiver dropped datagrams in {attempts} runs (loaded machine?)"
        );
        assert_eq!(report.schedule.machines_done, s.machines);
        // 10,000/s, so roughly datagrams / 10,000 seconds (the storm window is shorter).
        let ideal = (report.schedule.datagrams - 1) as f64 / 10_000.0;
        let secs = report.elapsed.as_secs_f64();
        assert!(
            secs >= ideal * 0.98 && secs <= ideal * 1.5 + 0.05,
            "{secs} s vs {ideal} s"
        );

        let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
        let mut texts = Collected::default();
        let mut ports = std::collections::HashSet::new();
        for (i, (from, bytes)) in got.iter().enumerate() {
            ports.insert(from.port());
            r.handle_datagram(CoreInstant::from_micros(i as u64), *from, bytes, &mut texts)
                .unwrap();
        }
        r.flush(CoreInstant::from_millis(60_000), &mut texts);
        assert_eq!(ports.len(), 1, "every machine sends from the same port");
        let port = *ports.iter().next().unwrap();
        let mut heard = 0;
        for i in 0..s.machines {
            let e = Expectation::of(&s, i);
            let ip = s.source_of(i).unwrap().ip().to_owned();
            let Some(got) = texts.dumps.get(&SocketAddr::from((ip, port))) else {
                assert_eq!(e.received, 0, "machine {i} ({ip}) never arrived");
                continue;
            };
            heard += 1;
            assert_eq!(got.text, e.text, "machine {i} text");
            assert_eq!(got.missing, e.missing, "machine {i} missing");
            assert_eq!(got.complete, e.complete);
        }
        assert_eq!(texts.dumps.len(), heard, "no dump from an unknown source");
        assert!(heard > 20);
    }
}
