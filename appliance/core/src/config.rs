//! The appliance configuration and its parser.
//!
//! One syntax everywhere: whitespace- or newline-separated `key=value` pairs, `#` starting a
//! comment. The kernel reads it from its command line, the UEFI loader from `relay.conf`, and
//! the hosted relay maps its TOML file and flags onto the same keys through [`Config::set`].
//! A bad value is an error naming the key; the appliance refuses to run misconfigured.
//!
//! The keys, their values and defaults are one table, [`KEY_TABLE`]: [`KEYS`] (what
//! [`Config::set`] accepts) and [`HOSTED_KEYS`] (what the hosted relay's file takes) are
//! derived from it, and tests check that the README's configuration table, the hosted
//! relay's keys and the appliance's effective-configuration line agree with it.
//!
//! Keys containing a dot (`virtio_mmio.device=...`, added by some VMMs) belong to the platform
//! and are kept in [`Config::platform`] untouched.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::str::FromStr;

pub mod words;

use crate::netconsole::ConsoleConfig;
use crate::reassembly::ReassemblyConfig;
use crate::time::Duration;

/// An IP network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits may be set; they are ignored when matching).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The network's IPv4 address and prefix, when it is an IPv4 network.
    pub fn ipv4(&self) -> Option<(Ipv4Addr, u8)> {
        match self.addr {
            IpAddr::V4(a) => Some((a, self.prefix)),
            IpAddr::V6(_) => None,
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = words::split_at_byte(s, b'/').ok_or(())?;
        let addr = words::ip(addr).ok_or(())?;
        // Read as a usize, the type sizes are read as (one parser's code at boot, not two);
        // the same strings are accepted as with u8.
        let prefix: usize = prefix.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(());
        }
        Ok(Cidr {
            addr,
            prefix: prefix as u8,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How to pick a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicSelector {
    /// PCI bus, device, function.
    Pci {
        /// Bus number.
        bus: u8,
        /// Device number (0-31).
        device: u8,
        /// Function number (0-7).
        function: u8,
    },
    /// Hardware address.
    Mac([u8; 6]),
}

impl FromStr for NicSelector {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let hex = |p: &str| u8::from_str_radix(p, 16).map_err(|_| ());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() == 6 {
            let mut mac = [0u8; 6];
            for (m, p) in mac.iter_mut().zip(&parts) {
                if p.len() != 2 {
                    return Err(());
                }
                *m = hex(p)?;
            }
            return Ok(NicSelector::Mac(mac));
        }
        // BB:DD.F, optionally with a 0000: segment prefix.
        let s = s.strip_prefix("0000:").unwrap_or(s);
        let (bus, rest) = s.split_once(':').ok_or(())?;
        let (device, function) = rest.split_once('.').ok_or(())?;
        let (bus, device, function) = (hex(bus)?, hex(device)?, hex(function)?);
        if device > 31 || function > 7 {
            return Err(());
        }
        Ok(NicSelector::Pci {
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for NicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicSelector::Pci {
                bus,
                device,
                function,
            } => write!(f, "{bus:02x}:{device:02x}.{function:x}"),
            NicSelector::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key at fault.
    pub key: String,
    /// What was wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration key `{}`: {}", self.key, self.problem)
    }
}

/// The appliance configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The appliance's own address and prefix length.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// UDP port for netoops datagrams.
    pub listen_port: u16,
    /// Collectors, most preferred first.
    pub upstreams: Vec<SocketAddr>,
    /// Name this relay reports to collectors.
    pub name: String,
    /// Session key for collectors (`upstream_key=ID:KEY`); `None` speaks in clear (only
    /// collectors started with `--allow-plaintext` accept that).
    pub upstream_key: Option<crate::upstream::secure::SessionKey>,
    /// Reassembly sizes and timeouts.
    pub reassembly: ReassemblyConfig,
    /// Bytes the delivery spool may hold.
    pub spool_bytes: usize,
    /// Sources allowed to send; empty means everyone.
    pub allow: Vec<Cidr>,
    /// Ingress NIC.
    pub nic: Option<NicSelector>,
    /// Separate NIC for upstream traffic.
    pub upstream_nic: Option<NicSelector>,
    /// Interval between counter lines.
    pub stats_interval: Duration,
    /// UDP port for netconsole datagrams; 0 = off.
    pub netconsole_port: u16,
    /// Netconsole history sizes (its quiet timeout is `quiet`).
    pub netconsole: ConsoleConfig,
    /// TCP port of the HTTP endpoint (`/metrics`, `/healthz`, `/dumps`); 0 = off.
    pub http_port: u16,
    /// Bytes of dump text the HTTP endpoint keeps in RAM for `/dumps` (only while it is on).
    pub http_dumps: usize,
    /// Platform parameters (keys with a dot), passed through untouched.
    pub platform: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: None,
            gateway: None,
            listen_port: netoops_wire::DEFAULT_PORT,
            upstreams: Vec::new(),
            name: "netoops-relay".to_string(),
            upstream_key: None,
            reassembly: ReassemblyConfig::default(),
            spool_bytes: 16 << 20,
            allow: Vec::new(),
            nic: None,
            upstream_nic: None,
            stats_interval: Duration::from_secs(5),
            netconsole_port: netoops_wire::netconsole::DEFAULT_PORT,
            netconsole: ConsoleConfig::default(),
            http_port: 0,
            http_dumps: 1 << 20,
            platform: Vec::new(),
        }
    }
}

/// The smallest spool: its crash notice lane (a quarter) then holds a dozen notices with
/// their first chunk, and its dump lane dumps of up to 48 KiB. Below it the relay could start
/// and then deliver nothing.
pub const MIN_SPOOL: usize = 64 << 10;

/// Where a configuration key is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// [`Config::set`], everywhere: the kernel command line, `relay.conf` and the hosted
    /// relay's TOML file and flags.
    Everywhere,
    /// [`Config::set`], but meaningful only on the appliance (its addresses and NICs); the
    /// hosted relay refuses it.
    Appliance,
    /// Read by the appliance kernel itself: a dotted key, which [`Config::set`] keeps in
    /// [`Config::platform`], or one of the platform's own words ([`PLATFORM_KEYS`]).
    Kernel,
    /// Read by the kernel for the end-to-end tests only; not in the README's table.
    Test,
}

