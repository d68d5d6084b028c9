//! Host stand-ins for the machine (DMA memory is the platform crate's `HostPlatform`), for the
//! unit tests and, with feature `model`, the native benchmark: a register recorder, and a model
//! of the NIC written from the datasheet's description of what the device does with its
//! registers and descriptor rings.
//!
//! Like a device, the model trusts what the driver programmed: it writes host memory at the
//! ring base and buffer addresses the driver gave it. Use it only with a driver brought up
//! over `HostPlatform` memory.
//!
//! The model is deliberately strict where the driver could go wrong: it refuses to receive
//! unless RCTL.EN is set and the ring has room (head != tail), only processes transmit
//! descriptors up to TDT, writes back exactly the fields the device writes back, and only
//! clears CTRL.RST after a configurable number of reads.
extern crate std;

use crate::regs::{self, ctrl, eerd, rctl, rx_desc, tctl, tx_desc, Registers};
use crate::Model;
use core::cell::RefCell;
pub use netoops_driver_platform::host::HostPlatform;
use std::collections::BTreeMap;
use std::vec::Vec;

/// Records register writes; reads return zero.
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct RecordingRegisters {
    writes: RefCell<Vec<(u32, u32)>>,
}

#[cfg_attr(not(test), allow(dead_code))]
impl RecordingRegisters {
    /// Values written to `offset`, in order.
    pub fn writes_to(&self, offset: u32) -> Vec<u32> {
        self.writes
            .borrow()
            .iter()
            .filter(|(o, _)| *o == offset)
            .map(|&(_, v)| v)
            .collect()
    }
}

impl Registers for RecordingRegisters {
    fn read(&self, _offset: u32) -> u32 {
        0
    }
    fn write(&self, offset: u32, value: u32) {
        self.writes.borrow_mut().push((offset, value));
    }
}

/// Reads a little-endian value from a host (= bus) address.
///
/// # Safety
/// `addr` must be a live host address of at least `N` bytes that the test owns.
unsafe fn peek<const N: usize>(addr: u64) -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: per the function's contract.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), N) };
    b
}

/// Writes bytes to a host (= bus) address.
///
/// # Safety
/// `addr` must be a live host address of at least `bytes.len()` bytes that no Rust
/// reference covers.
unsafe fn poke(addr: u64, bytes: &[u8]) {
    // SAFETY: per the function's contract.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

/// Mutable state of the modelled NIC.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct State {
    pub model: Model,
    pub regs: BTreeMap<u32, u32>,
    /// EEPROM words; words 0..3 hold the MAC address.
    pub eeprom: [u16; 64],
    /// Whether a reset loads RAL0/RAH0 from the EEPROM (real parts with an EEPROM do).
    pub reset_loads_ral: bool,
    /// Reads of CTRL that still show RST after a reset.
    pub reset_reads: u32,
    pending_reset_reads: u32,
    /// Reads of EERD before DONE shows.
    pub eerd_reads: u32,
    pending_eerd_reads: u32,
    /// Never finish an EEPROM read.
    pub eerd_broken: bool,
    pub link_up: bool,
    /// Count registers: MPC, RNBC, ROC.
    pub missed: u32,
    pub no_buffer: u32,
    pub oversize: u32,
    /// Whether reading a count register clears it (the manuals) or not (QEMU's e1000).
    pub stats_clear_on_read: bool,
    pub resets: u32,
    /// CTRL value written with RST, to check what was disabled before the reset.
    pub ctrl_at_reset: u32,
    /// STATUS reads seen with GIO master still enabled after GIO_MASTER_DISABLE.
    pub gio_busy_reads: u32,
    pub writes: Vec<(u32, u32)>,
}

/// The modelled NIC.
#[derive(Debug)]
pub struct DeviceModel {
    pub(crate) state: RefCell<State>,
}

impl DeviceModel {
    /// A device of `model` with MAC 52:54:00:12:34:56 in its EEPROM, link up.
    pub fn new(model: Model) -> Self {
        let mut eeprom = [0u16; 64];
        eeprom[0] = 0x5452;
        eeprom[1] = 0x1200;
        eeprom[2] = 0x5634;
        Self {
            state: RefCell::new(State {
                model,
                regs: BTreeMap::new(),
                eeprom,
                reset_loads_ral: true,
                reset_reads: 3,
                pending_reset_reads: 0,
                eerd_reads: 2,
                pending_eerd_reads: 0,
                eerd_broken: false,
                link_up: true,
                missed: 0,
                no_buffer: 0,
                oversize: 0,
                stats_clear_on_read: true,
                resets: 0,
                ctrl_at_reset: 0,
                gio_busy_reads: 0,
                writes: Vec::new(),
            }),
        }
    }

