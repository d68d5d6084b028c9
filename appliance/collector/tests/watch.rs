//! `netoops-collect watch` as the built binary, beside a real collector fed by the relay's
//! link: what was stored before it started is not printed, a new crash notice and a new dump
//! are, once each, with the sender's control characters escaped.

mod common;

use common::*;
use netoops_core::upstream::Record;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn watch_prints_new_crashes_and_dumps_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut collector, addr) = spawn_collector(tmp.path());
    let mut d = Driver::new(link_config(0x3a7c), vec![addr]);
    // Already stored before watch starts: not printed.
    d.enqueue(&dump("10.5.0.1:2004", 1, 1, true), &text(1, 2000));
    assert!(d.drain(Duration::from_secs(20)));

    for json in [true, false] {
        let mut watch = Command::new(env!("CARGO_BIN_EXE_netoops-collect"))
            .args(["watch", "--interval-ms", "50"])
            .args(json.then_some("--json"))
            .arg(tmp.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        assert!(rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .starts_with("watching "));

        let id = if json { 2 } else { 3 };
        let mut crash_record = crash("10.5.0.2:2004", id, 0);
        if let Record::CrashSeen(c) = &mut crash_record {
            c.kernel_version = "6.1\u{1b}[31m".into();
        }
        d.enqueue(
            &crash_record,
            b"BUG: kernel NULL pointer dereference\x1b]0;x\x07",
        );
        d.enqueue(
            &dump("10.5.0.2:2004", id, 1, true),
            &text(u64::from(id), 3000),
        );
        assert!(d.drain(Duration::from_secs(20)));

        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines.len() < 2 && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(l);
            }
        }
        // Nothing more comes: each event once.
        std::thread::sleep(Duration::from_millis(300));
        lines.extend(rx.try_iter());
        watch.kill().unwrap();
        let _ = watch.wait();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert!(
                !l.contains(['\u{1b}', '\u{7}']),
                "control character in {l:?}"
            );
        }
        if json {
            let crash: Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(crash["event"], "crash", "{lines:?}");
            assert_eq!(crash["crash"]["dump_id"], 2);
            let dump: Value = serde_json::from_str(&lines[1]).unwrap();
            assert_eq!(dump["event"], "dump");
            assert_eq!(dump["name"], "10.5.0.2/b7-d2-t1-v3-g0");
            assert_eq!(dump["dump"]["complete"], true);
        } else {
            assert!(
                lines[0].contains(" crash   10.5.0.2:2004 kernel 6.1\\x1b[31m: BUG: kernel NULL"),
                "{lines:?}"
            );
            assert!(
                lines[1].contains(" dump    10.5.0.2/b7-d3-t1-v3-g0 complete 12/12 packets"),
                "{lines:?}"
            );
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
}
