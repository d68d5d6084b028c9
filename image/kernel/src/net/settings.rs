//! The appliance's settings as the board needs them: the relay [`Config`] read from the
//! kernel command line, the addressing of one or two NICs, and NIC selection.
//!
//! The command line carries the relay's keys (`appliance/core/src/config.rs`) mixed with
//! platform keys. [`parse`] drops the keys the platform consumes ([`PLATFORM_KEYS`]; keys with
//! a dot pass through `Config` untouched), then checks what an appliance cannot run without,
//! beyond `Config::validate_for_appliance`: the stack speaks IPv4 only, and every collector
//! must be on-link or behind `gw=`. Every error names the key at fault.
//!
//! Two-NIC deployments: `ip=`/`gw=` belong to the ingress NIC; the upstream NIC takes
//! `upstream_nic.ip=A.B.C.D/P` and `upstream_nic.gw=A.B.C.D` when given, and otherwise the
//! same `ip=`/`gw=` (the NICs sit on separate networks, so sharing an address is harmless).
//!
//! Everything here is pure and unit-tested on the host.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr};
use netoops_core::config::{words, Cidr, Config, ConfigError, NicSelector};
use netoops_core::time::Duration;

/// Command-line keys the platform consumes (scopes `Kernel` and `Test` of the core's
/// `KEY_TABLE`); the relay never sees them.
pub use netoops_core::config::PLATFORM_KEYS;

/// Platform-style keys (with a dot) the board reads for the upstream NIC.
pub const UPSTREAM_IP_KEY: &str = "upstream_nic.ip";
/// See [`UPSTREAM_IP_KEY`].
pub const UPSTREAM_GW_KEY: &str = "upstream_nic.gw";

fn error(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The command line's words without the platform's keys: the relay's `key=value` pairs.
pub fn relay_words(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline.split_ascii_whitespace().filter(|word| {
        let key = words::split_at_byte(word, b'=').map_or(*word, |(k, _)| k);
        !PLATFORM_KEYS.contains(&key)
    })
}

/// An interface address: address, prefix length, optional gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
}

impl Interface {
    /// Whether `ip` is on this interface's subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.ip) & mask
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)?;
        match self.gateway {
            Some(gw) => write!(f, " via {gw}"),
            None => Ok(()),
        }
    }
}

/// The checked settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The relay configuration.
    pub config: Config,
    /// The ingress NIC's address (`ip=`, `gw=`).
    pub ingress: Interface,
    /// The address the upstream connections use (the ingress one in single-NIC mode).
    pub upstream: Interface,
}

fn platform_value<'a>(config: &'a Config, key: &str) -> Option<&'a str> {
    config
        .platform
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Reads and checks the settings from the kernel command line.
pub fn parse(cmdline: &str) -> Result<Settings, ConfigError> {
    if let Some(v) = crate::platform::bootinfo::cmdline_param(cmdline, "heap") {
        netoops_core::config::check_heap(v)?;
    }
    // The pairs go straight to the configuration: building a text for `Config::parse` was
    // code run once before `ready` (under TCG, its translation).
    let mut config = Config::default();
    config.set_pairs(relay_words(cmdline))?;
    config.validate_for_appliance()?;
    let Some((ip, prefix)) = config.address else {
        return Err(error("ip", "missing"));
    };
    let ingress = Interface {
        ip,
        prefix,
        gateway: config.gateway,
    };
    if let Some(gw) = ingress.gateway {
        if !ingress.on_link(gw) {
            return Err(error("gw", format!("{gw} is not on {ip}/{prefix}")));
        }
    }
    let mut upstream = ingress;
    if let Some(v) = platform_value(&config, UPSTREAM_IP_KEY) {
        let parsed = v.parse::<Cidr>().ok().and_then(|c| c.ipv4());
        let (ip, prefix) = parsed.ok_or_else(|| {
            error(
                UPSTREAM_IP_KEY,
                format!("bad value `{v}`: expected A.B.C.D/PREFIX"),
            )
        })?;
        upstream = Interface {
            ip,
            prefix,
            gateway: None,
        };
    }
    if let Some(v) = platform_value(&config, UPSTREAM_GW_KEY) {
        let gw: Ipv4Addr = words::ipv4(v).ok_or_else(|| {
            error(
                UPSTREAM_GW_KEY,
                format!("bad value `{v}`: expected an IPv4 address"),
            )
        })?;
        if !upstream.on_link(gw) {
            return Err(error(
                UPSTREAM_GW_KEY,
                format!("{gw} is not on {}/{}", upstream.ip, upstream.prefix),
            ));
        }
        upstream.gateway = Some(gw);
    }
    let two_nics = config.upstream_nic.is_some();
    if !two_nics
        && (platform_value(&config, UPSTREAM_IP_KEY).is_some()
            || platform_value(&config, UPSTREAM_GW_KEY).is_some())
    {
        return Err(error(
            UPSTREAM_IP_KEY,
            "only meaningful with upstream_nic= (a second NIC)",
        ));
    }
    let gw_key = if two_nics && upstream != ingress {
        UPSTREAM_GW_KEY
    } else {
        "gw"
    };
    for addr in &config.upstreams {
        let IpAddr::V4(ip) = addr.ip() else {
            return Err(error(
                "upstream",
                format!("{addr}: the appliance speaks IPv4 only"),
            ));
        };
        if !upstream.on_link(ip) && upstream.gateway.is_none() {
            return Err(error(
                gw_key,
                format!(
                    "missing: upstream {addr} is not on {}/{} and no gateway is set",
                    upstream.ip, upstream.prefix
                ),
            ));
        }
    }
    Ok(Settings {
        config,
        ingress,
        upstream,
    })
}

