//! Command-line flags and the TOML file, mapped onto the core [`Config`].
//!
//! The file's keys are exactly the core configuration keys a hosted relay uses
//! ([`FILE_KEYS`]); every value goes through [`Config::set`], so the file, the flags and the
//! appliance's `key=value` command line accept the same values and report the same errors,
//! naming the key. Flags override the file. Appliance-only keys (`ip`, `gw`, `nic`,
//! `upstream_nic`) are refused with a message saying so. Everything that is not a core key
//! (`--listen`, `--instance`, `--drain-timeout`, `--recv-buffer`) is a flag only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use netoops_core::config::{parse_duration, parse_size, Config, ConfigError};

/// Keys the TOML file may hold: the core's keys read everywhere
/// ([`netoops_core::config::HOSTED_KEYS`], from its `KEY_TABLE`).
pub const FILE_KEYS: &[&str] = netoops_core::config::HOSTED_KEYS;

/// Whether a core key only makes sense on the appliance image (scope `Appliance` in the
/// core's `KEY_TABLE`: its addresses and NICs).
fn appliance_only(key: &str) -> bool {
    netoops_core::config::KEYS.contains(&key) && !FILE_KEYS.contains(&key)
}

/// Default receive buffer asked of the kernel for the netoops socket.
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;

/// The hosted netoops relay: receives netoops crash dumps over UDP, reassembles them and
/// forwards them to a collector over TCP.
#[derive(Parser, Debug, Default, Clone, PartialEq, Eq)]
#[command(
    name = "netoops-relay",
    version,
    args_override_self = true,
    about = "Receive Linux netoops crash dumps over UDP, reassemble them and forward them to a collector",
    after_help = "Configuration file (--config): TOML whose keys are the flags above without the \
dashes (max_dumps for --max-dumps), plus port and netconsole_port (0 = off), which --listen and \
--netconsole-listen set here; strings, or integers for sizes and counts; upstream and allow may \
be arrays. They take the same values as the flags and the appliance's keys (README: \
Configuration). Flags override the file; a flag given twice takes its last value, except \
--upstream and --allow, which add to the list.\n\n\
Output: one line per crash seen, dump queued and dump delivered, and a counters line every \
`stats` interval, each prefixed with a UTC timestamp. SIGINT/SIGTERM emit the dumps still \
assembling as partial, wait up to --drain-timeout for the collector to acknowledge everything, \
print the final counters and exit 0; a second signal exits at once.\n\n\
Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on a configuration error."
)]
pub struct Cli {
    /// TOML configuration file (keys as described below); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// UDP address netoops senders target [default: 0.0.0.0:2004, or 0.0.0.0:<port> with
    /// `port` from the file].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// UDP address netconsole senders target [default: 0.0.0.0:6666, or 0.0.0.0:<port> with
    /// `netconsole_port` from the file; with `--listen` on port 0, any free port on its IP].
    #[arg(long, value_name = "ADDR:PORT")]
    pub netconsole_listen: Option<SocketAddr>,

    /// Do not listen for netconsole (the file's `netconsole_port = 0` does the same).
    #[arg(long, conflicts_with = "netconsole_listen")]
    pub no_netconsole: bool,

    /// TCP address of the HTTP endpoint (/metrics, /healthz, /dumps) [default: off, or
    /// <listen IP>:<port> with `http_port` from the file].
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,

    /// Relay instance id (decimal or 0x-hex); must differ on every start, collectors key
    /// replay protection on it [default: random, from /dev/urandom].
    #[arg(long, value_name = "ID", value_parser = parse_instance)]
    pub instance: Option<u64>,

    /// After SIGINT/SIGTERM, longest wait for collectors to acknowledge everything (ms, s, m).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_std_duration)]
    pub drain_timeout: Duration,

    /// Receive buffer to ask the kernel for on the UDP socket (SO_RCVBUFFORCE when
    /// permitted, else SO_RCVBUF, which net.core.rmem_max caps).
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size_arg)]
    pub recv_buffer: usize,

    /// A file holding this relay's `ID:KEY` session key (as `upstream_key`), read at start
    /// and again before every connection to a collector, so a key rotation needs no restart
    /// and loses no spooled record.
    /// Overrides `upstream_key`.
    #[arg(long, value_name = "FILE")]
    pub upstream_key_file: Option<PathBuf>,

    /// The core configuration keys, one flag each.
    #[command(flatten)]
    pub keys: KeyFlags,
}

