//! The driver echo suites' shared half (`tests/tests/virtio_net.rs`, `tests/tests/e1000.rs`):
//! the appliance image booted into one of its echo self-tests (`selftest=virtio-echo`,
//! `selftest=e1000-echo`), the self-test's counter lines, and the raw frames the suites
//! send it and check it sends back.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// QEMU's default MAC for the first NIC, and the address the self-test answers.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The self-test's IPv4 address.
pub const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
/// The host side of raw-frame links.
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The host side's IPv4 address.
pub const PEER_IP: [u8; 4] = [10, 0, 2, 2];
/// UDP port the self-test echoes.
pub const ECHO_PORT: u16 = 7;
/// UDP port the self-test counts and drops.
pub const DISCARD_PORT: u16 = 9;
/// netoops v3 datagram with the user blob: the largest the relay sees.
pub const NETOOPS_V3_BLOB_LEN: usize = 1412;

/// A VM running an echo self-test, its console lines collected as they arrive.
pub struct EchoVm {
    /// `virtio-echo` or `e1000-echo`: the `selftest=` value and the console prefix.
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl EchoVm {
    /// Boots the appliance image with `selftest=<name>` on `machine` (e.g. `q35`,
    /// `microvm,acpi=off`) with one NIC.
    pub fn boot(
        name: &'static str,
        machine: &str,
        extra: &[&str],
        netdev: &str,
        device: &str,
    ) -> Self {
        crate::appliance::require_qemu();
        let kernel = crate::appliance::image();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", machine, "-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-display", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-kernel"])
            .arg(kernel)
            .args(["-append", &format!("selftest={name}")])
            .args(extra)
            .args(["-netdev", netdev, "-device", device])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !extra.contains(&"-monitor") {
            cmd.args(["-monitor", "none"]);
        }
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped stderr")),
        ] {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.trim_end().to_string());
                }
            });
        }
        Self { name, child, lines }
    }

    /// The console so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a console line matching `pred`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; console:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `ready` line and returns it; fails fast on any other outcome.
    pub fn ready(&self) -> String {
        let prefix = format!("{}: ", self.name);
        let line = self.wait_for(
            &format!("{} ready", self.name),
            Duration::from_secs(30),
            |l| {
                l.starts_with(&prefix)
                    || l.contains("PANIC")
                    || l.starts_with("selftest: unknown")
                    || l.starts_with("board:")
            },
        );
        assert!(
            line.starts_with(&format!("{}: ready", self.name)),
            "the self-test did not start (a kernel without it wired into kmain goes on to the \
             board or says `selftest: unknown`); console:\n{}",
            self.log()
        );
        line
    }

    /// Waits until the guest's counters satisfy `pred` and returns them.
    pub fn counters(&self, timeout: Duration, pred: impl Fn(&Counters) -> bool) -> Counters {
        let line = self.wait_for("counters", timeout, |l| {
            Counters::parse(self.name, l).is_some_and(|c| pred(&c))
        });
        Counters::parse(self.name, &line).expect("parsed above")
    }

    /// Every counter line so far, in order.
    pub fn all_counters(&self) -> Vec<Counters> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| Counters::parse(self.name, l))
            .collect()
    }
}

impl Drop for EchoVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `<name>: t_us=... rx=...` line. Fields a driver does not print stay 0: `rx_notify` and
/// `rx_batches` are virtio-net's, `other` to `tdt_writes` the e1000 driver's.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub t_us: u64,
    pub rx: u64,
    pub echo: u64,
    pub discard: u64,
    pub arp: u64,
    pub other: u64,
    pub tx: u64,
    pub rx_err: u64,
    pub rx_runt: u64,
    pub rx_oversize: u64,
    pub dev_err: u64,
    pub rx_notify: u64,
    pub rx_batches: u64,
    pub missed: u64,
    pub hw_oversize: u64,
    pub tx_full: u64,
    pub rdt_writes: u64,
    pub tdt_writes: u64,
    pub idle: u64,
}

impl Counters {
    /// The counters of a `<name>: t_us=` line, or `None` for any other line.
    pub fn parse(name: &str, line: &str) -> Option<Self> {
        let rest = line.strip_prefix(name)?.strip_prefix(": ")?;
        if !rest.starts_with("t_us=") {
            return None;
        }
        let mut c = Counters::default();
        for (key, v) in netoops_core::console::fields(rest) {
            match key {
                "t_us" => c.t_us = v,
                "rx" => c.rx = v,
                "echo" => c.echo = v,
                "discard" => c.discard = v,
                "arp" => c.arp = v,
                "other" => c.other = v,
                "tx" => c.tx = v,
                "rx_err" => c.rx_err = v,
                "rx_runt" => c.rx_runt = v,
                "rx_oversize" => c.rx_oversize = v,
                "dev_err" => c.dev_err = v,
                "rx_notify" => c.rx_notify = v,
                "rx_batches" => c.rx_batches = v,
                "missed" => c.missed = v,
                "hw_oversize" => c.hw_oversize = v,
                "tx_full" => c.tx_full = v,
                "rdt_writes" => c.rdt_writes = v,
                "tdt_writes" => c.tdt_writes = v,
                "idle" => c.idle = v,
                _ => {}
            }
        }
        Some(c)
    }

