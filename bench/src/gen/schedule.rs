//! The deterministic packet schedule: every datagram of every machine, in send order.
//!
//! Machines are merged by (earliest send time, machine index, position in the machine's
//! plan). With [`Timing::Sequential`] every time is zero, so machine i+1 starts only when
//! machine i is done; in a storm each machine's datagrams are spaced by its 1 GbE line gap
//! from its crash time, and machines interleave. A machine's log is generated when it becomes
//! active and dropped when it is done, so memory follows the machines sending at once.
//!
//! A netconsole machine's datagrams are made when it becomes active ([`NcMachine::log`]) and
//! copied out by `packet_no`; its plan is one round of them.
//!
//! [`Schedule::next_into`] writes the next datagram into the caller's buffer (no allocation on
//! that path; activating a machine allocates its log and plan) and says who sends it and when
//! it may leave. The same scenario always yields the same bytes in the same order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use netoops_wire::{encode, BufferTooSmall, SenderModel, DATA_LEN, MAX_DATAGRAM_LEN};

use super::channel::MachinePlan;
use super::netconsole::NcMachine;
use super::scenario::{Machine, Protocol, Scenario, Timing};

/// One datagram of the schedule, written into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Index of the sending machine.
    pub machine: u32,
    /// Its source address.
    pub source: SocketAddrV4,
    pub packet_no: u32,
    /// Sender round, 0 to 2.
    pub round: u8,
    /// The channel's extra copy.
    pub duplicate: bool,
    /// Earliest moment, from the start of the run, the datagram may leave.
    pub not_before: Duration,
    /// Bytes written.
    pub len: usize,
}

/// Counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Machines that began sending.
    pub machines_started: u32,
    /// Machines whose every datagram was scheduled.
    pub machines_done: u32,
    /// Datagrams handed out.
    pub datagrams: u64,
    /// Datagram bytes handed out.
    pub bytes: u64,
    /// Datagrams of started machines that the loss model dropped.
    pub lost: u64,
    /// Extra copies planned by started machines.
    pub duplicated: u64,
    /// Held-back copies planned by started machines.
    pub reordered: u64,
}

/// What an active machine sends from.
enum Sender {
    /// A netoops machine and its log (chunks are cut from it per datagram).
    Netoops { machine: Box<Machine>, log: Vec<u8> },
    /// A netconsole machine's datagrams, by `packet_no`.
    Netconsole { datagrams: Vec<Vec<u8>> },
}

/// A machine that is sending.
struct Active {
    sender: Sender,
    source: SocketAddrV4,
    crash_at: Duration,
    plan: MachinePlan,
    next: usize,
    gap: Duration,
}

impl Active {
    fn due(&self) -> Duration {
        self.crash_at + self.gap * u32::try_from(self.next).unwrap_or(u32::MAX)
    }
}

/// See the module documentation.
pub struct Schedule {
    scenario: Scenario,
    /// Machines by (crash time, index); those before `next_pending` have started.
    pending: Vec<(Duration, u32)>,
    next_pending: usize,
    active: HashMap<u32, Active>,
    /// Active machines keyed by the time of their next datagram.
    heap: BinaryHeap<Reverse<(Duration, u32)>>,
    stats: ScheduleStats,
}

impl Schedule {
    /// The schedule of a validated scenario.
    pub fn new(scenario: Scenario) -> Self {
        let mut pending: Vec<(Duration, u32)> = (0..scenario.senders())
            .map(|i| (scenario.crash_at(i), i))
            .collect();
        pending.sort_unstable();
        Self {
            scenario,
            pending,
            next_pending: 0,
            active: HashMap::new(),
            heap: BinaryHeap::new(),
            stats: ScheduleStats::default(),
        }
    }

    /// The scenario being played.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Counts so far.
    pub fn stats(&self) -> &ScheduleStats {
        &self.stats
    }

    /// Machines currently sending.
    pub fn machines_active(&self) -> usize {
        self.active.len()
    }

    /// Starts every machine whose first datagram comes before the current head.
    fn settle(&mut self) {
        while let Some(&(at, i)) = self.pending.get(self.next_pending) {
            if let Some(Reverse(top)) = self.heap.peek() {
                if *top < (at, i) {
                    break;
                }
            }
            self.next_pending += 1;
            self.activate(i);
        }
    }

