//! A real Linux kernel (Debian 12's packaged 6.1, fetched with `apt-get download` and cached
//! outside the repository) boots under QEMU TCG with netconsole pointed at a UDP socket on
//! host loopback (through QEMU user networking), writes marker lines to `/dev/kmsg` and
//! panics with sysrq. The tests check what actually arrived: every marker, the panic line and
//! the call trace, in order; fragments (`ncfrag`) in extended mode.
//!
//! If the kernel cannot be fetched the tests fail with the harness's message; they never skip.
//! `NETOOPS_WRITE_FIXTURES=1` also writes the captured datagrams of the extended and legacy
//! virtio runs to `appliance/wire/tests/fixtures/` (see the README there).

use netoops_e2e::appliance::{free_tcp_port, vm_lock};
use netoops_e2e::hosted::workspace_root;
use netoops_e2e::linux::{
    decode_fixture, encode_fixture, kernel, parse_extended, parse_udp_frame, reassemble, Datagram,
    ExtRecord, Format, LinuxNet, LinuxSpec, LinuxVm, Nic, UdpCapture, KMSG_LINE_MAX, LINUX_MAC,
    LINUX_RAW_IP, SOURCE_PORT,
};
use std::time::{Duration, Instant};

/// netconsole's default target port, as a relay would listen on it.
const NETCONSOLE_PORT: u16 = 6666;

/// What one boot produced.
struct Run {
    datagrams: Vec<Datagram>,
    markers: Vec<String>,
    /// The serial console's log.
    serial: String,
}

/// Short markers plus one long enough that its extended record exceeds netconsole's
/// 1000-byte chunk (header + text), so it has to be fragmented.
fn markers(tag: &str) -> Vec<String> {
    let mut m: Vec<String> = (0..3)
        .map(|i| format!("netoops-marker {tag} line {i} of 3"))
        .collect();
    let head = format!("netoops-marker {tag} long ");
    // The longest line /dev/kmsg takes: 991 bytes and the newline; with the header
    // (`12,351,2808741,-;`) the record is over 1000 bytes.
    let fill = KMSG_LINE_MAX - 1 - head.len();
    let body: String = (0..fill)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    m.push(format!("{head}{body}"));
    m
}

/// How the datagrams leave the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// User networking to a host port.
    User,
    /// Raw frames over `-netdev dgram`, as to a relay VM's ingress NIC.
    RawDgram,
    /// Raw frames over `-netdev stream` with this QEMU listening, as a relay VM's
    /// `Ingress::Stream` QEMU would connect to it.
    RawStream,
}

fn boot(nic: Nic, format: Format, tag: &str) -> Run {
    boot_with(nic, format, tag, Link::User, true)
}

