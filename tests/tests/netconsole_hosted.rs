//! Issue 12 on the hosted relay: netconsole from a fleet of machines (extended with fragments,
//! release prefixes and userdata; legacy with lines split across datagrams; healthy machines
//! that only chatter) through the real `netoops-relay` to the real `netoops-collect`. The
//! expected dumps are computed here, independently of the relay's code, from what was sent.

use netoops_e2e::appliance::run_generator;
use netoops_e2e::hosted::{
    binaries, dump_files, ip_dir, stored_meta, wait_until, Collector, Relay,
};
use netoops_wire::netconsole::{encode_record, is_crash_line, RecordSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One record as the sender keeps it.
struct Rec {
    seq: u64,
    usec: u64,
    text: String,
}

/// `[SSSSS.UUUUUU] text` as dmesg prints it.
fn stamp(usec: u64, text: &str) -> String {
    format!("[{:5}.{:06}] {text}\n", usec / 1_000_000, usec % 1_000_000)
}

/// Chatter, then (when `crash`) a crash burst, for machine `m`.
fn records(m: u32, crash: bool) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut seq = 100 + u64::from(m) * 7;
    let mut usec = 5_000_000 + u64::from(m) * 1000;
    let mut push = |text: String| {
        out.push(Rec { seq, usec, text });
        seq += 1;
        usec += 1234;
    };
    for i in 0..30 {
        if i % 9 == 4 {
            // Long enough to be split into ncfrag fragments.
            let long: String = (0..1800).map(|j| (b'a' + (j % 26) as u8) as char).collect();
            push(format!("machine {m} long line {i} {long}"));
        } else {
            push(format!("machine {m} ordinary line {i}: eth0 link up\tok"));
        }
    }
    if crash {
        push(format!(
            "BUG: kernel NULL pointer dereference, address: {m:016x}"
        ));
        push("#PF: supervisor write access in kernel mode".into());
        push("Call Trace:".into());
        push(" <TASK>".into());
        push(" sysrq_handle_crash+0x16/0x20".into());
        push("Kernel panic - not syncing: Fatal exception".into());
    }
    out
}

