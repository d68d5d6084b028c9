//! Grouping: 200 machines with 6 distinct crash kinds across 3 kernel builds end in exactly 6
//! groups, through the real store, the real SQLite index and the built `netoops-collect`.
//!
//! The generator (`netoops-gen`) sends one crash text shape for netoops, so the fleet is made
//! here (common/crashes.rs) and stored through the collector's own record API.

mod common;

use common::crashes::{store_fleet, BUILDS, KINDS};
use netoops_collect::index::{Index, INDEX_FILE};
use netoops_collect::store::Store;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn collect(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netoops-collect"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_hundred_machines_six_kinds_three_builds_make_six_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let per_kind = store_fleet(&store, 200);

    let (ok, stdout, stderr) = collect(&["groups", "--json"], tmp.path());
    assert!(ok, "{stderr}");
    let groups: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(groups.len(), 6, "{stdout}");
    assert!(tmp.path().join(INDEX_FILE).is_file());

    let kinds: BTreeSet<&str> = groups
        .iter()
        .map(|g| g["crash_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, KINDS.iter().copied().collect());
    let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 200);
    for g in &groups {
        let kind = KINDS
            .iter()
            .position(|k| *k == g["crash_kind"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            g["count"].as_u64().unwrap(),
            u64::from(per_kind[kind]),
            "{g}"
        );
        assert_eq!(g["machines"], g["count"], "one dump per machine: {g}");
        let kernels: Vec<&str> = g["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(kernels, BUILDS, "every group spans the three builds: {g}");
        assert!(g["first_seen"].as_str().unwrap() < g["last_seen"].as_str().unwrap());
    }
    // Newest first: machine 199 (kind 199 % 6 = 1, `kernel BUG`) crashed last.
    assert_eq!(groups[0]["crash_kind"], "bug");
    assert_eq!(
        groups[0]["title"],
        "bug: mpage_prepare_extent_to_map < ext4_do_writepages < ext4_writepages < do_writepages"
    );

    // `list --signature` lists exactly one group's dumps, by full signature or a prefix.
    let sig = groups[2]["signature"].as_str().unwrap();
    let (ok, stdout, stderr) = collect(&["list", "--json", "--signature", sig], tmp.path());
    assert!(ok, "{stderr}");
    let listed: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len() as u64, groups[2]["count"].as_u64().unwrap());
    let (_, table, _) = collect(&["list", "--signature", &sig[..8]], tmp.path());
    assert_eq!(
        table.lines().count() as u64,
        1 + groups[2]["count"].as_u64().unwrap()
    );

    // The table form names every group.
    let (ok, table, _) = collect(&["groups"], tmp.path());
    assert!(ok);
    assert_eq!(table.lines().count(), 7, "{table}");
    for g in &groups {
        assert!(table.contains(g["signature"].as_str().unwrap()));
    }

    // The index is derived: deleted, it is rebuilt from the files with the same groups.
    std::fs::remove_file(tmp.path().join(INDEX_FILE)).unwrap();
    let (index, stats) = Index::open_synced(tmp.path()).unwrap();
    assert_eq!((stats.scanned, stats.indexed), (200, 200));
    let rebuilt: Vec<String> = index
        .groups()
        .unwrap()
        .into_iter()
        .map(|g| g.signature)
        .collect();
    let before: Vec<&str> = groups
        .iter()
        .map(|g| g["signature"].as_str().unwrap())
        .collect();
    assert_eq!(rebuilt, before);
}

#[test]
fn corrupt_and_missing_files_are_skipped_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store_fleet(&store, 12);
    let dir = tmp.path().join("10.1.0.3");
    let json = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    std::fs::write(&json, b"{\"kind\": \"netoops\", trunc").unwrap();
    let log = std::fs::read_dir(tmp.path().join("10.1.0.4"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    std::fs::remove_file(log).unwrap();
    let (ok, stdout, stderr) = collect(&["groups", "--json"], tmp.path());
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("2 dumps skipped (1 bad metadata, 1 without text, 0 unreadable)"),
        "{stderr}"
    );
    let groups: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 10);
}