    fn reg(&self, offset: u32) -> u32 {
        self.state.borrow().regs.get(&offset).copied().unwrap_or(0)
    }

    fn set(&self, offset: u32, value: u32) {
        self.state.borrow_mut().regs.insert(offset, value);
    }

    /// Values written to `offset`, in order.
    pub fn writes_to(&self, offset: u32) -> Vec<u32> {
        self.state
            .borrow()
            .writes
            .iter()
            .filter(|(o, _)| *o == offset)
            .map(|&(_, v)| v)
            .collect()
    }

    /// Forgets the register writes recorded so far (a long benchmark run would otherwise
    /// keep every tail write).
    pub fn forget_writes(&self) {
        self.state.borrow_mut().writes.clear();
    }

    /// The current value of a register, without side effects.
    pub fn peek_reg(&self, offset: u32) -> u32 {
        self.reg(offset)
    }

    fn ring(&self, base_lo: u32, base_hi: u32, len_reg: u32) -> (u64, u32) {
        let base = u64::from(self.reg(base_lo)) | (u64::from(self.reg(base_hi)) << 32);
        (base, self.reg(len_reg) / 16)
    }

    /// Receives `frame` into the next free descriptor as one buffer; `false` when the
    /// receiver is off or the ring has no free descriptor (the frame is missed).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        self.deliver_with(frame, rx_desc::STA_DD | rx_desc::STA_EOP)
    }

    /// Like [`Self::deliver`] with the status dword (status, errors) the device writes.
    pub fn deliver_with(&self, frame: &[u8], status: u32) -> bool {
        let (base, n) = self.ring(regs::RDBAL, regs::RDBAH, regs::RDLEN);
        let (head, tail) = (self.reg(regs::RDH), self.reg(regs::RDT));
        if self.reg(regs::RCTL) & rctl::EN == 0 || n == 0 || head == tail {
            let mut s = self.state.borrow_mut();
            s.missed += 1;
            s.no_buffer += 1;
            return false;
        }
        let desc = base + u64::from(head) * 16;
        // With SECRC clear the device stores and counts the 4 FCS bytes too.
        let fcs = if self.reg(regs::RCTL) & rctl::SECRC == 0 {
            4
        } else {
            0
        };
        // SAFETY: the driver programmed RDBAL/RDLEN with a live host allocation (identity
        // mapped) and owns descriptor `head` on the device's behalf; the buffer address in
        // it points at a live buffer of 2048 bytes (frames here are shorter).
        unsafe {
            let addr = u64::from_le_bytes(peek::<8>(desc));
            poke(addr, frame);
            poke(addr + frame.len() as u64, &[0u8; 4][..fcs]);
            poke(desc + 8, &((frame.len() + fcs) as u16).to_le_bytes());
            poke(desc + 10, &[0xaa, 0xbb]); // checksum: written back, ignored
            poke(desc + 12, &status.to_le_bytes());
        }
        self.set(regs::RDH, (head + 1) % n);
        true
    }

    /// Sends everything between TDH and TDT; returns the frames.
    pub fn transmit(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.reg(regs::TCTL) & tctl::EN == 0 {
            return out;
        }
        let (base, n) = self.ring(regs::TDBAL, regs::TDBAH, regs::TDLEN);
        let mut head = self.reg(regs::TDH);
        let tail = self.reg(regs::TDT);
        while head != tail && n > 0 {
            let desc = base + u64::from(head) * 16;
            // SAFETY: as in `deliver`: a live descriptor of the driver's transmit ring, and
            // the buffer it names holds at least `len` bytes.
            unsafe {
                let addr = u64::from_le_bytes(peek::<8>(desc));
                let word = u32::from_le_bytes(peek::<4>(desc + 8));
                let len = (word & 0xffff) as usize;
                let mut frame = std::vec![0u8; len];
                core::ptr::copy_nonoverlapping(addr as *const u8, frame.as_mut_ptr(), len);
                assert_eq!(
                    word & (tx_desc::CMD_EOP | tx_desc::CMD_IFCS),
                    tx_desc::CMD_EOP | tx_desc::CMD_IFCS,
                    "one descriptor per frame, FCS inserted by the device"
                );
                if word & tx_desc::CMD_RS != 0 {
                    poke(desc + 12, &[tx_desc::STA_DD as u8]);
                }
                out.push(frame);
            }
            head = (head + 1) % n;
        }
        self.set(regs::TDH, head);
        out
    }

    fn reset(&self) {
        let mut s = self.state.borrow_mut();
        s.resets += 1;
        s.regs.clear();
        if s.reset_loads_ral {
            let e = s.eeprom;
            let ral = u32::from(e[0]) | (u32::from(e[1]) << 16);
            let rah = u32::from(e[2]) | regs::RAH_AV;
            s.regs.insert(regs::RAL0, ral);
            s.regs.insert(regs::RAH0, rah);
        }
        // MTA comes up undefined: make it visibly dirty.
        for i in 0..regs::MTA_LEN {
            s.regs.insert(regs::MTA + 4 * i, 0xdead_beef);
        }
        s.regs.insert(regs::RXCSUM, 0x300);
        s.regs.insert(regs::CTRL, ctrl::RST | ctrl::LRST);
        s.pending_reset_reads = s.reset_reads;
    }
}

