//! The HTTP server: one tiny_http server shared by a fixed pool of worker threads, each taking a
//! request, routing it to a pure handler ([`route`] returns a [`Reply`]), and writing the reply.
//! A streamed reply holds its worker until the stream ends, so `workers` bounds the concurrent
//! requests; the engine's own queue orders them. [`Stopper::stop`] shuts the backend down (running
//! streams end with an error event) and `unblock()`s every worker.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
//! `GET /` (the chat page, static/chat.html). Errors are OpenAI error objects: 400 bad request,
//! 404 unknown route, 405 wrong method (with `Allow`), 413 body over `max_body_bytes`, 500 engine
//! failure, 503 shutting down.
//!
//! Streams are written by hand on the raw connection (tiny_http's chunked encoder buffers 8 KiB):
//! `Transfer-Encoding: chunked` for HTTP/1.1 (identity and close for HTTP/1.0), one flushed chunk
//! per server-sent event, an SSE comment (`: keep-alive`) after each idle tick. A failed write means
//! the client is gone: the request's receiver is dropped, which cancels it in the engine.
//!
//! Limits: the body cap, `max_tokens_cap` (api.rs), and `request_timeout`, a wall-time limit from
//! the request's arrival: when it passes, the request is cancelled and answered with what it has
//! so far and finish reason `length` (streamed or not). A non-streaming request whose client
//! disconnects runs until it ends or times out (nothing is written before then). Known limit of a
//! blocking server: a client that sends its body slowly holds a worker; put a proxy in front of it
//! on untrusted networks (it binds to loopback by default).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::api::{self, ApiError, Chunk, Endpoint, Meta};
use crate::backend::{self, Backend, FollowError};
use model::GenerationEvent;

/// The chat page served at `/`.
const CHAT_PAGE: &str = include_str!("../static/chat.html");

/// A request declaring a body larger than this (and than the body cap) is dropped without an
/// answer and its connection leaked: tiny_http 0.12 drains an unread body into one buffer of the
/// declared size when the request is dropped, answered or not, so a client could make the server
/// allocate what it claims and abort (tiny-http PR #290). Bodies between the cap and this get 413.
const DRAIN_LIMIT: usize = 64 << 20;

/// Server settings (validated by the caller).
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads: the most requests handled at once (streams included).
    pub workers: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for, and the default when it asks for none.
    pub max_tokens_cap: usize,
    /// Wall-time limit of one request.
    pub request_timeout: Duration,
}

struct Context {
    backend: Arc<dyn Backend>,
    config: Config,
    stopping: AtomicBool,
    /// Unix seconds at start (the `created` of /v1/models).
    started: u64,
}

/// A bound server, not yet running.
pub struct Server {
    http: Arc<tiny_http::Server>,
    ctx: Arc<Context>,
    addr: SocketAddr,
}

/// Stops a running server from another thread (a signal handler, a test).
#[derive(Clone)]
pub struct Stopper {
    http: Arc<tiny_http::Server>,
    ctx: Arc<Context>,
}

impl Stopper {
    /// Shuts the backend down and unblocks every worker; false if already stopping.
    pub fn stop(&self) -> bool {
        if self.ctx.stopping.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.ctx.backend.shutdown();
        for _ in 0..self.ctx.config.workers {
            self.http.unblock();
        }
        true
    }
}

