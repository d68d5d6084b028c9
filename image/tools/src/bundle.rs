//! The release bundle: everything an operator installs, built by one command, checksummed.
//!
//! ```text
//! <output>/
//!   SHA256SUMS                      every file below, `sha256sum -c` format
//!   INSTALL.txt                     how to install and start it
//!   netoops-relay.elf               the kernel image (PVH and multiboot2)
//!   BOOTX64.EFI                     the UEFI stub, the same kernel inside
//!   netoops-relay.img               a flashable UEFI disk with etc/netoops/relay.conf on it
//!   netoops-relay.iso               the GRUB ISO (BIOS boxes), the same settings in grub.cfg
//!   root/usr/local/bin/             netoops-collect, netoops-relay, netoops-image, netoops-gen
//!   root/etc/systemd/system/        netoops-collect.service, netoops-relay.service
//!   root/etc/netoops/               relay.toml (hosted relay), relay.conf (appliance)
//!   root/usr/local/share/netoops/   the four images again, for `netoops-image run --kernel`
//! ```
//!
//! `root/` is laid out as the file system it installs into (`cp -a root/. /`), so a test can
//! install it into a scratch directory and start the services from their units' command lines.
//! Checksums are SHA-256 from the RustCrypto `sha2` crate, written in coreutils' format so that
//! `sha256sum -c SHA256SUMS` checks a copy anywhere.

use crate::{build, disk, iso, uefi, workspace_root, Error};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host programs a bundle carries: (cargo package, binary).
pub const HOST_BINARIES: &[(&str, &str)] = &[
    ("netoops-collect", "netoops-collect"),
    ("netoops-relay", "netoops-relay"),
    ("netoops-image", "netoops-image"),
    ("netoops-bench", "netoops-gen"),
];

/// Where the units, binaries and configuration go, relative to the root they install into.
pub const BIN_DIR: &str = "usr/local/bin";
/// systemd's directory for locally installed units.
pub const UNIT_DIR: &str = "etc/systemd/system";
/// Configuration.
pub const CONF_DIR: &str = "etc/netoops";
/// The images, for `netoops-image run --kernel` / `disk --efi` on the installed machine.
pub const SHARE_DIR: &str = "usr/local/share/netoops";

