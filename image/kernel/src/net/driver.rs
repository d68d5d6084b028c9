//! The NIC as embassy-net sees it, with the netoops fast path in its receive.
//!
//! [`StackDriver`] implements `embassy_net_driver::Driver` over an [`AnyNic`]. On the ingress
//! NIC it carries a [`FastPath`]: each `receive` drains up to [`BURST`] frames from the ring
//! with [`receive_burst`], which classifies them in place and hands netoops datagrams straight
//! to `Relay::handle_datagram` (both in `netoops-fastpath`, shared with the native
//! benchmark); the first frame that is not ours is copied into a one-frame
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

use super::fastpath::{receive_burst, Cycles, FastPathStats};
use super::nic::{AnyNic, AnyTx};
use crate::platform;
use core::cell::Cell;
use core::task::Context;
use embassy_net::driver::{self as d, HardwareAddress};
use netoops_core::time::Instant;
use netoops_nic::{Device, DeviceStats, LinkState, TxToken, MAX_FRAME_LEN};

/// Frames taken from the ring per `receive` call before the stack gets a turn.
pub use super::fastpath::BURST;
/// How often the link state is read from the device (it costs a register read).
const LINK_POLL_US: u64 = 100_000;

/// The TSC, for the fast path's cycle accounting.
pub struct Tsc;

impl Cycles for Tsc {
    #[inline]
    fn read() -> u64 {
        platform::tsc()
    }
}

/// The fast path the ingress NIC carries (`netoops-fastpath`), on the TSC.
pub type FastPath = super::fastpath::FastPath<'static, Tsc>;

/// What one NIC has done, published for the console.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicReport {
    /// Fast-path counters (all zero on a NIC without the fast path).
    pub fast: FastPathStats,
    /// The driver's counters.
    pub nic: DeviceStats,
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
        let burst = receive_burst(nic, fast.as_mut(), now, BURST, |frame| held.store(frame));
        if burst.frames > 0 || held.full || *tx_pending {
            *tx_pending = false;
            nic.poll();
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.report.set(NicReport {
            fast: self.fast.as_ref().map(|f| *f.stats()).unwrap_or_default(),
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
