//! Issue 3, end to end on loopback: the real `netoops-relay` between a fleet of crashing
//! machines (real netoops datagrams from their own 127.x.y.z addresses, all variants, the
//! sender's three rounds with random loss) and the real `netoops-collect`, whose storage
//! directory is checked byte for byte against `netoops_wire::model::expected`.
//!
//! Helpers: `netoops_e2e::hosted`. Every process is killed if a test fails; every wait polls
//! with a generous deadline.

use netoops_e2e::hosted::{
    binaries, check_stored, crash_lines, dump_files, fleet, free_tcp_addr, generator_wants,
    send_raw, send_storm, wait_stored, wait_until, Collector, Machine, Plan, Process, Relay, Rng,
    Want,
};
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn plans(machines: &[Machine], loss: f64, seed: u64) -> (Vec<Plan>, Vec<Want>) {
    let mut rng = Rng::new(seed);
    let plans: Vec<Plan> = machines
        .iter()
        .map(|m| Plan::new(m, loss, &mut rng))
        .collect();
    let wants = plans.iter().zip(machines).map(|(p, m)| p.want(m)).collect();
    (plans, wants)
}

fn outputs(relay: &Relay, collectors: &[&Collector]) -> String {
    let mut s = relay.process.describe();
    for c in collectors {
        s.push_str(&c.process.describe());
    }
    s
}

fn stored_count(dir: &std::path::Path, machines: &[Machine]) -> usize {
    machines
        .iter()
        .filter(|m| !dump_files(dir, m.ip).is_empty())
        .count()
}

/// The main scenario with the real generator: 200 machines crash within two
/// seconds, 1-256 KiB logs of every wire variant, 10% of datagrams lost at random. The
/// generator's `--expect` output (the reference model applied to what it actually sent) is
/// compared with the collector's storage, dump by dump.
#[test]
fn the_generators_storm_of_200_machines_is_stored_as_it_expects() {
    let store = tempfile::tempdir().unwrap();
    let expect = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    // A debug-build relay on a busy machine: give bursts room in the socket.
    let mut relay = Relay::start(&[collector.addr], &["--recv-buffer", "64M"]);
    let mut cmd = std::process::Command::new(&binaries().generator);
    cmd.args(["--target", &relay.udp.to_string()])
        .args([
            "--machines",
            "200",
            "--log-size",
            "1K-256K",
            "--loss",
            "0.1",
        ])
        .args(["--seed", "2004", "--storm-ms", "2000", "--rate", "10000"])
        .args(["--source-base", "127.1.0.1", "--json", "--expect"])
        .arg(expect.path());
    let start = Instant::now();
    let mut generator = Process::spawn("netoops-gen", cmd);
    let status = generator.wait_exit();
    assert!(status.success(), "{}", generator.describe());
    let sent = start.elapsed();
    let summary: serde_json::Value = generator
        .stdout_lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary\n{}", generator.describe()));
    let datagrams = summary["datagrams_sent"].as_u64().expect("datagrams_sent");

    let wants = generator_wants(expect.path());
    assert_eq!(wants.len(), 200);
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
    let stored = start.elapsed();
    let heard = wants.iter().filter(|w| !w.unheard).count() as u64;
    let complete = wants.iter().filter(|w| w.is_complete()).count() as u64;
    let log_bytes: usize = wants.iter().map(|w| w.text.len()).sum();
    eprintln!(
        "storm: 200 machines ({heard} heard, {complete} complete), {datagrams} datagrams, \
         {} KiB of text; generator done in {:.2} s ({:.0} datagrams/s), all stored after {:.2} s",
        log_bytes / 1024,
        sent.as_secs_f64(),
        datagrams as f64 / sent.as_secs_f64(),
        stored.as_secs_f64()
    );

    let (status, c) = relay.shutdown();
    let context = relay.process.describe();
    assert!(status.success(), "{status}\n{context}");
    assert_eq!(c["kernel_drops"], 0, "{context}");
    assert_eq!(c["datagrams"], datagrams, "{context}");
    assert_eq!(c["malformed"], 0, "{context}");
    assert_eq!(c["started"], heard, "{context}");
    assert_eq!(c["complete"], complete, "{context}");
    assert!(c["partial"] >= heard - complete, "{context}");
    assert_eq!(c["dropped"], 0, "{context}");
    assert_eq!(relay.process.count("crash seen: 127.1."), heard as usize);
}

