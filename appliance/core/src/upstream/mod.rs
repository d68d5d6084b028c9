//! Upstream delivery: getting every crash the relay heard about to a collector's storage, once,
//! across outages.
//!
//! - [`record`]: the framed record format spoken to collectors (binding for relay and
//!   collector alike).
//! - [`emit`]: the relay's records serialized straight from its views, without allocating.
//! - [`spool`]: the bounded store of encoded records kept until a collector acknowledges them,
//!   in two lanes (crash notices before dumps), with its overflow policy (never-sent records
//!   only, every drop counted).
//! - [`link`]: [`UpstreamLink`], the sans-IO session and failover state machine over one TCP
//!   connection at a time; time and bytes come in, bytes and events come out.
//! - [`secure`]: the Noise `NNpsk0` channel the link runs its stream through when the relay
//!   has a key (both ends: the relay's `Initiator`, the collector's `Responder`).
pub mod emit;
pub mod link;
pub mod record;
pub mod secure;
pub mod spool;

pub use emit::{CrashOut, DumpOut, SpoolRecord};
pub use link::{
    CloseReason, DisconnectCounts, EnqueueError, KindCounts, LinkConfig, LinkError, LinkEvent,
    LinkSecurity, LinkStats, UpstreamLink,
};
pub use record::{
    ConsoleMeta, Cpu, CrashSeen, DumpIdentity, DumpKind, DumpMeta, Record, RecordHeader,
    RecordKind, RegisterSet, Reply, Source, SourceIp, PROTOCOL_VERSION,
};
pub use spool::{Spool, SpoolWriter};
