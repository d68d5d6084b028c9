//! What is simulated: N machines that crash, each with its identity, its log and its timing.
//!
//! A [`Scenario`] is plain data (the CLI fills it in). [`Scenario::machine`] derives machine `i`
//! from the seed alone (variant, dump_id, boot_id, kernel version, CPU and registers, log length
//! and the s1/s2 split); [`Machine::log`] writes its log text. Nothing here depends on other
//! machines, so expectations for one machine can be computed without generating the others.
//!
//! Source addresses count up from [`Scenario::source_base`], skipping `.0` and `.255`, and stay
//! inside the base's /8 (all of 127/8 is local on Linux loopback).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use netoops_wire::netoops::{CpuId, DumpType};
use netoops_wire::{DumpHeader, Variant, DATA_LEN};

use super::channel::LossModel;
use super::rng::{Rng, Stream};

/// Usable host addresses per /24 (`.1` to `.254`).
const HOSTS_PER_24: u32 = 254;

/// A range of log sizes in bytes, inclusive: "64K", "1K-256K", "1500-3000", "1M".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

/// A log size or size range that does not parse, or is empty or zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSizeRange(pub String);

impl fmt::Display for BadSizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad log size {:?}: expected SIZE or MIN-MAX with sizes like 1500, 64K, 1M (at least 1 byte)",
            self.0
        )
    }
}

impl std::error::Error for BadSizeRange {}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => s.split_at(at),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let mult = match unit {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1024,
        "M" | "m" | "MiB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl FromStr for SizeRange {
    type Err = BadSizeRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSizeRange(s.to_string());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (
                parse_size(a).ok_or_else(bad)?,
                parse_size(b).ok_or_else(bad)?,
            ),
            None => {
                let n = parse_size(s).ok_or_else(bad)?;
                (n, n)
            }
        };
        if min == 0 || max < min {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// When machines crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// One after another: machine i+1 starts sending when machine i has sent its last datagram.
    /// Only the send rate paces the run.
    Sequential,
    /// Every machine crashes at a random moment within `window` of the start and then sends
    /// back to back at the line rate of a 1 GbE link; machines interleave.
    Storm { window: Duration },
}

/// The whole simulated population and its network.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Number of machines (each sends one dump).
    pub machines: u32,
    /// Log sizes, drawn uniformly per machine.
    pub log_size: SizeRange,
    /// Wire variants, drawn uniformly per machine.
    pub variants: Vec<Variant>,
    /// Everything random derives from this.
    pub seed: u64,
    /// Loss applied to each datagram on the machine's path.
    pub loss: LossModel,
    /// Probability that a delivered datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is overtaken by up to [`Scenario::reorder_distance`] later
    /// datagrams of the same machine.
    pub reorder: f64,
    /// How far a reordered datagram may be delayed, in datagrams (at least 1).
    pub reorder_distance: u32,
    /// Share of machines whose log piece lengths are exact multiples of 1024, so the sender's
    /// all-zero tail chunk bug shows up.
    pub zeroed_tail: f64,
    /// Share of machines that send a soft dump (type 3) instead of an oops/panic (type 1).
    pub soft_dump: f64,
    /// When machines crash.
    pub timing: Timing,
    /// Address of machine 0; the rest count up.
    pub source_base: Ipv4Addr,
    /// Source port of every machine (the sender's netpoll port; 0 lets the OS pick one).
    pub source_port: u16,
    /// What the machines send: netoops dumps or netconsole logs.
    pub protocol: Protocol,
    /// Netconsole population (used when `protocol` is [`Protocol::Netconsole`]).
    pub netconsole: NetconsoleParams,
}

/// The wire protocol of a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// netoops dumps (three rounds of 1024-byte chunks).
    #[default]
    Netoops,
    /// netconsole: ordinary log records, then a crash burst for crashing machines.
    Netconsole,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Netoops => "netoops",
            Self::Netconsole => "netconsole",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "netoops" => Ok(Self::Netoops),
            "netconsole" => Ok(Self::Netconsole),
            _ => Err(format!("unknown protocol {s:?}: netoops or netconsole")),
        }
    }
}