/// A unit for a long-running service of the bundle: restarted on failure, as a dynamic user,
/// with systemd's file-system and privilege hardening.
fn unit(description: &str, after: &str, exec_start: &str, service_extra: &str) -> String {
    format!(
        "[Unit]\n\
         Description={description}\n\
         After=network-online.target{after}\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={exec_start}\n\
         DynamicUser=yes\n\
         {service_extra}\
         Restart=on-failure\n\
         RestartSec=1s\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The collector's unit: the default storage directory and port, relay keys from
/// `/etc/netoops/collector.keys`. `StateDirectory` makes systemd create
/// `/var/lib/netoops-collect` for the dynamic user; `LoadCredential` hands it the keys file
/// (which stays readable by root only) in its private credentials directory.
pub fn collect_unit() -> String {
    unit(
        "netoops crash collector: stores what netoops relays deliver",
        "",
        "/usr/local/bin/netoops-collect serve --listen 0.0.0.0:2005 \
         --dir /var/lib/netoops-collect --keys ${CREDENTIALS_DIRECTORY}/keys",
        "StateDirectory=netoops-collect\n\
         LoadCredential=keys:/etc/netoops/collector.keys\n\
         LimitNOFILE=65536\n",
    )
}

/// The hosted relay's unit: its settings in `/etc/netoops/relay.toml`, its session key in
/// `/etc/netoops/relay.key` (as a credential, like the collector's keys).
pub fn relay_unit() -> String {
    unit(
        "netoops crash relay (hosted): reassembles netoops and netconsole crashes, forwards them",
        " netoops-collect.service",
        "/usr/local/bin/netoops-relay --config /etc/netoops/relay.toml \
         --upstream-key-file ${CREDENTIALS_DIRECTORY}/relay.key",
        "LoadCredential=relay.key:/etc/netoops/relay.key\n",
    )
}

/// The hosted relay's configuration as installed: a collector on this machine.
pub const RELAY_TOML: &str = "\
# netoops-relay --config: the keys of the README's Configuration table (flags override them).
port = 2004
netconsole_port = 6666
upstream = [\"127.0.0.1:2005\"]
name = \"hosted-relay\"
";

/// The appliance's relay.conf on the bundle's disk and in its ISO: DHCP-less addressing
/// must be edited for the site (README: Bare-metal boxes).
pub const RELAY_CONF: &str = "\
# netoops relay appliance: edit for your network (README: Configuration), then rebuild the
# disk with `netoops-image disk --efi BOOTX64.EFI --conf relay.conf` or edit relay.conf on
# the disk's NETOOPS partition.
ip=10.20.0.5/24 gw=10.20.0.1
upstream=10.9.0.10:2005
name=relay-1
# The session key this relay shares with its collectors (`netoops-collect keygen`; the
# collector's keys file holds `relay-1 <key>`). Without it the relay speaks in clear, and
# collectors that have keys refuse it.
# upstream_key=relay-1:<64 hex digits>
";

/// How to build a bundle.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    /// The bundle's directory (replaced if it exists).
    pub output: PathBuf,
    /// Optimized host binaries (what ships); `false` reuses the debug builds (tests).
    pub release_binaries: bool,
    /// Disk image size in MiB.
    pub disk_mib: u64,
}

/// What [`build_bundle`] wrote.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle's directory.
    pub dir: PathBuf,
    /// Every file, relative to `dir`, with its SHA-256 (the SHA256SUMS lines).
    pub files: Vec<(PathBuf, String)>,
}

/// Builds the release kernel and stub, the host binaries, the disk and the ISO, and lays them
/// out with the units and configuration under `o.output`.
pub fn build_bundle(o: &BundleOptions) -> Result<Bundle, Error> {
    let kernel = build::build_kernel(true)?;
    let efi = uefi::build_efi(&kernel, true)?;
    let binaries = build_host_binaries(o.release_binaries)?;

    let staging = o
        .output
        .with_extension(format!("part{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let root = staging.join("root");
    for dir in [BIN_DIR, UNIT_DIR, CONF_DIR, SHARE_DIR] {
        std::fs::create_dir_all(root.join(dir))?;
    }

    std::fs::copy(&kernel.path, staging.join(build::IMAGE_NAME))?;
    std::fs::copy(&efi.path, staging.join("BOOTX64.EFI"))?;
    disk::build_disk(
        &std::fs::read(&efi.path)?,
        Some(RELAY_CONF.as_bytes()),
        o.disk_mib,
        &staging.join("netoops-relay.img"),
    )?;
    let cmdline = conf_cmdline(RELAY_CONF)?;
    iso::build_iso(&kernel.path, &cmdline, &staging.join("netoops-relay.iso"))?;
    for name in [
        build::IMAGE_NAME,
        "BOOTX64.EFI",
        "netoops-relay.img",
        "netoops-relay.iso",
    ] {
        std::fs::copy(staging.join(name), root.join(SHARE_DIR).join(name))?;
    }
    for (name, path) in &binaries {
        let to = root.join(BIN_DIR).join(name);
        std::fs::copy(path, &to)?;
        set_mode(&to, 0o755)?;
    }
    std::fs::write(
        root.join(UNIT_DIR).join("netoops-collect.service"),
        collect_unit(),
    )?;
    std::fs::write(
        root.join(UNIT_DIR).join("netoops-relay.service"),
        relay_unit(),
    )?;
    std::fs::write(root.join(CONF_DIR).join("relay.toml"), RELAY_TOML)?;
    std::fs::write(root.join(CONF_DIR).join("relay.conf"), RELAY_CONF)?;
    std::fs::write(staging.join("INSTALL.txt"), install_text())?;

    let files = checksums(&staging)?;
    let mut sums = String::new();
    for (path, hex) in &files {
        sums.push_str(&format!("{hex}  {}\n", path.display()));
    }
    std::fs::write(staging.join("SHA256SUMS"), sums)?;

    let _ = std::fs::remove_dir_all(&o.output);
    std::fs::rename(&staging, &o.output)?;
    Ok(Bundle {
        dir: o.output.clone(),
        files,
    })
}

/// relay.conf as the kernel command line (for grub.cfg), checked as the appliance checks it.
fn conf_cmdline(conf: &str) -> Result<String, Error> {
    let bad =
        |e: &dyn std::fmt::Display| Error::Io(std::io::Error::other(format!("relay.conf: {e}")));
    netoops_uefi::conf::check(conf.as_bytes()).map_err(|e| bad(&e))?;
    netoops_uefi::conf::to_cmdline(conf.as_bytes()).map_err(|e| bad(&e))
}

/// INSTALL.txt: the steps, with the version.
fn install_text() -> String {
    format!(
        "netoops crash relay {version}\n\
         \n\
         Check:    sha256sum -c SHA256SUMS\n\
         Install:  sudo cp -a root/. /   (then edit /etc/netoops/relay.toml)\n\
         Keys:     key=$(netoops-collect keygen)   (one per relay; README: sessions)\n\
         \x20         echo \"hosted-relay $key\" | sudo tee /etc/netoops/collector.keys\n\
         \x20         echo \"hosted-relay:$key\" | sudo tee /etc/netoops/relay.key\n\
         \x20         sudo chmod 600 /etc/netoops/collector.keys /etc/netoops/relay.key\n\
         Start:    sudo systemctl daemon-reload\n\
         \x20         sudo systemctl enable --now netoops-collect netoops-relay\n\
         Appliance on a VM (no Rust toolchain needed):\n\
         \x20         netoops-image appliance --kernel /usr/local/share/netoops/netoops-relay.elf\n\
         Bare metal: dd netoops-relay.img (UEFI) or netoops-relay.iso (BIOS) to a stick;\n\
         \x20         a disk with your own relay.conf:\n\
         \x20         netoops-image disk --efi BOOTX64.EFI --conf relay.conf -o relay.img\n",
        version = env!("CARGO_PKG_VERSION")
    )
}

/// `cargo build` of [`HOST_BINARIES`]; their paths in the target directory.
fn build_host_binaries(release: bool) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).arg("build");
    if release {
        cmd.arg("--release");
    }
    for (package, _) in HOST_BINARIES {
        cmd.args(["-p", package]);
    }
    for (_, bin) in HOST_BINARIES {
        cmd.args(["--bin", bin]);
    }
    // A build started from inside `cargo test` must not inherit the test build's target.
    cmd.env_remove("CARGO_BUILD_TARGET");
    let status = cmd.status()?;
    if !status.success() {
        return Err(Error::Command {
            what: "cargo build (host binaries)".into(),
            status,
        });
    }
    let dir = crate::target_dir().join(if release { "release" } else { "debug" });
    Ok(HOST_BINARIES
        .iter()
        .map(|(_, bin)| (bin.to_string(), dir.join(bin)))
        .collect())
}

/// Every regular file under `dir`, sorted, relative, with its SHA-256 in hex.
pub fn checksums(dir: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let relative = entry
                    .path()
                    .strip_prefix(dir)
                    .map(Path::to_path_buf)
                    .map_err(|_| Error::Io(std::io::Error::other("path outside the bundle")))?;
                if relative != Path::new("SHA256SUMS") {
                    files.push(relative);
                }
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|relative| {
            let hex = sha256_file(&dir.join(&relative))?;
            Ok((relative, hex))
        })
        .collect()
}