/// The main scenario: 200 machines crash at once (their datagrams interleaved), 1-256
/// KiB logs of every wire variant, 10% of datagrams lost at random. The sender backs off when
/// the relay's socket fills, so every datagram that left arrives and the relay's counters can
/// be checked exactly; what the collector stored is compared with the reference model.
#[test]
fn a_storm_of_200_machines_with_10_percent_loss_is_stored_exactly() {
    let store = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let mut relay = Relay::start(&[collector.addr], &[]);
    let machines = fleet(0x5702_0200, 1, 200, 1024, 256 * 1024);
    let (plans, wants) = plans(&machines, 0.10, 0x1055);
    let datagrams: usize = plans.iter().map(|p| p.packets.len()).sum();
    let log_bytes: usize = machines.iter().map(|m| m.s1.len() + m.s2.len()).sum();
    let partial = wants.iter().filter(|w| !w.is_complete()).count();

    let start = Instant::now();
    send_storm(relay.udp, &machines, &plans);
    let sent = start.elapsed();
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
    let stored = start.elapsed();
    eprintln!(
        "storm: {} machines, {datagrams} datagrams, {} KiB of logs, {partial} dumps partial; \
         sent in {:.2} s ({:.0} datagrams/s), all stored after {:.2} s",
        machines.len(),
        log_bytes / 1024,
        sent.as_secs_f64(),
        datagrams as f64 / sent.as_secs_f64(),
        stored.as_secs_f64()
    );

    let (status, c) = relay.shutdown();
    assert!(status.success(), "{status}\n{}", relay.process.describe());
    let context = || relay.process.describe();
    assert_eq!(c["kernel_drops"], 0, "{}", context());
    assert_eq!(c["datagrams"], datagrams as u64, "{}", context());
    assert_eq!(c["malformed"], 0, "{}", context());
    assert_eq!(c["started"], 200, "{}", context());
    assert_eq!(
        c["complete"],
        (machines.len() - partial) as u64,
        "{}",
        context()
    );
    assert!(c["partial"] >= partial as u64, "{}", context());
    assert_eq!(c["dropped"], 0, "{}", context());
    assert_eq!(
        relay.process.count("crash seen: 127.1."),
        200,
        "{}",
        context()
    );
}

#[test]
fn a_collector_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(store.path(), any_port());
    let addr = collector.addr;
    let mut relay = Relay::start(&[addr], &[]);
    let machines = fleet(0xdead_c011, 2, 60, 16 * 1024, 128 * 1024);
    let (plans, wants) = plans(&machines, 0.10, 0xdead);
    let (first, second) = machines.split_at(30);

    send_storm(relay.udp, first, &plans[..30]);
    wait_until(
        "the first dumps stored",
        || stored_count(store.path(), first) >= 3,
        || outputs(&relay, &[&collector]),
    );
    // Frozen first, so that the second half's records go to a collector that will never
    // acknowledge them: the kill then always finds records in flight, whatever the relay's
    // speed (some may also have been applied before the stop and not acknowledged).
    collector.process.signal("STOP");
    let before = stored_count(store.path(), first);
    send_storm(relay.udp, second, &plans[30..]);
    let notices = |r: &Relay| {
        second
            .iter()
            .filter(|m| r.process.count(&format!("crash seen: {}:", m.ip)) > 0)
            .count()
    };
    wait_until(
        "a crash notice for every machine of the second half",
        || notices(&relay) == second.len(),
        || relay.process.describe(),
    );
    // Two stats lines later the relay's loop has long written what it queued.
    let stats = relay.process.count("counters:");
    wait_until(
        "two more stats lines",
        || relay.process.count("counters:") >= stats + 2,
        || relay.process.describe(),
    );
    collector.process.kill_hard();
    wait_until(
        "the relay to notice the collector is gone",
        || relay.process.count("upstream 0 disconnected") >= 1,
        || relay.process.describe(),
    );
    let collector = Collector::start(store.path(), addr);
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
    eprintln!(
        "restart: {before} of 30 dumps stored before the kill, all 60 after the restart; \
         relay sessions: {}",
        relay.process.count("upstream 0 connected")
    );
    assert!(relay.process.count("upstream 0 connected") >= 2);

    let (status, c) = relay.shutdown();
    assert!(status.success(), "{}", relay.process.describe());
    assert_eq!(c["kernel_drops"], 0);
    assert_eq!(c["dropped"], 0);
    // check_stored already proved one dump file and one crash line per machine; resent
    // records were recognised as replays rather than stored twice.
    assert!(c["resent"] >= 1, "{}", relay.process.describe());
}

