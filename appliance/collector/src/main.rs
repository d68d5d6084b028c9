//! `netoops-collect`: `serve` relay sessions into a storage directory (and, with `--http`, a
//! web view of it; with `--syslog`, a message per crash notice and dump; with `--nats`, every
//! crash notice and dump published to NATS JetStream before it is acknowledged), `list` and
//! `show` what it holds, `groups` its crashes by signature.

use clap::{Parser, Subcommand};
use netoops_collect::catalog;
use netoops_collect::index::{self, Index, SyncStats};
use netoops_collect::nats::{self, NatsConfig};
use netoops_collect::server::{Server, ServerConfig};
use netoops_collect::syslog::{self, SyslogConfig};
use netoops_collect::web::WebServer;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "netoops-collect",
    version,
    about = "netoops crash relay collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `Serve` is much larger than the rest: parsed once per run, it is not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Accept relay sessions and store what they send.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:2005")]
        listen: SocketAddr,
        /// Storage directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Close a connection after this many seconds without input.
        #[arg(long, default_value_t = 120)]
        idle_timeout: u64,
        /// Connections served at once (at least 1).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// Connections not yet authenticated, in total: a separate budget, so clients
        /// without a key cannot take the session slots real relays need.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        max_handshakes: u32,
        /// Connections not yet authenticated, per peer address.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        max_handshakes_per_ip: u32,
        /// Bytes of partly received frames all connections may hold together (K/M/G); a
        /// connection that would go over is closed and counted.
        #[arg(long, default_value = "256M", value_parser = parse_size_arg)]
        frame_memory: usize,
        /// Longest a frame may take to arrive, in seconds, from its first byte (absolute:
        /// trickling bytes do not extend it).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        frame_deadline: u64,
        /// Also serve the web view (crash groups, machines, dumps; JSON under /api/, the
        /// collector's counters under /api/collector) here.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        #[command(flatten)]
        syslog: SyslogArgs,
        #[command(flatten)]
        nats: NatsArgs,
        /// Relay keys, one `ID KEY` per line (KEY: 64 hex digits); sessions must
        /// authenticate with one. Several lines per id are all accepted (key rotation).
        #[arg(long, value_name = "FILE", conflicts_with = "allow_plaintext")]
        keys: Option<PathBuf>,
        /// Accept unauthenticated, unencrypted sessions from anyone instead (no --keys).
        #[arg(long)]
        allow_plaintext: bool,
    },
    /// Print a new random relay key (64 hex digits) for a keys file and the relay's
    /// `upstream_key=ID:KEY`.
    Keygen,
    /// List stored dumps, newest first.
    List {
        /// Storage directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only dumps of this crash signature (or a prefix of it; see `groups`).
        #[arg(long)]
        signature: Option<String>,
    },
    /// Crash groups: dumps by signature, with counts, machines, first and last seen.
    Groups {
        /// Storage directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow new crash notices and stored dumps, one line each, until interrupted.
    Watch {
        /// Storage directory.
        dir: PathBuf,
        /// Print each event as one JSON line.
        #[arg(long)]
        json: bool,
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..))]
        interval_ms: u64,
    },
    /// Show one dump: metadata, then its text.
    Show {
        /// Storage directory.
        dir: PathBuf,
        /// `<ip>/<dump-key>` or a path to the dump's .json/.log.
        dump: String,
    },
}

/// `serve`'s syslog output.
#[derive(clap::Args)]
struct SyslogArgs {
    /// Also send each crash notice and stored dump to this syslog server: RFC 5424 over TCP,
    /// octet-counted (RFC 6587).
    #[arg(long, value_name = "HOST:PORT")]
    syslog: Option<String>,
    /// Syslog facility: a name (local0-local7, daemon, user, ...) or 0-23.
    #[arg(long, default_value = "local0", value_parser = syslog::parse_facility, requires = "syslog")]
    syslog_facility: u8,
    /// Syslog APP-NAME.
    #[arg(long, default_value = syslog::DEFAULT_APP_NAME, requires = "syslog")]
    syslog_app_name: String,
    /// Syslog HOSTNAME [default: this machine's host name].
    #[arg(long, requires = "syslog")]
    syslog_hostname: Option<String>,
    /// Syslog messages held while the server is slow or away; more are dropped and counted.
    #[arg(long, default_value_t = syslog::DEFAULT_QUEUE as u32, value_parser = clap::value_parser!(u32).range(1..), requires = "syslog")]
    syslog_queue: u32,
}

