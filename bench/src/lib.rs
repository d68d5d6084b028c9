//! Benchmark tooling for the netoops relay: the packet generator and the benchmark harness.
//!
//! - [`gen`]: the `netoops-gen` library. Scenarios of crashing machines become a deterministic
//!   schedule of netoops datagrams, sent over UDP or as raw Ethernet frames into QEMU, with the
//!   exact text every dump must reassemble to and the time each machine's datagrams left.
//! - [`harness`]: the `netoops-bench` suite. It starts the real targets (a counting baseline
//!   receiver, the hosted relay, the appliance image in QEMU with each NIC) and the real
//!   collector, searches each target's lossless rate, measures end-to-end latency, memory and
//!   cycles per datagram, runs the crash storm, and writes JSON, Markdown and SVG results.
//! - [`native`]: `netoops-bench native`, the image's receive path (drivers, fast path, relay,
//!   upstream link) run natively over simulated NICs, with cycles per datagram per stage.
//!
//! This crate is host-only (std). Its only unsafe code is the `sendmmsg` call, the `AF_PACKET`
//! socket of the TAP output, a `prctl` for timer slack, a `kill` of a child process, and the
//! native benchmark's `rdtsc` and cache prefetches, each with its `SAFETY` note.

pub mod gen;
pub mod harness;
pub mod native;
