//! Fuzz target `parse`: arbitrary bytes into `Datagram::parse`, every accessor on what parses,
//! then re-encode it (`DumpHeader::from_datagram` + `encode`) and check that the second parse
//! reports the same fields and that encoding is idempotent from there on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netoops_wire::encode::{encode, DumpHeader, Variant};
use netoops_wire::text::{chunk_text, render, Segment};
use netoops_wire::{Datagram, Limits, Version, WireError, DATA_LEN, MAX_DATAGRAM_LEN};

fuzz_target!(|bytes: &[u8]| {
    let loose = Limits {
        max_packet_count: u32::MAX,
    };
    let strict = Limits::default();
    let d = match Datagram::parse(bytes, &loose) {
        Ok(d) => d,
        Err(e) => {
            // Tighter limits keep a rejection; the packet-count check may come first.
            let strict_err = Datagram::parse(bytes, &strict).unwrap_err();
            assert!(
                strict_err == e || matches!(strict_err, WireError::TooManyPackets { .. }),
                "{e} vs {strict_err}"
            );
            let _ = e.kind().name();
            return;
        }
    };
    if let Err(e) = Datagram::parse(bytes, &strict) {
        assert!(d.packet_count() > strict.max_packet_count, "{e}");
    }
    assert!(bytes.len() <= MAX_DATAGRAM_LEN);
    assert!(d.packet_no() < d.packet_count());
    assert_eq!(d.bytes().len(), d.data_offset() + DATA_LEN);
    assert!(d.kernel_version().len() <= 64 && !d.kernel_version().contains(&0));
    assert_eq!(d.cpu().is_some(), d.version() == Version::V3);
    let regs = d.registers();
    if let Some(r) = regs {
        assert_eq!(Some(r.layout), d.register_layout());
        assert_eq!(r.iter().count(), usize::from(r.count));
        assert!(r.words.iter().any(|&w| w != 0));
        let _ = (r.ip(), r.cs(), r.flags(), r.sp());
    }

    // Text rendering on the payload.
    let text = chunk_text(d.data());
    let mut rendered = 0usize;
    render(
        [
            Segment::Text(text),
            Segment::Gap {
                first: d.packet_no(),
                last: d.packet_count() - 1,
            },
        ]
        .into_iter(),
        |b| rendered += b.len(),
    );
    assert!(rendered > text.len());

    // Re-encode as the best-matching variant and parse again.
    let header = DumpHeader::from_datagram(&d);
    let variant = header.variant;
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let n = encode(&header, d.packet_count(), d.packet_no(), d.data(), &mut out).unwrap();
    let e = Datagram::parse(&out[..n], &loose).unwrap();
    assert_eq!(e.variant(), variant);
    assert_eq!(e.version(), d.version());
    assert_eq!(e.dump_id(), d.dump_id());
    assert_eq!(e.dump_type(), d.dump_type());
    assert_eq!(
        (e.packet_count(), e.packet_no()),
        (d.packet_count(), d.packet_no())
    );
    assert_eq!(e.boot_id(), d.boot_id());
    assert_eq!(e.kernel_version(), d.kernel_version());
    assert_eq!(e.cpu(), d.cpu());
    assert_eq!(e.data(), d.data());
    if variant == Variant::V3X86_64Blob {
        assert_eq!(e.user_blob(), d.user_blob());
    } else {
        assert_eq!(e.user_blob(), None);
    }
    if regs.is_some_and(|r| Some(r.layout) == variant.register_layout()) {
        assert_eq!(e.registers(), regs);
    }

    // From a canonical datagram, parse + encode is the identity.
    assert_eq!(DumpHeader::from_datagram(&e), header);
    let mut again = [0u8; MAX_DATAGRAM_LEN];
    let m = encode(
        &header,
        e.packet_count(),
        e.packet_no(),
        e.data(),
        &mut again,
    )
    .unwrap();
    assert_eq!(out[..n], again[..m]);
});
