//! A seeded fleet of crashing machines sent through QEMU's user-networking UDP host forward
//! (`hostfwd=udp:127.0.0.1:PORT-:2004`), the only ingress a single-NIC appliance has, with
//! planned loss and no other loss.
//!
//! QEMU's forwarding socket has the default receive buffer (about 200 KiB), which a sender
//! outruns a TCG guest into within a few hundred datagrams. [`send_paced`] waits while more
//! than 64 KiB are queued there (read from /proc/net/udp), so the only datagrams lost are the
//! planned ones and the reference model's expectation ([`LossyFleet::wants`]) holds exactly.
//! The guest sees each machine's own 127.x.y.z source address (slirp rewrites only
//! 127.0.0.1), so the collector files each dump under that address.

use crate::hosted::{fleet, Machine, Plan, Rng, Want, PATIENCE};
use netoops_wire::encode::encode;
use std::net::{SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Bytes allowed to wait in QEMU's forwarding socket before the sender pauses.
const MAX_QUEUED: u64 = 64 << 10;

/// Machines, what each sends after loss, and what the collector must then hold.
pub struct LossyFleet {
    /// The machines (127.`net`.x.y).
    pub machines: Vec<Machine>,
    /// Each machine's datagrams after loss, in send order.
    pub plans: Vec<Plan>,
    /// What a correct relay delivers for each machine.
    pub wants: Vec<Want>,
}

impl LossyFleet {
    /// `count` machines with logs of `logs` bytes, each datagram lost with probability
    /// `loss`; everything follows from `seed`.
    pub fn new(
        seed: u64,
        net: u8,
        count: usize,
        logs: RangeInclusive<usize>,
        loss: f64,
    ) -> LossyFleet {
        let machines = fleet(seed, net, count, *logs.start(), *logs.end());
        let mut rng = Rng::new(seed ^ 0x1055);
        let plans: Vec<Plan> = machines
            .iter()
            .map(|m| Plan::new(m, loss, &mut rng))
            .collect();
        let wants = plans
            .iter()
            .zip(&machines)
            .map(|(p, m)| p.want(m))
            .collect();
        LossyFleet {
            machines,
            plans,
            wants,
        }
    }

    /// Datagrams sent in all (all three rounds, after loss).
    pub fn datagrams(&self) -> usize {
        self.plans.iter().map(|p| p.packets.len()).sum()
    }

    /// Machines at least one datagram of which is sent.
    pub fn heard(&self) -> usize {
        self.wants.iter().filter(|w| !w.unheard).count()
    }

    /// Machines whose every packet arrives at least once.
    pub fn complete(&self) -> usize {
        self.wants.iter().filter(|w| w.is_complete()).count()
    }

    /// Heard machines with at least one packet lost in all three rounds.
    pub fn partial(&self) -> usize {
        self.heard() - self.complete()
    }

    /// Whether a relay `counters:` line shows this fleet fully handled: every datagram
    /// counted, every heard dump finished complete or partial as planned, none malformed.
    pub fn counters_show_all(&self, line: &str) -> bool {
        let c = crate::hosted::parse_counters(line);
        let n = |k: &str| c.get(k).copied().unwrap_or(u64::MAX);
        n("datagrams") == self.datagrams() as u64
            && n("complete") == self.complete() as u64
            && n("partial") == self.partial() as u64
            && n("malformed") == 0
    }

    /// Sends every plan to `to` through QEMU's forward at most `max_rate` datagrams a
    /// second; `after_first` runs once the first datagram is out (see [`send_paced`]).
    pub fn send_paced(&self, to: SocketAddr, max_rate: Option<u32>, after_first: impl FnOnce()) {
        send_paced(to, &self.machines, &self.plans, max_rate, after_first);
    }
}

/// Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port` (QEMU's
/// forwarding socket), from /proc/net/udp.
fn udp_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// Sends every machine's plan to `to` interleaved datagram by datagram (a storm), from each
/// machine's own 127.x address, pausing while QEMU's forwarding socket holds more than
/// 64 KiB, so nothing is lost before the guest, and keeping to `max_rate` datagrams a
/// second when given. `after_first` runs once the first datagram is sent: the caller waits
/// there until the guest has it (`first datagram accepted` on the console), so the storm
/// starts on a receive path known to work.
///
/// That wait matters for QEMU's e1000 (82540EM) model: for a second after each write of
/// its receive control register (driver bring-up) it takes no frame and queues them, then
/// hands the whole queue to the receive ring at once and drops what does not fit. The model
/// also has no flow control under user networking (it drops, like the hardware, what its
/// ring cannot hold when the queue is flushed), so with it the sender must also stay below
/// what the guest absorbs, stalls included: hence `max_rate`. The socket check alone is
/// enough for virtio-net and e1000e, which keep what the ring has no room for.
pub fn send_paced(
    to: SocketAddr,
    machines: &[Machine],
    plans: &[Plan],
    max_rate: Option<u32>,
    after_first: impl FnOnce(),
) {
    let mut after_first = Some(after_first);
    let sockets: Vec<UdpSocket> = machines
        .iter()
        .map(|m| UdpSocket::bind((m.ip, 0)).unwrap_or_else(|e| panic!("binding {}: {e}", m.ip)))
        .collect();
    let mut next = vec![0usize; machines.len()];
    let mut buf = [0u8; 2048];
    let mut chunk = [0u8; netoops_wire::DATA_LEN];
    let deadline = Instant::now() + PATIENCE;
    // The rate counts from the second datagram, after `after_first`.
    let mut started = Instant::now();
    let mut sent = 0u32;
    loop {
        let mut any = false;
        for (i, m) in machines.iter().enumerate() {
            let Some(&p) = plans[i].packets.get(next[i]) else {
                continue;
            };
            next[i] += 1;
            any = true;
            if let Some(rate) = max_rate.filter(|&r| r > 0) {
                let due = started + Duration::from_secs_f64(f64::from(sent) / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sent += 1;
            }
            while udp_queue(to.port()).is_some_and(|q| q > MAX_QUEUED) {
                assert!(Instant::now() < deadline, "QEMU stopped reading its socket");
                std::thread::sleep(Duration::from_micros(200));
            }
            let sender = m.sender();
            sender.chunk_into(p, &mut chunk);
            let n = encode(&m.header, sender.packet_count(), p, &chunk, &mut buf)
                .expect("2048 bytes hold any datagram");
            sockets[i]
                .send_to(&buf[..n], to)
                .expect("sending on loopback");
            if let Some(f) = after_first.take() {
                f();
                started = Instant::now();
            }
        }
        if !any {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_fleets_are_reproducible_and_counted() {
        let a = LossyFleet::new(5, 9, 30, 1024..=32 * 1024, 0.1);
        let b = LossyFleet::new(5, 9, 30, 1024..=32 * 1024, 0.1);
        assert_eq!(a.datagrams(), b.datagrams());
        let all: usize = a
            .machines
            .iter()
            .map(|m| 3 * m.sender().packet_count() as usize)
            .sum();
        assert!(a.datagrams() < all && a.datagrams() > all * 8 / 10);
        assert_eq!(a.heard(), a.complete() + a.partial());
        let line = format!(
            "counters: format 1 | datagrams {} chunks 9 dup 9 malformed 0 not_allowed 0 | dumps started {} \
             complete {} partial {} held 30",
            a.datagrams(),
            a.heard(),
            a.complete(),
            a.partial()
        );
        assert!(a.counters_show_all(&line), "{line}");
        assert!(!a.counters_show_all(&line.replace("malformed 0", "malformed 1")));
        let lossless = LossyFleet::new(5, 9, 30, 1024..=32 * 1024, 0.0);
        assert_eq!((lossless.datagrams(), lossless.complete()), (all, 30));
    }

    #[test]
    fn a_socket_with_nothing_queued_reads_as_empty() {
        let s = UdpSocket::bind("127.0.0.1:0").expect("binding");
        let port = s.local_addr().expect("address").port();
        assert_eq!(udp_queue(port), Some(0));
        UdpSocket::bind("127.0.0.1:0")
            .expect("binding")
            .send_to(&[0u8; 1000], ("127.0.0.1", port))
            .expect("sending");
        assert!(udp_queue(port).is_some_and(|q| q >= 1000));
    }
}
