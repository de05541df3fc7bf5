//! serve: the OpenAI-compatible HTTP server of a nanochat model, or (with `--prompt`) one
//! completion printed on stdout.
//!
//! `serve --model M.gguf [--mhc M.mhc] [--host H --port P ...]` listens until SIGINT/SIGTERM and
//! prints `serve: listening on http://HOST:PORT` on stderr once ready (port 0 picks a free port).
//! `serve --model M.gguf --prompt TEXT [--chat] [--max-tokens N ...]` streams the completion to
//! stdout. `--echo-backend` replaces the model by a stand-in that echoes the prompt, for testing
//! the HTTP layer and the chat page. Exit codes: 0 done (also after a signal), 1 the generation
//! failed or its output could not be written, 2 bad usage, a model that does not load, a bad
//! prompt, an address that cannot be bound (one line on stderr).
//!
//! This file parses flags into validated [`Settings`] (two stages), opens the backend and runs one
//! mode; the server itself is the library (src/lib.rs).

use std::fs::File;
use std::io::{self, Read, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use model::{ChatMessage, EngineOptions, GenerationRequest, KvPrecision, SamplingParams};
use serve::access::{self, Access};
use serve::api;
use serve::backend::{self, Backend, EchoBackend, FollowError};
use serve::bench::{self, BenchOptions};
use serve::server::{self, Server};
use sha2::{Digest, Sha256};

/// Context length of the echo backend.
const ECHO_CONTEXT: usize = 4096;
/// Delay of the echo backend before each character, so streaming is visible.
const ECHO_DELAY: Duration = Duration::from_millis(10);

const EXAMPLES: &str = "\
Examples:
  serve --model model.gguf                        serve on http://127.0.0.1:8000 (chat page at /)
  serve --model model.gguf --port 0 --max-batch 4 a free port, printed on stderr
  serve --model model.gguf --prompt 'fn main() {' --max-tokens 64
                                                  one completion on stdout
  echo 'Write hello world in Rust' | serve --model model.gguf --prompt - --chat --temperature 0.7
  serve --echo-backend --port 0                   no model: replies echo the prompt
  curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}'