impl Server {
    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    pub fn bind(addr: &str, backend: Arc<dyn Backend>, config: Config) -> Result<Server, String> {
        let http =
            tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("cannot listen on {addr}: not an IP address"))?;
        Ok(Server {
            http: Arc::new(http),
            ctx: Arc::new(Context {
                backend,
                config,
                stopping: AtomicBool::new(false),
                started: unix_time().as_secs(),
            }),
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper {
            http: Arc::clone(&self.http),
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Serves until [`Stopper::stop`]; returns when every worker has finished.
    pub fn run(self) -> io::Result<()> {
        let mut workers = Vec::new();
        for i in 0..self.ctx.config.workers {
            let (http, ctx) = (Arc::clone(&self.http), Arc::clone(&self.ctx));
            let spawned = thread::Builder::new()
                .name(format!("serve-worker-{i}"))
                .spawn(move || worker(&http, &ctx));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    self.stopper().stop();
                    workers.into_iter().for_each(|w| drop(w.join()));
                    return Err(e);
                }
            }
        }
        workers.into_iter().for_each(|w| drop(w.join()));
        Ok(())
    }
}

fn worker(http: &tiny_http::Server, ctx: &Context) {
    loop {
        match http.recv() {
            Ok(request) => {
                // A bug must not shrink the pool: a panicking handler drops the request, which
                // tiny_http answers with 500 if nothing was sent yet.
                let handled =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(request, ctx)));
                if handled.is_err() {
                    eprintln!("serve: a request handler panicked (answered 500)");
                }
            }
            Err(_) if ctx.stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                eprintln!("serve: accepting a connection failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What a handler answers.
enum Reply {
    Json(u16, Value),
    Page,
    /// A started request to stream as server-sent events.
    Stream(Streaming),
}

struct Streaming {
    meta: Meta,
    events: Receiver<GenerationEvent>,
    prompt_tokens: usize,
    include_usage: bool,
    deadline: Option<Instant>,
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.status, e.to_json())
    }
}

/// Reads, routes and answers one request, then logs one line.
fn serve(mut request: Request, ctx: &Context) {
    let arrived = Instant::now();
    let method = request.method().clone();
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let cap = ctx.config.max_body_bytes;
    let declared = request.body_length().unwrap_or(0);
    if declared > cap.max(DRAIN_LIMIT) {
        eprintln!(
            "serve: {method} {} declares a {declared}-byte body: dropped unanswered",
            path.escape_debug()
        );
        std::mem::forget(request);
        return;
    }
    let mut body = Vec::new();
    let reply = if declared > cap {
        too_large(cap)
    } else {
        match request
            .as_reader()
            .take((cap as u64).saturating_add(1))
            .read_to_end(&mut body)
        {
            Ok(_) if body.len() > cap => too_large(cap),
            Ok(_) => route(
                ctx,
                &method,
                &path,
                &body,
                // None: a timeout too large to add to the clock is none.
                arrived.checked_add(ctx.config.request_timeout),
            ),
            Err(_) => return, // the client went away while sending
        }
    };
    let status = match reply {
        Reply::Json(status, body) => {
            let mut response = Response::from_data(body.to_string())
                .with_status_code(status)
                .with_header(header("Content-Type", "application/json"));
            if status == 405 {
                if let Some(allow) = allowed_methods(&path) {
                    response.add_header(header("Allow", allow));
                }
            }
            let _ = request.respond(response);
            status.to_string()
        }
        Reply::Page => {
            let response = Response::from_string(CHAT_PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8"));
            let _ = request.respond(response);
            "200".to_string()
        }
        Reply::Stream(s) => match stream(request, ctx, s) {
            Ok(()) => "200 stream".to_string(),
            Err(_) => "200 stream, client gone".to_string(),
        },
    };
    eprintln!(
        "serve: {method} {} {status} {:.2}s",
        path.escape_debug(),
        arrived.elapsed().as_secs_f64()
    );
}

fn too_large(cap: usize) -> Reply {
    ApiError::request(
        413,
        "request_too_large",
        format!("the request body is larger than this server's limit of {cap} bytes"),
    )
    .into()
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("header names and values here are valid ASCII")
}

/// The methods a known path takes; `None` for unknown paths.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/health" | "/v1/models" => Some("GET, HEAD"),
        "/v1/chat/completions" | "/v1/completions" => Some("POST"),
        _ => None,
    }
}

/// The handler: a pure function of the request (the generation routes block until the engine
/// answers, or start the request and hand its events back to be streamed).
fn route(
    ctx: &Context,
    method: &Method,
    path: &str,
    body: &[u8],
    deadline: Option<Instant>,
) -> Reply {
    let get = matches!(method, Method::Get | Method::Head);
    match (path, get, *method == Method::Post) {
        ("/", true, _) => Reply::Page,
        ("/health", true, _) => health(ctx),
        ("/v1/models", true, _) => models(ctx),
        ("/v1/chat/completions", _, true) => generate(ctx, Endpoint::Chat, body, deadline),
        ("/v1/completions", _, true) => generate(ctx, Endpoint::Text, body, deadline),
        _ => match allowed_methods(path) {
            Some(allow) => ApiError::request(
                405,
                "method_not_allowed",
                format!("{method} is not allowed on {path} (allowed: {allow})"),
            ),
            None => ApiError::request(404, "unknown_url", format!("unknown URL: {method} {path}")),
        }
        .into(),
    }
}

fn health(ctx: &Context) -> Reply {
    let stats = ctx.backend.stats();
    let stopping = ctx.stopping.load(Ordering::SeqCst);
    Reply::Json(
        if stopping { 503 } else { 200 },
        json!({
            "status": if stopping { "stopping" } else { "ok" },
            "model": ctx.backend.model_id(),
            "active": stats.active,
            "queued": stats.queued,
            "max_batch": stats.max_batch,
        }),
    )
}

fn models(ctx: &Context) -> Reply {
    Reply::Json(
        200,
        json!({"object": "list", "data": [{
            "id": ctx.backend.model_id(),
            "object": "model",
            "created": ctx.started,
            "owned_by": "nanochat",
        }]}),
    )
}

