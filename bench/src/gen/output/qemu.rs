//! Raw Ethernet frames into QEMU's socket netdevs, bypassing any host network stack.
//!
//! - [`DgramOutput`] for `-netdev dgram,local.type=inet,local.host=H,local.port=P,...`: each
//!   UDP datagram to `H:P` carries one frame (batched with `sendmmsg`).
//! - [`StreamOutput`] for `-netdev stream`: one TCP connection, each frame preceded by its
//!   length as a 4-byte big-endian integer. Either QEMU is the server
//!   (`server=on,addr.type=inet,addr.host=H,addr.port=P`, [`StreamOutput::connect`]) or the
//!   generator is (`server=off,...`, [`StreamOutput::accept`]); the latter avoids a QEMU 7.2
//!   crash when the guest transmits before a client has connected to a stream server.
//!
//! Frames go out exactly as [`FrameWriter`] builds them (headers written into the batch slot's
//! headroom). Whatever the guest transmits back is read on a side thread and counted, so the
//! guest's transmit path never backs up into QEMU while the generator runs.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::frame::{FrameConfig, FrameWriter};
use super::inflight::{Answers, InFlight, InFlightBound, Step};
use super::{mmsg, write_frames, Batch, Output, MAX_BATCH, PREFIX_LEN};

/// Counts what the other side sends back, on a thread of its own.
struct Drain {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// How often the drain thread checks whether to stop.
const DRAIN_POLL: Duration = Duration::from_millis(100);

impl Drain {
    /// Starts `read` in a loop; it returns `Ok(Some((frames, bytes)))` per read, `Ok(None)` on
    /// a timeout, `Err` when the peer is gone.
    fn spawn(
        mut read: impl FnMut(&mut [u8]) -> io::Result<Option<(u64, u64)>> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, f, b) = (stop.clone(), frames.clone(), bytes.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                match read(&mut buf) {
                    Ok(Some((nf, nb))) => {
                        f.fetch_add(nf, Ordering::Relaxed);
                        b.fetch_add(nb, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        });
        Self {
            stop,
            frames,
            bytes,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Frames to a QEMU `-netdev dgram` socket, one per UDP datagram.
pub struct DgramOutput {
    socket: UdpSocket,
    remote: SocketAddrV4,
    frames: FrameWriter,
    drain: Drain,
}

impl DgramOutput {
    /// Sends to QEMU's `local` address `remote`, from `bind` (QEMU's `remote` address, where
    /// the guest's frames arrive) or any loopback port.
    pub fn new(
        remote: SocketAddrV4,
        bind: Option<SocketAddrV4>,
        frames: FrameConfig,
    ) -> io::Result<Self> {
        let local = bind.unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let _ = socket.set_send_buffer_size(8 << 20);
        socket.bind(&SocketAddr::V4(local).into())?;
        let socket: UdpSocket = socket.into();
        let reader = socket.try_clone()?;
        reader.set_read_timeout(Some(DRAIN_POLL))?;
        let drain = Drain::spawn(move |buf| match reader.recv(buf) {
            Ok(n) => Ok(Some((1, n as u64))),
            Err(e) if is_timeout(&e) => Ok(None),
            // ICMP errors from an absent peer show up here; keep listening.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(e),
        });
        Ok(Self {
            socket,
            remote,
            frames: FrameWriter::new(frames),
            drain,
        })
    }

    /// The socket's local address (where QEMU's `remote=` should point).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Output for DgramOutput {
    fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
        let lens = write_frames(&mut self.frames, batch)?;
        let n = batch.len().min(MAX_BATCH);
        let mut msgs: [(&[u8], Option<Ipv4Addr>); MAX_BATCH] = [(&[], None); MAX_BATCH];
        for (i, msg) in msgs.iter_mut().enumerate().take(n) {
            let frame = batch
                .slot(i)
                .get(PREFIX_LEN..PREFIX_LEN + lens[i])
                .unwrap_or_default();
            *msg = (frame, None);
        }
        mmsg::send_all(&self.socket, self.remote, &msgs[..n])
    }

    fn received(&self) -> (u64, u64) {
        self.drain.counts()
    }

    fn describe(&self) -> String {
        let c = self.frames.config();
        format!(
            "frames via -netdev dgram {} (to {} at {})",
            self.remote, c.dst, c.dst_mac
        )
    }
}

/// Length-prefixed frames to a QEMU `-netdev stream` server.
pub struct StreamOutput {
    stream: TcpStream,
    remote: SocketAddrV4,
    frames: FrameWriter,
    drain: Drain,
    /// Where the reading thread finds the bound's markers, once set.
    markers: Arc<OnceLock<(InFlightBound, Arc<Answers>)>>,
    in_flight: Option<InFlight>,
}

/// Splits a byte stream of length-prefixed frames and counts whole frames.
struct FrameCounter {
    /// Bytes of the current frame still to skip.
    skip: usize,
    /// Length prefix bytes collected so far.
    prefix: [u8; PREFIX_LEN],
    have: usize,
    /// The current frame's first bytes (enough for an ARP reply), and how many.
    head: [u8; FrameCounter::HEAD],
    head_len: usize,
}

impl Default for FrameCounter {
    fn default() -> Self {
        Self {
            skip: 0,
            prefix: [0; PREFIX_LEN],
            have: 0,
            head: [0; Self::HEAD],
            head_len: 0,
        }
    }
}

impl FrameCounter {
    const HEAD: usize = 64;

    /// Consumes `data`; returns the frames completed in it, each frame's first bytes (up to
    /// [`FrameCounter::HEAD`]) handed to `frame` as it completes.
    fn feed(&mut self, mut data: &[u8], frame: &mut dyn FnMut(&[u8])) -> u64 {
        let mut frames = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                let keep = n.min(Self::HEAD - self.head_len);
                self.head[self.head_len..self.head_len + keep].copy_from_slice(&data[..keep]);
                self.head_len += keep;
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    frame(&self.head[..self.head_len]);
                    frames += 1;
                }
                continue;
            }
            let n = (PREFIX_LEN - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == PREFIX_LEN {
                self.have = 0;
                self.head_len = 0;
                self.skip = u32::from_be_bytes(self.prefix) as usize;
                if self.skip == 0 {
                    frame(&[]);
                    frames += 1;
                }
            }
        }
        frames
    }
}

impl StreamOutput {
    /// Connects to QEMU's stream server at `remote`, retrying until `patience` has passed (QEMU
    /// may still be starting).
    ///
    /// QEMU 7.2 crashes (NULL channel in `net_stream_receive`) when its stream server netdev
    /// is handed a frame before a client connected, e.g. when the guest transmits early:
    /// prefer [`StreamOutput::accept`] with QEMU as the client where the guest may do so.
    pub fn connect(
        remote: SocketAddrV4,
        frames: FrameConfig,
        patience: Duration,
    ) -> io::Result<Self> {
        let deadline = Instant::now() + patience;
        let stream = loop {
            match TcpStream::connect(remote) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && e.kind() == io::ErrorKind::ConnectionRefused =>
                {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        Self::over(stream, remote, frames)
    }

    /// Waits up to `patience` for QEMU (`-netdev stream,server=off,...`) to connect to
    /// `listener`, then sends over that connection. QEMU must start after the listener exists.
    pub fn accept(
        listener: &TcpListener,
        frames: FrameConfig,
        patience: Duration,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + patience;
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no stream netdev connected",
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        let remote = match peer {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        Self::over(stream, remote, frames)
    }

    fn over(stream: TcpStream, remote: SocketAddrV4, frames: FrameConfig) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let mut reader = stream.try_clone()?;
        reader.set_read_timeout(Some(DRAIN_POLL))?;
        let mut counter = FrameCounter::default();
        let markers: Arc<OnceLock<(InFlightBound, Arc<Answers>)>> = Arc::default();
        let seen = markers.clone();
        let drain = Drain::spawn(move |buf| match reader.read(buf) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                let frames = counter.feed(&buf[..n], &mut |f| {
                    if let Some((bound, answers)) = seen.get() {
                        if let Some(index) = bound.answered(f) {
                            answers.answer(index);
                        }
                    }
                });
                Ok(Some((frames, n as u64)))
            }
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        });
        Ok(Self {
            stream,
            remote,
            frames: FrameWriter::new(frames),
            drain,
            markers,
            in_flight: None,
        })
    }

