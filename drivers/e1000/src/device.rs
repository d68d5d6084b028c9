//! The device: bring-up, counters, and the [`netoops_nic::Device`] implementation.
//!
//! Bring-up follows the initialization outline of the 8254x SDM (section 14) and the 82574
//! datasheet, minus everything interrupts need:
//!
//! 1. Mask every interrupt (IMC = all ones), stop receive and transmit; on the 82574 also
//!    stop bus mastering (CTRL.GIO_MASTER_DISABLE) and wait for STATUS to confirm.
//! 2. Global reset (CTRL.RST), wait for the bit to clear, mask interrupts again and clear
//!    ICR.
//! 3. Link: CTRL.SLU and ASDE set; link reset, PHY reset, forced speed/duplex, inverted
//!    loss-of-signal and VLAN mode cleared. The PHY auto-negotiates; STATUS.LU reports it.
//!    Flow control registers zero (flow control unused).
//! 4. MAC address: RAL0/RAH0 when the device loaded them from its EEPROM (Address Valid set
//!    and the address a unicast one), else EEPROM words 0..3 through EERD, else the
//!    configured fallback; then written back to RAL0/RAH0 with Address Valid.
//! 5. Receive: multicast table cleared, checksum offload off (RXCSUM = 0; on the 82574
//!    RFCTL = 0 too, which keeps legacy descriptors), ring registers, RDH = 0 and RDT = all
//!    but one descriptor, interrupt delay timers zero, then RCTL: enable, accept broadcast,
//!    2048-byte buffers, strip CRC.
//! 6. Transmit: ring registers, TDH = TDT = 0, TIPG on the 82540EM, then TCTL: enable, pad
//!    short frames, collision threshold 15, collision distance 64 (full duplex).
//!
//! The few waits (reset, EEPROM reads, bus-master quiesce) use the caller's clock when
//! [`Config::clock`] has one and otherwise count register reads, one per microsecond of
//! budget (a read from a PCI device takes about that long on hardware and returns at once
//! under emulation). Every wait is bounded: a dead device yields [`Error::ResetTimeout`] or
//! a fallback MAC address, never a hang.

use crate::regs::{self, ctrl, eerd, rctl, status, tctl, Registers};
use crate::ring::{
    check_ring_len, RingError, RxCounters, RxFrame, RxRing, TxCounters, TxRing, TxSlot,
};
use crate::Model;
use core::cell::Cell;
use netoops_driver_platform::{memory_bar_base, MmioRegion, PciConfig, Platform};
use netoops_nic::{Capabilities, Device, DeviceStats, LinkState, MacAddress, RxToken, TxToken};

/// Shortest time between two reads of the statistics registers by [`Device::stats`] when
/// the driver has a clock ([`Config::clock`]). Callers may ask every poll (the kernel's
/// stack adapter publishes after every receive burst), and each read is an uncached
/// register access: a bus round trip on hardware, a VM exit or a trip through the device
/// lock under QEMU. Between reads `stats` reports the ring counters, which are always
/// current, with the device's drop counters as last read.
pub const STATS_REFRESH_US: u64 = 100_000;
/// Microseconds the 82574 gets to finish bus-master requests before the reset.
const GIO_QUIESCE_US: u64 = 10_000;
/// Microseconds to leave the device alone after setting CTRL.RST (only with a clock).
const RESET_SETTLE_US: u64 = 1_000;
/// Microseconds for CTRL.RST to clear.
const RESET_TIMEOUT_US: u64 = 100_000;
/// Microseconds for one EEPROM word.
const EERD_TIMEOUT_US: u64 = 10_000;

/// PCI command register bits set at bring-up: memory space, bus master, INTx disable (the
/// driver never uses interrupts, so the line must not be asserted either).
const PCI_COMMAND_ENABLE: u16 = (1 << 1) | (1 << 2) | (1 << 10);

/// Driver settings.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Receive descriptors: a multiple of 8 from 8 to 4096.
    pub rx_ring_len: u16,
    /// Transmit descriptors: a multiple of 8 from 8 to 4096.
    pub tx_ring_len: u16,
    /// Receive descriptors handed back before the tail moves without waiting for
    /// [`Device::poll`].
    pub rx_repost_batch: u16,
    /// Queued frames that move the transmit tail without waiting for [`Device::poll`].
    pub tx_kick_batch: u16,
    /// Address to use when neither the receive address registers nor the EEPROM hold one.
    pub fallback_mac: MacAddress,
    /// Monotonic microseconds, for the bounded waits at bring-up; `None` counts register
    /// reads instead.
    pub clock: Option<fn() -> u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rx_ring_len: 256,
            tx_ring_len: 256,
            rx_repost_batch: 32,
            tx_kick_batch: 32,
            fallback_mac: MacAddress([0x02, 0, 0, 0, 0, 0x01]),
            clock: None,
        }
    }
}

impl Config {
    /// The defaults with a clock for the bring-up waits.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }
}

