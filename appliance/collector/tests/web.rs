//! The web view, end to end: the built `netoops-collect serve --http` over a storage directory
//! filled through the collector's record API, read by plain HTTP (JSON endpoints, status codes,
//! escaping) and by a real headless Chromium driven over chromedriver's W3C WebDriver HTTP API
//! (a small client below): load the groups page, follow a group to a dump, check what is shown.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/setup` installs them).
//! `NETOOPS_SCREENSHOT=path.png` also saves a screenshot of the groups page (chromium
//! `--screenshot`), the one in the README.

mod common;

use common::crashes::{
    crash_text, dump_record, netconsole_record, store_fleet, store_record, BUILDS,
};
use common::{free_port, serve_command, Reaper};
use netoops_collect::store::Store;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTILE_RELAY: &str = "<script>alert('relay')</script>";
const HOSTILE_COMM: &str = "<img src=x onerror=alert(1)>";

/// A storage directory: a fleet of 30 machines, one partial dump with a missing range, a
/// netconsole dump, and a dump whose text and relay name are hostile HTML.
fn fill(dir: &Path) {
    let store = Store::open(dir).unwrap();
    store_fleet(&store, 30);
    let mut partial = crash_text(0, 1, 77);
    let cut = partial.find("Call Trace:").unwrap();
    partial.insert_str(cut, "[netoops: packets 2-3 missing]\n");
    let rec = dump_record("10.9.0.77", 77, BUILDS[1], &[(2, 3)], 40_000);
    store_record(&store, "rack-9", 31, rec, partial.as_bytes());
    // A netconsole dump of the fleet's soft lockup, on the third build, two records lost.
    let mut nc = crash_text(3, 2, 55);
    let cut = nc.find("Call Trace:").unwrap();
    nc.insert_str(cut, "[netconsole: records 40-41 missing]\n");
    let crash_line = nc
        .lines()
        .find(|l| l.contains("soft lockup"))
        .unwrap()
        .to_string();
    let rec = netconsole_record("10.9.0.55", BUILDS[2], &crash_line, &[(40, 41)], 39_000);
    store_record(&store, "rack-9", 32, rec, nc.as_bytes());
    let hostile = crash_text(5, 0, 66).replace("Comm: bash", &format!("Comm: {HOSTILE_COMM}"))
        + "</pre><script>alert('text')</script>\n";
    let rec = dump_record("10.9.0.66", 66, BUILDS[0], &[], 41_000);
    let origin_relay = HOSTILE_RELAY;
    store_record(&store, origin_relay, 33, rec, hostile.as_bytes());
}

