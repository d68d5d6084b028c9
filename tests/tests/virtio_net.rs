//! End-to-end tests of the virtio-net driver: the real kernel image under QEMU (TCG), booted
//! with `selftest=virtio-echo`, talking to real host sockets.
//!
//! - UDP echo through QEMU's user network (`hostfwd`) on every transport the driver has:
//!   modern virtio-pci on q35 and pc, virtio-mmio v1 (legacy) and v2 on microvm.
//! - Raw Ethernet frames through `-netdev dgram`: ARP, echo of every frame size, and the
//!   drop counters for a frame too big for one receive slot.
//! - Throughput through `-netdev stream` (TCP, so nothing is lost to host socket buffers):
//!   receive rate into the discard port, and echo rate. Figures go to stderr
//!   (`cargo test -p netoops-e2e --test virtio_net -- --nocapture`).
//!
//! The kernel is the appliance image (`netoops-image build --release`) unless `NETOOPS_IMAGE`
//! names another. QEMU must be installed
//! (`apt-get install qemu-system-x86`). The tests take a lock so only one VM runs at a time:
//! the build machine has two cores, and the rates mean nothing when VMs compete.

use netoops_e2e::appliance::{free_udp_port, vm_lock};
use netoops_e2e::echo::{
    assert_arp_reply, assert_echo_of, echo_every_payload_size, udp_frame, Counters, EchoVm,
    DISCARD_PORT, ECHO_PORT, NETOOPS_V3_BLOB_LEN,
};
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// UDP echo through the user network, one test per transport

/// `rx_ring` is the receive ring the driver must have taken from the device's maximum.
fn user_net_echo(machine: &str, extra: &[&str], device: &str, transport: &str, rx_ring: u32) {
    let _vm = vm_lock();
    let port = free_udp_port();
    let vm = EchoVm::boot(
        "virtio-echo",
        machine,
        extra,
        &format!("user,id=n0,hostfwd=udp:127.0.0.1:{port}-:{ECHO_PORT}"),
        &format!("{device},netdev=n0"),
    );
    let ready = vm.ready();
    assert!(
        ready.contains(&format!("transport={transport} ")),
        "{ready}\n{}",
        vm.log()
    );
    assert!(ready.contains("mac=52:54:00:12:34:56"), "{ready}");
    assert!(ready.contains(&format!("rx_ring={rx_ring} ")), "{ready}");

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    for i in 0..200u32 {
        let msg = format!("netoops echo {i} {}", "x".repeat((i as usize * 7) % 1400));
        // The first datagram may wait for slirp's ARP; allow a few resends.
        for _attempt in 0..4 {
            sock.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
            match sock.recv(&mut buf) {
                Ok(n) if &buf[..n] == msg.as_bytes() => {
                    echoed += 1;
                    break;
                }
                Ok(n) => panic!("wrong echo: {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(_) => continue,
            }
        }
    }
    assert_eq!(echoed, 200, "console:\n{}", vm.log());
    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= 200);
    assert_eq!(c.dev_err, 0, "{c:?}");
    assert_eq!(c.rx_runt + c.rx_oversize, 0, "{c:?}");
    assert!(c.tx >= 200, "{c:?}");
}

#[test]
fn udp_echo_virtio_pci_q35() {
    user_net_echo(
        "q35",
        &[],
        "virtio-net-pci,romfile=,rx_queue_size=1024",
        "pci",
        1024,
    );
}

#[test]
fn udp_echo_virtio_pci_pc() {
    user_net_echo("pc", &[], "virtio-net-pci,romfile=", "pci", 256);
}

/// microvm appends `virtio_mmio.device=` to the command line only with ACPI off.
#[test]
fn udp_echo_virtio_mmio_legacy_microvm() {
    user_net_echo(
        "microvm,acpi=off",
        &[],
        "virtio-net-device",
        "mmio-v1",
        1024,
    );
}

#[test]
fn udp_echo_virtio_mmio_modern_microvm() {
    user_net_echo(
        "microvm,acpi=off",
        &["-global", "virtio-mmio.force-legacy=false"],
        "virtio-net-device",
        "mmio-v2",
        1024,
    );
}

// ---------------------------------------------------------------------------------------
// Raw frames through -netdev dgram

