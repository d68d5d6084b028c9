//! Validated, zero-copy views of netoops datagrams (header versions 2 and 3).
//!
//! [`Datagram::parse`] checks everything once: version, lengths, the offsets the header declares
//! (readers trust `header_size` / `data_offset` / `arch_offset`, not the usual values), packet
//! numbering against [`Limits`], arch and dump type. Afterwards every accessor reads a position
//! fixed at parse time, with no failure path and no panic. CPU id and registers are decoded only
//! when asked for. A v3 register area of an unknown size is not an error: the datagram's text
//! is still good, [`Datagram::registers`] just returns `None`.
//!
//! Layouts (little-endian):
//!
//! ```text
//! v2: version@0 header_size@2 arch@4 dump_id@6 type@8 packet_count@10 packet_no@14
//!     reserved[7]@18 kernel_version[64]@25 reserved[128]@89 data[1024]@header_size
//! v3: version@0 dump_id@2 data_offset@4 arch@6 arch_offset@8 type@10 packet_count@12
//!     packet_no@16 boot_id@20 kernel_version[64]@24 user_blob[128]@88 (blob variant only)
//!     cpu[4]@arch_offset pt_regs@arch_offset+4 .. data_offset, data[1024]@data_offset
//! ```

use core::fmt;

use crate::encode::Variant;
use crate::{DATA_LEN, MAX_DATAGRAM_LEN};

/// Byte offsets of the header fields. Shared with the encoder so both sides agree.
pub(crate) mod field {
    pub const VERSION: usize = 0;

    pub const V2_HEADER_SIZE: usize = 2;
    pub const V2_ARCH: usize = 4;
    pub const V2_DUMP_ID: usize = 6;
    pub const V2_TYPE: usize = 8;
    pub const V2_PACKET_COUNT: usize = 10;
    pub const V2_PACKET_NO: usize = 14;
    pub const V2_KERNEL_VERSION: usize = 25;
    /// Everything up to the end of `kernel_version`: the least a v2 header can be.
    pub const V2_FIXED_LEN: usize = 89;
    /// `sizeof(msg.header)` in the original patch.
    pub const V2_HEADER_LEN: usize = 217;

    pub const V3_DUMP_ID: usize = 2;
    pub const V3_DATA_OFFSET: usize = 4;
    pub const V3_ARCH: usize = 6;
    pub const V3_ARCH_OFFSET: usize = 8;
    pub const V3_TYPE: usize = 10;
    pub const V3_PACKET_COUNT: usize = 12;
    pub const V3_PACKET_NO: usize = 16;
    pub const V3_BOOT_ID: usize = 20;
    pub const V3_KERNEL_VERSION: usize = 24;
    pub const V3_USER_BLOB: usize = 88;
    /// The fixed part of a v3 header; the arch area cannot start before it.
    pub const V3_FIXED_LEN: usize = 88;
    /// An arch area at or after this offset leaves room for the user blob.
    pub const V3_BLOB_END: usize = V3_USER_BLOB + USER_BLOB_LEN;

    pub const KERNEL_VERSION_LEN: usize = 64;
    pub const USER_BLOB_LEN: usize = 128;
    /// vendor, family, model, stepping.
    pub const CPU_LEN: usize = 4;
}

/// The only arch the format defines (`NETOOPS_ARCH` for i386 and x86_64).
pub const ARCH_X86: u16 = 2;

/// Reads a little-endian u16 at a constant offset of a fixed-size array (checked at compile time).
#[inline(always)]
fn le16<const AT: usize, const N: usize>(b: &[u8; N]) -> u16 {
    const { assert!(AT + 2 <= N) };
    u16::from_le_bytes([b[AT], b[AT + 1]])
}

/// Reads a little-endian u32 at a constant offset of a fixed-size array (checked at compile time).
#[inline(always)]
fn le32<const AT: usize, const N: usize>(b: &[u8; N]) -> u32 {
    const { assert!(AT + 4 <= N) };
    u32::from_le_bytes([b[AT], b[AT + 1], b[AT + 2], b[AT + 3]])
}

/// A `u16` header field with a closed set of values: the enum (its discriminants are the
/// wire values) and `from_u16`, which knows exactly those values.
macro_rules! wire_u16_enum {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// The value for a wire field, if it is one of the known ones.
            pub const fn from_u16(v: u16) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_u16_enum! {
    /// Header layout version.
    pub enum Version {
        /// The original patch: fixed reserved fields, no registers.
        V2 = 2,
        /// The vendor-kernel form: boot id, optional user blob, CPU id and `pt_regs`.
        V3 = 3,
    }
}

wire_u16_enum! {
    /// What the dump was taken for.
    pub enum DumpType {
        /// Oops or panic (`NETOOPS_TYPE_PRINTK_BUFFER`).
        PrintkBuffer = 1,
        /// Requested dump from a still-running kernel (`NETOOPS_TYPE_PRINTK_BUFFER_SOFT`).
        SoftDump = 3,
    }
}

/// x86 CPU identification carried by v3 datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CpuId {
    pub vendor: u8,
    pub family: u8,
    pub model: u8,
    pub stepping: u8,
}