fn size(bytes: usize) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

fn duration(d: Duration) -> String {
    let ms = d.total_millis();
    if d.total_micros() % 1000 != 0 {
        format!("{}ms", ms.max(1))
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    parts.join(",")
}

fn nic(sel: Option<NicSelector>, default: &str) -> String {
    sel.map_or_else(|| default.to_string(), |s| s.to_string())
}

/// Every relay key with its effective value, in `key=value` form, one per entry.
pub fn effective(s: &Settings) -> Vec<(&'static str, String)> {
    let c = &s.config;
    let r = &c.reassembly;
    let mut out = Vec::from([
        ("ip", format!("{}/{}", s.ingress.ip, s.ingress.prefix)),
        (
            "gw",
            c.gateway.map_or("none".to_string(), |g| g.to_string()),
        ),
        ("port", c.listen_port.to_string()),
        ("upstream", list(&c.upstreams)),
        ("name", c.name.clone()),
        (
            "upstream_key",
            // The id only: the key itself never reaches the console.
            c.upstream_key
                .as_ref()
                .map_or("none".to_string(), |k| k.to_string()),
        ),
        ("memory", size(r.memory_budget)),
        ("spool", size(c.spool_bytes)),
        ("max_dumps", r.max_dumps.to_string()),
        ("per_source", r.max_dumps_per_source.to_string()),
        ("quiet", duration(r.quiet_timeout)),
        ("linger", duration(r.linger)),
        (
            "allow",
            if c.allow.is_empty() {
                "any".to_string()
            } else {
                list(&c.allow)
            },
        ),
        ("nic", nic(c.nic, "first")),
        ("upstream_nic", nic(c.upstream_nic, "none")),
        ("stats", duration(c.stats_interval)),
        ("netconsole_port", c.netconsole_port.to_string()),
        ("netconsole_history", size(c.netconsole.history_bytes)),
        ("netconsole_memory", size(c.netconsole.memory_budget)),
        ("netconsole_sources", c.netconsole.max_sources.to_string()),
        ("http_port", c.http_port.to_string()),
        ("http_dumps", size(c.http_dumps)),
    ]);
    if c.upstream_nic.is_some() {
        out.push((
            UPSTREAM_IP_KEY,
            format!("{}/{}", s.upstream.ip, s.upstream.prefix),
        ));
        out.push((
            UPSTREAM_GW_KEY,
            s.upstream
                .gateway
                .map_or("none".to_string(), |g| g.to_string()),
        ));
    }
    out
}

/// What NIC selection needs to know about a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicIdentity {
    /// PCI bus, device, function, if it is a PCI function.
    pub pci: Option<(u8, u8, u8)>,
    /// Hardware address.
    pub mac: [u8; 6],
}