    fn activate(&mut self, i: u32) {
        let storm = matches!(self.scenario.timing, Timing::Storm { .. });
        let (sender, source, crash_at, plan, gap) = match self.scenario.protocol {
            Protocol::Netoops => {
                let machine = self.scenario.machine(i);
                let plan = MachinePlan::new(&self.scenario, &machine);
                let gap = if storm {
                    machine.line_gap()
                } else {
                    Duration::ZERO
                };
                let (source, crash_at) = (machine.source, machine.crash_at);
                let log = if plan.sends.is_empty() {
                    Vec::new()
                } else {
                    machine.log()
                };
                (
                    Sender::Netoops {
                        machine: Box::new(machine),
                        log,
                    },
                    source,
                    crash_at,
                    plan,
                    gap,
                )
            }
            Protocol::Netconsole => {
                let machine = NcMachine::of(&self.scenario, i);
                let datagrams: Vec<Vec<u8>> = machine
                    .log()
                    .datagrams
                    .into_iter()
                    .map(|d| d.bytes)
                    .collect();
                let count = u32::try_from(datagrams.len()).unwrap_or(u32::MAX);
                let plan = MachinePlan::of_sender(&self.scenario, i, count, 1);
                let gap = if storm {
                    machine.line_gap()
                } else {
                    Duration::ZERO
                };
                (
                    Sender::Netconsole { datagrams },
                    machine.source,
                    machine.crash_at,
                    plan,
                    gap,
                )
            }
        };
        self.stats.machines_started += 1;
        self.stats.lost += u64::from(plan.lost);
        self.stats.duplicated += u64::from(plan.duplicated);
        self.stats.reordered += u64::from(plan.reordered);
        if plan.sends.is_empty() {
            self.stats.machines_done += 1;
            return;
        }
        let active = Active {
            sender,
            source,
            crash_at,
            plan,
            next: 0,
            gap,
        };
        self.heap.push(Reverse((active.due(), i)));
        self.active.insert(i, active);
    }

