//! Networking for the relay: NICs, the netoops fast path, and embassy-net for everything else.
//!
//! The layers, bottom up:
//!
//! - [`nic`]: the NICs found at boot behind one enum ([`nic::AnyNic`]) implementing
//!   `netoops_nic::Device`.
//! - [`fastpath`]: in-place classification of received frames; netoops datagrams for us
//!   never reach the stack; the code is the `netoops-fastpath` crate (unit-tested and
//!   benchmarked on the host), re-exported here.
//! - [`driver`]: the NIC presented to embassy-net (`embassy_net_driver::Driver`), running the
//!   fast path inside its `receive` on the ingress NIC.
//! - [`executor`] and [`timers`]: the spinning executor, the TSC time driver and its timer
//!   table, and the no-op critical section of a single-core kernel without interrupts.
//! - [`upstream`]: the task that runs the relay's upstream link over a TCP socket.
//! - [`http`]: the tasks that serve the HTTP endpoint (`http_port=`) on the relay's address.
//! - [`tcp`]: what those TCP tasks share (stack, relay, buffers, closing a connection).
//! - [`settings`]: the relay configuration from the command line, interface addressing and
//!   NIC selection. Pure, unit-tested on the host.
//!
//! embassy-net 0.9 (on smoltcp 0.13) answers ARP and ICMP echo and carries the upstream TCP
//! connections; `crate::board` wires all of it together and runs the loop.

#[cfg(all(target_os = "none", not(test)))]
pub mod driver;
#[cfg(all(target_os = "none", not(test)))]
pub mod executor;
#[cfg(all(target_os = "none", not(test)))]
pub mod fastpath;
#[cfg(all(target_os = "none", not(test)))]
pub mod http;
#[cfg(all(target_os = "none", not(test)))]
pub mod nic;
pub mod settings;
#[cfg(all(target_os = "none", not(test)))]
pub mod tcp;
pub mod timers;
#[cfg(all(target_os = "none", not(test)))]
pub mod upstream;
