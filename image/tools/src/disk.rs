//! The flashable disk image: GPT with one FAT32 EFI system partition.
//!
//! ```text
//! LBA 0        protective MBR
//! LBA 1..33    GPT header and partition entries
//! LBA 2048..   partition 1, type EFI System (C12A7328-...), FAT32, label NETOOPS:
//!                /EFI/BOOT/BOOTX64.EFI   the UEFI stub with the kernel inside
//!                /relay.conf             the configuration (kernel command-line keys)
//! last 33 LBAs backup GPT
//! ```
//!
//! Written with the `gpt` and `fatfs` crates, no external tools and no root. The partition
//! starts at 1 MiB and ends on a 1 MiB boundary; FAT32 with 512-byte clusters needs 65525
//! clusters, hence [`MIN_SIZE_MIB`]. `dd` the file to a USB stick or SSD; any OS can then
//! mount the ESP and edit relay.conf. [`esp_read`] / [`esp_write`] do the same on the image
//! file (the end-to-end tests use them to try broken and missing configurations).

use crate::Error;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Sector size of the image.
pub const SECTOR: u64 = 512;
/// Default image size.
pub const DEFAULT_SIZE_MIB: u64 = 64;
/// Smallest image that holds a FAT32 partition.
pub const MIN_SIZE_MIB: u64 = 40;
/// Largest image built (a few GiB at most is ever useful: the ESP holds two small files).
pub const MAX_SIZE_MIB: u64 = 64 * 1024;
/// First LBA of the ESP (1 MiB).
pub const ESP_FIRST_LBA: u64 = 2048;
/// Path of the stub on the ESP (the removable-media default boot path for x86_64).
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Path of the configuration on the ESP.
pub const CONF_PATH: &str = "relay.conf";

/// Where the ESP ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// Image size in bytes.
    pub size: u64,
    /// Byte offset of the ESP.
    pub esp_offset: u64,
    /// ESP size in bytes.
    pub esp_size: u64,
}

/// File times on the ESP: `SOURCE_DATE_EPOCH` when set (reproducible images), else now,
/// in UTC. (fatfs without its chrono feature would write date 0, which is no valid date.)
#[derive(Debug)]
struct ImageClock;

static IMAGE_CLOCK: ImageClock = ImageClock;

impl ImageClock {
    fn seconds() -> u64 {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            })
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u16, u16) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A FAT timestamp for `seconds` since the Unix epoch, clamped to FAT's 1980..=2107.
fn fat_date_time(seconds: u64) -> fatfs::DateTime {
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let (year, month, day) = match year {
        y if y < 1980 => (1980, 1, 1),
        y if y > 2107 => (2107, 12, 31),
        y => (y as u16, month, day),
    };
    let in_day = seconds % 86_400;
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (in_day / 3600) as u16,
            min: (in_day / 60 % 60) as u16,
            sec: (in_day % 60) as u16,
            millis: 0,
        },
    }
}

impl fatfs::TimeProvider for ImageClock {
    fn get_current_date(&self) -> fatfs::Date {
        fat_date_time(Self::seconds()).date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fat_date_time(Self::seconds())
    }
}

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new().time_provider(&IMAGE_CLOCK)
}

fn gpt_error(e: impl std::fmt::Display) -> Error {
    Error::Io(io::Error::other(format!("GPT: {e}")))
}

