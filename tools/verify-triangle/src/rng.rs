//! A small deterministic generator (SplitMix64) so that every case is rebuilt from its seed alone,
//! whatever else runs before it, and without depending on a random-number crate's version.
//!
//! Owns only the stream of numbers; what the numbers become (weights, scales, activations) is in
//! [`crate::cases`].

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, every seed a full-period stream.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream of one case: the same `(seed, label, rows, cols)` always gives the same numbers.
    pub fn for_case(seed: u64, label: &str, rows: usize, cols: usize) -> Self {
        // FNV-1a of the label, then every part folded through the generator's mixer.
        let label_hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = Rng::new(seed);
        for part in [label_hash, rows as u64, cols as u64] {
            rng.state ^= part;
            rng.state = rng.next_u64();
        }
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`, 24 random bits (every value exact in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// Log-uniform in `[lo, hi)` (`0 < lo < hi`): every order of magnitude equally likely.
    pub fn log_uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let (a, b) = (lo.ln(), hi.ln());
        (a + self.unit() * (b - a)).exp().clamp(lo, hi)
    }

    /// Uniform integer in `lo..=hi`.
    pub fn int_in(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1) as usize) as i32
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_depend_on_every_part() {
        let take = |mut r: Rng| (0..4).map(|_| r.next_u64()).collect::<Vec<_>>();
        let a = take(Rng::for_case(7, "random-f32", 31, 300));
        assert_eq!(a, take(Rng::for_case(7, "random-f32", 31, 300)));
        assert_ne!(a, take(Rng::for_case(8, "random-f32", 31, 300)));
        assert_ne!(a, take(Rng::for_case(7, "random-trits", 31, 300)));
        assert_ne!(a, take(Rng::for_case(7, "random-f32", 300, 31)));
    }

    #[test]
    fn ranges_are_respected() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let l = r.log_uniform(1e-3, 1e3);
            assert!((1e-3..=1e3).contains(&l));
            assert!((-127..=127).contains(&r.int_in(-127, 127)));
        }
    }
}