impl CpuId {
    /// From the four bytes of the wire field, in order.
    pub const fn from_bytes([vendor, family, model, stepping]: [u8; 4]) -> Self {
        CpuId {
            vendor,
            family,
            model,
            stepping,
        }
    }

    /// The four bytes of the wire field.
    pub const fn to_bytes(self) -> [u8; 4] {
        [self.vendor, self.family, self.model, self.stepping]
    }
}

const X86_64_NAMES: [&str; 21] = [
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
    "orig_ax", "ip", "cs", "flags", "sp", "ss",
];
const I386_NAMES: [&str; 17] = [
    "bx", "cx", "dx", "si", "di", "bp", "ax", "ds", "es", "fs", "gs", "orig_ax", "ip", "cs",
    "flags", "sp", "ss",
];
const I386_NO_GS_NAMES: [&str; 16] = [
    "bx", "cx", "dx", "si", "di", "bp", "ax", "ds", "es", "fs", "orig_ax", "ip", "cs", "flags",
    "sp", "ss",
];
const I386_NO_STACK_NAMES: [&str; 15] = [
    "bx", "cx", "dx", "si", "di", "bp", "ax", "ds", "es", "fs", "gs", "orig_ax", "ip", "cs",
    "flags",
];

/// Which `struct pt_regs` the sender's kernel had; told apart by the register area's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterLayout {
    /// 21 u64 words, 168 bytes.
    X86_64,
    /// 17 u32 words, 68 bytes (with `gs`).
    I386,
    /// 16 u32 words, 64 bytes (older kernels without `gs`).
    I386NoGs,
    /// 15 u32 words, 60 bytes: the [`RegisterLayout::I386`] layout without `sp` and `ss`
    /// (a kernel-mode trap frame).
    I386NoStack,
}

impl RegisterLayout {
    /// All layouts.
    pub const ALL: [RegisterLayout; 4] =
        [Self::X86_64, Self::I386, Self::I386NoGs, Self::I386NoStack];

    /// The layout whose `pt_regs` is `len` bytes, if any. Zero bytes means no registers at all.
    pub const fn from_area_len(len: usize) -> Option<Self> {
        match len {
            168 => Some(Self::X86_64),
            68 => Some(Self::I386),
            64 => Some(Self::I386NoGs),
            60 => Some(Self::I386NoStack),
            _ => None,
        }
    }

    /// Bytes per register word on the wire.
    pub const fn word_size(self) -> usize {
        match self {
            Self::X86_64 => 8,
            Self::I386 | Self::I386NoGs | Self::I386NoStack => 4,
        }
    }

    /// Number of register words.
    pub const fn word_count(self) -> usize {
        self.names().len()
    }

    /// Size of the register area on the wire.
    pub const fn area_len(self) -> usize {
        self.word_size() * self.word_count()
    }

    /// Register names in wire order.
    pub const fn names(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &X86_64_NAMES,
            Self::I386 => &I386_NAMES,
            Self::I386NoGs => &I386_NO_GS_NAMES,
            Self::I386NoStack => &I386_NO_STACK_NAMES,
        }
    }

    /// Word indexes of ip, cs, flags and (when the frame has it) sp.
    const fn key_indexes(self) -> (usize, usize, usize, Option<usize>) {
        match self {
            Self::X86_64 => (16, 17, 18, Some(19)),
            Self::I386 => (12, 13, 14, Some(15)),
            Self::I386NoGs => (11, 12, 13, Some(14)),
            Self::I386NoStack => (12, 13, 14, None),
        }
    }
}

/// Decoded `pt_regs`. i386 words are zero-extended; only the first `count` words are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    pub layout: RegisterLayout,
    pub words: [u64; 21],
    pub count: u8,
}

impl Registers {
    fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    /// Instruction pointer at the crash.
    pub fn ip(&self) -> u64 {
        self.word(self.layout.key_indexes().0)
    }

    /// Code segment selector.
    pub fn cs(&self) -> u64 {
        self.word(self.layout.key_indexes().1)
    }

    /// Flags register.
    pub fn flags(&self) -> u64 {
        self.word(self.layout.key_indexes().2)
    }

    /// Stack pointer; `None` for an i386 kernel-mode trap frame, which does not carry it.
    pub fn sp(&self) -> Option<u64> {
        self.layout.key_indexes().3.map(|i| self.word(i))
    }

    /// Register names in wire order for this layout.
    pub fn names(&self) -> &'static [&'static str] {
        self.layout.names()
    }

    /// `(name, value)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.names().iter().copied().zip(self.words.iter().copied())
    }
}

/// Receiver-side bounds on what a datagram may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest acceptable `packet_count`. A reassembler sizes per-dump state by it.
    pub max_packet_count: u32,
}

impl Default for Limits {
    /// 4096 packets: a 4 MiB log ring in 1024-byte chunks.
    fn default() -> Self {
        Self {
            max_packet_count: 4096,
        }
    }
}