/// Key rotation (issue 14): the relay runs with `--upstream-key-file`; while its collector is
/// down and dumps pile up in its spool, the key file is replaced and the collector comes back
/// knowing only the new key. The relay re-reads the file on reconnect and delivers every
/// spooled dump; none is lost, none stored twice.
#[test]
fn a_key_rotation_keeps_every_spooled_record() {
    let store = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let old = "1111111111111111111111111111111111111111111111111111111111111111";
    let new = "2222222222222222222222222222222222222222222222222222222222222222";
    let key_file = keys.path().join("relay.key");
    std::fs::write(&key_file, format!("rotating:{old}\n")).unwrap();
    let collector =
        Collector::start_with_keys(store.path(), any_port(), Some(&format!("rotating {old}\n")));
    let addr = collector.addr;
    let key_arg = key_file.to_str().unwrap();
    let mut relay = Relay::start(&[addr], &["--upstream-key-file", key_arg]);
    let machines = fleet(0x0e0a_7e01, 3, 30, 4 * 1024, 32 * 1024);
    let (plans, wants) = plans(&machines, 0.0, 0x7e01);
    let (first, second) = machines.split_at(10);
    send_storm(relay.udp, first, &plans[..10]);
    wait_stored(store.path(), &wants[..10], || {
        outputs(&relay, &[&collector])
    });

    let mut collector = collector;
    collector.process.kill_hard();
    wait_until(
        "the relay to notice the collector is gone",
        || relay.process.count("upstream 0 disconnected") >= 1,
        || relay.process.describe(),
    );
    send_storm(relay.udp, second, &plans[10..]);
    let notices = |r: &Relay| {
        second
            .iter()
            .filter(|m| r.process.count(&format!("crash seen: {}:", m.ip)) > 0)
            .count()
    };
    wait_until(
        "a crash notice for every machine of the second part",
        || notices(&relay) == second.len(),
        || relay.process.describe(),
    );
    // The rotation: new key on the relay, and a collector that knows only the new one.
    std::fs::write(&key_file, format!("rotating:{new}\n")).unwrap();
    let collector =
        Collector::start_with_keys(store.path(), addr, Some(&format!("rotating {new}\n")));
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
    let (status, c) = relay.shutdown();
    assert!(status.success(), "{}", relay.process.describe());
    assert_eq!(c["dropped"], 0);
}

#[test]
fn delivery_starts_when_an_upstream_appears() {
    let store = tempfile::tempdir().unwrap();
    let addr = free_tcp_addr();
    let relay = Relay::start(&[addr], &[]);
    let machines = fleet(0x1a7e, 3, 20, 2048, 64 * 1024);
    let (plans, wants) = plans(&machines, 0.10, 0x1a7e);
    send_storm(relay.udp, &machines, &plans);
    wait_until(
        "every dump queued in the relay",
        || relay.process.count("dump queued: 127.3.") >= 20,
        || relay.process.describe(),
    );
    assert!(relay.process.count("connect_failed") >= 1);
    assert_eq!(relay.process.count(" delivered: "), 0);

    let collector = Collector::start(store.path(), addr);
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
}

#[test]
fn delivery_moves_to_the_second_upstream_when_the_first_dies() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = Collector::start(dir_a.path(), any_port());
    let b = Collector::start(dir_b.path(), any_port());
    let mut relay = Relay::start(&[a.addr, b.addr], &[]);
    let machines = fleet(0x0fa1_10e7, 4, 40, 2048, 96 * 1024);
    let (plans, wants) = plans(&machines, 0.10, 0xfa11);
    let (first, second) = machines.split_at(20);

    send_storm(relay.udp, first, &plans[..20]);
    wait_stored(dir_a.path(), &wants[..20], || outputs(&relay, &[&a, &b]));
    assert_eq!(
        stored_count(dir_b.path(), first),
        0,
        "upstream 1 used early"
    );

    a.process.kill_hard();
    send_storm(relay.udp, second, &plans[20..]);
    wait_stored(dir_b.path(), &wants[20..], || outputs(&relay, &[&a, &b]));
    assert_eq!(stored_count(dir_a.path(), second), 0);
    relay
        .process
        .wait_for_line("delivery moved from upstream 0 to upstream 1");
}

