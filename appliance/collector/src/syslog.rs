//! Syslog output (`serve --syslog HOST:PORT`): every crash notice and every stored dump as one
//! RFC 5424 message over TCP, framed by octet counting (RFC 6587 section 3.4.1: `LEN SP MSG`),
//! sent only after the record is durable.
//!
//! ```text
//! <130>1 2026-12-03T19:00:00.123Z collector-1 netoops-collect 4711 CRASH [netoops@32473 source="10.0.0.7:2004" kernel="6.1.0-13-amd64" key="10.0.0.7/b7-d2-t1-v3-g0" kind="netoops" relay="rack-7" packet="0" total="12"] BUG: kernel NULL pointer dereference, address: 0000000000000008
//! <133>1 2026-12-03T19:00:01.456Z collector-1 netoops-collect 4711 DUMP [netoops@32473 source="10.0.0.7:2004" kernel="6.1.0-13-amd64" key="10.0.0.7/b7-d2-t1-v3-g0" kind="netoops" relay="rack-7" complete="true" received="12" total="12" rev="1"] dump 10.0.0.7/b7-d2-t1-v3-g0 stored: complete, 12/12 packets, rev 1
//! ```
//!
//! - PRI: the configured facility (default `local0`); severity `crit` for a crash notice,
//!   `notice` for a complete dump, `warning` for a partial one.
//! - HOSTNAME, APP-NAME, PROCID: the collector's (the crashed machine is `source`).
//! - MSGID `CRASH`, MSG the crash line (netconsole's own, or the analyser's from the notice's
//!   text, or its first line); MSGID `DUMP`, MSG a one-line summary (never the dump text). No
//!   UTF-8 BOM: MSG is RFC 5424's `MSG-ANY`, so it reads the same in a file or a grep.
//! - SD-ID `netoops@32473`: 32473 is the private enterprise number RFC 5612 reserves for
//!   documentation, a placeholder until the project registers its own. Params: `source`
//!   (address:port), `kernel`, `key` (`<ip>/<dump-key>`, what `netoops-collect show` takes; for
//!   a crash notice the key its dump will be stored under, before any `-o<n>` suffix), `kind`
//!   (`netoops`/`netconsole`), `relay`; for a crash notice `packet` and `total` (which chunk
//!   it was, of how many); for a dump `complete`, `received`, `total` and `rev`; `truncated`
//!   (the names of what was cut) when something was.
//!
//! Everything but the fixed names comes from the wire, so every value and the MSG go through
//! [`terminal_safe`] (control characters, newlines included, become `\x0a`-style text, as in
//! `watch` and the stdout lines), then SD values are escaped as RFC 5424 section 6.3.3 says (`"`,
//! `\` and `]`). A value is cut at [`MAX_VALUE`] bytes and the whole message at
//! [`MAX_MESSAGE`] bytes (the MSG is cut), both at a character boundary, and named in
//! `truncated`.
//!
//! Emission never blocks or slows the committer: [`Syslog::stored`] builds a [`Notice`] (a
//! few short strings, the crash chunk capped at [`MAX_CHUNK`]) and puts it in a bounded queue,
//! or drops and counts it when the queue is full. One sender thread formats the messages,
//! connects (resolving `HOST` each time), writes them in batches and reconnects with
//! exponential backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]); what is queued while the receiver
//! is away is sent when it is back, oldest first, up to the queue's bound. Plain TCP syslog
//! has no acknowledgements: before each batch the sender checks that the receiver has not
//! closed the connection (a stopped rsyslog is noticed then, not after a lost write), but a
//! message written in the instant a receiver dies can still be lost. RELP would close that
//! gap; it is not done.
//!
//! Why not the `syslog` crate: its RFC 5424 formatter writes to a blocking logger (no queue,
//! no reconnect, no octet counting over TCP), and escaping and bounding hostile values is the
//! part that matters here; the format itself is a few lines.

