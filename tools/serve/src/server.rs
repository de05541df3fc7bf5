//! The HTTP server: hyper's HTTP/1.1 on a small tokio runtime. Every connection is a task; the
//! engine work of a request runs on tokio's blocking threads, at most `workers` at once (a
//! generation slot each), so requests that need no model (`/health`, `/metrics`, `/v1/models`)
//! never wait behind generations, and a client that stalls holds only its own connection.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health`, `GET /metrics` (metrics.rs), `GET /` (the chat page,
//! static/chat.html), and `OPTIONS` on each (CORS preflight). Errors are OpenAI error objects.
//!
//! Bounds, each answered instead of hanging: open connections (`max_connections`; beyond it a
//! connection gets 503 and is closed, and accept errors such as running out of descriptors are
//! logged and retried, never fatal); the request head (hyper: `read_timeout` to arrive, which also
//! closes idle keep-alive connections, 16 KiB and 100 headers, unknown versions and HTTP/2
//! prefaces refused, conflicting Content-Length 400); the body (its declared length checked
//! before a byte is read, 413; each piece within `read_timeout`, 408; a malformed chunk 400);
//! writes (`write_timeout` without progress closes the connection, which cancels its request);
//! and `request_timeout`, a wall-time limit from the request's arrival, after which the request
//! is cancelled and answered with what it has so far and finish reason `length`.
//!
//! access.rs decides who may ask (API key, Host and Origin, CORS, rate limit). One log line per
//! request (tracing), with the client-controlled path Debug-escaped.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{channel::Channel, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;

use crate::access::{self, Access, RateLimit};
use crate::api::{self, ApiError, Chunk, Endpoint, Meta};
use crate::backend::{self, Backend, FollowError, Outcome};
use crate::metrics::{self, Metrics};
use model::GenerationEvent;

/// The chat page served at `/`.
const CHAT_PAGE: &str = include_str!("../static/chat.html");

/// Caps on a request head: what a real client sends is a few hundred bytes and a dozen headers.
const MAX_HEADER_BYTES: usize = 16 << 10;
const MAX_HEADERS: usize = 100;

/// How long a refused connection may take to receive its 503, and how long a stopping server
/// waits for its connections to finish.
const REFUSAL_WRITE_LIMIT: Duration = Duration::from_secs(1);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of descriptors: give closing connections time to free some).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Server settings (validated by the caller).
#[derive(Clone, Debug)]
pub struct Config {
    /// The most generation requests handled at once (streams included); others wait.
    pub workers: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for, and the default when it asks for none.
    pub max_tokens_cap: usize,
    /// Wall-time limit of one request.
    pub request_timeout: Duration,
    /// The most connections open at once; more are refused.
    pub max_connections: usize,
    /// Longest silence of a client that owes the server a request head or body bytes.
    pub read_timeout: Duration,
    /// Longest time a write may wait for a client that does not read.
    pub write_timeout: Duration,
    /// API key and allowed origins.
    pub access: Access,
    /// Requests a minute per client IP.
    pub rate_limit: Option<NonZeroU32>,
    /// Hex SHA-256 of the model file (/v1/models, /metrics).
    pub model_sha256: String,
}

impl Default for Config {
    /// The defaults of `serve`'s flags.
    fn default() -> Self {
        Config {
            workers: 8,
            max_body_bytes: 1 << 20,
            max_tokens_cap: 2048,
            request_timeout: Duration::from_secs(300),
            max_connections: 512,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            access: Access::default(),
            rate_limit: None,
            model_sha256: String::new(),
        }
    }
}

struct Context {
    backend: Arc<dyn Backend>,
    config: Config,
    stopping: AtomicBool,
    /// Unix seconds at start (the `created` of /v1/models).
    started: u64,
    /// One permit per running generation request.
    generation_slots: Arc<Semaphore>,
    /// One permit per open connection.
    connection_slots: Arc<Semaphore>,
    rate_limit: Option<RateLimit>,
    metrics: Arc<Metrics>,
}

/// A bound server, not yet running.
pub struct Server {
    listener: std::net::TcpListener,
    ctx: Arc<Context>,
    addr: SocketAddr,
    shutdown: Arc<watch::Sender<bool>>,
}

