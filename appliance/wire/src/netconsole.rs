//! Netconsole datagrams: what every mainline Linux kernel sends, legacy and extended.
//!
//! - Legacy netconsole sends console text as it is printed: no metadata, one or more lines per
//!   datagram, a line may be split across datagrams. [`Datagram::Legacy`] is the raw bytes.
//! - Extended netconsole (`+` in the sender's configuration, kernels 4.x+) sends one printk
//!   record per datagram: `[<release>,]<level>,<seq>,<usec>,<flags>[,<key>=<value>...];<body>`.
//!   The body is the message text with non-printable bytes (and `\`) escaped as `\xNN`, a
//!   newline, then optional `" KEY=VALUE\n"` lines: the record's dictionary (`SUBSYSTEM=`,
//!   `DEVICE=`), then the sender's userdata (configfs, 6.9+) and sysdata (`cpu=`, `taskname=`,
//!   `release=`, `msgid=`, 2025+). Header fields after the flags are `key=value` pairs; the
//!   kernel uses `caller=T123` (CONFIG_PRINTK_CALLER) and `ncfrag=<offset>/<total>`.
//! - A record whose datagram would exceed [`MAX_PRINT_CHUNK`] bytes is split by the sender: every
//!   fragment repeats the header with `,ncfrag=<offset>/<total>` added before the `;`, and
//!   carries the body bytes `offset..offset + len` of a body `total` bytes long.
//!
//! [`Datagram::parse`] classifies and validates once; it never panics and never allocates. A
//! datagram whose first line looks like an extended header but does not parse is a typed
//! [`NetconsoleError`] (the receiver counts it by [`NetconsoleError::reason`]); anything else is
//! legacy text. [`encode_record`] is the sender's side, used by the generator and by tests.

use crate::text::FmtBuf;
use core::fmt;

/// UDP port netconsole targets by default.
pub const DEFAULT_PORT: u16 = 6666;

/// The largest datagram the kernel's netconsole sends (`MAX_PRINT_CHUNK`).
pub const MAX_PRINT_CHUNK: usize = 1000;

/// Longest header (everything before `;`) accepted; the kernel's is under 150 bytes with a
/// release and a caller id.
pub const MAX_HEADER_LEN: usize = 256;

/// Longest release string accepted in the `r` prefix (`__NEW_UTS_LEN`).
pub const MAX_RELEASE_LEN: usize = 64;

/// Why an extended datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetconsoleError {
    /// An empty datagram.
    Empty,
    /// The header has no `<level>,<seq>,<usec>,<flags>` run.
    Header,
    /// The level field is not a number below 2^13 (facility << 3 | level).
    Level,
    /// The sequence number is not a decimal `u64`.
    Seq,
    /// The timestamp is not a decimal `u64` of microseconds.
    Usec,
    /// The release prefix is too long or not printable.
    Release,
    /// An `ncfrag=` field that does not parse, or a fragment outside its record.
    Fragment,
}

impl NetconsoleError {
    /// Every reason, for counters.
    pub const ALL: [NetconsoleError; 7] = [
        NetconsoleError::Empty,
        NetconsoleError::Header,
        NetconsoleError::Level,
        NetconsoleError::Seq,
        NetconsoleError::Usec,
        NetconsoleError::Release,
        NetconsoleError::Fragment,
    ];

    /// Short name for counters and logs.
    pub fn reason(self) -> &'static str {
        match self {
            NetconsoleError::Empty => "empty",
            NetconsoleError::Header => "header",
            NetconsoleError::Level => "level",
            NetconsoleError::Seq => "seq",
            NetconsoleError::Usec => "usec",
            NetconsoleError::Release => "release",
            NetconsoleError::Fragment => "fragment",
        }
    }

    /// Index into [`NetconsoleError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for NetconsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed netconsole datagram: {}", self.reason())
    }
}

/// `ncfrag=<offset>/<total>`: this datagram carries body bytes `offset..offset + len` of a body
/// `total` bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Byte offset of this fragment's body in the whole body.
    pub offset: u32,
    /// Length of the whole body.
    pub total: u32,
}

impl Fragment {
    /// Whether `body` can be this fragment: not empty, and inside a record that has bytes.
    fn holds(self, body: &[u8]) -> bool {
        let end = u64::from(self.offset) + body.len() as u64;
        self.total > 0 && !body.is_empty() && end <= u64::from(self.total)
    }
}