use crate::catalog::terminal_safe;
use crate::store::{crash_key, Applied, Origin};
use netoops_core::upstream::{Record, RecordHeader};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// The structured data element's id (32473: RFC 5612's documentation enterprise number).
pub const SD_ID: &str = "netoops@32473";
/// Largest message, framing excluded: under rsyslog's default `maxMessageSize` (8 KiB), so
/// nothing is cut on the receiving side either.
pub const MAX_MESSAGE: usize = 8000;
/// Largest SD value, before escaping.
pub const MAX_VALUE: usize = 256;
/// Most bytes of a crash notice's text kept to find its crash line.
pub const MAX_CHUNK: usize = 16 * 1024;
/// Default queue bound, in messages.
pub const DEFAULT_QUEUE: usize = 4096;
/// Default facility: `local0`.
pub const DEFAULT_FACILITY: u8 = 16;
/// Default APP-NAME.
pub const DEFAULT_APP_NAME: &str = "netoops-collect";
/// First wait after a failed connection or write.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Connecting to one address gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long counts as a failed connection: long, because
/// a receiver that is only slow (rsyslog stops reading when its own queue is full) would
/// otherwise be disconnected again and again, and the message cut mid-write by each
/// disconnection is sent again whole on the next connection (the receiver may log the cut
/// piece as well).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages taken from the queue per write.
const BATCH: usize = 256;

/// Facility names, by code (RFC 5424 table 1, with the names syslog.conf uses).
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// `crit`: a crash notice.
pub const SEVERITY_CRASH: u8 = 2;
/// `warning`: a partial dump.
pub const SEVERITY_PARTIAL: u8 = 4;
/// `notice`: a complete dump.
pub const SEVERITY_DUMP: u8 = 5;

/// Parses a facility: a name from [`FACILITIES`] (`local0`, `daemon`, ...) or its number.
pub fn parse_facility(s: &str) -> Result<u8, String> {
    if let Some(i) = FACILITIES.iter().position(|f| f.eq_ignore_ascii_case(s)) {
        return Ok(i as u8);
    }
    match s.parse::<u8>() {
        Ok(n) if usize::from(n) < FACILITIES.len() => Ok(n),
        _ => Err(format!(
            "unknown syslog facility {s:?} (one of {}, or 0-23)",
            FACILITIES.join(", ")
        )),
    }
}

/// A facility's name (`local0`), or its number when out of range.
pub fn facility_name(code: u8) -> String {
    FACILITIES
        .get(usize::from(code))
        .map_or_else(|| code.to_string(), |n| (*n).to_string())
}

/// Where and how to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `HOST:PORT` of the receiver (resolved on every connection attempt).
    pub target: String,
    /// Facility code, 0-23.
    pub facility: u8,
    /// APP-NAME (1-48 printable ASCII characters).
    pub app_name: String,
    /// HOSTNAME (1-255 printable ASCII characters, or `-`).
    pub hostname: String,
    /// Messages held at most (queued, and being sent); more are dropped and counted.
    pub queue: usize,
}

impl SyslogConfig {
    /// Defaults: `local0`, `netoops-collect`, this machine's host name, 4096 messages.
    pub fn new(target: impl Into<String>) -> SyslogConfig {
        SyslogConfig {
            target: target.into(),
            facility: DEFAULT_FACILITY,
            app_name: DEFAULT_APP_NAME.into(),
            hostname: system_hostname(),
            queue: DEFAULT_QUEUE,
        }
    }

    /// Checks what RFC 5424 and the sender need: a port in the target, header fields of
    /// printable ASCII within their lengths, a queue of at least one message.
    pub fn validate(&self) -> Result<(), String> {
        let port = self.target.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) {
            return Err(format!("syslog target {:?} is not HOST:PORT", self.target));
        }
        let header = |what: &str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b)) {
                Err(format!(
                    "syslog {what} {v:?} must be 1-{max} printable ASCII characters"
                ))
            } else {
                Ok(())
            }
        };
        header("app name", &self.app_name, 48)?;
        header("host name", &self.hostname, 255)?;
        if usize::from(self.facility) >= FACILITIES.len() {
            return Err(format!("syslog facility {} is not 0-23", self.facility));
        }
        if self.queue == 0 {
            return Err("the syslog queue must hold at least one message".into());
        }
        Ok(())
    }
}