Routes: POST /v1/chat/completions, POST /v1/completions (OpenAI request and response shapes,
\"stream\": true for server-sent events, stream_options.include_usage), GET /v1/models and
GET /v1/models/{id} (with the model file's sha256), GET /health (status and engine load),
GET /metrics (OpenMetrics text for Prometheus), GET / (a chat page), OPTIONS (CORS preflight).
Besides OpenAI's fields, requests take top_k and repetition_penalty. Errors are OpenAI error
objects with status 400 (bad field or framing; prompt over the context: code
context_length_exceeded), 401 (API key), 403 (foreign Origin or Host), 404, 405, 408 (body stopped
arriving), 413, 415 (POST body not application/json), 429 (rate limit, with Retry-After), 431
(headers over 16 KiB or 100), 500 or 503 (shutting down, or --max-connections open).

Limits: a body over --max-body-bytes gets 413 before it is read; max_tokens over
--max-tokens-cap gets 400, and the default is the cap, both cut to the room the context leaves
after the prompt; a prompt that cannot fit the context is refused before it is tokenized whole.
A request still running after --request-timeout-s is cancelled and answered with its text so far
and finish reason \"length\". A client that disconnects, or stops reading for
--write-timeout-s, cancels its request. One log line per request on stderr (RUST_LOG=warn: none).

SIGINT or SIGTERM stops the server: running requests end with an error event, then it exits 0;
a second signal exits at once.

Exit status: 0 ok, 1 the generation failed or stdout could not be written, 2 bad usage, a model
that does not load, a bad prompt, or an address that cannot be bound.";

/// Serve a nanochat model over an OpenAI-compatible HTTP API with a web chat page, or complete one
/// prompt on stdout (--prompt).
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// The model: a GGUF file written by quantize-export.
    ///
    /// Example: --model runs/tiny/model.gguf
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["echo_backend", "bench"]
    )]
    model: Option<PathBuf>,

    /// The model's .mhc file (default: the .mhc beside the GGUF, when the model has mHC streams).
    ///
    /// Example: --mhc runs/tiny/model.mhc
    #[arg(long, value_name = "FILE", requires = "model")]
    mhc: Option<PathBuf>,

    /// Instead of a model, a stand-in that replies with the last user message (or the prompt),
    /// one character every 10 ms; context 4096 tokens of one byte each. For testing the HTTP layer,
    /// clients and the chat page without a model file.
    ///
    /// Example: serve --echo-backend --port 0
    #[arg(long, conflicts_with_all = ["model", "mhc"])]
    echo_backend: bool,

    /// Measure instead of serving: prefill and decode tokens/s on 1 and --threads threads,
    /// sequences decoded together, concurrent streams through the scheduler, the kernel's
    /// single-thread GEMV GOPS in the same process, end-to-end efficiency, resident memory, the
    /// memory roofline of decoding and the compute roofline of concurrent streams.
    /// Without --model, a random-weight model of --bench-preset is written to a temporary folder.
    ///
    /// Example: serve --bench --threads 2 --json
    #[arg(long, conflicts_with_all = ["echo_backend", "prompt"], help_heading = "Benchmark")]
    bench: bool,

    /// Preset of the random-weight model --bench builds when no --model is given.
    ///
    /// Example: --bench-preset tiny
    #[arg(
        long,
        value_name = "PRESET",
        default_value = "nano-125m",
        requires = "bench",
        help_heading = "Benchmark"
    )]
    bench_preset: String,

    /// Prompt length of the prefill measurement.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        requires = "bench",
        help_heading = "Benchmark"
    )]
    bench_prompt_tokens: usize,

    /// Tokens decoded per decode measurement (and per stream).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        requires = "bench",
        help_heading = "Benchmark"
    )]
    bench_decode_tokens: usize,

    /// Concurrent streams of the batched measurements.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        requires = "bench",
        help_heading = "Benchmark"
    )]
    bench_streams: usize,

    /// Repeats of the prefill, kernel and engine measurements (medians are reported).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        requires = "bench",
        help_heading = "Benchmark"
    )]
    bench_repeats: usize,

    /// Print the benchmark report as JSON on stdout.
    #[arg(long, requires = "bench", help_heading = "Benchmark")]
    json: bool,

    /// Complete TEXT (`-`: read it from stdin), print the completion and a newline on stdout, and
    /// exit instead of serving; a summary line goes to stderr.
    ///
    /// Example: --prompt 'fn fibonacci(n: u64) -> u64 {'
    #[arg(long, value_name = "TEXT", help_heading = "One completion (CLI mode)")]
    prompt: Option<String>,

    /// Wrap the prompt in the chat template as one user message, so the model answers it.
    ///
    /// Example: --prompt 'Write a function that reverses a string' --chat
    #[arg(long, requires = "prompt", help_heading = "One completion (CLI mode)")]
    chat: bool,

    /// Most tokens to generate (default: as many as the context leaves).
    ///
    /// Example: --max-tokens 128
    #[arg(
        long,
        value_name = "N",
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    max_tokens: Option<usize>,

    /// Sampling temperature, 0 to 2; 0 always takes the most likely token.
    ///
    /// Example: --temperature 0.8
    #[arg(
        long,
        value_name = "T",
        default_value_t = 0.0,
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    temperature: f32,

    /// Sample among the K most likely tokens only (0: all).
    ///
    /// Example: --top-k 40
    #[arg(
        long,
        value_name = "K",
        default_value_t = 0,
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    top_k: usize,

    /// Sample among the most likely tokens whose probabilities sum to P (above 0, at most 1).
    ///
    /// Example: --top-p 0.9
    #[arg(
        long,
        value_name = "P",
        default_value_t = 1.0,
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    top_p: f32,

    /// Above 1, discourages tokens already in the prompt or the completion (1: off).
    ///
    /// Example: --repetition-penalty 1.1
    #[arg(
        long,
        value_name = "R",
        default_value_t = 1.0,
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    repetition_penalty: f32,

    /// Seed of the sampler: the same seed and settings give the same completion.
    ///
    /// Example: --seed 42
    #[arg(
        long,
        value_name = "S",
        default_value_t = 0,
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    seed: u64,

    /// End the completion where TEXT appears (not printed); repeat for several.
    ///
    /// Example: --stop '}' --stop '\n\n'
    #[arg(
        long,
        value_name = "TEXT",
        requires = "prompt",
        help_heading = "One completion (CLI mode)"
    )]
    stop: Vec<String>,

    /// Threads of the compute pool (default: one per core).
    ///
    /// Example: --threads 8
    #[arg(long, value_name = "N", help_heading = "Engine")]
    threads: Option<usize>,

    /// Requests decoded together; more wait in the engine's queue.
    ///
    /// Example: --max-batch 4
    #[arg(long, value_name = "N", default_value_t = EngineOptions::default().max_batch, help_heading = "Engine")]
    max_batch: usize,

    /// Prompt tokens prefilled per step and request (long prompts take several steps, so running
    /// streams keep flowing).
    ///
    /// Example: --prefill-chunk 512
    #[arg(long, value_name = "N", default_value_t = EngineOptions::default().prefill_chunk, help_heading = "Engine")]
    prefill_chunk: usize,

    /// How the KV cache stores keys and values: f16 (half the memory, and faster attention over
    /// long contexts and many streams) or f32 (exactly the activations the training graph
    /// computes).
    ///
    /// Example: --kv-cache f32
    #[arg(long, value_name = "TYPE", default_value_t = EngineOptions::default().kv_precision, help_heading = "Engine")]
    kv_cache: KvPrecision,

    /// Address to listen on (0.0.0.0: every interface).
    ///
    /// Example: --host 0.0.0.0
    #[arg(
        long,
        value_name = "HOST",
        default_value = "127.0.0.1",
        help_heading = "Server"
    )]
    host: String,

    /// Port to listen on (0: a free port, printed on stderr).
    ///
    /// Example: --port 8080
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 8000,
        help_heading = "Server"
    )]
    port: u16,

    /// The most generation requests handled at once, streams included (default: --max-batch +
    /// 4); more wait for a slot. /health, /metrics and /v1/models never wait for one.
    ///
    /// Example: --workers 32
    #[arg(long, value_name = "N", help_heading = "Server")]
    workers: Option<usize>,

    /// Largest request body in bytes; larger ones get 413.
    ///
    /// Example: --max-body-bytes 4194304
    #[arg(long, value_name = "BYTES", default_value_t = server::Config::default().max_body_bytes, help_heading = "Server")]
    max_body_bytes: usize,

    /// Largest max_tokens a request may ask for (400 above it), and the default when it asks
    /// for none.
    ///
    /// Example: --max-tokens-cap 512
    #[arg(
        long,
        value_name = "N",
        default_value_t = server::Config::default().max_tokens_cap,
        help_heading = "Server"
    )]
    max_tokens_cap: usize,

    /// Wall-time limit of a request in seconds: then it is cancelled and answered with its text
    /// so far and finish reason "length".
    ///
    /// Example: --request-timeout-s 60
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = server::Config::default().request_timeout.as_secs_f64(),
        help_heading = "Server"
    )]
    request_timeout_s: f64,

    /// The most connections open at once; more get 503 and are closed.
    ///
    /// Example: --max-connections 1024
    #[arg(long, value_name = "N", default_value_t = server::Config::default().max_connections, help_heading = "Server")]
    max_connections: usize,

    /// Seconds a client may stay silent while it owes a request head or body bytes, and a
    /// keep-alive connection may stay idle (then it is closed); a request head must also arrive
    /// whole within it.
    ///
    /// Example: --read-timeout-s 30
    #[arg(long, value_name = "SECONDS", default_value_t = server::Config::default().read_timeout.as_secs_f64(), help_heading = "Server")]
    read_timeout_s: f64,

    /// Seconds a write may wait for a client that does not read (then the connection is closed
    /// and its request cancelled).
    ///
    /// Example: --write-timeout-s 60
    #[arg(long, value_name = "SECONDS", default_value_t = server::Config::default().write_timeout.as_secs_f64(), help_heading = "Server")]
    write_timeout_s: f64,

    /// Require `Authorization: Bearer KEY` on /v1 routes and /metrics (401 otherwise); / and
    /// /health stay open. Prefer the environment variable: a flag shows in the process list.
    ///
    /// Example: NANOCHAT_API_KEY=$(cat key.txt) serve --model m.gguf
    #[arg(
        long,
        value_name = "KEY",
        env = "NANOCHAT_API_KEY",
        hide_env_values = true,
        help_heading = "Access"
    )]
    api_key: Option<String>,

    /// A web origin allowed to call the API from a browser (CORS), and whose host name may be
    /// the request's Host; repeat for several, `*` for any. Without it only this server's own
    /// page, and clients that send no Origin (curl, SDKs), get answers; Host must be an IP
    /// address or localhost.
    ///
    /// Example: --allow-origin http://localhost:3000
    #[arg(long, value_name = "ORIGIN", help_heading = "Access")]
    allow_origin: Vec<String>,

    /// Requests a minute per client IP address (429 with Retry-After beyond it; /health is not
    /// counted).
    ///
    /// Example: --rate-limit 60/min
    #[arg(long, value_name = "N/min", value_parser = access::parse_rate_limit, help_heading = "Access")]
    rate_limit: Option<NonZeroU32>,
}

