//! The wall clock: the CMOS real-time clock read once, carried forward by the TSC.
//!
//! It is read when the first line needs a time ([`wall_ms`]), which on a normal boot is the
//! `ready:` line: reading and decoding the chip is code run once (0.25 ms of translation
//! under TCG) that receiving does not need.
//!
//! The RTC is read as UTC (QEMU's default `-rtc base=utc` and the convention of Linux boxes;
//! a box whose firmware keeps local time shows local time labelled Z). It counts whole
//! seconds and is read without waiting for the next second to begin (that would cost up to a
//! second of boot), so [`wall_ms`] may be up to one second behind; it never runs backwards
//! because it is the boot reading plus the monotonic clock. No RTC (all registers 0xff), an
//! update that never settles or a date that does not parse leaves the wall clock unknown,
//! and lines go out without a time.
//!
//! Decoding ([`decode`], [`unix_seconds`]) is plain code with host unit tests; only
//! [`read_cmos`] touches ports.

use core::sync::atomic::{AtomicU64, Ordering};

/// Wall time in ms at `BASE_TSC`, plus one (0: unknown).
static BASE_MS: AtomicU64 = AtomicU64::new(0);
static BASE_TSC: AtomicU64 = AtomicU64::new(0);
/// Whether the RTC was read (whatever it gave).
#[cfg(all(target_os = "none", not(test)))]
static READ: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The RTC registers the date is read from, as the chip holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmosTime {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    /// The century register (ACPI FADT names its index), if the machine has one.
    pub century: Option<u8>,
    /// Status register B: bit 2 set = binary (else BCD), bit 1 set = 24-hour.
    pub status_b: u8,
}

/// A calendar date and time of day (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

fn bcd(v: u8) -> Option<u32> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi < 10 && lo < 10).then_some(u32::from(hi) * 10 + u32::from(lo))
}

/// The registers as a date, or `None` when they are not one.
pub fn decode(t: &CmosTime) -> Option<Utc> {
    let binary = t.status_b & 0x04 != 0;
    let h24 = t.status_b & 0x02 != 0;
    let num = |v: u8| if binary { Some(u32::from(v)) } else { bcd(v) };
    let pm = !h24 && t.hours & 0x80 != 0;
    let mut hour = num(t.hours & 0x7f)?;
    if !h24 {
        // 12-hour mode: 12 AM is 0, 12 PM is 12.
        if !(1..=12).contains(&hour) {
            return None;
        }
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let yy = num(t.year)?;
    let year = match t.century.map(num) {
        Some(Some(c)) if (19..=99).contains(&c) => c * 100 + yy,
        Some(Some(_)) | Some(None) => return None,
        // No century register: the chip's two digits from 2000 (this product postdates 1999).
        None => 2000 + yy,
    };
    let u = Utc {
        year,
        month: num(t.month)?,
        day: num(t.day)?,
        hour,
        minute: num(t.minutes)?,
        second: num(t.seconds)?,
    };
    let valid = (1..=12).contains(&u.month)
        && u.day >= 1
        && u.day <= days_in_month(u.year, u.month)
        && u.hour < 24
        && u.minute < 60
        && u.second < 60;
    valid.then_some(u)
}

fn is_leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: u32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(u: &Utc) -> u64 {
    let days = days_from_civil(u.year, u.month, u.day);
    let secs = days * 86_400 + i64::from(u.hour * 3600 + u.minute * 60 + u.second);
    secs.max(0) as u64
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the core's format (the hosted relay's
/// console and the collector's files use it too).
pub struct Rfc3339(pub u64);

impl core::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        netoops_core::time::write_utc(f, self.0)
    }
}

/// Sets the wall clock: `unix_ms` was the time at TSC `tsc`.
pub fn set(unix_ms: u64, tsc: u64) {
    BASE_TSC.store(tsc, Ordering::Relaxed);
    BASE_MS.store(unix_ms + 1, Ordering::Release);
}

/// The RTC's reading in Unix milliseconds (to the second), reading it the first time, or
/// `None` when it gave none. No century register is read (the chip's two digits count
/// from 2000).
#[cfg(all(target_os = "none", not(test)))]
pub fn reading() -> Option<u64> {
    if !READ.swap(true, Ordering::AcqRel) {
        let ms = read_cmos(None)
            .as_ref()
            .and_then(decode)
            .map(|u| unix_seconds(&u) * 1000);
        if let Some(ms) = ms {
            set(ms, super::clock::tsc());
        }
    }
    BASE_MS.load(Ordering::Acquire).checked_sub(1)
}

/// The wall time in Unix milliseconds, if the RTC gave one.
#[cfg(all(target_os = "none", not(test)))]
pub fn wall_ms() -> Option<u64> {
    let base = reading()?;
    let ticks = super::clock::tsc().wrapping_sub(BASE_TSC.load(Ordering::Relaxed));
    Some(base + super::clock::ticks_to_micros_calibrated(ticks) / 1000)
}

