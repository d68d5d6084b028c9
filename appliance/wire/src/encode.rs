//! Writing netoops datagrams, and the exact behaviour of the sender that produces them.
//!
//! [`encode`] writes one datagram of a [`Variant`] into a caller's buffer (no allocation), for the
//! packet generator and for tests. [`SenderModel`] reproduces the original kernel sender
//! (`netoops_send_segment` in the v2 patch, unchanged in v3): the log arrives as two pieces, s1
//! (older) and s2 (newer); each round sends s2 then s1, last chunk of a piece first, so every round
//! sends `packet_no` 0, 1, ... ascending and packet 0 is the newest 1024 bytes. The tail chunk of a
//! piece is zero-padded, and when a piece's length is an exact multiple of 1024 the tail chunk goes
//! out as 1024 zero bytes (`memset` of `l % 1024` onwards with nothing copied): its text is lost.

use core::str::FromStr;

use crate::netoops::{field, CpuId, Datagram, DumpType, RegisterLayout, Version, ARCH_X86};
use crate::DATA_LEN;

/// The datagram shapes seen in the wild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
pub enum Variant {
    /// The original patch: 1241 bytes, `header_size` 217.
    #[strum(serialize = "v2")]
    V2,
    /// v3 on x86_64: `arch_offset` 88, `data_offset` 260, 1284 bytes.
    #[strum(serialize = "v3")]
    V3X86_64,
    /// v3 on x86_64 with the 128-byte user blob: `arch_offset` 216, `data_offset` 388, 1412 bytes.
    #[strum(serialize = "v3-blob")]
    V3X86_64Blob,
    /// v3 on i386 with the 68-byte `pt_regs`: `arch_offset` 88, `data_offset` 160, 1184 bytes.
    #[strum(serialize = "v3-i386")]
    V3I386,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 4] = [Self::V2, Self::V3X86_64, Self::V3X86_64Blob, Self::V3I386];

    /// Where data[] starts (`header_size` for v2, `data_offset` for v3).
    pub const fn data_offset(self) -> usize {
        match self.arch_offset() {
            None => field::V2_HEADER_LEN,
            Some(arch) => arch + field::CPU_LEN + self.register_area_len(),
        }
    }

    /// Where the CPU id and registers start (v3 only).
    pub const fn arch_offset(self) -> Option<usize> {
        match self {
            Self::V2 => None,
            Self::V3X86_64 | Self::V3I386 => Some(field::V3_FIXED_LEN),
            Self::V3X86_64Blob => Some(field::V3_BLOB_END),
        }
    }

    /// The register layout this variant carries (v3 only).
    pub const fn register_layout(self) -> Option<RegisterLayout> {
        match self {
            Self::V2 => None,
            Self::V3X86_64 | Self::V3X86_64Blob => Some(RegisterLayout::X86_64),
            Self::V3I386 => Some(RegisterLayout::I386),
        }
    }

    const fn register_area_len(self) -> usize {
        match self.register_layout() {
            Some(layout) => layout.area_len(),
            None => 0,
        }
    }

    /// Header version.
    pub const fn version(self) -> Version {
        match self {
            Self::V2 => Version::V2,
            _ => Version::V3,
        }
    }

    /// Total datagram length.
    pub const fn datagram_len(self) -> usize {
        self.data_offset() + DATA_LEN
    }

    /// Offset of the `packet_no` field, for rewriting a datagram in place.
    pub const fn packet_no_offset(self) -> usize {
        match self {
            Self::V2 => field::V2_PACKET_NO,
            _ => field::V3_PACKET_NO,
        }
    }

    /// Short name, as accepted by [`Variant::from_str`]: "v2", "v3", "v3-blob", "v3-i386".
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// A variant name that is none of "v2", "v3", "v3-blob", "v3-i386".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown netoops variant (expected v2, v3, v3-blob or v3-i386)")]
pub struct UnknownVariant;

impl FromStr for Variant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or(UnknownVariant)
    }
}

