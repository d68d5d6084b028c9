//! Splitting `key=value` words and reading the addresses in their values, byte by byte.
//!
//! Why not `str::split_once(char)` and `core::net`'s parser: the image reads its command line
//! once per boot, and under QEMU's TCG code run once costs its translation, about 1 µs per
//! instruction. `split_once` with a `char` pattern and the general address parser were about
//! 600 instructions of that path (0.6 ms of a 10 ms boot); the byte loops here are about 150.
//! What they accept is what the standard parsers accept: a dotted-quad IPv4 address (with a
//! port) is read here, and anything else (IPv6, a malformed value) goes to `FromStr`, so the
//! fast path only decides the values it reads exactly as `FromStr` would (tested against it).

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

/// `s` split around the first `sep` (an ASCII byte, so both halves are whole UTF-8).
pub fn split_at_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let at = s.bytes().position(|b| b == sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// An IP address, as `IpAddr::from_str` reads it.
pub fn ip(s: &str) -> Option<IpAddr> {
    match dotted_quad(s) {
        Some(a) => Some(IpAddr::V4(a)),
        None => s.parse().ok(),
    }
}

/// An IPv4 address, as `Ipv4Addr::from_str` reads it.
pub fn ipv4(s: &str) -> Option<Ipv4Addr> {
    dotted_quad(s).or_else(|| s.parse().ok())
}

/// A socket address, as `SocketAddr::from_str` reads it.
pub fn socket_addr(s: &str) -> Option<SocketAddr> {
    let fast = split_at_byte(s, b':')
        .and_then(|(ip, port)| Some(SocketAddrV4::new(dotted_quad(ip)?, decimal_port(port)?)));
    match fast {
        Some(a) => Some(SocketAddr::V4(a)),
        None => s.parse().ok(),
    }
}

/// `A.B.C.D`: four decimal octets of 1-3 digits without a leading zero (what
/// `Ipv4Addr::from_str` takes); `None` for anything else.
fn dotted_quad(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut filled = 0;
    let (mut value, mut digits) = (0u16, 0u8);
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => {
                if digits == 1 && value == 0 {
                    return None;
                }
                value = value * 10 + u16::from(b - b'0');
                digits += 1;
                if value > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 && filled < 3 => {
                octets[filled] = value as u8;
                filled += 1;
                (value, digits) = (0, 0);
            }
            _ => return None,
        }
    }
    if digits == 0 || filled != 3 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
}

/// A port of decimal digits only (leading zeros allowed, as `SocketAddr::from_str` takes).
fn decimal_port(s: &str) -> Option<u16> {
    if s.is_empty() {
        return None;
    }
    let mut value = 0u32;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// Address-shaped strings: dot-separated groups of digits (some too long, too large, with
    /// leading zeros or a stray character), some with a `:` and a port; plus fixed cases.
    fn candidates() -> Vec<String> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut out = Vec::new();
        for _ in 0..50_000 {
            let mut s = String::new();
            let groups = if next(4) == 0 { 2 + next(4) } else { 4 };
            for g in 0..groups {
                if g > 0 {
                    s.push('.');
                }
                let len = if next(8) == 0 { next(5) } else { 1 + next(3) };
                for _ in 0..len {
                    let junk = next(40) == 0;
                    s.push(if junk {
                        b"+ :x"[next(4) as usize]
                    } else {
                        b'0' + next(10) as u8
                    } as char);
                }
            }
            if next(2) == 0 {
                s.push(':');
                for _ in 0..next(7) {
                    s.push(b"01234567896+"[next(12) as usize] as char);
                }
            }
            out.push(s);
        }
        for fixed in [
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.1.1.1",
            "1.1.1.00",
            "1.1.1.1.",
            ".1.1.1",
            "1..1.1",
            "1.1.1",
            "1.1.1.1.1",
            "1000.1.1.1",
            "10.0.2.2:2005",
            "10.0.2.2:02005",
            "10.0.2.2:65535",
            "10.0.2.2:65536",
            "10.0.2.2:",
            "10.0.2.2:+1",
            "10.0.2.2:99999999999999999999",
            "[::1]:2005",
            "::1",
            "::ffff:1.2.3.4",
            "1.2.3.4:5:6",
            "",
        ] {
            out.push(fixed.into());
        }
        out
    }

    #[test]
    fn addresses_read_exactly_as_the_standard_parsers_read_them() {
        let mut fast = 0;
        for s in candidates() {
            assert_eq!(ip(&s), s.parse::<IpAddr>().ok(), "ip {s:?}");
            assert_eq!(ipv4(&s), s.parse::<Ipv4Addr>().ok(), "ipv4 {s:?}");
            assert_eq!(
                socket_addr(&s),
                s.parse::<SocketAddr>().ok(),
                "socket {s:?}"
            );
            // The fast path never accepts what the standard parser refuses.
            if let Some(a) = dotted_quad(&s) {
                assert_eq!(Some(a), s.parse().ok(), "{s:?}");
                fast += 1;
            }
        }
        assert!(fast > 1_000, "the candidates reach the fast path ({fast})");
        assert_eq!(dotted_quad("10.0.2.15"), Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(decimal_port("2005"), Some(2005));
        assert_eq!(dotted_quad("::1"), None);
    }

    #[test]
    fn splits_at_the_first_separator() {
        assert_eq!(split_at_byte("a=b=c", b'='), Some(("a", "b=c")));
        assert_eq!(split_at_byte("=", b'='), Some(("", "")));
        assert_eq!(split_at_byte("ü=ß", b'='), Some(("ü", "ß")));
        assert_eq!(split_at_byte("abc", b'='), None);
    }
}
