//! Benchmark tooling for the netoops relay: the packet generator and what benches share.
//!
//! - [`gen`]: the `netoops-gen` library. Scenarios of crashing machines become a deterministic
//!   schedule of netoops datagrams, sent over UDP or as raw Ethernet frames into QEMU, with the
//!   exact text every dump must reassemble to.
//!
//! This crate is host-only (std). Its only unsafe code is the `sendmmsg` call and a `prctl`
//! for timer slack, each with its `SAFETY` note.

pub mod gen;
