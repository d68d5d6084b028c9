//! Hot-path cost of `Datagram::parse` and of the accessors a reassembler touches per packet,
//! for each variant, plus encoding (the generator's cost per datagram).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netoops_wire::encode::{encode, rewrite_packet, DumpHeader, Variant};
use netoops_wire::text::chunk_text;
use netoops_wire::{Datagram, Limits, DATA_LEN, MAX_DATAGRAM_LEN};
use std::hint::black_box;

fn datagram(variant: Variant) -> ([u8; MAX_DATAGRAM_LEN], usize) {
    let mut h = DumpHeader::new(variant, 4242, "6.1.0-13-amd64");
    h.registers = core::array::from_fn(|i| i as u64 + 1);
    let mut data = [b'x'; DATA_LEN];
    data[900..].fill(0);
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let n = encode(&h, 300, 17, &data, &mut out).unwrap();
    (out, n)
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for v in Variant::ALL {
        let (buf, n) = datagram(v);
        let bytes = &buf[..n];
        g.bench_function(format!("{}/parse", v.name()), |b| {
            b.iter(|| Datagram::parse(black_box(bytes), &limits).map(|d| d.packet_no()))
        });
        g.bench_function(format!("{}/parse+fields", v.name()), |b| {
            b.iter(|| {
                let d = Datagram::parse(black_box(bytes), &limits).unwrap();
                (
                    d.dump_id(),
                    d.packet_count(),
                    d.packet_no(),
                    d.boot_id(),
                    d.data()[0],
                )
            })
        });
        g.bench_function(format!("{}/registers", v.name()), |b| {
            let d = Datagram::parse(bytes, &limits).unwrap();
            b.iter(|| black_box(&d).registers().map(|r| r.ip()))
        });
    }
    let (buf, n) = datagram(Variant::V3X86_64);
    g.bench_function("v3/chunk_text", |b| {
        let d = Datagram::parse(&buf[..n], &limits).unwrap();
        b.iter(|| chunk_text(black_box(d.data())).len())
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let h = DumpHeader::new(Variant::V3X86_64Blob, 1, "6.1.0");
    let data = [b'y'; DATA_LEN];
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    g.bench_function("v3-blob/encode", |b| {
        b.iter(|| encode(black_box(&h), 300, 17, &data, &mut out))
    });
    g.bench_function("v3-blob/rewrite_packet", |b| {
        b.iter(|| rewrite_packet(&mut out, Variant::V3X86_64Blob, black_box(18), &data))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
