//! What the loader told us: command line, memory map, ACPI RSDP.
//!
//! Every protocol is reduced to one [`BootInfo`] that owns copies of everything (the
//! loader's structures live in memory the heap may later take over): PVH `hvm_start_info`
//! (magic 0x336ec578; cmdline_paddr, memmap_paddr/entries from version 1, rsdp_paddr) and
//! multiboot2 tags (1 command line, 6 memory map, 14/15 ACPI RSDP copies). The UEFI stub
//! hands over an `hvm_start_info` too (relay.conf as the command line, the final UEFI memory
//! map converted to E820 types, the RSDP from the configuration table). Malformed
//! structures (bad magic, tags running past the declared size, zero-sized entries) end the
//! parse with what was collected so far; nothing here panics.

use super::physmem::PhysMemory;
use netoops_core::config::words::split_at_byte;

/// Longest command line kept; longer ones are cut at a character boundary.
pub const CMDLINE_MAX: usize = 2048;
/// Most memory-map entries kept.
pub const MEMORY_REGIONS_MAX: usize = 128;

const PVH_MAGIC: u32 = 0x336e_c578;
/// Bytes of an E820-layout memory-map entry (address, size, type, padding): PVH's
/// `hvm_memmap_table_entry` and the smallest multiboot2 memory-map entry.
const E820_ENTRY_SIZE: u64 = 24;

/// How the kernel was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH (QEMU `-kernel`, microvm, other PVH VMMs).
    Pvh,
    /// multiboot2 (GRUB).
    Multiboot2,
    /// UEFI, through the stub in `image/uefi` (boot information in the PVH format).
    Uefi,
    /// Entered through the multiboot2 entry without the multiboot2 magic.
    Unknown,
}

impl BootProtocol {
    /// The name used in the boot banner.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Pvh => "PVH",
            BootProtocol::Multiboot2 => "multiboot2",
            BootProtocol::Uefi => "UEFI",
            BootProtocol::Unknown => "unknown",
        }
    }
}

/// Kind of a memory-map region (E820 numbering, shared by PVH and multiboot2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM.
    Usable,
    /// Reserved by firmware or devices.
    Reserved,
    /// ACPI tables; reclaimable after parsing.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Defective RAM.
    Bad,
    /// Any other type number.
    Other(u32),
}

impl MemoryKind {
    fn from_e820(kind: u32) -> Self {
        match kind {
            1 => MemoryKind::Usable,
            2 => MemoryKind::Reserved,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Bad,
            other => MemoryKind::Other(other),
        }
    }
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    const EMPTY: MemoryRegion = MemoryRegion {
        start: 0,
        len: 0,
        kind: MemoryKind::Reserved,
    };

    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Everything the loader handed over, copied into kernel memory.
pub struct BootInfo {
    protocol: BootProtocol,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    memory: [MemoryRegion; MEMORY_REGIONS_MAX],
    memory_len: usize,
    /// Regions the map had beyond `MEMORY_REGIONS_MAX` (dropped, reported in the banner).
    pub memory_dropped: usize,
    rsdp: Option<u64>,
    /// Copy of the RSDP for multiboot2, which passes the structure rather than its address.
    rsdp_copy: [u8; 36],
}

impl BootInfo {
    /// An empty record for `protocol`.
    pub const fn new(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            memory: [MemoryRegion::EMPTY; MEMORY_REGIONS_MAX],
            memory_len: 0,
            memory_dropped: 0,
            rsdp: None,
            rsdp_copy: [0; 36],
        }
    }

    /// How the kernel was booted.
    pub fn protocol(&self) -> BootProtocol {
        self.protocol
    }

    /// The command line (cut at the first invalid UTF-8 byte, if any).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }

    /// The memory map as the loader gave it.
    pub fn memory(&self) -> &[MemoryRegion] {
        &self.memory[..self.memory_len]
    }

    /// Physical address of the ACPI RSDP, if the loader gave one. For multiboot2 this is
    /// the address of the copy inside this record (identity mapped like all kernel memory).
    pub fn rsdp(&self) -> Option<u64> {
        self.rsdp
    }

    fn set_cmdline(&mut self, mem: &dyn PhysMemory, phys: u64) {
        let mut len = 0;
        while len < CMDLINE_MAX {
            let Some([b]) = mem.read_array::<1>(phys + len as u64) else {
                break;
            };
            if b == 0 {
                break;
            }
            self.cmdline[len] = b;
            len += 1;
        }
        self.cmdline_len = len;
    }

