//! Issue 16, artefacts: `netoops-image bundle` builds the release bundle, coreutils'
//! `sha256sum -c` checks it, it is installed into a scratch root as INSTALL.txt says
//! (`cp -a root/. /`), and the collector and the hosted relay run from their systemd units'
//! `ExecStart` lines (paths moved under the scratch root, ports made free, `LoadCredential`
//! done as systemd does it), with keys the installed `netoops-collect keygen` made: crashes
//! sent to that relay are stored by that collector over an authenticated session. The installed `netoops-image` then packs an ISO
//! and a disk from the bundle's prebuilt images with no Rust toolchain on `PATH`.

use netoops_core::console;
use netoops_e2e::hosted::{
    fleet, send_storm, wait_stored, workspace_root, Machine, Plan, Process, Rng, Want,
};
use std::path::Path;
use std::process::Command;

/// The unit's `ExecStart` as words, with `${CREDENTIALS_DIRECTORY}` made: each
/// `LoadCredential=NAME:PATH` copies `PATH` (under `root`) to `NAME` in a fresh directory, as
/// systemd does before it starts the service.
fn exec_start(unit: &Path, root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
    let credentials = root.join("run/credentials").join(unit.file_name().unwrap());
    std::fs::create_dir_all(&credentials).unwrap();
    for spec in text
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
    {
        let (name, path) = spec.split_once(':').expect("LoadCredential=NAME:PATH");
        let from = root.join(path.trim_start_matches('/'));
        std::fs::copy(&from, credentials.join(name))
            .unwrap_or_else(|e| panic!("credential {}: {e}", from.display()));
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in {}", unit.display()));
    let credentials = credentials.to_str().expect("a UTF-8 scratch path");
    line.split_whitespace()
        .map(|w| w.replace("${CREDENTIALS_DIRECTORY}", credentials))
        .collect()
}

/// The command line with every absolute path moved under `root`, as if `root` were `/` (the
/// credentials directory already is).
fn under_root(words: &[String], root: &Path) -> Command {
    let mut words = words.iter().map(|w| match w.strip_prefix('/') {
        Some(_) if Path::new(w).starts_with(root) => w.into(),
        Some(rest) => root.join(rest).into_os_string(),
        None => w.into(),
    });
    let mut cmd = Command::new(words.next().expect("an empty ExecStart"));
    cmd.args(words);
    cmd
}

/// `--flag value` replaced in place (the unit's listen addresses are the deployment's ports).
fn replace_value(words: &mut [String], flag: &str, value: &str) {
    let at = words
        .iter()
        .position(|w| w == flag)
        .unwrap_or_else(|| panic!("no {flag} in {words:?}"));
    words[at + 1] = value.to_string();
}

fn build_bundle(out: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "-q",
            "-p",
            "netoops-image",
            "--",
            "bundle",
            "--debug-binaries",
        ])
        .arg("--output")
        .arg(out)
        .status()
        .expect("running netoops-image bundle");
    assert!(status.success(), "netoops-image bundle failed: {status}");
}

