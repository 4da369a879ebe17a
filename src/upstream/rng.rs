//! A tiny xorshift64* generator for reconnect jitter and the demo's random walk. Not cryptographic.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub(super) struct Rng(u64);

impl Rng {
    /// Seeded from the wall clock and the process id, so gateways restarted together jitter differently.
    pub(super) fn seeded() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Rng::from_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub(super) fn from_seed(seed: u64) -> Self {
        // splitmix64 spreads a low-entropy seed; xorshift needs a non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn ranges_hold_and_values_vary() {
        let mut rng = Rng::from_seed(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
            let b = rng.below(7);
            assert!(b < 7);
            seen.insert(b);
        }
        assert_eq!(seen.len(), 7);
    }
}
