use super::*;
use crate::config::Config;
use crate::time::Instant;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::SocketAddr;
use netoops_wire::encode::{encode, DumpHeader, SenderModel, Variant};

fn relay(extra: &str) -> Relay {
    let config = Config::parse(&alloc::format!(
        "upstream=127.0.0.1:2005 memory=8M http_port=9100 {extra}"
    ))
    .unwrap();
    Relay::new(config, 7).unwrap()
}

fn crash(r: &mut Relay, from: SocketAddr, dump_id: u16, log: &[u8]) {
    let m = SenderModel::new(&[], log);
    let h = DumpHeader::new(Variant::V3X86_64, dump_id, "6.1.0-\"http\"\\");
    for (_, p) in m.schedule() {
        let mut buf = [0u8; 2048];
        let n = encode(&h, m.packet_count(), p, &m.chunk(p), &mut buf).unwrap();
        let _ = r.handle_datagram(Instant::from_millis(5), from, &buf[..n]);
    }
}

fn site(r: &Relay) -> RelaySite<'_, impl Fn(&mut Metrics<'_>) -> fmt::Result> {
    RelaySite {
        relay: r,
        now: Instant::from_millis(1234),
        wall_ms: Some(1_700_000_000_000),
        extra: |m: &mut Metrics<'_>| m.counter("netoops_test_total", "A driver's own.", 42),
    }
}

/// Runs one connection: sends `request` in `pieces`, then drains the response through a
/// `chunk`-byte buffer.
fn exchange(server: &mut HttpServer, site: &dyn Site, request: &[u8], chunk: usize) -> Vec<u8> {
    let now = Instant::from_millis(1);
    let id = server.accept(now).unwrap();
    for piece in request.chunks(5) {
        server.handle_input(id, piece);
    }
    let mut out = Vec::new();
    let mut buf = alloc::vec![0u8; chunk];
    loop {
        match server.poll_transmit(id, now, site, &mut buf) {
            Transmit::Send(n) => out.extend_from_slice(&buf[..n]),
            Transmit::Close => return out,
            Transmit::Idle => panic!("request not complete: {request:?}"),
        }
    }
}

fn split(resp: &[u8]) -> (String, Vec<u8>) {
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(resp[..at].to_vec()).unwrap();
    let body = resp[at + 4..].to_vec();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "{head}");
    (head, body)
}

fn get(server: &mut HttpServer, site: &dyn Site, path: &str) -> (String, Vec<u8>) {
    let req = alloc::format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n");
    split(&exchange(server, site, req.as_bytes(), 700))
}

#[test]
fn metrics_carry_every_counter_with_help_and_type() {
    let mut r = relay("name=rack\"7\\");
    let mut log = Vec::new();
    for i in 0..50 {
        log.extend_from_slice(alloc::format!("[{i:5}.000000] line {i}\n").as_bytes());
    }
    crash(&mut r, SocketAddr::from(([10, 0, 0, 5], 6666)), 11, &log);
    let mut server = HttpServer::new(2);
    let (head, body) = get(&mut server, &site(&r), "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(head.contains("Connection: close"));
    let text = String::from_utf8(body).unwrap();
    let chunks = r.reassembler().stats().chunks_stored;
    for want in [
        alloc::format!("netoops_chunks_stored_total {chunks}\n"),
        "netoops_dumps_complete_total 1\n".to_string(),
        "netoops_dumps_started_total 1\n".to_string(),
        "netoops_malformed_total{reason=\"too_short\"} 0\n".to_string(),
        "netoops_records_delivered_total{kind=\"dump\"} 0\n".to_string(),
        "netoops_relay_info{name=\"rack\\\"7\\\\\",version=".to_string(),
        "netoops_test_total 42\n".to_string(),
        "netoops_http_responses_total{code=\"200\"} 1\n".to_string(),
        "netoops_http_dumps_stored_total 1\n".to_string(),
        "netoops_netconsole_datagrams_total 0\n".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    // Every sample's family has HELP and TYPE before it, and the types follow the names.
    let mut typed: Vec<(&str, &str)> = Vec::new();
    let mut helped: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
            typed.push((name, kind));
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("netoops_"), "{line}");
            assert_eq!(typed.last().unwrap().0, name, "{line}");
            assert_eq!(*helped.last().unwrap(), name, "{line}");
        }
    }
    // Every field of the console's counters line is a metric (by the same number).
    let line = r.counters().to_string();
    for (key, metric) in [
        ("datagrams", "netoops_datagrams_total "),
        ("dup", "netoops_duplicates_total "),
        ("not_allowed", "netoops_not_allowed_total "),
        ("started", "netoops_dumps_started_total "),
        ("complete", "netoops_dumps_complete_total "),
        ("partial", "netoops_dumps_partial_total "),
        ("held", "netoops_dumps_held "),
        ("nc_crashes", "netoops_netconsole_crashes_total "),
        ("nc_sources", "netoops_netconsole_sources "),
    ] {
        let n = crate::console::number_after(&line, key).unwrap();
        assert!(
            text.contains(&alloc::format!("{metric}{n}\n")),
            "{metric}{n}"
        );
    }
    // And the whole set, generously, fits one response buffer.
    assert!(text.len() < RESPONSE_BUFFER / 2, "{}", text.len());
}

