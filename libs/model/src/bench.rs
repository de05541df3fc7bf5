//! Measurements behind `serve --bench`: prefill and decode speed of a model on a given number of
//! threads, aggregate speed of concurrent streams through the scheduler, the single-thread GEMV
//! speed of the kernel in the same process (for the end-to-end efficiency figure), and resident
//! memory. Medians of repeated runs: the machines are shared and noisy.

use std::time::{Duration, Instant};

use ternary::synthetic::uniform_values;
use ternary::{quantize_activations, Kernel, PlanarWeights};

use crate::engine::{Engine, GenerationEvent, GenerationRequest, SamplingParams};
use crate::kv::{KvCache, KvPrecision};
use crate::model::{Logits, Model, SeqInput};
use crate::sampling::argmax;

/// Runs `f` on a rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("building a rayon pool")
        .install(f)
}

/// The median of some durations.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Token ids for benchmarking: valid, varied, and never a special token (ids 0..5).
pub fn bench_tokens(count: usize, seed: u64, vocab: usize) -> Vec<u32> {
    uniform_values(count, seed)
        .iter()
        .map(|u| 5 + ((u + 0.5) * (vocab - 5) as f32) as u32 % (vocab as u32 - 5))
        .collect()
}

/// Median seconds of a prefill of `prompt_len` tokens from an empty cache (logits of the last
/// token only, as serving does).
pub fn prefill_seconds(
    model: &Model,
    prompt_len: usize,
    repeats: usize,
    precision: KvPrecision,
) -> f64 {
    let prompt = bench_tokens(prompt_len, 1, model.config.vocab_size);
    let samples = (0..repeats.max(1))
        .map(|_| {
            let mut cache =
                KvCache::with_precision(model.config.n_layers, model.config.kv_dim(), precision);
            let start = Instant::now();
            model.forward(&mut [SeqInput {
                cache: &mut cache,
                tokens: &prompt,
                logits: Logits::Last,
            }]);
            start.elapsed()
        })
        .collect();
    median(samples).as_secs_f64()
}

/// Median seconds per decoded token of `streams` sequences decoding together (greedy), each after
/// a `prefix`-token prompt, over `tokens` steps, with caches of `precision`.
pub fn decode_seconds_per_step(
    model: &Model,
    streams: usize,
    prefix: usize,
    tokens: usize,
    precision: KvPrecision,
) -> f64 {
    let cfg = &model.config;
    let mut caches: Vec<KvCache> = (0..streams)
        .map(|_| KvCache::with_precision(cfg.n_layers, cfg.kv_dim(), precision))
        .collect();
    let prompts: Vec<Vec<u32>> = (0..streams)
        .map(|s| bench_tokens(prefix, 10 + s as u64, cfg.vocab_size))
        .collect();
    let mut next: Vec<u32> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(cache, p)| {
            let logits = model.forward(&mut [SeqInput {
                cache,
                tokens: p,
                logits: Logits::Last,
            }]);
            argmax(&logits[0])
        })
        .collect();
    let mut samples = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        let start = Instant::now();
        let mut inputs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, t)| SeqInput {
                cache,
                tokens: std::slice::from_ref(t),
                logits: Logits::Last,
            })
            .collect();
        let logits = model.forward(&mut inputs);
        next = logits.iter().map(|l| argmax(l)).collect();
        samples.push(start.elapsed());
    }
    median(samples).as_secs_f64()
}

/// Aggregate speed of `streams` concurrent requests through the scheduler: completion tokens of
/// all of them over the wall time from the first submit to the last completion.
pub struct StreamsResult {
    pub tokens: usize,
    pub seconds: f64,
}

/// Submits `streams` requests of `prompt_len` tokens at once, each asking for `max_tokens`
/// (greedy), and waits for all of them.
pub fn engine_streams(
    engine: &Engine,
    streams: usize,
    prompt_len: usize,
    max_tokens: usize,
) -> Result<StreamsResult, String> {
    let vocab = engine.config().vocab_size;
    let start = Instant::now();
    let receivers = (0..streams)
        .map(|s| {
            engine
                .submit(GenerationRequest {
                    prompt: bench_tokens(prompt_len, 100 + s as u64, vocab),
                    max_tokens,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                })
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = 0;
    for rx in receivers {
        for event in rx {
            match event {
                GenerationEvent::Text(_) => {}
                GenerationEvent::Done(c) => tokens += c.completion_tokens,
                GenerationEvent::Error(e) => return Err(e),
            }
        }
    }
    Ok(StreamsResult {
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Single-thread GOPS (2 operations per weight) of `kernel`'s GEMV on a random `rows × cols`
/// matrix: the median of `repeats` timed runs of about 50 ms each.
pub fn kernel_gops(kernel: Kernel, rows: usize, cols: usize, repeats: usize) -> f64 {
    let w = PlanarWeights::from_f32(rows, cols, &uniform_values(rows * cols, 3))
        .expect("a non-empty random matrix")
        .into_layout(kernel.code_layout());
    let x = quantize_activations(&uniform_values(cols, 4));
    let mut y = vec![0.0f32; rows];
    let mut run = || {
        ternary::kernels::gemv(kernel, &w, &x, &mut y).expect("shapes match");
    };
    run();
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(20) {
        run();
        calls += 1;
    }
    let per_sample = (calls as u64 * 50 / 20).max(1) as usize;
    let samples = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_sample {
                run();
            }
            start.elapsed() / per_sample as u32
        })
        .collect();
    2.0 * (rows * cols) as f64 / median(samples).as_secs_f64() / 1e9
}

/// Resident memory of this process (VmRSS), where /proc tells it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_tokens_are_in_range_and_never_special() {
        let t = bench_tokens(10_000, 1, 300);
        assert!(t.iter().all(|&x| (5..300).contains(&x)));
        assert!(t.iter().collect::<std::collections::HashSet<_>>().len() > 200);
    }

    #[test]
    fn medians_and_memory_readings_are_sane() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(5), ms(1), ms(9)]), ms(5));
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().unwrap() > 1 << 20);
        }
        assert!(kernel_gops(Kernel::Reference, 16, 256, 1) > 0.0);
    }
}
