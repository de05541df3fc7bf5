//! Arithmetic peak of a kernel on this machine: how many int8 products per second the instruction
//! at the heart of its inner loop delivers when nothing else runs (vpdpbusd for AVX-512 VNNI,
//! vpmaddubsw for AVX-512 BW and AVX2), on a given number of threads, the best of several samples.
//! The compute-side yardstick, as [`crate::bandwidth`] is the memory-side one: a GEMM over many
//! vectors reads each weight once and multiplies it many times, so this rate, not memory, bounds it.
//! A real kernel also decodes codes, sums and scales, so it stays below the figure.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::Kernel;

/// Independent chains per round in the C probes (the twelve of NTK_PEAK_ROUND there).
const CHAINS: usize = 12;
/// Timed samples; the best is reported. A peak is what the hardware does when let run: other
/// tenants only ever lower a sample (on this project's shared 2-core VMs, two runs in eight had
/// all 5 samples on 2 threads at exactly one core's rate, the threads sharing one vCPU), so the
/// median of a few is no more faithful than their maximum, and can be half of it.
const SAMPLES: usize = 7;
/// Each sample runs at least this long (rounds are calibrated once to reach it).
const SAMPLE_TIME: Duration = Duration::from_millis(20);

/// The instruction a kernel's peak is measured on, and the int8 products one of them does.
pub fn instruction(kernel: Kernel) -> Option<(&'static str, usize)> {
    match kernel {
        Kernel::Avx512Vnni => Some(("vpdpbusd zmm", 64)),
        Kernel::Avx512Bw => Some(("vpmaddubsw zmm", 64)),
        Kernel::Avx2 => Some(("vpmaddubsw ymm", 32)),
        _ => None,
    }
}

/// Runs `rounds` rounds of the kernel's probe on this thread; `None` for kernels without one.
fn probe(kernel: Kernel, rounds: usize, seed: i32) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if !kernel.is_supported() {
            return None;
        }
        // SAFETY: the CPU runs the kernel's instruction set (checked just above), which is all
        // the probes need; they read and write registers only.
        unsafe {
            match kernel {
                Kernel::Avx512Vnni => Some(ffi::ntk_peak_avx512vnni(rounds, seed)),
                Kernel::Avx512Bw => Some(ffi::ntk_peak_avx512bw(rounds, seed)),
                Kernel::Avx2 => Some(ffi::ntk_peak_avx2(rounds, seed)),
                _ => None,
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, rounds, seed);
        None
    }
}

/// A measured arithmetic peak.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// The instruction timed, e.g. "vpdpbusd zmm".
    pub instruction: &'static str,
    /// Operations per second (2 per product, the unit of GOPS everywhere in this project).
    pub ops_per_s: f64,
}

/// The peak of `kernel`'s instruction on `threads` threads together, the best of [`SAMPLES`];
/// `None` when the kernel has no probe or does not run on this CPU.
pub fn multiply_add_peak(kernel: Kernel, threads: usize) -> Result<Option<Peak>, String> {
    let threads = threads.max(1);
    let Some((instruction, products)) = instruction(kernel) else {
        return Ok(None);
    };
    if !kernel.is_supported() {
        return Ok(None);
    }
    // Calibration on one thread: rounds that take about SAMPLE_TIME.
    let mut rounds = 1 << 16;
    loop {
        let start = Instant::now();
        black_box(probe(kernel, rounds, 3));
        if start.elapsed() >= SAMPLE_TIME / 4 || rounds >= 1 << 34 {
            let scaled = rounds as f64 * SAMPLE_TIME.as_secs_f64() / start.elapsed().as_secs_f64();
            rounds = (scaled as usize).max(1);
            break;
        }
        rounds *= 4;
    }
    let ops = 2.0 * (threads * rounds * CHAINS * products) as f64;
    let mut rates = Vec::with_capacity(SAMPLES);
    for sample in 0..SAMPLES {
        // Threads of their own, released together: a pool may run two short jobs one after the
        // other on one worker while the other sleeps, which would halve the figure.
        let start = Barrier::new(threads);
        let elapsed: Vec<Duration> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        let begin = Instant::now();
                        black_box(probe(kernel, rounds, (sample * threads + t) as i32));
                        begin.elapsed()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join())
                .collect::<Result<_, _>>()
        })
        .map_err(|_| "a peak probe thread panicked".to_string())?;
        let longest = elapsed.into_iter().max().unwrap_or_default();
        rates.push(ops / longest.as_secs_f64());
    }
    Ok(Some(Peak {
        instruction,
        ops_per_s: rates.into_iter().fold(0.0, f64::max),
    }))
}

#[cfg(target_arch = "x86_64")]
mod ffi {
    extern "C" {
        pub fn ntk_peak_avx512vnni(rounds: usize, seed: i32) -> u32;
        pub fn ntk_peak_avx512bw(rounds: usize, seed: i32) -> u32;
        pub fn ntk_peak_avx2(rounds: usize, seed: i32) -> u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_simd_kernel_this_cpu_runs_has_a_positive_peak_and_the_others_none() {
        for kernel in Kernel::compiled() {
            let peak = multiply_add_peak(kernel, 1).unwrap();
            match (instruction(kernel), kernel.is_supported()) {
                (Some(_), true) => {
                    let peak = peak.expect("a probe for a runnable SIMD kernel");
                    assert_eq!(
                        Some(peak.instruction),
                        instruction(kernel).map(|(name, _)| name)
                    );
                    let gops = peak.ops_per_s / 1e9;
                    // Between a slow emulator and anything a CPU of this decade does per core.
                    assert!(
                        gops.is_finite() && gops > 0.1 && gops < 100_000.0,
                        "{kernel}"
                    );
                }
                _ => assert!(peak.is_none(), "{kernel}"),
            }
        }
    }

    #[test]
    fn the_probes_depend_on_their_inputs() {
        // A probe that was optimised away would return the same value for any seed or length.
        for kernel in Kernel::available() {
            if let Some(a) = probe(kernel, 10, 1) {
                let b = probe(kernel, 10, 2).unwrap();
                let c = probe(kernel, 11, 1).unwrap();
                assert!(a != b || a != c, "{kernel}: {a} {b} {c}");
            }
        }
    }
}