fn generate(ctx: &Context, endpoint: Endpoint, body: &[u8], deadline: Option<Instant>) -> Reply {
    let backend = &*ctx.backend;
    let job = match api::parse_job(
        endpoint,
        body,
        backend,
        ctx.config.max_tokens_cap,
        fresh_seed(),
    ) {
        Ok(job) => job,
        Err(e) => return e.into(),
    };
    let prompt_tokens = job.request.prompt.len();
    let events = match backend.submit(job.request) {
        Ok(events) => events,
        Err(e) => return ApiError::from_submit(&e, endpoint.prompt_param()).into(),
    };
    let meta = Meta {
        endpoint,
        id: new_id(endpoint),
        created: unix_time().as_secs(),
        model: backend.model_id().to_string(),
    };
    if job.stream {
        return Reply::Stream(Streaming {
            meta,
            events,
            prompt_tokens,
            include_usage: job.include_usage,
            deadline,
        });
    }
    match backend::follow(backend, prompt_tokens, events, deadline, |_| Ok(())) {
        Ok(outcome) => Reply::Json(200, api::completion_json(&meta, &outcome)),
        Err(e) => engine_failure(ctx, e).into(),
    }
}

/// A request the engine failed: 503 while shutting down, else 500.
fn engine_failure(ctx: &Context, e: FollowError) -> ApiError {
    let status = if ctx.stopping.load(Ordering::SeqCst) {
        503
    } else {
        500
    };
    ApiError::server(
        status,
        match e {
            FollowError::Engine(message) => message,
            FollowError::Callback(e) => e.to_string(),
        },
    )
}

/// Server-sent events on the raw connection.
struct Sse {
    out: Box<dyn Write + Send>,
    chunked: bool,
}

impl Sse {
    fn start(mut out: Box<dyn Write + Send>, chunked: bool) -> io::Result<Sse> {
        let framing = if chunked {
            "Transfer-Encoding: chunked"
        } else {
            "Connection: close"
        };
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\n{framing}\r\n\r\n"
        )?;
        out.flush()?;
        Ok(Sse { out, chunked })
    }

    /// Writes raw event-stream text and flushes it.
    fn send(&mut self, text: &str) -> io::Result<()> {
        if self.chunked {
            write!(self.out, "{:x}\r\n{text}\r\n", text.len())?;
        } else {
            self.out.write_all(text.as_bytes())?;
        }
        self.out.flush()
    }

    fn data(&mut self, value: &Value) -> io::Result<()> {
        self.send(&format!("data: {value}\n\n"))
    }

    fn end(mut self) -> io::Result<()> {
        self.send("data: [DONE]\n\n")?;
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        self.out.flush()
    }
}

/// Streams a started request: (chat) a role chunk, a chunk per text delta, the finish chunk, the
/// usage chunk if asked, `[DONE]`. An engine error is sent as an `{"error": ...}` event before
/// `[DONE]`. Any write error returns at once, dropping the receiver (cancelling the request).
fn stream(request: Request, ctx: &Context, s: Streaming) -> io::Result<()> {
    let chunked = *request.http_version() >= (1, 1);
    let mut sse = Sse::start(request.into_writer(), chunked)?;
    let (meta, usage) = (&s.meta, s.include_usage);
    if meta.endpoint == Endpoint::Chat {
        sse.data(&api::chunk_json(meta, Chunk::Start, usage))?;
    }
    let result = backend::follow(
        &*ctx.backend,
        s.prompt_tokens,
        s.events,
        s.deadline,
        |delta| match delta {
            Some(text) => sse.data(&api::chunk_json(meta, Chunk::Text(text), usage)),
            None => sse.send(": keep-alive\n\n"),
        },
    );
    match result {
        Ok(outcome) => {
            let finish = Chunk::Finish(outcome.finish_reason.as_str());
            sse.data(&api::chunk_json(meta, finish, usage))?;
            if usage {
                sse.data(&api::chunk_json(meta, Chunk::Usage(outcome.usage), usage))?;
            }
        }
        Err(FollowError::Callback(e)) => return Err(e),
        Err(e) => sse.data(&engine_failure(ctx, e).to_json())?,
    }
    sse.end()
}

fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Requests served so far (makes ids and seeds unique).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// `chatcmpl-…` / `cmpl-…`, unique within and across runs.
fn new_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Text => "cmpl",
    };
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:x}", unix_time().as_nanos())
}

/// The seed of a request that gives none: differs per request, so sampled replies vary.
fn fresh_seed() -> u64 {
    let n = REQUESTS.load(Ordering::Relaxed).wrapping_add(1);
    (unix_time().as_nanos() as u64) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