/// Stops a running server from another thread (a signal handler, a test).
#[derive(Clone)]
pub struct Stopper {
    ctx: Arc<Context>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Stopper {
    /// Shuts the backend down (running requests end with an error) and stops accepting; false if
    /// already stopping.
    pub fn stop(&self) -> bool {
        if self.ctx.stopping.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.ctx.backend.shutdown();
        self.ctx.generation_slots.close();
        self.shutdown.send_replace(true);
        true
    }
}

impl Server {
    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    pub fn bind(addr: &str, backend: Arc<dyn Backend>, config: Config) -> Result<Server, String> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let metrics = Metrics::new(backend.model_id(), &config.model_sha256);
        Ok(Server {
            listener,
            ctx: Arc::new(Context {
                backend,
                generation_slots: Arc::new(Semaphore::new(config.workers)),
                connection_slots: Arc::new(Semaphore::new(config.max_connections)),
                rate_limit: config.rate_limit.map(RateLimit::per_minute),
                metrics,
                config,
                stopping: AtomicBool::new(false),
                started: unix_time().as_secs(),
            }),
            addr: local,
            shutdown: Arc::new(watch::channel(false).0),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper {
            ctx: Arc::clone(&self.ctx),
            shutdown: Arc::clone(&self.shutdown),
        }
    }

    /// Serves one connection whose client sends `request` and then closes its side, from
    /// memory instead of a socket, and returns every byte the server wrote back: the same
    /// parsing, limits and handlers as a real connection (the request fuzz target's way in).
    pub fn answer_in_memory(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, server_side) = tokio::io::duplex(64 << 10);
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let ctx = Arc::clone(&self.ctx);
        let stopped = self.shutdown.subscribe();
        runtime.block_on(async move {
            let server = tokio::spawn(async move {
                serve_connection(server_side, peer, &ctx, stopped, true).await;
            });
            let (mut from_server, mut to_server) = tokio::io::split(client);
            // Written while the answer is read: the server may answer (413, a parse error) and
            // close before it has read everything, and then the rest is of no use.
            let send = async {
                let _ = to_server.write_all(request).await;
                let _ = to_server.shutdown().await;
            };
            let mut answer = Vec::new();
            let ((), read) = tokio::join!(send, from_server.read_to_end(&mut answer));
            let _ = server.await;
            read.map(|_| answer)
        })
    }

    /// Serves until [`Stopper::stop`]; returns when the connections have finished (or after a
    /// grace period).
    pub fn run(self) -> io::Result<()> {
        // Two threads carry every connection: the model's work runs on blocking threads, so
        // these only parse, route and copy bytes.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("serve-http")
            .enable_all()
            .build()?;
        runtime.block_on(self.accept_loop())
    }

    async fn accept_loop(self) -> io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let mut stopped = self.shutdown.subscribe();
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = until_stopped(&mut stopped) => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e} (retrying)");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let ctx = Arc::clone(&self.ctx);
            match Arc::clone(&ctx.connection_slots).try_acquire_owned() {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    let stopped = self.shutdown.subscribe();
                    connections.spawn(async move {
                        serve_connection(stream, peer, &ctx, stopped, false).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    ctx.metrics.connection_rejected();
                    connections.spawn(refuse(stream));
                }
            }
        }
        drop(listener);
        let finished = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finished)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}: closing them");
        }
        Ok(())
    }
}

/// Returns once the server is told to stop.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once the server is gone too.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Tells a connection over the cap that the server is busy, and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = ApiError::server(503, "too many open connections: retry later")
        .to_json()
        .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_LIMIT, stream.write_all(answer.as_bytes())).await;
}

/// Serves HTTP/1.1 on one connection until the client closes it, a limit closes it, or the
/// server stops (then it ends after the request in flight).
///
/// `half_close`: whether the client's end of input still lets the server answer what it sent
/// (for the in-memory connection); on sockets it does not, so that a client that hangs up
/// cancels its request at once.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    ctx: &Arc<Context>,
    mut stopped: watch::Receiver<bool>,
    half_close: bool,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    ctx.metrics.connection_opened();
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(ctx.config.write_timeout));
    let io = TokioIo::new(Box::pin(stream));
    let service_ctx = Arc::clone(ctx);
    let service = service_fn(move |request| handle(request, peer, Arc::clone(&service_ctx)));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .half_close(half_close)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = until_stopped(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
    ctx.metrics.connection_closed();
}

type Body = BoxBody<Bytes, Infallible>;