/// One extended record (or a fragment of one), borrowed from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extended<'a> {
    /// The kernel release, when the sender prepends it (`r`).
    pub release: Option<&'a [u8]>,
    /// `facility << 3 | level`.
    pub level: u16,
    /// The record's sequence number in the sender's log.
    pub seq: u64,
    /// The record's timestamp, microseconds since the sender booted.
    pub usec: u64,
    /// The record continues the previous one (`c` flag).
    pub cont: bool,
    /// Present when the record was split.
    pub fragment: Option<Fragment>,
    /// `caller=` value (`T123` task or `C1` CPU), when the sender has CONFIG_PRINTK_CALLER.
    pub caller: Option<&'a [u8]>,
    /// The body (or this fragment's part of it): escaped text, `\n`, dictionary lines.
    pub body: &'a [u8],
}

impl Extended<'_> {
    /// Severity 0 (emergency) to 7 (debug).
    pub fn severity(&self) -> u8 {
        (self.level & 7) as u8
    }
}

/// A netconsole datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Extended format.
    Extended(Extended<'a>),
    /// Legacy format: console text.
    Legacy(&'a [u8]),
}

fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn is_flags(b: &[u8]) -> bool {
    matches!(b, b"-" | b"c")
}

impl<'a> Datagram<'a> {
    /// Classifies and validates a datagram. Extended when the text before the first `;` (within
    /// [`MAX_HEADER_LEN`] bytes, on the first line) has a `<number>,<number>,<number>,<c|->` run
    /// of fields, optionally after a release; legacy otherwise.
    pub fn parse(bytes: &'a [u8]) -> Result<Datagram<'a>, NetconsoleError> {
        if bytes.is_empty() {
            return Err(NetconsoleError::Empty);
        }
        // The common header, `<level>,<seq>,<usec>,<flags>;` with at most `caller=`/`ncfrag=`
        // fields after the flags, is read in one pass with no field table.
        if let Some(d) = Self::parse_plain(bytes) {
            return d;
        }
        Self::parse_general(bytes)
    }

    /// [`Datagram::parse`] for any header.
    fn parse_general(bytes: &'a [u8]) -> Result<Datagram<'a>, NetconsoleError> {
        if bytes.is_empty() {
            return Err(NetconsoleError::Empty);
        }
        // One pass to the `;` ending the header, noting the commas on the way.
        let limit = bytes.len().min(MAX_HEADER_LEN + 1);
        let mut commas = [0usize; 11];
        let mut n_commas = 0;
        let mut semi = None;
        for (i, &b) in bytes[..limit].iter().enumerate() {
            match b {
                b';' => {
                    semi = Some(i);
                    break;
                }
                b'\n' => return Ok(Datagram::Legacy(bytes)),
                b',' => {
                    if n_commas == commas.len() {
                        return Ok(Datagram::Legacy(bytes));
                    }
                    commas[n_commas] = i;
                    n_commas += 1;
                }
                _ => {}
            }
        }
        let Some(semi) = semi else {
            return Ok(Datagram::Legacy(bytes));
        };
        // Fields: [release,]level,seq,usec,flags[,key=value...]. The flags field is found as
        // the first `-`/`c` field preceded by at least three fields.
        let mut fields: [&[u8]; 12] = [&[]; 12];
        let n = n_commas + 1;
        let mut start = 0;
        for (k, field) in fields.iter_mut().enumerate().take(n) {
            let end = if k < n_commas { commas[k] } else { semi };
            *field = &bytes[start..end];
            start = end + 1;
        }
        let Some(flags_at) = (3..n).find(|&i| is_flags(fields[i])) else {
            // Plain text with a `;` in its first line: legacy, unless it starts like a header.
            if n >= 4 && fields[..3].iter().all(|f| decimal(f).is_some()) {
                return Err(NetconsoleError::Header);
            }
            return Ok(Datagram::Legacy(bytes));
        };
        let release_fields = flags_at - 3;
        if release_fields > 1 {
            // More than one field before level,seq,usec: not something the kernel writes. A
            // legacy line such as "a, b, c, d, -;" lands here too: treat it as text.
            return Ok(Datagram::Legacy(bytes));
        }
        let (lvl, seq, usec) = (
            fields[flags_at - 3],
            fields[flags_at - 2],
            fields[flags_at - 1],
        );
        let looks_numeric = |f: &[u8]| !f.is_empty() && f.iter().all(u8::is_ascii_digit);
        if !(looks_numeric(lvl) || looks_numeric(seq)) {
            return Ok(Datagram::Legacy(bytes));
        }
        let level = decimal(lvl)
            .filter(|&l| l < 1 << 13)
            .ok_or(NetconsoleError::Level)? as u16;
        let seq = decimal(seq).ok_or(NetconsoleError::Seq)?;
        let usec = decimal(usec).ok_or(NetconsoleError::Usec)?;
        let release = if release_fields == 1 {
            let r = fields[0];
            if r.is_empty() || r.len() > MAX_RELEASE_LEN || !r.iter().all(u8::is_ascii_graphic) {
                return Err(NetconsoleError::Release);
            }
            Some(r)
        } else {
            None
        };
        let mut fragment = None;
        let mut caller = None;
        for f in &fields[flags_at + 1..n] {
            if let Some(v) = f.strip_prefix(b"ncfrag=") {
                let slash = v.iter().position(|&b| b == b'/');
                let (o, t) = match slash {
                    Some(s) => (&v[..s], &v[s + 1..]),
                    None => return Err(NetconsoleError::Fragment),
                };
                let offset = decimal(o).and_then(|o| u32::try_from(o).ok());
                let total = decimal(t).and_then(|t| u32::try_from(t).ok());
                let (Some(offset), Some(total)) = (offset, total) else {
                    return Err(NetconsoleError::Fragment);
                };
                fragment = Some(Fragment { offset, total });
            } else if let Some(v) = f.strip_prefix(b"caller=") {
                caller = Some(v);
            }
            // Other key=value header fields from newer kernels are ignored.
        }
        let body = &bytes[semi + 1..];
        if !fragment.is_none_or(|f| f.holds(body)) {
            return Err(NetconsoleError::Fragment);
        }
        Ok(Datagram::Extended(Extended {
            release,
            level,
            seq,
            usec,
            cont: fields[flags_at] == b"c",
            fragment,
            caller,
            body,
        }))
    }
}

impl<'a> Datagram<'a> {
    /// The fast path of [`Datagram::parse`] for a header that starts with the level: `None`
    /// sends anything else (a release prefix, legacy text, odd fields) to the general parser,
    /// which gives the same answer for these headers.
    fn parse_plain(bytes: &'a [u8]) -> Option<Result<Datagram<'a>, NetconsoleError>> {
        /// A decimal number of 1 to 20 digits ending at `,`: the value and the index after
        /// the comma. Up to 19 digits cannot overflow a `u64`, so the loop does no overflow
        /// checks; a 20-digit number is parsed again with them.
        #[inline(always)]
        fn number(b: &[u8], start: usize) -> Option<(u64, usize)> {
            let window = b.get(start..b.len().min(start + 21))?;
            let mut v: u64 = 0;
            let mut n = 0;
            for &c in window {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                v = v.wrapping_mul(10).wrapping_add(u64::from(d));
                n += 1;
            }
            if n == 0 || window.get(n) != Some(&b',') {
                return None;
            }
            if n == 20 {
                v = decimal(&window[..n])?;
            }
            Some((v, start + n + 1))
        }
        let (level, i) = number(bytes, 0)?;
        let (seq, i) = number(bytes, i)?;
        let (usec, i) = number(bytes, i)?;
        if level >= 1 << 13 {
            return None;
        }
        let cont = match bytes.get(i)? {
            b'-' => false,
            b'c' => true,
            _ => return None,
        };
        let mut i = i + 1;
        let mut fragment = None;
        let mut caller = None;
        loop {
            match bytes.get(i)? {
                b';' => break,
                b',' => {
                    let rest = &bytes[i + 1..bytes.len().min(MAX_HEADER_LEN + 1)];
                    let end = rest.iter().position(|&b| b == b',' || b == b';')?;
                    let field = &rest[..end];
                    if let Some(v) = field.strip_prefix(b"ncfrag=") {
                        let slash = v.iter().position(|&b| b == b'/')?;
                        let offset = u32::try_from(decimal(&v[..slash])?).ok()?;
                        let total = u32::try_from(decimal(&v[slash + 1..])?).ok()?;
                        fragment = Some(Fragment { offset, total });
                    } else if let Some(v) = field.strip_prefix(b"caller=") {
                        caller = Some(v);
                    } else {
                        return None;
                    }
                    i += 1 + end;
                }
                _ => return None,
            }
        }
        let body = &bytes[i + 1..];
        if !fragment.is_none_or(|f| f.holds(body)) {
            return Some(Err(NetconsoleError::Fragment));
        }
        Some(Ok(Datagram::Extended(Extended {
            release: None,
            level: level as u16,
            seq,
            usec,
            cont,
            fragment,
            caller,
            body,
        })))
    }
}

/// A whole extended body split into its message and its `KEY=VALUE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body<'a> {
    /// The message text, still escaped.
    pub text: &'a [u8],
    /// Everything after the text's newline: `" KEY=VALUE\n"` lines.
    pub fields: &'a [u8],
}

impl<'a> Body<'a> {
    /// Splits a body at the text's newline (a body without one is all text).
    pub fn split(body: &'a [u8]) -> Body<'a> {
        match body.iter().position(|&b| b == b'\n') {
            Some(nl) => Body {
                text: &body[..nl],
                fields: &body[nl + 1..],
            },
            None => Body {
                text: body,
                fields: &[],
            },
        }
    }

    /// The `KEY=VALUE` pairs (values still escaped), in order. Lines without `=` are skipped.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.fields.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_prefix(b" ").unwrap_or(line);
            let eq = line.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| (&line[..eq], &line[eq + 1..]))
        })
    }
}

