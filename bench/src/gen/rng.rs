//! The generator's only source of randomness: xoshiro256** seeded through SplitMix64.
//!
//! Every random choice of a scenario comes from an [`Rng`] derived from the scenario seed, a
//! [`Stream`] tag and an index ([`Rng::derive`]), so one machine's log, identity and channel
//! do not depend on any other machine, on the interleaving or on the pacing. The algorithm is
//! written out here (not taken from a crate) so a seed names the same scenario forever.

/// Which independent sequence of a scenario a generator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// A machine's identity, log size and log text.
    Content = 1,
    /// A machine's channel: loss, duplication, reordering.
    Channel = 2,
    /// A machine's crash time within a storm window.
    Timing = 3,
}

/// xoshiro256** (Blackman and Vigna), a small fast generator of good statistical quality.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state` and returns a well-mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose state is expanded from `seed` with SplitMix64 (never all zero).
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        Self {
            s: core::array::from_fn(|_| splitmix64(&mut state)),
        }
    }

    /// The generator for `stream` of item `index` under a scenario `seed`.
    pub fn derive(seed: u64, stream: Stream, index: u64) -> Self {
        let mut state = seed;
        let a = splitmix64(&mut state);
        let mut state = a ^ (stream as u64).wrapping_mul(0xd6e8_feb8_6659_fd93);
        let b = splitmix64(&mut state);
        Self::new(b ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for any n this crate uses).
    /// Returns 0 for `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (never for `p <= 0`, always for `p >= 1`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniformly chosen element of a non-empty slice (`None` when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::derive(42, Stream::Content, 7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::derive(42, Stream::Content, 7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        let mut other = Rng::derive(42, Stream::Channel, 7);
        let mut next = Rng::derive(42, Stream::Content, 8);
        let mut seed = Rng::derive(43, Stream::Content, 7);
        assert_ne!(a[0], other.next_u64());
        assert_ne!(a[0], next.next_u64());
        assert_ne!(a[0], seed.next_u64());
    }

    #[test]
    fn xoshiro_reference_values() {
        // xoshiro256** from state {1, 2, 3, 4} (reference implementation's first outputs).
        let mut r = Rng { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1_509_978_240);
        assert_eq!(r.next_u64(), 1_215_971_899_390_074_240);
    }

    #[test]
    fn ranges_and_chances() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let x = r.between(3, 9);
            assert!((3..=9).contains(&x));
            assert!(r.below(5) < 5);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.between(5, 5), 5);
        assert_eq!(r.between(6, 5), 6);
        assert_eq!(r.below(0), 0);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        let hits = (0..100_000).filter(|_| r.chance(0.1)).count();
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert_eq!(r.pick::<u8>(&[]), None);
    }
}