/// Starts the collector with the web view; returns it and the web address.
fn start_collector(dir: &Path) -> (Reaper, SocketAddr) {
    let mut child = serve_command(dir)
        .args(["--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let reaper = Reaper(child);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "collector exited");
        if let Some(rest) = line.trim().strip_prefix("web view on http://") {
            let addr = rest.trim_end_matches('/').parse().unwrap();
            return (reaper, addr);
        }
    }
}

/// One HTTP/1.1 request; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then Content-Length bytes (chromedriver keeps the connection open), or
    // to the end when the server closes (the collector).
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "{method} {path}: connection closed before the response head"
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{method} {path}: short body");
                raw.extend_from_slice(&buf[..n]);
            }
            raw.truncate(head_end + len);
        }
        None => {
            s.read_to_end(&mut raw).unwrap();
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn json_endpoints_status_codes_and_escaping() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path());
    // Bad files beside the good: a truncated .json, a .json without its .log.
    let bad = tmp.path().join("10.9.0.99");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("b0-d1-t1-v3-g0.json"), b"{\"kind\": \"netoo").unwrap();
    std::fs::write(bad.join("b0-d1-t1-v3-g0.log"), b"BUG: x\n").unwrap();
    let good = std::fs::read(tmp.path().join("10.9.0.77/b0-d77-t1-v3-g0.json")).unwrap();
    std::fs::write(bad.join("b0-d2-t1-v3-g0.json"), good).unwrap();
    let (_collector, web) = start_collector(tmp.path());

    let (status, body) = http(web, "GET", "/api/groups", None);
    assert_eq!(status, 200);
    let groups: Value = serde_json::from_str(&body).unwrap();
    let groups = groups["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 6);
    let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 33);
    // The hostile sysrq dump (relay time 41 s) is the newest.
    assert_eq!(groups[0]["crash_kind"], "sysrq-crash");

    let null = groups
        .iter()
        .find(|g| g["crash_kind"] == "null-deref")
        .unwrap();
    let sig = null["signature"].as_str().unwrap();
    let (status, body) = http(web, "GET", &format!("/api/groups/{sig}"), None);
    assert_eq!(status, 200);
    let group: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        group["dumps"].as_array().unwrap().len(),
        6,
        "5 of the fleet + the partial one"
    );
    assert_eq!(group["machines"].as_array().unwrap().len(), 6);

    let (status, body) = http(web, "GET", "/api/dumps/10.9.0.77/b0-d77-t1-v3-g0", None);
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["group"], sig);
    assert_eq!(dump["analysis"]["kind"], "null-deref");
    assert_eq!(dump["analysis"]["missing"][0]["first"], 2);
    assert_eq!(dump["meta"]["missing"], json!([[2, 3]]));
    assert_eq!(dump["analysis"]["rip"]["function"], "mlx5e_poll_rx_cq");

    // The netconsole dump joins the netoops soft lockups of the same bug.
    let lockup = groups
        .iter()
        .find(|g| g["crash_kind"] == "soft-lockup")
        .unwrap();
    assert_eq!(lockup["count"], 6);
    let (status, body) = http(web, "GET", "/api/dumps/10.9.0.55/nc-b0-c1", None);
    assert_eq!(status, 200, "{body}");
    let nc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(nc["meta"]["kind"], "netconsole");
    assert_eq!(nc["group"], lockup["signature"]);
    assert_eq!(nc["analysis"]["missing"][0]["unit"], "records");
    assert_eq!(nc["analysis"]["release"], BUILDS[2]);
    let (_, page) = http(web, "GET", "/dump/10.9.0.55/nc-b0-c1", None);
    assert!(
        page.contains("<li class=\"missing-range\">records 40-41</li>"),
        "{page}"
    );
    assert!(page.contains("<mark class=\"crash\" id=\"crash-line\">"));
    assert!(page.contains("netconsole.release"));

    for bad in [
        "/dump/../etc/passwd",
        "/dump/%2e%2e/x",
        "/dump/10.9.0.77/..%2Fb0-d77-t1-v3-g0",
        "/dump/.relays/x",
        "/group/not-hex",
        "/group/0123456789abcdef",
        "/api/dumps/10.9.0.77/nope",
        "/nothing",
        "/dump/%zz/x",
    ] {
        let (status, body) = http(web, "GET", bad, None);
        assert!(status == 404 || status == 400, "{bad}: {status}");
        assert!(!body.contains("root:"), "{bad}");
    }
    let (status, _) = http(web, "POST", "/", None);
    assert_eq!(status, 405);
    // The bad files: skipped by the index (the totals above), and their pages do not fail.
    let (status, _) = http(web, "GET", "/dump/10.9.0.99/b0-d1-t1-v3-g0", None);
    assert_eq!(status, 404);
    let (status, page) = http(web, "GET", "/dump/10.9.0.99/b0-d2-t1-v3-g0", None);
    assert_eq!(status, 200);
    assert!(page.contains("id=\"text-missing\""));
    assert!(page.contains("This dump is not in the index."));
    let (status, _) = http(web, "GET", "/api/groups", None);
    assert_eq!(status, 200, "the view still serves after the bad files");

    // Hostile text and relay name come back escaped, never as markup.
    let (status, page) = http(web, "GET", "/dump/10.9.0.66/b0-d66-t1-v3-g0", None);
    assert_eq!(status, 200);
    assert!(page.contains("&lt;script&gt;alert(&#39;relay&#39;)&lt;/script&gt;"));
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("&lt;/pre&gt;&lt;script&gt;"));
    assert!(!page.contains("<script>") && !page.contains("<img"));
    assert_eq!(page.matches("</pre>").count(), 1);
}

/// A minimal W3C WebDriver client.
struct WebDriver {
    addr: SocketAddr,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, text) = http(self.addr, method, &path, body.as_ref());
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {text}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn title(&self) -> String {
        self.call("GET", "/title", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    fn find(&self, css: &str) -> String {
        let all = self.find_all(css);
        assert!(!all.is_empty(), "no element {css} on {}", self.url());
        all[0].clone()
    }

    fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn text_of(&self, css: &str) -> String {
        self.text(&self.find(css))
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn attribute(&self, element: &str, name: &str) -> Value {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)
    }
}

impl Drop for WebDriver {
    /// Ends the session (and so the browser) even when an assertion failed: chromedriver is
    /// killed after this, and a browser whose session was never deleted would outlive it.
    fn drop(&mut self) {
        if let Ok(mut s) = TcpStream::connect(self.addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                self.session, self.addr
            );
            let _ = s.write_all(req.as_bytes());
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn chromium_args(profile: &Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.display()),
    ]
}

/// Starts chromedriver and a headless Chromium session.
fn start_browser(profile: &Path) -> (Reaper, WebDriver) {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs Debian's chromium and chromium-driver: run scripts/setup"
    );
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reaper = Reaper(driver);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(addr).is_ok() {
            let (status, body) = http(addr, "GET", "/status", None);
            if status == 200 && body.contains("\"ready\":true") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": chromium_args(profile)},
    }}});
    let (status, body) = http(addr, "POST", "/session", Some(&caps));
    assert_eq!(status, 200, "new session: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let session = v["value"]["sessionId"].as_str().unwrap().to_string();
    (reaper, WebDriver { addr, session })
}