/// The two netconsole formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NcMode {
    /// `+`: one record per datagram with level, seq and usec; fragments with `ncfrag`.
    Extended,
    /// Plain console text.
    Legacy,
}

impl NcMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Extended => "extended",
            Self::Legacy => "legacy",
        }
    }
}

impl FromStr for NcMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "extended" => Ok(Self::Extended),
            "legacy" => Ok(Self::Legacy),
            _ => Err(format!("unknown netconsole mode {s:?}: extended or legacy")),
        }
    }
}

/// The netconsole side of a scenario. Machines `0..machines` crash; machines
/// `machines..machines + chatter` are healthy and only log.
#[derive(Clone, Debug, PartialEq)]
pub struct NetconsoleParams {
    /// Formats machines pick from, uniformly.
    pub modes: Vec<NcMode>,
    /// Share of extended machines that prepend the kernel release (`r`).
    pub release: f64,
    /// Share of extended machines that append userdata and sysdata lines to every record.
    pub userdata: f64,
    /// Healthy machines that only chatter.
    pub chatter: u32,
    /// Ordinary log lines per machine: each draws between half of this and this many (a
    /// crashing machine stops earlier if its history would pass its size budget).
    pub chatter_lines: u32,
    /// Share of ordinary lines longer than one datagram (extended: fragmented with `ncfrag`).
    pub long_lines: f64,
    /// Crash kinds the crashing machines share (0: every burst drawn at random). Machine `i`
    /// gets kind `(i / kernels) % crash_kinds`: the same first line, faulting function and
    /// call trace for every machine of a kind, so a crash analyser can group them.
    pub crash_kinds: u32,
    /// Kernel builds machines run (0: drawn from all). Machine `i` runs build `i % kernels`;
    /// each build has its own function offsets, as separate builds of a kernel do.
    pub kernels: u32,
}

impl Default for NetconsoleParams {
    fn default() -> Self {
        Self {
            modes: vec![NcMode::Extended, NcMode::Legacy],
            release: 0.3,
            userdata: 0.3,
            chatter: 0,
            chatter_lines: 40,
            long_lines: 0.03,
            crash_kinds: 0,
            kernels: 0,
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            machines: 1,
            log_size: SizeRange {
                min: 1024,
                max: 256 * 1024,
            },
            variants: Variant::ALL.to_vec(),
            seed: 42,
            loss: LossModel::None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_distance: 8,
            zeroed_tail: 0.02,
            soft_dump: 0.05,
            timing: Timing::Sequential,
            source_base: Ipv4Addr::new(127, 1, 0, 1),
            source_port: 6666,
            protocol: Protocol::Netoops,
            netconsole: NetconsoleParams::default(),
        }
    }
}

/// A scenario that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScenarioError {
    NoMachines,
    NoVariants,
    /// A probability outside `[0, 1]`, by parameter name.
    Probability(&'static str),
    /// The machines do not fit in the base address's /8.
    AddressSpace {
        base: Ipv4Addr,
        machines: u32,
    },
    /// `reorder_distance` is zero.
    ReorderDistance,
    /// Netconsole with no format to pick from.
    NoModes,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMachines => f.write_str("at least one machine is needed"),
            Self::NoVariants => f.write_str("at least one wire variant is needed"),
            Self::Probability(what) => write!(f, "{what} must be a probability in [0, 1]"),
            Self::AddressSpace { base, machines } => write!(
                f,
                "{machines} machines starting at {base} do not fit in {}.0.0.0/8",
                base.octets()[0]
            ),
            Self::ReorderDistance => f.write_str("reorder distance must be at least 1"),
            Self::NoModes => f.write_str("at least one netconsole mode is needed"),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// The kernel versions machines report, per register layout family.
const KERNELS_64: [&str; 4] = [
    "6.1.0-13-amd64",
    "5.10.0-26-amd64",
    "6.6.15-cloud-amd64",
    "5.15.0-91-generic",
];
const KERNELS_32: [&str; 2] = ["6.1.0-13-686-pae", "4.19.0-25-686"];

/// Where log lines say they come from.
const SUBSYSTEMS: [&str; 12] = [
    "usb 1-1",
    "EXT4-fs (sda1)",
    "e1000e 0000:00:19.0 eno1",
    "nvme nvme0",
    "systemd[1]",
    "audit",
    "TCP",
    "ata1.00",
    "i915 0000:00:02.0",
    "mlx5_core 0000:3b:00.0",
    "xfs (dm-2)",
    "kvm",
];

/// Why the machine died, for its final line.
const PANICS: [&str; 4] = [
    "Fatal exception in interrupt",
    "Fatal exception",
    "Attempted to kill init! exitcode=0x0000000b",
    "softlockup: hung tasks",
];

/// One simulated machine: everything about its dump except the log bytes.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Position in the scenario, 0-based.
    pub index: u32,
    /// Where its datagrams come from.
    pub source: SocketAddrV4,
    /// Everything constant across its datagrams.
    pub header: DumpHeader,
    /// Log length in bytes (s1 + s2).
    pub log_len: usize,
    /// Length of s1, the older piece; s2 is the rest.
    pub split: usize,
    /// When it crashes, from the start of the run.
    pub crash_at: Duration,
    /// Seed of its log text.
    log_seed: u64,
}

