//! The crash storm of issue 2, pre-encoded: machines crash at once and send their logs in
//! rounds of 1412-byte v3 datagrams (user blob variant), interleaved packet by packet across
//! machines; every round is byte-identical, so rounds replay one encoded round.
//!
//! [`Storm`] holds the datagrams (the criterion bench `benches/reassembly.rs` feeds them to the
//! reassembler); [`FrameStorm`] wraps each in Ethernet, IPv4 and UDP headers (checksums
//! filled in, as netpoll senders do) for the native receive-path benchmark, built once so no
//! measured loop pays for frame construction.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use netoops_image::frame::{FrameConfig, FrameWriter, MacAddr, HEADERS_LEN};
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};
use netoops_wire::DATA_LEN;

/// Bytes between datagram starts in [`Storm`]: one v3 datagram with a full chunk.
pub const STRIDE: usize = 1412;

/// One round of the storm, pre-encoded.
pub struct Storm {
    datagrams: Vec<u8>,
    lens: Vec<u16>,
    sources: Vec<SocketAddr>,
    machines: usize,
}

impl Storm {
    /// `machines` machines, each with a `log_bytes` log (issue 2: 1,000 and 128 KiB).
    pub fn new(machines: usize, log_bytes: usize) -> Self {
        // A split inside a chunk makes one more packet than the log needs.
        let per_machine = log_bytes.div_ceil(DATA_LEN) + 1;
        let mut datagrams = vec![0u8; machines * per_machine * STRIDE];
        let mut lens = Vec::with_capacity(machines * per_machine);
        let mut sources = Vec::with_capacity(machines * per_machine);
        let logs: Vec<Vec<u8>> = (0..machines)
            .map(|m| {
                (0..log_bytes)
                    .map(|i| {
                        if i % 80 == 79 {
                            b'\n'
                        } else {
                            b' ' + ((i + m) % 90) as u8
                        }
                    })
                    .collect()
            })
            .collect();
        let mut k = 0;
        for p in 0..per_machine as u32 {
            for (m, log) in logs.iter().enumerate() {
                // s1/s2 split at a machine-specific point, as ring buffers wrap anywhere.
                let split = (m * 7919) % log_bytes.max(1);
                let model = SenderModel::new(&log[..split], &log[split..]);
                if p >= model.packet_count() {
                    continue;
                }
                let mut h = DumpHeader::new(Variant::V3X86_64Blob, m as u16, "6.1.0-storm");
                h.boot_id = m as u32;
                let out = &mut datagrams[k * STRIDE..(k + 1) * STRIDE];
                let n = encode(&h, model.packet_count(), p, &model.chunk(p), out).expect("fits");
                lens.push(n as u16);
                sources.push(SocketAddr::from((
                    [
                        10,
                        1 + (m / 65536) as u8,
                        (m / 256 % 256) as u8,
                        (m % 256) as u8,
                    ],
                    6666,
                )));
                k += 1;
            }
        }
        datagrams.truncate(k * STRIDE);
        Storm {
            datagrams,
            lens,
            sources,
            machines,
        }
    }

    /// Crashing machines.
    pub fn machines(&self) -> usize {
        self.machines
    }

    /// Datagrams in one round.
    pub fn packets_per_round(&self) -> usize {
        self.sources.len()
    }

    /// Datagram `i` of the round.
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.datagrams[i * STRIDE..i * STRIDE + usize::from(self.lens[i])]
    }

    /// The sender of datagram `i`.
    pub fn source(&self, i: usize) -> SocketAddr {
        self.sources[i]
    }
}

/// Bytes between frame starts in [`FrameStorm`]: a whole number of cache lines.
pub const FRAME_STRIDE: usize = 1472;

/// The receiver the frames are addressed to: the relay's address, port and MAC.
#[derive(Clone, Copy, Debug)]
pub struct Receiver {
    /// Address and netoops port.
    pub addr: SocketAddrV4,
    /// The ingress NIC's MAC.
    pub mac: [u8; 6],
}

impl Receiver {
    /// 10.0.2.15:2004 behind QEMU's default MAC, as in the image's tests.
    pub fn default_relay() -> Self {
        Self {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 2004),
            mac: MacAddr::QEMU_DEFAULT.0,
        }
    }
}

/// One round of the storm as Ethernet frames, back to back at [`FRAME_STRIDE`].
pub struct FrameStorm {
    frames: Vec<u8>,
    lens: Vec<u16>,
    machines: usize,
}

impl FrameStorm {
    /// Frames around every datagram of `storm`, to `to`, from one router MAC, with UDP
    /// checksums.
    pub fn new(storm: &Storm, to: Receiver) -> Self {
        let n = storm.packets_per_round();
        let mut frames = vec![0u8; n * FRAME_STRIDE];
        let mut lens = Vec::with_capacity(n);
        let mut writer = FrameWriter::new(FrameConfig {
            dst_mac: MacAddr(to.mac),
            src_mac: Some(MacAddr([0x02, 0, 0, 0, 0, 0x02])),
            dst: to.addr,
            udp_checksum: true,
        });
        for i in 0..n {
            let d = storm.datagram(i);
            let buf = &mut frames[i * FRAME_STRIDE..(i + 1) * FRAME_STRIDE];
            buf[HEADERS_LEN..HEADERS_LEN + d.len()].copy_from_slice(d);
            let SocketAddr::V4(src) = storm.source(i) else {
                unreachable!("the storm's senders are IPv4")
            };
            let len = writer
                .write(buf, src, d.len())
                .expect("a datagram fits a frame");
            lens.push(len as u16);
        }
        Self {
            frames,
            lens,
            machines: storm.machines(),
        }
    }

    /// Crashing machines.
    pub fn machines(&self) -> usize {
        self.machines
    }

    /// Frames in one round.
    pub fn per_round(&self) -> usize {
        self.lens.len()
    }

    /// Frame `i` of the round.
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.frames[i * FRAME_STRIDE..i * FRAME_STRIDE + usize::from(self.lens[i])]
    }
}
