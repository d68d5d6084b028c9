//! The NIC as embassy-net sees it, with the netoops fast path in its receive.
//!
//! [`StackDriver`] implements `embassy_net_driver::Driver` over an [`AnyNic`]. On the ingress
//! NIC it carries a [`FastPath`]: each `receive` drains up to [`BURST`] frames from the ring,
//! classifies them in place ([`fastpath::classify`]) and hands netoops datagrams straight to
//! `Relay::handle_datagram`; the first frame that is not ours is copied into a one-frame
//! holding buffer and given to the stack. On the upstream NIC of a two-NIC appliance there is
//! no fast path and every frame goes to the stack the same way.
//!
//! Frames for the stack are copied because embassy's `RxToken` lends `&mut [u8]` while
//! our drivers lend their DMA slot read-only; that traffic (ARP, ICMP, the collector's
//! acknowledgements) is small. The netoops path never copies.
//!
//! The appliance polls: whenever `receive` or `transmit` has nothing, the adapter wakes its
//! own task again so the executor keeps running the stack. Frames the stack queued are
//! kicked to the device at the end of each stack poll (embassy-net then asks for the link
//! state) or at the next burst, whichever comes first. Counters (fast path, NIC) are
//! published into a shared [`Cell`] after each burst for the console.

use super::fastpath::{self, Classified, FastPathStats, Identity};
use super::nic::{AnyNic, AnyTx};
use crate::platform;
use core::cell::{Cell, RefCell};
use core::net::SocketAddr;
use core::task::Context;
use embassy_net::driver::{self as d, HardwareAddress};
use netoops_core::relay::Relay;
use netoops_core::time::Instant;
use netoops_nic::{Device, DeviceStats, LinkState, RxToken, TxToken, MAX_FRAME_LEN};

/// Frames taken from the ring per `receive` call before the stack gets a turn.
pub const BURST: usize = 64;
/// How often the link state is read from the device (it costs a register read).
const LINK_POLL_US: u64 = 100_000;

/// What one NIC has done, published for the console.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicReport {
    /// Fast-path counters (all zero on a NIC without the fast path).
    pub fast: FastPathStats,
    /// The driver's counters.
    pub nic: DeviceStats,
}

/// The fast path's state: who we are and where datagrams go.
pub struct FastPath {
    identity: Identity,
    relay: &'static RefCell<Relay>,
    stats: FastPathStats,
}

impl FastPath {
    /// A fast path delivering datagrams for `identity` into `relay`.
    pub fn new(identity: Identity, relay: &'static RefCell<Relay>) -> Self {
        Self {
            identity,
            relay,
            stats: FastPathStats::default(),
        }
    }

    /// Handles one frame; frames for the stack go to `held`.
    #[inline]
    fn handle(&mut self, now: Instant, t0: u64, frame: &[u8], held: &mut HeldFrame) {
        self.stats.frames += 1;
        match fastpath::classify(frame, &self.identity) {
            Classified::Netoops { source, payload } => {
                self.deliver(t0, frame.get(payload).unwrap_or(&[]), |relay, bytes| {
                    relay
                        .handle_datagram(now, SocketAddr::V4(source), bytes)
                        .is_ok()
                });
            }
            Classified::Netconsole { source, payload } => {
                self.deliver(t0, frame.get(payload).unwrap_or(&[]), |relay, bytes| {
                    relay
                        .handle_netconsole(now, SocketAddr::V4(source), bytes)
                        .is_ok()
                });
            }
            Classified::Drop(reason) => self.stats.count_drop(reason),
            Classified::Stack => {
                self.stats.to_stack += 1;
                held.store(frame);
            }
        }
    }
}

