//! netoops-relay: the hosted Linux relay, a thin std driver of the core's sans-IO
//! [`netoops_core::relay::Relay`].
//!
//! It owns the operating-system side only: a UDP socket read in `recvmmsg` batches
//! ([`udp`]), one non-blocking TCP connection run on behalf of the core's upstream link
//! ([`upstream`]), a monotonic clock, `epoll` readiness waits and signal-driven shutdown
//! ([`driver`]), flags and the TOML file mapped onto the core's configuration keys
//! ([`settings`]), timestamped console lines ([`console`]) and the sockets of the HTTP
//! endpoint ([`http`]; the core's `HttpServer` answers). Reassembly, the record
//! format, the spool, acknowledgements and failover are the core's; nothing here interprets
//! a netoops datagram or a collector reply.
//!
//! Unsafe code lives only in [`udp`] (the `libc` socket calls), every block with its
//! `// SAFETY:` argument.

pub mod console;
pub mod driver;
pub mod http;
pub mod settings;
pub mod udp;
pub mod upstream;
