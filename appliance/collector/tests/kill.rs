//! The real `netoops-collect serve` killed with SIGKILL at random moments, many times, while
//! clients stream dumps and crash notices for several relay instances and resend from
//! `Welcome.last_seq` after every reconnect, as the relay does. After every kill, everything
//! acknowledged so far must be on disk; at the end every record is stored once: every dump's
//! text exact, every crash line present with no `(relay_instance, seq)` twice.

mod common;

use common::raw::{frame, RawSession};
use common::{crash, dump, kill, spawn_collector, text};
use netoops_collect::store::CRASHES_FILE;
use netoops_core::upstream::Record;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTANCES: u64 = 3;
const KILLS: usize = 20;
/// Records sent before waiting for their acks.
const WINDOW: u64 = 48;

fn source(instance: u64, seq: u64) -> String {
    format!("10.60.{instance}.{}:2004", seq % 40)
}

/// Record `seq` of `instance`: every third a dump (its own dump id), the rest crash notices.
fn record(instance: u64, seq: u64) -> (Record, Vec<u8>) {
    let src = source(instance, seq);
    let seed = instance * 1_000_000 + seq;
    if seq % 3 == 0 {
        (
            dump(&src, seq as u16, 1, true),
            text(seed, 2_000 + (seq as usize % 7) * 1_500),
        )
    } else {
        (crash(&src, seq as u16, 0), text(seed, 200))
    }
}

fn ip_dir(instance: u64, seq: u64) -> String {
    format!("10.60.{instance}.{}", seq % 40)
}