/// `serve`'s NATS JetStream output.
#[derive(clap::Args)]
struct NatsArgs {
    /// Also publish each crash notice and dump to NATS JetStream at this server (URL, or
    /// several comma-separated); relays are acknowledged only once the stream has them.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// JetStream stream (created when absent, capturing `<prefix>.>`).
    #[arg(long, default_value = nats::DEFAULT_STREAM, requires = "nats")]
    nats_stream: String,
    /// Subject prefix: `<prefix>.notice.<source>`, `<prefix>.dump.<source>`.
    #[arg(long, default_value = nats::DEFAULT_PREFIX, requires = "nats")]
    nats_subject_prefix: String,
    /// Replicas of a stream the collector creates (3 in a JetStream cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5), requires = "nats")]
    nats_replicas: u32,
    /// Duplicate window of a stream the collector creates, in seconds: a record published
    /// again within it (a resend, another collector) is stored once.
    #[arg(long, default_value_t = nats::DEFAULT_DUPLICATE_WINDOW.as_secs(), value_parser = clap::value_parser!(u64).range(1..), requires = "nats")]
    nats_duplicate_window: u64,
    /// Bytes held for the stream while it does not acknowledge (K/M/G); beyond, relay
    /// sessions wait.
    #[arg(long, default_value = "64M", value_parser = parse_size_arg, requires = "nats")]
    nats_hold: usize,
}

impl NatsArgs {
    fn config(self) -> Result<Option<NatsConfig>, String> {
        let Some(url) = self.nats else {
            return Ok(None);
        };
        let c = NatsConfig {
            stream: self.nats_stream,
            prefix: self.nats_subject_prefix,
            replicas: self.nats_replicas as usize,
            duplicate_window: Duration::from_secs(self.nats_duplicate_window),
            hold_bytes: self.nats_hold,
            ..NatsConfig::new(url)
        };
        c.validate()?;
        Ok(Some(c))
    }
}

