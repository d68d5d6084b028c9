//! Ethernet II / IPv4 / UDP headers around a datagram, written in place: what a raw-frame
//! netdev (`-netdev stream`, `dgram`, a TAP) hands the guest NIC. Lives here, in the crate
//! that runs the image, so the appliance's host-side forwarder ([`crate::forward`]), the
//! generator's frame outputs and the tests build frames with one implementation.
//!
//! ```text
//! 0   6  dst MAC          14  IPv4: 0x45, tos 0, total length, id, flags DF, ttl 64, proto 17,
//! 6   6  src MAC              header checksum, src, dst (20 bytes, no options)
//! 12  2  ethertype 0x0800 34  UDP: src port, dst port, length, checksum (0 = none)
//!                         42  datagram
//! ```
//!
//! The IPv4 header checksum is always computed; the UDP checksum is computed unless disabled
//! (netpoll senders fill it in, and a receiver must verify a non-zero one).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

/// Ethernet II header.
pub const ETHERNET_LEN: usize = 14;
/// IPv4 header without options.
pub const IPV4_LEN: usize = 20;
/// UDP header.
pub const UDP_LEN: usize = 8;
/// Ethernet, IPv4 and UDP headers.
pub const HEADERS_LEN: usize = ETHERNET_LEN + IPV4_LEN + UDP_LEN;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_UDP: u8 = 17;

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// QEMU's default guest MAC.
    pub const QEMU_DEFAULT: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    /// A locally administered unicast MAC that embeds an IPv4 address: `02:00:a:b:c:d`.
    pub fn for_ip(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Self([0x02, 0x00, a, b, c, d])
    }
}

/// A MAC address that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad MAC address {:?}: expected six hex bytes like 52:54:00:12:34:56",
            self.0
        )
    }
}

impl std::error::Error for BadMac {}

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The ones' complement sum of `data` as 16-bit big-endian words, folded, plus `initial`.
fn ones_sum(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

/// The UDP checksum over the IPv4 pseudo-header and `udp` (header with a zero checksum field,
/// then payload); 0 is sent as 0xffff.
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let sum = ones_sum(udp, ones_sum(&pseudo_header(src, dst, udp.len()), 0));
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Addresses and options of the frames of one output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    /// The receiver's MAC (the guest NIC).
    pub dst_mac: MacAddr,
    /// One MAC for every sender (as if all came through one router), or `None` for a MAC per
    /// machine derived from its address.
    pub src_mac: Option<MacAddr>,
    /// The receiver's address and port.
    pub dst: SocketAddrV4,
    /// Fill in the UDP checksum (otherwise 0, "no checksum").
    pub udp_checksum: bool,
}

/// Writes frame headers, numbering IPv4 ids.
#[derive(Clone, Debug)]
pub struct FrameWriter {
    config: FrameConfig,
    ip_id: u16,
}

impl FrameWriter {
    /// A writer for frames with `config`'s addresses, IPv4 ids from 0.
    pub fn new(config: FrameConfig) -> Self {
        Self { config, ip_id: 0 }
    }

