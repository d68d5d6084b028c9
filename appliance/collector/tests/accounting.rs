//! Drop accounting against the collector's files: the relay's link counts a record as dropped
//! only if the collector never stores it, and as delivered only if it does. The hard case is a
//! full spool while records are on the wire and their Acks not yet read: the collector stores
//! them, so dropping them to make room would count stored dumps as lost.

mod common;

use common::*;
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::store::CRASHES_FILE;
use netoops_core::upstream::{LinkEvent, RecordKind};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

#[test]
fn relay_counters_match_the_collectors_files_when_the_spool_overflows_mid_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path());
    cfg.idle_timeout = Duration::from_secs(30);
    let (addr, _) = spawn_server(Server::bind(cfg).unwrap());

    let mut link = link_config(0xacc0);
    // Dump lane 768 KiB (48 dumps of 16 KiB); at most 256 KiB of dumps unacknowledged.
    link.spool_bytes = 1 << 20;
    link.dump_window = 256 << 10;
    let mut d = Driver::new(link, vec![addr]);
    assert!(d.run_until(Duration::from_secs(10), |d| d.link.is_established()));

    // Acks go unread: everything written stays "sent, not acknowledged" on the relay's side
    // while the collector stores it. Then far more than the spool holds arrives.
    d.reading = false;
    let source = "10.44.0.1:2004";
    let mut ids: HashMap<u64, (RecordKind, u16)> = HashMap::new();
    let mut refused = 0u32;
    for i in 0..400u16 {
        let (record, body) = if i % 2 == 0 {
            (dump(source, i, 1, true), text(u64::from(i), 16 * 1024))
        } else {
            (crash(source, i, 0), text(u64::from(i), 700))
        };
        let now = d.now();
        match d
            .link
            .enqueue(now, &record, body.len() as u32, |w| w.write(&body))
        {
            Ok(id) => {
                let kind = record.kind().unwrap();
                ids.insert(id, (kind, i));
            }
            Err(_) => refused += 1,
        }
        d.step();
    }
    let s = d.link.stats();
    assert!(s.dropped.dump > 0, "the spool must overflow: {s:?}");
    // Now the relay reads the Acks again and everything left drains.
    d.reading = true;
    assert!(d.drain(Duration::from_secs(30)), "{:?}", d.link.stats());

    let mut delivered = BTreeSet::new();
    let mut dropped = BTreeSet::new();
    for ev in &d.events {
        match ev {
            LinkEvent::Delivered { id, .. } if ids.contains_key(id) => {
                assert!(delivered.insert(*id));
            }
            LinkEvent::Dropped { id, .. } => assert!(dropped.insert(*id)),
            _ => {}
        }
    }
    let dir = tmp.path().join("10.44.0.1");
    let crash_ids: BTreeSet<u64> = std::fs::read_to_string(dir.join(CRASHES_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["dump_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for (id, (kind, n)) in &ids {
        let stored = match kind {
            RecordKind::Dump => dir.join(format!("b7-d{n}-t1-v3-g0.json")).exists(),
            RecordKind::CrashSeen => crash_ids.contains(&u64::from(*n)),
        };
        assert_eq!(
            stored,
            delivered.contains(id),
            "{kind:?} {n} (id {id}): stored {stored}, counted delivered {}",
            delivered.contains(id)
        );
        assert_eq!(stored, !dropped.contains(id), "{kind:?} {n} (id {id})");
    }
    let s = d.link.stats();
    assert_eq!(s.delivered.total() + s.dropped.total(), ids.len() as u64);
    assert_eq!(s.refused.total(), u64::from(refused));
    assert_eq!(
        s.dropped.crash_seen, 0,
        "the notice lane holds all 200 notices"
    );
    eprintln!(
        "{} enqueued, {refused} refused: {} delivered and stored, {} dropped and not stored",
        ids.len(),
        s.delivered.total(),
        s.dropped.total()
    );
}
