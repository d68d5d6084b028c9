//! Issue 14, huge files at startup: the collector scans its crash logs in bounded memory
//! whatever they hold. A crash log with a 200 MiB line (a damaged or planted file) between
//! two real lines: the real collector binary starts, keeps the file as it is, and its peak
//! resident memory stays far below the line's size (it read the whole line into memory
//! before).

mod common;

use common::spawn_collector;
use std::io::Write;

/// The peak resident set of process `pid`, in KiB (`VmHWM` in /proc).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[test]
fn a_crash_log_with_a_huge_line_is_scanned_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let ip_dir = tmp.path().join("10.0.0.1");
    std::fs::create_dir_all(&ip_dir).unwrap();
    let log = ip_dir.join("crashes.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        writeln!(f, r#"{{"relay_instance":1,"seq":1,"text":"first"}}"#).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\n").unwrap();
        writeln!(f, r#"{{"relay_instance":1,"seq":2,"text":"last"}}"#).unwrap();
    }
    let size = std::fs::metadata(&log).unwrap().len();

    let (mut child, _addr) = spawn_collector(tmp.path());
    let peak = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        peak < 64 * 1024,
        "peak resident memory {peak} KiB while scanning a {size}-byte crash log"
    );
    // Nothing was torn: every line ended with a newline, so the file is kept whole.
    assert_eq!(std::fs::metadata(&log).unwrap().len(), size);
}
