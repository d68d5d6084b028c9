//! Fuzz target `netconsole`: arbitrary bytes into `netconsole::Datagram::parse`; what parses as
//! extended is split into text and fields, its escapes decoded and re-escaped, and the
//! documented invariants checked (a fragment lies inside its record, the body is a suffix of
//! the input, escaping then unescaping gives the bytes back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netoops_wire::netconsole::{escape, is_crash_line, unescape, write_line, Body, Datagram};

fuzz_target!(|bytes: &[u8]| {
    match Datagram::parse(bytes) {
        Err(e) => {
            let _ = e.reason();
        }
        Ok(Datagram::Legacy(text)) => {
            assert_eq!(text, bytes);
            for line in text.split(|&b| b == b'\n') {
                let _ = is_crash_line(line);
            }
        }
        Ok(Datagram::Extended(e)) => {
            assert!(bytes.ends_with(e.body));
            if let Some(f) = e.fragment {
                assert!(u64::from(f.offset) + e.body.len() as u64 <= u64::from(f.total));
            }
            let body = Body::split(e.body);
            let mut plain = Vec::new();
            unescape(body.text, |b| plain.extend_from_slice(b));
            let mut again = Vec::new();
            escape(&plain, |b| again.extend_from_slice(b));
            let mut back = Vec::new();
            assert_eq!(unescape(&again, |b| back.extend_from_slice(b)), 0);
            assert_eq!(back, plain);
            for (k, _) in body.pairs() {
                assert!(!k.is_empty());
            }
            let mut line = Vec::new();
            write_line(e.usec, body.text, |b| line.extend_from_slice(b));
            assert!(line.ends_with(b"\n"));
        }
    }
});
