//! The poll-mode NIC driver interface.
//!
//! Drivers (virtio-net, e1000/e1000e) implement [`Device`]; the kernel's fast path and its
//! adapter for the TCP/IP stack consume it. The shape follows `smoltcp::phy` and
//! `embassy-net-driver` without wakers, because the appliance polls and never sleeps on an
//! interrupt:
//!
//! - [`Device::receive`] lends one received frame in the driver's own DMA buffer, so the
//!   netoops fast path parses it in place, together with a [`TxToken`] for an immediate reply.
//! - [`TxToken::consume`] cannot fail, so a driver returns `None` from [`Device::transmit`]
//!   when its ring has no room; callers service transmit before waiting on receive so full
//!   RX and TX rings cannot deadlock.
//! - Drivers post receive buffers back in batches; [`Device::poll`] lets a driver refill rings
//!   and notify the device once per batch instead of once per frame.
//!
//! This crate has no dependencies and no unsafe code; it is the only thing drivers and the
//! kernel agree on.
#![no_std]
#![forbid(unsafe_code)]

/// Maximum Ethernet frame the appliance handles (1500-byte MTU plus the 14-byte header).
pub const MAX_FRAME_LEN: usize = 1514;

/// Ethernet hardware address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacAddress(pub [u8; 6]);

impl core::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Whether the physical link is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Link is down; frames will not be delivered.
    Down,
    /// Link is up.
    Up,
}

impl From<bool> for LinkState {
    /// `Up` for `true`.
    fn from(up: bool) -> LinkState {
        if up {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }
}

/// What a driver can do. New fields may be added without breaking callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Largest frame the driver receives or transmits, Ethernet header included.
    pub max_frame_len: usize,
    /// Receive buffers posted to the device.
    pub rx_ring_len: usize,
    /// Transmit descriptors.
    pub tx_ring_len: usize,
    /// Frames the driver is willing to hand out between two calls of [`Device::poll`].
    pub max_burst: usize,
}

impl Capabilities {
    /// Capabilities with the given ring sizes and a standard Ethernet MTU.
    pub const fn new(rx_ring_len: usize, tx_ring_len: usize) -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            rx_ring_len,
            tx_ring_len,
            max_burst: rx_ring_len,
        }
    }
}

/// A received frame, lent in the driver's buffer until consumed.
pub trait RxToken {
    /// Runs `f` on the frame (Ethernet header included). The buffer returns to the driver
    /// afterwards; dropping the token without consuming it also returns it.
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R;
}

/// Room for one frame in the transmit ring.
pub trait TxToken {
    /// Lets `f` write a frame of `len` bytes (Ethernet header included) into the driver's
    /// buffer and queues it. Cannot fail: the driver reserved room when it made the token.
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R;
}

/// Counters every driver keeps; drops are counted, never silent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames handed to the caller.
    pub rx_frames: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Frames the device or driver dropped on receive (errors, oversize, no buffer).
    pub rx_dropped: u64,
    /// Transmit attempts refused because the ring was full.
    pub tx_ring_full: u64,
}

/// A poll-mode network device: the data path first, then its state, then what bring-up fixed.
pub trait Device {
    /// Token for a received frame.
    type RxToken<'a>: RxToken
    where
        Self: 'a;
    /// Token for a frame to transmit.
    type TxToken<'a>: TxToken
    where
        Self: 'a;

    /// Takes the next received frame, if any, with room to transmit a reply. Returns `None`
    /// when nothing was received or when the transmit ring is full.
    fn receive(&mut self) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)>;

    /// Reserves room for one frame to transmit, or `None` when the ring is full.
    fn transmit(&mut self) -> Option<Self::TxToken<'_>>;

    /// Housekeeping between bursts: reclaim transmitted buffers, repost receive buffers and
    /// notify the device once for the whole batch.
    fn poll(&mut self);

    /// Current link state.
    fn link_state(&mut self) -> LinkState;

    /// Counters since the device was brought up.
    fn stats(&self) -> DeviceStats;

    /// The device's hardware address: fixed at bring-up, like [`Device::capabilities`].
    fn hardware_address(&self) -> MacAddress;

    /// What the driver can do.
    fn capabilities(&self) -> Capabilities;
}
