//! `list` and `show` run as the built binary over a real storage directory.

mod common;

use common::*;
use netoops_collect::store::{Origin, Store};
use netoops_core::upstream::{Record, RecordHeader};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn collect(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netoops-collect"))
        .args(
            args.iter()
                .map(|a| a.replace("DIR", &dir.display().to_string())),
        )
        .output()
        .unwrap()
}

fn apply(store: &Store, seq: u64, record: Record, text: &[u8], sent_at_ms: u64) {
    let origin = Origin {
        relay: "relay-a".into(),
        instance: 3,
    };
    let header = RecordHeader {
        seq,
        sent_at_ms,
        record,
        payload_len: text.len() as u32,
    };
    store
        .apply(&origin, &header, text, 1_700_000_000_000)
        .unwrap();
}

#[test]
fn list_and_show_print_what_was_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // Older: completed 10 s before arrival; newer: 1 s before.
    apply(
        &store,
        1,
        dump("10.0.0.1:2004", 11, 1, false),
        b"older partial text\n",
        11_100,
    );
    apply(
        &store,
        2,
        dump("10.0.0.2:2004", 22, 1, true),
        b"BUG: newer complete\n",
        2_100,
    );
    apply(&store, 3, crash("10.0.0.2:2004", 22, 0), b"chunk", 2_100);

    let out = collect(&["list", "DIR"], tmp.path());
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("COMPLETED"));
    assert!(rows[1].contains("10.0.0.2/b7-d22-t1-v3-g0") && rows[1].contains("12/12"));
    assert!(rows[1].contains("complete") && rows[1].contains("6.1.0-13-amd64"));
    assert!(rows[2].contains("10.0.0.1/b7-d11-t1-v3-g0") && rows[2].contains("9/12"));
    assert!(rows[2].contains("partial"));
    assert!(
        rows[1].starts_with("2023-11-14T22:13:19.000Z"),
        "{}",
        rows[1]
    );

    let out = collect(&["list", "DIR", "--json"], tmp.path());
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["name"], "10.0.0.2/b7-d22-t1-v3-g0");
    assert_eq!(v[1]["missing"], serde_json::json!([[3, 4], [9, 9]]));

    let out = collect(&["show", "DIR", "10.0.0.1/b7-d11-t1-v3-g0"], tmp.path());
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("packets:   9/12 partial, revision 1"),
        "{shown}"
    );
    assert!(shown.contains("missing:   [[3,4],[9,9]]"));
    assert!(shown.contains("registers: ip=0xffffffff81001234"));
    assert!(shown.ends_with("\n\nolder partial text\n"), "{shown}");

    // By path, too.
    let path = tmp.path().join("10.0.0.2").join("b7-d22-t1-v3-g0.json");
    let out = collect(&["show", "DIR", path.to_str().unwrap()], tmp.path());
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with("BUG: newer complete\n"));
}

#[test]
fn missing_dir_and_dump_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("nope");
    let out = collect(&["list", "DIR"], &gone);
    assert_refused(&out, "no storage directory at");
    let out = collect(&["show", "DIR", "10.0.0.1/b0-d1-t1-v3-g0"], tmp.path());
    assert_refused(&out, "no dump named 10.0.0.1/b0-d1-t1-v3-g0");
}

/// A sender's kernel version and log are data: `list`, `show` and `groups` print their control
/// characters escaped, so no escape sequence from the wire reaches the operator's terminal.
#[test]
fn wire_text_reaches_the_terminal_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut record = dump("10.0.0.9:2004", 33, 1, true);
    if let Record::Dump(d) = &mut record {
        d.kernel_version = "6.1\u{1b}]0;owned\u{7}\r".into();
    }
    apply(
        &store,
        1,
        record,
        b"\x1b[2J\x1b[HBUG: kernel NULL pointer dereference\n\tcall trace\n",
        1_000,
    );
    for args in [
        &["list", "DIR"][..],
        &["show", "DIR", "10.0.0.9/b7-d33-t1-v3-g0"],
        &["groups", "DIR"],
    ] {
        let out = collect(args, tmp.path());
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\r']),
            "{args:?} printed a control character:\n{text}"
        );
        if args[0] != "groups" {
            assert!(
                text.contains("6.1\\x1b]0;owned\\x07\\x0d"),
                "{args:?}:\n{text}"
            );
        }
        if args[0] == "show" {
            assert!(text.contains("\\x1b[2J\\x1b[HBUG: kernel NULL"), "{text}");
            assert!(
                text.contains("\n\tcall trace\n"),
                "newlines and tabs stay: {text}"
            );
        }
    }
}

/// A collector that could not serve anyone is refused at start, naming the flag.
#[test]
fn zero_connections_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = collect(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            "DIR",
            "--max-connections",
            "0",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_refused(&out, "--max-connections");
}