/// Keys set by flags of their own: the ports are part of `--listen` and `--netconsole-listen`.
const ADDRESS_KEYS: &[&str] = &["port", "netconsole_port", "http_port"];

/// The core configuration keys a hosted relay reads, as flags (`--max-dumps` for `max_dumps`),
/// built from the core's `KEY_TABLE` when the command line is parsed: a new key needs no code
/// here. Values are kept as given, in key order, for [`Config::set`] to check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyFlags {
    /// `(key, values)` for every key given; a list key keeps every value, others the last.
    pub given: Vec<(&'static str, Vec<String>)>,
}

impl KeyFlags {
    fn docs() -> impl Iterator<Item = &'static netoops_core::config::KeyDoc> {
        netoops_core::config::KEY_TABLE
            .iter()
            .filter(|k| FILE_KEYS.contains(&k.key) && !ADDRESS_KEYS.contains(&k.key))
    }
}

impl clap::FromArgMatches for KeyFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = KeyFlags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        for doc in Self::docs() {
            if let Some(values) = m.get_many::<String>(doc.key) {
                let values: Vec<String> = values.cloned().collect();
                self.given.retain(|(k, _)| *k != doc.key);
                self.given.push((doc.key, values));
            }
        }
        Ok(())
    }
}

impl clap::Args for KeyFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for doc in Self::docs() {
            let plain = |t: &str| t.replace('`', "");
            let default = match doc.default {
                "required" => " Required, here or in the file.".to_string(),
                d => format!(" [default: {}]", plain(d)),
            };
            let repeat = if doc.list {
                " Repeat the flag (or separate with commas) for more."
            } else {
                ""
            };
            let mut help = plain(doc.value);
            if let Some(first) = help.get(..1) {
                help = first.to_uppercase() + &help[1..];
            }
            let arg = clap::Arg::new(doc.key)
                .long(doc.key.replace('_', "-"))
                .value_name("VALUE")
                .help(format!("{help}.{repeat}{default}"))
                .action(if doc.list {
                    clap::ArgAction::Append
                } else {
                    clap::ArgAction::Set
                });
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn parse_instance(v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| format!("`{v}` is not a 64-bit number (decimal or 0x-hex)"))
}

fn parse_std_duration(v: &str) -> Result<Duration, String> {
    parse_duration(v)
        .map(Duration::from)
        .ok_or_else(|| format!("`{v}` is not a duration like 5s or 500ms"))
}

fn parse_size_arg(v: &str) -> Result<usize, String> {
    parse_size(v)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{v}` is not a size like 8M"))
}

/// Everything the hosted relay runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The core configuration (validated by `Relay::new`).
    pub config: Config,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// UDP address to bind for netconsole, if on.
    pub netconsole_listen: Option<SocketAddr>,
    /// TCP address of the HTTP endpoint, if on. `config.http_port` is set to the port
    /// actually bound once it is (it may be 0 here: any free port).
    pub http_listen: Option<SocketAddr>,
    /// Relay instance, if given (else the caller draws a random one).
    pub instance: Option<u64>,
    /// Longest wait for delivery at shutdown.
    pub drain_timeout: Duration,
    /// Receive buffer to ask for.
    pub recv_buffer: usize,
    /// Where the session key is re-read from before every connection, if given.
    pub upstream_key_file: Option<PathBuf>,
}

/// Reads a session key file (`ID:KEY`, surrounding whitespace and `#` comments ignored).
pub fn read_key_file(path: &Path) -> Result<netoops_core::upstream::secure::SessionKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let line = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    netoops_core::upstream::secure::SessionKey::parse(line)
        .map_err(|e| format!("key file {}: {e}", path.display()))
}

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// The TOML file at this path.
    File(PathBuf),
}

/// A configuration the relay refuses to run with (exit status 2).
#[derive(Debug)]
pub enum SettingsError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML.
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key with a bad value, an unknown key or a missing required key.
    Key {
        /// Where the value came from (`None`: the combined configuration).
        origin: Option<Origin>,
        /// The key and what is wrong with it.
        error: ConfigError,
    },
}

impl SettingsError {
    /// The configuration key at fault, if the problem is one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            SettingsError::Key { error, .. } => Some(&error.key),
            _ => None,
        }
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            SettingsError::Syntax { path, message } => {
                write!(
                    f,
                    "{} is not valid TOML: {}",
                    path.display(),
                    message.trim()
                )
            }
            SettingsError::Key { origin, error } => match origin {
                Some(Origin::Flag) => write!(f, "--{}: {error}", error.key.replace('_', "-")),
                Some(Origin::File(path)) => write!(f, "{}: {error}", path.display()),
                None => write!(f, "{error}"),
            },
        }
    }
}

