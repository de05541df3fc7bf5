//! Memory read bandwidth of this machine: the time to read a buffer far larger than the caches,
//! on a given number of threads, median of several passes. The yardstick for the kernels' weight
//! bytes per second.

use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// Size of the buffer read: far beyond any last-level cache.
const BUFFER_BYTES: usize = 512 << 20;
const PASSES: usize = 7;

/// Sum of a slice with independent accumulators, so the loads, not the adds, set the pace.
fn read_sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &w) in acc.iter_mut().zip(chunk) {
            *a = a.wrapping_add(w);
        }
    }
    tail.iter()
        .fold(acc.iter().fold(0u64, |s, &a| s.wrapping_add(a)), |s, &w| {
            s.wrapping_add(w)
        })
}

/// A buffer of distinct non-zero words (written, so every page is really backed by memory).
pub struct Probe {
    words: Vec<u64>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    /// Allocates and writes the 512 MB buffer.
    pub fn new() -> Self {
        let words = (0..BUFFER_BYTES / 8)
            .map(|i| (i as u64).wrapping_mul(0x9E3779B97F4A7C15) | 1)
            .collect();
        Self { words }
    }

    /// Median bytes per second of a full read of the buffer on `threads` threads.
    pub fn read_bandwidth(&self, threads: usize) -> Result<f64, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
        let chunk = self.words.len().div_ceil(threads);
        let mut rates: Vec<f64> = (0..PASSES)
            .map(|_| {
                let start = Instant::now();
                let sum = pool.install(|| {
                    self.words
                        .par_chunks(chunk)
                        .map(read_sum)
                        .reduce(|| 0, u64::wrapping_add)
                });
                black_box(sum);
                BUFFER_BYTES as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        Ok(rates[PASSES / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sum_adds_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(read_sum(&words), 21 * 22 / 2);
        assert_eq!(read_sum(&[u64::MAX, 2]), 1);
    }
}
