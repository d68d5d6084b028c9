//! End-to-end tests of the e1000 driver: the real kernel image under QEMU (TCG), booted with
//! `selftest=e1000-echo`, on both parts the driver handles (`-device e1000`, the 82540EM,
//! and `-device e1000e`, the 82574L), talking to real host sockets.
//!
//! - UDP echo through QEMU's user network (`hostfwd`) for each part on q35 and on pc.
//! - Raw Ethernet frames through `-netdev dgram`: ARP, echo of every UDP payload size a
//!   1514-byte frame carries, frames for another MAC address filtered by the device, and a
//!   frame too long for the wire counted by the device and not delivered.
//! - Link state: QEMU's `set_link` (through its monitor) shows up as STATUS.LU.
//! - Throughput through `-netdev stream` (TCP, so nothing is lost to host socket buffers):
//!   receive rate into the discard port and echo rate, figures on stderr
//!   (`cargo test -p netoops-e2e --test e1000 -- --nocapture`).
//!
//! The kernel is the appliance image (`netoops-image build --release`) unless `NETOOPS_IMAGE`
//! names another. QEMU must be installed
//! (`apt-get install qemu-system-x86`). The tests take a lock so only one VM runs at a time:
//! the build machine has two cores, and rates mean nothing when VMs compete.

use netoops_e2e::appliance::{free_udp_port, vm_lock};
use netoops_e2e::echo::{
    assert_arp_reply, assert_maybe_padded_echo_of, echo_every_payload_size, udp_frame,
    udp_frame_to, Counters, EchoVm, DISCARD_PORT, ECHO_PORT, NETOOPS_V3_BLOB_LEN,
};
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The two parts: QEMU device name and the model name the self-test prints.
const E1000: (&str, &str) = ("e1000", "82540em");
const E1000E: (&str, &str) = ("e1000e", "82574l");

// ---------------------------------------------------------------------------------------
// UDP echo through the user network: each part on q35 and pc

fn user_net_echo(machine: &str, (device, model): (&str, &str)) {
    let _vm = vm_lock();
    let port = free_udp_port();
    let vm = EchoVm::boot(
        "e1000-echo",
        machine,
        &[],
        &format!("user,id=n0,hostfwd=udp:127.0.0.1:{port}-:{ECHO_PORT}"),
        &format!("{device},netdev=n0,romfile="),
    );
    let ready = vm.ready();
    for want in [
        format!("model={model} "),
        "mac=52:54:00:12:34:56 ".into(),
        "eeprom_mac=52:54:00:12:34:56 ".into(),
        "rx_ring=256 ".into(),
        "tx_ring=256 ".into(),
        "link=up ".into(),
    ] {
        assert!(ready.contains(&want), "{want:?} in {ready}");
    }

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    for i in 0..200u32 {
        let msg = format!("netoops e1000 {i} {}", "x".repeat((i as usize * 7) % 1400));
        // The first datagram may wait for slirp's ARP; allow a few resends, and skip the
        // late echoes of earlier resends.
        'attempts: for _attempt in 0..4 {
            sock.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                let got = &buf[..n];
                if got == msg.as_bytes() {
                    echoed += 1;
                    break 'attempts;
                }
                let earlier =
                    (0..i).any(|j| got.starts_with(format!("netoops e1000 {j} ").as_bytes()));
                assert!(earlier, "wrong echo: {:?}", String::from_utf8_lossy(got));
            }
        }
    }
    assert_eq!(echoed, 200, "console:\n{}", vm.log());
    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= 200);
    assert_eq!(c.driver_drops(), 0, "{c:?}");
    assert!(c.arp >= 1, "slirp asked for our address: {c:?}");
    assert!(c.tx >= 200, "{c:?}");
}

#[test]
fn udp_echo_e1000_q35() {
    user_net_echo("q35", E1000);
}

#[test]
fn udp_echo_e1000_pc() {
    user_net_echo("pc", E1000);
}

#[test]
fn udp_echo_e1000e_q35() {
    user_net_echo("q35", E1000E);
}

#[test]
fn udp_echo_e1000e_pc() {
    user_net_echo("pc", E1000E);
}

// ---------------------------------------------------------------------------------------
// Raw frames through -netdev dgram

