//! Golden byte vectors for the upstream record format (`netoops_core::upstream::record`).
//!
//! The format is postcard over serde's field order, so reordering, adding or removing a field
//! or a variant changes the bytes on the wire while every round-trip test still passes. These
//! vectors pin the bytes: encoding each record and reply must reproduce its vector exactly,
//! and decoding the vector must give the value back.
//!
//! Version rule: any change to the encoding of a record or reply bumps
//! [`PROTOCOL_VERSION`] (carried in `Hello` and `Welcome`; a peer speaking another version is
//! refused), and the vectors here are regenerated in the same commit (run this test with
//! `GOLDEN_PRINT=1 cargo test -p netoops-core --test golden -- --nocapture` to print them).
//! Version 2 added `ConsoleMeta` (`netconsole`) to crash notices and dumps; version 3 added
//! `conflicts`, `foreign_port_chunks` and `late_chunks` to dumps. A failure here
//! with the version unchanged means the wire format changed by accident.

use netoops_core::upstream::record::{
    decode_record, decode_reply, encode_record_frame, encode_reply_frame, ConsoleMeta, Cpu,
    CrashSeen, DumpIdentity, DumpMeta, FrameDecoder, Record, RecordHeader, RegisterSet, Reply,
    Source, SourceIp, LEN_PREFIX, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// The version these vectors were recorded at.
const GOLDEN_VERSION: u16 = 3;

fn identity(ip: SourceIp, version: u16) -> DumpIdentity {
    DumpIdentity {
        source: Source { ip, port: 6665 },
        version,
        boot_id: 0x0102_0304,
        dump_id: 900,
        dump_type: 1,
    }
}

fn registers() -> RegisterSet {
    RegisterSet {
        layout: "x86_64".into(),
        names_values: vec![("ip".into(), 0xffff_ffff_8100_0000), ("sp".into(), 0x7ff0)],
    }
}

fn console() -> ConsoleMeta {
    ConsoleMeta {
        extended: true,
        boot: 1,
        crash: 2,
        crash_line: "Kernel panic".into(),
        release: "6.1.0".into(),
        missing_seq: vec![(10, 12)],
        incomplete_seq: vec![20],
        seq_range: Some((5, 300)),
        records: 42,
        fields: vec![("SUBSYSTEM".into(), "net".into())],
        truncated: false,
    }
}

fn hello() -> Record {
    Record::Hello {
        protocol: PROTOCOL_VERSION,
        relay: "rack-7".into(),
        instance: 0x69bc_06bd_b0f8_1526,
    }
}

fn crash_seen_netoops() -> Record {
    Record::CrashSeen(CrashSeen {
        id: identity(SourceIp::V4([10, 0, 0, 7]), 3),
        generation: 1,
        kernel_version: "5.10.0".into(),
        packet_count: 64,
        packet_no: 0,
        cpu: Some(Cpu {
            vendor: 1,
            family: 6,
            model: 85,
            stepping: 4,
        }),
        registers: Some(registers()),
        seen_at_ms: 123_456,
        netconsole: None,
    })
}

fn crash_seen_netconsole() -> Record {
    Record::CrashSeen(CrashSeen {
        id: identity(
            SourceIp::V6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            0,
        ),
        generation: 0,
        kernel_version: String::new(),
        packet_count: 42,
        packet_no: 0,
        cpu: None,
        registers: None,
        seen_at_ms: 7,
        netconsole: Some(console()),
    })
}

fn dump_netoops() -> Record {
    Record::Dump(DumpMeta {
        id: identity(SourceIp::V4([192, 168, 1, 2]), 2),
        generation: 0,
        kernel_version: "4.19.0".into(),
        packet_count: 10,
        received: 8,
        missing: vec![(3, 4)],
        zeroed: vec![9],
        complete: false,
        revision: 2,
        first_seen_ms: 1_000,
        completed_ms: 4_000,
        cpu: None,
        registers: Some(registers()),
        user_blob: Some(vec![0xab; 4]),
        netconsole: None,
        conflicts: 1,
        foreign_port_chunks: 2,
        late_chunks: 300,
    })
}

fn dump_netconsole() -> Record {
    Record::Dump(DumpMeta {
        kernel_version: "6.1.0".into(),
        packet_count: 42,
        received: 40,
        complete: true,
        first_seen_ms: 5,
        completed_ms: 3_005,
        netconsole: Some(console()),
        ..DumpMeta::new(identity(SourceIp::V4([127, 20, 0, 1]), 0))
    })
}

/// `(name, header, payload, golden frame with its length prefix)`.
fn records() -> Vec<(&'static str, RecordHeader, &'static [u8], &'static str)> {
    let h = |seq, record| RecordHeader {
        seq,
        sent_at_ms: 200_000,
        record,
        payload_len: 0,
    };
    let with_payload = |mut r: RecordHeader, p: &'static [u8]| {
        r.payload_len = p.len() as u32;
        (r, p)
    };
    let (cs1, p1) = with_payload(h(1, crash_seen_netoops()), b"BUG: oops");
    let (cs2, p2) = with_payload(h(2, crash_seen_netconsole()), b"Kernel panic\n");
    let (d1, p3) = with_payload(h(3, dump_netoops()), b"text");
    let (d2, p4) = with_payload(h(u64::MAX, dump_netconsole()), b"whole dump\n");
    vec![
        ("hello", h(0, hello()), b"", HELLO),
        ("crash_seen_netoops", cs1, p1, CRASH_SEEN_NETOOPS),
        ("crash_seen_netconsole", cs2, p2, CRASH_SEEN_NETCONSOLE),
        ("dump_netoops", d1, p3, DUMP_NETOOPS),
        ("dump_netconsole", d2, p4, DUMP_NETCONSOLE),
    ]
}

