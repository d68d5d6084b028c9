//! The netoops fast path: in-place classification of received frames and the hand-off of
//! netoops and netconsole datagrams to the relay. The code lives in `netoops-fastpath` so the
//! host builds it too (`netoops-bench native` measures exactly this code over simulated
//! NICs); this module re-exports it for the rest of the kernel.

pub use netoops_fastpath::*;