#[test]
fn raw_frames_arp_echo_every_size_and_counted_drops() {
    let _vm = vm_lock();
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let qemu_port = free_udp_port();
    let vm = EchoVm::boot(
        "virtio-echo",
        "q35",
        &[],
        &format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
        ),
        "virtio-net-pci,romfile=,netdev=n0",
    );
    vm.ready();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = ("127.0.0.1", qemu_port);
    let mut buf = [0u8; 4096];

    assert_arp_reply(&host, to);
    echo_every_payload_size(&host, to, assert_echo_of);

    // Too big for one 2 KiB slot: the device spreads it over several buffers, the driver
    // drops and counts it. Then a runt, then traffic must still flow.
    host.send_to(&udp_frame(ECHO_PORT, 1, &vec![0xab; 3000]), to)
        .unwrap();
    host.send_to(&[0u8; 10], to).unwrap();
    let f = udp_frame(ECHO_PORT, 2, b"after the drops");
    host.send_to(&f, to).unwrap();
    let n = host.recv(&mut buf).expect("echo after the drops");
    assert_echo_of(&f, &buf[..n]);

    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= 1474);
    assert_eq!(c.echo, 1474, "{c:?}");
    assert_eq!(c.arp, 1, "{c:?}");
    assert_eq!(c.rx_oversize, 1, "{c:?}");
    assert_eq!(c.rx_runt, 1, "{c:?}");
    assert_eq!(c.dev_err, 0, "{c:?}");
}

// ---------------------------------------------------------------------------------------
// Throughput through -netdev stream

/// A length-prefixed frame as `-netdev stream` carries it.
fn stream_record(frame: &[u8]) -> Vec<u8> {
    let mut r = (frame.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(frame);
    r
}

fn boot_on_stream() -> (EchoVm, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let vm = EchoVm::boot(
        "virtio-echo",
        "q35",
        &[],
        &format!("stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        "virtio-net-pci,romfile=,netdev=n0",
    );
    let (conn, _) = listener.accept().expect("QEMU connects");
    conn.set_nodelay(true).unwrap();
    vm.ready();
    (vm, conn)
}

/// Receive rate of the guest for netoops-sized datagrams, measured on the guest clock
/// between the first and the last counter line of the burst.
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

#[test]
fn receive_rate_into_discard_port_over_stream() {
    let _vm = vm_lock();
    let (vm, mut conn) = boot_on_stream();
    const N: u64 = 300_000;
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
    let c = vm.counters(Duration::from_secs(120), |c| c.discard >= N);
    let wall = start.elapsed();
    assert_eq!(c.discard, N, "stream transport loses nothing: {c:?}");
    assert_eq!(c.rx, N);
    assert_eq!(c.dev_err + c.rx_runt + c.rx_oversize, 0, "{c:?}");
    let guest_rate = rate(&vm.all_counters(), |c| c.discard);
    eprintln!(
        "virtio-net RX, {}-byte frames: {:.0} frames/s on the guest clock; {N} frames in {:.2} s \
         wall ({:.0}/s, host wrote them in {:.2} s); {} batches, {} notifications, {} idle polls",
        record.len() - 4,
        guest_rate,
        wall.as_secs_f64(),
        N as f64 / wall.as_secs_f64(),
        sent_in.as_secs_f64(),
        c.rx_batches,
        c.rx_notify,
        c.idle,
    );
    assert!(guest_rate > 20_000.0, "receive rate {guest_rate:.0}/s");
}

#[test]
fn echo_rate_over_stream() {
    let _vm = vm_lock();
    let (vm, conn) = boot_on_stream();
    const N: usize = 100_000;
    let sent = udp_frame(ECHO_PORT, 40000, &[0x33; NETOOPS_V3_BLOB_LEN]);
    let record = stream_record(&sent);

    let mut reader = BufReader::with_capacity(1 << 20, conn.try_clone().unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let expect = sent.clone();
    let receiver = thread::spawn(move || {
        let mut got = 0usize;
        let mut len = [0u8; 4];
        let mut frame = vec![0u8; 2048];
        while got < N {
            if reader.read_exact(&mut len).is_err() {
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if reader.read_exact(&mut frame[..n]).is_err() {
                break;
            }
            if got == 0 {
                assert_echo_of(&expect, &frame[..n]);
            }
            got += 1;
        }
        (got, Instant::now())
    });

    let start = Instant::now();
    let batch = record.repeat(50);
    let mut writer = conn;
    for _ in 0..N / 50 {
        writer.write_all(&batch).unwrap();
    }
    let (got, done) = receiver.join().unwrap();
    let secs = (done - start).as_secs_f64();
    assert_eq!(got, N, "every datagram echoed; console:\n{}", vm.log());
    let c = vm.counters(Duration::from_secs(10), |c| c.echo >= N as u64);
    assert_eq!(c.dev_err, 0, "{c:?}");
    eprintln!(
        "virtio-net echo, {}-byte frames: {N} round trips in {secs:.2} s = {:.0} echoes/s",
        sent.len(),
        N as f64 / secs
    );
    assert!(N as f64 / secs > 10_000.0);
}
