//! The embedded kernel: the very ELF that QEMU boots through PVH and GRUB through multiboot2.
//!
//! [`plan`] reads its program headers and the "netoops" note (type 1: the 8-byte address of
//! the 64-bit entry, `_start_uefi64` in `platform/boot.rs`) and returns where each loadable
//! segment goes. The kernel is linked static at 1 MiB and runs identity mapped, so the stub
//! must place it at exactly its physical addresses; nothing here relocates. Every field is
//! range-checked: a malformed ELF is a typed error, never a panic or a wild copy.

/// Most loadable segments accepted (the kernel has one).
pub const SEGMENTS_MAX: usize = 4;
/// Owner of the entry note.
pub const NOTE_OWNER: &[u8] = b"netoops\0";
/// Type of the entry note (`platform::boot::NOTE_UEFI64_ENTRY`).
pub const NOTE_UEFI64_ENTRY: u32 = 1;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// One segment to copy: `file_size` bytes from `offset` in the ELF to `phys`, then zeros up
/// to `mem_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the ELF file.
    pub offset: usize,
    /// Physical load address.
    pub phys: u64,
    /// Bytes taken from the file.
    pub file_size: usize,
    /// Bytes occupied in memory (the rest is zeroed).
    pub mem_size: u64,
}

/// Where the kernel goes and where it is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    segments: [Segment; SEGMENTS_MAX],
    count: usize,
    /// First byte to reserve (page aligned).
    pub start: u64,
    /// One past the last byte to reserve (page aligned).
    pub end: u64,
    /// The 64-bit entry point.
    pub entry: u64,
}

impl LoadPlan {
    /// The loadable segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
    /// 4 KiB pages from `start` to `end`.
    pub fn pages(&self) -> usize {
        ((self.end - self.start) / 4096) as usize
    }
}

/// What is wrong with the embedded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian x86_64 ELF64 executable.
    NotX86_64Elf,
    /// A header or segment lies outside the file.
    Truncated,
    /// No loadable segment, or more than [`SEGMENTS_MAX`].
    SegmentCount,
    /// A segment's sizes are inconsistent or it reaches past 4 GiB.
    BadSegment,
    /// No "netoops" entry note: the ELF predates UEFI support.
    NoUefiEntry,
    /// The entry note points outside the loaded segments.
    EntryOutside,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ElfError::NotX86_64Elf => "not a little-endian x86_64 ELF64 executable",
            ElfError::Truncated => "a header or segment lies outside the file",
            ElfError::SegmentCount => "no loadable segment, or too many",
            ElfError::BadSegment => "a segment is inconsistent or reaches past 4 GiB",
            ElfError::NoUefiEntry => "no netoops 64-bit entry note (kernel too old)",
            ElfError::EntryOutside => "the entry note points outside the loaded segments",
        })
    }
}

fn bytes<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated)
}
fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    bytes(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    bytes(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    bytes(b, at).map(u64::from_le_bytes)
}
fn usize_at(b: &[u8], at: usize) -> Result<usize, ElfError> {
    usize::try_from(u64_at(b, at)?).map_err(|_| ElfError::Truncated)
}

/// Reads the load plan of `elf`.
pub fn plan(elf: &[u8]) -> Result<LoadPlan, ElfError> {
    let ident_ok = elf.get(..6) == Some(b"\x7fELF\x02\x01".as_slice());
    if !ident_ok || u16_at(elf, 16)? != 2 || u16_at(elf, 18)? != 62 {
        return Err(ElfError::NotX86_64Elf);
    }
    let phoff = usize_at(elf, 32)?;
    let phentsize = usize::from(u16_at(elf, 54)?);
    let phnum = usize::from(u16_at(elf, 56)?);
    if phentsize < 56 {
        return Err(ElfError::Truncated);
    }
    let mut plan = LoadPlan {
        segments: [Segment::default(); SEGMENTS_MAX],
        count: 0,
        start: u64::MAX,
        end: 0,
        entry: 0,
    };
    let mut entry = None;
    for i in 0..phnum {
        let ph = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ElfError::Truncated)?;
        let kind = u32_at(elf, ph)?;
        let offset = usize_at(elf, ph + 8)?;
        let phys = u64_at(elf, ph + 24)?;
        let file_size = usize_at(elf, ph + 32)?;
        let mem_size = u64_at(elf, ph + 40)?;
        let file_end = offset.checked_add(file_size).ok_or(ElfError::Truncated)?;
        if file_end > elf.len() {
            return Err(ElfError::Truncated);
        }
        match kind {
            PT_LOAD if mem_size > 0 => {
                let end = phys.checked_add(mem_size).ok_or(ElfError::BadSegment)?;
                if (file_size as u64) > mem_size || end > 1 << 32 || phys == 0 {
                    return Err(ElfError::BadSegment);
                }
                if plan.count == SEGMENTS_MAX {
                    return Err(ElfError::SegmentCount);
                }
                plan.segments[plan.count] = Segment {
                    offset,
                    phys,
                    file_size,
                    mem_size,
                };
                plan.count += 1;
                plan.start = plan.start.min(phys & !4095);
                plan.end = plan.end.max(end.next_multiple_of(4096));
            }
            PT_NOTE => entry = entry.or(find_entry_note(&elf[offset..file_end])),
            _ => {}
        }
    }
    if plan.count == 0 {
        return Err(ElfError::SegmentCount);
    }
    let entry = entry.ok_or(ElfError::NoUefiEntry)?;
    let inside = plan
        .segments()
        .iter()
        .any(|s| entry >= s.phys && entry < s.phys + s.file_size as u64);
    if !inside {
        return Err(ElfError::EntryOutside);
    }
    plan.entry = entry;
    Ok(plan)
}

