//! The measurements: for every (shape, kernel, threads, batch) the median time of one call over
//! repeated samples, turned into GOPS, weight bytes per second, a share of the measured read
//! bandwidth at the same thread count (the memory roofline) and a share of the kernel's measured
//! arithmetic peak at that thread count (the compute roofline, which bounds large batches).

use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use ternary::bandwidth::Probe;
use ternary::peak;
use ternary::{
    kernels, synthetic, CodeLayout, Kernel, KernelError, PlanarWeights, QuantizedBatch,
    GROUP_CODE_BYTES,
};

/// With `--cold`, the copies of a matrix together take at least this many bytes, far beyond any
/// last-level cache of the machines this runs on (32 MiB here).
const COLD_SET_BYTES: usize = 1 << 30;

/// What to measure.
pub struct Plan {
    pub shapes: Vec<(usize, usize)>,
    pub kernels: Vec<Kernel>,
    pub threads: Vec<usize>,
    pub batches: Vec<usize>,
    pub repeats: usize,
    pub min_sample: Duration,
    pub cold: bool,
    pub seed: u64,
}

/// One measured configuration.
pub struct Row {
    kernel: Kernel,
    shape: (usize, usize),
    threads: usize,
    batch: usize,
    seconds: f64,
    gops: f64,
    weight_bytes_per_s: f64,
    bandwidth_share: f64,
    /// GOPS over the kernel's arithmetic peak on as many threads; `None` without a probe.
    peak_share: Option<f64>,
}

/// The arithmetic peak of one kernel on some threads.
struct KernelPeak {
    kernel: Kernel,
    threads: usize,
    peak: peak::Peak,
}