/// Writes a disk image of `size_mib` MiB to `out`: `efi` as [`BOOT_PATH`] and, when given,
/// `relay_conf` as [`CONF_PATH`] (the tests leave it out to see the stub's message).
pub fn build_disk(
    efi: &[u8],
    relay_conf: Option<&[u8]>,
    size_mib: u64,
    out: &Path,
) -> Result<DiskLayout, Error> {
    if !(MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&size_mib) {
        return Err(Error::Io(io::Error::other(format!(
            "disk size {size_mib} MiB: choose {MIN_SIZE_MIB}..={MAX_SIZE_MIB}"
        ))));
    }
    let size = size_mib << 20;
    let sectors = size / SECTOR;
    // The backup GPT takes the last 33 sectors; end the ESP on a 1 MiB boundary before it.
    let esp_end_lba = (sectors - 33) / ESP_FIRST_LBA * ESP_FIRST_LBA;
    let layout = DiskLayout {
        size,
        esp_offset: ESP_FIRST_LBA * SECTOR,
        esp_size: (esp_end_lba - ESP_FIRST_LBA) * SECTOR,
    };

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension(format!("img.{}", std::process::id()));
    let result = write_image(&tmp, efi, relay_conf, sectors, esp_end_lba, layout);
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, out)?;
            Ok(layout)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_image(
    path: &Path,
    efi: &[u8],
    relay_conf: Option<&[u8]>,
    sectors: u64,
    esp_end_lba: u64,
    layout: DiskLayout,
) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // Sparse: only the tables and the FAT structures are ever written.
    file.set_len(layout.size)?;

    let protective =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    protective.overwrite_lba0(&mut file).map_err(gpt_error)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, None)
        .map_err(gpt_error)?;
    disk.add_partition_at(
        "EFI system partition",
        1,
        ESP_FIRST_LBA,
        esp_end_lba - ESP_FIRST_LBA,
        gpt::partition_types::EFI,
        0,
    )
    .map_err(gpt_error)?;
    let mut file = disk.write().map_err(gpt_error)?;

    let mut window = Window::new(&mut file, layout.esp_offset, layout.esp_size);
    fatfs::format_volume(
        &mut window,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(*b"NETOOPS    "),
    )?;
    window.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(window, fs_options())?;
    {
        let root = fs.root_dir();
        root.create_dir("EFI")?;
        root.create_dir("EFI/BOOT")?;
        root.create_file(BOOT_PATH)?.write_all(efi)?;
        if let Some(conf) = relay_conf {
            root.create_file(CONF_PATH)?.write_all(conf)?;
        }
    }
    fs.unmount()?;
    let mut window = Window::new(&mut file, layout.esp_offset, layout.esp_size);
    fix_dot_entries(&mut window, &["EFI        ", "BOOT       "])?;
    file.sync_all()?;
    Ok(())
}

/// fatfs 0.3.6 writes a long-name entry before every short entry, the "." and ".." of a new
/// directory included, so they are not the directory's first two slots (fsck.fat rejects
/// that; firmware FAT drivers may too). For each directory on `path` (8.3 names, padded to
/// 11 bytes, each inside the previous), this moves the two short entries to slots 0 and 1,
/// marks the two stray long-name slots deleted and points a top-level ".." at cluster 0
/// (the FAT convention for the root, which fatfs also gets wrong).
fn fix_dot_entries(volume: &mut Window<'_>, path: &[&str]) -> io::Result<()> {
    let mut boot = [0u8; 512];
    volume.seek(SeekFrom::Start(0))?;
    volume.read_exact(&mut boot)?;
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
    let u32_at = |at: usize| {
        u64::from(u32::from_le_bytes([
            boot[at],
            boot[at + 1],
            boot[at + 2],
            boot[at + 3],
        ]))
    };
    let sector = u16_at(11);
    let cluster_bytes = sector * u64::from(boot[13]);
    let fat_start = u16_at(14) * sector;
    let data_start = fat_start + u64::from(boot[16]) * u32_at(36) * sector;
    let bad = |what: &str| io::Error::other(format!("FAT fix-up: {what}"));
    if cluster_bytes < 128 || sector == 0 {
        return Err(bad("not a FAT32 boot sector"));
    }
    let cluster_offset = |c: u64| data_start + (c - 2) * cluster_bytes;

    let mut dir = u32_at(44);
    for (depth, name) in path.iter().enumerate() {
        // Find `name`'s short entry in `dir` (following its cluster chain) and enter it.
        let mut cluster = dir;
        let mut found = None;
        'chain: for _ in 0..1024 {
            let mut entries = vec![0u8; cluster_bytes as usize];
            volume.seek(SeekFrom::Start(cluster_offset(cluster)))?;
            volume.read_exact(&mut entries)?;
            for e in entries.chunks_exact(32) {
                if e[0] == 0 {
                    break 'chain;
                }
                if e[0] != 0xe5 && e[11] != 0x0f && &e[..11] == name.as_bytes() {
                    let high = u64::from(u16::from_le_bytes([e[20], e[21]]));
                    let low = u64::from(u16::from_le_bytes([e[26], e[27]]));
                    found = Some(high << 16 | low);
                    break 'chain;
                }
            }
            let mut next = [0u8; 4];
            volume.seek(SeekFrom::Start(fat_start + cluster * 4))?;
            volume.read_exact(&mut next)?;
            cluster = u64::from(u32::from_le_bytes(next) & 0x0fff_ffff);
            if !(2..0x0fff_fff8).contains(&cluster) {
                break;
            }
        }
        dir = found.ok_or_else(|| bad("directory not found"))?;

        let at = cluster_offset(dir);
        let mut slots = [0u8; 128];
        volume.seek(SeekFrom::Start(at))?;
        volume.read_exact(&mut slots)?;
        let is_lfn = |slot: usize| slots[slot * 32 + 11] == 0x0f;
        let named = |slot: usize, n: &[u8; 11]| &slots[slot * 32..slot * 32 + 11] == n;
        if !named(0, b".          ") {
            if !(is_lfn(0) && named(1, b".          ") && is_lfn(2) && named(3, b"..         ")) {
                return Err(bad("unexpected directory layout"));
            }
            let mut fixed = [0u8; 128];
            fixed[..32].copy_from_slice(&slots[32..64]);
            fixed[32..64].copy_from_slice(&slots[96..128]);
            fixed[64..96].copy_from_slice(&slots[..32]);
            fixed[96..].copy_from_slice(&slots[64..96]);
            fixed[64] = 0xe5;
            fixed[96] = 0xe5;
            if depth == 0 {
                // ".." of a directory in the root points to cluster 0, not the root's.
                for b in [52, 53, 58, 59] {
                    fixed[b] = 0;
                }
            }
            volume.seek(SeekFrom::Start(at))?;
            volume.write_all(&fixed)?;
        }
    }
    volume.flush()
}

