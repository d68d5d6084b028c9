//! ACPI, as far as the appliance needs it: find the RSDP, walk the XSDT (or RSDT), read
//! the MCFG table for the PCI Express configuration window, and follow the FADT to the DSDT,
//! where QEMU's microvm describes its virtio-mmio devices ([`super::aml`]).
//!
//! A small parser rather than the `acpi` crate: we need one table, and the crate brings an
//! AML-free but still large table layer plus a handler trait for mapping, which is more code
//! in a 256 KiB image than this whole module. Every table is checksum-verified before use;
//! a table that fails is skipped and counted, never trusted.

use super::physmem::PhysMemory;

/// Most table signatures remembered for the boot banner.
pub const TABLES_MAX: usize = 24;

/// One MCFG allocation: the ECAM window of a PCI segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical address of bus 0's configuration space (the MCFG "base address": it is
    /// defined as bus 0's address even when `start_bus` is higher).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl EcamWindow {
    /// Physical address of `start_bus`'s configuration space.
    pub fn start_address(&self) -> u64 {
        self.base + (u64::from(self.start_bus) << 20)
    }
    /// Bytes covered from `start_bus` to `end_bus`.
    pub fn size(&self) -> u64 {
        (u64::from(self.end_bus.saturating_sub(self.start_bus)) + 1) << 20
    }
}

/// What the ACPI walk found.
#[derive(Clone, Copy, Debug)]
pub struct AcpiInfo {
    /// Where the RSDP was.
    pub rsdp: u64,
    /// RSDP revision (0 = ACPI 1.0 with RSDT only, 2+ = XSDT).
    pub revision: u8,
    /// Signatures of the tables listed by the root table, in order.
    pub tables: [[u8; 4]; TABLES_MAX],
    /// Number of valid entries in `tables`.
    pub table_count: usize,
    /// Tables skipped for a bad checksum or an unreadable header.
    pub bad_tables: usize,
    /// The segment-0 ECAM window, when MCFG has one.
    pub ecam: Option<EcamWindow>,
    /// The DSDT the FADT points to, checksum-verified.
    pub dsdt: Option<TableLocation>,
    /// The FADT's HW_REDUCED_ACPI flag: a machine without the PC's fixed ACPI hardware, such
    /// as microvm, which describes its virtio-mmio devices in the DSDT.
    pub hardware_reduced: bool,
}

/// Where a verified table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLocation {
    /// Physical address of its header.
    pub address: u64,
    /// Its length, header included.
    pub len: u32,
}

impl AcpiInfo {
    /// Table signatures as strings (non-ASCII signatures print as "????").
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables[..self.table_count]
            .iter()
            .map(|s| core::str::from_utf8(s).unwrap_or("????"))
    }
}

/// Why ACPI could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP given and none found in the BIOS areas.
    NoRsdp,
    /// The RSDP's signature or checksum is wrong.
    BadRsdp,
    /// The RSDT/XSDT is unreadable or fails its checksum.
    BadRootTable,
}

fn checksum_ok(mem: &dyn PhysMemory, phys: u64, len: u32) -> bool {
    if len > 1 << 20 {
        return false;
    }
    let mut sum = 0u8;
    let mut buf = [0u8; 64];
    let mut off = 0u64;
    while off < u64::from(len) {
        let n = (u64::from(len) - off).min(buf.len() as u64) as usize;
        if !mem.read(phys + off, &mut buf[..n]) {
            return false;
        }
        sum = buf[..n].iter().fold(sum, |s, b| s.wrapping_add(*b));
        off += n as u64;
    }
    sum == 0
}

/// Scans the EBDA's first KiB and 0xE0000..0x100000 for the RSDP signature, 16-byte steps.
pub fn find_rsdp_in_bios(mem: &dyn PhysMemory) -> Option<u64> {
    if let Some(segment) = mem.read_u16(0x40e) {
        let ebda = u64::from(segment) << 4;
        if (0x80000..0xa0000).contains(&ebda) {
            if let Some(p) = scan_for_rsdp(mem, ebda, ebda + 1024) {
                return Some(p);
            }
        }
    }
    scan_for_rsdp(mem, 0xe0000, 0x100000)
}