fn replies() -> Vec<(&'static str, Reply, &'static str)> {
    vec![
        (
            "welcome",
            Reply::Welcome {
                protocol: PROTOCOL_VERSION,
                last_seq: 300,
            },
            WELCOME,
        ),
        ("ack", Reply::Ack { seq: 1 << 40 }, ACK),
        (
            "refused",
            Reply::Refused {
                reason: "protocol 1 not spoken".into(),
            },
            REFUSED,
        ),
    ]
}

const HELLO: &str = "1700000000c09a0c0003067261636b2d37a6aae087dbd781de6900";
const CRASH_SEEN_NETOOPS: &str = concat!(
    "4d00000001c09a0c01000a000007893403848688088407010106352e31302e30",
    "4000010106550401067838365f36340202697080808088f8ffffffff01027370",
    "f0ff01c0c40700094255473a206f6f7073",
);
const CRASH_SEEN_NETCONSOLE: &str = concat!(
    "6600000002c09a0c0101fd000000000000000000000000000001893400848688",
    "0884070100002a00000007010101020c4b65726e656c2070616e696305362e31",
    "2e30010a0c01140105ac022a010953554253595354454d036e6574000d4b6572",
    "6e656c2070616e69630a",
);
const DUMP_NETOOPS: &str = concat!(
    "5600000003c09a0c0200c0a80102893402848688088407010006342e31392e30",
    "0a0801030401090002e807a01f0001067838365f36340202697080808088f8ff",
    "ffffff01027370f0ff010104abababab000102ac020474657874",
);
const DUMP_NETCONSOLE: &str = concat!(
    "70000000ffffffffffffffffff01c09a0c02007f140001893400848688088407",
    "010005362e312e302a280000010105bd17000000010101020c4b65726e656c20",
    "70616e696305362e312e30010a0c01140105ac022a010953554253595354454d",
    "036e6574000000000b77686f6c652064756d700a",
);
const WELCOME: &str = "040000000003ac02";
const ACK: &str = "0700000001808080808020";
const REFUSED: &str = "17000000021570726f746f636f6c2031206e6f742073706f6b656e";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn printing() -> bool {
    std::env::var_os("GOLDEN_PRINT").is_some()
}

#[test]
fn the_vectors_are_for_this_protocol_version() {
    assert_eq!(
        PROTOCOL_VERSION, GOLDEN_VERSION,
        "PROTOCOL_VERSION changed: regenerate the golden vectors (GOLDEN_PRINT=1) and update \
         GOLDEN_VERSION in the same commit"
    );
}

/// Checks one encoded frame against its golden hex (with `GOLDEN_PRINT`, prints it instead).
fn check_encoding(name: &str, frame: &[u8], golden: &str) {
    if printing() {
        println!("{name}: {}", hex(frame));
        return;
    }
    assert_eq!(
        hex(frame),
        golden,
        "{name}: the encoding changed; if on purpose, bump PROTOCOL_VERSION and regenerate"
    );
}

/// The body of a golden frame, once its length prefix is checked.
fn golden_body(name: &str, golden: &str) -> Vec<u8> {
    let bytes = unhex(golden);
    let len = u32::from_le_bytes(bytes[..LEN_PREFIX].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - LEN_PREFIX, "{name}: length prefix");
    bytes[LEN_PREFIX..].to_vec()
}

#[test]
fn records_encode_to_their_golden_bytes() {
    for (name, header, payload, golden) in records() {
        let frame = encode_record_frame(&header.as_ref(), payload).unwrap();
        check_encoding(name, &frame, golden);
    }
}

#[test]
fn golden_records_decode() {
    if printing() {
        return;
    }
    for (name, header, payload, golden) in records() {
        let body = golden_body(name, golden);
        let (decoded, rest) = decode_record(&body).unwrap();
        assert_eq!(decoded, header, "{name}");
        assert_eq!(rest, payload, "{name}");
    }
}

#[test]
fn records_cross_the_frame_decoder_byte_by_byte() {
    let records = records();
    let mut stream = Vec::new();
    for (_, header, payload, _) in &records {
        stream.extend(encode_record_frame(&header.as_ref(), payload).unwrap());
    }
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut decoded = Vec::new();
    // Byte by byte: the decoder must cope with any split.
    for b in &stream {
        assert_eq!(dec.push(std::slice::from_ref(b)), 1);
        if let Some(body) = dec.next_frame().unwrap() {
            let (header, payload) = decode_record(body).unwrap();
            decoded.push((header, payload.to_vec()));
        }
    }
    assert_eq!(dec.buffered(), 0);
    assert_eq!(decoded.len(), records.len());
    for ((name, header, payload, _), (got, got_payload)) in records.into_iter().zip(decoded) {
        assert_eq!(got, header, "{name}");
        assert_eq!(got_payload, payload, "{name}");
    }
}

#[test]
fn replies_encode_to_their_golden_bytes() {
    for (name, reply, golden) in replies() {
        check_encoding(name, &encode_reply_frame(&reply).unwrap(), golden);
    }
}

#[test]
fn golden_replies_decode() {
    if printing() {
        return;
    }
    for (name, reply, golden) in replies() {
        let body = golden_body(name, golden);
        assert_eq!(decode_reply(&body).unwrap(), reply, "{name}");
    }
}
