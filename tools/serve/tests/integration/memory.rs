//! Malformed and hostile HTTP through `Server::answer_in_memory`: hyper's parsing and the
//! server's limits, without sockets (the path the request fuzz target takes).

use std::sync::Arc;
use std::time::Duration;

use serve::backend::EchoBackend;
use serve::server::Server;

use crate::util::{config, read_response, Response};

fn server() -> Server {
    let backend = Arc::new(EchoBackend::new(128, Duration::ZERO));
    Server::bind("127.0.0.1:0", backend, config()).unwrap()
}

fn answer(server: &Server, request: &str) -> Vec<u8> {
    server.answer_in_memory(request.as_bytes()).unwrap()
}

fn parsed(server: &Server, request: &str) -> Response {
    let bytes = answer(server, request);
    assert!(!bytes.is_empty(), "no answer to {request:?}");
    read_response(&bytes[..])
}

const JSON_POST: &str =
    "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";

#[test]
fn a_well_formed_request_is_answered() {
    let body = r#"{"prompt": "hi", "max_tokens": 2}"#;
    let r = parsed(
        &server(),
        &format!("{JSON_POST}Content-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], "hi");
}

#[test]
fn http_2_and_unknown_versions_are_refused_at_once() {
    let s = server();
    for line in ["GET / HTTP/2.0", "GET / HTTP/3.0", "GET / HTTP/1.7"] {
        assert_eq!(parsed(&s, &format!("{line}\r\n\r\n")).status, 400, "{line}");
    }
    // The h2c preface: closed without an answer.
    let preface = answer(&s, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(preface.is_empty(), "{}", String::from_utf8_lossy(&preface));
}

#[test]
fn conflicting_lengths_bad_chunks_and_huge_heads_are_client_errors() {
    let s = server();
    let conflicting = format!("{JSON_POST}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}");
    assert_eq!(parsed(&s, &conflicting).status, 400);
    let bad_chunk = format!("{JSON_POST}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n");
    let r = parsed(&s, &bad_chunk);
    assert_eq!(r.status, 400, "{}", r.body);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        parsed(&s, &format!("GET /health HTTP/1.1\r\n{many}\r\n")).status,
        431
    );
    let long = format!(
        "GET /health HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "v".repeat(20 << 10)
    );
    assert_eq!(parsed(&s, &long).status, 431);
}

#[test]
fn a_body_over_the_cap_is_refused_unread() {
    let r = parsed(
        &server(),
        &format!("{JSON_POST}Content-Length: 5000\r\n\r\n{{"),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.header("Connection"), Some("close"));
}
