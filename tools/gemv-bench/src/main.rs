//! gemv-bench: throughput of every ternary kernel this CPU runs, against this machine's own memory
//! read bandwidth and each kernel's arithmetic peak (both measured at start). Thin binary: flags,
//! progress and printing; the measuring lives in `bench.rs`, the probes in libs/ternary
//! (`bandwidth.rs`, `peak.rs`).

mod bench;

use clap::Parser;
use std::process::ExitCode;
use ternary::Kernel;

const DEFAULT_SHAPES: [&str; 5] = [
    "2048x2048",
    "4096x4096",
    "4096x11008",
    "11008x4096",
    "8192x8192",
];

/// Measures ternary GEMV/GEMM throughput: GOPS (2·M·K·B / s), weight bytes read per second, and
/// two rooflines measured at start on each thread count: that rate as a share of this machine's
/// memory read bandwidth (a large-buffer read; what bounds batch 1), and GOPS as a share of the
/// kernel's arithmetic peak (the throughput of its multiply instruction, vpdpbusd or vpmaddubsw,
/// with nothing else running; what bounds large batches). Every figure is the median of repeated
/// runs, except the peak: the best of 7 (other work on the machine only ever lowers it).
///
/// Examples:
///   gemv-bench                                  # every kernel, the default shapes, 1 and all threads
///   gemv-bench --shape 4096x4096 --batch 1      # one shape, batch 1 only
///   gemv-bench --cold --shape 8192x8192         # weights streamed from memory, not cache
///   gemv-bench --kernel avx2 --threads 1 --json # machine-readable
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Matrix shape ROWSxCOLS (output × input features); repeat for several. Default: 2048x2048,
    /// 4096x4096, 4096x11008, 11008x4096, 8192x8192.
    #[arg(long = "shape", value_name = "MxK", value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,

    /// Kernel to measure (reference, scalar, avx2, avx512bw, avx512vnni); repeat for several.
    /// Default: every kernel this CPU runs except the Rust reference (the definition, not a
    /// kernel anyone runs for speed).
    #[arg(long = "kernel", value_name = "NAME", value_parser = parse_kernel)]
    kernels: Vec<Kernel>,

    /// Thread counts to measure, comma-separated; `all` means every core. Example: --threads 1,2
    #[arg(long, value_delimiter = ',', default_value = "1,all")]
    threads: Vec<String>,

    /// Activation vectors per call, comma-separated: 1 is GEMV, more is GEMM (one weight pass).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch: Vec<usize>,

    /// Timed samples per measurement; the median is reported.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeats: u32,

    /// Minimum duration of one sample in milliseconds (calls are repeated until it is reached).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    min_sample_ms: u64,

    /// Stream the weights from memory: every call reads a different copy of the matrix, the copies
    /// together several times larger than the last-level cache.
    #[arg(long)]
    cold: bool,

    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,

    /// Seed of the random weights and activations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_shape(text: &str) -> Result<(usize, usize), String> {
    let (m, k) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("shape {text:?} is not ROWSxCOLS, e.g. 4096x4096"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|&v| (1..=1 << 20).contains(&v))
            .ok_or_else(|| format!("{s:?} in shape {text:?} is not a size between 1 and 2^20"))
    };
    Ok((parse(m)?, parse(k)?))
}

fn parse_kernel(name: &str) -> Result<Kernel, String> {
    let kernel = Kernel::from_name(name).map_err(|e| e.to_string())?;
    if kernel.is_supported() {
        Ok(kernel)
    } else {
        Err(format!(
            "kernel {name} does not run on this CPU (needs {})",
            kernel.requirements()
        ))
    }
}

fn parse_threads(values: &[String]) -> Result<Vec<usize>, String> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::new();
    for value in values {
        let n = match value.trim() {
            "all" => all,
            v => v
                .parse::<usize>()
                .ok()
                .filter(|&n| (1..=1024).contains(&n))
                .ok_or_else(|| format!("--threads {v:?}: expected a count or `all`"))?,
        };
        if !threads.contains(&n) {
            threads.push(n);
        }
    }
    Ok(threads)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = match parse_threads(&args.threads) {
        Ok(t) => t,
        Err(message) => {
            eprintln!("gemv-bench: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(&b) = args.batch.iter().find(|&&b| b == 0 || b > 256) {
        eprintln!("gemv-bench: --batch {b}: expected 1 to 256 vectors");
        return ExitCode::from(2);
    }
    let shapes = if args.shapes.is_empty() {
        DEFAULT_SHAPES
            .iter()
            .map(|s| parse_shape(s).expect("valid default"))
            .collect()
    } else {
        args.shapes.clone()
    };
    let kernels = if args.kernels.is_empty() {
        Kernel::available()
            .into_iter()
            .filter(|&k| k != Kernel::Reference)
            .collect()
    } else {
        args.kernels.clone()
    };
    let plan = bench::Plan {
        shapes,
        kernels,
        threads,
        batches: args.batch.clone(),
        repeats: args.repeats as usize,
        min_sample: std::time::Duration::from_millis(args.min_sample_ms),
        cold: args.cold,
        seed: args.seed,
    };
    match bench::run(&plan) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("gemv-bench: {message}");
            ExitCode::from(1)
        }
    }
}