/// Every crash line under `dir` as (relay_instance, seq), with repeats. A last line without
/// its newline is an append the kill cut short: never acknowledged, and cut off by the
/// store when it opens (store.rs, "A torn last line"), so it is not counted.
fn crash_lines(dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path().join(CRASHES_FILE);
        if let Ok(t) = std::fs::read_to_string(&p) {
            for l in t.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
                let v: Value = serde_json::from_str(l).unwrap();
                out.push((
                    v["relay_instance"].as_u64().unwrap(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
        }
    }
    out
}

/// Asserts that records 1..=through of every instance are on disk exactly once.
fn assert_stored(dir: &Path, through: &HashMap<u64, u64>, when: &str) {
    let lines = crash_lines(dir);
    let mut seen = HashSet::new();
    for l in &lines {
        assert!(seen.insert(*l), "{when}: crash line {l:?} twice");
    }
    for (&instance, &last) in through {
        for seq in 1..=last {
            let (r, t) = record(instance, seq);
            match r {
                Record::Dump(_) => {
                    let base = dir.join(ip_dir(instance, seq));
                    let key = format!("b7-d{seq}-t1-v3-g0");
                    let got = std::fs::read(base.join(format!("{key}.log")));
                    assert!(
                        got.as_deref().ok() == Some(&t[..]),
                        "{when}: dump seq {seq} of instance {instance} acknowledged but its text is not on disk"
                    );
                    let meta: Value = serde_json::from_slice(
                        &std::fs::read(base.join(format!("{key}.json"))).unwrap(),
                    )
                    .unwrap_or_else(|e| panic!("{when}: {key}.json: {e}"));
                    assert_eq!(meta["seq"], seq);
                }
                _ => assert!(
                    seen.contains(&(instance + 1, seq)),
                    "{when}: crash line seq {seq} of instance {instance} acknowledged but missing"
                ),
            }
        }
    }
}

/// One relay instance's progress.
struct Progress {
    /// Highest seq acknowledged.
    acked: AtomicU64,
    /// Highest seq sent.
    sent: AtomicU64,
    /// Seqs go up to this (raised when the kills are over, to what was sent).
    limit: AtomicU64,
}

/// One relay instance: sends everything above what is acknowledged or applied, in windows,
/// reconnecting to wherever the collector listens now after every failure.
fn relay(instance: u64, addr: &Mutex<SocketAddr>, p: &Progress, sessions: &AtomicU64) {
    // Relay instance ids start at 1 (0 is never used by the relay).
    let id = instance + 1;
    while p.acked.load(Ordering::SeqCst) < p.limit.load(Ordering::SeqCst) {
        let a = *addr.lock().unwrap();
        let Ok(mut s) = RawSession::open(a, "kill-test", id) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        sessions.fetch_add(1, Ordering::SeqCst);
        assert!(
            s.last_seq <= p.sent.load(Ordering::SeqCst),
            "Welcome.last_seq {} beyond anything sent",
            s.last_seq
        );
        // Like the relay: records acknowledged are gone from its spool; the rest above
        // last_seq are resent.
        let mut next = p.acked.load(Ordering::SeqCst).max(s.last_seq) + 1;
        let result = (|| -> std::io::Result<()> {
            loop {
                let limit = p.limit.load(Ordering::SeqCst);
                if next > limit {
                    return Ok(());
                }
                let end = (next + WINDOW - 1).min(limit);
                let mut bytes = Vec::new();
                for seq in next..=end {
                    let (r, t) = record(instance, seq);
                    bytes.extend_from_slice(&frame(seq, &r, &t));
                }
                p.sent.fetch_max(end, Ordering::SeqCst);
                s.send(&bytes)?;
                let a = s.ack_through(end)?;
                p.acked.fetch_max(a, Ordering::SeqCst);
                next = end + 1;
            }
        })();
        if result.is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (child, addr) = spawn_collector(tmp.path());
    let child = Arc::new(Mutex::new(child));
    let addr = Arc::new(Mutex::new(addr));
    let progress: Arc<Vec<Progress>> = Arc::new(
        (0..INSTANCES)
            .map(|_| Progress {
                acked: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                limit: AtomicU64::new(60_000),
            })
            .collect(),
    );
    let sessions = Arc::new(AtomicU64::new(0));
    let relays: Vec<_> = (0..INSTANCES)
        .map(|i| {
            let (addr, progress, sessions) = (
                Arc::clone(&addr),
                Arc::clone(&progress),
                Arc::clone(&sessions),
            );
            std::thread::spawn(move || relay(i, &addr, &progress[i as usize], &sessions))
        })
        .collect();

    let total = || -> u64 {
        progress
            .iter()
            .map(|p| p.acked.load(Ordering::SeqCst))
            .sum()
    };
    let mut acked_at_kills: Vec<u64> = Vec::new();
    for kill in 1..=KILLS {
        // Each kill lands while records flow: after the restarted collector acknowledged
        // something, at a random moment within the next 80 ms.
        let before = acked_at_kills.last().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while total() <= before {
            assert!(
                Instant::now() < deadline,
                "no progress after kill {}",
                kill - 1
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rand(80)));
        let mut c = child.lock().unwrap();
        common::kill(&mut c);
        // Whatever was acknowledged before the kill must be there now.
        let through: HashMap<u64, u64> = (0..INSTANCES)
            .map(|i| (i, progress[i as usize].acked.load(Ordering::SeqCst)))
            .collect();
        assert_stored(tmp.path(), &through, &format!("after kill {kill}"));
        acked_at_kills.push(through.values().sum::<u64>());
        let (next, a) = spawn_collector(tmp.path());
        *c = next;
        *addr.lock().unwrap() = a;
    }
    // The relays finish what they have sent.
    for p in progress.iter() {
        p.limit
            .store(p.sent.load(Ordering::SeqCst).max(1), Ordering::SeqCst);
    }
    for r in relays {
        r.join().unwrap();
    }
    kill(&mut child.lock().unwrap());
    let all: HashMap<u64, u64> = (0..INSTANCES)
        .map(|i| (i, progress[i as usize].limit.load(Ordering::SeqCst)))
        .collect();
    assert_stored(tmp.path(), &all, "at the end");
    let lines = crash_lines(tmp.path());
    let crashes_sent: u64 = all.values().map(|&n| n - n / 3).sum();
    assert_eq!(
        lines.len() as u64,
        crashes_sent,
        "no crash line lost or duplicated"
    );
    eprintln!(
        "{KILLS} kills, acknowledged records at each: {acked_at_kills:?}; {} records, {} sessions, {:.1} s",
        all.values().sum::<u64>(),
        sessions.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
}
