//! Deterministic pseudo-random values (xorshift64) for the tests, benchmarks and tools that need
//! weights or activations without a model. Not for anything statistical.

/// `count` values in [-0.5, 0.5), the same for the same `seed`.
pub fn uniform_values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