/// Decodes `\xNN` escapes, handing out runs of bytes. A `\` not followed by two hex digits is
/// kept as it is; returns how many such malformed escapes there were.
pub fn unescape(mut src: &[u8], mut out: impl FnMut(&[u8])) -> u32 {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut bad = 0;
    while let Some(at) = src.iter().position(|&b| b == b'\\') {
        out(&src[..at]);
        let rest = &src[at..];
        match (rest.get(1), rest.get(2).copied().and_then(hex), rest.get(3)) {
            (Some(b'x'), Some(hi), Some(&lo)) if hex(lo).is_some() => {
                out(&[hi << 4 | hex(lo).unwrap_or(0)]);
                src = &rest[4..];
            }
            _ => {
                bad += 1;
                out(b"\\");
                src = &rest[1..];
            }
        }
    }
    out(src);
    bad
}

/// Escapes message text the way the kernel does for extended consoles: bytes below 0x20,
/// 0x7f and above, and `\` become `\xNN`.
pub fn escape(text: &[u8], mut out: impl FnMut(&[u8])) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &c) in text.iter().enumerate() {
        if !(b' '..0x7f).contains(&c) || c == b'\\' {
            out(&text[start..i]);
            out(&[
                b'\\',
                b'x',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ]);
            start = i + 1;
        }
    }
    out(&text[start..]);
}