/// Reads the RTC's registers: after any update in progress, twice until two reads agree.
/// `None` when there is no RTC or it never settles.
#[cfg(all(target_os = "none", not(test)))]
pub fn read_cmos(century_register: Option<u8>) -> Option<CmosTime> {
    use super::port::{inb, outb};
    fn reg(r: u8) -> u8 {
        // SAFETY: ports 0x70/0x71 are the CMOS index and data; the kernel reads the RTC once
        // (no interrupt handler touches the pair) and writes nothing but the index.
        unsafe {
            outb(0x70, r);
            inb(0x71)
        }
    }
    let snapshot = || {
        // Wait out an update in progress (status A bit 7; at most about 2 ms on real chips).
        let mut spins = 0u32;
        while reg(0x0a) & 0x80 != 0 {
            spins += 1;
            if spins > 100_000 {
                return None;
            }
            core::hint::spin_loop();
        }
        Some(CmosTime {
            seconds: reg(0x00),
            minutes: reg(0x02),
            hours: reg(0x04),
            day: reg(0x07),
            month: reg(0x08),
            year: reg(0x09),
            century: century_register.map(reg),
            status_b: reg(0x0b),
        })
    };
    let mut last = snapshot()?;
    for _ in 0..5 {
        let now = snapshot()?;
        if now == last {
            // A floating bus reads all ones: no RTC.
            return (now.status_b != 0xff).then_some(now);
        }
        last = now;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn cmos(bcd_fields: [u8; 6], status_b: u8, century: Option<u8>) -> CmosTime {
        let [seconds, minutes, hours, day, month, year] = bcd_fields;
        CmosTime {
            seconds,
            minutes,
            hours,
            day,
            month,
            year,
            century,
            status_b,
        }
    }

    #[test]
    fn bcd_24_hour_with_century() {
        let t = cmos([0x59, 0x58, 0x23, 0x31, 0x12, 0x26], 0x02, Some(0x20));
        let u = decode(&t).unwrap();
        assert_eq!(
            u,
            Utc {
                year: 2026,
                month: 12,
                day: 31,
                hour: 23,
                minute: 58,
                second: 59
            }
        );
        assert_eq!(unix_seconds(&u), 1_798_761_539);
    }

    #[test]
    fn binary_12_hour_and_no_century_register() {
        // 12:05:07 AM and 12:05:07 PM on 2024-02-29, binary mode, 12-hour clock.
        let am = cmos([7, 5, 12, 29, 2, 24], 0x04, None);
        let pm = cmos([7, 5, 12 | 0x80, 29, 2, 24], 0x04, None);
        assert_eq!(decode(&am).unwrap().hour, 0);
        assert_eq!(decode(&pm).unwrap().hour, 12);
        let one_pm = cmos([0, 0, 1 | 0x80, 1, 1, 0], 0x04, None);
        assert_eq!(unix_seconds(&decode(&one_pm).unwrap()), 946_731_600);
    }

    #[test]
    fn registers_that_are_not_a_date_are_refused() {
        // A floating bus, a non-BCD digit, February 30th, hour 24, a bad century.
        assert_eq!(decode(&cmos([0xff; 6], 0xff, Some(0xff))), None);
        assert_eq!(decode(&cmos([0x5a, 0, 0, 1, 1, 0x26], 0x02, None)), None);
        assert_eq!(decode(&cmos([0, 0, 0, 0x30, 0x02, 0x26], 0x02, None)), None);
        assert_eq!(decode(&cmos([0, 0, 0x24, 1, 1, 0x26], 0x02, None)), None);
        assert_eq!(decode(&cmos([0, 0, 0, 1, 1, 0x26], 0x02, Some(0x05))), None);
        assert_eq!(decode(&cmos([0, 0, 0, 1, 1, 0x26], 0x00, None)), None);
    }

    #[test]
    fn rfc3339_round_trips_the_epoch_arithmetic() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(1_798_761_539_123).to_string(),
            "2026-12-31T23:58:59.123Z"
        );
        assert_eq!(
            Rfc3339(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        // Every day of four years, through a leap day, formats back to its date.
        for day in 0..(4 * 366) {
            let secs = 1_700_000_000 + day * 86_400;
            let text = Rfc3339(secs * 1000).to_string();
            let num = |a: usize, b: usize| text[a..b].parse::<u32>().unwrap();
            let u = Utc {
                year: num(0, 4),
                month: num(5, 7),
                day: num(8, 10),
                hour: num(11, 13),
                minute: num(14, 16),
                second: num(17, 19),
            };
            assert_eq!(unix_seconds(&u), secs, "{text}");
        }
    }
}
