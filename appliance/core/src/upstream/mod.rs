//! Upstream delivery: getting every crash the relay heard about to a collector's storage, once,
//! across outages.
//!
//! - [`record`]: the framed record format spoken to collectors (binding for relay and
//!   collector alike).
pub mod record;

pub use record::{
    Cpu, CrashSeen, DumpIdentity, DumpMeta, Record, RecordHeader, RecordKind, RegisterSet, Reply,
    Source, SourceIp, PROTOCOL_VERSION,
};
