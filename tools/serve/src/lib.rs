//! serve: the OpenAI-compatible HTTP server of nanochat-rs-ternary, as a library the `serve`
//! binary (src/main.rs: flags, CLI mode, signals) and the tests drive.
//!
//! - [`backend`]: the [`Backend`](backend::Backend) trait the server runs on (implemented by
//!   `model::Engine` and by the [`EchoBackend`](backend::EchoBackend) stand-in), and
//!   [`follow`](backend::follow), which consumes one request's events under a deadline.
//! - [`api`]: OpenAI request parsing and validation, response and stream-chunk JSON, error JSON.
//! - [`server`]: tiny_http server, worker pool, routes, server-sent events, limits, shutdown; it
//!   serves the chat page `static/chat.html` at `/`.
//! - [`bench`]: `serve --bench`, the end-to-end speed and memory measurements.

pub mod api;
pub mod backend;
pub mod bench;
pub mod server;
