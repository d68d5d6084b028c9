//! The virtio-net device: initialisation, the receive and transmit queues, and the
//! [`netoops_nic::Device`] implementation.
//!
//! Every descriptor owns one fixed 2 KiB slot of a DMA buffer block for the life of the
//! driver, so descriptors are written once at start-up and the data path only moves ring
//! indices:
//!
//! - Receive: all slots are posted at start-up. [`Device::receive`] takes one used entry and
//!   lends its slot, header stripped, to [`RxToken::consume`]; when the token goes, the slot
//!   is queued for reposting. Queued slots are published to the device in batches
//!   ([`Config::rx_repost_batch`], and whatever is left at [`Device::poll`]), each batch with
//!   one index store and at most one notification, only when the device asked for one.
//! - Transmit: free slots sit on a stack. A [`TxToken`] holds one; the frame is written
//!   straight into the slot behind a header that never changes (all zero: no offloads), and
//!   published at once so a device already working picks it up. The device is kicked at
//!   [`Device::poll`], when [`Config::tx_kick_batch`] frames are waiting, or when the ring
//!   is full; completed slots return to the stack as they are needed.
//!
//! Nothing here allocates after [`VirtioNet::new`]. Device input is checked: a used entry
//! naming a slot the driver did not post is counted and ignored, as is a length beyond
//! the slot. Frames shorter than an Ethernet header and frames that did not fit one slot
//! (the device splits them with `MRG_RXBUF`) are dropped and counted.

use crate::queue::{QueueError, QueueSetup, SplitQueue, DESC_F_WRITE, MAX_QUEUE_SIZE};
use crate::transport::{status, Transport, TransportError};
use netoops_driver_platform::{DmaRegion, Platform};
use netoops_nic::{Capabilities, Device, DeviceStats, LinkState, MacAddress, RxToken, TxToken};

/// Bytes per buffer slot: the 12-byte header plus a 1514-byte frame fit with room to spare
/// (the spec asks for at least 1526 without offloads), and two slots fill a page.
pub const SLOT_LEN: usize = 2048;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// Feature bits (virtio 1.2, sections 5.1.3 and 6).
pub mod features {
    /// The device has a MAC address in its configuration.
    pub const NET_MAC: u64 = 1 << 5;
    /// The device may spread one frame over several receive buffers.
    pub const NET_MRG_RXBUF: u64 = 1 << 15;
    /// The configuration has a link status field.
    pub const NET_STATUS: u64 = 1 << 16;
    /// The device follows virtio 1.0 or later.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Size of the `virtio_net_hdr` the device prepends/expects: 12 bytes for modern devices
/// or with `MRG_RXBUF` (it carries `num_buffers`), 10 bytes otherwise.
pub fn header_len(features: u64) -> usize {
    if features & (features::VERSION_1 | features::NET_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Driver settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Upper bound on receive buffers; the device's maximum wins if smaller. Rounded down
    /// to a power of two, at most [`MAX_QUEUE_SIZE`].
    pub max_rx_queue: u16,
    /// Upper bound on transmit slots, as for receive.
    pub max_tx_queue: u16,
    /// Receive slots handed back before they are published to the device without waiting
    /// for [`Device::poll`].
    pub rx_repost_batch: u16,
    /// Transmitted frames that trigger a kick without waiting for [`Device::poll`].
    pub tx_kick_batch: u16,
    /// Address to use when the device does not offer one.
    pub fallback_mac: MacAddress,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_rx_queue: MAX_QUEUE_SIZE,
            max_tx_queue: MAX_QUEUE_SIZE,
            rx_repost_batch: 32,
            tx_kick_batch: 32,
            fallback_mac: MacAddress([0x02, 0, 0, 0, 0, 0x01]),
        }
    }
}

/// Why the device could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Register access failed.
    Transport(TransportError),
    /// A modern transport whose device does not offer `VERSION_1`.
    NoVersion1,
    /// The device refused the negotiated features (`FEATURES_OK` did not stick).
    FeaturesRejected,
    /// The platform had no DMA memory for a queue.
    DmaExhausted,
    /// The device's queue size cannot be used.
    Queue(QueueError),
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

/// Detailed counters, a superset of [`DeviceStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetStats {
    /// Frames handed to the caller.
    pub rx_frames: u64,
    /// Bytes handed to the caller (Ethernet header included).
    pub rx_bytes: u64,
    /// Frames shorter than an Ethernet header.
    pub rx_runt: u64,
    /// Frames that needed more than one slot.
    pub rx_oversize: u64,
    /// Receive notifications sent to the device.
    pub rx_notifies: u64,
    /// Batches of receive slots published.
    pub rx_batches: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes queued for transmission.
    pub tx_bytes: u64,
    /// Transmit requests refused because every slot was in flight.
    pub tx_ring_full: u64,
    /// Frames cut to the slot size because the caller asked for more.
    pub tx_truncated: u64,
    /// Transmit notifications sent to the device.
    pub tx_notifies: u64,
    /// Used entries that named a slot the driver had not posted, or claimed more bytes
    /// than a slot holds, or a used index that ran more than a ring ahead.
    pub device_errors: u64,
}