impl FastPath {
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
        let t1 = platform::tsc();
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

/// One frame waiting for the stack.
struct HeldFrame {
    buf: [u8; MAX_FRAME_LEN],
    len: usize,
    full: bool,
}

impl HeldFrame {
    /// Copies `frame` in (the caller drains only while the buffer is empty).
    fn store(&mut self, frame: &[u8]) {
        let len = frame.len().min(self.buf.len());
        self.buf[..len].copy_from_slice(&frame[..len]);
        self.len = len;
        self.full = true;
    }
}

/// A NIC driven by embassy-net, with an optional fast path. See the module doc.
pub struct StackDriver {
    nic: AnyNic,
    fast: Option<FastPath>,
    held: HeldFrame,
    report: &'static Cell<NicReport>,
    link: LinkState,
    link_checked_us: u64,
    /// A transmit token was handed out since the device was last kicked.
    tx_pending: bool,
}

impl StackDriver {
    /// Wraps `nic`; `fast` makes it the ingress NIC. Counters go to `report`.
    pub fn new(nic: AnyNic, fast: Option<FastPath>, report: &'static Cell<NicReport>) -> Self {
        Self {
            nic,
            fast,
            held: HeldFrame {
                buf: [0; MAX_FRAME_LEN],
                len: 0,
                full: false,
            },
            report,
            link: LinkState::Down,
            link_checked_us: 0,
            tx_pending: false,
        }
    }

    /// Drains up to [`BURST`] frames: netoops datagrams to the relay, the first other
    /// frame into the holding buffer (which ends the burst).
    fn pull(&mut self) {
        let Self {
            nic,
            fast,
            held,
            tx_pending,
            ..
        } = self;
        let now = Instant::from_micros(platform::now_micros());
        let mut took = 0;
        for _ in 0..BURST {
            let Some((rx, tx)) = nic.receive() else {
                break;
            };
            drop(tx);
            took += 1;
            let t0 = platform::tsc();
            rx.consume(|frame| match fast {
                Some(fp) => fp.handle(now, t0, frame, held),
                None => held.store(frame),
            });
            if held.full {
                break;
            }
        }
        if took > 0 || held.full || *tx_pending {
            *tx_pending = false;
            nic.poll();
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.report.set(NicReport {
            fast: self.fast.as_ref().map(|f| f.stats).unwrap_or_default(),
            nic: self.nic.stats(),
        });
    }
}

/// The held frame, lent to the stack.
pub struct HeldRx<'a>(&'a mut HeldFrame);

impl d::RxToken for HeldRx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        let held = self.0;
        held.full = false;
        f(&mut held.buf[..held.len])
    }
}

/// A transmit slot of the NIC, lent to the stack.
pub struct StackTx<'a>(AnyTx<'a>);

impl d::TxToken for StackTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.consume(len, f)
    }
}

impl d::Driver for StackDriver {
    type RxToken<'a> = HeldRx<'a>;
    type TxToken<'a> = StackTx<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(HeldRx<'_>, StackTx<'_>)> {
        if !self.held.full {
            self.pull();
        }
        if !self.held.full {
            cx.waker().wake_by_ref();
            return None;
        }
        // The driver kicks the device and reclaims slots itself when its ring is full.
        let Self {
            nic,
            held,
            tx_pending,
            ..
        } = self;
        let tx = nic.transmit();
        if tx.is_none() {
            cx.waker().wake_by_ref();
        }
        *tx_pending = true;
        Some((HeldRx(held), StackTx(tx?)))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<StackTx<'_>> {
        self.tx_pending = true;
        let tx = self.nic.transmit().map(StackTx);
        if tx.is_none() {
            cx.waker().wake_by_ref();
        }
        tx
    }

    /// embassy-net asks for the link state once per stack poll, after ingress and egress:
    /// the moment to kick the device for what the stack just queued.
    fn link_state(&mut self, _cx: &mut Context<'_>) -> d::LinkState {
        if self.tx_pending {
            self.tx_pending = false;
            self.nic.poll();
        }
        let now = platform::now_micros();
        if self.link_checked_us == 0 || now.saturating_sub(self.link_checked_us) >= LINK_POLL_US {
            self.link = self.nic.link_state();
            self.link_checked_us = now.max(1);
        }
        match self.link {
            LinkState::Up => d::LinkState::Up,
            LinkState::Down => d::LinkState::Down,
        }
    }

    fn capabilities(&self) -> d::Capabilities {
        let mut caps = d::Capabilities::default();
        caps.max_transmission_unit = self.nic.capabilities().max_frame_len;
        caps.max_burst_size = Some(self.nic.capabilities().tx_ring_len.max(1));
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.nic.hardware_address().0)
    }
}