/// Where the model comes from.
enum Source {
    Model { gguf: PathBuf, mhc: Option<PathBuf> },
    Echo,
}

/// What to do with it.
enum Mode {
    /// Complete one prompt on stdout.
    Generate {
        /// The prompt, or `-` for stdin.
        prompt: String,
        chat: bool,
        max_tokens: Option<usize>,
        sampling: SamplingParams,
        stop: Vec<String>,
    },
    Serve {
        addr: String,
        config: server::Config,
    },
    Bench {
        options: BenchOptions,
        json: bool,
    },
}

/// Validated flags.
struct Settings {
    source: Source,
    engine: EngineOptions,
    threads: Option<usize>,
    mode: Mode,
}

/// Why a run stopped.
enum Failure {
    /// Bad usage or input: exit 2.
    Input(String),
    /// The job failed: exit 1.
    Failed(String),
    /// Writing stdout failed (a closed pipe is not an error).
    Output(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

/// Checks the flags and builds the settings the run takes.
fn settings(cli: Cli) -> Result<Settings, String> {
    let at_least_one = |flag: &str, value: usize| {
        if value == 0 {
            Err(format!("--{flag} must be at least 1"))
        } else {
            Ok(value)
        }
    };
    let source = match cli.model.clone() {
        Some(gguf) => Source::Model {
            gguf,
            mhc: cli.mhc.clone(),
        },
        None => Source::Echo,
    };
    let engine = EngineOptions {
        max_batch: at_least_one("max-batch", cli.max_batch)?,
        prefill_chunk: at_least_one("prefill-chunk", cli.prefill_chunk)?,
        kv_precision: cli.kv_cache,
    };
    let threads = cli
        .threads
        .map(|n| at_least_one("threads", n))
        .transpose()?;
    if cli.bench {
        let options = BenchOptions {
            model: cli.model,
            mhc: cli.mhc,
            preset: cli.bench_preset,
            prompt_tokens: at_least_one("bench-prompt-tokens", cli.bench_prompt_tokens)?,
            decode_tokens: at_least_one("bench-decode-tokens", cli.bench_decode_tokens)?,
            streams: at_least_one("bench-streams", cli.bench_streams)?,
            threads: threads.unwrap_or_else(rayon::current_num_threads),
            repeats: at_least_one("bench-repeats", cli.bench_repeats)?,
            kv_precision: cli.kv_cache,
        };
        return Ok(Settings {
            source: Source::Echo,
            engine,
            threads,
            mode: Mode::Bench {
                options,
                json: cli.json,
            },
        });
    }
    let mode = match cli.prompt {
        Some(prompt) => {
            let sampling = SamplingParams {
                temperature: cli.temperature,
                top_k: cli.top_k,
                top_p: cli.top_p,
                repetition_penalty: cli.repetition_penalty,
                seed: cli.seed,
            };
            api::check_sampling(&sampling).map_err(|e| {
                // "'top_p' must be ..." becomes "--top-p must be ...".
                let param = e.param.unwrap_or_default();
                let flag = format!("--{}", param.replace('_', "-"));
                e.message.replace(&format!("'{param}'"), &flag)
            })?;
            Mode::Generate {
                prompt,
                chat: cli.chat,
                max_tokens: cli
                    .max_tokens
                    .map(|n| at_least_one("max-tokens", n))
                    .transpose()?,
                sampling,
                stop: cli.stop,
            }
        }
        None => {
            let seconds = |flag: &str, value: f64| {
                Duration::try_from_secs_f64(value)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("--{flag} must be above 0, got {value}"))
            };
            let host = if cli.host.contains(':') && !cli.host.starts_with('[') {
                format!("[{}]", cli.host) // an IPv6 address
            } else {
                cli.host
            };
            Mode::Serve {
                addr: format!("{host}:{}", cli.port),
                config: server::Config {
                    workers: at_least_one(
                        "workers",
                        cli.workers.unwrap_or(cli.max_batch.saturating_add(4)),
                    )?,
                    max_body_bytes: at_least_one("max-body-bytes", cli.max_body_bytes)?,
                    max_tokens_cap: at_least_one("max-tokens-cap", cli.max_tokens_cap)?,
                    request_timeout: seconds("request-timeout-s", cli.request_timeout_s)?,
                    max_connections: at_least_one("max-connections", cli.max_connections)?,
                    read_timeout: seconds("read-timeout-s", cli.read_timeout_s)?,
                    write_timeout: seconds("write-timeout-s", cli.write_timeout_s)?,
                    access: Access {
                        api_key: match cli.api_key {
                            Some(key) if key.trim().is_empty() => {
                                return Err("the API key must not be empty".to_string())
                            }
                            key => key,
                        },
                        allowed_origins: cli.allow_origin,
                    },
                    rate_limit: cli.rate_limit,
                    // Filled in once the model file is known to open.
                    model_sha256: String::new(),
                },
            }
        }
    };
    Ok(Settings {
        source,
        engine,
        threads,
        mode,
    })
}

/// Loads the model (or makes the echo backend).
fn open(source: Source, options: EngineOptions) -> Result<Arc<dyn Backend>, Failure> {
    let (gguf, mhc) = match source {
        Source::Echo => return Ok(Arc::new(EchoBackend::new(ECHO_CONTEXT, ECHO_DELAY))),
        Source::Model { gguf, mhc } => (gguf, mhc),
    };
    let started = Instant::now();
    let engine = model::load_engine(&gguf, mhc.as_deref(), options)
        .map_err(|e| Failure::Input(e.to_string()))?; // names the file
    eprintln!(
        "serve: loaded {} (model {}, context {} tokens) in {:.1} s",
        gguf.display(),
        engine.model_name(),
        engine.config().context_length,
        started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(engine))
}

/// CLI mode: one completion, streamed to stdout.
fn generate(
    backend: &dyn Backend,
    prompt: &str,
    chat: bool,
    max_tokens: Option<usize>,
    sampling: SamplingParams,
    stop: Vec<String>,
) -> Result<(), Failure> {
    let mut text = prompt.to_string();
    if prompt == "-" {
        text.clear();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Input(format!("cannot read the prompt from stdin: {e}")))?;
    }
    let ids = if chat {
        backend.encode_chat(&[ChatMessage {
            role: "user".to_string(),
            content: text,
        }])
    } else {
        backend.encode_prompt(&text)
    }
    .map_err(|e| Failure::Input(format!("--prompt: {e}")))?;
    let max_tokens = api::budget(
        "prompt",
        &ids,
        max_tokens,
        usize::MAX,
        backend.context_length(),
    )
    .map_err(|e| Failure::Input(format!("--prompt: {}", e.message)))?;
    let prompt_tokens = ids.len();
    let request = GenerationRequest {
        prompt: ids,
        max_tokens,
        sampling,
        stop,
    };
    let events = backend
        .submit(request)
        .map_err(|e| Failure::Input(format!("--prompt: {e}")))?;
    let started = Instant::now();
    let mut out = io::stdout().lock();
    let outcome = backend::follow(backend, prompt_tokens, events, None, |delta| match delta {
        Some(text) => {
            out.write_all(text.as_bytes())?;
            out.flush()
        }
        None => Ok(()),
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(FollowError::Callback(e)) => return Err(Failure::Output(e)),
        Err(FollowError::Engine(m)) => {
            return Err(Failure::Failed(format!("generation failed: {m}")))
        }
    };
    writeln!(out)?;
    out.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "serve: {} prompt + {} completion tokens, finish reason {}, {seconds:.2} s ({:.1} tokens/s)",
        outcome.usage.prompt_tokens,
        outcome.usage.completion_tokens,
        outcome.finish_reason.as_str(),
        outcome.usage.completion_tokens as f64 / seconds.max(1e-9),
    );
    Ok(())
}

