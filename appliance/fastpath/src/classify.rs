//! Frame classification: decides, in place in the receive slot, whether a frame is a
//! netoops (or netconsole) datagram for us, and where its payload is.
//!
//! [`classify`] runs on every frame of the ingress NIC before the TCP/IP stack sees it. A UDP
//! datagram to the listen port goes straight from the receive ring to
//! `Relay::handle_datagram` without a socket or a copy; everything else goes to the stack.
//! Datagrams to the listen port that cannot be netoops traffic for us are dropped here and
//! counted by reason ([`FastDrop`]), never silently:
//!
//! - the IPv4 header checksum is wrong (checked for every UDP frame);
//! - the packet is a fragment (netoops datagrams fit one frame; the stack does not
//!   reassemble either, so any UDP fragment is dropped and counted here);
//! - the destination is neither our address nor a broadcast address;
//! - the IP or UDP lengths disagree with the frame;
//! - a non-zero UDP checksum is wrong.
//!
//! [`classify`] reads only inside the frame it is given and never panics, whatever the bytes.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::Range;

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;
const UDP_HDR: usize = 8;

/// What the fast path needs to know about us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Our address.
    pub ip: Ipv4Addr,
    /// The directed broadcast address of our subnet (accepted like our own address).
    pub subnet_broadcast: Ipv4Addr,
    /// UDP port netoops senders target.
    pub port: u16,
    /// UDP port netconsole senders target; 0 = off.
    pub netconsole_port: u16,
}

impl Identity {
    /// The identity of address `ip/prefix` listening on `port`.
    pub fn new(ip: Ipv4Addr, prefix: u8, port: u16) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0);
        let subnet_broadcast = Ipv4Addr::from(u32::from(ip) | !mask);
        Self {
            ip,
            subnet_broadcast,
            port,
            netconsole_port: 0,
        }
    }

    /// The same identity, also listening for netconsole on `port` (0 = off).
    pub fn with_netconsole(self, port: u16) -> Self {
        Self {
            netconsole_port: port,
            ..self
        }
    }

    /// Whether a UDP destination port is one of ours.
    fn listens(&self, port: u16) -> bool {
        port == self.port || (self.netconsole_port != 0 && port == self.netconsole_port)
    }

    fn accepts(&self, dst: Ipv4Addr) -> bool {
        dst == self.ip || dst == Ipv4Addr::BROADCAST || dst == self.subnet_broadcast
    }
}

/// Why the fast path dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastDrop {
    /// IPv4 header checksum mismatch.
    BadIpChecksum,
    /// An IPv4 UDP fragment.
    Fragment,
    /// UDP to the listen port, addressed to another host.
    WrongDestination,
    /// IP total length or UDP length inconsistent with the frame.
    Malformed,
    /// UDP checksum mismatch.
    BadUdpChecksum,
}

