//! `netoops-relay`: parse the configuration, bind, run the relay until SIGINT/SIGTERM.
//! Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on a configuration error.

use std::io::Read;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use netoops_core::relay::Relay;
use netoops_relay::console::Console;
use netoops_relay::driver::{Clock, Driver, Ending};
use netoops_relay::http::HttpEndpoint;
use netoops_relay::settings::{Cli, Settings};
use netoops_relay::udp::BatchSocket;

const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::from_cli(&cli) {
        Ok(s) => s,
        Err(e) => return fail(CONFIG_ERROR, e),
    };
    // Bound first: the relay keeps dump texts for it only while `http_port` is on, and the
    // port is the one bound (the flag may ask for any free port).
    let http = match settings.http_listen {
        Some(addr) => match HttpEndpoint::bind(addr) {
            Ok(h) => {
                settings.config.http_port = h.local_addr().map_or(addr.port(), |a| a.port());
                Some(h)
            }
            Err(e) => return fail(1, format_args!("cannot listen for HTTP on {addr}: {e}")),
        },
        None => None,
    };
    // Budgets larger than the machine would end in an allocation failure, now or as traffic
    // fills them: refuse them by name.
    let footprint = Relay::footprint(&settings.config);
    if let Some(ram) = machine_memory() {
        if footprint > ram {
            return fail(
                CONFIG_ERROR,
                netoops_core::config::ConfigError {
                    key: Relay::largest_budget(&settings.config).into(),
                    problem: format!(
                        "the relay needs {} MiB, more than this machine's {} MiB of RAM",
                        footprint.div_ceil(1 << 20),
                        ram >> 20
                    ),
                },
            );
        }
    }
    let instance = settings.instance.unwrap_or_else(random_instance);
    let clock = Clock::start();
    // Chunks written once and read once go around the cache (non-temporal stores).
    // The hash tables' key: another draw, never sent anywhere (the instance id is).
    let key = netoops_core::hash_key::HashKey::new(random_instance());
    let relay = match Relay::keyed(
        settings.config.clone(),
        instance,
        netoops_streamed_slots::boxed,
        key,
    ) {
        Ok(r) => r,
        Err(e) => return fail(CONFIG_ERROR, e),
    };
    let mut relay = relay;
    // Netconsole history tails are asked for before the datagram is parsed.
    relay.set_prefetch(netoops_streamed_slots::prefetch);
    if let Some(sec) = relay.link().config().security.clone() {
        // The ephemeral keys' seed: the OS's randomness, not the stand-in.
        match os_seed() {
            Ok(seed) => relay
                .link()
                .set_security(Some(netoops_core::upstream::LinkSecurity {
                    key: sec.key,
                    seed,
                })),
            Err(e) => return fail(1, format_args!("cannot read /dev/urandom: {e}")),
        }
    }
    let udp = match BatchSocket::bind(settings.listen, settings.recv_buffer) {
        Ok(u) => u,
        Err(e) => return fail(1, format_args!("cannot listen on {}: {e}", settings.listen)),
    };
    let netconsole = match settings.netconsole_listen {
        Some(addr) => match BatchSocket::bind(addr, settings.recv_buffer) {
            Ok(u) => Some(u),
            Err(e) => {
                return fail(
                    1,
                    format_args!("cannot listen for netconsole on {addr}: {e}"),
                )
            }
        },
        None => None,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once (status 1).
        let registered =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&shutdown))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&shutdown)));
        if let Err(e) = registered {
            return fail(1, format_args!("cannot install signal handlers: {e}"));
        }
    }

    let mut console = Console::new(std::io::stdout());
    let config = relay.config();
    console.line(format_args!(
        "netoops-relay {} instance {instance:016x} name {}",
        env!("CARGO_PKG_VERSION"),
        config.name
    ));
    match &config.upstream_key {
        Some(k) => console.line(format_args!(
            "upstream sessions authenticated as key {}",
            k.id
        )),
        None => console.line("upstream sessions NOT authenticated (no upstream_key)"),
    }
    for (i, addr) in config.upstreams.iter().enumerate() {
        console.line(format_args!("upstream {i}: {addr}"));
    }
    let local = udp.local_addr().unwrap_or(settings.listen);
    let rcvbuf = udp.kernel_counters().map(|k| k.rcvbuf).unwrap_or(0);
    console.line(format_args!(
        "{}{local} (receive buffer {rcvbuf} bytes{})",
        netoops_core::console::LISTENING,
        if udp.forced_buffer() { ", forced" } else { "" }
    ));

    match &netconsole {
        Some(nc) => {
            let local = nc.local_addr().ok().or(settings.netconsole_listen);
            console.line(format_args!(
                "{}{}",
                netoops_core::console::NETCONSOLE_LISTENING,
                local.map_or_else(|| "?".to_string(), |a| a.to_string())
            ));
        }
        None => console.line("netconsole off"),
    }
    match &http {
        Some(h) => match h.local_addr() {
            Ok(addr) => console.line(format_args!(
                "{}{addr} (/metrics /healthz /dumps, dump texts {} bytes)",
                netoops_core::console::HTTP_LISTENING,
                relay.dumps().capacity()
            )),
            Err(_) => console.line("http listening on ?"),
        },
        None => console.line("http off"),
    }

    let mut driver = match Driver::new(
        relay,
        udp,
        netconsole,
        http,
        console,
        clock,
        settings.drain_timeout,
    ) {
        Ok(d) => d,
        Err(e) => return fail(1, format_args!("cannot set up polling: {e}")),
    };
    driver.set_key_file(settings.upstream_key_file.clone());
    match driver.run(&shutdown) {
        Ok(Ending::Delivered) | Ok(Ending::DrainTimedOut { .. }) => ExitCode::SUCCESS,
        Err(e) => fail(1, format_args!("event loop failed: {e}")),
    }
}

/// The machine's RAM (`MemTotal` in `/proc/meminfo`), when it can be read.
fn machine_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<usize>()
        .ok()?;
    kib.checked_mul(1024)
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("netoops-relay: error: {message}");
    ExitCode::from(code)
}

/// 32 bytes from /dev/urandom.
fn os_seed() -> std::io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// A fresh instance id per start: collectors key replay protection on it.
fn random_instance() -> u64 {
    let mut bytes = [0u8; 8];
    let from_urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if from_urandom && bytes != [0; 8] {
        return u64::from_le_bytes(bytes);
    }
    // No /dev/urandom: the start time and process id still differ from one start to the next.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) | 1
}
