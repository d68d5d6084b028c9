//! Dump text from chunks and gaps, without allocating.
//!
//! A dump's text is its chunks in log order (highest `packet_no` first), each cut at its last
//! non-NUL byte ([`chunk_text`]). Packets that never arrived become one marker line per run,
//! `[netoops: packets A-B missing]`, on a line of its own: a `'\n'` goes before it when the text so
//! far does not end a line, and one always follows it. [`render`] and [`TextRenderer`] apply the
//! same rule; output goes to a callback as byte slices, so callers choose where it lands.
//! [`FmtBuf`] formats (`write!`) into a fixed buffer, for the lines and headers built here and
//! in the core.

/// `fmt::Write` into a fixed buffer (an array of its own or a borrowed slice), without
/// allocating; a write that does not fit fails and leaves the buffer as it was.
#[derive(Debug)]
pub struct FmtBuf<B> {
    buf: B,
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> FmtBuf<B> {
    /// An empty writer into `buf`.
    pub const fn new(buf: B) -> Self {
        FmtBuf { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer holds in all.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Forgets what was written after the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// What was written.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref().get(..self.len).unwrap_or(&[])
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> core::fmt::Write for FmtBuf<B> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self
            .buf
            .as_mut()
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// One piece of a dump's text in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Received text.
    Text(&'a [u8]),
    /// Missing packets, a `packet_no` range with `first <= last`.
    Gap { first: u32, last: u32 },
}

/// Strips the sender's zero padding: the chunk cut at its last non-NUL byte. Empty for an
/// all-zero chunk.
pub fn chunk_text(data: &[u8]) -> &[u8] {
    match data.iter().rposition(|&b| b != 0) {
        Some(last) => data.get(..=last).unwrap_or(data),
        None => &[],
    }
}

/// Room for "\n[netoops: packets 4294967295-4294967295 missing]\n" (51 bytes).
const GAP_LINE_CAP: usize = 64;

/// A gap marker line built on the stack.
struct GapLine {
    buf: [u8; GAP_LINE_CAP],
    len: usize,
}

impl GapLine {
    fn new(newline_first: bool, first: u32, last: u32) -> Self {
        let mut line = Self {
            buf: [0; GAP_LINE_CAP],
            len: 0,
        };
        if newline_first {
            line.push(b"\n");
        }
        line.push(b"[netoops: packets ");
        line.push_u32(first);
        line.push(b"-");
        line.push_u32(last);
        line.push(b" missing]\n");
        line
    }

    fn push(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(s);
            self.len = end;
        }
    }

    fn push_u32(&mut self, mut v: u32) {
        let mut digits = [0u8; 10];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 || start == 0 {
                break;
            }
        }
        self.push(digits.get(start..).unwrap_or(&[]));
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// Renders segments as the dump text (see the module doc for the gap rule). `out` receives byte
/// slices in order; nothing is allocated.
pub fn render<'s>(segments: impl Iterator<Item = Segment<'s>>, mut out: impl FnMut(&[u8])) {
    let mut renderer = TextRenderer::default();
    for segment in segments {
        renderer.push(segment, &mut out);
    }
}

/// The [`render`] rule applied incrementally, for callers that produce segments one by one.
#[derive(Clone, Copy, Debug, Default)]
pub struct TextRenderer {
    /// Last byte written; `None` before any output.
    last: Option<u8>,
    written: u64,
}

impl TextRenderer {
    /// Renders one segment. Empty text produces no call to `out`.
    pub fn push(&mut self, seg: Segment<'_>, mut out: impl FnMut(&[u8])) {
        let bytes = match seg {
            Segment::Text(text) => text,
            Segment::Gap { first, last } => {
                let newline_first = matches!(self.last, Some(b) if b != b'\n');
                let line = GapLine::new(newline_first, first, last);
                self.emit(line.as_bytes(), &mut out);
                return;
            }
        };
        self.emit(bytes, &mut out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        if let Some(&last) = bytes.last() {
            out(bytes);
            self.last = Some(last);
            self.written += bytes.len() as u64;
        }
    }

    /// Total bytes handed to `out` so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects rendered output into a fixed buffer.
    struct Sink {
        buf: [u8; 512],
        len: usize,
        calls: usize,
    }

    impl Sink {
        fn new() -> Self {
            Self {
                buf: [0; 512],
                len: 0,
                calls: 0,
            }
        }
        fn write(&mut self, b: &[u8]) {
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
            self.calls += 1;
        }
        fn bytes(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    fn rendered(segments: &[Segment<'_>]) -> Sink {
        let mut sink = Sink::new();
        render(segments.iter().copied(), |b| sink.write(b));
        sink
    }

    #[test]
    fn chunk_text_strips_padding_only_at_the_end() {
        assert_eq!(chunk_text(b"abc\0\0\0"), b"abc");
        assert_eq!(chunk_text(b"a\0c\0"), b"a\0c");
        assert_eq!(chunk_text(b"abc"), b"abc");
        assert_eq!(chunk_text(&[0; 1024]), b"");
        assert_eq!(chunk_text(b""), b"");
    }

    #[test]
    fn gap_lines() {
        let s = rendered(&[Segment::Gap { first: 3, last: 3 }]);
        assert_eq!(s.bytes(), b"[netoops: packets 3-3 missing]\n");
        let s = rendered(&[
            Segment::Text(b"line one\npartial"),
            Segment::Gap {
                first: 0,
                last: 4_294_967_295,
            },
            Segment::Text(b"after\n"),
            Segment::Gap {
                first: 10,
                last: 12,
            },
        ]);
        assert_eq!(
            s.bytes(),
            &b"line one\npartial\n[netoops: packets 0-4294967295 missing]\nafter\n[netoops: packets 10-12 missing]\n"[..]
        );
    }

    #[test]
    fn gap_after_complete_line_or_gap_needs_no_newline() {
        let s = rendered(&[
            Segment::Text(b"done\n"),
            Segment::Gap { first: 5, last: 6 },
            Segment::Gap { first: 1, last: 2 },
        ]);
        assert_eq!(
            s.bytes(),
            b"done\n[netoops: packets 5-6 missing]\n[netoops: packets 1-2 missing]\n"
        );
    }

    #[test]
    fn empty_text_is_skipped_and_does_not_count_as_text() {
        let s = rendered(&[
            Segment::Text(b""),
            Segment::Gap { first: 0, last: 0 },
            Segment::Text(b""),
        ]);
        assert_eq!(s.bytes(), b"[netoops: packets 0-0 missing]\n");
        assert_eq!(s.calls, 1);
    }

    #[test]
    fn incremental_renderer_counts_bytes() {
        let mut r = TextRenderer::default();
        let mut sink = Sink::new();
        r.push(Segment::Text(b"ab"), |b| sink.write(b));
        r.push(Segment::Gap { first: 1, last: 1 }, |b| sink.write(b));
        assert_eq!(sink.bytes(), b"ab\n[netoops: packets 1-1 missing]\n");
        assert_eq!(r.bytes_written(), sink.len as u64);
    }
}
