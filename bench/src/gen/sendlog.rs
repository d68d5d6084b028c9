//! When each machine's datagrams left the generator, on the wall clock.
//!
//! [`Timed`] wraps any [`Output`] and stamps every batch with one `SystemTime` read taken right
//! before the output call. No receiver can have a datagram before the call that sends it
//! began, so latencies measured from these stamps are never short; they may be long by one
//! call (tens of microseconds for a batch on loopback). A stamp taken after the call was
//! late whenever the sender lost the CPU inside or right after it (sending wakes the
//! receivers, which may preempt it on a small machine), and then a fast pipeline could store
//! a dump "before" its completing datagram left. [`SendLog`] keeps,
//! per machine: the first datagram, the *completing* datagram (the last one that carried a
//! packet number not sent before: from that moment a receiver can have the whole dump) and the
//! last datagram of the third round. Latency is measured from these against file times at the
//! collector, so the clock is `CLOCK_REALTIME` on both sides (same host).
//!
//! `SendLog::write_csv` writes `machine,ip,first_ns,complete_ns,last_ns,datagrams` (ns since
//! the Unix epoch), which `netoops-gen --send-log FILE` produces.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::output::{Batch, Output};
use super::scenario::Scenario;

/// Send times of one machine, ns since the Unix epoch (0 = nothing sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineTimes {
    /// First datagram.
    pub first_ns: u64,
    /// Last datagram that carried a packet number not sent before.
    pub complete_ns: u64,
    /// Last datagram.
    pub last_ns: u64,
    /// Datagrams sent (duplicates included).
    pub datagrams: u32,
    /// Packet numbers sent so far, one bit each (grown on demand).
    seen: Vec<u64>,
}

impl MachineTimes {
    /// Records one datagram of packet `packet_no` sent at `now_ns`.
    fn record(&mut self, packet_no: u32, now_ns: u64) {
        if self.datagrams == 0 {
            self.first_ns = now_ns;
        }
        self.datagrams = self.datagrams.saturating_add(1);
        self.last_ns = now_ns;
        let (word, bit) = ((packet_no / 64) as usize, packet_no % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) == 0 {
            self.seen[word] |= 1 << bit;
            self.complete_ns = now_ns;
        }
    }
}

/// Send times of every machine of a scenario, indexed by machine.
#[derive(Clone, Debug, Default)]
pub struct SendLog {
    machines: Vec<MachineTimes>,
}

/// Now, in ns since the Unix epoch.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SendLog {
    /// An empty log for `machines` machines.
    pub fn new(machines: u32) -> Self {
        Self {
            machines: vec![MachineTimes::default(); machines as usize],
        }
    }

    /// Times of machine `i` (`None` past the scenario).
    pub fn machine(&self, i: u32) -> Option<&MachineTimes> {
        self.machines.get(i as usize)
    }

    /// Every machine's times, by index.
    pub fn machines(&self) -> &[MachineTimes] {
        &self.machines
    }

    /// Records every datagram of `batch` as sent at `now_ns`.
    pub fn record_batch(&mut self, batch: &Batch, now_ns: u64) {
        for item in batch.items() {
            if let Some(m) = self.machines.get_mut(item.machine as usize) {
                m.record(item.packet_no, now_ns);
            }
        }
    }

    /// The log as CSV with a header line; `ip` comes from the scenario.
    pub fn to_csv(&self, scenario: &Scenario) -> String {
        let mut out = String::from("machine,ip,first_ns,complete_ns,last_ns,datagrams\n");
        for (i, m) in self.machines.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let ip = scenario
                .source_of(i)
                .map(|s| s.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{i},{ip},{},{},{},{}",
                m.first_ns, m.complete_ns, m.last_ns, m.datagrams
            );
        }
        out
    }

    /// Writes [`SendLog::to_csv`] to `path`.
    pub fn write_csv(&self, scenario: &Scenario, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_csv(scenario))
    }
}

/// An [`Output`] that stamps what it sends into a [`SendLog`].
pub struct Timed<'a> {
    inner: &'a mut dyn Output,
    log: &'a mut SendLog,
}

