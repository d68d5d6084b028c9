//! What machine a run happened on, read from `/proc`, `/etc/os-release` and the tools'
//! `--version` output. Anything unreadable is left empty rather than failing the run.

use std::process::Command;

use super::report::Host;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn first_line_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default()
}

/// The `key` field of `/proc/cpuinfo`-style or `os-release`-style text.
fn field(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The 1-minute load average (0 if unreadable).
pub fn load_average() -> f64 {
    read("/proc/loadavg")
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0)
}

/// Describes this machine; `git_dir` is where to ask git for the commit.
pub fn describe(git_dir: &std::path::Path) -> Host {
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let mem_kib: f64 = field(&meminfo, "MemTotal", ':')
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let load = load_average();
    let git = Command::new("git")
        .arg("-C")
        .arg(git_dir)
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Host {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        cpu: field(&cpuinfo, "model name", ':').unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_kib / 1048576.0,
        os: field(&read("/etc/os-release"), "PRETTY_NAME", '=').unwrap_or_default(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        qemu: first_line_of(netoops_image::qemu::QEMU, &["--version"]),
        rustc: first_line_of("rustc", &["--version"]),
        git_commit: git,
        load_at_start: load,
        load_at_end: 0.0,
        accel: "tcg".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_this_machine() {
        assert_eq!(
            field(
                "model name\t: Some CPU @ 2.4GHz\nflags : x",
                "model name",
                ':'
            ),
            Some("Some CPU @ 2.4GHz".into())
        );
        assert_eq!(
            field(
                "NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12\"",
                "PRETTY_NAME",
                '='
            ),
            Some("Debian GNU/Linux 12".into())
        );
        let h = describe(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(h.cores >= 1);
        assert!(h.memory_gib > 0.1);
        assert!(!h.kernel.is_empty());
    }
}