/// Which route a path is (the metrics' route label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Page,
    Health,
    Metrics,
    Models,
    Model,
    Chat,
    Text,
    Unknown,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/" => Route::Page,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/v1/models" => Route::Models,
            "/v1/chat/completions" => Route::Chat,
            "/v1/completions" => Route::Text,
            _ if path
                .strip_prefix("/v1/models/")
                .is_some_and(|id| !id.is_empty()) =>
            {
                Route::Model
            }
            _ => Route::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::Models => "/v1/models",
            Route::Model => "/v1/models/{id}",
            Route::Chat => "/v1/chat/completions",
            Route::Text => "/v1/completions",
            Route::Unknown => "other",
        }
    }

    /// The methods it takes (OPTIONS aside); `None` for unknown paths.
    fn allowed_methods(self) -> Option<&'static str> {
        match self {
            Route::Chat | Route::Text => Some("POST"),
            Route::Unknown => None,
            _ => Some("GET, HEAD"),
        }
    }

    /// The API key guards the API and the metrics, not the page and the health check.
    fn needs_key(self) -> bool {
        !matches!(self, Route::Page | Route::Health)
    }
}

/// What the log line and the metrics of a request need from its handling.
struct Served {
    route: Route,
    peer: SocketAddr,
    method: Method,
    path: String,
    arrived: Instant,
}

impl Served {
    /// Logs an answered request (or an ended stream).
    fn log(&self, status: u16, tokens: Option<(usize, usize)>) {
        let (prompt_tokens, completion_tokens) = tokens.unwrap_or_default();
        tracing::info!(
            client = %self.peer,
            method = ?self.method.as_str(),
            path = ?self.path,
            status,
            seconds = format_args!("{:.3}", self.arrived.elapsed().as_secs_f64()),
            prompt_tokens,
            completion_tokens,
            "request"
        );
    }
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<Context>,
) -> Result<Response<Body>, Infallible> {
    let served = Served {
        route: Route::of(request.uri().path()),
        peer,
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        arrived: Instant::now(),
    };
    let mut cors_origin = None;
    let (mut response, tokens) = match answer(request, &served, &ctx, &mut cors_origin).await {
        Answer::Done(response, tokens) => (response, Some(tokens)),
        // A stream logs itself when it ends.
        Answer::Streaming(response) => (response, None),
    };
    if let Some(origin) = cors_origin {
        add_cors(&mut response, &origin);
    }
    let status = response.status().as_u16();
    ctx.metrics.request(served.route.label(), status);
    if let Some(tokens) = tokens {
        served.log(status, tokens);
    }
    Ok(response)
}

/// A handled request: an answer with its token counts, or a started stream.
enum Answer {
    Done(Response<Body>, Option<(usize, usize)>),
    Streaming(Response<Body>),
}