impl std::error::Error for SettingsError {}

fn key_error(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn is_list(key: &str) -> bool {
    netoops_core::config::KEY_TABLE
        .iter()
        .any(|k| k.key == key && k.list)
}

/// Renders one TOML value as the core's `key=value` text: strings as they are, integers in
/// decimal, arrays joined with commas.
fn value_text(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        _ => None,
    };
    let expected = "expected a string (or, for sizes and counts, an integer)";
    match value {
        toml::Value::Array(items) if is_list(key) => {
            if items.is_empty() {
                return Err(key_error(key, "empty array"));
            }
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts
                .map(|p| p.join(","))
                .ok_or_else(|| key_error(key, "expected an array of strings"))
        }
        toml::Value::Array(_) => Err(key_error(key, format!("{expected}, not an array"))),
        other => scalar(other).ok_or_else(|| key_error(key, expected)),
    }
}

/// Applies a TOML document's keys to `config` through [`Config::set`].
pub fn apply_toml(config: &mut Config, text: &str) -> Result<(), TomlError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| TomlError::Syntax {
            message: e.to_string(),
        })?;
    for (key, value) in &table {
        let key = key.as_str();
        if appliance_only(key) {
            return Err(TomlError::Key(key_error(
                key,
                "only used by the appliance image; the hosted relay takes --listen instead",
            )));
        }
        if !FILE_KEYS.contains(&key) {
            return Err(TomlError::Key(key_error(
                key,
                format!("unknown key (known keys: {})", FILE_KEYS.join(", ")),
            )));
        }
        let text = value_text(key, value).map_err(TomlError::Key)?;
        config.set(key, &text).map_err(TomlError::Key)?;
    }
    Ok(())
}

/// Why [`apply_toml`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TomlError {
    /// Not TOML.
    Syntax {
        /// The parser's message.
        message: String,
    },
    /// A key or value the core refuses.
    Key(ConfigError),
}

