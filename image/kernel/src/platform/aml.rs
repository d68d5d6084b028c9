//! virtio-mmio devices described in the DSDT, found by a bounded scan of its AML bytes.
//!
//! QEMU's microvm with ACPI on (its default) appends no `virtio_mmio.device=` to the command
//! line; each virtio-mmio transport with a device behind it is only a DSDT entry:
//!
//! ```text
//! Device (VR23) {
//!     Name (_HID, "LNRO0005")
//!     Name (_UID, 0x17)
//!     Name (_CCA, One)
//!     Name (_CRS, ResourceTemplate () {
//!         Memory32Fixed (ReadWrite, 0xFEB02E00, 0x00000200)
//!         Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { 0x2F }
//!     })
//! }
//! ```
//!
//! An AML interpreter would be more code than the rest of the platform layer for one kind
//! of entry, so this is a scan, not an interpreter: every `DeviceOp` (`5B 82`) whose own
//! scope (up to its first nested device) names `_HID` or `_CID` as the string `LNRO0005`
//! and `_CRS` as a buffer yields the buffer's first Memory32Fixed window and first interrupt.
//! A `_CRS` computed by a method, or a `_HID` produced at run time, is not seen; the README
//! says so. Every read is bounds-checked (no indexing), the work is linear in the table's
//! size up to [`DEVICES_MAX`] results, and malformed AML yields fewer devices, never a panic.

use super::bootinfo::VirtioMmioDevice;
use alloc::vec::Vec;

/// Most devices reported (QEMU's microvm has 24 transports).
pub const DEVICES_MAX: usize = 32;
/// The ACPI id Linux's virtio-mmio driver matches (and QEMU, firecracker announce).
pub const VIRTIO_MMIO_HID: &[u8] = b"LNRO0005";

const DEVICE_OP: [u8; 2] = [0x5b, 0x82];
const NAME_OP: u8 = 0x08;
const STRING_PREFIX: u8 = 0x0d;
const BUFFER_OP: u8 = 0x11;

/// Every virtio-mmio device the DSDT (or an SSDT) `aml` describes, in table order; at most
/// [`DEVICES_MAX`]. `aml` may include the 36-byte table header: it cannot look like a device.
pub fn virtio_mmio_devices(aml: &[u8]) -> Vec<VirtioMmioDevice> {
    let mut found = Vec::new();
    // One pass settles the common case of a table without any (a q35 DSDT is 8 KiB of
    // other devices: walking each was a million instructions, 1 ms of the boot under TCG).
    if find(aml, 0, VIRTIO_MMIO_HID).is_none() {
        return found;
    }
    let mut at = 0;
    while let Some(i) = find(aml, at, &DEVICE_OP) {
        at = i + DEVICE_OP.len();
        if let Some(device) = device_at(aml, at) {
            found.push(device);
            if found.len() == DEVICES_MAX {
                break;
            }
        }
    }
    found
}

/// The device whose PkgLength starts at `at`, when it is a virtio-mmio one.
fn device_at(aml: &[u8], at: usize) -> Option<VirtioMmioDevice> {
    let (len, _) = pkg_length(aml, at)?;
    let end = at.checked_add(len)?;
    let body = aml.get(at..end)?;
    // Its own objects come before any nested device.
    let own = &body[..find(body, 1, &DEVICE_OP).unwrap_or(body.len())];
    let is_virtio = [b"_HID", b"_CID"]
        .iter()
        .any(|name| named_string(own, name) == Some(VIRTIO_MMIO_HID));
    if !is_virtio {
        return None;
    }
    resources(named_buffer(own, b"_CRS")?)
}

/// The string `Name (<name>, "...")` declares in `scope`, without its NUL.
fn named_string<'a>(scope: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    let value = named(scope, name)?;
    let rest = value.strip_prefix(&[STRING_PREFIX])?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..nul])
}

/// The bytes of the buffer `Name (<name>, Buffer/ResourceTemplate)` declares in `scope`.
fn named_buffer<'a>(scope: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    let value = named(scope, name)?;
    let rest = value.strip_prefix(&[BUFFER_OP])?;
    let (len, used) = pkg_length(rest, 0)?;
    let package = rest.get(used..len)?;
    // BufferSize is an integer term; the byte list follows it.
    let (size, used) = match *package.first()? {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0x0a => (usize::from(*package.get(1)?), 2),
        0x0b => (usize::from(u16::from_le_bytes(array(package, 1)?)), 3),
        0x0c => (
            usize::try_from(u32::from_le_bytes(array(package, 1)?)).ok()?,
            5,
        ),
        _ => return None,
    };
    let bytes = package.get(used..)?;
    Some(&bytes[..size.min(bytes.len())])
}