/// Datagrams the relay must refuse as malformed, each for a different reason.
fn malformed_datagrams() -> Vec<Vec<u8>> {
    let log = b"[    1.000000] garbage test\n".repeat(100);
    let m = SenderModel::new(&[], &log);
    let real = |variant: Variant, packet_no: u32, count: u32| {
        let h = DumpHeader::new(variant, 99, "6.1.0-garbage");
        let mut buf = vec![0u8; 2048];
        let n = encode(&h, count, packet_no, &m.chunk(packet_no), &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let mut rng = Rng::new(0x6a7b);
    let mut random = vec![0u8; 1284];
    random.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    random[..2].copy_from_slice(&0x7777u16.to_le_bytes());

    let mut out = vec![
        Vec::new(),
        b"netoops?".to_vec(),
        random,
        real(Variant::V3X86_64, 0, m.packet_count())[..700].to_vec(),
        real(Variant::V3X86_64, 5, 5),
        real(Variant::V3X86_64Blob, 0, 1_000_000),
    ];
    let mut long = real(Variant::V2, 0, m.packet_count());
    long.extend_from_slice(&[b'x'; 100]);
    out.push(long);
    let mut zero = real(Variant::V2, 0, m.packet_count());
    zero[10..14].copy_from_slice(&0u32.to_le_bytes()); // v2 packet_count
    out.push(zero);
    let mut arch = real(Variant::V2, 0, m.packet_count());
    arch[4..6].copy_from_slice(&9u16.to_le_bytes()); // v2 arch
    out.push(arch);
    out
}

/// A peer at the relay's first upstream address that answers every session with garbage.
struct Liar {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Liar {
    fn start() -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut sessions = 0;
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                sessions += 1;
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut hello = [0u8; 64];
                let _ = s.read(&mut hello);
                // A well-framed reply that is not a reply, then an oversized frame.
                let mut garbage = 16u32.to_le_bytes().to_vec();
                garbage.extend_from_slice(&[0xee; 16]);
                garbage.extend_from_slice(&u32::MAX.to_le_bytes());
                let _ = s.write_all(&garbage);
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
            sessions
        });
        Liar {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn sessions(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects to the collector, sends `bytes` and returns whether the collector hung up.
fn collector_hangs_up_on(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn garbage_datagrams_and_garbage_tcp_are_counted_and_refused() {
    let store = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let liar = Liar::start();
    let mut relay = Relay::start(&[liar.addr, collector.addr], &["--allow", "127.5.0.0/16"]);
    let machines = fleet(0x06a7_ba6e, 5, 30, 1024, 64 * 1024);
    let (plans, wants) = plans(&machines, 0.10, 0x6a7b);

    let garbage = malformed_datagrams();
    let oversized = vec![vec![0x42u8; 3000]; 3];
    let foreign_machine = &fleet(0xf0, 6, 1, 4096, 4096)[0];
    let foreign: Vec<Vec<u8>> = {
        let s = foreign_machine.sender();
        (0..s.packet_count())
            .map(|p| {
                let mut buf = vec![0u8; 2048];
                let n = encode(
                    &foreign_machine.header,
                    s.packet_count(),
                    p,
                    &s.chunk(p),
                    &mut buf,
                )
                .unwrap();
                buf.truncate(n);
                buf
            })
            .collect()
    };
    let bad_source = Ipv4Addr::new(127, 5, 200, 1);
    send_raw(relay.udp, bad_source, &garbage);
    send_raw(relay.udp, bad_source, &oversized);
    send_raw(relay.udp, foreign_machine.ip, &foreign);

    // Garbage TCP at the real collector while the relay delivers to it.
    let collector_addr = collector.addr;
    let tcp_garbage = std::thread::spawn(move || {
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"never mind");
        let mut not_hello = 12u32.to_le_bytes().to_vec();
        not_hello.extend_from_slice(&[0xab; 12]);
        let random: Vec<u8> = {
            let mut rng = Rng::new(5);
            (0..4096).map(|_| rng.next_u64() as u8).collect()
        };
        [huge, not_hello, random]
            .iter()
            .map(|bytes| collector_hangs_up_on(collector_addr, bytes))
            .collect::<Vec<bool>>()
    });

    send_storm(relay.udp, &machines, &plans);
    send_raw(relay.udp, bad_source, &garbage);
    wait_stored(store.path(), &wants, || outputs(&relay, &[&collector]));
    let hung_up = tcp_garbage.join().unwrap();
    assert_eq!(
        hung_up,
        [true, true, true],
        "{}",
        collector.process.describe()
    );

    let (status, c) = relay.shutdown();
    let context = relay.process.describe();
    assert!(status.success(), "{context}");
    assert_eq!(c["malformed"], 2 * garbage.len() as u64, "{context}");
    assert_eq!(c["truncated"], oversized.len() as u64, "{context}");
    assert_eq!(c["not_allowed"], foreign.len() as u64, "{context}");
    assert_eq!(c["kernel_drops"], 0, "{context}");
    // The liar holds no key: its garbage fails the secure channel, before any record layer.
    assert!(c["auth_failures"] >= 1, "{context}");
    assert!(relay.process.count("upstream 0 disconnected: auth_failed") >= 1);
    assert!(liar.sessions() >= 1);

    // Nothing from the refused sources reached storage, and the collector said why it hung
    // up on each garbage connection.
    for ip in [bad_source, foreign_machine.ip] {
        assert!(dump_files(store.path(), ip).is_empty());
        assert!(crash_lines(store.path(), ip).is_empty());
    }
    let complaints = collector
        .process
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("closing"))
        .count();
    assert!(complaints >= 3, "{}", collector.process.describe());
    for w in &wants {
        check_stored(store.path(), w).unwrap();
    }
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "upstream = \"127.0.0.1:9\"\ncolour = \"blue\"\n").unwrap();
    let file = file.to_str().unwrap();
    for (args, key) in [
        (
            vec!["--upstream", "127.0.0.1:9", "--memory", "lots"],
            "memory",
        ),
        (
            vec!["--upstream", "127.0.0.1:9", "--memory", "1K"],
            "memory",
        ),
        (vec!["--upstream", "127.0.0.1:9", "--quiet", "0s"], "quiet"),
        // More than any build machine has: refused, not an allocation failure.
        (
            vec!["--upstream", "127.0.0.1:9", "--spool", "900G"],
            "spool",
        ),
        (vec!["--upstream", "nowhere"], "upstream"),
        (vec!["--listen", "127.0.0.1:0"], "upstream"),
        (vec!["--config", file], "colour"),
    ] {
        let mut cmd = std::process::Command::new(&netoops_e2e::hosted::binaries().relay);
        cmd.args(&args);
        let mut p = netoops_e2e::hosted::Process::spawn("netoops-relay", cmd);
        let status = p.wait_exit();
        let stderr = p.stderr_lines().join("\n");
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", p.describe());
        assert!(stderr.contains(&format!("`{key}`")), "{args:?}: {stderr}");
    }
}

/// The relay reads its upstream and timings from a TOML file; at SIGTERM a dump still
/// assembling is emitted as partial, and with no collector reachable the relay gives up after
/// the drain timeout, says what it could not deliver and exits 0.
#[test]
fn shutdown_without_an_upstream_gives_up_after_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "upstream = [\"{}\"]\nname = \"e2e-drain\"\nquiet = \"10m\"\nstats = \"1s\"\n",
            free_tcp_addr()
        ),
    )
    .unwrap();
    let mut relay = Relay::start(
        &[],
        &["--config", file.to_str().unwrap(), "--drain-timeout", "1s"],
    );
    relay.process.wait_for_line("name e2e-drain");
    let machine = &fleet(0xd7a1, 7, 1, 8192, 8192)[0];
    let plan = Plan {
        packets: vec![0, 1, 2, 5, 6, 7],
        received: Vec::new(),
    };
    send_storm(relay.udp, std::slice::from_ref(machine), &[plan]);
    relay.process.wait_for_line("crash seen: 127.7.0.1:");

    let start = Instant::now();
    let (status, c) = relay.shutdown();
    let took = start.elapsed();
    let context = relay.process.describe();
    assert!(status.success(), "{context}");
    assert!(took >= Duration::from_secs(1), "{took:?}\n{context}");
    assert_eq!(
        relay.process.count("dump queued: 127.7.0.1:"),
        1,
        "{context}"
    );
    let count = machine.sender().packet_count();
    assert_eq!(
        relay.process.count(&format!("PARTIAL 6/{count} packets")),
        1,
        "{context}"
    );
    assert_eq!(
        relay.process.count("drain timeout: 2 records"),
        1,
        "{context}"
    );
    assert_eq!(c["partial"], 1);
    assert_eq!(c["delivered"], 0);
}