#[test]
fn the_release_bundle_installs_and_its_units_run_a_working_relay_and_collector() {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    build_bundle(&bundle);

    // Checked by coreutils, not by our own code: the format is the one operators use.
    let check = Command::new("sha256sum")
        .current_dir(&bundle)
        .args(["--check", "--strict", "SHA256SUMS"])
        .output()
        .expect("running sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    for file in [
        "netoops-relay.elf",
        "BOOTX64.EFI",
        "netoops-relay.img",
        "netoops-relay.iso",
        "INSTALL.txt",
        "root/usr/local/bin/netoops-collect",
        "root/usr/local/bin/netoops-relay",
        "root/usr/local/bin/netoops-image",
        "root/usr/local/bin/netoops-gen",
        "root/etc/systemd/system/netoops-collect.service",
        "root/etc/systemd/system/netoops-relay.service",
        "root/etc/netoops/relay.toml",
        "root/etc/netoops/relay.conf",
    ] {
        assert!(
            sums.lines().any(|l| l.ends_with(&format!("  {file}"))),
            "{file} missing from SHA256SUMS:\n{sums}"
        );
    }
    // A damaged copy is caught.
    let damaged = work.path().join("damaged");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(&bundle)
        .arg(&damaged)
        .status()
        .unwrap()
        .success());
    std::fs::write(damaged.join("root/etc/netoops/relay.conf"), "tampered\n").unwrap();
    let check = Command::new("sha256sum")
        .current_dir(&damaged)
        .args(["--check", "--quiet", "SHA256SUMS"])
        .output()
        .unwrap();
    assert!(!check.status.success(), "a tampered file passed the check");

    // Install as INSTALL.txt says.
    let install = std::fs::read_to_string(bundle.join("INSTALL.txt")).unwrap();
    assert!(install.contains("cp -a root/. /"), "{install}");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(bundle.join("root/."))
        .arg(&root)
        .status()
        .unwrap()
        .success());

    // Keys as INSTALL.txt says, made by the installed collector.
    assert!(install.contains("netoops-collect keygen"), "{install}");
    let out = Command::new(root.join("usr/local/bin/netoops-collect"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    std::fs::write(
        root.join("etc/netoops/collector.keys"),
        format!("hosted-relay {key}\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/netoops/relay.key"),
        format!("hosted-relay:{key}\n"),
    )
    .unwrap();

    // The collector from its unit (systemd's StateDirectory makes /var/lib/netoops-collect).
    let mut words = exec_start(
        &root.join("etc/systemd/system/netoops-collect.service"),
        &root,
    );
    replace_value(&mut words, "--listen", "127.0.0.1:0");
    let state = root.join("var/lib/netoops-collect");
    std::fs::create_dir_all(&state).unwrap();
    let mut collector = Process::spawn("installed netoops-collect", under_root(&words, &root));
    let line = collector.wait_for_line(console::LISTENING);
    let collector_addr = console::listening(&line).expect("collector address");

    // The operator points the installed relay.toml at the collector; the relay from its unit.
    let toml_path = root.join("etc/netoops/relay.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let toml = toml
        .lines()
        .map(|l| {
            if l.starts_with("upstream") {
                format!("upstream = [\"{collector_addr}\"]")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&toml_path, toml).unwrap();
    let words = exec_start(
        &root.join("etc/systemd/system/netoops-relay.service"),
        &root,
    );
    let mut cmd = under_root(&words, &root);
    // The unit's ports (2004, 6666) belong to the deployment; the test takes free ones.
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--netconsole-listen",
        "127.0.0.1:0",
        "--quiet",
        "2s",
    ]);
    let mut relay = Process::spawn("installed netoops-relay", cmd);
    let line = relay.wait_for_line(console::LISTENING);
    let relay_udp = console::listening(&line).expect("relay address");

    let machines: Vec<Machine> = fleet(16, 61, 3, 2048, 20_000);
    let mut rng = Rng::new(16);
    let plans: Vec<Plan> = machines
        .iter()
        .map(|m| Plan::new(m, 0.0, &mut rng))
        .collect();
    let wants: Vec<Want> = plans
        .iter()
        .zip(&machines)
        .map(|(p, m)| p.want(m))
        .collect();
    send_storm(relay_udp, &machines, &plans);
    wait_stored(&state, &wants, || {
        format!("{}{}", relay.describe(), collector.describe())
    });

    // The collector needs keys, so these went over an authenticated session.
    assert_eq!(relay.count("NOT authenticated"), 0, "{}", relay.describe());
    assert_eq!(
        relay.count("authenticated as key hosted-relay"),
        1,
        "{}",
        relay.describe()
    );
    relay.signal("TERM");
    assert!(relay.wait_exit().success(), "{}", relay.describe());
    collector.signal("TERM");
    collector.wait_exit();

    // The installed tool packs the bundle's images without cargo or rustc anywhere on PATH.
    let tool = root.join("usr/local/bin/netoops-image");
    let share = root.join("usr/local/share/netoops");
    let bare_path = "/usr/bin:/bin";
    for program in ["cargo", "rustc", "rustup"] {
        assert!(
            !Path::new("/usr/bin").join(program).exists(),
            "{program} in /usr/bin: the no-toolchain check would not hold"
        );
    }
    let installed = |args: &[&std::ffi::OsStr]| {
        Command::new(&tool)
            .env_clear()
            .env("PATH", bare_path)
            .current_dir(work.path())
            .args(args)
            .output()
            .unwrap()
    };
    let succeeded = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let iso = work.path().join("site.iso");
    let kernel = share.join("netoops-relay.elf");
    succeeded(installed(&[
        "iso".as_ref(),
        "--cmdline".as_ref(),
        "ip=10.1.0.5/24 upstream=10.1.0.1:2005".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--output".as_ref(),
        iso.as_os_str(),
    ]));
    assert!(std::fs::metadata(&iso).unwrap().len() > 1 << 20);

    let conf = work.path().join("site.conf");
    std::fs::write(&conf, "ip=10.1.0.5/24\nupstream=10.1.0.1:2005\n").unwrap();
    let disk = work.path().join("site.img");
    let efi = share.join("BOOTX64.EFI");
    succeeded(installed(&[
        "disk".as_ref(),
        "--efi".as_ref(),
        efi.as_os_str(),
        "--conf".as_ref(),
        conf.as_os_str(),
        "-o".as_ref(),
        disk.as_os_str(),
    ]));
    assert_eq!(
        std::fs::metadata(&disk).unwrap().len(),
        netoops_image::disk::DEFAULT_SIZE_MIB << 20
    );

    // A file that is not a kernel image is refused, naming it.
    let bad = work.path().join("bad.iso");
    let out = installed(&[
        "iso".as_ref(),
        "--kernel".as_ref(),
        conf.as_os_str(),
        "--output".as_ref(),
        bad.as_os_str(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel ELF"), "{err}");
}

/// `--kernel` and `--efi` take what the build makes and refuse anything else.
#[test]
fn prebuilt_images_are_checked_before_use() {
    let built = netoops_e2e::appliance::image();
    let image = netoops_image::build::load_kernel(built).expect("the built image loads");
    assert!(image.summary.pvh_entry.is_some());
    assert_eq!(image.size, std::fs::metadata(built).unwrap().len());

    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("x.elf");
    std::fs::write(&not_elf, b"\x7fELF but not really").unwrap();
    assert!(netoops_image::build::load_kernel(&not_elf).is_err());
    assert!(netoops_image::uefi::load_efi(&not_elf).is_err());
    assert!(netoops_image::uefi::load_efi(built).is_err());
    let missing = netoops_image::build::load_kernel(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing"), "{missing}");
}
