//! The record protocol from both ends, on arbitrary bytes: what a collector reads from any TCP
//! client (framing, then record decoding) and what a relay reads from any collector (replies,
//! through the real `UpstreamLink`).
//!
//! The input's first byte picks how the rest is cut into reads. Frames are decoded as records
//! and as replies; a record that decodes must encode back to a frame that decodes to the same
//! record and payload. The same bytes are then fed to a link in session as replies: nothing may
//! panic, and the link must stay within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netoops_core::time::Instant;
use netoops_core::upstream::record::{
    decode_record, decode_reply, encode_record_frame, encode_reply_frame, FrameDecoder,
    RecordHeaderRef, Reply, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use netoops_core::upstream::{LinkConfig, UpstreamLink};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 64) + 1;

    // A collector's view: any bytes from a client.
    let mut frames = FrameDecoder::new(MAX_FRAME_LEN);
    for piece in bytes.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let n = frames.push(rest);
            rest = &rest[n..];
            loop {
                let frame = match frames.next_frame() {
                    Ok(Some(f)) => f.to_vec(),
                    Ok(None) => break,
                    Err(_) => {
                        frames.reset();
                        break;
                    }
                };
                let _ = decode_reply(&frame);
                if let Ok((header, payload)) = decode_record(&frame) {
                    let r = RecordHeaderRef {
                        seq: header.seq,
                        sent_at_ms: header.sent_at_ms,
                        record: &header.record,
                        payload_len: header.payload_len,
                    };
                    if let Ok(again) = encode_record_frame(&r, payload) {
                        let (h2, p2) = decode_record(&again[4..]).expect("re-encoded record");
                        assert_eq!(h2, header);
                        assert_eq!(p2, payload);
                    }
                }
            }
        }
    }

    // A relay's view: any bytes from a collector, after a real Welcome.
    let mut link = UpstreamLink::new(LinkConfig {
        spool_bytes: 64 << 10,
        spool_records: 64,
        ..LinkConfig::new(1, "fuzz", 1)
    });
    let now = Instant::from_millis(1);
    let idx = link.poll_connect(now).expect("an upstream");
    link.handle_connected(now, idx);
    let mut out = vec![0u8; 4096];
    let _ = link.poll_transmit(now, &mut out);
    let welcome = encode_reply_frame(&Reply::Welcome {
        protocol: PROTOCOL_VERSION,
        last_seq: 0,
    })
    .expect("welcome");
    let _ = link.handle_input(now, &welcome);
    for piece in bytes.chunks(step) {
        if link.handle_input(now, piece).is_err() {
            break;
        }
        let _ = link.poll_transmit(now, &mut out);
    }
    let stats = link.stats();
    assert!(stats.spool_bytes_used <= 64 << 10);
    assert!(stats.sessions <= 1);
});