/// Finds the ESP of `image`: (byte offset, size).
fn find_esp(image: &Path) -> Result<(u64, u64), Error> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(image)
        .map_err(gpt_error)?;
    disk.partitions()
        .values()
        .find(|p| p.part_type_guid == gpt::partition_types::EFI)
        .map(|p| {
            (
                p.first_lba * SECTOR,
                (p.last_lba + 1 - p.first_lba) * SECTOR,
            )
        })
        .ok_or_else(|| gpt_error("no EFI system partition"))
}

/// Reads `path` from the ESP of `image`; `None` when it does not exist.
pub fn esp_read(image: &Path, path: &str) -> Result<Option<Vec<u8>>, Error> {
    let (offset, size) = find_esp(image)?;
    let mut file = File::open(image)?;
    let fs = fatfs::FileSystem::new(Window::new(&mut file, offset, size), fs_options())?;
    let mut bytes = Vec::new();
    let found = match fs.root_dir().open_file(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    Ok(found.then_some(bytes))
}

/// Replaces `path` on the ESP of `image` with `bytes`, or removes it for `None` (what a user
/// does after mounting the flashed stick).
pub fn esp_write(image: &Path, path: &str, bytes: Option<&[u8]>) -> Result<(), Error> {
    let (offset, size) = find_esp(image)?;
    let mut file = OpenOptions::new().read(true).write(true).open(image)?;
    let fs = fatfs::FileSystem::new(Window::new(&mut file, offset, size), fs_options())?;
    {
        let root = fs.root_dir();
        match bytes {
            Some(bytes) => {
                let mut f = root.create_file(path)?;
                f.truncate()?;
                f.write_all(bytes)?;
            }
            None => match root.remove(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
    }
    fs.unmount()?;
    file.sync_all()?;
    Ok(())
}

/// A byte range of a file seen as a whole device (the partition, for fatfs).
struct Window<'f> {
    file: &'f mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'f> Window<'f> {
    fn new(file: &'f mut File, start: u64, len: u64) -> Self {
        Self {
            file,
            start,
            len,
            pos: 0,
        }
    }

    fn room(&self, want: usize) -> usize {
        usize::try_from(self.len.saturating_sub(self.pos))
            .unwrap_or(usize::MAX)
            .min(want)
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A file in this test run's scratch directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("netoops-disk-{}-{name}", std::process::id())))
    }

    /// fsck.vfat (dosfstools), when installed, finds nothing to repair on the ESP.
    fn assert_fsck_clean(image: &Path) {
        if !crate::have_program("fsck.vfat") {
            return;
        }
        let (offset, size) = find_esp(image).unwrap();
        let name = image.file_name().unwrap().to_string_lossy();
        let esp = scratch(&format!("{name}.esp"));
        let mut bytes = std::fs::read(image).unwrap();
        bytes.drain(..offset as usize);
        bytes.truncate(size as usize);
        std::fs::write(&esp.0, &bytes).unwrap();
        let o = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&esp.0)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn image_has_a_gpt_esp_with_the_stub_and_the_conf() {
        let img = scratch("a.img");
        let out = &img.0;
        let efi: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let layout = build_disk(&efi, Some(b"ip=10.0.0.2/24\n"), 64, out).unwrap();
        assert_eq!(layout.size, 64 << 20);
        assert_eq!(std::fs::metadata(out).unwrap().len(), 64 << 20);
        assert_eq!(layout.esp_offset, 1 << 20);
        assert_eq!(layout.esp_size, 62 << 20);
        assert_eq!(find_esp(out).unwrap(), (layout.esp_offset, layout.esp_size));
        assert_eq!(esp_read(out, BOOT_PATH).unwrap().unwrap(), efi);
        assert_eq!(
            esp_read(out, CONF_PATH).unwrap().unwrap(),
            b"ip=10.0.0.2/24\n"
        );

        // A protective MBR (type 0xEE) and the GPT signature at LBA 1.
        let mut head = vec![0u8; 1024];
        File::open(out).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(&head[510..512], &[0x55, 0xaa]);
        assert_eq!(head[446 + 4], 0xee);
        assert_eq!(&head[512..520], b"EFI PART");

        // The FAT is FAT32 with our label.
        let mut file = File::open(out).unwrap();
        let fs = fatfs::FileSystem::new(
            Window::new(&mut file, layout.esp_offset, layout.esp_size),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_label(), "NETOOPS");
        drop(fs);
        assert_fsck_clean(out);
    }

    #[test]
    fn relay_conf_can_be_replaced_and_removed_like_on_a_mounted_stick() {
        let img = scratch("b.img");
        let out = &img.0;
        build_disk(b"MZ-stub", Some(b"a long first configuration\n"), 40, out).unwrap();
        esp_write(out, CONF_PATH, Some(b"short\n")).unwrap();
        assert_eq!(esp_read(out, CONF_PATH).unwrap().unwrap(), b"short\n");
        assert_fsck_clean(out);
        esp_write(out, CONF_PATH, None).unwrap();
        assert_eq!(esp_read(out, CONF_PATH).unwrap(), None);
        esp_write(out, CONF_PATH, None).unwrap();
        assert_eq!(esp_read(out, BOOT_PATH).unwrap().unwrap(), b"MZ-stub");
        assert_fsck_clean(out);
    }

    #[test]
    fn file_times_are_valid_fat_dates() {
        let t = fat_date_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
        // 2026-11-26 15:31:07 UTC.
        let t = fat_date_time(1_795_707_067);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2026, 11, 26));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (15, 31, 7));
        // 2000-02-29 (a leap day) and the end of FAT's range.
        let t = fat_date_time(951_782_400);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        let t = fat_date_time(u64::MAX);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2107, 12, 31));
    }

    #[test]
    fn sizes_outside_the_fat32_range_are_refused() {
        let img = scratch("c.img");
        assert!(build_disk(b"x", None, 8, &img.0).is_err());
        assert!(build_disk(b"x", None, MAX_SIZE_MIB + 1, &img.0).is_err());
        assert!(!img.0.exists());
    }

    /// util-linux's sfdisk, when installed, reads the GPT we wrote.
    #[test]
    fn sfdisk_reads_the_partition_table() {
        if !crate::have_program("sfdisk") {
            return;
        }
        let img = scratch("d.img");
        build_disk(b"MZ-stub", Some(b"ip=10.0.0.2/24\n"), 48, &img.0).unwrap();
        let o = Command::new("sfdisk")
            .arg("--dump")
            .arg(&img.0)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{dump}");
        assert!(dump.contains("label: gpt"), "{dump}");
        assert!(
            dump.contains("start=        2048, size=       94208")
                && dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{dump}"
        );
    }
}