    /// When the next datagram may leave, or `None` when the schedule is over.
    pub fn peek_not_before(&mut self) -> Option<Duration> {
        self.settle();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Writes the next datagram into `out` (at least [`MAX_DATAGRAM_LEN`] bytes), or returns
    /// `Ok(None)` when the schedule is over. A short buffer changes nothing.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<Scheduled>, BufferTooSmall> {
        if out.len() < MAX_DATAGRAM_LEN {
            return Err(BufferTooSmall);
        }
        self.settle();
        let Some(Reverse((not_before, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let Some(a) = self.active.get_mut(&i) else {
            return Ok(None);
        };
        let Some(&send) = a.plan.sends.get(a.next) else {
            return Ok(None);
        };
        let len = match &a.sender {
            Sender::Netoops { machine, log } => {
                let (s1, s2) = log.split_at(machine.split.min(log.len()));
                let sender = SenderModel::new(s1, s2);
                let mut chunk = [0u8; DATA_LEN];
                sender.chunk_into(send.packet_no, &mut chunk);
                encode(
                    &machine.header,
                    a.plan.packet_count,
                    send.packet_no,
                    &chunk,
                    out,
                )?
            }
            Sender::Netconsole { datagrams } => {
                let d = datagrams
                    .get(send.packet_no as usize)
                    .map_or(&[][..], Vec::as_slice);
                out.get_mut(..d.len())
                    .ok_or(BufferTooSmall)?
                    .copy_from_slice(d);
                d.len()
            }
        };
        let scheduled = Scheduled {
            machine: i,
            source: a.source,
            packet_no: send.packet_no,
            round: send.round,
            duplicate: send.duplicate,
            not_before,
            len,
        };
        a.next += 1;
        if a.next < a.plan.sends.len() {
            self.heap.push(Reverse((a.due(), i)));
        } else {
            self.active.remove(&i);
            self.stats.machines_done += 1;
        }
        self.stats.datagrams += 1;
        self.stats.bytes += len as u64;
        Ok(Some(scheduled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::channel::LossModel;
    use crate::gen::scenario::SizeRange;
    use netoops_wire::netoops::{Datagram, Limits};

    fn drain(s: &Scenario) -> (Vec<Scheduled>, Vec<u8>) {
        let mut sched = Schedule::new(s.clone());
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let mut items = Vec::new();
        let mut bytes = Vec::new();
        while let Some(item) = sched.next_into(&mut buf).unwrap() {
            bytes.extend_from_slice(&buf[..item.len]);
            items.push(item);
        }
        assert_eq!(sched.stats().machines_done, s.machines);
        assert_eq!(sched.stats().datagrams, items.len() as u64);
        assert_eq!(sched.machines_active(), 0);
        assert_eq!(sched.peek_not_before(), None);
        (items, bytes)
    }

    fn small(timing: Timing) -> Scenario {
        Scenario {
            machines: 30,
            log_size: SizeRange {
                min: 1000,
                max: 20_000,
            },
            loss: LossModel::Independent { p: 0.1 },
            duplicate: 0.02,
            reorder: 0.02,
            timing,
            ..Scenario::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let s = small(Timing::Sequential);
        let (a_items, a) = drain(&s);
        let (b_items, b) = drain(&s);
        assert_eq!(a_items, b_items);
        assert_eq!(a, b);
        let (_, c) = drain(&Scenario { seed: 43, ..s });
        assert_ne!(a, c);
    }

    #[test]
    fn sequential_machines_follow_each_other_in_sender_order() {
        let s = Scenario {
            loss: LossModel::None,
            duplicate: 0.0,
            reorder: 0.0,
            ..small(Timing::Sequential)
        };
        let (items, bytes) = drain(&s);
        // Machines one after another, each: rounds ascending, packet_no ascending per round.
        assert!(items.windows(2).all(|w| w[0].machine <= w[1].machine));
        let mut at = 0;
        for item in &items {
            assert_eq!(item.not_before, Duration::ZERO);
            let d = Datagram::parse(&bytes[at..at + item.len], &Limits::default()).unwrap();
            let m = s.machine(item.machine);
            assert_eq!(d.packet_no(), item.packet_no);
            assert_eq!(d.dump_id(), m.header.dump_id);
            assert_eq!(d.variant(), m.header.variant);
            assert_eq!(d.packet_count(), m.packet_count());
            assert_eq!(item.source, m.source);
            at += item.len;
        }
        for i in 0..s.machines {
            let got: Vec<(u32, u32)> = items
                .iter()
                .filter(|x| x.machine == i)
                .map(|x| (u32::from(x.round), x.packet_no))
                .collect();
            let m = s.machine(i);
            let log = m.log();
            let sender = SenderModel::new(&log[..m.split], &log[m.split..]);
            assert!(sender.schedule().eq(got.iter().copied()), "machine {i}");
        }
    }

    #[test]
    fn storm_interleaves_machines_within_the_window() {
        let window = Duration::from_millis(5);
        let s = small(Timing::Storm { window });
        let (items, _) = drain(&s);
        assert!(items.windows(2).all(|w| w[0].not_before <= w[1].not_before));
        let switches = items
            .windows(2)
            .filter(|w| w[0].machine != w[1].machine)
            .count();
        assert!(
            switches > items.len() / 4,
            "machines interleave: {switches}"
        );
        for i in 0..s.machines {
            let m = s.machine(i);
            let mine: Vec<&Scheduled> = items.iter().filter(|x| x.machine == i).collect();
            assert!(mine[0].not_before < window);
            assert_eq!(mine[0].not_before, m.crash_at);
            // Back to back at 1 GbE.
            for (k, x) in mine.iter().enumerate() {
                assert_eq!(x.not_before, m.crash_at + m.line_gap() * k as u32);
            }
        }
    }

    #[test]
    fn everything_lost_still_finishes() {
        let s = Scenario {
            loss: LossModel::Independent { p: 1.0 },
            ..small(Timing::Sequential)
        };
        let (items, _) = drain(&s);
        assert!(items.is_empty());
    }

    #[test]
    fn short_buffer_is_an_error_not_a_skip() {
        let s = small(Timing::Sequential);
        let mut sched = Schedule::new(s);
        let mut short = [0u8; 100];
        assert_eq!(sched.next_into(&mut short), Err(BufferTooSmall));
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let first = sched.next_into(&mut buf).unwrap().unwrap();
        assert_eq!(first.machine, 0);
    }
}
