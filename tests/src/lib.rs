//! End-to-end tests live in `tests/tests/`; shared helpers live here.

pub mod appliance;
pub mod echo;
pub mod forward;
pub mod hosted;
pub mod linux;
pub mod metrics;
