//! `selftest=virtio-echo`: bring up the first virtio-net device, answer ARP for one IPv4
//! address, echo UDP datagrams sent to port 7, count (and drop) those sent to port 9, and
//! print counters on the console every 250 ms while they change.
//!
//! This exercises the real driver end to end under QEMU (tests/tests/virtio_net.rs) without
//! the TCP/IP stack: frames are parsed in place in the receive slot and replies written
//! straight into the transmit slot. Devices are looked for as the board does ([`crate::net::nic::discover`]):
//! virtio-mmio on the command line or in the DSDT first, then on PCI.
//!
//! Command line: `selftest=virtio-echo [selftest.ip=A.B.C.D]` (default 10.0.2.15, the
//! address QEMU's user network gives its guest).
//!
//! Console lines the test reads:
//! - `virtio-echo: ready transport=<pci|mmio-v1|mmio-v2> mac=<mac> ip=<ip> rx_ring=<n> tx_ring=<n>`
//! - `virtio-echo: t_us=<micros> rx=<n> echo=<n> discard=<n> arp=<n> other=<n> ...`
//! - `virtio-echo: no device` / `virtio-echo: bring-up failed: <error>`

#[cfg(all(target_os = "none", not(test)))]
pub use machine::run;

/// The part that drives the machine (bare-metal builds only). Its echo loop also serves the
/// e1000 twin (selftest_e1000.rs).
#[cfg(all(target_os = "none", not(test)))]
pub(crate) mod machine {
    use super::frame;
    use crate::net::nic::{self, AnyNic};
    use crate::platform;
    use crate::println;
    use netoops_nic::{Device, RxToken, TxToken};
    use netoops_virtio_net::{Transport, VirtioNet};

    /// Address answered when the command line names none.
    pub const DEFAULT_IP: [u8; 4] = [10, 0, 2, 15];
    /// Frames handled between two `Device::poll` calls.
    const BURST: usize = 64;
    /// Microseconds between two counter lines.
    pub(crate) const REPORT_INTERVAL_US: u64 = 250_000;

    /// Runs the self-test on the first NIC the board's discovery brings up; never returns.
    pub fn run(cmdline: &str) -> ! {
        let ip = platform::bootinfo::cmdline_param(cmdline, "selftest.ip")
            .and_then(frame::parse_ipv4)
            .unwrap_or(DEFAULT_IP);
        let found = nic::discover(cmdline, |msg| println!("virtio-echo: {msg}"));
        let virtio = found
            .into_iter()
            .find(|f| !matches!(f.nic, AnyNic::E1000(_)));
        let Some(first) = virtio else {
            println!("virtio-echo: no device");
            platform::halt_forever()
        };
        let name = first.nic.transport_name();
        match first.nic {
            AnyNic::VirtioPci(mut net) => serve(&mut net, name, ip),
            AnyNic::VirtioMmio(mut net) => serve(&mut net, name, ip),
            AnyNic::E1000(_) => platform::halt_forever(),
        }
    }

