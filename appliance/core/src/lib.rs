//! The relay core: everything between a received netoops datagram and a byte stream to the
//! upstream collector, as sans-IO state machines.
//!
//! Contract: bytes and time go in, events and bytes come out. Nothing here reads a clock,
//! touches a socket or a device, or allocates on the per-packet path (datagram in, crash
//! notice and dump encoded into the spool, frames out, acknowledgements, console events); pools
//! are sized from the configuration when a component is built. `tests/no_alloc.rs` counts
//! allocations over the reassembler alone, over the whole [`relay::Relay`] and over
//! serving HTTP requests ([`http::HttpServer`]). The same code
//! runs in the kernel, in the hosted relay and in tests.
//!
//! - [`time`]: the caller-supplied clock ([`time::Instant`], [`time::Duration`]).
//! - [`reassembly`]: the [`reassembly::Reassembler`], turning datagrams into crash
//!   notifications and dumps within a fixed memory budget.
//! - [`upstream`]: the record format spoken to collectors, the bounded spool that holds
//!   records until acknowledged, and the [`upstream::UpstreamLink`] failover state machine.
//! - [`config`]: the appliance configuration and its `key=value` parser.
//! - [`http`]: the HTTP endpoint (`/metrics`, `/healthz`, `/dumps`) as a sans-IO server, the
//!   Prometheus renderer and the RAM ring of the last dumps.
//! - [`relay`]: [`relay::Relay`], which wires allowlist, reassembly and upstream delivery into
//!   one data path for the kernel and the hosted relay to drive.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod console;
pub mod hash_key;
pub mod http;
pub mod netconsole;
pub mod reassembly;
pub mod relay;
pub mod time;
pub mod upstream;

/// Whether `s` is 1 to `max` bytes of `[A-Za-z0-9._-]`: safe to print on a console line and to
/// use in a URL path or a file name (key ids, `/dumps` keys).
pub(crate) fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