/// What follows `NameOp <name>` in `scope`.
fn named<'a>(scope: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    let mut pattern = [NAME_OP; 5];
    pattern[1..].copy_from_slice(name);
    let i = find(scope, 0, &pattern)?;
    scope.get(i + pattern.len()..)
}

/// The first Memory32Fixed window and the first interrupt of a resource template.
fn resources(template: &[u8]) -> Option<VirtioMmioDevice> {
    let (mut window, mut irq) = (None, None);
    let mut at = 0;
    while let Some(&tag) = template.get(at) {
        let (kind, data, next) = if tag & 0x80 != 0 {
            let len = usize::from(u16::from_le_bytes(array(template, at + 1)?));
            let data = template.get(at + 3..at + 3 + len)?;
            (tag, data, at + 3 + len)
        } else {
            let len = usize::from(tag & 0x07);
            let data = template.get(at + 1..at + 1 + len)?;
            ((tag >> 3) & 0x0f, data, at + 1 + len)
        };
        match kind {
            // End tag.
            0x0f => break,
            // IRQ: a 16-bit mask of lines.
            0x04 if irq.is_none() => {
                let mask = u16::from_le_bytes(array(data, 0)?);
                irq = (mask != 0).then(|| mask.trailing_zeros());
            }
            // Memory32Fixed: information byte, base, length.
            0x86 if window.is_none() => {
                let base = u32::from_le_bytes(array(data, 1)?);
                let size = u32::from_le_bytes(array(data, 5)?);
                window = Some((u64::from(base), u64::from(size)));
            }
            // Extended interrupt: flags, count, then the interrupt numbers.
            0x89 if irq.is_none() && data.get(1).is_some_and(|&count| count > 0) => {
                irq = Some(u32::from_le_bytes(array(data, 2)?));
            }
            _ => {}
        }
        at = next;
    }
    let (base, size) = window.filter(|&(_, size)| size > 0)?;
    Some(VirtioMmioDevice {
        base,
        size,
        irq: irq.unwrap_or(0),
    })
}