/// The first RSDP at a 16-byte boundary in `start..end`, read a KiB at a time (a read per
/// candidate was 8,192 reads for the BIOS area: 0.7 ms of the boot under TCG).
fn scan_for_rsdp(mem: &dyn PhysMemory, start: u64, end: u64) -> Option<u64> {
    const BLOCK: usize = 1024;
    let mut block = [0u8; BLOCK];
    let mut base = start;
    while base < end {
        let n = (end - base).min(BLOCK as u64) as usize;
        if mem.read(base, &mut block[..n]) {
            let hit = block[..n]
                .chunks_exact(16)
                .zip((base..).step_by(16))
                .find(|(c, p)| c.starts_with(b"RSD PTR ") && checksum_ok(mem, *p, 20));
            if let Some((_, p)) = hit {
                return Some(p);
            }
        }
        base += n as u64;
    }
    None
}

/// Walks the tables from the RSDP at `rsdp`.
pub fn parse(mem: &dyn PhysMemory, rsdp: u64) -> Result<AcpiInfo, AcpiError> {
    if mem.read_array::<8>(rsdp) != Some(*b"RSD PTR ") || !checksum_ok(mem, rsdp, 20) {
        return Err(AcpiError::BadRsdp);
    }
    let revision = mem.read_array::<1>(rsdp + 15).ok_or(AcpiError::BadRsdp)?[0];
    let rsdt = u64::from(mem.read_u32(rsdp + 16).ok_or(AcpiError::BadRsdp)?);
    let xsdt = if revision >= 2 && checksum_ok(mem, rsdp, 36) {
        mem.read_u64(rsdp + 24).filter(|&a| a != 0)
    } else {
        None
    };
    let (root, entry_size) = match xsdt {
        Some(x) => (x, 8u64),
        None => (rsdt, 4u64),
    };
    let root_len = mem.read_u32(root + 4).ok_or(AcpiError::BadRootTable)?;
    if root_len < 36 || !checksum_ok(mem, root, root_len) {
        return Err(AcpiError::BadRootTable);
    }
    let mut info = AcpiInfo {
        rsdp,
        revision,
        tables: [[0; 4]; TABLES_MAX],
        table_count: 0,
        bad_tables: 0,
        ecam: None,
        dsdt: None,
        hardware_reduced: false,
    };
    let entries = (u64::from(root_len) - 36) / entry_size;
    for i in 0..entries {
        let at = root + 36 + i * entry_size;
        let table = if entry_size == 8 {
            mem.read_u64(at)
        } else {
            mem.read_u32(at).map(u64::from)
        };
        let Some(table) = table else {
            info.bad_tables += 1;
            continue;
        };
        let (Some(signature), Some(len)) = (mem.read_array::<4>(table), mem.read_u32(table + 4))
        else {
            info.bad_tables += 1;
            continue;
        };
        if len < 36 || !checksum_ok(mem, table, len) {
            info.bad_tables += 1;
            continue;
        }
        if info.table_count < TABLES_MAX {
            info.tables[info.table_count] = signature;
            info.table_count += 1;
        }
        if &signature == b"MCFG" && info.ecam.is_none() {
            info.ecam = parse_mcfg(mem, table, len);
        }
        if &signature == b"FACP" && info.dsdt.is_none() {
            info.dsdt = dsdt_of_fadt(mem, table, len);
            // Flags at offset 112 (FADTs of 116 bytes and more), HW_REDUCED_ACPI is bit 20.
            info.hardware_reduced = len >= 116
                && mem
                    .read_u32(table + 112)
                    .is_some_and(|flags| flags & 1 << 20 != 0);
        }
    }
    Ok(info)
}

/// The DSDT a FADT names: X_DSDT (offset 140, ACPI 2.0+ FADTs of 148 bytes or more) when
/// set, else the 32-bit DSDT field (offset 40); `None` unless it is a valid DSDT.
fn dsdt_of_fadt(mem: &dyn PhysMemory, fadt: u64, fadt_len: u32) -> Option<TableLocation> {
    let x_dsdt = if fadt_len >= 148 {
        mem.read_u64(fadt + 140).filter(|&a| a != 0)
    } else {
        None
    };
    let address = match x_dsdt {
        Some(a) => a,
        None => u64::from(mem.read_u32(fadt + 40).filter(|&a| a != 0)?),
    };
    let len = mem.read_u32(address + 4)?;
    let valid = mem.read_array::<4>(address) == Some(*b"DSDT")
        && len >= 36
        && checksum_ok(mem, address, len);
    valid.then_some(TableLocation { address, len })
}

/// The virtio-mmio devices `dsdt` describes (see [`super::aml`]); empty when it cannot be
/// read. The table is copied once (at most 1 MiB, as [`checksum_ok`] allows) and freed.
pub fn virtio_mmio_in_dsdt(
    mem: &dyn PhysMemory,
    dsdt: TableLocation,
) -> alloc::vec::Vec<super::bootinfo::VirtioMmioDevice> {
    let mut aml = alloc::vec![0u8; dsdt.len as usize];
    if !mem.read(dsdt.address, &mut aml) {
        return alloc::vec::Vec::new();
    }
    super::aml::virtio_mmio_devices(&aml)
}

