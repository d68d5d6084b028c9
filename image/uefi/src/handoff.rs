//! What the stub hands the kernel: an `hvm_start_info` (the PVH boot format) in pages below
//! 4 GiB, so the kernel's one boot-information parser serves PVH and UEFI alike.
//!
//! Layout of the handoff area (all little-endian):
//!
//! | offset | size | contents |
//! |---|---|---|
//! | 0 | 56 | `hvm_start_info` v1: magic 0x336ec578, version 1, flags 0, no modules, `cmdline_paddr`, `rsdp_paddr`, `memmap_paddr`, `memmap_entries` |
//! | 64 | 2048 | the command line (relay.conf's settings), NUL-terminated |
//! | 2112 | 24 × n | `hvm_memmap_table_entry`: addr u64, size u64, type u32 (E820), reserved u32 |
//!
//! The memory map is the final UEFI map (taken by ExitBootServices) converted to E820
//! types: boot-services and loader memory become usable RAM (the kernel copies everything
//! it needs out of loader memory before its heap starts), runtime-services memory and MMIO
//! stay reserved, ACPI memory keeps its two kinds. Entries are sorted and adjacent entries of
//! one kind merged, which shrinks OVMF's ~100-entry map to a dozen; the kernel keeps 128.
//! Everything here is plain code over byte buffers (no firmware calls, no allocation), so it
//! runs after ExitBootServices and under host unit tests alike.

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Offset of the command line in the handoff area.
pub const CMDLINE_OFFSET: usize = 64;
/// Room for the command line including its NUL.
pub const CMDLINE_ROOM: usize = 2048;
/// Offset of the memory map in the handoff area.
pub const MEMMAP_OFFSET: usize = CMDLINE_OFFSET + CMDLINE_ROOM;
/// Bytes per memory-map entry.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// Most memory-map entries held (before merging; more are dropped and counted).
pub const MEMMAP_MAX: usize = 512;
/// Size of the handoff area.
pub const HANDOFF_SIZE: usize = MEMMAP_OFFSET + MEMMAP_MAX * MEMMAP_ENTRY_SIZE;
/// Pages to allocate for it.
pub const HANDOFF_PAGES: usize = HANDOFF_SIZE.div_ceil(4096);

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// E820 type: ACPI tables, reclaimable.
pub const E820_ACPI: u32 = 3;
/// E820 type: ACPI non-volatile storage.
pub const E820_NVS: u32 = 4;
/// E820 type: defective RAM.
pub const E820_UNUSABLE: u32 = 5;
/// E820 type: persistent memory.
pub const E820_PMEM: u32 = 7;

/// The E820 type for a UEFI memory type (UEFI 2.10, table 7.10).
pub fn e820_type(uefi_type: u32) -> u32 {
    match uefi_type {
        // Loader code/data, boot-services code/data, conventional memory.
        1..=4 | 7 => E820_RAM,
        8 => E820_UNUSABLE,
        9 => E820_ACPI,
        10 => E820_NVS,
        14 => E820_PMEM,
        // Reserved, runtime services, MMIO, port space, PAL code, unaccepted memory (usable
        // only after a TDX/SEV accept the kernel does not do), OEM and OS-defined types.
        _ => E820_RESERVED,
    }
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type.
    pub kind: u32,
}

impl Region {
    const EMPTY: Region = Region {
        start: 0,
        len: 0,
        kind: 0,
    };

    fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A memory map being collected: fixed capacity, no allocation.
pub struct MemoryMap {
    regions: [Region; MEMMAP_MAX],
    len: usize,
    /// Entries that did not fit.
    pub dropped: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self {
            regions: [Region::EMPTY; MEMMAP_MAX],
            len: 0,
            dropped: 0,
        }
    }
}

impl MemoryMap {
    /// Adds a UEFI descriptor (`pages` of 4 KiB at `start`), merging it into the previous
    /// entry when it continues it with the same E820 type (UEFI maps are usually sorted).
    pub fn push_uefi(&mut self, uefi_type: u32, start: u64, pages: u64) {
        let region = Region {
            start,
            len: pages.saturating_mul(4096),
            kind: e820_type(uefi_type),
        };
        if region.len == 0 {
            return;
        }
        if let Some(last) = self.regions[..self.len].last_mut() {
            if last.kind == region.kind && last.end() == region.start {
                last.len = last.len.saturating_add(region.len);
                return;
            }
        }
        if self.len == MEMMAP_MAX {
            self.dropped += 1;
            return;
        }
        self.regions[self.len] = region;
        self.len += 1;
    }

