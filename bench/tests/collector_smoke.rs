//! `netoops-bench collector --smoke`: the collector alone, one short run per dump size. The
//! run must store what it acknowledged and report a rate and the disk's fsync time; the
//! figures themselves are for the full run (`netoops-bench collector`), not for a test.

use std::process::Command;

#[test]
fn collector_smoke_stores_what_it_acknowledges_and_reports_rates() {
    let out = tempfile::tempdir().expect("temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_netoops-bench"))
        .args(["collector", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .expect("running netoops-bench");
    assert!(status.success(), "netoops-bench collector --smoke failed");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("collector.json")).unwrap()).unwrap();
    let series = json["series"].as_array().expect("series");
    assert_eq!(series.len(), 2, "{json}");
    for (s, size) in series.iter().zip([65536, 4096]) {
        assert_eq!(s["size"], size);
        for r in s["runs"].as_array().unwrap() {
            let acked = r["acked"].as_u64().unwrap();
            assert!(acked > 0, "{r}");
            // The bench itself fails when fewer are stored; this holds the report to it.
            assert!(r["stored_files"].as_u64().unwrap() >= acked, "{r}");
            assert!(r["fsync_ms"].as_f64().is_some_and(|f| f > 0.0), "{r}");
            // The file system's state, measured before the run.
            assert!(r["create_us"].as_f64().is_some_and(|c| c > 0.0), "{r}");
            // Storing dumps costs the collector CPU: /proc was read and the figure is real.
            assert!(
                r["cpu_us_per_dump"].as_f64().is_some_and(|c| c > 0.0),
                "{r}"
            );
        }
        // A rate is reported; its size is the full run's business (a smoke window of 0.8 s
        // on a loaded machine can fall inside one long batch and read zero).
        assert!(
            s["median_dumps_per_s"].as_f64().is_some_and(|d| d >= 0.0),
            "{s}"
        );
    }
    assert!(!json["filesystem"].as_str().unwrap().starts_with("tmpfs"));
    assert!(out.path().join("collector.md").exists());
}