    /// Keeps at most `bound.bytes` of frames between this sender and the guest's receive
    /// ring ([`super::inflight`] says why and how). Refused for a bound whose markers could
    /// not be told apart, or when a bound is already set.
    pub fn bound_in_flight(&mut self, bound: InFlightBound) -> io::Result<()> {
        if !bound.is_valid() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("in-flight bound {bound:?}: too many markers in flight, or the guest among them"),
            ));
        }
        let answers = Arc::new(Answers::default());
        self.markers
            .set((bound, answers.clone()))
            .map_err(|_| io::Error::other("in-flight bound already set"))?;
        self.in_flight = Some(InFlight::new(bound, answers));
        Ok(())
    }

    /// The bound's state, when one is set.
    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Writes all of `slices`.
    fn write_all(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut pending = slices;
        while !pending.is_empty() {
            match self.stream.write_vectored(pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut pending, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends marker `seq` of the bound.
    fn write_marker(&mut self, seq: u64) -> io::Result<()> {
        let Some(f) = self.in_flight.as_ref() else {
            return Ok(());
        };
        let frame = f.bound().marker_frame(seq);
        let prefix = u32::try_from(frame.len()).unwrap_or(0).to_be_bytes();
        self.write_all(&mut [IoSlice::new(&prefix), IoSlice::new(&frame)])
    }

    /// Waits until `len` more bytes fit the bound (probing a quiet guest).
    fn wait_for_room(&mut self, len: u64) -> io::Result<()> {
        let started = Instant::now();
        let mut waited = false;
        loop {
            let Some(f) = self.in_flight.as_mut() else {
                return Ok(());
            };
            match f.step(len, Instant::now()) {
                Step::Go => break,
                Step::Wait => {
                    waited = true;
                    thread::sleep(ROOM_POLL);
                }
                Step::Probe(seq) => self.write_marker(seq)?,
            }
        }
        if waited {
            if let Some(f) = self.in_flight.as_mut() {
                f.waited(started.elapsed());
            }
        }
        Ok(())
    }
}

/// How often a sender waiting for room looks at the answers.
const ROOM_POLL: Duration = Duration::from_micros(250);

impl Output for StreamOutput {
    fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
        let lens = write_frames(&mut self.frames, batch)?;
        let n = batch.len().min(MAX_BATCH);
        for (i, &len) in lens.iter().enumerate().take(n) {
            let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
            if let Some(p) = batch.slot_mut(i).get_mut(..PREFIX_LEN) {
                p.copy_from_slice(&prefix);
            }
        }
        let mut slices: [IoSlice<'_>; MAX_BATCH] = [IoSlice::new(&[]); MAX_BATCH];
        for (i, s) in slices.iter_mut().enumerate().take(n) {
            *s = IoSlice::new(
                batch
                    .slot(i)
                    .get(..PREFIX_LEN + lens[i])
                    .unwrap_or_default(),
            );
        }
        let bytes: u64 = slices[..n].iter().map(|s| s.len() as u64).sum();
        self.wait_for_room(bytes)?;
        self.write_all(&mut slices[..n])?;
        let due = self
            .in_flight
            .as_mut()
            .and_then(|f| f.sent(bytes, Instant::now()));
        if let Some(seq) = due {
            self.write_marker(seq)?;
        }
        Ok(())
    }

    fn received(&self) -> (u64, u64) {
        self.drain.counts()
    }

    fn describe(&self) -> String {
        let c = self.frames.config();
        format!(
            "frames via -netdev stream {} (to {} at {})",
            self.remote, c.dst, c.dst_mac
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::channel::LossModel;
    use crate::gen::expect::tests::Collected;
    use crate::gen::expect::Expectation;
    use crate::gen::output::frame::{parse_frame, MacAddr};
    use crate::gen::run::{run, RunOptions};
    use crate::gen::scenario::Scenario;
    use crate::gen::schedule::Schedule;
    use netoops_core::reassembly::{Reassembler, ReassemblyConfig};
    use netoops_core::time::Instant as CoreInstant;
    use std::io::BufReader;

    fn scenario() -> Scenario {
        Scenario {
            machines: 12,
            log_size: "1-12K".parse().unwrap(),
            loss: LossModel::Independent { p: 0.1 },
            duplicate: 0.05,
            reorder: 0.05,
            source_base: "10.1.0.1".parse().unwrap(),
            ..Scenario::default()
        }
    }

    fn frame_config(udp_checksum: bool) -> FrameConfig {
        FrameConfig {
            dst_mac: MacAddr::QEMU_DEFAULT,
            src_mac: None,
            dst: "10.0.2.15:2004".parse().unwrap(),
            udp_checksum,
        }
    }

    /// Checks every frame's headers and reassembles the payloads against the expectations.
    fn check_frames(s: &Scenario, frames: &[Vec<u8>]) {
        let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
        let mut sink = Collected::default();
        for (i, f) in frames.iter().enumerate() {
            let (dmac, smac, src, dst, payload) = parse_frame(f).expect("well-formed frame");
            assert_eq!(dmac, MacAddr::QEMU_DEFAULT);
            assert_eq!(smac, MacAddr::for_ip(*src.ip()));
            assert_eq!(dst, "10.0.2.15:2004".parse().unwrap());
            assert_eq!(src.port(), 6666);
            r.handle_datagram(
                CoreInstant::from_micros(i as u64),
                src.into(),
                payload,
                &mut sink,
            )
            .unwrap();
        }
        r.flush(CoreInstant::from_millis(60_000), &mut sink);
        for i in 0..s.machines {
            let e = Expectation::of(s, i);
            match sink.dumps.get(&e.source.parse().unwrap()) {
                Some(got) => {
                    assert_eq!(got.text, e.text, "machine {i}");
                    assert_eq!(got.missing, e.missing, "machine {i}");
                }
                None => assert_eq!(e.received, 0),
            }
        }
    }

    #[test]
    fn dgram_output_sends_one_frame_per_datagram() {
        // A deep queue, and a quiet time long enough for a loaded machine.
        let qemu = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let _ = qemu.set_recv_buffer_size(4 << 20);
        qemu.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let qemu: UdpSocket = qemu.into();
        qemu.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let remote = match qemu.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let s = scenario();
        let mut out = DgramOutput::new(remote, None, frame_config(true)).unwrap();
        // The "guest" transmits one frame back; the drain counts it.
        qemu.send_to(&[0xab; 60], out.local_addr().unwrap())
            .unwrap();
        let reader = thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = qemu.recv(&mut buf) {
                frames.push(buf[..n].to_vec());
            }
            frames
        });
        let report = run(
            &mut Schedule::new(s.clone()),
            &mut out,
            RunOptions {
                rate: 20_000,
                batch: 8,
            },
            &mut |_| {},
        )
        .unwrap();
        let frames = reader.join().unwrap();
        assert_eq!(frames.len() as u64, report.schedule.datagrams);
        check_frames(&s, &frames);
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.received() != (1, 60) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.received(), (1, 60));
    }

    /// A TCP listener on a free loopback port, and its address (where a "guest" listens).
    fn loopback_listener() -> (TcpListener, SocketAddrV4) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        match listener.local_addr().unwrap() {
            SocketAddr::V4(a) => (listener, a),
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    #[test]
    fn stream_output_length_prefixes_every_frame() {
        let (listener, remote) = loopback_listener();
        let reader = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The "guest" sends two frames back, the second split across writes.
            conn.write_all(&[0, 0, 0, 3, 1, 2, 3, 0, 0]).unwrap();
            conn.write_all(&[0, 2, 9, 9]).unwrap();
            let mut all = Vec::new();
            conn.read_to_end(&mut all).unwrap();
            let mut frames = Vec::new();
            let mut at = 0;
            while at < all.len() {
                let len = u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) as usize;
                frames.push(all[at + 4..at + 4 + len].to_vec());
                at += 4 + len;
            }
            frames
        });
        let s = scenario();
        let mut out =
            StreamOutput::connect(remote, frame_config(false), Duration::from_secs(5)).unwrap();
        let report = run(
            &mut Schedule::new(s.clone()),
            &mut out,
            RunOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.received() != (2, 13) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.received(), (2, 13));
        drop(out);
        let frames = reader.join().unwrap();
        assert_eq!(frames.len() as u64, report.schedule.datagrams);
        assert!(
            frames.iter().all(|f| f[40..42] == [0, 0]),
            "no UDP checksum"
        );
        check_frames(&s, &frames);
    }

    #[test]
    fn stream_output_keeps_the_bound_between_it_and_a_slow_guest() {
        use crate::gen::output::inflight::ARP_LEN;
        let (listener, remote) = loopback_listener();
        let bound = InFlightBound {
            bytes: 128 << 10,
            marker_every: 8 << 10,
            guest_ip: "10.0.2.15".parse().unwrap(),
            guest_mac: MacAddr::QEMU_DEFAULT,
            marker_base: "10.0.2.128".parse().unwrap(),
        };
        // A slow "guest": reads frames, answers every ARP request after reading it, and
        // checks that no data byte arrives beyond the bound past its last answer.
        let guest = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (mut data, mut answered_at, mut frames, mut answers) = (0u64, 0u64, 0u64, 0u64);
            loop {
                let mut prefix = [0u8; 4];
                if reader.read_exact(&mut prefix).is_err() {
                    break;
                }
                let mut f = vec![0u8; u32::from_be_bytes(prefix) as usize];
                reader.read_exact(&mut f).unwrap();
                if f.len() == ARP_LEN && f[12..14] == [8, 6] {
                    let mut r = f.clone();
                    r[0..6].copy_from_slice(&f[6..12]);
                    r[6..12].copy_from_slice(&MacAddr::QEMU_DEFAULT.0);
                    r[21] = 2;
                    r[22..28].copy_from_slice(&MacAddr::QEMU_DEFAULT.0);
                    r[28..32].copy_from_slice(&f[38..42]);
                    r[32..38].copy_from_slice(&f[22..28]);
                    r[38..42].copy_from_slice(&f[28..32]);
                    conn.write_all(&(ARP_LEN as u32).to_be_bytes()).unwrap();
                    conn.write_all(&r).unwrap();
                    answered_at = data;
                    answers += 1;
                    continue;
                }
                data += 4 + f.len() as u64;
                frames += 1;
                assert!(
                    data <= answered_at + (128 << 10),
                    "{data} bytes read, last answer after {answered_at}"
                );
                if frames % 16 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            (frames, answers)
        });
        let s = Scenario {
            machines: 40,
            log_size: "8-16K".parse().unwrap(),
            loss: LossModel::None,
            duplicate: 0.0,
            reorder: 0.0,
            ..scenario()
        };
        let mut out =
            StreamOutput::connect(remote, frame_config(false), Duration::from_secs(5)).unwrap();
        out.bound_in_flight(bound).unwrap();
        assert!(out.bound_in_flight(bound).is_err(), "set once");
        let report = run(
            &mut Schedule::new(s.clone()),
            &mut out,
            RunOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let f = out.in_flight().unwrap();
        let (peak, waits, off) = (f.peak, f.waits, f.is_off());
        out.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let (frames, answers) = guest.join().unwrap();
        drop(out);
        assert_eq!(frames, report.schedule.datagrams);
        assert!(
            !off && waits > 0 && answers > 10,
            "{waits} waits, {answers} answers"
        );
        assert!(peak <= bound.bytes, "peak {peak}");
    }

    #[test]
    fn frame_counter_handles_any_split() {
        let stream = [0, 0, 0, 2, 7, 7, 0, 0, 0, 0, 0, 0, 0, 1, 5];
        for cut in 0..stream.len() {
            let mut c = FrameCounter::default();
            let mut heads = Vec::new();
            let n = c.feed(&stream[..cut], &mut |f| heads.push(f.to_vec()))
                + c.feed(&stream[cut..], &mut |f| heads.push(f.to_vec()));
            assert_eq!(n, 3, "cut at {cut}");
            assert_eq!(heads, [vec![7, 7], vec![], vec![5]], "cut at {cut}");
        }
    }
}
