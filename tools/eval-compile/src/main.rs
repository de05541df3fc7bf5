//! eval-compile: does the code a model writes compile, and do its tests pass?
//!
//! Samples `-n` completions for every task of a prompt set (from a GGUF model run in process, an
//! OpenAI-compatible server, or a file of completions), extracts the generated function, and
//! judges each with rustc in its own sandboxed temporary folder (libs/eval). Writes the summary
//! (JSON) and every sample with its verdict (JSONL). Exit codes: 0 evaluated (whatever the
//! rates); 1 the checker failed or no completion came back; 2 bad usage or bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use eval::{
    evaluate, load_prompts, Backend, CheckOptions, EvalSettings, Evaluation, FromFile, InProcess,
    Phase, Sampling, Sandbox, Server, Summary, Verdict,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const EXAMPLES: &str = "\
Examples:
  eval-compile --prompts data/prompts/rust_tasks.jsonl --model runs/tiny/model.gguf --out eval.json
  eval-compile --prompts humaneval_rs.jsonl --server http://127.0.0.1:8000 -n 10 --temperature 0.8
  eval-compile --prompts data/prompts/rust_tasks.jsonl --completions data/prompts/rust_tasks.solutions.jsonl

Prompt sets are JSONL: {\"name\", \"prompt\", optional \"tests\", optional \"stop_tokens\"}, the layout
of MultiPL-E's HumanEval-Rust and MBPP-Rust (read as they are). A prompt ends inside the function
to write; the completion is cut at a stop string or at the brace that closes the function. The
program prompt + body + closing braces must compile (rustc --edition 2021, library, metadata
only); when the task has tests, prompt + body + tests is built (with --test when they are #[test]
functions, as a binary when they are a fn main) and run.

Verdicts: compiles, tests_pass (successes); trivial (todo!(), unimplemented!(), panic!, loop {},
an empty body, a lone literal or default: compiles for almost any prompt, so a failure);
compile_error, compile_timeout, tests_fail, test_timeout, generation_error.

Sandbox: every sample in its own temporary folder (deleted afterwards), compiled and run inside
bubblewrap (bwrap): a read-only /usr and toolchain and nothing else of the system (no home, no
secrets), the sample's folder and a private /tmp as the only writable places, new user, PID and
network namespaces (no network; no process outlives the sample), an empty environment. The test
binary also runs unprivileged (as nobody when eval-compile runs as root) with a process limit,
CPU time, --memory-mb of virtual memory, 16 MB of output and no core files; rustc and the binary
are killed at their time limits. bubblewrap comes from --bwrap, $NANOCHAT_BWRAP, the project's
.tools/ (`make sandbox`) or the PATH; without it nothing runs unless --no-sandbox is given (then
a warning, and the summary's \"sandbox\" field says NONE).

Exit status: 0 evaluated, 1 the checker failed or no completion came back, 2 bad usage or input.";

/// Judge generated Rust by the compiler: compile rate, pass@k, trivial answers, errors, metrics.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// The prompt set (JSONL).
    ///
    /// Example: --prompts data/prompts/rust_tasks.jsonl
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,

    /// A model file to run in this process.
    ///
    /// Example: --model runs/tiny/model.gguf
    #[arg(long, value_name = "FILE", group = "source")]
    model: Option<PathBuf>,

    /// Its .mhc file (default: beside --model, extension .mhc).
    #[arg(long, value_name = "FILE", requires = "model")]
    mhc: Option<PathBuf>,

    /// An OpenAI-compatible server instead (POST <URL>/v1/completions, plain HTTP).
    ///
    /// Example: --server http://127.0.0.1:8000
    #[arg(long, value_name = "URL", group = "source")]
    server: Option<String>,

    /// The "model" field sent to --server.
    #[arg(long, value_name = "NAME", default_value = "default")]
    server_model: String,

    /// Requests to --server in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,

    /// Seconds a --server request may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    request_timeout: f64,

    /// Completions from a JSONL file of {"name", "body"} or {"name", "completion"} (one per
    /// task) instead of a model: checks a prompt set against its reference solutions.
    ///
    /// Example: --completions data/prompts/rust_tasks.solutions.jsonl
    #[arg(long, value_name = "FILE", group = "source")]
    completions: Option<PathBuf>,

    /// Samples per prompt.
    #[arg(short = 'n', long = "samples", value_name = "N", default_value_t = 1)]
    samples: usize,

    /// Sampling temperature (0 = greedy).
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    temperature: f32,

    /// Nucleus sampling (1 = off).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    top_p: f32,

    /// Most tokens per completion.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_tokens: usize,

    /// Seed of the sampling (each sample gets its own stream derived from it).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Only the first N prompts of the set.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    /// Checks (rustc runs) at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,

    /// Compute threads of the in-process model (default: the number of cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Seconds each rustc run may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    compile_timeout: f64,

    /// Seconds a test binary may run before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    run_timeout: f64,

    /// Virtual memory of a test binary, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    memory_mb: u64,

    /// The bubblewrap binary that confines compiles and test runs (default: $NANOCHAT_BWRAP,
    /// the project's .tools/usr/bin/bwrap from `make sandbox`, or bwrap on the PATH).
    ///
    /// Example: --bwrap /usr/bin/bwrap
    #[arg(long, value_name = "PATH")]
    bwrap: Option<PathBuf>,

    /// Run generated code UNCONFINED where bubblewrap cannot run (it can then read and write
    /// whatever you can, use the network and leave processes behind). Said in the summary.
    #[arg(long)]
    no_sandbox: bool,

    /// The rustc to check with.
    #[arg(long, value_name = "PATH", default_value = "rustc")]
    rustc: PathBuf,

    /// Write the summary (JSON) here.
    ///
    /// Example: --out runs/tiny/eval.json
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Write every sample and its verdict (JSONL) here (default: --out with .samples.jsonl).
    #[arg(long, value_name = "FILE")]
    samples_out: Option<PathBuf>,

    /// Print the summary as JSON on stdout instead of text on stderr.
    #[arg(long)]
    json: bool,
}

enum Failure {
    Usage(String),
    Failed(String),
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("eval-compile") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("eval-compile: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("eval-compile: {message}");
            ExitCode::from(1)
        }
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, Failure> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Failure::Usage(format!(
            "--{flag} must be a positive number of seconds"
        )))
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if cli.samples == 0 || cli.max_tokens == 0 || cli.memory_mb == 0 {
        return Err(Failure::Usage(
            "-n, --max-tokens and --memory-mb must be at least 1".into(),
        ));
    }
    let temperature_ok = cli.temperature.is_finite() && cli.temperature >= 0.0;
    let top_p_ok = cli.top_p > 0.0 && cli.top_p <= 1.0;
    if !(temperature_ok && top_p_ok) {
        return Err(Failure::Usage(
            "--temperature must be >= 0 and --top-p in (0, 1]".into(),
        ));
    }
    let options = CheckOptions {
        rustc: cli.rustc.clone(),
        compile_timeout: seconds("compile-timeout", cli.compile_timeout)?,
        run_timeout: seconds("run-timeout", cli.run_timeout)?,
        memory_limit_mb: cli.memory_mb,
        bwrap: cli.bwrap.clone(),
        no_sandbox: cli.no_sandbox,
    };
    let mut tasks = load_prompts(&cli.prompts).map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(limit) = cli.limit {
        tasks.truncate(limit.max(1));
    }
    let sandbox = Sandbox::new(options).map_err(Failure::Usage)?;
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| Failure::Failed(format!("cannot start {n} compute threads: {e}")))?;
    }
    let backend = backend(cli)?;
    let settings = EvalSettings {
        samples: cli.samples,
        sampling: Sampling {
            temperature: cli.temperature,
            top_p: cli.top_p,
            max_tokens: cli.max_tokens,
        },
        seed: cli.seed,
        jobs: cli.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        }),
    };
    let total = (tasks.len() * cli.samples) as u64;
    let bar = ProgressBar::with_draw_target(Some(2 * total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("generating");
    let progress = |phase: Phase, done: usize| {
        if phase == Phase::Checking {
            bar.set_prefix("checking");
        }
        bar.inc(done as u64);
    };
    let evaluation = evaluate(&tasks, backend.as_ref(), settings, &sandbox, &progress)
        .map_err(Failure::Failed)?;
    bar.finish_and_clear();
    let summary = &evaluation.summary;
    if summary.verdicts[Verdict::GenerationError.as_str()] == summary.samples {
        let first = evaluation.samples[0].detail.clone().unwrap_or_default();
        return Err(Failure::Failed(format!(
            "no completion came back ({first})"
        )));
    }
    write_outputs(cli, &evaluation)?;
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(summary).unwrap_or_default()
        );
    } else {
        eprint!("{}", render(summary));
    }
    Ok(())
}