impl From<Response<Body>> for Answer {
    fn from(response: Response<Body>) -> Self {
        Answer::Done(response, None)
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Self {
        Answer::Done(error(&e), None)
    }
}

fn header_text(request: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn answer(
    request: Request<Incoming>,
    served: &Served,
    ctx: &Arc<Context>,
    cors_origin: &mut Option<String>,
) -> Answer {
    let access = &ctx.config.access;
    let host = header_text(&request, header::HOST);
    if let Err(e) = access.check_host(host) {
        return e.into();
    }
    match access.check_origin(header_text(&request, header::ORIGIN), host) {
        Ok(origin) => *cors_origin = origin,
        Err(e) => return e.into(),
    }
    if served.route != Route::Health {
        if let Some(Err(retry_after)) = ctx.rate_limit.as_ref().map(|l| l.check(served.peer.ip())) {
            let mut response = error(&access::rate_limited(retry_after));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return response.into();
        }
    }
    let route = served.route;
    let Some(allowed) = route.allowed_methods() else {
        return ApiError::request(
            404,
            "unknown_url",
            format!("unknown URL: {} {}", served.method, served.path),
        )
        .into();
    };
    if request.method() == Method::OPTIONS {
        return preflight(allowed, cors_origin.is_some()).into();
    }
    if route.needs_key() {
        if let Err(e) = access.check_key(header_text(&request, header::AUTHORIZATION)) {
            return e.into();
        }
    }
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    let post = request.method() == Method::POST;
    match route {
        Route::Page if get => page().into(),
        Route::Health if get => health(ctx).into(),
        Route::Metrics if get => text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            ctx.metrics.render(ctx.backend.stats()),
        )
        .into(),
        Route::Models if get => json(200, &json!({"object": "list", "data": [model(ctx)]})).into(),
        Route::Model if get => model_by_id(ctx, &served.path["/v1/models/".len()..]).into(),
        Route::Chat if post => generate(request, served, ctx, Endpoint::Chat).await,
        Route::Text if post => generate(request, served, ctx, Endpoint::Text).await,
        _ => {
            let mut response = error(&ApiError::request(
                405,
                "method_not_allowed",
                format!(
                    "{} is not allowed on {} (allowed: {allowed})",
                    served.method, served.path
                ),
            ));
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            response.into()
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: u16, value: &Value) -> Response<Body> {
    text(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        value.to_string(),
    )
}

/// An error answer; a 401 says how to authenticate.
fn error(e: &ApiError) -> Response<Body> {
    let mut response = json(e.status, &e.to_json());
    if e.status == 401 {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// An error answer after which the connection is closed (its body was not read, or not all).
fn error_and_close(e: &ApiError) -> Response<Body> {
    let mut response = error(e);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn add_cors(response: &mut Response<Body>, origin: &str) {
    if let Ok(origin) = HeaderValue::from_str(origin) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to `OPTIONS`: the methods, and for an allowed cross origin what it may send.
fn preflight(allowed: &'static str, cross_origin: bool) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
    if cross_origin {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(allowed),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

fn page() -> Response<Body> {
    text(StatusCode::OK, "text/html; charset=utf-8", CHAT_PAGE.into())
}

fn health(ctx: &Context) -> Response<Body> {
    let stats = ctx.backend.stats();
    let stopping = ctx.stopping.load(Ordering::SeqCst);
    json(
        if stopping { 503 } else { 200 },
        &json!({
            "status": if stopping { "stopping" } else { "ok" },
            "model": ctx.backend.model_id(),
            "active": stats.active,
            "queued": stats.queued,
            "max_batch": stats.max_batch,
        }),
    )
}

/// The served model as /v1/models lists it.
fn model(ctx: &Context) -> Value {
    json!({
        "id": ctx.backend.model_id(),
        "object": "model",
        "created": ctx.started,
        "owned_by": "nanochat",
        "sha256": ctx.config.model_sha256,
    })
}

fn model_by_id(ctx: &Context, id: &str) -> Response<Body> {
    if id == ctx.backend.model_id() {
        return json(200, &model(ctx));
    }
    error(&ApiError::request(
        404,
        "model_not_found",
        format!(
            "the model {id:?} does not exist here (this server serves {:?})",
            ctx.backend.model_id()
        ),
    ))
}

/// Why a request body could not be read.
enum BodyError {
    TooLarge,
    Stalled,
    Malformed(hyper::Error),
}

impl BodyError {
    fn to_api(&self, cap: usize) -> ApiError {
        match self {
            BodyError::TooLarge => too_large(cap),
            BodyError::Stalled => {
                ApiError::request(408, "request_timeout", "the request body stopped arriving")
            }
            BodyError::Malformed(e) => {
                ApiError::invalid(None, format!("the request body could not be read: {e}"))
            }
        }
    }
}

fn too_large(cap: usize) -> ApiError {
    ApiError::request(
        413,
        "request_too_large",
        format!("the request body is larger than this server's limit of {cap} bytes"),
    )
}

/// Reads a body of at most `cap` bytes, each piece within `idle`, the whole by `deadline`.
async fn read_body(
    mut body: Incoming,
    cap: usize,
    idle: Duration,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, BodyError> {
    let mut bytes = Vec::new();
    loop {
        let wait = deadline.map_or(idle, |d| {
            idle.min(d.saturating_duration_since(Instant::now()))
        });
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => return Ok(bytes),
            Ok(Some(frame)) => frame.map_err(BodyError::Malformed)?,
        };
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > cap {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
}

/// Set when the request's client is gone (its handler future was dropped): the blocking side
/// then cancels the generation at its next event or idle tick.
struct ClientGone(Arc<AtomicBool>);

impl Drop for ClientGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Time to first token and per-token time of one generation, fed by [`backend::follow`]'s
/// callback.
struct Timing {
    arrived: Instant,
    first_text: Option<Instant>,
}

impl Timing {
    fn text(&mut self) {
        self.first_text.get_or_insert_with(Instant::now);
    }

    fn record(&self, metrics: &Metrics, completion_tokens: usize) {
        let first = self
            .first_text
            .map(|t| t.duration_since(self.arrived).as_secs_f64());
        let rest = self.first_text.map_or(0.0, |t| t.elapsed().as_secs_f64());
        metrics.generation(completion_tokens, first, rest);
    }
}

async fn generate(
    request: Request<Incoming>,
    served: &Served,
    ctx: &Arc<Context>,
    endpoint: Endpoint,
) -> Answer {
    if let Err(e) = access::check_json_content_type(header_text(&request, header::CONTENT_TYPE)) {
        return Answer::Done(error_and_close(&e), None);
    }
    let cap = ctx.config.max_body_bytes;
    let declared = header_text(&request, header::CONTENT_LENGTH).and_then(|n| n.parse().ok());
    if declared.is_some_and(|n: u64| n > cap as u64) {
        return Answer::Done(error_and_close(&too_large(cap)), None);
    }
    // None: a timeout too large to add to the clock is none.
    let deadline = served.arrived.checked_add(ctx.config.request_timeout);
    let body = match read_body(request.into_body(), cap, ctx.config.read_timeout, deadline).await {
        Ok(body) => body,
        Err(e) => return Answer::Done(error_and_close(&e.to_api(cap)), None),
    };
    let Ok(slot) = Arc::clone(&ctx.generation_slots).acquire_owned().await else {
        return ApiError::server(503, "the server is shutting down").into();
    };
    let timing = Timing {
        arrived: served.arrived,
        first_text: None,
    };
    // A non-streaming request is parsed, run and answered in one blocking task: each hop
    // between threads costs tens of microseconds, which a small model's reply notices.
    let gone = ClientGone(Arc::new(AtomicBool::new(false)));
    let progress = {
        let (ctx, gone) = (Arc::clone(ctx), Arc::clone(&gone.0));
        tokio::task::spawn_blocking(move || {
            let started = start(&ctx, endpoint, &body)?;
            ctx.metrics.prompt_tokens(started.prompt_tokens);
            if started.stream {
                return Ok(Progress::Streaming(started, slot, timing));
            }
            let Started {
                meta,
                events,
                prompt_tokens,
                ..
            } = started;
            let result = run_to_end(&ctx, prompt_tokens, events, deadline, &gone, timing);
            drop(slot);
            Ok(Progress::Finished(meta, result))
        })
    };
    let progress = match progress.await {
        Ok(Ok(progress)) => progress,
        Ok(Err(e)) => return Answer::Done(error(&e), None),
        Err(_) => return ApiError::server(500, "the request's handler failed").into(),
    };
    drop(gone);
    match progress {
        Progress::Streaming(started, slot, timing) => {
            start_stream(served, ctx, started, slot, deadline, timing)
        }
        Progress::Finished(meta, Ok(outcome)) => {
            let tokens = (outcome.usage.prompt_tokens, outcome.usage.completion_tokens);
            Answer::Done(
                json(200, &api::completion_json(&meta, &outcome)),
                Some(tokens),
            )
        }
        Progress::Finished(_, Err(e)) => engine_failure(ctx, e).into(),
    }
}

/// Where a generation request stands when its first blocking task returns.
enum Progress {
    /// A stream to start, holding its generation slot.
    Streaming(Started, OwnedSemaphorePermit, Timing),
    /// A non-streaming request, run to its end.
    Finished(Meta, Result<Outcome, FollowError>),
}

/// Follows a non-streaming request to its end, cancelling it when the client is gone.
fn run_to_end(
    ctx: &Context,
    prompt_tokens: usize,
    events: Receiver<GenerationEvent>,
    deadline: Option<Instant>,
    client_gone: &AtomicBool,
    mut timing: Timing,
) -> Result<Outcome, FollowError> {
    let result = backend::follow(&*ctx.backend, prompt_tokens, events, deadline, |delta| {
        if client_gone.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        if delta.is_some() {
            timing.text();
        }
        Ok(())
    });
    if let Ok(outcome) = &result {
        timing.record(&ctx.metrics, outcome.usage.completion_tokens);
    }
    result
}

/// Answers 200 with an event stream fed by a blocking task that follows the request.
fn start_stream(
    served: &Served,
    ctx: &Arc<Context>,
    started: Started,
    slot: OwnedSemaphorePermit,
    deadline: Option<Instant>,
    timing: Timing,
) -> Answer {
    let (sender, body) = Channel::<Bytes>::new(4);
    let stream = EventStream {
        sender,
        runtime: Handle::current(),
    };
    let log = Served {
        method: served.method.clone(),
        path: served.path.clone(),
        ..*served
    };
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || {
        let tokens = stream_events(&ctx, started, deadline, stream, timing);
        log.log(200, tokens);
        drop(slot);
    });
    let mut response = Response::new(body.boxed());
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Answer::Streaming(response)
}

/// A request the engine has accepted.
struct Started {
    meta: Meta,
    events: Receiver<GenerationEvent>,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
}

/// Parses, tokenizes and submits a request (blocking: tokenizing a prompt is CPU work).
fn start(ctx: &Context, endpoint: Endpoint, body: &[u8]) -> Result<Started, ApiError> {
    let backend = &*ctx.backend;
    let job = api::parse_job(
        endpoint,
        body,
        backend,
        ctx.config.max_tokens_cap,
        fresh_seed(),
    )?;
    let prompt_tokens = job.request.prompt.len();
    let events = backend
        .submit(job.request)
        .map_err(|e| ApiError::from_submit(&e, endpoint.prompt_param()))?;
    Ok(Started {
        meta: Meta {
            endpoint,
            id: new_id(endpoint),
            created: unix_time().as_secs(),
            model: backend.model_id().to_string(),
        },
        events,
        prompt_tokens,
        stream: job.stream,
        include_usage: job.include_usage,
    })
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

/// Server-sent events into a response body, from a blocking thread. A failed send means the
/// connection is gone (the client left, or a limit closed it).
struct EventStream {
    sender: http_body_util::channel::Sender<Bytes>,
    runtime: Handle,
}

impl EventStream {
    fn send(&mut self, text: String) -> io::Result<()> {
        self.runtime
            .block_on(self.sender.send_data(Bytes::from(text)))
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }

    fn data(&mut self, value: &Value) -> io::Result<()> {
        self.send(format!("data: {value}\n\n"))
    }
}

/// Streams a started request: (chat) a role chunk, a chunk per text delta, the finish chunk, the
/// usage chunk if asked, `[DONE]`; an SSE comment on each idle tick. An engine error is sent as
/// an `{"error": ...}` event before `[DONE]`. A failed send returns at once, dropping the
/// receiver (cancelling the request). Returns the token counts when it ran to its end.
fn stream_events(
    ctx: &Context,
    started: Started,
    deadline: Option<Instant>,
    mut out: EventStream,
    mut timing: Timing,
) -> Option<(usize, usize)> {
    let (meta, usage) = (&started.meta, started.include_usage);
    if meta.endpoint == Endpoint::Chat {
        out.data(&api::chunk_json(meta, Chunk::Start, usage)).ok()?;
    }
    let result = backend::follow(
        &*ctx.backend,
        started.prompt_tokens,
        started.events,
        deadline,
        |delta| match delta {
            Some(text) => {
                timing.text();
                out.data(&api::chunk_json(meta, Chunk::Text(text), usage))
            }
            None => out.send(": keep-alive\n\n".to_string()),
        },
    );
    let tokens = match result {
        Ok(outcome) => {
            timing.record(&ctx.metrics, outcome.usage.completion_tokens);
            send_finish(&mut out, meta, &outcome, usage).ok()?;
            Some((outcome.usage.prompt_tokens, outcome.usage.completion_tokens))
        }
        Err(FollowError::Callback(_)) => return None,
        Err(e) => {
            out.data(&engine_failure(ctx, e).to_json()).ok()?;
            None
        }
    };
    out.send("data: [DONE]\n\n".to_string()).ok()?;
    tokens
}

fn send_finish(
    out: &mut EventStream,
    meta: &Meta,
    outcome: &Outcome,
    usage: bool,
) -> io::Result<()> {
    let finish = Chunk::Finish(outcome.finish_reason.as_str());
    out.data(&api::chunk_json(meta, finish, usage))?;
    if usage {
        out.data(&api::chunk_json(meta, Chunk::Usage(outcome.usage), usage))?;
    }
    Ok(())
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