/// Why the device could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not an 82540EM or 82574L.
    Unsupported {
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
    },
    /// BAR0 is not an assigned memory BAR.
    BarUnusable,
    /// The platform could not map the register window.
    MapFailed,
    /// CTRL.RST did not clear: the device is absent or wedged.
    ResetTimeout,
    /// A ring length the driver does not accept.
    RingLength(u16),
    /// The platform had no DMA memory for a ring.
    DmaExhausted,
}

impl From<RingError> for Error {
    fn from(e: RingError) -> Self {
        match e {
            RingError::BadLength(n) => Self::RingLength(n),
            RingError::DmaExhausted => Self::DmaExhausted,
        }
    }
}

/// Where the MAC address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacSource {
    /// RAL0/RAH0 as the device loaded them from its EEPROM at reset.
    ReceiveAddress,
    /// EEPROM words 0..3, read through EERD.
    Eeprom,
    /// [`Config::fallback_mac`].
    Fallback,
}

/// Link details from STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// STATUS.LU.
    pub up: bool,
    /// 10, 100 or 1000.
    pub speed_mbps: u16,
    /// STATUS.FD.
    pub full_duplex: bool,
}

/// Counters the device keeps (its statistics registers, accumulated here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// MPC: frames the device dropped for lack of FIFO space or descriptors.
    pub missed: u64,
    /// RNBC: times the device found no free receive descriptor.
    pub no_buffer: u64,
    /// ROC: frames over 1522 bytes the device dropped.
    pub oversize: u64,
}

/// Detailed counters, a superset of [`DeviceStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E1000Stats {
    /// Receive ring.
    pub rx: RxCounters,
    /// Transmit ring.
    pub tx: TxCounters,
    /// The device's own drop counters.
    pub device: DeviceCounters,
}

/// Where both rings stand (see [`E1000::ring_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingState {
    /// Receive head (device).
    pub rdh: u32,
    /// Receive tail (last written by the driver).
    pub rdt: u32,
    /// Transmit head (device).
    pub tdh: u32,
    /// Transmit tail (last written by the driver).
    pub tdt: u32,
    /// Next receive descriptor the driver looks at.
    pub rx_next: u16,
    /// Its status dword (status, errors, special).
    pub rx_next_status: u32,
}

/// Bounded waits, on a clock or counted in polls.
#[derive(Clone, Copy, Debug)]
struct Waits {
    clock: Option<fn() -> u64>,
}

impl Waits {
    /// Polls `done` until it holds or `timeout_us` passed; returns its last answer.
    fn until(self, timeout_us: u64, mut done: impl FnMut() -> bool) -> bool {
        match self.clock {
            Some(now) => {
                let end = now().saturating_add(timeout_us);
                while now() < end {
                    if done() {
                        return true;
                    }
                    core::hint::spin_loop();
                }
            }
            None => {
                for _ in 0..timeout_us {
                    if done() {
                        return true;
                    }
                    core::hint::spin_loop();
                }
            }
        }
        done()
    }

    /// Waits `us` microseconds without touching the device; without a clock, does nothing
    /// (the polls that follow pace themselves).
    fn delay(self, us: u64) {
        if let Some(now) = self.clock {
            let end = now().saturating_add(us);
            while now() < end {
                core::hint::spin_loop();
            }
        }
    }
}

/// A poll-mode Intel 82540EM / 82574L over register access `R`.
#[derive(Debug)]
pub struct E1000<R: Registers = MmioRegion> {
    regs: R,
    model: Model,
    rx: RxRing,
    tx: TxRing,
    mac: MacAddress,
    mac_source: MacSource,
    waits: Waits,
    device: Cell<StatCounters>,
    /// The device counters as last read, and when (clock time; `None` before the first).
    device_last: Cell<(DeviceCounters, Option<u64>)>,
}

impl E1000<MmioRegion> {
    /// Brings up the PCI function `pci` with the default [`Config`].
    pub fn new(pci: &impl PciConfig, platform: &impl Platform) -> Result<Self, Error> {
        Self::with_config(pci, platform, Config::default())
    }

    /// Brings up the PCI function `pci`: checks its ids, maps BAR0, enables memory decoding
    /// and bus mastering (INTx off), then [`E1000::from_registers`].
    pub fn with_config(
        pci: &impl PciConfig,
        platform: &impl Platform,
        config: Config,
    ) -> Result<Self, Error> {
        let id = pci.read_u32(0);
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        let model =
            crate::is_supported(vendor, device).ok_or(Error::Unsupported { vendor, device })?;
        let base = memory_bar_base(pci, 0).ok_or(Error::BarUnusable)?;
        // The upper half of the dword is the status register, whose bits clear on a
        // written 1: write zeros there.
        let command = pci.read_u16(0x04) | PCI_COMMAND_ENABLE;
        pci.write_u32(0x04, u32::from(command));
        let regs = platform
            .map_mmio(base, regs::WINDOW_LEN)
            .ok_or(Error::MapFailed)?;
        Self::from_registers(model, regs, platform, config)
    }
}