/// Why a datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the fixed header or than its data offset plus 1024 (e.g. truncated).
    TooShort { len: usize },
    /// Longer than its data offset plus 1024, or than any acceptable datagram.
    TooLong { len: usize },
    /// Version field is neither 2 nor 3.
    UnknownVersion(u16),
    /// `header_size`, `arch_offset` or `data_offset` overlap the fixed header, each other, or
    /// point past anything a datagram can hold.
    BadOffsets,
    /// `packet_count` is zero, so no `packet_no` can be valid.
    ZeroPacketCount,
    /// `packet_count` above [`Limits::max_packet_count`].
    TooManyPackets { count: u32, max: u32 },
    /// `packet_no` is not below `packet_count`.
    PacketNoOutOfRange { packet_no: u32, packet_count: u32 },
    /// Arch other than 2 (x86).
    UnknownArch(u16),
    /// Dump type other than 1 (printk buffer) or 3 (soft dump).
    UnknownType(u16),
}

impl WireError {
    /// The fieldless kind, for indexing drop counters.
    pub fn kind(&self) -> WireErrorKind {
        match self {
            Self::TooShort { .. } => WireErrorKind::TooShort,
            Self::TooLong { .. } => WireErrorKind::TooLong,
            Self::UnknownVersion(_) => WireErrorKind::UnknownVersion,
            Self::BadOffsets => WireErrorKind::BadOffsets,
            Self::ZeroPacketCount => WireErrorKind::ZeroPacketCount,
            Self::TooManyPackets { .. } => WireErrorKind::TooManyPackets,
            Self::PacketNoOutOfRange { .. } => WireErrorKind::PacketNoOutOfRange,
            Self::UnknownArch(_) => WireErrorKind::UnknownArch,
            Self::UnknownType(_) => WireErrorKind::UnknownType,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(f, "datagram too short ({len} bytes)"),
            Self::TooLong { len } => write!(f, "datagram too long ({len} bytes)"),
            Self::UnknownVersion(v) => write!(f, "unknown netoops version {v}"),
            Self::BadOffsets => f.write_str("header, arch or data offset out of range"),
            Self::ZeroPacketCount => f.write_str("packet_count is zero"),
            Self::TooManyPackets { count, max } => {
                write!(f, "packet_count {count} exceeds the limit of {max}")
            }
            Self::PacketNoOutOfRange {
                packet_no,
                packet_count,
            } => {
                write!(
                    f,
                    "packet_no {packet_no} is not below packet_count {packet_count}"
                )
            }
            Self::UnknownArch(a) => write!(f, "unknown arch {a} (only 2, x86, is defined)"),
            Self::UnknownType(t) => write!(f, "unknown dump type {t}"),
        }
    }
}

impl core::error::Error for WireError {}

/// Fieldless mirror of [`WireError`], used to index drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum WireErrorKind {
    TooShort,
    TooLong,
    UnknownVersion,
    BadOffsets,
    ZeroPacketCount,
    TooManyPackets,
    PacketNoOutOfRange,
    UnknownArch,
    UnknownType,
}

impl WireErrorKind {
    /// Number of kinds (length of a counter array).
    pub const COUNT: usize = 9;

    /// Every kind, in [`WireErrorKind::index`] order.
    pub const ALL: [WireErrorKind; 9] = [
        Self::TooShort,
        Self::TooLong,
        Self::UnknownVersion,
        Self::BadOffsets,
        Self::ZeroPacketCount,
        Self::TooManyPackets,
        Self::PacketNoOutOfRange,
        Self::UnknownArch,
        Self::UnknownType,
    ];

    /// Dense index in `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// snake_case name for metrics and logs.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// A validated view of one datagram. Every accessor is infallible.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    bytes: &'a [u8],
    kernel_version: &'a [u8; field::KERNEL_VERSION_LEN],
    /// v3: CPU id then `pt_regs` (`arch_offset..data_offset`, at least 4 bytes). v2: empty.
    arch_area: &'a [u8],
    user_blob: Option<&'a [u8; field::USER_BLOB_LEN]>,
    data: &'a [u8; DATA_LEN],
    packet_count: u32,
    packet_no: u32,
    boot_id: u32,
    dump_id: u16,
    version: Version,
    dump_type: DumpType,
}

/// Checks the data offset against the datagram's length and returns the data.
#[inline(always)]
fn data_at(bytes: &[u8], offset: usize, min_offset: usize) -> Result<&[u8; DATA_LEN], WireError> {
    let len = bytes.len();
    if offset < min_offset || offset > len || offset + DATA_LEN > MAX_DATAGRAM_LEN {
        return Err(WireError::BadOffsets);
    }
    let end = offset + DATA_LEN;
    if len < end {
        return Err(WireError::TooShort { len });
    }
    if len > end {
        return Err(WireError::TooLong { len });
    }
    // len == end, so the last DATA_LEN bytes are exactly data[].
    bytes
        .last_chunk::<DATA_LEN>()
        .ok_or(WireError::TooShort { len })
}

/// Reads and checks the fields both versions share, at their offsets in the fixed header
/// `head` (`ARCH`, `TYPE`, `COUNT`, `NO`); returns the dump type, packet count and number.
#[inline(always)]
fn check_fields<
    const ARCH: usize,
    const TYPE: usize,
    const COUNT: usize,
    const NO: usize,
    const N: usize,
