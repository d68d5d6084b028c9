//! Helpers for tests of the relays' HTTP endpoint: a plain HTTP/1.1 client over a
//! `TcpStream` (one request per connection, as the endpoint serves), a reader for the
//! Prometheus text format, and a real Prometheus server (Debian's `prometheus`) scraping a
//! target, queried through its HTTP API, plus `promtool check metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::hosted::{free_tcp_addr, wait_until, Process};

/// A response: status, head lines and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The head, as received (status line and headers).
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` as it is and reads the whole response (until the server closes).
pub fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {raw:?}")))?;
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Response {
        status,
        head,
        body: raw[at + 4..].to_vec(),
    })
}

/// `GET path`; checks that the body is as long as `Content-Length` says.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: netoops-e2e\r\n\r\n");
    let r = exchange(addr, req.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let len: usize = r
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {}", r.head));
    assert_eq!(r.body.len(), len, "GET {path}: body length\n{}", r.head);
    r
}

/// The value of the sample `series` (`name` or `name{label="value",...}`, exactly as the
/// endpoint writes it) in a text-format body: the core's reader.
pub use netoops_core::http::metrics::read as sample;

/// `promtool check metrics` on `text`: `Ok(())` when it exits 0 and says nothing.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (Debian package prometheus): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to promtool: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {said}", out.status))
    }
}

/// A running Prometheus scraping one target every second; killed on drop.
pub struct Prometheus {
    /// The process.
    pub process: Process,
    /// Its HTTP API.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` with its configuration and storage in `dir`, scraping
    /// `http://target/metrics` every second as job `job`, and waits until it is ready.
    pub fn start(dir: &Path, job: &str, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr = free_tcp_addr();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut process = Process::spawn("prometheus", cmd);
        let ready = || {
            exchange(
                addr,
                b"GET /-/ready HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200)
        };
        wait_until("prometheus to be ready", ready, || process.describe());
        assert!(!process.has_exited(), "{}", process.describe());
        Prometheus { process, addr }
    }

    /// An instant query through the HTTP API: each result's labels and value.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let mut q = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let req =
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
        let Ok(r) = exchange(self.addr, req.as_bytes()) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_eq!(v["status"], "success", "query {promql}: {}", r.text());
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        let value = s["value"][1].as_str()?.parse().ok()?;
                        Some((s["metric"].clone(), value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of `promql`, if there is exactly one result.
    pub fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}
