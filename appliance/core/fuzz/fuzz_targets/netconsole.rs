//! Structure-aware fuzzing of netconsole ingest through the `Relay`.
//!
//! The input is decoded into operations: extended records (whole or fragmented, from a few
//! sources, with sequence numbers that repeat, jump, go back and forward), single fragments,
//! legacy text with and without crash lines, bytes flipped, raw garbage, time steps, timeouts
//! and collector acknowledgements, on a tracker with a tiny pool and source table, so
//! reclaiming, eviction, reboots and truncation are all reached. After every step the
//! tracker's bounds must hold; nothing may panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use netoops_core::time::Instant;
use netoops_wire::netconsole::{encode_record, RecordSpec};

const TEXTS: [&str; 6] = [
    "e1000: eth0 NIC Link is Up",
    "BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "Call Trace:",
    "tab\there \\ and \u{7f}",
    "Kernel panic - not syncing: Fatal exception",
    "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
];

fuzz_target!(|data: &[u8]| {
    let Some(mut relay) = common::relay(
        "upstream=127.0.0.1:2005 memory=1M max_dumps=8 quiet=2s spool=256K netconsole_history=2K \
         netconsole_memory=16K netconsole_sources=3",
    ) else {
        return;
    };
    let long: String = (0..2500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut now = Instant::from_millis(1);
    let mut scratch = [0u8; 8192];
    let mut dgrams: Vec<Vec<u8>> = Vec::new();
    let mut ops = data.chunks_exact(4);
    for op in &mut ops {
        let (kind, a, b, c) = (op[0] % 8, op[1], op[2], op[3]);
        let src = std::net::SocketAddr::from(([127, 0, 0, a % 5], 6665));
        match kind {
            // A record: sequence b, text c%6 (or the long one), maybe with a release.
            0..=2 => {
                let text = if c % 7 == 6 { long.as_str() } else { TEXTS[usize::from(c % 6)] };
                let spec = RecordSpec {
                    release: (a & 0x80 != 0).then_some("6.1.0-fuzz"),
                    level: u16::from(c % 8),
                    seq: u64::from(b) * u64::from(1 + a % 3),
                    usec: u64::from(b) * 1000 + u64::from(a & 0x40) * 1_000_000,
                    text: text.as_bytes(),
                    fields: &[("cpu", "0"), ("taskname", "sh")],
                };
                dgrams.clear();
                encode_record(&spec, &mut scratch, |d| dgrams.push(d.to_vec()));
                let n = dgrams.len();
                for (i, d) in dgrams.iter_mut().enumerate() {
                    // kind 1: drop one fragment; kind 2: flip a byte.
                    if kind == 1 && n > 1 && i == usize::from(c) % n {
                        continue;
                    }
                    if kind == 2 {
                        let at = (usize::from(a) * 31 + usize::from(c)) % d.len();
                        d[at] ^= b | 1;
                    }
                    let _ = relay.handle_netconsole(now, src, d);
                }
            }
            // Legacy text, split at an arbitrary point.
            3 => {
                let line = format!("[{:5}.000000] {}\n", b, TEXTS[usize::from(c % 6)]);
                let cut = usize::from(a) % (line.len() + 1);
                let _ = relay.handle_netconsole(now, src, &line.as_bytes()[..cut]);
                let _ = relay.handle_netconsole(now, src, &line.as_bytes()[cut..]);
            }
            // Raw garbage of length a*8.
            4 => {
                let garbage: Vec<u8> = (0..usize::from(a) * 8)
                    .map(|i| b.wrapping_mul(i as u8).wrapping_add(c))
                    .collect();
                let _ = relay.handle_netconsole(now, src, &garbage);
            }
            // Time passes, timers fire when due, or the "collector" speaks.
            _ => common::tend(&mut relay, &mut now, kind, a, b, c),
        }
        while relay.poll_event().is_some() {}
        let nc = relay.console();
        let (used, total) = nc.block_usage();
        assert!(used <= total);
        assert!(nc.sources() <= nc.config().max_sources);
        assert!(nc.crashing() <= nc.sources());
        let s = nc.stats();
        assert!(s.dumps <= s.crashes);
    }
    relay.flush(now);
    while relay.poll_event().is_some() {}
    assert_eq!(relay.console().crashing(), 0);
});