/// Markers of a crash line: a panic, an oops, `BUG:` (soft lockups and bad page faults too),
/// a general protection fault, a hard lockup, an RCU stall or a hung task.
const CRASH_MARKERS: [&[u8]; 10] = [
    b"Kernel panic - not syncing",
    b"BUG:",
    b"kernel BUG at",
    b"Oops:",
    b"Oops ",
    b"general protection fault",
    b"Unable to handle kernel",
    b"Watchdog detected hard LOCKUP",
    b"detected stall",
    b"blocked for more than",
];

/// For each byte, a bit per marker that starts with it, and [`NEWLINE`] for `\n`: the bytes
/// the scan stops at.
const CRASH_STARTS: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < CRASH_MARKERS.len() {
        t[CRASH_MARKERS[i][0] as usize] |= 1 << i;
        i += 1;
    }
    t[b'\n' as usize] |= NEWLINE;
    t
};

/// [`CRASH_STARTS`]'s bit for the end of the line.
const NEWLINE: u16 = 1 << 15;

/// Scans `text` up to its first newline; returns that line and whether it holds a crash
/// marker. One pass: a tight loop skips the bytes that neither end the line nor start a
/// marker (most of them), and only where a marker could start is it compared.
fn scan_line(text: &[u8]) -> (&[u8], bool) {
    let mut i = 0;
    loop {
        let Some(p) = text[i..]
            .iter()
            .position(|&c| CRASH_STARTS[usize::from(c)] != 0)
        else {
            return (text, false);
        };
        i += p;
        let mut bits = CRASH_STARTS[usize::from(text[i])];
        if bits & NEWLINE != 0 {
            return (&text[..i], false);
        }
        while bits != 0 {
            let m = CRASH_MARKERS[bits.trailing_zeros() as usize];
            if text[i..].starts_with(m) {
                let end = text[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |p| i + p);
                return (&text[..end], true);
            }
            bits &= bits - 1;
        }
        i += 1;
    }
}

