//! One client connection's bytes, whatever they are, through serve's whole request path: hyper's
//! HTTP/1.1 parsing and limits, the access checks, routing, the OpenAI request parser and a
//! generation on the echo backend. The server must answer or close, never panic or hang.

#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serve::access::Access;
use serve::backend::EchoBackend;
use serve::server::{Config, Server};

static SERVER: LazyLock<Server> = LazyLock::new(|| {
    let config = Config {
        max_body_bytes: 64 << 10,
        max_tokens_cap: 64,
        request_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(1),
        access: Access {
            api_key: None,
            allowed_origins: vec!["http://app.example".to_string()],
        },
        rate_limit: None,
        ..Config::default()
    };
    let backend = Arc::new(EchoBackend::new(256, Duration::ZERO));
    Server::bind("127.0.0.1:0", backend, config).expect("a loopback port")
});

fuzz_target!(|data: &[u8]| {
    let answer = SERVER
        .answer_in_memory(data)
        .expect("an in-memory connection cannot fail");
    // Whatever was asked, an answer is HTTP/1.x (1.0 to a 1.0 client), or nothing: a closed
    // connection.
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1."));
});
