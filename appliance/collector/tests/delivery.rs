//! The real UpstreamLink over real TCP sockets against a real collector (in-process server or
//! the built binary), storing into real files.

mod common;

use common::*;
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::session::Counters;
use netoops_collect::store::CRASHES_FILE;
use netoops_core::upstream::record::{
    decode_reply, encode_record_frame, RecordHeaderRef, LEN_PREFIX,
};
use netoops_core::upstream::LinkConfig;
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// An in-process collector storing into `dir`, and a relay (`link`) delivering to it.
fn relay_to_in_process(dir: &Path, link: LinkConfig) -> (Driver, Arc<Counters>) {
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    cfg.idle_timeout = Duration::from_secs(5);
    let (addr, counters) = spawn_server(Server::bind(cfg).unwrap());
    (Driver::new(link, vec![addr]), counters)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn crash_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_are_stored_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, counters) = relay_to_in_process(tmp.path(), link_config(0xfeed));
    let chunk = text(1, 1024);
    let full = text(2, 12 * 1024 - 37);
    let better = text(3, 12 * 1024);
    d.enqueue(&crash("10.1.2.3:2004", 4242, 0), &chunk);
    d.enqueue(&dump("10.1.2.3:2004", 4242, 1, false), &full);
    // The newer revision carries the evidence counts the relay records (protocol 3).
    let mut flagged = dump("10.1.2.3:2004", 4242, 2, true);
    if let Record::Dump(m) = &mut flagged {
        (m.conflicts, m.foreign_port_chunks, m.late_chunks) = (1, 2, 3);
    }
    d.enqueue(&flagged, &better);
    d.enqueue(&dump("[fe80::1]:2004", 9, 1, true), b"v6 text");
    assert!(d.drain(Duration::from_secs(20)), "{:?}", d.link.stats());
    assert_eq!(d.link.stats().delivered.total(), 4);

    let src = tmp.path().join("10.1.2.3");
    assert_eq!(
        std::fs::read(src.join("b7-d4242-t1-v3-g0.log")).unwrap(),
        better
    );
    let meta = read_json(&src.join("b7-d4242-t1-v3-g0.json"));
    assert_eq!(meta["source"], "10.1.2.3:2004");
    assert_eq!(meta["revision"], 2);
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["received"], 12);
    assert_eq!(meta["packet_count"], 12);
    assert_eq!(meta["kernel_version"], "6.1.0-13-amd64");
    assert_eq!(meta["relay"], "test-relay");
    assert_eq!(meta["relay_instance"], 0xfeed);
    assert_eq!(meta["seq"], 3);
    assert_eq!(meta["cpu"]["model"], 85);
    assert_eq!(meta["registers"]["ip"], "0xffffffff81001234");
    assert_eq!(meta["user_blob"], "a5".repeat(128));
    assert_eq!(meta["zeroed"], serde_json::json!([11]));
    assert_eq!(
        (
            &meta["conflicts"],
            &meta["foreign_port_chunks"],
            &meta["late_chunks"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(3)
        )
    );
    // Relay time 1100 ms is 1 s after first_seen at 100 ms.
    let first = meta["first_seen"].as_str().unwrap();
    let done = meta["completed"].as_str().unwrap();
    assert!(first.ends_with('Z') && first.len() == 24, "{first}");
    // Exactly 1 s apart on the wall clock, as on the relay clock.
    let ms_of_day = |t: &str| {
        let f = |r: core::ops::Range<usize>| t[r].parse::<i64>().unwrap();
        f(11..13) * 3_600_000 + f(14..16) * 60_000 + f(17..19) * 1000 + f(20..23)
    };
    assert_eq!(
        (ms_of_day(done) - ms_of_day(first)).rem_euclid(86_400_000),
        1000,
        "{first} {done}"
    );

    let lines = crash_lines(&src.join(CRASHES_FILE));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["text"], String::from_utf8(chunk).unwrap());
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["relay_instance"], 0xfeed);
    assert_eq!(lines[0]["registers"]["sp"], "0x0000000000000010");

    assert_eq!(
        std::fs::read(tmp.path().join("fe80__1").join("b7-d9-t1-v3-g0.log")).unwrap(),
        b"v6 text"
    );
    assert_eq!(counters.applied.load(Ordering::Relaxed), 4);
    assert_eq!(counters.dumps_stored.load(Ordering::Relaxed), 3);
}

fn hello_frame(protocol: u16) -> Vec<u8> {
    let hello = Record::Hello {
        protocol,
        relay: "raw".into(),
        instance: 1234,
    };
    encode_record_frame(
        &RecordHeaderRef {
            seq: 0,
            sent_at_ms: 0,
            record: &hello,
            payload_len: 0,
        },
        &[],
    )
    .unwrap()
}

