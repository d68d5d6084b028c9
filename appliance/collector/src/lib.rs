//! netoops-collect: the upstream collector. It accepts relay sessions over TCP, stores every
//! crash notice and dump durably, acknowledges only what is on disk, and recognises resends so
//! that a crash reaches storage once, across relay and collector outages.
//!
//! - [`store`]: the storage layout, group commit, crash-safe writes and replay protection.
//! - [`commit`]: the committer thread that stores what sessions decoded, in batches.
//! - [`session`]: one relay connection (`Hello`/`Welcome`, records, `Ack`).
//! - [`server`]: the listener and its connection threads.
//! - [`catalog`]: reading a storage directory back (`list`, `show`).
//! - [`index`]: the SQLite index of dumps by crash signature, source, time and kernel.
//! - [`web`]: the HTTP view of crash groups, machines and dumps.
//! - [`watch`]: new crash notices and dumps as they land (`netoops-collect watch`).
//! - [`syslog`]: crash notices and stored dumps as RFC 5424 messages to a syslog server.
//! - [`nats`]: crash notices and dumps published to a NATS JetStream stream; acknowledgements
//!   wait for the stream.
//! - [`wallclock`]: wall-clock ms and RFC 3339 formatting.
//!
//! The record format is [`netoops_core::upstream::record`].

pub mod catalog;
pub mod commit;
pub mod index;
pub mod keys;
pub mod nats;
pub mod server;
pub mod session;
pub mod store;
pub mod syslog;
pub mod wallclock;
pub mod watch;
pub mod web;