/// This machine's host name as RFC 5424 allows it, `-` (the NILVALUE) when unknown.
pub fn system_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

/// The sender's counters.
#[derive(Debug, Default)]
pub struct SyslogStats {
    /// Messages accepted into the queue.
    pub queued: AtomicU64,
    /// Messages written to the receiver.
    pub sent: AtomicU64,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Failed connection attempts and failed writes.
    pub errors: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Messages with a value or the MSG cut to fit.
    pub truncated: AtomicU64,
}

impl SyslogStats {
    /// The counters as JSON (`queued`, `sent`, `dropped`, `errors`, `connects`, `truncated`).
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "queued": g(&self.queued),
            "sent": g(&self.sent),
            "dropped": g(&self.dropped),
            "errors": g(&self.errors),
            "connects": g(&self.connects),
            "truncated": g(&self.truncated),
        })
    }
}

/// What a message says, taken from a durable record (owned, bounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Collector wall clock when the record was durable, ms.
    pub at_ms: u64,
    /// Sender address (`ip:port`).
    pub source: String,
    /// Kernel version (netconsole: the release, when the sender told).
    pub kernel: String,
    /// `<ip>/<dump-key>`.
    pub key: String,
    /// `netoops` or `netconsole`.
    pub kind: &'static str,
    /// Relay name.
    pub relay: String,
    /// Crash notice or dump details.
    pub what: What,
}

/// The part of a [`Notice`] that differs between crash notices and dumps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// A crash notice.
    Crash {
        /// Which chunk of the dump the notice carried.
        packet: u32,
        /// Chunks in the dump.
        total: u32,
        /// Netconsole's crash line (empty for netoops).
        line: String,
        /// The chunk's text, at most [`MAX_CHUNK`] bytes.
        text: Vec<u8>,
    },
    /// A stored dump.
    Dump {
        /// Every packet (record) arrived.
        complete: bool,
        /// Packets (records) received.
        received: u32,
        /// Packets (records) in the dump.
        total: u32,
        /// Revision stored.
        revision: u32,
        /// Netconsole's crash line (empty for netoops).
        line: String,
    },
}

impl Notice {
    /// The notice for a record the store made durable; `None` when nothing new was stored
    /// (a replay, or an older revision of a stored dump).
    pub fn from_stored(
        origin: &Origin,
        header: &RecordHeader,
        payload: &[u8],
        applied: &Applied,
        at_ms: u64,
    ) -> Option<Notice> {
        match (&header.record, applied) {
            (Record::CrashSeen(c), Applied::Crash { ip_dir }) => {
                let nc = c.netconsole.as_ref();
                Some(Notice {
                    at_ms,
                    source: c.id.source.to_string(),
                    kernel: kernel(&c.kernel_version, nc.map(|n| n.release.as_str())),
                    key: format!("{ip_dir}/{}", crash_key(c)),
                    kind: c.kind().as_str(),
                    relay: origin.relay.clone(),
                    what: What::Crash {
                        packet: c.packet_no,
                        total: c.packet_count,
                        line: nc.map(|n| n.crash_line.clone()).unwrap_or_default(),
                        text: payload[..payload.len().min(MAX_CHUNK)].to_vec(),
                    },
                })
            }
            (
                Record::Dump(d),
                Applied::Dump {
                    ip_dir,
                    key,
                    written: true,
                },
            ) => {
                let nc = d.netconsole.as_ref();
                Some(Notice {
                    at_ms,
                    source: d.id.source.to_string(),
                    kernel: kernel(&d.kernel_version, nc.map(|n| n.release.as_str())),
                    key: format!("{ip_dir}/{key}"),
                    kind: d.kind().as_str(),
                    relay: origin.relay.clone(),
                    what: What::Dump {
                        complete: d.complete,
                        received: d.received,
                        total: d.packet_count,
                        revision: d.revision,
                        line: nc.map(|n| n.crash_line.clone()).unwrap_or_default(),
                    },
                })
            }
            _ => None,
        }
    }
}