#[test]
fn garbage_is_refused_and_counted_while_another_connection_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, counters) = relay_to_in_process(tmp.path(), link_config(1));
    let addr = d.addrs[0];
    for i in 0..20u16 {
        d.enqueue(&crash("10.0.0.9:2004", i, 0), &text(u64::from(i), 500));
    }
    // A session is open and working before the garbage arrives.
    assert!(d.run_until(Duration::from_secs(10), |d| d
        .link
        .stats()
        .delivered
        .total()
        >= 1));

    // Oversized length prefix: closed without a reply.
    assert!(send_raw(addr, &u32::MAX.to_le_bytes()).is_empty());
    // Hello, then a frame that is not a record.
    let mut bytes = hello_frame(PROTOCOL_VERSION);
    bytes.extend_from_slice(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let got = send_raw(addr, &bytes);
    assert!(matches!(
        decode_reply(&got[LEN_PREFIX..]),
        Ok(Reply::Welcome { last_seq: 0, .. })
    ));
    // A record without Hello, and an unknown protocol version: Refused.
    let rec = crash("10.0.0.9:2004", 1, 0);
    let frame = encode_record_frame(
        &RecordHeaderRef {
            seq: 1,
            sent_at_ms: 0,
            record: &rec,
            payload_len: 1,
        },
        b"x",
    )
    .unwrap();
    for bad in [frame, hello_frame(99)] {
        let got = send_raw(addr, &bad);
        assert!(matches!(
            decode_reply(&got[LEN_PREFIX..]),
            Ok(Reply::Refused { .. })
        ));
    }

    for i in 20..40u16 {
        d.enqueue(&crash("10.0.0.9:2004", i, 0), &text(u64::from(i), 500));
    }
    assert!(d.drain(Duration::from_secs(20)));
    let lines = crash_lines(&tmp.path().join("10.0.0.9").join(CRASHES_FILE));
    assert_eq!(lines.len(), 40);
    assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
    assert_eq!(counters.refused.load(Ordering::Relaxed), 2);
    assert_eq!(
        d.link.stats().disconnects.total(),
        0,
        "the good session was never disturbed"
    );
}

#[test]
fn collector_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_collector(tmp.path());
    let mut d = Driver::new(link_config(0xabc), vec![addr]);
    // Enough that the group-committing collector is still busy when the kill lands.
    let (crashes, dumps) = (2000u16, 400u16);
    let mut texts = Vec::new();
    for i in 0..crashes {
        d.enqueue(&crash("10.9.0.1:2004", i, 0), &text(u64::from(i), 300));
        if i % 5 == 0 {
            let t = text(10_000 + u64::from(i), 4000 + usize::from(i % 200) * 13);
            d.enqueue(&dump("10.9.0.1:2004", i, 1, true), &t);
            texts.push((i, t));
        }
    }
    let total = u64::from(crashes + dumps);
    assert!(d.run_until(Duration::from_secs(20), |d| d
        .link
        .stats()
        .delivered
        .total()
        >= 100));
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = d.link.stats().delivered.total();
    assert!(at_kill < total, "the kill must land mid-stream");
    // The relay keeps trying while the collector is down.
    d.run_until(Duration::from_millis(300), |_| false);

    let (mut child, addr) = spawn_collector(tmp.path());
    d.addrs[0] = addr;
    assert!(d.drain(Duration::from_secs(30)), "{:?}", d.link.stats());
    child.kill().unwrap();
    child.wait().unwrap();

    let stats = d.link.stats();
    eprintln!(
        "delivered {} records ({} at the kill), resent {}, disconnects {}, sessions {}",
        stats.delivered.total(),
        at_kill,
        stats.resent.total(),
        stats.disconnects.total(),
        stats.sessions
    );
    assert_eq!(stats.dropped.total(), 0);
    assert_eq!(stats.delivered.total(), total);
    assert!(stats.disconnects.total() >= 1);
    let lines = crash_lines(&tmp.path().join("10.9.0.1").join(CRASHES_FILE));
    assert_eq!(
        lines.len(),
        usize::from(crashes),
        "no crash notice lost or duplicated"
    );
    let mut seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), usize::from(crashes));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "applied in order");
    for (i, t) in texts {
        let log = tmp
            .path()
            .join("10.9.0.1")
            .join(format!("b7-d{i}-t1-v3-g0.log"));
        assert_eq!(std::fs::read(&log).unwrap(), t, "{}", log.display());
    }
}

/// A figure, not a check: records per second through link, loopback TCP and fsynced storage.
/// Run with `cargo test -p netoops-collect --release --test delivery -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = link_config(5);
    cfg.spool_bytes = 128 * 1024 * 1024;
    let (mut d, _) = relay_to_in_process(tmp.path(), cfg);
    let n = 2000u16;
    let start = std::time::Instant::now();
    for i in 0..n {
        if i % 2 == 0 {
            d.enqueue(&crash("10.7.0.1:2004", i, 0), &text(u64::from(i), 1024));
        } else {
            d.enqueue(
                &dump("10.7.0.1:2004", i, 1, true),
                &text(u64::from(i), 64 * 1024),
            );
        }
    }
    assert!(d.drain(Duration::from_secs(120)));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(d.link.stats().delivered.total(), u64::from(n));
    eprintln!(
        "{n} records (half 1 KiB crash notices, half 64 KiB dumps) in {secs:.2} s: {:.0} records/s",
        f64::from(n) / secs
    );
}
