//! The register map and descriptor layouts, and the one trait all register access goes
//! through.
//!
//! Facts only, no logic: offsets and bits from Intel's public manuals, the "PCI/PCI-X Family
//! of Gigabit Ethernet Controllers Software Developer's Manual" (8254x SDM, section 13 for
//! registers, section 3 for descriptors) and the "82574 GbE Controller Family Datasheet"
//! (its register and descriptor chapters). Where the two parts differ the constant says
//! which one it belongs to. Only what this driver programs or reads is here.
//!
//! The register window is BAR0, 128 KiB, accessed as aligned 32-bit little-endian words.

use netoops_driver_platform::MmioRegion;

/// Length of the BAR0 register window on both parts.
pub const WINDOW_LEN: usize = 128 * 1024;

/// 32-bit register access by byte offset into BAR0.
///
/// The driver's logic uses only this, so host tests run it against a model of the device;
/// the kernel uses [`MmioRegion`]. An owned handle (`'static`): the device's tokens borrow it
/// for as long as the driver lends them, with no further bound.
pub trait Registers: 'static {
    /// Reads the register at `offset`.
    fn read(&self, offset: u32) -> u32;
    /// Writes the register at `offset`.
    fn write(&self, offset: u32, value: u32);
}

impl Registers for MmioRegion {
    fn read(&self, offset: u32) -> u32 {
        self.read_u32(offset as usize)
    }

    fn write(&self, offset: u32, value: u32) {
        self.write_u32(offset as usize, value)
    }
}

/// Device Control.
pub const CTRL: u32 = 0x0000;
/// Device Status, read-only.
pub const STATUS: u32 = 0x0008;
/// EEPROM/Flash Control (82574: EEC).
pub const EECD: u32 = 0x0010;
/// EEPROM Read (SDM 5.3.1 describes its use). Field positions differ per part: see
/// [`eerd`].
pub const EERD: u32 = 0x0014;
/// Flow Control Address Low.
pub const FCAL: u32 = 0x0028;
/// Flow Control Address High.
pub const FCAH: u32 = 0x002c;
/// Flow Control Type.
pub const FCT: u32 = 0x0030;
/// Interrupt Cause Read; reading clears it.
pub const ICR: u32 = 0x00c0;
/// Interrupt Mask Clear: a 1 masks that cause.
pub const IMC: u32 = 0x00d8;
/// Receive Control.
pub const RCTL: u32 = 0x0100;
/// Flow Control Transmit Timer Value.
pub const FCTTV: u32 = 0x0170;
/// Transmit Control (SDM table 13-76).
pub const TCTL: u32 = 0x0400;
/// Transmit Inter-Packet Gap (SDM table 13-77).
pub const TIPG: u32 = 0x0410;
/// Receive Descriptor Base Address Low.
pub const RDBAL: u32 = 0x2800;
/// Receive Descriptor Base Address High.
pub const RDBAH: u32 = 0x2804;
/// Receive Descriptor Length in bytes, a multiple of 128 (SDM 13.4.27).
pub const RDLEN: u32 = 0x2808;
/// Receive Descriptor Head: written by software only after a reset and before the
/// receiver is enabled (SDM 13.4.28).
pub const RDH: u32 = 0x2810;
/// Receive Descriptor Tail: one past the last descriptor the device may fill.
pub const RDT: u32 = 0x2818;
/// Receive Delay Timer (interrupt moderation; zero since nothing interrupts).
pub const RDTR: u32 = 0x2820;
/// Receive Interrupt Absolute Delay Timer.
pub const RADV: u32 = 0x282c;
/// Transmit Descriptor Base Address Low.
pub const TDBAL: u32 = 0x3800;
/// Transmit Descriptor Base Address High.
pub const TDBAH: u32 = 0x3804;
/// Transmit Descriptor Length in bytes, a multiple of 128.
pub const TDLEN: u32 = 0x3808;
/// Transmit Descriptor Head: written by software only before the transmitter is enabled.
pub const TDH: u32 = 0x3810;
/// Transmit Descriptor Tail: one past the last descriptor the device may send.
pub const TDT: u32 = 0x3818;
/// Missed Packets Count: frames dropped for lack of FIFO or descriptor space; clears on
/// read.
pub const MPC: u32 = 0x4010;
/// Receive No Buffers Count: times the device found no free descriptor; clears on read
/// (SDM 13.7.33).
pub const RNBC: u32 = 0x40a0;
/// Receive Oversize Count: frames longer than 1522 bytes that were dropped; clears on
/// read (SDM 13.7.36).
pub const ROC: u32 = 0x40ac;
/// Receive Checksum Control; zero turns every receive offload off.
pub const RXCSUM: u32 = 0x5000;
/// Receive Filter Control, 82574 only; zero keeps legacy receive descriptors (`EXSTEN`,
/// bit 15, clear).
pub const RFCTL_82574: u32 = 0x5008;
/// Multicast Table Array: 128 words.
pub const MTA: u32 = 0x5200;
/// Words in [`MTA`].
pub const MTA_LEN: u32 = 128;
/// Receive Address Low, entry 0: MAC bytes 0..4 (SDM 13.5.2).
pub const RAL0: u32 = 0x5400;
/// Receive Address High, entry 0: MAC bytes 4..6 and Address Valid (SDM 13.5.3). Write
/// RAL before RAH.
pub const RAH0: u32 = 0x5404;
/// [`RAH0`] Address Valid: the entry takes part in filtering.
pub const RAH_AV: u32 = 1 << 31;

