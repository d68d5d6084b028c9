//! `netoops-gen`: simulated machines crashing and sending netoops dumps.
//!
//! A [`Scenario`] describes the population (how many machines, log sizes, wire variants, the
//! seed) and its network (loss model, duplication, reordering, storm timing). From it:
//!
//! - [`Scenario::machine`] derives one machine (identity, log, crash time) from the seed alone;
//! - [`MachinePlan`] is the exact list of datagrams one machine's channel lets through, in
//!   order: the sender's three rounds, minus losses, plus duplicates, with reordering;
//! - [`Schedule`] merges all machines into one deterministic stream and encodes each datagram
//!   into the caller's buffer;
//! - [`run`] paces the schedule (token bucket) into an [`Output`]: real UDP datagrams from
//!   127.x.y.z sources, or raw Ethernet frames for QEMU's dgram/stream netdevs;
//! - [`Expectation`] is what a correct receiver must report for each machine, computed with
//!   [`netoops_wire::model::expected`] from the packets the plan actually sends;
//! - [`SendLog`] (through the [`Timed`] output wrapper) records when each machine's first,
//!   completing and last datagrams left, for latency measurements.
//!
//! With [`Protocol::Netconsole`] the machines are netconsole senders instead ([`NcMachine`]):
//! crashing machines log ordinary lines then a crash burst, healthy ones (`chatter`) only log;
//! their datagrams go through the same channel (one round), schedule and outputs, and
//! [`RelayView`] is the reference answer for their dumps.
//!
//! Same scenario, same bytes: nothing depends on timing, so expectations can be written before,
//! after or without sending.

pub mod channel;
pub mod expect;
pub mod netconsole;
pub mod output;
pub mod pacing;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod sendlog;

pub use channel::{LossModel, MachinePlan, PlannedSend};
pub use expect::{write_expectations, ExpectSummary, Expectation};
pub use netconsole::{NcLog, NcMachine, RelayView};
pub use output::{Batch, Output, OutputSpec};
pub use run::{run, Progress, RunOptions, RunReport};
pub use scenario::{
    Machine, NcMode, NetconsoleParams, Protocol, Scenario, ScenarioError, SizeRange, Timing,
};
pub use schedule::{Schedule, ScheduleStats, Scheduled};
pub use sendlog::{SendLog, Timed};