/// Whether a line of kernel log text starts a crash: a panic, an oops, `BUG:`, a general
/// protection fault, a soft or hard lockup, an RCU stall or a hung task.
pub fn is_crash_line(line: &[u8]) -> bool {
    let mut rest = line;
    loop {
        let (l, crash) = scan_line(rest);
        if crash {
            return true;
        }
        if l.len() >= rest.len() {
            return false;
        }
        rest = &rest[l.len() + 1..];
    }
}

/// The message text of an extended body (up to its first newline, still escaped), when it is
/// a crash line. Escaping never touches the markers' bytes, so the escaped text holds a marker
/// exactly when the unescaped text does.
pub fn crash_text(body: &[u8]) -> Option<&[u8]> {
    match scan_line(body) {
        (text, true) => Some(text),
        _ => None,
    }
}

/// What [`encode_record`] writes: one extended record as the kernel would send it.
#[derive(Clone, Copy, Debug)]
pub struct RecordSpec<'a> {
    /// `r` prefix.
    pub release: Option<&'a str>,
    /// `facility << 3 | level`.
    pub level: u16,
    /// Sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// Message text, unescaped.
    pub text: &'a [u8],
    /// Dictionary, userdata and sysdata pairs appended as `" KEY=VALUE\n"`.
    pub fields: &'a [(&'a str, &'a str)],
}

/// Writes the body of a record: escaped text, `\n`, then `" KEY=VALUE\n"` per field.
pub fn encode_body(spec: &RecordSpec<'_>, out: &mut impl FnMut(&[u8])) {
    escape(spec.text, &mut *out);
    out(b"\n");
    for (k, v) in spec.fields {
        out(b" ");
        out(k.as_bytes());
        out(b"=");
        out(v.as_bytes());
        out(b"\n");
    }
}

/// Encodes one extended record as the datagrams the kernel sends for it: one when it fits in
/// [`MAX_PRINT_CHUNK`], else fragments with `ncfrag` each at most that long (the header is
/// repeated in every fragment). `datagram` is called once per datagram, in sending order.
/// Returns the number of datagrams.
pub fn encode_record(
    spec: &RecordSpec<'_>,
    scratch: &mut [u8; 8192],
    mut datagram: impl FnMut(&[u8]),
) -> usize {
    use core::fmt::Write;
    // A body longer than the scratch is cut there. The kernel's bodies are at most about
    // 4 KiB (1 KiB of text, escaped), and so are the generator's.
    let mut body_len = 0usize;
    encode_body(spec, &mut |b: &[u8]| {
        let end = body_len + b.len();
        if end <= scratch.len() {
            scratch[body_len..end].copy_from_slice(b);
            body_len = end;
        }
    });
    let mut head = small();
    if let Some(r) = spec.release {
        let _ = write!(head, "{r},");
    }
    let _ = write!(head, "{},{},{},-", spec.level, spec.seq, spec.usec);
    let body = &scratch[..body_len];
    let mut dgram = [0u8; MAX_PRINT_CHUNK];
    if head.len() + 1 + body.len() <= MAX_PRINT_CHUNK {
        let n = head.len();
        dgram[..n].copy_from_slice(head.as_bytes());
        dgram[n] = b';';
        dgram[n + 1..n + 1 + body.len()].copy_from_slice(body);
        datagram(&dgram[..n + 1 + body.len()]);
        return 1;
    }
    let mut offset = 0;
    let mut count = 0;
    while offset < body.len() {
        let mut h = small();
        let _ = write!(
            h,
            "{},ncfrag={}/{};",
            core::str::from_utf8(head.as_bytes()).unwrap_or(""),
            offset,
            body.len()
        );
        let room = MAX_PRINT_CHUNK - h.len();
        let take = room.min(body.len() - offset);
        dgram[..h.len()].copy_from_slice(h.as_bytes());
        dgram[h.len()..h.len() + take].copy_from_slice(&body[offset..offset + take]);
        datagram(&dgram[..h.len() + take]);
        offset += take;
        count += 1;
    }
    count
}