/// Which slots are currently owned by the device.
#[derive(Debug)]
struct Posted([u64; MAX_QUEUE_SIZE as usize / 64]);

impl Posted {
    fn get(&self, id: u16) -> bool {
        self.0
            .get(usize::from(id / 64))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn set(&mut self, id: u16, on: bool) {
        if let Some(w) = self.0.get_mut(usize::from(id / 64)) {
            if on {
                *w |= 1 << (id % 64);
            } else {
                *w &= !(1 << (id % 64));
            }
        }
    }
}

/// Allocates a queue and its slot block, and points descriptor `i` at slot `i`.
///
/// The slots are not zeroed here: the device writes a receive slot before handing it back
/// and the driver reads only the bytes it wrote, and a transmit slot is zeroed when it is
/// first taken ([`TxQueue::take_slot`]). Zeroing the receive block (2 MiB for 1024
/// entries) was the largest single cost of booting under TCG.
fn build_queue(
    platform: &impl Platform,
    size: u16,
    desc_flags: u16,
) -> Result<(SplitQueue, DmaRegion), Error> {
    let mem = platform
        .dma_alloc(SplitQueue::memory_len(size), 4096)
        .ok_or(Error::DmaExhausted)?;
    let mut ring = SplitQueue::new(mem, size)?;
    let slots = platform
        .dma_alloc(usize::from(size) * SLOT_LEN, 4096)
        .ok_or(Error::DmaExhausted)?;
    for id in 0..size {
        let addr = slots.phys(usize::from(id) * SLOT_LEN);
        ring.set_descriptor(id, addr, SLOT_LEN as u32, desc_flags);
    }
    Ok((ring, slots))
}

#[derive(Debug)]
struct RxQueue {
    ring: SplitQueue,
    slots: DmaRegion,
    posted: Posted,
    hdr_len: usize,
    mrg_rxbuf: bool,
    batch: u16,
    /// Used entries still to discard from a frame that spanned several slots.
    skip: u16,
    frames: u64,
    bytes: u64,
    runt: u64,
    oversize: u64,
    notifies: u64,
    batches: u64,
    device_errors: u64,
}

impl RxQueue {
    /// Takes the next frame the driver can hand up: (slot, frame length).
    fn next_frame(&mut self, transport: &impl Transport) -> Option<(u16, usize)> {
        loop {
            let used = self.ring.pop_used()?;
            let Some(id) = u16::try_from(used.id)
                .ok()
                .filter(|&id| id < self.ring.size() && self.posted.get(id))
            else {
                self.device_errors += 1;
                continue;
            };
            self.posted.set(id, false);
            let len = used.len as usize;
            if self.skip > 0 {
                self.skip -= 1;
                self.recycle(id, transport);
                continue;
            }
            if len > SLOT_LEN {
                self.device_errors += 1;
                self.recycle(id, transport);
                continue;
            }
            // `num_buffers` is read only where the device wrote the whole header (slots are
            // not zeroed before their first use); a shorter entry is a runt, below.
            if self.mrg_rxbuf && len >= self.hdr_len {
                let num_buffers = self.slots.read_u16(usize::from(id) * SLOT_LEN + 10);
                if num_buffers > 1 {
                    self.oversize += 1;
                    self.skip = num_buffers - 1;
                    self.recycle(id, transport);
                    continue;
                }
            }
            if len < self.hdr_len + 14 {
                self.runt += 1;
                self.recycle(id, transport);
                continue;
            }
            let frame_len = len - self.hdr_len;
            self.frames += 1;
            self.bytes += frame_len as u64;
            if let Some(next) = self.ring.peek_used_id() {
                if next < u32::from(self.ring.size()) {
                    self.slots.prefetch(
                        next as usize * SLOT_LEN + self.hdr_len,
                        SLOT_LEN - self.hdr_len,
                    );
                }
            }
            return Some((id, frame_len));
        }
    }

    /// Queues a slot for reposting; publishes when a batch is complete.
    fn recycle(&mut self, id: u16, transport: &impl Transport) {
        self.posted.set(id, true);
        self.ring.push_avail(id);
        if self.ring.unpublished() >= self.batch {
            self.flush(transport);
        }
    }