/// The descriptor of the "netoops" type-1 note in a note segment.
fn find_entry_note(notes: &[u8]) -> Option<u64> {
    let mut off = 0usize;
    while off.checked_add(12)? <= notes.len() {
        let namesz = u32_at(notes, off).ok()? as usize;
        let descsz = u32_at(notes, off + 4).ok()? as usize;
        let kind = u32_at(notes, off + 8).ok()?;
        let name_off = off + 12;
        let desc_off = name_off.checked_add(namesz.next_multiple_of(4))?;
        if kind == NOTE_UEFI64_ENTRY
            && notes.get(name_off..name_off.checked_add(namesz)?) == Some(NOTE_OWNER)
            && descsz == 8
        {
            return u64_at(notes, desc_off).ok();
        }
        off = desc_off.checked_add(descsz.next_multiple_of(4))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn note(owner: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(owner.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(owner);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        n
    }

    /// ELF header, two program headers (LOAD at 1 MiB, NOTE), 0x100 bytes of segment data
    /// at file offset 0x1000 with the notes at its end.
    fn sample(notes: &[u8]) -> Vec<u8> {
        let mut e = std::vec![0u8; 0x1100];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[16..18].copy_from_slice(&2u16.to_le_bytes());
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph =
            |e: &mut Vec<u8>, at: usize, kind: u32, off: u64, addr: u64, fsz: u64, msz: u64| {
                e[at..at + 4].copy_from_slice(&kind.to_le_bytes());
                e[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                e[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
                e[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
                e[at + 32..at + 40].copy_from_slice(&fsz.to_le_bytes());
                e[at + 40..at + 48].copy_from_slice(&msz.to_le_bytes());
            };
        let note_off = 0x1100 - notes.len() as u64;
        ph(&mut e, 64, PT_LOAD, 0x1000, 0x10_0000, 0x100, 0x6_3000);
        ph(
            &mut e,
            120,
            PT_NOTE,
            note_off,
            0x10_0000 + note_off - 0x1000,
            notes.len() as u64,
            notes.len() as u64,
        );
        let at = note_off as usize;
        e[at..].copy_from_slice(notes);
        e
    }

    fn kernel_notes(entry: u64) -> Vec<u8> {
        let mut n = note(b"Xen\0", 18, &0x10_0018u64.to_le_bytes());
        n.extend(note(NOTE_OWNER, NOTE_UEFI64_ENTRY, &entry.to_le_bytes()));
        n
    }

    #[test]
    fn plans_the_kernel_layout() {
        let elf = sample(&kernel_notes(0x10_0040));
        let plan = plan(&elf).unwrap();
        assert_eq!(plan.entry, 0x10_0040);
        assert_eq!(plan.start, 0x10_0000);
        assert_eq!(plan.end, 0x16_3000);
        assert_eq!(plan.pages(), 0x63);
        assert_eq!(
            plan.segments(),
            [Segment {
                offset: 0x1000,
                phys: 0x10_0000,
                file_size: 0x100,
                mem_size: 0x6_3000
            }]
        );
    }

    #[test]
    fn the_built_kernel_has_a_uefi_entry_when_present() {
        // When the image has been built in this tree (`netoops-image build`), check it.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/image/netoops-relay.elf"
        );
        let Ok(elf) = std::fs::read(path) else {
            return;
        };
        let plan = plan(&elf).unwrap();
        assert_eq!(plan.start, 0x10_0000);
        assert!(plan.entry > plan.start && plan.entry < plan.end);
    }

    #[test]
    fn rejects_malformed_files() {
        assert_eq!(plan(b"\x7fELF"), Err(ElfError::NotX86_64Elf));
        assert_eq!(plan(&[0u8; 64]), Err(ElfError::NotX86_64Elf));

        let no_note = sample(&note(b"Xen\0", 18, &[0; 8]));
        assert_eq!(plan(&no_note), Err(ElfError::NoUefiEntry));

        let outside = sample(&kernel_notes(0x20_0000));
        assert_eq!(plan(&outside), Err(ElfError::EntryOutside));

        let mut past_end = sample(&kernel_notes(0x10_0040));
        past_end[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(plan(&past_end), Err(ElfError::Truncated));

        let mut high = sample(&kernel_notes(0x10_0040));
        high[64 + 24..64 + 32].copy_from_slice(&0xffff_f000u64.to_le_bytes());
        assert_eq!(plan(&high), Err(ElfError::BadSegment));

        let mut wrapping = sample(&kernel_notes(0x10_0040));
        wrapping[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(plan(&wrapping), Err(ElfError::Truncated));

        let mut huge_phnum = sample(&kernel_notes(0x10_0040));
        huge_phnum[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(plan(&huge_phnum), Err(ElfError::Truncated));
    }

    #[test]
    fn note_walk_survives_garbage() {
        assert_eq!(find_entry_note(&[0xff; 40]), None);
        assert_eq!(find_entry_note(&[]), None);
        let mut n = note(NOTE_OWNER, NOTE_UEFI64_ENTRY, &[1, 2, 3, 4]);
        assert_eq!(find_entry_note(&n), None, "descriptor must be 8 bytes");
        n = note(NOTE_OWNER, 2, &0x1234u64.to_le_bytes());
        assert_eq!(find_entry_note(&n), None);
    }
}