/// A fixed buffer for formatting headers without allocating.
type Small = FmtBuf<[u8; MAX_HEADER_LEN + 64]>;

fn small() -> Small {
    FmtBuf::new([0; MAX_HEADER_LEN + 64])
}

/// Formats `args` on the stack (they fit: numbers and fixed text) and hands the bytes to `out`.
fn write_small(out: &mut impl FnMut(&[u8]), args: fmt::Arguments<'_>) {
    let mut s = small();
    let _ = fmt::Write::write_fmt(&mut s, args);
    out(s.as_bytes());
}

/// Writes the dump line for one extended record, the way `dmesg` shows it:
/// `[SSSSS.UUUUUU] text\n`, text unescaped. Returns the malformed escapes met.
pub fn write_line(usec: u64, escaped_text: &[u8], mut out: impl FnMut(&[u8])) -> u32 {
    let (secs, micros) = (usec / 1_000_000, usec % 1_000_000);
    write_small(&mut out, format_args!("[{secs:5}.{micros:06}] "));
    let bad = unescape(escaped_text, &mut out);
    out(b"\n");
    bad
}

/// The gap line for records `first..=last` that never arrived.
pub fn write_gap(first: u64, last: u64, mut out: impl FnMut(&[u8])) {
    write_small(
        &mut out,
        format_args!("[netconsole: records {first}-{last} missing]\n"),
    );
}