/// The SHA-256 of a file, streamed, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn checksums_cover_every_file_but_the_sums_sorted_and_relative() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
        std::fs::write(dir.path().join("root/etc/b"), b"b").unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        std::fs::write(dir.path().join("SHA256SUMS"), b"old").unwrap();
        let files = checksums(dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["a", "root/etc/b"]);
        assert_eq!(
            files[0].1,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn units_start_the_installed_programs_with_installed_configuration() {
        let exec = |unit: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .unwrap()
                .to_string()
        };
        assert!(exec(&collect_unit()).starts_with(&format!("/{BIN_DIR}/netoops-collect serve ")));
        assert_eq!(
            exec(&relay_unit()),
            format!(
                "/{BIN_DIR}/netoops-relay --config /{CONF_DIR}/relay.toml \
                 --upstream-key-file ${{CREDENTIALS_DIRECTORY}}/relay.key"
            )
        );
        assert!(exec(&collect_unit()).ends_with(" --keys ${CREDENTIALS_DIRECTORY}/keys"));
    }

    #[test]
    fn shipped_configuration_passes_the_relays_own_checks() {
        let mut config = netoops_core::config::Config::default();
        netoops_relay::settings::apply_toml(&mut config, RELAY_TOML).unwrap();
        assert_eq!(config.upstreams, ["127.0.0.1:2005".parse().unwrap()]);
        let cmdline = conf_cmdline(RELAY_CONF).unwrap();
        assert!(cmdline.contains("upstream=10.9.0.10:2005"), "{cmdline}");
    }
}
