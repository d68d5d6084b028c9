//! Wire formats: the bytes a crashing Linux kernel sends (netoops and netconsole), and nothing
//! else.
//!
//! - [`netoops`] validates one datagram (v2 or v3) once in [`Datagram::parse`]; after that every
//!   accessor reads a fixed position with no failure path. Registers decode lazily.
//! - [`mod@encode`] writes datagrams and models the original sender exactly ([`SenderModel`]):
//!   the two log pieces, chunking, zero padding, the all-zero chunk bug and the send order.
//! - [`netconsole`] classifies and validates netconsole datagrams (legacy and extended, with
//!   `ncfrag` fragments), decodes `\xNN` escapes, spots crash lines, and encodes records as the
//!   kernel sends them.
//! - [`text`] turns received chunks and gaps into dump text without allocating.
//! - [`model`] (feature `alloc`) is the reference answer: what a correct receiver produces for a
//!   log given which packets arrived. Tests and benchmarks compare the real receiver with it.
//!
//! The crate is `no_std`, has no unsafe code and never panics on input bytes: malformed
//! datagrams get a typed [`WireError`].
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
// Tests (proptest) run on the host with std.
#[cfg(test)]
extern crate std;

pub mod encode;
#[cfg(feature = "alloc")]
pub mod model;
pub mod netconsole;
pub mod netoops;
pub mod text;

pub use encode::{encode, BufferTooSmall, DumpHeader, SenderModel, UnknownVariant, Variant};
pub use netoops::{
    CpuId, Datagram, DumpType, Limits, RegisterLayout, Registers, Version, WireError, WireErrorKind,
};

/// Bytes of log text carried by every netoops datagram.
pub const DATA_LEN: usize = 1024;

/// UDP port the sender uses by default (both source and destination).
pub const DEFAULT_PORT: u16 = 2004;

/// The largest datagram [`Datagram::parse`] could ever accept (data offset at most 1024, plus the
/// 1024 data bytes). Receive buffers of this size never truncate an acceptable datagram.
pub const MAX_DATAGRAM_LEN: usize = 2048;
