//! Checking the kernel ELF and cutting it down to what loaders read.
//!
//! The kernel is linked with debug information (useful with `addr2line` on a fault report's
//! rip); QEMU's PVH loader and GRUB's multiboot2 loader only read the ELF header, the
//! program headers and the segments. [`strip`] keeps exactly those bytes and drops the
//! section headers, which lld places after all segment data.

use crate::Error;

/// What [`inspect`] learned from the ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSummary {
    /// Entry point (the multiboot2 entry).
    pub entry: u64,
    /// The PVH entry from the Xen note, if present.
    pub pvh_entry: Option<u64>,
    /// The 64-bit entry the UEFI stub uses, from the "netoops" note, if present.
    pub uefi_entry: Option<u64>,
    /// Bytes loaded from the file (sum of PT_LOAD file sizes).
    pub load_file_bytes: u64,
    /// Bytes occupied in memory (sum of PT_LOAD memory sizes).
    pub load_mem_bytes: u64,
    /// End of the last segment's file data.
    pub segments_end: u64,
    /// File offset of the multiboot2 header, if found in the first 32 KiB.
    pub multiboot2_offset: Option<u64>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, Error> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(Error::BadElf("truncated"))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Error::BadElf("truncated"))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, Error> {
    let lo = u64::from(u32_at(b, off)?);
    let hi = u64::from(u32_at(b, off + 4)?);
    Ok(lo | (hi << 32))
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const MB2_MAGIC: u32 = 0xe852_50d6;
/// Type of the "netoops" note that carries the 64-bit UEFI-stub entry.
const UEFI64_ENTRY_NOTE: u32 = 1;

/// Reads the headers of an x86_64 ELF64 executable.
pub fn inspect(b: &[u8]) -> Result<ElfSummary, Error> {
    if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(Error::BadElf("not a little-endian ELF64 file"));
    }
    if u16_at(b, 18)? != 62 {
        return Err(Error::BadElf("not an x86_64 ELF"));
    }
    let entry = u64_at(b, 24)?;
    let phoff = usize::try_from(u64_at(b, 32)?).map_err(|_| Error::BadElf("phoff"))?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    if phentsize < 56 {
        return Err(Error::BadElf("program header size"));
    }
    let mut summary = ElfSummary {
        entry,
        pvh_entry: None,
        uefi_entry: None,
        load_file_bytes: 0,
        load_mem_bytes: 0,
        segments_end: (phoff + phentsize * phnum) as u64,
        multiboot2_offset: None,
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(b, ph)?;
        let offset = u64_at(b, ph + 8)?;
        let filesz = u64_at(b, ph + 32)?;
        let memsz = u64_at(b, ph + 40)?;
        let end = offset
            .checked_add(filesz)
            .ok_or(Error::BadElf("segment overflow"))?;
        if end > b.len() as u64 {
            return Err(Error::BadElf("segment past end of file"));
        }
        summary.segments_end = summary.segments_end.max(end);
        match kind {
            PT_LOAD => {
                summary.load_file_bytes += filesz;
                summary.load_mem_bytes += memsz;
            }
            PT_NOTE => {
                let notes = &b[offset as usize..end as usize];
                summary.pvh_entry = summary.pvh_entry.or(find_note(notes, b"Xen\0", 18));
                summary.uefi_entry =
                    summary
                        .uefi_entry
                        .or(find_note(notes, b"netoops\0", UEFI64_ENTRY_NOTE));
            }
            _ => {}
        }
    }
    summary.multiboot2_offset = (0..b.len().min(32768).saturating_sub(16))
        .step_by(8)
        .find(|&off| {
            let word = |o| u32_at(b, off + o).unwrap_or(0);
            word(0) == MB2_MAGIC
                && word(4) == 0
                && word(0)
                    .wrapping_add(word(4))
                    .wrapping_add(word(8))
                    .wrapping_add(word(12))
                    == 0
        })
        .map(|o| o as u64);
    Ok(summary)
}

