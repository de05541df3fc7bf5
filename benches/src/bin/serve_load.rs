//! `serve-load`: a load benchmark of serve's HTTP layer (issue 25), not a test.
//!
//! Two phases against a running `serve` (`--addr`) or one it starts itself (`--serve PATH`):
//! (a) `--requests` short non-streaming completions from `--clients` threads, each on one
//! keep-alive connection: requests/s and latency percentiles; (b) `--streams` streaming
//! completions at once, each on its own connection, released together: time to the first event
//! and to the end of the stream. Raw HTTP/1.1 over `std::net::TcpStream`, so the client adds as
//! little as possible to what is measured; a server that answers badly is counted, never trusted.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser};
use serde_json::{json, Value};

const DEFAULT_PROMPT: &str = "fn add(a: i32, b: i32) -> i32 {";
/// Longest status line or header line accepted from the server.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 256;
/// Largest response body accepted (the replies measured here are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How many distinct error messages the report keeps (the rest are counted as "other").
const MAX_REASONS: usize = 20;

const AFTER_HELP: &str = "\
Examples:
  serve-load --serve target/release/serve -- --echo-backend
                      start serve on a free port (no model), run both phases, stop it
  serve-load --serve target/release/serve --json -- --model m.gguf --threads 2
                      the same against a model, the report as JSON on stdout
  serve-load --addr 127.0.0.1:8000 --requests 500 --clients 4 --streams 0
                      a server already running; only the request phase

Phase 1 (--requests N --clients C): C threads, each with one keep-alive connection, send N
non-streaming POST /v1/completions between them, each asking for --max-tokens tokens at
temperature 0 (one untimed probe request comes first, so a server that cannot answer fails
fast). Reported: requests/s (successful requests ÷ wall time from the release of the clients to
the last reply), latency p50/p90/p99/max of the successful requests, errors, and the requests
each client completed (min/median/max: a client far below the others was starved, e.g. a
connection the server did not read for most of the phase).