fn raw_frames((device, model): (&str, &str)) {
    let _vm = vm_lock();
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let qemu_port = free_udp_port();
    let vm = EchoVm::boot(
        "e1000-echo",
        "q35",
        &[],
        &format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
        ),
        &format!("{device},netdev=n0,romfile="),
    );
    assert!(vm.ready().contains(&format!("model={model} ")));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = ("127.0.0.1", qemu_port);
    let mut buf = [0u8; 4096];

    // The ARP request is a broadcast: RCTL.BAM must be set.
    assert_arp_reply(&host, to);
    echo_every_payload_size(&host, to, assert_maybe_padded_echo_of);

    // Another station's unicast address: the receive address filter (RAL0/RAH0, no
    // promiscuous mode) keeps it from the driver altogether.
    let foreign = [0x02, 0, 0, 0, 0, 0x99];
    for _ in 0..10 {
        host.send_to(&udp_frame_to(foreign, ECHO_PORT, 3, b"not for us"), to)
            .unwrap();
    }
    // Too long for the wire without long-packet mode: the device drops and counts it.
    host.send_to(&udp_frame(ECHO_PORT, 1, &vec![0xab; 3000]), to)
        .unwrap();
    let f = udp_frame(ECHO_PORT, 2, b"after the drops");
    host.send_to(&f, to).unwrap();
    let n = host.recv(&mut buf).expect("echo after the drops");
    assert_maybe_padded_echo_of(&f, &buf[..n]);

    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= 1474);
    assert_eq!(c.echo, 1474, "{c:?}");
    assert_eq!(c.arp, 1, "{c:?}");
    assert_eq!(c.rx, 1475, "nothing else reached the driver: {c:?}");
    assert_eq!(c.driver_drops(), 0, "{c:?}");
    assert_eq!(c.hw_oversize, 1, "ROC counted the long frame: {c:?}");
    assert_eq!(c.tx, 1475, "{c:?}");
    assert!(
        c.rdt_writes < c.rx,
        "receive tail moves per batch, not per frame: {c:?}"
    );
    eprintln!("{model} raw frames: {c:?}");
}

#[test]
fn raw_frames_e1000() {
    raw_frames(E1000);
}

#[test]
fn raw_frames_e1000e() {
    raw_frames(E1000E);
}

// ---------------------------------------------------------------------------------------
// Link state through QEMU's monitor

fn link_state((device, model): (&str, &str)) {
    let _vm = vm_lock();
    let monitor = TcpListener::bind("127.0.0.1:0").unwrap();
    let mport = monitor.local_addr().unwrap().port();
    drop(monitor);
    let port = free_udp_port();
    let vm = EchoVm::boot(
        "e1000-echo",
        "q35",
        &[
            "-monitor",
            &format!("tcp:127.0.0.1:{mport},server=on,wait=off"),
        ],
        &format!("user,id=n0,hostfwd=udp:127.0.0.1:{port}-:{ECHO_PORT}"),
        &format!("{device},netdev=n0,romfile="),
    );
    assert!(vm.ready().contains(&format!("model={model} ")));
    let mut mon = TcpStream::connect(("127.0.0.1", mport)).expect("QEMU monitor");
    for (cmd, want) in [
        ("set_link n0 off", "e1000-echo: link down"),
        ("set_link n0 on", "e1000-echo: link up"),
    ] {
        mon.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        vm.wait_for(want, Duration::from_secs(10), |l| l == want);
    }
    // And the data path survived.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let ok = (0..10).any(|_| {
        sock.send_to(b"still there", ("127.0.0.1", port)).unwrap();
        sock.recv(&mut buf)
            .is_ok_and(|n| &buf[..n] == b"still there")
    });
    assert!(ok, "echo after the link came back; console:\n{}", vm.log());
}

#[test]
fn link_state_follows_the_netdev_e1000() {
    link_state(E1000);
}

#[test]
fn link_state_follows_the_netdev_e1000e() {
    link_state(E1000E);
}

// ---------------------------------------------------------------------------------------
// Throughput through -netdev stream