/// The descriptor (an entry address) of the note of `owner` and `kind` in a note segment:
/// XEN_ELFNOTE_PHYS32_ENTRY is owner "Xen" type 18, the UEFI entry owner "netoops" type 1.
fn find_note(notes: &[u8], owner: &[u8], kind_wanted: u32) -> Option<u64> {
    let mut off = 0;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off).ok()? as usize;
        let descsz = u32_at(notes, off + 4).ok()? as usize;
        let kind = u32_at(notes, off + 8).ok()?;
        let name_off = off + 12;
        let desc_off = name_off + namesz.next_multiple_of(4);
        if kind == kind_wanted && notes.get(name_off..name_off + namesz) == Some(owner) {
            return match descsz {
                8 => u64_at(notes, desc_off).ok(),
                4 => u32_at(notes, desc_off).ok().map(u64::from),
                _ => None,
            };
        }
        off = desc_off + descsz.next_multiple_of(4);
    }
    None
}

/// The file cut after the last segment, without section headers.
pub fn strip(b: &[u8]) -> Result<Vec<u8>, Error> {
    let summary = inspect(b)?;
    let end = usize::try_from(summary.segments_end).map_err(|_| Error::BadElf("size"))?;
    let mut out = b[..end].to_vec();
    // e_shoff = 0, e_shnum = 0, e_shstrndx = 0: no section table.
    out[40..48].fill(0);
    out[60..64].fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an ELF note at `at`: name and descriptor sizes, type, name, descriptor.
    fn note(b: &mut [u8], at: usize, name: &[u8], kind: u32, desc: &[u8]) {
        let name_end = at + 12 + name.len();
        b[at..at + 4].copy_from_slice(&(name.len() as u32).to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&(desc.len() as u32).to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&kind.to_le_bytes());
        b[at + 12..name_end].copy_from_slice(name);
        b[name_end..name_end + desc.len()].copy_from_slice(desc);
    }

    /// A minimal ELF64 with one PT_LOAD, one PT_NOTE (Xen PVH, then the netoops UEFI entry)
    /// and trailing junk that stands in for debug sections.
    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&0x10002au64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[40..48].copy_from_slice(&0x1f0u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        b[60..62].copy_from_slice(&5u16.to_le_bytes());
        // PT_LOAD at file 0x100, 0x80 bytes, 0x1000 in memory.
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&0x80u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        // PT_NOTE at 0x180, 0x34 bytes.
        let ph = 64 + 56;
        b[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&0x180u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&0x34u64.to_le_bytes());
        note(&mut b, 0x180, b"Xen\0", 18, &0x100018u64.to_le_bytes());
        note(&mut b, 0x198, b"netoops\0", 1, &0x100139u64.to_le_bytes());
        // multiboot2 header at 0x100.
        let mb = 0x100;
        let len = 24u32;
        b[mb..mb + 4].copy_from_slice(&MB2_MAGIC.to_le_bytes());
        b[mb + 8..mb + 12].copy_from_slice(&len.to_le_bytes());
        let sum = 0u32.wrapping_sub(MB2_MAGIC.wrapping_add(len));
        b[mb + 12..mb + 16].copy_from_slice(&sum.to_le_bytes());
        b[0x1b4..].fill(0xdb);
        b
    }

    #[test]
    fn inspects_entries_segments_and_headers() {
        let s = inspect(&sample()).unwrap();
        assert_eq!(s.entry, 0x10002a);
        assert_eq!(s.pvh_entry, Some(0x100018));
        assert_eq!(s.uefi_entry, Some(0x100139));
        assert_eq!(s.load_file_bytes, 0x80);
        assert_eq!(s.load_mem_bytes, 0x1000);
        assert_eq!(s.segments_end, 0x1b4);
        assert_eq!(s.multiboot2_offset, Some(0x100));
    }

    #[test]
    fn strip_keeps_segments_and_drops_the_section_table() {
        let b = sample();
        let out = strip(&b).unwrap();
        assert_eq!(out.len(), 0x1b4);
        assert_eq!(&out[0x100..0x1b4], &b[0x100..0x1b4]);
        assert_eq!(u64_at(&out, 40).unwrap(), 0);
        assert_eq!(u16_at(&out, 60).unwrap(), 0);
        assert_eq!(inspect(&out).unwrap().pvh_entry, Some(0x100018));
        assert_eq!(inspect(&out).unwrap().uefi_entry, Some(0x100139));
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        assert!(inspect(b"MZ\x90\x00").is_err());
        let mut b = sample();
        b.truncate(0x150);
        assert!(matches!(
            inspect(&b),
            Err(Error::BadElf("segment past end of file"))
        ));
    }
}