    /// What the echo loop has done.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub(crate) struct Counters {
        pub(crate) rx: u64,
        pub(crate) echo: u64,
        pub(crate) discard: u64,
        pub(crate) arp: u64,
        pub(crate) other: u64,
    }

    /// One pass: up to [`BURST`] frames answered in place (ARP replies, UDP echoes), then
    /// `Device::poll` so the driver reposts and notifies once for the batch. `idle` counts
    /// passes that found nothing: how much slack the guest had (a diagnostic only, kept out of
    /// `Counters` so it does not make the counter lines print while nothing else changes).
    pub(crate) fn echo_burst(
        nic: &mut impl Device,
        me: &frame::Identity,
        c: &mut Counters,
        idle: &mut u64,
    ) {
        for i in 0..BURST {
            let Some((rx, tx)) = nic.receive() else {
                *idle += u64::from(i == 0);
                break;
            };
            c.rx += 1;
            rx.consume(|f| match frame::classify(f, me) {
                frame::Action::ArpReply => {
                    c.arp += 1;
                    tx.consume(frame::ARP_REPLY_LEN, |out| {
                        frame::write_arp_reply(f, me, out)
                    });
                }
                frame::Action::Echo(len) => {
                    c.echo += 1;
                    tx.consume(len, |out| frame::write_udp_echo(f, me, out));
                }
                frame::Action::Discard => c.discard += 1,
                frame::Action::Ignore => c.other += 1,
            });
        }
        nic.poll();
    }

    fn serve<T: Transport>(net: &mut VirtioNet<T>, name: &str, ip: [u8; 4]) -> ! {
        let me = frame::Identity {
            mac: net.hardware_address().0,
            ip,
        };
        let caps = net.capabilities();
        println!(
            "virtio-echo: ready transport={name} mac={} ip={}.{}.{}.{} rx_ring={} tx_ring={}",
            net.hardware_address(),
            ip[0],
            ip[1],
            ip[2],
            ip[3],
            caps.rx_ring_len,
            caps.tx_ring_len
        );
        let mut c = Counters::default();
        let mut reported = c;
        let mut next_report = platform::now_micros() + REPORT_INTERVAL_US;
        let mut idle: u64 = 0;
        loop {
            echo_burst(net, &me, &mut c, &mut idle);
            let now = platform::now_micros();
            if now >= next_report {
                next_report = now + REPORT_INTERVAL_US;
                if c != reported {
                    reported = c;
                    let s = net.driver_stats();
                    println!(
                        "virtio-echo: t_us={now} rx={} echo={} discard={} arp={} other={} tx={} \
                         rx_runt={} rx_oversize={} tx_full={} dev_err={} rx_notify={} tx_notify={} \
                         rx_batches={} idle={idle}",
                        c.rx,
                        c.echo,
                        c.discard,
                        c.arp,
                        c.other,
                        s.tx_frames,
                        s.rx_runt,
                        s.rx_oversize,
                        s.tx_ring_full,
                        s.device_errors,
                        s.rx_notifies,
                        s.tx_notifies,
                        s.rx_batches
                    );
                }
            }
        }
    }
}