impl SyslogArgs {
    fn config(self) -> Result<Option<SyslogConfig>, String> {
        let Some(target) = self.syslog else {
            return Ok(None);
        };
        let mut c = SyslogConfig::new(target);
        c.facility = self.syslog_facility;
        c.app_name = self.syslog_app_name;
        if let Some(h) = self.syslog_hostname {
            c.hostname = h;
        }
        c.queue = self.syslog_queue as usize;
        c.validate()?;
        Ok(Some(c))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            dir,
            idle_timeout,
            max_connections,
            max_handshakes,
            max_handshakes_per_ip,
            frame_memory,
            frame_deadline,
            http,
            syslog,
            nats,
            keys,
            allow_plaintext,
        } => syslog.config().and_then(|syslog| {
            let nats = nats.config()?;
            let keys = load_keys(keys, allow_plaintext)?;
            serve(
                ServerConfig {
                    listen,
                    dir,
                    idle_timeout: Duration::from_secs(idle_timeout.max(1)),
                    max_connections: max_connections as usize,
                    syslog,
                    nats,
                    max_pending: max_handshakes as usize,
                    max_pending_per_ip: max_handshakes_per_ip as usize,
                    max_frame_memory: frame_memory,
                    frame_deadline: Duration::from_secs(frame_deadline),
                    keys,
                },
                http,
            )
        }),
        Command::Keygen => netoops_collect::keys::generate_key()
            .map(|k| print_out(format!("{k}\n").as_bytes()))
            .map_err(|e| format!("cannot read /dev/urandom: {e}")),
        Command::List {
            dir,
            json,
            signature: Some(sig),
        } => list_signature(&dir, &sig, json),
        Command::Groups { dir, json } => synced(&dir).and_then(|index| {
            let groups = index.groups().map_err(|e| e.to_string())?;
            let text = if json {
                index::format_groups_json(&groups)
            } else {
                index::format_groups(&groups)
            };
            print_out(text.as_bytes());
            Ok(())
        }),
        Command::List { dir, json, .. } => catalog::list(&dir)
            .map(|dumps| print_dumps(&dumps, json))
            .map_err(|e| e.to_string()),
        Command::Watch {
            dir,
            json,
            interval_ms,
        } => watch(&dir, json, Duration::from_millis(interval_ms)),
        Command::Show { dir, dump } => catalog::find(&dir, &dump)
            .and_then(|d| {
                let text = catalog::read_text(&d)?;
                print_out(catalog::format_summary(&d).as_bytes());
                print_out(b"\n");
                // The log is the sender's bytes: lossy UTF-8, control characters escaped.
                let text = String::from_utf8_lossy(&text);
                print_out(catalog::terminal_safe(&text, true).as_bytes());
                Ok(())
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netoops-collect: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn watch(dir: &std::path::Path, json: bool, every: Duration) -> Result<(), String> {
    let mut w = netoops_collect::watch::Watch::new(dir)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    print_out(format!("watching {}\n", dir.display()).as_bytes());
    loop {
        std::thread::sleep(every);
        let events = w
            .poll()
            .map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let mut text = String::new();
        for e in &events {
            if json {
                text.push_str(&netoops_collect::watch::format_json(e));
            } else {
                text.push_str(&netoops_collect::watch::format_line(e));
            }
            text.push('\n');
        }
        if !text.is_empty() {
            print_out(text.as_bytes());
        }
    }
}

fn print_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// The keys file, or the explicit plaintext opt-out; one of them is required.
fn load_keys(
    keys: Option<PathBuf>,
    allow_plaintext: bool,
) -> Result<Option<std::sync::Arc<netoops_collect::keys::KeyTable>>, String> {
    match (keys, allow_plaintext) {
        (Some(path), _) => {
            netoops_collect::keys::KeyTable::load(&path).map(|t| Some(std::sync::Arc::new(t)))
        }
        (None, true) => Ok(None),
        (None, false) => Err(
            "serve needs --keys FILE (relay keys; see `netoops-collect keygen`), or \
             --allow-plaintext to accept unauthenticated relays"
                .to_string(),
        ),
    }
}

fn serve(config: ServerConfig, http: Option<SocketAddr>) -> Result<(), String> {
    let dir = config.dir.clone();
    let server = Server::bind(config.clone())
        .map_err(|e| format!("cannot serve {} on {}: {e}", dir.display(), config.listen))?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let marker = netoops_core::console::LISTENING;
    print_out(format!("{marker}{addr} storing in {}\n", dir.display()).as_bytes());
    if let Some(http) = http {
        let mut web = WebServer::bind(http, &dir)
            .map_err(|e| format!("cannot serve the web view on {http}: {e}"))?
            .with_counters(server.counters());
        if let Some(stats) = server.nats_stats() {
            web = web.with_nats(stats);
        }
        let addr = web.local_addr().map_err(|e| e.to_string())?;
        print_out(format!("web view on http://{addr}/\n").as_bytes());
        web.spawn();
    }
    if let Some(s) = &config.syslog {
        print_out(
            format!(
                "syslog to {} (facility {}, app {}, host {}, queue {})\n",
                s.target,
                syslog::facility_name(s.facility),
                s.app_name,
                s.hostname,
                s.queue
            )
            .as_bytes(),
        );
    }
    if let Some(n) = &config.nats {
        print_out(
            format!(
                "nats to {} (stream {}, subjects {}.>, hold {} bytes)\n",
                n.url, n.stream, n.prefix, n.hold_bytes
            )
            .as_bytes(),
        );
    }
    server.run().map_err(|e| e.to_string())
}

/// Opens and syncs the index, reporting skipped files on stderr.
fn synced(dir: &std::path::Path) -> Result<Index, String> {
    let (index, stats) = Index::open_synced(dir).map_err(|e| e.to_string())?;
    report_skipped(&stats);
    Ok(index)
}

fn report_skipped(stats: &SyncStats) {
    let skipped = stats.bad_meta + stats.missing_log + stats.unreadable;
    if skipped > 0 {
        eprintln!(
            "netoops-collect: {skipped} dumps skipped ({} bad metadata, {} without text, {} unreadable)",
            stats.bad_meta, stats.missing_log, stats.unreadable
        );
    }
}

fn list_signature(dir: &std::path::Path, sig: &str, json: bool) -> Result<(), String> {
    let index = synced(dir)?;
    let names = index.dumps(Some(sig)).map_err(|e| e.to_string())?;
    let mut dumps = Vec::with_capacity(names.len());
    for d in &names {
        match catalog::find(dir, &d.name) {
            Ok(sd) => dumps.push(sd),
            Err(e) => eprintln!("netoops-collect: {e}; skipped"),
        }
    }
    print_dumps(&dumps, json);
    Ok(())
}

/// `list`'s output: the table or the JSON array.
fn print_dumps(dumps: &[catalog::StoredDump], json: bool) {
    let text = if json {
        catalog::format_json(dumps)
    } else {
        catalog::format_table(dumps)
    };
    print_out(text.as_bytes());
}

/// `256M`-style sizes, at least 8 MiB (one largest frame).
fn parse_size_arg(v: &str) -> Result<usize, String> {
    match netoops_core::config::parse_size(v) {
        Some(n) if n >= 8 << 20 => Ok(n),
        Some(_) => Err("at least 8M (one largest frame)".to_string()),
        None => Err("a size like 256M".to_string()),
    }
}
