//! Group commit: acknowledged implies synced. The real `syncfs` is wrapped so that a test can
//! make it fail from a chosen call on; a failed sync must acknowledge nothing of its batch,
//! close the session with a counted error, and a resend must store everything exactly once.

mod common;

use common::raw::{frame, RawSession};
use common::{crash, dump, spawn_server, text};
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::store::{SyncFs, Syncer, CRASHES_FILE, RELAYS_DIR};
use netoops_core::upstream::Reply;
use serde_json::Value;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `syncfs`, except that once armed, the calls after the next `pass` fail.
#[derive(Debug, Default)]
struct FailingSync {
    armed: AtomicBool,
    pass: AtomicU64,
    calls: AtomicU64,
    failed: AtomicU64,
}

impl Syncer for FailingSync {
    fn sync(&self, dir: &File) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) {
            let left = self.pass.load(Ordering::SeqCst);
            if left == 0 {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::other("injected sync failure"));
            }
            self.pass.store(left - 1, Ordering::SeqCst);
        }
        SyncFs.sync(dir)
    }
}

fn crash_seqs(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("10.4.0.1").join(CRASHES_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `pass`: syncs that still succeed once armed (0: the batch's first sync fails, before
/// anything is renamed or appended; 1: its second, after the renames and appends).
fn failed_sync_acknowledges_nothing_and_a_resend_stores_once(pass: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let syncer = Arc::new(FailingSync::default());
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path());
    cfg.idle_timeout = Duration::from_secs(10);
    let server = Server::bind_with(cfg, Arc::clone(&syncer) as Arc<dyn Syncer>).unwrap();
    let (addr, counters) = spawn_server(server);

    let instance = 0x0fa17;
    let src = "10.4.0.1:2004";
    let dump_text = text(4, 20_000);
    let records = [
        (1, crash(src, 1, 0), text(1, 300)),
        (2, dump(src, 2, 1, true), text(2, 9_000)),
        (3, crash(src, 3, 0), text(3, 300)),
        (4, dump(src, 4, 1, true), dump_text.clone()),
    ];
    let bytes = |range: std::ops::RangeInclusive<usize>| -> Vec<u8> {
        records[range]
            .iter()
            .flat_map(|(seq, r, t)| frame(*seq, r, t))
            .collect()
    };

    let mut s = RawSession::open(addr, "flaky", instance).unwrap();
    assert_eq!(s.last_seq, 0);
    s.send(&bytes(0..=1)).unwrap();
    assert_eq!(s.ack_through(2).unwrap(), 2);
    // The relay state is written once the queue is idle; let that happen before arming.
    let state = tmp.path().join(RELAYS_DIR).join(format!("{instance:016x}"));
    wait_until("the relay state", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.starts_with("last_seq 2\n"))
    });

    syncer.pass.store(pass, Ordering::SeqCst);
    syncer.armed.store(true, Ordering::SeqCst);
    s.send(&bytes(2..=3)).unwrap();
    // Nothing of the failed batch is acknowledged: the session ends without an Ack.
    match s.reply() {
        Err(_) | Ok(Reply::Refused { .. }) => {}
        Ok(Reply::Ack { seq }) => panic!("Ack {seq} after a failed sync"),
        Ok(other) => panic!("unexpected {other:?}"),
    }
    wait_until("the storage error to be counted", || {
        counters.storage_errors.load(Ordering::SeqCst) == 1
    });
    assert!(syncer.failed.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        crash_seqs(tmp.path()),
        [1],
        "a failed batch's line is cut off"
    );
    let src_dir = tmp.path().join("10.4.0.1");
    if pass == 0 {
        assert!(!src_dir.join("b7-d4-t1-v3-g0.json").exists());
    }

    syncer.armed.store(false, Ordering::SeqCst);
    // The relay reconnects and resends everything above Welcome.last_seq.
    let mut s = RawSession::open(addr, "flaky", instance).unwrap();
    assert_eq!(
        s.last_seq, 2,
        "only what was acknowledged counts as applied"
    );
    s.send(&bytes(2..=3)).unwrap();
    assert_eq!(s.ack_through(4).unwrap(), 4);

    assert_eq!(crash_seqs(tmp.path()), [1, 3], "stored exactly once");
    assert_eq!(
        std::fs::read(src_dir.join("b7-d4-t1-v3-g0.log")).unwrap(),
        dump_text
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(src_dir.join("b7-d4-t1-v3-g0.json")).unwrap())
            .unwrap();
    assert_eq!(meta["seq"], 4);
    assert_eq!(meta["text_bytes"], dump_text.len());
    let names: Vec<String> = std::fs::read_dir(&src_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp-")),
        "no temporary file left: {names:?}"
    );
    assert_eq!(counters.storage_errors.load(Ordering::SeqCst), 1);
    assert_eq!(counters.crashes_stored.load(Ordering::SeqCst), 2);
    assert_eq!(counters.dumps_stored.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failed_first_sync_acknowledges_nothing_and_the_resend_stores_once() {
    failed_sync_acknowledges_nothing_and_a_resend_stores_once(0);
}

#[test]
fn a_failed_second_sync_acknowledges_nothing_and_the_resend_stores_once() {
    failed_sync_acknowledges_nothing_and_a_resend_stores_once(1);
}

/// A lone record at low load is synced and acknowledged at once: no batching timer.
#[test]
fn a_lone_record_is_acknowledged_without_waiting_for_company() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path());
    let (addr, _) = spawn_server(Server::bind(config).unwrap());
    let mut s = RawSession::open(addr, "lone", 5).unwrap();
    let mut times = Vec::new();
    for seq in 1..=20u64 {
        let t = Instant::now();
        s.send(&frame(seq, &crash("10.4.0.9:2004", seq as u16, 0), b"x"))
            .unwrap();
        s.ack_through(seq).unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let worst = times[times.len() - 1];
    eprintln!(
        "record to Ack, one at a time: median {:?}, worst {worst:?}",
        times[10]
    );
    // Two syncs of an idle file system; generous for a shared test machine.
    assert!(worst < Duration::from_millis(500), "{worst:?}");
}
