//! The web view (`serve --http ADDR`): server-rendered HTML pages of the fleet's crash groups,
//! a group's machines and dumps, and one dump with its metadata, registers, the crash line
//! highlighted and each missing range marked; JSON endpoints beside them under `/api/`.
//!
//! | page | JSON |
//! |---|---|
//! | `/` crash groups, newest first, counts and a sparkline | `/api/groups` |
//! | `/group/<signature>` machines and dumps | `/api/groups/<signature>` |
//! | `/dump/<machine>/<key>` one dump | `/api/dumps/<machine>/<key>` |
//!
//! A small HTTP/1.1 server on std sockets (GET only, one request per connection, a thread per
//! connection up to a bound, timeouts on reads and writes): the view is for a few operators,
//! and needs no framework or JavaScript. Everything shown comes from the network or the disk
//! (dump text, relay names, file names), so all of it is HTML-escaped, and pages are served
//! with a Content-Security-Policy that allows no scripts at all.

use crate::catalog;
use crate::index::{read_text_capped, Group, Index, IndexedDump};
use crate::wallclock::{now_ms, rfc3339};
use netoops_analyser::{analyse, Analysis};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head read.
const MAX_REQUEST: usize = 16 * 1024;
/// The index is synced with the stored files at most this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Sparkline buckets.
pub const SPARK_BUCKETS: usize = 24;

/// The bound web view.
#[derive(Debug)]
pub struct WebServer {
    listener: TcpListener,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    dir: PathBuf,
    /// The index and when it was last synced.
    index: Mutex<Option<(Index, Option<Instant>)>>,
    /// The serving collector's counters, for `/api/collector` (when serving).
    counters: Option<Arc<crate::session::Counters>>,
    /// The NATS output's counters, under `nats` in `/api/collector`.
    nats: Option<Arc<crate::nats::NatsStats>>,
}

/// A response: status, content type, body.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn html(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
        }
    }

    fn json(status: u16, v: &Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }
}

impl WebServer {
    /// Binds `addr` for the storage directory `dir`.
    pub fn bind(addr: SocketAddr, dir: &Path) -> io::Result<WebServer> {
        let listener = TcpListener::bind(addr)?;
        Ok(WebServer {
            listener,
            state: Arc::new(State {
                dir: dir.to_path_buf(),
                index: Mutex::new(None),
                counters: None,
                nats: None,
            }),
        })
    }