#[test]
fn dumps_are_indexed_and_served_in_pieces() {
    let mut r = relay("http_dumps=64K");
    let log: Vec<u8> = (0..3000)
        .flat_map(|i| alloc::format!("[{i:5}.000000] text {i}\n").into_bytes())
        .collect();
    crash(
        &mut r,
        SocketAddr::from(([10, 0, 0, 5], 6666)),
        11,
        &log[..20_000],
    );
    crash(
        &mut r,
        SocketAddr::from(([10, 0, 0, 6], 6666)),
        12,
        &log[..50_000],
    );
    let mut server = HttpServer::new(1);
    let s = site(&r);
    let (head, body) = get(&mut server, &s, "/dumps");
    assert!(head.contains("application/json"), "{head}");
    let index = String::from_utf8(body).unwrap();
    // The first dump was evicted to make room for the second (64K ring).
    assert!(index.contains("\"evicted\":1"), "{index}");
    assert!(index.contains("\"now_ms\":1234"), "{index}");
    // Emitted at 5 ms on the relay's clock, 1229 ms before now.
    assert!(
        index.contains("\"emitted_ms\":5,\"emitted_utc\":\"2023-11-14T22:13:18.771Z\"}"),
        "{index}"
    );
    assert!(
        index.contains("\"key\":\"2-10.0.0.6-d12.0\",\"kind\":\"netoops\",\"source\":\"10.0.0.6:6666\",\"kernel\":\"6.1.0-\\\"http\\\"\\\\\",\"complete\":true"),
        "{index}"
    );
    assert!(!index.contains("10.0.0.5"), "{index}");
    let (head, body) = get(&mut server, &s, "/dumps/2-10.0.0.6-d12.0");
    assert!(head.contains("Content-Length: 50000"), "{head}");
    assert_eq!(body, &log[..50_000]);
    let (head, body) = get(&mut server, &s, "/dumps/1-10.0.0.5-d11.0");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(String::from_utf8(body).unwrap().contains("/metrics"));
    let req = b"HEAD /dumps/2-10.0.0.6-d12.0 HTTP/1.1\r\n\r\n";
    let resp = exchange(&mut server, &s, req, 64);
    let text = String::from_utf8(resp).unwrap();
    assert!(text.contains("Content-Length: 50000\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[test]
fn health_and_errors() {
    let r = relay("");
    let s = site(&r);
    let mut server = HttpServer::new(1);
    let (head, body) = get(&mut server, &s, "/healthz");
    assert!(head.starts_with("HTTP/1.1 200"));
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("ok\nupstream_connected 0\n"), "{body}");
    for (req, code) in [
        (&b"POST /metrics HTTP/1.1\r\n\r\n"[..], "405"),
        (b"BREW /metrics HTTP/1.1\r\n\r\n", "405"),
        (b"get /metrics HTTP/1.1\r\n\r\n", "400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "400"),
        (b"GET metrics HTTP/1.1\r\n\r\n", "400"),
        (b"GET /metrics  HTTP/1.1\r\n\r\n", "400"),
        (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
        (b"GET /dumps/../../etc/passwd HTTP/1.1\r\n\r\n", "400"),
        (b"GET /dumps/%2e%2e HTTP/1.1\r\n\r\n", "400"),
        (b"GET /dumps/a\"b HTTP/1.1\r\n\r\n", "400"),
        (b"\xff\xfe /x HTTP/1.1\r\n\r\n", "400"),
        (b"GET /metrics?x=1 HTTP/1.0\n\n", "200"),
    ] {
        let resp = exchange(&mut server, &s, req, 4096);
        let want = alloc::format!("HTTP/1.1 {code} ");
        assert!(resp.starts_with(want.as_bytes()), "{req:?}");
        if code == "405" {
            assert!(resp.windows(16).any(|w| w == b"Allow: GET, HEAD"));
        }
    }
    // A head longer than the buffer: 431, whatever follows.
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.resize(5000, b'a');
    let resp = exchange(&mut server, &s, &long, 4096);
    assert!(resp.starts_with(b"HTTP/1.1 431 "));
    assert_eq!(server.stats().responses, [2, 8, 1, 2, 1, 0]);
    assert_eq!(server.active(), 0);
}

#[test]
fn slow_requests_and_slow_readers_are_closed_at_their_deadline() {
    let r = relay("");
    let s = site(&r);
    let mut server = HttpServer::new(2);
    let t0 = Instant::from_millis(0);
    let a = server.accept(t0).unwrap();
    let b = server.accept(t0).unwrap();
    // Every slot busy: refused.
    assert_eq!(server.accept(t0), None);
    assert_eq!(server.stats().refused, 1);
    // a trickles a byte at a time and never finishes.
    let mut buf = [0u8; 16];
    for (i, byte) in b"GET /metrics HTTP/1.1\r\nX: y".iter().enumerate() {
        server.handle_input(a, core::slice::from_ref(byte));
        let now = Instant::from_millis(i as u64 * 100);
        assert_eq!(server.poll_transmit(a, now, &s, &mut buf), Transmit::Idle);
    }
    // b asks and then reads nothing.
    server.handle_input(b, b"GET /metrics HTTP/1.1\r\n\r\n");
    let t1 = Instant::from_millis(10);
    assert!(matches!(
        server.poll_transmit(b, t1, &s, &mut buf),
        Transmit::Send(16)
    ));
    assert_eq!(server.poll_timeout(), Some(t0 + REQUEST_TIMEOUT));
    server.handle_timeout(t0 + REQUEST_TIMEOUT);
    assert_eq!(server.poll_transmit(a, t1, &s, &mut buf), Transmit::Close);
    assert_eq!(server.stats().request_timeouts, 1);
    assert_eq!(server.active(), 1);
    server.handle_timeout(t1 + RESPONSE_TIMEOUT);
    assert_eq!(server.poll_transmit(b, t1, &s, &mut buf), Transmit::Close);
    assert_eq!(server.stats().response_timeouts, 1);
    assert_eq!(server.poll_timeout(), None);
    // The slots serve again.
    assert!(server.accept(t1).is_some());
    assert!(server.accept(t1).is_some());
}

#[test]
fn a_dump_evicted_mid_response_ends_the_connection() {
    let mut r = relay("http_dumps=64K");
    let log = alloc::vec![b'x'; 40_000];
    crash(&mut r, SocketAddr::from(([10, 0, 0, 5], 6666)), 11, &log);
    let mut server = HttpServer::new(1);
    let id = server.accept(Instant::ZERO).unwrap();
    server.handle_input(id, b"GET /dumps/1-10.0.0.5-d11.0 HTTP/1.1\r\n\r\n");
    let mut buf = [0u8; 1000];
    let now = Instant::from_millis(1);
    assert!(matches!(
        server.poll_transmit(id, now, &site(&r), &mut buf),
        Transmit::Send(_)
    ));
    assert!(matches!(
        server.poll_transmit(id, now, &site(&r), &mut buf),
        Transmit::Send(1000)
    ));
    crash(&mut r, SocketAddr::from(([10, 0, 0, 6], 6666)), 12, &log);
    assert_eq!(
        server.poll_transmit(id, now, &site(&r), &mut buf),
        Transmit::Close
    );
    assert_eq!(server.stats().aborted, 1);
}

#[test]
fn the_ring_is_off_with_the_endpoint() {
    let config = Config::parse("upstream=127.0.0.1:2005 memory=8M").unwrap();
    let mut r = Relay::new(config, 7).unwrap();
    crash(
        &mut r,
        SocketAddr::from(([10, 0, 0, 5], 6666)),
        11,
        b"hello\n",
    );
    assert_eq!(r.dumps().capacity(), 0);
    assert_eq!(r.dumps().entries().count(), 0);
}
