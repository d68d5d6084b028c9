//! Ethernet II / IPv4 / UDP frames around a datagram: the one implementation lives in
//! `netoops_image::frame`, shared with the appliance's host-side forwarder and the tests.

pub use netoops_image::frame::*;
