//! Structure-aware fuzzing of the reassembly engine and the relay data path.
//!
//! The input is decoded into a sequence of operations on a small `Relay` (tight memory, few
//! dumps, short timeouts, so eviction, flushing, revisions and generations are all reached):
//! valid datagrams from a handful of sources and dumps, the same with bytes flipped, raw
//! garbage, time steps, timeouts, and upstream acknowledgements. After every step the
//! engine's invariants must hold: memory within budget, counters consistent, nothing panics.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use netoops_core::time::Instant;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

fuzz_target!(|data: &[u8]| {
    let Some(mut relay) = common::relay(
        "upstream=127.0.0.1:2005 memory=1M max_dumps=8 per_source=3 quiet=2s linger=5s spool=256K",
    ) else {
        return;
    };
    let logs: Vec<Vec<u8>> = (0..4u8)
        .map(|i| (0..(i as usize * 3000 + 700)).map(|j| b'a' + ((j + i as usize) % 26) as u8).collect())
        .collect();
    let mut now = Instant::from_millis(1);
    let mut buf = [0u8; 2048];
    let mut ops = data.chunks_exact(4);
    for op in &mut ops {
        let (kind, a, b, c) = (op[0] % 8, op[1], op[2], op[3]);
        match kind {
            // A valid datagram: source a%6, dump b%4 (log and id), packet c.
            0..=3 => {
                let log = &logs[(b % 4) as usize];
                let split = (a as usize * 97) % (log.len() + 1);
                let m = SenderModel::new(&log[..split], &log[split..]);
                let variant = Variant::ALL[(b / 4 % 4) as usize];
                let h = DumpHeader::new(variant, u16::from(b % 5), "fuzz");
                let p = u32::from(c) % m.packet_count().max(1);
                let Ok(n) = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf) else {
                    continue;
                };
                if kind == 3 {
                    // Flip one byte anywhere.
                    let at = (usize::from(a) * 31 + usize::from(c)) % n;
                    buf[at] ^= b | 1;
                }
                let src = std::net::SocketAddr::from(([127, 0, 0, a % 6], 6666));
                let _ = relay.handle_datagram(now, src, &buf[..n]);
            }
            // Raw garbage of length a*8.
            4 => {
                let len = usize::from(a) * 8;
                for (i, x) in buf[..len].iter_mut().enumerate() {
                    *x = b.wrapping_mul(i as u8).wrapping_add(c);
                }
                let src = std::net::SocketAddr::from(([127, 0, 1, 1], 1));
                let _ = relay.handle_datagram(now, src, &buf[..len]);
            }
            // Time passes, timers fire when due, or the "collector" speaks.
            _ => common::tend(&mut relay, &mut now, kind, a, b, c),
        }
        while relay.poll_event().is_some() {}
        let r = relay.reassembler();
        assert!(r.footprint() <= r.config().memory_budget);
        assert!(r.dumps_held() <= r.config().max_dumps);
        let (used, total) = r.chunk_usage();
        assert!(used <= total);
        let s = r.stats();
        assert!(s.dumps_complete + s.dumps_partial >= s.revisions);
    }
    relay.flush(now);
    while relay.poll_event().is_some() {}
});
