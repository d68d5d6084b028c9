//! The configuration parsers on arbitrary text: the core's `key=value` parser (kernel command
//! line, `relay.conf`) and the hosted relay's TOML file. Nothing panics, and a configuration
//! that parses also validates without panicking (its budgets are never allocated here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netoops_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Config::parse(&text) {
        let _ = c.validate();
        let _ = c.validate_for_appliance();
    }
    let mut c = Config::default();
    if netoops_relay::settings::apply_toml(&mut c, &text).is_ok() {
        let _ = c.validate();
    }
});
