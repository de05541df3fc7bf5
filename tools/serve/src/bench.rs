//! `serve --bench`: how fast this machine runs a model end to end, and how that compares with its
//! kernel speed and the file size. Every figure is the median of repeated runs (shared, noisy
//! machines); the flags choose the model (a file, or a preset with random weights written to a
//! temporary folder) and the workload sizes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use model::bench::{
    decode_seconds_per_step, engine_streams, kernel_gops, prefill_seconds, resident_bytes,
    with_threads,
};
use model::{Engine, EngineOptions, KvPrecision, Model, ModelConfig};
use serde_json::json;

/// What to measure.
pub struct BenchOptions {
    /// A model file; `None`: random weights for `preset`.
    pub model: Option<PathBuf>,
    pub mhc: Option<PathBuf>,
    pub preset: String,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub streams: usize,
    pub threads: usize,
    pub repeats: usize,
    pub kv_precision: KvPrecision,
}

/// Runs every measurement, printing progress on stderr; returns the report as JSON.
pub fn run(options: &BenchOptions) -> Result<serde_json::Value, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let (gguf, mhc) = match &options.model {
        Some(path) => (path.clone(), options.mhc.clone()),
        None => random_model(&options.preset, scratch.path())?,
    };
    let gguf_bytes = std::fs::metadata(&gguf)
        .map_err(|e| format!("{}: {e}", gguf.display()))?
        .len();
    let rss_start = resident_bytes().unwrap_or(0);
    let (model, tokenizer) = Model::load(&gguf, mhc.as_deref()).map_err(|e| e.to_string())?;
    let rss_loaded = resident_bytes().unwrap_or(0);
    let config = model.config.clone();
    eprintln!("model: {}", config.describe());
    let kernel = model.kernel;
    eprintln!("kernel: {kernel}; KV cache: {}", options.kv_precision);

    let gops = with_threads(1, || kernel_gops(kernel, 4096, 4096, options.repeats));
    eprintln!("kernel GEMV 4096x4096, 1 thread: {gops:.1} GOPS");

    let mut per_threads = Vec::new();
    let mut thread_counts = vec![1];
    if options.threads > 1 {
        thread_counts.push(options.threads);
    }
    for &threads in &thread_counts {
        let (prefill, decode, batched) = with_threads(threads, || {
            let kv = options.kv_precision;
            let prefill = prefill_seconds(&model, options.prompt_tokens, options.repeats, kv);
            let decode = decode_seconds_per_step(&model, 1, 64, options.decode_tokens, kv);
            let batched =
                decode_seconds_per_step(&model, options.streams, 64, options.decode_tokens / 2, kv);
            (prefill, decode, batched)
        });
        let row = json!({
            "threads": threads,
            "prefill_tokens_per_s": options.prompt_tokens as f64 / prefill,
            "decode_tokens_per_s": 1.0 / decode,
            "batched_decode_tokens_per_s": options.streams as f64 / batched,
        });
        eprintln!(
            "{threads} thread(s): prefill {:.0} tokens/s ({} tokens), decode {:.1} tokens/s, \
             {} sequences decoded together {:.1} tokens/s",
            row["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            options.prompt_tokens,
            row["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            options.streams,
            row["batched_decode_tokens_per_s"].as_f64().unwrap_or(0.0),
        );
        per_threads.push(row);
    }

    let weight_bytes = model.ternary_weight_bytes();
    let head_bytes = model.head_table_bytes();
    // Concurrent requests through the scheduler, on the global pool (`threads` threads).
    let engine = Engine::start(
        model,
        tokenizer,
        "bench".into(),
        EngineOptions {
            max_batch: options.streams,
            kv_precision: options.kv_precision,
            ..EngineOptions::default()
        },
    );
    // One warm-up of each, then 1 stream and N streams alternated: the medians of their rates.
    let mut single_rates = Vec::new();
    let mut many_rates = Vec::new();
    for run in 0..=options.repeats {
        let single = engine_streams(&engine, 1, 16, options.decode_tokens)?;
        let many = engine_streams(&engine, options.streams, 16, options.decode_tokens)?;
        if run > 0 {
            single_rates.push(single.tokens as f64 / single.seconds);
            many_rates.push(many.tokens as f64 / many.seconds);
        }
    }
    let rss_end = resident_bytes().unwrap_or(0);
    let (single_rate, many_rate) = (median_of(single_rates), median_of(many_rates));
    eprintln!(
        "engine, {} threads: 1 stream {single_rate:.1} tokens/s; {} concurrent streams \
         {many_rate:.1} tokens/s in aggregate ({} tokens each) = {:.2}x (medians of {} runs \
         after a warm-up)",
        options.threads,
        options.streams,
        options.decode_tokens,
        many_rate / single_rate,
        options.repeats
    );

    let ops_per_token = 2.0 * config.ternary_macs_per_token() as f64;
    let decode_1 = per_threads[0]["decode_tokens_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let efficiency = ops_per_token * decode_1 / (gops * 1e9);
    let kv_bytes = config.bytes_kv_cache(64 + options.decode_tokens, options.kv_precision);
    let weights_rss = rss_loaded.saturating_sub(rss_start);
    eprintln!(
        "efficiency: {:.1} M weight operations per token x {decode_1:.1} tokens/s / \
         {gops:.1} GOPS = {:.0}%",
        ops_per_token / 1e6,
        100.0 * efficiency
    );
    eprintln!(
        "memory: GGUF {:.1} MB; resident after loading {:.1} MB (+{:.1} MB for the model), \
         at the end {:.1} MB; KV cache {:.1} MB per {}-token sequence",
        gguf_bytes as f64 / 1e6,
        rss_loaded as f64 / 1e6,
        weights_rss as f64 / 1e6,
        rss_end as f64 / 1e6,
        kv_bytes as f64 / 1e6,
        64 + options.decode_tokens
    );
    // Decoding reads every ternary matrix (and a full-precision head) once per token: its speed
    // is bounded by how fast one core reads memory (measured after the resident-memory figures,
    // the probe's buffer is big).
    let read_bandwidth = ternary::bandwidth::Probe::new().read_bandwidth(1)?;
    let weight_stream = (weight_bytes + head_bytes) as f64 * decode_1;
    eprintln!(
        "memory roofline: {:.1} MB of weights read per token ({:.1} MB ternary + {:.1} MB \
         full-precision head) x {decode_1:.1} tokens/s = {:.1} GB/s, {:.0}% of this machine's \
         1-thread read bandwidth ({:.1} GB/s)",
        (weight_bytes + head_bytes) as f64 / 1e6,
        weight_bytes as f64 / 1e6,
        head_bytes as f64 / 1e6,
        weight_stream / 1e9,
        100.0 * weight_stream / read_bandwidth,
        read_bandwidth / 1e9
    );
    // Concurrent streams share each weight pass, so their products are bounded by arithmetic, not
    // memory: the kernel's multiply instruction at full speed on every thread.
    let peak = ternary::peak::multiply_add_peak(kernel, options.threads)?;
    let streams_ceiling = peak.map(|p| p.ops_per_s / ops_per_token);
    if let (Some(p), Some(ceiling)) = (peak, streams_ceiling) {
        eprintln!(
            "compute roofline: {} peak on {} threads {:.1} GOPS / {:.1} M operations \
             per token = {ceiling:.0} tokens/s for the matrix products alone ({:.2}x the 1-stream \
             rate); {} streams ran at {many_rate:.1} tokens/s, {:.0}% of it",
            p.instruction,
            options.threads,
            p.ops_per_s / 1e9,
            ops_per_token / 1e6,
            ceiling / single_rate,
            options.streams,
            100.0 * many_rate / ceiling
        );
    }
    Ok(json!({
        "model": config,
        "gguf_bytes": gguf_bytes,
        "kernel": kernel.name(),
        "kv_cache": options.kv_precision.to_string(),
        "kernel_gops_1_thread": gops,
        "per_threads": per_threads,
        "engine": {
            "threads": options.threads,
            "single_stream_tokens_per_s": single_rate,
            "streams": options.streams,
            "aggregate_tokens_per_s": many_rate,
            "aggregate_over_single": many_rate / single_rate,
            "arithmetic_peak_gops": peak.map(|p| p.ops_per_s / 1e9),
            "products_ceiling_tokens_per_s": streams_ceiling,
        },
        "weight_ops_per_token": ops_per_token,
        "efficiency_1_thread": efficiency,
        "ternary_weight_bytes_per_token": weight_bytes,
        "head_table_bytes_per_token": head_bytes,
        "read_bandwidth_1_thread_bytes_per_s": read_bandwidth,
        "decode_1_thread_weight_bytes_per_s": weight_stream,
        "rss_bytes": {"start": rss_start, "loaded": rss_loaded, "end": rss_end},
        "kv_cache_bytes_per_sequence": kv_bytes,
    }))
}

/// The median of some rates.
fn median_of(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Writes a random-weight model of `preset` into `dir`.
fn random_model(preset: &str, dir: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    let config = ModelConfig::preset(preset).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let paths = model::testmodel::write_random_model(dir, preset, &config, 1)
        .map_err(|e| format!("writing a random {preset} model: {e}"))?;
    eprintln!(
        "wrote a random-weight {preset} model in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(paths)
}
