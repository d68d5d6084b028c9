//! The reference answer: what a correct receiver produces for a log, given which packets arrived.
//!
//! Tests and benchmarks compare the real reassembler's output with [`expected`]. It is written
//! for clarity, not speed, and allocates.

use alloc::vec::Vec;

use crate::encode::SenderModel;
use crate::text::{chunk_text, Segment, TextRenderer};

/// What a correct receiver produces for one dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedDump {
    /// Rendered text: chunks in log order with gap lines for missing runs.
    pub text: Vec<u8>,
    /// Runs of missing packet numbers, ascending, inclusive.
    pub missing: Vec<(u32, u32)>,
    /// Received packets whose 1024 bytes were all zero, ascending.
    pub zeroed: Vec<u32>,
    /// Number of distinct packets received.
    pub received: u32,
    /// Every packet arrived.
    pub complete: bool,
}

/// The receiver's expected output when `received(packet_no)` tells which packets arrived at
/// least once. Text runs from `packet_count - 1` down to 0; a received chunk contributes its
/// [`chunk_text`] (nothing when all zero: it is listed in `zeroed`); each maximal run of missing
/// packet numbers is one [`Segment::Gap`]; the result is rendered by the [`crate::text`] rule.
pub fn expected(sender: &SenderModel<'_>, received: impl Fn(u32) -> bool) -> ExpectedDump {
    let count = sender.packet_count();
    let mut text = Vec::new();
    let mut missing = Vec::new();
    let mut zeroed = Vec::new();
    let mut received_count = 0u32;
    let mut renderer = TextRenderer::default();
    // Highest missing packet_no of the run being collected (runs are found descending).
    let mut run_top: Option<u32> = None;

    for p in (0..count).rev() {
        if !received(p) {
            run_top.get_or_insert(p);
            continue;
        }
        if let Some(top) = run_top.take() {
            missing.push((p + 1, top));
            renderer.push(
                Segment::Gap {
                    first: p + 1,
                    last: top,
                },
                |b| text.extend_from_slice(b),
            );
        }
        received_count += 1;
        let chunk = sender.chunk(p);
        let t = chunk_text(&chunk);
        if t.is_empty() {
            zeroed.push(p);
        }
        renderer.push(Segment::Text(t), |b| text.extend_from_slice(b));
    }
    if let Some(top) = run_top {
        missing.push((0, top));
        renderer.push(
            Segment::Gap {
                first: 0,
                last: top,
            },
            |b| text.extend_from_slice(b),
        );
    }
    missing.reverse();
    zeroed.reverse();
    ExpectedDump {
        text,
        missing,
        zeroed,
        received: received_count,
        complete: received_count == count,
    }
}

/// A test log of `len` bytes: lowercase letters (shifted by `salt`) in lines of 60, no NUL
/// byte. For tests here and in the crates that use this model.
pub fn text_log(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 61 == 60 {
                b'\n'
            } else {
                b'a' + ((i + salt as usize) % 26) as u8
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    /// The expected dump when every packet arrived: complete, nothing missing.
    fn all_received(s1: &[u8], s2: &[u8]) -> ExpectedDump {
        let e = expected(&SenderModel::new(s1, s2), |_| true);
        assert!(e.complete);
        assert!(e.missing.is_empty());
        e
    }

    #[test]
    fn everything_received_is_the_log() {
        let s1 = text_log(1500, 0);
        let s2 = text_log(700, 3);
        let e = all_received(&s1, &s2);
        assert_eq!(e.text, [&s1[..], &s2[..]].concat());
        assert_eq!(e.received, 3);
        assert!(e.zeroed.is_empty());
    }

    #[test]
    fn missing_runs_become_gap_lines_in_log_order() {
        // 5 packets: p4 = s1[0..1024], p3 = s1[1024..2048], p2 = s1[2048..2100],
        // p1 = s2[0..1024], p0 = s2[1024..1100].
        let s1 = text_log(2100, 0);
        let s2 = text_log(1100, 1);
        let m = SenderModel::new(&s1, &s2);
        let e = expected(&m, |p| p == 4 || p == 1);
        assert_eq!(e.missing, vec![(0, 0), (2, 3)]);
        assert_eq!(e.received, 2);
        assert!(!e.complete);
        let mut want = s1[..1024].to_vec();
        if want.last() != Some(&b'\n') {
            want.push(b'\n');
        }
        want.extend_from_slice(b"[netoops: packets 2-3 missing]\n");
        want.extend_from_slice(&s2[..1024]);
        if want.last() != Some(&b'\n') {
            want.push(b'\n');
        }
        want.extend_from_slice(b"[netoops: packets 0-0 missing]\n");
        assert_eq!(e.text, want);
    }

    #[test]
    fn exact_multiple_piece_is_zeroed_not_missing() {
        let s1 = text_log(2048, 0);
        let s2 = text_log(10, 0);
        let e = all_received(&s1, &s2);
        assert_eq!(e.zeroed, vec![1]);
        assert_eq!(e.text, [&s1[..1024], &s2[..]].concat());
    }

    #[test]
    fn nothing_received() {
        let s1 = text_log(3000, 0);
        let m = SenderModel::new(&s1, &[]);
        let e = expected(&m, |_| false);
        assert_eq!(e.missing, vec![(0, 2)]);
        assert_eq!(e.text, b"[netoops: packets 0-2 missing]\n");
        assert_eq!(e.received, 0);
        let empty = expected(&SenderModel::new(&[], &[]), |_| false);
        assert!(empty.complete && empty.text.is_empty());
    }

    proptest! {
        #[test]
        fn prop_expected_matches_log(
            l1 in 0usize..6000, l2 in 0usize..6000, salt in any::<u8>(),
            lost in prop::collection::vec(any::<bool>(), 12),
        ) {
            let s1 = text_log(l1, salt);
            let s2 = text_log(l2, salt.wrapping_add(7));
            let m = SenderModel::new(&s1, &s2);
            let count = m.packet_count();
            let all = expected(&m, |_| true);
            prop_assert!(all.complete);
            prop_assert!(all.missing.is_empty());
            prop_assert_eq!(all.received, count);
            if l1 % 1024 != 0 && l2 % 1024 != 0 {
                prop_assert_eq!(&all.text, &[&s1[..], &s2[..]].concat());
                prop_assert!(all.zeroed.is_empty());
            }

            let got = |p: u32| !lost[p as usize % lost.len()];
            let e = expected(&m, got);
            let received = (0..count).filter(|&p| got(p)).count() as u32;
            prop_assert_eq!(e.received, received);
            prop_assert_eq!(e.complete, received == count);
            // missing runs are ascending, disjoint, maximal and cover exactly the lost packets
            let mut covered = 0;
            for (i, &(first, last)) in e.missing.iter().enumerate() {
                prop_assert!(first <= last);
                prop_assert!((first..=last).all(|p| !got(p)));
                prop_assert!(first == 0 || got(first - 1));
                prop_assert!(last + 1 == count || got(last + 1));
                if i > 0 {
                    prop_assert!(e.missing[i - 1].1 + 1 < first);
                }
                covered += last - first + 1;
            }
            prop_assert_eq!(covered + received, count);
            // every gap line is present, and text without gaps is a subsequence of the log
            let gap_lines = e.text.windows(9).filter(|w| w == b"[netoops:").count();
            prop_assert_eq!(gap_lines, e.missing.len());
            prop_assert!(e.zeroed.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(e.zeroed.iter().all(|&p| got(p) && m.is_zeroed(p)));
        }
    }
}