    /// The addresses and options of this writer's frames.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Writes the headers into `buf[..HEADERS_LEN]` for the `payload_len` bytes that follow
    /// them in `buf`, sent from `src`. Returns the frame length, or `None` when `buf` is too
    /// short or the payload too long for one IPv4 packet.
    pub fn write(
        &mut self,
        buf: &mut [u8],
        src: SocketAddrV4,
        payload_len: usize,
    ) -> Option<usize> {
        let frame_len = HEADERS_LEN + payload_len;
        let ip_len = u16::try_from(IPV4_LEN + UDP_LEN + payload_len).ok()?;
        let udp_len = ip_len - IPV4_LEN as u16;
        let frame = buf.get_mut(..frame_len)?;
        let c = &self.config;
        let src_mac = c.src_mac.unwrap_or_else(|| MacAddr::for_ip(*src.ip()));
        frame[0..6].copy_from_slice(&c.dst_mac.0);
        frame[6..12].copy_from_slice(&src_mac.0);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let (ip, rest) = frame[ETHERNET_LEN..].split_at_mut(IPV4_LEN);
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_UDP;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&c.dst.ip().octets());
        let sum = internet_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        rest[0..2].copy_from_slice(&src.port().to_be_bytes());
        rest[2..4].copy_from_slice(&c.dst.port().to_be_bytes());
        rest[4..6].copy_from_slice(&udp_len.to_be_bytes());
        rest[6..8].fill(0);
        if c.udp_checksum {
            let sum = udp_checksum(*src.ip(), *c.dst.ip(), rest);
            rest[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        Some(frame_len)
    }
}

/// A frame's UDP payload after checking every header field this module writes, or `None`:
/// for tests and for reading frames back.
pub fn parse_frame(frame: &[u8]) -> Option<(MacAddr, MacAddr, SocketAddrV4, SocketAddrV4, &[u8])> {
    let eth = frame.get(..ETHERNET_LEN)?;
    let mac = |b: &[u8]| -> Option<MacAddr> { Some(MacAddr(b.try_into().ok()?)) };
    let (dst_mac, src_mac) = (mac(&eth[0..6])?, mac(&eth[6..12])?);
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_LEN..ETHERNET_LEN + IPV4_LEN)?;
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] != 0x45 || ip[9] != PROTO_UDP || internet_checksum(ip) != 0 {
        return None;
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = frame.get(ETHERNET_LEN + IPV4_LEN..ETHERNET_LEN + ip_len)?;
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if udp_len != udp.len() || udp_len < UDP_LEN {
        return None;
    }
    let sum = u16::from_be_bytes([udp[6], udp[7]]);
    let folded = ones_sum(udp, ones_sum(&pseudo_header(src_ip, dst_ip, udp_len), 0));
    if sum != 0 && folded != 0xffff {
        return None;
    }
    let src = SocketAddrV4::new(src_ip, u16::from_be_bytes([udp[0], udp[1]]));
    let dst = SocketAddrV4::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]]));
    Some((dst_mac, src_mac, src, dst, &udp[UDP_LEN..]))
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = PROTO_UDP;
    p[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_known_ipv4_header() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // A textbook IPv4 header (checksum b861).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&h), 0);
        assert_eq!(internet_checksum(&[0xab]), !0xab00);
    }

    #[test]
    fn frames_carry_addresses_and_valid_checksums() {
        let dst: SocketAddrV4 = "10.0.2.15:2004".parse().unwrap();
        let src: SocketAddrV4 = "10.1.0.7:6666".parse().unwrap();
        for (udp_checksum, src_mac) in [(true, None), (false, Some(MacAddr([2, 1, 2, 3, 4, 5])))] {
            let mut w = FrameWriter::new(FrameConfig {
                dst_mac: MacAddr::QEMU_DEFAULT,
                src_mac,
                dst,
                udp_checksum,
            });
            let payload: Vec<u8> = (0..1413).map(|i| (i * 7) as u8).collect();
            let mut buf = vec![0u8; HEADERS_LEN + payload.len()];
            buf[HEADERS_LEN..].copy_from_slice(&payload);
            let n = w.write(&mut buf, src, payload.len()).unwrap();
            assert_eq!(n, 1455);
            let (dmac, smac, s, d, p) = parse_frame(&buf).unwrap();
            assert_eq!(dmac, MacAddr::QEMU_DEFAULT);
            assert_eq!(smac, src_mac.unwrap_or(MacAddr([2, 0, 10, 1, 0, 7])));
            assert_eq!((s, d), (src, dst));
            assert_eq!(p, &payload[..]);
            assert_eq!(buf[40..42] == [0, 0], !udp_checksum);
            // Second frame gets the next IPv4 id; a corrupted byte fails the checksums.
            w.write(&mut buf, src, payload.len()).unwrap();
            assert_eq!(buf[18..20], [0, 1]);
            buf[30] ^= 1;
            assert!(parse_frame(&buf).is_none());
            buf[30] ^= 1;
            if udp_checksum {
                buf[100] ^= 1;
                assert!(parse_frame(&buf).is_none());
            }
        }
        let mut w = FrameWriter::new(FrameConfig {
            dst_mac: MacAddr::QEMU_DEFAULT,
            src_mac: None,
            dst,
            udp_checksum: true,
        });
        assert_eq!(w.write(&mut [0u8; 50], src, 100), None);
        assert_eq!(w.write(&mut vec![0u8; 70_000], src, 65_600), None);
    }

    #[test]
    fn macs_parse() {
        assert_eq!("52:54:00:12:34:56".parse(), Ok(MacAddr::QEMU_DEFAULT));
        assert_eq!("52-54-00-12-34-56".parse(), Ok(MacAddr::QEMU_DEFAULT));
        assert_eq!(MacAddr::QEMU_DEFAULT.to_string(), "52:54:00:12:34:56");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