/// The fast path's decision for one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// A UDP datagram to the listen port for us.
    Netoops {
        /// Sender address and port.
        source: SocketAddrV4,
        /// Where the UDP payload lies in the frame.
        payload: Range<usize>,
    },
    /// A UDP datagram to the netconsole port for us.
    Netconsole {
        /// Sender address and port.
        source: SocketAddrV4,
        /// Where the UDP payload lies in the frame.
        payload: Range<usize>,
    },
    /// Dropped and to be counted.
    Drop(FastDrop),
    /// Not ours: hand it to the TCP/IP stack.
    Stack,
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Adds `data` to a running one's-complement sum (RFC 1071), 32 bits at a time into a
/// 64-bit accumulator; fold with [`fold`]. An odd trailing byte is padded with zero.
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a [`checksum_add`] accumulator to 16 bits with end-around carries.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Classifies one Ethernet frame (header included). See the module documentation.
pub fn classify(frame: &[u8], me: &Identity) -> Classified {
    if frame.get(12..14) != Some(&ETHERTYPE_IPV4[..]) {
        return Classified::Stack;
    }
    let ip = &frame[ETH_HDR.min(frame.len())..];
    let Some(&ver_ihl) = ip.first() else {
        return Classified::Stack;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || ip.len() < ihl || ip[9] != IPPROTO_UDP {
        return Classified::Stack;
    }
    let header = &ip[..ihl];
    if fold(checksum_add(0, header)) != 0xffff {
        return Classified::Drop(FastDrop::BadIpChecksum);
    }
    // More-fragments flag or a non-zero offset.
    if be16(header, 6) & 0x3fff != 0 {
        return Classified::Drop(FastDrop::Fragment);
    }
    let total = usize::from(be16(header, 2));
    if total < ihl + UDP_HDR || total > ip.len() {
        // Cannot even read the port reliably: only ours if it names our port.
        return if me.listens(be16(ip, ihl + 2)) {
            Classified::Drop(FastDrop::Malformed)
        } else {
            Classified::Stack
        };
    }
    let udp = &ip[ihl..total];
    let dst_port = be16(udp, 2);
    if !me.listens(dst_port) {
        return Classified::Stack;
    }
    let dst = ipv4_at(header, 16);
    if !me.accepts(dst) {
        return Classified::Drop(FastDrop::WrongDestination);
    }
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HDR || udp_len > udp.len() {
        return Classified::Drop(FastDrop::Malformed);
    }
    let udp = &udp[..udp_len];
    if be16(udp, 6) != 0 {
        // Pseudo header: source, destination, zero, protocol, UDP length.
        let mut sum = checksum_add(0, &header[12..20]);
        sum += u64::from(IPPROTO_UDP) + udp_len as u64;
        if fold(checksum_add(sum, udp)) != 0xffff {
            return Classified::Drop(FastDrop::BadUdpChecksum);
        }
    }
    let start = ETH_HDR + ihl + UDP_HDR;
    let source = SocketAddrV4::new(ipv4_at(header, 12), be16(udp, 0));
    let payload = start..ETH_HDR + ihl + udp_len;
    if dst_port == me.port {
        Classified::Netoops { source, payload }
    } else {
        Classified::Netconsole { source, payload }
    }
}

/// What the fast path has done since boot; drops are counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Frames taken from the ingress ring.
    pub frames: u64,
    /// Datagrams handed to the relay.
    pub datagrams: u64,
    /// Of those, accepted by the relay.
    pub accepted: u64,
    /// Of those, dropped by the relay (allowlist, malformed netoops, memory); the relay
    /// counts them by reason.
    pub relay_dropped: u64,
    /// Frames passed to the TCP/IP stack.
    pub to_stack: u64,
    /// Dropped: IPv4 header checksum.
    pub bad_ip_checksum: u64,
    /// Dropped: fragments.
    pub fragments: u64,
    /// Dropped: addressed to another host.
    pub wrong_dst: u64,
    /// Dropped: lengths inconsistent.
    pub malformed: u64,
    /// Dropped: UDP checksum.
    pub bad_udp_checksum: u64,
    /// TSC cycles from taking an RX token to `handle_datagram` returning, summed.
    pub cycles: u64,
    /// Datagrams measured in `cycles`.
    pub cycles_samples: u64,
    /// TSC value when the relay first accepted a datagram (0: not yet).
    pub first_accept_tsc: u64,
}

impl FastPathStats {
    /// Counts one drop.
    pub fn count_drop(&mut self, reason: FastDrop) {
        let c = match reason {
            FastDrop::BadIpChecksum => &mut self.bad_ip_checksum,
            FastDrop::Fragment => &mut self.fragments,
            FastDrop::WrongDestination => &mut self.wrong_dst,
            FastDrop::Malformed => &mut self.malformed,
            FastDrop::BadUdpChecksum => &mut self.bad_udp_checksum,
        };
        *c += 1;
    }

