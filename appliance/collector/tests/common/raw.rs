//! A relay's wire side without the relay: `Hello`, records encoded with
//! `netoops_core::upstream::record` exactly as the relay frames them, and the collector's
//! replies read back. For tests that need to control what is sent, resent and acknowledged.

use netoops_core::upstream::record::{
    decode_reply, encode_record_frame, FrameDecoder, RecordHeaderRef, MAX_REPLY_LEN,
};
use netoops_core::upstream::{Record, Reply, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One record frame (`Hello` is seq 0 with no payload).
pub fn frame(seq: u64, record: &Record, payload: &[u8]) -> Vec<u8> {
    encode_record_frame(
        &RecordHeaderRef {
            seq,
            sent_at_ms: 5_000 + seq,
            record,
            payload_len: payload.len() as u32,
        },
        payload,
    )
    .unwrap()
}

/// A connection to a collector after `Hello` and `Welcome`.
pub struct RawSession {
    pub stream: TcpStream,
    /// `Welcome.last_seq`.
    pub last_seq: u64,
    decoder: FrameDecoder,
    ready: VecDeque<Reply>,
}

impl RawSession {
    /// Connects, says `Hello` for `instance` and waits for `Welcome`.
    pub fn open(addr: SocketAddr, relay: &str, instance: u64) -> io::Result<RawSession> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let hello = Record::Hello {
            protocol: PROTOCOL_VERSION,
            relay: relay.into(),
            instance,
        };
        let mut s = RawSession {
            stream,
            last_seq: 0,
            decoder: FrameDecoder::new(MAX_REPLY_LEN),
            ready: VecDeque::new(),
        };
        s.stream.write_all(&frame(0, &hello, &[]))?;
        match s.reply()? {
            Reply::Welcome { last_seq, .. } => s.last_seq = last_seq,
            other => return Err(io::Error::other(format!("{other:?} instead of Welcome"))),
        }
        Ok(s)
    }

    /// Sends bytes (one or more frames).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply; an error when the collector closed the connection.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(r);
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the collector closed the connection",
                ));
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                let taken = self.decoder.push(input);
                input = &input[taken..];
                while let Some(f) = self
                    .decoder
                    .next_frame()
                    .map_err(|e| io::Error::other(e.to_string()))?
                {
                    self.ready
                        .push_back(decode_reply(f).map_err(|e| io::Error::other(e.to_string()))?);
                }
            }
        }
    }

    /// Reads acks until one covers `seq`; returns the highest ack seen.
    pub fn ack_through(&mut self, seq: u64) -> io::Result<u64> {
        loop {
            match self.reply()? {
                Reply::Ack { seq: a } if a >= seq => return Ok(a),
                Reply::Ack { .. } => {}
                other => return Err(io::Error::other(format!("{other:?} instead of Ack"))),
            }
        }
    }
}
