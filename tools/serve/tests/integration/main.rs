//! Integration tests of serve, one binary: `http` runs the library's server on the echo backend
//! through real sockets; `cli` runs the `serve` binary (CLI mode, server mode, signals) on the echo
//! backend and on a random-weight tiny model; `memory` sends malformed HTTP through the server
//! without sockets. `util` holds the server fixture and a minimal HTTP
//! client (raw TcpStream: requests, chunked bodies, server-sent events).

mod cli;
mod http;
mod memory;
mod util;