/// An AML PkgLength at `at`: (the length it encodes, counting its own bytes; its bytes).
fn pkg_length(aml: &[u8], at: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(at)?;
    let extra = usize::from(lead >> 6);
    if extra == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let mut len = usize::from(lead & 0x0f);
    for i in 0..extra {
        len |= usize::from(*aml.get(at + 1 + i)?) << (4 + 8 * i);
    }
    Some((len, 1 + extra))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The first index at or after `from` where `pattern` starts. Looks for the first byte with
/// a plain byte loop and compares the rest only there (a slice comparison at every position
/// costs a `memcmp` call per byte).
fn find(haystack: &[u8], from: usize, pattern: &[u8]) -> Option<usize> {
    let (&first, rest) = pattern.split_first()?;
    let hay = haystack.get(from..)?;
    let mut at = 0;
    loop {
        at += hay.get(at..)?.iter().position(|&b| b == first)?;
        if hay.get(at + 1..)?.starts_with(rest) {
            return Some(from + at);
        }
        at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn find_matches_a_window_search() {
        let hay = b"ab\x5b\x5b\x82x\x5b\x82\x5b";
        for from in 0..=hay.len() + 1 {
            for pattern in [
                &b"\x5b\x82"[..],
                b"\x5b",
                b"x\x5b\x82\x5b",
                b"\x82\x5b!",
                b"ab",
            ] {
                let expected = hay.get(from..).and_then(|h| {
                    h.windows(pattern.len())
                        .position(|w| w == pattern)
                        .map(|i| i + from)
                });
                assert_eq!(find(hay, from, pattern), expected, "{from} {pattern:?}");
            }
        }
        assert_eq!(find(hay, 0, b""), None);
    }

    /// The DSDT of `qemu-system-x86_64 -M microvm` (QEMU 7.2, ACPI on by default) with two
    /// `virtio-net-device`s: the relay image booted with `-monitor unix:<socket>`, guest RAM
    /// saved with the monitor's `pmemsave 0 0x4000000 "ram.bin"`, and the table cut out of
    /// it at the address and length the RSDP -> XSDT -> FADT (X_DSDT) chain gives.
    const MICROVM_DSDT: &[u8] = include_bytes!("testdata/microvm-dsdt.aml");

    #[test]
    fn finds_the_virtio_mmio_devices_of_a_real_microvm_dsdt() {
        assert_eq!(&MICROVM_DSDT[..4], b"DSDT");
        assert_eq!(MICROVM_DSDT.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // COM1, the RTC, the GED (an extended interrupt of its own) and the power button
        // are not virtio-mmio; the two transports with a device are, newest first.
        assert_eq!(
            virtio_mmio_devices(MICROVM_DSDT),
            [
                VirtioMmioDevice {
                    base: 0xfeb0_2e00,
                    size: 0x200,
                    irq: 47
                },
                VirtioMmioDevice {
                    base: 0xfeb0_2c00,
                    size: 0x200,
                    irq: 46
                },
            ]
        );
        // Without the id anywhere (a q35 DSDT), nothing is walked and nothing found.
        let mut other = MICROVM_DSDT.to_vec();
        while let Some(i) = find(&other, 0, VIRTIO_MMIO_HID) {
            other[i] = b'X';
        }
        assert!(virtio_mmio_devices(&other).is_empty());
    }

    #[test]
    fn every_truncation_and_corruption_of_the_real_table_is_survived() {
        for len in 0..MICROVM_DSDT.len() {
            let found = virtio_mmio_devices(&MICROVM_DSDT[..len]);
            assert!(found.len() <= 2, "{len}: {found:?}");
        }
        for at in 0..MICROVM_DSDT.len() {
            for value in [0x00, 0x5b, 0x82, 0xff, 0x4f] {
                let mut t = MICROVM_DSDT.to_vec();
                t[at] = value;
                let found = virtio_mmio_devices(&t);
                assert!(found.len() <= 3, "{at}={value:#x}: {found:?}");
            }
        }
    }

    /// `Device (NAME) { Name (_HID, "<hid>") Name (_CRS, ResourceTemplate { <resources> }) }`.
    fn device(hid: &[u8], resources: &[u8]) -> Vec<u8> {
        let mut template = resources.to_vec();
        template.extend_from_slice(&[0x79, 0x00]);
        let mut buffer = vec![0x0a, template.len() as u8];
        buffer.extend_from_slice(&template);
        let mut body = b"\x08_HID\x0d".to_vec();
        body.extend_from_slice(hid);
        body.push(0);
        body.extend_from_slice(b"\x08_CRS\x11");
        body.push(buffer.len() as u8 + 1);
        body.extend_from_slice(&buffer);
        let mut device = b"\x5b\x82".to_vec();
        // A two-byte PkgLength, as for larger devices.
        let len = body.len() + 4 + 2;
        device.extend_from_slice(&[0x40 | (len & 0x0f) as u8, (len >> 4) as u8]);
        device.extend_from_slice(b"VR00");
        device.extend_from_slice(&body);
        device
    }

    fn memory32_fixed(base: u32, size: u32) -> Vec<u8> {
        let mut d = vec![0x86, 9, 0, 1];
        d.extend_from_slice(&base.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d
    }

    #[test]
    fn other_ids_a_legacy_irq_and_a_missing_window_are_told_apart() {
        let legacy_irq = [0x22, 0x00, 0x10]; // IRQ 12 as a 16-bit mask
        let mut aml = device(
            b"LNRO0005",
            &[memory32_fixed(0x1000, 0x200), legacy_irq.to_vec()].concat(),
        );
        aml.extend(device(b"PNP0501", &memory32_fixed(0x2000, 0x200)));
        aml.extend(device(b"LNRO0005", &legacy_irq));
        aml.extend(device(b"LNRO0005", &memory32_fixed(0x3000, 0)));
        aml.extend(device(b"LNRO0005", &memory32_fixed(0x4000, 0x1000)));
        assert_eq!(
            virtio_mmio_devices(&aml),
            [
                VirtioMmioDevice {
                    base: 0x1000,
                    size: 0x200,
                    irq: 12
                },
                VirtioMmioDevice {
                    base: 0x4000,
                    size: 0x1000,
                    irq: 0
                },
            ]
        );
    }

    #[test]
    fn results_are_capped() {
        let one = device(b"LNRO0005", &memory32_fixed(0x1000, 0x200));
        let aml = one.repeat(DEVICES_MAX + 5);
        assert_eq!(virtio_mmio_devices(&aml).len(), DEVICES_MAX);
    }

    #[test]
    fn pkg_lengths_of_every_width_decode() {
        assert_eq!(pkg_length(&[0x3f], 0), Some((0x3f, 1)));
        assert_eq!(pkg_length(&[0x42, 0x1a], 0), Some((0x1a2, 2)));
        assert_eq!(pkg_length(&[0x81, 0x23, 0x01], 0), Some((0x1231, 3)));
        assert_eq!(
            pkg_length(&[0xc1, 0x00, 0x00, 0x01], 0),
            Some((0x10_0001, 4))
        );
        assert_eq!(pkg_length(&[0xc1, 0x00], 0), None);
    }
}