/// One configuration key, as the README's table documents it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Where it is read.
    pub scope: KeyScope,
    /// Its value (Markdown).
    pub value: &'static str,
    /// Its default (Markdown).
    pub default: &'static str,
    /// Takes a comma-separated list (a repeated flag or a TOML array adds to it).
    pub list: bool,
}

impl KeyDoc {
    /// The hosted relay's flag for it: `--max-dumps` for `max_dumps`.
    pub fn flag(&self) -> String {
        alloc::format!("--{}", self.key.replace('_', "-"))
    }
}

/// Every configuration key, in the order the README and the appliance's `config:` line list
/// them. Adding a key starts in `appliance/core/keys.toml`, which the build script turns into
/// this table (data in a data file: the Rust it generates is not kept in the tree).
pub const KEY_TABLE: &[KeyDoc] = include!(concat!(env!("OUT_DIR"), "/key_table.rs"));

/// Which keys of [`KEY_TABLE`] a key list holds.
#[derive(Clone, Copy)]
enum Pick {
    /// The keys of either scope.
    Scopes(KeyScope, KeyScope),
    /// The undotted keys of scopes `Kernel` and `Test`.
    PlatformWords,
}

impl Pick {
    const fn takes(self, k: &KeyDoc) -> bool {
        let s = k.scope as u8;
        match self {
            Pick::Scopes(a, b) => s == a as u8 || s == b as u8,
            Pick::PlatformWords => {
                if s != KeyScope::Kernel as u8 && s != KeyScope::Test as u8 {
                    return false;
                }
                let b = k.key.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'.' {
                        return false;
                    }
                    i += 1;
                }
                true
            }
        }
    }
}

/// The first `N` keys `pick` takes, in table order, and how many it takes in all:
/// `picked::<0>(pick).1` sizes the array of `picked::<N>(pick).0`.
const fn picked<const N: usize>(pick: Pick) -> ([&'static str; N], usize) {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < KEY_TABLE.len() {
        if pick.takes(&KEY_TABLE[i]) {
            if n < N {
                out[n] = KEY_TABLE[i].key;
            }
            n += 1;
        }
        i += 1;
    }
    (out, n)
}