#[test]
fn a_fleet_of_netconsole_machines_is_stored_as_sent() {
    let store = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let mut relay = Relay::start(&[collector.addr], &[]);
    let target = relay.netconsole.expect("the relay listens for netconsole");

    let crashing = 12u32;
    let healthy = 10u32;
    let legacy = 4u32;
    let mut expected: BTreeMap<Ipv4Addr, (String, Vec<[u64; 2]>, String)> = BTreeMap::new();
    let mut healthy_ips = Vec::new();
    let mut scratch = [0u8; 8192];
    for m in 0..crashing + healthy {
        let ip = Ipv4Addr::new(127, 12, 0, 1 + m as u8);
        let sock = UdpSocket::bind((ip, 6665)).expect("binding a machine's source address");
        let crash = m < crashing;
        let recs = records(m, crash);
        let release = (m % 2 == 0).then_some("6.1.0-18-amd64");
        let userdata: &[(&str, &str)] = if m % 3 == 0 {
            &[("cpu", "1"), ("taskname", "bash"), ("rack", "r7")]
        } else {
            &[]
        };
        // Machine m loses records m*3+1 and m*3+2 of its chatter (one gap), and sends one
        // record twice.
        let lost = |i: usize| crash && m % 4 == 1 && (i == 3 || i == 4);
        let mut text = String::new();
        let mut missing = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            if lost(i) {
                if i == 3 {
                    missing.push([r.seq, r.seq + 1]);
                    text.push_str(&format!(
                        "[netconsole: records {}-{} missing]\n",
                        r.seq,
                        r.seq + 1
                    ));
                }
                continue;
            }
            let spec = RecordSpec {
                release,
                // Crash headers come at warning or above, as the kernel prints them.
                level: if is_crash_line(r.text.as_bytes()) {
                    1
                } else {
                    6
                },
                seq: r.seq,
                usec: r.usec,
                text: r.text.as_bytes(),
                fields: userdata,
            };
            let copies = if i == 7 { 2 } else { 1 };
            for _ in 0..copies {
                encode_record(&spec, &mut scratch, |d| {
                    sock.send_to(d, target).expect("sending on loopback");
                });
            }
            text.push_str(&stamp(r.usec, &r.text));
        }
        if crash {
            let line = format!("BUG: kernel NULL pointer dereference, address: {m:016x}");
            expected.insert(ip, (text, missing, line));
        } else {
            healthy_ips.push(ip);
        }
        // Keep the loopback socket buffer from overflowing in a debug-build run.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Legacy machines: console text, lines split across datagrams.
    for m in 0..legacy {
        let ip = Ipv4Addr::new(127, 13, 0, 1 + m as u8);
        let sock = UdpSocket::bind((ip, 6665)).expect("binding a machine's source address");
        let mut all = String::new();
        for i in 0..20 {
            all.push_str(&format!("[{:5}.000000] legacy machine {m} line {i}\n", i));
        }
        all.push_str("[   21.000000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP\n");
        all.push_str("[   21.000100] RIP: 0010:do_thing+0x1f/0x40\n");
        all.push_str("[   21.000200] Kernel panic - not syncing: Fatal exception\n");
        let bytes = all.as_bytes();
        for chunk in bytes.chunks(173) {
            sock.send_to(chunk, target).expect("sending on loopback");
        }
        expected.insert(
            ip,
            (
                all.clone(),
                Vec::new(),
                "[   21.000000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP".into(),
            ),
        );
    }

    let context = || relay_and_collector(&relay, &collector);
    wait_until(
        "every netconsole dump stored",
        || {
            expected
                .keys()
                .all(|ip| dump_files(store.path(), *ip).len() == 1)
        },
        context,
    );
    for (ip, (text, missing, line)) in &expected {
        let dir = ip_dir(store.path(), *ip);
        let stored = std::fs::read_to_string(dir.join("nc-b0-c0.log"))
            .unwrap_or_else(|e| panic!("{ip}: no nc-b0-c0.log: {e}\n{}", context()));
        assert_eq!(&stored, text, "{ip}: dump text");
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("nc-b0-c0.json")).unwrap())
                .unwrap();
        assert_eq!(meta["kind"], "netconsole", "{ip}");
        let nc = &meta["netconsole"];
        assert_eq!(nc["crash_line"], line.as_str(), "{ip}");
        let got_missing: Vec<[u64; 2]> = serde_json::from_value(nc["missing_seq"].clone()).unwrap();
        assert_eq!(&got_missing, missing, "{ip}");
        assert_eq!(meta["complete"], missing.is_empty(), "{ip}");
        let legacy_machine = ip.octets()[1] == 13;
        assert_eq!(
            nc["format"],
            if legacy_machine { "legacy" } else { "extended" }
        );
        if !legacy_machine {
            let m = u32::from(ip.octets()[3]) - 1;
            let release = if m % 2 == 0 { "6.1.0-18-amd64" } else { "" };
            assert_eq!(nc["release"], release, "{ip}");
            if m % 3 == 0 {
                assert_eq!(nc["fields"]["rack"], "r7", "{ip}");
                assert_eq!(nc["fields"]["taskname"], "bash", "{ip}");
            }
        }
        // The crash notice went up on its own, with the crash line.
        let crashes = std::fs::read_to_string(dir.join("crashes.jsonl")).unwrap();
        let notice: Value = serde_json::from_str(crashes.lines().next().unwrap()).unwrap();
        assert_eq!(notice["kind"], "netconsole");
        assert_eq!(notice["text"], line.as_str());
    }
    for ip in &healthy_ips {
        assert!(
            !ip_dir(store.path(), *ip).exists(),
            "healthy machine {ip} got a dump"
        );
    }
    let (status, counters) = relay.shutdown();
    assert!(status.success());
    assert_eq!(counters["nc_crashes"], expected.len() as u64);
    assert_eq!(counters["nc_dumps"], expected.len() as u64);
    assert_eq!(counters["nc_malformed"], 0);
    assert!(counters["nc_dup"] >= u64::from(crashing + healthy));
    assert_eq!(
        counters["nc_sources"],
        u64::from(crashing + healthy + legacy)
    );
}

#[test]
fn malformed_netconsole_is_counted_and_netconsole_can_be_turned_off() {
    let store = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let mut relay = Relay::start(&[collector.addr], &[]);
    let target = relay.netconsole.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for bad in [&b"6,1,x,-;a"[..], b"6,1,1,-,ncfrag=9/3;abc", b""] {
        sock.send_to(bad, target).unwrap();
    }
    // No wait: loopback datagrams are in the relay's socket when send_to returns, and the
    // relay reads what its sockets hold before it shuts down.
    let (status, counters) = relay.shutdown();
    assert!(status.success());
    assert_eq!(counters["nc_malformed"], 3);
    assert_eq!(counters["nc_crashes"], 0);

    let mut off = Relay::start(&[collector.addr], &["--no-netconsole"]);
    assert_eq!(off.netconsole, None);
    assert!(off.process.count("netconsole off") == 1);
    off.shutdown();
}