/// Boots one guest and returns what arrived, checking only that it panicked.
fn boot_with(nic: Nic, format: Format, tag: &str, link: Link, pvh: bool) -> Run {
    let _lock = vm_lock();
    let capture = UdpCapture::bind(16 << 20).expect("binding the loopback listener");
    let net = match link {
        Link::User => LinuxNet::User {
            host_port: capture.port(),
        },
        // The capture stands where a relay VM's `Ingress::Dgram { port }` QEMU would: it
        // reads frames on `port`, and this QEMU reads on `port + 1`.
        Link::RawDgram => LinuxNet::to_relay_dgram(capture.port(), NETCONSOLE_PORT),
        Link::RawStream => LinuxNet::to_relay_stream(free_tcp_port(), NETCONSOLE_PORT),
    };
    let markers = markers(tag);
    let mut spec = LinuxSpec::new(nic, format, net);
    spec.markers = markers.clone();
    spec.pvh = pvh;
    let mut vm = LinuxVm::boot(&spec).unwrap_or_else(|e| panic!("{e}"));
    // In the relay VM's place on a stream link: connect and read QEMU's length-prefixed
    // frames until it exits.
    let reader = match &spec.net {
        LinuxNet::Stream { port, .. } => Some(stream_reader(*port)),
        _ => None,
    };
    let exit = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    let mut received = capture.finish();
    if let Some(reader) = reader {
        received = reader.join().expect("stream reader");
    }
    assert!(
        exit.panicked,
        "the guest exited ({:?}) without a panic\n{}",
        exit.status,
        vm.describe()
    );
    let datagrams: Vec<Datagram> = match link {
        Link::User => received,
        Link::RawDgram | Link::RawStream => {
            let target = spec.net.target();
            let mut out = Vec::new();
            let mut other = 0;
            for d in received {
                match parse_udp_frame(&d.bytes) {
                    Some(f) if f.dst_port == target.port => {
                        assert_eq!(f.dst_ip, target.ip, "destination address");
                        assert_eq!(f.src_ip, LINUX_RAW_IP, "source address");
                        assert_eq!(f.src_port, SOURCE_PORT, "source port");
                        assert_eq!(format_mac(&f.dst_mac), target.mac, "destination MAC");
                        assert_eq!(format_mac(&f.src_mac), LINUX_MAC, "source MAC");
                        out.push(Datagram {
                            bytes: f.payload,
                            ..d
                        });
                    }
                    _ => other += 1,
                }
            }
            eprintln!("{tag}: {other} frames that are not netconsole datagrams");
            out
        }
    };
    assert!(
        !datagrams.is_empty(),
        "no datagram reached 127.0.0.1 (receive buffer asked 16 MiB)\n{}",
        vm.describe()
    );
    let first = datagrams.first().map(|d| d.at - vm.started);
    let panic_at = datagrams
        .iter()
        .find(|d| contains(&d.bytes, b"Kernel panic - not syncing"))
        .map(|d| d.at - vm.started);
    assert!(
        panic_at.is_some(),
        "no datagram carries the panic line\n{}",
        vm.describe()
    );
    eprintln!(
        "{tag}: {} datagrams ({} bytes); QEMU start to first datagram {first:?}, to the panic \
         line {panic_at:?}, to exit {:?}",
        datagrams.len(),
        datagrams.iter().map(|d| d.bytes.len()).sum::<usize>(),
        exit.elapsed
    );
    Run {
        datagrams,
        markers,
        serial: vm.serial_log(),
    }
}

/// Connects to a listening `-netdev stream` (retrying while QEMU starts) and collects its
/// frames (4-byte big-endian length, then the frame) until QEMU closes the connection.
fn stream_reader(port: u16) -> std::thread::JoinHandle<Vec<Datagram>> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connecting to the Linux guest's stream netdev: {e}"),
        }
    };
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let from = stream.peer_addr().expect("peer");
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).is_err() {
                return out;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            if stream.read_exact(&mut frame).is_err() {
                return out;
            }
            out.push(Datagram {
                at: Instant::now(),
                from,
                bytes: frame,
            });
        }
    })
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn bytes(run: &Run) -> Vec<Vec<u8>> {
    run.datagrams.iter().map(|d| d.bytes.clone()).collect()
}