const ACCEPTED: Pick = Pick::Scopes(KeyScope::Everywhere, KeyScope::Appliance);

/// Every key [`Config::set`] accepts (scopes `Everywhere` and `Appliance` of [`KEY_TABLE`]).
pub const KEYS: &[&str] = &picked::<{ picked::<0>(ACCEPTED).1 }>(ACCEPTED).0;

/// The undotted keys the appliance platform reads itself (scopes `Kernel` and `Test` of
/// [`KEY_TABLE`]): the kernel takes them off the command line before the relay's parser sees
/// it, and the UEFI stub lets them through. (Dotted keys are the platform's too, by their
/// form: [`Config::set`] keeps them in [`Config::platform`].)
pub const PLATFORM_KEYS: &[&str] =
    &picked::<{ picked::<0>(Pick::PlatformWords).1 }>(Pick::PlatformWords).0;

const HOSTED: Pick = Pick::Scopes(KeyScope::Everywhere, KeyScope::Everywhere);

/// The keys the hosted relay takes (scope `Everywhere` of [`KEY_TABLE`]).
pub const HOSTED_KEYS: &[&str] = &picked::<{ picked::<0>(HOSTED).1 }>(HOSTED).0;

/// The README's configuration table, generated from [`KEY_TABLE`] (a test keeps the README
/// equal to it).
pub fn key_table_markdown() -> String {
    let mut out = String::from("| key | value | default |\n|---|---|---|\n");
    for k in KEY_TABLE.iter().filter(|k| k.scope != KeyScope::Test) {
        out.push_str(&alloc::format!(
            "| `{}` | {} | {} |\n",
            k.key,
            k.value,
            k.default
        ));
    }
    out
}

/// Parses `123`, `64K`, `16M`, `1G` (powers of 1024).
pub fn parse_size(v: &str) -> Option<usize> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let n: usize = digits.parse().ok()?;
    n.checked_mul(1usize.checked_shl(shift)?)
}

/// The smallest `heap=` cap the appliance accepts: its NICs' rings and buffers alone take a
/// few MiB, and the relay's smallest budgets a few more.
pub const MIN_HEAP: usize = 16 << 20;

/// Checks the appliance's `heap=` value, a platform word the relay's parser does not take
/// (the kernel and the UEFI loader's relay.conf check both ask here).
pub fn check_heap(value: &str) -> Result<usize, ConfigError> {
    parse_size(value)
        .filter(|&bytes| bytes >= MIN_HEAP)
        .ok_or_else(|| ConfigError {
            key: "heap".to_string(),
            problem: alloc::format!(
                "bad value `{value}`: expected a size of at least {}M, like 64M",
                MIN_HEAP >> 20
            ),
        })
}

/// Parses `250ms`, `3s`, `2m`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = v.strip_suffix('s') {
        return s.parse().ok().map(Duration::from_secs);
    }
    if let Some(m) = v.strip_suffix('m') {
        return m
            .parse::<u64>()
            .ok()
            .and_then(|m| m.checked_mul(60))
            .map(Duration::from_secs);
    }
    None
}

/// The `,`-separated items of `v`, each read by `item` without surrounding ASCII whitespace.
/// A plain loop: a command line's lists are read before the image is `ready` (see [`words`]).
fn parse_list<T>(v: &str, item: fn(&str) -> Option<T>) -> Option<Vec<T>> {
    // Room for a typical list up front, so reading one does not grow a vector (more code).
    let mut out = Vec::with_capacity(4);
    let mut rest = v;
    loop {
        let (first, more) = match words::split_at_byte(rest, b',') {
            Some((first, more)) => (first, Some(more)),
            None => (rest, None),
        };
        out.push(item(first.trim_ascii())?);
        match more {
            Some(more) => rest = more,
            None => return Some(out),
        }
    }
}

