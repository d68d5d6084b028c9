//! A bound on the bytes between the generator and the guest's receive ring, for frames over
//! QEMU's `-netdev stream` ([`super::qemu::StreamOutput::bound_in_flight`]).
//!
//! Why: TCP pushes back on the generator, but only as far as QEMU: QEMU 7.2's stream netdev
//! keeps reading the connection while the guest's ring is full and queues what it read
//! without a limit (by our reading of `net/stream.c`: each frame goes to
//! `qemu_send_packet_async`, whose queue has no cap for callers with a completion callback,
//! and one completion re-arms the read of up to 68 KiB more). Measured in the 10,000-machine
//! storm: QEMU's memory grew by about 20 MB/s to 1.1 GB, while the host's sockets held 3-5 MB,
//! and the guest read the last frame 13 s after it was written: a machine's first datagram
//! waited seconds in a buffer no network has. A real path holds a NIC ring and
//! a switch port's few MB, and drops beyond them.
//!
//! How: every [`InFlightBound::marker_every`] bytes of frames the generator sends an ARP
//! request to the guest's address, from one of [`MARKERS`] addresses of the guest's subnet
//! in turn. The guest's TCP/IP stack answers it once the guest has taken everything before
//! it from its ring (the fast path hands frames for the stack over in ring order), and the
//! answer names the marker. Before a write the sender waits until the bytes sent after the
//! newest answered marker, plus the write, fit in [`InFlightBound::bytes`]. So the frames
//! anywhere between the generator and the guest (socket buffers, QEMU's queue, the ring)
//! never exceed the bound; a lost answer is covered by the next one (they name their
//! marker), and a marker is resent when nothing moved for [`PROBE_AFTER`].
//!
//! The storm stays lossless (the generator waits where a real switch would drop), and the
//! send time of a datagram is still stamped before the write, so time spent waiting for room
//! counts in its latency.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::MacAddr;

/// Marker source addresses used in turn (more than can be in flight at once).
pub const MARKERS: u64 = 64;

/// Resend a marker when no answer came for this long while the sender waits.
pub const PROBE_AFTER: Duration = Duration::from_millis(20);

/// How long to wait for the first answer before giving the bound up (a guest without a
/// stack on the ingress NIC never answers; the storm then runs unbounded and says so).
pub const FIRST_ANSWER_PATIENCE: Duration = Duration::from_secs(5);

/// ARP request frame length (Ethernet header and ARP body, no padding: QEMU pads nothing
/// on a stream netdev and the guest's stack accepts it).
pub const ARP_LEN: usize = 42;

/// The bound and the guest's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightBound {
    /// Most frame bytes (with the stream's length prefixes) sent and not yet taken by the
    /// guest.
    pub bytes: u64,
    /// Bytes of frames between two markers.
    pub marker_every: u64,
    pub guest_ip: Ipv4Addr,
    pub guest_mac: MacAddr,
    /// The first of [`MARKERS`] consecutive addresses in the guest's subnet, none of them
    /// the guest's, that the markers come from.
    pub marker_base: Ipv4Addr,
}

impl InFlightBound {
    /// Whether the markers can tell each other apart: fewer than [`MARKERS`] in flight.
    pub fn is_valid(&self) -> bool {
        let base = u32::from(self.marker_base);
        let guest = u32::from(self.guest_ip);
        self.marker_every > 0
            && self.bytes >= self.marker_every
            && self.bytes / self.marker_every + 2 < MARKERS
            && !(base..base + MARKERS as u32).contains(&guest)
    }

    /// The source address of marker `seq`.
    pub fn marker_ip(&self, seq: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.marker_base) + (seq % MARKERS) as u32)
    }

    /// Marker `seq`: an ARP request for the guest's address.
    pub fn marker_frame(&self, seq: u64) -> [u8; ARP_LEN] {
        let ip = self.marker_ip(seq);
        let mac = MacAddr::for_ip(ip);
        let mut f = [0u8; ARP_LEN];
        f[0..6].copy_from_slice(&self.guest_mac.0);
        f[6..12].copy_from_slice(&mac.0);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
        f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&mac.0);
        f[28..32].copy_from_slice(&ip.octets());
        // Target hardware address unknown (zero), target protocol address the guest's.
        f[38..42].copy_from_slice(&self.guest_ip.octets());
        f
    }

    /// The marker index (`seq % MARKERS`) a frame from the guest answers, if it is an ARP
    /// reply from the guest's address to one of the markers' addresses.
    pub fn answered(&self, frame: &[u8]) -> Option<u64> {
        if frame.len() < ARP_LEN
            || frame[12..14] != [0x08, 0x06]
            || frame[14..22] != [0, 1, 0x08, 0x00, 6, 4, 0, 2]
            || frame[28..32] != self.guest_ip.octets()
        {
            return None;
        }
        let target = u32::from(Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]));
        let index = target.checked_sub(u32::from(self.marker_base))?;
        (u64::from(index) < MARKERS).then_some(u64::from(index))
    }
}