/// Everything constant across one dump's datagrams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpHeader {
    pub variant: Variant,
    pub dump_id: u16,
    pub dump_type: DumpType,
    /// Written by v3 variants only.
    pub boot_id: u32,
    /// Copied as is; need not be NUL-terminated.
    pub kernel_version: [u8; 64],
    /// Written by v3 variants only.
    pub cpu: CpuId,
    /// All zero means no registers. `V3I386` writes the first 17 as u32 (low halves).
    pub registers: [u64; 21],
    /// Written by `V3X86_64Blob` only.
    pub user_blob: [u8; 128],
}

impl DumpHeader {
    /// A printk-buffer dump header with zero boot id, CPU id, registers and blob. The kernel
    /// version is truncated to 64 bytes, NUL-padded (like the sender's `strncpy`).
    pub fn new(variant: Variant, dump_id: u16, kernel_version: &str) -> Self {
        let mut kv = [0u8; 64];
        for (dst, src) in kv.iter_mut().zip(kernel_version.bytes()) {
            *dst = src;
        }
        Self {
            variant,
            dump_id,
            dump_type: DumpType::PrintkBuffer,
            boot_id: 0,
            kernel_version: kv,
            cpu: CpuId::default(),
            registers: [0; 21],
            user_blob: [0; 128],
        }
    }
}

impl DumpHeader {
    /// The header a datagram was sent with, as far as its best-matching [`Variant`] can carry it:
    /// registers are kept only when their layout is the variant's own (an i386 frame without
    /// `gs` or without `sp`/`ss` is dropped), the user blob only by `V3X86_64Blob` (an i386
    /// frame after a blob maps to `V3I386`), and the kernel version keeps its text up to the
    /// first NUL. Encoding the result reproduces every field [`Datagram`] reports.
    pub fn from_datagram(d: &Datagram<'_>) -> Self {
        let variant = d.variant();
        let mut kernel_version = [0u8; 64];
        for (dst, &src) in kernel_version.iter_mut().zip(d.kernel_version()) {
            *dst = src;
        }
        let registers = match d.registers() {
            Some(r) if Some(r.layout) == variant.register_layout() => r.words,
            _ => [0; 21],
        };
        Self {
            variant,
            dump_id: d.dump_id(),
            dump_type: d.dump_type(),
            boot_id: d.boot_id(),
            kernel_version,
            cpu: d.cpu().unwrap_or_default(),
            registers,
            user_blob: match d.user_blob() {
                Some(blob) if variant == Variant::V3X86_64Blob => *blob,
                _ => [0; 128],
            },
        }
    }
}

/// The output buffer cannot hold the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("buffer too small for the datagram")]
pub struct BufferTooSmall;

/// Copies `src` to `out[at..]`; the encoder only calls it with ranges inside the datagram.
fn put(out: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + src.len()) {
        dst.copy_from_slice(src);
    }
}

