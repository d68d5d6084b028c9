//! Attacks on the collector's relay listener (issue 14), against a real in-process collector
//! with keys, real TCP and the real `UpstreamLink`: forged clients, a stolen instance id,
//! slow clients holding connections, and a full disk.

mod common;

use common::raw::frame;
use common::*;
use netoops_collect::keys::{replay_instance, KeyTable};
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::session::Counters;
use netoops_collect::store::{Syncer, RELAYS_DIR};
use netoops_core::upstream::secure::{Psk, SessionKey};
use netoops_core::upstream::{CloseReason, LinkConfig, LinkSecurity, Record, PROTOCOL_VERSION};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EDGE: &str = "edge-1";
const K_EDGE: [u8; 32] = [0x11; 32];
const OTHER: &str = "other-relay";
const K_OTHER: [u8; 32] = [0x22; 32];

fn keys_text() -> String {
    format!(
        "{EDGE} {}\n{OTHER} {}\n",
        Psk(K_EDGE).to_hex(),
        Psk(K_OTHER).to_hex()
    )
}

fn start(dir: &Path, config: impl FnOnce(&mut ServerConfig)) -> (SocketAddr, Arc<Counters>) {
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    cfg.idle_timeout = Duration::from_secs(20);
    cfg.keys = Some(Arc::new(KeyTable::parse(&keys_text()).unwrap()));
    config(&mut cfg);
    spawn_server(Server::bind(cfg).unwrap())
}

fn keyed(instance: u64, id: &str, psk: [u8; 32]) -> LinkConfig {
    LinkConfig {
        security: Some(LinkSecurity {
            key: SessionKey {
                id: id.into(),
                psk: Psk(psk),
            },
            seed: [instance as u8; 32],
        }),
        ..link_config(instance)
    }
}

/// Source directories the collector created (where records were stored).
fn stored_sources(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn relay_states(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join(RELAYS_DIR))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn load(c: &Counters, f: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(c).load(Ordering::Relaxed)
}

#[test]
fn a_forged_client_without_the_key_stores_nothing_and_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, counters) = start(tmp.path(), |_| {});

    // A plaintext Hello and Dump, as the forged client sent them.
    let hello = Record::Hello {
        protocol: PROTOCOL_VERSION,
        relay: EDGE.into(),
        instance: 7,
    };
    let mut forged = frame(0, &hello, &[]);
    forged.extend_from_slice(&frame(
        1,
        &dump("10.9.9.9:2004", 1, 1, true),
        b"forged text",
    ));
    assert_eq!(
        send_raw(addr, &forged),
        b"",
        "a plaintext client got an answer"
    );

    // The real link with a wrong key for a real id, and with an id nobody configured.
    for (id, psk) in [(EDGE, [0x99; 32]), ("nobody", K_EDGE)] {
        let mut d = Driver::new(keyed(8, id, psk), vec![addr]);
        d.enqueue(&dump("10.9.9.9:2004", 2, 1, true), b"forged by the link");
        assert!(!d.drain(Duration::from_secs(2)));
        assert_eq!(d.link.stats().sessions, 0);
    }

    assert!(stored_sources(tmp.path()).is_empty());
    assert!(relay_states(tmp.path()).is_empty());
    assert_eq!(load(&counters, |c| &c.sessions), 0);
    assert!(load(&counters, |c| &c.auth_not_handshake) >= 1);
    assert!(load(&counters, |c| &c.auth_bad_key) >= 1);
    assert!(load(&counters, |c| &c.auth_unknown_key) >= 1);
    assert_eq!(
        load(&counters, |c| &c.auth_refused),
        load(&counters, |c| &c.auth_not_handshake)
            + load(&counters, |c| &c.auth_bad_key)
            + load(&counters, |c| &c.auth_unknown_key)
    );
    let json: serde_json::Value = serde_json::from_str(&counters.to_json()).unwrap();
    assert_eq!(json["auth_bad_key"], load(&counters, |c| &c.auth_bad_key));

    // The right key is welcome (the control: the refusals above were about the key).
    let mut d = Driver::new(keyed(9, EDGE, K_EDGE), vec![addr]);
    d.enqueue(&dump("10.9.9.9:2004", 3, 1, true), b"the real one");
    assert!(d.drain(Duration::from_secs(10)), "{:?}", d.link.stats());
    assert_eq!(stored_sources(tmp.path()), ["10.9.9.9"]);
}