impl Registers for DeviceModel {
    fn read(&self, offset: u32) -> u32 {
        let mut s = self.state.borrow_mut();
        match offset {
            regs::CTRL => {
                if s.pending_reset_reads > 0 {
                    s.pending_reset_reads -= 1;
                    if s.pending_reset_reads == 0 {
                        let v = s.regs.get(&regs::CTRL).copied().unwrap_or(0) & !ctrl::RST;
                        s.regs.insert(regs::CTRL, v);
                    }
                }
                s.regs.get(&regs::CTRL).copied().unwrap_or(0)
            }
            regs::STATUS => {
                let ctrl = s.regs.get(&regs::CTRL).copied().unwrap_or(0);
                let mut v = regs::status::FD | (2 << regs::status::SPEED_SHIFT);
                if s.link_up && ctrl & ctrl::SLU != 0 {
                    v |= regs::status::LU;
                }
                if s.model == Model::I82574L && ctrl & ctrl::GIO_MASTER_DISABLE == 0 {
                    v |= regs::status::GIO_MASTER_ENABLE;
                } else if s.model == Model::I82574L && s.gio_busy_reads > 0 {
                    s.gio_busy_reads -= 1;
                    v |= regs::status::GIO_MASTER_ENABLE;
                }
                v
            }
            regs::EERD => {
                let v = s.regs.get(&regs::EERD).copied().unwrap_or(0);
                if s.pending_eerd_reads > 0 {
                    s.pending_eerd_reads -= 1;
                    return v;
                }
                if s.eerd_broken || v & eerd::START == 0 {
                    return v;
                }
                let (done, shift) = match s.model {
                    Model::I82540Em => (eerd::DONE_8254X, eerd::ADDR_SHIFT_8254X),
                    Model::I82574L => (eerd::DONE_82574, eerd::ADDR_SHIFT_82574),
                };
                let addr = ((v >> shift) & 0x3f) as usize;
                let data = u32::from(s.eeprom[addr]);
                let out = (v & 0xffff & !eerd::START) | done | (data << eerd::DATA_SHIFT);
                s.regs.insert(regs::EERD, out);
                out
            }
            regs::ICR => s.regs.remove(&regs::ICR).unwrap_or(0),
            regs::MPC | regs::RNBC | regs::ROC => {
                let clear = s.stats_clear_on_read;
                let counter = match offset {
                    regs::MPC => &mut s.missed,
                    regs::RNBC => &mut s.no_buffer,
                    _ => &mut s.oversize,
                };
                if clear {
                    core::mem::take(counter)
                } else {
                    *counter
                }
            }
            _ => s.regs.get(&offset).copied().unwrap_or(0),
        }
    }

    fn write(&self, offset: u32, value: u32) {
        self.state.borrow_mut().writes.push((offset, value));
        match offset {
            regs::CTRL if value & ctrl::RST != 0 => {
                self.state.borrow_mut().ctrl_at_reset = value;
                self.reset();
            }
            regs::EERD => {
                let mut s = self.state.borrow_mut();
                s.pending_eerd_reads = s.eerd_reads;
                s.regs.insert(regs::EERD, value);
            }
            regs::STATUS | regs::ICR | regs::MPC | regs::RNBC | regs::ROC => {}
            _ => self.set(offset, value),
        }
    }
}