/// The answers seen, shared between the reading thread and the sender.
#[derive(Debug, Default)]
pub struct Answers {
    /// Markers answered, counted in sequence (the newest answered marker's seq + 1).
    answered: AtomicU64,
    /// Markers sent (the reader resolves an index to a sequence number below this).
    sent: AtomicU64,
}

impl Answers {
    /// Records an answer to marker index `index` (the reader side).
    pub fn answer(&self, index: u64) {
        let done = self.answered.load(Ordering::Acquire);
        let sent = self.sent.load(Ordering::Acquire);
        // The oldest unanswered marker with this index; answers come in ring order, so a
        // repeated or stale answer (index already covered) moves nothing.
        let seq = done + (index + MARKERS - done % MARKERS) % MARKERS;
        if seq < sent {
            self.answered.fetch_max(seq + 1, Ordering::AcqRel);
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }
}

/// The sender's side: where markers went and how far the guest has read.
#[derive(Debug)]
pub struct InFlight {
    bound: InFlightBound,
    answers: Arc<Answers>,
    /// Frame bytes sent so far.
    sent_bytes: u64,
    /// Bytes sent when the next marker is due.
    next_marker_at: u64,
    /// (seq, bytes sent before it) of markers not yet known answered.
    pending: VecDeque<(u64, u64)>,
    /// Bytes the guest is known to have taken.
    taken: u64,
    /// Markers sent.
    markers: u64,
    /// When the sender last saw the guest take something, or last probed.
    last_progress: Instant,
    /// When the first marker went out.
    first_marker: Option<Instant>,
    /// The bound was given up: no answer came.
    off: bool,
    /// Times the sender waited for room, and for how long in all.
    pub waits: u64,
    pub waited: Duration,
    /// Most bytes in flight seen right after a write.
    pub peak: u64,
}

/// What the sender must do before writing.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write.
    Go,
    /// Wait a little and ask again.
    Wait,
    /// Send marker `seq` now (a probe), then ask again.
    Probe(u64),
}

impl InFlight {
    /// A bound whose answers the reading thread records in `answers`.
    pub fn new(bound: InFlightBound, answers: Arc<Answers>) -> Self {
        Self {
            bound,
            answers,
            sent_bytes: 0,
            next_marker_at: bound.marker_every,
            pending: VecDeque::new(),
            taken: 0,
            markers: 0,
            last_progress: Instant::now(),
            first_marker: None,
            off: false,
            waits: 0,
            waited: Duration::ZERO,
            peak: 0,
        }
    }

    pub fn bound(&self) -> &InFlightBound {
        &self.bound
    }

    /// Whether the bound was given up because the guest never answered.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Bytes sent and not known taken by the guest.
    pub fn in_flight(&self) -> u64 {
        self.sent_bytes - self.taken
    }

    /// Takes the answers seen so far into account.
    fn update(&mut self, now: Instant) {
        let answered = self.answers.answered();
        while let Some(&(seq, at)) = self.pending.front() {
            if seq >= answered {
                break;
            }
            self.pending.pop_front();
            if at > self.taken {
                self.taken = at;
            }
            self.last_progress = now;
        }
    }

    /// Whether `len` more bytes may be written now.
    pub fn step(&mut self, len: u64, now: Instant) -> Step {
        if self.off {
            return Step::Go;
        }
        self.update(now);
        if self.in_flight() + len <= self.bound.bytes || self.in_flight() == 0 {
            return Step::Go;
        }
        let silent = self
            .first_marker
            .is_some_and(|t| now.saturating_duration_since(t) >= FIRST_ANSWER_PATIENCE);
        if self.answers.answered() == 0 && silent {
            self.off = true;
            return Step::Go;
        }
        if now.saturating_duration_since(self.last_progress) >= PROBE_AFTER {
            self.last_progress = now;
            return Step::Probe(self.marker(self.sent_bytes, now));
        }
        Step::Wait
    }

    /// Counts `len` bytes written; returns a marker's sequence number when one is due after
    /// them.
    pub fn sent(&mut self, len: u64, now: Instant) -> Option<u64> {
        self.sent_bytes += len;
        self.peak = self.peak.max(self.in_flight());
        if self.off || self.sent_bytes < self.next_marker_at {
            return None;
        }
        self.next_marker_at = self.sent_bytes + self.bound.marker_every;
        Some(self.marker(self.sent_bytes, now))
    }

    /// Registers a marker sent after `at` bytes; returns its sequence number.
    fn marker(&mut self, at: u64, now: Instant) -> u64 {
        let seq = self.markers;
        if self.first_marker.is_none() {
            self.first_marker = Some(now);
            self.last_progress = now;
        }
        self.markers += 1;
        self.pending.push_back((seq, at));
        self.answers.sent.store(self.markers, Ordering::Release);
        seq
    }