fn kernel(version: &str, release: Option<&str>) -> String {
    match release {
        Some(r) if version.is_empty() => r.to_string(),
        _ => version.to_string(),
    }
}

/// The crash line of a crash notice: netconsole's, else the analyser's from the text, else
/// the text's first non-blank line.
fn crash_line(line: &str, text: &[u8]) -> String {
    if !line.is_empty() {
        return line.to_string();
    }
    let text = String::from_utf8_lossy(text);
    if let Some(l) = netoops_analyser::analyse(&text).crash_line {
        return l;
    }
    text.lines()
        .map(netoops_analyser::strip_prefix)
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no text)")
        .to_string()
}

/// `s` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cut(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// Appends ` name="value"` with the value made terminal-safe, cut and escaped (RFC 5424
/// section 6.3.3); returns whether it was cut.
fn param(sd: &mut String, name: &str, value: &str) -> bool {
    let safe = terminal_safe(value, false);
    let (v, was_cut) = cut(&safe, MAX_VALUE);
    sd.push(' ');
    sd.push_str(name);
    sd.push_str("=\"");
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            sd.push('\\');
        }
        sd.push(c);
    }
    sd.push('"');
    was_cut
}

/// Formats one message (without framing) into `out`; returns whether something was cut.
pub fn format(n: &Notice, config: &SyslogConfig, procid: u32, out: &mut Vec<u8>) -> bool {
    let (severity, msgid) = match &n.what {
        What::Crash { .. } => (SEVERITY_CRASH, "CRASH"),
        What::Dump { complete: true, .. } => (SEVERITY_DUMP, "DUMP"),
        What::Dump { .. } => (SEVERITY_PARTIAL, "DUMP"),
    };
    let pri = u16::from(config.facility) * 8 + u16::from(severity);
    let mut cuts: Vec<&str> = Vec::new();
    let mut sd = String::with_capacity(512);
    sd.push('[');
    sd.push_str(SD_ID);
    for (name, value) in [
        ("source", n.source.as_str()),
        ("kernel", &n.kernel),
        ("key", &n.key),
        ("kind", n.kind),
        ("relay", &n.relay),
    ] {
        if param(&mut sd, name, value) {
            cuts.push(name);
        }
    }
    let msg = match &n.what {
        What::Crash {
            packet,
            total,
            line,
            text,
        } => {
            param(&mut sd, "packet", &packet.to_string());
            param(&mut sd, "total", &total.to_string());
            crash_line(line, text)
        }
        What::Dump {
            complete,
            received,
            total,
            revision,
            line,
        } => {
            param(
                &mut sd,
                "complete",
                if *complete { "true" } else { "false" },
            );
            param(&mut sd, "received", &received.to_string());
            param(&mut sd, "total", &total.to_string());
            param(&mut sd, "rev", &revision.to_string());
            let unit = if n.kind == "netconsole" {
                "records"
            } else {
                "packets"
            };
            let state = if *complete { "complete" } else { "PARTIAL" };
            let mut m = format!(
                "dump {} stored: {state}, {received}/{total} {unit}, rev {revision}",
                n.key
            );
            if !line.is_empty() {
                let _ = write!(m, ": {line}");
            }
            m
        }
    };
    let msg = terminal_safe(&msg, false);
    let mut head = String::with_capacity(96);
    let _ = write!(
        head,
        "<{pri}>1 {} {} {} {procid} {msgid} ",
        crate::wallclock::rfc3339(n.at_ms),
        config.hostname,
        config.app_name
    );
    // Room for the MSG: the header, the SD (and a `truncated` param, if it comes to that),
    // and the space before the MSG.
    let reserve = " truncated=\"source,kernel,key,kind,relay,msg\"".len();
    let room = MAX_MESSAGE.saturating_sub(head.len() + sd.len() + 2 + reserve);
    let (msg, msg_cut) = cut(&msg, room);
    if msg_cut {
        cuts.push("msg");
    }
    if !cuts.is_empty() {
        param(&mut sd, "truncated", &cuts.join(","));
    }
    sd.push(']');
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(sd.as_bytes());
    if !msg.is_empty() {
        out.push(b' ');
        out.extend_from_slice(msg.as_bytes());
    }
    !cuts.is_empty()
}