/// The first segment-0 allocation of an MCFG table (header 36 bytes + 8 reserved, then
/// 16-byte entries: base u64, segment u16, start bus u8, end bus u8, reserved u32).
fn parse_mcfg(mem: &dyn PhysMemory, table: u64, len: u32) -> Option<EcamWindow> {
    let mut at = table + 44;
    while at + 16 <= table + u64::from(len) {
        let base = mem.read_u64(at)?;
        let segment = mem.read_u16(at + 8)?;
        let [start_bus, end_bus] = mem.read_array::<2>(at + 10)?;
        if segment == 0 && base != 0 && start_bus <= end_bus {
            return Some(EcamWindow {
                base,
                segment,
                start_bus,
                end_bus,
            });
        }
        at += 16;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::physmem::testing::SparseMemory;
    use std::vec::Vec;

    fn fix_checksum(bytes: &mut [u8], at: usize, len: usize) {
        bytes[at] = 0;
        let sum = bytes[..len].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::from(*signature);
        t.extend_from_slice(&(36 + body.len() as u32).to_le_bytes());
        t.extend_from_slice(&[1, 0]); // revision, checksum
        t.extend_from_slice(b"BOCHS BXPC    \x01\0\0\0BXPC\x01\0\0\0");
        assert_eq!(t.len(), 36);
        t.extend_from_slice(body);
        let len = t.len();
        fix_checksum(&mut t, 9, len);
        t
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = Vec::from(*b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"BOCHS ");
        r.push(revision);
        r.extend_from_slice(&rsdt.to_le_bytes());
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix_checksum(&mut r, 8, 20);
        fix_checksum(&mut r, 32, 36);
        r
    }

    fn mcfg(base: u64, end_bus: u8) -> Vec<u8> {
        let mut body = std::vec![0u8; 8];
        body.extend_from_slice(&base.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&[0, end_bus]);
        body.extend_from_slice(&[0; 4]);
        table(b"MCFG", &body)
    }

    #[test]
    fn finds_mcfg_through_the_xsdt() {
        let mut mem = SparseMemory::default();
        mem.put(0xf5a40, &rsdp(2, 0x7fe1000, 0x7fe2000));
        let mut xsdt_body = Vec::new();
        for t in [0x7fe3000u64, 0x7fe4000, 0x7fe5000] {
            xsdt_body.extend_from_slice(&t.to_le_bytes());
        }
        mem.put(0x7fe2000, &table(b"XSDT", &xsdt_body));
        mem.put(0x7fe3000, &table(b"FACP", &[0; 8]));
        let mut broken = table(b"HPET", &[0; 8]);
        broken[9] ^= 1;
        mem.put(0x7fe4000, &broken);
        mem.put(0x7fe5000, &mcfg(0xb000_0000, 0xff));
        let info = parse(&mem, 0xf5a40).unwrap();
        assert_eq!(info.revision, 2);
        assert_eq!(info.table_names().collect::<Vec<_>>(), ["FACP", "MCFG"]);
        assert_eq!(info.bad_tables, 1);
        let ecam = info.ecam.unwrap();
        assert_eq!(ecam.base, 0xb000_0000);
        assert_eq!(ecam.size(), 256 << 20);
        assert_eq!(ecam.start_address(), 0xb000_0000);
    }

    #[test]
    fn acpi_1_uses_the_rsdt_and_may_lack_mcfg() {
        let mut mem = SparseMemory::default();
        mem.put(0xf0000, &rsdp(0, 0x100_0000, 0));
        mem.put(0x100_0000, &table(b"RSDT", &0x100_1000u32.to_le_bytes()));
        mem.put(0x100_1000, &table(b"APIC", &[0; 16]));
        let info = parse(&mem, 0xf0000).unwrap();
        assert_eq!(info.table_names().collect::<Vec<_>>(), ["APIC"]);
        assert!(info.ecam.is_none());
    }

    #[test]
    fn bad_rsdp_and_root_are_errors() {
        let mut mem = SparseMemory::default();
        let mut r = rsdp(2, 0x100_0000, 0);
        r[8] ^= 0x55;
        mem.put(0xf0000, &r);
        assert_eq!(parse(&mem, 0xf0000).unwrap_err(), AcpiError::BadRsdp);
        let mut mem = SparseMemory::default();
        mem.put(0xf0000, &rsdp(0, 0x100_0000, 0));
        let mut root = table(b"RSDT", &[0; 4]);
        root[20] ^= 1;
        mem.put(0x100_0000, &root);
        assert_eq!(parse(&mem, 0xf0000).unwrap_err(), AcpiError::BadRootTable);
    }

    #[test]
    fn follows_the_fadt_to_the_dsdt_and_finds_microvms_virtio_mmio_devices() {
        // microvm's layout: RSDP rev 2 with only an XSDT, FADT rev 5 (268 bytes) whose
        // DSDT and X_DSDT both point at the DSDT dumped from QEMU.
        let dsdt = include_bytes!("testdata/microvm-dsdt.aml");
        let mut mem = SparseMemory::default();
        mem.put(0xf34d0, &rsdp(2, 0, 0xeffb6));
        mem.put(0xeffb6, &table(b"XSDT", &0xefe58u64.to_le_bytes()));
        let mut fadt = std::vec![0u8; 268 - 36];
        fadt[40 - 36..44 - 36].copy_from_slice(&0xefc80u32.to_le_bytes());
        fadt[140 - 36..148 - 36].copy_from_slice(&0xefc80u64.to_le_bytes());
        // Flags: HW_REDUCED_ACPI and RESET_REG_SUP, as QEMU's microvm sets them.
        fadt[112 - 36..116 - 36].copy_from_slice(&(1u32 << 20 | 1 << 10).to_le_bytes());
        mem.put(0xefe58, &table(b"FACP", &fadt));
        mem.put(0xefc80, dsdt);
        let info = parse(&mem, 0xf34d0).unwrap();
        assert!(info.hardware_reduced);
        let location = info.dsdt.expect("dsdt");
        assert_eq!(location.address, 0xefc80);
        assert_eq!(location.len as usize, dsdt.len());
        let bases: Vec<u64> = virtio_mmio_in_dsdt(&mem, location)
            .iter()
            .map(|d| d.base)
            .collect();
        assert_eq!(bases, [0xfeb0_2e00, 0xfeb0_2c00]);

        // An ACPI 1.0 FADT (116 bytes) has only the 32-bit field; a corrupt DSDT is refused.
        let mut old = std::vec![0u8; 116 - 36];
        old[40 - 36..44 - 36].copy_from_slice(&0xefc80u32.to_le_bytes());
        mem.chunks.retain(|(base, _)| *base != 0xefe58);
        mem.put(0xefe58, &table(b"FACP", &old));
        let info = parse(&mem, 0xf34d0).unwrap();
        assert_eq!(info.dsdt, Some(location));
        assert!(!info.hardware_reduced, "a PC's FADT");
        let mut broken = dsdt.to_vec();
        broken[100] ^= 0x20;
        mem.chunks.retain(|(base, _)| *base != 0xefc80);
        mem.put(0xefc80, &broken);
        assert_eq!(parse(&mem, 0xf34d0).unwrap().dsdt, None);
    }

    #[test]
    fn scans_the_bios_area() {
        let mut mem = SparseMemory::default();
        mem.put(0x40e, &0x9fc0u16.to_le_bytes());
        mem.put(0x9fc00, &[0u8; 1024]);
        let mut area = std::vec![0u8; 0x20000];
        let r = rsdp(0, 0x100_0000, 0);
        area[0x5a40..0x5a40 + r.len()].copy_from_slice(&r);
        mem.put(0xe0000, &area);
        assert_eq!(find_rsdp_in_bios(&mem), Some(0xe5a40));
        // A signature with a bad checksum in an earlier block is passed over; one in the
        // last 16 bytes of a block is found; the EBDA is searched first.
        let mut bad = r.clone();
        bad[8] ^= 1;
        area[0x10..0x10 + bad.len()].copy_from_slice(&bad);
        area[0x5a40..0x5a40 + r.len()].fill(0);
        area[0x3f0..0x3f0 + 8].copy_from_slice(b"RSD PTR ");
        area[0x3f8..0x400].fill(0);
        area[0x7f0..0x7f0 + r.len()].copy_from_slice(&r);
        mem.chunks.retain(|(base, _)| *base != 0xe0000);
        mem.put(0xe0000, &area);
        assert_eq!(find_rsdp_in_bios(&mem), Some(0xe07f0));
        let mut ebda = std::vec![0u8; 1024];
        ebda[0x20..0x20 + r.len()].copy_from_slice(&r);
        mem.chunks.retain(|(base, _)| *base != 0x9fc00);
        mem.put(0x9fc00, &ebda);
        assert_eq!(find_rsdp_in_bios(&mem), Some(0x9fc20));
    }
}