>(
    head: &[u8; N],
    limits: &Limits,
) -> Result<(DumpType, u32, u32), WireError> {
    let arch = le16::<ARCH, N>(head);
    let dump_type = le16::<TYPE, N>(head);
    let packet_count = le32::<COUNT, N>(head);
    let packet_no = le32::<NO, N>(head);
    if packet_count == 0 {
        return Err(WireError::ZeroPacketCount);
    }
    if packet_count > limits.max_packet_count {
        return Err(WireError::TooManyPackets {
            count: packet_count,
            max: limits.max_packet_count,
        });
    }
    if packet_no >= packet_count {
        return Err(WireError::PacketNoOutOfRange {
            packet_no,
            packet_count,
        });
    }
    if arch != ARCH_X86 {
        return Err(WireError::UnknownArch(arch));
    }
    let dump_type = DumpType::from_u16(dump_type).ok_or(WireError::UnknownType(dump_type))?;
    Ok((dump_type, packet_count, packet_no))
}

/// The 64-byte kernel version field at `at`.
#[inline(always)]
fn kernel_version_at(bytes: &[u8], at: usize) -> Result<&[u8; 64], WireError> {
    bytes
        .get(at..)
        .and_then(|b| b.first_chunk::<{ field::KERNEL_VERSION_LEN }>())
        .ok_or(WireError::TooShort { len: bytes.len() })
}

