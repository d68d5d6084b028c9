//! Issue 12 on the appliance image: netconsole datagrams as raw frames into the ingress NIC
//! (virtio-net and e1000), taken by the fast path on udp/6666, reassembled and stored by the
//! real collector. The expected dumps are computed here from what was sent.

use netoops_e2e::appliance::*;
use netoops_e2e::hosted::{dump_files, ip_dir, wait_until, Collector};
use netoops_wire::netconsole::{encode_record, RecordSpec};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;

fn stamp(usec: u64, text: &str) -> String {
    format!("[{:5}.{:06}] {text}\n", usec / 1_000_000, usec % 1_000_000)
}

/// Boots the image with `model` as its ingress NIC, sends one extended machine (with a lost
/// record and a fragmented one) and one legacy machine, and checks both dumps.
fn netconsole_through_the_image(model: &str) {
    let _one_vm = vm_lock();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let collector = Collector::start(tmp.path(), "127.0.0.1:0".parse().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener for the stream NIC");
    let port = listener.local_addr().expect("address").port();
    let mut spec = VmSpec::new(Ingress::Stream { port }, collector.addr.port());
    spec.ingress_model = model.into();
    spec.extra = "quiet=2s".into();
    let mut vm = Vm::boot(&spec);
    let mut link = FrameLink::accept(&listener);
    vm.wait_for("ready: listening on udp/2004");

    let to_us = SocketAddrV4::new(GUEST_IP, 6666);
    let ext = SocketAddrV4::new(Ipv4Addr::new(10, 1, 9, 2), 6665);
    let mut want_ext = String::new();
    let mut scratch = [0u8; 8192];
    let long: String = (0..2300).map(|j| (b'a' + (j % 26) as u8) as char).collect();
    let mut texts: Vec<String> = (0..40).map(|i| format!("boot line {i}")).collect();
    texts[17] = format!("a long line {long}");
    texts.push("BUG: unable to handle page fault for address: ffffffffc0000000".into());
    texts.push("Call Trace:".into());
    texts.push("Kernel panic - not syncing: Fatal exception".into());
    for (i, text) in texts.iter().enumerate() {
        let seq = 500 + i as u64;
        let usec = 3_000_000 + i as u64 * 777;
        if i == 9 {
            want_ext.push_str(&format!("[netconsole: records {seq}-{seq} missing]\n"));
            continue;
        }
        let spec = RecordSpec {
            release: Some("6.1.0-18-amd64"),
            level: 6,
            seq,
            usec,
            text: text.as_bytes(),
            fields: &[("cpu", "0")],
        };
        encode_record(&spec, &mut scratch, |d| {
            link.send(&udp_frame(ext, to_us, d, Damage::default()));
        });
        want_ext.push_str(&stamp(usec, text));
    }
    let legacy = SocketAddrV4::new(Ipv4Addr::new(10, 1, 9, 3), 6665);
    let mut want_legacy = String::new();
    for i in 0..15 {
        want_legacy.push_str(&format!("[{i:5}.000000] legacy line {i}\n"));
    }
    want_legacy.push_str("[   16.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!\n");
    for chunk in want_legacy.as_bytes().chunks(200) {
        link.send(&udp_frame(legacy, to_us, chunk, Damage::default()));
    }

    let context = || {
        let mut s = vm.process.describe();
        s.push_str(&collector.process.describe());
        s
    };
    wait_until(
        "both netconsole dumps stored",
        || {
            [ext, legacy]
                .iter()
                .all(|s| dump_files(tmp.path(), *s.ip()).len() == 1)
        },
        context,
    );
    check(tmp.path(), *ext.ip(), &want_ext, "extended", &[[509, 509]]);
    check(tmp.path(), *legacy.ip(), &want_legacy, "legacy", &[]);
    vm.wait_counters("counters:", "the relay's netconsole counters", |c| {
        c.get("nc_dumps").copied() == Some(2)
    });
    let c = vm.counters("counters:");
    assert_eq!(c["nc_crashes"], 2, "{c:?}");
    assert_eq!(c["nc_malformed"], 0, "{c:?}");
}

fn check(store: &Path, ip: Ipv4Addr, text: &str, format: &str, missing: &[[u64; 2]]) {
    let dir = ip_dir(store, ip);
    let stored = std::fs::read_to_string(dir.join("nc-b0-c0.log")).expect("dump text");
    assert_eq!(stored, text, "{ip}");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("nc-b0-c0.json")).unwrap()).unwrap();
    assert_eq!(meta["kind"], "netconsole");
    assert_eq!(meta["netconsole"]["format"], format);
    let got: Vec<[u64; 2]> =
        serde_json::from_value(meta["netconsole"]["missing_seq"].clone()).unwrap();
    assert_eq!(got, missing);
}

#[test]
fn netconsole_through_the_image_on_virtio_net() {
    netconsole_through_the_image(VIRTIO_NET);
}

#[test]
fn netconsole_through_the_image_on_e1000() {
    netconsole_through_the_image("e1000");
}