Phase 2 (--streams S): S threads connect, wait at a barrier, then each sends one streaming
completion (\"stream\": true, --stream-max-tokens tokens). Reported: time to the first `data:`
event (TTFT: for /v1/completions the first event carries the first token), time to the end of
the stream, p50/p99/max of each, errors. Streams a server cannot start at once (a worker pool
smaller than S) show up as a long TTFT tail.

An error is an I/O error (connect, write, read, --timeout-s without a byte), a status other
than 200, a malformed response, a body that is not the expected JSON, or a stream without
`data: [DONE]` or with an error event. The first messages of each kind are listed.

What the figures mean against `serve --echo-backend`: it sends one character every 10 ms, so a
request for 8 tokens takes at least 80 ms and 16 clients top out near 195 requests/s; there the
benchmark shows how many requests the layer carries at once (and whether any connection waits),
not what one request costs. A small model (or --max-tokens 1) shows more of the latter.

With --serve, serve is started as `PATH --port 0 [SERVE_ARGS]` (no --port when SERVE_ARGS name
one); the address comes from its `listening on http://ADDR` line on stderr, which is drained
(and dropped) while the benchmark runs; serve is killed at the end.

Exit status: 0 every request succeeded, 1 some failed (the report is printed all the same),
2 bad usage, a server that could not be started or reached, or a probe request that failed.";

/// Load benchmark of serve's HTTP layer: requests/s and latency percentiles of short
/// completions from concurrent keep-alive clients, and time to first token of concurrent streams
#[derive(Parser, Debug)]
#[command(name = "serve-load", version, after_help = AFTER_HELP)]
#[command(group(ArgGroup::new("target").required(true).args(["addr", "serve"])))]
struct Args {
    /// Address of a running server.
    ///
    /// Example: --addr 127.0.0.1:8000
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,

    /// Start this serve binary on a free port instead (the arguments after `--` go to it).
    ///
    /// Example: --serve target/release/serve -- --echo-backend
    #[arg(long, value_name = "PATH")]
    serve: Option<PathBuf>,

    /// Seconds to wait for a started serve's `listening on` line (loading a model takes time).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    start_timeout_s: u64,

    /// Non-streaming requests of phase 1 (0: skip the phase).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    requests: usize,

    /// Client threads of phase 1, each with one keep-alive connection.
    #[arg(long, value_name = "N", default_value_t = 16)]
    clients: usize,

    /// Concurrent streaming requests of phase 2, one connection each (0: skip the phase).
    #[arg(long, value_name = "N", default_value_t = 64)]
    streams: usize,

    /// The prompt of every request.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_PROMPT)]
    prompt: String,

    /// max_tokens of each phase-1 request.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_tokens: usize,

    /// max_tokens of each phase-2 stream.
    #[arg(long, value_name = "N", default_value_t = 16)]
    stream_max_tokens: usize,

    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,

    /// Seconds a read or write may wait without progress before the request counts as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout_s: u64,

    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,

    /// Arguments of the serve started with --serve (after `--`).
    #[arg(last = true, value_name = "SERVE_ARGS")]
    serve_args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("serve-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the phases and prints the report; true when every request succeeded.
fn run(args: &Args) -> Result<bool, String> {
    if args.requests > 0 && args.clients == 0 {
        return Err("--clients must be at least 1 when --requests is not 0".into());
    }
    if !args.serve_args.is_empty() && args.serve.is_none() {
        return Err("arguments after `--` go to the serve of --serve, and there is none".into());
    }
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    let (server, addr) = match (&args.serve, &args.addr) {
        (Some(path), _) => {
            let server = Server::start(path, &args.serve_args, args.start_timeout_s)?;
            let addr = server.addr;
            eprintln!("serve-load: started {} on {addr}", path.display());
            (Some(server), addr)
        }
        (None, Some(a)) => (None, resolve(a)?),
        (None, None) => unreachable!("clap requires --addr or --serve"),
    };
    let target = Target {
        addr,
        host: addr.to_string(),
        api_key: args.api_key.clone(),
        timeout,
    };
    probe(&target, args)?;

    let mut report = json!({
        "addr": addr.to_string(),
        "serve": args.serve.as_ref().map(|p| p.display().to_string()),
        "serve_args": args.serve_args,
        "prompt": args.prompt,
    });
    let mut all_ok = true;
    if args.requests > 0 {
        eprintln!(
            "serve-load: phase 1: {} requests from {} clients (max_tokens {})",
            args.requests, args.clients, args.max_tokens
        );
        let r = requests_phase(&target, args);
        all_ok &= r.errors.total == 0;
        report["requests"] = r.to_json(args);
        if !args.json {
            r.print(args);
        }
    }
    if args.streams > 0 {
        eprintln!(
            "serve-load: phase 2: {} concurrent streams (max_tokens {})",
            args.streams, args.stream_max_tokens
        );
        let s = streams_phase(&target, args);
        all_ok &= s.errors.total == 0;
        report["streams"] = s.to_json(args);
        if !args.json {
            s.print(args);
        }
    }
    if let Some(server) = server {
        report["serve_stderr_lines"] = json!(server.stop());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a JSON value serialises")
        );
    }
    Ok(all_ok)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:8000)"))?
        .next()
        .ok_or_else(|| format!("--addr {addr:?} resolves to no address"))
}

// ---------------------------------------------------------------------------------------------
// The server started with --serve.

struct Server {
    child: Child,
    addr: SocketAddr,
    lines: Arc<AtomicUsize>,
}

impl Server {
    fn start(path: &PathBuf, serve_args: &[String], timeout_s: u64) -> Result<Server, String> {
        let mut command = Command::new(path);
        let names_port = serve_args
            .iter()
            .any(|a| a == "--port" || a.starts_with("--port="));
        if !names_port {
            command.args(["--port", "0"]);
        }
        command
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<Result<SocketAddr, String>>();
        let counter = Arc::clone(&lines);
        // Drains serve's stderr for as long as it runs (a full pipe would block its log lines and
        // so its requests); the first `listening on` line gives the address.
        thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            let mut found = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                counter.fetch_add(1, Ordering::Relaxed);
                if found {
                    continue;
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    found = true;
                    let parsed = addr
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("serve printed {line:?}: not an address: {e}"));
                    let _ = tx.send(parsed);
                } else {
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            if !found {
                let _ = tx.send(Err(format!(
                    "serve ended its stderr without a `listening on` line; its last lines:\n{}",
                    tail.join("\n")
                )));
            }
        });
        let fail = |mut child: Child, e: String| {
            let _ = child.kill();
            let status = child.wait().map(|s| format!(" ({s})")).unwrap_or_default();
            Err(format!("{e}{status}"))
        };
        match rx.recv_timeout(Duration::from_secs(timeout_s)) {
            Ok(Ok(addr)) => Ok(Server { child, addr, lines }),
            Ok(Err(e)) => fail(child, e),
            Err(_) => fail(
                child,
                format!(
                    "serve printed no `listening on` line in {timeout_s} s (--start-timeout-s)"
                ),
            ),
        }
    }

    /// Kills serve; returns how many stderr lines it wrote.
    fn stop(mut self) -> usize {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1.

struct Target {
    addr: SocketAddr,
    host: String,
    api_key: Option<String>,
    timeout: Duration,
}

/// Why a request failed: the kind is what the report counts, the detail an example.
#[derive(Debug)]
struct Failure {
    kind: String,
    detail: String,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl fmt::Display) -> Self {
        Failure {
            kind: kind.into(),
            detail: detail.to_string(),
        }
    }
    fn io(stage: &str, e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
            k => format!("{k:?}"),
        };
        Failure::new(format!("{stage}: {kind}"), e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    /// The server will keep the connection open after this response.
    keep_alive: bool,
}

impl Conn {
    fn open(target: &Target) -> Result<Conn, Failure> {
        let stream = TcpStream::connect_timeout(&target.addr, target.timeout)
            .map_err(|e| Failure::io("connect", e))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(target.timeout))?;
            s.set_write_timeout(Some(target.timeout))
        };
        setup(&stream).map_err(|e| Failure::io("connect", e))?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 * 1024, stream),
        })
    }

    /// Writes one POST request with a JSON body in a single write.
    fn send(&mut self, target: &Target, path: &str, body: &[u8]) -> Result<(), Failure> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            target.host,
            body.len()
        );
        if let Some(key) = &target.api_key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let stream = self.reader.get_mut();
        stream
            .write_all(&bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| Failure::io("write", e))
    }

    fn read_line(&mut self, what: &str) -> Result<String, Failure> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::io("read", e))?;
        if n == 0 {
            return Err(Failure::new(
                "read: connection closed",
                format!("the server closed the connection before the {what}"),
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(Failure::new(
                "bad response",
                format!("{what} longer than {MAX_LINE} bytes or cut short"),
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        String::from_utf8(line)
            .map_err(|_| Failure::new("bad response", format!("{what} is not UTF-8")))
    }

    /// Reads a status line and headers, skipping interim (1xx) responses.
    fn read_head(&mut self) -> Result<Head, Failure> {
        loop {
            let status_line = self.read_line("status line")?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            let status = parts
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|_| version.starts_with("HTTP/1."))
                .ok_or_else(|| {
                    Failure::new("bad response", format!("status line {status_line:?}"))
                })?;
            let mut head = Head {
                status,
                chunked: false,
                content_length: None,
                keep_alive: version == "HTTP/1.1",
            };
            let mut count = 0;
            loop {
                let line = self.read_line("headers")?;
                if line.is_empty() {
                    break;
                }
                count += 1;
                if count > MAX_HEADERS {
                    return Err(Failure::new("bad response", "too many headers"));
                }
                let Some((name, value)) = line.split_once(':') else {
                    return Err(Failure::new(
                        "bad response",
                        format!("header line {line:?}"),
                    ));
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => {
                        let n = value.parse::<usize>().map_err(|_| {
                            Failure::new("bad response", format!("Content-Length {value:?}"))
                        })?;
                        head.content_length = Some(n);
                    }
                    "transfer-encoding" => {
                        head.chunked = value
                            .rsplit(',')
                            .next()
                            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
                    }
                    "connection" => {
                        let tokens = value.split(',').map(|t| t.trim().to_ascii_lowercase());
                        for t in tokens {
                            match t.as_str() {
                                "close" => head.keep_alive = false,
                                "keep-alive" => head.keep_alive = true,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if (100..200).contains(&status) {
                continue;
            }
            if !head.chunked && head.content_length.is_none() {
                // The body runs to the end of the connection.
                head.keep_alive = false;
            }
            return Ok(head);
        }
    }

    /// Reads the body as it arrives, handing each piece to `sink`; the whole body by
    /// Content-Length, chunked framing or the end of the connection.
    fn read_body(&mut self, head: &Head, mut sink: impl FnMut(&[u8])) -> Result<(), Failure> {
        let mut total = 0usize;
        let mut take = |conn: &mut Conn, mut n: usize, total: &mut usize| -> Result<(), Failure> {
            *total += n;
            if *total > MAX_BODY {
                return Err(Failure::new(
                    "bad response",
                    format!("body over {MAX_BODY} bytes"),
                ));
            }
            while n > 0 {
                let buf = conn.reader.fill_buf().map_err(|e| Failure::io("read", e))?;
                if buf.is_empty() {
                    return Err(Failure::new(
                        "read: connection closed",
                        "the server closed the connection inside a body",
                    ));
                }
                let k = buf.len().min(n);
                sink(&buf[..k]);
                conn.reader.consume(k);
                n -= k;
            }
            Ok(())
        };
        if head.chunked {
            loop {
                let line = self.read_line("chunk size")?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| Failure::new("bad response", format!("chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.read_line("trailers")?.is_empty() {}
                    return Ok(());
                }
                take(self, size, &mut total)?;
                if !self.read_line("chunk end")?.is_empty() {
                    return Err(Failure::new("bad response", "chunk not followed by CRLF"));
                }
            }
        } else if let Some(n) = head.content_length {
            take(self, n, &mut total)
        } else {
            loop {
                let buf = self.reader.fill_buf().map_err(|e| Failure::io("read", e))?;
                if buf.is_empty() {
                    return Ok(());
                }
                let k = buf.len();
                total += k;
                if total > MAX_BODY {
                    return Err(Failure::new(
                        "bad response",
                        format!("body over {MAX_BODY} bytes"),
                    ));
                }
                sink(buf);
                self.reader.consume(k);
            }
        }
    }
}

fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// One non-streaming completion on `conn` (opened when None; left None when the server will
/// close it). Returns its latency.
fn completion(target: &Target, conn: &mut Option<Conn>, body: &[u8]) -> Result<Duration, Failure> {
    let start = Instant::now();
    let result = (|| {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Conn::open(target)?),
        };
        c.send(target, "/v1/completions", body)?;
        let head = c.read_head()?;
        let mut reply = Vec::new();
        c.read_body(&head, |b| reply.extend_from_slice(b))?;
        Ok((head, reply))
    })();
    let (head, reply) = match result {
        Ok(r) => r,
        Err(e) => {
            *conn = None;
            return Err(e);
        }
    };
    let elapsed = start.elapsed();
    if !head.keep_alive {
        *conn = None;
    }
    if head.status != 200 {
        return Err(Failure::new(
            format!("status {}", head.status),
            body_snippet(&reply),
        ));
    }
    match serde_json::from_slice::<Value>(&reply) {
        Ok(v) if v["choices"].as_array().is_some_and(|c| !c.is_empty()) => Ok(elapsed),
        Ok(_) => Err(Failure::new(
            "bad reply",
            format!("200 without choices: {}", body_snippet(&reply)),
        )),
        Err(e) => Err(Failure::new(
            "bad reply",
            format!(
                "200 with a body that is not JSON ({e}): {}",
                body_snippet(&reply)
            ),
        )),
    }
}

/// One untimed request before the phases: a server that cannot answer is a usage error.
fn probe(target: &Target, args: &Args) -> Result<(), String> {
    let body = request_body(args, args.max_tokens, false);
    let mut conn = None;
    completion(target, &mut conn, &body).map(drop).map_err(|e| {
        let hint = if e.kind == "status 401" {
            " (does the server want --api-key?)"
        } else {
            ""
        };
        format!(
            "the probe request (POST /v1/completions to {}) failed: {e}{hint}",
            target.addr
        )
    })
}

fn request_body(args: &Args, max_tokens: usize, stream: bool) -> Vec<u8> {
    let mut body = json!({
        "prompt": args.prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if stream {
        body["stream"] = json!(true);
    }
    body.to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Errors and percentiles.

#[derive(Default)]
struct Errors {
    total: usize,
    /// kind -> (count, first detail)
    kinds: BTreeMap<String, (usize, String)>,
}

impl Errors {
    fn add(&mut self, f: Failure) {
        self.total += 1;
        let kind = if self.kinds.len() >= MAX_REASONS && !self.kinds.contains_key(&f.kind) {
            "other".to_string()
        } else {
            f.kind
        };
        self.kinds.entry(kind).or_insert((0, f.detail)).0 += 1;
    }

    fn merge(&mut self, other: Errors) {
        for (kind, (n, detail)) in other.kinds {
            for _ in 0..n {
                self.add(Failure::new(kind.clone(), &detail));
            }
        }
    }

    fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|(k, (n, d))| (k.clone(), json!({"count": n, "example": d})))
            .collect();
        json!({"total": self.total, "kinds": kinds})
    }

    fn print(&self) {
        for (kind, (n, detail)) in &self.kinds {
            println!("    {n:>6} × {kind} (e.g. {detail})");
        }
    }
}

struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentiles in milliseconds; None for no samples.
fn percentiles(samples: &[Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Some(Percentiles {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: ms[ms.len() - 1],
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
    })
}

fn percentiles_json(samples: &[Duration]) -> Value {
    match percentiles(samples) {
        Some(p) => json!({
            "p50": round3(p.p50), "p90": round3(p.p90), "p99": round3(p.p99),
            "max": round3(p.max), "mean": round3(p.mean),
        }),
        None => Value::Null,
    }
}

fn percentiles_line(samples: &[Duration]) -> String {
    match percentiles(samples) {
        Some(p) => format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  mean {:.1} ms",
            p.p50, p.p90, p.p99, p.max, p.mean
        ),
        None => "no successful samples".into(),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

// ---------------------------------------------------------------------------------------------
// Phase 1: non-streaming requests from keep-alive clients.

struct RequestsResult {
    latencies: Vec<Duration>,
    errors: Errors,
    wall: Duration,
    connections: usize,
    /// Requests each client completed (successful or not), fewest first.
    per_client: Vec<usize>,
}

fn requests_phase(target: &Target, args: &Args) -> RequestsResult {
    let body = request_body(args, args.max_tokens, false);
    let next = AtomicUsize::new(0);
    let connections = AtomicUsize::new(0);
    let barrier = Barrier::new(args.clients + 1);
    let results = Mutex::new((Vec::with_capacity(args.requests), Errors::default()));
    let per_client = Mutex::new(Vec::with_capacity(args.clients));
    let start = thread::scope(|s| {
        for _ in 0..args.clients {
            s.spawn(|| {
                let mut latencies = Vec::new();
                let mut errors = Errors::default();
                // Connected before the clock starts; a failure here is retried by the first
                // request (and counted there).
                let mut conn = Conn::open(target).ok();
                barrier.wait();
                while next.fetch_add(1, Ordering::Relaxed) < args.requests {
                    if conn.is_none() {
                        connections.fetch_add(1, Ordering::Relaxed);
                    }
                    match completion(target, &mut conn, &body) {
                        Ok(d) => latencies.push(d),
                        Err(e) => errors.add(e),
                    }
                }
                let done = latencies.len() + errors.total;
                per_client
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(done);
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                r.0.extend(latencies);
                r.1.merge(errors);
            });
        }
        barrier.wait();
        // The scope joins the clients before it returns, so the clock stops after the last one.
        Instant::now()
    });
    let wall = start.elapsed();
    let (latencies, errors) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut per_client = per_client.into_inner().unwrap_or_else(|e| e.into_inner());
    per_client.sort_unstable();
    RequestsResult {
        latencies,
        errors,
        wall,
        connections: connections.into_inner(),
        per_client,
    }
}

impl RequestsResult {
    fn per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn to_json(&self, args: &Args) -> Value {
        json!({
            "requests": args.requests,
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "ok": self.latencies.len(),
            "errors": self.errors.to_json(),
            "reconnects": self.connections,
            "per_client": {
                "min": self.per_client.first(),
                "median": self.per_client.get(self.per_client.len() / 2),
                "max": self.per_client.last(),
            },
            "requests_by_client": self.per_client,
            "wall_s": round3(self.wall.as_secs_f64()),
            "requests_per_s": round3(self.per_s()),
            "latency_ms": percentiles_json(&self.latencies),
        })
    }

    fn print(&self, args: &Args) {
        println!(
            "requests: {} from {} keep-alive clients, max_tokens {}",
            args.requests, args.clients, args.max_tokens
        );
        println!(
            "  {:.1} requests/s ({} ok in {:.2} s), {} errors, {} reconnects",
            self.per_s(),
            self.latencies.len(),
            self.wall.as_secs_f64(),
            self.errors.total,
            self.connections
        );
        println!("  latency {}", percentiles_line(&self.latencies));
        if let (Some(min), Some(max)) = (self.per_client.first(), self.per_client.last()) {
            let median = self.per_client[self.per_client.len() / 2];
            println!("  requests per client: min {min}, median {median}, max {max}");
        }
        self.errors.print();
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: concurrent streams.

struct StreamOk {
    ttft: Duration,
    total: Duration,
    events: usize,
}

struct StreamsResult {
    ok: Vec<StreamOk>,
    errors: Errors,
    wall: Duration,
}

/// Splits server-sent events out of the bytes as they arrive and notes what they say.
#[derive(Default)]
struct SseScan {
    pending: Vec<u8>,
    /// When the first `data:` line arrived.
    first: Option<Instant>,
    events: usize,
    done: bool,
    error: Option<String>,
    bad: Option<String>,
}

impl SseScan {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") else {
                continue; // comments (`: keep-alive`), blank lines, other fields
            };
            self.first.get_or_insert_with(Instant::now);
            let data = data.trim();
            if data == "[DONE]" {
                self.done = true;
                continue;
            }
            self.events += 1;
            match serde_json::from_str::<Value>(data) {
                Ok(v) if v.get("error").is_some() => {
                    self.error
                        .get_or_insert_with(|| body_snippet(data.as_bytes()));
                }
                Ok(_) => {}
                Err(_) => {
                    self.bad
                        .get_or_insert_with(|| body_snippet(data.as_bytes()));
                }
            }
        }
    }
}

fn one_stream(target: &Target, mut conn: Conn, body: &[u8]) -> Result<StreamOk, Failure> {
    let start = Instant::now();
    conn.send(target, "/v1/completions", body)?;
    let head = conn.read_head()?;
    let mut scan = SseScan::default();
    if head.status != 200 {
        let mut reply = Vec::new();
        conn.read_body(&head, |b| reply.extend_from_slice(b))?;
        return Err(Failure::new(
            format!("status {}", head.status),
            body_snippet(&reply),
        ));
    }
    conn.read_body(&head, |b| scan.feed(b))?;
    let total = start.elapsed();
    if let Some(e) = scan.error {
        return Err(Failure::new("error event", e));
    }
    if let Some(b) = scan.bad {
        return Err(Failure::new("bad event", format!("not JSON: {b}")));
    }
    if !scan.done {
        return Err(Failure::new(
            "stream without [DONE]",
            format!("the body ended after {} events", scan.events),
        ));
    }
    let first = scan.first.expect("[DONE] is a data line");
    Ok(StreamOk {
        ttft: first - start,
        total,
        events: scan.events,
    })
}

fn streams_phase(target: &Target, args: &Args) -> StreamsResult {
    let body = request_body(args, args.stream_max_tokens, true);
    let barrier = Barrier::new(args.streams + 1);
    let results = Mutex::new((Vec::with_capacity(args.streams), Errors::default()));
    let start = thread::scope(|s| {
        for _ in 0..args.streams {
            s.spawn(|| {
                let conn = Conn::open(target);
                barrier.wait();
                let result = conn.and_then(|c| one_stream(target, c, &body));
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(ok) => r.0.push(ok),
                    Err(e) => r.1.add(e),
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    let wall = start.elapsed();
    let (ok, errors) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    StreamsResult { ok, errors, wall }
}

impl StreamsResult {
    fn ttft(&self) -> Vec<Duration> {
        self.ok.iter().map(|s| s.ttft).collect()
    }
    fn total(&self) -> Vec<Duration> {
        self.ok.iter().map(|s| s.total).collect()
    }

    fn to_json(&self, args: &Args) -> Value {
        json!({
            "streams": args.streams,
            "max_tokens": args.stream_max_tokens,
            "ok": self.ok.len(),
            "errors": self.errors.to_json(),
            "wall_s": round3(self.wall.as_secs_f64()),
            "events": self.ok.iter().map(|s| s.events).sum::<usize>(),
            "ttft_ms": percentiles_json(&self.ttft()),
            "total_ms": percentiles_json(&self.total()),
        })
    }

    fn print(&self, args: &Args) {
        println!(
            "streams: {} at once, one connection each, max_tokens {}",
            args.streams, args.stream_max_tokens
        );
        println!(
            "  {} ok in {:.2} s, {} errors, {} events",
            self.ok.len(),
            self.wall.as_secs_f64(),
            self.errors.total,
            self.ok.iter().map(|s| s.events).sum::<usize>()
        );
        println!("  time to first token {}", percentiles_line(&self.ttft()));
        println!("  time to last event  {}", percentiles_line(&self.total()));
        self.errors.print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&samples).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn sse_scan_finds_events_split_across_reads() {
        let mut s = SseScan::default();
        s.feed(b": keep-alive\n\nda");
        assert!(s.first.is_none());
        s.feed(
            b"ta: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n",
        );
        assert!(s.first.is_some() && s.done);
        assert_eq!(s.events, 2);
        assert!(s.error.is_some() && s.bad.is_none());
    }
}