/// [`CTRL`] bits.
pub mod ctrl {
    /// Link Reset.
    pub const LRST: u32 = 1 << 3;
    /// 82574 only: GIO Master Disable; stops new bus-master requests before a reset.
    pub const GIO_MASTER_DISABLE: u32 = 1 << 2;
    /// Auto-Speed Detection Enable.
    pub const ASDE: u32 = 1 << 5;
    /// Set Link Up: lets the MAC follow the PHY's link.
    pub const SLU: u32 = 1 << 6;
    /// Invert Loss-of-Signal.
    pub const ILOS: u32 = 1 << 7;
    /// Force Speed.
    pub const FRCSPD: u32 = 1 << 11;
    /// Force Duplex.
    pub const FRCDPLX: u32 = 1 << 12;
    /// Device Reset: resets everything but PCI configuration; self-clearing.
    pub const RST: u32 = 1 << 26;
    /// VLAN Mode Enable.
    pub const VME: u32 = 1 << 30;
    /// PHY Reset.
    pub const PHY_RST: u32 = 1 << 31;
}

/// [`STATUS`] bits.
pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link Up.
    pub const LU: u32 = 1 << 1;
    /// Speed: 00 = 10, 01 = 100, 1x = 1000 Mb/s.
    pub const SPEED_SHIFT: u32 = 6;
    /// 82574 only: GIO Master Enable Status; clears once [`super::ctrl::GIO_MASTER_DISABLE`]
    /// took effect and no bus-master request is pending.
    pub const GIO_MASTER_ENABLE: u32 = 1 << 19;
}

/// [`EERD`] field positions. Both parts: START is bit 0 and the data word is bits 31:16.
pub mod eerd {
    /// Start Read.
    pub const START: u32 = 1 << 0;
    /// 8254x (82540EM): Read Done is bit 4 and the word address bits 15:8.
    pub const DONE_8254X: u32 = 1 << 4;
    /// 8254x word address shift.
    pub const ADDR_SHIFT_8254X: u32 = 8;
    /// 82574: Read Done is bit 1 and the word address bits 15:2 (the layout of the later
    /// PCIe parts, e.g. the 82575 manual's section on software EEPROM access).
    pub const DONE_82574: u32 = 1 << 1;
    /// 82574 word address shift.
    pub const ADDR_SHIFT_82574: u32 = 2;
    /// Data shift.
    pub const DATA_SHIFT: u32 = 16;
}

/// [`RCTL`] bits.
pub mod rctl {
    /// Receiver Enable.
    pub const EN: u32 = 1 << 1;
    /// Store Bad Packets.
    pub const SBP: u32 = 1 << 2;
    /// Unicast Promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast Promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Long Packet Enable (frames over 1522 bytes).
    pub const LPE: u32 = 1 << 5;
    /// Broadcast Accept Mode.
    pub const BAM: u32 = 1 << 15;
    /// Buffer size field (bits 17:16); 00 with [`BSEX`] clear is 2048 bytes.
    pub const BSIZE_2048: u32 = 0;
    /// Buffer Size Extension (multiplies BSIZE by 16).
    pub const BSEX: u32 = 1 << 25;
    /// Strip Ethernet CRC: descriptor lengths then exclude the 4 FCS bytes.
    pub const SECRC: u32 = 1 << 26;
}