impl<R: Registers> E1000<R> {
    /// Resets and programs a device of `model` reached through `regs`, allocating both rings
    /// from `platform`; on success the receiver and transmitter run.
    pub fn from_registers(
        model: Model,
        regs: R,
        platform: &impl Platform,
        config: Config,
    ) -> Result<Self, Error> {
        check_ring_len(config.rx_ring_len)?;
        check_ring_len(config.tx_ring_len)?;
        let waits = Waits {
            clock: config.clock,
        };
        reset(&regs, model, waits)?;

        let c = regs.read(regs::CTRL);
        let clear = ctrl::LRST
            | ctrl::PHY_RST
            | ctrl::ILOS
            | ctrl::VME
            | ctrl::FRCSPD
            | ctrl::FRCDPLX
            | ctrl::GIO_MASTER_DISABLE;
        regs.write(regs::CTRL, (c | ctrl::SLU | ctrl::ASDE) & !clear);
        for r in [regs::FCAL, regs::FCAH, regs::FCT, regs::FCTTV] {
            regs.write(r, 0);
        }

        let (mac, mac_source) = choose_mac(&regs, model, waits, config.fallback_mac);
        let m = mac.0;
        // RAL before RAH, so the entry is complete when Address Valid turns on.
        regs.write(regs::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        regs.write(
            regs::RAH0,
            u32::from(u16::from_le_bytes([m[4], m[5]])) | regs::RAH_AV,
        );

        for i in 0..regs::MTA_LEN {
            regs.write(regs::MTA + 4 * i, 0);
        }
        regs.write(regs::RXCSUM, 0);
        if model == Model::I82574L {
            regs.write(regs::RFCTL_82574, 0);
        }

        let rx = RxRing::new(platform, config.rx_ring_len, config.rx_repost_batch)?;
        let tx = TxRing::new(platform, config.tx_ring_len, config.tx_kick_batch)?;

        regs.write(regs::RDBAL, rx.blocks().base() as u32);
        regs.write(regs::RDBAH, (rx.blocks().base() >> 32) as u32);
        regs.write(regs::RDLEN, rx.blocks().bytes());
        regs.write(regs::RDH, 0);
        regs.write(regs::RDT, u32::from(rx.tail()));
        regs.write(regs::RDTR, 0);
        regs.write(regs::RADV, 0);
        regs.write(
            regs::RCTL,
            rctl::EN | rctl::BAM | rctl::BSIZE_2048 | rctl::SECRC,
        );

        regs.write(regs::TDBAL, tx.blocks().base() as u32);
        regs.write(regs::TDBAH, (tx.blocks().base() >> 32) as u32);
        regs.write(regs::TDLEN, tx.blocks().bytes());
        regs.write(regs::TDH, 0);
        regs.write(regs::TDT, 0);
        if model == Model::I82540Em {
            regs.write(regs::TIPG, regs::TIPG_82540_COPPER);
        }
        regs.write(
            regs::TCTL,
            tctl::EN | tctl::PSP | (0x0f << tctl::CT_SHIFT) | (0x40 << tctl::COLD_SHIFT),
        );

        Ok(Self {
            regs,
            model,
            rx,
            tx,
            mac,
            mac_source,
            waits,
            device: Cell::new(StatCounters::default()),
            device_last: Cell::new((DeviceCounters::default(), None)),
        })
    }

    /// Which part this is.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Where the MAC address came from.
    pub fn mac_source(&self) -> MacSource {
        self.mac_source
    }

    /// The register access, for diagnostics and tests.
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// Reads the MAC address from the EEPROM through EERD (a diagnostic: bring-up prefers
    /// RAL0/RAH0). `None` if a word read does not complete.
    pub fn eeprom_mac(&self) -> Option<MacAddress> {
        eeprom_mac(&self.regs, self.model, self.waits)
    }

    /// Link state, speed and duplex from STATUS.
    pub fn link_status(&self) -> LinkStatus {
        let s = self.regs.read(regs::STATUS);
        LinkStatus {
            up: s & status::LU != 0,
            speed_mbps: match (s >> status::SPEED_SHIFT) & 3 {
                0 => 10,
                1 => 100,
                _ => 1000,
            },
            full_duplex: s & status::FD != 0,
        }
    }

    /// Ring positions for diagnostics: the device's RDH/RDT/TDH/TDT and the receive
    /// ring's next descriptor with its status dword.
    pub fn ring_state(&self) -> RingState {
        let (rx_next, rx_next_status) = self.rx.position();
        RingState {
            rdh: self.regs.read(regs::RDH),
            rdt: self.regs.read(regs::RDT),
            tdh: self.regs.read(regs::TDH),
            tdt: self.regs.read(regs::TDT),
            rx_next,
            rx_next_status,
        }
    }

    /// Detailed counters; reads (and so clears) the device's count registers.
    pub fn driver_stats(&self) -> E1000Stats {
        E1000Stats {
            rx: self.rx.counters(),
            tx: self.tx.counters(),
            device: self.device_counters(),
        }
    }

    fn device_counters(&self) -> DeviceCounters {
        let mut c = self.device.get();
        let [mpc, rnbc, roc] = &mut c.0;
        let d = DeviceCounters {
            missed: mpc.sample(&self.regs, regs::MPC),
            no_buffer: rnbc.sample(&self.regs, regs::RNBC),
            oversize: roc.sample(&self.regs, regs::ROC),
        };
        self.device.set(c);
        let at = self.waits.clock.map(|now| now());
        self.device_last.set((d, at));
        d
    }

    /// The device counters for [`Device::stats`]: read again only when
    /// [`STATS_REFRESH_US`] passed since the last read (always, without a clock).
    fn device_counters_recent(&self) -> DeviceCounters {
        let (last, at) = self.device_last.get();
        match (self.waits.clock, at) {
            (Some(now), Some(at)) if now().saturating_sub(at) < STATS_REFRESH_US => last,
            _ => self.device_counters(),
        }
    }
}

/// How a statistics register counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum CountMode {
    /// Not known until the register first reads non-zero.
    #[default]
    Unknown,
    /// Each read returns the events since the previous read (the manuals' definition).
    ClearOnRead,
    /// The register keeps counting across reads (QEMU's 82540EM model).
    Cumulative,
}