/// The marker put in place of body bytes `first..=last` of a split record that never arrived.
pub fn write_fragment_gap(first: u32, last: u32, mut out: impl FnMut(&[u8])) {
    write_small(
        &mut out,
        format_args!("[netconsole: bytes {first}-{last} missing]"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn ext(b: &[u8]) -> Extended<'_> {
        match Datagram::parse(b) {
            Ok(Datagram::Extended(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_extended_record() {
        let e = ext(b"6,416,1758426,-;hello world\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:01.0\n");
        assert_eq!((e.level, e.seq, e.usec, e.cont), (6, 416, 1_758_426, false));
        assert_eq!(e.release, None);
        assert_eq!(e.fragment, None);
        let body = Body::split(e.body);
        assert_eq!(body.text, b"hello world");
        let pairs: Vec<_> = body.pairs().collect();
        assert_eq!(
            pairs,
            [
                (&b"SUBSYSTEM"[..], &b"pci"[..]),
                (&b"DEVICE"[..], &b"+pci:0000:00:01.0"[..])
            ]
        );
    }

    #[test]
    fn release_prefix_caller_and_fragments() {
        let e = ext(b"6.13.0-04048-g4f561a87745a,13,468,514729715,c,caller=T12,ncfrag=0/1135;abc");
        assert_eq!(e.release, Some(&b"6.13.0-04048-g4f561a87745a"[..]));
        assert_eq!(
            (e.level, e.seq, e.usec, e.cont),
            (13, 468, 514_729_715, true)
        );
        assert_eq!(e.caller, Some(&b"T12"[..]));
        assert_eq!(
            e.fragment,
            Some(Fragment {
                offset: 0,
                total: 1135
            })
        );
        assert_eq!(e.severity(), 5);
        // The documentation's example.
        let a = ext(b"6,416,1758426,-,ncfrag=0/31;the first chunk,");
        let b = ext(b"6,416,1758426,-,ncfrag=16/31; the 2nd chunk.");
        assert_eq!(a.body.len() + b.body.len(), 31);
        assert_eq!(b.fragment.unwrap().offset, 16);
    }

    #[test]
    fn legacy_text_is_legacy() {
        for t in [
            &b"[   12.345678] e1000: eth0 NIC Link is Up\n"[..],
            b"hello; world\n",
            b"a,b,c,-;d",
            b"no newline at all",
            b"x\n6,1,2,-;later line",
        ] {
            assert_eq!(Datagram::parse(t), Ok(Datagram::Legacy(t)), "{t:?}");
        }
    }

    #[test]
    fn malformed_headers_are_typed() {
        for (bytes, error) in [
            (&b""[..], NetconsoleError::Empty),
            (b"6,99999999999999999999999,1,-;x", NetconsoleError::Seq),
            (b"6,1,1x,-;x", NetconsoleError::Usec),
            (b"99999,1,1,-;x", NetconsoleError::Level),
            (b"6,1,1,x;x", NetconsoleError::Header),
            (b"6,1,1,-,ncfrag=5;x", NetconsoleError::Fragment),
            (b"6,1,1,-,ncfrag=30/31;xx", NetconsoleError::Fragment),
            (b"6,1,1,-,ncfrag=0/0;x", NetconsoleError::Fragment),
            (b"6.1\x01,6,1,1,-;x", NetconsoleError::Release),
        ] {
            assert_eq!(Datagram::parse(bytes), Err(error), "{bytes:?}");
        }
    }

    #[test]
    fn escapes_round_trip() {
        let text = b"tab\there \\ back\x7f\xffend";
        let mut esc = Vec::new();
        escape(text, |b| esc.extend_from_slice(b));
        assert_eq!(esc, b"tab\\x09here \\x5c back\\x7f\\xffend");
        let mut back = Vec::new();
        assert_eq!(unescape(&esc, |b| back.extend_from_slice(b)), 0);
        assert_eq!(back, text);
        let mut out = Vec::new();
        assert_eq!(unescape(b"a\\xZZ\\", |b| out.extend_from_slice(b)), 2);
        assert_eq!(out, b"a\\xZZ\\");
    }

    #[test]
    fn long_records_fragment_like_the_kernel() {
        let text: Vec<u8> = (0..2500).map(|i| b'a' + (i % 26) as u8).collect();
        let spec = RecordSpec {
            release: Some("6.1.0-18-amd64"),
            level: 4,
            seq: 77,
            usec: 12_345_678,
            text: &text,
            fields: &[("cpu", "1"), ("taskname", "bash")],
        };
        let mut scratch = [0u8; 8192];
        let mut dgrams: Vec<Vec<u8>> = Vec::new();
        let n = encode_record(&spec, &mut scratch, |d| dgrams.push(d.to_vec()));
        assert_eq!(n, 3);
        let mut body = Vec::new();
        for d in &dgrams {
            assert!(d.len() <= MAX_PRINT_CHUNK);
            let e = ext(d);
            assert_eq!(e.release, Some(&b"6.1.0-18-amd64"[..]));
            assert_eq!(e.fragment.unwrap().offset as usize, body.len());
            body.extend_from_slice(e.body);
        }
        let b = Body::split(&body);
        assert_eq!(b.text, &text[..]);
        assert_eq!(b.pairs().count(), 2);
        let mut line = Vec::new();
        write_line(spec.usec, b"x\\x0ay", |b| line.extend_from_slice(b));
        assert_eq!(line, b"[   12.345678] x\ny\n");
    }

    #[test]
    fn crash_text_is_found_in_the_escaped_body() {
        assert_eq!(
            crash_text(b"x\\x09BUG: soft lockup\n SUBSYSTEM=a\n"),
            Some(&b"x\\x09BUG: soft lockup"[..])
        );
        assert_eq!(crash_text(b"fine\n BUG:=in a field\n"), None);
        assert_eq!(
            crash_text(b"no newline Oops: 0002"),
            Some(&b"no newline Oops: 0002"[..])
        );
    }

    proptest::proptest! {
        /// Whatever the kernel could send parses back to what it was made from: fragments
        /// cover the body exactly, and escaping round-trips any text.
        #[test]
        fn encoded_records_parse_back(
            // The kernel's records hold at most about 1 KiB of text (escaped, up to 4 KiB).
            text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            seq in proptest::prelude::any::<u64>(),
            usec in proptest::prelude::any::<u64>(),
            level in 0u16..192,
            release in proptest::option::of("[0-9a-z.+-]{1,40}"),
        ) {
            let spec = RecordSpec {
                release: release.as_deref(),
                level,
                seq,
                usec,
                text: &text,
                fields: &[("cpu", "1")],
            };
            let mut scratch = [0u8; 8192];
            let mut dgrams: Vec<Vec<u8>> = Vec::new();
            encode_record(&spec, &mut scratch, |d| dgrams.push(d.to_vec()));
            let mut body = Vec::new();
            let mut total = None;
            for d in &dgrams {
                proptest::prop_assert!(d.len() <= MAX_PRINT_CHUNK);
                let e = ext(d);
                proptest::prop_assert_eq!((e.seq, e.usec, e.level), (seq, usec, level));
                proptest::prop_assert_eq!(
                    e.release.map(|r| r.to_vec()),
                    release.as_ref().map(|r| r.as_bytes().to_vec())
                );
                if let Some(f) = e.fragment {
                    proptest::prop_assert_eq!(f.offset as usize, body.len());
                    total = Some(f.total as usize);
                }
                body.extend_from_slice(e.body);
            }
            if let Some(t) = total {
                proptest::prop_assert_eq!(t, body.len());
            }
            let b = Body::split(&body);
            let mut plain = Vec::new();
            proptest::prop_assert_eq!(unescape(b.text, |x| plain.extend_from_slice(x)), 0);
            proptest::prop_assert_eq!(plain, text);
        }

        /// The fast path and the general parser agree on every header the fast path takes.
        #[test]
        fn the_fast_path_agrees_with_the_general_parser(
            level in 0u64..10_000, seq in proptest::prelude::any::<u64>(),
            usec in proptest::prelude::any::<u64>(), cont in proptest::prelude::any::<bool>(),
            frag in proptest::option::of((0u32..5000, 0u32..5000)),
            caller in proptest::option::of("[TC][0-9]{1,5}"),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut d = format!("{level},{seq},{usec},{}", if cont { 'c' } else { '-' });
            if let Some(c) = &caller {
                d.push_str(&format!(",caller={c}"));
            }
            if let Some((o, t)) = frag {
                d.push_str(&format!(",ncfrag={o}/{t}"));
            }
            d.push(';');
            let mut bytes = d.into_bytes();
            bytes.extend_from_slice(&body);
            if let Some(fast) = Datagram::parse_plain(&bytes) {
                proptest::prop_assert_eq!(fast, Datagram::parse_general(&bytes));
            }
        }

        /// The one-pass scan finds a crash marker exactly where a plain search of the text's
        /// lines does (text made of marker pieces, newlines and filler).
        #[test]
        fn the_crash_scan_agrees_with_a_plain_search(
            pieces in proptest::collection::vec(proptest::sample::select(std::vec![
                &b"BUG:"[..], b"BUG", b"Oops", b"Oops ", b"Kernel panic - not syncing", b"Kernel",
                b"general protection fault", b"kernel BUG at", b"detected stall", b"\n", b" ",
                b"blocked for more than", b"Unable to handle kernel", b"x", b"k", b"b", b"d",
                b"Watchdog detected hard LOCKUP", b"g", b"O", b"K", b"\\x0a",
            ]), 0..24),
        ) {
            let text: Vec<u8> = pieces.concat();
            let has = |line: &[u8]| {
                CRASH_MARKERS.iter().any(|m| line.windows(m.len()).any(|w| w == *m))
            };
            let first = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
            proptest::prop_assert_eq!(crash_text(&text), has(first).then_some(first));
            proptest::prop_assert_eq!(
                is_crash_line(&text),
                text.split(|&b| b == b'\n').any(has)
            );
        }

        /// Arbitrary bytes never panic and a body is always a suffix of the datagram.
        #[test]
        fn arbitrary_bytes_parse_or_refuse(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500)) {
            match Datagram::parse(&bytes) {
                Ok(Datagram::Extended(e)) => proptest::prop_assert!(bytes.ends_with(e.body)),
                Ok(Datagram::Legacy(t)) => proptest::prop_assert_eq!(t, &bytes[..]),
                Err(e) => { let _ = e.reason(); }
            }
            if let Some(fast) = Datagram::parse_plain(&bytes) {
                proptest::prop_assert_eq!(fast, Datagram::parse_general(&bytes));
            }
        }
    }

    #[test]
    fn crash_lines() {
        for l in [
            &b"Kernel panic - not syncing: sysrq triggered crash"[..],
            b"BUG: kernel NULL pointer dereference, address: 0000000000000000",
            b"general protection fault, probably for non-canonical address",
            b"watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:1:40]",
            b"NMI watchdog: Watchdog detected hard LOCKUP on cpu 3",
            b"rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            b"INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
            b"Oops: 0002 [#1] PREEMPT SMP NOPTI",
            b"kernel BUG at mm/slub.c:4105!",
        ] {
            assert!(
                is_crash_line(l),
                "{}",
                std::string::String::from_utf8_lossy(l)
            );
        }
        for l in [
            &b"e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex"[..],
            b"systemd[1]: Started Journal Service.",
            b"",
        ] {
            assert!(!is_crash_line(l));
        }
    }
}