pub struct Report {
    cpu: String,
    cold: bool,
    bandwidth: Vec<(usize, f64)>,
    peaks: Vec<KernelPeak>,
    rows: Vec<Row>,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Where `item` comes in `items` (the plan's order of shapes, batches, kernels, thread counts).
fn position<T: PartialEq>(items: &[T], item: T) -> Option<usize> {
    items.iter().position(|i| *i == item)
}

/// Bytes a call reads from the weights: 32 bytes of codes and one f32 scale per group of 128.
fn weight_bytes(w: &PlanarWeights) -> usize {
    w.rows() * w.groups() * (GROUP_CODE_BYTES + 4)
}

/// Median seconds of one call of `call(i)` (i counts calls, to rotate cold copies).
fn median_call_time(repeats: usize, min_sample: Duration, mut call: impl FnMut(usize)) -> f64 {
    call(0); // warm-up: page faults, thread start, caches
    let mut calls = 1;
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let (start, mut n) = (Instant::now(), 0usize);
            while n == 0 || start.elapsed() < min_sample {
                call(calls);
                calls += 1;
                n += 1;
            }
            start.elapsed().as_secs_f64() / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median seconds of one `kernel` call on `threads` threads (of the current pool) over the
/// batch `x`, call `i` reading `weights[i % weights.len()]` (one matrix, or its cold copies).
fn call_time(
    plan: &Plan,
    kernel: Kernel,
    threads: usize,
    weights: &[PlanarWeights],
    x: &QuantizedBatch,
) -> Result<f64, KernelError> {
    let mut y = vec![0f32; weights[0].rows() * x.batch()];
    let mut error = None;
    let seconds = median_call_time(plan.repeats, plan.min_sample, |i| {
        let w = &weights[i % weights.len()];
        let result = if threads == 1 {
            kernels::gemm(kernel, w, x, &mut y)
        } else {
            kernels::par_gemm(kernel, w, x, &mut y)
        };
        if let Err(e) = result {
            error.get_or_insert(e);
        }
        black_box(&y);
    });
    error.map_or(Ok(seconds), Err)
}

pub fn run(plan: &Plan) -> Result<Report, String> {
    eprintln!("gemv-bench: measuring memory read bandwidth...");
    let probe = Probe::new();
    let mut bandwidth = Vec::new();
    for &t in &plan.threads {
        let rate = probe.read_bandwidth(t)?;
        eprintln!("  read bandwidth, {t} thread(s): {:.1} GB/s", rate / 1e9);
        bandwidth.push((t, rate));
    }
    drop(probe);
    let mut peaks = Vec::new();
    for &kernel in &plan.kernels {
        for &threads in &plan.threads {
            if let Some(peak) = peak::multiply_add_peak(kernel, threads)? {
                eprintln!(
                    "  arithmetic peak, {kernel} ({}), {threads} thread(s): {:.1} GOPS",
                    peak.instruction,
                    peak.ops_per_s / 1e9
                );
                peaks.push(KernelPeak {
                    kernel,
                    threads,
                    peak,
                });
            }
        }
    }
    let pools = plan
        .threads
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| format!("cannot start {t} threads: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut rows = Vec::new();
    for &(m, k) in &plan.shapes {
        let w = PlanarWeights::from_f32(m, k, &synthetic::uniform_values(m * k, plan.seed))
            .map_err(|e| e.to_string())?;
        let bytes = weight_bytes(&w);
        let copies = if plan.cold {
            COLD_SET_BYTES.div_ceil(bytes).max(2)
        } else {
            1
        };
        // One set of weights at a time in each code layout the kernels read (the cold set is
        // large); the rows are put back in the plan's order at the end.
        let mut layouts: Vec<CodeLayout> = Vec::new();
        for layout in plan.kernels.iter().map(|k| k.code_layout()) {
            if !layouts.contains(&layout) {
                layouts.push(layout);
            }
        }
        let inputs: Vec<(usize, QuantizedBatch)> = plan
            .batches
            .iter()
            .map(|&batch| {
                let x = synthetic::uniform_values(k * batch, plan.seed + 1);
                (batch, QuantizedBatch::quantize(&x, k))
            })
            .collect();
        for layout in layouts {
            let weights: Vec<PlanarWeights> = vec![w.clone().into_layout(layout); copies];
            for &(batch, ref x) in &inputs {
                for &kernel in plan.kernels.iter().filter(|k| k.code_layout() == layout) {
                    for (&threads, pool) in plan.threads.iter().zip(&pools) {
                        eprint!("  {kernel:>10} {m}x{k} batch {batch:>2} threads {threads}...");
                        let seconds = pool
                            .install(|| call_time(plan, kernel, threads, &weights, x))
                            .map_err(|e| format!("{kernel} {m}x{k}: {e}"))?;
                        let rate = bandwidth
                            .iter()
                            .find(|(t, _)| *t == threads)
                            .map_or(f64::NAN, |&(_, r)| r);
                        let ops_per_s = 2.0 * (m * k * batch) as f64 / seconds;
                        let row = Row {
                            kernel,
                            shape: (m, k),
                            threads,
                            batch,
                            seconds,
                            gops: ops_per_s / 1e9,
                            weight_bytes_per_s: bytes as f64 / seconds,
                            bandwidth_share: bytes as f64 / seconds / rate,
                            peak_share: peaks
                                .iter()
                                .find(|p| p.kernel == kernel && p.threads == threads)
                                .map(|p| ops_per_s / p.peak.ops_per_s),
                        };
                        eprintln!(" {:.1} GOPS", row.gops);
                        rows.push(row);
                    }
                }
            }
        }
    }
    rows.sort_by_key(|r| {
        (
            position(&plan.shapes, r.shape),
            position(&plan.batches, r.batch),
            position(&plan.kernels, r.kernel),
            position(&plan.threads, r.threads),
        )
    });
    Ok(Report {
        cpu: cpu_name(),
        cold: plan.cold,
        bandwidth,
        peaks,
        rows,
    })
}

impl Report {
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "cpu: {}   weights: {}\n",
            self.cpu,
            if self.cold {
                "cold (streamed from memory)"
            } else {
                "warm (repeated, cache-resident where they fit)"
            }
        );
        for (t, rate) in &self.bandwidth {
            out += &format!(
                "memory read bandwidth, {t} thread(s): {:.2} GB/s\n",
                rate / 1e9
            );
        }
        for p in &self.peaks {
            out += &format!(
                "arithmetic peak, {} ({}), {} thread(s): {:.1} GOPS\n",
                p.kernel.name(),
                p.peak.instruction,
                p.threads,
                p.peak.ops_per_s / 1e9
            );
        }
        out += &format!(
            "{:<11} {:>11} {:>7} {:>5} {:>11} {:>8} {:>10} {:>7} {:>6}\n",
            "kernel",
            "shape",
            "threads",
            "batch",
            "median_us",
            "GOPS",
            "weight_GB/s",
            "%read_bw",
            "%peak"
        );
        for r in &self.rows {
            let peak_share = r
                .peak_share
                .map_or("-".to_string(), |s| format!("{:.1}", s * 100.0));
            out += &format!(
                "{:<11} {:>11} {:>7} {:>5} {:>11.1} {:>8.1} {:>10.2} {:>7.1} {:>6}\n",
                r.kernel.name(),
                format!("{}x{}", r.shape.0, r.shape.1),
                r.threads,
                r.batch,
                r.seconds * 1e6,
                r.gops,
                r.weight_bytes_per_s / 1e9,
                r.bandwidth_share * 100.0,
                peak_share
            );
        }
        out
    }

    pub fn to_json(&self) -> String {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "kernel": r.kernel.name(),
                    "rows": r.shape.0,
                    "cols": r.shape.1,
                    "threads": r.threads,
                    "batch": r.batch,
                    "median_seconds": r.seconds,
                    "gops": r.gops,
                    "weight_bytes_per_second": r.weight_bytes_per_s,
                    "read_bandwidth_share": r.bandwidth_share,
                    "peak_share": r.peak_share,
                })
            })
            .collect();
        let bandwidth: Vec<_> = self
            .bandwidth
            .iter()
            .map(|(t, rate)| json!({"threads": t, "bytes_per_second": rate}))
            .collect();
        let peaks: Vec<_> = self
            .peaks
            .iter()
            .map(|p| {
                json!({
                    "kernel": p.kernel.name(),
                    "instruction": p.peak.instruction,
                    "threads": p.threads,
                    "gops": p.peak.ops_per_s / 1e9,
                })
            })
            .collect();
        json!({
            "cpu": self.cpu,
            "cold": self.cold,
            "read_bandwidth": bandwidth,
            "arithmetic_peak": peaks,
            "results": rows,
        })
        .to_string()
    }
}
