//! `netoops-bench native --smoke`: the image's receive path over both simulated NICs with a
//! tiny storm. The JSON must carry every stage for both NICs with positive, finite cumulative
//! figures, and the outcome counts must show the whole storm delivered. No timing assertions:
//! the figures are for the full run.

use std::process::Command;

#[test]
fn native_smoke_reports_every_stage_for_both_nics() {
    let out = tempfile::tempdir().expect("temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_netoops-bench"))
        .args(["native", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .expect("running netoops-bench");
    assert!(status.success(), "netoops-bench native --smoke failed");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("native.json")).unwrap()).unwrap();
    let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0);
    assert!(positive(&json["tsc_hz"]), "{json}");
    assert!(
        positive(&json["copy_baseline"]["cycles_per_datagram"]),
        "{json}"
    );
    assert!(
        positive(&json["copy_baseline"]["ns_per_datagram"]),
        "{json}"
    );
    assert_eq!(json["goal_cycles_per_datagram"], 2600.0);
    let machines = json["settings"]["machines"].as_u64().unwrap();
    let datagrams = json["datagrams_per_iteration"].as_u64().unwrap();
    assert!(machines > 1 && datagrams > machines * 3, "{json}");

    let nics = json["nics"].as_array().expect("nics");
    let names: Vec<&str> = nics.iter().map(|n| n["nic"].as_str().unwrap()).collect();
    assert_eq!(names, ["virtio-net", "e1000e"]);
    for nic in nics {
        let stages: Vec<&str> = nic["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, ["driver", "fast path", "engine", "spool", "link"]);
        let mut last = 0.0;
        for s in nic["stages"].as_array().unwrap() {
            // Each stage's own share may dip below zero in noise; what came before it and
            // the stage together cannot.
            assert!(
                s["cycles_per_datagram"].as_f64().unwrap().is_finite(),
                "{s}"
            );
            assert!(s["ns_per_datagram"].as_f64().unwrap().is_finite(), "{s}");
            assert!(positive(&s["cumulative"]["cycles_per_datagram"]), "{s}");
            assert!(positive(&s["cumulative"]["ns_per_datagram"]), "{s}");
            last = s["cumulative"]["cycles_per_datagram"].as_f64().unwrap();
        }
        assert!(positive(&nic["whole"]["cycles_per_datagram"]), "{nic}");
        assert!(
            positive(&nic["fast_path_counter"]["cycles_per_datagram"]),
            "{nic}"
        );
        assert_eq!(nic["whole"]["cycles_per_datagram"].as_f64().unwrap(), last);
        // The whole storm went through: every frame received, every dump complete at the
        // engine and at the collector, every datagram accepted by the relay.
        let c = &nic["checks"];
        assert_eq!(c["driver_frames"], datagrams, "{nic}");
        assert_eq!(c["engine_dumps_complete"], machines, "{nic}");
        assert_eq!(c["relay_accepted"], datagrams, "{nic}");
        assert_eq!(c["fast_path_rejected"], 0, "{nic}");
        assert_eq!(c["collector_crashes"], machines, "{nic}");
        assert_eq!(c["collector_dumps_complete"], machines, "{nic}");
        // The dump text is every log as its sender sent it: nearly every byte (netoops
        // senders zero the last chunk of a piece that fills whole chunks, as machine 0's
        // unsplit log does), and the same through either NIC.
        let log_bytes = json["settings"]["log_bytes"].as_u64().unwrap();
        let text = c["collector_dump_bytes"].as_u64().unwrap();
        assert!(
            text * 100 >= machines * log_bytes * 99 && text <= machines * log_bytes,
            "{nic}"
        );
        assert_eq!(
            c["collector_dump_bytes"],
            nics[0]["checks"]["collector_dump_bytes"]
        );
    }
    let table = std::fs::read_to_string(out.path().join("native.md")).unwrap();
    assert!(
        table.contains("whole path") && table.contains("e1000e"),
        "{table}"
    );
}