impl Machine {
    /// Number of datagrams in one round.
    pub fn packet_count(&self) -> u32 {
        let chunks = self.split.div_ceil(DATA_LEN) + (self.log_len - self.split).div_ceil(DATA_LEN);
        u32::try_from(chunks).unwrap_or(u32::MAX)
    }

    /// The machine's log text: printable kernel log lines, oldest first, cut at the front to
    /// exactly `log_len` bytes like a wrapped ring buffer, ending with the panic line.
    pub fn log(&self) -> Vec<u8> {
        write_log(self.log_seed, self.log_len)
    }

    /// Time between two of its datagrams on a 1 GbE link (preamble, Ethernet, IPv4, UDP, FCS
    /// and inter-frame gap included: 66 bytes around the datagram).
    pub fn line_gap(&self) -> Duration {
        let bits = (self.header.variant.datagram_len() as u64 + 66) * 8;
        Duration::from_nanos(bits)
    }
}

/// Appends `n` as decimal, padded with `pad` to `width` digits (no allocation: logs are
/// generated on the send path when a machine starts).
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize, pad: u8) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    let len = digits.len() - start;
    out.extend(std::iter::repeat_n(pad, width.saturating_sub(len)));
    out.extend_from_slice(&digits[start..]);
}

/// Appends `v` as 16 lowercase hex digits.
fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend((0..16).rev().map(|i| HEX[((v >> (4 * i)) & 0xf) as usize]));
}

/// Appends one `[ssssss.uuuuuu] ` timestamp.
fn push_stamp(out: &mut Vec<u8>, micros: u64) {
    out.push(b'[');
    push_padded(out, micros / 1_000_000, 5, b' ');
    out.push(b'.');
    push_padded(out, micros % 1_000_000, 6, b'0');
    out.extend_from_slice(b"] ");
}

fn write_log(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut micros = rng.between(5_000_000, 9_000_000_000);
    let panic = *rng.pick(&PANICS).unwrap_or(&PANICS[0]);
    let mut tail = Vec::new();
    let mut out = Vec::with_capacity(len + 256);
    let mut n = 0u64;
    while out.len() + 96 < len {
        push_stamp(&mut out, micros);
        let subsystem = *rng.pick(&SUBSYSTEMS).unwrap_or(&SUBSYSTEMS[0]);
        out.extend_from_slice(subsystem.as_bytes());
        out.extend_from_slice(b": message ");
        push_padded(&mut out, n, 0, b' ');
        // Some lines are long, as real ones are (call traces, register dumps).
        for _ in 0..rng.below(12) {
            out.extend_from_slice(b" 0x");
            push_hex(&mut out, rng.next_u64());
        }
        out.push(b'\n');
        n += 1;
        micros += rng.between(1, 2_000_000);
    }
    push_stamp(&mut tail, micros);
    tail.extend_from_slice(b"Kernel panic - not syncing: ");
    tail.extend_from_slice(panic.as_bytes());
    tail.push(b'\n');
    out.extend_from_slice(&tail);
    // Cut at the front so the log keeps its newest text, as a wrapped ring does; a log that
    // came out short gets older text in front, so it is always exactly `len` bytes (the
    // packet count and the expectations are both derived from `len`).
    let excess = out.len().saturating_sub(len);
    out.drain(..excess);
    let short = len - out.len();
    if short > 0 {
        const EARLIER: &[u8] = b"earlier text of the ring ";
        let mut front: Vec<u8> = (0..short)
            .map(|i| {
                if i + 1 == short {
                    b'\n'
                } else {
                    EARLIER[i % EARLIER.len()]
                }
            })
            .collect();
        front.extend_from_slice(&out);
        out = front;
    }
    out
}