fn matches(sel: &NicSelector, nic: &NicIdentity) -> bool {
    match *sel {
        NicSelector::Pci {
            bus,
            device,
            function,
        } => nic.pci == Some((bus, device, function)),
        NicSelector::Mac(mac) => nic.mac == mac,
    }
}

/// Picks the ingress NIC and, with `upstream_nic=`, the upstream NIC (indices into `nics`).
pub fn select_nics(
    nics: &[NicIdentity],
    config: &Config,
) -> Result<(usize, Option<usize>), ConfigError> {
    let find = |key: &str, sel: &NicSelector| {
        nics.iter().position(|n| matches(sel, n)).ok_or_else(|| {
            error(
                key,
                format!("no NIC matches {sel} ({} NICs found)", nics.len()),
            )
        })
    };
    let upstream = match &config.upstream_nic {
        Some(sel) => Some(find("upstream_nic", sel)?),
        None => None,
    };
    let ingress = match &config.nic {
        Some(sel) => find("nic", sel)?,
        None => (0..nics.len())
            .find(|&i| Some(i) != upstream)
            .ok_or_else(|| match upstream {
                Some(_) => error("upstream_nic", "needs a second NIC, but only one was found"),
                None => error("nic", "no supported NIC found"),
            })?,
    };
    if upstream == Some(ingress) {
        return Err(error("upstream_nic", "selects the same NIC as nic="));
    }
    Ok((ingress, upstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "ip=10.0.2.15/24 gw=10.0.2.2 upstream=10.0.2.2:2005";

    #[test]
    fn platform_keys_are_dropped_and_dotted_keys_kept() {
        let words: Vec<&str> =
            relay_words("heap=64M  selftest=none ip=1.2.3.4/8 console=ttyS0 a.b=c port=7")
                .collect();
        assert_eq!(words, ["ip=1.2.3.4/8", "a.b=c", "port=7"]);
        let s = parse(&format!(
            "heap=32M {BASE} virtio_mmio.device=512@0xfeb00e00:12"
        ))
        .unwrap();
        assert_eq!(s.config.listen_port, 2004);
        assert_eq!(s.upstream, s.ingress);
        assert_eq!(s.ingress.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn errors_name_the_key() {
        let key = |line: &str| parse(line).unwrap_err().key;
        assert_eq!(key("upstream=10.0.2.2:2005"), "ip");
        assert_eq!(key("ip=10.0.2.15/24"), "upstream");
        assert_eq!(key(&format!("{BASE} port=http")), "port");
        assert_eq!(key(&format!("{BASE} memory=lots")), "memory");
        assert_eq!(key(&format!("{BASE} bogus=1")), "bogus");
        assert_eq!(key(&format!("{BASE} heap=1M")), "heap");
        assert_eq!(key(&format!("{BASE} heap=lots")), "heap");
        assert!(parse(&format!("{BASE} heap=16M")).is_ok());
        assert_eq!(
            key("ip=10.0.2.15/24 gw=10.9.9.9 upstream=10.0.2.2:2005"),
            "gw"
        );
        assert_eq!(key("ip=10.0.2.15/24 upstream=[::1]:2005"), "upstream");
        assert_eq!(key("ip=10.0.2.15/24 upstream=192.168.1.1:2005"), "gw");
        assert_eq!(
            key(&format!("{BASE} upstream_nic.ip=10.1.0.2/16")),
            UPSTREAM_IP_KEY
        );
        assert_eq!(
            key(&format!(
                "{BASE} upstream_nic=00:04.0 upstream_nic.ip=10.1.0.2"
            )),
            UPSTREAM_IP_KEY
        );
        // The upstream NIC has its own subnet: the collector must be reachable from it.
        assert_eq!(
            key(&format!(
                "{BASE} upstream_nic=00:04.0 upstream_nic.ip=10.1.0.2/16"
            )),
            UPSTREAM_GW_KEY
        );
        let e = parse(&format!("{BASE} port=0")).unwrap_err();
        assert!(e.to_string().contains("`port`"), "{e}");
    }

    #[test]
    fn two_nic_addressing() {
        let s = parse(&format!(
            "{BASE} upstream_nic=52:54:00:00:00:02 upstream_nic.ip=10.1.0.2/16 \
             upstream_nic.gw=10.1.0.1 upstream=10.9.0.1:2005"
        ))
        .unwrap();
        assert_eq!(s.upstream.ip, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(s.upstream.gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(s.ingress.ip, Ipv4Addr::new(10, 0, 2, 15));
        let keys: Vec<&str> = effective(&s).iter().map(|(k, _)| *k).collect();
        assert!(keys.contains(&UPSTREAM_IP_KEY));
    }

    /// The `config:` line lists the core's keys in `KEY_TABLE` order, then the kernel's own
    /// keys of that table it reads here; every kernel key in the table is one the kernel reads.
    #[test]
    fn effective_keys_follow_the_key_table() {
        use netoops_core::config::{KeyScope, KEYS, KEY_TABLE};
        let s = parse(&format!(
            "{BASE} upstream_nic=52:54:00:00:00:02 upstream_nic.ip=10.1.0.2/16 \
             upstream_nic.gw=10.1.0.1"
        ))
        .unwrap();
        let keys: Vec<&str> = effective(&s).iter().map(|(k, _)| *k).collect();
        let mut want: Vec<&str> = KEYS.to_vec();
        want.extend([UPSTREAM_IP_KEY, UPSTREAM_GW_KEY]);
        assert_eq!(keys, want);
        let kernel: Vec<&str> = KEY_TABLE
            .iter()
            .filter(|k| matches!(k.scope, KeyScope::Kernel | KeyScope::Test))
            .map(|k| k.key)
            .collect();
        assert_eq!(
            kernel,
            [
                UPSTREAM_IP_KEY,
                UPSTREAM_GW_KEY,
                crate::platform::idle::KEY,
                "heap",
                "console",
                "selftest"
            ]
        );
    }

    #[test]
    fn effective_configuration_names_every_key() {
        let s = parse(&format!("{BASE} memory=32M quiet=500ms allow=10.0.0.0/8")).unwrap();
        let eff = effective(&s);
        for key in netoops_core::config::KEYS {
            assert!(eff.iter().any(|(k, _)| k == key), "{key} missing");
        }
        let get = |k: &str| eff.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(get("memory"), "32M");
        assert_eq!(get("spool"), "16M");
        assert_eq!(get("quiet"), "500ms");
        assert_eq!(get("linger"), "30s");
        assert_eq!(get("allow"), "10.0.0.0/8");
        assert_eq!(get("upstream"), "10.0.2.2:2005");
        assert_eq!(get("nic"), "first");
        assert_eq!(size(1536), "1536");
        assert_eq!(size(3 << 30), "3G");
    }

    #[test]
    fn nic_selection() {
        let nics = [
            NicIdentity {
                pci: Some((0, 3, 0)),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            },
            NicIdentity {
                pci: Some((0, 4, 0)),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57],
            },
        ];
        let cfg = |line: &str| parse(&format!("{BASE} {line}")).unwrap().config;
        assert_eq!(select_nics(&nics, &cfg("")), Ok((0, None)));
        assert_eq!(select_nics(&nics, &cfg("nic=00:04.0")), Ok((1, None)));
        assert_eq!(
            select_nics(&nics, &cfg("upstream_nic=00:03.0")),
            Ok((1, Some(0)))
        );
        assert_eq!(
            select_nics(&nics, &cfg("nic=52:54:00:12:34:57 upstream_nic=00:03.0")),
            Ok((1, Some(0)))
        );
        let err = |line: &str, nics: &[NicIdentity]| select_nics(nics, &cfg(line)).unwrap_err().key;
        assert_eq!(err("nic=00:09.0", &nics), "nic");
        assert_eq!(
            err("nic=00:03.0 upstream_nic=00:03.0", &nics),
            "upstream_nic"
        );
        assert_eq!(err("upstream_nic=00:03.0", &nics[..1]), "upstream_nic");
        assert_eq!(err("", &[]), "nic");
    }
}