    /// Counts a wait of `d`.
    pub fn waited(&mut self, d: Duration) {
        self.waits += 1;
        self.waited += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> InFlightBound {
        InFlightBound {
            bytes: 10_000,
            marker_every: 1_000,
            guest_ip: Ipv4Addr::new(10, 0, 3, 15),
            guest_mac: MacAddr::QEMU_DEFAULT,
            marker_base: Ipv4Addr::new(10, 0, 3, 128),
        }
    }

    /// The guest's answer to `request`, as a stack writes it.
    fn reply(request: &[u8; ARP_LEN]) -> [u8; ARP_LEN] {
        let mut r = [0u8; ARP_LEN];
        r[0..6].copy_from_slice(&request[6..12]);
        r[6..12].copy_from_slice(&MacAddr::QEMU_DEFAULT.0);
        r[12..14].copy_from_slice(&[0x08, 0x06]);
        r[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        r[22..28].copy_from_slice(&MacAddr::QEMU_DEFAULT.0);
        r[28..32].copy_from_slice(&request[38..42]);
        r[32..38].copy_from_slice(&request[22..28]);
        r[38..42].copy_from_slice(&request[28..32]);
        r
    }

    #[test]
    fn markers_are_arp_requests_and_answers_name_them() {
        let b = bound();
        assert!(b.is_valid());
        let m = b.marker_frame(MARKERS + 3);
        assert_eq!(&m[28..32], &[10, 0, 3, 131]);
        assert_eq!(&m[38..42], &[10, 0, 3, 15]);
        assert_eq!(b.answered(&reply(&m)), Some(3));
        // A request is not an answer; nor is a reply to someone else.
        assert_eq!(b.answered(&m), None);
        let mut other = reply(&m);
        other[38..42].copy_from_slice(&[10, 0, 3, 1]);
        assert_eq!(b.answered(&other), None);
        assert_eq!(b.answered(&reply(&m)[..40]), None);
        // Too many markers in flight to tell apart, or the guest among the markers.
        assert!(!InFlightBound {
            bytes: 100_000,
            ..b
        }
        .is_valid());
        assert!(!InFlightBound {
            guest_ip: Ipv4Addr::new(10, 0, 3, 130),
            ..b
        }
        .is_valid());
    }

    #[test]
    fn the_sender_waits_for_answers_and_never_exceeds_the_bound() {
        let b = bound();
        let answers = Arc::new(Answers::default());
        let mut f = InFlight::new(b, answers.clone());
        let now = Instant::now();
        let mut markers = Vec::new();
        // Write 500-byte frames until the bound stops us.
        while f.step(500, now) == Step::Go {
            if let Some(seq) = f.sent(500, now) {
                markers.push(seq);
            }
            assert!(f.in_flight() <= b.bytes);
        }
        assert_eq!(f.in_flight(), b.bytes);
        assert_eq!(markers, (0..10).collect::<Vec<_>>());
        // The guest answers the first three markers, the second answer lost: 3,000 taken.
        answers.answer(0);
        answers.answer(2);
        assert_eq!(f.step(500, now), Step::Go);
        assert_eq!(f.in_flight(), 7_000);
        // A repeated answer moves nothing.
        answers.answer(2);
        f.update(now);
        assert_eq!(f.in_flight(), 7_000);
    }

    #[test]
    fn answers_resolve_across_the_wrap() {
        let a = Answers::default();
        a.sent.store(MARKERS + 5, Ordering::Release);
        a.answered.store(MARKERS - 2, Ordering::Release);
        a.answer(1);
        assert_eq!(a.answered(), MARKERS + 2);
        // An index ahead of what was sent is ignored.
        a.answer(10);
        assert_eq!(a.answered(), MARKERS + 2);
    }

    #[test]
    fn a_quiet_guest_gets_probes_and_a_silent_one_loses_the_bound() {
        let b = bound();
        let answers = Arc::new(Answers::default());
        let mut f = InFlight::new(b, answers.clone());
        let t = Instant::now();
        while f.step(1_000, t) == Step::Go {
            f.sent(1_000, t);
        }
        assert_eq!(f.step(1_000, t + PROBE_AFTER), Step::Probe(10));
        assert_eq!(f.step(1_000, t + PROBE_AFTER), Step::Wait);
        assert!(!f.is_off());
        assert_eq!(
            f.step(1_000, t + PROBE_AFTER + FIRST_ANSWER_PATIENCE),
            Step::Go
        );
        assert!(f.is_off());
        // Once answered, silence only brings probes.
        let mut g = InFlight::new(b, answers.clone());
        while g.step(1_000, t) == Step::Go {
            g.sent(1_000, t);
        }
        answers.answer(0);
        assert_eq!(g.step(1_000, t), Step::Go);
        g.sent(1_000, t);
        let later = t + FIRST_ANSWER_PATIENCE * 2;
        assert!(matches!(g.step(1_000, later), Step::Probe(_)));
        assert!(!g.is_off());
    }
}