/// `base` advanced by `i` usable host addresses (`.0` and `.255` skipped), or `None` past the
/// end of the base's /8.
fn nth_address(base: Ipv4Addr, i: u32) -> Option<Ipv4Addr> {
    let b = u32::from(base);
    let net24 = b >> 8;
    // A base on .0 counts from .1, a base on .255 from the next /24's .1.
    let host = match b & 0xff {
        0 => 0,
        255 => HOSTS_PER_24,
        h => h - 1,
    };
    let n = u64::from(net24) * u64::from(HOSTS_PER_24) + u64::from(host) + u64::from(i);
    let net = u32::try_from(n / u64::from(HOSTS_PER_24)).ok()?;
    let addr = (net << 8) | ((n % u64::from(HOSTS_PER_24)) as u32 + 1);
    (net >> 16 == b >> 24).then_some(Ipv4Addr::from(addr))
}

impl Scenario {
    /// Checks every parameter once, so generation cannot fail later.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.senders() == 0 {
            return Err(ScenarioError::NoMachines);
        }
        if self.protocol == Protocol::Netoops && self.variants.is_empty() {
            return Err(ScenarioError::NoVariants);
        }
        let probability = |p: f64| (0.0..=1.0).contains(&p);
        for (name, p) in [
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("zeroed-tail", self.zeroed_tail),
            ("soft-dump", self.soft_dump),
        ] {
            if !probability(p) {
                return Err(ScenarioError::Probability(name));
            }
        }
        self.loss.validate()?;
        if self.reorder_distance == 0 {
            return Err(ScenarioError::ReorderDistance);
        }
        if self.protocol == Protocol::Netconsole {
            let nc = &self.netconsole;
            if nc.modes.is_empty() {
                return Err(ScenarioError::NoModes);
            }
            for (name, p) in [
                ("nc-release", nc.release),
                ("nc-userdata", nc.userdata),
                ("long-lines", nc.long_lines),
            ] {
                if !probability(p) {
                    return Err(ScenarioError::Probability(name));
                }
            }
        }
        let senders = self.senders();
        if senders == 0 || nth_address(self.source_base, senders - 1).is_none() {
            return Err(ScenarioError::AddressSpace {
                base: self.source_base,
                machines: senders,
            });
        }
        Ok(())
    }

    /// Every machine that sends: the crashing ones, plus the healthy chatter of a netconsole
    /// scenario (indices `machines..`).
    pub fn senders(&self) -> u32 {
        match self.protocol {
            Protocol::Netoops => self.machines,
            Protocol::Netconsole => self.machines.saturating_add(self.netconsole.chatter),
        }
    }

    /// Source address of machine `i` (`None` past the base's /8; see [`Scenario::validate`]).
    pub fn source_of(&self, i: u32) -> Option<SocketAddrV4> {
        nth_address(self.source_base, i).map(|ip| SocketAddrV4::new(ip, self.source_port))
    }

    /// Machine `i`, derived from the seed alone. Call [`Scenario::validate`] first: an index
    /// past the address space gets 0.0.0.0.
    pub fn machine(&self, i: u32) -> Machine {
        let mut rng = Rng::derive(self.seed, Stream::Content, u64::from(i));
        let variant = *rng.pick(&self.variants).unwrap_or(&Variant::V2);
        let dump_id = rng.next_u32() as u16;
        let kernels: &[&str] = if variant == Variant::V3I386 {
            &KERNELS_32
        } else {
            &KERNELS_64
        };
        let kernel = *rng.pick(kernels).unwrap_or(&"6.1.0");
        let mut header = DumpHeader::new(variant, dump_id, kernel);
        if rng.chance(self.soft_dump) {
            header.dump_type = DumpType::SoftDump;
        }
        // v2 carries none of these; drawing them anyway keeps the later draws variant-free.
        let boot_id = rng.next_u32();
        let cpu = rng.next_u64().to_le_bytes();
        let has_registers = !rng.chance(0.1);
        let registers: [u64; 21] = core::array::from_fn(|_| rng.next_u64());
        if variant != Variant::V2 {
            header.boot_id = boot_id;
            header.cpu = CpuId {
                vendor: 1 + cpu[0] % 2,
                family: [6, 0x17, 0x19][usize::from(cpu[1] % 3)],
                model: cpu[2],
                stepping: cpu[3] % 16,
            };
            if has_registers {
                header.registers = registers;
                if variant == Variant::V3I386 {
                    for (i, r) in header.registers.iter_mut().enumerate() {
                        *r = if i < 17 { *r & 0xffff_ffff } else { 0 };
                    }
                    header.registers[12] = 0xc100_0000 | (header.registers[12] & 0x00ff_ffff);
                } else {
                    header.registers[16] = 0xffff_ffff_8100_0000 | (registers[16] & 0xff_ffff);
                    header.registers[17] = 0x10;
                    header.registers[20] = 0x18;
                }
            }
        }
        if variant == Variant::V3X86_64Blob {
            let blob = format!("host=machine-{i:05} rack={} seed={}", i / 40, self.seed);
            for (dst, src) in header.user_blob.iter_mut().zip(blob.bytes()) {
                *dst = src;
            }
        }
        let (log_len, split) = self.sizes(&mut rng);
        let log_seed = rng.next_u64();
        let crash_at = self.crash_at(i);
        Machine {
            index: i,
            source: self
                .source_of(i)
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            header,
            log_len,
            split,
            crash_at,
            log_seed,
        }
    }

    /// When machine `i` crashes (zero for [`Timing::Sequential`]), without deriving the rest.
    pub fn crash_at(&self, i: u32) -> Duration {
        match self.timing {
            Timing::Sequential => Duration::ZERO,
            Timing::Storm { window } => {
                let mut t = Rng::derive(self.seed, Stream::Timing, u64::from(i));
                let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(t.below(nanos))
            }
        }
    }

    /// Log length and s1 length. A ring that has not wrapped has an empty s1, so a split at 0
    /// is as likely as any other; `zeroed_tail` machines get an s2 (and maybe s1) that is an
    /// exact multiple of 1024.
    fn sizes(&self, rng: &mut Rng) -> (usize, usize) {
        let (min, max) = (self.log_size.min as u64, self.log_size.max as u64);
        let len = rng.between(min, max) as usize;
        let split = rng.between(0, len as u64) as usize;
        if !rng.chance(self.zeroed_tail) || len < DATA_LEN {
            return (len, split);
        }
        // s2 = k * 1024 within the log; half of the time s1 is a multiple too.
        let k = rng.between(1, (len / DATA_LEN) as u64) as usize;
        let s2 = k * DATA_LEN;
        let mut s1 = len - s2;
        if rng.chance(0.5) && s1 - s1 % DATA_LEN + s2 >= self.log_size.min {
            s1 -= s1 % DATA_LEN;
        }
        (s1 + s2, s1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_ranges_parse() {
        assert_eq!(
            "1K-256K".parse(),
            Ok(SizeRange {
                min: 1024,
                max: 262_144
            })
        );
        assert_eq!(
            "1500".parse(),
            Ok(SizeRange {
                min: 1500,
                max: 1500
            })
        );
        assert_eq!(
            "2M".parse::<SizeRange>().map(|r| r.max),
            Ok(2 * 1024 * 1024)
        );
        for bad in ["", "0", "5K-1K", "1X", "-3", "1K-", "K"] {
            assert!(bad.parse::<SizeRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_skip_network_and_broadcast() {
        let base = Ipv4Addr::new(127, 1, 0, 253);
        let got: Vec<_> = (0..4).map(|i| nth_address(base, i).unwrap()).collect();
        assert_eq!(
            got,
            [
                Ipv4Addr::new(127, 1, 0, 253),
                Ipv4Addr::new(127, 1, 0, 254),
                Ipv4Addr::new(127, 1, 1, 1),
                Ipv4Addr::new(127, 1, 1, 2),
            ]
        );
        assert_eq!(
            nth_address(Ipv4Addr::new(10, 0, 0, 0), 0),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            nth_address(Ipv4Addr::new(10, 0, 0, 255), 0),
            Some(Ipv4Addr::new(10, 0, 1, 1))
        );
        assert_eq!(nth_address(Ipv4Addr::new(127, 255, 255, 254), 1), None);
        let s = Scenario {
            machines: 300,
            source_base: Ipv4Addr::new(127, 255, 255, 1),
            ..Scenario::default()
        };
        assert!(matches!(
            s.validate(),
            Err(ScenarioError::AddressSpace { .. })
        ));
    }

    #[test]
    fn numbers_are_written_like_format_would() {
        for (n, width) in [(0u64, 0usize), (7, 5), (123_456, 6), (42, 6), (u64::MAX, 3)] {
            let mut out = Vec::new();
            push_padded(&mut out, n, width, b' ');
            assert_eq!(out, format!("{n:>width$}").into_bytes());
        }
        let mut out = Vec::new();
        push_hex(&mut out, 0x0123_4567_89ab_cdef);
        push_hex(&mut out, 0xa);
        assert_eq!(out, b"0123456789abcdef000000000000000a");
    }

    #[test]
    fn logs_are_printable_exact_and_end_with_the_panic() {
        for len in [1, 50, 1023, 1024, 5000, 70_000] {
            let log = write_log(len as u64, len);
            assert_eq!(log.len(), len);
            assert!(log
                .iter()
                .all(|&b| b == b'\n' || (b' '..=b'~').contains(&b)));
            assert_eq!(log.last(), Some(&b'\n'));
            if len > 200 {
                let text = String::from_utf8(log).unwrap();
                let last = text.lines().last().unwrap();
                assert!(last.contains("] Kernel panic - not syncing: "), "{last}");
                assert!(text.lines().nth(2).unwrap().contains(": message "));
            }
        }
    }

    #[test]
    fn machines_are_deterministic_and_within_parameters() {
        let s = Scenario {
            machines: 500,
            log_size: "1K-64K".parse().unwrap(),
            zeroed_tail: 0.2,
            timing: Timing::Storm {
                window: Duration::from_millis(100),
            },
            ..Scenario::default()
        };
        s.validate().unwrap();
        let mut zeroed = 0;
        let mut variants = std::collections::HashSet::new();
        for i in 0..s.machines {
            let m = s.machine(i);
            let again = s.machine(i);
            assert_eq!(m.header, again.header);
            assert_eq!(
                (m.log_len, m.split, m.crash_at),
                (again.log_len, again.split, again.crash_at)
            );
            assert_eq!(m.log(), again.log());
            assert_eq!(m.log().len(), m.log_len, "machine {i}");
            assert!((1024..=65536).contains(&m.log_len));
            assert!(m.split <= m.log_len);
            assert!(m.crash_at < Duration::from_millis(100));
            assert_eq!(m.source, s.source_of(i).unwrap());
            if (m.log_len - m.split) % DATA_LEN == 0 {
                zeroed += 1;
            }
            variants.insert(m.header.variant);
            if m.header.variant == Variant::V2 {
                assert_eq!(m.header.boot_id, 0);
            }
        }
        assert_eq!(variants.len(), 4);
        assert!((60..=140).contains(&zeroed), "{zeroed}");
        // Another seed, other machines.
        let t = Scenario {
            seed: 7,
            ..s.clone()
        };
        assert_ne!(t.machine(0).header.dump_id, s.machine(0).header.dump_id);
    }
}
