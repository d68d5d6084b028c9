//! `netoops-collect`: `serve` relay sessions into a storage directory, `list` and `show` what
//! it holds.

use clap::{Parser, Subcommand};
use netoops_collect::catalog;
use netoops_collect::server::{Server, ServerConfig};
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
        /// Connections served at once.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
    },
    /// List stored dumps, newest first.
    List {
        /// Storage directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dump: metadata, then its text.
    Show {
        /// Storage directory.
        dir: PathBuf,
        /// `<ip>/<dump-key>` or a path to the dump's .json/.log.
        dump: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            dir,
            idle_timeout,
            max_connections,
        } => serve(ServerConfig {
            listen,
            dir,
            idle_timeout: Duration::from_secs(idle_timeout.max(1)),
            max_connections,
        }),
        Command::List { dir, json } => catalog::list(&dir)
            .map(|dumps| {
                let text = if json {
                    catalog::format_json(&dumps)
                } else {
                    catalog::format_table(&dumps)
                };
                print_out(text.as_bytes());
            })
            .map_err(|e| e.to_string()),
        Command::Show { dir, dump } => catalog::find(&dir, &dump)
            .and_then(|d| {
                let text = catalog::read_text(&d)?;
                print_out(catalog::format_summary(&d).as_bytes());
                print_out(b"\n");
                print_out(&text);
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

fn print_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

fn serve(config: ServerConfig) -> Result<(), String> {
    let dir = config.dir.clone();
    let server = Server::bind(config.clone())
        .map_err(|e| format!("cannot serve {} on {}: {e}", dir.display(), config.listen))?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    print_out(format!("listening on {addr} storing in {}\n", dir.display()).as_bytes());
    server.run().map_err(|e| e.to_string())
}
