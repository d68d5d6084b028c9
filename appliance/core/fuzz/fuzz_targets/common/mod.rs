//! What the `engine` and `netconsole` targets share: the relay under test, and the operations
//! that are not about its input (time, timers, the collector's side).

use netoops_core::config::Config;
use netoops_core::relay::Relay;
use netoops_core::time::{Duration, Instant};

/// A `Relay` on `config` (a valid configuration text), or `None` where it cannot start.
pub fn relay(config: &str) -> Option<Relay> {
    Relay::new(Config::parse(config).expect("valid"), 1).ok()
}

/// Operations 5-7: time passes (`a` × 50 ms); due timers fire; or the "collector" sends
/// `a b c 0` and the relay's output is drained.
pub fn tend(relay: &mut Relay, now: &mut Instant, kind: u8, a: u8, b: u8, c: u8) {
    match kind {
        5 => *now += Duration::from_millis(u64::from(a) * 50),
        6 => {
            if let Some(t) = relay.poll_timeout() {
                if t <= *now {
                    relay.handle_timeout(*now);
                }
            }
        }
        _ => {
            let link = relay.link();
            if let Some(idx) = link.poll_connect(*now) {
                link.handle_connected(*now, idx);
            }
            let _ = link.handle_input(*now, &[a, b, c, 0]);
            let mut out = [0u8; 512];
            let _ = link.poll_transmit(*now, &mut out);
        }
    }
}
