//! The per-packet path never allocates: a counting global allocator watches the reassembler
//! take three rounds of many interleaved dumps, including memory pressure and evictions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use netoops_core::reassembly::{CrashSeen, DumpView, EventSink, Reassembler, ReassemblyConfig};
use netoops_core::time::Instant;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Reads every byte of what it is given, as a delivery queue would, without allocating.
#[derive(Default)]
struct Reader {
    crashes: usize,
    dumps: usize,
    bytes: usize,
}

impl EventSink for Reader {
    fn crash_seen(&mut self, c: &CrashSeen<'_>) {
        self.crashes += 1;
        self.bytes += c.text().len();
    }
    fn dump(&mut self, d: &DumpView<'_>) {
        self.dumps += 1;
        d.write_text(|b| self.bytes += b.len());
        self.bytes += d.missing().count() + d.zeroed().count();
    }
}

#[test]
fn reassembly_does_not_allocate_per_packet() {
    const MACHINES: usize = 300;
    let logs: Vec<Vec<u8>> = (0..MACHINES)
        .map(|i| vec![b'a' + (i % 26) as u8; 20_000 + i * 37])
        .collect();
    let models: Vec<SenderModel<'_>> = logs
        .iter()
        .map(|l| SenderModel::new(&l[..l.len() / 3], &l[l.len() / 3..]))
        .collect();
    // Pre-encode everything so only the reassembler runs while counting.
    let mut packets: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for round in 0..3 {
        for p in 0..20u32 {
            for (i, m) in models.iter().enumerate() {
                if p >= m.packet_count() || (p + round + i as u32) % 7 == 0 {
                    continue;
                }
                let h = DumpHeader::new(Variant::ALL[i % 4], i as u16, "6.1");
                let mut buf = vec![0u8; 2048];
                let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
                buf.truncate(n);
                let src = SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8], 6666));
                packets.push((src, buf));
            }
        }
    }
    packets.push((SocketAddr::from(([127, 0, 0, 1], 1)), vec![0xff; 700]));

    // A pool of ~2000 chunks for ~6000 distinct chunks forces flushing and reclaiming.
    let probe = ReassemblyConfig {
        max_dumps: 128,
        ..ReassemblyConfig::default()
    };
    let config = ReassemblyConfig {
        memory_budget: probe.table_bytes() + 2000 * 1100,
        ..probe
    };
    let mut r = Reassembler::new(config).unwrap();
    let mut sink = Reader::default();
    COUNTING.store(true, Ordering::SeqCst);
    for (i, (src, bytes)) in packets.iter().enumerate() {
        let now = Instant::from_micros(i as u64 * 10);
        let _ = r.handle_datagram(now, *src, bytes, &mut sink);
        if i % 500 == 0 {
            r.handle_timeout(now, &mut sink);
        }
    }
    r.handle_timeout(Instant::from_millis(10_000_000), &mut sink);
    COUNTING.store(false, Ordering::SeqCst);

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0);
    let s = r.stats();
    assert!(s.flushed_for_memory > 0 || s.flushed_for_table > 0, "{s:?}");
    assert!(s.lingering_reclaimed > 0 || s.forgotten_early > 0, "{s:?}");
    assert_eq!(s.malformed_total(), 1);
    assert_eq!(sink.crashes as u64, s.dumps_started);
    assert!(sink.dumps >= MACHINES);
    assert!(r.footprint() <= config.memory_budget);
}