    /// All fast-path drops.
    pub fn drops(&self) -> u64 {
        self.bad_ip_checksum
            + self.fragments
            + self.wrong_dst
            + self.malformed
            + self.bad_udp_checksum
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const ME: [u8; 4] = [10, 0, 2, 15];
    const PEER: [u8; 4] = [10, 0, 2, 2];

    fn me() -> Identity {
        Identity::new(Ipv4Addr::from(ME), 24, 2004)
    }

    fn csum(b: &[u8]) -> u16 {
        !fold(checksum_add(0, b))
    }

    /// A valid Ethernet/IPv4/UDP frame; `udp_checksum` false leaves it zero.
    fn frame(dst: [u8; 4], dst_port: u16, payload: &[u8], udp_checksum: bool) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 2, 8, 0]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = std::vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&PEER);
        ip.extend_from_slice(&dst);
        let c = csum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp_len = (8 + payload.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&6666u16.to_be_bytes());
        udp.extend_from_slice(&dst_port.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        if udp_checksum {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&PEER);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            pseudo.extend_from_slice(&udp);
            let c = match csum(&pseudo) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f
    }

    fn fix_ip_checksum(f: &mut [u8]) {
        f[24..26].fill(0);
        let c = csum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn netoops_datagrams_are_found_in_place() {
        let payload: Vec<u8> = (0..1412u32).map(|i| i as u8).collect();
        for with_checksum in [true, false] {
            let mut f = frame(ME, 2004, &payload, with_checksum);
            f.extend_from_slice(&[0xee; 6]); // Ethernet padding after the datagram
            let Classified::Netoops { source, payload: r } = classify(&f, &me()) else {
                panic!("not netoops: {:?}", classify(&f, &me()));
            };
            assert_eq!(source, SocketAddrV4::new(Ipv4Addr::from(PEER), 6666));
            assert_eq!(&f[r], &payload[..]);
        }
        // Odd payload lengths exercise the checksum's padding.
        for len in [0, 1, 3, 1241] {
            let f = frame(ME, 2004, &std::vec![0xa5; len], true);
            assert!(
                matches!(classify(&f, &me()), Classified::Netoops { .. }),
                "{len}"
            );
        }
        // Broadcasts are ours too.
        for dst in [[255; 4], [10, 0, 2, 255]] {
            let f = frame(dst, 2004, b"x", true);
            assert!(matches!(classify(&f, &me()), Classified::Netoops { .. }));
        }
    }

    #[test]
    fn netconsole_datagrams_are_found_in_place_when_the_port_is_on() {
        let payload = b"6,1,2,-;hello\n";
        let f = frame(ME, 6666, payload, true);
        assert_eq!(classify(&f, &me()), Classified::Stack);
        let nc = me().with_netconsole(6666);
        match classify(&f, &nc) {
            Classified::Netconsole { source, payload: p } => {
                assert_eq!(source.port(), 6666);
                assert_eq!(&f[p], payload);
            }
            other => panic!("{other:?}"),
        }
        // The netoops port still classifies as netoops.
        let f = frame(ME, 2004, payload, true);
        assert!(matches!(classify(&f, &nc), Classified::Netoops { .. }));
    }

    #[test]
    fn other_traffic_goes_to_the_stack() {
        assert_eq!(
            classify(&frame(ME, 53, b"x", true), &me()),
            Classified::Stack
        );
        let mut tcp = frame(ME, 2004, b"x", false);
        tcp[23] = 6;
        fix_ip_checksum(&mut tcp);
        assert_eq!(classify(&tcp, &me()), Classified::Stack);
        let mut arp = frame(ME, 2004, b"x", false);
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(classify(&arp, &me()), Classified::Stack);
        assert_eq!(classify(&[], &me()), Classified::Stack);
    }

    #[test]
    fn bad_datagrams_are_dropped_by_reason() {
        let good = frame(ME, 2004, b"netoops", true);
        let mut bad_ip = good.clone();
        bad_ip[22] = 1; // TTL changed, checksum not
        assert_eq!(
            classify(&bad_ip, &me()),
            Classified::Drop(FastDrop::BadIpChecksum)
        );

        let mut frag = good.clone();
        frag[20] = 0x20; // more fragments
        fix_ip_checksum(&mut frag);
        assert_eq!(classify(&frag, &me()), Classified::Drop(FastDrop::Fragment));
        let mut later = good.clone();
        later[21] = 0x10; // offset 16 * 8
        fix_ip_checksum(&mut later);
        assert_eq!(
            classify(&later, &me()),
            Classified::Drop(FastDrop::Fragment)
        );

        let other = frame([10, 0, 2, 99], 2004, b"netoops", true);
        assert_eq!(
            classify(&other, &me()),
            Classified::Drop(FastDrop::WrongDestination)
        );

        let mut bad_udp = good.clone();
        let last = bad_udp.len() - 1;
        bad_udp[last] ^= 0xff;
        assert_eq!(
            classify(&bad_udp, &me()),
            Classified::Drop(FastDrop::BadUdpChecksum)
        );

        let mut long_udp = good.clone();
        long_udp[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            classify(&long_udp, &me()),
            Classified::Drop(FastDrop::Malformed)
        );

        let mut truncated = good.clone();
        truncated.truncate(good.len() - 3); // IP total length now exceeds the frame
        assert_eq!(
            classify(&truncated, &me()),
            Classified::Drop(FastDrop::Malformed)
        );
    }

    #[test]
    fn never_reads_outside_the_frame() {
        let good = frame(ME, 2004, &[7; 64], true);
        for cut in 0..good.len() {
            let _ = classify(&good[..cut], &me());
        }
        // Every single-byte corruption still yields a verdict without panicking, and none
        // of them is mistaken for a valid datagram with a different payload.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut f = good.clone();
                f[i] ^= 1 << bit;
                if let Classified::Netoops { payload, .. } = classify(&f, &me()) {
                    assert!(payload.end <= f.len());
                }
            }
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(checksum_add(0, &data)), 0xddf2);
        assert_eq!(
            fold(checksum_add(checksum_add(0, &data[..4]), &data[4..])),
            0xddf2
        );
    }

    #[test]
    fn stats_count_drops_by_reason() {
        let mut s = FastPathStats::default();
        s.count_drop(FastDrop::Fragment);
        s.count_drop(FastDrop::Fragment);
        s.count_drop(FastDrop::BadUdpChecksum);
        assert_eq!((s.fragments, s.bad_udp_checksum, s.drops()), (2, 1, 3));
    }
}