/// One of the device's statistics registers, accumulated into 64 bits.
///
/// The manuals define these registers as cleared by a read; QEMU's 82540EM model keeps
/// counting instead and ignores writes. So the first time a register reads non-zero it is
/// read again at once: a clearing register then shows only what happened in between (far
/// less than the first value, normally nothing), a cumulative one at least the first value.
/// The mode found sticks. Misjudging needs a clearing register to count as many events in
/// the microsecond between the two reads as in the whole time before; the cost would be
/// undercounting by the last value per read.
#[derive(Clone, Copy, Debug, Default)]
struct StatCounter {
    mode: CountMode,
    last_raw: u32,
    total: u64,
}

impl StatCounter {
    fn sample(&mut self, regs: &impl Registers, offset: u32) -> u64 {
        let raw = regs.read(offset);
        match self.mode {
            CountMode::ClearOnRead => self.total += u64::from(raw),
            CountMode::Cumulative => {
                // Counters saturate rather than wrap; a smaller value means it was reset.
                let delta = raw.checked_sub(self.last_raw).unwrap_or(raw);
                self.total += u64::from(delta);
                self.last_raw = raw;
            }
            CountMode::Unknown if raw != 0 => {
                let again = regs.read(offset);
                if again >= raw {
                    self.mode = CountMode::Cumulative;
                    self.last_raw = again;
                    self.total += u64::from(again);
                } else {
                    self.mode = CountMode::ClearOnRead;
                    self.total += u64::from(raw) + u64::from(again);
                }
            }
            CountMode::Unknown => {}
        }
        self.total
    }
}

/// MPC, RNBC and ROC.
#[derive(Clone, Copy, Debug, Default)]
struct StatCounters([StatCounter; 3]);

/// Steps 1 and 2 of bring-up: quiesce and reset.
fn reset(regs: &impl Registers, model: Model, waits: Waits) -> Result<(), Error> {
    regs.write(regs::IMC, u32::MAX);
    regs.write(regs::RCTL, 0);
    regs.write(regs::TCTL, tctl::PSP);
    // Reading a register pushes the posted writes out before the next step.
    let _ = regs.read(regs::STATUS);
    if model == Model::I82574L {
        regs.write(regs::CTRL, regs.read(regs::CTRL) | ctrl::GIO_MASTER_DISABLE);
        // Outstanding requests finish first; if they do not, the reset ends them anyway.
        let _ = waits.until(GIO_QUIESCE_US, || {
            regs.read(regs::STATUS) & status::GIO_MASTER_ENABLE == 0
        });
    }
    regs.write(regs::CTRL, regs.read(regs::CTRL) | ctrl::RST);
    waits.delay(RESET_SETTLE_US);
    if !waits.until(RESET_TIMEOUT_US, || regs.read(regs::CTRL) & ctrl::RST == 0) {
        return Err(Error::ResetTimeout);
    }
    regs.write(regs::IMC, u32::MAX);
    let _ = regs.read(regs::ICR);
    Ok(())
}

/// A unicast address that is neither all zeros nor all ones.
fn is_usable(mac: [u8; 6]) -> bool {
    mac != [0; 6] && mac != [0xff; 6] && mac[0] & 1 == 0
}

fn choose_mac(
    regs: &impl Registers,
    model: Model,
    waits: Waits,
    fallback: MacAddress,
) -> (MacAddress, MacSource) {
    let (ral, rah) = (regs.read(regs::RAL0), regs.read(regs::RAH0));
    if rah & regs::RAH_AV != 0 {
        let [a, b, c, d] = ral.to_le_bytes();
        let [e, f, _, _] = rah.to_le_bytes();
        let mac = [a, b, c, d, e, f];
        if is_usable(mac) {
            return (MacAddress(mac), MacSource::ReceiveAddress);
        }
    }
    match eeprom_mac(regs, model, waits) {
        Some(mac) if is_usable(mac.0) => (mac, MacSource::Eeprom),
        _ => (fallback, MacSource::Fallback),
    }
}