#[test]
fn browser_follows_a_group_to_a_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    fill(tmp.path());
    let (_collector, web) = start_collector(tmp.path());
    let base = format!("http://{web}");
    // `wd` is dropped (its session deleted) before `_driver` (chromedriver killed).
    let (_driver, wd) = start_browser(profile.path());
    wd.call(
        "POST",
        "/window/rect",
        Some(json!({"width": 1400, "height": 900})),
    );

    wd.goto(&format!("{base}/"));
    assert_eq!(wd.title(), "Crash groups - netoops");
    let rows = wd.find_all("#groups tr.group");
    assert_eq!(rows.len(), 6);
    assert!(wd.text_of("#summary").starts_with("6 groups, 33 dumps."));
    // Newest first: the first row is the (hostile) sysrq dump's group, shown as text.
    assert!(wd.text(&rows[0]).contains("sysrq-crash"));
    assert_eq!(wd.find_all("svg.spark").len(), 6);
    assert_eq!(wd.find_all("img").len(), 0);

    // Follow the null-dereference group.
    let links = wd.find_all("a.group-link");
    let link = links
        .iter()
        .find(|l| wd.text(l).starts_with("null-deref:"))
        .expect("a null-deref group")
        .clone();
    assert_eq!(
        wd.text(&link),
        "null-deref: mlx5e_poll_rx_cq < mlx5e_napi_poll < __napi_poll < net_rx_action"
    );
    wd.click(&link);
    assert!(
        wd.url().starts_with(&format!("{base}/group/")),
        "{}",
        wd.url()
    );
    assert_eq!(wd.text_of("#group-count"), "6");
    assert_eq!(wd.text_of("#group-machines"), "6");
    assert_eq!(wd.find_all("#machines tbody tr").len(), 6);
    let dumps = wd.find_all("a.dump-link");
    assert_eq!(dumps.len(), 6);
    // The partial dump (relay time 40 s) is the group's newest.
    assert_eq!(wd.text(&dumps[0]), "10.9.0.77/b0-d77-t1-v3-g0");
    wd.click(&dumps[0]);

    // The dump: crash line highlighted, missing range marked, registers, metadata.
    assert_eq!(wd.url(), format!("{base}/dump/10.9.0.77/b0-d77-t1-v3-g0"));
    assert_eq!(wd.text_of("#dump-title"), "10.9.0.77/b0-d77-t1-v3-g0");
    assert_eq!(wd.text_of("#crash-kind"), "null-deref");
    let crash = wd.find("mark#crash-line");
    assert!(wd
        .text(&crash)
        .ends_with("BUG: kernel NULL pointer dereference, address: 0000000000000008"));
    assert_eq!(wd.attribute(&crash, "class"), "crash");
    assert_eq!(wd.text_of("li.missing-range"), "packets 2-3");
    assert!(wd
        .text_of("#text .missing")
        .ends_with("[netoops: packets 2-3 missing]"));
    let regs = wd.text_of("#registers");
    assert!(
        regs.contains("ip") && regs.contains("0xffffffffc0a12315"),
        "{regs}"
    );
    let meta = wd.text_of("#meta");
    assert!(
        meta.contains("rack-9") && meta.contains(BUILDS[1]),
        "{meta}"
    );
    let analysis = wd.text_of("#analysis");
    assert!(
        analysis.contains("mlx5e_poll_rx_cq+0x19/0x38 [mlx5_core]"),
        "{analysis}"
    );
    assert!(analysis.contains("kworker/5:1 (pid 1539)"), "{analysis}");
    // And back to the group through the dump's own link.
    wd.click(&wd.find("#group-link"));
    assert!(wd.url().starts_with(&format!("{base}/group/")));

    // The hostile dump renders its text and relay name as text: no script, no image.
    wd.goto(&format!("{base}/dump/10.9.0.66/b0-d66-t1-v3-g0"));
    assert_eq!(wd.find_all("script").len(), 0);
    assert_eq!(wd.find_all("img").len(), 0);
    assert!(wd.text_of("#meta").contains(HOSTILE_RELAY));
    assert!(wd.text_of("#analysis").contains(HOSTILE_COMM));
    assert!(wd
        .text_of("#text")
        .contains("</pre><script>alert('text')</script>"));
    assert_eq!(wd.title(), "10.9.0.66/b0-d66-t1-v3-g0 - netoops");

    if let Ok(shot) = std::env::var("NETOOPS_SCREENSHOT") {
        // The groups page at `shot`, the partial dump's page beside it (`...-dump.png`).
        let dump_shot = shot.replace(".png", "-dump.png");
        for (path, file, height) in [
            ("/", shot.as_str(), 620),
            ("/dump/10.9.0.77/b0-d77-t1-v3-g0", dump_shot.as_str(), 1500),
        ] {
            let shot_profile = tempfile::tempdir().unwrap();
            let status = Command::new(CHROMIUM)
                .args(chromium_args(shot_profile.path()))
                .arg("--hide-scrollbars")
                .arg(format!("--window-size=1400,{height}"))
                .arg(format!("--screenshot={file}"))
                .arg(format!("{base}{path}"))
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success() && Path::new(file).is_file());
        }
    }
}
