//! `netoops-bench ingest --smoke`: netconsole next to netoops through one hosted relay. The
//! relay must count every datagram of both fleets and report CPU per datagram for each; the
//! figures themselves are for the full run (`netoops-bench ingest`), not for a test.

use std::process::Command;

#[test]
fn ingest_smoke_counts_every_datagram_of_both_protocols() {
    let out = tempfile::tempdir().expect("temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_netoops-bench"))
        .args(["ingest", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .expect("running netoops-bench");
    assert!(status.success(), "netoops-bench ingest --smoke failed");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("ingest.json")).unwrap()).unwrap();
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for (r, protocol) in results.iter().zip(["netoops", "netconsole"]) {
        assert_eq!(r["protocol"], protocol);
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent > 1000, "{r}");
        assert_eq!(r["received"], sent, "{r}");
        assert!(
            r["cpu_ns_per_datagram"].as_f64().is_some_and(|c| c > 0.0),
            "{r}"
        );
    }
    assert!(json["cpu_ratio"].as_f64().is_some_and(|r| r > 0.0));
    assert!(out.path().join("ingest.md").exists());
}
