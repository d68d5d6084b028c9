//! The image's receive fast path, in a crate the host builds: the kernel runs it on its
//! ingress NIC, and `netoops-bench native` runs the same code natively over simulated
//! devices to measure it stage by stage.
//!
//! - [`classify`]: in-place classification of one Ethernet frame (netoops, netconsole,
//!   dropped by reason, or for the TCP/IP stack). Pure.
//! - [`FastPath`]: the classification's state (who we are, counters) and the hand-off of a
//!   datagram, still in the receive slot, to the [`Relay`].
//! - [`receive_burst`]: the NIC glue: drains up to a burst of frames from any
//!   [`netoops_nic::Device`] through the fast path and stops at the first frame for the
//!   stack, which the caller keeps.
//!
//! Layering: this crate knows the relay core and the driver interface (`netoops-nic`), not
//! any driver or the kernel; the cycle counter comes in as a type ([`Cycles`]), so the kernel
//! plugs in its TSC read and the benchmark its own, both inlined.
#![no_std]
#![forbid(unsafe_code)]

pub mod classify;

pub use classify::{checksum_add, classify, fold, Classified, FastDrop, FastPathStats, Identity};

use core::cell::RefCell;
use core::marker::PhantomData;
use core::net::SocketAddr;
use netoops_core::relay::Relay;
use netoops_core::time::Instant;
use netoops_nic::{Device, RxToken};

/// Frames the kernel takes from the ring per burst (one [`receive_burst`]) before the
/// TCP/IP stack gets a turn.
pub const BURST: usize = 64;

/// What [`FastPath::handle`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// A datagram handed to the relay (accepted or dropped by it; counted either way).
    Relayed,
    /// Dropped by the fast path and counted ([`FastDrop`]).
    Dropped,
    /// Not ours: the caller passes the frame to the TCP/IP stack.
    Stack,
}

/// The cycle counter behind [`FastPathStats::cycles`].
pub trait Cycles {
    /// The counter now (the TSC on x86-64).
    fn read() -> u64;
}

/// The fast path's state: who we are, where datagrams go, and the counters; `C` reads the
/// cycle counter.
pub struct FastPath<'r, C: Cycles> {
    identity: Identity,
    relay: &'r RefCell<Relay>,
    stats: FastPathStats,
    cycles: PhantomData<C>,
}

impl<'r, C: Cycles> FastPath<'r, C> {
    /// A fast path delivering datagrams for `identity` into `relay`.
    pub fn new(identity: Identity, relay: &'r RefCell<Relay>) -> Self {
        Self {
            identity,
            relay,
            stats: FastPathStats::default(),
            cycles: PhantomData,
        }
    }

    /// The counters since construction.
    pub fn stats(&self) -> &FastPathStats {
        &self.stats
    }

    /// Who we are.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Handles one frame taken from the ring at cycle `t0`: a datagram for us goes to the
    /// relay in place, a bad one is counted, anything else is the caller's ([`Handled::Stack`]).
    #[inline]
    pub fn handle(&mut self, now: Instant, t0: u64, frame: &[u8]) -> Handled {
        self.stats.frames += 1;
        let (source, payload, netconsole) = match classify(frame, &self.identity) {
            Classified::Netoops { source, payload } => (source, payload, false),
            Classified::Netconsole { source, payload } => (source, payload, true),
            Classified::Drop(reason) => {
                self.stats.count_drop(reason);
                return Handled::Dropped;
            }
            Classified::Stack => {
                self.stats.to_stack += 1;
                return Handled::Stack;
            }
        };
        let source = SocketAddr::V4(source);
        self.deliver(t0, frame.get(payload).unwrap_or(&[]), |relay, bytes| {
            if netconsole {
                relay.handle_netconsole(now, source, bytes).is_ok()
            } else {
                relay.handle_datagram(now, source, bytes).is_ok()
            }
        });
        Handled::Relayed
    }

    /// Hands one datagram, still in the receive buffer, to the relay and counts the result.
    #[inline]
    fn deliver(&mut self, t0: u64, bytes: &[u8], handle: impl FnOnce(&mut Relay, &[u8]) -> bool) {
        self.stats.datagrams += 1;
        let accepted = match self.relay.try_borrow_mut() {
            Ok(mut relay) => handle(&mut relay, bytes),
            // Cannot happen (nothing else runs while the stack polls), but a datagram lost
            // that way is counted, not a panic.
            Err(_) => false,
        };
        let t1 = C::read();
        if accepted {
            self.stats.accepted += 1;
            if self.stats.first_accept_tsc == 0 {
                self.stats.first_accept_tsc = t1;
            }
        } else {
            self.stats.relay_dropped += 1;
        }
        self.stats.cycles += t1.wrapping_sub(t0);
        self.stats.cycles_samples += 1;
    }
}

/// What one [`receive_burst`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Burst {
    /// Frames taken from the ring.
    pub frames: usize,
    /// The burst ended at a frame for the stack (handed to `to_stack`).
    pub stack: bool,
}