    /// Frames the driver dropped or the device reported bad.
    pub fn driver_drops(&self) -> u64 {
        self.rx_err + self.rx_runt + self.rx_oversize + self.dev_err
    }
}

/// The Internet checksum over `parts`, concatenated.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for c in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from the peer to `dst_mac`, checksums filled in.
pub fn udp_frame_to(dst_mac: [u8; 6], dst_port: u16, src_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&PEER_IP);
    ip.extend_from_slice(&GUEST_IP);
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src_port.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&PEER_IP);
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let c = checksum(&[&pseudo, &udp]);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// An Ethernet/IPv4/UDP frame from the peer to the guest, checksums filled in.
pub fn udp_frame(dst_port: u16, src_port: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame_to(GUEST_MAC, dst_port, src_port, payload)
}

/// The peer's ARP request for the guest's address.
pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&PEER_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GUEST_IP);
    f
}

/// Checks that `reply` is the guest's echo of `sent` (a frame from [`udp_frame`]).
pub fn assert_echo_of(sent: &[u8], reply: &[u8]) {
    assert_eq!(reply.len(), sent.len(), "echo length");
    assert_eq!(&reply[0..6], &PEER_MAC, "destination MAC");
    assert_eq!(&reply[6..12], &GUEST_MAC, "source MAC");
    assert_eq!(&reply[26..30], &GUEST_IP, "source IP");
    assert_eq!(&reply[30..34], &PEER_IP, "destination IP");
    assert_eq!(&reply[34..36], &sent[36..38], "source port");
    assert_eq!(&reply[36..38], &sent[34..36], "destination port");
    assert_eq!(&reply[42..], &sent[42..], "payload");
    assert_eq!(checksum(&[&reply[14..34]]), 0, "IP header checksum");
    let udp = &reply[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&reply[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    assert_eq!(checksum(&[&pseudo, udp]), 0, "UDP checksum");
}

/// [`assert_echo_of`] for a NIC that may pad: frames shorter than 60 bytes may come back
/// padded to 60 (TCTL.PSP on e1000 hardware; QEMU does not pad), and the padding is not part
/// of the datagram.
pub fn assert_maybe_padded_echo_of(sent: &[u8], reply: &[u8]) {
    let padded = sent.len() < 60 && reply.len() == 60;
    assert!(
        reply.len() == sent.len() || padded,
        "echo length {} for {}",
        reply.len(),
        sent.len()
    );
    assert_echo_of(sent, &reply[..sent.len()]);
}

/// Asks the guest for its MAC address over the raw link `host` -> `to` and checks the reply.
pub fn assert_arp_reply(host: &UdpSocket, to: (&str, u16)) {
    let mut buf = [0u8; 4096];
    host.send_to(&arp_request(), to).unwrap();
    let n = host.recv(&mut buf).expect("ARP reply");
    let r = &buf[..n];
    assert_eq!(&r[0..6], &PEER_MAC);
    assert_eq!(&r[12..14], &[0x08, 0x06]);
    assert_eq!(&r[20..22], &[0, 2], "ARP reply opcode");
    assert_eq!(&r[22..28], &GUEST_MAC);
    assert_eq!(&r[28..32], &GUEST_IP);
}

/// Echo of every UDP payload size a 1514-byte frame can carry, 16 frames in flight at a
/// time, each reply checked against its frame by `check` ([`assert_echo_of`] or
/// [`assert_maybe_padded_echo_of`]).
pub fn echo_every_payload_size(host: &UdpSocket, to: (&str, u16), check: fn(&[u8], &[u8])) {
    let mut buf = [0u8; 4096];
    let sizes: Vec<usize> = (0..=1472).collect();
    for chunk in sizes.chunks(16) {
        let frames: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&len| {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
                udp_frame(ECHO_PORT, 40000 + len as u16, &payload)
            })
            .collect();
        for f in &frames {
            host.send_to(f, to).unwrap();
        }
        for f in &frames {
            let n = host.recv(&mut buf).expect("echo");
            check(f, &buf[..n]);
        }
    }
}