    /// Sorts by address and merges touching entries of one kind.
    pub fn finish(&mut self) {
        let regions = &mut self.regions[..self.len];
        regions.sort_unstable_by_key(|r| r.start);
        let mut out = 0;
        for i in 0..regions.len() {
            let r = regions[i];
            if out > 0 && regions[out - 1].kind == r.kind && regions[out - 1].end() == r.start {
                regions[out - 1].len = regions[out - 1].len.saturating_add(r.len);
            } else {
                regions[out] = r;
                out += 1;
            }
        }
        self.len = out;
    }

    /// The entries.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }
}

/// Why the handoff could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffError {
    /// The buffer is smaller than [`HANDOFF_SIZE`].
    BufferTooSmall,
    /// The command line does not fit (or contains a NUL).
    BadCmdline,
    /// The area must lie below 4 GiB (the kernel receives its address in a 32-bit register).
    AboveFourGiB,
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the handoff into `buf`, which the kernel will find at physical address `base`.
pub fn write(
    buf: &mut [u8],
    base: u64,
    cmdline: &str,
    rsdp: Option<u64>,
    map: &MemoryMap,
) -> Result<(), HandoffError> {
    if buf.len() < HANDOFF_SIZE {
        return Err(HandoffError::BufferTooSmall);
    }
    if base.saturating_add(HANDOFF_SIZE as u64) > 1 << 32 {
        return Err(HandoffError::AboveFourGiB);
    }
    if cmdline.len() >= CMDLINE_ROOM || cmdline.as_bytes().contains(&0) {
        return Err(HandoffError::BadCmdline);
    }
    buf[..HANDOFF_SIZE].fill(0);
    put_u32(buf, 0, START_INFO_MAGIC);
    put_u32(buf, 4, 1);
    put_u64(buf, 24, base + CMDLINE_OFFSET as u64);
    put_u64(buf, 32, rsdp.unwrap_or(0));
    put_u64(buf, 40, base + MEMMAP_OFFSET as u64);
    put_u32(buf, 48, map.regions().len() as u32);
    buf[CMDLINE_OFFSET..CMDLINE_OFFSET + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    for (i, r) in map.regions().iter().enumerate() {
        let at = MEMMAP_OFFSET + i * MEMMAP_ENTRY_SIZE;
        put_u64(buf, at, r.start);
        put_u64(buf, at + 8, r.len);
        put_u32(buf, at + 16, r.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    /// A shortened OVMF map (q35, 256 MiB): UEFI type, start, pages.
    const OVMF: &[(u32, u64, u64)] = &[
        (3, 0x0, 1),
        (7, 0x1000, 0x9f),
        (7, 0x100000, 0x700),
        (10, 0x800000, 0x8),
        (7, 0x808000, 0x8),
        (10, 0x810000, 0xf0),
        (4, 0x900000, 0x100),
        (7, 0xa00000, 0x3000),
        (2, 0x3a00000, 0x10),
        (1, 0x3a10000, 0x20),
        (4, 0x3a30000, 0x1000),
        (9, 0xfb7e000, 0x4),
        (10, 0xfb82000, 0x80),
        (6, 0xfc02000, 0x100),
        (5, 0xfd02000, 0x80),
        (4, 0xfd82000, 0x27e),
        (0, 0xffc00000, 0x400),
        (11, 0xb0000000, 0x10000),
    ];

    fn ovmf_map() -> MemoryMap {
        let mut map = MemoryMap::default();
        for &(kind, start, pages) in OVMF {
            map.push_uefi(kind, start, pages);
        }
        map.finish();
        map
    }

    #[test]
    fn uefi_types_map_to_e820() {
        assert_eq!(e820_type(7), E820_RAM);
        assert_eq!(e820_type(3), E820_RAM);
        assert_eq!(e820_type(2), E820_RAM);
        assert_eq!(e820_type(5), E820_RESERVED);
        assert_eq!(e820_type(6), E820_RESERVED);
        assert_eq!(e820_type(9), E820_ACPI);
        assert_eq!(e820_type(10), E820_NVS);
        assert_eq!(e820_type(11), E820_RESERVED);
        assert_eq!(e820_type(15), E820_RESERVED);
        assert_eq!(e820_type(0x8000_0001), E820_RESERVED);
    }

    #[test]
    fn ovmf_map_merges_and_sorts() {
        let map = ovmf_map();
        let r = map.regions();
        // 0..0xa0000 usable (boot-services page 0 + conventional), then 1 MiB..8 MiB.
        assert_eq!(
            r[0],
            Region {
                start: 0,
                len: 0xa0000,
                kind: E820_RAM
            }
        );
        assert_eq!(r[1].start, 0x100000);
        assert_eq!(r[1].len, 0x700000);
        // 0x900000..0xfb7e000 is one usable run (BS data, conventional, loader, BS data).
        let big = r.iter().find(|x| x.start == 0x900000).unwrap();
        assert_eq!(big.end(), 0x4a30000);
        assert_eq!(big.kind, E820_RAM);
        // Sorted: the MMIO window at 0xb0000000 comes before the flash at 0xffc00000.
        assert!(r.windows(2).all(|w| w[0].end() <= w[1].start));
        assert_eq!(r.last().unwrap().start, 0xffc00000);
        assert_eq!(map.dropped, 0);
        assert!(r.len() < OVMF.len());
    }

    #[test]
    fn overflowing_the_table_is_counted_not_fatal() {
        let mut map = MemoryMap::default();
        // Alternate kinds so nothing merges.
        for i in 0..(MEMMAP_MAX as u64 + 10) {
            map.push_uefi(if i % 2 == 0 { 7 } else { 0 }, i * 0x2000, 1);
        }
        map.finish();
        assert_eq!(map.regions().len(), MEMMAP_MAX);
        assert_eq!(map.dropped, 10);
    }

    #[test]
    fn handoff_is_an_hvm_start_info_the_kernel_parser_reads() {
        let map = ovmf_map();
        let mut buf = vec![0xaau8; HANDOFF_SIZE];
        let base = 0x7f00_0000u64;
        write(
            &mut buf,
            base,
            "ip=10.0.0.2/24 upstream=10.0.0.1:2005",
            Some(0xfb7e014),
            &map,
        )
        .unwrap();
        let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
        assert_eq!(u32_at(0), START_INFO_MAGIC);
        assert_eq!(u32_at(4), 1);
        assert_eq!(u64_at(24), base + 64);
        assert_eq!(u64_at(32), 0xfb7e014);
        assert_eq!(u64_at(40), base + MEMMAP_OFFSET as u64);
        assert_eq!(u32_at(48) as usize, map.regions().len());
        let cmdline = &buf[64..64 + 38];
        assert_eq!(cmdline, b"ip=10.0.0.2/24 upstream=10.0.0.1:2005\0");
        let second = MEMMAP_OFFSET + MEMMAP_ENTRY_SIZE;
        assert_eq!(u64_at(second), 0x100000);
        assert_eq!(u64_at(second + 8), 0x700000);
        assert_eq!(u32_at(second + 16), E820_RAM);
    }

    const _: () = assert!(HANDOFF_PAGES * 4096 >= HANDOFF_SIZE);

    #[test]
    fn handoff_refuses_what_the_kernel_cannot_take() {
        let map = MemoryMap::default();
        let mut buf = vec![0u8; HANDOFF_SIZE];
        assert_eq!(
            write(&mut buf, 0xffff_f000, "", None, &map),
            Err(HandoffError::AboveFourGiB)
        );
        assert_eq!(
            write(&mut buf, 0x1000, "a\0b", None, &map),
            Err(HandoffError::BadCmdline)
        );
        let long = "x".repeat(CMDLINE_ROOM);
        assert_eq!(
            write(&mut buf, 0x1000, &long, None, &map),
            Err(HandoffError::BadCmdline)
        );
        let mut small = vec![0u8; 100];
        assert_eq!(
            write(&mut small, 0x1000, "", None, &map),
            Err(HandoffError::BufferTooSmall)
        );
    }
}
