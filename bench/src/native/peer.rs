//! The collector at the other end of the relay's upstream link, in process: it decodes the
//! frames the link writes with the core's own record decoder and answers `Welcome` and
//! cumulative `Ack`s with `encode_reply_frame`, so the spool empties as it would against a
//! real collector. Its work is the collector's, not the relay's: the benchmark keeps it out of
//! the figures.

use netoops_core::relay::Relay;
use netoops_core::time::Instant;
use netoops_core::upstream::record::{
    decode_record, encode_reply_frame, FrameDecoder, MAX_FRAME_LEN,
};
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};

/// What the peer has received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Crash notices.
    pub crashes: u64,
    /// Dumps, and of those complete ones.
    pub dumps: u64,
    /// See [`Received::dumps`].
    pub complete: u64,
    /// Dump text bytes.
    pub dump_bytes: u64,
}

/// The in-process collector.
pub struct Peer {
    decoder: FrameDecoder,
    last_seq: u64,
    acked: u64,
    received: Received,
}

impl Default for Peer {
    fn default() -> Self {
        Self::new()
    }
}

impl Peer {
    /// A peer with nothing received.
    pub fn new() -> Self {
        Self {
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            last_seq: 0,
            acked: 0,
            received: Received::default(),
        }
    }

    /// Opens the relay's session: connect, `Hello` out, `Welcome` in.
    pub fn connect(&mut self, relay: &mut Relay, now: Instant) {
        let link = relay.link();
        let idx = link.poll_connect(now).expect("the link wants its upstream");
        link.handle_connected(now, idx);
        let welcome = encode_reply_frame(&Reply::Welcome {
            protocol: PROTOCOL_VERSION,
            last_seq: 0,
        })
        .expect("encodes");
        link.handle_input(now, &welcome).expect("welcome accepted");
    }

    /// Takes the bytes the link wrote; returns the `Ack` to send back, if anything new came.
    pub fn take(&mut self, mut bytes: &[u8]) -> Option<Vec<u8>> {
        while !bytes.is_empty() {
            let used = self.decoder.push(bytes);
            bytes = &bytes[used..];
            while let Some(frame) = self.decoder.next_frame().expect("well-formed stream") {
                let (header, payload) = decode_record(frame).expect("a record");
                match header.record {
                    Record::Hello { .. } => {}
                    Record::CrashSeen(_) => self.received.crashes += 1,
                    Record::Dump(d) => {
                        self.received.dumps += 1;
                        self.received.complete += u64::from(d.complete);
                        self.received.dump_bytes += payload.len() as u64;
                    }
                }
                self.last_seq = self.last_seq.max(header.seq);
            }
        }
        (self.last_seq > self.acked).then(|| {
            self.acked = self.last_seq;
            encode_reply_frame(&Reply::Ack { seq: self.last_seq }).expect("encodes")
        })
    }

    /// What arrived so far.
    pub fn received(&self) -> Received {
        self.received
    }
}