impl Settings {
    /// Combines the file named by `--config` (if any) and the flags, flags last. Does not
    /// check that an upstream was given: `Relay::new` validates the result.
    pub fn from_cli(cli: &Cli) -> Result<Settings, SettingsError> {
        let mut config = Config::default();
        if let Some(path) = &cli.config {
            let text = std::fs::read_to_string(path).map_err(|error| SettingsError::Read {
                path: path.clone(),
                error,
            })?;
            Self::apply_file(&mut config, path, &text)?;
        }
        let flag = |error| SettingsError::Key {
            origin: Some(Origin::Flag),
            error,
        };
        for (key, values) in &cli.keys.given {
            // A list key takes every value given; any other key its last.
            let value = if is_list(key) {
                values.join(",")
            } else {
                values.last().cloned().unwrap_or_default()
            };
            config.set(key, &value).map_err(flag)?;
        }
        let listen = match cli.listen {
            Some(addr) => {
                // Port 0 (any free port) is for tests; `port` itself refuses it.
                config.listen_port = addr.port();
                addr
            }
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.listen_port),
        };
        if cli.no_netconsole {
            config.netconsole_port = 0;
        }
        let netconsole_listen = match cli.netconsole_listen {
            Some(addr) => {
                config.netconsole_port = addr.port();
                Some(addr)
            }
            None if config.netconsole_port == 0 => None,
            // Tests ask for any free port; do not collide on the default netconsole port.
            None if listen.port() == 0 => Some(SocketAddr::new(listen.ip(), 0)),
            None => Some(SocketAddr::new(listen.ip(), config.netconsole_port)),
        };
        let http_listen = match cli.http_listen {
            Some(addr) => Some(addr),
            None if config.http_port == 0 => None,
            None => Some(SocketAddr::new(listen.ip(), config.http_port)),
        };
        if let Some(path) = &cli.upstream_key_file {
            let key = read_key_file(path).map_err(|problem| SettingsError::Key {
                origin: None,
                error: netoops_core::config::ConfigError {
                    key: "upstream_key".to_string(),
                    problem,
                },
            })?;
            config.upstream_key = Some(key);
        }
        Ok(Settings {
            config,
            listen,
            netconsole_listen,
            http_listen,
            instance: cli.instance,
            drain_timeout: cli.drain_timeout,
            recv_buffer: cli.recv_buffer,
            upstream_key_file: cli.upstream_key_file.clone(),
        })
    }

    fn apply_file(config: &mut Config, path: &Path, text: &str) -> Result<(), SettingsError> {
        apply_toml(config, text).map_err(|e| match e {
            TomlError::Syntax { message } => SettingsError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            TomlError::Key(error) => SettingsError::Key {
                origin: Some(Origin::File(path.to_path_buf())),
                error,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use netoops_core::time::Duration as CoreDuration;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("netoops-relay").chain(args.iter().copied())).unwrap()
    }

    fn file(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A scratch directory removed on drop (std only, to keep the crate's dependencies small).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "netoops-relay-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn every_file_key_maps_onto_the_core_config() {
        let mut config = Config::default();
        apply_toml(
            &mut config,
            r#"
            port = 6666
            upstream = ["10.0.0.1:2005", "10.0.0.9:2005"]
            name = "rack-7"
            memory = "128M"
            spool = 1048576
            max_dumps = 100
            per_source = 2
            quiet = "500ms"
            linger = "2m"
            allow = "10.0.0.0/8"
            stats = "1s"
            "#,
        )
        .unwrap();
        let expected = Config::parse(
            "port=6666 upstream=10.0.0.1:2005,10.0.0.9:2005 name=rack-7 memory=128M \
             spool=1M max_dumps=100 per_source=2 quiet=500ms linger=2m allow=10.0.0.0/8 stats=1s",
        )
        .unwrap();
        assert_eq!(config, expected);
        assert_eq!(
            config.reassembly.quiet_timeout,
            CoreDuration::from_millis(500)
        );
    }

    #[test]
    fn file_errors_name_the_key() {
        for (text, key) in [
            ("memory = \"lots\"", "memory"),
            ("port = 0", "port"),
            ("port = -1", "port"),
            ("upstream = []", "upstream"),
            ("upstream = [1, [2]]", "upstream"),
            ("allow = [\"10.0.0.0/40\"]", "allow"),
            ("quiet = true", "quiet"),
            ("name = [\"a\"]", "name"),
            ("colour = \"blue\"", "colour"),
            ("ip = \"10.0.0.2/24\"", "ip"),
            ("virtio_mmio.device = \"x\"", "virtio_mmio"),
        ] {
            let err = apply_toml(&mut Config::default(), text).unwrap_err();
            match err {
                TomlError::Key(e) => {
                    assert_eq!(e.key, key, "{text}");
                    assert!(e.to_string().contains(key), "{e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            apply_toml(&mut Config::default(), "port = "),
            Err(TomlError::Syntax { .. })
        ));
    }

    #[test]
    fn flags_override_the_file() {
        let (_dir, path) = file(
            "upstream = \"10.0.0.1:2005\"\nname = \"from-file\"\nport = 7000\nmemory = \"32M\"\n",
        );
        let path_arg = path.to_str().unwrap();
        let s = Settings::from_cli(&cli(&["--config", path_arg])).unwrap();
        assert_eq!(s.config.name, "from-file");
        assert_eq!(s.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(s.config.reassembly.memory_budget, 32 << 20);

        let s = Settings::from_cli(&cli(&[
            "--config",
            path_arg,
            "--name",
            "from-flag",
            "--upstream",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2,127.0.0.1:3",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.0/8",
            "--allow",
            "10.0.0.0/8",
        ]))
        .unwrap();
        assert_eq!(s.config.name, "from-flag");
        assert_eq!(s.config.upstreams.len(), 3);
        assert_eq!(s.config.upstreams[0], "127.0.0.1:1".parse().unwrap());
        assert_eq!(s.config.allow.len(), 2);
        assert_eq!(s.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            s.config.reassembly.memory_budget,
            32 << 20,
            "kept from the file"
        );
    }

    #[test]
    fn flag_errors_name_the_key_and_the_flag() {
        let err = Settings::from_cli(&cli(&["--max-dumps", "0"])).unwrap_err();
        assert_eq!(err.key(), Some("max_dumps"));
        assert!(err.to_string().starts_with("--max-dumps: "), "{err}");
        let err = Settings::from_cli(&cli(&["--upstream", "nowhere"])).unwrap_err();
        assert_eq!(err.key(), Some("upstream"));

        let (_dir, path) = file("linger = \"forever\"");
        let err = Settings::from_cli(&cli(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert_eq!(err.key(), Some("linger"));
        assert!(err.to_string().contains("relay.toml"), "{err}");

        let err = Settings::from_cli(&cli(&["--config", "/nonexistent/relay.toml"])).unwrap_err();
        assert!(matches!(err, SettingsError::Read { .. }));
    }

    #[test]
    fn hosted_flags_parse() {
        let c = cli(&[
            "--instance",
            "0x10",
            "--drain-timeout",
            "250ms",
            "--recv-buffer",
            "1M",
        ]);
        assert_eq!(c.instance, Some(16));
        assert_eq!(c.drain_timeout, Duration::from_millis(250));
        assert_eq!(c.recv_buffer, 1 << 20);
        let c = cli(&[
            "--drain-timeout",
            "1s",
            "--name",
            "a",
            "--drain-timeout",
            "2s",
        ]);
        assert_eq!(c.drain_timeout, Duration::from_secs(2), "the last one wins");
        let c = cli(&[]);
        assert_eq!(c.instance, None);
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.recv_buffer, DEFAULT_RECV_BUFFER);
        assert!(Cli::try_parse_from(["netoops-relay", "--instance", "x"]).is_err());
    }

    /// The defaults `--help` states are the core's.
    #[test]
    fn help_states_the_core_defaults() {
        let help = Cli::command().render_long_help().to_string();
        let d = Config::default();
        let r = d.reassembly;
        let mib = |n: usize| format!("[default: {}M]", n >> 20);
        let secs = |d: CoreDuration| format!("[default: {}s]", d.total_millis() / 1000);
        for needle in [
            format!("[default: {}]", d.name),
            mib(r.memory_budget),
            mib(d.spool_bytes),
            secs(r.quiet_timeout),
            secs(r.linger),
            format!("[default: {}]", r.max_dumps),
            format!("[default: {}]", r.max_dumps_per_source),
            secs(d.stats_interval),
            format!("0.0.0.0:{}", d.listen_port),
        ] {
            assert!(help.contains(&needle), "help lacks {needle}:\n{help}");
        }
        for key in FILE_KEYS {
            let flag = format!("--{} <VALUE>", key.replace('_', "-"));
            let named = if ADDRESS_KEYS.contains(key) {
                help.contains(key)
            } else {
                help.contains(&flag)
            };
            assert!(named, "help lacks the file key {key}");
        }
    }

    /// Every key the hosted relay reads from the table is a flag, with the table's list rule.
    #[test]
    fn every_hosted_key_is_a_flag_from_the_table() {
        for key in FILE_KEYS.iter().filter(|k| !ADDRESS_KEYS.contains(k)) {
            let flag = format!("--{}", key.replace('_', "-"));
            let c = Cli::try_parse_from(["netoops-relay", &flag, "1", &flag, "2"]).unwrap();
            let want = if is_list(key) {
                vec!["1", "2"]
            } else {
                vec!["2"]
            };
            let got = &c.keys.given.iter().find(|(k, _)| k == key).unwrap().1;
            if is_list(key) {
                assert_eq!(got, &want, "{flag}");
            } else {
                assert_eq!(got.last().map(String::as_str), Some("2"), "{flag}");
            }
        }
        let s = Settings::from_cli(&cli(&["--netconsole-sources", "17", "--spool", "3M"])).unwrap();
        assert_eq!(s.config.netconsole.max_sources, 17);
        assert_eq!(s.config.spool_bytes, 3 << 20);
    }

    /// The HTTP endpoint: off by default; `http_port` in the file puts it on the `--listen`
    /// IP; `--http-listen` names the address (and wins).
    #[test]
    fn the_http_endpoint_is_off_unless_asked_for() {
        let s = Settings::from_cli(&cli(&[])).unwrap();
        assert_eq!((s.http_listen, s.config.http_port), (None, 0));
        let (_dir, path) = file("http_port = 9100\nhttp_dumps = \"2M\"\n");
        let path = path.to_str().unwrap();
        let s = Settings::from_cli(&cli(&["--config", path, "--listen", "10.1.2.3:2004"])).unwrap();
        assert_eq!(s.http_listen, Some("10.1.2.3:9100".parse().unwrap()));
        assert_eq!(s.config.http_dumps, 2 << 20);
        let s =
            Settings::from_cli(&cli(&["--config", path, "--http-listen", "127.0.0.1:0"])).unwrap();
        assert_eq!(s.http_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!(Cli::try_parse_from(["netoops-relay", "--http-port", "1"]).is_err());
    }
}