    /// Also serves the collector's counters as JSON under `/api/collector`.
    pub fn with_counters(mut self, counters: Arc<crate::session::Counters>) -> WebServer {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.counters = Some(counters);
        }
        self
    }

    /// Also serves the NATS output's counters: under `nats` in `/api/collector`, and as
    /// `netoops_collect_nats_*` in `/metrics`.
    pub fn with_nats(mut self, stats: Arc<crate::nats::NatsStats>) -> WebServer {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.nats = Some(stats);
        }
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves forever.
    pub fn run(self) {
        let active = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let state = Arc::clone(&self.state);
            let active_here = Arc::clone(&active);
            let spawned = thread::Builder::new()
                .name("netoops-http".into())
                .spawn(move || {
                    serve_one(stream, &state);
                    active_here.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Serves on a background thread.
    pub fn spawn(self) -> thread::JoinHandle<()> {
        thread::spawn(move || self.run())
    }
}

fn serve_one(mut stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let response = if method != "GET" && method != "HEAD" {
        Response::html(405, page("Method not allowed", "<p>GET only.</p>"))
    } else {
        let path = target.split(['?', '#']).next().unwrap_or("");
        route(state, path).unwrap_or_else(|e| {
            eprintln!("netoops-collect: web: {path}: {e}");
            Response::html(500, page("Error", "<p>The index could not be read.</p>"))
        })
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(&response.body);
    }
    let _ = stream.write_all(&out);
    let _ = stream.flush();
}

/// Decodes `%XX` escapes; `None` for a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A machine directory or dump key as the store names them: no separators, no dot files.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':'))
}

fn safe_signature(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Percent-encodes a path segment (the store's names are already safe; this keeps links
/// right whatever they are).
fn url_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn route(state: &State, path: &str) -> io::Result<Response> {
    let Some(decoded) = percent_decode(path) else {
        return Ok(not_found(400, "Bad request"));
    };
    let segs: Vec<&str> = decoded
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let (["api", "collector"], Some(c)) = (segs.as_slice(), &state.counters) {
        let mut v: Value = serde_json::from_str(&c.to_json()).unwrap_or(Value::Null);
        if let (Some(n), Value::Object(m)) = (&state.nats, &mut v) {
            m.insert("nats".into(), n.to_json());
        }
        return Ok(Response::json(200, &v));
    }
    if let (["metrics"], Some(c)) = (segs.as_slice(), &state.counters) {
        return Ok(metrics(c, state.nats.as_deref()));
    }
    let mut guard = state.index.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some((Index::open(&state.dir)?, None));
    }
    let (index, synced) = guard.as_mut().ok_or_else(|| io::Error::other("no index"))?;
    // Bring the index up to date with what the collector stored, at most once a second (a
    // sync stats every dump's files).
    if synced.is_none_or(|t: Instant| t.elapsed() >= SYNC_EVERY) {
        let stats = index.sync()?;
        let skipped = stats.bad_meta + stats.missing_log + stats.unreadable;
        if skipped > 0 && stats.indexed > 0 {
            eprintln!(
                "netoops-collect: web: {skipped} dumps skipped (bad metadata or missing text)"
            );
        }
        *synced = Some(Instant::now());
    }
    let index = &*index;
    match segs.as_slice() {
        [] => groups_page(index),
        ["api", "groups"] => Ok(Response::json(200, &groups_json(index)?)),
        ["group", sig] if safe_signature(sig) => group_page(index, sig),
        ["api", "groups", sig] if safe_signature(sig) => match group_json(index, sig)? {
            Some(v) => Ok(Response::json(200, &v)),
            None => Ok(Response::json(404, &json!({"error": "no such group"}))),
        },
        ["dump", ip, key] if safe_segment(ip) && safe_segment(key) => {
            dump_page(&state.dir, index, ip, key)
        }
        ["api", "dumps", ip, key] if safe_segment(ip) && safe_segment(key) => {
            match dump_json(&state.dir, index, ip, key) {
                Some(v) => Ok(Response::json(200, &v)),
                None => Ok(Response::json(404, &json!({"error": "no such dump"}))),
            }
        }
        _ => Ok(not_found(404, "Not found")),
    }
}

/// `/metrics`: the collector's counters (and the NATS output's) in the Prometheus text format.
fn metrics(c: &crate::session::Counters, nats: Option<&crate::nats::NatsStats>) -> Response {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut one = |name: &str, help: &str, gauge: bool, v: u64| {
        let (kind, suffix) = if gauge {
            ("gauge", "")
        } else {
            ("counter", "_total")
        };
        let _ = writeln!(out, "# HELP netoops_collect_{name}{suffix} {help}");
        let _ = writeln!(out, "# TYPE netoops_collect_{name}{suffix} {kind}");
        let _ = writeln!(out, "netoops_collect_{name}{suffix} {v}");
    };
    for (k, v) in c.snapshot() {
        let help = format!("Collector counter {k} (see /api/collector).");
        one(k, &help, false, v);
    }
    for (k, help, v, gauge) in nats.map(|n| n.snapshot()).unwrap_or_default() {
        one(&format!("nats_{k}"), help, gauge, v);
    }
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: out.into_bytes(),
    }
}

fn not_found(status: u16, what: &str) -> Response {
    Response::html(
        status,
        page(
            what,
            &format!("<p>{}. <a href=\"/\">Crash groups</a></p>", esc(what)),
        ),
    )
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;background:#fff;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f3;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow-x:auto;white-space:pre}
mark.crash{background:#ffd6d6;color:#900;font-weight:700;display:inline-block;width:100%}
.missing{background:#fff0c2;color:#7a5600;font-style:italic;display:inline-block;width:100%}
td.t,.kind{white-space:nowrap}#analysis td{white-space:pre-line}
.kind{display:inline-block;padding:0 .45em;border-radius:.6em;background:#e8eefc;color:#1a3d8f;font-size:12px}
nav{margin-bottom:.6em;color:#666}a{color:#0645ad}svg.spark{vertical-align:middle}
";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} - netoops</title><style>{STYLE}</style></head><body>\n\
         <nav><a href=\"/\">crash groups</a></nav>\n{body}\n</body></html>\n",
        esc(title)
    )
}

/// An inline SVG bar sparkline of `times` over `[lo, hi]` in [`SPARK_BUCKETS`] buckets.
pub fn sparkline(times: &[i64], lo: i64, hi: i64) -> String {
    let mut buckets = [0u64; SPARK_BUCKETS];
    let span = (hi - lo).max(1) as i128;
    for &t in times {
        let pos = (i128::from(t.clamp(lo, hi) - lo) * SPARK_BUCKETS as i128 / span) as usize;
        buckets[pos.min(SPARK_BUCKETS - 1)] += 1;
    }
    let max = buckets.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (4u64, 20u64);
    let mut svg = format!(
        "<svg class=\"spark\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" \
         viewBox=\"0 0 {} {h}\" role=\"img\"><title>{} dumps from {} to {}</title>",
        w * SPARK_BUCKETS as u64,
        w * SPARK_BUCKETS as u64,
        times.len(),
        rfc3339(lo.max(0) as u64),
        rfc3339(hi.max(0) as u64)
    );
    for (i, &n) in buckets.iter().enumerate() {
        let bh = if n == 0 { 1 } else { 2 + n * (h - 2) / max };
        let color = if n == 0 { "#ddd" } else { "#c0392b" };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"{color}\"/>",
            i as u64 * w,
            h - bh,
            w - 1
        );
    }
    svg.push_str("</svg>");
    svg
}

fn group_link(g_sig: &str) -> String {
    format!("/group/{}", url_segment(g_sig))
}

fn dump_link(d: &IndexedDump) -> String {
    format!("/dump/{}/{}", url_segment(&d.ip_dir), url_segment(&d.key))
}

fn groups_page(index: &Index) -> io::Result<Response> {
    let groups = index.groups()?;
    let lo = groups.iter().map(|g| g.first_ms).min().unwrap_or(0);
    let hi = groups
        .iter()
        .map(|g| g.last_ms)
        .max()
        .unwrap_or(0)
        .max(lo + 1);
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let mut body = format!(
        "<h1>Crash groups</h1><p id=\"summary\">{} groups, {total} dumps. \
         Sparklines span {} to {}. <a href=\"/api/groups\">JSON</a></p>\n",
        groups.len(),
        esc(&rfc3339(lo.max(0) as u64)),
        esc(&rfc3339(hi.max(0) as u64))
    );
    body.push_str(
        "<table id=\"groups\"><thead><tr><th>last seen</th><th>crash</th><th>kind</th>\
         <th>dumps</th><th>machines</th><th>first seen</th><th>kernels</th><th>over time</th>\
         </tr></thead><tbody>\n",
    );
    for g in &groups {
        let times = index.group_times(&g.signature)?;
        let _ = writeln!(
            body,
            "<tr class=\"group\" data-signature=\"{sig}\"><td class=\"mono t\">{last}</td>\
             <td><a class=\"group-link\" href=\"{href}\">{title}</a><br><span class=\"mono\">{sig}</span></td>\
             <td><span class=\"kind\">{kind}</span></td><td class=\"n count\">{count}</td>\
             <td class=\"n machines\">{machines}</td><td class=\"mono t\">{first}</td>\
             <td class=\"mono\">{kernels}</td><td>{spark}</td></tr>",
            sig = esc(&g.signature),
            last = esc(&g.last_seen),
            href = esc(&group_link(&g.signature)),
            title = esc(&g.title),
            kind = esc(&g.crash_kind),
            count = g.count,
            machines = g.machines,
            first = esc(&g.first_seen),
            kernels = esc(&g.kernels.join(", ")),
            spark = sparkline(&times, lo, hi),
        );
    }
    body.push_str("</tbody></table>");
    Ok(Response::html(200, page("Crash groups", &body)))
}

fn groups_json(index: &Index) -> io::Result<Value> {
    let groups: Vec<Value> = index.groups()?.iter().map(Group::to_json).collect();
    Ok(json!({ "generated": rfc3339(now_ms()), "groups": groups }))
}

fn group_json(index: &Index, sig: &str) -> io::Result<Option<Value>> {
    let Some(g) = index.group(sig)? else {
        return Ok(None);
    };
    let machines: Vec<Value> = index
        .group_machines(sig)?
        .iter()
        .map(|m| json!({"machine": m.ip_dir, "source": m.source, "dumps": m.count, "last_seen": m.last_seen}))
        .collect();
    let dumps: Vec<Value> = index
        .dumps(Some(sig))?
        .iter()
        .filter(|d| d.signature == sig)
        .map(IndexedDump::to_json)
        .collect();
    Ok(Some(
        json!({ "group": g.to_json(), "machines": machines, "dumps": dumps }),
    ))
}

fn group_page(index: &Index, sig: &str) -> io::Result<Response> {
    let Some(g) = index.group(sig)? else {
        return Ok(not_found(404, "No such crash group"));
    };
    let mut body = format!(
        "<h1 id=\"group-title\">{}</h1>\n<table class=\"facts\">\
         <tr><th>signature</th><td class=\"mono\">{}</td></tr>\
         <tr><th>kind</th><td><span class=\"kind\">{}</span></td></tr>\
         <tr><th>dumps</th><td id=\"group-count\">{}</td></tr>\
         <tr><th>machines</th><td id=\"group-machines\">{}</td></tr>\
         <tr><th>first seen</th><td>{}</td></tr><tr><th>last seen</th><td>{}</td></tr>\
         <tr><th>kernels</th><td>{}</td></tr></table>\
         <p><a href=\"/api/groups/{}\">JSON</a></p>\n",
        esc(&g.title),
        esc(&g.signature),
        esc(&g.crash_kind),
        g.count,
        g.machines,
        esc(&g.first_seen),
        esc(&g.last_seen),
        esc(&g.kernels.join(", ")),
        esc(&url_segment(&g.signature)),
    );
    body.push_str(
        "<h2>Machines</h2><table id=\"machines\"><thead><tr><th>machine</th><th>source</th>\
         <th>dumps</th><th>last seen</th></tr></thead><tbody>\n",
    );
    for m in index.group_machines(sig)? {
        let _ = writeln!(
            body,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"n\">{}</td><td class=\"mono\">{}</td></tr>",
            esc(&m.ip_dir),
            esc(&m.source),
            m.count,
            esc(&m.last_seen)
        );
    }
    body.push_str(
        "</tbody></table>\n<h2>Dumps</h2><table id=\"dumps\"><thead><tr><th>completed</th>\
         <th>dump</th><th>kernel</th><th>state</th><th>crash line</th></tr></thead><tbody>\n",
    );
    for d in index
        .dumps(Some(sig))?
        .iter()
        .filter(|d| d.signature == sig)
    {
        let _ = writeln!(
            body,
            "<tr><td class=\"mono\">{}</td><td><a class=\"dump-link\" href=\"{}\">{}</a></td>\
             <td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            esc(&d.completed),
            esc(&dump_link(d)),
            esc(&d.name),
            esc(&d.kernel),
            if d.complete { "complete" } else { "partial" },
            esc(&d.crash_line),
        );
    }
    body.push_str("</tbody></table>");
    Ok(Response::html(200, page(&g.title, &body)))
}

/// The analysis as JSON.
pub fn analysis_json(a: &Analysis) -> Value {
    let frame = |f: &netoops_analyser::Frame| json!({"function": f.function, "offset": f.offset, "size": f.size, "module": f.module, "text": f.to_string()});
    json!({
        "kind": a.kind.as_str(),
        "signature": a.signature,
        "title": a.title,
        "crash_line": a.crash_line,
        "crash_line_index": a.crash_line_index,
        "rip": a.rip.as_ref().map(frame),
        "frames": a.frames.iter().map(frame).collect::<Vec<_>>(),
        "taint": a.taint,
        "release": a.release,
        "hardware": a.hardware,
        "process": a.process.as_ref().map(|p| json!({"comm": p.comm, "pid": p.pid, "cpu": p.cpu})),
        "missing": a.missing.iter().map(|m| json!({
            "line": m.line, "first": m.first, "last": m.last,
            "unit": if m.records { "records" } else { "packets" },
        })).collect::<Vec<_>>(),
    })
}

struct LoadedDump {
    stored: catalog::StoredDump,
    text: Option<String>,
    analysis: Analysis,
}

/// Loads `DIR/<ip>/<key>.json` and its text. Only inside the storage directory (the segments
/// are checked by the router); `None` when the metadata is missing or is not a JSON object.
fn load_dump(dir: &Path, ip: &str, key: &str) -> Option<LoadedDump> {
    let sdir = dir.join(ip);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(sdir.join(format!("{key}.json"))).ok()?).ok()?;
    if !meta.is_object() {
        return None;
    }
    let stored = catalog::StoredDump {
        ip_dir: ip.to_string(),
        key: key.to_string(),
        meta,
        log_path: sdir.join(format!("{key}.log")),
    };
    let text = read_text_capped(&stored.log_path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let analysis = analyse(text.as_deref().unwrap_or(""));
    Some(LoadedDump {
        stored,
        text,
        analysis,
    })
}

fn dump_json(dir: &Path, index: &Index, ip: &str, key: &str) -> Option<Value> {
    let d = load_dump(dir, ip, key)?;
    let indexed = index.dump(&d.stored.name()).ok().flatten();
    Some(json!({
        "name": d.stored.name(),
        "meta": d.stored.meta,
        "analysis": analysis_json(&d.analysis),
        "group": indexed.map(|i| i.signature),
        "text_missing": d.text.is_none(),
    }))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn ranges(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| (value_text(&r[0]), value_text(&r[1])))
                .collect()
        })
        .unwrap_or_default()
}

fn dump_page(dir: &Path, index: &Index, ip: &str, key: &str) -> io::Result<Response> {
    let Some(d) = load_dump(dir, ip, key) else {
        return Ok(not_found(404, "No such dump"));
    };
    let a = &d.analysis;
    let meta = &d.stored.meta;
    let name = d.stored.name();
    let mut body = format!(
        "<h1 id=\"dump-title\">{}</h1>\n<p><span class=\"kind\" id=\"crash-kind\">{}</span> \
         <a id=\"group-link\" href=\"{}\">{}</a> &middot; <a href=\"/api/dumps/{}/{}\">JSON</a></p>\n",
        esc(&name),
        esc(a.kind.as_str()),
        esc(&group_link(&a.signature)),
        esc(&a.title),
        esc(&url_segment(ip)),
        esc(&url_segment(key)),
    );
    if index.dump(&name)?.is_none() {
        body.push_str("<p>This dump is not in the index.</p>");
    }
    body.push_str("<h2>Crash</h2><table id=\"analysis\">");
    let row = |body: &mut String, k: &str, v: &str| {
        let _ = write!(
            body,
            "<tr><th>{}</th><td class=\"mono\">{}</td></tr>",
            esc(k),
            esc(v)
        );
    };
    row(
        &mut body,
        "crash line",
        a.crash_line.as_deref().unwrap_or(""),
    );
    row(
        &mut body,
        "faulting function",
        &a.rip.as_ref().map(ToString::to_string).unwrap_or_default(),
    );
    row(
        &mut body,
        "process",
        &a.process
            .as_ref()
            .map(|p| match p.pid {
                Some(pid) => format!("{} (pid {pid})", p.comm),
                None => p.comm.clone(),
            })
            .unwrap_or_default(),
    );
    let taint = match a.taint.as_deref() {
        Some("") => "none (Not tainted)",
        Some(t) => t,
        None => "",
    };
    row(&mut body, "taint", taint);
    row(&mut body, "release", a.release.as_deref().unwrap_or(""));
    row(&mut body, "hardware", a.hardware.as_deref().unwrap_or(""));
    row(&mut body, "signature", &a.signature);
    let frames: Vec<String> = a.frames.iter().map(ToString::to_string).collect();
    row(&mut body, "call trace", &frames.join("\n"));
    body.push_str("</table>\n");
    if let Value::Object(regs) = &meta["registers"] {
        body.push_str("<h2>Registers</h2><table id=\"registers\"><tr>");
        for (i, (k, v)) in regs.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                body.push_str("</tr><tr>");
            }
            let _ = write!(
                body,
                "<th>{}</th><td class=\"mono\">{}</td>",
                esc(k),
                esc(&value_text(v))
            );
        }
        body.push_str("</tr></table>\n");
    }
    let mut missing: Vec<String> = ranges(&meta["missing"])
        .into_iter()
        .map(|(a, b)| format!("packets {a}-{b}"))
        .collect();
    missing.extend(
        ranges(&meta["netconsole"]["missing_seq"])
            .into_iter()
            .map(|(a, b)| format!("records {a}-{b}")),
    );
    body.push_str("<h2>Missing</h2>");
    if missing.is_empty() {
        body.push_str("<p id=\"missing-none\">Nothing is missing.</p>\n");
    } else {
        body.push_str("<ul id=\"missing\">");
        for m in &missing {
            let _ = write!(body, "<li class=\"missing-range\">{}</li>", esc(m));
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<h2>Text</h2>");
    match &d.text {
        None => body.push_str("<p id=\"text-missing\">The dump's text file is missing.</p>"),
        Some(text) => {
            body.push_str("<pre id=\"text\">");
            let marker_lines: Vec<usize> = a.missing.iter().map(|m| m.line).collect();
            for (i, line) in text.lines().enumerate() {
                if Some(i) == a.crash_line_index {
                    let _ = writeln!(
                        body,
                        "<mark class=\"crash\" id=\"crash-line\">{}</mark>",
                        esc(line)
                    );
                } else if marker_lines.contains(&i) {
                    let _ = writeln!(body, "<span class=\"missing\">{}</span>", esc(line));
                } else {
                    let _ = writeln!(body, "{}", esc(line));
                }
            }
            body.push_str("</pre>");
        }
    }
    body.push_str("<h2>Metadata</h2><table id=\"meta\">");
    if let Value::Object(m) = meta {
        for (k, v) in m {
            if matches!(k.as_str(), "registers" | "netconsole" | "missing") {
                continue;
            }
            row(&mut body, k, &value_text(v));
        }
        if let Value::Object(nc) = &meta["netconsole"] {
            for (k, v) in nc {
                if k != "missing_seq" {
                    row(&mut body, &format!("netconsole.{k}"), &value_text(v));
                }
            }
        }
    }
    body.push_str("</table>\n");
    Ok(Response::html(200, page(&name, &body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_paths() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"\u{7}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;\u{fffd}"
        );
        assert!(safe_segment("10.0.0.1") && safe_segment("fe80__1") && safe_segment("nc-b1-c2"));
        for bad in ["", ".", "..", ".index.sqlite3", "a/b", "a b", "<x>"] {
            assert!(!safe_segment(bad), "{bad}");
        }
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(url_segment("a b/<"), "a%20b%2F%3C");
    }

    #[test]
    fn sparkline_counts_into_buckets() {
        let svg = sparkline(&[0, 0, 100, 50], 0, 100);
        assert_eq!(svg.matches("<rect").count(), SPARK_BUCKETS);
        assert!(svg.contains("4 dumps"));
        assert!(sparkline(&[], 5, 5).contains("0 dumps"));
    }
}