/// Frame parsing and reply building, free of the platform so it runs under host tests.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub mod frame {
    /// Our addresses.
    #[derive(Clone, Copy, Debug)]
    pub struct Identity {
        /// Hardware address.
        pub mac: [u8; 6],
        /// IPv4 address.
        pub ip: [u8; 4],
    }

    /// What to do with a received frame.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Action {
        /// An ARP request for our address.
        ArpReply,
        /// A UDP datagram to the echo port; the reply frame has this length.
        Echo(usize),
        /// A UDP datagram to the discard port.
        Discard,
        /// Anything else.
        Ignore,
    }

    /// Echo port (RFC 862).
    pub const ECHO_PORT: u16 = 7;
    /// Discard port (RFC 863).
    pub const DISCARD_PORT: u16 = 9;
    /// ARP reply, padded to the Ethernet minimum (60 bytes without FCS).
    pub const ARP_REPLY_LEN: usize = 60;

    const ETH_HDR: usize = 14;
    const ETHERTYPE_ARP: u16 = 0x0806;
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const IPPROTO_UDP: u8 = 17;

    fn be16(b: &[u8], at: usize) -> u16 {
        match b.get(at..at + 2) {
            Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
            _ => 0,
        }
    }

    /// Parses `A.B.C.D`.
    pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
        let mut out = [0u8; 4];
        let mut parts = s.split('.');
        for o in &mut out {
            *o = parts.next()?.parse().ok()?;
        }
        parts.next().is_none().then_some(out)
    }

    /// Decides what a frame asks for. Never reads past `f`.
    pub fn classify(f: &[u8], me: &Identity) -> Action {
        match be16(f, 12) {
            ETHERTYPE_ARP => {
                let is_request = f.len() >= ETH_HDR + 28
                    && be16(f, 14) == 1
                    && be16(f, 16) == ETHERTYPE_IPV4
                    && f[18] == 6
                    && f[19] == 4
                    && be16(f, 20) == 1
                    && f[38..42] == me.ip;
                if is_request {
                    Action::ArpReply
                } else {
                    Action::Ignore
                }
            }
            ETHERTYPE_IPV4 => classify_ipv4(f, me),
            _ => Action::Ignore,
        }
    }

    fn classify_ipv4(f: &[u8], me: &Identity) -> Action {
        let Some(ip) = f.get(ETH_HDR..) else {
            return Action::Ignore;
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Action::Ignore;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(be16(ip, 2));
        let fragmented = be16(ip, 6) & 0x3fff != 0;
        if ihl < 20
            || total < ihl + 8
            || total > ip.len()
            || fragmented
            || ip[9] != IPPROTO_UDP
            || ip[16..20] != me.ip
        {
            return Action::Ignore;
        }
        let udp_len = usize::from(be16(ip, ihl + 4));
        if udp_len < 8 || udp_len > total - ihl {
            return Action::Ignore;
        }
        match be16(ip, ihl + 2) {
            ECHO_PORT => Action::Echo(ETH_HDR + total),
            DISCARD_PORT => Action::Discard,
            _ => Action::Ignore,
        }
    }

    /// Writes the ARP reply to request `f` (already classified) into `out`.
    pub fn write_arp_reply(f: &[u8], me: &Identity, out: &mut [u8]) {
        if f.len() < ETH_HDR + 28 || out.len() < ARP_REPLY_LEN {
            return;
        }
        out.fill(0);
        let requester_mac = &f[22..28];
        let requester_ip = &f[28..32];
        out[0..6].copy_from_slice(requester_mac);
        out[6..12].copy_from_slice(&me.mac);
        out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        out[14..20].copy_from_slice(&f[14..20]); // htype, ptype, hlen, plen
        out[20..22].copy_from_slice(&2u16.to_be_bytes());
        out[22..28].copy_from_slice(&me.mac);
        out[28..32].copy_from_slice(&me.ip);
        out[32..38].copy_from_slice(requester_mac);
        out[38..42].copy_from_slice(requester_ip);
    }

    /// Writes the echo of UDP frame `f` (already classified, `out.len()` from
    /// [`Action::Echo`]) into `out`: addresses and ports swapped, payload unchanged. The IP
    /// and UDP checksums stay valid because a swap does not change a one's-complement sum.
    pub fn write_udp_echo(f: &[u8], me: &Identity, out: &mut [u8]) {
        let n = out.len();
        let Some(src) = f.get(..n) else {
            return;
        };
        if n < ETH_HDR + 28 {
            return;
        }
        out.copy_from_slice(src);
        out[0..6].copy_from_slice(&f[6..12]);
        out[6..12].copy_from_slice(&me.mac);
        let ip = ETH_HDR;
        out[ip + 12..ip + 16].copy_from_slice(&f[ip + 16..ip + 20]);
        out[ip + 16..ip + 20].copy_from_slice(&f[ip + 12..ip + 16]);
        let udp = ip + usize::from(f[ip] & 0xf) * 4;
        if udp + 4 <= n {
            out[udp..udp + 2].copy_from_slice(&f[udp + 2..udp + 4]);
            out[udp + 2..udp + 4].copy_from_slice(&f[udp..udp + 2]);
        }
    }

    #[cfg(test)]
    mod tests {
        extern crate std;
        use super::*;
        use std::vec::Vec;

        const ME: Identity = Identity {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            ip: [10, 0, 2, 15],
        };
        const PEER_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
        const PEER_IP: [u8; 4] = [10, 0, 2, 2];

        fn checksum(b: &[u8]) -> u16 {
            let mut sum = 0u32;
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        }

        fn udp_frame(dst_port: u16, payload: &[u8]) -> Vec<u8> {
            let mut f = Vec::new();
            f.extend_from_slice(&ME.mac);
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + 8 + payload.len();
            let mut ip = std::vec![0x45, 0];
            ip.extend_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&PEER_IP);
            ip.extend_from_slice(&ME.ip);
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut udp = Vec::new();
            udp.extend_from_slice(&40000u16.to_be_bytes());
            udp.extend_from_slice(&dst_port.to_be_bytes());
            udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(payload);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&PEER_IP);
            pseudo.extend_from_slice(&ME.ip);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            pseudo.extend_from_slice(&udp);
            let c = checksum(&pseudo);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&udp);
            f
        }

        #[test]
        fn echo_swaps_addresses_and_keeps_checksums_valid() {
            let f = udp_frame(ECHO_PORT, b"hello netoops");
            let Action::Echo(len) = classify(&f, &ME) else {
                panic!("not an echo: {:?}", classify(&f, &ME));
            };
            assert_eq!(len, f.len());
            let mut out = std::vec![0u8; len];
            write_udp_echo(&f, &ME, &mut out);
            assert_eq!(&out[0..6], &PEER_MAC);
            assert_eq!(&out[6..12], &ME.mac);
            assert_eq!(&out[26..30], &ME.ip);
            assert_eq!(&out[30..34], &PEER_IP);
            assert_eq!(&out[34..36], &ECHO_PORT.to_be_bytes());
            assert_eq!(&out[36..38], &40000u16.to_be_bytes());
            assert_eq!(&out[42..], b"hello netoops");
            assert_eq!(checksum(&out[14..34]), 0, "IP header checksum");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&out[26..34]);
            pseudo.extend_from_slice(&[0, 17, 0, 21]);
            pseudo.extend_from_slice(&out[34..]);
            assert_eq!(checksum(&pseudo), 0, "UDP checksum");
        }

        #[test]
        fn arp_requests_for_us_get_a_reply() {
            let mut f = std::vec![0xff; 6];
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&PEER_IP);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&ME.ip);
            assert_eq!(classify(&f, &ME), Action::ArpReply);
            let mut out = [0u8; ARP_REPLY_LEN];
            write_arp_reply(&f, &ME, &mut out);
            assert_eq!(&out[0..6], &PEER_MAC);
            assert_eq!(&out[20..22], &[0, 2]);
            assert_eq!(&out[22..28], &ME.mac);
            assert_eq!(&out[28..32], &ME.ip);
            assert_eq!(&out[38..42], &PEER_IP);
            f[41] = 99;
            assert_eq!(classify(&f, &ME), Action::Ignore, "someone else's address");
        }

        #[test]
        fn malformed_and_foreign_frames_are_ignored() {
            let good = udp_frame(ECHO_PORT, b"x");
            assert_eq!(
                classify(&udp_frame(DISCARD_PORT, b"x"), &ME),
                Action::Discard
            );
            assert_eq!(classify(&udp_frame(53, b"x"), &ME), Action::Ignore);
            for cut in 0..good.len() {
                let a = classify(&good[..cut], &ME);
                assert_eq!(a, Action::Ignore, "truncated to {cut}");
            }
            let mut frag = good.clone();
            frag[20] = 0x20; // more fragments
            assert_eq!(classify(&frag, &ME), Action::Ignore);
            let mut bad_len = good.clone();
            bad_len[38..40].copy_from_slice(&500u16.to_be_bytes());
            assert_eq!(classify(&bad_len, &ME), Action::Ignore);
            assert_eq!(parse_ipv4("192.168.1.7"), Some([192, 168, 1, 7]));
            assert_eq!(parse_ipv4("1.2.3"), None);
            assert_eq!(parse_ipv4("1.2.3.4.5"), None);
            assert_eq!(parse_ipv4("1.2.3.256"), None);
        }
    }
}