/// EEPROM words 0..3 hold the address, low byte first.
fn eeprom_mac(regs: &impl Registers, model: Model, waits: Waits) -> Option<MacAddress> {
    let mut mac = [0u8; 6];
    for (word, pair) in mac.chunks_exact_mut(2).enumerate() {
        let w = read_eeprom_word(regs, model, waits, word as u32)?;
        pair.copy_from_slice(&w.to_le_bytes());
    }
    Some(MacAddress(mac))
}

fn read_eeprom_word(regs: &impl Registers, model: Model, waits: Waits, word: u32) -> Option<u16> {
    let (done, shift) = match model {
        Model::I82540Em => (eerd::DONE_8254X, eerd::ADDR_SHIFT_8254X),
        Model::I82574L => (eerd::DONE_82574, eerd::ADDR_SHIFT_82574),
    };
    regs.write(regs::EERD, (word << shift) | eerd::START);
    let mut value = 0;
    let finished = waits.until(EERD_TIMEOUT_US, || {
        value = regs.read(regs::EERD);
        value & done != 0
    });
    finished.then_some((value >> eerd::DATA_SHIFT) as u16)
}

/// A received frame, lent in its receive buffer; dropping it gives the descriptor back.
#[derive(Debug)]
pub struct E1000RxToken<'a, R: Registers> {
    frame: RxFrame<'a, R>,
}

impl<R: Registers> RxToken for E1000RxToken<'_, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        f(self.frame.bytes())
    }
}

/// Room for one frame in the transmit ring.
#[derive(Debug)]
pub struct E1000TxToken<'a, R: Registers> {
    slot: TxSlot<'a>,
    regs: &'a R,
}

impl<R: Registers> TxToken for E1000TxToken<'_, R> {
    fn consume<T, F: FnOnce(&mut [u8]) -> T>(self, len: usize, f: F) -> T {
        self.slot.send(self.regs, len, f)
    }
}

impl<R: Registers> Device for E1000<R> {
    type RxToken<'a> = E1000RxToken<'a, R>;
    type TxToken<'a> = E1000TxToken<'a, R>;