    /// Publishes every queued slot and notifies the device if it is waiting for buffers.
    fn flush(&mut self, transport: &impl Transport) {
        if self.ring.publish() {
            self.batches += 1;
            if self.ring.device_wants_notification() {
                transport.notify(RX_QUEUE);
                self.notifies += 1;
            }
        }
    }
}

#[derive(Debug)]
struct TxQueue {
    ring: SplitQueue,
    slots: DmaRegion,
    hdr_len: usize,
    free: [u16; MAX_QUEUE_SIZE as usize],
    free_len: usize,
    in_flight: Posted,
    /// Slots zeroed since start-up: a slot is zeroed when first taken, so its header stays
    /// all zero (no offloads) and a frame never goes out with bytes the driver did not set.
    zeroed: Posted,
    batch: u16,
    unkicked: u16,
    frames: u64,
    bytes: u64,
    ring_full: u64,
    truncated: u64,
    notifies: u64,
    device_errors: u64,
}

impl TxQueue {
    /// Returns completed slots to the free stack.
    fn reclaim(&mut self) {
        while let Some(used) = self.ring.pop_used() {
            match u16::try_from(used.id)
                .ok()
                .filter(|&id| id < self.ring.size() && self.in_flight.get(id))
            {
                Some(id) => {
                    self.in_flight.set(id, false);
                    if let Some(slot) = self.free.get_mut(self.free_len) {
                        *slot = id;
                        self.free_len += 1;
                    }
                }
                None => self.device_errors += 1,
            }
        }
    }

    /// Whether a slot is free, reclaiming completed ones if none is.
    fn take_slot(&mut self) -> Option<u16> {
        if self.free_len == 0 {
            self.reclaim();
        }
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        let id = self.free.get(self.free_len).copied()?;
        if !self.zeroed.get(id) {
            self.slots.zero_range(usize::from(id) * SLOT_LEN, SLOT_LEN);
            self.zeroed.set(id, true);
        }
        Some(id)
    }

    fn return_slot(&mut self, id: u16) {
        if let Some(slot) = self.free.get_mut(self.free_len) {
            *slot = id;
            self.free_len += 1;
        }
    }

    /// Makes slot `id` holding a `len`-byte frame visible to the device.
    fn submit(&mut self, id: u16, len: usize, transport: &impl Transport) {
        self.ring
            .set_descriptor_len(id, (self.hdr_len + len) as u32);
        self.in_flight.set(id, true);
        self.ring.push_avail(id);
        self.ring.publish();
        self.frames += 1;
        self.bytes += len as u64;
        self.unkicked += 1;
        if self.unkicked >= self.batch {
            self.kick(transport);
        }
    }

