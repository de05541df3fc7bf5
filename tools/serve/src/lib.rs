//! serve: the OpenAI-compatible HTTP server of nanochat-rs-ternary, as a library the `serve`
//! binary (src/main.rs: flags, CLI mode, signals) and the tests drive.
//!
//! - [`backend`]: the [`Backend`](backend::Backend) trait the server runs on (implemented by
//!   `model::Engine` and by the [`EchoBackend`](backend::EchoBackend) stand-in), and
//!   [`follow`](backend::follow), which consumes one request's events under a deadline.
//! - [`api`]: OpenAI request parsing and validation, response and stream-chunk JSON, error JSON.
//! - [`server`]: the hyper HTTP/1.1 server: connections and their limits, routes, server-sent
//!   events, shutdown; it serves the chat page `static/chat.html` at `/`.
//! - [`access`]: API key, Host/Origin checks and CORS, content type, per-client rate limits.
//! - [`metrics`]: the Prometheus/OpenMetrics counters of `GET /metrics`.
//! - [`bench`]: `serve --bench`, the end-to-end speed and memory measurements.

pub mod access;
pub mod api;
pub mod backend;
pub mod bench;
pub mod metrics;
pub mod server;