/// Writes one datagram; returns its length (== `header.variant.datagram_len()`).
///
/// Bytes of `out` past the datagram are left untouched; every byte within it is written.
pub fn encode(
    header: &DumpHeader,
    packet_count: u32,
    packet_no: u32,
    data: &[u8; DATA_LEN],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    use field::*;
    let variant = header.variant;
    let len = variant.datagram_len();
    let out = out.get_mut(..len).ok_or(BufferTooSmall)?;
    out.fill(0);
    let data_offset = variant.data_offset();
    // data_offset is below 2048, so the casts below are exact.
    let data_offset16 = data_offset as u16;
    put(out, VERSION, &(variant.version() as u16).to_le_bytes());
    match variant.arch_offset() {
        None => {
            put(out, V2_HEADER_SIZE, &data_offset16.to_le_bytes());
            put(out, V2_ARCH, &ARCH_X86.to_le_bytes());
            put(out, V2_DUMP_ID, &header.dump_id.to_le_bytes());
            put(out, V2_TYPE, &(header.dump_type as u16).to_le_bytes());
            put(out, V2_PACKET_COUNT, &packet_count.to_le_bytes());
            put(out, V2_PACKET_NO, &packet_no.to_le_bytes());
            put(out, V2_KERNEL_VERSION, &header.kernel_version);
        }
        Some(arch_offset) => {
            put(out, V3_DUMP_ID, &header.dump_id.to_le_bytes());
            put(out, V3_DATA_OFFSET, &data_offset16.to_le_bytes());
            put(out, V3_ARCH, &ARCH_X86.to_le_bytes());
            put(out, V3_ARCH_OFFSET, &(arch_offset as u16).to_le_bytes());
            put(out, V3_TYPE, &(header.dump_type as u16).to_le_bytes());
            put(out, V3_PACKET_COUNT, &packet_count.to_le_bytes());
            put(out, V3_PACKET_NO, &packet_no.to_le_bytes());
            put(out, V3_BOOT_ID, &header.boot_id.to_le_bytes());
            put(out, V3_KERNEL_VERSION, &header.kernel_version);
            if variant == Variant::V3X86_64Blob {
                put(out, V3_USER_BLOB, &header.user_blob);
            }
            put(out, arch_offset, &header.cpu.to_bytes());
            let regs_at = arch_offset + CPU_LEN;
            if let Some(layout) = variant.register_layout() {
                let size = layout.word_size();
                for (i, &word) in header
                    .registers
                    .iter()
                    .take(layout.word_count())
                    .enumerate()
                {
                    let bytes = word.to_le_bytes();
                    put(out, regs_at + i * size, bytes.get(..size).unwrap_or(&bytes));
                }
            }
        }
    }
    put(out, data_offset, data);
    Ok(len)
}

/// Rewrites `packet_no` and data[] of a datagram previously written by [`encode`] for `variant`,
/// so a generator can reuse one buffer per dump.
pub fn rewrite_packet(
    out: &mut [u8],
    variant: Variant,
    packet_no: u32,
    data: &[u8; DATA_LEN],
) -> Result<(), BufferTooSmall> {
    let out = out
        .get_mut(..variant.datagram_len())
        .ok_or(BufferTooSmall)?;
    put(out, variant.packet_no_offset(), &packet_no.to_le_bytes());
    put(out, variant.data_offset(), data);
    Ok(())
}

/// Number of 1024-byte chunks the sender makes of a piece of `len` bytes.
fn chunk_count(len: usize) -> usize {
    len.div_ceil(DATA_LEN)
}

/// The exact sender: the log's two pieces, chunking, padding and send order.
#[derive(Clone, Copy, Debug)]
pub struct SenderModel<'a> {
    s1: &'a [u8],
    s2: &'a [u8],
}

impl<'a> SenderModel<'a> {
    /// `NETOOPS_RETRANSMIT_COUNT`.
    pub const ROUNDS: u32 = 3;

    /// The sender given the kernel's two pieces: `s1` older, `s2` newer. Log text is s1 + s2.
    pub fn new(s1: &'a [u8], s2: &'a [u8]) -> Self {
        Self { s1, s2 }
    }