    /// Notifies the device about published frames if it is waiting for them.
    fn kick(&mut self, transport: &impl Transport) {
        if self.unkicked > 0 {
            self.unkicked = 0;
            if self.ring.device_wants_notification() {
                transport.notify(TX_QUEUE);
                self.notifies += 1;
            }
        }
    }
}

/// A poll-mode virtio-net device over transport `T`.
#[derive(Debug)]
pub struct VirtioNet<T: Transport> {
    transport: T,
    rx: RxQueue,
    tx: TxQueue,
    mac: MacAddress,
    features: u64,
}

impl<T: Transport> VirtioNet<T> {
    /// Resets the device, negotiates features, sets up both queues with every receive
    /// slot posted, and starts the device (virtio 1.2, section 3.1.1).
    pub fn new(transport: T, platform: &impl Platform, config: Config) -> Result<Self, Error> {
        let mut transport = transport;
        match Self::bring_up(&mut transport, platform, &config) {
            Ok((rx, tx, mac, features)) => Ok(Self {
                transport,
                rx,
                tx,
                mac,
                features,
            }),
            Err(e) => {
                let s = transport.status();
                transport.set_status(s | status::FAILED);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn bring_up(
        transport: &mut T,
        platform: &impl Platform,
        config: &Config,
    ) -> Result<(RxQueue, TxQueue, MacAddress, u64), Error> {
        transport.reset();
        transport.set_status(status::ACKNOWLEDGE);
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER);

        let offered = transport.device_features();
        let mut wanted = features::NET_MAC | features::NET_STATUS | features::NET_MRG_RXBUF;
        if !transport.is_legacy() {
            if offered & features::VERSION_1 == 0 {
                return Err(Error::NoVersion1);
            }
            wanted |= features::VERSION_1;
        }
        let features = offered & wanted;
        transport.set_driver_features(features);
        let mut st = status::ACKNOWLEDGE | status::DRIVER;
        if !transport.is_legacy() {
            st |= status::FEATURES_OK;
            transport.set_status(st);
            if transport.status() & status::FEATURES_OK == 0 {
                return Err(Error::FeaturesRejected);
            }
        }

        let hdr_len = header_len(features);
        let rx_size = queue_size(transport.max_queue_size(RX_QUEUE), config.max_rx_queue)
            .ok_or(TransportError::QueueUnavailable(RX_QUEUE))?;
        let tx_size = queue_size(transport.max_queue_size(TX_QUEUE), config.max_tx_queue)
            .ok_or(TransportError::QueueUnavailable(TX_QUEUE))?;

        let (ring, slots) = build_queue(platform, rx_size, DESC_F_WRITE)?;
        let mut rx = RxQueue {
            ring,
            slots,
            posted: Posted([0; MAX_QUEUE_SIZE as usize / 64]),
            hdr_len,
            mrg_rxbuf: features & features::NET_MRG_RXBUF != 0,
            batch: config.rx_repost_batch.clamp(1, rx_size),
            skip: 0,
            frames: 0,
            bytes: 0,
            runt: 0,
            oversize: 0,
            notifies: 0,
            batches: 0,
            device_errors: 0,
        };
        for id in 0..rx_size {
            rx.posted.set(id, true);
            rx.ring.push_avail(id);
        }
        rx.ring.publish();
        transport.setup_queue(QueueSetup {
            queue: RX_QUEUE,
            size: rx_size,
            addrs: rx.ring.addresses(),
        })?;

        let (ring, slots) = build_queue(platform, tx_size, 0)?;
        let mut tx = TxQueue {
            ring,
            slots,
            hdr_len,
            free: [0; MAX_QUEUE_SIZE as usize],
            free_len: 0,
            in_flight: Posted([0; MAX_QUEUE_SIZE as usize / 64]),
            zeroed: Posted([0; MAX_QUEUE_SIZE as usize / 64]),
            batch: config.tx_kick_batch.clamp(1, tx_size),
            unkicked: 0,
            frames: 0,
            bytes: 0,
            ring_full: 0,
            truncated: 0,
            notifies: 0,
            device_errors: 0,
        };
        // Pop order 0, 1, 2, ...: keeps the first frames in the first slots.
        for id in (0..tx_size).rev() {
            tx.return_slot(id);
        }
        transport.setup_queue(QueueSetup {
            queue: TX_QUEUE,
            size: tx_size,
            addrs: tx.ring.addresses(),
        })?;

        let mac = if features & features::NET_MAC != 0 {
            read_mac(transport)
        } else {
            config.fallback_mac
        };

        transport.set_status(st | status::DRIVER_OK);
        transport.notify(RX_QUEUE);
        rx.notifies += 1;
        Ok((rx, tx, mac, features))
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport, for diagnostics.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Whether the device reported an error that needs a reset (the driver then stops
    /// seeing traffic; the caller decides whether to rebuild it).
    pub fn needs_reset(&self) -> bool {
        self.transport.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// Detailed counters.
    pub fn driver_stats(&self) -> VirtioNetStats {
        VirtioNetStats {
            rx_frames: self.rx.frames,
            rx_bytes: self.rx.bytes,
            rx_runt: self.rx.runt,
            rx_oversize: self.rx.oversize,
            rx_notifies: self.rx.notifies,
            rx_batches: self.rx.batches,
            tx_frames: self.tx.frames,
            tx_bytes: self.tx.bytes,
            tx_ring_full: self.tx.ring_full,
            tx_truncated: self.tx.truncated,
            tx_notifies: self.tx.notifies,
            device_errors: self.rx.device_errors
                + self.tx.device_errors
                + self.rx.ring.bad_used_index()
                + self.tx.ring.bad_used_index(),
        }
    }
}

/// The largest power of two that is at most both bounds, or `None` if that is zero.
fn queue_size(device_max: u16, config_max: u16) -> Option<u16> {
    let n = device_max.min(config_max).min(MAX_QUEUE_SIZE);
    (n > 0).then(|| 1 << (15 - n.leading_zeros()))
}

/// Reads the MAC address, retrying while the configuration changes underneath.
fn read_mac(transport: &impl Transport) -> MacAddress {
    let mut mac = [0u8; 6];
    for _ in 0..16 {
        let before = transport.config_generation();
        for (i, b) in mac.iter_mut().enumerate() {
            *b = transport.read_config_u8(i);
        }
        if transport.config_generation() == before {
            break;
        }
    }
    MacAddress(mac)
}

/// A received frame lent in its receive slot.
#[derive(Debug)]
pub struct VirtioRxToken<'a, T: Transport> {
    rx: &'a mut RxQueue,
    transport: &'a T,
    id: u16,
    len: usize,
}

impl<T: Transport> RxToken for VirtioRxToken<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let off = usize::from(self.id) * SLOT_LEN + self.rx.hdr_len;
        // SAFETY: slot `id` came back from the device in a used entry and is not reposted
        // until this token is dropped, so the device does not write it meanwhile.
        let frame = unsafe { self.rx.slots.bytes(off, self.len) };
        f(frame)
    }
}

impl<T: Transport> Drop for VirtioRxToken<'_, T> {
    fn drop(&mut self) {
        self.rx.recycle(self.id, self.transport);
    }
}

/// A transmit slot reserved for one frame.
#[derive(Debug)]
pub struct VirtioTxToken<'a, T: Transport> {
    tx: &'a mut TxQueue,
    transport: &'a T,
    id: u16,
    consumed: bool,
}

impl<T: Transport> TxToken for VirtioTxToken<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let max = SLOT_LEN - self.tx.hdr_len;
        if len > max {
            self.tx.truncated += 1;
        }
        let len = len.min(max);
        let id = self.id;
        self.consumed = true;
        let off = usize::from(id) * SLOT_LEN + self.tx.hdr_len;
        // SAFETY: slot `id` is off the free stack and not yet submitted, so the device
        // does not access it while `f` writes.
        let r = f(unsafe { self.tx.slots.bytes_mut(off, len) });
        self.tx.submit(id, len, self.transport);
        r
    }
}

