//! The key of the relay's hash tables (dumps by key and identity, sources by address,
//! netconsole senders): foldhash seeded with a secret drawn at start.
//!
//! Every key these tables hash comes off the wire. With a hasher an attacker can predict, a
//! sender can pick addresses and ids that all land in one probe sequence, and every lookup
//! then scans them. hashbrown's default seeds foldhash from stack and code addresses, which in
//! the image are the same on every boot of every appliance; a [`HashKey`] is instead drawn per
//! start by the platform (RDRAND and the TSC in the image, `/dev/urandom` in the hosted relay).

use core::hash::BuildHasher;
use foldhash::fast::FoldHasher;
use foldhash::SharedSeed;

/// A keyed foldhash builder.
#[derive(Clone, Debug)]
pub struct HashKey {
    per_hasher: u64,
    shared: SharedSeed,
}

impl HashKey {
    /// The hasher keyed by `key` (all 64 bits used: the per-hasher seed, and the shared seeds
    /// foldhash derives from it).
    pub fn new(key: u64) -> HashKey {
        HashKey {
            per_hasher: key,
            shared: SharedSeed::from_u64(key.rotate_left(32) ^ 0x243f_6a88_85a3_08d3),
        }
    }

    /// A fixed key, for tests and benchmarks (tables whose keys no attacker picks).
    pub fn fixed() -> HashKey {
        HashKey::new(0)
    }
}

impl BuildHasher for HashKey {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher::with_seed(self.per_hasher, &self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_decides_every_hash() {
        let (a, b) = (HashKey::new(1), HashKey::new(2));
        assert_eq!(a.hash_one(42u64), HashKey::new(1).hash_one(42u64));
        let differ = (0u64..64)
            .filter(|x| a.hash_one(x) != b.hash_one(x))
            .count();
        assert_eq!(differ, 64);
        // Keys that differ only in the high half still give other hashes.
        let c = HashKey::new(1 | 1 << 40);
        assert!((0u64..64).all(|x| a.hash_one(x) != c.hash_one(x)));
    }
}