/// Server mode: serves until SIGINT/SIGTERM.
fn serve(backend: Arc<dyn Backend>, addr: &str, config: server::Config) -> Result<(), Failure> {
    let server = Server::bind(addr, backend, config).map_err(Failure::Input)?;
    let stopper = server.stopper();
    ctrlc::set_handler(move || {
        if stopper.stop() {
            eprintln!("serve: stopping: ending requests in flight");
        } else {
            eprintln!("serve: second signal: exiting now");
            std::process::exit(1);
        }
    })
    .map_err(|e| Failure::Failed(format!("cannot install the signal handler: {e}")))?;
    eprintln!("serve: listening on http://{}", server.addr());
    server
        .run()
        .map_err(|e| Failure::Failed(format!("cannot start the worker threads: {e}")))?;
    eprintln!("serve: stopped");
    Ok(())
}

/// The hex SHA-256 of a file (the model's identity in /v1/models and /metrics).
fn file_sha256(path: &Path) -> Result<String, Failure> {
    let cannot = |e: io::Error| Failure::Input(format!("cannot read {}: {e}", path.display()));
    let mut file = File::open(path).map_err(cannot)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer).map_err(cannot)? {
            0 => return Ok(hex(&hasher.finalize())),
            n => hasher.update(&buffer[..n]),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(settings: Settings) -> Result<(), Failure> {
    if let Some(n) = settings.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Failure::Failed(format!("cannot start {n} compute threads: {e}")))?;
    }
    if let Mode::Bench { options, json } = &settings.mode {
        let report = bench::run(options).map_err(Failure::Input)?;
        if *json {
            writeln!(io::stdout(), "{report:#}")?;
        }
        return Ok(());
    }
    let model_file = match &settings.source {
        Source::Model { gguf, .. } => Some(gguf.clone()),
        Source::Echo => None,
    };
    let backend = open(settings.source, settings.engine)?;
    match settings.mode {
        Mode::Generate {
            prompt,
            chat,
            max_tokens,
            sampling,
            stop,
        } => generate(&*backend, &prompt, chat, max_tokens, sampling, stop),
        Mode::Serve { addr, mut config } => {
            config.model_sha256 = match model_file {
                Some(path) => file_sha256(&path)?,
                // The echo backend has no file: the digest of its name stands in.
                None => hex(&Sha256::digest(backend.model_id().as_bytes())),
            };
            serve(backend, &addr, config)
        }
        Mode::Bench { .. } => unreachable!("measured above"),
    }
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("serve") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // One line per request on stderr (RUST_LOG=warn quiets them).
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = settings(cli).map_err(Failure::Input).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("serve: cannot write the output: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("serve: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Input(message)) => {
            eprintln!("serve: {message}");
            ExitCode::from(2)
        }
    }
}