impl<T: Transport> Drop for VirtioTxToken<'_, T> {
    fn drop(&mut self) {
        if !self.consumed {
            self.tx.return_slot(self.id);
        }
    }
}

impl<T: Transport> Device for VirtioNet<T> {
    type RxToken<'a> = VirtioRxToken<'a, T>;
    type TxToken<'a> = VirtioTxToken<'a, T>;

    fn receive(&mut self) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Some(tx_id) = self.tx.take_slot() else {
            // A reply could not be queued: let the device drain before taking frames.
            self.tx.kick(&self.transport);
            return None;
        };
        let Some((id, len)) = self.rx.next_frame(&self.transport) else {
            self.tx.return_slot(tx_id);
            return None;
        };
        let rx = VirtioRxToken {
            rx: &mut self.rx,
            transport: &self.transport,
            id,
            len,
        };
        let tx = VirtioTxToken {
            tx: &mut self.tx,
            transport: &self.transport,
            id: tx_id,
            consumed: false,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self) -> Option<Self::TxToken<'_>> {
        let Some(id) = self.tx.take_slot() else {
            self.tx.ring_full += 1;
            self.tx.kick(&self.transport);
            return None;
        };
        Some(VirtioTxToken {
            tx: &mut self.tx,
            transport: &self.transport,
            id,
            consumed: false,
        })
    }

    fn poll(&mut self) {
        self.rx.flush(&self.transport);
        self.tx.kick(&self.transport);
        self.tx.reclaim();
    }

    fn link_state(&mut self) -> LinkState {
        // Without NET_STATUS the device reports no link state: take it as up.
        LinkState::from(
            self.features & features::NET_STATUS == 0 || self.transport.read_config_u16(6) & 1 != 0,
        )
    }

    fn stats(&self) -> DeviceStats {
        DeviceStats {
            rx_frames: self.rx.frames,
            tx_frames: self.tx.frames,
            rx_dropped: self.rx.runt + self.rx.oversize,
            tx_ring_full: self.tx.ring_full,
        }
    }

    fn hardware_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            usize::from(self.rx.ring.size()),
            usize::from(self.tx.ring.size()),
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::queue::model::RingModel;
    use crate::queue::QueueAddresses;
    use core::cell::Cell;
    use netoops_driver_platform::host::HostPlatform;
    use std::vec::Vec;

    /// Register state of a virtio-net device; the rings themselves are driven by
    /// [`RingModel`], the device side of the split-ring protocol.
    #[derive(Debug)]
    struct ModelTransport {
        offered: u64,
        accepted: u64,
        legacy: bool,
        reject_features: bool,
        status: u8,
        max: [u16; 2],
        queues: [Option<(u16, QueueAddresses)>; 2],
        notifies: [Cell<u32>; 2],
        mac: [u8; 6],
        link: u16,
    }

    impl ModelTransport {
        fn modern() -> Self {
            Self {
                offered: features::VERSION_1
                    | features::NET_MAC
                    | features::NET_STATUS
                    | features::NET_MRG_RXBUF
                    | 1, // CSUM: offered, must not be accepted
                accepted: 0,
                legacy: false,
                reject_features: false,
                status: 0,
                max: [256, 256],
                queues: [None; 2],
                notifies: [Cell::new(0), Cell::new(0)],
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                link: 1,
            }
        }

        /// A modern device whose receive and transmit queues hold at most `max` entries.
        fn with_queue_max(max: [u16; 2]) -> Self {
            Self {
                max,
                ..Self::modern()
            }
        }

        fn ring(&self, q: usize) -> RingModel {
            let (size, addrs) = self.queues[q].unwrap();
            RingModel::new(addrs, size)
        }

        fn notified(&self, q: usize) -> u32 {
            self.notifies[q].get()
        }
    }

    impl Transport for ModelTransport {
        fn reset(&mut self) {
            self.status = 0;
            self.queues = [None; 2];
        }
        fn status(&self) -> u8 {
            self.status
        }
        fn set_status(&mut self, status: u8) {
            self.status = if self.reject_features {
                status & !status::FEATURES_OK
            } else {
                status
            };
        }
        fn device_features(&mut self) -> u64 {
            self.offered
        }
        fn set_driver_features(&mut self, features: u64) {
            self.accepted = features;
        }
        fn max_queue_size(&mut self, queue: u16) -> u16 {
            self.max.get(usize::from(queue)).copied().unwrap_or(0)
        }
        fn setup_queue(&mut self, setup: QueueSetup) -> Result<(), TransportError> {
            let QueueSetup { queue, size, addrs } = setup;
            assert!(size <= self.max[usize::from(queue)]);
            assert_eq!(
                self.status & status::DRIVER_OK,
                0,
                "queues before DRIVER_OK"
            );
            self.queues[usize::from(queue)] = Some((size, addrs));
            Ok(())
        }
        fn notify(&self, queue: u16) {
            let c = &self.notifies[usize::from(queue)];
            c.set(c.get() + 1);
        }
        fn config_generation(&self) -> u32 {
            0
        }
        fn read_config_u8(&self, offset: usize) -> u8 {
            self.mac.get(offset).copied().unwrap_or(0)
        }
        fn read_config_u16(&self, offset: usize) -> u16 {
            if offset == 6 {
                self.link
            } else {
                0
            }
        }
        fn is_legacy(&self) -> bool {
            self.legacy
        }
    }

    fn config(batch: u16) -> Config {
        Config {
            rx_repost_batch: batch,
            tx_kick_batch: batch,
            ..Config::default()
        }
    }

    fn up(t: ModelTransport, batch: u16) -> VirtioNet<ModelTransport> {
        VirtioNet::new(t, &HostPlatform, config(batch)).unwrap()
    }

    fn frame(n: usize, tag: u8) -> Vec<u8> {
        (0..n).map(|i| tag ^ i as u8).collect()
    }

    /// Device side: fills the next posted receive buffer with a header and `frame`.
    fn deliver(rx: &mut RingModel, frame: &[u8], num_buffers: u16) -> u16 {
        let (id, desc) = rx.pop_avail().expect("a posted buffer");
        assert_eq!(desc.flags, DESC_F_WRITE);
        let mut hdr = [0u8; 12];
        hdr[10..].copy_from_slice(&num_buffers.to_le_bytes());
        RingModel::write_buffer(desc.addr, &hdr);
        RingModel::write_buffer(desc.addr + 12, frame);
        rx.push_used(u32::from(id), (12 + frame.len()) as u32);
        id
    }

    #[test]
    fn brings_the_device_up_with_every_slot_posted() {
        let net = up(ModelTransport::modern(), 32);
        let t = net.transport();
        assert_eq!(
            t.accepted,
            features::VERSION_1
                | features::NET_MAC
                | features::NET_STATUS
                | features::NET_MRG_RXBUF
        );
        assert_eq!(
            t.status,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert_eq!(t.ring(0).avail_pending(), 256);
        assert_eq!(t.ring(1).avail_pending(), 0);
        assert_eq!(t.notified(0), 1);
        assert_eq!(
            net.hardware_address(),
            MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        let caps = net.capabilities();
        assert_eq!((caps.rx_ring_len, caps.tx_ring_len), (256, 256));
    }

    #[test]
    fn queue_size_is_the_device_maximum_capped_to_a_power_of_two() {
        assert_eq!(queue_size(256, 1024), Some(256));
        assert_eq!(queue_size(1024, 1024), Some(1024));
        assert_eq!(queue_size(32768, 4096), Some(1024));
        assert_eq!(queue_size(384, 1024), Some(256));
        assert_eq!(queue_size(1000, 512), Some(512));
        assert_eq!(queue_size(0, 512), None);
        let net = up(ModelTransport::with_queue_max([1024, 300]), 32);
        let caps = net.capabilities();
        assert_eq!((caps.rx_ring_len, caps.tx_ring_len), (1024, 256));
    }

    #[test]
    fn receive_lends_the_frame_in_its_dma_slot() {
        let mut net = up(ModelTransport::modern(), 32);
        let mut rx = net.transport().ring(0);
        let sent = frame(1400, 0x5a);
        deliver(&mut rx, &sent, 1);
        let (tok, reply) = net.receive().expect("a frame");
        let (ptr, data) = tok.consume(|f| (f.as_ptr() as u64, f.to_vec()));
        drop(reply);
        assert_eq!(data, sent);
        // In place: the slice is the device's buffer, 12 header bytes in.
        let slot = RingModel::read_buffer(ptr - 12, 12);
        assert_eq!(slot[10], 1, "num_buffers of the header the device wrote");
        assert!(net.receive().is_none());
        let s = net.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (1, 0));
        assert_eq!(net.driver_stats().rx_bytes, 1400);
    }

    #[test]
    fn slots_are_reposted_in_batches_with_one_notification_each() {
        let mut net = up(ModelTransport::with_queue_max([64, 64]), 16);
        let mut rx = net.transport().ring(0);
        for i in 0..64 {
            deliver(&mut rx, &frame(100, i as u8), 1);
        }
        assert_eq!(rx.avail_pending(), 0, "device has used every buffer");
        let start = net.transport().notified(0);
        for i in 0..15 {
            let (tok, _) = net.receive().unwrap();
            assert_eq!(tok.consume(|f| f[0]), i as u8);
        }
        assert_eq!(rx.avail_pending(), 0, "15 < batch: nothing published yet");
        let (tok, _) = net.receive().unwrap();
        drop(tok); // dropping unconsumed also returns the slot
        assert_eq!(rx.avail_pending(), 16);
        assert_eq!(net.transport().notified(0), start + 1);

        // While the device is busy (NO_NOTIFY) batches are published without a kick.
        rx.set_no_notify(true);
        for _ in 0..16 {
            net.receive().unwrap();
        }
        assert_eq!(rx.avail_pending(), 32);
        assert_eq!(net.transport().notified(0), start + 1);

        // poll() publishes a partial batch.
        rx.set_no_notify(false);
        for _ in 0..5 {
            net.receive().unwrap();
        }
        assert_eq!(rx.avail_pending(), 32);
        net.poll();
        assert_eq!(rx.avail_pending(), 37);
        assert_eq!(net.transport().notified(0), start + 2);
        net.poll();
        assert_eq!(
            net.transport().notified(0),
            start + 2,
            "nothing new, no kick"
        );
        assert_eq!(net.driver_stats().rx_batches, 3);
    }

    #[test]
    fn transmit_writes_behind_a_zero_header_and_kicks_on_poll() {
        let mut net = up(ModelTransport::modern(), 32);
        let mut txr = net.transport().ring(1);
        let sent = frame(60, 0x33);
        let tok = net.transmit().unwrap();
        let n = tok.consume(60, |buf| {
            buf.copy_from_slice(&sent);
            buf.len()
        });
        assert_eq!(n, 60);
        assert_eq!(txr.avail_pending(), 1, "published at once");
        assert_eq!(net.transport().notified(1), 0, "kick waits for poll");
        net.poll();
        assert_eq!(net.transport().notified(1), 1);
        let (id, desc) = txr.pop_avail().unwrap();
        assert_eq!(desc.len, 72);
        assert_eq!(desc.flags, 0, "device-readable");
        let bytes = RingModel::read_buffer(desc.addr, 72);
        assert_eq!(&bytes[..12], &[0; 12]);
        assert_eq!(&bytes[12..], &sent[..]);
        txr.push_used(u32::from(id), 0);
        net.poll();
        assert_eq!(net.stats().tx_frames, 1);
    }

    #[test]
    fn a_full_transmit_ring_refuses_and_counts_then_recovers() {
        let mut net = up(ModelTransport::with_queue_max([8, 4]), 32);
        let mut txr = net.transport().ring(1);
        // An unconsumed token gives its slot back.
        drop(net.transmit().unwrap());
        for i in 0..4u8 {
            net.transmit().unwrap().consume(20, |b| b.fill(i));
        }
        assert!(net.transmit().is_none());
        assert_eq!(net.stats().tx_ring_full, 1);
        assert_eq!(
            net.transport().notified(1),
            1,
            "a full ring kicks the device"
        );

        // With TX full, receive leaves frames in the ring rather than lose a reply slot.
        let mut rx = net.transport().ring(0);
        deliver(&mut rx, &frame(64, 1), 1);
        assert!(net.receive().is_none());

        while let Some((id, _)) = txr.pop_avail() {
            txr.push_used(u32::from(id), 0);
        }
        let (tok, reply) = net.receive().expect("the frame was kept");
        assert_eq!(tok.consume(|f| f.len()), 64);
        reply.consume(64, |b| b.fill(9));
        assert_eq!(txr.avail_pending(), 1);
        assert_eq!(net.stats().tx_frames, 5);
    }

    /// DMA memory that starts full of 0xaa, as reused memory on a real machine may: the
    /// driver no longer zeroes its slots at start-up.
    struct DirtyPlatform;

    // SAFETY: as `HostPlatform`, whose memory this is, only filled with 0xaa first.
    unsafe impl Platform for DirtyPlatform {
        fn dma_alloc(&self, size: usize, align: usize) -> Option<DmaRegion> {
            let mut r = HostPlatform.dma_alloc(size, align)?;
            // SAFETY: fresh memory no device was given yet.
            unsafe { r.bytes_mut(0, size) }.fill(0xaa);
            Some(r)
        }
        fn map_mmio(&self, _phys: u64, _len: usize) -> Option<netoops_driver_platform::MmioRegion> {
            None
        }
    }

    #[test]
    fn slots_in_dirty_memory_send_zero_headers_and_a_short_entry_is_a_runt() {
        let mut net = VirtioNet::new(ModelTransport::modern(), &DirtyPlatform, config(32)).unwrap();
        let mut txr = net.transport().ring(1);
        let mut rx = net.transport().ring(0);
        net.transmit().unwrap().consume(20, |b| b.fill(7));
        net.poll();
        let (_, desc) = txr.pop_avail().unwrap();
        let bytes = RingModel::read_buffer(desc.addr, 32);
        assert_eq!(
            &bytes[..12],
            &[0; 12],
            "header zeroed on the slot's first use"
        );
        assert_eq!(&bytes[12..], &[7; 20]);
        // An entry shorter than the header: its `num_buffers` (0xaaaa in the dirty slot) was
        // never written, so it must not make the driver skip the frames after it.
        let (id, desc) = rx.pop_avail().unwrap();
        RingModel::write_buffer(desc.addr, &[0; 4]);
        rx.push_used(u32::from(id), 4);
        let sent = frame(100, 0x11);
        deliver(&mut rx, &sent, 1);
        let (tok, reply) = net.receive().expect("the frame after the runt");
        assert_eq!(tok.consume(|f| f.to_vec()), sent);
        drop(reply);
        assert_eq!(net.driver_stats().rx_runt, 1);
        assert_eq!(net.driver_stats().rx_oversize, 0);
    }

    #[test]
    fn oversized_transmit_is_cut_to_the_slot_and_counted() {
        let mut net = up(ModelTransport::modern(), 32);
        let len = net.transmit().unwrap().consume(5000, |b| b.len());
        assert_eq!(len, SLOT_LEN - 12);
        assert_eq!(net.driver_stats().tx_truncated, 1);
    }

    #[test]
    fn bad_device_input_is_counted_not_trusted() {
        let mut net = up(ModelTransport::with_queue_max([16, 16]), 4);
        let mut rx = net.transport().ring(0);

        // A runt, then a frame split over three buffers, then a good frame.
        deliver(&mut rx, &frame(10, 0), 1);
        deliver(&mut rx, &frame(2000, 0), 3);
        deliver(&mut rx, &frame(100, 0), 1);
        deliver(&mut rx, &frame(100, 0), 1);
        deliver(&mut rx, &frame(100, 7), 1);
        // Slot ids outside the ring, and a length past the slot.
        rx.push_used(999, 100);
        rx.push_used(16, 100);
        let (nid, _) = rx.pop_avail().unwrap();
        rx.push_used(u32::from(nid), 5000);

        let (tok, _) = net.receive().unwrap();
        assert_eq!(tok.consume(|f| f[0]), 7);
        assert!(net.receive().is_none());
        let s = net.driver_stats();
        assert_eq!((s.rx_runt, s.rx_oversize, s.device_errors), (1, 1, 3));
        assert_eq!(net.stats().rx_dropped, 2);
        assert_eq!(net.stats().rx_frames, 1);
        // Every good slot went back: the device can fill the whole ring again.
        net.poll();
        assert_eq!(rx.avail_pending(), 16);
    }

    #[test]
    fn a_device_that_rejects_features_is_failed() {
        let mut t = ModelTransport::modern();
        t.reject_features = true;
        let err = VirtioNet::new(t, &HostPlatform, Config::default()).unwrap_err();
        assert_eq!(err, Error::FeaturesRejected);

        let mut t = ModelTransport::modern();
        t.offered &= !features::VERSION_1;
        let err = VirtioNet::new(t, &HostPlatform, Config::default()).unwrap_err();
        assert_eq!(err, Error::NoVersion1);

        let t = ModelTransport::with_queue_max([0, 256]);
        let err = VirtioNet::new(t, &HostPlatform, Config::default()).unwrap_err();
        assert_eq!(err, Error::Transport(TransportError::QueueUnavailable(0)));
    }

    #[test]
    fn legacy_devices_skip_features_ok_and_size_the_header_by_features() {
        let mut t = ModelTransport::modern();
        t.legacy = true;
        t.offered = features::NET_MAC; // no MRG_RXBUF: 10-byte header
        t.mac = [0; 6];
        let mut net = up(t, 1);
        assert_eq!(net.transport().status & status::FEATURES_OK, 0);
        assert_eq!(header_len(net.features()), 10);
        let mut rx = net.transport().ring(0);
        let (id, desc) = rx.pop_avail().unwrap();
        let mut buf = std::vec![0u8; 10];
        buf.extend(frame(50, 3));
        RingModel::write_buffer(desc.addr, &buf);
        rx.push_used(u32::from(id), 60);
        let (tok, _) = net.receive().unwrap();
        assert_eq!(tok.consume(|f| f.to_vec()), frame(50, 3));
        assert_eq!(header_len(features::NET_MRG_RXBUF), 12);
    }

    #[test]
    fn link_state_follows_the_status_field() {
        let mut t = ModelTransport::modern();
        t.link = 0;
        let mut net = up(t, 32);
        assert_eq!(net.link_state(), LinkState::Down);
        let mut t = ModelTransport::modern();
        t.offered &= !features::NET_STATUS;
        t.link = 0;
        let mut net = up(t, 32);
        assert_eq!(
            net.link_state(),
            LinkState::Up,
            "no status field: assume up"
        );
    }
}