/// [`TCTL`] bits and fields.
pub mod tctl {
    /// Transmit Enable.
    pub const EN: u32 = 1 << 1;
    /// Pad Short Packets to 64 bytes.
    pub const PSP: u32 = 1 << 3;
    /// Collision Threshold field shift; the SDM recommends 0x0f.
    pub const CT_SHIFT: u32 = 4;
    /// Collision Distance field shift; the SDM recommends 0x40 (64 byte times) for full
    /// duplex and 0x200 for half duplex.
    pub const COLD_SHIFT: u32 = 12;
    /// Re-transmit on Late Collision.
    pub const RTLC: u32 = 1 << 24;
}

/// [`TIPG`] for the 82540EM on copper (SDM table 13-77): IPGT 10, IPGR1 8, IPGR2 6, the
/// IEEE 802.3 96-bit-time gap. The 82574's reset value is already its recommended one.
pub const TIPG_82540_COPPER: u32 = 10 | (8 << 10) | (6 << 20);

/// Legacy receive descriptor (SDM 3.2.3; the same layout on the 82574), 16 bytes:
/// `0: buffer address (8) | 8: length (2) | 10: checksum (2) | 12: status (1) |
/// 13: errors (1) | 14: special (2)`. The device writes bytes 8..16 back and leaves the
/// address alone.
pub mod rx_desc {
    /// Descriptor size.
    pub const LEN: usize = 16;
    /// Buffer address offset.
    pub const ADDR: usize = 0;
    /// Length offset.
    pub const LENGTH: usize = 8;
    /// Offset of the dword holding status (byte 0), errors (byte 1) and special.
    pub const STATUS_WORD: usize = 12;
    /// Status: Descriptor Done.
    pub const STA_DD: u32 = 1 << 0;
    /// Status: End Of Packet (last descriptor of a frame).
    pub const STA_EOP: u32 = 1 << 1;
    /// Errors that mean the frame is bad, as found in bits 15:8 of the status dword: CRC
    /// or alignment (CE, bit 0), symbol (SE, 1), sequence (SEQ, 2), carrier extension
    /// (CXE, 4) and RX data (RXE, 7). The checksum-offload errors (TCPE, IPE) are not
    /// among them: offloads are off and the stack checks checksums itself.
    pub const FRAME_ERRORS: u32 = 0b1001_0111 << 8;
}

/// Legacy transmit descriptor (SDM 3.3.3; the same layout on the 82574), 16 bytes:
/// `0: buffer address (8) | 8: length (2) | 10: CSO (1) | 11: command (1) |
/// 12: status (1) | 13: CSS (1) | 14: special (2)`. The device writes back only the status
/// byte, and only for descriptors with RS set.
pub mod tx_desc {
    /// Descriptor size.
    pub const LEN: usize = 16;
    /// Buffer address offset.
    pub const ADDR: usize = 0;
    /// Offset of the dword holding length (bits 15:0), CSO (23:16) and command (31:24).
    pub const LENGTH_WORD: usize = 8;
    /// Offset of the dword holding status (bits 3:0), CSS and special.
    pub const STATUS_WORD: usize = 12;
    /// Command: End Of Packet.
    pub const CMD_EOP: u32 = 1 << 24;
    /// Command: Insert FCS (the Ethernet CRC).
    pub const CMD_IFCS: u32 = 1 << 25;
    /// Command: Report Status (write DD back when done).
    pub const CMD_RS: u32 = 1 << 27;
    /// Status: Descriptor Done.
    pub const STA_DD: u32 = 1 << 0;
}

/// Ring sizes are in descriptors; RDLEN/TDLEN must be multiples of 128 bytes, so rings
/// come in multiples of 8 descriptors.
pub const RING_ALIGN_DESCRIPTORS: u16 = 8;