fn backend(cli: &Cli) -> Result<Box<dyn Backend>, Failure> {
    if let Some(path) = &cli.model {
        let engine = model::load_engine(path, cli.mhc.as_deref(), model::EngineOptions::default())
            .map_err(|e| Failure::Usage(e.to_string()))?;
        return Ok(Box::new(InProcess { engine }));
    }
    if let Some(url) = &cli.server {
        if !url.starts_with("http://") {
            return Err(Failure::Usage(format!(
                "--server {url}: only plain http:// URLs are supported"
            )));
        }
        return Ok(Box::new(Server {
            base_url: url.clone(),
            model: cli.server_model.clone(),
            concurrency: cli.concurrency.max(1),
            timeout: seconds("request-timeout", cli.request_timeout)?,
        }));
    }
    if let Some(path) = &cli.completions {
        return Ok(Box::new(FromFile::load(path).map_err(Failure::Usage)?));
    }
    Err(Failure::Usage(
        "give one of --model, --server or --completions".into(),
    ))
}

/// Writes `text` to `path` whole or not at all (a temporary file beside it, then a rename).
fn write_atomic(path: &Path, text: &str) -> Result<(), Failure> {
    let failed = |e: &dyn std::fmt::Display| Failure::Failed(format!("{}: {e}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| failed(&e))?;
    file.write_all(text.as_bytes()).map_err(|e| failed(&e))?;
    file.persist(path).map_err(|e| failed(&e.error))?;
    Ok(())
}

fn write_outputs(cli: &Cli, evaluation: &Evaluation) -> Result<(), Failure> {
    let samples_path = cli.samples_out.clone().or_else(|| {
        cli.out
            .as_ref()
            .map(|out| out.with_extension("samples.jsonl"))
    });
    if let Some(path) = samples_path {
        let mut lines = String::new();
        for sample in &evaluation.samples {
            lines.push_str(&serde_json::to_string(sample).unwrap_or_default());
            lines.push('\n');
        }
        write_atomic(&path, &lines)?;
    }
    if let Some(path) = &cli.out {
        let json = serde_json::to_string_pretty(&evaluation.summary).unwrap_or_default();
        write_atomic(path, &(json + "\n"))?;
    }
    Ok(())
}

fn render(s: &Summary) -> String {
    let percent = |x: f64| format!("{:.1} %", 100.0 * x);
    let mut out = format!(
        "{}: {} prompts ({} with tests) x {} samples, temperature {}\n",
        s.model, s.prompts, s.prompts_with_tests, s.samples_per_prompt, s.temperature
    );
    out += &format!(
        "  compile success {}   success {}   trivial {}\n",
        percent(s.compile_success_rate),
        percent(s.success_rate),
        percent(s.trivial_rate)
    );
    let mut ks: Vec<_> = s.pass_at_k.iter().collect();
    ks.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(0));
    for (k, p) in ks {
        out += &format!("  pass@{k} {}\n", percent(*p));
    }
    let verdicts: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| (v.as_str(), s.verdicts.get(v.as_str()).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    out += &format!("  verdicts: {}\n", verdicts.join(", "));
    out += &format!("  sandbox: {}\n", s.sandbox);
    if let (Some(lines), Some(cc)) = (s.mean_lines, s.mean_cyclomatic) {
        out += &format!(
            "  {} bodies parse: mean {lines:.1} lines, cyclomatic complexity {cc:.2}\n",
            s.parsed_samples
        );
    }
    if !s.top_errors.is_empty() {
        let errors: Vec<String> = s
            .top_errors
            .iter()
            .take(5)
            .map(|(code, n)| format!("{code} ({n})"))
            .collect();
        out += &format!("  top errors: {}\n", errors.join(", "));
    }
    if s.completion_tokens > 0 {
        out += &format!(
            "  generation {:.1} s, {:.1} tokens/s; checks {:.1} s\n",
            s.generation_seconds, s.tokens_per_second, s.check_seconds
        );
    }
    out
}