    /// The older piece.
    pub fn s1(&self) -> &'a [u8] {
        self.s1
    }

    /// The newer piece.
    pub fn s2(&self) -> &'a [u8] {
        self.s2
    }

    fn count2(&self) -> usize {
        chunk_count(self.s2.len())
    }

    /// `ceil(l1 / 1024) + ceil(l2 / 1024)` (saturating at `u32::MAX` for absurd logs).
    pub fn packet_count(&self) -> u32 {
        u32::try_from(chunk_count(self.s1.len()) + self.count2()).unwrap_or(u32::MAX)
    }

    /// The piece holding `packet_no`, the chunk index `i` within it, and whether it is the
    /// piece's tail (`i == count - 1`).
    fn locate(&self, packet_no: u32) -> Option<(&'a [u8], usize, bool)> {
        let p = usize::try_from(packet_no).ok()?;
        let count2 = self.count2();
        let (piece, nth) = if p < count2 {
            (self.s2, p)
        } else {
            (self.s1, p - count2)
        };
        let count = chunk_count(piece.len());
        // Chunks go out last first: packet nth of the piece is chunk count-1-nth.
        let i = count.checked_sub(1)?.checked_sub(nth)?;
        Some((piece, i, i + 1 == count))
    }

    /// Writes the 1024 data bytes the sender puts in packet `packet_no` into `out`
    /// (all zero for a `packet_no` outside the dump).
    pub fn chunk_into(&self, packet_no: u32, out: &mut [u8; DATA_LEN]) {
        out.fill(0);
        if let Some((piece, i, tail)) = self.locate(packet_no) {
            let len = if tail {
                piece.len() % DATA_LEN
            } else {
                DATA_LEN
            };
            let start = i * DATA_LEN;
            if let (Some(src), Some(dst)) = (piece.get(start..start + len), out.get_mut(..len)) {
                dst.copy_from_slice(src);
            }
        }
    }

    /// The 1024 data bytes the sender puts in packet `packet_no` (zero padding / all-zero chunk
    /// included).
    pub fn chunk(&self, packet_no: u32) -> [u8; DATA_LEN] {
        let mut out = [0; DATA_LEN];
        self.chunk_into(packet_no, &mut out);
        out
    }

    /// True when the sender zeroed this chunk entirely (piece length a multiple of 1024).
    pub fn is_zeroed(&self, packet_no: u32) -> bool {
        matches!(self.locate(packet_no), Some((piece, _, true)) if piece.len() % DATA_LEN == 0)
    }

    /// Send order for all rounds: `(round, packet_no)` pairs, `ROUNDS * packet_count` of them.
    pub fn schedule(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let count = self.packet_count();
        (0..Self::ROUNDS).flat_map(move |round| (0..count).map(move |p| (round, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netoops::Limits;
    use proptest::prelude::*;
    use std::vec;

    fn log(len: usize, salt: u8) -> [u8; 8192] {
        let mut b = [0u8; 8192];
        for (i, x) in b.iter_mut().enumerate().take(len) {
            *x = b'!' + ((i / 7 + salt as usize) % 90) as u8;
        }
        b
    }

    /// The sender's two log pieces, `l1` and `l2` bytes, of different text.
    fn pieces(l1: usize, l2: usize, salt: u8) -> (vec::Vec<u8>, vec::Vec<u8>) {
        (
            log(l1, salt)[..l1].to_vec(),
            log(l2, salt.wrapping_add(1))[..l2].to_vec(),
        )
    }

    #[test]
    fn variant_lengths() {
        assert_eq!(Variant::V2.datagram_len(), 1241);
        assert_eq!(Variant::V3X86_64.datagram_len(), 1284);
        assert_eq!(Variant::V3X86_64Blob.datagram_len(), 1412);
        assert_eq!(Variant::V3I386.datagram_len(), 1184);
        assert_eq!(Variant::V3X86_64.data_offset(), 260);
        assert_eq!(Variant::V3X86_64Blob.data_offset(), 388);
        for v in Variant::ALL {
            assert!(v.datagram_len() <= crate::MAX_DATAGRAM_LEN);
            assert_eq!(v.name().parse::<Variant>(), Ok(v));
        }
        assert_eq!("v4".parse::<Variant>(), Err(UnknownVariant));
        assert_eq!("V2".parse::<Variant>(), Err(UnknownVariant));
    }

    #[test]
    fn v2_bytes_match_the_patch_struct() {
        let mut h = DumpHeader::new(Variant::V2, 0xabcd, "6.1.0-13-amd64");
        h.dump_type = DumpType::SoftDump;
        let mut out = [0xEEu8; 1300];
        let n = encode(&h, 7, 3, &[b'd'; DATA_LEN], &mut out).unwrap();
        assert_eq!(n, 1241);
        assert_eq!(out[0..2], [2, 0]);
        assert_eq!(out[2..4], 217u16.to_le_bytes());
        assert_eq!(out[4..6], [2, 0]);
        assert_eq!(out[6..8], [0xcd, 0xab]);
        assert_eq!(out[8..10], [3, 0]);
        assert_eq!(out[10..14], 7u32.to_le_bytes());
        assert_eq!(out[14..18], 3u32.to_le_bytes());
        assert_eq!(out[18..25], [0; 7]);
        assert_eq!(&out[25..39], b"6.1.0-13-amd64");
        assert!(out[39..217].iter().all(|&b| b == 0));
        assert!(out[217..1241].iter().all(|&b| b == b'd'));
        assert!(
            out[1241..].iter().all(|&b| b == 0xEE),
            "bytes past the datagram untouched"
        );
        assert_eq!(
            encode(&h, 7, 3, &[0; DATA_LEN], &mut out[..1240]),
            Err(BufferTooSmall)
        );
    }

    #[test]
    fn v3_bytes_at_their_offsets() {
        let mut h = DumpHeader::new(Variant::V3X86_64Blob, 5, "k");
        h.boot_id = 0x0102_0304;
        h.cpu = CpuId::from_bytes([1, 6, 0x55, 4]);
        h.registers[16] = 0xffff_ffff_8100_0000;
        h.user_blob = [b'b'; 128];
        let mut out = [0u8; 2048];
        let n = encode(&h, 1, 0, &[1; DATA_LEN], &mut out).unwrap();
        assert_eq!(n, 1412);
        assert_eq!(out[0..2], [3, 0]);
        assert_eq!(out[2..4], [5, 0]);
        assert_eq!(out[4..6], 388u16.to_le_bytes());
        assert_eq!(out[6..8], [2, 0]);
        assert_eq!(out[8..10], 216u16.to_le_bytes());
        assert_eq!(out[10..12], [1, 0]);
        assert_eq!(out[20..24], 0x0102_0304u32.to_le_bytes());
        assert_eq!(out[24], b'k');
        assert!(out[88..216].iter().all(|&b| b == b'b'));
        assert_eq!(out[216..220], [1, 6, 0x55, 4]);
        assert_eq!(
            out[220 + 16 * 8..220 + 17 * 8],
            0xffff_ffff_8100_0000u64.to_le_bytes()
        );
    }

    #[test]
    fn round_trip_every_variant() {
        for v in Variant::ALL {
            let mut h = DumpHeader::new(v, 4242, "6.6.0");
            h.dump_type = DumpType::SoftDump;
            h.boot_id = 99;
            h.cpu = CpuId::from_bytes([2, 25, 1, 1]);
            for (i, r) in h.registers.iter_mut().enumerate() {
                *r = 0x1_0000_0000 * (i as u64) + 0x100 + i as u64;
            }
            h.user_blob[0] = 7;
            let mut data = [0u8; DATA_LEN];
            data[..5].copy_from_slice(b"hello");
            let mut out = [0u8; 2048];
            let n = encode(&h, 12, 11, &data, &mut out).unwrap();
            let d = Datagram::parse(&out[..n], &Limits::default()).unwrap();
            assert_eq!(d.variant(), v);
            assert_eq!(d.version(), v.version());
            assert_eq!(d.dump_id(), 4242);
            assert_eq!(d.dump_type(), DumpType::SoftDump);
            assert_eq!((d.packet_count(), d.packet_no()), (12, 11));
            assert_eq!(d.kernel_version(), b"6.6.0");
            assert_eq!(d.data(), &data);
            match v {
                Variant::V2 => {
                    assert_eq!(d.boot_id(), 0);
                    assert_eq!(d.cpu(), None);
                    assert_eq!(d.registers(), None);
                }
                Variant::V3I386 => {
                    let r = d.registers().unwrap();
                    assert_eq!(r.layout, RegisterLayout::I386);
                    // i386 keeps the low 32 bits of the first 17 words
                    assert_eq!(r.ip(), 0x100 + 12);
                    assert_eq!(r.sp(), Some(0x100 + 15));
                    assert_eq!(r.words[17..], [0; 4]);
                }
                _ => {
                    let r = d.registers().unwrap();
                    assert_eq!(r.words, h.registers);
                    assert_eq!(r.ip(), h.registers[16]);
                    assert_eq!(r.cs(), h.registers[17]);
                    assert_eq!(r.flags(), h.registers[18]);
                    assert_eq!(r.sp(), Some(h.registers[19]));
                }
            }
            if v != Variant::V2 {
                assert_eq!(d.boot_id(), 99);
                assert_eq!(d.cpu(), Some(h.cpu));
            }
            assert_eq!(d.user_blob().is_some(), v == Variant::V3X86_64Blob);
        }
    }

    /// The only packet of dump 1 of `variant`: zero data, no kernel version; and its length.
    fn blank_datagram(variant: Variant) -> ([u8; 2048], usize) {
        let mut out = [0u8; 2048];
        let n = encode(
            &DumpHeader::new(variant, 1, ""),
            1,
            0,
            &[0; DATA_LEN],
            &mut out,
        )
        .unwrap();
        (out, n)
    }

    #[test]
    fn header_from_datagram_re_encodes_identically() {
        for v in Variant::ALL {
            let mut h = DumpHeader::new(v, 31, "4.19.0");
            h.dump_type = DumpType::SoftDump;
            if v != Variant::V2 {
                h.boot_id = 5;
                h.cpu = CpuId::from_bytes([1, 2, 3, 4]);
                h.registers = core::array::from_fn(|i| i as u64 + 1);
                if v == Variant::V3I386 {
                    h.registers[17..].fill(0);
                }
            }
            if v == Variant::V3X86_64Blob {
                h.user_blob = [9; 128];
            }
            let mut a = [0u8; 2048];
            let n = encode(&h, 4, 1, &[b'r'; DATA_LEN], &mut a).unwrap();
            let d = Datagram::parse(&a[..n], &Limits::default()).unwrap();
            assert_eq!(DumpHeader::from_datagram(&d), h);
        }
        // An i386 frame without gs cannot be carried by V3I386: registers are dropped.
        let (mut b, n) = blank_datagram(Variant::V3I386);
        b[4..6].copy_from_slice(&156u16.to_le_bytes());
        b[92] = 1;
        let d = Datagram::parse(&b[..n - 4], &Limits::default()).unwrap();
        assert_eq!(d.register_layout(), Some(RegisterLayout::I386NoGs));
        assert_eq!(DumpHeader::from_datagram(&d).registers, [0; 21]);

        // An i386 frame after a user blob is V3I386, which has no blob.
        let (mut c, n) = blank_datagram(Variant::V3X86_64Blob);
        let i386_data = 216 + 4 + 68;
        c[4..6].copy_from_slice(&(i386_data as u16).to_le_bytes());
        c[88] = 1;
        c[220] = 1;
        let d = Datagram::parse(&c[..i386_data + DATA_LEN], &Limits::default()).unwrap();
        assert!(n > i386_data + DATA_LEN);
        assert!(d.user_blob().is_some());
        assert_eq!(d.variant(), Variant::V3I386);
        let h = DumpHeader::from_datagram(&d);
        assert_eq!(h.user_blob, [0; 128]);
        assert_eq!(h.registers[0], 1);
    }

    #[test]
    fn rewrite_packet_changes_only_number_and_data() {
        for v in Variant::ALL {
            let h = DumpHeader::new(v, 1, "x");
            let mut a = [0u8; 2048];
            let mut b = [0u8; 2048];
            let n = encode(&h, 9, 0, &[0; DATA_LEN], &mut a).unwrap();
            encode(&h, 9, 8, &[b'q'; DATA_LEN], &mut b).unwrap();
            rewrite_packet(&mut a, v, 8, &[b'q'; DATA_LEN]).unwrap();
            assert_eq!(a[..n], b[..n]);
        }
    }

    #[test]
    fn order_is_s2_then_s1_last_chunk_first() {
        // s1: 2.5 chunks, s2: 1.5 chunks -> count1 3, count2 2.
        let (s1, s2) = pieces(2560, 1536, 1);
        let m = SenderModel::new(&s1, &s2);
        assert_eq!(m.packet_count(), 5);
        let sched: [(u32, u32); 15] = core::array::from_fn(|i| (i as u32 / 5, i as u32 % 5));
        assert!(m.schedule().eq(sched.iter().copied()));
        // packet 0: s2's tail chunk (bytes 1024..1536, padded), packet 1: s2's first chunk.
        let c0 = m.chunk(0);
        assert_eq!(c0[..512], s2[1024..1536]);
        assert!(c0[512..].iter().all(|&b| b == 0));
        assert_eq!(m.chunk(1)[..], s2[..1024]);
        // packet 2: s1's tail (bytes 2048..2560), 3: s1 1024..2048, 4: s1 0..1024.
        assert_eq!(m.chunk(2)[..512], s1[2048..2560]);
        assert!(m.chunk(2)[512..].iter().all(|&b| b == 0));
        assert_eq!(m.chunk(3)[..], s1[1024..2048]);
        assert_eq!(m.chunk(4)[..], s1[..1024]);
        // out of range: zeros, not zeroed-by-sender
        assert_eq!(m.chunk(5), [0; DATA_LEN]);
        assert!(!m.is_zeroed(5));
        assert!((0..5).all(|p| !m.is_zeroed(p)));
    }

    #[test]
    fn exact_multiple_piece_sends_an_all_zero_tail() {
        let (s1, s2) = pieces(3000, 2048, 3);
        let m = SenderModel::new(&s1, &s2);
        assert_eq!(m.packet_count(), 5);
        // s2's tail chunk (its second 1024 bytes) is lost.
        assert_eq!(m.chunk(0), [0; DATA_LEN]);
        assert!(m.is_zeroed(0));
        assert_eq!(m.chunk(1)[..], s2[..1024]);
        assert!(!m.is_zeroed(1));
        assert_eq!(m.chunk(2)[..952], s1[2048..3000]);
        assert!(!m.is_zeroed(2));
        // And for s1 too.
        let m = SenderModel::new(&s1[..1024], &s2[..10]);
        assert_eq!(m.packet_count(), 2);
        assert!(!m.is_zeroed(0));
        assert!(m.is_zeroed(1));
        assert_eq!(m.chunk(1), [0; DATA_LEN]);
    }

    #[test]
    fn empty_pieces() {
        let s = log(1500, 5);
        let only_s1 = SenderModel::new(&s[..1500], &[]);
        assert_eq!(only_s1.packet_count(), 2);
        assert_eq!(only_s1.chunk(0)[..476], s[1024..1500]);
        assert_eq!(only_s1.chunk(1)[..], s[..1024]);
        let only_s2 = SenderModel::new(&[], &s[..1500]);
        assert_eq!(only_s2.packet_count(), 2);
        assert_eq!(only_s2.chunk(0), only_s1.chunk(0));
        assert_eq!(only_s2.chunk(1), only_s1.chunk(1));
        let none = SenderModel::new(&[], &[]);
        assert_eq!(none.packet_count(), 0);
        assert_eq!(none.schedule().count(), 0);
        assert_eq!(none.chunk(0), [0; DATA_LEN]);
        assert!(!none.is_zeroed(0));
        assert!(!none.is_zeroed(u32::MAX));
    }

    fn arb_variant() -> impl Strategy<Value = Variant> {
        prop::sample::select(Variant::ALL.to_vec())
    }

    fn arb_type() -> impl Strategy<Value = DumpType> {
        prop::sample::select(vec![DumpType::PrintkBuffer, DumpType::SoftDump])
    }

    proptest! {
        #[test]
        fn prop_encode_parse_round_trip(
            variant in arb_variant(),
            dump_id in any::<u16>(),
            dump_type in arb_type(),
            boot_id in any::<u32>(),
            kv in prop::collection::vec(any::<u8>(), 64),
            cpu in any::<[u8; 4]>(),
            regs in prop::collection::vec(any::<u64>(), 21),
            blob in prop::collection::vec(any::<u8>(), 128),
            (count, no) in (1u32..=4096).prop_flat_map(|c| (Just(c), 0..c)),
            data in prop::collection::vec(any::<u8>(), DATA_LEN),
        ) {
            let mut h = DumpHeader::new(variant, dump_id, "");
            h.dump_type = dump_type;
            h.boot_id = boot_id;
            h.kernel_version.copy_from_slice(&kv);
            h.cpu = CpuId::from_bytes(cpu);
            h.registers.copy_from_slice(&regs);
            h.user_blob.copy_from_slice(&blob);
            let data: [u8; DATA_LEN] = data.try_into().unwrap();
            let mut out = [0u8; crate::MAX_DATAGRAM_LEN];
            let n = encode(&h, count, no, &data, &mut out).unwrap();
            prop_assert_eq!(n, variant.datagram_len());
            let d = Datagram::parse(&out[..n], &Limits::default()).unwrap();
            prop_assert_eq!(d.variant(), variant);
            prop_assert_eq!(d.dump_id(), dump_id);
            prop_assert_eq!(d.dump_type(), dump_type);
            prop_assert_eq!((d.packet_count(), d.packet_no()), (count, no));
            let kv_end = kv.iter().position(|&b| b == 0).unwrap_or(64);
            prop_assert_eq!(d.kernel_version(), &kv[..kv_end]);
            prop_assert_eq!(d.data(), &data);
            if variant == Variant::V2 {
                prop_assert_eq!(d.boot_id(), 0);
                prop_assert_eq!(d.cpu(), None);
            } else {
                prop_assert_eq!(d.boot_id(), boot_id);
                prop_assert_eq!(d.cpu(), Some(h.cpu));
                let expect: [u64; 21] = match variant {
                    Variant::V3I386 => core::array::from_fn(|i| if i < 17 { regs[i] & 0xffff_ffff } else { 0 }),
                    _ => h.registers,
                };
                match d.registers() {
                    Some(r) => prop_assert_eq!(r.words, expect),
                    None => prop_assert!(expect.iter().all(|&w| w == 0)),
                }
            }
            if variant == Variant::V3X86_64Blob {
                prop_assert_eq!(&d.user_blob().unwrap()[..], &blob[..]);
            }
        }

        #[test]
        fn prop_sender_chunks_reassemble_the_log(
            l1 in 0usize..5000, l2 in 0usize..5000, salt in any::<u8>(),
        ) {
            let (s1, s2) = pieces(l1, l2, salt);
            let m = SenderModel::new(&s1, &s2);
            let count = m.packet_count();
            prop_assert_eq!(count as usize, l1.div_ceil(1024) + l2.div_ceil(1024));
            prop_assert_eq!(m.schedule().count(), 3 * count as usize);
            // Chunks from the highest packet_no down are s1 then s2, each piece chunked from
            // its start; zeroed tails are the exact-multiple case.
            let mut rebuilt = [0u8; 10240];
            let mut at = 0;
            for p in (0..count).rev() {
                let c = m.chunk(p);
                let piece_end = if p >= l2.div_ceil(1024) as u32 { l1 } else { l1 + l2 };
                let take = (piece_end - at).min(DATA_LEN);
                if m.is_zeroed(p) {
                    prop_assert_eq!(c, [0; DATA_LEN]);
                } else {
                    rebuilt[at..at + take].copy_from_slice(&c[..take]);
                    prop_assert!(c[take..].iter().all(|&b| b == 0));
                }
                at += take;
            }
            prop_assert_eq!(at, l1 + l2);
            if l1 % 1024 != 0 && l2 % 1024 != 0 {
                prop_assert_eq!(&rebuilt[..l1], &s1[..l1]);
                prop_assert_eq!(&rebuilt[l1..l1 + l2], &s2[..l2]);
            }
        }
    }
}