    fn receive(&mut self) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.tx.has_room() {
            // A reply could not be queued: let the device drain before taking frames.
            self.tx.publish(&self.regs);
            return None;
        }
        let slot = self.tx.reserve()?;
        let frame = self.rx.next_frame(&self.regs)?;
        Some((
            E1000RxToken { frame },
            E1000TxToken {
                slot,
                regs: &self.regs,
            },
        ))
    }

    fn transmit(&mut self) -> Option<Self::TxToken<'_>> {
        if !self.tx.has_room() {
            self.tx.note_full();
            self.tx.publish(&self.regs);
            return None;
        }
        Some(E1000TxToken {
            slot: self.tx.reserve()?,
            regs: &self.regs,
        })
    }

    fn poll(&mut self) {
        self.rx.flush(&self.regs);
        self.tx.publish(&self.regs);
        self.tx.reclaim();
    }

    fn link_state(&mut self) -> LinkState {
        LinkState::from(self.link_status().up)
    }

    /// Ring counters as of now; the device's drop counter (MPC) as of at most
    /// [`STATS_REFRESH_US`] ago when the driver has a clock.
    fn stats(&self) -> DeviceStats {
        let rx = self.rx.counters();
        let device = self.device_counters_recent();
        DeviceStats {
            rx_frames: rx.frames,
            tx_frames: self.tx.counters().frames,
            rx_dropped: rx.errors + rx.runts + rx.oversize + rx.device_errors + device.missed,
            tx_ring_full: self.tx.counters().ring_full,
        }
    }

    fn hardware_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            usize::from(self.rx.blocks().descriptors()),
            usize::from(self.tx.blocks().descriptors()),
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::model::{DeviceModel, HostPlatform};
    use crate::regs::rx_desc;
    use std::vec::Vec;

    const QEMU_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn config(ring: u16, batch: u16) -> Config {
        Config {
            rx_ring_len: ring,
            tx_ring_len: ring,
            rx_repost_batch: batch,
            tx_kick_batch: batch,
            ..Config::default()
        }
    }

    fn up(model: Model, ring: u16, batch: u16) -> E1000<DeviceModel> {
        E1000::from_registers(
            model,
            DeviceModel::new(model),
            &HostPlatform,
            config(ring, batch),
        )
        .unwrap()
    }

    fn frame(n: usize, tag: u8) -> Vec<u8> {
        (0..n).map(|i| tag ^ i as u8).collect()
    }

    #[test]
    fn bring_up_programs_both_models_as_the_datasheets_describe() {
        for model in [Model::I82540Em, Model::I82574L] {
            let nic = up(model, 64, 8);
            let d = nic.registers();
            let s = d.state.borrow();
            assert_eq!(s.resets, 1);
            assert_eq!(s.ctrl_at_reset & ctrl::RST, ctrl::RST);
            assert_eq!(
                s.ctrl_at_reset & ctrl::GIO_MASTER_DISABLE != 0,
                model == Model::I82574L,
                "GIO master disable before reset on the 82574 only"
            );
            drop(s);
            // Interrupts masked before and after the reset; never unmasked.
            assert_eq!(d.writes_to(regs::IMC), [u32::MAX, u32::MAX]);
            assert!(d.writes_to(0x00d0).is_empty(), "IMS never written");
            let c = d.peek_reg(regs::CTRL);
            assert_eq!(c & (ctrl::SLU | ctrl::ASDE), ctrl::SLU | ctrl::ASDE);
            assert_eq!(c & (ctrl::LRST | ctrl::PHY_RST | ctrl::RST), 0);
            assert_eq!(
                d.peek_reg(regs::RCTL),
                rctl::EN | rctl::BAM | rctl::SECRC,
                "2048-byte buffers, no promiscuous modes, no long packets"
            );
            let t = d.peek_reg(regs::TCTL);
            assert_eq!(t & (tctl::EN | tctl::PSP), tctl::EN | tctl::PSP);
            assert_eq!((t >> tctl::COLD_SHIFT) & 0x3ff, 0x40);
            assert_eq!(d.peek_reg(regs::RDLEN), 64 * 16);
            assert_eq!(
                d.peek_reg(regs::RDT),
                63,
                "all but one receive descriptor posted"
            );
            assert_eq!((d.peek_reg(regs::TDH), d.peek_reg(regs::TDT)), (0, 0));
            assert_eq!(d.peek_reg(regs::RXCSUM), 0);
            for i in 0..regs::MTA_LEN {
                assert_eq!(d.peek_reg(regs::MTA + 4 * i), 0);
            }
            assert_eq!(
                d.writes_to(regs::RFCTL_82574).len(),
                usize::from(model == Model::I82574L)
            );
            assert_eq!(
                d.writes_to(regs::TIPG),
                if model == Model::I82540Em {
                    std::vec![regs::TIPG_82540_COPPER]
                } else {
                    std::vec![]
                }
            );
            assert_eq!(nic.hardware_address(), QEMU_MAC);
            assert_eq!(nic.mac_source(), MacSource::ReceiveAddress);
            let caps = nic.capabilities();
            assert_eq!((caps.rx_ring_len, caps.tx_ring_len), (64, 64));
        }
    }

    #[test]
    fn mac_comes_from_the_eeprom_when_the_receive_address_is_empty() {
        for model in [Model::I82540Em, Model::I82574L] {
            let dev = DeviceModel::new(model);
            dev.state.borrow_mut().reset_loads_ral = false;
            dev.state.borrow_mut().eeprom[2] = 0x7856;
            let nic = E1000::from_registers(model, dev, &HostPlatform, config(16, 4)).unwrap();
            let want = MacAddress([0x52, 0x54, 0, 0x12, 0x56, 0x78]);
            assert_eq!(nic.hardware_address(), want, "{model:?}");
            assert_eq!(nic.mac_source(), MacSource::Eeprom);
            // Written back so the device filters on it.
            let d = nic.registers();
            assert_eq!(d.peek_reg(regs::RAL0), 0x1200_5452);
            assert_eq!(d.peek_reg(regs::RAH0), 0x7856 | regs::RAH_AV);
            assert_eq!(nic.eeprom_mac(), Some(want));
        }
    }

    #[test]
    fn an_unusable_address_falls_back_to_the_configured_one() {
        let dev = DeviceModel::new(Model::I82540Em);
        {
            let mut s = dev.state.borrow_mut();
            s.reset_loads_ral = false;
            s.eerd_broken = true;
        }
        let nic =
            E1000::from_registers(Model::I82540Em, dev, &HostPlatform, config(16, 4)).unwrap();
        assert_eq!(nic.mac_source(), MacSource::Fallback);
        assert_eq!(nic.hardware_address(), Config::default().fallback_mac);
        assert_eq!(nic.eeprom_mac(), None);

        // A multicast address in the EEPROM is not used either.
        let dev = DeviceModel::new(Model::I82574L);
        {
            let mut s = dev.state.borrow_mut();
            s.reset_loads_ral = false;
            s.eeprom[0] = 0x5401;
        }
        let nic = E1000::from_registers(Model::I82574L, dev, &HostPlatform, config(16, 4)).unwrap();
        assert_eq!(nic.mac_source(), MacSource::Fallback);
    }

    #[test]
    fn a_device_stuck_in_reset_is_an_error_not_a_hang() {
        let dev = DeviceModel::new(Model::I82574L);
        dev.state.borrow_mut().reset_reads = u32::MAX;
        let err =
            E1000::from_registers(Model::I82574L, dev, &HostPlatform, config(16, 4)).unwrap_err();
        assert_eq!(err, Error::ResetTimeout);

        // A clock bounds the waits in time rather than polls.
        use core::sync::atomic::{AtomicU64, Ordering};
        static NOW: AtomicU64 = AtomicU64::new(0);
        fn tick() -> u64 {
            NOW.fetch_add(7, Ordering::Relaxed)
        }
        let dev = DeviceModel::new(Model::I82540Em);
        dev.state.borrow_mut().reset_reads = u32::MAX;
        let cfg = Config {
            clock: Some(tick),
            ..config(16, 4)
        };
        let err = E1000::from_registers(Model::I82540Em, dev, &HostPlatform, cfg).unwrap_err();
        assert_eq!(err, Error::ResetTimeout);
        assert!(NOW.load(Ordering::Relaxed) >= RESET_SETTLE_US + RESET_TIMEOUT_US);
    }

    #[test]
    fn the_82574_waits_for_bus_mastering_to_stop_before_resetting() {
        let dev = DeviceModel::new(Model::I82574L);
        dev.state.borrow_mut().gio_busy_reads = 5;
        let nic = E1000::from_registers(Model::I82574L, dev, &HostPlatform, config(16, 4)).unwrap();
        let s = nic.registers().state.borrow();
        assert_eq!(
            s.gio_busy_reads, 0,
            "polled STATUS until GIO master enable cleared"
        );
        assert_eq!(s.resets, 1);
    }

    #[test]
    fn bad_ring_lengths_are_refused() {
        let dev = DeviceModel::new(Model::I82540Em);
        let err =
            E1000::from_registers(Model::I82540Em, dev, &HostPlatform, config(100, 4)).unwrap_err();
        assert_eq!(err, Error::RingLength(100));
    }

    #[test]
    fn receive_lends_the_frame_in_its_dma_buffer_and_reposts_in_batches() {
        let mut nic = up(Model::I82540Em, 16, 4);
        let sent = frame(1400, 0x5a);
        assert!(nic.registers().deliver(&sent));
        let (tok, _reply) = nic.receive().expect("a frame");
        let (ptr, data) = tok.consume(|f| (f.as_ptr() as u64, f.to_vec()));
        assert_eq!(data, sent, "CRC stripped (SECRC), nothing else touched");
        let d = nic.registers();
        let desc = u64::from(d.peek_reg(regs::RDBAL)) | (u64::from(d.peek_reg(regs::RDBAH)) << 32);
        // SAFETY: descriptor 0 of the live ring (host address, identity-mapped).
        let addr = unsafe { (desc as *const u64).read_volatile() };
        assert_eq!(ptr, addr, "in place: the slice is descriptor 0's buffer");
        assert!(nic.receive().is_none());

        for i in 0..14 {
            assert!(nic.registers().deliver(&frame(60, i)));
        }
        assert!(
            !nic.registers().deliver(&frame(60, 99)),
            "15 posted, 15 used: the 16th has no descriptor"
        );
        for i in 0..14u8 {
            let (tok, _) = nic.receive().unwrap();
            assert_eq!(tok.consume(|f| f[0]), i);
        }
        assert_eq!(nic.registers().writes_to(regs::RDT), [15, 3, 7, 11]);
        nic.poll();
        assert_eq!(*nic.registers().writes_to(regs::RDT).last().unwrap(), 14);
        for i in 0..15 {
            assert!(nic.registers().deliver(&frame(60, i)), "room again");
        }
        let s = nic.stats();
        assert_eq!(
            (s.rx_frames, s.rx_dropped),
            (15, 1),
            "the missed frame is counted"
        );
    }

    #[test]
    fn transmit_writes_in_place_and_moves_the_tail_once_per_batch() {
        let mut nic = up(Model::I82574L, 16, 4);
        for i in 0..3u8 {
            let tok = nic.transmit().unwrap();
            tok.consume(60 + usize::from(i), |b| b.fill(i));
        }
        assert!(nic.registers().transmit().is_empty(), "tail not moved yet");
        nic.poll();
        let out = nic.registers().transmit();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], std::vec![2u8; 62]);
        for _ in 0..4 {
            nic.transmit().unwrap().consume(100, |b| b.fill(7));
        }
        assert_eq!(
            nic.registers().transmit().len(),
            4,
            "a full batch moved the tail"
        );
        assert_eq!(nic.registers().writes_to(regs::TDT), [0, 3, 7]);
        assert_eq!(nic.stats().tx_frames, 7);
    }

    #[test]
    fn a_full_transmit_ring_refuses_counts_and_recovers() {
        let mut nic = up(Model::I82540Em, 8, 32);
        // An unconsumed token reserves nothing.
        assert!(nic.transmit().is_some());
        for i in 0..7u8 {
            nic.transmit().unwrap().consume(20, |b| b.fill(i));
        }
        assert!(nic.transmit().is_none());
        assert_eq!(nic.stats().tx_ring_full, 1);
        assert_eq!(
            nic.registers().writes_to(regs::TDT),
            [0, 7],
            "a full ring publishes so the device drains"
        );
        // With TX full, receive leaves frames in the ring rather than lose a reply slot.
        nic.registers().deliver(&frame(64, 1));
        assert!(nic.receive().is_none());
        assert_eq!(nic.registers().transmit().len(), 7);
        let (tok, reply) = nic.receive().expect("the frame was kept");
        assert_eq!(tok.consume(|f| f.len()), 64);
        reply.consume(64, |b| b.fill(9));
        nic.poll();
        assert_eq!(nic.registers().transmit(), [std::vec![9u8; 64]]);
        assert_eq!(nic.stats().tx_frames, 8);
    }

    #[test]
    fn echo_round_trips_through_the_model_for_many_ring_lengths() {
        for model in [Model::I82540Em, Model::I82574L] {
            let mut nic = up(model, 32, 8);
            let mut echoed = Vec::new();
            for round in 0..20u8 {
                for k in 0..10u8 {
                    assert!(nic.registers().deliver(&frame(100 + usize::from(k), round)));
                }
                while let Some((rx, tx)) = nic.receive() {
                    rx.consume(|f| tx.consume(f.len(), |out| out.copy_from_slice(f)));
                }
                nic.poll();
                echoed.extend(nic.registers().transmit());
            }
            assert_eq!(echoed.len(), 200);
            assert_eq!(echoed[199], frame(109, 19));
            let s = nic.driver_stats();
            assert_eq!((s.rx.frames, s.tx.frames), (200, 200));
            assert!(s.rx.tail_writes <= 20 + 200 / 8, "{s:?}");
        }
    }

    #[test]
    fn bad_frames_and_device_counters_are_counted_not_delivered() {
        let mut nic = up(Model::I82540Em, 16, 4);
        let d = nic.registers();
        let ok = rx_desc::STA_DD | rx_desc::STA_EOP;
        d.deliver_with(&frame(8, 0), ok); // runt
        d.deliver_with(&frame(100, 0), ok | (1 << 8)); // CRC error
        d.deliver_with(&frame(100, 0), rx_desc::STA_DD); // start of a multi-buffer frame
        d.deliver_with(&frame(100, 0), ok); // its end
        d.deliver(&frame(100, 5));
        {
            let mut s = d.state.borrow_mut();
            s.missed = 3;
            s.oversize = 2;
        }
        let (tok, _) = nic.receive().unwrap();
        assert_eq!(tok.consume(|f| f[0]), 5);
        assert!(nic.receive().is_none());
        let s = nic.driver_stats();
        assert_eq!((s.rx.runts, s.rx.errors, s.rx.oversize), (1, 1, 1));
        assert_eq!((s.device.missed, s.device.oversize), (3, 2));
        // Clear-on-read registers are accumulated, not lost.
        nic.registers().state.borrow_mut().missed = 1;
        let st = nic.stats();
        assert_eq!(st.rx_dropped, 1 + 1 + 1 + 4);
        assert_eq!(st.rx_frames, 1);
        assert_eq!(
            nic.driver_stats().device.missed,
            4,
            "reading again adds nothing"
        );
    }

    #[test]
    fn statistics_that_keep_counting_across_reads_are_not_added_twice() {
        let mut nic = up(Model::I82540Em, 16, 4);
        nic.registers().state.borrow_mut().stats_clear_on_read = false;
        let missed = |nic: &mut E1000<DeviceModel>, n: u32| {
            nic.registers().state.borrow_mut().missed += n;
            nic.driver_stats().device.missed
        };
        assert_eq!(missed(&mut nic, 0), 0);
        assert_eq!(missed(&mut nic, 38), 38);
        assert_eq!(missed(&mut nic, 0), 38, "a cumulative register read again");
        assert_eq!(missed(&mut nic, 0), 38);
        assert_eq!(missed(&mut nic, 2), 40);
        assert_eq!(nic.stats().rx_dropped, 40);
    }

    #[test]
    fn stats_read_the_device_registers_at_most_every_refresh_interval() {
        use core::sync::atomic::{AtomicU64, Ordering};
        // A clock that ticks one microsecond per reading, so bring-up's waits end.
        static NOW: AtomicU64 = AtomicU64::new(0);
        fn now() -> u64 {
            NOW.fetch_add(1, Ordering::Relaxed)
        }
        let mut config = config(16, 4);
        config.clock = Some(now);
        let mut nic = E1000::from_registers(
            Model::I82540Em,
            DeviceModel::new(Model::I82540Em),
            &HostPlatform,
            config,
        )
        .unwrap();
        nic.registers().state.borrow_mut().missed = 2;
        assert_eq!(nic.stats().rx_dropped, 2, "the first call reads the device");
        nic.registers().state.borrow_mut().missed = 3;
        nic.registers().deliver(&frame(100, 1));
        let (tok, _) = nic.receive().unwrap();
        drop(tok);
        let s = nic.stats();
        assert_eq!(
            (s.rx_frames, s.rx_dropped),
            (1, 2),
            "rings now, device as last read"
        );
        NOW.fetch_add(STATS_REFRESH_US, Ordering::Relaxed);
        assert_eq!(nic.stats().rx_dropped, 2 + 3);
        // The detailed counters always read the device.
        nic.registers().state.borrow_mut().missed = 1;
        assert_eq!(nic.driver_stats().device.missed, 6);
        assert_eq!(nic.stats().rx_dropped, 6, "and refresh what stats reports");
    }

    #[test]
    fn link_state_follows_status_lu() {
        let mut nic = up(Model::I82574L, 16, 4);
        assert_eq!(nic.link_state(), LinkState::Up);
        let l = nic.link_status();
        assert_eq!((l.speed_mbps, l.full_duplex), (1000, true));
        nic.registers().state.borrow_mut().link_up = false;
        assert_eq!(nic.link_state(), LinkState::Down);
    }
}