/// A length-prefixed frame as `-netdev stream` carries it.
fn stream_record(frame: &[u8]) -> Vec<u8> {
    let mut r = (frame.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(frame);
    r
}

fn boot_on_stream(device: &str) -> (EchoVm, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let vm = EchoVm::boot(
        "e1000-echo",
        "q35",
        &[],
        &format!("stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        &format!("{device},netdev=n0,romfile="),
    );
    let (conn, _) = listener.accept().expect("QEMU connects");
    conn.set_nodelay(true).unwrap();
    vm.ready();
    (vm, conn)
}

/// Rate of `value` on the guest clock between the first and the last counter line of the
/// burst.
fn rate(lines: &[Counters], value: impl Fn(&Counters) -> u64) -> f64 {
    let first = lines
        .iter()
        .find(|c| value(c) > 0)
        .expect("a line with traffic");
    let total = lines.iter().map(&value).max().unwrap_or(0);
    let last = lines
        .iter()
        .find(|c| value(c) == total)
        .expect("final line");
    if last.t_us == first.t_us {
        return 0.0;
    }
    (value(last) - value(first)) as f64 * 1e6 / (last.t_us - first.t_us) as f64
}

fn receive_rate((device, model): (&str, &str)) {
    let _vm = vm_lock();
    let (vm, mut conn) = boot_on_stream(device);
    const N: u64 = 200_000;
    let record = stream_record(&udp_frame(
        DISCARD_PORT,
        40000,
        &[0x5a; NETOOPS_V3_BLOB_LEN],
    ));
    let batch: Vec<u8> = record.repeat(100);
    let start = Instant::now();
    for _ in 0..N / 100 {
        conn.write_all(&batch).unwrap();
    }
    let sent_in = start.elapsed();
    // The stream transport loses nothing, but QEMU's 82540EM model drops a frame when the
    // ring is full instead of holding it back (its 82574L model waits): every frame must be
    // either delivered or counted by the device as missed.
    let c = vm.counters(Duration::from_secs(180), |c| c.discard + c.missed >= N);
    let wall = start.elapsed();
    assert_eq!(c.discard + c.missed, N, "delivered or counted: {c:?}");
    assert_eq!(c.rx, c.discard);
    assert_eq!(c.driver_drops(), 0, "{c:?}");
    let guest_rate = rate(&vm.all_counters(), |c| c.discard);
    eprintln!(
        "{model} RX, {}-byte frames: {:.0} frames/s delivered on the guest clock; {N} frames \
         in {:.2} s wall (host wrote them in {:.2} s); {} delivered, {} missed (ring full), \
         {} RDT writes, {} idle polls",
        record.len() - 4,
        guest_rate,
        wall.as_secs_f64(),
        sent_in.as_secs_f64(),
        c.discard,
        c.missed,
        c.rdt_writes,
        c.idle,
    );
    assert!(
        c.rdt_writes * 8 < N,
        "receive tail moves per batch, not per frame: {c:?}"
    );
    assert!(guest_rate > 20_000.0, "receive rate {guest_rate:.0}/s");
}

#[test]
fn receive_rate_into_discard_port_e1000() {
    receive_rate(E1000);
}

#[test]
fn receive_rate_into_discard_port_e1000e() {
    receive_rate(E1000E);
}

/// Echo round trips with at most `WINDOW` frames in flight, so neither ring overflows and
/// the figure is the driver's turnaround rather than the emulator's drop policy.
fn echo_rate((device, model): (&str, &str)) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const N: usize = 50_000;
    const WINDOW: usize = 128;
    let _vm = vm_lock();
    let (vm, conn) = boot_on_stream(device);
    let sent = udp_frame(ECHO_PORT, 40000, &[0x33; NETOOPS_V3_BLOB_LEN]);
    let record = stream_record(&sent);

    let mut reader = BufReader::with_capacity(1 << 20, conn.try_clone().unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let expect = sent.clone();
    let counter = Arc::clone(&received);
    let receiver = thread::spawn(move || {
        let mut len = [0u8; 4];
        let mut frame = vec![0u8; 2048];
        while counter.load(Ordering::Relaxed) < N {
            if reader.read_exact(&mut len).is_err() {
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > frame.len() || reader.read_exact(&mut frame[..n]).is_err() {
                break;
            }
            assert_maybe_padded_echo_of(&expect, &frame[..n]);
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Instant::now()
    });

    let start = Instant::now();
    let mut writer = conn;
    let mut written = 0;
    let deadline = start + Duration::from_secs(120);
    while written < N && Instant::now() < deadline {
        let room = (received.load(Ordering::Relaxed) + WINDOW).saturating_sub(written);
        let k = room.min(N - written).min(32);
        if k == 0 {
            thread::yield_now();
            continue;
        }
        writer.write_all(&record.repeat(k)).unwrap();
        written += k;
    }
    let done = receiver.join().unwrap();
    let got = received.load(Ordering::Relaxed);
    let secs = (done - start).as_secs_f64();
    assert_eq!(got, N, "every datagram echoed; console:\n{}", vm.log());
    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= N as u64);
    assert_eq!(c.driver_drops() + c.missed, 0, "{c:?}");
    eprintln!(
        "{model} echo, {}-byte frames, {WINDOW} in flight: {N} round trips in {secs:.2} s = \
         {:.0} echoes/s; {} TDT writes, {} RDT writes, {} times the TX ring was full",
        sent.len(),
        N as f64 / secs,
        c.tdt_writes,
        c.rdt_writes,
        c.tx_full,
    );
    assert!(N as f64 / secs > 5_000.0);
}

#[test]
fn echo_rate_e1000() {
    echo_rate(E1000);
}

#[test]
fn echo_rate_e1000e() {
    echo_rate(E1000E);
}