/// The scenario with the real generator: 1,000 healthy machines chatter while 50
/// crash, 10% of datagrams lost; every crash dump the collector holds matches the generator's
/// `--expect` output exactly (text, missing ranges, crash line, release, completeness), and no
/// healthy machine gets a dump.
#[test]
fn the_generators_chattering_fleet_with_fifty_crashes_is_stored_as_it_expects() {
    let store = tempfile::tempdir().unwrap();
    let expect = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let mut relay = Relay::start(&[collector.addr], &["--recv-buffer", "64M"]);
    let target = relay.netconsole.unwrap();
    let summary = run_generator(&[
        "--protocol".into(),
        "netconsole".into(),
        "--target".into(),
        target.to_string(),
        "--machines".into(),
        "50".into(),
        "--chatter".into(),
        "1000".into(),
        "--chatter-lines".into(),
        "30".into(),
        "--loss".into(),
        "0.1".into(),
        "--storm-ms".into(),
        "3000".into(),
        "--seed".into(),
        "12".into(),
        "--expect".into(),
        expect.path().display().to_string(),
        "--json".into(),
    ]);
    let summary: Value = serde_json::from_str(summary.trim()).expect("generator JSON");
    let mut wants = Vec::new();
    for entry in std::fs::read_dir(expect.path()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.join("expected.json");
        if !file.exists() {
            continue;
        }
        let e: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let text = std::fs::read_to_string(path.join("expected.log")).unwrap();
        wants.push((e, text));
    }
    assert_eq!(wants.len(), 50, "{summary}");
    let dumps: Vec<&(Value, String)> = wants.iter().filter(|(e, _)| e["dump"] == true).collect();
    assert!(dumps.len() >= 45, "most crash lines arrive");
    let ip = |e: &Value| -> Ipv4Addr { e["ip"].as_str().unwrap().parse().unwrap() };
    let context = || relay_and_collector(&relay, &collector);
    wait_until(
        "every expected netconsole dump stored",
        || {
            dumps
                .iter()
                .all(|(e, _)| !dump_files(store.path(), ip(e)).is_empty())
        },
        context,
    );
    for (e, text) in &wants {
        let dir = ip_dir(store.path(), ip(e));
        if e["dump"] != true {
            assert!(
                !dir.exists(),
                "{}: no crash line arrived, yet a dump",
                e["ip"]
            );
            continue;
        }
        let key = e["key"].as_str().unwrap();
        assert_eq!(dump_files(store.path(), ip(e)), [format!("{key}.json")]);
        let stored = std::fs::read_to_string(dir.join(format!("{key}.log"))).unwrap();
        assert_eq!(&stored, text, "{}: dump text", e["ip"]);
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{key}.json"))).unwrap(),
        )
        .unwrap();
        let nc = &meta["netconsole"];
        assert_eq!(nc["missing_seq"], e["missing"], "{}", e["ip"]);
        assert_eq!(nc["incomplete_seq"], e["incomplete"], "{}", e["ip"]);
        assert_eq!(nc["crash_line"], e["crash_line"], "{}", e["ip"]);
        assert_eq!(nc["release"], e["release"], "{}", e["ip"]);
        assert_eq!(nc["format"], e["mode"], "{}", e["ip"]);
        assert_eq!(meta["complete"], e["complete"], "{}", e["ip"]);
    }
    let (status, counters) = relay.shutdown();
    assert!(status.success());
    assert_eq!(
        counters["nc_kernel_drops"], 0,
        "the relay's socket overflowed"
    );
    assert_eq!(counters["nc_dumps"], dumps.len() as u64);
    assert_eq!(counters["nc_sources"], 1050);
    // Nothing else in the store: healthy machines never become dumps.
    let dirs = std::fs::read_dir(store.path())
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(dirs, dumps.len());
}

/// Issue 17's grouping check with the real generator: 200 machines crash with 6 distinct crash
/// kinds across 3 kernel builds (each build moves the functions' offsets), through the relay
/// into the collector; `netoops-collect groups` finds exactly 6 groups, each with every machine
/// of its kind and all three builds.
#[test]
fn two_hundred_machines_of_six_crash_kinds_on_three_builds_make_six_groups() {
    let store = tempfile::tempdir().unwrap();
    let collector = Collector::start(store.path(), any_port());
    let mut relay = Relay::start(&[collector.addr], &["--recv-buffer", "64M"]);
    let target = relay.netconsole.unwrap();
    run_generator(&[
        "--protocol".into(),
        "netconsole".into(),
        "--nc-mode".into(),
        "extended".into(),
        "--target".into(),
        target.to_string(),
        "--machines".into(),
        "200".into(),
        "--crash-kinds".into(),
        "6".into(),
        "--kernels".into(),
        "3".into(),
        "--chatter-lines".into(),
        "10".into(),
        "--rate".into(),
        "20000".into(),
    ]);
    let context = || relay_and_collector(&relay, &collector);
    let stored = || {
        std::fs::read_dir(store.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| stored_meta(&e.path().join("nc-b0-c0.json")).is_some())
            .count()
    };
    wait_until("200 dumps stored", || stored() == 200, context);
    let out = std::process::Command::new(&binaries().collector)
        .args(["groups", "--json"])
        .arg(store.path())
        .output()
        .expect("running netoops-collect groups");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups: Vec<Value> = serde_json::from_slice(&out.stdout).expect("groups JSON");
    assert_eq!(groups.len(), 6, "{groups:#?}");
    let mut total = 0;
    for g in &groups {
        let count = g["count"].as_u64().unwrap();
        // Machine i has kind (i / 3) % 6: 35 machines of kind 0, 33 of each other kind.
        assert!(count == 33 || count == 35, "{g}");
        assert_eq!(g["kernels"].as_array().map(Vec::len), Some(3), "{g}");
        total += count;
    }
    assert_eq!(total, 200);
    assert_eq!(groups.iter().filter(|g| g["count"] == 35).count(), 1);
    let (status, _) = relay.shutdown();
    assert!(status.success());
}

fn relay_and_collector(relay: &Relay, collector: &Collector) -> String {
    let mut s = relay.process.describe();
    s.push_str(&collector.process.describe());
    s
}
