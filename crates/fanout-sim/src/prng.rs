//! Small deterministic randomness: SplitMix64 and FNV-1a.
//!
//! The simulator never uses an OS random source. Faults and jitter draw from a generator keyed by
//! the configured seed and the request sequence number; generated answers (schema values, stream
//! split points) draw from a generator keyed by a hash of the request body, so the same request
//! always gets the same answer.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for test data.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one purpose (`stream`) of one request (`seq`) under a seed.
    pub(crate) fn keyed(seed: u64, seq: u64, stream: u64) -> Self {
        let mut mix = Self::new(seed ^ 0x6A09_E667_F3BC_C909);
        let a = mix.next_u64() ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut mix = Self::new(a);
        let b = mix.next_u64() ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        Self::new(b)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high]` (inclusive); `low` when the range is empty.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        low + self.next_u64() % (span + 1)
    }
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_sequence() {
        let mut a = SplitMix64::keyed(7, 3, 1);
        let mut b = SplitMix64::keyed(7, 3, 1);
        let mut c = SplitMix64::keyed(7, 4, 1);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let f = a.next_f64();
        assert!((0.0..1.0).contains(&f));
        assert_eq!(a.range(5, 5), 5);
        assert!((3..=9).contains(&a.range(3, 9)));
    }

    #[test]
    fn fnv_known_value() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