/// Takes up to `max` frames from `nic`: through `fast` when there is one (datagrams to the
/// relay in place), every frame to `to_stack` otherwise. The first frame for the stack is
/// handed to `to_stack` and ends the burst. The caller runs [`Device::poll`] afterwards
/// (once per burst: the driver reposts buffers and moves the tail then).
#[inline]
pub fn receive_burst<D: Device, C: Cycles>(
    nic: &mut D,
    mut fast: Option<&mut FastPath<'_, C>>,
    now: Instant,
    max: usize,
    mut to_stack: impl FnMut(&[u8]),
) -> Burst {
    let mut burst = Burst::default();
    for _ in 0..max {
        let Some((rx, tx)) = nic.receive() else {
            break;
        };
        drop(tx);
        burst.frames += 1;
        let t0 = if fast.is_some() { C::read() } else { 0 };
        let stack = rx.consume(|frame| {
            let verdict = match fast.as_deref_mut() {
                Some(fp) => fp.handle(now, t0, frame),
                None => Handled::Stack,
            };
            if verdict == Handled::Stack {
                to_stack(frame);
            }
            verdict == Handled::Stack
        });
        if stack {
            burst.stack = true;
            break;
        }
    }
    burst
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use alloc::vec::Vec;
    use core::net::Ipv4Addr;
    use netoops_core::config::Config;
    use netoops_nic::{Capabilities, DeviceStats, LinkState, MacAddress, TxToken};
    use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

    /// A device that lends frames from a list, one per `receive`.
    struct ListNic {
        frames: Vec<Vec<u8>>,
        next: usize,
    }

    struct Rx<'a>(&'a [u8]);
    struct Tx;

    impl RxToken for Rx<'_> {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(self.0)
        }
    }
    impl TxToken for Tx {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            f(&mut std::vec![0; len])
        }
    }

    impl Device for ListNic {
        type RxToken<'a> = Rx<'a>;
        type TxToken<'a> = Tx;
        fn receive(&mut self) -> Option<(Rx<'_>, Tx)> {
            let f = self.frames.get(self.next)?;
            self.next += 1;
            Some((Rx(f), Tx))
        }
        fn transmit(&mut self) -> Option<Tx> {
            Some(Tx)
        }
        fn poll(&mut self) {}
        fn hardware_address(&self) -> MacAddress {
            MacAddress([2, 0, 0, 0, 0, 1])
        }
        fn link_state(&mut self) -> LinkState {
            LinkState::Up
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::new(8, 8)
        }
        fn stats(&self) -> DeviceStats {
            DeviceStats::default()
        }
    }

    /// Ethernet/IPv4/UDP from 10.0.2.2:6666 to 10.0.2.15:`port`, no UDP checksum.
    fn frame(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = std::vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 2, 8, 0];
        let total = (28 + payload.len()) as u16;
        let mut ip = std::vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15]);
        let c = !fold(checksum_add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&6666u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    struct Seven;
    impl Cycles for Seven {
        fn read() -> u64 {
            7
        }
    }

    #[test]
    fn a_burst_relays_datagrams_in_place_and_stops_at_the_first_frame_for_the_stack() {
        let config = Config::parse("upstream=127.0.0.1:2005 memory=8M max_dumps=16").unwrap();
        let relay = RefCell::new(Relay::new(config, 1).unwrap());
        let log = b"[    1.000000] Kernel panic - not syncing: test\n";
        let model = SenderModel::new(&[], log);
        let h = DumpHeader::new(Variant::V3X86_64, 3, "6.1.0-fast");
        let mut dgram = [0u8; 2048];
        let n = encode(&h, model.packet_count(), 0, &model.chunk(0), &mut dgram).unwrap();
        let mut arp = frame(9, b"");
        arp[12..14].copy_from_slice(&[8, 6]);
        let mut nic = ListNic {
            frames: std::vec![
                frame(2004, &dgram[..n]),
                frame(2004, b"junk"),
                arp.clone(),
                frame(2004, &dgram[..n])
            ],
            next: 0,
        };
        let me = Identity::new(Ipv4Addr::new(10, 0, 2, 15), 24, 2004);
        let mut fast = FastPath::<Seven>::new(me, &relay);
        let mut held = Vec::new();
        let b = receive_burst(
            &mut nic,
            Some(&mut fast),
            Instant::from_millis(1),
            64,
            |f| held.push(f.to_vec()),
        );
        assert_eq!(
            b,
            Burst {
                frames: 3,
                stack: true
            }
        );
        assert_eq!(held, [arp]);
        let s = *fast.stats();
        assert_eq!(
            (
                s.frames,
                s.datagrams,
                s.accepted,
                s.relay_dropped,
                s.to_stack
            ),
            (3, 2, 1, 1, 1)
        );
        assert_eq!(s.cycles_samples, 2);
        assert_eq!(relay.borrow().reassembler().stats().dumps_complete, 1);
        // The next burst takes the rest; without a fast path every frame is the stack's.
        let b = receive_burst::<_, Seven>(&mut nic, None, Instant::from_millis(1), 64, |f| {
            held.push(f.to_vec())
        });
        assert_eq!(
            b,
            Burst {
                frames: 1,
                stack: true
            }
        );
        assert_eq!(held.len(), 2);
    }
}