    /// Reads the E820-layout entry at `e` into the memory map.
    fn push_e820_entry(&mut self, mem: &dyn PhysMemory, e: u64) -> Result<(), BootInfoError> {
        let (Some(start), Some(len), Some(kind)) =
            (mem.read_u64(e), mem.read_u64(e + 8), mem.read_u32(e + 16))
        else {
            return Err(BootInfoError::Unreadable);
        };
        self.push_region(start, len, kind);
        Ok(())
    }

    fn push_region(&mut self, start: u64, len: u64, kind: u32) {
        if len == 0 {
            return;
        }
        if self.memory_len == MEMORY_REGIONS_MAX {
            self.memory_dropped += 1;
            return;
        }
        self.memory[self.memory_len] = MemoryRegion {
            start,
            len,
            kind: MemoryKind::from_e820(kind),
        };
        self.memory_len += 1;
    }

    /// Parses a PVH `hvm_start_info` at `phys`.
    pub fn parse_pvh(&mut self, mem: &dyn PhysMemory, phys: u64) -> Result<(), BootInfoError> {
        if mem.read_u32(phys) != Some(PVH_MAGIC) {
            return Err(BootInfoError::BadMagic);
        }
        let version = mem.read_u32(phys + 4).ok_or(BootInfoError::Unreadable)?;
        let cmdline = mem.read_u64(phys + 24).ok_or(BootInfoError::Unreadable)?;
        let rsdp = mem.read_u64(phys + 32).ok_or(BootInfoError::Unreadable)?;
        if cmdline != 0 {
            self.set_cmdline(mem, cmdline);
        }
        if rsdp != 0 {
            self.rsdp = Some(rsdp);
        }
        if version >= 1 {
            let map = mem.read_u64(phys + 40).ok_or(BootInfoError::Unreadable)?;
            let entries = mem.read_u32(phys + 48).ok_or(BootInfoError::Unreadable)?;
            for i in 0..u64::from(entries) {
                self.push_e820_entry(mem, map + i * E820_ENTRY_SIZE)?;
            }
        }
        Ok(())
    }

    /// Parses multiboot2 boot information at `phys`.
    pub fn parse_multiboot2(
        &mut self,
        mem: &dyn PhysMemory,
        phys: u64,
    ) -> Result<(), BootInfoError> {
        // The tag types read here.
        const TAG_END: u32 = 0;
        const TAG_CMDLINE: u32 = 1;
        const TAG_MMAP: u32 = 6;
        const TAG_ACPI_OLD: u32 = 14;
        const TAG_ACPI_NEW: u32 = 15;
        /// Upper bound on the information size we accept.
        const MAX_SIZE: u32 = 1 << 20;
        let total = mem.read_u32(phys).ok_or(BootInfoError::Unreadable)?;
        if !(16..=MAX_SIZE).contains(&total) {
            return Err(BootInfoError::BadSize);
        }
        let end = phys + u64::from(total);
        let mut tag = phys + 8;
        while tag + 8 <= end {
            let kind = mem.read_u32(tag).ok_or(BootInfoError::Unreadable)?;
            let size = u64::from(mem.read_u32(tag + 4).ok_or(BootInfoError::Unreadable)?);
            if kind == TAG_END {
                return Ok(());
            }
            if size < 8 || tag + size > end {
                return Err(BootInfoError::BadSize);
            }
            match kind {
                TAG_CMDLINE => self.set_cmdline(mem, tag + 8),
                TAG_MMAP if size >= 16 => {
                    let entry_size =
                        u64::from(mem.read_u32(tag + 8).ok_or(BootInfoError::Unreadable)?);
                    if entry_size < E820_ENTRY_SIZE {
                        return Err(BootInfoError::BadSize);
                    }
                    let mut e = tag + 16;
                    while e + entry_size <= tag + size {
                        self.push_e820_entry(mem, e)?;
                        e += entry_size;
                    }
                }
                // Prefer the ACPI 2.0+ RSDP (XSDT) when both tags are present.
                TAG_ACPI_OLD | TAG_ACPI_NEW if self.rsdp.is_none() || kind == TAG_ACPI_NEW => {
                    let n = usize::try_from(size - 8)
                        .unwrap_or(0)
                        .min(self.rsdp_copy.len());
                    if n >= 20 && mem.read(tag + 8, &mut self.rsdp_copy[..n]) {
                        self.rsdp = Some(self.rsdp_copy.as_ptr() as u64);
                    }
                }
                _ => {}
            }
            tag += size.div_ceil(8) * 8;
        }
        Ok(())
    }
}

