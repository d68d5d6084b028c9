//! The secure channel from both ends, on arbitrary bytes: what a collector's `Responder` reads
//! from any TCP client before and after a handshake, and what a relay's `Initiator` reads from
//! any collector. Nothing may panic; a responder that was never given the key must never
//! report an established session or plaintext.
//!
//! The input's first byte picks how the rest is cut into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netoops_core::upstream::secure::{
    ChannelRng, Initiator, Psk, Received, Responder, SessionKey, MAX_MESSAGE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 64) + 1;

    let mut responder = Responder::new(MAX_MESSAGE);
    let mut lookup = |_: &str| vec![Psk([0x5a; 32])];
    'outer: for piece in bytes.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            match responder.read(rest, &mut lookup, &[1; 32]) {
                Ok((n, got)) => {
                    assert!(n > 0 || rest.is_empty() || matches!(got, Received::Nothing));
                    assert!(
                        !matches!(got, Received::Established { .. } | Received::Plain(_)),
                        "random bytes authenticated"
                    );
                    if n == 0 {
                        break 'outer;
                    }
                    rest = &rest[n..];
                }
                Err(_) => break 'outer,
            }
        }
    }

    let key = SessionKey {
        id: "fuzz".into(),
        psk: Psk([0x5a; 32]),
    };
    let mut initiator = Initiator::new(&key, ChannelRng::new(&[2; 32], 0), 1024, 4096).unwrap();
    let mut out = [0u8; 256];
    let _ = initiator.poll_transmit(&mut out, |_| 0);
    'relay: for piece in bytes.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            match initiator.read(rest) {
                Ok((n, plain)) => {
                    assert!(plain.is_none(), "random bytes decrypted");
                    if n == 0 {
                        break 'relay;
                    }
                    rest = &rest[n..];
                }
                Err(_) => break 'relay,
            }
        }
    }
});
