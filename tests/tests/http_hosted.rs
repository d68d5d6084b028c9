//! Issue 16, the hosted relay's HTTP endpoint end to end: the real `netoops-relay` with
//! `--http-listen`, crashes sent as real netoops datagrams, no collector reachable (the
//! last dumps must still be served from the relay's RAM ring), a real Prometheus scraping
//! `/metrics` every second and queried through its HTTP API, `promtool check metrics` on
//! the scraped text, and hostile clients: an oversized request, requests that never
//! complete, more connections than the relay serves, unknown paths and bad keys.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netoops_core::console;
use netoops_e2e::hosted::{fleet, free_tcp_addr, send_storm, wait_until, Plan, Relay, Rng};
use netoops_e2e::metrics::{exchange, get, promtool_check, sample, Prometheus};
use serde_json::Value;

const MACHINES: usize = 3;

fn start_relay() -> (Relay, SocketAddr) {
    // Nothing listens at the upstream: the relay keeps retrying, and serves its dumps anyway.
    let nowhere = free_tcp_addr();
    let mut relay = Relay::start(
        &[nowhere],
        &["--http-listen", "127.0.0.1:0", "--http-dumps", "4M"],
    );
    let line = relay.process.wait_for_line(console::HTTP_LISTENING);
    let http = console::http_listening(&line).unwrap_or_else(|| panic!("no address in {line}"));
    (relay, http)
}