#[test]
fn a_stolen_instance_id_with_another_key_cannot_advance_the_real_relays_replay_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _counters) = start(tmp.path(), |_| {});
    let instance = 0x5eed_0001;
    let src = "10.7.0.1:2004";

    let mut real = Driver::new(keyed(instance, EDGE, K_EDGE), vec![addr]);
    real.enqueue(&crash(src, 1, 0), b"real crash 1");
    real.enqueue(&dump(src, 1, 1, true), b"real dump 1");
    assert!(real.drain(Duration::from_secs(10)));

    // An attacker holding another relay's key claims the real relay's name and instance
    // (printed on its console) in Hello and sends seqs far ahead.
    let mut forged_cfg = keyed(instance, OTHER, K_OTHER);
    forged_cfg.relay = EDGE.into();
    let mut attacker = Driver::new(forged_cfg, vec![addr]);
    for n in 0..10 {
        attacker.enqueue(&dump("10.7.0.66:2004", 100 + n, 1, true), b"forged");
    }
    assert!(attacker.drain(Duration::from_secs(10)));

    // The real relay's next records are stored, not acknowledged as replays.
    real.enqueue(&dump(src, 2, 1, true), b"real dump 2");
    assert!(real.drain(Duration::from_secs(10)));
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("10.7.0.1").join("b7-d2-t1-v3-g0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["relay"], EDGE);
    assert_eq!(meta["relay_instance"], replay_instance(EDGE, instance));
    assert_eq!(meta["seq"], 3);
    // The forged ones are stored under the attacker's authenticated id, not the claimed name.
    let forged: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("10.7.0.66").join("b7-d100-t1-v3-g0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(forged["relay"], OTHER);
    assert_ne!(forged["relay_instance"], meta["relay_instance"]);

    // And a wrong key for the real id gets nowhere at all.
    let mut wrong = Driver::new(keyed(instance, EDGE, K_OTHER), vec![addr]);
    wrong.enqueue(&dump("10.7.0.66:2004", 200, 1, true), b"forged");
    assert!(!wrong.drain(Duration::from_secs(2)));
    assert!(!tmp
        .path()
        .join("10.7.0.66")
        .join("b7-d200-t1-v3-g0.json")
        .exists());
}

#[test]
fn slow_clients_holding_connections_do_not_lock_out_a_real_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, counters) = start(tmp.path(), |_| {});
    // 256 connections from another address, each dribbling a byte now and then: a key id
    // prefix that never ends (the handshake budget and its absolute deadline apply).
    let mut slow = Vec::new();
    for i in 0..256u32 {
        let ip = std::net::Ipv4Addr::new(127, 0, 2 + (i % 4) as u8, 1);
        let Ok(s) = connect_from(ip, addr) else {
            continue;
        };
        let _ = (&s).write_all(&[60]);
        slow.push(s);
    }
    assert!(
        slow.len() >= 200,
        "only {} slow clients connected",
        slow.len()
    );
    let dribble = std::thread::spawn(move || {
        for _ in 0..6 {
            for s in &slow {
                let _ = (&*s).write_all(b"x");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        slow
    });

    let mut real = Driver::new(keyed(0xabc, EDGE, K_EDGE), vec![addr]);
    real.enqueue(
        &dump("10.8.0.1:2004", 1, 1, true),
        b"delivered past the slow clients",
    );
    let started = Instant::now();
    assert!(
        real.drain(Duration::from_secs(8)),
        "{:?}",
        real.link.stats()
    );
    // Well before the slow clients' handshake deadline: they did not hold a slot it needed.
    assert!(started.elapsed() < netoops_collect::session::HANDSHAKE_DEADLINE);
    assert!(load(&counters, |c| &c.rejected_pending) >= 200);
    drop(dribble.join().unwrap());
}

/// A TCP connection to `to` from the local address `from` (any 127.x works on Linux).
fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    // std cannot bind before connecting; libc can.
    // SAFETY: plain socket calls on a descriptor owned here; on success it is handed to
    // TcpStream, which owns and closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sin(from, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let SocketAddr::V4(to) = to else {
            return Err(io::Error::other("IPv4 only"));
        };
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Every sync fails: the disk is full.
#[derive(Debug)]
struct FullDisk;

impl Syncer for FullDisk {
    fn sync(&self, _dir: &File) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

#[test]
fn a_full_disk_is_answered_with_a_refusal_and_the_relay_backs_off() {
    let tmp = tempfile::tempdir().unwrap();
    // The store syncs once when opened: open it on a good disk, then let the disk fill.
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path());
    cfg.keys = Some(Arc::new(KeyTable::parse(&keys_text()).unwrap()));
    let full = Arc::new(SwitchableDisk::default());
    let server = Server::bind_with(cfg, Arc::clone(&full) as Arc<dyn Syncer>).unwrap();
    full.fill();
    let (addr, counters) = spawn_server(server);