impl<'a> Timed<'a> {
    /// Sends through `inner`, recording into `log`.
    pub fn new(inner: &'a mut dyn Output, log: &'a mut SendLog) -> Self {
        Self { inner, log }
    }
}

impl Output for Timed<'_> {
    fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
        let now = wall_ns();
        self.inner.send(batch)?;
        self.log.record_batch(batch, now);
        Ok(())
    }

    fn received(&self) -> (u64, u64) {
        self.inner.received()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::scenario::Timing;
    use crate::gen::schedule::Schedule;
    use crate::gen::{run, RunOptions};

    /// Counts batches and accepts everything.
    struct Sink(u64);

    impl Output for Sink {
        fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
            self.0 += batch.len() as u64;
            Ok(())
        }
        fn describe(&self) -> String {
            "sink".into()
        }
    }

    #[test]
    fn the_completing_time_is_the_end_of_round_one() {
        let s = Scenario {
            machines: 3,
            log_size: "10K".parse().unwrap(),
            timing: Timing::Sequential,
            ..Scenario::default()
        };
        // Batches of four stamped 1, 2, 3...: round one of machine i ends in a known batch.
        let mut log = SendLog::new(s.machines);
        let mut schedule = Schedule::new(s.clone());
        let mut batch = Batch::new(4);
        let mut round_one_end = [0u64; 3];
        let mut stamp = 0;
        loop {
            batch.clear();
            while !batch.is_full() {
                match schedule.next_into(batch.next_datagram_buf()).unwrap() {
                    Some(item) => batch.commit(item),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            stamp += 1;
            for item in batch.items() {
                if item.round == 0 {
                    round_one_end[item.machine as usize] = stamp;
                }
            }
            log.record_batch(&batch, stamp);
        }
        let mut previous_last = 0;
        for i in 0..3 {
            let m = log.machine(i).unwrap();
            assert_eq!(m.datagrams, 3 * s.machine(i).packet_count());
            assert_eq!(m.complete_ns, round_one_end[i as usize]);
            assert!(m.first_ns < m.complete_ns && m.complete_ns < m.last_ns);
            // Sequential: each machine starts where the previous one ended.
            assert!(m.first_ns >= previous_last);
            previous_last = m.last_ns;
        }
        assert_eq!(log.machine(2).unwrap().last_ns, stamp);
        let csv = log.to_csv(&s);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("machine,ip,first_ns,complete_ns,last_ns,datagrams")
        );
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(row[1], "127.1.0.1");
        assert_eq!(
            row[2].parse::<u64>().unwrap(),
            log.machine(0).unwrap().first_ns
        );
        assert_eq!(csv.lines().count(), 4);
    }

    #[test]
    fn timed_output_stamps_with_the_wall_clock() {
        let s = Scenario {
            machines: 2,
            log_size: "4K".parse().unwrap(),
            ..Scenario::default()
        };
        let mut log = SendLog::new(s.machines);
        let mut sink = Sink(0);
        let before = wall_ns();
        let report = {
            let mut timed = Timed::new(&mut sink, &mut log);
            run(
                &mut Schedule::new(s.clone()),
                &mut timed,
                RunOptions::default(),
                &mut |_| {},
            )
            .unwrap()
        };
        let after = wall_ns();
        assert_eq!(sink.0, report.schedule.datagrams);
        for m in log.machines() {
            assert!(before <= m.first_ns && m.first_ns <= m.complete_ns);
            assert!(m.complete_ns <= m.last_ns && m.last_ns <= after);
        }
    }

    #[test]
    fn repeats_do_not_move_the_completing_time() {
        let mut m = MachineTimes::default();
        m.record(1, 10);
        m.record(0, 20);
        m.record(1, 30);
        m.record(200, 40);
        m.record(0, 50);
        assert_eq!((m.first_ns, m.complete_ns, m.last_ns), (10, 40, 50));
        assert_eq!(m.datagrams, 5);
    }
}