#[test]
fn prometheus_scrapes_the_relay_and_dumps_are_served_without_a_collector() {
    let (relay, http) = start_relay();
    let machines = fleet(0x16, 61, MACHINES, 4 << 10, 40 << 10);
    let mut rng = Rng::new(5);
    let plans: Vec<Plan> = machines
        .iter()
        .map(|m| Plan::new(m, 0.0, &mut rng))
        .collect();
    send_storm(relay.udp, &machines, &plans);
    let context = || relay.process.describe();
    wait_until(
        "every dump complete in /metrics",
        || {
            sample(
                &get(http, "/metrics").text(),
                "netoops_dumps_complete_total",
            ) == Some(MACHINES as f64)
        },
        context,
    );

    // The scraped text is valid and complete as promtool sees it.
    let metrics = get(http, "/metrics");
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(metrics.header("Connection"), Some("close"));
    let text = metrics.text();
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let datagrams: usize = plans.iter().map(|p| p.packets.len()).sum();
    assert_eq!(
        sample(&text, "netoops_socket_datagrams_total{socket=\"netoops\"}"),
        Some(datagrams as f64)
    );
    assert_eq!(
        sample(&text, "netoops_datagrams_total"),
        Some(datagrams as f64)
    );
    assert_eq!(
        sample(&text, "netoops_upstream_connected"),
        Some(0.0),
        "nothing listens upstream"
    );
    assert_eq!(
        sample(&text, "netoops_http_dumps_stored_total"),
        Some(MACHINES as f64)
    );

    // A real Prometheus scrapes it, and its API sees the relay's counters.
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), "netoops-relay", http);
    let both = || {
        format!(
            "{}{}",
            relay.process.describe(),
            prometheus.process.describe()
        )
    };
    wait_until(
        "Prometheus to scrape the relay",
        || prometheus.value("up{job=\"netoops-relay\"}") == Some(1.0),
        both,
    );
    wait_until(
        "the relay's counters in Prometheus",
        || prometheus.value("netoops_dumps_complete_total") == Some(MACHINES as f64),
        both,
    );
    assert_eq!(
        prometheus.value("sum(netoops_socket_datagrams_total)"),
        Some(datagrams as f64)
    );
    assert_eq!(
        prometheus.value("netoops_malformed_total{reason=\"too_short\"}"),
        Some(0.0)
    );
    // Prometheus read the HELP and TYPE lines: the metadata API knows the family as a counter.
    let meta = exchange(
        prometheus.addr,
        b"GET /api/v1/metadata?metric=netoops_dumps_complete_total HTTP/1.1\r\n\
          Host: p\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let meta: Value = serde_json::from_slice(&meta.body).unwrap();
    assert_eq!(
        meta["data"]["netoops_dumps_complete_total"][0]["type"], "counter",
        "{meta}"
    );

    // The dumps, from the relay's RAM ring: the index, then each text as sent.
    let index = get(http, "/dumps");
    assert_eq!(index.header("Content-Type"), Some("application/json"));
    let index: Value = serde_json::from_slice(&index.body).unwrap();
    let dumps = index["dumps"].as_array().unwrap();
    assert_eq!(dumps.len(), MACHINES, "{index}");
    for (m, p) in machines.iter().zip(&plans) {
        let want = p.want(m);
        let source = m.ip.to_string();
        let entry = dumps
            .iter()
            .find(|d| {
                d["source"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{source}:"))
            })
            .unwrap_or_else(|| panic!("{source} not in {index}"));
        assert_eq!(entry["kind"], "netoops");
        assert_eq!(entry["complete"], true);
        assert_eq!(entry["kernel"], m.kernel_version());
        assert_eq!(entry["bytes"], want.text.len());
        assert_eq!(entry["packets"], m.sender().packet_count());
        // The hosted relay has a wall clock: each dump's time in UTC too.
        let utc = entry["emitted_utc"].as_str().unwrap_or_default();
        assert!(utc.len() == 24 && utc.ends_with('Z'), "{entry}");
        let key = entry["key"].as_str().unwrap();
        let dump = get(http, &format!("/dumps/{key}"));
        assert_eq!(dump.status, 200);
        assert_eq!(dump.body, want.text, "{source}");
    }
}

#[test]
fn hostile_clients_are_answered_or_closed_and_counted() {
    let (relay, http) = start_relay();
    let code = |req: &[u8]| exchange(http, req).map(|r| r.status).unwrap();
    assert_eq!(get(http, "/nowhere").status, 404);
    assert_eq!(get(http, "/dumps/no-such-dump").status, 404);
    assert_eq!(get(http, "/dumps/..%2F..%2Fetc%2Fpasswd").status, 400);
    assert_eq!(code(b"GET /dumps/../../etc/passwd HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(code(b"DELETE /dumps HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(code(b"GET /metrics SPDY/3\r\n\r\n"), 400);
    let health = get(http, "/healthz");
    assert_eq!(health.status, 200);
    assert!(health.text().starts_with("ok\n"), "{}", health.text());

    // A request head far beyond the 1 KiB buffer: 431, and the connection is closed.
    let mut huge = b"GET /metrics HTTP/1.1\r\nCookie: ".to_vec();
    huge.resize(64 << 10, b'c');
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(code(&huge), 431);

    // Slow clients: every connection slot taken by a request that never completes, one more
    // refused at once, and all of them closed at the request deadline.
    let started = Instant::now();
    let slow_client = || {
        let mut s = TcpStream::connect(http).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
        s
    };
    let mut slow: Vec<TcpStream> = (0..7).map(|_| slow_client()).collect();
    // Seven held, and this request is the eighth connection.
    let context = || relay.process.describe();
    wait_until(
        "seven slow connections held",
        || sample(&get(http, "/metrics").text(), "netoops_http_connections") == Some(8.0),
        context,
    );
    slow.push(slow_client());
    // Connections are taken in the order their handshakes completed: the eighth slow one
    // fills the last slot, this one is closed without a byte.
    let mut refused = TcpStream::connect(http).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(refused.read(&mut byte), Ok(0) | Err(_)));
    for s in &mut slow {
        // Keep trickling: a deadline on the whole request, not on idleness, closes it.
        let _ = s.write_all(b"a");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    for s in &mut slow {
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "a slow request got a response: {rest:?}");
    }
    // The request deadline is 5 s from the accept.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let text = get(http, "/metrics").text();
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        sample(&text, "netoops_http_timeouts_total{phase=\"request\"}"),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "netoops_http_connections_refused_total"),
        Some(1.0)
    );
    for (code, at_least) in [("400", 3.0), ("404", 2.0), ("405", 1.0), ("431", 1.0)] {
        let series = format!("netoops_http_responses_total{{code=\"{code}\"}}");
        assert!(
            sample(&text, &series).unwrap() >= at_least,
            "{series}\n{text}"
        );
    }
    // And it still serves.
    assert_eq!(get(http, "/healthz").status, 200);
}
