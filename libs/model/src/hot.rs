//! Keeping the rayon pool's other workers awake through a forward pass.
//!
//! A forward pass is dozens of short parallel regions (one per matrix product and attention
//! layer, 10-100 µs each) with serial work between them (norms, mHC mixing, RoPE). An idle rayon
//! worker yields for a few microseconds, then sleeps on a futex, and waking it again costs more
//! than a short region is worth: in a VM the sleeping vCPU halts and needs an interrupt to run
//! again. Measured here (2 threads, the four block matrix products of nano-125m at batch 8, 20 µs
//! of serial work before each): 134 µs per set with the workers left to sleep, 88 µs with them
//! kept hot, 87 µs with no serial work at all. So for the duration of a pass, every other worker
//! runs a spinner that keeps stealing the pass's jobs (`rayon::yield_now`) until the pass ends.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` with the current pool's other workers kept busy-waiting for its parallel jobs; on a
/// one-thread pool, simply runs `f`. The spinners only run jobs and spin, so nothing waits on them
/// but the end of `f` (also when `f` panics).
pub fn with_hot_workers<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let spinners = rayon::current_num_threads().saturating_sub(1);
    if spinners == 0 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 0..spinners {
            scope.spawn(|_| {
                while !done.load(Ordering::Acquire) {
                    if let Some(rayon::Yield::Idle) = rayon::yield_now() {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Set on the way out, panic included: the scope waits for the spinners to return.
        let _release = Release(&done);
        f()
    })
}

/// Sets its flag when dropped.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn parallel_work_inside_gives_the_same_result_on_any_pool() {
        let sum = |threads| {
            pool(threads).install(|| {
                with_hot_workers(|| (0..10_000u64).into_par_iter().map(|i| i * i).sum::<u64>())
            })
        };
        let want: u64 = (0..10_000u64).map(|i| i * i).sum();
        for threads in [1, 2, 4] {
            assert_eq!(sum(threads), want, "{threads} threads");
        }
    }

    #[test]
    fn nested_and_concurrent_passes_finish() {
        let pool = pool(2);
        let results: Vec<u64> = pool.install(|| {
            (0..8u64)
                .into_par_iter()
                .map(|k| with_hot_workers(|| with_hot_workers(|| k + 1)))
                .collect()
        });
        assert_eq!(results, (1..=8).collect::<Vec<_>>());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let got = pool
                        .install(|| with_hot_workers(|| (0..1000u64).into_par_iter().sum::<u64>()));
                    assert_eq!(got, 499_500);
                });
            }
        });
    }

    #[test]
    fn a_panic_inside_reaches_the_caller_and_the_pool_still_works() {
        let pool = pool(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| with_hot_workers(|| panic!("inside")))
        }));
        assert!(caught.is_err());
        assert_eq!(pool.install(|| with_hot_workers(|| 7)), 7);
    }
}