/// Appends one octet-counted frame (`LEN SP MSG`, RFC 6587 section 3.4.1).
pub fn frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

#[derive(Debug, Default)]
struct QueueState {
    notices: VecDeque<Notice>,
    /// Queued plus taken by the sender and not yet written: what the bound applies to.
    held: usize,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<QueueState>,
    ready: Condvar,
    config: SyslogConfig,
    stats: Arc<SyslogStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The syslog output: a bounded queue and its sender thread. Dropping it stops the sender
/// (what is still queued is not sent).
#[derive(Debug)]
pub struct Syslog {
    shared: Arc<Shared>,
}

impl Syslog {
    /// Checks the configuration and starts the sender thread (it connects when there is
    /// something to send).
    pub fn start(config: SyslogConfig) -> io::Result<Syslog> {
        config.validate().map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            config,
            stats: Arc::new(SyslogStats::default()),
        });
        let for_thread = Arc::clone(&shared);
        thread::Builder::new()
            .name("netoops-syslog".into())
            .spawn(move || Sender::new(&for_thread).run())?;
        Ok(Syslog { shared })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SyslogStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Where it sends.
    pub fn config(&self) -> &SyslogConfig {
        &self.shared.config
    }

    /// Queues a notice; drops and counts it if the queue is full. Never waits for the sender.
    pub fn notify(&self, notice: Notice) {
        let mut s = self.shared.lock();
        if s.held >= self.shared.config.queue {
            drop(s);
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.held += 1;
        s.notices.push_back(notice);
        drop(s);
        self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.shared.ready.notify_one();
    }

    /// Queues the message for a record the store has just made durable (nothing for a replay
    /// or an older revision).
    pub fn stored(
        &self,
        origin: &Origin,
        header: &RecordHeader,
        payload: &[u8],
        applied: &Applied,
        at_ms: u64,
    ) {
        if let Some(n) = Notice::from_stored(origin, header, payload, applied, at_ms) {
            self.notify(n);
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// The sender thread's state.
struct Sender<'a> {
    shared: &'a Shared,
    stream: Option<TcpStream>,
    /// Formatted frames taken from the queue, not yet written (oldest first).
    pending: VecDeque<Vec<u8>>,
    backoff: Duration,
    /// An outage was reported on stderr and not yet its end.
    down_reported: bool,
    /// `dropped` when last reported.
    dropped_reported: u64,
    procid: u32,
}

impl<'a> Sender<'a> {
    fn new(shared: &'a Shared) -> Sender<'a> {
        Sender {
            shared,
            stream: None,
            pending: VecDeque::new(),
            backoff: BACKOFF_MIN,
            down_reported: false,
            dropped_reported: 0,
            procid: std::process::id(),
        }
    }

    fn run(mut self) {
        let mut msg = Vec::with_capacity(MAX_MESSAGE);
        loop {
            if self.pending.is_empty() {
                let Some(notices) = self.take() else { return };
                for n in &notices {
                    msg.clear();
                    if format(n, &self.shared.config, self.procid, &mut msg) {
                        self.shared.stats.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut f = Vec::with_capacity(msg.len() + 6);
                    frame(&msg, &mut f);
                    self.pending.push_back(f);
                }
            }
            self.report_drops();
            if self.stream.as_mut().is_some_and(|s| !still_open(s)) {
                self.stream = None;
            }
            if self.stream.is_none() {
                if let Err(e) = self.connect() {
                    self.failed(&e);
                    if !self.pause() {
                        return;
                    }
                    continue;
                }
            }
            if let Err(e) = self.write_pending() {
                self.stream = None;
                self.failed(&e);
                if !self.pause() {
                    return;
                }
            }
        }
    }

    /// Waits for notices and takes up to [`BATCH`]; `None` once closed.
    fn take(&self) -> Option<Vec<Notice>> {
        let mut s = self.shared.lock();
        while s.notices.is_empty() && !s.closed {
            s = self.shared.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.closed {
            return None;
        }
        let n = s.notices.len().min(BATCH);
        Some(s.notices.drain(..n).collect())
    }

    fn connect(&mut self) -> io::Result<()> {
        let target = &self.shared.config.target;
        let mut last = io::Error::other(format!("{target} resolves to no address"));
        for addr in target.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    let _ = s.set_nodelay(true);
                    let st = &self.shared.stats;
                    let n = st.connects.fetch_add(1, Ordering::Relaxed) + 1;
                    if self.down_reported || n == 1 {
                        eprintln!(
                            "netoops-collect: syslog: connected to {target} ({addr}); {} held, {}",
                            self.held(),
                            counters(st)
                        );
                    }
                    self.down_reported = false;
                    self.stream = Some(s);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes the pending frames; those fully written are sent, whatever happens after.
    fn write_pending(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("not connected"));
        };
        let mut buf = Vec::new();
        for f in &self.pending {
            buf.extend_from_slice(f);
        }
        let mut written = 0;
        let result = loop {
            if written == buf.len() {
                break Ok(());
            }
            match stream.write(&buf[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // Frames wholly written count as sent; a partly written one goes again on the next
        // connection (the receiver drops the torn frame with the old connection).
        let mut done = 0;
        let mut at = 0;
        for f in &self.pending {
            if at + f.len() > written {
                break;
            }
            at += f.len();
            done += 1;
        }
        self.pending.drain(..done);
        self.shared
            .stats
            .sent
            .fetch_add(done as u64, Ordering::Relaxed);
        self.shared.lock().held -= done;
        if result.is_ok() {
            self.backoff = BACKOFF_MIN;
        }
        result
    }

    fn held(&self) -> usize {
        self.shared.lock().held
    }

    fn failed(&mut self, e: &io::Error) {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down_reported {
            self.down_reported = true;
            eprintln!(
                "netoops-collect: syslog: {}: {e}; {} held (at most {}), retrying",
                self.shared.config.target,
                self.held(),
                self.shared.config.queue
            );
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.shared.stats.dropped.load(Ordering::Relaxed);
        if dropped != self.dropped_reported {
            eprintln!(
                "netoops-collect: syslog: queue full ({} messages), {} dropped so far",
                self.shared.config.queue, dropped
            );
            self.dropped_reported = dropped;
        }
    }

    /// Sleeps for the backoff (doubling it); false when the output was closed meanwhile.
    fn pause(&mut self) -> bool {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let s = self.shared.lock();
        let (s, _) = self
            .shared
            .ready
            .wait_timeout_while(s, wait, |s| !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        !s.closed
    }
}

fn counters(st: &SyslogStats) -> String {
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "sent {} dropped {} errors {}",
        g(&st.sent),
        g(&st.dropped),
        g(&st.errors)
    )
}

/// Whether the receiver still has the connection open: a syslog receiver never sends, so
/// anything readable is its close (or junk, read and ignored).
fn still_open(stream: &mut TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut scratch = [0u8; 512];
    let open = loop {
        match stream.read(&mut scratch) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    open && stream.set_nonblocking(false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SyslogConfig {
        SyslogConfig {
            hostname: "col-1".into(),
            ..SyslogConfig::new("127.0.0.1:514")
        }
    }

    fn crash(kernel: &str, text: &[u8]) -> Notice {
        Notice {
            at_ms: 1_700_000_000_123,
            source: "10.0.0.7:2004".into(),
            kernel: kernel.into(),
            key: "10.0.0.7/b7-d2-t1-v3-g0".into(),
            kind: "netoops",
            relay: "rack-7".into(),
            what: What::Crash {
                packet: 0,
                total: 12,
                line: String::new(),
                text: text.to_vec(),
            },
        }
    }

    fn text(n: &Notice) -> String {
        let mut out = Vec::new();
        format(n, &config(), 42, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_crash_notice_is_rfc5424_with_its_crash_line() {
        let t = text(&crash(
            "6.1.0-13-amd64",
            b"[ 1.000] e1000: link up\n[ 2.000] BUG: kernel NULL pointer dereference, address: 8\n[ 2.1] Oops: 0000\n",
        ));
        assert_eq!(
            t,
            "<130>1 2023-11-14T22:13:20.123Z col-1 netoops-collect 42 CRASH [netoops@32473 \
             source=\"10.0.0.7:2004\" kernel=\"6.1.0-13-amd64\" key=\"10.0.0.7/b7-d2-t1-v3-g0\" \
             kind=\"netoops\" relay=\"rack-7\" packet=\"0\" total=\"12\"] \
             BUG: kernel NULL pointer dereference, address: 8"
        );
        // No crash marker: the first line, without its timestamp.
        assert!(text(&crash("6.1", b"\n[ 1.000] hello\nworld")).ends_with("] hello"));
    }

    #[test]
    fn dumps_say_complete_or_partial_in_severity_and_params() {
        let mut n = crash("6.1", b"");
        n.what = What::Dump {
            complete: false,
            received: 9,
            total: 12,
            revision: 2,
            line: String::new(),
        };
        let t = text(&n);
        assert!(t.starts_with("<132>1 "), "{t}");
        assert!(
            t.contains(" DUMP [netoops@32473 ")
                && t.contains(" complete=\"false\" received=\"9\" total=\"12\" rev=\"2\"]")
                && t.ends_with(
                    "] dump 10.0.0.7/b7-d2-t1-v3-g0 stored: PARTIAL, 9/12 packets, rev 2"
                ),
            "{t}"
        );
        if let What::Dump { complete, .. } = &mut n.what {
            *complete = true;
        }
        assert!(text(&n).starts_with("<133>1 "));
    }

    #[test]
    fn hostile_values_are_escaped_and_messages_stay_one_line() {
        let t = text(&crash(
            "6.1\n]\"\\\u{1b}[31m",
            b"BUG: x\"]\\ \x1b]0;pwned\x07\r\nnext line",
        ));
        assert!(
            t.contains(" kernel=\"6.1\\\\x0a\\]\\\"\\\\\\\\x1b[31m\" "),
            "{t}"
        );
        assert!(t.ends_with("] BUG: x\"]\\ \\x1b]0;pwned\\x07"), "{t}");
        assert!(!t.bytes().any(|b| b < 0x20 || b == 0x7f), "{t:?}");
    }

    #[test]
    fn long_values_and_messages_are_cut_at_the_bound_and_named() {
        let long = "é".repeat(5000);
        let mut n = crash(&long, format!("BUG: {long}").as_bytes());
        n.relay = "r".repeat(300);
        let t = text(&n);
        assert!(t.len() <= MAX_MESSAGE, "{}", t.len());
        assert!(t.len() > MAX_MESSAGE - 100, "{}", t.len());
        assert!(t.contains(" truncated=\"kernel,relay,msg\"]"), "{t}");
        let kernel = t
            .split("kernel=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(kernel.len(), MAX_VALUE);
        let mut out = Vec::new();
        assert!(!format(
            &crash("6.1", b"BUG: short"),
            &config(),
            1,
            &mut out
        ));
    }

    #[test]
    fn frames_count_octets() {
        let mut out = Vec::new();
        frame("héllo".as_bytes(), &mut out);
        frame(b"", &mut out);
        assert_eq!(out, "6 héllo0 ".as_bytes());
    }

    #[test]
    fn facilities_and_config_are_checked() {
        assert_eq!(parse_facility("local0"), Ok(16));
        assert_eq!(parse_facility("LOCAL7"), Ok(23));
        assert_eq!(parse_facility("daemon"), Ok(3));
        assert_eq!(parse_facility("23"), Ok(23));
        assert_eq!(facility_name(16), "local0");
        assert!(parse_facility("24").is_err() && parse_facility("local8").is_err());
        assert!(config().validate().is_ok());
        for bad in [
            SyslogConfig::new("localhost"),
            SyslogConfig::new("localhost:0"),
            SyslogConfig {
                app_name: "a b".into(),
                ..config()
            },
            SyslogConfig {
                app_name: "a".repeat(49),
                ..config()
            },
            SyslogConfig {
                queue: 0,
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(SyslogConfig::new("[::1]:514").validate().is_ok());
    }
}