/// Index of the first record whose text contains `needle`.
fn find(records: &[ExtRecord], needle: &str) -> usize {
    records
        .iter()
        .position(|r| r.text.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no record contains {needle:?}; {} records, last ones:\n{}",
                records.len(),
                records[records.len().saturating_sub(30)..]
                    .iter()
                    .map(|r| format!("{} {}", r.seq, r.text))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

fn check_extended(run: &Run, release: Option<&str>) -> Vec<ExtRecord> {
    let all = bytes(run);
    let unparsed: Vec<&Vec<u8>> = all
        .iter()
        .filter(|d| parse_extended(d, release.is_some()).is_none())
        .collect();
    assert!(
        unparsed.is_empty(),
        "{} datagrams are not extended records, e.g. {:?}",
        unparsed.len(),
        String::from_utf8_lossy(unparsed[0])
    );
    if let Some(release) = release {
        for d in &all {
            let p = parse_extended(d, true).expect("parsed");
            assert_eq!(p.release.as_deref(), Some(release));
        }
    }
    let frags = all
        .iter()
        .filter(|d| parse_extended(d, release.is_some()).is_some_and(|p| p.frag.is_some()))
        .count();
    let records = reassemble(&all, release.is_some());
    let incomplete = records.iter().filter(|r| !r.complete).count();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    let with_dict = records.iter().filter(|r| !r.dict.is_empty()).count();
    eprintln!(
        "  {} records (seq {}..={}, {gaps} gaps), {frags} ncfrag datagrams, {incomplete} \
         incomplete, {with_dict} with dictionary lines",
        records.len(),
        seqs.first().unwrap_or(&0),
        seqs.last().unwrap_or(&0)
    );
    for d in all.iter().filter(|d| contains(d, b"netoops-marker")) {
        eprintln!(
            "  marker datagram: {} bytes: {:?}",
            d.len(),
            String::from_utf8_lossy(&d[..d.len().min(100)])
        );
    }
    for l in run
        .serial
        .lines()
        .filter(|l| l.contains("netoops-init") || l.contains("kmsg"))
    {
        eprintln!("  serial: {l}");
    }
    assert_eq!(incomplete, 0, "records with missing fragments");
    assert!(frags > 0, "no ncfrag fragment although a marker needs one");
    // Every marker, in the order written, then the panic line, then the call trace.
    let mut last = None;
    for m in &run.markers {
        let i = records
            .iter()
            .position(|r| r.text == *m)
            .unwrap_or_else(|| panic!("marker {:?}... missing", &m[..m.len().min(60)]));
        assert!(last.is_none_or(|l| l < i), "marker {m:?} out of order");
        last = Some(i);
    }
    let long = run.markers.last().expect("markers");
    let long_record = records.iter().find(|r| r.text == *long).expect("long");
    assert!(
        long_record.datagrams > 1,
        "the long marker came in one datagram"
    );
    let panic = find(&records, "Kernel panic - not syncing");
    let trace = find(&records, "Call Trace");
    assert!(
        last.expect("markers") < panic && panic < trace,
        "order: last marker {last:?}, panic {panic}, call trace {trace}"
    );
    records
}

fn check_legacy(run: &Run) {
    let text: Vec<u8> = run
        .datagrams
        .iter()
        .flat_map(|d| d.bytes.iter().copied())
        .collect();
    let text = String::from_utf8_lossy(&text);
    let mut from = 0;
    for m in &run.markers {
        let at = text[from..]
            .find(m.as_str())
            .unwrap_or_else(|| panic!("marker {:?}... missing or out of order", &m[..60]));
        from += at + m.len();
    }
    let panic = text[from..]
        .find("Kernel panic - not syncing")
        .expect("no panic line after the markers");
    assert!(
        text[from + panic..].contains("Call Trace"),
        "no call trace after the panic line"
    );
    let ext = bytes(run)
        .iter()
        .filter(|d| parse_extended(d, false).is_some())
        .count();
    eprintln!(
        "  legacy: {} bytes of text, {ext} datagrams that look extended",
        text.len()
    );
}

fn write_fixture(name: &str, run: &Run) {
    if std::env::var_os("NETOOPS_WRITE_FIXTURES").is_none() {
        return;
    }
    let dir = workspace_root().join("appliance/wire/tests/fixtures");
    std::fs::create_dir_all(&dir).expect("creating the fixtures folder");
    let path = dir.join(name);
    std::fs::write(&path, encode_fixture(&bytes(run))).expect("writing the fixture");
    eprintln!("  wrote {}", path.display());
}

fn show_first(run: &Run, n: usize) {
    for d in run.datagrams.iter().take(n) {
        let s = String::from_utf8_lossy(&d.bytes);
        eprintln!("  | {:?}", &s[..s.len().min(200)]);
    }
}

#[test]
fn extended_virtio() {
    let run = boot(Nic::Virtio, Format::Extended, "ext-virtio");
    show_first(&run, 4);
    let records = check_extended(&run, None);
    for r in records.iter().filter(|r| !r.dict.is_empty()).take(2) {
        eprintln!("  dict: {} {:?} {:?}", r.seq, r.text, r.dict);
    }
    let k = kernel().expect("kernel");
    write_fixture(&format!("linux-{}-extended.bin", short(&k.release)), &run);
}

#[test]
fn extended_e1000() {
    let run = boot(Nic::E1000, Format::Extended, "ext-e1000");
    check_extended(&run, None);
}

#[test]
fn legacy_virtio() {
    let run = boot(Nic::Virtio, Format::Legacy, "legacy-virtio");
    show_first(&run, 4);
    check_legacy(&run);
    let k = kernel().expect("kernel");
    write_fixture(&format!("linux-{}-legacy.bin", short(&k.release)), &run);
}

/// `6.1.0-57-amd64` → `6.1`.
fn short(release: &str) -> String {
    release.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Legacy on e1000, booted from the packaged bzImage (firmware, decompressor and all) rather
/// than the PVH entry: the path a real machine takes.
#[test]
fn legacy_e1000_bzimage() {
    let run = boot_with(
        Nic::E1000,
        Format::Legacy,
        "legacy-e1000",
        Link::User,
        false,
    );
    check_legacy(&run);
}

/// The raw-frame link a relay VM's ingress NIC gets (`LinuxNet::to_relay_dgram`), with the
/// capture in the relay's place: frames addressed to the relay's MAC, IP and port 6666.
#[test]
fn extended_virtio_raw_frames() {
    let run = boot_with(
        Nic::Virtio,
        Format::Extended,
        "raw-virtio",
        Link::RawDgram,
        true,
    );
    check_extended(&run, None);
}

/// `+r` (release prefix) exists from Linux 6.5. On 6.1 netconsole refuses the parameter, the
/// guest still panics and nothing is sent; on a newer kernel (`NETOOPS_LINUX_PACKAGE`, e.g.
/// `linux-image-6.12-amd64`) every datagram starts with the release.
#[test]
fn release_prefix() {
    let k = kernel().unwrap_or_else(|e| panic!("{e}"));
    let mut v = k
        .release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if version >= (6, 5) {
        let run = boot(Nic::Virtio, Format::ExtendedRelease, "release");
        show_first(&run, 2);
        check_extended(&run, Some(&k.release));
        write_fixture(
            &format!("linux-{}-extended-release.bin", short(&k.release)),
            &run,
        );
        return;
    }
    let _lock = vm_lock();
    let capture = UdpCapture::bind(16 << 20).expect("binding the loopback listener");
    let mut spec = LinuxSpec::new(
        Nic::Virtio,
        Format::ExtendedRelease,
        LinuxNet::User {
            host_port: capture.port(),
        },
    );
    spec.markers = markers("release");
    let mut vm = LinuxVm::boot(&spec).unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    let received = capture.finish();
    let log = vm.serial_log();
    assert!(exit.panicked, "no panic\n{}", vm.describe());
    assert!(
        log.contains("netoops-init: netconsole refused"),
        "{} took `+r`\n{}",
        k.release,
        vm.describe()
    );
    assert!(received.is_empty(), "{} datagrams arrived", received.len());
    let why = log
        .lines()
        .find(|l| l.contains("netconsole") && l.contains("parse"))
        .unwrap_or("(no message)");
    eprintln!("release prefix on {}: refused: {why}", k.release);
}

/// The committed captures still read back as what they were (no VM needed).
#[test]
fn fixtures_read_back() {
    let dir = workspace_root().join("appliance/wire/tests/fixtures");
    let read = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        decode_fixture(&bytes).unwrap_or_else(|| panic!("{name} is truncated"))
    };
    for (name, release) in [
        ("linux-6.1-extended.bin", false),
        ("linux-6.12-extended-release.bin", true),
    ] {
        let all = read(name);
        assert!(
            all.iter().all(|d| parse_extended(d, release).is_some()),
            "{name}"
        );
        let records = reassemble(&all, release);
        assert!(records.iter().all(|r| r.complete), "{name}");
        let long = records
            .iter()
            .find(|r| r.text.starts_with("netoops-marker ") && r.text.contains(" long "))
            .unwrap_or_else(|| panic!("{name}: no long marker"));
        assert_eq!(long.text.len(), KMSG_LINE_MAX - 1, "{name}");
        assert_eq!(long.datagrams, 2, "{name}");
        let panic = find(&records, "Kernel panic - not syncing");
        assert!(panic < find(&records, "Call Trace"), "{name}");
    }
    let text: Vec<u8> = read("linux-6.1-legacy.bin").concat();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("] Kernel panic - not syncing: sysrq triggered crash\n"));
}

/// The stream link a relay VM's `Ingress::Stream` QEMU connects to
/// (`LinuxNet::to_relay_stream`), with the test connecting in the relay's place.
#[test]
fn extended_e1000_raw_stream() {
    let run = boot_with(
        Nic::E1000,
        Format::Extended,
        "stream-e1000",
        Link::RawStream,
        true,
    );
    check_extended(&run, None);
}