impl Config {
    /// Parses a whole configuration text onto the defaults.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            config.set_pairs(line.split_whitespace())?;
        }
        Ok(config)
    }

    /// Sets each `key=value` word in turn: a configuration line's, or a kernel command line's
    /// (which has no comments), without building a text first.
    pub fn set_pairs<'a>(
        &mut self,
        words: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        for pair in words {
            let (key, value) = words::split_at_byte(pair, b'=').ok_or_else(|| ConfigError {
                key: pair.to_string(),
                problem: "expected key=value".to_string(),
            })?;
            self.set(key, value)?;
        }
        Ok(())
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |expected: &str| ConfigError {
            key: key.to_string(),
            problem: alloc::format!("bad value `{value}`: expected {expected}"),
        };
        let positive = |n: Option<usize>| n.filter(|&n| n > 0);
        // The kinds of value several keys take.
        let size = |fits: fn(usize) -> bool, expected: &str| {
            parse_size(value)
                .filter(|&n| fits(n))
                .ok_or_else(|| bad(expected))
        };
        let count = || {
            positive(value.parse().ok())
                .filter(|&n| n <= 1 << 20)
                .ok_or_else(|| bad("a count 1-1048576"))
        };
        let interval = |expected: &str| {
            parse_duration(value)
                .filter(|d| *d > Duration::ZERO)
                .ok_or_else(|| bad(expected))
        };
        let port_or_off = |expected: &str| value.parse::<u16>().map_err(|_| bad(expected));
        let nic = || {
            value
                .parse()
                .map(Some)
                .map_err(|_| bad("a PCI address BB:DD.F or a MAC"))
        };
        match key {
            "ip" => {
                let cidr: Cidr = value.parse().map_err(|_| bad("A.B.C.D/PREFIX"))?;
                let v4 = cidr.ipv4().ok_or_else(|| bad("an IPv4 A.B.C.D/PREFIX"))?;
                self.address = Some(v4);
            }
            "gw" => self.gateway = Some(words::ipv4(value).ok_or_else(|| bad("an IPv4 address"))?),
            "port" => {
                self.listen_port = value
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("a UDP port 1-65535"))?
            }
            "upstream" => {
                self.upstreams = parse_list(value, words::socket_addr)
                    .filter(|l: &Vec<SocketAddr>| !l.is_empty() && l.iter().all(|a| a.port() != 0))
                    .ok_or_else(|| bad("IP:PORT[,IP:PORT...]"))?
            }
            "upstream_key" => {
                self.upstream_key = match value {
                    "" | "none" => None,
                    v => Some(crate::upstream::secure::SessionKey::parse(v).map_err(&bad)?),
                }
            }
            "name" => {
                if value.is_empty()
                    || value.len() > 64
                    || !value.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(bad("1-64 printable characters"));
                }
                self.name = value.to_string();
            }
            "memory" => self.reassembly.memory_budget = size(|n| n > 0, "a size like 64M")?,
            "spool" => {
                self.spool_bytes = size(|n| n >= MIN_SPOOL, "a size like 16M, at least 64K")?
            }
            "max_dumps" => self.reassembly.max_dumps = count()?,
            "per_source" => {
                self.reassembly.max_dumps_per_source =
                    positive(value.parse().ok()).ok_or_else(|| bad("a count of at least 1"))?
            }
            "quiet" => self.reassembly.quiet_timeout = interval("a duration like 3s or 500ms")?,
            "linger" => {
                self.reassembly.linger =
                    parse_duration(value).ok_or_else(|| bad("a duration like 30s"))?
            }
            "allow" => {
                self.allow = parse_list(value, |item| item.parse().ok())
                    .ok_or_else(|| bad("CIDR[,CIDR...]"))?;
            }
            "nic" => self.nic = nic()?,
            "upstream_nic" => self.upstream_nic = nic()?,
            "stats" => self.stats_interval = interval("a duration like 5s")?,
            "netconsole_port" => {
                self.netconsole_port = port_or_off("a UDP port 1-65535, or 0 for off")?
            }
            "netconsole_history" => {
                self.netconsole.history_bytes = size(
                    |n| (1024..=16 << 20).contains(&n),
                    "a size from 1K to 16M, like 64K",
                )?
            }
            "netconsole_memory" => {
                self.netconsole.memory_budget =
                    size(|n| n >= 16 << 10, "a size of at least 16K, like 16M")?
            }
            "netconsole_sources" => self.netconsole.max_sources = count()?,
            "http_port" => self.http_port = port_or_off("a TCP port 1-65535, or 0 for off")?,
            "http_dumps" => {
                self.http_dumps = size(
                    |n| n <= 1 << 30,
                    "a size up to 1G, like 1M (0 keeps no dump texts)",
                )?
            }
            k if k.contains('.') => self.platform.push((k.to_string(), value.to_string())),
            _ => {
                return Err(ConfigError {
                    key: key.to_string(),
                    problem: alloc::format!("unknown key (known keys: {})", KEYS.join(", ")),
                })
            }
        }
        Ok(())
    }

    /// Checks what the appliance cannot run without (the hosted relay has no address of its
    /// own to configure) and that the sizes fit together.
    pub fn validate_for_appliance(&self) -> Result<(), ConfigError> {
        let missing = |key: &str, what: &str| ConfigError {
            key: key.to_string(),
            problem: alloc::format!("missing: {what}"),
        };
        if self.address.is_none() {
            return Err(missing("ip", "the appliance address, e.g. ip=10.0.0.2/24"));
        }
        self.validate()
    }

    /// Checks the settings every relay needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return Err(ConfigError {
                key: "upstream".to_string(),
                problem: "missing: at least one collector, e.g. upstream=10.0.0.1:2005".to_string(),
            });
        }
        self.reassembly.chunk_slots().map_err(|e| ConfigError {
            key: "memory".to_string(),
            problem: e.to_string(),
        })?;
        if self.netconsole_port != 0 && self.netconsole_port == self.listen_port {
            return Err(ConfigError {
                key: "netconsole_port".to_string(),
                problem: alloc::format!(
                    "{} is also the netoops port; give each its own",
                    self.netconsole_port
                ),
            });
        }
        Ok(())
    }

    /// Whether `ip` may send to this relay.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_set_accepts_is_in_the_table_and_no_other() {
        for key in KEYS {
            let r = Config::default().set(key, "");
            assert!(
                !matches!(&r, Err(e) if e.problem.starts_with("unknown key")),
                "{key}: {r:?}"
            );
        }
        assert!(Config::default().set("no_such_key", "1").is_err());
        assert_eq!(KEYS.len() + 3 + PLATFORM_KEYS.len(), KEY_TABLE.len());
        assert_eq!(PLATFORM_KEYS, ["heap", "console", "selftest"]);
        for k in KEY_TABLE {
            let platform = matches!(k.scope, KeyScope::Kernel | KeyScope::Test);
            assert_eq!(
                platform,
                k.key.contains('.') || PLATFORM_KEYS.contains(&k.key),
                "{}",
                k.key
            );
            assert_eq!(KEYS.contains(&k.key), !platform);
            assert_eq!(k.list, matches!(k.key, "upstream" | "allow"), "{}", k.key);
            assert_eq!(
                HOSTED_KEYS.contains(&k.key),
                k.scope == KeyScope::Everywhere
            );
        }
    }

    /// The README's configuration table is [`key_table_markdown`], exactly.
    #[test]
    fn the_readme_table_is_the_key_table() {
        extern crate std;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let want = key_table_markdown();
        assert!(
            readme.contains(&want),
            "README.md's configuration table differs from KEY_TABLE; it should read:\n{want}"
        );
    }

    use super::*;

    #[test]
    fn parses_every_key() {
        let c = Config::parse(
            "ip=10.0.0.2/24 gw=10.0.0.1 port=6666\n\
             upstream=10.0.0.1:2005,10.0.0.9:2005 # two collectors\n\
             name=rack-7 memory=128M spool=1G max_dumps=100 per_source=2 quiet=500ms linger=2m\n\
             allow=10.0.0.0/8,fd00::/8 nic=00:03.0 upstream_nic=52:54:00:12:34:56 stats=1s\n\
             netconsole_port=6667 netconsole_history=128K netconsole_memory=32M \
             netconsole_sources=100 http_port=9100 http_dumps=2M\n\
             upstream_key=rack-7:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
             virtio_mmio.device=512@0xfeb00e00:12",
        )
        .unwrap();
        assert_eq!(c.address, Some((Ipv4Addr::new(10, 0, 0, 2), 24)));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.listen_port, 6666);
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.name, "rack-7");
        assert_eq!(c.reassembly.memory_budget, 128 << 20);
        assert_eq!(c.spool_bytes, 1 << 30);
        assert_eq!(c.reassembly.max_dumps, 100);
        assert_eq!(c.reassembly.max_dumps_per_source, 2);
        assert_eq!(c.reassembly.quiet_timeout, Duration::from_millis(500));
        assert_eq!(c.reassembly.linger, Duration::from_secs(120));
        assert!(c.allows("10.9.9.9".parse().unwrap()));
        assert!(c.allows("fd00::1".parse().unwrap()));
        assert!(!c.allows("11.0.0.1".parse().unwrap()));
        assert_eq!(c.nic.unwrap().to_string(), "00:03.0");
        assert_eq!(c.upstream_nic.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(c.stats_interval, Duration::from_secs(1));
        assert_eq!(c.platform.len(), 1);
        assert_eq!(c.netconsole_port, 6667);
        assert_eq!(c.netconsole.history_bytes, 128 << 10);
        assert_eq!(c.netconsole.memory_budget, 32 << 20);
        assert_eq!(c.netconsole.max_sources, 100);
        assert_eq!(c.http_port, 9100);
        assert_eq!(c.http_dumps, 2 << 20);
        let key = c.upstream_key.as_ref().unwrap();
        assert_eq!((key.id.as_str(), key.psk.0[1]), ("rack-7", 0x11));
        assert_eq!(
            Config::parse("upstream_key=none").unwrap().upstream_key,
            None
        );
        c.validate_for_appliance().unwrap();
        let off = Config::parse("netconsole_port=0").unwrap();
        assert_eq!(off.netconsole_port, 0);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("ip=10.0.0.300/24", "ip"),
            ("ip=10.0.0.1", "ip"),
            ("ip=10.0.0.1/33", "ip"),
            ("port=0", "port"),
            ("port=70000", "port"),
            ("upstream=", "upstream"),
            ("upstream=10.0.0.1", "upstream"),
            ("upstream=10.0.0.1:0", "upstream"),
            ("memory=lots", "memory"),
            ("memory=0", "memory"),
            ("memory=99999999999G", "memory"),
            ("spool=1", "spool"),
            ("spool=63K", "spool"),
            ("quiet=3", "quiet"),
            ("quiet=0s", "quiet"),
            ("allow=10.0.0.0/40", "allow"),
            ("nic=zz:00.0", "nic"),
            ("nic=00:32.0", "nic"),
            ("name=", "name"),
            ("upstream_key=rack-7", "upstream_key"),
            ("upstream_key=rack-7:0011", "upstream_key"),
            ("upstream_key=rack 7:00", "upstream_key"),
            ("colour=blue", "colour"),
            ("netconsole_port=x", "netconsole_port"),
            ("netconsole_history=10", "netconsole_history"),
            ("netconsole_memory=1K", "netconsole_memory"),
            ("netconsole_sources=0", "netconsole_sources"),
            ("http_port=70000", "http_port"),
            ("http_dumps=2G", "http_dumps"),
            ("justaword", "justaword"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn appliance_needs_an_address_an_upstream_and_a_workable_budget() {
        let err = Config::parse("upstream=1.2.3.4:5")
            .unwrap()
            .validate_for_appliance()
            .unwrap_err();
        assert_eq!(err.key, "ip");
        let err = Config::parse("ip=1.2.3.4/24")
            .unwrap()
            .validate_for_appliance()
            .unwrap_err();
        assert_eq!(err.key, "upstream");
        let err = Config::parse("ip=1.2.3.4/24 upstream=1.2.3.4:5 memory=1K")
            .unwrap()
            .validate_for_appliance()
            .unwrap_err();
        assert_eq!(err.key, "memory");
        assert!(err.problem.contains("too small"), "{}", err.problem);
    }

    #[test]
    fn cidr_matching_respects_the_prefix() {
        let c: Cidr = "192.168.1.77/24".parse().unwrap();
        assert!(c.contains("192.168.1.1".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
    }
}