/// Why boot information could not be (fully) parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// PVH start_info magic mismatch.
    BadMagic,
    /// A structure points outside readable memory.
    Unreadable,
    /// A size field is impossible.
    BadSize,
}

/// The value of `key=value` on a kernel command line (first match, whitespace separated).
pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| {
        let (k, v) = split_at_byte(word, b'=')?;
        (k == key).then_some(v)
    })
}

/// A virtio-mmio device announced on the command line (`virtio_mmio.device=` in the Linux
/// format `<size>@<base>:<irq>[:<id>]`). QEMU's microvm adds these for its virtio-mmio
/// devices when ACPI is off (`-M microvm,acpi=off`); with ACPI on they are only in the DSDT,
/// where [`super::aml`] finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Physical address of the register window.
    pub base: u64,
    /// Window size in bytes.
    pub size: u64,
    /// Interrupt line (unused: the appliance polls).
    pub irq: u32,
}

/// Every well-formed `virtio_mmio.device=` on `cmdline`; malformed ones are skipped.
pub fn virtio_mmio_devices(cmdline: &str) -> impl Iterator<Item = VirtioMmioDevice> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|word| {
        let spec = word.strip_prefix("virtio_mmio.device=")?;
        let (size, rest) = split_at_byte(spec, b'@')?;
        let (base, rest) = split_at_byte(rest, b':')?;
        let irq = split_at_byte(rest, b':').map_or(rest, |(irq, _)| irq);
        let irq = irq.parse().ok()?;
        let size = super::memory::parse_size(size)?;
        let base = match base.strip_prefix("0x").or_else(|| base.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => base.parse().ok()?,
        };
        (size > 0).then_some(VirtioMmioDevice { base, size, irq })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::physmem::testing::SparseMemory;
    use std::vec::Vec;

    fn pvh_info(version: u32, cmdline: u64, rsdp: u64, map: u64, entries: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&PVH_MAGIC.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes()); // flags
        v.extend_from_slice(&0u32.to_le_bytes()); // nr_modules
        v.extend_from_slice(&0u64.to_le_bytes()); // modlist
        v.extend_from_slice(&cmdline.to_le_bytes());
        v.extend_from_slice(&rsdp.to_le_bytes());
        v.extend_from_slice(&map.to_le_bytes());
        v.extend_from_slice(&entries.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    fn e820(start: u64, len: u64, kind: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&start.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    #[test]
    fn parses_pvh_start_info() {
        let mut mem = SparseMemory::default();
        mem.put(0x6000, &pvh_info(1, 0x7000, 0xf5a40, 0x8000, 3));
        mem.put(0x7000, b"console=ttyS0 selftest=exit\0");
        let mut map = e820(0, 0x9fc00, 1);
        map.extend(e820(0xf0000, 0x10000, 2));
        map.extend(e820(0x100000, 0x7ee0000, 1));
        mem.put(0x8000, &map);
        let mut info = BootInfo::new(BootProtocol::Pvh);
        info.parse_pvh(&mem, 0x6000).unwrap();
        assert_eq!(info.cmdline(), "console=ttyS0 selftest=exit");
        assert_eq!(info.rsdp(), Some(0xf5a40));
        assert_eq!(info.memory().len(), 3);
        assert_eq!(
            info.memory()[2],
            MemoryRegion {
                start: 0x100000,
                len: 0x7ee0000,
                kind: MemoryKind::Usable
            }
        );
        assert_eq!(info.memory()[1].kind, MemoryKind::Reserved);
    }

    #[test]
    fn pvh_version_0_has_no_memory_map_and_bad_magic_is_an_error() {
        let mut mem = SparseMemory::default();
        mem.put(0x6000, &pvh_info(0, 0, 0, 0x8000, 3));
        let mut info = BootInfo::new(BootProtocol::Pvh);
        info.parse_pvh(&mem, 0x6000).unwrap();
        assert!(info.memory().is_empty());
        assert_eq!(info.cmdline(), "");
        assert_eq!(info.rsdp(), None);
        assert_eq!(info.parse_pvh(&mem, 0x6004), Err(BootInfoError::BadMagic));
    }

    fn mb2_tag(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        while v.len() % 8 != 0 {
            v.push(0);
        }
        v
    }

    fn mb2_info(tags: &[Vec<u8>]) -> Vec<u8> {
        let mut body: Vec<u8> = tags.concat();
        body.extend(mb2_tag(0, &[]));
        let mut v = Vec::new();
        v.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn parses_multiboot2_tags() {
        let mut mmap = Vec::new();
        mmap.extend_from_slice(&24u32.to_le_bytes());
        mmap.extend_from_slice(&0u32.to_le_bytes());
        mmap.extend(e820(0, 0x9fc00, 1));
        mmap.extend(e820(0x100000, 0x1ff00000, 1));
        let mut rsdp = Vec::from(*b"RSD PTR ");
        rsdp.extend_from_slice(&[0u8; 28]);
        let info_bytes = mb2_info(&[
            mb2_tag(1, b"selftest=fault\0"),
            mb2_tag(6, &mmap),
            mb2_tag(14, &rsdp[..20]),
        ]);
        let mut mem = SparseMemory::default();
        mem.put(0x10000, &info_bytes);
        let mut info = BootInfo::new(BootProtocol::Multiboot2);
        info.parse_multiboot2(&mem, 0x10000).unwrap();
        assert_eq!(info.cmdline(), "selftest=fault");
        assert_eq!(info.memory().len(), 2);
        assert_eq!(info.memory()[1].end(), 0x2000_0000);
        let copy = info.rsdp().unwrap();
        assert_eq!(copy, info.rsdp_copy.as_ptr() as u64);
        assert_eq!(&info.rsdp_copy[..8], b"RSD PTR ");
    }

    #[test]
    fn multiboot2_tag_past_the_end_is_rejected() {
        let mut bytes = mb2_info(&[mb2_tag(1, b"x\0")]);
        // Inflate the cmdline tag's size past the total.
        bytes[12..16].copy_from_slice(&4000u32.to_le_bytes());
        let mut mem = SparseMemory::default();
        mem.put(0x10000, &bytes);
        let mut info = BootInfo::new(BootProtocol::Multiboot2);
        assert_eq!(
            info.parse_multiboot2(&mem, 0x10000),
            Err(BootInfoError::BadSize)
        );
        bytes[0..4].copy_from_slice(&4u32.to_le_bytes());
        let mut mem = SparseMemory::default();
        mem.put(0x10000, &bytes);
        assert_eq!(
            info.parse_multiboot2(&mem, 0x10000),
            Err(BootInfoError::BadSize)
        );
    }

    #[test]
    fn command_line_is_cut_at_invalid_utf8_and_capped() {
        let mut mem = SparseMemory::default();
        let mut long = std::vec![b'a'; CMDLINE_MAX + 100];
        long[3] = 0xff;
        mem.put(0x7000, &long);
        let mut info = BootInfo::new(BootProtocol::Pvh);
        info.set_cmdline(&mem, 0x7000);
        assert_eq!(info.cmdline(), "aaa");
        assert_eq!(info.cmdline_len, CMDLINE_MAX);
    }

    #[test]
    fn parses_virtio_mmio_devices_from_the_command_line() {
        let line = "selftest=exit virtio_mmio.device=512@0xfeb00e00:12 \
                    virtio_mmio.device=4K@0xfeb01000:13:2 virtio_mmio.device=bad@x:1 \
                    virtio_mmio.device=512@0xfeb02000";
        let devices: Vec<_> = virtio_mmio_devices(line).collect();
        assert_eq!(
            devices,
            [
                VirtioMmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                },
                VirtioMmioDevice {
                    base: 0xfeb0_1000,
                    size: 4096,
                    irq: 13
                },
            ]
        );
    }

    #[test]
    fn finds_command_line_parameters() {
        let line = "console=ttyS0  selftest=exit heap=64M selftest=fault";
        assert_eq!(cmdline_param(line, "selftest"), Some("exit"));
        assert_eq!(cmdline_param(line, "heap"), Some("64M"));
        assert_eq!(cmdline_param(line, "console"), Some("ttyS0"));
        assert_eq!(cmdline_param(line, "self"), None);
    }
}