impl<'a> Datagram<'a> {
    /// Validates `bytes` as one netoops datagram. This is the only fallible step.
    #[inline]
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Datagram<'a>, WireError> {
        let len = bytes.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(WireError::TooLong { len });
        }
        let Some(version) = bytes.first_chunk::<2>() else {
            return Err(WireError::TooShort { len });
        };
        match le16::<{ field::VERSION }, 2>(version) {
            2 => Self::parse_v2(bytes, limits),
            3 => Self::parse_v3(bytes, limits),
            v => Err(WireError::UnknownVersion(v)),
        }
    }

    #[inline]
    fn parse_v2(bytes: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        use field::*;
        let Some(head) = bytes.first_chunk::<V2_FIXED_LEN>() else {
            return Err(WireError::TooShort { len: bytes.len() });
        };
        let header_size = usize::from(le16::<V2_HEADER_SIZE, V2_FIXED_LEN>(head));
        let data = data_at(bytes, header_size, V2_FIXED_LEN)?;
        let (dump_type, packet_count, packet_no) =
            check_fields::<V2_ARCH, V2_TYPE, V2_PACKET_COUNT, V2_PACKET_NO, V2_FIXED_LEN>(
                head, limits,
            )?;
        Ok(Self {
            bytes,
            kernel_version: kernel_version_at(bytes, V2_KERNEL_VERSION)?,
            arch_area: &[],
            user_blob: None,
            data,
            packet_count,
            packet_no,
            boot_id: 0,
            dump_id: le16::<V2_DUMP_ID, V2_FIXED_LEN>(head),
            version: Version::V2,
            dump_type,
        })
    }

    #[inline]
    fn parse_v3(bytes: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        use field::*;
        let Some(head) = bytes.first_chunk::<V3_FIXED_LEN>() else {
            return Err(WireError::TooShort { len: bytes.len() });
        };
        let data_offset = usize::from(le16::<V3_DATA_OFFSET, V3_FIXED_LEN>(head));
        let arch_offset = usize::from(le16::<V3_ARCH_OFFSET, V3_FIXED_LEN>(head));
        if arch_offset < V3_FIXED_LEN || arch_offset + CPU_LEN > data_offset {
            return Err(WireError::BadOffsets);
        }
        let data = data_at(bytes, data_offset, V3_FIXED_LEN + CPU_LEN)?;
        let arch_area = bytes
            .get(arch_offset..data_offset)
            .ok_or(WireError::BadOffsets)?;
        let user_blob = if arch_offset >= V3_BLOB_END {
            bytes
                .get(V3_USER_BLOB..)
                .and_then(|b| b.first_chunk::<USER_BLOB_LEN>())
        } else {
            None
        };
        let (dump_type, packet_count, packet_no) =
            check_fields::<V3_ARCH, V3_TYPE, V3_PACKET_COUNT, V3_PACKET_NO, V3_FIXED_LEN>(
                head, limits,
            )?;
        Ok(Self {
            bytes,
            kernel_version: kernel_version_at(bytes, V3_KERNEL_VERSION)?,
            arch_area,
            user_blob,
            data,
            packet_count,
            packet_no,
            boot_id: le32::<V3_BOOT_ID, V3_FIXED_LEN>(head),
            dump_id: le16::<V3_DUMP_ID, V3_FIXED_LEN>(head),
            version: Version::V3,
            dump_type,
        })
    }

    /// Header version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Seconds since the sender booted, modulo 65536, at the time of the dump.
    pub fn dump_id(&self) -> u16 {
        self.dump_id
    }

    /// Oops/panic or soft dump.
    pub fn dump_type(&self) -> DumpType {
        self.dump_type
    }

    /// Number of distinct packets in this dump (validated `>= 1`, within limits).
    pub fn packet_count(&self) -> u32 {
        self.packet_count
    }

    /// This packet's number, `< packet_count`; 0 is the newest 1024 bytes of the log.
    pub fn packet_no(&self) -> u32 {
        self.packet_no
    }

    /// Boot id set by the sender's userspace (v3); 0 for v2.
    pub fn boot_id(&self) -> u32 {
        self.boot_id
    }

    /// The 64-byte kernel version field, cut at its first NUL (it need not have one).
    pub fn kernel_version(&self) -> &'a [u8] {
        let kv: &'a [u8] = self.kernel_version;
        match kv.iter().position(|&b| b == 0) {
            Some(end) => kv.get(..end).unwrap_or(kv),
            None => kv,
        }
    }

    /// The 128-byte user blob (v3 datagrams whose arch area leaves room for it).
    pub fn user_blob(&self) -> Option<&'a [u8; 128]> {
        self.user_blob
    }

    /// CPU identification (v3 only).
    pub fn cpu(&self) -> Option<CpuId> {
        self.arch_area
            .first_chunk::<{ field::CPU_LEN }>()
            .map(|&b| CpuId::from_bytes(b))
    }

    /// Layout of the register area, or `None` when it is empty or of an unknown size (and for v2).
    pub fn register_layout(&self) -> Option<RegisterLayout> {
        RegisterLayout::from_area_len(self.arch_area.len().checked_sub(field::CPU_LEN)?)
    }

    /// Registers at the crash; `None` when absent, of an unknown layout, or all zero.
    pub fn registers(&self) -> Option<Registers> {
        let layout = self.register_layout()?;
        let area = self.arch_area.get(field::CPU_LEN..)?;
        let mut words = [0u64; 21];
        match layout.word_size() {
            8 => {
                for (word, bytes) in words.iter_mut().zip(area.chunks_exact(8)) {
                    *word = bytes
                        .first_chunk::<8>()
                        .map_or(0, |b| u64::from_le_bytes(*b));
                }
            }
            _ => {
                for (word, bytes) in words.iter_mut().zip(area.chunks_exact(4)) {
                    *word = bytes
                        .first_chunk::<4>()
                        .map_or(0, |b| u32::from_le_bytes(*b).into());
                }
            }
        }
        if words.iter().all(|&w| w == 0) {
            return None;
        }
        // word_count() is at most 21.
        let count = u8::try_from(layout.word_count()).unwrap_or(21);
        Some(Registers {
            layout,
            words,
            count,
        })
    }

    /// The 1024 data bytes (the tail chunk of a log piece is zero-padded by the sender).
    pub fn data(&self) -> &'a [u8; DATA_LEN] {
        self.data
    }

    /// The encoder variant this datagram best matches (i386 layouts map to `V3I386`).
    pub fn variant(&self) -> Variant {
        match (self.version, self.register_layout()) {
            (Version::V2, _) => Variant::V2,
            (
                Version::V3,
                Some(RegisterLayout::I386 | RegisterLayout::I386NoGs | RegisterLayout::I386NoStack),
            ) => Variant::V3I386,
            (Version::V3, _) if self.user_blob.is_some() => Variant::V3X86_64Blob,
            (Version::V3, _) => Variant::V3X86_64,
        }
    }

    /// The whole datagram as received.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Offset of data[] (v2 `header_size`, v3 `data_offset`).
    pub fn data_offset(&self) -> usize {
        self.bytes.len() - DATA_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode, DumpHeader};

    fn limits() -> Limits {
        Limits::default()
    }

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A hand-built v2 datagram with the given header_size.
    fn v2(header_size: usize) -> [u8; 2048] {
        let mut b = [0u8; 2048];
        put16(&mut b, 0, 2);
        put16(&mut b, 2, header_size as u16);
        put16(&mut b, 4, 2);
        put16(&mut b, 6, 0x1234);
        put16(&mut b, 8, 1);
        put32(&mut b, 10, 5);
        put32(&mut b, 14, 4);
        b[25..25 + 6].copy_from_slice(b"6.1.0\0");
        for (i, x) in b[header_size..header_size + DATA_LEN]
            .iter_mut()
            .enumerate()
        {
            *x = (i % 251) as u8 + 1;
        }
        b
    }

    /// A hand-built v3 datagram with the given offsets, register words of `word` bytes each
    /// filled with 1, 2, 3, ... and data bytes `0xAB`. Returns the buffer and its length.
    fn v3(arch_offset: usize, data_offset: usize, word: usize) -> ([u8; 2048], usize) {
        let mut b = [0u8; 2048];
        put16(&mut b, 0, 3);
        put16(&mut b, 2, 777);
        put16(&mut b, 4, data_offset as u16);
        put16(&mut b, 6, 2);
        put16(&mut b, 8, arch_offset as u16);
        put16(&mut b, 10, 3);
        put32(&mut b, 12, 10);
        put32(&mut b, 16, 9);
        put32(&mut b, 20, 0xdead_beef);
        b[24..24 + 64].fill(b'k');
        b[arch_offset..arch_offset + 4].copy_from_slice(&[1, 6, 85, 7]);
        let regs = &mut b[arch_offset + 4..data_offset];
        for (i, w) in regs.chunks_exact_mut(word).enumerate() {
            w[0] = i as u8 + 1;
        }
        b[data_offset..data_offset + DATA_LEN].fill(0xAB);
        (b, data_offset + DATA_LEN)
    }

    #[test]
    fn v2_with_standard_header() {
        let b = v2(217);
        let d = Datagram::parse(&b[..1241], &limits()).unwrap();
        assert_eq!(d.version(), Version::V2);
        assert_eq!(d.dump_id(), 0x1234);
        assert_eq!(d.dump_type(), DumpType::PrintkBuffer);
        assert_eq!((d.packet_count(), d.packet_no()), (5, 4));
        assert_eq!(d.boot_id(), 0);
        assert_eq!(d.kernel_version(), b"6.1.0");
        assert_eq!(d.data()[..], b[217..1241]);
        assert_eq!(d.cpu(), None);
        assert_eq!(d.registers(), None);
        assert_eq!(d.register_layout(), None);
        assert_eq!(d.user_blob(), None);
        assert_eq!(d.variant(), Variant::V2);
        assert_eq!(d.data_offset(), 217);
        assert_eq!(d.bytes().len(), 1241);
    }

    #[test]
    fn v2_trusts_header_size() {
        for hs in [89, 150, 300, 1024] {
            let b = v2(hs);
            let d = Datagram::parse(&b[..hs + DATA_LEN], &limits()).unwrap();
            assert_eq!(d.data()[..], b[hs..hs + DATA_LEN], "header_size {hs}");
            assert_eq!(d.data()[0], 1);
            assert_eq!(d.kernel_version(), b"6.1.0");
        }
    }

    #[test]
    fn v3_x86_64_registers() {
        let (b, len) = v3(88, 260, 8);
        assert_eq!(len, 1284);
        let d = Datagram::parse(&b[..len], &limits()).unwrap();
        assert_eq!(d.version(), Version::V3);
        assert_eq!(d.dump_id(), 777);
        assert_eq!(d.dump_type(), DumpType::SoftDump);
        assert_eq!(d.boot_id(), 0xdead_beef);
        assert_eq!(d.kernel_version(), [b'k'; 64]);
        assert_eq!(d.cpu(), Some(CpuId::from_bytes([1, 6, 85, 7])));
        assert_eq!(d.register_layout(), Some(RegisterLayout::X86_64));
        let r = d.registers().unwrap();
        assert_eq!(r.count, 21);
        assert_eq!(r.ip(), 17);
        assert_eq!(r.cs(), 18);
        assert_eq!(r.flags(), 19);
        assert_eq!(r.sp(), Some(20));
        assert_eq!(r.iter().next(), Some(("r15", 1)));
        assert_eq!(r.iter().last(), Some(("ss", 21)));
        assert_eq!(d.user_blob(), None);
        assert_eq!(d.variant(), Variant::V3X86_64);
        assert_eq!(d.data(), &[0xAB; DATA_LEN]);
    }

    #[test]
    fn v3_blob_variant() {
        let (mut b, len) = v3(216, 388, 8);
        b[88..216].fill(b'u');
        let d = Datagram::parse(&b[..len], &limits()).unwrap();
        assert_eq!(len, 1412);
        assert_eq!(d.user_blob(), Some(&[b'u'; 128]));
        assert_eq!(d.variant(), Variant::V3X86_64Blob);
        assert_eq!(d.registers().unwrap().ip(), 17);
    }

    #[test]
    fn v3_i386_layouts() {
        // (register area bytes, layout, (count, ip, cs, flags, sp), last register). Word k
        // holds k + 1.
        for (area, layout, words, last) in [
            // bx cx dx si di bp ax ds es fs gs orig_ax ip cs flags sp ss
            (
                68,
                RegisterLayout::I386,
                (17, 13, 14, 15, Some(16)),
                ("ss", 17),
            ),
            // no gs
            (
                64,
                RegisterLayout::I386NoGs,
                (16, 12, 13, 14, Some(15)),
                ("ss", 16),
            ),
            // kernel-mode trap frame, no sp/ss
            (
                60,
                RegisterLayout::I386NoStack,
                (15, 13, 14, 15, None),
                ("flags", 15),
            ),
        ] {
            let (b, len) = v3(88, 88 + 4 + area, 4);
            let d = Datagram::parse(&b[..len], &limits()).unwrap();
            let r = d.registers().unwrap();
            assert_eq!(r.layout, layout);
            assert_eq!((r.count, r.ip(), r.cs(), r.flags(), r.sp()), words);
            assert_eq!(r.iter().count(), usize::from(r.count));
            assert_eq!(r.iter().last(), Some(last));
            assert_eq!(d.variant(), Variant::V3I386, "{layout:?}");
        }
        assert_eq!(RegisterLayout::I386.names()[10], "gs");
    }

    #[test]
    fn i386_words_are_u32() {
        let (mut b, len) = v3(88, 160, 4);
        // ip is word 12 of the 68-byte layout
        b[92 + 12 * 4..92 + 13 * 4].copy_from_slice(&0xc100_1234u32.to_le_bytes());
        let d = Datagram::parse(&b[..len], &limits()).unwrap();
        assert_eq!(d.registers().unwrap().ip(), 0xc100_1234);
    }

    #[test]
    fn zero_registers_mean_none() {
        let (mut b, len) = v3(88, 260, 8);
        b[92..260].fill(0);
        let d = Datagram::parse(&b[..len], &limits()).unwrap();
        assert_eq!(d.register_layout(), Some(RegisterLayout::X86_64));
        assert_eq!(d.registers(), None);
        assert!(d.cpu().is_some());
    }

    #[test]
    fn odd_register_area_is_not_an_error() {
        for regs in [0, 4, 100, 167, 169] {
            let (b, len) = v3(88, 92 + regs, 4);
            let d = Datagram::parse(&b[..len], &limits()).unwrap();
            assert_eq!(d.register_layout(), None, "area {regs}");
            assert_eq!(d.registers(), None);
            assert_eq!(d.data(), &[0xAB; DATA_LEN]);
            assert_eq!(d.variant(), Variant::V3X86_64);
        }
    }

    #[test]
    fn kernel_version_without_nul_is_64_bytes() {
        let mut b = v2(217);
        b[25..89].fill(b'x');
        let d = Datagram::parse(&b[..1241], &limits()).unwrap();
        assert_eq!(d.kernel_version(), [b'x'; 64]);
        b[25..89].fill(0);
        let d = Datagram::parse(&b[..1241], &limits()).unwrap();
        assert_eq!(d.kernel_version(), b"");
    }

    #[test]
    fn encoded_datagrams_parse() {
        for v in Variant::ALL {
            let h = DumpHeader::new(v, 9, "5.10.0-test");
            let mut out = [0u8; 2048];
            let n = encode(&h, 3, 2, &[b'z'; DATA_LEN], &mut out).unwrap();
            let d = Datagram::parse(&out[..n], &limits()).unwrap();
            assert_eq!(d.variant(), v);
            assert_eq!(d.kernel_version(), b"5.10.0-test");
        }
    }

    fn err(bytes: &[u8]) -> WireError {
        Datagram::parse(bytes, &limits()).unwrap_err()
    }

    #[test]
    fn error_too_short() {
        assert_eq!(err(&[]), WireError::TooShort { len: 0 });
        assert_eq!(err(&[2]), WireError::TooShort { len: 1 });
        let b = v2(217);
        assert_eq!(err(&b[..88]), WireError::TooShort { len: 88 });
        assert_eq!(err(&b[..1024]), WireError::TooShort { len: 1024 });
        assert_eq!(err(&b[..1240]), WireError::TooShort { len: 1240 });
        let (b, len) = v3(88, 260, 8);
        assert_eq!(err(&b[..87]), WireError::TooShort { len: 87 });
        // netconsd's 1024-byte receive buffer truncates
        assert_eq!(err(&b[..1024]), WireError::TooShort { len: 1024 });
        assert_eq!(err(&b[..len - 1]), WireError::TooShort { len: len - 1 });
    }

    #[test]
    fn error_too_long() {
        let b = v2(217);
        assert_eq!(err(&b[..1242]), WireError::TooLong { len: 1242 });
        let (b, len) = v3(88, 260, 8);
        assert_eq!(err(&b[..len + 1]), WireError::TooLong { len: len + 1 });
        let big = [0u8; MAX_DATAGRAM_LEN + 1];
        assert_eq!(
            err(&big),
            WireError::TooLong {
                len: MAX_DATAGRAM_LEN + 1
            }
        );
    }

    #[test]
    fn error_unknown_version() {
        let mut b = v2(217);
        put16(&mut b, 0, 4);
        assert_eq!(err(&b[..1241]), WireError::UnknownVersion(4));
        put16(&mut b, 0, 0x0200);
        assert_eq!(err(&b[..1241]), WireError::UnknownVersion(0x0200));
    }

    #[test]
    fn error_bad_offsets() {
        // v2 header_size inside the fixed header
        let b = v2(88);
        assert_eq!(err(&b[..88 + DATA_LEN]), WireError::BadOffsets);
        let mut b = v2(217);
        put16(&mut b, 2, 0);
        assert_eq!(err(&b[..1241]), WireError::BadOffsets);
        // header_size beyond the datagram / beyond anything acceptable
        put16(&mut b, 2, 1500);
        assert_eq!(err(&b[..1241]), WireError::BadOffsets);
        put16(&mut b, 2, 1025);
        assert_eq!(err(&b[..2048]), WireError::BadOffsets);
        // v3 arch_offset inside the fixed part
        let (mut b, len) = v3(88, 260, 8);
        put16(&mut b, 8, 87);
        assert_eq!(err(&b[..len]), WireError::BadOffsets);
        // arch area overlapping data (less than 4 bytes of CPU id)
        put16(&mut b, 8, 257);
        assert_eq!(err(&b[..len]), WireError::BadOffsets);
        put16(&mut b, 8, 300);
        assert_eq!(err(&b[..len]), WireError::BadOffsets);
        // data_offset beyond the datagram
        put16(&mut b, 8, 88);
        put16(&mut b, 4, 2000);
        assert_eq!(err(&b[..len]), WireError::BadOffsets);
        put16(&mut b, 4, u16::MAX);
        put16(&mut b, 8, u16::MAX - 4);
        assert_eq!(err(&b[..len]), WireError::BadOffsets);
    }

    #[test]
    fn error_packet_numbering() {
        let (mut b, len) = v3(88, 260, 8);
        put32(&mut b, 12, 0);
        assert_eq!(err(&b[..len]), WireError::ZeroPacketCount);
        put32(&mut b, 12, 4097);
        assert_eq!(
            err(&b[..len]),
            WireError::TooManyPackets {
                count: 4097,
                max: 4096
            }
        );
        let tight = Limits {
            max_packet_count: 9,
        };
        put32(&mut b, 12, 10);
        assert_eq!(
            Datagram::parse(&b[..len], &tight).unwrap_err(),
            WireError::TooManyPackets { count: 10, max: 9 }
        );
        put32(&mut b, 16, 10);
        assert_eq!(
            err(&b[..len]),
            WireError::PacketNoOutOfRange {
                packet_no: 10,
                packet_count: 10
            }
        );
        let mut b = v2(217);
        put32(&mut b, 14, 5);
        assert_eq!(
            err(&b[..1241]),
            WireError::PacketNoOutOfRange {
                packet_no: 5,
                packet_count: 5
            }
        );
    }

    #[test]
    fn error_arch_and_type() {
        let mut b = v2(217);
        put16(&mut b, 4, 3);
        assert_eq!(err(&b[..1241]), WireError::UnknownArch(3));
        let mut b = v2(217);
        put16(&mut b, 8, 2);
        assert_eq!(err(&b[..1241]), WireError::UnknownType(2));
        let (mut b, len) = v3(88, 260, 8);
        put16(&mut b, 6, 0);
        assert_eq!(err(&b[..len]), WireError::UnknownArch(0));
        let (mut b, len) = v3(88, 260, 8);
        put16(&mut b, 10, 0);
        assert_eq!(err(&b[..len]), WireError::UnknownType(0));
    }

    #[test]
    fn error_kinds_are_dense_and_named() {
        for (i, k) in WireErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(k.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(WireErrorKind::ALL.len(), WireErrorKind::COUNT);
        assert_eq!(WireError::BadOffsets.kind(), WireErrorKind::BadOffsets);
        assert_eq!(WireError::TooShort { len: 3 }.kind().name(), "too_short");
        assert_eq!(
            WireError::PacketNoOutOfRange {
                packet_no: 1,
                packet_count: 1
            }
            .kind(),
            WireErrorKind::PacketNoOutOfRange
        );
    }

    /// Every accessor, to prove none of them can panic on a parsed datagram.
    fn touch_everything(d: &Datagram<'_>) -> usize {
        let mut sum = d.kernel_version().len() + d.data().len() + d.bytes().len() + d.data_offset();
        sum += usize::from(d.dump_id()) + d.packet_no() as usize + d.boot_id() as usize;
        sum += d.user_blob().map_or(0, |b| b.len());
        sum += d.cpu().map_or(0, |c| usize::from(c.model));
        sum += d.register_layout().map_or(0, |l| l.area_len());
        if let Some(r) = d.registers() {
            sum += r.iter().count() + (r.ip() ^ r.cs() ^ r.flags() ^ r.sp().unwrap_or(0)) as usize;
        }
        sum + d.variant().datagram_len() + d.version() as usize + d.dump_type() as usize
    }

    proptest::proptest! {
        #[test]
        fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2200)) {
            if let Ok(d) = Datagram::parse(&bytes, &limits()) {
                touch_everything(&d);
            }
        }

        #[test]
        fn prop_mutated_datagrams_never_panic(
            base in 0usize..4,
            edits in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..2100,
        ) {
            let (mut b, len) = match base {
                0 => (v2(217), 1241),
                1 => v3(88, 260, 8),
                2 => v3(216, 388, 8),
                _ => v3(88, 160, 4),
            };
            for (at, v) in edits {
                b[at] = v;
            }
            // Most edits land in data; aim some at the header offsets too.
            let len = if cut < 2048 && cut % 3 == 0 { cut } else { len };
            match Datagram::parse(&b[..len], &limits()) {
                Ok(d) => {
                    touch_everything(&d);
                    proptest::prop_assert_eq!(d.data_offset() + DATA_LEN, len);
                }
                Err(e) => {
                    proptest::prop_assert!(e.kind().index() < WireErrorKind::COUNT);
                }
            }
        }
    }

    #[test]
    fn error_display_is_one_line() {
        use core::fmt::Write;
        struct Line([u8; 128], usize);
        impl Write for Line {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.1 + s.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut l = Line([0; 128], 0);
        write!(
            l,
            "{}",
            WireError::TooManyPackets {
                count: 5000,
                max: 4096
            }
        )
        .unwrap();
        assert_eq!(&l.0[..l.1], b"packet_count 5000 exceeds the limit of 4096");
    }
}