    let mut cfg = keyed(0xd15c, EDGE, K_EDGE);
    cfg.backoff_min = netoops_core::time::Duration::from_millis(20);
    cfg.backoff_max = netoops_core::time::Duration::from_secs(5);
    let mut d = Driver::new(cfg, vec![addr]);
    d.enqueue(&dump("10.6.0.1:2004", 1, 1, true), b"no room for this");
    d.run_until(Duration::from_secs(4), |_| false);
    let s = d.link.stats();
    assert!(
        s.disconnects.get(CloseReason::Refused) >= 2,
        "{s:?} {}",
        counters.to_json()
    );
    // Backoff 20 ms doubling per refusal: within 4 s at most a handful of sessions (a relay
    // that reconnected after every close would have made a hundred or more).
    assert!(s.connects <= 10, "{s:?}");
    assert_eq!(s.spool_records, 1);
    assert!(load(&counters, |c| &c.storage_errors) >= 2);
}

/// A disk that works until [`SwitchableDisk::fill`].
#[derive(Debug, Default)]
struct SwitchableDisk(std::sync::atomic::AtomicBool);

impl SwitchableDisk {
    fn fill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Syncer for SwitchableDisk {
    fn sync(&self, dir: &File) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return FullDisk.sync(dir);
        }
        netoops_collect::store::SyncFs.sync(dir)
    }
}

/// An authenticated client that writes whatever plaintext it is told, through the real
/// secure channel, with blocking I/O.
struct KeyedClient {
    stream: TcpStream,
    chan: netoops_core::upstream::secure::Initiator,
}

impl KeyedClient {
    fn connect(addr: SocketAddr, id: &str, psk: [u8; 32]) -> KeyedClient {
        use netoops_core::upstream::secure::{ChannelRng, Initiator};
        let key = SessionKey {
            id: id.into(),
            psk: Psk(psk),
        };
        let mut chan =
            Initiator::new(&key, ChannelRng::new(&[7; 32], 0), 16 * 1024, 64 * 1024).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = chan.poll_transmit(&mut buf, |_| 0).unwrap();
        stream.write_all(&buf[..n]).unwrap();
        while !chan.is_established() {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed during the handshake");
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (k, _) = chan.read(rest).unwrap();
                rest = &rest[k..];
            }
        }
        let mut c = KeyedClient { stream, chan };
        let hello = Record::Hello {
            protocol: PROTOCOL_VERSION,
            relay: id.into(),
            instance: 1,
        };
        c.send(&frame(0, &hello, &[])).unwrap();
        c
    }

    fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let mut buf = vec![0u8; 20 * 1024];
        while !bytes.is_empty() {
            let n = self
                .chan
                .poll_transmit(&mut buf, |p| {
                    let k = p.len().min(bytes.len());
                    p[..k].copy_from_slice(&bytes[..k]);
                    bytes = &bytes[k..];
                    k
                })
                .unwrap();
            self.stream.write_all(&buf[..n])?;
        }
        Ok(())
    }

    /// Whether the collector closed the connection (waits up to the read timeout).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[test]
fn a_frame_dribbled_byte_by_byte_meets_an_absolute_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, counters) = start(tmp.path(), |c| c.frame_deadline = Duration::from_secs(2));
    let mut c = KeyedClient::connect(addr, EDGE, K_EDGE);
    let big = frame(1, &dump("10.5.0.1:2004", 1, 1, true), &text(1, 1 << 20));
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 100 ms: an idle timer (20 s here) would never fire.
    while started.elapsed() < Duration::from_secs(6) && c.send(&big[sent..sent + 1]).is_ok() {
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.closed());
    assert!(started.elapsed() < Duration::from_secs(6), "never closed");
    let until = Instant::now() + Duration::from_secs(5);
    while load(&counters, |c| &c.frame_timeouts) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(load(&counters, |c| &c.frame_timeouts), 1);
    assert!(stored_sources(tmp.path()).is_empty());
}

#[test]
fn partial_frames_of_all_connections_share_one_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, counters) = start(tmp.path(), |c| c.max_frame_memory = 8 << 20);
    let big = frame(1, &dump("10.5.0.2:2004", 1, 1, true), &text(2, 7 << 20));
    let mut a = KeyedClient::connect(addr, EDGE, K_EDGE);
    a.send(&big[..5 << 20]).unwrap();
    // Let the collector take it in before the second one starts.
    std::thread::sleep(Duration::from_millis(500));
    let mut b = KeyedClient::connect(addr, OTHER, K_OTHER);
    let _ = b.send(&big[..5 << 20]);
    assert!(b.closed(), "a second 5 MiB partial frame was held");
    // Counted once its connection's threads are done.
    let until = Instant::now() + Duration::from_secs(5);
    while load(&counters, |c| &c.memory_refused) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(load(&counters, |c| &c.memory_refused), 1);
    // The first one still completes its frame and is stored.
    a.send(&big[5 << 20..]).unwrap();
    // The .json is written after its .log is durable.
    let stored = tmp.path().join("10.5.0.2").join("b7-d1-t1-v3-g0");
    let until = Instant::now() + Duration::from_secs(10);
    while !stored.with_extension("json").exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read(stored.with_extension("log")).unwrap();
    assert!(log == text(2, 7 << 20), "stored {} bytes", log.len());
}
